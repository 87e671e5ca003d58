"""Fast tier: the OpenAI request surface (models.retrieve, strictness, response_format,
logit_bias, echo, aliases and ignored fields) against the typed fake engine. Tool calling:
``test_openai_tools.py``; the real engine: ``tests/real/test_openai_surface.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.auth import KeyRing
from server.engine.types import ModelCard, StructuredOutput
from tests.fakes import VOCAB, FakeEngine

USER = "user-key-1"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    app = create_app(engine, KeyRing.build([USER], []))
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {USER}"
        yield c


def chat(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return body


def events(text: str) -> list[dict[str, Any]]:
    lines = [x.removeprefix("data: ") for x in text.split("\n\n") if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def error(r: Any, param: str | None) -> str:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    return str(err["message"])


# -- models.retrieve ----------------------------------------------------------------------------


def test_models_retrieve_and_unknown_ids_with_slash_and_at(client: TestClient) -> None:
    r = client.get("/v1/models/fake-model")
    assert r.status_code == 200
    assert r.json()["id"] == "fake-model" and r.json()["object"] == "model"
    for unknown in ("org/some-model", "my-dpo@3", "org/x@2"):
        r = client.get(f"/v1/models/{unknown}")
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model"
        assert unknown in err["message"]
    assert client.get("/v1/models/org%2Fx%402").status_code == 404  # the client's encoding


# -- strictness at the edge ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", "yes"), ("max_tokens", "8"), ("n", "2"), ("temperature", "0.5"),
     ("logprobs", "true"), ("max_tokens", 8.0), ("seed", "1")],
)
def test_strings_are_not_coerced(client: TestClient, field: str, value: Any) -> None:
    error(client.post("/v1/chat/completions", json=chat(**{field: value})), field)


def test_numbers_stay_numbers(client: TestClient) -> None:
    """Strict mode still takes an integer where a float is expected (JSON has one number)."""
    r = client.post("/v1/chat/completions", json=chat(temperature=0, top_p=1, max_tokens=3))
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(messages=[{"role": "user", "content": "a\ud800b"}]), "messages.0.content"),
        (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]),
         "messages.0.content.0.text"),
        (chat(stop=["ok", "\ud800"]), "stop.1"),
        (chat(stop="\ud800"), "stop"),
        (chat(alignment={"principle": "be \ud800 nice"}), "alignment.principle"),
        (chat(user="\ud800"), "user"),
    ],
)
def test_lone_surrogates_are_400s(client: TestClient, body: dict[str, Any], param: str) -> None:
    # json.dumps escapes the surrogate as \\ud800, exactly what a client sends.
    r = client.post("/v1/chat/completions", content=json.dumps(body),
                    headers={"Content-Type": "application/json"})
    assert "lone UTF-16 surrogate" in error(r, param)


def test_lone_surrogate_in_a_completion_prompt_and_a_schema(client: TestClient) -> None:
    body = {"model": "fake-model", "prompt": "x\ud800"}
    r = client.post("/v1/completions", content=json.dumps(body),
                    headers={"Content-Type": "application/json"})
    assert "surrogate" in error(r, "prompt")
    fmt = {"type": "json_schema",
           "json_schema": {"name": "s", "schema": {"enum": ["ok", "\ud800"]}}}
    r = client.post("/v1/chat/completions", content=json.dumps(chat(response_format=fmt)),
                    headers={"Content-Type": "application/json"})
    message = error(r, "response_format.json_schema.schema")
    assert "enum.1" in message and "surrogate" in message


# -- response_format ----------------------------------------------------------------------------


def test_response_format_reaches_the_engine(client: TestClient, engine: FakeEngine) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    cases: list[tuple[dict[str, Any], StructuredOutput | None]] = [
        ({"type": "text"}, None),
        ({"type": "json_object"}, StructuredOutput("json_object")),
        ({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema,
                                                 "strict": True}},
         StructuredOutput("json_schema", json.dumps(schema))),
    ]
    for fmt, expected in cases:
        r = client.post("/v1/chat/completions", json=chat(response_format=fmt))
        assert r.status_code == 200
        assert engine.requests[-1].sampling.structured == expected


def test_response_format_errors(client: TestClient) -> None:
    error(client.post("/v1/chat/completions", json=chat(response_format={"type": "json_schema"})),
          "response_format")
    error(client.post("/v1/chat/completions", json=chat(response_format={"type": "xml"})),
          "response_format.type")
    bad_name = {"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}
    error(client.post("/v1/chat/completions", json=chat(response_format=bad_name)),
          "response_format.json_schema.name")


def test_json_schema_composes_with_alignment(client: TestClient, engine: FakeEngine) -> None:
    """Both members of the group get the grammar (vllm_convert carries it to the partner)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    r = client.post("/v1/chat/completions",
                    json=chat(response_format=fmt, alignment={"preset": "concise"}))
    assert r.status_code == 200
    request = engine.requests[-1]
    assert request.alignment is not None
    assert request.sampling.structured == StructuredOutput("json_schema", '{"type": "object"}')


