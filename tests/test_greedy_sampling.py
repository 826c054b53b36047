"""Greedy decoding in the batched engine takes each token from a summary of the row's
logits (the best allowed text token and timestamp, log-sum-exps) instead of masking and
soft-maxing the whole row; on a GPU the summary is computed there and only it is
downloaded. The token must be the one Whisper's rules give: checked against a float64
numpy version of those rules on random rows covering each rule, on real speech against
whisper.cpp's own decode in a batch that mixes greedy and beam windows, and (GPU,
WHISPERD_TEST_GPU=1) the CUDA kernel against the CPU summary, rows and transcripts."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from whisperd import _native, cuda_env
from whisperd.batch_decoder import BatchDecoder
from whisperd.inference import TranscribeOptions, WhisperModel

SR = 16000
N_TIMESTAMPS = 1501  # 0.00 .. 30.00 s by 0.02 s


@pytest.fixture(scope="module")
def model(tiny_en_model: Path) -> Iterator[WhisperModel]:
    m = WhisperModel(tiny_en_model, use_gpu=False)
    yield m
    m.close()


def mask(flags: int, ts_lo: int, ts_hi: int, forced: int = -1) -> _native.GreedyMask:
    m = _native.GreedyMask()
    m.flags, m.ts_lo, m.ts_hi, m.forced = flags, ts_lo, ts_hi, forced
    return m


def whisper_rules(row: np.ndarray, m: _native.GreedyMask, eot: int, space: int,
                  nosp: int) -> tuple[int, int, float, float, float, float]:
    """(id, tid, p, plog, pt, no-speech) by Whisper's greedy rules in float64: of the specials
    only eot may be taken, never as the first token (nor a space); forced decoding allows one
    token at logit 0; then the timestamp rules; text is dropped when the timestamps together
    are likelier than the best text token; the likeliest token wins, the lowest id on ties."""
    n = len(row)
    beg = n - N_TIMESTAMPS
    x = row.astype(np.float64)
    raw = x.copy()
    if m.forced >= 0:
        x = np.full(n, -np.inf)
        x[m.forced] = 0.0
    else:
        x[eot + 1:beg] = -np.inf
        if m.flags & _native.GREEDY_INITIAL:
            x[eot] = x[space] = -np.inf
    if m.flags & _native.GREEDY_TEXT_OFF:
        x[:eot] = -np.inf
    x[beg:max(beg, m.ts_lo)] = -np.inf
    x[max(beg, m.ts_hi):] = -np.inf
    # the plain softmax of the row as it came (only asked for at a prompt's last position)
    no_speech = float(np.exp(raw[nosp] - np.logaddexp.reduce(raw))) if m.flags & _native.GREEDY_RAW else 0.0
    if np.isneginf(x).all():
        return 0, beg, 0.0, -np.inf, 0.0, no_speech  # as a scan over a row of -inf
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = x - np.logaddexp.reduce(x)
        ts_mass = np.logaddexp.reduce(lp[beg:])
    if ts_mass > lp[:beg].max():
        lp[:beg] = -np.inf
    best = int(np.argmax(lp))
    ts_p = np.exp(lp[beg:])
    tid = beg + int(np.argmax(ts_p))
    pt = ts_p.max() / (ts_p.sum() + 1e-10)
    if best >= beg:
        tid, pt = best, np.exp(lp[best])
    return best, tid, float(np.exp(lp[best])), float(lp[best]), float(pt), no_speech


def cases(n: int, eot: int, space: int, rng: np.random.Generator) -> tuple[np.ndarray, list[_native.GreedyMask], list[str]]:
    """Random rows shaped like a decoder's logits, each under one of Whisper's rules."""
    beg = n - N_TIMESTAMPS
    rows, masks, names = [], [], []

    def add(name: str, m: _native.GreedyMask, tweak=None) -> None:  # type: ignore[no-untyped-def]
        row = rng.normal(0.0, 3.0, n).astype(np.float32)
        if tweak is not None:
            tweak(row)
        rows.append(row)
        masks.append(m)
        names.append(name)

    def boost(ids: list[int], value: float):  # type: ignore[no-untyped-def]
        def f(row: np.ndarray) -> None:
            row[ids] = value
        return f

    add("plain", mask(0, beg, n))
    add("specials never win", mask(0, beg, n), boost([eot + 1, eot + 3, beg - 2], 40.0))
    add("eot may end the text", mask(0, beg, n), boost([eot], 40.0))
    add("first token: no eot, no space", mask(_native.GREEDY_INITIAL, beg, beg + 51), boost([eot, space], 40.0))
    add("first token: no late timestamp", mask(_native.GREEDY_INITIAL, beg, beg + 51), boost([beg + 300], 60.0))
    add("first token: timestamps win", mask(_native.GREEDY_INITIAL, beg, beg + 51), boost(list(range(beg, beg + 51)), 12.0))
    add("after a lone timestamp: no text", mask(_native.GREEDY_TEXT_OFF, beg + 40, n), boost([17], 50.0))
    add("after a timestamp pair: no timestamp", mask(0, beg, beg), boost([beg + 500], 50.0))
    add("no timestamp before the last one", mask(0, beg + 700, n), boost([beg + 600], 50.0))
    # each timestamp below the best text token (~13), all of them together above it
    add("timestamps together beat the best text", mask(0, beg + 10, n),
        boost(list(range(beg + 10, n)), 8.0))
    add("a tie goes to the lower id", mask(0, beg, n), boost([300, 9000], 30.0))
    add("a timestamp tie goes to the lower one", mask(_native.GREEDY_TEXT_OFF, beg, n), boost([beg + 7, beg + 9], 30.0))
    add("no-speech probability", mask(_native.GREEDY_RAW | _native.GREEDY_INITIAL, beg, beg + 51),
        boost([beg - 2], 14.0))
    add("forced text token", mask(0, beg, n, forced=1234))
    add("forced timestamp", mask(_native.GREEDY_INITIAL, beg, beg + 51, forced=beg))
    add("forced eot after a lone timestamp", mask(_native.GREEDY_TEXT_OFF, beg + 1500, n, forced=eot))
    add("forced timestamp suppressed: nothing allowed", mask(0, beg + 100, n, forced=beg + 5))
    return np.stack(rows), masks, names


@pytest.fixture(scope="module")
def decoder(model: WhisperModel) -> Iterator[BatchDecoder]:
    d = BatchDecoder(model, 1, 2, max_beams=1, encode_batch=1)
    yield d
    d.close()


def check_against_rules(picks: list[tuple], rows: np.ndarray, masks: list, names: list[str], eot: int,
                        space: int, nosp: int) -> None:
    for pick, row, m, name in zip(picks, rows, masks, names):
        want = whisper_rules(row, m, eot, space, nosp)
        assert pick[:2] == tuple(want[:2]), name
        assert pick[2:] == pytest.approx(want[2:], rel=1e-5, abs=1e-6), name


def test_the_summary_takes_the_token_whispers_rules_take(model: WhisperModel, decoder: BatchDecoder) -> None:
    n, eot = model.native.n_vocab, model.native.token_eot
    (space,) = model.native.tokenize(" ")
    nosp = n - N_TIMESTAMPS - 2  # <|nospeech|> sits right before <|notimestamps|> and the first timestamp
    rows, masks, names = cases(n, eot, space, np.random.default_rng(7))
    picks = decoder._decoder.greedy_picks(rows, masks, False)
    check_against_rules(picks, rows, masks, names, eot, space, nosp)
    by_name = dict(zip(names, picks))
    beg = n - N_TIMESTAMPS
    assert by_name["specials never win"][0] < eot
    assert by_name["eot may end the text"][0] == eot
    assert by_name["first token: no eot, no space"][0] not in (eot, space)
    assert by_name["first token: no late timestamp"][0] != beg + 300
    assert by_name["after a lone timestamp: no text"][0] >= beg + 40
    assert by_name["after a timestamp pair: no timestamp"][0] < eot
    assert by_name["timestamps together beat the best text"][0] >= beg
    assert 0.05 < by_name["no-speech probability"][5] < 0.95
    assert by_name["a tie goes to the lower id"][0] == 300
    assert by_name["a timestamp tie goes to the lower one"][0] == beg + 7
    assert by_name["forced timestamp suppressed: nothing allowed"][:4] == (0, beg, 0.0, -np.inf)
    assert not decoder.gpu_sampling  # a CPU decoder has no kernel to turn on


def spec(window_id: int, samples: np.ndarray, beams: int = 1, fallback: bool = False) -> _native.WindowSpec:
    w = _native.WindowSpec()
    w.id, w.samples, w.language, w.beam_size = window_id, np.ascontiguousarray(samples), "en", beams
    w.temperature_increment = 0.2 if fallback else 0.0
    # No attempt is good enough: every temperature is tried, the last one's text is kept.
    w.logprob_threshold = 1.0 if fallback else -1.0
    return w


def mixed_batch(jfk: np.ndarray, beams: int = 5, more: bool = False) -> list[_native.WindowSpec]:
    """Greedy windows beside windows that need whole rows of logits in the same steps:
    beam search, and a greedy window falling back to sampling at temperatures (best of 5);
    `more`: also a full 30 s window and a clip cut mid-sentence."""
    windows = [spec(1, jfk), spec(2, jfk, beams), spec(5, jfk[: 4 * SR], fallback=True)]
    if more:
        windows += [spec(3, np.tile(jfk, 3)[: 30 * SR]), spec(4, jfk[5 * SR:])]
    return windows


def transcribe(dec: BatchDecoder, windows: list[_native.WindowSpec]) -> dict[int, tuple]:
    """Per window: text tokens, segments as a user gets them (seconds, text), no-speech
    probability, fallbacks."""
    native = dec._decoder
    native.add(windows, None)
    out: dict[int, tuple] = {}
    while native.active():
        for r in native.step(None):
            segments = [(s.t0 / 100, s.t1 / 100, s.text.strip()) for s in r.segments if s.text.strip()]
            out[r.id] = (list(r.text_tokens), segments, r.no_speech_prob, r.n_fallbacks)
    return out


def test_greedy_windows_beside_beam_and_fallback_windows_give_whisper_cpps_segments(
    model: WhisperModel, jfk: np.ndarray
) -> None:
    dec = BatchDecoder(model, 3, 2, max_beams=5, encode_batch=3)
    try:
        got = transcribe(dec, mixed_batch(jfk))
    finally:
        dec.close()
    for i, beams in ((1, 1), (2, 5)):
        options = TranscribeOptions(beam_size=beams, temperature_increment=0.0, threads=2)
        with model.new_state() as state:
            alone = state.transcribe(jfk, options)
        assert got[i][1] == [(s.start, s.end, s.text) for s in alone.segments], i
        assert normalise(" ".join(t for _, _, t in got[i][1])) == normalise(EXPECTED_JFK)
    assert 0.0 <= got[1][2] < 0.1  # speech: the no-speech probability comes from the summary
    assert got[5][3] == 5 and got[5][1], got[5]  # every temperature tried, the last one's text kept


def test_a_detected_language_then_greedy_tokens_give_whisper_cpps_segments(base_model: Path, jfk: np.ndarray) -> None:
    """The multilingual model: the language is found from the first row's whole logits,
    then the prompt (with its language token) and every token come from summaries."""
    m = WhisperModel(base_model, use_gpu=False)
    try:
        w = spec(1, jfk)
        w.language = ""
        dec = BatchDecoder(m, 1, 2, max_beams=1, encode_batch=1)
        try:
            got = transcribe(dec, [w])[1]
        finally:
            dec.close()
        with m.new_state() as state:
            alone = state.transcribe(jfk, TranscribeOptions(beam_size=1, temperature_increment=0.0, threads=2))
    finally:
        m.close()
    assert alone.language == "en"
    assert got[1] == [(s.start, s.end, s.text) for s in alone.segments]


def test_the_gpu_sampling_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in (("", True), ("1", True), (" ON ", True), ("0", False), ("off", False)):
        monkeypatch.setenv("WHISPERD_GPU_SAMPLING", raw)
        assert cuda_env.gpu_sampling_choice() is expected
    monkeypatch.setenv("WHISPERD_GPU_SAMPLING", "fast")
    with pytest.raises(ValueError, match="WHISPERD_GPU_SAMPLING must be 0 or 1, got 'fast'"):
        cuda_env.gpu_sampling_choice()


@pytest.fixture(scope="module")
def gpu_model(use_gpu: bool, tiny_en_model: Path) -> Iterator[WhisperModel]:
    if not use_gpu:
        pytest.skip("needs a GPU (WHISPERD_TEST_GPU=1)")
    m = WhisperModel(tiny_en_model, use_gpu=True)
    yield m
    m.close()


def test_the_cuda_kernel_takes_the_cpus_tokens(gpu_model: WhisperModel) -> None:
    dec = BatchDecoder(gpu_model, 1, 2, max_beams=1, encode_batch=1, gpu_sampling=True)
    try:
        assert dec.gpu_sampling
        n, eot = gpu_model.native.n_vocab, gpu_model.native.token_eot
        (space,) = gpu_model.native.tokenize(" ")
        rows, masks, names = cases(n, eot, space, np.random.default_rng(11))
        cpu = dec._decoder.greedy_picks(rows, masks, False)
        gpu = dec._decoder.greedy_picks(rows, masks, True)
    finally:
        dec.close()
    for c, g, name in zip(cpu, gpu, names):
        assert c[:2] == g[:2], name
        assert g[2:] == pytest.approx(c[2:], rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("beams", [1, 5])
def test_transcripts_are_the_same_with_the_kernel_and_without(gpu_model: WhisperModel, jfk: np.ndarray, beams: int) -> None:
    """Real logits: every window's tokens, segments, no-speech probability and fallbacks with
    greedy rows summarised on the GPU equal those with every row downloaded (beams and the
    fallback's sampled candidates: windows that read whole rows in the same steps)."""
    got = {}
    for on in (True, False):
        dec = BatchDecoder(gpu_model, 5, 2, max_beams=5, encode_batch=5, gpu_sampling=on)
        try:
            assert dec.gpu_sampling is on
            got[on] = transcribe(dec, mixed_batch(jfk, beams, more=True))
        finally:
            dec.close()
    assert sorted(got[True]) == [1, 2, 3, 4, 5]
    for i in got[False]:
        assert got[True][i][:2] == got[False][i][:2], i
        assert got[True][i][2] == pytest.approx(got[False][i][2], rel=1e-4, abs=1e-6)
        assert got[True][i][3] == got[False][i][3], i
