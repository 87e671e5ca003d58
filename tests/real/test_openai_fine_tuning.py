"""Issue 15's fine-tuning flow with the official ``openai`` client and a user key only, against
the real server with one training worker: ``files.create`` with OpenAI's DPO example format ->
``fine_tuning.jobs.create(method=dpo, beta 0.1, n_epochs 1)`` -> ``list_events`` until the job
succeeds -> ``checkpoints.list`` -> a chat request to ``fine_tuned_model`` answered by the new
adapter (its version in ``system_fingerprint``, its log-probabilities not the base's)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.real.conftest import ADMIN_KEY, USER_KEY, own_store
from tests.real.server_process import ServerProcess

BASE = "smollm2-135m-instruct"
JOB_TIMEOUT_S = 900  # the worker loads the model and trains 2 steps on a busy 2-core machine
QUESTION = [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}]


def _example(i: int) -> dict[str, Any]:
    """OpenAI's preference fine-tuning example (docs: "Direct preference optimization")."""
    return {
        "input": {"messages": [{"role": "user", "content": f"{QUESTION[0]['content']} ({i})"}],
                  "tools": [], "parallel_tool_calls": True},
        "preferred_output": [{"role": "assistant", "content": "Today in San Francisco, it is "
                              "not quite cold as expected. Morning clouds will give away to "
                              "sunshine, with a high near 68°F (20°C) and a low around 57°F "
                              "(14°C)."}],
        "non_preferred_output": [{"role": "assistant", "content": "It is not particularly cold "
                                  "in San Francisco today."}],
    }


@pytest.fixture(scope="module")
def ft_server(
    alignserve_home: Path, default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(alignserve_home, env={
        "ALIGNSERVE_API_KEYS": USER_KEY, "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
        "ALIGNSERVE_KV_CACHE_GIB": "1", "ALIGNSERVE_WORKERS": "1",
        "ALIGNSERVE_STORE_URL": own_store(tmp_path_factory.mktemp("ft-store")),
    }).start(timeout=900)  # the shared machine may be busy with other engines
    yield proc
    proc.stop()


def test_dpo_fine_tuning_with_the_openai_client(ft_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{ft_server.base_url}/v1", api_key=USER_KEY,
                           max_retries=0, timeout=300)
    data = "".join(json.dumps(_example(i)) + "\n" for i in range(4)).encode()
    f = client.files.create(file=("dpo.jsonl", data), purpose="fine-tune")
    assert f.purpose == "fine-tune" and f.bytes == len(data) and f.status == "processed"
    assert client.files.content(f.id).read() == data

    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=f.id, suffix="weather",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 1}}},
    )
    assert job.model == BASE and job.status == "queued"
    assert job.method is not None and job.method.dpo is not None
    hyper = job.method.dpo.hyperparameters
    assert hyper is not None and (hyper.beta, hyper.n_epochs) == (0.1, 1)

    deadline, seen = time.monotonic() + JOB_TIMEOUT_S, {}
    while True:
        for event in client.fine_tuning.jobs.list_events(job.id, limit=50).data:
            seen[event.id] = event
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"job still {job.status}:\n{ft_server.log_tail()}"
        time.sleep(3)
    for event in client.fine_tuning.jobs.list_events(job.id, limit=50).data:  # the last ones
        seen[event.id] = event
    messages = [e.message for e in sorted(seen.values(), key=lambda e: e.created_at)]
    assert job.status == "succeeded", (job.error, messages, ft_server.log_tail())
    name = f"ft:{BASE}:weather:{job.id}"
    assert job.fine_tuned_model == name
    metrics = [e for e in seen.values() if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == [1, 2]  # type: ignore[index]
    assert any(m.startswith(f"fine-tuned model {name} is live") for m in messages)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 1 and checkpoints[0].step_number == 2
    assert checkpoints[0].fine_tuned_model_checkpoint == name
    assert checkpoints[0].metrics.train_loss is not None

    def ask(model: str) -> Any:
        return client.chat.completions.create(model=model, messages=QUESTION,  # type: ignore[arg-type]
                                              max_tokens=8, temperature=0, logprobs=True)

    tuned, base = ask(name), ask(BASE)
    assert tuned.system_fingerprint == f"alignserve:{name}@1"  # the new adapter answered
    assert base.system_fingerprint == f"alignserve:{BASE}"
    tuned_lp, base_lp = tuned.choices[0].logprobs, base.choices[0].logprobs
    assert tuned_lp and tuned_lp.content and base_lp and base_lp.content
    first, ref = tuned_lp.content[0], base_lp.content[0]
    assert first.token != ref.token or abs(first.logprob - ref.logprob) > 1e-6
    assert client.files.delete(f.id).deleted  # the job has finished: the file may go
