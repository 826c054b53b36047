"""The batched decoder keeps its windows in the lowest slots: a step covers every slot up
to the highest in use, so a window left high after the others finished moves down (with
its caches) and later steps cover fewer slots. The moved window must decode exactly as it
would have in place."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
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


def test_cuda_steps_cover_multiples_of_32_slots(f16_model: tuple[WhisperModel, Path], jfk: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU a CUDA step records a graph per width once, so its widths above 32 slots
    are multiples of 32 instead of powers of two (157 windows were stepped as 256 slots),
    and windows move down whenever that saves 32 slots. Every window still decodes right."""
    model, _ = f16_model
    monkeypatch.setenv("WHISPERD_CUDA_DECODER", "1")
    options = TranscribeOptions(beam_size=1, threads=THREADS)
    quiet = np.zeros(8000, np.float32)
    # 30 short silent windows in the lowest slots end within a few steps; 40 of jfk above
    # them (slots 30-69) go on, the highest 6 of them past the 64 slots that 40 need.
    requests = [WindowRequest(i, quiet, options) for i in range(30)]
    requests += [WindowRequest(30 + i, jfk, options) for i in range(40)]
    dec = BatchDecoder(model, 128, THREADS)
    try:
        assert dec.cuda_decoder
        dec.add(requests)
        widths: list[int] = []  # rows of each step: its slots (one row a slot, greedy)
        out: dict[int, WindowResult] = {}
        while dec.active():
            before = dec.stats().rows
            for result in dec.step():
                out[result.window_id] = result
            widths.append(dec.stats().rows - before)
        stats = dec.stats()
    finally:
        dec.close()
    assert sorted(out) == list(range(70))
    for i in range(30, 70):
        assert normalise(" ".join(s.text for s in out[i].segments)) == normalise(EXPECTED_JFK), i
    # 70 windows: steps of 96 slots (a power of two would be 128); once the silent ones
    # ended, the 6 highest moved down and the steps covered 64.
    assert 96 in widths and 64 in widths, widths
    assert 128 not in widths
    assert stats.moves >= 6
