"""Every training method end to end through the HTTP API, on the embedded model and the real
development data, in a bounded number of steps; then each checkpoint is deployed and generates.

    .venv/bin/python bench/train_methods.py --output docs/training_runs.json --plots docs/img

Starts its own server with one worker (``ALIGNSERVE_WORKERS=1``), uploads the development
datasets (``alignserve data pull`` first), submits one job per method, follows it to the end,
draws its loss curve, deploys the checkpoint as a LoRA adapter and asks it one question.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.real.server_process import ServerProcess

logger = logging.getLogger("bench.train_methods")
ADMIN = "bench-admin"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}

# (method, dataset file, format, extra spec). Small, bounded runs for a 2-core CPU.
JOBS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("dpo", "dpo_pairs.jsonl", "pairs", {}),
    ("pointwise_dpo", "pointwise.jsonl", "pointwise", {}),
    ("ulma", "pointwise.jsonl", "pointwise", {}),
    ("rdpo", "harmful_harmbench.jsonl", "prompts",
     {"max_prompts": 12, "generation": {"max_new_tokens": 40}}),
    ("ld_align", "demonstrations.jsonl", "demonstrations",
     {"max_prompts": 12, "iterations": 2, "autoencoder_steps": 100,
      "generation": {"max_new_tokens": 40}}),
    ("afd", "demonstrations.jsonl", "demonstrations",
     {"max_prompts": 12, "samples_per_prompt": 2, "generation": {"max_new_tokens": 40}}),
]


def upload(client: httpx.Client, path: Path, fmt: str) -> str:
    with path.open("rb") as f:
        r = client.post("/admin/v1/datasets", files={"file": (path.name, f)}, data={"format": fmt})
    r.raise_for_status()
    return str(r.json()["id"])


def follow(client: httpx.Client, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        job = client.get(f"/admin/v1/jobs/{job_id}").json()
        if job.get("step") != last:
            last = job.get("step")
            logger.info("%s: %s step %s/%s", job_id, job["status"], last, job.get("total_steps"))
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(3)
    client.post(f"/admin/v1/jobs/{job_id}/cancel")
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s}s")


def plot(method: str, history: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        if "loss" in row.get("metrics", row):
            m = row.get("metrics", row)
            stages.setdefault(str(row.get("stage", m.get("stage", "train"))), []).append(
                (int(row.get("step", 0)), float(m["loss"]))
            )
    fig, ax = plt.subplots(figsize=(5, 3))
    for stage, points in stages.items():
        label = f"stage {int(float(stage)) + 1}" if stage.replace(".", "").isdigit() else stage
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{method} on SmolLM2-135M (CPU)")
    if len(stages) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = args.home / "data" / "dev"
    server = ServerProcess(args.home, env={"ALIGNSERVE_ADMIN_KEYS": ADMIN,
                                           "ALIGNSERVE_API_KEYS": "bench-user",
                                           "ALIGNSERVE_WORKERS": "1"}).start()
    results = []
    try:
        with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=600) as client:
            for method, file, fmt, extra in JOBS:
                if args.only and method not in args.only:
                    continue
                dataset = upload(client, data / file, fmt)
                body = {"method": method, "dataset": dataset, **extra,
                        "hyperparameters": {"max_steps": args.steps, "batch_size": 2,
                                            "max_length": 256, "max_prompt_length": 128,
                                            "learning_rate": 5e-5, "checkpoint_every": 10}}
                started = time.monotonic()
                r = client.post("/admin/v1/jobs", json=body)
                r.raise_for_status()
                job = follow(client, r.json()["id"], args.timeout)
                wall = time.monotonic() - started
                history = client.get(f"/admin/v1/jobs/{job['id']}/metrics").json()["data"]
                row: dict[str, Any] = {"method": method, "job": job["id"], "status": job["status"],
                                       "wall_s": round(wall, 1), "error": job.get("error")}
                if job["status"] == "succeeded":
                    losses = [h.get("metrics", h).get("loss") for h in history]
                    losses = [v for v in losses if v is not None]
                    row.update(first_loss=losses[0] if losses else None,
                               last_loss=losses[-1] if losses else None,
                               checkpoint=job.get("checkpoint_id"))
                    if args.plots:
                        plot(method, history, args.plots / f"training_{method}.png")
                    row["generation"] = check_checkpoint(client, server.base_url, method, row)
                results.append(row)
                logger.info("%s", row)
    finally:
        server.stop()
    return results


def check_checkpoint(client: httpx.Client, url: str, method: str, row: dict[str, Any]) -> str:
    """Deploy the checkpoint as an adapter and generate with it: it loads and runs in vLLM."""
    r = client.post("/admin/v1/deployments",
                    json={"checkpoint": row["checkpoint"], "name": f"trained-{method}",
                          "mode": "adapter"})
    if r.status_code != 201:
        return f"deploy failed: {r.json().get('reason')}"
    question = [{"role": "user", "content": "Give me a tip for sleeping well."}]
    chat = httpx.post(
        f"{url}/v1/chat/completions", headers={"Authorization": "Bearer bench-user"},
        json={"model": f"trained-{method}", "max_tokens": 24, "temperature": 0,
              "messages": question},
        timeout=120,
    )
    chat.raise_for_status()
    return str(chat.json()["choices"][0]["message"]["content"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".home"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=None)
    args = parser.parse_args()
    args.home = args.home.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
    results = run(args)
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
