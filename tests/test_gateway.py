"""The REST gateway (issue 7) end to end: the real Go binary (bin/whisperd-gateway, built by
`make gateway`) in front of a real whisperd server with the real tiny.en model, driven over
real HTTP: multipart uploads, SSE, the old unversioned paths, transcripts, errors, strict
admission, the OpenAI-compatible routes through the official `openai` package, the
OpenAPI document and the Swagger UI page rendered by headless Chromium.

One whisperd + one gateway serve most of the module; a second pair (multilingual base
model, ADMISSION=strict) serves the admission, model and translation tests.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from conftest import EXPECTED_JFK, normalise
from gateway_process import ROOT, GatewayProcess
from server_process import ServerProcess
from test_languages import CLIPS, speak
from whisperd.audio import decode_audio, write_wav
from whisperd.client import WhisperdClient

TERMINAL = {"JOB_STATUS_DONE", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"}
MiB = 1024 * 1024


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_en_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("data"), tiny_en_model).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(server: ServerProcess) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(f"127.0.0.1:{server.port}").start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=httpx.Timeout(60.0)) as client:
        yield client


@pytest.fixture(scope="module")
def done_job(http: httpx.Client, jfk_wav: Path, gateway: GatewayProcess) -> dict[str, Any]:
    """One finished jfk job, uploaded through the gateway, shared by the read-only tests."""
    job_id = upload(http, jfk_wav, gateway)
    return wait_done(http, job_id, gateway)


# --- helpers ---------------------------------------------------------------------------------


def why(r: httpx.Response, *procs: Any) -> str:
    """An assertion message: the request, the answer, and the processes' recent logs."""
    logs = "\n".join(f"--- {type(p).__name__} log:\n{p.log()}" for p in procs)
    return f"{r.request.method} {r.request.url} -> {r.status_code} {r.headers.get('content-type')}\n{r.text[:2000]}\n{logs}"


def upload(http: httpx.Client, audio: Path, gateway: GatewayProcess, prefix: str = "/v1", **fields: str) -> str:
    with audio.open("rb") as f:
        r = http.post(f"{prefix}/jobs", data=fields, files={"audio": (audio.name, f, "audio/wav")})
    assert r.status_code == 200, why(r, gateway)
    body = r.json()
    # The earlier service's shape (job_id, status in lower case) plus the whole job.
    assert body["job_id"] == body["id"] == body["job"]["id"] and body["id"], body
    assert body["status"] in ("queued", "running"), body
    assert body["job"]["status"] == "JOB_STATUS_" + body["status"].upper(), body
    return str(body["id"])


def wait_done(http: httpx.Client, job_id: str, gateway: GatewayProcess, prefix: str = "/v1",
              timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"{prefix}/jobs/{job_id}")
        assert r.status_code == 200, why(r, gateway)
        job = r.json()
        if job["status"] in TERMINAL:
            assert job["status"] == "JOB_STATUS_DONE", job
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}\n{gateway.log()}"
        time.sleep(0.1)


def text_of(job: dict[str, Any]) -> str:
    return " ".join(s["text"] for s in job.get("segments", []))


def assert_error(r: httpx.Response, status: int, code: str, *procs: Any) -> dict[str, Any]:
    assert r.status_code == status, why(r, *procs)
    assert r.headers["content-type"].startswith("application/json"), why(r, *procs)
    body = r.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"], body
    return body


