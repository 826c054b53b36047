"""Audio decoding on real speech and on inputs that are not audio."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from whisperd.audio import AudioDecodeError, AudioInfo, DecodeCancelled, decode_audio, probe_audio, write_wav

JFK_SECS = 11.0
SR = 16000


def _check_whisper_ready(samples: np.ndarray) -> None:
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert np.all(np.isfinite(samples))
    assert -1.0 <= samples.min() and samples.max() <= 1.0


def test_jfk_wav(jfk_wav: Path) -> None:
    samples = decode_audio(jfk_wav)
    _check_whisper_ready(samples)
    assert samples.size / SR == pytest.approx(JFK_SECS, abs=0.05)
    assert np.abs(samples).max() > 0.3  # real speech, not silence


def test_jfk_mp3_matches_wav(jfk_wav: Path, jfk_mp3: Path) -> None:
    wav = decode_audio(jfk_wav)
    mp3 = decode_audio(jfk_mp3)
    _check_whisper_ready(mp3)
    assert mp3.size / SR == pytest.approx(JFK_SECS, abs=0.1)

    # MP3 may be shifted by encoder delay: align on the first 3 s by cross-correlation.
    window = 3 * SR
    a, b = wav[:window].astype(np.float64), mp3[:window].astype(np.float64)
    corr = np.fft.irfft(np.fft.rfft(a, 2 * window) * np.conj(np.fft.rfft(b, 2 * window)))
    lag = int(np.argmax(corr))
    lag = lag - 2 * window if lag > window else lag  # wav[n] ~ mp3[n - lag]
    assert abs(lag) < 0.1 * SR
    if lag >= 0:
        x, y = wav[lag:], mp3
    else:
        x, y = wav, mp3[-lag:]
    n = min(x.size, y.size)
    assert np.corrcoef(x[:n], y[:n])[0, 1] > 0.9


def test_binary_file_object(jfk_mp3: Path) -> None:
    from_path = decode_audio(jfk_mp3)
    from_stream = decode_audio(io.BytesIO(jfk_mp3.read_bytes()))
    np.testing.assert_array_equal(from_stream, from_path)


def test_stereo_44k_is_downmixed_and_resampled(tmp_path: Path) -> None:
    rate, secs = 44100, 2.5
    t = np.arange(int(rate * secs)) / rate
    tone = 0.8 * np.sin(2 * np.pi * 440 * t)
    # Same tone in both channels: an averaging down-mix keeps its level (no clipping).
    path = write_wav(tmp_path / "stereo.wav", np.stack([tone, tone], axis=1), rate)
    samples = decode_audio(path)
    _check_whisper_ready(samples)
    assert samples.size == pytest.approx(secs * SR, abs=SR * 0.01)
    assert np.abs(samples).max() == pytest.approx(0.8, abs=0.02)
    # Still a 440 Hz tone after resampling.
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.fft.rfftfreq(samples.size, 1 / SR)[np.argmax(spectrum)] == pytest.approx(440, abs=2)

    # One silent channel: the mix is half as loud, not a copy of the left channel.
    path = write_wav(tmp_path / "left.wav", np.stack([tone, np.zeros_like(tone)], axis=1), rate)
    assert np.abs(decode_audio(path)).max() == pytest.approx(0.4, abs=0.02)


def test_compressed_stereo_made_with_pyav(tmp_path: Path) -> None:
    # An Ogg/Opus file at 48 kHz stereo, written by FFmpeg's own encoder.
    rate, secs = 48000, 1.5
    t = np.arange(int(rate * secs)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    path = tmp_path / "tone.ogg"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(
            "libopus" if "libopus" in av.codecs_available else "opus", rate=rate
        )
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    info = probe_audio(path)
    assert info.format == "ogg" and info.codec == "opus" and info.channels == 2
    assert info.duration_secs == pytest.approx(secs, abs=0.05)
    samples = decode_audio(path)
    assert samples.size / SR == pytest.approx(secs, abs=0.05)


def test_probe_audio(jfk_wav: Path, jfk_mp3: Path) -> None:
    info = probe_audio(jfk_wav)
    assert info == AudioInfo(
        duration_secs=JFK_SECS, codec="pcm_s16le", sample_rate=SR, channels=1, format="wav"
    )
    info = probe_audio(jfk_mp3)
    assert info.duration_secs == pytest.approx(JFK_SECS, abs=0.05)
    assert (info.codec, info.format, info.channels) == ("mp3", "mp3", 1)


def test_write_wav_round_trip(tmp_path: Path) -> None:
    samples = np.linspace(-1, 1, SR, dtype=np.float32)
    back = decode_audio(write_wav(tmp_path / "ramp.wav", samples))
    # 16-bit quantisation (write scales by 32767, FFmpeg reads back dividing by 32768).
    np.testing.assert_allclose(back, samples, atol=2 / 32768)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("noise.dat", np.random.default_rng(0).bytes(64_000), "not a recognised audio format"),
        ("noise.mp3", np.random.default_rng(1).bytes(64_000), "not a recognised audio format"),
        (
            "notes.txt",
            b"Meeting notes\nThis is a text file, not audio.\n" * 50,
            "not a recognised audio format.*text",
        ),
        ("noise.bin", np.random.default_rng(3).bytes(64_000), "not a recognised audio format"),
        ("empty.wav", b"", "empty audio"),
    ],
)
def test_not_audio_is_rejected_with_a_reason(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    for check in (decode_audio, probe_audio):
        with pytest.raises(AudioDecodeError, match=message) as caught:
            check(path)
        # The reason is FFmpeg's, in words, never a bare PyAV exception.
        assert not isinstance(caught.value, av.error.FFmpegError)


def test_random_bytes_from_a_stream() -> None:
    with pytest.raises(AudioDecodeError, match="not a recognised audio format: invalid data"):
        decode_audio(io.BytesIO(np.random.default_rng(2).bytes(64_000)))


def test_audio_stream_without_samples(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="empty audio"):
        decode_audio(path)
    with pytest.raises(AudioDecodeError, match="empty audio"):
        probe_audio(path)


def test_video_without_sound_has_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "picture.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        probe_audio(path)


def test_missing_file_is_not_an_audio_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_audio(tmp_path / "nowhere.wav")


def _mp2(rate: int, layout: str, secs: float) -> bytes:
    """An MPEG audio layer 2 stream of a 300 Hz tone, made by FFmpeg's built-in encoder."""
    buffer = io.BytesIO()
    channels = 2 if layout == "stereo" else 1
    t = np.arange(int(rate * secs)) / rate
    tone = np.round(0.5 * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
    with av.open(buffer, "w", format="mp2") as out:
        stream = out.add_stream("mp2", rate=rate)
        stream.layout = layout
        # s16 is packed: channels interleaved in one plane.
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, channels)[np.newaxis], format="s16", layout=layout
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


