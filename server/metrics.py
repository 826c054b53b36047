"""Every Prometheus metric whisperd exports, defined in one place, and the hooks that
update them where events happen.

Names follow Prometheus' conventions (base units, `_total` counters, `_seconds` and
`_bytes` suffixes) and the habits of vLLM, TGI and Triton: a queue-time and an end-to-end
histogram per request, work counters whose rate ratio is the throughput. Labels are
bounded on purpose: outcomes, states, results and GPU indexes, never job ids or URLs.

Counters and histograms move when something happens (a job ends, a model loads, a
webhook is answered). Gauges that mirror state (queue depth, running jobs, model state,
VRAM) are read when Prometheus scrapes, from the objects that own that state, so they can
never drift from it. The metrics live in prometheus-client's default registry, beside its
process_* and python_* collectors.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from whisperd.server.engine import gpu_info
from whisperd.server.engine.lifecycle import ModelState, Transition
from whisperd.server.jobs.model import JobRecord, JobStatus

log = logging.getLogger("whisperd.jobs")

OUTCOMES = ("done", "failed", "cancelled")

# No *_created series: they double the exposition and no dashboard here reads them.
disable_created_metrics()

# From 0.1 s (a queue that never waits) to an hour (a long file on a busy server).
_JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# A model load with warm-up: tiny.en on a CPU takes ~0.3 s, large-v3 from a cold disk ~1 min.
_LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

JOBS_SUBMITTED = Counter("whisperd_jobs_submitted", "Jobs accepted by Submit.")
JOBS = Counter("whisperd_jobs", "Jobs that reached a final state, by outcome.", ["outcome"])
JOB_QUEUE_SECONDS = Histogram(
    "whisperd_job_queue_seconds",
    "Time from Submit to a worker first starting the job.",
    buckets=_JOB_BUCKETS,
)
JOB_DURATION_SECONDS = Histogram(
    "whisperd_job_duration_seconds",
    "End-to-end time of a job, from Submit to its final state (what a client waits), by outcome.",
    ["outcome"],
    buckets=_JOB_BUCKETS,
)
AUDIO_SECONDS = Counter("whisperd_audio_seconds", "Seconds of audio in jobs that completed (done).")
INFERENCE_SECONDS = Counter(
    "whisperd_inference_seconds",
    "Seconds workers spent on jobs that completed (done): audio decoding and inference, "
    "from the worker's start to the end. Its rate over whisperd_audio_seconds_total's rate "
    "is the real-time factor.",
)
MODEL_LOADS = Counter(
    "whisperd_model_loads",
    "Model load attempts, by result: ready, out_of_memory (waits for VRAM, retried), "
    "failed (a bad file: not retried), abandoned (an unload stopped it).",
    ["result"],
)
MODEL_LOAD_SECONDS = Histogram(
    "whisperd_model_load_seconds",
    "Time of a successful load attempt, warm-up included.",
    buckets=_LOAD_BUCKETS,
)
OOM_RETRIES = Counter(
    "whisperd_oom_retries",
    "Out-of-GPU-memory events that whisperd retried: phase=load (waits for VRAM, then loads "
    "again) or phase=job (the job goes back to the queue and the model reloads).",
    ["phase"],
)
UPLOAD_BYTES = Counter("whisperd_upload_bytes", "Audio bytes received by Submit.")
WEBHOOK_DELIVERIES = Counter(
    "whisperd_webhook_deliveries",
    "Webhook delivery attempts, by result: delivered, retrying (this attempt failed, "
    "another follows), dropped (failed for good or refused).",
    ["result"],
)
BATCH_SIZE = Histogram(
    "whisperd_batch_size",
    "Windows decoded together in one batched decoder step.",
    buckets=_BATCH_BUCKETS,
)

for _outcome in OUTCOMES:  # every series exists from the start: rate() needs a zero
    JOBS.labels(_outcome)
    JOB_DURATION_SECONDS.labels(_outcome)
for _result in ("ready", "out_of_memory", "failed", "abandoned"):
    MODEL_LOADS.labels(_result)
for _phase in ("load", "job"):
    OOM_RETRIES.labels(_phase)
for _result in ("delivered", "retrying", "dropped"):
    WEBHOOK_DELIVERIES.labels(_result)


# ---------------------------------------------------------------------- hooks


def observe_batch(size: int) -> None:
    """The batch scheduler calls this once per decoder step with the number of windows
    in that step."""
    if size > 0:
        BATCH_SIZE.observe(size)


def upload_received(size: int) -> None:
    UPLOAD_BYTES.inc(size)


def job_submitted() -> None:
    JOBS_SUBMITTED.inc()


def job_started(job: JobRecord) -> None:
    """A worker claimed the job. Only its first start counts: the store keeps the latest
    start alone, so the wait of a job back from the queue (unload, shutdown) cannot be
    told apart from its earlier run."""
    if job.started_at is not None and job.attempts <= 1:
        JOB_QUEUE_SECONDS.observe(max(0.0, job.started_at - job.created_at))


class _Seen:
    """Job ids whose end was counted: a job that a client cancels while its worker is
    finishing is reported ended by both, and must count once. Bounded: an id older than
    the last few thousand endings cannot be reported again."""

    def __init__(self, size: int = 4096) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first(self, job_id: str) -> bool:
        with self._lock:
            if job_id in self._ids:
                return False
            self._ids[job_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


_seen = _Seen()


def job_finished(job: JobRecord) -> None:
    """A job reached done, failed or cancelled (from any thread). Counts it once and
    writes the one summary line per job that JSON logs carry its durations in."""
    if not job.status.terminal or not _seen.first(job.id):
        return
    outcome = job.status.value
    JOBS.labels(outcome).inc()
    end = job.completed_at
    total = max(0.0, end - job.created_at) if end is not None else None
    ran = max(0.0, end - job.started_at) if end is not None and job.started_at is not None else None
    if total is not None:
        JOB_DURATION_SECONDS.labels(outcome).observe(total)
    if job.status is JobStatus.DONE:
        AUDIO_SECONDS.inc(max(0.0, job.duration_secs))
        if ran is not None:
            INFERENCE_SECONDS.inc(ran)
    fields = {
        "event": "job.finished",
        "job_id": job.id,
        "outcome": outcome,
        "audio_secs": round(job.duration_secs, 3),
        "total_secs": None if total is None else round(total, 3),
        "run_secs": None if ran is None else round(ran, 3),
        "queue_secs": (
            round(max(0.0, job.started_at - job.created_at), 3)
            if job.started_at is not None and job.attempts <= 1 else None
        ),
        "attempts": job.attempts,
    }
    log.info(
        "job %s: finished %s (%s in all, %s running, %.1f s of audio)",
        job.id, outcome, _secs(total), _secs(ran), job.duration_secs, extra=fields,
    )


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


class ModelMetrics:
    """A ModelHost listener: counts load attempts and their results, load time and
    out-of-memory retries from the lifecycle's transitions."""

    def __init__(self) -> None:
        self._attempt_started: float | None = None

    def __call__(self, t: Transition) -> None:
        if t.state == ModelState.LOADING:
            self._attempt_started = t.at
            if t.reason.startswith("reload after running out of memory"):
                OOM_RETRIES.labels("job").inc()
            return
        if t.previous != ModelState.LOADING:
            return
        if t.state == ModelState.READY:
            MODEL_LOADS.labels("ready").inc()
            if self._attempt_started is not None:
                MODEL_LOAD_SECONDS.observe(max(0.0, t.at - self._attempt_started))
        elif t.state == ModelState.WAITING_FOR_GPU:
            MODEL_LOADS.labels("out_of_memory").inc()
            OOM_RETRIES.labels("load").inc()
        elif t.state == ModelState.UNLOADED:
            MODEL_LOADS.labels("failed" if t.reason.startswith("load failed") else "abandoned").inc()
        self._attempt_started = None