def sse_events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream, as the HTML standard parses them."""
    event, data = "", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


def read_stream(http: httpx.Client, path: str, gateway: GatewayProcess) -> list[tuple[str, Any]]:
    """Every event of a job stream until the server closes it (which it must, after done)."""
    with http.stream("GET", path, timeout=httpx.Timeout(60.0)) as r:
        assert r.status_code == 200, why(r, gateway)
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        return [(event, json.loads(data)) for event, data in sse_events(r)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- jobs ------------------------------------------------------------------------------------


def test_multipart_upload_then_poll_until_done(http: httpx.Client, gateway: GatewayProcess, jfk_wav: Path) -> None:
    job_id = upload(http, jfk_wav, gateway, language="en", task="transcribe")
    job = wait_done(http, job_id, gateway)
    assert job["id"] == job_id
    assert normalise(text_of(job)) == normalise(EXPECTED_JFK)
    # Proto field names, enums by name, as the earlier service's JSON had them.
    assert job["duration_secs"] == pytest.approx(11.0, abs=0.1)
    assert job["language"] == "en" and job["task"] == "TASK_TRANSCRIBE"
    assert job["options"]["language"] == "en" and job["options"]["filename"] == "jfk.wav"
    seg = job["segments"][0]
    assert 0 <= seg["start"] < seg["end"] <= 11.1
    assert job["created_at"] and job["completed_at"]


def test_sse_stream_status_progress_segments_then_done(
    http: httpx.Client, gateway: GatewayProcess, jfk_wav: Path
) -> None:
    job_id = upload(http, jfk_wav, gateway)
    events = read_stream(http, f"/v1/jobs/{job_id}/stream", gateway)  # returns once the stream ends
    kinds = [e for e, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "done", kinds
    assert set(kinds[1:-1]) <= {"progress", "segment"}, kinds
    first = events[0][1]
    assert first["id"] == job_id and first["status"] in ("JOB_STATUS_QUEUED", "JOB_STATUS_RUNNING", "JOB_STATUS_DONE")
    percents = []
    for kind, data in events:
        if kind == "progress":
            assert set(data) == {"type", "percent"} and data["type"] == "progress", data
            assert isinstance(data["percent"], (int, float)) and 0 <= data["percent"] <= 100
            percents.append(data["percent"])
    assert percents == sorted(percents), percents
    done = events[-1][1]
    assert done["id"] == job_id and done["status"] == "JOB_STATUS_DONE"
    assert normalise(text_of(done)) == normalise(EXPECTED_JFK)
    segments = [data for kind, data in events if kind == "segment"]
    for data in segments:  # the Segment's fields, tagged like the progress events
        assert data["type"] == "segment" and {"index", "start", "end", "text", "words"} <= set(data), data
    assert "type" not in first and "type" not in events[-1][1]  # status and done carry the bare job
    if segments:  # a fast job may end before the subscriber sees its segments
        assert [s["text"] for s in segments] == [s["text"] for s in done["segments"]][-len(segments):]
    # A late subscriber gets the finished job at once: status, then done.
    late = read_stream(http, f"/v1/jobs/{job_id}/stream", gateway)
    assert [e for e, _ in late] == ["status", "done"]
    assert late[-1][1]["status"] == "JOB_STATUS_DONE"


def test_list_jobs(http: httpx.Client, gateway: GatewayProcess, done_job: dict[str, Any]) -> None:
    r = http.get("/v1/jobs")
    assert r.status_code == 200, why(r, gateway)
    listed = r.json()
    assert done_job["id"] in [j["id"] for j in listed["jobs"]]


def test_transcripts_equal_grpc_get_transcript_byte_for_byte(
    http: httpx.Client, gateway: GatewayProcess, server: ServerProcess, done_job: dict[str, Any]
) -> None:
    with WhisperdClient(f"127.0.0.1:{server.port}") as grpc_client:
        for fmt in ("srt", "vtt", "txt", "json"):
            want = grpc_client.transcript_message(done_job["id"], fmt)
            r = http.get(f"/v1/jobs/{done_job['id']}/transcript", params={"format": fmt})
            assert r.status_code == 200, why(r, gateway)
            assert r.content == want.content.encode("utf-8"), fmt
            assert r.headers["content-type"] == want.content_type, (fmt, r.headers["content-type"])
    # And they are what they claim to be.
    cues = list(srt.parse(http.get(f"/v1/jobs/{done_job['id']}/transcript?format=srt").text))
    assert normalise(" ".join(c.content for c in cues)) == normalise(EXPECTED_JFK)
    vtt = webvtt.from_string(http.get(f"/v1/jobs/{done_job['id']}/transcript?format=vtt").text)
    assert normalise(" ".join(c.text for c in vtt)) == normalise(EXPECTED_JFK)


def test_old_unversioned_paths(http: httpx.Client, gateway: GatewayProcess, jfk_wav: Path) -> None:
    """The earlier service's routes, unchanged: its clients only change the port."""
    job_id = upload(http, jfk_wav, gateway, prefix="")
    job = wait_done(http, job_id, gateway, prefix="")
    assert normalise(text_of(job)) == normalise(EXPECTED_JFK)
    events = read_stream(http, f"/jobs/{job_id}/stream", gateway)
    assert [e for e, _ in events] == ["status", "done"]
    assert normalise(text_of(events[-1][1])) == normalise(EXPECTED_JFK)
    r = http.get(f"/jobs/{job_id}/transcript", params={"format": "srt"})
    assert r.status_code == 200, why(r, gateway)
    assert normalise(" ".join(c.content for c in srt.parse(r.text))) == normalise(EXPECTED_JFK)
    r = http.get("/jobs")
    assert r.status_code == 200 and job_id in [j["id"] for j in r.json()["jobs"]], why(r, gateway)
    r = http.get("/model/status")
    assert r.status_code == 200 and r.json()["state"] == "MODEL_STATE_READY", why(r, gateway)
    # Cancelling a finished job: 409 with the error JSON, on both paths.
    for prefix in ("", "/v1"):
        body = assert_error(http.delete(f"{prefix}/jobs/{job_id}"), 409, "FAILED_PRECONDITION", gateway)
        assert job_id in body["error"]


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_unknown_job_is_404_on_every_route(http: httpx.Client, gateway: GatewayProcess, prefix: str) -> None:
    for method, path in [
        ("GET", "/jobs/no-such-job"),
        ("DELETE", "/jobs/no-such-job"),
        ("GET", "/jobs/no-such-job/stream"),
        ("GET", "/jobs/no-such-job/transcript?format=txt"),
    ]:
        body = assert_error(http.request(method, prefix + path), 404, "NOT_FOUND", gateway)
        assert "no-such-job" in body["error"]


