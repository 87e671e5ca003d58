"""The alignment loop end to end, and the ablation of docs/alignment.md, on one machine.

One server (the embedded model, one training worker) does everything through its own APIs:

1. The loop: ``POST /admin/v1/align`` with the built-in training prompts (harmful and benign
   requests no evaluation suite asks) and the default gate, timed stage by stage from the job's
   events, with the CPU other processes used meanwhile. A gate refusal is recorded, and the
   checkpoint is then deployed anyway so that it can be measured. ``--pairs-from`` skips this
   and reuses an earlier run's pairs in the same ``--home``.
2. Ablation (``--variants``): the same distilled pairs as datasets (pairs, point-wise labels,
   demonstrations, rDPO scores), one job per variant, each deployed under its own name and
   evaluated as soon as it is live (a run cut short keeps what it measured).
3. Evaluation (``bench/align_eval.py``) on the dev suites (``harmful``, ``helpful``,
   ``benign_sensitive``; prompts no training used): base, principle in the prompt, linear
   alignment, every adapter plainly, and adapters with linear alignment at small alphas;
   answers are cached per configuration. A Bradley-Terry reward model trained on ``dpo_pairs``
   judges ordinary answers against the base's (the helpfulness proxy).

    .venv/bin/python bench/align_loop.py --home /tmp/align-home --output bench/results/align

(the full command with its variants: docs/alignment.md)

Rates are behaviour, not speed: they do not need an idle machine. Stage times do; the script
records the machine's load next to them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.align_eval import USER, Evaluation, helpfulness, table  # noqa: E402
from bench.align_variants import (  # noqa: E402
    VARIANTS,
    derived_datasets,
    lora,
    slug,
    variant_spec,
)
from bench.common import (  # noqa: E402
    CpuWindow,
    ServerProcess,
    busy_cores,
    setup_logging,
    write_json,
)

logger = logging.getLogger("bench.align_loop")
ADMIN = "bench-admin"


class Admin:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {ADMIN}"})

    def upload(self, name: str, data: bytes, fmt: str) -> str:
        r = self.http.post("/admin/v1/datasets", files={"file": (name, data)},
                           data={"format": fmt})
        r.raise_for_status()
        return str(r.json()["id"])

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.http.post("/admin/v1/jobs", json=spec)
        if r.status_code != 200:
            raise RuntimeError(f"job refused: {r.status_code} {r.text}")
        return str(r.json()["id"])

    def wait(self, job_id: str, timeout_s: float = 7200) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.http.get(f"/admin/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                if job["status"] != "succeeded":
                    raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
                return job
            time.sleep(5)
        raise TimeoutError(job_id)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events (it has ended, so the stream closes at once)."""
        out: list[dict[str, Any]] = []
        with self.http.stream("GET", f"/admin/v1/jobs/{job_id}/events") as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    out.append(json.loads(line[len("data: "):]))
        return out

    def checkpoint_of(self, job_id: str) -> str:
        for c in self.http.get("/admin/v1/checkpoints").json()["data"]:
            if c.get("job_id") == job_id:
                return str(c["id"])
        raise RuntimeError(f"job {job_id} left no checkpoint")

    def wait_gate(self, job_id: str, timeout_s: float = 1800) -> dict[str, Any]:
        """The evaluation gate's outcome on the job's checkpoint."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for c in self.http.get("/admin/v1/checkpoints").json()["data"]:
                if c.get("job_id") == job_id and c.get("gate"):
                    return dict(c["gate"])
            time.sleep(3)
        raise TimeoutError(f"no gate outcome for {job_id}")

    def deploy(self, checkpoint: str, name: str) -> None:
        r = self.http.post("/admin/v1/deployments",
                           json={"checkpoint": checkpoint, "name": name, "mode": "adapter"})
        if r.status_code not in (200, 201):
            raise RuntimeError(f"deploy refused: {r.status_code} {r.text}")

    def wait_live(self, name: str, timeout_s: float = 600, job_id: str | None = None) -> None:
        """Until ``name`` serves; with ``job_id``, a deploy the server refused ends the wait."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            names = [m["id"] for m in self.http.get("/v1/models").json()["data"]]
            if name in names:
                return
            for e in self.events(job_id) if job_id else []:
                data = e.get("data") or {}
                if data.get("deployment") == name and data.get("status") == "failed":
                    raise RuntimeError(f"{name} was not deployed: {data.get('reason')}")
            time.sleep(2)
        raise TimeoutError(f"{name} never went live")


