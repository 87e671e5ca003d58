"""The OpenAI fine-tuning API over ``TrainingService``: requests become our job specs, jobs and
their events become OpenAI's objects (``fine_tuning_views``).

**Epochs to steps.** Our jobs count optimizer steps. ``n_epochs`` becomes
``max_steps = ceil(n_epochs x records / batch_size)`` with ``records`` the training file's
examples, so every example is seen ``n_epochs`` times (the last batch may take up to
``batch_size - 1`` examples of the next epoch's shuffle; batches are a function of seed and
step, ``trainers/loop.py``). ``"auto"`` is 3 epochs, 2 examples a batch, ``beta`` 0.1 and a
multiplier of 1. ``learning_rate_multiplier`` scales the method's default learning rate (5e-5).
``max_steps`` or ``learning_rate`` may be given instead, as extensions, but not both ways.

**Names.** ``fine_tuned_model`` is ``ft:<base>:<suffix>:<job id>`` (``ft:<base>::<job id>``
without a suffix), deployed as a LoRA adapter when the job succeeds unless the request says
``"deploy": false`` (or trains all weights, which would replace the base for everyone).
"""

from __future__ import annotations

import math
import re
import secrets
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from contracts.datasets import METHOD_FORMATS
from contracts.deployments import SqlDeployments
from contracts.specs import Hyperparameters, JobSpec, parse_spec
from contracts.store import DatasetRecord, Job, new_id
from server.api import fine_tuning_views as views
from server.api.fine_tuning_protocol import FineTuningJobRequest, HyperparametersRequest
from server.errors import InvalidRequestError
from server.training import TrainingService

# OpenAI's method types and ours, to our spec's method names (None: not available here).
OPENAI_METHODS: dict[str, str | None] = {
    "supervised": "sft", "dpo": "dpo", "reinforcement": None, "pointwise_dpo": "pointwise_dpo",
    "ulma": "ulma", "rdpo": "rdpo", "ld_align": "ld_align", "afd": "afd",
}
# No method given: what the training file's stored format trains with.
INFERRED = {"pairs": "dpo", "pointwise": "pointwise_dpo", "demonstrations": "supervised",
            "prompts": "rdpo"}
AUTO_EPOCHS = 3
MAX_LIST = 100
_SPECS: dict[str, type[BaseModel]] = {
    get_args(cls.model_fields["method"].annotation)[0]: cls
    for cls in get_args(get_args(JobSpec)[0])
}
_COMMON = {"method", "dataset", "model", "finetuning", "lora", "hyperparameters", "deploy",
           "suffix", "resources"}
_HYPER_FIELDS = set(Hyperparameters.model_fields)
_DEFAULTS = Hyperparameters()
_OPENAI_HYPER = ("batch_size", "learning_rate_multiplier", "n_epochs", "beta")


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's ``ft:<base>:<suffix>:<id>``; the base name is reduced to name characters."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-")[:64] or "model"
    return f"ft:{clean}:{suffix or ''}:{job_id}"


def check_limit(limit: int, high: int = MAX_LIST) -> int:
    if not 1 <= limit <= high:
        raise InvalidRequestError(f"limit must be between 1 and {high}", param="limit",
                                  code="invalid_limit")
    return limit