def webhook_attempt(result: str) -> None:
    """delivered, retrying or dropped."""
    WEBHOOK_DELIVERIES.labels(result).inc()


# ---------------------------------------------------------------------- scrape-time state


@dataclass
class Sources:
    """Where the state gauges are read from at scrape time."""

    queued: Callable[[], int]
    running: Callable[[], int]
    model_state: Callable[[], ModelState]
    model: str
    device: str  # "gpu" or "cpu"


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.sources: Sources | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, so that registering does not call collect() before sources exist.
        yield GaugeMetricFamily("whisperd_jobs_queued", "")
        yield GaugeMetricFamily("whisperd_jobs_running", "")
        yield GaugeMetricFamily("whisperd_model_state", "", labels=["state"])
        yield GaugeMetricFamily("whisperd_model_info", "", labels=["model", "device"])
        yield GaugeMetricFamily("whisperd_gpu_memory_used_bytes", "", labels=["gpu"])
        yield GaugeMetricFamily("whisperd_gpu_memory_total_bytes", "", labels=["gpu"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        src = self.sources
        if src is not None:
            yield GaugeMetricFamily(
                "whisperd_jobs_queued", "Jobs waiting in the queue (the whole store's queue).",
                value=_safe(src.queued),
            )
            yield GaugeMetricFamily(
                "whisperd_jobs_running", "Jobs this server is running now.", value=_safe(src.running)
            )
            state = GaugeMetricFamily(
                "whisperd_model_state", "The model's lifecycle state: 1 for the current one, 0 for the others.",
                labels=["state"],
            )
            current = src.model_state()
            for s in ModelState:
                state.add_metric([s.value], 1.0 if s == current else 0.0)
            yield state
            info = GaugeMetricFamily(
                "whisperd_model_info", "The model file this server serves and where it runs (always 1).",
                labels=["model", "device"],
            )
            info.add_metric([src.model, src.device], 1.0)
            yield info
        used = GaugeMetricFamily(
            "whisperd_gpu_memory_used_bytes", "GPU memory in use (all processes), from NVML.", labels=["gpu"]
        )
        total = GaugeMetricFamily(
            "whisperd_gpu_memory_total_bytes", "GPU memory in all, from NVML.", labels=["gpu"]
        )
        for g in gpu_info.gpus():  # empty where NVML is absent (CPU hosts): no series
            used.add_metric([str(g.index)], float(g.used))
            total.add_metric([str(g.index)], float(g.total))
        yield used
        yield total


def _safe(read: Callable[[], int]) -> float:
    # A scrape must not fail because the store is busy or closing: report NaN instead.
    try:
        return float(read())
    except Exception as exc:
        log.debug("metrics: reading a gauge failed: %s", exc)
        return float("nan")


_state = _StateCollector()
REGISTRY.register(_state)


def bind(sources: Sources) -> None:
    """Point the state gauges at this server's store, workers and model host."""
    _state.sources = sources


def serve(host: str, port: int) -> WSGIServer:
    """Serve /metrics over plain HTTP on its own port (as vLLM, TGI and Triton do) in a
    daemon thread. Raises OSError when the port cannot be bound."""
    server, _thread = start_http_server(port, addr=host)
    return server
