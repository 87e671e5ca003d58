"""Data synthesis through the serving engine vs through transformers' ``generate``.

The same prompts (the built-in align training prompts), the same model, greedy, the same
``max_tokens``: once through the running server's OpenAI API with ``concurrency`` requests in
flight (``trainers.distill``, what ``align`` jobs do), once through ``trainers.modeling.sample``
(what rDPO, AfD and LD-Align used before, in the worker process, batches of 8). Alternating
rounds; each round waits for a quiet machine and records the cores other processes used.

    .venv/bin/python bench/synthesis_speed.py --home /tmp/align-home --prompts 64 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    CpuWindow,
    ServerProcess,
    median,
    setup_logging,
    wait_for_quiet,
    write_json,
)
from contracts.specs import GenerationSpec, LoraSpec  # noqa: E402
from server.align_prompts import training_prompts  # noqa: E402
from trainers.distill import EngineClient, PromptItem, answer_all  # noqa: E402
from trainers.modeling import load_policy, load_tokenizer, sample  # noqa: E402

logger = logging.getLogger("bench.synthesis_speed")


def engine_answers(engine: EngineClient, items: list[PromptItem], max_tokens: int,
                   concurrency: int) -> list[str]:
    return asyncio.run(answer_all(engine, [i.messages for i in items], max_tokens=max_tokens,
                                  temperature=0.0, concurrency=concurrency))


def main() -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--home", required=True)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-busy", type=float, default=0.15)
    p.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" /
                                           "synthesis_speed.json"))
    args = p.parse_args()
    home = Path(args.home)
    rows = training_prompts(home, args.prompts)
    items = [PromptItem([{"role": "user", "content": r["prompt"]}], r["kind"]) for r in rows]
    model_dir = home / "models" / "smollm2-135m-instruct"
    env = {"ALIGNSERVE_HOME": str(home), "ALIGNSERVE_KV_CACHE_GIB": "2"}
    server = ServerProcess("synthesis", [sys.executable, "-m", "server.cli", "serve", "--port",
                                         "{port}"], env=env)
    server.start(timeout_s=600)
    result: dict[str, Any] = {"args": vars(args), "rounds": []}
    try:
        import httpx

        model = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
        engine = EngineClient(server.base_url, model)
        tokenizer = load_tokenizer(str(model_dir))
        policy = load_policy(str(model_dir), "full", LoraSpec())
        torch.set_num_threads(os.cpu_count() or 1)
        gen = GenerationSpec(max_new_tokens=args.max_tokens, temperature=0.0)
        chats = [i.messages for i in items]
        engine_answers(engine, items[:4], 8, 4)  # warm both paths
        sample(policy, tokenizer, chats[:2], gen)
        for r in range(args.rounds):
            entry: dict[str, Any] = {}
            for side in (("engine", "transformers") if r % 2 == 0 else
                         ("transformers", "engine")):
                entry[f"{side}_quiet_before"] = wait_for_quiet(args.max_busy, 600)
                watched = server.processes() if side == "engine" else []
                with CpuWindow(watched) as window:
                    if side == "engine":
                        texts = engine_answers(engine, items, args.max_tokens,
                                               args.concurrency)
                    else:
                        texts = sample(policy, tokenizer, chats, gen)
                entry[side] = {"wall_s": window.wall_s, "foreign_cores": window.foreign_cores,
                               "mean_chars": sum(len(t) for t in texts) / len(texts)}
                logger.info("round %d %s: %.1f s (other processes %.2f cores)", r, side,
                            window.wall_s, window.foreign_cores)
            entry["speedup"] = entry["transformers"]["wall_s"] / entry["engine"]["wall_s"]
            result["rounds"].append(entry)
        result["median_speedup"] = median([e["speedup"] for e in result["rounds"]])
        result["machine"] = {"cpus": os.cpu_count(),
                             "memory_gib": psutil.virtual_memory().total / 2**30,
                             "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    finally:
        server.stop()
    write_json(Path(args.output), result)
    logger.info("median speed-up %.2fx; %s", result.get("median_speedup", float("nan")),
                json.dumps([round(e["speedup"], 2) for e in result["rounds"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
