"""The training service: datasets, jobs and checkpoints over the trainers' public API.

Only ``contracts.store``, ``contracts.datasets`` and ``contracts.specs`` are used (never trainer
internals). Trainer errors become domain errors here; routes stay thin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.datasets import (
    DEFAULT_MAX_BYTES,
    METHOD_FORMATS,
    DatasetError,
    DatasetTooLargeError,
    import_dataset,
    import_path,
    remove_files,
)
from contracts.specs import (
    AfDSpec,
    AlignSpec,
    AnySpec,
    EngineSpec,
    LDAlignSpec,
    RDPOSpec,
    parse_spec,
    total_steps,
)
from contracts.store import (
    TERMINAL,
    CheckpointRecord,
    DatasetInUse,
    DatasetRecord,
    Event,
    Job,
    JobStore,
)
from server.auth import Scope
from server.errors import ConflictError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from server.names import is_name

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000  # ``?limit=`` on job and checkpoint lists: 1..MAX_LIST_LIMIT
# One answer for every path the import refuses, whether or not it exists: the API must not
# become a way to probe the server's file system.
OUTSIDE_IMPORT_DIR = (
    "'path' must name a file inside the server's import folder (ALIGNSERVE_IMPORT_DIR); "
    "give it relative to that folder"
)


def check_limit(limit: int) -> int:
    """A list limit in range, else a 400 naming ``limit`` (SQLite overflows past 2**63)."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequestError(
            f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit", code="invalid_limit"
        )
    return limit


def dataset_view(d: DatasetRecord) -> dict[str, Any]:
    return {"id": d.id, "object": "dataset", "format": d.format, "records": d.records,
            "bytes": d.bytes, "sha256": d.sha256, "filename": d.filename,
            "created_at": int(d.created_at)}


def checkpoint_view(c: CheckpointRecord) -> dict[str, Any]:
    manifest = c.manifest
    return {"id": c.id, "object": "checkpoint", "job_id": c.job_id, "method": c.method,
            "path": c.path, "created_at": int(c.created_at), "format": manifest.get("format"),
            "base_model": manifest.get("base_model"), "deploy": manifest.get("deploy"),
            "final_metrics": manifest.get("metrics", {}).get("final")}


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if not str(p).startswith(("function-",))]
    # Drop the union tag pydantic puts first ("dpo", "ulma", ...).
    if loc and loc[0] in METHOD_FORMATS:
        loc = loc[1:]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid job")).removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


