"""Audio in: decode anything FFmpeg reads into the 16 kHz mono float32 samples Whisper wants.

Decoding goes through PyAV (FFmpeg's libraries in-process, no `ffmpeg` binary needed) and
streams frame by frame through one resampler into a single growing buffer, so a long
upload is never held in memory twice. Every failure becomes an `AudioDecodeError` whose
message a client can act on; PyAV's own exceptions never leak out of this module.
"""

from __future__ import annotations

import logging
import math
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from whisperd import audio_limits
from whisperd.audio_limits import AudioLimits

try:
    import av
    import av.error
except ImportError:  # a host with no FFmpeg libraries still reads plain 16 kHz WAV
    av = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = 16000

# Buffer size when the container does not say how long it is (a pipe, a raw stream):
# 30 s at 16 kHz, doubled whenever it fills.
_DEFAULT_CAPACITY_SECS = 30.0

# decode_chunks' piece size: a few minutes is 8-20 MB of float32, and cuts the chunks
# in few enough places for the window planner.
DEFAULT_CHUNK_SECS = 120.0

# How much audio probe_audio decodes to prove the stream is really decodable.
_PROBE_DECODE_SECS = 1.0

# Corrupt packets are skipped as the ffmpeg CLI does, but a file that is mostly garbage
# is rejected rather than silently turned into a few scraps of noise; this many rejected
# packets before any good one stops the scan early.
_MAX_BAD_PACKETS_BEFORE_AUDIO = 20

# FFmpeg's "text art" demuxers accept any bytes whose file name ends .txt, .bin, .nfo...
# and render them as video; for an upload that means "this is not audio", not "no sound".
_TEXT_ART_FORMATS = frozenset({"tty", "bin", "adf", "idf", "xbin"})

Source = str | Path | BinaryIO


