"""Service settings: one place, read from the environment (prefix ``ALIGNSERVE_``)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(platformdirs.user_cache_dir("alignserve"))


class Settings(BaseSettings):
    """Everything the service needs to start; built once in ``main()`` and passed down."""

    model_config = SettingsConfigDict(env_prefix="ALIGNSERVE_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home, description="Models, data, jobs, checkpoints."
    )
    store_url: str | None = Field(
        default=None,
        description="Job store: a postgresql:// URL shared by servers and workers on many hosts,"
        " or sqlite:///path; unset = SQLite at <home>/jobs.db.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = Field(default=None, description="Served model: name or local HF folder.")
    api_keys: str = Field(default="", description="Comma-separated user-scope API keys.")
    admin_keys: str = Field(default="", description="Comma-separated admin-scope API keys.")
    keys_file: Path | None = Field(
        default=None, description="File with one 'user:KEY' or 'admin:KEY' per line."
    )
    # Engine knobs. KV cache size is in GiB on CPU (VLLM_CPU_KVCACHE_SPACE).
    kv_cache_gib: float = 2.0
    max_model_len: int = 2048
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.85
    enable_lora: bool = True
    max_loras: int = 4
    max_lora_rank: int = 16
    max_logprobs: int = 20
    # Scale and GPU settings (docs/gpu.md). Defaults suit one device.
    dtype: str = Field(default="auto", description="'auto': float32 on CPU, the model's on GPU.")
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per model replica.")
    pipeline_parallel_size: int = Field(default=1, ge=1, description="Pipeline stages.")
    distributed_executor_backend: Literal["auto", "uni", "mp", "ray"] = Field(
        default="auto",
        description="vLLM's executor: 'uni' (one device), 'mp' (GPUs of one node), 'ray' "
        "(several nodes); 'auto' picks uni for one device, else vLLM's choice.",
    )
    enable_chunked_prefill: bool | None = Field(
        default=None,
        description="None: off on CPU (measured faster to first token), vLLM's default (on) on "
        "GPU. Guidance groups work either way.",
    )
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    async_scheduling: bool = Field(
        default=False, description="vLLM's async scheduling; alignment requests are refused."
    )
    enforce_eager: bool | None = Field(
        default=None, description="None: eager on CPU, CUDA graphs / compilation on GPU."
    )
    presets_file: str | None = Field(
        default=None, description="JSON object of extra principle presets: name -> text."
    )
    workers: int = Field(default=0, description="Training workers started next to the server.")
    engine_url: str | None = Field(
        default=None,
        description="Where workers reach this server's API to generate align data (default: "
        "its own bind address; set it when workers run on other hosts).",
    )
    fine_tuning_scope: Literal["user", "admin"] = Field(
        default="user",
        description="Keys that may use /v1/files and /v1/fine_tuning: 'user' (any key, as with "
        "OpenAI) or 'admin' (admin keys only).",
    )
    replica_id: str | None = Field(
        default=None,
        description="This server's name in the deployment status reports; unset = host:port.",
    )
    reconcile_interval_s: float = Field(
        default=1.0, gt=0, description="How often the deployment revision in the store is polled."
    )
    public_docs: bool = Field(
        default=False,
        description="Serve /openapi.json, /docs and /redoc without a key (default: admin key).",
    )
    import_dir: Path | None = Field(
        default=None,
        description="The only folder the admin {'path': ...} dataset import reads from; "
        "unset = <home>/imports.",
    )
    tool_parser: str | None = Field(
        default=None,
        description="vLLM tool parser for tool_choice 'auto' (e.g. 'hermes'), matching how the "
        "served model family writes tool calls; unset = 'auto' is refused (docs/openai.md).",
    )
    # Reliability limits (docs/operations.md).
    engine_stall_s: float = Field(
        default=60.0, gt=0,
        description="/health reports the engine stalled after this long without output while "
        "requests are pending.",
    )
    swap_drain_timeout_s: float = Field(
        default=120.0, gt=0,
        description="A full-weight swap waits this long for requests in flight, then is "
        "abandoned (the previous weights keep serving).",
    )
    adapter_max_drop: float = Field(
        default=6.0, gt=0,
        description="Adapter gate: the most an adapter may lower the log-probability of the "
        "base's answer to the gate prompt, in nats per token.",
    )
    log_level: str = "info"
    graceful_shutdown_s: int = Field(
        default=30, ge=1,
        description="On SIGTERM, how long open requests may finish before they are cut. "
        "Unbounded waiting would hang: the training workers stop only after the requests "
        "end, and an align job's requests come from a worker.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def effective_replica_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}:{self.port}"

    @property
    def own_url(self) -> str:
        """This server's base URL as seen from its own host (workers it starts)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
