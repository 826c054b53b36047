"""Decoder steps of several states batched into one graph (patch 0007), real tiny.en on
real speech: every state must get what it gets decoding alone."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from whisperd.audio import decode_audio
from whisperd.inference import (
    CancelToken,
    TranscribeOptions,
    Transcript,
    TranscriptionAborted,
    WhisperModel,
)


@pytest.fixture(scope="module")
def jfk(jfk_wav: Path) -> np.ndarray:
    return decode_audio(jfk_wav)


@pytest.fixture(scope="module")
def batched(tiny_en_model: Path, use_gpu: bool) -> WhisperModel:
    m = WhisperModel(tiny_en_model, use_gpu=use_gpu, batch_decoding=True)
    if not m.batch_decoding:
        m.close()
        pytest.skip("this build cannot batch decoder steps (no patch 0007)")
    yield m
    m.close()


@pytest.fixture(scope="module")
def alone(tiny_en_model: Path, use_gpu: bool) -> WhisperModel:
    m = WhisperModel(tiny_en_model, use_gpu=use_gpu)
    yield m
    m.close()


def opts(beam: int) -> TranscribeOptions:
    return TranscribeOptions(beam_size=beam, threads=1)


def in_threads(model: WhisperModel, audios: list[np.ndarray], o: TranscribeOptions) -> list[Transcript]:
    states = [model.new_state() for _ in audios]
    out: list[Transcript | BaseException | None] = [None] * len(audios)
    go = threading.Barrier(len(audios))

    def work(i: int) -> None:
        try:
            go.wait()
            out[i] = states[i].transcribe(audios[i], o)
        except BaseException as exc:  # reported below
            out[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(audios))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a batched transcription hung"
    finally:
        for st in states:
            st.close()
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out  # type: ignore[return-value]


def same_segments(a: Transcript, b: Transcript) -> None:
    assert [s.text for s in a.segments] == [s.text for s in b.segments]
    for x, y in zip(a.segments, b.segments):
        assert x.start == pytest.approx(y.start, abs=0.1)
        assert x.end == pytest.approx(y.end, abs=0.1)


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("n", [2, 4])
def test_batched_states_match_decoding_alone(
    batched: WhisperModel, alone: WhisperModel, jfk: np.ndarray, n: int, beam: int
) -> None:
    with alone.new_state() as st:
        reference = st.transcribe(jfk, opts(beam))
    assert normalise(reference.text) == normalise(EXPECTED_JFK)
    # Different lengths, so that states join and leave the batch at different steps.
    audios = [jfk[: len(jfk) - i * 8000] if i % 2 else jfk for i in range(n)]
    results = in_threads(batched, audios, opts(beam))
    for audio, r in zip(audios, results):
        if len(audio) == len(jfk):
            assert normalise(r.text) == normalise(EXPECTED_JFK)
            same_segments(r, reference)
        else:
            assert normalise(r.text).startswith("and so my fellow americans")


def test_long_audio_with_prompts_matches_decoding_alone(
    batched: WhisperModel, alone: WhisperModel, jfk: np.ndarray
) -> None:
    # Two windows: the second decodes its (longer) prompt alone, its steps batched.
    audio = np.tile(jfk, 3)
    with alone.new_state() as st:
        reference = st.transcribe(audio, opts(1))
    for r in in_threads(batched, [audio, audio], opts(1)):
        same_segments(r, reference)


def test_cancel_of_one_state_leaves_the_others_running(
    batched: WhisperModel, jfk: np.ndarray
) -> None:
    long_audio = np.tile(jfk, 12)  # over two minutes
    token = CancelToken()
    started = threading.Event()
    outcome: dict[str, object] = {}
    others: list[Transcript | None] = [None, None]

    def cancelled() -> None:
        try:
            with batched.new_state() as state:
                state.transcribe(
                    long_audio, opts(1), cancel=token, on_progress=lambda p: started.set()
                )
            outcome["result"] = "finished"
        except TranscriptionAborted:
            outcome["aborted_at"] = time.perf_counter()

    def other(i: int) -> None:
        with batched.new_state() as state:
            started.wait(60)
            others[i] = state.transcribe(np.tile(jfk, 2), opts(1 if i == 0 else 5))

    threads = [threading.Thread(target=cancelled)] + [
        threading.Thread(target=other, args=(i,)) for i in range(2)
    ]
    for t in threads:
        t.start()
    assert started.wait(60), "transcription never reported progress"
    time.sleep(0.5)
    cancelled_at = time.perf_counter()
    token.cancel()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert "aborted_at" in outcome, outcome
    assert outcome["aborted_at"] - cancelled_at < 1.0  # type: ignore[operator]
    for r in others:
        assert r is not None
        assert normalise(r.text) == normalise(EXPECTED_JFK + " " + EXPECTED_JFK)


def test_a_state_closed_while_others_decode(batched: WhisperModel, jfk: np.ndarray) -> None:
    busy = batched.new_state()
    result: list[Transcript] = []
    worker = threading.Thread(target=lambda: result.append(busy.transcribe(np.tile(jfk, 2), opts(1))))
    worker.start()
    for _ in range(3):
        with batched.new_state() as st:
            assert normalise(st.transcribe(jfk[: 16000 * 4], opts(1)).text).startswith("and so my")
    worker.join(60)
    busy.close()
    assert normalise(result[0].text) == normalise(EXPECTED_JFK + " " + EXPECTED_JFK)


def test_model_closes_cleanly_after_batched_use(tiny_en_model: Path, use_gpu: bool, jfk: np.ndarray) -> None:
    m = WhisperModel(tiny_en_model, use_gpu=use_gpu, batch_decoding=True)
    a, b = m.new_state(), m.new_state()
    m.close()  # the states keep the weights (and the batcher) until they are closed
    texts = [r.text for r in in_threads_states([a, b], jfk)]
    assert [normalise(t) for t in texts] == [normalise(EXPECTED_JFK)] * 2
    a.close()
    b.close()
    assert m.closed


def in_threads_states(states: list, audio: np.ndarray) -> list[Transcript]:
    out: list[Transcript | None] = [None] * len(states)

    def work(i: int) -> None:
        out[i] = states[i].transcribe(audio, opts(1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(states))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out  # type: ignore[return-value]
