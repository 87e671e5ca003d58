"""vLLM's own offline ``LLM`` on the same model and engine settings: the parity reference.

Run as a subprocess (its own engine, its own memory): prints one JSON list of
{"text", "token_ids"} per prompt, greedy.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    model, max_tokens = sys.argv[1], int(sys.argv[2])
    conversations = json.loads(sys.stdin.read())
    llm = LLM(
        model=model,
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        seed=0,
        enable_chunked_prefill=False,
        max_num_batched_tokens=4096,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outputs = llm.chat(conversations, params, use_tqdm=False)
    result = [
        {"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids)} for o in outputs
    ]
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
