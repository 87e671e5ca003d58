"""Another training when the evaluation gate refuses an align job's adapter (``attempts``).

The training seed alone moves what an adapter learns from the same pairs (docs/alignment.md:
harmful refusal from 20% to 75% over five seeds of plain DPO). So an align job with
``attempts: n`` that the gate refuses is followed by a new job: the same spec, the next
training seed, ``attempt + 1``, and ``answers_from`` the refused job, whose worker then trains
on the same answers without asking the engine again. The gate judges each on its validation
prompts (``GateSpec.offset``), never on the ones the reported evaluation reads.

The next job's id is derived from the first job's (``<first>-try<k>``), so it is made once: a
replica that finds it made (another replica's, or its own before a restart) leaves it, and a
server that stopped between the refusal and the next job makes it when it starts again
(``server.auto_deploy``).
"""

from __future__ import annotations

from typing import Any

from contracts.records import Job
from server.training import TrainingService


def attempt_of(config: dict[str, Any]) -> tuple[int, int]:
    """(this attempt, attempts in all) of an align job's config; (1, 1) for any other job."""
    if config.get("method") != "align":
        return 1, 1
    return int(config.get("attempt") or 1), int(config.get("attempts") or 1)


def next_attempt_id(job_id: str, attempt: int) -> str:
    first = job_id.removesuffix(f"-try{attempt}") if attempt > 1 else job_id
    return f"{first}-try{attempt + 1}"


def retry_refused(training: TrainingService, job: Job) -> Job | None:
    """The job that trains again after ``job``'s adapter was refused (made now, or found when
    an earlier pass made it); None when ``job`` has no attempt left. Raises
    ``InvalidRequestError`` when the next attempt cannot be made (its dataset was deleted)."""
    config = dict(job.config or {})
    attempt, attempts = attempt_of(config)
    if attempt >= attempts:
        return None
    next_id = next_attempt_id(job.id, attempt)
    existing = training.store.get_job(next_id)
    if existing is not None:
        return existing
    hyperparameters = dict(config.get("hyperparameters") or {})
    hyperparameters["seed"] = int(hyperparameters.get("seed") or 0) + 1
    body = {**config, "hyperparameters": hyperparameters, "attempt": attempt + 1,
            "answers_from": job.id}
    try:
        created = training.create_job(body, job_id=next_id)
    except Exception:
        made = training.store.get_job(next_id)  # another replica made it a moment ago
        if made is None:
            raise
        return made
    training.store.add_event(
        created.id, f"attempt {attempt + 1} of {attempts}: job {job.id}'s adapter was refused "
        f"by the evaluation gate; training its answers again with seed "
        f"{hyperparameters['seed']}", data={"stage": "attempt", "attempt": attempt + 1,
                                            "attempts": attempts, "previous_job": job.id})
    return created