def test_bad_uploads_are_400(http: httpx.Client, gateway: GatewayProcess, jfk_wav: Path) -> None:
    # No audio part at all.
    assert_error(http.post("/v1/jobs", data={"language": "en"}, files={"other": ("x", b"x")}),
                 400, "INVALID_ARGUMENT", gateway)
    # Audio that is not audio: whisperd refuses it (INVALID_ARGUMENT), the gateway says 400.
    r = http.post("/v1/jobs", files={"audio": ("noise.wav", b"this is not audio" * 100, "audio/wav")})
    assert_error(r, 400, "INVALID_ARGUMENT", gateway)
    # A bad option, named by whisperd.
    with jfk_wav.open("rb") as f:
        r = http.post("/v1/jobs", data={"task": "summarise"}, files={"audio": ("jfk.wav", f, "audio/wav")})
    body = assert_error(r, 400, "INVALID_ARGUMENT", gateway)
    assert "task" in body["error"]
    # webhook_url reaches whisperd, which refuses loopback targets (WEBHOOK_ALLOW_PRIVATE unset).
    with jfk_wav.open("rb") as f:
        r = http.post("/v1/jobs", data={"webhook_url": "http://127.0.0.1:9/hook"},
                      files={"audio": ("jfk.wav", f, "audio/wav")})
    body = assert_error(r, 400, "INVALID_ARGUMENT", gateway)
    assert "webhook" in body["error"], body
    # Options on both sides of the audio part: the late one comes too late (the audio is
    # already streaming to whisperd): refused, naming the field, and no job is left behind.
    before = {j["id"] for j in http.get("/v1/jobs").json()["jobs"]}
    with jfk_wav.open("rb") as f:
        r = http.post("/v1/jobs", files=[("beam_size", (None, "1")), ("audio", ("jfk.wav", f, "audio/wav")),
                                         ("language", (None, "en"))])
    body = assert_error(r, 400, "INVALID_ARGUMENT", gateway)
    assert "language" in body["error"], body
    assert {j["id"] for j in http.get("/v1/jobs").json()["jobs"]} == before


