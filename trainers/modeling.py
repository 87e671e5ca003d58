"""Policy loading, tokenisation of (prompt, completion) pairs, batched log-probs and sampling.

The log-prob math itself is ``align_core.sequence_logps``; this module only lays sequences out:
``[prompt ; completion ; eos]`` right-padded, with a completion mask that is true on completion
tokens only (prompt and padding masked, docs/algorithms.md §0).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from align_core import packed_sequence_logps, sequence_logps
from contracts.specs import GenerationSpec, LoraSpec
from trainers.devices import Placement

logger = logging.getLogger(__name__)
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one prompt and one completion (the completion ends with EOS)."""

    prompt: tuple[int, ...]
    completion: tuple[int, ...]


def load_tokenizer(model_path: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    model_path: str, finetuning: str, lora: LoraSpec, placement: Placement | None = None,
    *, gradient_checkpointing: bool = False,
) -> nn.Module:
    """The base model on ``placement``'s device (CPU by default), wrapped in a fresh LoRA
    adapter unless ``finetuning == "full"``. Trained weights are fp32; a frozen LoRA base is
    stored in the placement's compute dtype (bf16 on a GPU that has it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    placement = placement or Placement.cpu()
    dtype = torch.float32 if finetuning == "full" else placement.frozen_dtype
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=dtype, local_files_only=True
    )
    model.to(placement.device)
    if finetuning != "full":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)  # adapter weights: fp32, on the base's device
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    policy: nn.Module = model
    return policy


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of storing them.

    Non-reentrant checkpointing (the reentrant kind loses gradients when no input of a layer
    requires grad, which is the case under a LoRA adapter: hence also
    ``enable_input_require_grads`` for peft models, as peft recommends). The KV cache is off
    while training; ``generate`` runs in eval mode, where layers do not checkpoint.
    """
    lm: Any = model.get_base_model() if is_adapter(model) else model  # type: ignore[operator]
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if is_adapter(model):
        model.enable_input_require_grads()  # type: ignore[operator]
    lm.config.use_cache = False


