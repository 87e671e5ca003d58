"""GPU smoke test: start the server on this machine's GPU(s) and check that it answers sanely.

    make gpu-smoke                                  # the embedded model, one GPU
    make gpu-smoke ARGS="--model /models/Llama-3.1-8B-Instruct --tp 2"

Starts ``alignserve serve`` (engine core in its own process, Model Runner V2 on CUDA), deploys a
random LoRA adapter of the served model, then sends plain, aligned (linear alignment) and
contrast (adapter against base) chat requests and checks: every answer is 200 with text, the
aligned answer differs from the plain one, the contrast answer names the adapter's version,
log-probabilities are finite, and no group had to restart. Prints one JSON summary; exit 1 on
any failed check. Works on CPU too (slowly), which is how it was checked before any GPU run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.real.server_process import ServerProcess
from tests.real.swap_checkpoints import make_adapter

logger = logging.getLogger("gpu_smoke")
ADMIN = "smoke-admin-key"
QUESTION = "Give me three tips for a job interview."


def _chat(url: str, model: str, alignment: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 48,
        "temperature": 0,
        **extra,
    }
    if alignment is not None:
        body["alignment"] = alignment
    r = httpx.post(f"{url}/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text}")
    return dict(r.json())


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home or tempfile.mkdtemp(prefix="alignserve-smoke-"))
    env = {
        "ALIGNSERVE_ADMIN_KEYS": ADMIN,
        "ALIGNSERVE_TENSOR_PARALLEL_SIZE": str(args.tp),
        "ALIGNSERVE_MAX_MODEL_LEN": str(args.max_model_len),
        # A store of its own: what the smoke test deploys must not reach other servers.
        "ALIGNSERVE_STORE_URL": f"sqlite:///{tempfile.mkdtemp(prefix='smoke-store-')}/jobs.db",
    }
    if args.model:
        env["ALIGNSERVE_MODEL"] = args.model
    server = ServerProcess(home, env=env)
    checks: dict[str, bool] = {}
    summary: dict[str, Any] = {"home": str(home), "log": str(server.log_path), "checks": checks}
    started = time.monotonic()
    server.start(timeout=args.start_timeout)
    try:
        summary["start_s"] = round(time.monotonic() - started, 1)
        log = server.log_path.read_text(errors="replace")
        summary["engine"] = next((ln.split("engine: ", 1)[1] for ln in log.splitlines()
                                  if "engine: " in ln), None)
        served = httpx.get(f"{server.base_url}/v1/models",
                           headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"][0]["id"]
        model_dir = Path(args.model) if args.model and Path(args.model).is_dir() else (
            home / "models" / served)
        make_adapter(model_dir, home, "smoke-adapter", seed=5, scale=0.03)
        r = httpx.post(f"{server.base_url}/admin/v1/deployments",
                       headers={"Authorization": f"Bearer {ADMIN}"},
                       json={"checkpoint": "smoke-adapter", "name": "smoke", "mode": "adapter"},
                       timeout=600)
        checks["adapter_deployed"] = r.status_code in (200, 201) and r.json()["status"] == "live"

        plain = _chat(server.base_url, served, None, logprobs=True, top_logprobs=2)
        aligned = _chat(server.base_url, served, {"preset": "concise", "alpha": 3},
                        logprobs=args.tp == 1, top_logprobs=2 if args.tp == 1 else None)
        contrast = _chat(server.base_url, "smoke", {"contrast": {"against": served},
                                                    "alpha": 1.0})
        texts = {k: v["choices"][0]["message"]["content"]
                 for k, v in (("plain", plain), ("aligned", aligned), ("contrast", contrast))}
        summary["texts"] = texts
        checks["all_answered"] = all(t.strip() for t in texts.values())
        checks["aligned_differs"] = texts["aligned"] != texts["plain"]
        checks["contrast_version"] = contrast["system_fingerprint"].startswith("alignserve:smoke@")
        lps = [t["logprob"] for r in (plain, aligned) if r["choices"][0]["logprobs"]
               for t in r["choices"][0]["logprobs"]["content"]]
        checks["logprobs_finite"] = bool(lps) and all(math.isfinite(x) and x > -9999 for x in lps)
        metrics = httpx.get(f"{server.base_url}/metrics").text
        restarts = [ln for ln in metrics.splitlines()
                    if ln.startswith("alignserve_alignment_pair_restarts_total")]
        checks["no_group_restarts"] = bool(restarts) and float(restarts[0].split()[-1]) == 0.0
        # Leave nothing live behind: the home (and its store) may be a real one.
        r = httpx.delete(f"{server.base_url}/admin/v1/deployments/smoke",
                         headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600)
        checks["adapter_removed"] = r.status_code in (200, 204)
    finally:
        server.stop()
    summary["ok"] = all(checks.values())
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model name or local HF folder.")
    parser.add_argument("--tp", type=int, default=1, help="Tensor-parallel size.")
    parser.add_argument("--home", default=None, help="ALIGNSERVE_HOME (default: a temp dir).")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--start-timeout", type=float, default=900.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    summary = run(args)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
