"""The web console over the fake engine: the static page and its headers (served without a key,
holding no data), the admin read routes it adds (job schema, presets, manifests, evaluation
runs), and every admin call the console's scripts make refusing user, wrong and missing keys."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contracts.specs import METHODS
from contracts.store import CheckpointRecord, SqliteJobStore
from server.api.app import create_app
from server.auth import KeyRing
from server.console.router import STATIC
from server.evaluation.report import write_report
from server.training import TrainingService
from tests.fakes import FakeEngine

USER, ADMIN = "console-user-key", "console-admin-key"
JS = sorted((STATIC / "js").glob("*.js"))


class _NoDeployer:
    """Stands in for the deployment service: the auth check must refuse before any use."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a refused request reached the deployment service ({name})")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> SqliteJobStore:
    return SqliteJobStore.at_home(home)


@pytest.fixture
def client(store: SqliteJobStore, home: Path) -> Iterator[TestClient]:
    training = TrainingService(store, home, base_model="fake-model")
    app = create_app(FakeEngine(), KeyRing.build([USER], [ADMIN]), training=training)
    app.state.deployments = _NoDeployer()
    with TestClient(app) as c:
        yield c


def _admin(key: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the page ---------------------------------------------------------------------------------

def test_page_and_assets_carry_security_headers(client: TestClient) -> None:
    paths = ["/console", "/console/static/console.css",
             "/console/static/vendor/chartjs/chart.umd.min.js",
             *(f"/console/static/js/{p.name}" for p in JS)]
    for path in paths:
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in r.headers
    assert client.get("/console").headers["content-type"].startswith("text/html")
    assert client.get(f"/console/static/js/{JS[0].name}").headers["content-type"].startswith(
        "text/javascript")


def test_the_page_is_the_same_static_file_for_everyone(client: TestClient) -> None:
    """No key, a user key and an admin key get the same bytes, and after data exists the page
    still names none of it: everything shown comes from API calls made with the key."""
    ds = client.post("/admin/v1/datasets", headers=_admin(), files={
        "file": ("secret-name.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n')})
    assert ds.status_code == 200
    bodies = [client.get("/console", headers=h).content
              for h in ({}, _admin(USER), _admin(), _admin("wrong"))]
    assert len(set(bodies)) == 1
    page = bodies[0].decode()
    for needle in (ds.json()["id"], "secret-name", ADMIN, USER, "fake-model"):
        assert needle not in page
    assert page == (STATIC / "index.html").read_text()


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if "style" in names or any(k.startswith("on") for k in names):
            self.problems.append(f"inline style or handler on <{tag}>")
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.problems.append("<script> without src")
        if tag == "style":
            self.problems.append("<style> element")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script code")


def test_markup_and_scripts_need_no_inline_code_and_keep_the_key_out_of_urls() -> None:
    markup = _Markup()
    markup.feed((STATIC / "index.html").read_text())
    assert markup.problems == []
    for path in JS:
        code = path.read_text()
        for banned in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "eval(", "new Function",
                       "localStorage", "document.cookie", 'setAttribute("style"',
                       "new EventSource"):
            assert banned not in code, f"{path.name} uses {banned}"
    api = (STATIC / "js" / "api.js").read_text()
    assert "sessionStorage" in api and 'credentials: "omit"' in api
    assert "Authorization = `Bearer ${key}`" in api


@pytest.mark.parametrize("path", [
    "/console/static/../router.py", "/console/static/%2e%2e/router.py",
    "/console/static/..%2frouter.py", "/console/static/nothing.js", "/console/static/js"])
def test_nothing_outside_the_static_folder_is_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_vendored_chart_library_is_pinned_with_its_licence() -> None:
    vendor = STATIC / "vendor" / "chartjs"
    assert "Chart.js v4.6.1" in (vendor / "chart.umd.min.js").read_text()[:200]
    assert "MIT License" in (vendor / "LICENSE.md").read_text()
    assert "4.6.1" in (vendor / "VERSION").read_text()


def test_static_files_ship_as_package_data() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"server.console" = ["static/*.html", "static/*.css", "static/js/*.js", ' \
        '"static/vendor/chartjs/*"]' in text


# -- the admin routes the console adds ----------------------------------------------------------

def test_job_schema_route_describes_every_method(client: TestClient) -> None:
    r = client.get("/admin/v1/jobs/schema", headers=_admin())
    assert r.status_code == 200, r.text  # not shadowed by /admin/v1/jobs/{job_id}
    body = r.json()
    assert body["methods"] == list(METHODS)
    schema = body["schema"]
    assert set(schema["discriminator"]["mapping"]) == set(METHODS)
    defs = schema["$defs"]
    assert defs["Hyperparameters"]["properties"]["max_steps"]["default"] == 100
    assert "dpo" in defs["DPOSpec"]["properties"]["loss"]["enum"]
    assert body["formats"]["dpo"] == ["pairs"]
    assert "pairs" in body["dataset_formats"]


def test_presets_route(client: TestClient) -> None:
    names = [p["name"] for p in client.get("/admin/v1/presets", headers=_admin()).json()["data"]]
    assert {"harmless", "concise", "helpful_harmless"} <= set(names)


def test_manifest_route(client: TestClient, store: SqliteJobStore) -> None:
    manifest = {"format": "lora", "metrics": {"final": {"loss": 0.5}},
                "evaluation_gate": {"passed": True, "refusal_rate": 0.9}}
    store.add_checkpoint(CheckpointRecord("ckpt-x", "job-x", "/tmp/ckpt-x", "dpo", 1.0, manifest))
    r = client.get("/admin/v1/checkpoints/ckpt-x/manifest", headers=_admin())
    assert r.status_code == 200 and r.json()["manifest"] == manifest
    assert r.json()["final_metrics"] == {"loss": 0.5}
    assert client.get("/admin/v1/checkpoints/nope/manifest", headers=_admin()).status_code == 404


def sample_report() -> dict[str, Any]:
    """A small but complete report.json, as `alignserve eval compare` writes it."""
    def cell(k: int, n: int, words: float) -> dict[str, Any]:
        return {"n": n, "refusal_rate": {"value": k / n, "k": k, "n": n, "ci95": [0.1, 0.9]},
                "mean_words": words, "mean_completion_tokens": words,
                "truncated_rate": {"value": 0.0, "k": 0, "n": n, "ci95": [0.0, 0.5]}}
    return {
        "created": "2026-01-01T00:00:00+00:00",
        "command": "alignserve eval compare --api-key sk-very-secret --limit 4",
        "suites": {"harmful": {"n": 4, "harmful": True, "description": "HarmBench"}},
        "configs": [{"name": "base", "model": "m"}, {"name": "LA alpha=3", "model": "m"}],
        "results": {"base": {"harmful": cell(1, 4, 40.0)},
                    "LA alpha=3": {"harmful": cell(3, 4, 12.5)}},
        "judge": None, "win_rates": {}, "notes": [], "elapsed_s": 3.5,
    }


def test_evaluation_runs_are_listed_with_table_and_charts(client: TestClient, home: Path) -> None:
    run = home / "eval" / "compare-1"
    write_report(sample_report(), run)
    (run / "results.jsonl").write_text('{"text": "an answer to a harmful prompt"}\n')
    listed = client.get("/admin/v1/evaluations", headers=_admin()).json()["data"]
    assert [r["id"] for r in listed] == ["compare-1"]
    assert listed[0]["charts"] == ["refusal.png", "length.png"]
    got = client.get("/admin/v1/evaluations/compare-1", headers=_admin()).json()
    assert got["table"]["headers"][:2] == ["configuration", "refusal harmful"]
    assert got["table"]["rows"][1][:2] == ["LA alpha=3", "0.75 (3/4)"]
    assert "sk-very-secret" not in json.dumps(got)  # the recorded command line is redacted
    png = client.get("/admin/v1/evaluations/compare-1/charts/refusal.png", headers=_admin())
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert png.headers["cache-control"] == "no-store"
    for bad in ("/admin/v1/evaluations/compare-1/charts/results.jsonl",
                "/admin/v1/evaluations/compare-1/charts/winrate.png",
                "/admin/v1/evaluations/..%2feval/charts/refusal.png",
                "/admin/v1/evaluations/nope"):
        assert client.get(bad, headers=_admin()).status_code == 404, bad


# -- every call the console makes refuses anything but an admin key -----------------------------

CALLS = [
    ("GET", "/admin/v1/jobs/schema"), ("GET", "/admin/v1/presets"),
    ("GET", "/admin/v1/datasets"), ("POST", "/admin/v1/datasets"),
    ("GET", "/admin/v1/jobs"), ("POST", "/admin/v1/jobs"),
    ("GET", "/admin/v1/jobs/job-x"), ("GET", "/admin/v1/jobs/job-x/metrics"),
    ("GET", "/admin/v1/jobs/job-x/events"), ("POST", "/admin/v1/jobs/job-x/cancel"),
    ("GET", "/admin/v1/checkpoints"), ("GET", "/admin/v1/checkpoints/ckpt-x/manifest"),
    ("GET", "/admin/v1/deployments"), ("POST", "/admin/v1/deployments"),
    ("POST", "/admin/v1/deployments/d/rollback"), ("DELETE", "/admin/v1/deployments/d"),
    ("GET", "/admin/v1/evaluations"), ("GET", "/admin/v1/evaluations/run"),
    ("GET", "/admin/v1/evaluations/run/charts/refusal.png"),
]


def test_calls_list_covers_every_admin_path_in_the_scripts() -> None:
    used = {m for p in JS for m in re.findall(r"/admin/v1/[\w/.-]*", p.read_text())}
    for prefix in used:
        assert any(path.startswith(prefix) for _, path in CALLS), prefix


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401), (_admin("wrong-key"), 401), (_admin(USER), 403)])
def test_console_calls_refuse_non_admin_keys(
    client: TestClient, store: SqliteJobStore, headers: dict[str, str], status: int
) -> None:
    for method, path in CALLS:
        body: dict[str, Any] = {}
        if method == "POST" and path.endswith("/datasets"):
            body["files"] = {"file": ("d.jsonl", b'{"prompt": "a", "completion": "b"}\n')}
        elif method == "POST" and path.endswith("/jobs"):
            body["json"] = {"method": "dpo", "dataset": "ds-x"}
        elif method == "POST" and path.endswith("/deployments"):
            body["json"] = {"checkpoint": "ckpt-x", "name": "n"}
        r = client.request(method, path, headers=headers, **body)
        assert r.status_code == status, (method, path, r.text)
        assert r.json()["error"]["code"] in ("missing_api_key", "invalid_api_key",
                                             "insufficient_scope")
    assert store.list_datasets() == [] and store.list_jobs() == []
