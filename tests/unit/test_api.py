"""Fast tier: protocol, error mapping, auth and SSE framing against the typed fake engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.auth import KeyRing
from tests.fakes import FakeEngine

USER, ADMIN = "user-key-1", "admin-key-1"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    app = create_app(engine, KeyRing.build([USER], [ADMIN]))
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {USER}"
        yield c


def chat(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(kw)
    return body


def events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]


def test_chat_non_stream_shape_and_usage(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(max_tokens=5))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5


def test_chat_stream_chunk_order(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json=chat(max_tokens=3, stream=True, stream_options={"include_usage": True}),
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    items = events(r.text)
    assert items[-1] == "[DONE]"
    chunks = [json.loads(x) for x in items[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert "".join(contents) == "Hel"
    finish = chunks[-2]
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_field(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(max_tokens=2, stream=True))
    chunks = [json.loads(x) for x in events(r.text)[:-1]]
    assert all("usage" not in c for c in chunks)


def test_n_choices_and_stop(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(n=2, stop=[","]))
    body = r.json()
    assert [c["message"]["content"] for c in body["choices"]] == ["Hello there", "Hello there"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "stop" for c in body["choices"])


def test_chat_logprobs(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(max_tokens=2, logprobs=True, top_logprobs=2))
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["H", "e"]
    assert len(content[0]["top_logprobs"]) == 2 and content[0]["bytes"] == [72]


def test_completions_multi_prompt_and_logprobs(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "fake-model", "prompt": ["a", "b"], "max_tokens": 2, "logprobs": 1},
    )
    body = r.json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["logprobs"]["tokens"] == ["H", "e"]
    assert body["choices"][0]["logprobs"]["text_offset"] == [0, 1]


def test_completions_stream(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "fake-model", "prompt": "x", "max_tokens": 2, "stream": True},
    )
    items = events(r.text)
    chunks = [json.loads(x) for x in items[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "He"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(temperature=3), "temperature"),
        (chat(messages=[]), "messages"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(tools=[]), "tools"),
        (chat(top_logprobs=2), None),
        (chat(stream_options={"include_usage": True}), None),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ],
)
def test_invalid_requests_are_openai_400(client: TestClient, body: dict, param: str | None) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param
    assert "Traceback" not in r.text


def test_max_tokens_beyond_context_is_400(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(max_tokens=10_000))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 256" in r.json()["error"]["message"]


def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(model="nope"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


def test_auth_missing_and_bad_key(client: TestClient) -> None:
    r = client.get("/v1/models", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200  # admin works where user does
    assert r.json()["data"][0]["id"] == "fake-model"


def test_engine_not_ready_is_503_with_retry_after(client: TestClient, engine: FakeEngine) -> None:
    engine.ready_flag = False
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 503
    assert r.headers["Retry-After"].isdigit()
    assert client.get("/health").status_code == 503


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    client.post("/v1/chat/completions", json=chat(max_tokens=2))
    text = client.get("/metrics").text
    assert (
        'alignserve_requests_total{aligned="false",endpoint="chat",'
        'model="fake-model",status="ok"} 1.0'
        in text
    )
    assert "alignserve_completion_tokens_total" in text and "alignserve_queue_depth" in text


def test_unhandled_error_has_no_traceback(client: TestClient, engine: FakeEngine) -> None:
    def boom(name: str) -> str:
        raise RuntimeError("secret internals")

    engine.resolve_model = boom  # type: ignore[method-assign]
    with TestClient(client.app, raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {USER}"})
    assert r.status_code == 500
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert r.json()["error"]["type"] == "server_error"


def test_alignment_validation(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/chat/completions", json=chat(alignment={"principle": ""}))
    assert r.status_code == 400 and "must not be empty" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json=chat(alignment={"preset": "nope"}))
    assert r.status_code == 400 and "valid names" in r.json()["error"]["message"]
    r = client.post(
        "/v1/completions",
        json={"model": "fake-model", "prompt": "x", "alignment": {"principle": "be nice"}},
    )
    assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]["message"]
    r = client.post(
        "/v1/chat/completions", json=chat(alignment={"preset": "concise", "alpha": 2}, max_tokens=3)
    )
    assert r.status_code == 200
    request = engine.requests[-1]
    assert request.alignment is not None and request.alignment.alpha == 2.0
    principled = engine.renderer.decode(list(request.alignment.principled_prompt_ids))
    plain = engine.renderer.decode(list(request.prompt_ids))
    base = "You are a fake assistant."
    assert principled == plain.replace(base, f"{base}\nAnswer in exactly one short sentence.")
