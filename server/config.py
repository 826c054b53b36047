"""Server settings: one object, read from the environment at start, flags override.

Names follow the earlier service (FEATURES.md A11) so its deployments keep working.
A bad value stops the start with one line that names the variable and what it wants.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from whisperd import cuda_env


class ConfigError(ValueError):
    """A setting has a value the server cannot use; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 50051  # PORT
    log_level: str = "INFO"  # LOG_LEVEL: DEBUG (adds whisper.cpp's own lines), INFO, WARNING, ERROR
    log_format: str = "text"  # LOG_FORMAT: text (readable lines) or json (one object per line)
    metrics_port: int = 9464  # METRICS_PORT: Prometheus /metrics over HTTP; 0 = off
    data_dir: Path = Path("data")  # DATA_DIR: SQLite store and spooled uploads
    whisper_model: str = "tiny.en"  # WHISPER_MODEL: a name in the models folder
    whisper_model_path: Path | None = None  # WHISPER_MODEL_PATH: overrides WHISPER_MODEL
    idle_timeout_secs: int = 300  # IDLE_TIMEOUT_SECS; 0 = never unload
    gpu_poll_interval_secs: int = 30  # GPU_POLL_INTERVAL_SECS
    # PARALLEL_JOBS: jobs admitted at once (taken from the queue); their windows share the
    # decoder's batch, refilled round-robin, so a short job never waits behind a long one.
    # 0 = automatic: 64 on a GPU (a batch of up to 128 windows fills with jobs of a minute
    # or more; 16 left 32 two-minute jobs at 96 windows), 2 on a CPU. A job over the limit
    # waits in the queue. See docs/batching.md.
    parallel_jobs: int = 0
    # BATCH_SIZE: 30 s windows decoded at once, of any jobs. 0 = automatic: what fits in
    # the free VRAM after the model loads (the batched decoder works it out), 4 on a CPU.
    batch_size: int = 0
    # BATCH_MAX_BEAMS: beams a window's slot has room for (KV cells); a job asking for
    # more is decoded with this many. 1 = greedy-only slots, a third of the memory each
    # (large-v3 on an 8 GB card: ~11 windows instead of ~6). 1-16.
    batch_max_beams: int = 5
    # WHISPERD_CUDA_ENCODER: the batched engine's encoder layers as whisperd's own CUDA code
    # ("1", any GPU), as a ggml graph ("0"), or "auto": the CUDA code where f32
    # accumulation runs at full rate (A100, H100/H200, B200) with an f16 model.
    cuda_encoder: str = "auto"
    max_upload_bytes: int = 0  # MAX_UPLOAD_BYTES; 0 = unlimited
    # MAX_AUDIO_SECS: longest audio accepted, measured from the stream (not its header);
    # bounds the memory a job's decoded samples take (4 h = 920 MB). 0 = unlimited.
    max_audio_secs: int = 4 * 3600
    job_retention_secs: int = 7 * 24 * 3600  # JOB_RETENTION_SECS
    use_gpu: bool = True  # USE_GPU; ignored on a CPU build
    # THREADS: CPU threads of the window decoder (0 = every CPU) and of each sequential-mode
    # job (0 = every CPU / PARALLEL_JOBS).
    threads: int = 0
    shutdown_grace_secs: int = 30  # SHUTDOWN_GRACE_SECS: how long SIGTERM lets jobs finish
    max_attempts: int = 3  # a job interrupted this many times fails
    # ADMISSION: "queue" accepts jobs while the model loads; "strict" answers UNAVAILABLE
    # with RetryInfo until it is ready, as the earlier service did (503 + Retry-After).
    admission: str = "queue"
    retry_after_secs: int = 5  # RETRY_AFTER_SECS: the hint sent with UNAVAILABLE
    webhook_secret: str = ""  # WEBHOOK_SECRET: signs deliveries (HMAC-SHA256); never logged
    webhook_allow_private: bool = False  # WEBHOOK_ALLOW_PRIVATE: allow loopback/private targets
    auth_token: str = ""  # AUTH_TOKEN: every RPC but health needs "Bearer <token>"; never logged
    tls_cert: Path | None = None  # TLS_CERT: PEM certificate chain; with TLS_KEY, serve TLS
    tls_key: Path | None = None  # TLS_KEY: PEM private key
    # BATCH_DECODING: deprecated and ignored (a warning at start): every job's windows are
    # decoded in one batch now (BATCH_SIZE). Still accepted so old deployments start.
    batch_decoding: bool = False
    # WHISPERD_FAULT_OOM_LOADS, tests only: the next N loads fail as out of GPU memory.
    fault_oom_loads: int = 0
    # WHISPERD_BENCH_TOKENS_PER_WINDOW, benchmarks only: every job decodes exactly this many
    # tokens per 30 s window (models with random weights); 0 = normal decoding.
    bench_tokens_per_window: int = 0
    # DATABASE_URL: unset = SQLite in DATA_DIR; postgresql://user:pass@host/db = a job store
    # that several replicas share (never logged with its password).
    database_url: str = ""
    # BLOB_URL: unset = uploads in DATA_DIR/uploads; s3://bucket/prefix = an S3-compatible
    # object store (S3_ENDPOINT_URL and the AWS_* credential variables say where and who).
    blob_url: str = ""
    s3_endpoint_url: str = ""  # S3_ENDPOINT_URL: e.g. http://objects:7070; empty = AWS
    # LEASE_SECS: a replica holds each running job for this long and renews it every third
    # of it; a job whose lease runs out (its host died) goes back to the queue.
    lease_secs: int = 30
    host_id: str = ""  # HOST_ID: this replica's name in the fleet; empty = hostname-pid
    # GPU_DEVICES: the GPUs to use, "all" (default) or indices like 0,2; each gets its own
    # model instance and PARALLEL_JOBS workers, all taking jobs from the one queue.
    gpu_devices: str = "all"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "whisperd.db"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def with_device(self, gpu: bool) -> Settings:
        """Automatic values settled once it is known whether the model runs on a GPU."""
        if self.parallel_jobs:
            return self
        return replace(self, parallel_jobs=64 if gpu else 2)

    @property
    def threads_per_job(self) -> int:
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.parallel_jobs))

    def with_overrides(self, **values: Any) -> Settings:
        """Flags win over the environment; None means "flag not given"."""
        given = {k: v for k, v in values.items() if v is not None}
        return validate(replace(self, **given))