def test_both_group_members_carry_grammar_and_bias() -> None:
    from server.engine.types import SamplingOptions
    from server.engine.vllm_convert import sampling_params

    options = SamplingOptions(
        max_tokens=4, structured=StructuredOutput("json_schema", '{"type": "object"}'),
        logit_bias=((5, -100.0),),
    )
    visible = sampling_params(options, n=1, seed=1)
    partner = sampling_params(options, n=1, seed=1, with_stop=False, logprobs=False,
                              detokenize=False, final_only=True)
    for params in (visible, partner):
        assert params.structured_outputs is not None
        assert params.structured_outputs.json == '{"type": "object"}'
        assert params.logit_bias == {5: -100.0}


# -- logit_bias ---------------------------------------------------------------------------------


def test_logit_bias_reaches_the_engine(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/chat/completions", json=chat(logit_bias={"5": -100, "7": 2.5}))
    assert r.status_code == 200
    assert engine.requests[-1].sampling.logit_bias == ((5, -100.0), (7, 2.5))
    assert client.post("/v1/chat/completions", json=chat(logit_bias={})).status_code == 200
    r = client.post("/v1/chat/completions",
                    json=chat(logit_bias={"5": -100}, alignment={"preset": "concise"}))
    assert r.status_code == 200 and engine.requests[-1].sampling.logit_bias == ((5, -100.0),)


@pytest.mark.parametrize(
    ("bias", "param", "words"),
    [({str(len(VOCAB)): 1}, "logit_bias", "outside the vocabulary"),
     ({"5": 101}, "logit_bias", "-100..100"),
     ({"abc": 1}, "logit_bias", "token ids"),
     ({"5": "1"}, "logit_bias.5", "valid number")],
)
def test_logit_bias_errors(client: TestClient, bias: dict[str, Any], param: str, words: str
                           ) -> None:
    assert words in error(client.post("/v1/chat/completions", json=chat(logit_bias=bias)), param)


# -- echo on /v1/completions --------------------------------------------------------------------


def test_echo_puts_the_prompt_first(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = "abc"
    r = client.post("/v1/completions", json={"model": "fake-model", "prompt": "Say", "echo": True})
    assert r.json()["choices"][0]["text"] == "Sayabc"
    assert engine.requests[-1].sampling.prompt_logprobs is None  # not asked for


def test_echo_with_logprobs(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = "ab"
    body = {"model": "fake-model", "prompt": ["Hey", "Yo"], "echo": True, "logprobs": 1,
            "max_tokens": 2}
    r = client.post("/v1/completions", json=body)
    assert engine.requests[-1].sampling.prompt_logprobs == 1
    first, second = r.json()["choices"]
    assert first["text"] == "Heyab" and second["text"] == "Yoab"
    lp = first["logprobs"]
    assert lp["tokens"] == ["H", "e", "y", "a", "b"]
    assert lp["token_logprobs"][:3] == [None, -0.1, -0.2] and lp["token_logprobs"][3] == -0.5
    assert lp["top_logprobs"][0] is None and lp["top_logprobs"][3] == {"a": -1.0}
    assert lp["text_offset"] == [0, 1, 2, 3, 4]
    assert second["logprobs"]["tokens"] == ["Y", "o", "a", "b"]


def test_echo_streams_the_prompt_first(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = "ab"
    body = {"model": "fake-model", "prompt": "Hey", "echo": True, "logprobs": 0,
            "max_tokens": 2, "stream": True}
    chunks = events(client.post("/v1/completions", json=body).text)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert texts[0] == "Hey" and "".join(texts) == "Heyab"
    assert chunks[0]["choices"][0]["logprobs"]["token_logprobs"] == [None, -0.1, -0.2]
    assert chunks[1]["choices"][0]["logprobs"]["text_offset"] == [3]


def test_echo_of_token_prompts_is_their_text(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = "!"
    ids = [VOCAB.index(c) for c in "Hi"]
    r = client.post("/v1/completions",
                    json={"model": "fake-model", "prompt": ids, "echo": True, "max_tokens": 1})
    assert r.json()["choices"][0]["text"] == "Hi!"


def test_echo_logprobs_only_on_the_base_model(client: TestClient, engine: FakeEngine) -> None:
    cards = [*engine.model_cards(), ModelCard(id="my-dpo", root="fake-model", parent="fake-model")]
    engine.model_cards = lambda: cards  # type: ignore[method-assign]
    engine.resolve_model = lambda name: name  # type: ignore[method-assign]
    body = {"model": "my-dpo", "prompt": "Hey", "echo": True, "max_tokens": 1}
    assert client.post("/v1/completions", json=body).status_code == 200  # text only: fine
    message = error(client.post("/v1/completions", json={**body, "logprobs": 1}), "echo")
    assert "base model" in message


def test_prompt_rows_in_a_mixed_adapter_batch_do_not_crash() -> None:
    """vLLM runs the LM head on a request's prompt rows with the step's per-request LoRA slots
    (echo logprobs): rows and slots differ in number. The CPU ops must not index out of shape
    (that killed the engine core); with several slots the rows are the base model's."""
    import torch

    from server.engine.cpu_lora_ops import bgmv_shrink

    rows, weights = torch.randn(5, 8), torch.randn(2, 1, 4, 8)
    out = torch.ones(5, 4)
    bgmv_shrink(rows, weights, out, torch.tensor([0, -1]))  # an adapter and a base request
    assert torch.equal(out, torch.zeros(5, 4))  # no adapter applied to the base's prompt rows
    bgmv_shrink(rows, weights, out, torch.tensor([1, 1]))  # one slot in the step: it is theirs
    assert torch.allclose(out, rows @ weights[1, 0].T)


# -- chat-template fields (vLLM's): prefill -----------------------------------------------------


def prompt_text(engine: FakeEngine) -> str:
    return "".join(VOCAB[i] for i in engine.requests[-1].prompt_ids)


def test_continue_final_message_continues_the_assistant_text(
    client: TestClient, engine: FakeEngine
) -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I'm sorry, but"}]
    r = client.post("/v1/chat/completions", json=chat(
        messages=turns, continue_final_message=True, add_generation_prompt=False, max_tokens=2))
    assert r.status_code == 200, r.text
    assert prompt_text(engine).endswith("<user>hi</><assistant>I'm sorry, but")
    client.post("/v1/chat/completions", json=chat(messages=turns, max_tokens=2))
    assert prompt_text(engine).endswith("<assistant>I'm sorry, but</><assistant>")  # a new turn
    client.post("/v1/chat/completions", json=chat(add_generation_prompt=False, max_tokens=2))
    assert prompt_text(engine).endswith("<user>hi</>")


def test_continue_final_message_with_alignment_continues_both_conversations(
    client: TestClient, engine: FakeEngine
) -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}]
    r = client.post("/v1/chat/completions", json=chat(
        messages=turns, continue_final_message=True, add_generation_prompt=False,
        alignment={"preset": "concise", "alpha": 1}, max_tokens=2))
    assert r.status_code == 200, r.text
    request = engine.requests[-1]
    assert request.alignment is not None
    principled = "".join(VOCAB[i] for i in request.alignment.principled_prompt_ids)
    assert prompt_text(engine).endswith("<assistant>Sure")
    assert principled.endswith("<assistant>Sure") and principled != prompt_text(engine)


def test_continue_final_message_errors(client: TestClient) -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}]
    both = error(client.post("/v1/chat/completions", json=chat(
        messages=turns, continue_final_message=True)), None)
    assert "Cannot set both" in both
    last_user = error(client.post("/v1/chat/completions", json=chat(
        continue_final_message=True, add_generation_prompt=False)), None)
    assert "final message to be the assistant's" in last_user
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    no_text = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": None, "tool_calls": [call]}]
    assert "with text" in error(client.post("/v1/chat/completions", json=chat(
        messages=no_text, continue_final_message=True, add_generation_prompt=False)), None)
    error(client.post("/v1/chat/completions", json=chat(continue_final_message="yes")),
          "continue_final_message")


def test_a_final_message_the_template_cannot_continue_is_a_400(
    client: TestClient, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, continue_final_message: bool = False, **kw: Any) -> str:
        raise ValueError("the final message does not appear in the chat")  # as transformers

    monkeypatch.setattr(engine.renderer, "render_chat", refuse)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}]
    message = error(client.post("/v1/chat/completions", json=chat(
        messages=turns, continue_final_message=True, add_generation_prompt=False)), "messages")
    assert message.startswith("continue_final_message: the final message does not appear")


