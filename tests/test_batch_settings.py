"""The batched decoder's settings: bad values stop the start with the variable's name, and
a job asking for more beams than a slot holds still decodes (with the slot's beams)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import EXPECTED_JFK, normalise
from whisperd.audio import decode_audio
from whisperd.batch_decoder import BatchDecoder
from whisperd.batching import WindowRequest
from whisperd.inference import TranscribeOptions, WhisperModel
from whisperd.server.config import ConfigError, from_env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BATCH_SIZE": "-1"}, "BATCH_SIZE must be 0 (automatic) or between 1 and 256, got -1"),
        ({"BATCH_SIZE": "257"}, "BATCH_SIZE must be 0 (automatic) or between 1 and 256, got 257"),
        ({"BATCH_SIZE": "many"}, "BATCH_SIZE must be a whole number, got 'many'"),
        ({"BATCH_MAX_BEAMS": "0"}, "BATCH_MAX_BEAMS must be between 1 and 16, got 0"),
        ({"BATCH_MAX_BEAMS": "17"}, "BATCH_MAX_BEAMS must be between 1 and 16, got 17"),
        ({"WHISPERD_CUDA_ENCODER": "fast"}, "WHISPERD_CUDA_ENCODER must be 0, 1 or auto, got 'fast'"),
        ({"WHISPERD_CUDA_DECODER": "yes"}, "WHISPERD_CUDA_DECODER must be 0, 1 or auto, got 'yes'"),
        ({"WHISPERD_CUDA_DECODER_MAX_BATCH": "-4"},
         "WHISPERD_CUDA_DECODER_MAX_BATCH must be a number of windows, got '-4'"),
        ({"WHISPERD_CUDA_ATTENTION": "flash"}, "WHISPERD_CUDA_ATTENTION must be fused, cublas or auto, got 'flash'"),
        ({"WHISPERD_GPU_SAMPLING": "maybe"}, "WHISPERD_GPU_SAMPLING must be 0 or 1, got 'maybe'"),
    ],
)
def test_a_bad_batch_setting_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_env(env)


def test_defaults_are_automatic_batch_and_five_beams() -> None:
    s = from_env({})
    assert (s.batch_size, s.batch_max_beams, s.cuda_encoder) == (0, 5, "auto")
    assert from_env({"WHISPERD_CUDA_ENCODER": " AUTO "}).cuda_encoder == "auto"
    assert from_env({"WHISPERD_CUDA_ENCODER": "0"}).cuda_encoder == "0"


def test_more_beams_than_a_slot_holds_decode_with_the_slots_beams(tiny_en_model: Path, jfk_wav: Path) -> None:
    model = WhisperModel(tiny_en_model, use_gpu=False)
    try:
        greedy_slots = BatchDecoder(model, 1, 2, max_beams=1)
        greedy_slots.add([WindowRequest(0, decode_audio(jfk_wav), TranscribeOptions(beam_size=5))])
        results = []
        while greedy_slots.active():
            results += greedy_slots.step()
        stats = greedy_slots.stats()
        greedy_slots.close()
    finally:
        model.close()
    assert len(results) == 1
    assert normalise(" ".join(s.text for s in results[0].segments)) == normalise(EXPECTED_JFK)
    # decoded, not refused, and with one row a step (five beams would be five rows)
    assert stats.rows == stats.steps
