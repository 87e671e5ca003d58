"""Chaos run: kill -9 the server and a worker mid-job under load; check that nothing is lost.

    .venv/bin/python scripts/chaos.py                 # full run (about 10-15 min on 2 cores)
    .venv/bin/python scripts/chaos.py --short         # server kill only (tests/real/test_chaos.py)

On a home and store of its own (a temporary folder unless ``--home``), it starts ``alignserve
serve`` with one training worker in a process group of its own, deploys a seeded adapter
(``chaos-live``), puts chat load on the base model and on the adapter, and submits a short DPO
job that deploys itself when done (``chaos-dpo``). Mid-job it kills the server with SIGKILL,
checks that every process of its group went away (the engine core and the worker die with it:
PDEATHSIG), and starts it again; then (not with ``--short``) it kills the worker with SIGKILL
and lets the server's pool replace it. At the end it checks, and prints:

- the job succeeded and its metrics hold every step 1..N exactly once, and it resumed from a
  resume point instead of starting over;
- no process of a killed or stopped server's group is left (listed by pid);
- every deployment that was live before a kill answers again, and so does the job's own.

Exit status 0 only if all of that holds. The load's failures while the server is down are
expected and reported, not checked. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

logger = logging.getLogger("chaos")


class Server:
    """``alignserve serve`` in a process group of its own (so its leftovers can be found)."""

    def __init__(self, home: Path, model: Path, port: int, env: dict[str, str]) -> None:
        self.home, self.model, self.port, self.env = home, model, port, env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 600) -> float:
        self.starts += 1
        log = open(self.home / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - child owns it
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port),
             "--model", str(self.model)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log.name}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=5)
                if r.status_code == 200:
                    return time.monotonic() - started
                if r.json().get("status") in ("dead", "failed"):  # it will not get better
                    raise RuntimeError(f"server {r.json()['status']}: "
                                       f"{r.json()['error']['message']}; see {log.name}")
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not healthy in {timeout:.0f} s; see {log.name}")

    def group(self) -> list[psutil.Process]:
        """Every live process of the server's group (the server, its engine, its workers)."""
        assert self.proc is not None
        found = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def workers(self) -> list[psutil.Process]:
        return [p for p in self.group() if _cmdline(p)[1:4] == ["-m", "server.cli", "worker"]]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _describe(procs: list[psutil.Process]) -> str:
    return ", ".join(f"{p.pid} ({' '.join(_cmdline(p)[:5])[-60:]})" for p in procs) or "none"


class Load:
    """Chat requests in a loop from a few threads; outcomes counted per phase."""

    def __init__(self, url: str, key: str, models: list[str], clients: int) -> None:
        self.url, self.key, self.models = url, key, models
        self.phase = "start"
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _loop(self, index: int) -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {self.key}"}) as c:
            while not self._stop.is_set():
                model = self.models[index % len(self.models)]
                try:
                    r = c.post(f"{self.url}/v1/chat/completions", json={
                        "model": model, "max_tokens": 8, "temperature": 0,
                        "messages": [{"role": "user", "content": "Name a colour."}]})
                    outcome = "ok" if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.outcomes[(self.phase, outcome)] += 1
                if outcome != "ok":
                    time.sleep(1)


