"""The model's own refusals for the pairs of an align job that used a fallback refusal: the
harmful pairs that chose one (``--side harmful``, the default) or the benign pairs that rejected
one (``--side benign``). Each prompt is asked again with the answer prefilled with an apology
(chat completions with ``continue_final_message``), greedy, as long as synthesis answers. Writes
``[[pair index, text], ...]`` for the continuations that refuse, the input of
``bench/align_loop.py --prefilled``.

    .venv/bin/python bench/prefill_refusals.py --home /tmp/align-home --pairs-from JOB \\
        --output /tmp/prefilled.json

The apology alone satisfies the refusal rules, so the rules judge the continuation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.common import ServerProcess, setup_logging  # noqa: E402
from contracts.refusal import keyword_refusal  # noqa: E402
from trainers.distill import FALLBACK_REFUSALS  # noqa: E402

logger = logging.getLogger("bench.prefill_refusals")
PREFIX = "I'm sorry, but"
USER = "bench-user"


async def continuations(base_url: str, model: str, prompts: dict[int, list[dict[str, str]]],
                        max_tokens: int) -> dict[int, str]:
    gate = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=base_url, timeout=600,
                                 headers={"Authorization": f"Bearer {USER}"}) as client:
        async def one(i: int, messages: list[dict[str, str]]) -> tuple[int, str]:
            body: dict[str, Any] = {
                "model": model, "messages": [*messages, {"role": "assistant", "content": PREFIX}],
                "max_tokens": max_tokens, "temperature": 0.0, "seed": 0,
                "add_generation_prompt": False, "continue_final_message": True}
            async with gate:
                r = await client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            return i, str(r.json()["choices"][0]["message"]["content"] or "")

        return dict(await asyncio.gather(*(one(i, m) for i, m in prompts.items())))


def main() -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", required=True)
    p.add_argument("--pairs-from", required=True, metavar="JOB_ID")
    p.add_argument("--output", required=True)
    p.add_argument("--max-tokens", type=int, default=96, help="Synthesis' answer length.")
    p.add_argument("--side", choices=("harmful", "benign"), default="harmful",
                   help="Which fallback refusals to replace: chosen on harmful pairs or "
                        "rejected on benign ones.")
    args = p.parse_args()
    home = Path(args.home)
    pairs = torch.load(home / "jobs" / args.pairs_from / "align-data.pt",
                       weights_only=False)["pairs"]
    side = "chosen" if args.side == "harmful" else "rejected"
    prompts = {i: pair["messages"] for i, pair in enumerate(pairs)
               if pair.get("kind") == args.side and pair[side] in FALLBACK_REFUSALS}
    env = {"ALIGNSERVE_HOME": str(home), "ALIGNSERVE_API_KEYS": USER,
           "ALIGNSERVE_ADMIN_KEYS": "bench-admin", "ALIGNSERVE_WORKERS": "0",
           "ALIGNSERVE_KV_CACHE_GIB": "3", "ALIGNSERVE_STORE_URL": f"sqlite:///{home / 'jobs.db'}"}
    server = ServerProcess("prefill", [sys.executable, "-m", "server.cli", "serve", "--port",
                                       "{port}"], env=env)
    server.start(timeout_s=600)
    try:
        model = httpx.get(f"{server.base_url}/v1/models",
                          headers={"Authorization": f"Bearer {USER}"}).json()["data"][0]["id"]
        got = asyncio.run(continuations(server.base_url, model, prompts, args.max_tokens))
    finally:
        server.stop()
    refusals = sorted((i, PREFIX + text) for i, text in got.items() if keyword_refusal(text))
    Path(args.output).write_text(json.dumps(refusals, indent=1))
    logger.info("%d of %d continuations refuse; wrote %s", len(refusals), len(got), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
