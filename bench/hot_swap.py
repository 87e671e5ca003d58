"""Hot-swap latency (adapter and full weights) and the throughput dip during a swap.

Starts its own server on the embedded model, makes adapter and full-weight test checkpoints
(tests/real/swap_checkpoints.py), keeps 16 streaming clients busy, and deploys alternately.

    .venv/bin/python bench/hot_swap.py --swaps 4 --output /tmp/hot_swap.json

Swap latency is the admin call's wall time (verify, load, smoke test, go live); for full swaps
it includes waiting for in-flight requests to drain. The dip is the lowest 1-second token rate
in the window of a swap relative to the median rate before any swap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.real.server_process import ServerProcess
from tests.real.swap_checkpoints import make_adapter, make_full

logger = logging.getLogger("bench.hot_swap")
ADMIN_KEY, USER_KEY = "bench-admin", "bench-user"
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


async def client_loop(
    url: str, model: str, stamps: list[float], stop: asyncio.Event, failures: list[str]
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=USER_KEY, max_retries=0)
    while not stop.is_set():
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=MESSAGES,
                max_tokens=48,
                temperature=0,
                stream=True,  # type: ignore[arg-type]
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    stamps.append(time.monotonic())
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")


def rate_bins(stamps: list[float], start: float, end: float) -> list[float]:
    bins = [0.0] * max(1, int(end - start))
    for t in stamps:
        i = int(t - start)
        if 0 <= i < len(bins):
            bins[i] += 1
    return bins


async def run(url: str, swaps: int, baseline_s: float) -> dict[str, Any]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(timeout=600) as http:
        r = await http.post(
            f"{url}/admin/v1/deployments",
            headers=admin,
            json={"checkpoint": "bench-a1", "name": "ad", "mode": "adapter"},
        )
        r.raise_for_status()
        stamps: list[float] = []
        failures: list[str] = []
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(
                client_loop(url, "ad" if i % 2 else "smollm2-135m-instruct", stamps, stop, failures)
            )
            for i in range(16)
        ]
        t0 = time.monotonic()
        await asyncio.sleep(baseline_s)
        events: list[dict[str, Any]] = []
        for i in range(swaps):
            for mode, ckpt, name in (
                ("adapter", f"bench-a{2 - i % 2}", "ad"),
                ("full", f"bench-f{1 + i % 2}", "fw"),
            ):
                started = time.monotonic()
                r = await http.post(
                    f"{url}/admin/v1/deployments",
                    headers=admin,
                    json={"checkpoint": ckpt, "name": name, "mode": mode},
                )
                ended = time.monotonic()
                body = r.json()
                events.append(
                    {
                        "mode": mode,
                        "status": r.status_code,
                        "wall_s": ended - started,
                        "engine_s": body.get("swap_seconds"),
                        "phases": body.get("phases") or {},
                        "start": started,
                        "end": ended,
                    }
                )
                await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*clients)
        metrics = (await http.get(f"{url}/metrics")).text
    bins = rate_bins(stamps, t0, time.monotonic())
    baseline = statistics.median(bins[1 : int(baseline_s)]) if baseline_s > 2 else bins[0]
    for e in events:
        window = bins[max(0, int(e["start"] - t0)) : int(e["end"] - t0) + 2]
        e["min_rate_ratio"] = (min(window) / baseline) if window and baseline else None
        e["mean_rate_ratio"] = (statistics.mean(window) / baseline) if window and baseline else None
    aborted = [
        line
        for line in metrics.splitlines()
        if line.startswith("alignserve_requests_aborted_by_swap_total")
    ]
    return {
        "tokens_streamed": len(stamps),
        "baseline_tokens_per_s": baseline,
        "tokens_per_s": bins,
        "events_relative_s": [(e["start"] - t0, e["end"] - t0) for e in events],
        "events": events,
        "failures": len(failures),
        "aborted_metric": aborted,
    }


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def summarize(result: dict[str, Any]) -> str:
    lines = [
        "| mode | swaps | median latency (s) | max latency (s) | median phases (s) "
        "| median in-swap rate / baseline | min 1-s rate / baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("adapter", "full"):
        ev = [e for e in result["events"] if e["mode"] == mode and e["status"] == 201]
        if not ev:
            continue
        lat = [e["wall_s"] for e in ev]
        names = list(ev[0]["phases"])
        phases = ", ".join(
            f"{n.removesuffix('_s')} {_median([e['phases'][n] for e in ev if n in e['phases']])}"
            for n in names
        )
        mean_ratio = [e["mean_rate_ratio"] for e in ev if e["mean_rate_ratio"] is not None]
        min_ratio = [e["min_rate_ratio"] for e in ev if e["min_rate_ratio"] is not None]
        lines.append(
            f"| {mode} | {len(ev)} | {_median(lat)} | {max(lat):.2f} | {phases} | "
            f"{_median(mean_ratio)} | {f'{min(min_ratio):.2f}' if min_ratio else '-'} |"
        )
    lines.append(
        f"\nBaseline: {result['baseline_tokens_per_s']:.0f} streamed tokens/s with 16 clients "
        f"({result['tokens_streamed']} tokens in all); failed requests: {result['failures']}; "
        f"{result['aborted_metric']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".home"))
    parser.add_argument("--swaps", type=int, default=4, help="rounds of (adapter swap, full swap)")
    parser.add_argument("--baseline-s", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    home = args.home.resolve()
    from server.model_store import resolve_model

    base = resolve_model(None, home).path
    for i in (1, 2):
        make_adapter(base, home, f"bench-a{i}", seed=100 + i)
        make_full(base, home, f"bench-f{i}", seed=200 + i)
    (home / "deployments.json").unlink(missing_ok=True)
    server = ServerProcess(
        home, env={"ALIGNSERVE_API_KEYS": USER_KEY, "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
                   # A store of its own: deployments must not reach other servers on this home.
                   "ALIGNSERVE_STORE_URL": f"sqlite:///{tempfile.mkdtemp()}/jobs.db"}
    ).start()
    try:
        result = asyncio.run(run(server.base_url, args.swaps, args.baseline_s))
    finally:
        server.stop()
    print(summarize(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
