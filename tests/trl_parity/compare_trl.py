"""Run align_core and TRL 0.28 on the same batch and tiny model; print the differences as JSON.

Runs inside the isolated parity venv (see ``provision.py``), never in the project environment:
``<venv>/bin/python tests/trl_parity/compare_trl.py`` with the repository root on ``PYTHONPATH``.
Everything is built offline: a random 2-layer ``LlamaForCausalLM`` (hidden 64, vocab 101) for
the policy and another for the reference, and a padded batch of prompts with chosen / rejected
completions of different lengths.

TRL's own code computes its side: ``DPOTrainer.concatenated_forward`` (left-padded prompts +
right-padded completions, concatenated, flushed left, ``selective_log_softmax``, completion-only
sum) and ``DPOTrainer.dpo_loss`` (``"sigmoid"`` with ``label_smoothing``, ``"robust"``,
``"ipo"``), called as unbound methods on a namespace that holds the attributes they read.
Our side runs its own forward pass on right-padded ``prompt + completion`` rows and calls
``align_core.sequence_logps`` and the ``PAIR_LOSSES`` entries.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import torch
import trl
from transformers import LlamaConfig, LlamaForCausalLM
from trl import DPOTrainer
from trl.trainer.dpo_config import FDivergenceType

from align_core import PAIR_LOSSES, implicit_rewards, sequence_logps

PAD = 0
BETA = 0.1
# (prompt length, chosen length, rejected length) per example: padding on every side.
LENGTHS = [(4, 3, 5), (2, 6, 2), (6, 1, 3)]
# TRL 0.28 loss_type / label_smoothing -> align_core PAIR_LOSSES name / options.
LOSSES: list[tuple[str, float, str, dict[str, float]]] = [
    ("sigmoid", 0.0, "dpo", {}),
    ("sigmoid", 0.1, "dpo", {"label_smoothing": 0.1}),
    ("robust", 0.1, "robust_dpo", {"label_smoothing": 0.1}),
    ("ipo", 0.0, "ipo", {}),
]


def tiny_llama(seed: int, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.2, pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config)
    torch.nn.Module.to(model, dtype)  # in place; Module.to sidesteps HF's wrapped signature
    return model.eval()


def make_examples(seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> list[int]:
        return torch.randint(1, 101, (n,), generator=gen).tolist()

    return [(tokens(p), tokens(c), tokens(r)) for p, c, r in LENGTHS]


def pad_rows(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


def trl_batch(examples: list[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """The tensors TRL 0.28's ``DataCollatorForPreference`` produces: prompts left-padded,
    completions right-padded."""
    prompt_ids, prompt_mask = pad_rows([e[0] for e in examples], left=True)
    chosen_ids, chosen_mask = pad_rows([e[1] for e in examples], left=False)
    rejected_ids, rejected_mask = pad_rows([e[2] for e in examples], left=False)
    return {
        "prompt_input_ids": prompt_ids, "prompt_attention_mask": prompt_mask,
        "chosen_input_ids": chosen_ids, "chosen_attention_mask": chosen_mask,
        "rejected_input_ids": rejected_ids, "rejected_attention_mask": rejected_mask,
    }


def trl_self(loss_type: str, label_smoothing: float) -> SimpleNamespace:
    """The attributes ``concatenated_forward`` and ``dpo_loss`` read from a ``DPOTrainer``."""
    return SimpleNamespace(
        concatenated_inputs=DPOTrainer.concatenated_inputs, pad_token_id=PAD,
        label_pad_token_id=-100, aux_loss_enabled=False, is_encoder_decoder=False,
        max_length=None, truncation_mode="keep_end", use_logits_to_keep=False,
        padding_free=False, use_weighting=False, loss_type=[loss_type],
        args=SimpleNamespace(rpo_alpha=None, ld_alpha=None),
        accelerator=SimpleNamespace(device=torch.device("cpu")), reference_free=False,
        f_divergence_type=FDivergenceType.REVERSE_KL, f_divergence_params={}, beta=BETA,
        label_smoothing=label_smoothing,
    )


def our_logps(
    model: LlamaForCausalLM, examples: list[tuple[list[int], list[int], list[int]]],
    average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward on ``[chosen rows; rejected rows]``, right-padded, then ``sequence_logps``."""
    rows = [p + c for p, c, _ in examples] + [p + r for p, _, r in examples]
    ids, attention = pad_rows(rows, left=False)
    completion = torch.zeros_like(ids)
    for i, (p, c, r) in enumerate(examples):
        completion[i, len(p): len(p) + len(c)] = 1
        completion[len(examples) + i, len(p): len(p) + len(r)] = 1
    logits = model(ids, attention_mask=attention).logits
    logps = sequence_logps(logits, ids, completion, average=average)
    n = len(examples)
    return logps[:n], logps[n:]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def compare(dtype: torch.dtype) -> dict[str, float]:
    policy, ref = tiny_llama(1, dtype), tiny_llama(2, dtype)
    examples = make_examples()
    batch = trl_batch(examples)
    out: dict[str, float] = {}

    trl_pol = DPOTrainer.concatenated_forward(trl_self("sigmoid", 0.0), policy, batch)
    with torch.no_grad():
        trl_ref = DPOTrainer.concatenated_forward(trl_self("sigmoid", 0.0), ref, batch)
        ref_c, ref_r = our_logps(ref, examples)
    pol_c, pol_r = our_logps(policy, examples)
    out["policy_chosen_logps"] = max_diff(pol_c, trl_pol["chosen_logps"])
    out["policy_rejected_logps"] = max_diff(pol_r, trl_pol["rejected_logps"])
    out["ref_chosen_logps"] = max_diff(ref_c, trl_ref["chosen_logps"])
    out["ref_rejected_logps"] = max_diff(ref_r, trl_ref["rejected_logps"])
    # Controls that the comparison has teeth: the log-probs are far from 0, and scoring the
    # prompt tokens too (no prompt mask) would differ from TRL by whole nats.
    out["control_abs_policy_chosen_logps"] = pol_c.abs().min().item()
    with torch.no_grad():
        rows = [p + c for p, c, _ in examples]
        ids, attention = pad_rows(rows, left=False)
        unmasked = sequence_logps(policy(ids, attention_mask=attention).logits, ids, attention)
    out["control_unmasked_prompt_diff"] = (unmasked - trl_pol["chosen_logps"]).abs().min().item()

    # TRL feeds IPO per-token mean log-probs: that is sequence_logps(average=True).
    with torch.no_grad():
        trl_ipo = DPOTrainer.concatenated_forward(trl_self("ipo", 0.0), policy, batch)
        mean_c, mean_r = our_logps(policy, examples, average=True)
    out["ipo_mean_chosen_logps"] = max_diff(mean_c, trl_ipo["chosen_logps"])
    out["ipo_mean_rejected_logps"] = max_diff(mean_r, trl_ipo["rejected_logps"])

    trl_logps = (trl_pol["chosen_logps"], trl_pol["rejected_logps"],
                 trl_ref["chosen_logps"], trl_ref["rejected_logps"])
    ours = (pol_c, pol_r, ref_c, ref_r)
    for loss_type, eps, name, options in LOSSES:
        trl_losses, trl_cr, trl_rr = DPOTrainer.dpo_loss(trl_self(loss_type, eps), *trl_logps,
                                                         loss_type=loss_type)
        mine = PAIR_LOSSES.get(name)(*ours, beta=BETA, options=options)
        same_inputs = PAIR_LOSSES.get(name)(*trl_logps, beta=BETA, options=options)
        key = f"{loss_type}_eps{eps}"
        out[f"loss_{key}"] = max_diff(mine, trl_losses)
        out[f"loss_same_inputs_{key}"] = max_diff(same_inputs, trl_losses)
        out[f"chosen_rewards_{key}"] = max_diff(implicit_rewards(pol_c, ref_c, BETA), trl_cr)
        out[f"rejected_rewards_{key}"] = max_diff(implicit_rewards(pol_r, ref_r, BETA), trl_rr)

    # Gradients of the mean cDPO loss w.r.t. every policy parameter: TRL path vs ours.
    trl_losses, _, _ = DPOTrainer.dpo_loss(trl_self("sigmoid", 0.1), *trl_logps)
    trl_grads = torch.autograd.grad(trl_losses.mean(), list(policy.parameters()))
    pol_c, pol_r = our_logps(policy, examples)
    mine = PAIR_LOSSES.get("dpo")(pol_c, pol_r, ref_c, ref_r, beta=BETA,
                                  options={"label_smoothing": 0.1})
    our_grads = torch.autograd.grad(mine.mean(), list(policy.parameters()))
    out["grad_cdpo_params"] = max(max_diff(a, b) for a, b in zip(our_grads, trl_grads, strict=True))
    return out


def spec_vectors() -> dict[str, float]:
    """ALGORITHMS.md §0 vectors through TRL's own ``dpo_loss``."""
    logps = (torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
             torch.tensor([-11.0]))
    expected = {("sigmoid", 0.0): 0.598139, ("sigmoid", 0.1): 0.618139,
                ("robust", 0.1): 0.573139, ("ipo", 0.0): 9.0}
    return {
        f"trl_{lt}_eps{eps}": abs(
            DPOTrainer.dpo_loss(trl_self(lt, eps), *logps, loss_type=lt)[0].item() - value
        )
        for (lt, eps), value in expected.items()
    }


def main() -> int:
    result = {
        "trl_version": trl.__version__,
        "float64": compare(torch.float64),
        "float32": compare(torch.float32),
        "spec_vectors": spec_vectors(),
    }
    json.dump(result, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
