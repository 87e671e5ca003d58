"""The web console in a real browser (Debian's chromium, driven by Playwright) against the real
server with a training worker: an admin uploads a dataset, trains 2 steps, deploys, rolls back
and compares answers in the playground; user, wrong and missing keys see and change nothing.

Chromium comes from ``scripts/chromium.sh install`` (the Makefile's test target runs it);
ALIGNSERVE_SKIP_CHROMIUM=1 skips these tests. ALIGNSERVE_CONSOLE_SCREENSHOTS=DIR keeps the
screenshots there (docs/img holds the ones the README shows).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.evaluation.report import write_report
from tests.conftest import REPO
from tests.real.conftest import ADMIN_KEY, USER_KEY, own_store
from tests.real.server_process import ServerProcess
from tests.unit.test_console_static import sample_report

if os.environ.get("ALIGNSERVE_SKIP_CHROMIUM") == "1":
    pytest.skip("ALIGNSERVE_SKIP_CHROMIUM=1", allow_module_level=True)

from playwright.sync_api import Browser, FilePayload, Page, sync_playwright

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
JOB_TIMEOUT_MS = 900_000  # a 2-step job, its worker loading the model, on a busy 2-core machine
STREAM_TIMEOUT_MS = 300_000
PAIRS = [{"prompt": f"Give me tip number {i} for sleeping well.",
          "chosen": "Keep a regular bedtime and a dark, quiet room.",
          "rejected": "Drink coffee late and scroll your phone in bed."} for i in range(8)]


def _chromium() -> str:
    out = subprocess.run(["bash", str(REPO / "scripts" / "chromium.sh"), "path"],
                         capture_output=True, text=True)
    if out.returncode != 0:  # fail, not skip: CI installs it (make test)
        raise RuntimeError(f"no Chromium: run scripts/chromium.sh install\n{out.stderr}")
    return out.stdout.strip()


@pytest.fixture(scope="module")
def console_server(
    default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server of its own (own home, store and eval folder) with one training worker."""
    home = tmp_path_factory.mktemp("console-home")
    write_report(sample_report(), home / "eval" / "fixture-run")
    proc = ServerProcess(home, env={
        "ALIGNSERVE_API_KEYS": USER_KEY, "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
        "ALIGNSERVE_MODEL": str(default_model), "ALIGNSERVE_KV_CACHE_GIB": "1",
        "ALIGNSERVE_WORKERS": "1", "ALIGNSERVE_STORE_URL": own_store(home),
    }).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), headless=True)
        yield b
        b.close()


class Problems:
    """Script errors and CSP violations seen by a page (refused requests are expected here)."""

    def __init__(self, page: Page):
        self.seen: list[str] = []
        page.on("pageerror", lambda e: self.seen.append(f"page error: {e}"))
        page.on("console", lambda m: self.seen.append(f"console {m.type}: {m.text}")
                if m.type == "error" and "Failed to load resource" not in m.text else None)


def _shots() -> Path | None:
    where = os.environ.get("ALIGNSERVE_CONSOLE_SCREENSHOTS")
    return Path(where) if where else None


def _shot(page: Page, name: str, tmp: Path, full_page: bool = False) -> None:
    folder = _shots() or tmp
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"console-{name}.png"), full_page=full_page)


def _confirm(page: Page) -> None:
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")


