"""``alignserve align``: principle in, aligned adapter live (docs/alignment.md).

Talks to a running server with an admin key, like any client: uploads the prompts file (or asks
for the built-in prompts), sends ``POST /admin/v1/align``, then follows the job's events
(synthesis, training steps, the evaluation gate, the deployment) until the adapter is live or
refused. Interrupting the command leaves the job running; rerun with ``--follow JOB_ID``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from server.assets import ProgressFn

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def add_align_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--principle", default=None, help="The principle, as text.")
    source.add_argument("--preset", default=None, help="A principle preset (default harmless).")
    p.add_argument("--prompts", type=Path, default=None,
                   help="JSONL of {prompt or messages, kind: harmful|benign}; default: the "
                   "built-in training prompts (no evaluation suite asks them).")
    p.add_argument("--count", type=int, default=200, help="Built-in prompts to use.")
    p.add_argument("--name", default="aligned", help="Deployment name of the adapter.")
    p.add_argument("--alpha", type=float, default=1.0, help="Linear alignment step.")
    p.add_argument("--objective", default="dpo", choices=("dpo", "ulma", "pointwise_dpo", "sft"))
    p.add_argument("--rpo-alpha", type=float, default=None,
                   help="Chosen-answer NLL weight with dpo (default 0.05; 0: plain DPO).")
    p.add_argument("--steps", type=int, default=None, help="Training steps (default 240).")
    p.add_argument("--attempts", type=int, default=None,
                   help="Trainings in all: a gate refusal trains the same answers again with "
                   "the next seed (default 1).")
    p.add_argument("--no-gate", action="store_true", help="Deploy without the evaluation gate.")
    p.add_argument("--no-deploy", action="store_true", help="Train only.")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)
    p.add_argument("--api-key", default=None, help="Admin key (default $ALIGNSERVE_ADMIN_KEY).")
    p.add_argument("--no-wait", action="store_true", help="Print the job id and return.")
    p.add_argument("--follow", default=None, metavar="JOB_ID", help="Follow an existing job.")
    p.add_argument("--timeout", type=float, default=7200.0, help="Seconds to follow at most.")


def request_body(args: argparse.Namespace, dataset: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"alpha": args.alpha, "name": args.name, "objective": args.objective,
                            "count": args.count, "deploy": not args.no_deploy}
    if args.principle:
        body["principle"] = args.principle
    if args.preset:
        body["preset"] = args.preset
    if dataset is not None:
        body["prompts"] = dataset
    if args.rpo_alpha is not None:
        body["rpo_alpha"] = args.rpo_alpha
    if args.steps is not None:
        body["hyperparameters"] = {"max_steps": args.steps}
    if args.attempts is not None:
        body["attempts"] = args.attempts
    if args.no_gate:
        body["gate"] = None
    return body


def _check(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:500]
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {message}")
    body: dict[str, Any] = r.json()
    return body


def follow(client: httpx.Client, job_id: str, say: ProgressFn, timeout_s: float,
           wants_deploy: bool, sleep: Callable[[float], None] = time.sleep) -> int:
    """Print the job's events until it ends and, when it deploys, until the deployment's
    outcome is known; a refused attempt with another one after it hands over to that job.
    Exit status: 0 live (or trained, without deploy), 1 otherwise."""
    after, deadline, next_job = 0, time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        job = _check(client.get(f"/admin/v1/jobs/{job_id}"))
        with client.stream("GET", f"/admin/v1/jobs/{job_id}/events",
                           params={"after": after}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line.removeprefix("data: "))
                after = event["id"]
                say(f"[{event['level']}] {event['message']}")
                data = event.get("data") or {}
                next_job = data.get("next_job") or next_job
                if data.get("deployment") and data.get("status") in ("live", "failed"):
                    if data["status"] == "live":
                        return 0  # the auto-deployer's outcome
                    if next_job is None:
                        return 1
                    break
        if next_job is not None:
            say(f"following the next attempt: job {next_job}")
            job_id, after, next_job = str(next_job), 0, None
            continue
        if job["status"] in ("failed", "cancelled"):
            say(f"job {job_id} {job['status']}: {job.get('error')}")
            return 1
        if job["status"] == "succeeded" and not wants_deploy:
            return 0
        sleep(3.0)
    say(f"still running after {timeout_s:.0f} s; follow it with --follow {job_id}")
    return 1


def run_align_command(args: argparse.Namespace, say: ProgressFn) -> int:
    key = args.api_key or os.environ.get("ALIGNSERVE_ADMIN_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=600.0) as client:
        try:
            job_id = args.follow
            if job_id is None:
                dataset = None
                if args.prompts is not None:
                    uploaded = _check(client.post(
                        "/admin/v1/datasets", data={"format": "prompts"},
                        files={"file": (args.prompts.name, args.prompts.read_bytes())}))
                    dataset = str(uploaded["id"])
                    say(f"prompts: {dataset} ({uploaded['records']} records)")
                job = _check(client.post("/admin/v1/align", json=request_body(args, dataset)))
                job_id = str(job["id"])
                say(f"job {job_id} queued")
                if args.no_wait:
                    print(job_id)
                    return 0
            return follow(client, job_id, say, args.timeout, not args.no_deploy)
        except (httpx.HTTPError, RuntimeError, OSError) as exc:
            say(f"error: {exc}")
            return 2
        except KeyboardInterrupt:
            say(f"interrupted; the job keeps running: alignserve align --follow {job_id}")
            return 130