def align_once(admin: Admin, server: ServerProcess, args: argparse.Namespace,
               result: dict[str, Any]) -> str:
    """The product's one call (``POST /admin/v1/align``, default gate), timed stage by stage
    from the job's events, with the CPU other processes used meanwhile."""
    body: dict[str, Any] = {
        "preset": args.preset, "alpha": args.la_alpha, "prompts": "builtin",
        "count": args.prompts, "name": args.align_name, "max_tokens": args.synth_tokens,
        "seed": args.seed, "hyperparameters": {"max_steps": args.steps,
                                               "batch_size": args.batch_size,
                                               "learning_rate": args.lr}}
    if args.rpo_alpha is not None:  # else the product's default
        body["rpo_alpha"] = args.rpo_alpha
    if args.attempts > 1:
        body["attempts"] = args.attempts
    if args.answers_from:
        body["answers_from"] = args.answers_from
    if args.gate:
        body["gate"] = json.loads(args.gate)
    tries: list[dict[str, Any]] = []
    with CpuWindow(server.processes()) as window:
        r = admin.http.post("/admin/v1/align", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"align refused: {r.status_code} {r.text}")
        next_job: str | None = str(r.json()["id"])
        while next_job is not None:  # each attempt, until one passes or none is left
            job_id, t0 = next_job, time.monotonic()
            job = admin.wait(job_id)
            gate = admin.wait_gate(job_id)
            events = admin.events(job_id)
            # The server names the next attempt (or says none is left) just after the refusal.
            for _ in range(30):
                if gate.get("status") != "refused" or args.attempts == 1 or any(
                        (e.get("data") or {}).get("stage") == "attempt" for e in events):
                    break
                time.sleep(1)
                events = admin.events(job_id)
            next_job = next(((e.get("data") or {})["next_job"] for e in events
                             if (e.get("data") or {}).get("next_job")), None)
            tries.append({"job": job_id, "gate": gate, "seconds": time.monotonic() - t0,
                          "stages_s": stage_times(events, job),
                          "seed": job["config"]["hyperparameters"]["seed"]})
            logger.info("attempt %d (job %s): gate %s", len(tries), job_id, gate.get("status"))
    result["align"] = {"job": job_id, "loop_s": window.wall_s,
                       "foreign_cores": window.foreign_cores, "gate": gate,
                       "stages_s": stage_times(events, job), "summary": job.get("summary"),
                       "attempts": tries}
    logger.info("align job %s: loop %.0f s (other processes %.2f cores), gate %s",
                job_id, window.wall_s, window.foreign_cores, gate.get("status"))
    if gate.get("status") != "passed":  # measured anyway, under another name
        admin.deploy(admin.checkpoint_of(job_id), args.align_name)
    admin.wait_live(args.align_name)
    return job_id


