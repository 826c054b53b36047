"""The batched decoder keeps its windows in the lowest slots: a step covers every slot up
to the highest in use, so a window left high after the others finished moves down (with
its caches) and later steps cover fewer slots. The moved window must decode exactly as it
would have in place."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from whisperd.batching import WindowRequest, WindowResult
from whisperd.inference import TranscribeOptions, WhisperModel

BatchDecoder = pytest.importorskip("whisperd.batch_decoder").BatchDecoder

THREADS = 2


@pytest.fixture(scope="module")
def model(tiny_en_model: Path) -> Iterator[WhisperModel]:
    m = WhisperModel(tiny_en_model, use_gpu=False)
    yield m
    m.close()


def decode_all(dec: BatchDecoder, requests: list[WindowRequest]) -> dict[int, WindowResult]:
    dec.add(requests)
    out: dict[int, WindowResult] = {}
    while dec.active():
        for result in dec.step():
            out[result.window_id] = result
    return out


@pytest.mark.parametrize("beams", [1, 5])
def test_a_window_left_in_a_high_slot_moves_down_and_decodes_the_same(
    model: WhisperModel, jfk: np.ndarray, beams: int
) -> None:
    options = TranscribeOptions(beam_size=beams, threads=THREADS)
    alone = BatchDecoder(model, 1, THREADS)
    try:
        reference = decode_all(alone, [WindowRequest(0, jfk, options)])[0]
    finally:
        alone.close()
    # Three short silent windows take the lowest slots and end within a few steps; jfk
    # (11 s of speech) sits in the highest slot and goes on decoding.
    quiet = np.zeros(8000, np.float32)
    dec = BatchDecoder(model, 4, THREADS)
    try:
        got = decode_all(dec, [WindowRequest(i, quiet, options) for i in range(3)] + [WindowRequest(3, jfk, options)])
        stats = dec.stats()
    finally:
        dec.close()
    assert set(got) == {0, 1, 2, 3}
    moved = got[3]
    assert [(s.start, s.end, s.text) for s in moved.segments] == [
        (s.start, s.end, s.text) for s in reference.segments
    ]
    assert moved.text_tokens == reference.text_tokens
    assert stats.moves == 1
    # The steps after the move covered one slot instead of four.
    assert stats.rows < 4 * beams * stats.steps
