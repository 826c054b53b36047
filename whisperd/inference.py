"""The Python face of the native core: load a model once, transcribe with many states.

Everything long runs in whisperd._native with the GIL released, so callers may run
several states on worker threads at once; results come back as whisperd.transcript data.
"""
from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from whisperd import _native, cuda_env
from whisperd.transcript import DecodeTimings, Segment, Transcript, Word

log = logging.getLogger(__name__)
_native_log = logging.getLogger("whisperd.native")

SAMPLE_RATE = 16000
Task = Literal["transcribe", "translate"]

# Re-exported so callers catch them without touching the private module.
WhisperError = _native.WhisperError
ModelLoadError = _native.ModelLoadError
OutOfMemoryError = _native.OutOfMemoryError
TranscriptionAborted = _native.TranscriptionAborted
CancelToken = _native.CancelToken

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error. whisper.cpp's info lines describe
# every load in detail; they are debug material for a service log.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


def _forward_native_log(level: int, line: str) -> None:
    _native_log.log(_LEVELS.get(level, logging.DEBUG), "%s", line.rstrip())


_native.set_log_sink(_forward_native_log)
# Drop the sink before the interpreter tears down logging.
atexit.register(_native.set_log_sink, None)


def vad_model_path() -> Path:
    """Silero VAD weights installed beside the extension by the build."""
    return Path(_native.__file__).with_name("silero-v6.2.0-ggml.bin")


@dataclass(frozen=True, slots=True)
class TranscribeOptions:
    """Per-job decoding options; defaults follow the earlier service (beam 5, temperature 0)."""

    language: str | None = None  # ISO 639-1; None = detect
    task: Task = "transcribe"
    beam_size: int = 5
    best_of: int = 5
    temperature: float = 0.0
    temperature_increment: float = 0.2  # fallback step when decoding fails; 0 = no fallback
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad: bool = False
    vad_threshold: float = 0.5
    no_speech_threshold: float = 0.6
    threads: int = 0  # 0 = every CPU
    # Benchmarks only: decode exactly this many tokens per 30 s window (random-weight
    # models); 0 = normal decoding.
    forced_tokens_per_window: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if self.language is not None and not (
            len(self.language) == 2 and self.language.isalpha() and self.language.islower()
        ):
            raise ValueError(
                f"language must be a lower-case ISO 639-1 code such as 'en', got {self.language!r}"
            )
        if not 1 <= self.beam_size <= 16:
            raise ValueError(f"beam_size must be between 1 and 16, got {self.beam_size}")
        if not 1 <= self.best_of <= 16:
            raise ValueError(f"best_of must be between 1 and 16, got {self.best_of}")
        if not 0.0 <= self.temperature <= 1.0:
            raise ValueError(f"temperature must be between 0 and 1, got {self.temperature}")
        if not 0.0 <= self.temperature_increment <= 1.0:
            raise ValueError(
                f"temperature_increment must be between 0 and 1, got {self.temperature_increment}"
            )
        if not 0.0 <= self.vad_threshold <= 1.0:
            raise ValueError(f"vad_threshold must be between 0 and 1, got {self.vad_threshold}")
        if not 0.0 <= self.no_speech_threshold <= 1.0:
            raise ValueError(
                f"no_speech_threshold must be between 0 and 1, got {self.no_speech_threshold}"
            )
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (all CPUs) or more, got {self.threads}")
        if self.forced_tokens_per_window and not 3 <= self.forced_tokens_per_window <= 200:
            raise ValueError(
                "forced_tokens_per_window must be 0 (off) or between 3 and 200, got "
                f"{self.forced_tokens_per_window}"
            )
        if self.initial_prompt is not None and len(self.initial_prompt) > 4096:
            raise ValueError("initial_prompt is longer than 4096 characters")

    def to_native(self) -> _native.Options:
        self.validate()
        o = _native.Options()
        o.language = self.language or ""
        o.translate = self.task == "translate"
        o.beam_size = self.beam_size
        o.best_of = self.best_of
        o.temperature = self.temperature
        o.temperature_increment = self.temperature_increment
        o.initial_prompt = self.initial_prompt or ""
        # Token times are what words are made of; whisper.cpp's DTW variant is off with
        # flash attention, the timestamp-token heuristic is not.
        o.token_timestamps = self.word_timestamps
        o.vad = self.vad
        if self.vad:
            o.vad_model_path = str(vad_model_path())
        o.vad_threshold = self.vad_threshold
        o.no_speech_threshold = self.no_speech_threshold
        o.n_threads = self.threads or (os.cpu_count() or 4)
        o.forced_tokens_per_window = self.forced_tokens_per_window
        return o


ProgressCallback = Callable[[int], None]
SegmentCallback = Callable[[Segment], None]


