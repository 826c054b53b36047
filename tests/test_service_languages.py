"""Language detection and translation through the service, with the multilingual base
model and German speech (espeak-ng)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from test_languages import CLIPS, speak
from whisperd.v1 import transcription_pb2 as pb

pytestmark = pytest.mark.slow
TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}


def test_german_is_detected_and_translated(base_model: Path, tmp_path: Path) -> None:
    text, german_words, english_words = CLIPS["de"]
    clip = speak(text, "de", tmp_path / "de.wav").read_bytes()
    server = ServerProcess(tmp_path / "data", base_model).start()
    try:
        detect = server.jobs.Submit(submit_requests(clip, pb.JobOptions(beam_size=1)))
        translate = server.jobs.Submit(
            submit_requests(clip, pb.JobOptions(beam_size=1, task=pb.TASK_TRANSLATE))
        )
        heard = wait_for_status(server, detect.id, TERMINAL)
        assert heard.status == pb.JOB_STATUS_DONE, heard.error
        assert heard.language == "de" and heard.language_probability > 0.5
        assert len(set(normalise(" ".join(s.text for s in heard.segments)).split()) & german_words) >= 2
        english = wait_for_status(server, translate.id, TERMINAL)
        assert english.status == pb.JOB_STATUS_DONE, english.error
        words = set(normalise(" ".join(s.text for s in english.segments)).split())
        assert len(words & english_words) >= 2, english.segments
    finally:
        server.stop()
