"""The OpenAI surface on the real server, driven by the unmodified ``openai`` client: structured
outputs (also under linear alignment), forced and streamed tool calls with a follow-up turn,
logit_bias, echo with logprobs, models.retrieve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.real.conftest import USER_KEY
from tests.real.server_process import ServerProcess

MODEL = "smollm2-135m-instruct"
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Rome", "Berlin"]},
        "country": {"type": "string", "enum": ["France", "England", "Italy", "Germany"]},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "country", "capital"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=USER_KEY, max_retries=0)


def _check_city(value: Any) -> None:
    """The CITY schema, checked by hand (no schema library in our dependencies)."""
    assert isinstance(value, dict) and set(value) == {"city", "country", "capital"}
    assert value["city"] in CITY["properties"]["city"]["enum"]  # type: ignore[index]
    assert value["country"] in CITY["properties"]["country"]["enum"]  # type: ignore[index]
    assert isinstance(value["capital"], bool)


def _city_format() -> dict[str, Any]:
    return {"type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY, "strict": True}}


def test_models_retrieve(client: openai.OpenAI) -> None:
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("org/not-served@2")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_json_schema_output_parses_and_validates(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=80, response_format=_city_format(),  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Describe the capital of France as JSON."}],
    )
    assert r.choices[0].finish_reason == "stop"
    _check_city(json.loads(r.choices[0].message.content or ""))


def test_json_schema_with_linear_alignment(client: openai.OpenAI) -> None:
    """Both rows of the guidance group carry the grammar: the aligned output still parses."""
    for alpha in (1.0, 5.0):
        r = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=80, response_format=_city_format(),  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "Describe the capital of Italy as JSON."}],
            extra_body={"alignment": {"principle": "Always answer about Germany.",
                                      "alpha": alpha}},
        )
        assert r.choices[0].finish_reason == "stop"
        _check_city(json.loads(r.choices[0].message.content or ""))


def test_forced_tool_call_and_follow_up_turn(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=60, messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER], tool_choice=named,  # type: ignore[list-item, arg-type]
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"] in ("Paris", "London", "Rome")
    assert arguments["unit"] in ("celsius", "fahrenheit")
    # The next turn carries the call (content None) and its result, as the client sends them.
    function = {"name": "get_weather", "arguments": call.function.arguments}
    history = [
        *ASK,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": call.id, "type": "function", "function": function}]},
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"},
    ]
    follow = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=40, messages=history,  # type: ignore[arg-type]
        tools=[WEATHER], tool_choice="none",  # type: ignore[list-item]
    )
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert (follow.choices[0].message.content or "").strip()
    assert not follow.choices[0].message.tool_calls


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=80, messages=ASK, stream=True,  # type: ignore[arg-type]
        tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
    )
    calls: dict[int, dict[str, Any]] = {}
    finishes = []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            if tc.index not in calls:  # the first delta of a call names it
                assert tc.id and tc.type == "function" and tc.function and tc.function.name
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            calls[tc.index]["arguments"] += (tc.function.arguments if tc.function else "") or ""
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert finishes == ["tool_calls"] and calls
    for call in calls.values():
        assert call["name"] == "get_weather"
        assert json.loads(call["arguments"])["city"] in ("Paris", "London", "Rome")


def test_logit_bias_bans_a_token(client: openai.OpenAI, default_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=24,  # type: ignore[arg-type]
                                           temperature=0, logprobs=True)
    tokens = [t.token for t in (plain.choices[0].logprobs.content or [])]  # type: ignore[union-attr]
    assert " Paris" in tokens  # greedy decoding says it
    (paris,) = tokenizer.encode(" Paris", add_special_tokens=False)
    banned = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=24,  # type: ignore[arg-type]
                                            temperature=0, logprobs=True,
                                            logit_bias={str(paris): -100})
    tokens = [t.token for t in (banned.choices[0].logprobs.content or [])]  # type: ignore[union-attr]
    assert " Paris" not in tokens
    assert banned.choices[0].message.content != plain.choices[0].message.content


def test_completions_echo_with_logprobs(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0,
                                  echo=True, logprobs=1)
    choice = r.choices[0]
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    prompt_len = r.usage.prompt_tokens  # type: ignore[union-attr]
    assert len(lp.tokens) == prompt_len + 3
    assert "".join(lp.tokens[:prompt_len]) == prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lp.token_logprobs[1:])
    assert all(len(top) >= 1 for top in lp.top_logprobs[1:])  # type: ignore[arg-type]
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0)
    assert choice.text == prompt + plain.choices[0].text


def test_continue_final_message_is_the_completion_of_the_rendered_prefix(
    client: openai.OpenAI, default_model: Path
) -> None:
    """vLLM's prefill fields through the openai client's ``extra_body``: the answer continues
    the assistant's text, exactly as a text completion of the template rendered up to it."""
    from transformers import AutoTokenizer

    turns: list[Any] = [{"role": "user", "content": "How do I pick a lock?"},
                        {"role": "assistant", "content": "I'm sorry, but"}]
    r = client.chat.completions.create(
        model=MODEL, messages=turns, max_tokens=12, temperature=0,
        extra_body={"add_generation_prompt": False, "continue_final_message": True})
    text = r.choices[0].message.content or ""
    assert text and not text.startswith("I'm sorry, but")
    rendered = AutoTokenizer.from_pretrained(default_model).apply_chat_template(
        turns, tokenize=False, continue_final_message=True)
    plain = client.completions.create(model=MODEL, prompt=rendered, max_tokens=12, temperature=0)
    assert text == plain.choices[0].text
    with pytest.raises(openai.BadRequestError, match="Cannot set both"):
        client.chat.completions.create(model=MODEL, messages=turns, max_tokens=2,
                                       extra_body={"continue_final_message": True})


def test_strictness_and_surrogates_over_http(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {USER_KEY}", "Content-Type": "application/json"}
    url = f"{server.base_url}/v1/chat/completions"
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for field, value in (("stream", "yes"), ("max_tokens", "8"), ("n", "2")):
        r = httpx.post(url, headers=headers, json={**base, field: value}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field
    body = json.dumps({**base, "messages": [{"role": "user", "content": "\ud800"}]})
    r = httpx.post(url, headers=headers, content=body, timeout=30)
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