# -- aliases and fields accepted and ignored ----------------------------------------------------


def test_max_completion_tokens(client: TestClient, engine: FakeEngine) -> None:
    client.post("/v1/chat/completions", json=chat(max_completion_tokens=3))
    assert engine.requests[-1].sampling.max_tokens == 3
    r = client.post("/v1/chat/completions", json=chat(max_completion_tokens=3, max_tokens=3))
    assert r.status_code == 200
    r = client.post("/v1/chat/completions", json=chat(max_completion_tokens=3, max_tokens=4))
    assert "disagree" in r.json()["error"]["message"]


def test_ignored_fields_are_accepted(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(
        service_tier="auto", metadata={"k": "v"}, store=False, user="u-1",
        parallel_tool_calls=True, max_tokens=2))
    assert r.status_code == 200
    error(client.post("/v1/chat/completions", json=chat(store="no")), "store")
    error(client.post("/v1/chat/completions", json=chat(metadata={"k": 1})), "metadata.k")


@pytest.mark.parametrize("prompt", [[-1], [5, 10**9], [[1, 2], [-72949]]])
def test_token_prompts_outside_the_vocabulary_are_400s_even_with_echo(prompt: object) -> None:
    """The schema fuzzer's find: a negative id in an echoed prompt crashed the decoder (500)."""
    from fastapi.testclient import TestClient

    from server.api.app import create_app
    from server.auth import KeyRing
    from tests.fakes import FakeEngine

    with TestClient(create_app(FakeEngine(), KeyRing.build([], []))) as client:
        r = client.post("/v1/completions", json={"model": "fake-model", "prompt": prompt,
                                                 "echo": True, "max_tokens": 1})
    assert r.status_code == 400, r.text
    assert "outside the vocabulary" in r.json()["error"]["message"]