def test_the_earlier_curl_order_audio_first_then_options_works(http: httpx.Client, gateway: GatewayProcess, jfk_wav: Path) -> None:
    """`curl -F audio=@f.mp3 -F language=en .../jobs`: the earlier service's clients put
    the file first; both the legacy and the versioned route take it, options and all."""
    for route in ("/jobs", "/v1/jobs"):
        with jfk_wav.open("rb") as f:
            r = http.post(route, files=[("audio", ("jfk.wav", f, "audio/wav")), ("language", (None, "en")),
                                        ("beam_size", (None, "2"))])
        assert r.status_code == 200, why(r, gateway)
        answer = r.json()  # the legacy route answers in the earlier service's shape
        job = http.get(f"/v1/jobs/{answer.get('id') or answer['job_id']}").json()
        assert job["options"]["language"] == "en" and job["options"]["beam_size"] == 2, job
        assert job["options"]["filename"] == "jfk.wav"


def test_transcript_format_unknown_is_400(http: httpx.Client, gateway: GatewayProcess, done_job: dict[str, Any]) -> None:
    assert_error(http.get(f"/v1/jobs/{done_job['id']}/transcript", params={"format": "docx"}),
                 400, "INVALID_ARGUMENT", gateway)


# --- health ----------------------------------------------------------------------------------


def test_health_200_while_whisperd_serves_503_when_it_does_not(http: httpx.Client, gateway: GatewayProcess) -> None:
    r = http.get("/health")
    assert r.status_code == 200, why(r, gateway)
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()
    dead = GatewayProcess(f"127.0.0.1:{free_port()}").start()
    try:
        r = httpx.get(f"{dead.url}/health", timeout=30)
        assert r.status_code == 503, why(r, dead)
        assert r.headers["content-type"].startswith("application/json")
        # Any other call says UNAVAILABLE as 503 too.
        assert_error(httpx.get(f"{dead.url}/v1/jobs/x", timeout=30), 503, "UNAVAILABLE", dead)
    finally:
        dead.stop()


# --- OpenAI-compatible routes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=600)


def test_openai_json_and_text(oai: openai.OpenAI, jfk_wav: Path) -> None:
    with jfk_wav.open("rb") as f:
        r = oai.audio.transcriptions.create(model="whisper-1", file=f)
    assert normalise(r.text) == normalise(EXPECTED_JFK)
    with jfk_wav.open("rb") as f:
        text = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="text", language="en")
    assert isinstance(text, str) and normalise(text) == normalise(EXPECTED_JFK)


def test_openai_srt_and_vtt(oai: openai.OpenAI, jfk_wav: Path) -> None:
    with jfk_wav.open("rb") as f:
        subtitles = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert isinstance(subtitles, str)
    cues = list(srt.parse(subtitles))
    assert cues and normalise(" ".join(c.content for c in cues)) == normalise(EXPECTED_JFK)
    with jfk_wav.open("rb") as f:
        vtt_text = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert normalise(" ".join(c.text for c in webvtt.from_string(vtt_text))) == normalise(EXPECTED_JFK)


def test_openai_verbose_json_with_words_and_segments(oai: openai.OpenAI, jfk_wav: Path) -> None:
    with jfk_wav.open("rb") as f:
        r = oai.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json",
            timestamp_granularities=["word", "segment"], temperature=0.0, prompt="A speech.",
        )
    assert normalise(r.text) == normalise(EXPECTED_JFK)
    assert r.language in ("en", "english") and r.duration == pytest.approx(11.0, abs=0.1)
    assert r.segments and normalise(" ".join(s.text for s in r.segments)) == normalise(EXPECTED_JFK)
    assert r.words and all(w.start <= w.end for w in r.words), r.words
    assert normalise(" ".join(w.word for w in r.words)) == normalise(EXPECTED_JFK)
    starts = [w.start for w in r.words]
    assert starts == sorted(starts) and r.words[-1].end <= 11.1


def test_openai_refuses_a_lying_file_and_answers_silence_with_no_text(oai: openai.OpenAI, tmp_path: Path) -> None:
    """A header that claims 4 GB over 1 KB of samples is 400 with the reason (not 200 and
    an empty transcript); real silence is 200 with no text (not "[BLANK_AUDIO]")."""
    from malformed import wav_bytes

    lying = tmp_path / "lying.wav"
    lying.write_bytes(wav_bytes(data=b"\1\0" * 512, declared_data=0xFFFFFFF0))
    with lying.open("rb") as f, pytest.raises(openai.BadRequestError) as err:
        oai.audio.transcriptions.create(model="whisper-1", file=f)
    assert "too little to transcribe" in str(err.value)
    quiet = write_wav(tmp_path / "quiet.wav", np.random.default_rng(0).normal(0, 0.0005, 16000 * 6).astype(np.float32))
    with quiet.open("rb") as f:
        r = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert r.text == "" and not r.segments, r


