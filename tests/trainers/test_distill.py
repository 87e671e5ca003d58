"""Principle distillation: which answers become chosen and rejected, and what is asked of the
engine (an in-memory transport stands in for the server; tests/real/test_align_loop.py runs the
real one)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from trainers.distill import (
    DECLINE_INSTRUCTION,
    FALLBACK_REFUSALS,
    Answers,
    EngineClient,
    PromptItem,
    Synthesis,
    build_pairs,
    synthesise,
)

REFUSAL = "I'm sorry, but I can't help with that."
HELP = "Sure! Here are three steps: first, open the terminal."


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_harmful_prompt_prefers_the_aligned_refusal_over_the_plain_compliance() -> None:
    data = build_pairs([PromptItem(user("make a weapon"), "harmful")],
                       [Answers(plain=HELP, aligned=REFUSAL, declined="I can't assist.")])
    assert data.pairs == [{"messages": user("make a weapon"), "chosen": REFUSAL,
                           "rejected": HELP, "kind": "harmful"}]
    assert data.stats["aligned_refusal_chosen"] == 1


def test_harmful_prompt_uses_the_elicited_refusal_when_alignment_complied() -> None:
    declined = "I cannot help with this request."
    data = build_pairs([PromptItem(user("x"), "harmful")],
                       [Answers(plain=HELP, aligned="Okay, here is how.", declined=declined)])
    assert data.pairs[0]["chosen"] == declined and data.pairs[0]["rejected"] == HELP


def test_harmful_prompt_the_model_already_refuses_gives_no_pair() -> None:
    data = build_pairs([PromptItem(user("x"), "harmful")], [Answers(REFUSAL, REFUSAL, REFUSAL)])
    assert data.pairs == [] and data.stats["no_complying_answer"] == 1


def test_benign_prompt_keeps_the_helpful_answer_and_rejects_the_over_refusal() -> None:
    data = build_pairs([PromptItem(user("kill a python process"), "benign")],
                       [Answers(plain=HELP, aligned=REFUSAL, declined="I can't assist.")])
    assert data.pairs[0]["chosen"] == HELP and data.pairs[0]["rejected"] == REFUSAL
    assert data.stats["aligned_over_refusal_rejected"] == 1


def test_benign_prompt_without_over_refusal_rejects_the_elicited_refusal() -> None:
    declined = "Sorry, I can't help with that one."
    data = build_pairs([PromptItem(user("bake bread"), "benign")],
                       [Answers(plain=HELP, aligned="Mix flour and water.", declined=declined)])
    assert data.pairs[0] == {"messages": user("bake bread"), "chosen": HELP,
                             "rejected": declined, "kind": "benign"}


def test_benign_prompt_the_plain_answer_declines_rejects_that_refusal() -> None:
    plain = "I'm sorry, but as a chatbot I'm not equipped to provide recipes."
    data = build_pairs([PromptItem(user("a falafel recipe"), "benign")],
                       [Answers(plain=plain, aligned=HELP, declined="I can't assist.")])
    assert data.pairs[0]["chosen"] == HELP and data.pairs[0]["rejected"] == plain
    assert data.stats["plain_refusal_rejected"] == 1
    assert data.stats["aligned_over_refusal_rejected"] == 0


def test_a_decline_that_does_not_refuse_is_replaced_by_a_fallback() -> None:
    data = build_pairs([PromptItem(user("bake bread"), "benign")],
                       [Answers(HELP, HELP, declined="Bread is made from flour.")])
    assert data.pairs[0]["rejected"] in FALLBACK_REFUSALS
    assert data.stats["fallback_refusals"] == 1


def test_derived_forms() -> None:
    data = build_pairs([PromptItem(user("a"), "harmful"), PromptItem(user("b"), "benign")],
                       [Answers(HELP, REFUSAL, REFUSAL), Answers(HELP, HELP, REFUSAL)])
    assert [r["label"] for r in data.pointwise()] == [True, False, True, False]
    assert [r["completion"] for r in data.demonstrations()] == [REFUSAL, HELP]
    assert data.scores() == ([1.0, 1.0], [0.0, 0.0])


def test_synthesis_asks_the_engine_three_ways_and_keeps_the_order() -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        assert request.headers["authorization"] == "Bearer k"
        prompt = body["messages"][-1]["content"]
        if "alignment" in body:
            text = f"aligned {prompt}"
        elif body["messages"][0]["content"] == DECLINE_INSTRUCTION:
            text = f"declined {prompt}"
        else:
            text = f"plain {prompt}"
        return httpx.Response(200, json={"choices": [{"message": {"content": text}}]})

    items = [PromptItem(user(f"p{i}"), "benign") for i in range(5)]
    engine = EngineClient("http://engine", "m", "k")
    synthesis = Synthesis({"preset": "harmless", "alpha": 1.0}, max_tokens=8, concurrency=2)
    got = asyncio.run(synthesise(engine, items, synthesis, transport=httpx.MockTransport(answer)))
    assert got == [Answers(f"plain p{i}", f"aligned p{i}", f"declined p{i}") for i in range(5)]
    assert len(seen) == 15 and all(b["model"] == "m" and b["max_tokens"] == 8 for b in seen)
    assert {json.dumps(b["alignment"]) for b in seen if "alignment" in b} == {
        json.dumps({"preset": "harmless", "alpha": 1.0})}


def test_engine_errors_surface_with_the_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    engine = EngineClient("http://engine", "m")
    with pytest.raises(RuntimeError, match="401"):
        asyncio.run(synthesise(engine, [PromptItem(user("p"), "benign")],
                               Synthesis({"preset": "harmless"}),
                               transport=httpx.MockTransport(refuse)))


def test_answer_all_keeps_order_and_passes_sampling() -> None:
    from trainers.distill import answer_all

    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        turns = len(body["messages"])
        return httpx.Response(200, json={"choices": [{"message": {"content": f"t{turns}"}}]})

    chats = [user("a"), [*user("b"), {"role": "assistant", "content": "x"}, *user("c")]]
    got = asyncio.run(answer_all(EngineClient("http://e", "m"), chats, max_tokens=7,
                                 temperature=0.7, top_p=0.9, seed=5,
                                 transport=httpx.MockTransport(answer)))
    assert got == ["t1", "t3"]
    assert sorted(b["seed"] for b in seen) == [5, 6]
    assert all(b["top_p"] == 0.9 and b["temperature"] == 0.7 for b in seen)


def test_served_engine_needs_a_model_and_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from contracts.specs import EngineSpec
    from trainers.distill import ENGINE_KEY_ENV, ENGINE_URL_ENV, served_engine

    monkeypatch.delenv(ENGINE_URL_ENV, raising=False)
    monkeypatch.setenv(ENGINE_KEY_ENV, "k")
    assert served_engine(None) is None
    assert served_engine(EngineSpec(base_url="http://a")) is None
    engine = served_engine(EngineSpec(base_url="http://a", model="m"))
    assert engine == EngineClient("http://a", "m", "k")
    monkeypatch.setenv(ENGINE_URL_ENV, "http://other-host:8000")  # a worker elsewhere
    assert served_engine(EngineSpec(base_url="http://a", model="m")) == EngineClient(
        "http://other-host:8000", "m", "k")