class FineTuningService:
    def __init__(self, training: TrainingService, deployable: bool, base_name: str) -> None:
        self.training, self.store = training, training.store
        self.deployable, self.base_name = deployable, base_name

    # -- jobs -----------------------------------------------------------------------------------
    def create(self, req: FineTuningJobRequest) -> dict[str, Any]:
        if req.model != self.base_name:
            raise InvalidRequestError(
                f"model {req.model!r} cannot be fine-tuned here: this server fine-tunes the model "
                f"it serves, {self.base_name!r}", param="model", code="model_not_available")
        dataset = self._file(req.training_file, "training_file")
        kind = req.method_type(INFERRED.get(dataset.format, "dpo"))
        method = self._method(kind)
        self._trains_on(method, dataset, "training_file")
        if req.validation_file is not None:
            self._trains_on(method, self._file(req.validation_file, "validation_file"),
                            "validation_file")
        job_id = new_id("job")
        spec, resolved = self._spec(req, kind, method, dataset, job_id)
        job = self.training.create_job(spec, job_id=job_id)
        record = {"model": self.base_name, "method_type": kind, "hyperparameters": resolved,
                  "validation_file": req.validation_file, "metadata": req.metadata}
        self.store.add_event(job.id, f"Created fine-tuning job: {job.id}",
                             data={views.CREATED_KEY: record})
        if req.validation_file is not None:
            self.store.add_event(job.id, f"validation file {req.validation_file} is kept with the "
                                 "job but not evaluated: only training metrics are reported",
                                 level="warning")
        return self.view(self.training.get_job(job.id))

    def view(self, job: Job) -> dict[str, Any]:
        return views.job_view(job, self._facts(job), self.training.base_model)

    def list(self, after: str | None, limit: int) -> dict[str, Any]:
        check_limit(limit)
        if after is not None and (not _is_id(after) or self.store.get_job(after) is None):
            raise InvalidRequestError(f"no fine-tuning job {after!r} to list after",
                                      param="after", code="job_not_found")
        jobs = self.store.jobs_before(after, limit + 1)
        return _page([self.view(j) for j in jobs[:limit]], len(jobs) > limit)

    def events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """Newest first, like OpenAI's; ``after`` is the last id of the previous page."""
        check_limit(limit)
        job = self.training.get_job(job_id)
        items = [views.event_item(job, e) for e in self.store.events(job.id)]
        items += [views.metrics_item(job, step, ts, m)
                  for step, ts, m in self.store.metric_rows(job.id)]
        ordered = [i.view for i in sorted(items, key=lambda i: (i.ts, i.key), reverse=True)]
        if after is not None:
            ids = [v["id"] for v in ordered]
            if after not in ids:
                raise InvalidRequestError(f"no event {after!r} in job {job.id}", param="after",
                                          code="event_not_found")
            ordered = ordered[ids.index(after) + 1:]
        return _page(ordered[:limit], len(ordered) > limit)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """The job's final checkpoint once it is usable: deployed (its model name), or kept
        without a deployment (its checkpoint id). Resume points are not listed: they are
        optimizer state for resuming, not models."""
        check_limit(limit)
        job = self.training.get_job(job_id)
        f = self._facts(job)
        status, _, model = views.openai_status(job, f)
        record = self.store.get_checkpoint(job.checkpoint_id) if job.checkpoint_id else None
        data = []
        if record is not None and status == "succeeded" and after != record.id:
            data = [views.checkpoint_view(job, record, model or record.id)]
        return _page(data, False)

    # -- internals ------------------------------------------------------------------------------
    def _facts(self, job: Job) -> views.JobFacts:
        f = views.facts(self.store.events(job.id), self.base_name)
        deploy = job.config.get("deploy")
        if f.outcome is None and deploy and job.status == "succeeded" and self._live(job):
            # Deployed, but no outcome event (a replica stopped in between): the store's
            # desired state is the truth.
            return views.JobFacts(f.request, {views.DEPLOYMENT_KEY: deploy["name"],
                                              "status": "live"}, job.finished_at, f.base_name)
        return f

    def _live(self, job: Job) -> bool:
        if not isinstance(self.store, SqlDeployments):
            return False
        name = job.config["deploy"]["name"]
        deployment = self.store.deployment(name)
        if deployment is None or deployment.live_version is None:
            return False
        return any(v.version == deployment.live_version and v.checkpoint_id == job.checkpoint_id
                   for v in self.store.history(name))

    def _file(self, file_id: str, param: str) -> DatasetRecord:
        record = self.store.get_dataset(file_id) if _is_id(file_id) else None
        if record is None:
            raise InvalidRequestError(f"{param} {file_id!r} does not exist: upload it with "
                                      "POST /v1/files first", param=param, code="file_not_found")
        return record

    @staticmethod
    def _method(kind: str) -> str:
        method = OPENAI_METHODS[kind]
        if method is None or method not in _SPECS:
            available = ", ".join(k for k, m in OPENAI_METHODS.items() if m in _SPECS)
            why = "it is not implemented here"
            raise InvalidRequestError(f"method {kind!r} is not available on this server: {why}. "
                                      f"Available: {available}", param="method.type",
                                      code="method_not_available")
        return method

    @staticmethod
    def _trains_on(method: str, dataset: DatasetRecord, param: str) -> None:
        if dataset.format not in METHOD_FORMATS[method]:
            allowed = " or ".join(METHOD_FORMATS[method])
            raise InvalidRequestError(
                f"method {method} trains on {allowed} data; {param} {dataset.id} holds "
                f"{dataset.format} (see docs/fine_tuning.md for the formats)", param=param,
                code="wrong_file_format")

    def _spec(self, req: FineTuningJobRequest, kind: str, method: str, dataset: DatasetRecord,
              job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job spec, and the hyperparameters as OpenAI reports them (auto resolved)."""
        hyper = req.hyper()
        where = f"method.{kind}.hyperparameters" if req.method else "hyperparameters"
        hp, options = _split_extensions(hyper, method, where)
        batch = _DEFAULTS.batch_size if hyper.batch_size == "auto" else hyper.batch_size
        beta = _DEFAULTS.beta if hyper.beta == "auto" else hyper.beta
        multiplier, lr = _learning_rate(hyper, hp, where)
        epochs, steps = _steps(hyper, hp, dataset.records, batch, where)
        if req.seed is not None or "seed" not in hp:  # OpenAI's field, else ours, else random
            hp["seed"] = req.seed if req.seed is not None else secrets.randbelow(2**31)
        hp.update(batch_size=batch, beta=beta, learning_rate=lr, max_steps=steps)
        spec: dict[str, Any] = {"method": method, "dataset": dataset.id, "hyperparameters": hp,
                                "finetuning": req.finetuning, "suffix": req.suffix, **options}
        for key in ("lora", "resources"):
            if getattr(req, key) is not None:
                spec[key] = getattr(req, key)
        if self._deploys(req):
            spec["deploy"] = {"name": fine_tuned_name(self.base_name, req.suffix, job_id),
                              "mode": "adapter"}
        _validate(spec, kind, where, set(options))
        resolved = {"batch_size": batch, "beta": beta, "learning_rate_multiplier": multiplier,
                    "n_epochs": epochs}
        return spec, resolved

    def _deploys(self, req: FineTuningJobRequest) -> bool:
        if req.deploy is False:
            return False
        if req.finetuning == "full":
            if req.deploy:
                raise InvalidRequestError(
                    "a full fine-tuning replaces the served weights for every user; it is not "
                    "deployed under its own name: deploy its checkpoint through "
                    "/admin/v1/deployments", param="deploy", code="not_deployable")
            return False
        if not self.deployable:
            if req.deploy:
                raise InvalidRequestError("this server cannot deploy models (no deployment "
                                          "support in its engine)", param="deploy",
                                          code="not_deployable")
            return False
        return True


def _is_id(value: str) -> bool:
    """Could be one of our ids: short and printable (no NUL for the driver, nothing odd)."""
    return 0 < len(value) <= 256 and value.isprintable()


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def _split_extensions(
    hyper: HyperparametersRequest, method: str, where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our extension fields: optimizer hyperparameters, and the method's own options."""
    own = set(_SPECS[method].model_fields) - _COMMON
    hp, options = {}, {}
    for key, value in hyper.extensions.items():
        if key in _HYPER_FIELDS:
            hp[key] = value
        elif key in own:
            options[key] = value
        else:
            valid = ", ".join([*_OPENAI_HYPER, *sorted(_HYPER_FIELDS - {"seed"}), *sorted(own)])
            raise InvalidRequestError(f"{where}.{key}: unknown hyperparameter for {method}; "
                                      f"valid: {valid}", param=f"{where}.{key}",
                                      code="invalid_hyperparameter")
    return hp, options


def _learning_rate(
    hyper: HyperparametersRequest, hp: dict[str, Any], where: str
) -> tuple[float, Any]:
    if "learning_rate" in hp:
        if hyper.learning_rate_multiplier != "auto":
            raise InvalidRequestError(f"{where}: give learning_rate_multiplier or learning_rate, "
                                      "not both", param=f"{where}.learning_rate")
        lr = hp["learning_rate"]
        number = isinstance(lr, int | float) and not isinstance(lr, bool)
        return (lr / _DEFAULTS.learning_rate if number else lr), lr
    multiplier = 1.0 if hyper.learning_rate_multiplier == "auto" else hyper.learning_rate_multiplier
    return multiplier, multiplier * _DEFAULTS.learning_rate


def _steps(hyper: HyperparametersRequest, hp: dict[str, Any], records: int, batch: int,
           where: str) -> tuple[int | None, Any]:
    if "max_steps" in hp:
        if hyper.n_epochs != "auto":
            raise InvalidRequestError(f"{where}: give n_epochs or max_steps, not both",
                                      param=f"{where}.max_steps")
        return None, hp["max_steps"]
    epochs = AUTO_EPOCHS if hyper.n_epochs == "auto" else hyper.n_epochs
    steps = math.ceil(epochs * records / batch)
    if steps > 1_000_000:
        raise InvalidRequestError(f"{where}.n_epochs: {epochs} epochs of {records} examples in "
                                  f"batches of {batch} exceed 1,000,000 steps",
                                  param=f"{where}.n_epochs")
    return epochs, steps


def _validate(spec: dict[str, Any], kind: str, where: str, options: set[str]) -> None:
    """The spec's own checks, with errors named as the request named the fields."""
    try:
        parse_spec(spec)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(p) for p in first.get("loc", ())][1:]  # drop the union tag
        if loc and loc[0] == "hyperparameters":
            loc = [*where.split("."), *loc[1:]]
        elif loc and loc[0] in options:  # the method's own options sit with its hyperparameters
            loc = [*where.split("."), *loc]
        param = ".".join(loc) or None
        message = str(first.get("msg", "invalid job")).removeprefix("Value error, ")
        raise InvalidRequestError(f"{param}: {message}" if param else message, param=param,
                                  code="invalid_job") from None


def served_base_name(training: TrainingService, engine: Any) -> str:
    """The base model's name in requests: configured, else the engine's, else the folder's."""
    if training.served_name:
        return training.served_name
    for card in engine.model_cards():
        if card.parent is None:
            return str(card.id)
    return Path(training.base_model or "model").name