class AudioDecodeError(ValueError):
    """The input is not audio we can decode; the message says why, for the end user."""


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What probe_audio learnt about a file, before it is transcribed."""

    duration_secs: float
    codec: str  # FFmpeg's codec name, e.g. "mp3", "pcm_s16le", "opus"
    sample_rate: int  # of the source, before resampling
    channels: int
    format: str  # FFmpeg's container name, e.g. "wav", "mp3", "mov,mp4,m4a,3gp,3g2,mj2"
    # What a user should know about the file, e.g. that it ends before its header says.
    warnings: tuple[str, ...] = ()


class DecodeCancelled(Exception):
    """`should_stop` said stop while the audio was being decoded."""


def decode_audio(
    source: Source,
    sample_rate: int = WHISPER_SAMPLE_RATE,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Decode the first audio stream of `source` to mono float32 at `sample_rate`.

    `source` is a path or a binary file object (an upload being spooled, a BytesIO).
    Returns a 1-D float32 array of samples, nominally within [-1, 1].
    Raises AudioDecodeError when there is no audio stream, the data is not a format
    FFmpeg recognises, or the stream decodes to no samples at all; DecodeCancelled when
    `should_stop()` turns true between decoded chunks (hours of compressed audio take
    seconds to decode, and a cancelled job must stop within one).

    The process's AudioLimits (audio_limits.current()) bound the input: an implausible
    rate or channel count is refused, and decoding stops at MAX_AUDIO_SECS, so no header
    can make the buffer larger than that.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    limits = audio_limits.current()
    plain = _read_plain_wav(source, sample_rate)
    if plain is not None:
        if (problem := limits.too_long(plain.size / sample_rate)) is not None:
            raise AudioDecodeError(problem)
        return plain
    with _open(source) as container:
        stream = _audio_stream(container)
        _check_format(stream, limits)
        most = math.ceil(limits.max_secs * sample_rate) if limits.max_secs else 0
        buffer = _SampleBuffer(_initial_capacity(container, stream, sample_rate, most))
        for chunk in _resampled_chunks(container, stream, sample_rate):
            if should_stop is not None and should_stop():
                raise DecodeCancelled("stopped while decoding the audio")
            if most and buffer.size + chunk.size > most + sample_rate:
                # Past the maximum (plus resampler slack): a header lied to the probe.
                raise AudioDecodeError(limits.too_long(most / sample_rate + 1) or "too long")
            buffer.append(chunk)
    samples = buffer.finish()
    if samples.size == 0:
        raise AudioDecodeError("empty audio: the file has an audio stream but it holds no samples")
    return samples


def decode_chunks(
    source: Source,
    sample_rate: int = WHISPER_SAMPLE_RATE,
    *,
    chunk_secs: float = DEFAULT_CHUNK_SECS,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[np.ndarray]:
    """decode_audio in pieces: mono float32 arrays of `chunk_secs` (the last one shorter).

    Memory stays at about one chunk whatever the audio's length, so an hour-long job
    does not hold hundreds of megabytes of samples. The same limits and errors as
    decode_audio, raised where the decode reaches them: AudioDecodeError (also for a
    file that decodes to nothing), DecodeCancelled between resampled frames once
    `should_stop()` is true, FileNotFoundError at the first chunk.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    if chunk_secs <= 0:
        raise ValueError(f"chunk_secs must be positive, got {chunk_secs}")
    limits = audio_limits.current()
    size = max(1, int(chunk_secs * sample_rate))
    plain = _plain_wav_chunks(source, sample_rate, size, limits)
    if plain is not None:
        for chunk in plain:
            if should_stop is not None and should_stop():
                raise DecodeCancelled("stopped while decoding the audio")
            yield chunk
        return
    most = math.ceil(limits.max_secs * sample_rate) if limits.max_secs else 0
    buffer, filled, total = np.empty(size, dtype=np.float32), 0, 0
    with _open(source) as container:
        stream = _audio_stream(container)
        _check_format(stream, limits)
        for piece in _resampled_chunks(container, stream, sample_rate):
            if should_stop is not None and should_stop():
                raise DecodeCancelled("stopped while decoding the audio")
            if most and total + piece.size > most + sample_rate:
                raise AudioDecodeError(limits.too_long(most / sample_rate + 1) or "too long")
            total += piece.size
            while piece.size:
                take = min(size - filled, piece.size)
                buffer[filled : filled + take] = piece[:take]
                filled, piece = filled + take, piece[take:]
                if filled == size:
                    yield buffer
                    buffer, filled = np.empty(size, dtype=np.float32), 0
    if total == 0:
        raise AudioDecodeError("empty audio: the file has an audio stream but it holds no samples")
    if filled:
        yield buffer[:filled].copy()


def probe_audio(path: str | Path, limits: AudioLimits | None = None) -> AudioInfo:
    """Check that `path` holds decodable audio within `limits` and describe it.

    Meant for rejecting a bad upload before a job is created: it opens the container,
    checks the stream's rate and channels, decodes its first second, then walks the rest
    of the stream's packets without decoding them (fast: milliseconds per hour of mp3)
    to measure how long it really is. The duration returned is that measure, not the
    header's claim; a file that ends well before its header says gets a warning, and
    one that holds (almost) nothing, or more than the maximum, is refused.
    """
    limits = limits or audio_limits.current()
    if av is None:
        samples = _read_plain_wav(path, WHISPER_SAMPLE_RATE)
        if samples is not None:
            return AudioInfo(len(samples) / WHISPER_SAMPLE_RATE, "pcm_s16le", WHISPER_SAMPLE_RATE, 1, "wav")
    with _open(path) as container:
        stream = _audio_stream(container)
        _check_format(stream, limits)
        ctx = stream.codec_context
        first_rate, first_channels, decoded = 0, 0, 0
        for frame in _frames(container, stream):
            if not first_rate:
                first_rate, first_channels = frame.sample_rate, frame.layout.nb_channels
                if (problem := limits.format_problem(first_rate, first_channels)) is not None:
                    raise AudioDecodeError(problem)
            decoded += frame.samples
            if decoded >= first_rate * _PROBE_DECODE_SECS:
                break
        if decoded == 0:
            raise AudioDecodeError(
                "empty audio: the file has an audio stream but it holds no samples"
            )
        declared = _declared_duration(container, stream)
        duration = float(Fraction(decoded, first_rate) + _measure_rest(container, stream, limits, decoded / first_rate))
        for problem in (limits.too_long(duration), limits.too_short(duration, declared)):
            if problem is not None:
                raise AudioDecodeError(problem)
        warning = limits.early_end_warning(duration, declared)
        return AudioInfo(
            duration_secs=duration,
            codec=ctx.codec.canonical_name if ctx.codec else ctx.name,
            sample_rate=first_rate or ctx.sample_rate,
            channels=first_channels or ctx.channels,
            format=container.format.name,
            warnings=(warning,) if warning else (),
        )


