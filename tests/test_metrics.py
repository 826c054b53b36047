"""Prometheus metrics, end to end: a real server (tiny.en on real speech) and the real
gateway are scraped with prometheus-client's own parser before and after real jobs, and
each counter, histogram and gauge must have moved as the jobs say it should."""
from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_process import GatewayProcess
from server_process import ServerProcess, submit_requests, wait_for_status
from webhook_receiver import WebhookReceiver
from whisperd.audio import decode_audio, write_wav
from whisperd.v1 import transcription_pb2 as pb

TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}
Labels = frozenset[tuple[str, str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scrape:
    """One scrape of /metrics: every sample by name and labels."""

    def __init__(self, url: str) -> None:
        text = httpx.get(url, timeout=10).text
        self.samples: dict[tuple[str, Labels], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def metrics_server(tmp_path: Path, model: Path, **env: str) -> ServerProcess:
    port = free_port()
    server = ServerProcess(tmp_path / "data", model, env={"METRICS_PORT": str(port), "PARALLEL_JOBS": "1", **env})
    server.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    return server.start()


def scrape(server: ServerProcess) -> Scrape:
    return Scrape(server.metrics_url)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def long_wav(jfk_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """66 s of real speech: long enough to be caught running."""
    return write_wav(tmp_path_factory.mktemp("audio") / "jfk_x6.wav", np.tile(decode_audio(jfk_wav), 6))


def submit(server: ServerProcess, data: bytes, **options: object) -> pb.Job:
    return server.jobs.Submit(submit_requests(data, pb.JobOptions(**options)))


def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_done_job_moves_the_job_model_upload_and_webhook_metrics(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path
) -> None:
    receiver = WebhookReceiver(fail_first=1).start()  # one failed attempt, then delivered
    # The first load runs out of GPU memory (the test fault switch), waits 1 s, loads.
    server = metrics_server(
        tmp_path, tiny_en_model,
        WHISPERD_FAULT_OOM_LOADS="1", GPU_POLL_INTERVAL_SECS="1", WEBHOOK_ALLOW_PRIVATE="1",
    )
    try:
        before = scrape(server)
        assert before("whisperd_model_state", state="unloaded") == 1
        assert before("whisperd_model_state", state="ready") == 0
        assert before("whisperd_model_info", model=tiny_en_model.name, device="cpu") == 1
        assert before("whisperd_jobs_total", outcome="done") == 0
        data = jfk_wav.read_bytes()
        job = submit(server, data, beam_size=1, webhook_url=receiver.url())
        done = wait_for_status(server, job.id, TERMINAL)
        assert done.status == pb.JOB_STATUS_DONE, done.error
        # Two deliveries to the job's URL: model_ready (every job URL gets model events)
        # and job.done; the first attempt of one of them fails and is retried after 1 s.
        wait_until(lambda: scrape(server)("whisperd_webhook_deliveries_total", result="delivered") == 2)
        assert len(receiver.requests) == 3
        after = scrape(server)
    finally:
        server.stop()
        receiver.stop()

    def delta(name: str, **labels: str) -> float:
        return after(name, **labels) - before(name, **labels)

    assert delta("whisperd_jobs_submitted_total") == 1
    assert delta("whisperd_jobs_total", outcome="done") == 1
    assert delta("whisperd_jobs_total", outcome="failed") == 0
    assert delta("whisperd_jobs_total", outcome="cancelled") == 0
    assert delta("whisperd_upload_bytes_total") == len(data)
    assert delta("whisperd_audio_seconds_total") == pytest.approx(done.duration_secs, abs=0.01)
    total = done.completed_at.ToNanoseconds() / 1e9 - done.created_at.ToNanoseconds() / 1e9
    ran = done.completed_at.ToNanoseconds() / 1e9 - done.started_at.ToNanoseconds() / 1e9
    waited = done.started_at.ToNanoseconds() / 1e9 - done.created_at.ToNanoseconds() / 1e9
    assert delta("whisperd_inference_seconds_total") == pytest.approx(ran, abs=0.01)
    assert 0 < ran <= total
    # Histograms: one observation each, in the right buckets.
    assert delta("whisperd_job_duration_seconds_count", outcome="done") == 1
    assert delta("whisperd_job_duration_seconds_sum", outcome="done") == pytest.approx(total, abs=0.01)
    assert delta("whisperd_job_duration_seconds_count", outcome="cancelled") == 0
    assert delta("whisperd_job_queue_seconds_count") == 1
    assert delta("whisperd_job_queue_seconds_sum") == pytest.approx(waited, abs=0.01)
    assert delta("whisperd_job_duration_seconds_bucket", outcome="done", le="3600.0") == 1
    assert delta("whisperd_job_duration_seconds_bucket", outcome="done", le="0.1") == (1 if total <= 0.1 else 0)
    # The model: one out-of-memory attempt (retried), then one load that succeeded.
    assert after("whisperd_model_state", state="ready") == 1
    assert after("whisperd_model_state", state="unloaded") == 0
    assert delta("whisperd_model_loads_total", result="out_of_memory") == 1
    assert delta("whisperd_oom_retries_total", phase="load") == 1
    assert delta("whisperd_model_loads_total", result="ready") == 1
    assert delta("whisperd_model_load_seconds_count") == 1
    assert 0 < delta("whisperd_model_load_seconds_sum") < waited
    # The webhooks: the first attempt got HTTP 500, its retry and the other were delivered.
    assert delta("whisperd_webhook_deliveries_total", result="retrying") == 1
    assert delta("whisperd_webhook_deliveries_total", result="delivered") == 2
    assert delta("whisperd_webhook_deliveries_total", result="dropped") == 0
    # Nothing waits or runs any more; no NVML on this host, so no GPU series.
    assert after("whisperd_jobs_queued") == 0 and after("whisperd_jobs_running") == 0
    assert not any(name.startswith("whisperd_gpu_memory") for name in after.names())
    assert after.types["whisperd_job_duration_seconds"] == "histogram"
    assert after.types["whisperd_jobs"] == "counter"


def test_cancelled_jobs_count_once_and_the_gauges_show_queue_and_running(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path, long_wav: Path
) -> None:
    server = metrics_server(tmp_path, tiny_en_model)
    try:
        before = scrape(server)
        running = submit(server, long_wav.read_bytes(), beam_size=1)
        queued = submit(server, jfk_wav.read_bytes(), beam_size=1)
        wait_until(lambda: scrape(server)("whisperd_jobs_running") == 1, timeout=60)
        during = scrape(server)
        assert server.jobs.Get(pb.GetJobRequest(id=running.id)).status == pb.JOB_STATUS_RUNNING
        assert during("whisperd_jobs_queued") == 1
        server.jobs.Cancel(pb.CancelJobRequest(id=queued.id))
        server.jobs.Cancel(pb.CancelJobRequest(id=running.id))
        wait_for_status(server, running.id, TERMINAL)
        wait_until(lambda: scrape(server)("whisperd_jobs_running") == 0)
        after = scrape(server)
    finally:
        server.stop()

    def delta(name: str, **labels: str) -> float:
        return after(name, **labels) - before(name, **labels)

    assert delta("whisperd_jobs_submitted_total") == 2
    assert delta("whisperd_jobs_total", outcome="cancelled") == 2
    assert delta("whisperd_job_duration_seconds_count", outcome="cancelled") == 2
    assert delta("whisperd_jobs_total", outcome="done") == 0
    # Only the job that ran waited in the queue to a start; no audio was completed.
    assert delta("whisperd_job_queue_seconds_count") == 1
    assert delta("whisperd_audio_seconds_total") == 0
    assert delta("whisperd_inference_seconds_total") == 0
    assert after("whisperd_jobs_queued") == 0


def test_a_job_the_model_cannot_run_counts_as_failed_with_the_failed_load(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path
) -> None:
    broken = tmp_path / "broken.bin"
    data = tiny_en_model.read_bytes()
    broken.write_bytes(data)
    server = metrics_server(tmp_path, broken)
    try:
        broken.write_bytes(data[: len(data) // 2])  # damaged after the start-up check
        before = scrape(server)
        job = submit(server, jfk_wav.read_bytes(), beam_size=1)
        assert wait_for_status(server, job.id, TERMINAL).status == pb.JOB_STATUS_FAILED
        after = scrape(server)
    finally:
        server.stop()
    assert after("whisperd_jobs_total", outcome="failed") - before("whisperd_jobs_total", outcome="failed") == 1
    assert after("whisperd_job_duration_seconds_count", outcome="failed") == 1
    assert after("whisperd_model_loads_total", result="failed") == 1
    assert after("whisperd_model_loads_total", result="ready") == 0
    assert after("whisperd_model_state", state="unloaded") == 1
    assert after("whisperd_audio_seconds_total") == 0


def test_a_taken_metrics_port_stops_the_start_with_a_clear_line(tiny_en_model: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess(tmp_path / "data", tiny_en_model, env={"METRICS_PORT": str(port)})
        with pytest.raises(RuntimeError) as err:
            server.start(timeout=60)
    assert f"could not serve metrics on 127.0.0.1:{port}" in str(err.value)
    assert "METRICS_PORT" in str(err.value)


def test_metrics_settings_are_validated() -> None:
    from whisperd.server.config import ConfigError, from_env

    assert from_env({}).metrics_port == 9464
    assert from_env({"METRICS_PORT": "0"}).metrics_port == 0
    for bad, message in (("70000", "METRICS_PORT must be 0 (off)"), ("x", "METRICS_PORT must be a whole number")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            from_env({"METRICS_PORT": bad})
    with pytest.raises(ConfigError, match="METRICS_PORT and PORT must differ"):
        from_env({"METRICS_PORT": "50051"})
    with pytest.raises(ConfigError, match="LOG_FORMAT must be 'text' or 'json'"):
        from_env({"LOG_FORMAT": "xml"})


def test_observe_batch_fills_the_batch_size_histogram() -> None:
    from prometheus_client import REGISTRY

    from whisperd.server import metrics

    def count(le: str) -> float:
        return REGISTRY.get_sample_value("whisperd_batch_size_bucket", {"le": le}) or 0.0

    was_4, was_inf = count("4.0"), count("+Inf")
    metrics.observe_batch(3)
    metrics.observe_batch(12)
    assert count("4.0") - was_4 == 1
    assert count("+Inf") - was_inf == 2


# --- the gateway -------------------------------------------------------------------------


@pytest.fixture
def gateway_pair(tiny_en_model: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, GatewayProcess]]:
    server = metrics_server(tmp_path, tiny_en_model)
    gw = GatewayProcess(f"127.0.0.1:{server.port}").start()
    yield server, gw
    gw.stop()
    server.stop()


def test_gateway_metrics_count_requests_by_route_pattern_and_status(
    gateway_pair: tuple[ServerProcess, GatewayProcess], jfk_wav: Path
) -> None:
    server, gw = gateway_pair
    with httpx.Client(base_url=gw.url, timeout=60) as http:
        before = Scrape(gw.url + "/metrics")
        with jfk_wav.open("rb") as f:
            r = http.post("/v1/jobs", data={"beam_size": "1"}, files={"audio": ("jfk.wav", f, "audio/wav")})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        assert http.get(f"/v1/jobs/{job_id}").status_code == 200
        assert http.get(f"/jobs/{job_id}").status_code == 200  # the legacy alias: the same route
        assert http.get("/v1/jobs/no-such-job").status_code == 404
        assert http.get("/v1/jobs").status_code == 200
        assert http.get("/no/such/route").status_code == 404
        wait_for_status(server, job_id, TERMINAL)
        after = Scrape(gw.url + "/metrics")

    def requests(method: str, route: str, code: int) -> float:
        key = {"method": method, "route": route, "code": str(code)}
        return after("whisperd_gateway_http_requests_total", **key) - before.samples.get(
            ("whisperd_gateway_http_requests_total", frozenset(key.items())), 0.0
        )

    assert requests("POST", "/v1/jobs", 200) == 1
    assert requests("GET", "/v1/jobs/{id}", 200) == 2
    assert requests("GET", "/v1/jobs/{id}", 404) == 1
    assert requests("GET", "/v1/jobs", 200) == 1
    assert requests("GET", "unmatched", 404) == 1
    assert after(
        "whisperd_gateway_http_request_duration_seconds_count", method="POST", route="/v1/jobs", code="200"
    ) == 1
    # No label carries a job id or a raw path.
    routes = {dict(labels).get("route", "") for name, labels in after.samples if name.startswith("whisperd_gateway_http")}
    assert not any(job_id in r or "no-such" in r for r in routes), routes
    # The upload went through to whisperd's own counters.
    assert scrape(server)("whisperd_upload_bytes_total") == jfk_wav.stat().st_size
