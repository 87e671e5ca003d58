"""Our server against vLLM's stock OpenAI server: same model, engine settings and load.

One run, alternating servers round by round (ours, stock, stock, ours, ours, stock, ...: each
pair of rounds has both orders, which cancels a linear drift of the machine). Only one server
lives at a time: this machine has 2 cores. Every round starts the server (start-up time), runs a
warm-up load, then the timed load (default 48 streaming chats x 64 tokens, 16 concurrent,
greedy), and stops it again; memory is the peak RSS of the server's process tree.

    ALIGNSERVE_HOME=$PWD/.home .venv/bin/python -m bench.serving --output bench/serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PROMPTS,
    REPO_ROOT,
    CpuWindow,
    ServerProcess,
    add_load_options,
    default_model_dir,
    exit_on_sigterm,
    load_average,
    machine_info,
    markdown_table,
    median,
    run_load,
    setup_logging,
    wait_for_quiet,
    write_json,
)

logger = logging.getLogger("bench.serving")

# The engine settings of server/engine/vllm_args.py on CPU, as CLI flags (chunked prefill and the
# batch token budget at vLLM's defaults on both sides).
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def ours_cmd(python: str) -> list[str]:
    return [python, "-m", "server.cli", "serve", "--port", "{port}"]


def stock_cmd(python: str, model_dir: Path, served_name: str) -> list[str]:
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--host", "127.0.0.1", "--port", "{port}",
        "--model", str(model_dir), "--served-model-name", served_name,
        "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "2048", "--max-num-seqs", "64",
        "--no-async-scheduling", "--seed", "0",
        "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16",
        "--max-logprobs", "20",
        # Ours runs with disable_log_stats=True; match it so the stock server is not slowed by it.
        "--disable-log-stats",
    ]


def run_round(
    name: str, cmd: list[str], env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Start ``cmd``, warm it up, time one load, stop it. Returns the round's figures."""
    quiet = wait_for_quiet(args.max_busy, args.max_wait)
    load_before = load_average()
    cwd = args.ours_root if name == "ours" else REPO_ROOT
    server = ServerProcess(name, cmd, env=env, cwd=cwd)
    with server:
        served = server.served_models()
        if args.served_name not in served:
            raise RuntimeError(f"{name} serves {served}, not {args.served_name}")
        warm = asyncio.run(run_load(
            server.base_url, args.served_name, PROMPTS, args.warmup_requests, args.concurrency,
            args.max_tokens,
        ))
        if warm.errors:
            raise RuntimeError(f"{name}: {warm.errors} warm-up requests failed; log: "
                               f"{server.log_path}")
        with CpuWindow(server.processes()) as cpu:
            load = asyncio.run(run_load(
                server.base_url, args.served_name, PROMPTS, args.requests, args.concurrency,
                args.max_tokens,
            ))
        if load.errors:
            raise RuntimeError(f"{name}: {load.errors} requests failed; log: {server.log_path}")
    figures: dict[str, Any] = {
        "server": name,
        **load.summary(),
        "startup_s": server.startup_s,
        "peak_rss_gib": server.peak_rss_bytes / 2**30,
        "peak_main_rss_gib": server.peak_main_rss_bytes / 2**30,
        "server_cpu_s_per_1k_tok": 1000 * cpu.watched_cpu_s / max(1, load.output_tokens),
        "client_cpu_s": cpu.client_cpu_s,
        "foreign_cores": cpu.foreign_cores,
        "busy_cores_before": quiet,
        "load_avg_before": load_before[0],
        "load_avg_after": load_average()[0],
        "texts": {r.prompt_index: r.text for r in load.results},
    }
    logger.info(
        "%s: %.1f tok/s, TTFT p50 %.3f s, ITL p50 %.4f s, start-up %.1f s, peak RSS %.2f GiB, "
        "other processes %.2f cores", name, figures["throughput_tok_s"], figures["ttft_p50_s"],
        figures["itl_p50_s"], figures["startup_s"], figures["peak_rss_gib"],
        figures["foreign_cores"],
    )
    return figures


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [
        "throughput_tok_s", "ttft_p50_s", "ttft_p90_s", "itl_p50_s", "itl_p90_s", "e2e_p50_s",
        "output_tokens", "startup_s", "peak_rss_gib", "peak_main_rss_gib",
        "server_cpu_s_per_1k_tok", "foreign_cores",
    ]
    medians: dict[str, dict[str, float]] = {}
    for name in ("ours", "stock"):
        mine = [r for r in rounds if r["server"] == name]
        medians[name] = {k: median([r[k] for r in mine]) for k in keys}
    ours = [r for r in rounds if r["server"] == "ours"]
    stock = [r for r in rounds if r["server"] == "stock"]
    pairs = list(zip(ours, stock, strict=False))
    paired = [a["throughput_tok_s"] / b["throughput_tok_s"] for a, b in pairs]
    same_text = sum(a["texts"] == b["texts"] for a, b in pairs)
    return {
        "medians": medians,
        "paired_throughput_ratios": paired,
        "throughput_ratio_median_of_pairs": median(paired),
        "throughput_ratio_of_medians": medians["ours"]["throughput_tok_s"]
        / medians["stock"]["throughput_tok_s"],
        "rounds_with_identical_text": same_text,
    }


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    m = summary["medians"]
    rows: list[list[object]] = []
    for label, key, fmt in (
        ("output throughput (tok/s)", "throughput_tok_s", "{:.1f}"),
        ("TTFT p50 (ms)", "ttft_p50_s", "ms"),
        ("TTFT p90 (ms)", "ttft_p90_s", "ms"),
        ("ITL p50 (ms)", "itl_p50_s", "ms"),
        ("ITL p90 (ms)", "itl_p90_s", "ms"),
        ("end-to-end p50 (s)", "e2e_p50_s", "{:.2f}"),
        ("output tokens per round", "output_tokens", "{:.0f}"),
        ("start-up to healthy (s)", "startup_s", "{:.1f}"),
        ("peak RSS, process tree (GiB)", "peak_rss_gib", "{:.2f}"),
        ("peak RSS, main process (GiB)", "peak_main_rss_gib", "{:.2f}"),
        ("server CPU s per 1k output tokens", "server_cpu_s_per_1k_tok", "{:.2f}"),
        ("other processes' CPU (cores)", "foreign_cores", "{:.2f}"),
    ):
        cells = []
        for name in ("ours", "stock"):
            v = m[name][key]
            cells.append(f"{1000 * v:.1f}" if fmt == "ms" else fmt.format(v))
        ratio = m["ours"][key] / m["stock"][key] if m["stock"][key] else float("nan")
        rows.append([label, *cells, f"{ratio:.3f}"])
    table = markdown_table(["median over rounds", "ours", "stock vLLM", "ours / stock"], rows)
    pairs = ", ".join(f"{r:.3f}" for r in summary["paired_throughput_ratios"])
    return (
        f"{args.rounds} rounds per server, {args.requests} requests x {args.max_tokens} max "
        f"tokens, {args.concurrency} concurrent streams, greedy\n\n{table}\n\n"
        f"Throughput ratio ours/stock: median of paired rounds "
        f"{summary['throughput_ratio_median_of_pairs']:.3f} (pairs: {pairs}); "
        f"ratio of medians {summary['throughput_ratio_of_medians']:.3f}; target >= 0.97.\n"
        f"Identical greedy text in {summary['rounds_with_identical_text']} of "
        f"{min(args.rounds, len(summary['paired_throughput_ratios']))} round pairs."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(parser, rounds_help="Rounds per server.")
    parser.add_argument("--no-chunked-prefill", action="store_true",
                        help="Both servers without chunked prefill (whole prompts per step).")
    args = parser.parse_args(argv)
    setup_logging()
    exit_on_sigterm()

    model_dir = args.model_dir or default_model_dir()
    if not (model_dir / "config.json").is_file():
        parser.error(f"no model at {model_dir}: set ALIGNSERVE_HOME or --model-dir")
    python = sys.executable
    env = {**ENGINE_ENV, "ALIGNSERVE_HOME": str(model_dir.parent.parent),
           # A store of its own: nothing deployed on the shared home is restored here.
           "ALIGNSERVE_STORE_URL": f"sqlite:///{tempfile.mkdtemp()}/jobs.db"}
    servers = {
        "ours": ours_cmd(python),
        "stock": stock_cmd(python, model_dir, args.served_name),
    }
    if args.no_chunked_prefill:
        env["ALIGNSERVE_ENABLE_CHUNKED_PREFILL"] = "false"
        env["ALIGNSERVE_MAX_NUM_BATCHED_TOKENS"] = "4096"
        servers["stock"] += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096"]
    info = machine_info()
    info["load_avg_start"] = load_average()[0]
    logger.info("machine: %s", info)
    started = time.perf_counter()
    rounds: list[dict[str, Any]] = []
    for k in range(args.rounds):
        order = ("ours", "stock") if k % 2 == 0 else ("stock", "ours")
        for name in order:
            rounds.append(run_round(name, servers[name], env, args))
    summary = summarise(rounds)
    text = report(summary, args)
    print(text)
    info["load_avg_end"] = load_average()[0]
    info["bench_wall_s"] = time.perf_counter() - started
    print(f"\nload average at start {info['load_avg_start']:.2f}, at end "
          f"{info['load_avg_end']:.2f}; whole benchmark {info['bench_wall_s']:.0f} s")
    if args.output is not None:
        for r in rounds:
            r.pop("texts")
        write_json(args.output, {
            "machine": info, "settings": {**vars(args), "stock_cmd": servers["stock"],
                                          "ours_cmd": servers["ours"], "env": ENGINE_ENV},
            "rounds": rounds, "summary": summary,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