def _measure_rest(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    limits: AudioLimits,
    so_far: float,
) -> Fraction:
    """Seconds of audio in the packets not yet read: their durations where the demuxer
    knows them, else the samples they decode to. Stops past limits.max_secs."""
    time_base = Fraction(stream.time_base) if stream.time_base else None
    # Exact sums (ticks and samples are integers), so an 11 s WAV measures 11.0, not
    # 11.000000000000007.
    ticks = 0
    samples = Fraction(0)
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.duration and time_base is not None:
                ticks += packet.duration
            else:
                try:
                    samples += sum(
                        (Fraction(f.samples, f.sample_rate) for f in packet.decode() if f.sample_rate),
                        Fraction(0),
                    )
                except av.error.FFmpegError:
                    continue  # a damaged packet holds no audio, as in decoding
            if limits.max_secs and so_far + float(ticks * (time_base or 0) + samples) > limits.max_secs:
                break
    except av.error.FFmpegError as exc:
        # Damage after some audio: what came before it is what the worker will decode.
        log.info("audio stream ends early after a read error: %s", _reason(exc))
    return ticks * (time_base or 0) + samples


def _check_format(stream: av.audio.stream.AudioStream, limits: AudioLimits) -> None:
    ctx = stream.codec_context
    # Zero = not known until the first frame decodes (mp3 and others); checked then.
    problem = limits.format_problem(ctx.sample_rate or limits.min_rate, ctx.channels or 1)
    if problem is not None:
        raise AudioDecodeError(problem)


def write_wav(
    path: str | Path, samples: np.ndarray, sample_rate: int = WHISPER_SAMPLE_RATE
) -> Path:
    """Write samples as a 16-bit PCM WAV file (for tests and benchmarks).

    `samples` is 1-D for mono or 2-D shaped (frames, channels); floats are taken to be in
    [-1, 1] and clipped, int16 is written as is.
    """
    data = np.asarray(samples)
    if data.ndim == 1:
        data = data[:, np.newaxis]
    if data.ndim != 2 or data.shape[1] < 1:
        raise ValueError(
            f"samples must be shaped (frames,) or (frames, channels), got {data.shape}"
        )
    if data.dtype != np.int16:
        if not np.issubdtype(data.dtype, np.floating):
            raise ValueError(f"samples must be float in [-1, 1] or int16, got {data.dtype}")
        data = np.round(np.clip(data, -1.0, 1.0) * 32767.0).astype(np.int16)
    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(data.shape[1])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(np.ascontiguousarray(data).astype("<i2", copy=False).tobytes())
    return path


# --- internals ------------------------------------------------------------------------


def _plain_wav_frames(source: Source, sample_rate: int) -> int | None:
    """Frames of a mono 16-bit PCM WAV file already at `sample_rate`, else None.

    Such a file needs neither decoding nor resampling, so it is read without FFmpeg; that
    also lets a host without PyAV (the GPU benchmark host) transcribe WAV files.
    """
    if not isinstance(source, (str, Path)) or Path(source).suffix.lower() != ".wav":
        return None
    try:
        with wave.open(str(source), "rb") as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, sample_rate):
                return None
            return wav.getnframes() or None
    except (wave.Error, EOFError, OSError):
        return None  # let FFmpeg judge it and explain