def is_adapter(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextmanager
def base_weights(model: nn.Module, use_base: bool = True) -> Iterator[None]:
    """The frozen reference / initial policy: the LoRA adapter disabled (no-op for full FT)."""
    ctx: Any = model.disable_adapter() if use_base and is_adapter(model) else nullcontext()  # type: ignore[operator]
    with ctx:
        yield


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return text
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return turns + "Assistant: "


def encode(
    tokenizer: Any, messages: Messages, completion: str, max_length: int, max_prompt_length: int
) -> Encoded:
    """Tokenise; keep the prompt's last ``max_prompt_length`` tokens, cut the completion."""
    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False).input_ids
    prompt = prompt[-max_prompt_length:]
    body = [*tokenizer(completion, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    return Encoded(tuple(prompt), tuple(body[: max_length - len(prompt)]))


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask``, all ``(B, T)``."""
    width = max(len(e.prompt) + len(e.completion) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    completion = torch.zeros((len(items), width), dtype=torch.bool)
    for row, e in enumerate(items):
        n_prompt, n = len(e.prompt), len(e.prompt) + len(e.completion)
        ids[row, :n] = torch.tensor(e.prompt + e.completion)
        attention[row, :n] = 1
        completion[row, n_prompt:n] = True
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def batch_logps(
    model: nn.Module, items: Sequence[Encoded], pad_id: int, *, average: bool = False
) -> Tensor:
    """``(B,)`` completion log-probs (sum, or per-token mean for ULMA), with gradients.

    Where the model is a plain decoder + linear LM head, sequences run one at a time, unpadded
    (DPO batches mix short and long answers: a quarter of the positions were padding in the
    benchmark's batches), and the head (a ``V x H`` matmul and a ``V``-wide log-softmax per
    position, a fifth of this model's forward work) runs only on the positions that score a
    completion token.
    """
    parts = decoder_and_head(model)
    if parts is None:  # one padded forward pass through the whole model
        batch = to_device(collate(items, pad_id), model_device(model))
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits  # (B, T, V)
        return sequence_logps(
            logits, batch["input_ids"], batch["completion_mask"], average=average
        )
    decoder, head = parts
    device = next(head.parameters()).device
    scored, targets, rows = [], [], []
    for row, e in enumerate(items):  # one unpadded sequence at a time: no pad-token work
        ids = torch.tensor([e.prompt + e.completion], device=device)  # (1, L)
        hidden = decoder(input_ids=ids).last_hidden_state[0]  # (L, H)
        start = max(len(e.prompt), 1)  # the first scored token (token 0 has no predecessor)
        scored.append(hidden[start - 1 : -1])  # (L - start, H): position t-1 scores token t
        targets.append(ids[0, start:])
        rows.append(torch.full((ids.shape[1] - start,), row, device=device))
    logits = head(torch.cat(scored))  # (N, V)
    return packed_sequence_logps(
        logits, torch.cat(targets), torch.cat(rows), len(items), average=average
    )


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {name: value.to(device) for name, value in batch.items()}


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The decoder stack and LM head of a causal LM whose logits are ``head(hidden)`` exactly
    (no logit scaling or soft-capping), LoRA layers included; None for any other model."""
    lm = model.get_base_model() if is_adapter(model) else model  # type: ignore[operator]
    decoder, head = getattr(lm, "model", None), getattr(lm, "lm_head", None)
    config = getattr(lm, "config", None)
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module) or config is None:
        return None
    if getattr(config, "final_logit_softcapping", None) is not None:
        return None
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None
    if type(lm).__name__ not in PLAIN_HEAD_MODELS:
        return None
    return decoder, head


# Causal LMs whose ``forward`` computes ``logits = lm_head(decoder(...).last_hidden_state)``.
PLAIN_HEAD_MODELS = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)


@torch.no_grad()
def frozen_logps(
    model: nn.Module, items: Sequence[Encoded], pad_id: int, *, use_base: bool,
    average: bool = False, batch_size: int = 8,
) -> Tensor:
    """Reference log-probs of every item, computed once (``(N,)``), in eval mode; fp32 on the
    CPU, wherever the model runs (they are cached, saved and indexed with CPU indices)."""
    was_training = model.training
    model.eval()
    out = []
    with base_weights(model, use_base):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            out.append(batch_logps(model, chunk, pad_id, average=average))
    model.train(was_training)
    return torch.cat(out).float().cpu() if out else torch.zeros(0)


@torch.no_grad()
def sample(
    model: nn.Module, tokenizer: Any, prompts: Sequence[Messages], gen: GenerationSpec, *,
    use_base: bool = False, max_prompt_length: int = 256, batch_size: int = 8,
) -> list[str]:
    """One sampled (or greedy, at temperature 0) answer per prompt, left-padded batches."""
    was_training = model.training
    model.eval()
    answers: list[str] = []
    with base_weights(model, use_base):
        for start in range(0, len(prompts), batch_size):
            answers += _sample_chunk(model, tokenizer, prompts[start : start + batch_size], gen,
                                     max_prompt_length)
    model.train(was_training)
    return answers


def _sample_chunk(
    model: nn.Module, tokenizer: Any, prompts: Sequence[Messages], gen: GenerationSpec,
    max_prompt_length: int,
) -> list[str]:
    encoded = [
        tokenizer(render_prompt(tokenizer, m), add_special_tokens=False).input_ids[
            -max_prompt_length:
        ]
        for m in prompts
    ]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    device = model_device(model)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded],
                             device=device)
    # One process generates (under torchrun, rank 0 makes a recipe's data while the others
    # wait): never let transformers sync the ranks' generation steps, which it does by default
    # for modules FSDP manages.
    kwargs: dict[str, Any] = {"do_sample": gen.temperature > 0, "synced_gpus": False}
    if gen.temperature > 0:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    out = model.generate(  # type: ignore[operator]
        input_ids=ids, attention_mask=attention, max_new_tokens=gen.max_new_tokens,
        pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **kwargs,
    )
    return [
        tokenizer.decode(row[width:], skip_special_tokens=True).strip() or "."
        for row in out
    ]


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The parameters being trained (LoRA weights, or all of them for full fine-tuning), as
    CPU copies (a resume point loads on any device)."""
    return {
        name: p.detach().to("cpu", copy=True)
        for name, p in model.named_parameters() if p.requires_grad
    }


def load_trainable_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise RuntimeError(f"resume state has unknown parameters: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_model(
    model: nn.Module, tokenizer: Any, folder: Path, state: dict[str, Tensor] | None = None
) -> None:
    """LoRA: the peft adapter (vLLM-loadable); full: the whole HF model. Plus the tokenizer.
    ``state``: the trained weights when ``model`` holds only shards of them (FSDP)."""
    save_pretrained(model, folder, state)
    tokenizer.save_pretrained(folder)


def save_pretrained(model: nn.Module, folder: Path, state: dict[str, Tensor] | None) -> None:
    if state is None:
        model.save_pretrained(folder)  # type: ignore[operator]
    else:  # peft keeps the adapter's keys of it; transformers drops tied duplicates
        model.save_pretrained(folder, state_dict=state)  # type: ignore[operator]