def test_openai_bad_response_format_is_bad_request(oai: openai.OpenAI, jfk_wav: Path) -> None:
    with jfk_wav.open("rb") as f, pytest.raises(openai.BadRequestError) as err:
        oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="xml")  # type: ignore[arg-type]
    assert "response_format" in str(err.value)


def test_openai_fields_after_the_file(http: httpx.Client, gateway: GatewayProcess, jfk_wav: Path) -> None:
    # OpenAI's own curl examples put `-F file=@...` first and the options after it: the
    # gateway spools the file to a temporary file, so the later fields still count.
    files = [
        ("file", ("jfk.wav", jfk_wav.read_bytes(), "audio/wav")),
        ("model", (None, "whisper-1")),
        ("language", (None, "en")),
        ("response_format", (None, "srt")),
        ("timestamp_granularities[]", (None, "word")),
    ]
    request = http.build_request("POST", "/v1/audio/transcriptions", files=files)
    body = request.read()
    assert body.index(b'name="file"') < body.index(b'name="language"') < body.index(b'name="timestamp_granularities[]"')
    r = http.send(request)
    assert r.status_code == 200, why(r, gateway)
    assert r.headers["content-type"].startswith("application/x-subrip"), why(r, gateway)
    cues = list(srt.parse(r.text))
    assert cues and normalise(" ".join(c.content for c in cues)) == normalise(EXPECTED_JFK), r.text


# --- OpenAPI and the docs page -----------------------------------------------------------------

ROUTES = {
    "/v1/jobs": {"get", "post"},
    "/v1/jobs/{}": {"get", "delete"},
    "/v1/jobs/{}/stream": {"get"},
    "/v1/jobs/{}/transcript": {"get"},
    "/v1/model/status": {"get"},
    "/v1/model/load": {"post"},
    "/v1/model/unload": {"post"},
    "/v1/model/events": {"get"},
    "/v1/audio/transcriptions": {"post"},
    "/v1/audio/translations": {"post"},
    "/health": {"get"},
}
# The earlier service's unversioned paths, aliases of the /v1 ones.
LEGACY = {path[len("/v1"):]: methods for path, methods in ROUTES.items()
          if path.startswith("/v1/jobs") or path.startswith("/v1/model")}