def _pcm16(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _read_plain_wav(source: Source, sample_rate: int) -> np.ndarray | None:
    """The samples of a file _plain_wav_frames accepts, else None."""
    if _plain_wav_frames(source, sample_rate) is None:
        return None
    try:
        with wave.open(str(source), "rb") as wav:
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, OSError):
        return None  # let FFmpeg judge it and explain
    return _pcm16(raw) if raw else None


def _plain_wav_chunks(
    source: Source, sample_rate: int, size: int, limits: AudioLimits
) -> Iterator[np.ndarray] | None:
    """_read_plain_wav in chunks of `size` samples: None when FFmpeg must read it."""
    frames = _plain_wav_frames(source, sample_rate)
    if frames is None:
        return None
    if (problem := limits.too_long(frames / sample_rate)) is not None:
        raise AudioDecodeError(problem)

    def chunks() -> Iterator[np.ndarray]:
        with wave.open(str(source), "rb") as wav:
            while raw := wav.readframes(size):
                yield _pcm16(raw)

    return chunks()


@contextmanager
def _open(source: Source) -> Iterator[av.container.InputContainer]:
    """Open an input container, turning FFmpeg's refusal into an AudioDecodeError."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        # A missing file is the caller's bug, not bad audio: keep it a FileNotFoundError.
        if not path.exists():
            raise FileNotFoundError(f"audio file not found: {path}")
        if path.is_file() and path.stat().st_size == 0:
            raise AudioDecodeError(f"empty audio: {path.name} is an empty file (0 bytes)")
        target: str | BinaryIO = str(path)
    else:
        target = source
    if av is None:
        raise AudioDecodeError(
            "PyAV is not installed, so only 16 kHz mono 16-bit WAV can be read: "
            "`pip install av` for every other format"
        )
    try:
        container = av.open(target, mode="r")
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"not a recognised audio format: {_reason(exc)}") from exc
    try:
        yield container
    finally:
        container.close()


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    if container.format.name in _TEXT_ART_FORMATS:
        raise AudioDecodeError(
            f"not a recognised audio format: FFmpeg could only read it as text "
            f"({container.format.long_name}), going by its file name; send an audio file"
        )
    if not container.streams.audio:
        kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
        raise AudioDecodeError(
            f"no audio stream: FFmpeg read it as {container.format.name!r} "
            f"with stream types {', '.join(kinds)}; send an audio or video file with sound"
        )
    stream = container.streams.audio[0]
    if stream.codec_context is None or stream.codec_context.codec is None:
        # FFmpeg knows the container but has no decoder for what is inside (a WAV with
        # 0 or 33 bits per sample, an unknown format tag).
        name = stream.codec_context.name if stream.codec_context is not None else ""
        raise AudioDecodeError(
            f"unsupported audio encoding: FFmpeg has no decoder for this "
            f"{container.format.name} stream ({name or 'unknown codec'}); "
            "send PCM, MP3, AAC, FLAC, Opus, Vorbis or another common codec"
        )
    # Let FFmpeg use several threads for codecs that can (no effect on simple PCM).
    stream.codec_context.thread_type = "AUTO"
    return stream


def _frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decoded frames of `stream`, skipping corrupt packets the way the ffmpeg CLI does."""
    codec = stream.codec_context.codec.canonical_name if stream.codec_context.codec else "audio"
    good_packets = bad_packets = 0
    first_error: av.error.FFmpegError | None = None
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                bad_packets += 1
                first_error = first_error or exc
                if not good_packets and bad_packets >= _MAX_BAD_PACKETS_BEFORE_AUDIO:
                    raise AudioDecodeError(
                        f"not a recognised audio format: the {codec} decoder rejected the "
                        f"first {bad_packets} packets ({_reason(exc)})"
                    ) from exc
                continue
            if frames:
                good_packets += 1
            yield from frames
    except av.error.FFmpegError as exc:
        if not good_packets:
            raise AudioDecodeError(f"not a recognised audio format: {_reason(exc)}") from exc
        # Damage after some audio (a truncated upload): keep what decoded, as ffmpeg does.
        log.warning(
            "audio stream ends early after a read error, keeping what decoded: %s", _reason(exc)
        )
    if bad_packets > good_packets:
        # Arbitrary bytes named .mp3 yield a few chance "frames" of noise among many
        # rejected packets; real files with a damaged patch are overwhelmingly good.
        raise AudioDecodeError(
            f"not a recognised audio format: the {codec} decoder rejected {bad_packets} of "
            f"{bad_packets + good_packets} packets ({_reason(first_error)})"
        ) from first_error
    if bad_packets:
        log.warning(
            "skipped %d undecodable audio packets (first: %s)", bad_packets, _reason(first_error)
        )


