"""Input validation at the edge (issue 14, item 6-7): no 500 on bad input in the admin routes,
bounded error bodies, docs behind a key, keys checked before bodies are read, multipart limits,
the dataset path import confined to its folder. The app runs over the fake engine with a real
SQLite store and a deployment service whose engine switch is faked."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from contracts.store import SqliteJobStore, open_store
from server.api.app import create_app
from server.api.edge import json_depth_exceeds
from server.auth import KeyRing
from server.engine.deployer import SwapResult
from server.settings import Settings
from server.training import TrainingService
from tests.fakes import FakeEngine

USER, ADMIN = "user-key", "admin-key"
PAIRS = b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 2


class _Deployer:
    """Never reached by these tests with a valid checkpoint: the gate refuses first."""

    async def deploy(self, name: str, path: Path, mode: str, number: int,
                     smoke_prompt: list[int], check: object = None,
                     created: float | None = None) -> SwapResult:
        raise AssertionError("not expected")

    async def undeploy(self, name: str) -> None:
        return None

    def live(self) -> dict[str, str]:
        return {}


class DeployingEngine(FakeEngine):
    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base

    @property
    def model_path(self) -> Path:
        return self.base

    @property
    def deployer(self) -> _Deployer:  # type: ignore[override]
        return _Deployer()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home" / "models" / "base").mkdir(parents=True)
    (tmp_path / "home" / "imports").mkdir()
    (tmp_path / "home" / "checkpoints").mkdir()  # as in production: paths are looked up in it
    return tmp_path / "home"


def build(home: Path, public_docs: bool = False) -> FastAPI:
    store = open_store(home / "jobs.db")
    assert isinstance(store, SqliteJobStore)
    app = create_app(
        DeployingEngine(home / "models" / "base"), KeyRing.build([USER], [ADMIN]),
        home=home, training=TrainingService(store, home), store=store, public_docs=public_docs,
    )

    @app.get("/test/surrogate")  # the safety net, for faults no route validation caught
    def surrogate() -> None:
        "\ud800".encode()

    @app.get("/test/nul")
    def nul() -> None:
        (home / "a\x00b").resolve()

    @app.get("/test/long")
    def long() -> None:
        (home / ("x" * 300)).stat()

    @app.get("/test/bug")
    def bug() -> None:
        raise ValueError("a plain bug")

    return app


@pytest.fixture
def client(home: Path) -> Iterator[TestClient]:
    with TestClient(build(home), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN}"
        yield c


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def upload(client: TestClient, data: bytes = PAIRS) -> str:
    r = client.post("/admin/v1/datasets", files={"file": ("d.jsonl", data)})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


# -- 1. no 500 on bad input -------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/admin/v1/jobs", "/v1/fine_tuning/jobs", "/admin/v1/checkpoints"])
@pytest.mark.parametrize("limit", ["99999999999999999999", "-1", "0", "1001"])
def test_list_limits_are_bounded(client: TestClient, url: str, limit: str) -> None:
    assert error(client.get(f"{url}?limit={limit}"), 400)["param"] == "limit"


def test_store_takes_any_limit(home: Path) -> None:
    """Below the API's bound: SQLite raised OverflowError past 2**63 and listed all below 0."""
    store = SqliteJobStore.at_home(home)
    store.create_job("dpo", {"method": "dpo"}, 1)
    assert len(store.list_jobs(10**20)) == 1 and store.list_jobs(-1) == []


def test_list_limit_in_range(client: TestClient) -> None:
    assert client.get("/admin/v1/jobs?limit=1000").status_code == 200
    assert client.get("/admin/v1/checkpoints?limit=1").json()["data"] == []


