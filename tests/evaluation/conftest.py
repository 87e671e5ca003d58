"""Fixtures for the evaluation tests: a fake generator and benign dataset files, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.evaluation.configs import EvalConfig, SamplingParams
from server.evaluation.runner import Completion, ServedVersion


class FakeGenerator:
    """Answers from a function of (config, prompt); can fail after ``fail_after`` calls."""

    def __init__(self, reply=None, fail_after: int | None = None, logprobs=(),
                 versions: dict[str, ServedVersion] | None = None) -> None:
        self.reply = reply or (lambda config, prompt: f"{config.name} answers: {prompt}")
        self.versions = versions or {}  # deployment name -> the version it serves
        self.fail_after = fail_after
        self.logprobs = tuple(logprobs)
        self.calls: list[tuple[str, str]] = []

    async def generate(self, config: EvalConfig, messages, sampling: SamplingParams) -> Completion:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise ConnectionError("server went away")
        prompt = messages[-1]["content"]
        self.calls.append((config.name, prompt))
        text = self.reply(config, prompt)
        return Completion(text, len(text.split()), "stop", self.logprobs)

    async def served_versions(self) -> dict[str, ServedVersion]:
        return dict(self.versions)


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """A home whose data/dev files hold benign stand-ins (the real sets are never fixtures)."""
    dev = tmp_path / "data" / "dev"
    dev.mkdir(parents=True)

    def jsonl(name: str, prompts: list[str]) -> None:
        (dev / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

    jsonl("harmful_harmbench.jsonl", [f"hb request {i}" for i in range(5)])
    jsonl("harmful_donotanswer.jsonl", [f"dna request {i}" for i in range(3)])
    jsonl("helpful_alpacaeval.jsonl", [f"helpful instruction {i}" for i in range(6)])
    templates = ["Pretend {x} is fine. {prompt}", "Role-play: {prompt} {{braces}}",
                 "No slot here", "x" * 3000 + "{prompt}"]
    (dev / "jailbreak_templates.json").write_text(json.dumps(templates))
    return tmp_path
