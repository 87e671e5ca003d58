"""Fast tier: function calling (tool_choice modes, tool turns in the prompt, tool_calls in
responses and stream deltas) against the typed fake engine, and the output scanner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.tool_output import scan_call_array
from server.auth import KeyRing
from tests.fakes import FakeEngine

USER = "user-key-1"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(max_model_len=4096)


def _client(engine: FakeEngine, tool_parser: str | None = None) -> Iterator[TestClient]:
    app = create_app(engine, KeyRing.build([USER], []), tool_parser=tool_parser)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {USER}"
        yield c


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    yield from _client(engine)


@pytest.fixture
def auto_client(engine: FakeEngine) -> Iterator[TestClient]:
    yield from _client(engine, "hermes")  # the fake renderer's parser reads hermes markup


def chat(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model", "tools": [WEATHER, TIME],
                            "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    body.update(kw)
    return body


def events(text: str) -> list[dict[str, Any]]:
    lines = [x.removeprefix("data: ") for x in text.split("\n\n") if x.startswith("data: ")]
    return [json.loads(x) for x in lines if x != "[DONE]"]


def error(r: Any, param: str) -> str:
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    return str(r.json()["error"]["message"])


def test_named_function_is_grammar_decoded(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = '{"city": "Paris"}'
    r = client.post("/v1/chat/completions", json=chat(tool_choice=NAMED))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    grammar = engine.requests[-1].sampling.structured
    assert grammar is not None and json.loads(grammar.json_schema or "") == \
        WEATHER["function"]["parameters"]  # type: ignore[index]


def test_required_is_an_array_of_calls(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = ('[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                    '{"name": "get_time", "arguments": {}}]')
    r = client.post("/v1/chat/completions", json=chat(tool_choice="required"))
    calls = r.json()["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city": "Paris"}', "{}"]
    assert len({c["id"] for c in calls}) == 2
    schema = json.loads(engine.requests[-1].sampling.structured.json_schema)  # type: ignore[union-attr]
    assert schema["minItems"] == 1 and "maxItems" not in schema
    names = [item["properties"]["name"]["enum"] for item in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    # get_time has no parameters: OpenAI's meaning is "no arguments"
    assert schema["items"]["anyOf"][1]["properties"]["arguments"]["type"] == "object"
    client.post("/v1/chat/completions", json=chat(tool_choice="required",
                                                  parallel_tool_calls=False))
    schema = json.loads(engine.requests[-1].sampling.structured.json_schema)  # type: ignore[union-attr]
    assert schema["maxItems"] == 1


def test_a_cut_off_call_keeps_length(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    cut = engine.reply.index("is")
    r = client.post("/v1/chat/completions", json=chat(tool_choice="required", max_tokens=cut))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Par'


def test_streamed_tool_call_deltas(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    r = client.post("/v1/chat/completions", json=chat(tool_choice="required", stream=True))
    chunks = events(r.text)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    header = calls[0][0]
    assert header["index"] == 0 and header["type"] == "function"
    assert header["id"].startswith("call_") and header["function"]["name"] == "get_weather"
    assert all(set(c[0]) == {"index", "function"} for c in calls[1:])  # then arguments only
    arguments = "".join(c[0]["function"]["arguments"] for c in calls)
    assert arguments == '{"city": "Paris"}'
    assert not any(d.get("content") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_named_call(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = '{"city": "Oslo"}'
    r = client.post("/v1/chat/completions", json=chat(tool_choice=NAMED, stream=True))
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in events(r.text)
             if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["index"] == 0
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Oslo"}'


def test_auto_needs_a_configured_parser(client: TestClient) -> None:
    for body in (chat(), chat(tool_choice="auto")):
        message = error(client.post("/v1/chat/completions", json=body), "tool_choice")
        assert "ALIGNSERVE_TOOL_PARSER" in message and "required" in message


def test_auto_with_a_parser(auto_client: TestClient, engine: FakeEngine) -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    engine.reply = f"Sure. <tool_call>{call}</tool_call>"
    r = auto_client.post("/v1/chat/completions", json=chat())
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Sure. "
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Rome"}'
    assert engine.requests[-1].sampling.structured is None  # free text
    r = auto_client.post("/v1/chat/completions", json=chat(stream=True))
    deltas = [c["choices"][0]["delta"] for c in events(r.text)]
    assert "".join(d.get("content", "") for d in deltas) == "Sure. "
    assert [d["tool_calls"][0]["function"]["name"] for d in deltas if "tool_calls" in d] == \
        ["get_weather"]
    engine.reply = "No tools needed."
    r = auto_client.post("/v1/chat/completions", json=chat())
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "No tools needed." and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


def test_what_does_not_compose_is_refused(auto_client: TestClient) -> None:
    message = error(auto_client.post("/v1/chat/completions",
                                     json=chat(alignment={"preset": "concise"})), "tool_choice")
    assert "alignment" in message
    fmt = {"type": "json_object"}
    error(auto_client.post("/v1/chat/completions",
                           json=chat(tool_choice="required", response_format=fmt)),
          "response_format")
    error(auto_client.post("/v1/chat/completions", json=chat(
        tool_choice="required", best_of_n={"n": 2, "reward_model": "x"}, temperature=1)),
          "best_of_n")


def test_required_composes_with_alignment(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = '{"city": "Paris"}'
    r = client.post("/v1/chat/completions", json=chat(tool_choice=NAMED,
                                                      alignment={"preset": "concise"}))
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    request = engine.requests[-1]
    assert request.alignment is not None and request.sampling.structured is not None
    principled = engine.renderer.decode(list(request.alignment.principled_prompt_ids))
    assert "<tools>" in principled and "Answer in exactly one short sentence." in principled


def test_tool_choice_errors(client: TestClient) -> None:
    other = {"type": "function", "function": {"name": "nope"}}
    assert "not in tools" in error(client.post("/v1/chat/completions",
                                               json=chat(tool_choice=other)), "tool_choice")
    body = chat(tool_choice="required")
    del body["tools"]
    error(client.post("/v1/chat/completions", json=body), "tool_choice")
    error(client.post("/v1/chat/completions", json=chat(tools=[WEATHER, WEATHER],
                                                        tool_choice="none")), "tools")
    error(client.post("/v1/chat/completions", json=chat(tool_choice="sometimes")), "tool_choice")
    error(client.post("/v1/chat/completions", json=chat(tools=[])), "tools")


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    {"role": "tool", "tool_call_id": "call_1", "content": "UV 3"},
]


def test_tool_turns_in_plain_text(client: TestClient, engine: FakeEngine) -> None:
    """The fake template does not read tools: they go in as text (docs/openai.md)."""
    engine.reply = "It is sunny."
    r = client.post("/v1/chat/completions", json=chat(messages=HISTORY, tool_choice="none"))
    assert r.json()["choices"][0]["message"]["content"] == "It is sunny."
    prompt = engine.renderer.decode(list(engine.requests[-1].prompt_ids))
    assert "<tools>" not in prompt  # 'none': the tools are not shown
    assert ('<assistant><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call></>") in prompt
    results = prompt.split("<user>")[2]  # both results in one user turn
    assert results.count("<tool_response>") == 2 and '"name": "get_weather"' in results
    assert '"content": "18C, sunny"' in results
    client.post("/v1/chat/completions", json=chat(messages=HISTORY, tool_choice="required"))
    prompt = engine.renderer.decode(list(engine.requests[-1].prompt_ids))
    assert prompt.startswith("<system>You are a fake assistant.\n\n# Tools")
    assert "JSON array of calls" in prompt


def test_tool_turns_natively(client: TestClient, engine: FakeEngine) -> None:
    engine.renderer.supports_tools = True
    client.post("/v1/chat/completions", json=chat(messages=HISTORY, tool_choice="required"))
    prompt = engine.renderer.decode(list(engine.requests[-1].prompt_ids))
    assert prompt.startswith("<tools>") and "# Tools" not in prompt
    assert '"arguments": {"city": "Paris"}' in prompt and '"tool_call_id": "call_1"' in prompt


@pytest.mark.parametrize(
    ("message", "words"),
    [({"role": "assistant", "content": None}, "content may be null"),
     ({"role": "tool", "content": "x"}, "tool_call_id"),
     ({"role": "user", "content": "x", "tool_call_id": "c"}, "tool_call_id"),
     ({"role": "user", "content": "x", "tool_calls": []}, "only allowed on assistant")],
)
def test_message_shapes(client: TestClient, message: dict[str, Any], words: str) -> None:
    body = chat(messages=[{"role": "user", "content": "hi"}, message], tool_choice="none")
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and words in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages.1"


def test_scanner_on_every_prefix() -> None:
    """Prefixes give what is known so far, and each call's arguments only ever grow."""
    text = ('[{"name": "a", "arguments": {"q": "x\\"}", "n": [1, {"m": 2}]}}, '
            '{"arguments": "s,}", "name": "b"}, {"name": "c", "arguments": 5}]')
    full = scan_call_array(text)
    assert [(c.name, c.arguments) for c in full] == [
        ("a", '{"q": "x\\"}", "n": [1, {"m": 2}]}'), ("b", '"s,}"'), ("c", "5")]
    previous = scan_call_array("")
    for end in range(len(text) + 1):
        calls = scan_call_array(text[:end])
        for before, now in zip(previous, calls, strict=False):
            assert now.arguments.startswith(before.arguments)
            assert before.name is None or now.name == before.name
        previous = calls