def test_stream_that_changes_rate_and_layout_mid_way(tmp_path: Path) -> None:
    # Two MPEG audio streams back to back, as concatenated broadcasts are: 44.1 kHz stereo,
    # then 22.05 kHz mono. One resampler cannot take both; decoding must still cover both.
    path = tmp_path / "chained.mp2"
    path.write_bytes(_mp2(44100, "stereo", 1.0) + _mp2(22050, "mono", 1.0))
    samples = decode_audio(path)
    _check_whisper_ready(samples)
    assert samples.size / SR == pytest.approx(2.0, abs=0.1)
    # The tone is there in both halves.
    for half in (samples[: SR // 2], samples[-SR // 2 :]):
        assert np.abs(half).max() == pytest.approx(0.5, abs=0.1)


def test_plain_wav_read_without_ffmpeg_matches_ffmpeg(jfk_wav: Path) -> None:
    direct = decode_audio(jfk_wav)  # 16 kHz mono s16: read with the stdlib
    with open(jfk_wav, "rb") as f:
        through_ffmpeg = decode_audio(f)  # a file object always goes through PyAV
    assert direct.dtype == np.float32
    assert direct.shape == through_ffmpeg.shape
    np.testing.assert_allclose(direct, through_ffmpeg, atol=1e-6)


def test_decoding_stops_when_asked(jfk_mp3: Path) -> None:
    """A cancelled job must not sit out the decoding of hours of compressed audio."""
    chunks_seen = 0

    def stop_after_two() -> bool:
        nonlocal chunks_seen
        chunks_seen += 1
        return chunks_seen > 2

    with pytest.raises(DecodeCancelled):
        decode_audio(jfk_mp3, should_stop=stop_after_two)
    assert chunks_seen == 3
    assert len(decode_audio(jfk_mp3, should_stop=lambda: False)) > 10 * 16000


def test_decoding_stops_at_the_maximum_length_whatever_the_header_says(jfk_mp3: Path, tmp_path: Path) -> None:
    """MAX_AUDIO_SECS bounds the decoded buffer even for a file the probe never saw."""
    from whisperd import audio_limits

    try:
        audio_limits.configure(audio_limits.AudioLimits(max_secs=5))
        with pytest.raises(AudioDecodeError, match="MAX_AUDIO_SECS"):
            decode_audio(jfk_mp3)
        with pytest.raises(AudioDecodeError, match="MAX_AUDIO_SECS"):
            probe_audio(jfk_mp3)
        one_hz = tmp_path / "one_hz.wav"
        write_wav(one_hz, np.zeros(64000, dtype=np.int16), sample_rate=1)
        with pytest.raises(AudioDecodeError, match="sample rate 1 Hz"):
            decode_audio(one_hz)
    finally:
        audio_limits.configure(audio_limits.AudioLimits())
