"""Linear alignment throughput: aligned vs plain requests on our server, and vs the authors' loop.

One run, same prompts and ``max_tokens`` throughout:

1. Our server, 16 concurrent streaming chats, greedy: plain rounds and aligned rounds
   (``alignment: {"principle": ..., "alpha": 3}``), alternating (P A A P P A ...) to cancel
   drift. Aligned throughput counts the visible tokens only, as ``usage`` does; every aligned
   token costs two forward rows (z_p and z_0), so about half of plain is the physical
   expectation (target >= 0.45).
2. With the server stopped, a straightforward per-request transformers loop like the paper
   authors' ``contra_generate`` (batch size 1, one KV cache per branch, greedy, the rule from
   ``align_core``) on a subset of the prompts, sequentially (target: server >= 10x its tok/s).
   Its greedy answers are also compared with the server's aligned answers, as a sanity check.

    ALIGNSERVE_HOME=$PWD/.home .venv/bin/python -m bench.linear_alignment \
        --output bench/linear_alignment.json
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
    CpuWindow,
    LoadResult,
    ServerProcess,
    add_load_options,
    default_model_dir,
    exit_on_sigterm,
    load_average,
    machine_info,
    markdown_table,
    median,
    metric_value,
    run_load,
    setup_logging,
    wait_for_quiet,
    write_json,
)
from bench.serving import ENGINE_ENV, ours_cmd

logger = logging.getLogger("bench.linear_alignment")

# The paper's general helpful-harmless principle (server.alignment.HELPFUL_HARMLESS).
DEFAULT_PRINCIPLE = "helpful_harmless"


# -- the authors' loop, in transformers ------------------------------------------------------
def build_contexts(
    renderer: Any, prompt: str, principle: str
) -> tuple[list[int], list[int]]:
    """(z_0 ids, z_p ids) exactly as the server builds them (server/api/generation.py)."""
    from server.alignment import aligned_conversations

    messages = [{"role": "user", "content": prompt}]
    plain, principled = aligned_conversations(messages, principle, renderer.default_system_prompt)
    ids_0 = renderer.encode(renderer.render_chat(plain, True))
    ids_p = renderer.encode(renderer.render_chat(principled, True))
    return ids_0, ids_p


def authors_loop(
    model: Any,
    ids_p: list[int],
    ids_0: list[int],
    alpha: float,
    top_p: float,
    temperature: float,
    max_new_tokens: int,
    eos_ids: set[int],
) -> list[int]:
    """``contra_generate`` at batch size 1 (docs/algorithms.md §1.2/§1.5): two branches, each with
    its own KV cache, the same greedy token appended to both every step."""
    import torch

    from align_core.linear_alignment import linear_alignment_logits

    with torch.inference_mode():
        in_p = torch.tensor([ids_p])  # (1, Tp)
        in_0 = torch.tensor([ids_0])  # (1, T0)
        am_p, am_0 = torch.ones_like(in_p), torch.ones_like(in_0)
        out_p = model(input_ids=in_p, attention_mask=am_p, use_cache=True)
        out_0 = model(input_ids=in_0, attention_mask=am_0, use_cache=True)
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            z = linear_alignment_logits(
                out_p.logits[:, -1].float(), out_0.logits[:, -1].float(), alpha, top_p,
                temperature,
            )  # (1, V)
            y = z.argmax(-1)  # (1,)
            tokens.append(int(y))
            if tokens[-1] in eos_ids:
                break
            one = torch.ones_like(am_p[:, :1])
            am_p, am_0 = torch.cat([am_p, one], 1), torch.cat([am_0, one], 1)
            out_p = model(input_ids=y[:, None], attention_mask=am_p,
                          past_key_values=out_p.past_key_values, use_cache=True)
            out_0 = model(input_ids=y[:, None], attention_mask=am_0,
                          past_key_values=out_0.past_key_values, use_cache=True)
    return tokens


def run_authors_loop(
    model_dir: Path, prompts: list[str], principle: str, args: argparse.Namespace
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from server.engine.renderer import HFChatRenderer

    load_started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    load_s = time.perf_counter() - load_started
    renderer = HFChatRenderer(tokenizer)
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos])}
    if tokenizer.eos_token_id is not None:
        eos_ids.add(int(tokenizer.eos_token_id))
    texts: dict[int, str] = {}
    total_tokens, total_s = 0, 0.0
    with CpuWindow([]) as cpu:  # only this process: the rest is 'other processes'
        for i, prompt in enumerate(prompts):
            ids_0, ids_p = build_contexts(renderer, prompt, principle)
            started = time.perf_counter()
            tokens = authors_loop(model, ids_p, ids_0, args.alpha, args.nucleus_top_p,
                                  args.nucleus_temperature, args.max_tokens, eos_ids)
            elapsed = time.perf_counter() - started
            total_tokens += len(tokens)
            total_s += elapsed
            texts[i] = tokenizer.decode(tokens, skip_special_tokens=True)
            logger.info("transformers loop, prompt %d: %d tokens in %.1f s (%.1f tok/s)",
                        i, len(tokens), elapsed, len(tokens) / elapsed)
            if total_s > args.hf_budget_s:
                logger.info("transformers loop: time budget spent after %d prompts", i + 1)
                break
    return {
        "prompts": len(texts),
        "output_tokens": total_tokens,
        "foreign_cores": cpu.foreign_cores,
        "seconds": total_s,
        "throughput_tok_s": total_tokens / total_s,
        "model_load_s": load_s,
        "torch_threads": torch.get_num_threads(),
        "texts": texts,
    }


# -- the server rounds -----------------------------------------------------------------------
def timed_load(
    server: ServerProcess, args: argparse.Namespace, extra_body: dict[str, Any] | None
) -> tuple[LoadResult, CpuWindow]:
    with CpuWindow(server.processes()) as cpu:
        load = asyncio.run(run_load(
            server.base_url, args.served_name, PROMPTS, args.requests, args.concurrency,
            args.max_tokens, extra_body=extra_body,
        ))
    if load.errors:
        raise RuntimeError(f"{load.errors} requests failed; log: {server.log_path}")
    return load, cpu


def server_rounds(
    args: argparse.Namespace, env: dict[str, str], alignment: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    server = ServerProcess("ours", ours_cmd(sys.executable), env=env, cwd=args.ours_root)
    with server:
        for extra in (None, {"alignment": alignment}):  # warm-up, both kinds
            warm = asyncio.run(run_load(
                server.base_url, args.served_name, PROMPTS, args.warmup_requests,
                args.concurrency, args.max_tokens, extra_body=extra,
            ))
            if warm.errors:
                raise RuntimeError(f"warm-up failed; log: {server.log_path}")
        for k in range(args.rounds):
            order = ("plain", "aligned") if k % 2 == 0 else ("aligned", "plain")
            for kind in order:
                quiet = wait_for_quiet(args.max_busy, args.max_wait)
                extra = {"alignment": alignment} if kind == "aligned" else None
                load, cpu = timed_load(server, args, extra)
                figures = {
                    "kind": kind, **load.summary(),
                    "server_cpu_s_per_1k_tok": 1000 * cpu.watched_cpu_s / load.output_tokens,
                    "foreign_cores": cpu.foreign_cores,
                    "busy_cores_before": quiet,
                    "load_avg": load_average()[0],
                    "texts": {r.prompt_index: r.text for r in load.results},
                }
                logger.info("%s: %.1f tok/s, TTFT p50 %.3f s, ITL p50 %.4f s, other processes "
                            "%.2f cores", kind, figures["throughput_tok_s"], figures["ttft_p50_s"],
                            figures["itl_p50_s"], figures["foreign_cores"])
                rounds.append(figures)
        metrics = _scrape_pair_restarts(server)
    info = {
        "startup_s": server.startup_s,
        "peak_rss_gib": server.peak_rss_bytes / 2**30,
        "pair_restarts": metrics,
    }
    return rounds, info


def _scrape_pair_restarts(server: ServerProcess) -> float | None:
    import httpx

    text = httpx.get(f"{server.base_url}/metrics", timeout=10.0).text
    return metric_value(text, "alignserve_alignment_pair_restarts_total")


# -- report ----------------------------------------------------------------------------------
def summarise(
    rounds: list[dict[str, Any]], loop: dict[str, Any], hf_prompts: int
) -> dict[str, Any]:
    keys = ["throughput_tok_s", "ttft_p50_s", "ttft_p90_s", "itl_p50_s", "itl_p90_s",
            "e2e_p50_s", "output_tokens", "server_cpu_s_per_1k_tok", "foreign_cores"]
    medians = {
        kind: {k: median([r[k] for r in rounds if r["kind"] == kind]) for k in keys}
        for kind in ("plain", "aligned")
    }
    plain = [r for r in rounds if r["kind"] == "plain"]
    aligned = [r for r in rounds if r["kind"] == "aligned"]
    paired = [a["throughput_tok_s"] / p["throughput_tok_s"]
              for p, a in zip(plain, aligned, strict=False)]
    server_texts = aligned[-1]["texts"]
    matches = sum(server_texts.get(i) == t for i, t in loop["texts"].items())
    return {
        "medians": medians,
        "paired_aligned_over_plain": paired,
        "aligned_over_plain_median_of_pairs": median(paired),
        "aligned_over_plain_ratio_of_medians": medians["aligned"]["throughput_tok_s"]
        / medians["plain"]["throughput_tok_s"],
        "server_aligned_over_transformers_loop": medians["aligned"]["throughput_tok_s"]
        / loop["throughput_tok_s"],
        "loop_texts_equal_to_server": matches,
        "loop_prompts": hf_prompts,
    }


def report(summary: dict[str, Any], loop: dict[str, Any], info: dict[str, Any],
           args: argparse.Namespace) -> str:
    m = summary["medians"]
    rows: list[list[object]] = []
    for label, key, ms in (
        ("output throughput (tok/s)", "throughput_tok_s", False),
        ("TTFT p50 (ms)", "ttft_p50_s", True),
        ("TTFT p90 (ms)", "ttft_p90_s", True),
        ("ITL p50 (ms)", "itl_p50_s", True),
        ("ITL p90 (ms)", "itl_p90_s", True),
        ("end-to-end p50 (s)", "e2e_p50_s", False),
        ("output tokens per round", "output_tokens", False),
        ("server CPU s per 1k output tokens", "server_cpu_s_per_1k_tok", False),
        ("other processes' CPU (cores)", "foreign_cores", False),
    ):
        p, a = m["plain"][key], m["aligned"][key]
        cells = [f"{1000 * v:.1f}" if ms else f"{v:.2f}" for v in (p, a)]
        rows.append([label, *cells, f"{a / p:.3f}" if p else "nan"])
    table = markdown_table(["median over rounds", "plain", "aligned", "aligned / plain"], rows)
    pairs = ", ".join(f"{r:.3f}" for r in summary["paired_aligned_over_plain"])
    loop_rows = [
        ["our server, aligned, 16 concurrent (median)", f"{m['aligned']['throughput_tok_s']:.1f}",
         f"{summary['server_aligned_over_transformers_loop']:.1f}x"],
        [f"transformers loop, batch 1, {loop['prompts']} prompts sequentially (other "
         f"processes: {loop['foreign_cores']:.2f} cores)", f"{loop['throughput_tok_s']:.1f}",
         "1.0x"],
    ]
    return (
        f"{args.rounds} rounds of each kind, {args.requests} requests x {args.max_tokens} max "
        f"tokens, {args.concurrency} concurrent streams, greedy; alignment alpha {args.alpha}, "
        f"nucleus top_p {args.nucleus_top_p} at T {args.nucleus_temperature}\n\n{table}\n\n"
        f"Aligned/plain throughput: median of paired rounds "
        f"{summary['aligned_over_plain_median_of_pairs']:.3f} (pairs: {pairs}); ratio of medians "
        f"{summary['aligned_over_plain_ratio_of_medians']:.3f}; target >= 0.45.\n\n"
        f"{markdown_table(['aligned decoding', 'tok/s', 'relative'], loop_rows)}\n\n"
        f"Server aligned / transformers loop: "
        f"{summary['server_aligned_over_transformers_loop']:.1f}x (target >= 10x). The loop's "
        f"greedy answers equal the server's aligned answers on "
        f"{summary['loop_texts_equal_to_server']} of {loop['prompts']} prompts.\n"
        f"Server start-up {info['startup_s']:.1f} s, peak RSS "
        f"{info['peak_rss_gib']:.2f} GiB, pair restarts {info['pair_restarts']}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(parser, rounds_help="Rounds of each kind.")
    parser.add_argument("--principle", default=DEFAULT_PRINCIPLE,
                        help="Principle text, or the name of a built-in preset.")
    parser.add_argument("--alpha", type=float, default=3.0)
    parser.add_argument("--nucleus-top-p", type=float, default=0.8)
    parser.add_argument("--nucleus-temperature", type=float, default=0.5)
    parser.add_argument("--hf-prompts", type=int, default=4,
                        help="How many prompts the transformers loop runs (sequentially).")
    parser.add_argument("--hf-budget-s", type=float, default=240.0,
                        help="Stop the transformers loop after the prompt that passes this time.")
    args = parser.parse_args(argv)
    setup_logging()
    exit_on_sigterm()

    from server.alignment import build_presets

    presets = build_presets()
    principle = (presets.get(args.principle).text if args.principle in presets
                 else args.principle)
    model_dir = args.model_dir or default_model_dir()
    if not (model_dir / "config.json").is_file():
        parser.error(f"no model at {model_dir}: set ALIGNSERVE_HOME or --model-dir")
    env = {**ENGINE_ENV, "ALIGNSERVE_HOME": str(model_dir.parent.parent),
           # A store of its own: nothing deployed on the shared home is restored here.
           "ALIGNSERVE_STORE_URL": f"sqlite:///{tempfile.mkdtemp()}/jobs.db"}
    alignment = {"principle": principle, "alpha": args.alpha,
                 "nucleus_top_p": args.nucleus_top_p,
                 "nucleus_temperature": args.nucleus_temperature}
    info: dict[str, Any] = {"machine": machine_info(), "load_avg_start": load_average()[0]}
    logger.info("machine: %s", info["machine"])
    started = time.perf_counter()

    rounds, server_info = server_rounds(args, env, alignment)
    hf_prompts = list(PROMPTS[: args.hf_prompts])
    info["busy_cores_before_loop"] = wait_for_quiet(args.max_busy, args.max_wait)
    loop = run_authors_loop(model_dir, hf_prompts, principle, args)

    summary = summarise(rounds, loop, loop["prompts"])
    print(report(summary, loop, server_info, args))
    info["load_avg_end"] = load_average()[0]
    info["bench_wall_s"] = time.perf_counter() - started
    print(f"\nload average at start {info['load_avg_start']:.2f}, at end "
          f"{info['load_avg_end']:.2f}; whole benchmark {info['bench_wall_s']:.0f} s")
    if args.output is not None:
        for r in rounds:
            r.pop("texts")
        write_json(args.output, {
            **info, "settings": vars(args), "principle": principle, "server": server_info,
            "rounds": rounds, "transformers_loop": loop, "summary": summary,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