class Admin:
    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=300,
                                   headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.client.request(method, path, **kwargs)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/admin/v1/jobs/{job_id}")
        return result

    def wait_job(self, job_id: str, done: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
                if done(job):
                    return job
            except (httpx.HTTPError, RuntimeError):
                pass
            time.sleep(1)
        raise TimeoutError(f"job {job_id} did not get there in {timeout:.0f} s")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        r = self.client.get(f"/admin/v1/jobs/{job_id}/events")
        return [json.loads(line[6:]) for line in r.text.splitlines()
                if line.startswith("data: {")]


def _dataset() -> bytes:
    """Preference pairs of our own (no downloads): short, so that steps are quick."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
    lines = []
    for i, colour in enumerate(colours * 3):
        lines.append(json.dumps({
            "prompt": f"Name a colour ({i}).",
            "chosen": f"{colour.capitalize()} is a fine colour.",
            "rejected": "I will not answer that.",
        }))
    return ("\n".join(lines) + "\n").encode()


def _answers(url: str, key: str, model: str) -> str | None:
    """The version that answered ``model`` (system_fingerprint), or None if it did not."""
    try:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "max_tokens": 4, "temperature": 0,
                             "messages": [{"role": "user", "content": "Hello"}]})
    except httpx.HTTPError:
        return None
    return str(r.json().get("system_fingerprint")) if r.status_code == 200 else None


def _kill_group_check(server: Server, what: str, checks: list[tuple[str, bool, str]]) -> None:
    """After ``server`` died: every process of its group must be gone within a minute."""
    deadline = time.monotonic() + 60
    left = server.group()
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = server.group()
    _record(checks, f"no orphan after {what}", not left, f"left: {_describe(left)}")


def _record(checks: list[tuple[str, bool, str]], name: str, ok: bool, detail: str) -> None:
    checks.append((name, ok, detail))
    logger.info("%s  %s: %s", "PASS" if ok else "FAIL", name, detail)


def run(args: argparse.Namespace) -> int:
    from server.model_store import resolve_model
    from tests.real.swap_checkpoints import make_adapter

    home = Path(args.home or tempfile.mkdtemp(prefix="alignserve-chaos-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else resolve_model(None, Path(
        os.environ.get("ALIGNSERVE_HOME", REPO / ".home"))).path
    user, admin_key = secrets.token_hex(8), secrets.token_hex(8)
    env = {**os.environ, "ALIGNSERVE_HOME": str(home), "ALIGNSERVE_API_KEYS": user,
           "ALIGNSERVE_ADMIN_KEYS": admin_key, "ALIGNSERVE_WORKERS": "1",
           "ALIGNSERVE_KV_CACHE_GIB": "1", "ALIGNSERVE_STORE_URL": f"sqlite:///{home / 'jobs.db'}",
           "ALIGNSERVE_RECONCILE_INTERVAL_S": "1", "HF_HUB_OFFLINE": "1"}
    from tests.real.server_process import free_port

    server = Server(home, model, free_port(), env)
    checks: list[tuple[str, bool, str]] = []
    logger.info("home %s, model %s", home, model)
    make_adapter(model, home, "chaos-adapter", seed=7, scale=0.02)
    load = Load(server.url, user, ["chaos-live", model.name], args.clients)
    family = ""
    try:
        family = scenario(args, server, Admin(server.url, admin_key), load, user, checks)
    except Exception as exc:  # reported as a failed check, after the processes were checked
        logger.exception("chaos run stopped")
        _record(checks, "the scenario ran to its end", False, f"{type(exc).__name__}: {exc}")
    finally:
        load.stop()
        family = family or (_describe(server.group()) if server.proc is not None else "none")
        server.stop()
    _kill_group_check(server, "SIGTERM of the server", checks)
    report(checks, load, family)
    return 0 if all(ok for _, ok, _ in checks) else 1


def scenario(
    args: argparse.Namespace, server: Server, admin: Admin, load: Load, user: str,
    checks: list[tuple[str, bool, str]],
) -> str:
    """Start, deploy, load, train, kill, restart, check; returns the last server's group."""
    logger.info("server up in %.0f s", server.start())
    admin.call("POST", "/admin/v1/deployments",
               json={"checkpoint": "chaos-adapter", "name": "chaos-live"})
    live = {"chaos-live": _answers(server.url, user, "chaos-live")}
    dataset = admin.call("POST", "/admin/v1/datasets", data={"format": "pairs"},
                         files={"file": ("pairs.jsonl", _dataset())})["id"]
    load.start()
    job_id = admin.call("POST", "/admin/v1/jobs", json={
        "method": "dpo", "dataset": dataset, "deploy": {"name": "chaos-dpo"},
        "hyperparameters": {"max_steps": args.steps, "batch_size": 2, "checkpoint_every": 1,
                            "max_length": 48, "max_prompt_length": 24}})["id"]
    logger.info("job %s: %d steps", job_id, args.steps)

    kill_at = max(1, args.steps // 3)
    admin.wait_job(job_id, lambda j: (j["step"] or 0) >= kill_at, args.timeout)
    family = server.group()
    logger.info("kill -9 server at step >= %d; its group: %s", kill_at, _describe(family))
    load.phase = "server down"
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(30)
    _kill_group_check(server, "kill -9 of the server", checks)
    logger.info("server up again in %.0f s", server.start())
    load.phase = "after restart"
    for name, fingerprint in live.items():
        now = _answers(server.url, user, name)
        _record(checks, f"{name} answers after the restart", now == fingerprint,
                f"{fingerprint} before, {now} after")

    if not args.short:  # the job went on while the server restarted: one step past where it is
        kill_at = min(args.steps - 1, max((admin.job(job_id)["step"] or 0) + 1,
                                          2 * args.steps // 3))
        admin.wait_job(job_id, lambda j: (j["step"] or 0) >= kill_at
                       or j["status"] != "running", args.timeout)
        workers = server.workers()
        _record(checks, "a worker was killed mid-job", bool(workers),
                f"kill -9 of {_describe(workers)} at step >= {kill_at}")
        for w in workers:
            w.kill()
        load.phase = "worker killed"

    job = admin.wait_job(job_id, lambda j: j["status"] in ("succeeded", "failed",
                                                            "cancelled"), args.timeout)
    steps = [m["step"] for m in admin.call("GET", f"/admin/v1/jobs/{job_id}/metrics")["data"]]
    resumes = [e["message"] for e in admin.events(job_id) if "resuming" in e["message"]]
    _record(checks, "job succeeded", job["status"] == "succeeded",
            f"{job['status']} after {job['attempts']} attempts {job['error'] or ''}")
    _record(checks, "each step exactly once", steps == list(range(1, args.steps + 1)),
            f"metric steps {steps}")
    _record(checks, "resumed from a resume point", bool(resumes), "; ".join(resumes))
    deadline = time.monotonic() + 300  # auto-deploy of the job's checkpoint
    while _answers(server.url, user, "chaos-dpo") is None and time.monotonic() < deadline:
        time.sleep(2)
    for name in [*live, "chaos-dpo"]:
        answer = _answers(server.url, user, name)
        _record(checks, f"{name} answers at the end", answer is not None, str(answer))
    return _describe(server.group())


def report(checks: list[tuple[str, bool, str]], load: Load, family: str) -> None:
    """The script's output: one line per check, then the load's outcomes."""
    lines = ["chaos report"]
    lines += [f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}" for name, ok, detail in checks]
    lines.append(f"  last server's group before its stop: {family}")
    for (phase, outcome), count in sorted(load.outcomes.items()):
        lines.append(f"  load  {phase:>14}: {count:4d} x {outcome}")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="work folder (default: a new temporary one)")
    parser.add_argument("--model", help="served model folder (default: the pulled embedded one)")
    parser.add_argument("--steps", type=int, default=12, help="training steps of the job")
    parser.add_argument("--clients", type=int, default=3, help="chat load threads")
    parser.add_argument("--short", action="store_true", help="kill the server only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per wait")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chaos: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