def _resampled_chunks(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, sample_rate: int
) -> Iterator[np.ndarray]:
    """Mono float32 chunks at `sample_rate`, one per resampler output frame."""
    resampler: av.AudioResampler | None = None
    source_shape: tuple[str, str, int] | None = None
    for frame in _frames(container, stream):
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if resampler is None or shape != source_shape:
            # A resampler is fixed to its first frame's layout and rate; streams that change
            # mid-way (chained Ogg, some broadcasts) get a fresh one after flushing the old.
            if resampler is not None:
                yield from _to_arrays(resampler.resample(None))
            resampler = _mono_resampler(sample_rate)
            source_shape = shape
        yield from _to_arrays(resampler.resample(frame))
    if resampler is not None:
        yield from _to_arrays(resampler.resample(None))


def _mono_resampler(sample_rate: int) -> av.AudioResampler:
    # rematrix_maxval=1 makes swresample scale the down-mix so it cannot exceed full scale
    # (stereo becomes (L+R)/2). Without it, float output keeps the unnormalised 0.707
    # weights and loud stereo clips; this matches `ffmpeg -ac 1` to s16, which Whisper's
    # reference code uses.
    return av.AudioResampler(
        format="flt", layout="mono", rate=sample_rate, options={"rematrix_maxval": "1.0"}
    )


def _to_arrays(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        # Packed float mono: one plane, shape (1, samples).
        yield frame.to_ndarray().reshape(-1)


class _SampleBuffer:
    """One float32 array that grows in place, so decoded audio exists in memory once."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 1), dtype=np.float32)
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def append(self, chunk: np.ndarray) -> None:
        end = self._size + chunk.size
        if end > self._data.size:
            # In-place realloc (no second copy held by us); nothing else references the
            # array, so skipping numpy's reference check is safe.
            self._data.resize(max(end, self._data.size * 2), refcheck=False)
        self._data[self._size : end] = chunk
        self._size = end

    def finish(self) -> np.ndarray:
        """The samples, trimmed to length (shrinking in place, not copying)."""
        self._data.resize(self._size, refcheck=False)
        return self._data


def _declared_duration(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> float | None:
    """Duration in seconds from the stream or container headers, if they give one."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * Fraction(stream.time_base))
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _initial_capacity(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    sample_rate: int,
    most: int = 0,
) -> int:
    duration = _declared_duration(container, stream)
    if duration is None:
        return int(_DEFAULT_CAPACITY_SECS * sample_rate)
    # A little headroom: headers round, and resampler flushes add a few samples. A header
    # can lie, so never more than the maximum length allows; the buffer grows if needed.
    wanted = math.ceil(duration * sample_rate * 1.01) + sample_rate
    return min(wanted, most + sample_rate) if most else wanted


def _reason(exc: BaseException | None) -> str:
    """FFmpeg's own words for an error, without PyAV's errno and file-name decoration."""
    if exc is None:
        return "unknown error"
    text = getattr(exc, "strerror", None) or str(exc)
    return text[:1].lower() + text[1:] if text else type(exc).__name__
