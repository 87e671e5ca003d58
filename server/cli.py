"""The ``alignserve`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from server.settings import Settings

logger = logging.getLogger("alignserve")


def _progress(line: str) -> None:
    """User-facing progress output of the CLI (stderr, so stdout stays machine-readable)."""
    sys.stderr.write(line.rstrip("\n") + "\n")
    sys.stderr.flush()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.api.app import create_app
    from server.auth import KeyRing, Scope
    from server.engine.vllm_args import EngineConfig
    from server.engine.vllm_engine import VLLMEngine
    from server.model_store import resolve_model

    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("model", args.model))
        if v is not None
    }
    settings = Settings(**overrides)
    keyring = KeyRing.from_settings(settings.api_keys, settings.admin_keys, settings.keys_file)
    if keyring.open_access:
        if not settings.is_loopback:
            logger.error(
                "refusing to bind %s without API keys: set ALIGNSERVE_API_KEYS and "
                "ALIGNSERVE_ADMIN_KEYS, or bind 127.0.0.1",
                settings.host,
            )
            return 2
        logger.warning("no API keys configured: DEVELOPMENT MODE, open access on %s", settings.host)
    if settings.tool_parser is not None:  # a typo fails the start, not every request
        from server.engine.tool_parsing import check_tool_parser

        check_tool_parser(settings.tool_parser)
    resolved = resolve_model(settings.model, settings.home, progress=_progress)
    engine = VLLMEngine(
        EngineConfig(
            model_path=resolved.path,
            served_name=resolved.served_name,
            max_model_len=settings.max_model_len,
            kv_cache_gib=settings.kv_cache_gib,
            max_num_seqs=settings.max_num_seqs,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enable_lora=settings.enable_lora,
            max_loras=settings.max_loras,
            max_lora_rank=settings.max_lora_rank,
            max_logprobs=settings.max_logprobs,
            dtype=settings.dtype,
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            distributed_executor_backend=settings.distributed_executor_backend,
            enable_chunked_prefill=settings.enable_chunked_prefill,
            async_scheduling=settings.async_scheduling,
            enforce_eager=settings.enforce_eager,
        ),
        stall_s=settings.engine_stall_s,
        swap_drain_timeout_s=settings.swap_drain_timeout_s,
        adapter_max_drop=settings.adapter_max_drop,
    )
    from contracts.store import open_store
    from server.training import TrainingService
    from server.workers import WorkerPool

    store = open_store(settings.store_url or settings.home / "jobs.db")
    training = TrainingService(
        store, settings.home, base_model=str(resolved.path), import_dir=settings.import_dir,
        served_name=resolved.served_name,
        fine_tuning_scope=Scope[settings.fine_tuning_scope.upper()],
        engine_url=settings.engine_url or settings.own_url,
        max_lora_rank=settings.max_lora_rank if settings.enable_lora else None,
    )
    _share_engine_key(settings)
    pool = WorkerPool(settings.workers, settings.home, str(resolved.path))
    app = create_app(
        engine, keyring, presets_file=settings.presets_file, home=settings.home, training=training,
        store=store, replica_id=settings.effective_replica_id,
        reconcile_interval_s=settings.reconcile_interval_s, workers=pool,
        tool_parser=settings.tool_parser,
        public_docs=settings.public_docs,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                       timeout_graceful_shutdown=settings.graceful_shutdown_s)
    )
    startup = app.state.startup
    # The engine starts after the port opens; if it fails, stop serving and exit non-zero.
    startup.on_failure = lambda: setattr(server, "should_exit", True)
    try:
        server.run()
    finally:  # an exit that skipped the app's shutdown (a port that could not be bound)
        pool.stop()
    if startup.error is not None:
        logger.error("exiting: %s", startup.error)
        return 1
    return 0 if server.started else 1


def _share_engine_key(settings: Settings) -> None:
    """Workers this server starts generate ``align`` data through its API with this key (a
    user key first: generation needs no more). Workers elsewhere set ALIGNSERVE_ENGINE_KEY."""
    from server.auth import configured_keys

    users, admins = configured_keys(settings.api_keys, settings.admin_keys, settings.keys_file)
    keys = users or admins
    if keys:
        os.environ.setdefault("ALIGNSERVE_ENGINE_KEY", keys[0])


def _worker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from server.model_store import DEFAULT_MODEL_NAME, resolve_model
    from trainers.worker import main as worker_main

    overrides = {"home": args.home, "store_url": args.store_url}
    settings = Settings(**{k: v for k, v in overrides.items() if v})
    model = args.model or settings.model
    default_pulled = (settings.home / "models" / DEFAULT_MODEL_NAME / "config.json").is_file()
    default_model = None
    if model or default_pulled:  # never pull here: a job may name its own model folder
        default_model = str(resolve_model(model, settings.home, progress=_progress).path)
    return worker_main(
        Path(settings.home),
        default_model,
        once=args.once,
        lease_s=args.lease,
        poll_s=args.poll,
        max_attempts=args.max_attempts,
        store_url=settings.store_url,
    )


def _model_pull(args: argparse.Namespace) -> int:
    from server.model_store import resolve_model

    settings = Settings()
    resolved = resolve_model(args.model, settings.home, progress=_progress)
    _progress(f"{resolved.served_name}: {resolved.path}")
    return 0


def _data_pull(args: argparse.Namespace) -> int:
    from server.data_pull import pull_datasets

    settings = Settings()
    paths = pull_datasets(settings.home, names=args.names or None, progress=_progress)
    for path in paths.values():  # stdout: the files, for scripts (PAIRS=$(... data pull x))
        sys.stdout.write(f"{path}\n")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from server.evaluation.commands import run_eval_command

    return run_eval_command(args, Settings().home, _progress)


def _align(args: argparse.Namespace) -> int:
    from server.align_command import run_align_command

    return run_align_command(args, _progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignserve", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Serve the OpenAI-compatible API.")
    serve.add_argument("--host", default=None, help="Bind address (default 127.0.0.1).")
    serve.add_argument("--port", type=int, default=None, help="Port (default 8000).")
    serve.add_argument("--model", default=None, help="Served model: name or local HF folder.")
    serve.set_defaults(func=_serve)

    worker = sub.add_parser("worker", help="Run a training worker (claims queued jobs).")
    worker.add_argument("--home", default=None, help="ALIGNSERVE_HOME (jobs.db lives there).")
    worker.add_argument("--store-url", default=None,
                        help="ALIGNSERVE_STORE_URL: postgresql://... shared job store.")
    worker.add_argument("--model", default=None, help="Default base model for jobs.")
    worker.add_argument("--once", action="store_true", help="Exit when the queue is empty.")
    worker.add_argument("--lease", type=float, default=30.0, help="Lease seconds.")
    worker.add_argument("--poll", type=float, default=1.0, help="Queue poll seconds.")
    worker.add_argument("--max-attempts", type=int, default=3)
    worker.set_defaults(func=_worker)

    model = sub.add_parser("model", help="Manage models.").add_subparsers(
        dest="action", required=True
    )
    pull = model.add_parser("pull", help="Fetch and convert a model (default: the embedded one).")
    pull.add_argument("model", nargs="?", default=None)
    pull.set_defaults(func=_model_pull)

    data = sub.add_parser("data", help="Manage datasets.").add_subparsers(
        dest="action", required=True
    )
    dpull = data.add_parser("pull", help="Fetch the development datasets (ASSETS).")
    dpull.add_argument("names", nargs="*")
    dpull.set_defaults(func=_data_pull)

    from server.evaluation.commands import add_eval_arguments

    evaluate = sub.add_parser("eval", help="Evaluate a served model over HTTP (see docs).")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=_eval)

    from server.align_command import add_align_arguments

    align = sub.add_parser("align", help="Principle in, aligned adapter live (docs/alignment.md).")
    add_align_arguments(align)
    align.set_defaults(func=_align)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
