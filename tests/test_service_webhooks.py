"""Webhooks from the running service: the finished job's JSON to its URL (signed), the
model's lifecycle to every URL any job has used, private targets refused at Submit."""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from webhook_receiver import WebhookReceiver
from whisperd.server.webhooks import verify
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import transcription_pb2 as pb

SECRET = "s3cret-for-tests"
TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}


def test_job_and_model_webhooks_reach_their_receivers(tiny_en_model: Path, tmp_path: Path, jfk_wav: Path) -> None:
    with WebhookReceiver() as first, WebhookReceiver() as second:
        server = ServerProcess(
            tmp_path / "data", tiny_en_model,
            env={"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_PRIVATE": "1"},
        ).start()
        try:
            jobs = []
            for receiver in (first, second):
                options = pb.JobOptions(beam_size=1, webhook_url=receiver.url())
                jobs.append(server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), options)))
            for job in jobs:
                wait_for_status(server, job.id, TERMINAL)
            server.model.Unload(mpb.UnloadModelRequest())
            for receiver, job in ((first, jobs[0]), (second, jobs[1])):
                got = receiver.wait_for(3, timeout=20)  # model_ready, job.done, model_unloaded (any order)
                by_event = {r.headers["x-whisperd-event"]: r for r in got}
                assert {"model_ready", "job.done", "model_unloaded"} <= set(by_event), list(by_event)
                done = by_event["job.done"]
                assert verify(SECRET, done.headers, done.body)
                body = json.loads(done.body)
                assert body["id"] == job.id and body["status"] == "JOB_STATUS_DONE"
                assert body["duration_secs"] == pytest.approx(11.0, abs=0.1)
                assert normalise(" ".join(s["text"] for s in body["segments"])) == normalise(EXPECTED_JFK)
                assert json.loads(by_event["model_unloaded"].body)["event"] == "model_unloaded"
        finally:
            server.stop()


def test_private_webhook_targets_are_refused_at_submit(tiny_en_model: Path, tmp_path: Path, jfk_wav: Path) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model).start()
    try:
        for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest"):
            with pytest.raises(grpc.RpcError) as err:
                server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(webhook_url=url)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "options.webhook_url" in err.value.details()
            assert "WEBHOOK_ALLOW_PRIVATE" in err.value.details()
        assert not server.jobs.List(pb.ListJobsRequest()).jobs
    finally:
        server.stop()