@dataclass
class TrainingService:
    store: JobStore
    home: Path
    base_model: str | None = None
    max_dataset_bytes: int = DEFAULT_MAX_BYTES
    import_dir: Path | None = None  # ``{"path": ...}`` imports; None: <home>/imports
    # The base model's name in requests: OpenAI-shaped views show it, not the folder.
    served_name: str | None = None
    # The key scope that may use /v1/files and /v1/fine_tuning (ALIGNSERVE_FINE_TUNING_SCOPE).
    fine_tuning_scope: Scope = Scope.USER
    # Where align jobs' workers reach this server's OpenAI API (ALIGNSERVE_ENGINE_URL, else the
    # server's own bind address).
    engine_url: str | None = None
    # The engine's LoRA slot size (ALIGNSERVE_MAX_LORA_RANK); None: adapters are not served.
    max_lora_rank: int | None = None

    # -- datasets -----------------------------------------------------------------------------
    def upload(self, data: bytes, fmt: str | None, filename: str | None) -> DatasetRecord:
        return self._guard(lambda: import_dataset(
            self.store, self.home, data, fmt, filename, self.max_dataset_bytes))

    def import_server_path(self, path: str, fmt: str | None) -> DatasetRecord:
        resolved = self._inside_import_dir(path)
        return self._guard(lambda: import_path(
            self.store, self.home, resolved, fmt, self.max_dataset_bytes))

    @property
    def import_root(self) -> Path:
        return (self.import_dir or self.home / "imports").expanduser()

    def _inside_import_dir(self, raw: str) -> Path:
        """``raw`` (absolute, or relative to the import folder) with every symlink resolved, if
        that lies inside the import folder; a ``..`` or a link that leads out is refused with
        the same message as a file outside it."""
        root = self.import_root.resolve()
        try:
            resolved = (root / Path(raw).expanduser()).resolve()
        except (OSError, RuntimeError, ValueError):  # NUL byte, symlink loop, unknown ~user
            resolved = None
        if resolved is None or resolved == root or not resolved.is_relative_to(root):
            logger.warning("dataset import outside %s refused: %r", root, raw[:200])
            raise InvalidRequestError(OUTSIDE_IMPORT_DIR, param="path", code="path_not_allowed")
        return resolved

    @staticmethod
    def _guard(action: Any) -> DatasetRecord:
        try:
            record: DatasetRecord = action()
        except DatasetTooLargeError as e:
            raise PayloadTooLargeError(str(e), param="file") from None
        except DatasetError as e:
            raise InvalidRequestError(str(e), param=e.field, code="invalid_dataset") from None
        logger.info("dataset %s imported: %s, %d records", record.id, record.format,
                    record.records)
        return record

    def datasets(self) -> list[DatasetRecord]:
        return self.store.list_datasets()

    def dataset(self, dataset_id: str, param: str = "file_id") -> DatasetRecord:
        known = 0 < len(dataset_id) <= 256 and dataset_id.isprintable()  # else no id of ours
        record = self.store.get_dataset(dataset_id) if known else None
        if record is None:
            raise NotFoundError(f"No such file: {dataset_id!r}", param=param,
                                code="file_not_found")
        return record

    def delete_dataset(self, dataset_id: str) -> DatasetRecord:
        """Remove a dataset and its files; 409 while a queued, running or paused job uses it
        (its worker still has to read it)."""
        self.dataset(dataset_id)
        try:
            record = self.store.delete_dataset(dataset_id)
        except DatasetInUse as e:
            raise ConflictError(f"file {dataset_id} is used by fine-tuning jobs that have not "
                                f"finished: {', '.join(e.job_ids)}; cancel them or wait",
                                param="file_id", code="file_in_use") from None
        if record is None:  # deleted by another request meanwhile
            raise NotFoundError(f"No such file: {dataset_id!r}", param="file_id",
                                code="file_not_found")
        remove_files(record)
        logger.info("dataset %s deleted", dataset_id)
        return record

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, body: Any, job_id: str | None = None) -> Job:
        try:
            spec = parse_spec(body)
        except ValidationError as e:
            message, param = _validation_message(e)
            raise InvalidRequestError(message, param=param, code="invalid_job") from None
        if spec.model is not None and not spec.model.isprintable():  # a path: no NUL in it
            raise InvalidRequestError("model must not contain control characters",
                                      param="model", code="invalid_job")
        dataset = self.store.get_dataset(spec.dataset) if is_name(spec.dataset) else None
        if dataset is None:
            raise InvalidRequestError(f"dataset {spec.dataset!r} does not exist",
                                      param="dataset", code="dataset_not_found")
        if dataset.format not in METHOD_FORMATS[spec.method]:
            allowed = ", ".join(METHOD_FORMATS[spec.method])
            raise InvalidRequestError(
                f"method {spec.method} needs a dataset in format {allowed}; "
                f"{spec.dataset} is {dataset.format}", param="dataset", code="wrong_format")
        self._check_deployable(spec)
        if spec.model is None:
            if self.base_model is None:
                raise InvalidRequestError("no base model is served; give 'model'", param="model")
            spec.model = self.base_model
        if isinstance(spec, AlignSpec):
            self._fill_engine(spec)
            self._check_answers_source(spec)
        elif (isinstance(spec, RDPOSpec | AfDSpec | LDAlignSpec) and spec.engine is None
              and self.engine_url and self.served_name and spec.model == self.base_model):
            # rDPO's self-critique, AfD's initial samples and LD-Align's first answers sample
            # this served base model: through the engine.
            spec.engine = EngineSpec(base_url=self.engine_url, model=self.served_name)
        job = self.store.create_job(spec.method, spec.model_dump(mode="json"), total_steps(spec),
                                    job_id=job_id)
        logger.info("job %s queued: %s on %s", job.id, spec.method, spec.dataset)
        return job

    def _check_deployable(self, spec: AnySpec) -> None:
        """A LoRA job that goes live as an adapter must fit the engine's LoRA slots. Refuse it
        now rather than after training, when the deploy would be refused for the same reason."""
        deploy = spec.deploy
        if deploy is None or self.max_lora_rank is None or spec.finetuning != "lora":
            return
        if (deploy.mode or "adapter") == "adapter" and spec.lora.r > self.max_lora_rank:
            raise InvalidRequestError(
                f"lora.r {spec.lora.r} exceeds the serving engine's max_lora_rank "
                f"{self.max_lora_rank}, so the adapter could not go live; lower lora.r, deploy "
                f"with mode 'full', or serve with ALIGNSERVE_MAX_LORA_RANK={spec.lora.r}",
                param="lora.r", code="invalid_job")

    def _check_answers_source(self, spec: AlignSpec) -> None:
        if spec.answers_from is None:
            return
        source = self.store.get_job(spec.answers_from)
        if source is None or source.method != "align":
            raise InvalidRequestError(f"answers_from: {spec.answers_from!r} is not an align job",
                                      param="answers_from", code="invalid_job")
        # Answers are matched by prompt alone: they must come from the same synthesis.
        mine = spec.model_dump(mode="json")
        keys = ("model", "principle", "preset", "alpha", "synthesis.max_tokens",
                "synthesis.temperature")

        def get(config: dict[str, Any], key: str) -> Any:
            head, _, rest = key.partition(".")
            value = (config or {}).get(head)
            return get(value, rest) if rest and isinstance(value, dict) else value

        differ = [k for k in keys if get(source.config, k) != get(mine, k)]
        if differ:
            raise InvalidRequestError(
                f"answers_from: job {spec.answers_from} synthesised with other settings "
                f"({', '.join(f'{k}={get(source.config, k)!r}' for k in differ)}); its answers "
                "would not be this job's", param="answers_from", code="invalid_job")

    def _fill_engine(self, spec: AlignSpec) -> None:
        """An ``align`` job generates through this server's engine unless it names another."""
        spec.engine.base_url = spec.engine.base_url or self.engine_url
        spec.engine.model = spec.engine.model or self.served_name
        if not spec.engine.base_url or not spec.engine.model:
            raise InvalidRequestError(
                "align generates its data through a serving engine and this server does not "
                "know its own URL; give engine.base_url and engine.model",
                param="engine", code="invalid_job")

    def get_job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id) if is_name(job_id) else None
        if job is None:
            raise NotFoundError(f"job {job_id!r} does not exist", param="job_id",
                                code="job_not_found")
        return job

    def jobs(self, limit: int = 100) -> list[Job]:
        return self.store.list_jobs(limit=check_limit(limit))

    def job_view(self, job: Job) -> dict[str, Any]:
        view = job.public()
        view["metrics"] = self.store.metrics(job.id)[-1:] or None
        return view

    def cancel(self, job_id: str) -> Job:
        job = self.get_job(job_id)
        if job.status in TERMINAL:
            return job
        updated = self.store.request_cancel(job_id)
        assert updated is not None
        return updated

    def pause(self, job_id: str) -> Job:
        """A queued job pauses at once, a running one at its next step (after a resume point)."""
        job = self.get_job(job_id)
        if job.status not in ("queued", "running", "paused"):
            raise ConflictError(f"job {job_id} is {job.status}; only a queued or running job "
                                "can be paused", param="job_id", code="invalid_job_state")
        if job.status == "running" and job.cancel_requested:
            raise ConflictError(f"job {job_id} is being cancelled", param="job_id",
                                code="invalid_job_state")
        updated = self.store.request_pause(job_id)
        assert updated is not None
        return updated

    def resume(self, job_id: str) -> Job:
        """A paused job is queued again and continues from its last resume point."""
        job = self.get_job(job_id)
        if job.status != "paused" and not (job.status == "running" and job.pause_requested):
            raise ConflictError(f"job {job_id} is {job.status}, not paused", param="job_id",
                                code="invalid_job_state")
        updated = self.store.resume(job_id)
        assert updated is not None
        return updated

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        return self.store.events(job_id, after)

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        self.get_job(job_id)
        return self.store.metrics(job_id)

    # -- checkpoints ----------------------------------------------------------------------------
    def gate_result(self, job_id: str) -> dict[str, Any] | None:
        """The newest evaluation-gate outcome on the job's checkpoint (``server.eval_gate``);
        None when its deployment had no gate (or it has not run yet)."""
        for event in reversed(self.store.events(job_id)):
            data = event.data or {}
            if data.get("stage") == "gate" and data.get("status") in ("passed", "refused"):
                return dict(data)
        return None

    def checkpoint_views(self, limit: int | None = None) -> list[dict[str, Any]]:
        return [{**checkpoint_view(c), "gate": self.gate_result(c.job_id)}
                for c in self.checkpoints(limit)]

    def checkpoints(self, limit: int | None = None) -> list[CheckpointRecord]:
        """Newest first; all of them, or the newest ``limit``."""
        records = self.store.list_checkpoints()
        return records if limit is None else records[: check_limit(limit)]