class WhisperModel:
    """whisper.cpp weights loaded once; make a DecodingState per concurrent transcription."""

    def __init__(
        self,
        path: str | Path,
        *,
        use_gpu: bool = True,
        flash_attn: bool = True,
        gpu_device: int = 0,
    ) -> None:
        from whisperd.models.errors import ModelFormatError
        from whisperd.models.ggml_file import check_model_file

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(
                f"model file not found: {self.path} (convert or download one with "
                "`whisperd model ...`, or set WHISPER_MODEL_PATH)"
            )
        # whisper.cpp trusts the sizes it reads; a truncated or foreign file must be
        # refused before it gets there.
        try:
            check_model_file(self.path)
        except ModelFormatError as exc:
            raise ModelLoadError(
                f"{exc} - this is not a usable whisper.cpp GGML model; convert or download "
                "it again"
            ) from exc
        if use_gpu and _native.built_with_cuda():
            cuda_env.configure()
        self._model = _native.Model(str(self.path), use_gpu, flash_attn, gpu_device)
        self._eot = self._model.token_eot
        log.info("loaded model %s (%s)", self.path, self._model.type_name)

    @property
    def multilingual(self) -> bool:
        return self._model.multilingual

    @property
    def native(self) -> _native.Model:
        """The native model, for the batched decoder (whisperd.batch_decoder)."""
        return self._model

    @property
    def type_name(self) -> str:
        return self._model.type_name

    @property
    def closed(self) -> bool:
        return self._model.closed

    def new_state(self) -> DecodingState:
        return DecodingState(self._model.new_state(), self._eot)

    def close(self) -> None:
        """Let go of the weights; memory returns once every state is closed as well."""
        self._model.close()

    def __enter__(self) -> WhisperModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecodingState:
    """One transcription at a time; several states share one model across threads."""

    def __init__(self, state: _native.State, eot: int) -> None:
        self._state = state
        self._eot = eot

    def transcribe(
        self,
        audio: np.ndarray,
        options: TranscribeOptions | None = None,
        *,
        cancel: CancelToken | None = None,
        on_progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None,
    ) -> Transcript:
        """Transcribe 16 kHz mono float32 samples. Blocks; call it from a worker thread."""
        opts = options or TranscribeOptions()
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {samples.shape}")
        words = opts.word_timestamps

        def segments_cb(raw: list[_native.SegmentData]) -> None:
            assert on_segment is not None
            for seg in raw:
                on_segment(self._segment(seg, words))

        result = self._state.transcribe(
            samples,
            opts.to_native(),
            cancel,
            on_progress,
            segments_cb if on_segment is not None else None,
        )
        return Transcript(
            segments=tuple(self._segment(s, words) for s in result.segments),
            language=result.language,
            language_probability=float(result.language_probability),
            duration_secs=len(samples) / SAMPLE_RATE,
            timings=_timings(result.timings),
        )

    def close(self) -> None:
        self._state.close()

    @property
    def closed(self) -> bool:
        return self._state.closed

    def __enter__(self) -> DecodingState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _segment(self, seg: _native.SegmentData, with_words: bool) -> Segment:
        start, end = seg.t0 / 100.0, seg.t1 / 100.0
        return Segment(
            index=seg.index,
            start=start,
            end=end,
            text=seg.text.strip(),
            no_speech_prob=float(seg.no_speech_prob),
            words=group_words(seg.tokens, self._eot, start, end) if with_words else (),
        )


def group_words(
    tokens: list[_native.Token], eot: int, seg_start: float, seg_end: float
) -> tuple[Word, ...]:
    """Join BPE tokens into words: a token that starts with a space starts a new word.

    Times are clamped into the segment and made non-decreasing, because whisper.cpp's
    timestamp-token heuristic can place a token slightly outside its segment.
    """
    groups: list[list[_native.Token]] = []
    for tok in tokens:
        if tok.id >= eot or not tok.text:
            continue  # special and timestamp tokens
        if not groups or tok.text.startswith(b" "):
            groups.append([tok])
        else:
            groups[-1].append(tok)
    words: list[Word] = []
    cursor = seg_start
    for group in groups:
        text = b"".join(t.text for t in group).decode("utf-8", errors="replace").strip()
        if not text:
            continue
        start = min(max(group[0].t0 / 100.0, cursor), seg_end)
        end = min(max(group[-1].t1 / 100.0, start), seg_end)
        # float32, as the proto carries it, so client and server render the same digits.
        prob = float(np.float32(np.mean([t.p for t in group])))
        words.append(Word(text=text, start=start, end=end, probability=prob))
        cursor = end
    return tuple(words)


def _timings(t: _native.Timings) -> DecodeTimings | None:
    if not t.available:
        return None
    return DecodeTimings(
        mel_ms=t.mel_ms,
        encode_ms=t.encode_ms,
        prompt_ms=t.prompt_ms,
        decode_ms=t.decode_ms,
        batchd_ms=t.batchd_ms,
        sample_ms=t.sample_ms,
        n_encode=t.n_encode,
        n_decode=t.n_decode,
        n_batchd=t.n_batchd,
        n_sample=t.n_sample,
        n_fallbacks=t.n_fallbacks,
    )