def stage_times(events: list[dict[str, Any]], job: dict[str, Any]) -> dict[str, float]:
    """Seconds per stage: synthesis (job start to its last synthesis event), training (to the
    job's end), gate (to the gate's outcome)."""
    def first(pred: Any) -> float | None:
        return next((e["created_at"] for e in events if pred(e)), None)

    start = events[0]["created_at"]
    synth_end = first(lambda e: e["message"].startswith("synthesis:") and "pairs in" in
                      e["message"])
    gate_start = first(lambda e: (e.get("data") or {}).get("stage") == "gate")
    gate_end = first(lambda e: (e.get("data") or {}).get("stage") == "gate" and
                     (e.get("data") or {}).get("status") in ("passed", "refused"))
    out: dict[str, float] = {}
    if synth_end is not None:
        out["synthesis"] = synth_end - start
    if synth_end is not None and gate_start is not None:
        out["training_and_checkpoint"] = gate_start - synth_end
    if gate_start is not None and gate_end is not None:
        out["gate"] = gate_end - gate_start
    out["total_events"] = events[-1]["created_at"] - start
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    env = {"ALIGNSERVE_HOME": str(home), "ALIGNSERVE_API_KEYS": USER,
           "ALIGNSERVE_ADMIN_KEYS": ADMIN, "ALIGNSERVE_ENGINE_KEY": USER,
           "ALIGNSERVE_WORKERS": "1", "ALIGNSERVE_KV_CACHE_GIB": "3",
           "ALIGNSERVE_MAX_LORA_RANK": "32",  # the `dpo r32` variant's adapter must fit
           "ALIGNSERVE_STORE_URL": f"sqlite:///{home / 'jobs.db'}"}
    server = ServerProcess("align", [sys.executable, "-m", "server.cli", "serve", "--port",
                                     "{port}"], env=env)
    server.start(timeout_s=600)
    result: dict[str, Any] = {"args": vars(args), "machine_busy_cores_at_start": busy_cores()}
    try:
        admin = Admin(server.base_url)
        model = admin.http.get("/v1/models").json()["data"][0]["id"]
        if args.pairs_from:
            job_id = args.pairs_from
            result["align"] = {"job": job_id, "reused": True}
        else:
            job_id = align_once(admin, server, args, result)
            save(args, result)
        data = torch.load(home / "jobs" / job_id / "align-data.pt", weights_only=False)
        result["align"].update({"synthesis_s": data["seconds"], "synthesis": data["stats"]})
        evaluation = Evaluation(server.base_url, home, model, args)
        result["eval"] = evaluation.add(evaluation.baselines())
        save(args, result)
        if args.helpfulness_rm_checkpoint:
            result["helpfulness_rm"] = {"checkpoint": args.helpfulness_rm_checkpoint}
            score_helpfulness(server.base_url, home, args, result)
        elif args.helpfulness_rm:
            result["helpfulness_rm"] = train_helpfulness_rm(admin, home, args)
            score_helpfulness(server.base_url, home, args, result)
            save(args, result)
        if args.trained:  # variants an earlier run of this command trained into this home
            result["eval"] = evaluation.add([evaluation.adapter(n, slug(n)) for n in args.trained])
            score_helpfulness(server.base_url, home, args, result)
            save(args, result)
        if args.combine:  # a variant trained earlier (--trained) with a little alignment
            combos = [evaluation.with_alignment(args.combine, slug(args.combine), a)
                      for a in args.small_alpha]
            result["eval"] = evaluation.add(combos)
            score_helpfulness(server.base_url, home, args, result)
            save(args, result)
        # Adapters decoded against the base (no principle in any prompt): those deployed
        # already now, the variants this run trains as soon as each is live.
        def contrast_rows(names: list[str]) -> list[Any]:
            return [evaluation.with_contrast(n, n if n == args.align_name else slug(n), a)
                    for n in names for a in args.contrast_alpha]

        ready = [n for n in args.contrast if n not in args.variants]
        if ready:
            result["eval"] = evaluation.add(contrast_rows(ready))
            score_helpfulness(server.base_url, home, args, result)
            save(args, result)
        if args.variants:
            prefilled = ({int(i): str(t) for i, t in json.loads(Path(args.prefilled).read_text())}
                         if args.prefilled else None)
            sets = derived_datasets(admin.upload, data["pairs"], prefilled)
            for name in args.variants:
                _, form, overrides = VARIANTS[name]
                dataset = sets[form]
                t0 = time.monotonic()
                vjob = admin.wait(admin.submit(variant_spec(name, dataset, args, overrides)))
                admin.wait_live(slug(name), job_id=str(vjob["id"]))
                result.setdefault("variants", {})[name] = {
                    "job": vjob["id"], "seconds": time.monotonic() - t0,
                    "summary": vjob.get("summary")}
                rows = [evaluation.adapter(name, slug(name))]
                if VARIANTS[name][0] == "afd":  # its reward model picks among base samples
                    rows.append(evaluation.best_of_n(admin.checkpoint_of(str(vjob["id"]))))
                if name in args.contrast:
                    rows += contrast_rows([name])
                result["eval"] = evaluation.add(rows)
                score_helpfulness(server.base_url, home, args, result)
                save(args, result)
    finally:
        server.stop()
    return result