def test_event_cursor_is_bounded(client: TestClient) -> None:
    """SQLite overflowed on a 20-digit cursor; int("²") raised on a Last-Event-ID."""
    job = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": upload(client),
                                              "model": "m"}).json()["id"]
    client.post(f"/admin/v1/jobs/{job}/cancel")
    url = f"/admin/v1/jobs/{job}/events"
    assert error(client.get(f"{url}?after=99999999999999999999"), 400)["param"] == "after"
    for last in ("\u00b2".encode("latin-1"), b"99999999999999999999"):
        r = client.get(url, headers={b"Last-Event-ID": last})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(("method", "url", "body", "status"), [
    ("POST", "/admin/v1/deployments", {"checkpoint": "ck\x00pt", "name": "a"}, 400),
    # A folder name past the file system's limit was an OSError (found by the schema fuzz).
    ("POST", "/admin/v1/deployments", {"checkpoint": "0" * 256, "name": "a"}, 400),
    ("POST", "/v1/rewards", {"model": "0" * 256, "inputs": [{"prompt": "a", "response": "b"}]},
     400),
    ("POST", "/v1/rewards", {"model": "ck\x00pt", "inputs": [{"prompt": "a", "response": "b"}]},
     400),
    ("POST", "/admin/v1/jobs", {"method": "dpo", "dataset": "ds-x", "model": "/m\x00"}, 400),
    ("POST", "/admin/v1/jobs", {"method": "dpo", "dataset": "ds\x00x"}, 400),
    ("GET", "/admin/v1/jobs/job-%00x", None, 404),
    ("POST", "/admin/v1/deployments/a%00b/rollback", None, 404),
    ("DELETE", "/admin/v1/deployments/a%00b", None, 404),
])
def test_bad_names(
    client: TestClient, method: str, url: str, body: dict[str, Any] | None, status: int
) -> None:
    error(client.request(method, url, json=body), status)


