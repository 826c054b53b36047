"""LOG_FORMAT=json: a real server's log is one JSON object per line, and a job's lines
carry its id, what happened and how long it took; the readable format stays the default."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from server_process import ServerProcess, submit_requests, wait_for_status
from whisperd.v1 import transcription_pb2 as pb

TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}


def test_a_json_log_parses_line_by_line_and_follows_a_job(tiny_en_model: Path, tmp_path: Path, jfk_wav: Path) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"LOG_FORMAT": "json"}).start()
    try:
        job = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        done = wait_for_status(server, job.id, TERMINAL)
        assert done.status == pb.JOB_STATUS_DONE, done.error
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.log()

    records = []
    for line in server.log_lines:
        if line.startswith("whisperd serving on "):  # the one stdout line scripts wait for
            continue
        record = json.loads(line)  # every other line is one whole JSON object
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    assert any(r["message"].startswith("whisperd listening on") for r in records)
    assert records[-1]["message"] == "stopped"

    mine = [r for r in records if r.get("job_id") == job.id]
    events = [r["event"] for r in mine if "event" in r]
    assert events[:2] == ["job.queued", "job.started"], events
    assert events[-2:] == ["job.done", "job.finished"], events
    assert all(job.id in r["message"] for r in mine)
    finished = mine[-1]
    assert finished["outcome"] == "done" and finished["attempts"] == 1
    assert finished["audio_secs"] == pytest.approx(11.0, abs=0.1)
    assert 0 < finished["run_secs"] <= finished["total_secs"]
    assert finished["queue_secs"] + finished["run_secs"] == pytest.approx(finished["total_secs"], abs=0.01)
    states = [(r["previous"], r["state"]) for r in records if r.get("event") == "model.state"]
    assert ("unloaded", "loading") in states and ("loading", "ready") in states


def test_an_exception_stays_on_its_one_line() -> None:
    from whisperd.server.logs import JsonFormatter

    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("whisperd.x", logging.ERROR, __file__, 1, "job %s: unexpected error", ("j-1",), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["job_id"] == "j-1" and parsed["event"] == "job.error" and parsed["level"] == "ERROR"
    assert "ValueError: bad\nthing" in parsed["exception"]


def test_readable_lines_stay_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    from whisperd.server import logs
    from whisperd.server.config import from_env

    assert from_env({}).log_format == "text"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("INFO", "text")
        logging.getLogger("whisperd.server").info("job %s: queued (%d bytes)", "j-2", 10)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = capsys.readouterr().err.strip()
    assert line.endswith(" INFO whisperd.server: job j-2: queued (10 bytes)"), line
    with pytest.raises(ValueError):
        json.loads(line)