def _poll(page: Page, predicate: str, timeout_s: float = 60.0) -> None:
    """Wait until ``predicate`` holds in the page. Not page.wait_for_function: that evaluates a
    string inside the page, which the console's CSP (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"still false after {timeout_s} s: {predicate}"
        time.sleep(0.25)


def _file(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "application/jsonl", "buffer": data}


def _sign_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/console")
    page.fill("#admin-key", key)
    page.click("#signin-form button[type=submit]")


def test_admin_trains_deploys_rolls_back_and_compares(
    console_server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    url = console_server.base_url
    page = browser.new_page(viewport={"width": 1200, "height": 820})
    problems = Problems(page)
    page.set_default_timeout(60_000)
    _sign_in(page, url, ADMIN_KEY)
    page.wait_for_selector("[data-health=ok]")
    assert "smollm2" in page.inner_text("#overview-tiles").lower()

    # Datasets: the validator's error next to the offending line, then a valid upload.
    page.click("nav a[data-page=datasets]")
    bad = (json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    page.set_input_files("#dataset-file", files=[_file("bad.jsonl", bad.encode())])
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-error-line")
    assert "line 2: field 'rejected'" in page.inner_text("#upload-error-message")
    assert page.inner_text("#upload-error-line").startswith("2 | ")
    good = "".join(json.dumps(p) + "\n" for p in PAIRS).encode()
    page.set_input_files("#dataset-file", files=[_file("sleep.jsonl", good)])
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#datasets-table [data-dataset]")
    assert "8 pairs records" in page.inner_text("#notice")

    # Jobs: a 2-step DPO job from the schema-built form, watched until it succeeds.
    page.click("nav a[data-page=jobs]")
    page.wait_for_selector("#job-form")
    page.select_option("#job-method", "dpo")
    for field, value in {"max_steps": "2", "max_length": "128", "max_prompt_length": "64",
                         "learning_rate": "0.001"}.items():
        page.fill(f"#job-hyperparameters-{field}", value)
    page.click("#job-form button[type=submit]")
    page.wait_for_selector("#job-status")
    started = time.monotonic()
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=JOB_TIMEOUT_MS)
    job_s = time.monotonic() - started
    page.wait_for_selector("canvas[data-chart=loss][data-points='2']")
    assert "dpo: training 2 steps" in page.inner_text("#job-stages [data-stage=dpo]")
    assert "training 2 steps" in page.inner_text("#job-events")
    checkpoint = page.inner_text("#job-checkpoint").strip()
    assert checkpoint.startswith("ckpt-")
    _shot(page, "job", tmp_path)

    # Deploy from the job page (version 1), again from the checkpoints list (version 2), and
    # roll back to 1.
    page.click("#job-deploy-open")
    page.fill("#deploy-name", "console-dpo")
    page.click("#deploy-form button[type=submit]")
    _confirm(page)
    page.wait_for_selector("#deploy-result [data-outcome=live]", timeout=300_000)
    page.click("nav a[data-page=deployments]")
    page.click(f"[data-checkpoint='{checkpoint}'] [data-action=deploy]")
    page.fill("#deploy-name", "console-dpo")
    page.click("#deploy-form button[type=submit]")
    _confirm(page)
    page.wait_for_selector("[data-deployment=console-dpo] [data-live-version='2']", timeout=300_000)
    page.click("[data-deployment=console-dpo] [data-action=rollback]")
    _confirm(page)
    page.wait_for_selector("[data-deployment=console-dpo] [data-live-version='1']", timeout=300_000)
    assert "console-dpo@1 is live" in page.inner_text("#notice")
    versions = httpx.get(f"{url}/admin/v1/deployments", headers=ADMIN).json()["data"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "live"), (2, "retired")]
    _shot(page, "deployments", tmp_path)

    # Playground: base, the deployment and linear alignment, streamed side by side.
    page.click("nav a[data-page=playground]")
    page.wait_for_selector("#pg-form")
    page.select_option("#pg-deployment", "console-dpo")
    page.select_option("#pg-preset", "")
    page.fill("#pg-principle", "Answer like a pirate.")
    page.fill("#pg-max-tokens", "32")
    page.eval_on_selector("#pg-alpha",
                          "el => { el.value = '3'; el.dispatchEvent(new Event('input')); }")
    page.click("#pg-run")
    for column in ("base", "deployment", "linear-alignment"):
        page.wait_for_selector(f"[data-column={column}] .answer[data-state=done]",
                               timeout=STREAM_TIMEOUT_MS)
    answers = {c: page.inner_text(f"[data-column={c}] .answer")
               for c in ("base", "deployment", "linear-alignment")}
    assert all(answers.values()), answers
    assert answers["linear-alignment"] != answers["base"], answers
    assert "console-dpo@1" in page.inner_text("[data-column=deployment]")
    _shot(page, "playground", tmp_path)

    # Evaluations: the run's table and the charts `alignserve eval` drew (blobs under the CSP).
    page.click("nav a[data-page=evaluations]")
    page.click("[data-run=fixture-run] a")
    page.wait_for_selector("#eval-table")
    _poll(page, "() => document.querySelectorAll('#eval-charts img').length === 2 && "
                "[...document.querySelectorAll('#eval-charts img')].every(i => i.naturalWidth > 0)")

    # Overview again: the requests just made, counted by deployment version.
    page.click("nav a[data-page=overview]")
    page.wait_for_selector("#by-version td")
    assert "console-dpo" in page.inner_text("#by-version")

    # Phone width: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{url}/console#/jobs")
    page.wait_for_selector("#jobs-list [data-job]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(page, "phone", tmp_path)
    assert problems.seen == [], problems.seen
    print(f"job ran {job_s:.0f} s in the browser")  # shown with -s: the figure in docs/console.md
    page.close()


DATA_MARKERS = "[data-job], [data-dataset], [data-checkpoint], [data-deployment], [data-run], " \
               "#overview-tiles .tile, #pg-form, #job-form, #upload-form"
PAGES = ["overview", "datasets", "jobs", "deployments", "evaluations", "playground"]


def _state(url: str) -> dict[str, Any]:
    """What a refused call could have changed (replica reports carry timestamps: left out)."""
    def get(path: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = httpx.get(f"{url}{path}", headers=ADMIN).json()["data"]
        return data

    return {"datasets": get("/admin/v1/datasets"),
            "jobs": [{k: j[k] for k in ("id", "status", "checkpoint_id", "cancel_requested")}
                     for j in get("/admin/v1/jobs")],
            "deployments": [(d["name"], d["version"], d["status"])
                            for d in get("/admin/v1/deployments")]}


# What the console's buttons send; run from the page with whatever key it holds.
CHANGES = """async ([key, ds, job, ckpt]) => {
  const headers = key ? {Authorization: `Bearer ${key}`} : {};
  const json = {...headers, "Content-Type": "application/json"};
  const form = new FormData();
  form.append("file", new Blob(['{"prompt": "a", "chosen": "b", "rejected": "c"}\\n']), "x.jsonl");
  const calls = [
    ["POST", "/admin/v1/datasets", headers, form],
    ["POST", "/admin/v1/jobs", json, JSON.stringify({method: "dpo", dataset: ds})],
    ["POST", `/admin/v1/jobs/${job}/cancel`, headers, null],
    ["POST", "/admin/v1/deployments", json,
     JSON.stringify({checkpoint: ckpt, name: "console-dpo"})],
    ["POST", "/admin/v1/deployments/console-dpo/rollback", headers, null],
    ["DELETE", "/admin/v1/deployments/console-dpo", headers, null],
  ];
  const out = [];
  for (const [method, path, h, body] of calls) {
    const r = await fetch(path, {method, headers: h, body, credentials: "omit"});
    out.push([method, path, r.status]);
  }
  return out;
}"""


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong-key", 401), (USER_KEY, 403)])
def test_non_admin_keys_see_and_change_nothing(
    console_server: ServerProcess, browser: Browser, key: str | None, status: int
) -> None:
    url = console_server.base_url
    before = _state(url)
    context = browser.new_context()  # its own sessionStorage
    page = context.new_page()
    problems = Problems(page)
    page.set_default_timeout(60_000)
    page.goto(f"{url}/console")
    page.wait_for_selector("#signin-form")
    html = page.content()
    for record in before["datasets"] + before["jobs"]:
        assert record["id"] not in html  # the static page carries no data
    if key is not None:
        _sign_in(page, url, key)
        page.wait_for_selector(f"#error[data-status='{status}']")
        assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
        # Past the sign-in (the key put in by hand): every page shows the refusal, no data.
        page.evaluate("k => sessionStorage.setItem('alignserve.console.key', k)", key)
        for name in PAGES:
            page.goto(f"{url}/console#/{name}")
            page.reload()
            page.wait_for_selector(f"#error[data-status='{status}']")
            assert page.query_selector_all(DATA_MARKERS) == [], name
    else:
        for name in PAGES:  # no key: every page is the sign-in form
            page.goto(f"{url}/console#/{name}")
            page.wait_for_selector("#signin-form")
            assert page.query_selector_all(DATA_MARKERS) == [], name
    ds = before["datasets"][0]["id"] if before["datasets"] else "ds-none"
    job = before["jobs"][0]["id"] if before["jobs"] else "job-none"
    ckpt = (before["jobs"][0]["checkpoint_id"] if before["jobs"] else None) or "ckpt-none"
    results = page.evaluate(CHANGES, [key, ds, job, ckpt])
    assert [r[2] for r in results] == [status] * len(results), results
    assert _state(url) == before
    assert problems.seen == [], problems.seen
    context.close()