_ENV: dict[str, str] = {
    "port": "PORT",
    "host": "HOST",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
    "metrics_port": "METRICS_PORT",
    "data_dir": "DATA_DIR",
    "whisper_model": "WHISPER_MODEL",
    "whisper_model_path": "WHISPER_MODEL_PATH",
    "idle_timeout_secs": "IDLE_TIMEOUT_SECS",
    "gpu_poll_interval_secs": "GPU_POLL_INTERVAL_SECS",
    "parallel_jobs": "PARALLEL_JOBS",
    "batch_size": "BATCH_SIZE",
    "batch_max_beams": "BATCH_MAX_BEAMS",
    "cuda_encoder": "WHISPERD_CUDA_ENCODER",
    "max_upload_bytes": "MAX_UPLOAD_BYTES",
    "max_audio_secs": "MAX_AUDIO_SECS",
    "job_retention_secs": "JOB_RETENTION_SECS",
    "use_gpu": "USE_GPU",
    "threads": "THREADS",
    "shutdown_grace_secs": "SHUTDOWN_GRACE_SECS",
    "admission": "ADMISSION",
    "retry_after_secs": "RETRY_AFTER_SECS",
    "webhook_secret": "WEBHOOK_SECRET",
    "webhook_allow_private": "WEBHOOK_ALLOW_PRIVATE",
    "auth_token": "AUTH_TOKEN",
    "tls_cert": "TLS_CERT",
    "tls_key": "TLS_KEY",
    "batch_decoding": "BATCH_DECODING",
    "fault_oom_loads": "WHISPERD_FAULT_OOM_LOADS",
    "bench_tokens_per_window": "WHISPERD_BENCH_TOKENS_PER_WINDOW",
    "database_url": "DATABASE_URL",
    "blob_url": "BLOB_URL",
    "s3_endpoint_url": "S3_ENDPOINT_URL",
    "lease_secs": "LEASE_SECS",
    "host_id": "HOST_ID",
    "gpu_devices": "GPU_DEVICES",
    "max_attempts": "MAX_ATTEMPTS",
}

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _parse(name: str, env_name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    text = raw.strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{env_name} must be a whole number, got {raw!r}") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{env_name} must be true or false, got {raw!r}")
    if kind == "Path":
        return Path(text)
    if kind == "Path | None":
        return Path(text) if text else None
    return text


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from environment variables (the names of FEATURES.md A11 and more)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, env_name in _ENV.items():
        if env.get(env_name, "") != "":
            values[name] = _parse(name, env_name, env[env_name])
    try:
        cuda_env.check_switches(env)  # read by the native library when a model loads
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return validate(Settings(**values))