def _template(path: str) -> str:
    """/v1/jobs/{id}/stream and /v1/jobs/{job_id}/stream alike -> /v1/jobs/{}/stream."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_openapi_document_validates_and_lists_every_route(http: httpx.Client, gateway: GatewayProcess) -> None:
    from openapi_spec_validator import validate

    r = http.get("/openapi.json")
    assert r.status_code == 200, why(r, gateway)
    assert r.headers["content-type"].startswith("application/json")
    spec = r.json()
    assert spec.get("swagger") == "2.0" or str(spec.get("openapi", "")).startswith("3"), list(spec)
    validate(spec)
    paths = {_template(p): {m.lower() for m in ops} for p, ops in spec["paths"].items()}
    for route, methods in {**ROUTES, **LEGACY, "/openapi.json": {"get"}, "/docs": {"get"}}.items():
        assert route in paths, f"{route} missing from /openapi.json: {sorted(paths)}"
        assert methods <= paths[route], f"{route}: {sorted(paths[route])}, want {sorted(methods)}"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("chromium is missing: `make setup` installs it (Debian package chromium)")


def test_docs_page_renders_in_headless_chromium(gateway: GatewayProcess, tmp_path: Path) -> None:
    r = httpx.get(f"{gateway.url}/docs", timeout=30, follow_redirects=True)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"], why(r, gateway)
    chromium = _chromium()
    common = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--window-size=1280,2000", "--virtual-time-budget=10000",
    ]
    url = f"{gateway.url}/docs"
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-3000:]
    # Swagger UI built the page from /openapi.json: one "opblock" per operation.
    spec = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    operations = sum(1 for ops in spec["paths"].values() for m in ops if m in ("get", "post", "delete", "put", "patch"))
    assert operations >= sum(map(len, ROUTES.values()))
    assert dom.stdout.count('class="opblock ') >= operations, dom.stdout[-3000:]
    for path in ("/v1/jobs", "/v1/audio/transcriptions", "/v1/model/status"):
        assert path in dom.stdout, path
    assert "Failed to load API definition" not in dom.stdout
    shot = tmp_path / "docs.png"
    run = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}", url],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-3000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, len(png)
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1280, 2000)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, results / "docs.png")


# --- strict admission, the model routes, translation (multilingual base, ADMISSION=strict) -----


@pytest.fixture(scope="module")
def strict(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, GatewayProcess]]:
    server = ServerProcess(tmp_path_factory.mktemp("strict"), base_model,
                           env={"ADMISSION": "strict", "RETRY_AFTER_SECS": "3"}).start()
    gw = GatewayProcess(f"127.0.0.1:{server.port}").start()
    yield server, gw
    gw.stop()
    server.stop()


def wait_model(client: httpx.Client, state: str, *procs: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/v1/model/status")
        assert r.status_code == 200, why(r, *procs)
        if r.json()["state"] == state:
            return r.json()
        assert time.monotonic() < deadline, f"model still {r.json()}"
        time.sleep(0.2)


def test_strict_admission_is_503_with_retry_after_then_accepted(
    strict: tuple[ServerProcess, GatewayProcess], jfk_wav: Path
) -> None:
    server, gw = strict
    with httpx.Client(base_url=gw.url, timeout=60) as client:
        r = client.post("/v1/model/unload")
        assert r.status_code == 200, why(r, gw, server)
        wait_model(client, "MODEL_STATE_UNLOADED", gw, server)
        with jfk_wav.open("rb") as f:
            r = client.post("/v1/jobs", files={"audio": ("jfk.wav", f, "audio/wav")})
        assert_error(r, 503, "UNAVAILABLE", gw, server)
        assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1, r.headers
        assert int(r.headers["retry-after"]) == 3  # whisperd's RETRY_AFTER_SECS
        assert not client.get("/v1/jobs").json().get("jobs")  # no job was created
        # The refused upload started the load; once ready the same upload is accepted.
        wait_model(client, "MODEL_STATE_READY", gw, server)
        job_id = upload(client, jfk_wav, gw)
        r = client.delete(f"/v1/jobs/{job_id}")  # its transcript is not the point here
        assert r.status_code in (200, 409), why(r, gw)


def test_model_routes_and_events(strict: tuple[ServerProcess, GatewayProcess]) -> None:
    server, gw = strict
    events: list[tuple[str, dict[str, Any]]] = []
    opened = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{gw.url}/v1/model/events", timeout=httpx.Timeout(60.0)) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for event, data in sse_events(r):
                events.append((event, json.loads(data)))
                opened.set()
                if len(events) >= 5:
                    return

    with httpx.Client(base_url=gw.url, timeout=60) as client:
        r = client.post("/v1/model/load")
        assert r.status_code == 200, why(r, gw, server)
        wait_model(client, "MODEL_STATE_READY", gw, server)
        # One GPU's model (?gpu_indices=) on a server without GPUs: 400, nothing moves.
        r = client.post("/v1/model/unload", params={"gpu_indices": 1})
        body = assert_error(r, 400, "INVALID_ARGUMENT", gw, server)
        assert "cannot unload GPU 1: this server runs on the CPU" in body["error"], body
        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert opened.wait(30), "no first event on /v1/model/events"
        r = client.post("/v1/model/unload")
        assert r.status_code == 200 and r.json()["state"] in ("MODEL_STATE_UNLOADING", "MODEL_STATE_UNLOADED"), why(r, gw)
        wait_model(client, "MODEL_STATE_UNLOADED", gw, server)
        r = client.post("/v1/model/load")
        assert r.status_code == 200 and r.json()["state"] in ("MODEL_STATE_LOADING", "MODEL_STATE_READY"), why(r, gw)
        status = wait_model(client, "MODEL_STATE_READY", gw, server)
        assert status["model"] == "ggml-base.bin"
        follower.join(30)
    states = [data["state"] for _, data in events]
    assert states == ["MODEL_STATE_READY", "MODEL_STATE_UNLOADING", "MODEL_STATE_UNLOADED",
                      "MODEL_STATE_LOADING", "MODEL_STATE_READY"], events
    # The SSE event name is the state (ready, unloading, ...); the data is the ModelEvent.
    assert [e for e, _ in events] == ["ready", "unloading", "unloaded", "loading", "ready"], events
    assert events[1][1]["previous"] == "MODEL_STATE_READY" and events[1][1]["reason"]


# The SDK marks audio.translations deprecated (in favour of transcriptions with a target
# language); it is still OpenAI's route and what existing clients call.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_openai_translation_returns_english(strict: tuple[ServerProcess, GatewayProcess], tmp_path: Path) -> None:
    server, gw = strict
    with httpx.Client(base_url=gw.url, timeout=60) as client:
        client.post("/v1/model/load")
        wait_model(client, "MODEL_STATE_READY", gw, server)
    text, _, english_words = CLIPS["de"]
    clip = speak(text, "de", tmp_path / "de.wav")
    oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=600)
    with clip.open("rb") as f:
        r = oai.audio.translations.create(model="whisper-1", file=f)
    words = set(normalise(r.text).split())
    assert len(words & english_words) >= 2, r.text


# --- a 300 MB upload streams through the gateway -------------------------------------------------


def _sparse_wav(path: Path, data_bytes: int) -> Path:
    """A 16 kHz mono s16 WAV of `data_bytes` of silence; sparse, so it costs no disk."""
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + data_bytes)
    return path


def test_300_mb_upload_streams_without_growing_the_gateway(
    http: httpx.Client, gateway: GatewayProcess, server: ServerProcess, tmp_path: Path, jfk_wav: Path
) -> None:
    # A job that keeps the one worker busy, so that the big job waits in the queue and its
    # cancel is immediate (whisperd would first decode all 9830 s of it before a running
    # job could notice a cancel).
    blocker = upload(http, write_wav(tmp_path / "jfk_x10.wav", np.tile(decode_audio(jfk_wav), 10)), gateway)
    deadline = time.monotonic() + 60
    while http.get(f"/v1/jobs/{blocker}").json()["status"] != "JOB_STATUS_RUNNING":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    wav = _sparse_wav(tmp_path / "big.wav", 300 * MiB)
    size = wav.stat().st_size
    boundary = "whisperd-test-boundary-7f3a"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"big.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sent = 0

    def body() -> Iterator[bytes]:  # never more than 1 MiB of the file in this process
        nonlocal sent
        yield head
        with wav.open("rb") as f:
            while chunk := f.read(MiB):
                sent += len(chunk)
                yield chunk
        yield tail

    baseline = gateway.rss_bytes()
    hwm_before = gateway.rss_bytes(peak=True)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(gateway.rss_bytes())
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        r = http.post(
            "/v1/jobs", content=body(), timeout=httpx.Timeout(300.0),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                     "Content-Length": str(len(head) + size + len(tail))},
        )
    finally:
        stop.set()
        sampler.join()
    elapsed = time.monotonic() - started
    assert r.status_code == 200, why(r, gateway, server)
    assert sent == size
    job = r.json()
    assert job["id"]
    hwm_after = gateway.rss_bytes(peak=True)
    peak = max(samples + ([hwm_after] if hwm_after > hwm_before else []))
    growth = peak - baseline
    print(f"300 MB upload: {elapsed:.1f} s, {len(samples)} RSS samples, gateway RSS "
          f"{baseline / MiB:.1f} MiB -> peak {peak / MiB:.1f} MiB (+{growth / MiB:.1f} MiB)")
    assert growth < 64 * MiB, f"gateway RSS grew by {growth / MiB:.1f} MiB during a 300 MB upload"
    # whisperd got all of it: 300 MiB of 16 kHz s16 is 9830.4 s.
    got = http.get(f"/v1/jobs/{job['id']}").json()
    assert got["duration_secs"] == pytest.approx((size - 44) / 32000, abs=1), got
    for job_id in (job["id"], blocker):  # nothing to hear; save the CPU
        r = http.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "JOB_STATUS_CANCELLED", why(r, gateway)