def train_helpfulness_rm(admin: Admin, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A Bradley-Terry reward model on general-instruction preference pairs (the pulled
    ``dpo_pairs`` set, docs/assets.md), nothing from the loop: the helpfulness proxy."""
    from server.data_pull import pull_datasets

    path = pull_datasets(home, names=("dpo_pairs",))["dpo_pairs"]
    dataset = admin.upload("helpfulness-pairs.jsonl", path.read_bytes(), "pairs")
    spec = {"method": "reward_model", "dataset": dataset, "lora": lora({}),
            "hyperparameters": {"max_steps": args.rm_steps, "batch_size": 4,
                                "learning_rate": 2e-4, "max_length": 384,
                                "max_prompt_length": 192, "seed": args.seed,
                                "checkpoint_every": 1000}}
    job = admin.wait(admin.submit(spec))
    checkpoint = admin.checkpoint_of(str(job["id"]))
    logger.info("helpfulness reward model %s: %s", checkpoint, job.get("summary"))
    return {"job": job["id"], "checkpoint": checkpoint, "summary": job.get("summary")}


def score_helpfulness(base_url: str, home: Path, args: argparse.Namespace,
                      result: dict[str, Any]) -> None:
    if "helpfulness_rm" in result:
        result["helpfulness"] = helpfulness(base_url, home, Path(args.output),
                                            result["helpfulness_rm"]["checkpoint"],
                                            args.eval_limit, result["eval"]["keys"],
                                            args.eval_offset)


def save(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """After every step: a run cut short still leaves what it measured."""
    write_json(Path(args.output) / "align_loop.json", result)
    if "eval" in result:
        (Path(args.output) / "table.md").write_text(table(result))


def main() -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--home", required=True)
    p.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "align"))
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--steps", type=int, default=240,
                   help="Training steps of the loop and of every variant (the product's default).")
    p.add_argument("--synth-tokens", type=int, default=96, help="Answer length in synthesis.")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--attempts", type=int, default=1,
                   help="The loop's attempts (a gate refusal retrains with the next seed).")
    p.add_argument("--answers-from", default=None, metavar="JOB_ID",
                   help="The loop trains on an earlier align job's answers (no synthesis).")
    p.add_argument("--gate", default=None, metavar="JSON",
                   help="The loop's gate (GateSpec as JSON); default: the product's.")
    p.add_argument("--rpo-alpha", type=float, default=None,
                   help="Chosen-NLL weight of the loop's DPO (default: the product's; 0: "
                        "plain DPO).")
    p.add_argument("--align-name", default="aligned",
                   help="Deployment (and table row) of the loop's adapter; another name keeps "
                        "an earlier loop's rows in the same --home and --output.")
    p.add_argument("--preset", default="harmless")
    p.add_argument("--la-alpha", type=float, default=1.0)
    p.add_argument("--aligned-alpha", type=float, default=0.5,
                   help="Alpha of the 'aligned + LA' row.")
    p.add_argument("--small-alpha", type=float, nargs="+", default=[0.25, 0.5],
                   help="Alphas of the --combine rows.")
    p.add_argument("--eval-limit", type=int, default=60)
    p.add_argument("--eval-offset", type=int, default=0,
                   help="First prompt of each suite: 60 (with --eval-limit 40) measures on the "
                   "evaluation gate's validation prompts instead of the reported dev prompts.")
    p.add_argument("--best-of", type=int, default=4, help="N of the AfD Best-of-N row.")
    p.add_argument("--helpfulness-rm", action=argparse.BooleanOptionalAction, default=True,
                   help="Train the helpfulness reward model (Bradley-Terry on dpo_pairs).")
    p.add_argument("--rm-steps", type=int, default=60)
    p.add_argument("--helpfulness-rm-checkpoint", default=None,
                   help="Score with this reward-model checkpoint instead of training one.")
    p.add_argument("--trained", nargs="*", default=[], choices=sorted(VARIANTS),
                   help="Variants already trained and deployed in --home: evaluated only.")
    p.add_argument("--combine", default=None, choices=sorted(VARIANTS),
                   help="Also evaluate this variant with linear alignment at --small-alpha.")
    p.add_argument("--contrast", nargs="*", default=[], metavar="NAME",
                   help="The loop's adapter (--align-name) or variants (trained now or "
                        "before): also decode each against the base at --contrast-alpha.")
    p.add_argument("--contrast-alpha", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    p.add_argument("--pairs-from", default=None, metavar="JOB_ID",
                   help="Skip the loop: the variants train on this align job's pairs (same "
                        "--home; its 'aligned' deployment is restored from there).")
    p.add_argument("--prefilled", default=None, metavar="JSON",
                   help="[[pair index, text], ...]: the model's own refusals, elicited by "
                        "prefilling its answer, for the 'dpo prefilled refusals' variant.")
    args = p.parse_args()
    unknown = [n for n in args.contrast if n != args.align_name and n not in VARIANTS]
    if unknown:
        p.error(f"--contrast: not the loop's adapter ({args.align_name}) nor a variant: {unknown}")
    os.makedirs(args.output, exist_ok=True)
    result = run(args)
    save(args, result)
    logger.info("wrote %s", Path(args.output) / "align_loop.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