def validate(s: Settings) -> Settings:
    """Raise ConfigError on the first unusable value; return the settings otherwise."""
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"PORT must be between 0 and 65535, got {s.port}")
    if s.log_level.upper() not in _LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(_LEVELS)}, got {s.log_level!r}")
    if s.log_format.lower() not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be 'text' or 'json', got {s.log_format!r}")
    if not 0 <= s.metrics_port <= 65535:
        raise ConfigError(f"METRICS_PORT must be 0 (off) or a port up to 65535, got {s.metrics_port}")
    if s.metrics_port and s.metrics_port == s.port:
        raise ConfigError(f"METRICS_PORT and PORT must differ, both are {s.port}")
    if s.idle_timeout_secs < 0:
        raise ConfigError(f"IDLE_TIMEOUT_SECS must be 0 (never) or more, got {s.idle_timeout_secs}")
    if s.gpu_poll_interval_secs < 1:
        raise ConfigError(f"GPU_POLL_INTERVAL_SECS must be at least 1, got {s.gpu_poll_interval_secs}")
    if not 0 <= s.parallel_jobs <= 64:
        raise ConfigError(f"PARALLEL_JOBS must be 0 (automatic) or between 1 and 64, got {s.parallel_jobs}")
    if s.max_upload_bytes < 0:
        raise ConfigError(f"MAX_UPLOAD_BYTES must be 0 (unlimited) or more, got {s.max_upload_bytes}")
    if s.max_audio_secs < 0:
        raise ConfigError(f"MAX_AUDIO_SECS must be 0 (unlimited) or more, got {s.max_audio_secs}")
    if s.job_retention_secs < 0:
        raise ConfigError(f"JOB_RETENTION_SECS must be 0 or more, got {s.job_retention_secs}")
    if not 0 <= s.batch_size <= 256:
        raise ConfigError(f"BATCH_SIZE must be 0 (automatic) or between 1 and 256, got {s.batch_size}")
    if not 1 <= s.batch_max_beams <= 16:
        raise ConfigError(f"BATCH_MAX_BEAMS must be between 1 and 16, got {s.batch_max_beams}")
    if s.threads < 0:
        raise ConfigError(f"THREADS must be 0 (automatic) or more, got {s.threads}")
    if s.cuda_encoder.strip().lower() not in ("auto", "0", "1"):
        raise ConfigError(f"WHISPERD_CUDA_ENCODER must be 0, 1 or auto, got {s.cuda_encoder!r}")
    if s.shutdown_grace_secs < 0:
        raise ConfigError(f"SHUTDOWN_GRACE_SECS must be 0 or more, got {s.shutdown_grace_secs}")
    if s.admission.lower() not in ("queue", "strict"):
        raise ConfigError(f"ADMISSION must be 'queue' or 'strict', got {s.admission!r}")
    if s.retry_after_secs < 1:
        raise ConfigError(f"RETRY_AFTER_SECS must be at least 1, got {s.retry_after_secs}")
    if s.bench_tokens_per_window and not 3 <= s.bench_tokens_per_window <= 200:
        raise ConfigError(
            "WHISPERD_BENCH_TOKENS_PER_WINDOW must be 0 (off) or between 3 and 200, got "
            f"{s.bench_tokens_per_window}"
        )
    if s.database_url and not s.database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "DATABASE_URL must be a postgresql://user:password@host:port/database URL "
            "(or unset for SQLite in DATA_DIR)"
        )
    if s.blob_url and not (s.blob_url.startswith("s3://") and s.blob_url[5:].split("/")[0]):
        raise ConfigError(
            f"BLOB_URL must be s3://bucket or s3://bucket/prefix (or unset for DATA_DIR/uploads), got {s.blob_url!r}"
        )
    if not 3 <= s.lease_secs <= 3600:
        raise ConfigError(f"LEASE_SECS must be between 3 and 3600, got {s.lease_secs}")
    if s.max_attempts < 1:
        raise ConfigError(f"MAX_ATTEMPTS must be at least 1, got {s.max_attempts}")
    devices = s.gpu_devices.strip().lower()
    if devices not in ("", "all") and not all(p.strip().isdigit() for p in devices.split(",")):
        raise ConfigError(f"GPU_DEVICES must be 'all' or GPU indices like 0,1, got {s.gpu_devices!r}")
    if (s.tls_cert is None) != (s.tls_key is None):
        raise ConfigError("TLS_CERT and TLS_KEY go together: set both to serve TLS, or neither")
    for name, value in (("TLS_CERT", s.tls_cert), ("TLS_KEY", s.tls_key)):
        if value is not None and not value.is_file():
            raise ConfigError(f"{name} points at {value}, which is not a file")
    if s.whisper_model_path is not None and not s.whisper_model_path.is_file():
        raise ConfigError(f"WHISPER_MODEL_PATH points at {s.whisper_model_path}, which is not a file")
    return replace(
        s, log_level=s.log_level.upper(), admission=s.admission.lower(), log_format=s.log_format.lower(),
        cuda_encoder=s.cuda_encoder.strip().lower(),
    )