def test_deeply_nested_json_is_400_on_every_json_route(client: TestClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for url, body in [
        ("/admin/v1/jobs", deep),
        ("/admin/v1/datasets", f'{{"path": {deep}}}'),
        ("/admin/v1/deployments", f'{{"checkpoint": {deep}}}'),
        ("/v1/chat/completions", f'{{"model": "fake-model", "messages": {deep}}}'),
        ("/v1/completions", '{"prompt": ' + "[" * 65 + "]" * 65 + "}"),
    ]:
        r = client.post(url, content=body, headers={"Content-Type": "application/json"})
        assert error(r, 400)["code"] == "nested_too_deeply", url


def test_json_depth_scan() -> None:
    assert not json_depth_exceeds(b'{"a": [[1], {"b": "[[[[[["}]}', limit=3)
    assert json_depth_exceeds(b'{"a": [[1], {"b": [[]]}]}', limit=3)
    # Escaped quotes and backslashes do not end a string: its brackets still don't count.
    assert not json_depth_exceeds(rb'["\"[[[[", "\\", "x\\\"[[[["]', limit=1)
    assert json_depth_exceeds(rb'["\\", [[]]]', limit=2)
    assert not json_depth_exceeds(b"[]" * 10_000, limit=1)


def test_malformed_json_on_the_path_import(client: TestClient) -> None:
    for body in (b"{bad", b'"just a string"', b"\xff\xfe", b'{"path": ["x"]}', b'{"path": 1}'):
        r = client.post("/admin/v1/datasets", content=body,
                        headers={"Content-Type": "application/json"})
        error(r, 400)
    r = client.post("/admin/v1/datasets", json={"path": "d.jsonl", "format": ["pairs"]})
    assert error(r, 400)["param"] == "format"


def test_invalid_json_message(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b"{bad",
                    headers={"Content-Type": "application/json"})
    body = error(r, 400)
    assert body["message"].startswith("the body is not valid JSON") and body["param"] is None


def test_safety_net_turns_input_faults_into_400(client: TestClient) -> None:
    assert "surrogate" in error(client.get("/test/surrogate"), 400)["message"]
    assert "NUL" in error(client.get("/test/nul"), 400)["message"]
    assert "too long" in error(client.get("/test/long"), 400)["message"]
    assert error(client.get("/test/bug"), 500)["type"] == "server_error"  # bugs stay 500s


# -- 2. bounded excerpts ------------------------------------------------------------------------
def test_error_bodies_quote_a_bounded_excerpt(client: TestClient) -> None:
    huge = "m" * 1_000_000
    r = client.post("/v1/chat/completions",
                    json={"model": huge, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and len(r.content) < 1_000
    assert "…" in r.json()["error"]["message"]
    r = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": "d", huge: 1})
    assert r.status_code == 400 and len(r.content) < 1_000
    r = client.get(f"/admin/v1/jobs/{'j' * 20_000}")
    assert r.status_code == 404 and len(r.content) < 1_000


# -- 3. docs behind a key -----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_docs_need_an_admin_key(home: Path, path: str) -> None:
    with TestClient(build(home)) as c:
        r = c.get(path)
        assert error(r, 401)["code"] == "missing_api_key"
        assert r.headers["WWW-Authenticate"].startswith("Basic")  # a browser asks for the key
        error(c.get(path, headers={"Authorization": f"Bearer {USER}"}), 403)
        assert c.get(path, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        basic = base64.b64encode(f"admin:{ADMIN}".encode()).decode()
        assert c.get(path, headers={"Authorization": f"Basic {basic}"}).status_code == 200
        wrong = base64.b64encode(f"admin:{USER}".encode()).decode()
        assert c.get(path, headers={"Authorization": f"Basic {wrong}"}).status_code == 401


def test_public_docs_setting(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNSERVE_PUBLIC_DOCS", "true")
    assert Settings().public_docs
    with TestClient(build(home, public_docs=True)) as c:
        schema = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
        assert "HTTPBearer" in schema["components"]["securitySchemes"]  # Swagger's Authorize
        assert c.get("/admin/v1/jobs").status_code == 401  # only the docs open up


# -- 4. keys before bodies ----------------------------------------------------------------------
@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong", 401), (USER, 403)])
@pytest.mark.parametrize("url", ["/admin/v1/deployments", "/admin/v1/jobs", "/admin/v1/datasets"])
def test_admin_routes_refuse_before_the_body(
    client: TestClient, url: str, key: str | None, status: int
) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}" if key else ""}
    error(client.post(url, content=b"{not json" + b"[" * 1000, headers=headers), status)


def test_user_routes_refuse_before_the_body(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b"{not json",
                    headers={"Content-Type": "application/json", "Authorization": ""})
    assert error(r, 401)["code"] == "missing_api_key"


def test_the_body_is_not_read_without_a_key(home: Path) -> None:
    """Straight over ASGI: a receive() that fails if called proves the edge answered first."""
    app, sent = build(home), []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"9")],
             "query_string": b"", "http_version": "1.1", "scheme": "http",
             "server": ("t", 80), "client": ("c", 1)}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "missing_api_key"


# -- 5. multipart limits --------------------------------------------------------------------------
def test_multipart_limits(client: TestClient) -> None:
    file = {"file": ("d.jsonl", PAIRS)}
    r = client.post("/admin/v1/datasets", files=file, data={"format": "x" * 100_000})
    assert "64 KiB" in error(r, 413)["message"]
    r = client.post("/admin/v1/datasets", files=file, data={f"f{i}": "x" for i in range(9)})
    assert "Too many fields" in error(r, 400)["message"]
    two = [("file", ("a.jsonl", PAIRS)), ("file", ("b.jsonl", PAIRS))]
    assert "Too many files" in error(client.post("/admin/v1/datasets", files=two), 400)["message"]
    r = client.post("/admin/v1/datasets", data={"file": "x" * 100_000})  # url-encoded
    error(r, 400)


# -- 6. the path import stays in its folder -------------------------------------------------
def test_path_import_is_confined_to_the_import_folder(
    client: TestClient, home: Path, tmp_path: Path
) -> None:
    inside = home / "imports" / "sub"
    inside.mkdir()
    (inside / "d.jsonl").write_bytes(PAIRS)
    outside = tmp_path / "secret.jsonl"
    outside.write_bytes(PAIRS)
    (home / "imports" / "link.jsonl").symlink_to(outside)
    assert client.post("/admin/v1/datasets", json={"path": "sub/d.jsonl"}).status_code == 200
    ok = client.post("/admin/v1/datasets", json={"path": str(inside / "d.jsonl")})
    assert ok.status_code == 200 and ok.json()["records"] == 2
    refusals = [
        error(client.post("/admin/v1/datasets", json={"path": path}), 400)
        for path in (str(outside), str(tmp_path / "missing.jsonl"), "../../secret.jsonl",
                     "sub/../../../secret.jsonl", "link.jsonl", "/etc/passwd", "a\x00b", ".")
    ]
    assert all(r == refusals[0] for r in refusals)  # one message, existing file or not
    assert refusals[0]["code"] == "path_not_allowed" and str(tmp_path) not in refusals[0]["message"]


def test_import_folder_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNSERVE_IMPORT_DIR", str(tmp_path / "in"))
    assert Settings().import_dir == tmp_path / "in"
    store = SqliteJobStore.at_home(tmp_path / "home")
    service = TrainingService(store, tmp_path / "home", import_dir=tmp_path / "in")
    assert service.import_root == tmp_path / "in"
    assert TrainingService(store, tmp_path / "home").import_root == tmp_path / "home" / "imports"
