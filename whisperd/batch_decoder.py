"""The engine's window decoder: every window in flight decoded in one batched graph.

`BatchDecoder` implements whisperd.batching.WindowDecoder over the native decoder
(native/src/batch_decoder.cpp): a fixed number of slots, one window each; the encoder runs
several new windows in one graph, and each decoder step is one graph for every slot, so
the weights are read once per step whatever the number of windows. Beams and best-of
candidates are rows of their window's slot.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from whisperd import _native, cuda_env
from whisperd.batching import WindowRequest, WindowResult
from whisperd.inference import SAMPLE_RATE, CancelToken, WhisperModel, group_words
from whisperd.transcript import Segment

log = logging.getLogger(__name__)

_BYTES_F16 = 2
_KV_PAD = 256
# Whisper's decoder context: a prompt of up to half of it, then up to half of it sampled.
_SAMPLE_LEN = 224


# Windows decoded at once on a CPU: the steps are compute-bound there, so more windows
# mostly delay each other; a few share the weights' reads.
CPU_CAPACITY = 4


def _free_gpu_bytes(index: int) -> int | None:
    """Free memory of the index-th GPU as ggml sees it; None without a GPU."""
    gpus = [d for d in _native.devices() if d.type == "gpu"]
    if index >= len(gpus):
        return None
    return int(gpus[index].memory_free)


def cells_for(max_beams: int) -> int:
    """KV cells one window needs: the prompt plus a cell per token per beam."""
    need = _SAMPLE_LEN + max(1, max_beams) * _SAMPLE_LEN + 1
    return -(-need // _KV_PAD) * _KV_PAD


@dataclass(frozen=True, slots=True)
class SlotCost:
    """Memory of one slot and the fixed share of a decoder, for choosing the batch size."""

    per_slot_bytes: int
    fixed_bytes: int

    def fits(self, free_bytes: int) -> int:
        """Slots that fit in free_bytes (0 when not even one does)."""
        return max(0, (free_bytes - self.fixed_bytes) // self.per_slot_bytes)


def cross_kv_int8_bytes(model: WhisperModel) -> int:
    """A window's int8 copy of the cross K/V (WHISPERD_CROSS_KV_INT8): its positions (not
    the padding), one byte a value, an f16 scale of K and of V a head and position."""
    m = model.native
    return m.n_text_layer * m.n_audio_ctx * (2 * m.n_text_state + 4 * (m.n_text_state // 64))


def slot_cost(model: WhisperModel, *, max_beams: int, encode_batch: int) -> SlotCost:
    """Caches per slot (cross-attention K/V of a 30 s window + self-attention cells), plus
    the encoder's working memory for `encode_batch` windows and a margin."""
    m = model.native
    audio_pad = -(-m.n_audio_ctx // _KV_PAD) * _KV_PAD
    per_layer = 2 * m.n_text_state * (audio_pad + cells_for(max_beams)) * _BYTES_F16
    per_slot = m.n_text_layer * per_layer
    # Encoder activations: ~12 f32 tensors of the window's shape live at the peak (the
    # MLP's hidden layer alone is 4), the logits of a step, and a margin.
    encoder = encode_batch * m.n_audio_ctx * m.n_text_state * 4 * 12
    if m.use_gpu:
        # The CUDA encoder's own memory comes on top of the ggml front end's: per window
        # the f32 residual, four f16 activations and the f16 MLP layer (4x wide); one
        # window's attention scores (64-wide heads, rows padded to 8); cuBLAS's workspace.
        # Left out, a 7.5 GiB card ran out of memory inside a CUDA graph (an abort).
        ctx, state = m.n_audio_ctx, m.n_text_state
        encoder += encode_batch * ctx * state * (4 + 4 * 2 + 4 * 2)
        encoder += (state // 64) * ctx * (-(-ctx // 8) * 8) * 2 + 64 * 2**20
        # cuBLASLt's workspace, for the products that add their bias (and GELU) themselves.
        encoder += 32 * 2**20
        # The CUDA decoder step's: per row (a slot's beams) the f32 residual, five f16
        # activations, the f16 MLP layer and the cross-attention's partial results
        # (heads x parts of as few as 32 positions x 66 floats); its logits; cuBLAS's workspace.
        parts = -(-audio_pad // 32)
        per_row = state * (4 + 5 * 2 + 4 * 2) + (state // 64) * parts * 66 * 4
        per_slot += max(1, max_beams) * (per_row + 4 * m.n_vocab)
        encoder += 32 * 2**20
        if cuda_env.cross_kv_int8():
            per_slot += cross_kv_int8_bytes(model)
    logits = 4 * m.n_vocab * 256
    return SlotCost(per_slot_bytes=per_slot, fixed_bytes=encoder + logits + 256 * 2**20)


def _encoder_mode(choice: bool | None) -> int:
    """The native decoder's cuda_encoder argument: the caller's choice, else the
    environment's WHISPERD_CUDA_ENCODER, else -1 (automatic)."""
    if choice is None:
        choice = cuda_env.cuda_encoder_choice()
    return -1 if choice is None else int(choice)


def _spec(req: WindowRequest, model: WhisperModel) -> _native.WindowSpec:
    o = req.options
    spec = _native.WindowSpec()
    spec.id = req.window_id
    spec.samples = np.ascontiguousarray(req.samples, dtype=np.float32)
    spec.language = o.language or ""
    spec.translate = o.task == "translate"
    spec.beam_size = o.beam_size
    spec.best_of = o.best_of
    spec.temperature = o.temperature
    spec.temperature_increment = o.temperature_increment
    spec.no_speech_threshold = o.no_speech_threshold
    spec.forced_tokens = o.forced_tokens_per_window
    prompt = req.prompt if req.prompt is not None else o.initial_prompt
    if prompt:
        spec.prompt_tokens = model.native.tokenize(" " + prompt.strip())
    return spec


class BatchDecoder:
    """Windows of any jobs in `capacity` slots, decoded together one step at a time."""

    def __init__(
        self,
        model: WhisperModel,
        capacity: int,
        threads: int = 0,
        *,
        max_beams: int = 5,
        encode_batch: int = 4,
        mel_on_device: bool = True,
        cuda_encoder: bool | None = None,
        gpu_sampling: bool | None = None,
    ) -> None:
        self._model = model
        self._eot = model.native.token_eot
        self._requests: dict[int, WindowRequest] = {}
        self._prepared: dict[int, _native.WindowSpec] = {}
        self._max_beams = max(1, max_beams)
        # Greedy rows summarised where the logits are (a GPU); None: WHISPERD_GPU_SAMPLING.
        sampling = cuda_env.gpu_sampling_choice() if gpu_sampling is None else gpu_sampling
        self._decoder = model.native.new_batch_decoder(
            capacity, cells_for(self._max_beams), threads or (os.cpu_count() or 4), encode_batch,
            1 if mel_on_device else 0, _encoder_mode(cuda_encoder),
        )
        self._decoder.gpu_sampling = sampling
        log.info(
            "batched decoder: %d windows at once, %.0f MiB of caches, encoder %s, greedy sampling on the %s",
            capacity, self._decoder.memory_bytes / 2**20,
            "in whisperd's CUDA code" if self.cuda_encoder else "as a ggml graph",
            "GPU" if self.gpu_sampling else "CPU",
        )

    @classmethod
    def auto_capacity(
        cls, model: WhisperModel, *, max_beams: int = 5, encode_batch: int = 4, limit: int = 256
    ) -> int:
        """The most windows that fit in the model's GPU's free memory (at least 1, at most
        `limit`). Past 128 a step costs about as much per window, but fewer generations of
        windows leave fewer steps at a small width: on the H200, 32 jobs of 121 s (160
        windows) ran at 998x with 160 slots against 955x with 128."""
        free = _free_gpu_bytes(model.native.gpu_device) if model.native.use_gpu else None
        if free is None:
            return CPU_CAPACITY
        fits = slot_cost(model, max_beams=max_beams, encode_batch=encode_batch).fits(free)
        return max(1, min(limit, fits))

    @property
    def capacity(self) -> int:
        return self._decoder.capacity

    @property
    def cuda_encoder(self) -> bool:
        """Whether the encoder layers run as whisperd's CUDA code (else a ggml graph)."""
        return bool(self._decoder.cuda_encoder)

    @property
    def cuda_decoder(self) -> bool:
        """Whether decoder steps run as whisperd's CUDA code (else a ggml graph)."""
        return bool(self._decoder.cuda_decoder)

    @property
    def gpu_sampling(self) -> bool:
        """Whether greedy rows are summarised on the GPU, their logits never downloaded
        (only a CUDA decoder can; else the CPU summarises them)."""
        return bool(self._decoder.gpu_sampling)

    def mel(self, samples: np.ndarray) -> np.ndarray:
        """whisper.cpp's log-mel frames of a window, [n_mels, 3000] (tests)."""
        audio = np.ascontiguousarray(samples, dtype=np.float32)
        return np.asarray(self._decoder.mel(audio), dtype=np.float32).reshape(-1, 3000)

    def cross_kv(self, window_id: int, layer: int) -> np.ndarray:
        """A window's cross-attention keys and values for one decoder layer, as the
        encoder wrote them: float32 [2, n_audio_ctx, n_text_state] (tests)."""
        m = self._model.native
        kv = np.asarray(self._decoder.cross_kv(window_id, layer), dtype=np.float32)
        return kv.reshape(2, m.n_audio_ctx, m.n_text_state)

    @property
    def memory_bytes(self) -> int:
        return self._decoder.memory_bytes

    def free_slots(self) -> int:
        return self._decoder.free_slots()

    def active(self) -> int:
        return self._decoder.active()

    def prepare(self, windows: Sequence[WindowRequest]) -> None:
        """Do the windows' CPU work now, on the calling thread (GIL released), so that
        add() finds it done: call it from another thread while the decoder is busy. With
        the mel on the device (the default) that is only padding the samples; with
        `mel_on_device=False` it is whisper.cpp's mel spectrogram (~0.1-0.2 s a window)."""
        for req in windows:
            spec = _spec(req, self._model)
            self._decoder.prepare(spec)
            self._prepared[req.window_id] = spec

    def add(self, windows: Sequence[WindowRequest], cancel: CancelToken | None = None) -> None:
        specs = []
        for req in windows:
            if len(req.samples) > 30 * SAMPLE_RATE:
                raise ValueError(f"window {req.window_id} is longer than 30 s")
            spec = self._prepared.pop(req.window_id, None)
            if spec is None:
                spec = _spec(req, self._model)
            # Every slot has KV cells for max_beams beams: a larger beam decodes with that
            # many (docs/batching.md; sequential mode takes any beam size).
            spec.beam_size = min(spec.beam_size, self._max_beams)
            spec.best_of = min(spec.best_of, self._max_beams)
            specs.append(spec)
            self._requests[req.window_id] = req
        try:
            self._decoder.add(specs, cancel)
        except BaseException:
            for req in windows:
                self._requests.pop(req.window_id, None)
            raise

    def step(self, cancel: CancelToken | None = None) -> list[WindowResult]:
        return [self._result(out) for out in self._decoder.step(cancel)]

    def drop(self, window_id: int) -> None:
        self._decoder.drop(window_id)
        self._requests.pop(window_id, None)
        self._prepared.pop(window_id, None)

    def close(self) -> None:
        self._decoder.close()
        self._requests.clear()
        self._prepared.clear()

    def stats(self) -> _native.BatchStats:
        return self._decoder.stats()

    def _result(self, out: _native.WindowOutput) -> WindowResult:
        req = self._requests.pop(out.id, None)
        words = bool(req and req.options.word_timestamps)
        segments = []
        for seg in out.segments:
            start, end = seg.t0 / 100.0, seg.t1 / 100.0
            text = seg.text.strip()
            if not text:
                continue
            segments.append(
                Segment(
                    index=len(segments),
                    start=start,
                    end=end,
                    text=text,
                    no_speech_prob=float(seg.no_speech_prob),
                    words=group_words(seg.tokens, self._eot, start, end) if words else (),
                )
            )
        return WindowResult(
            window_id=out.id,
            segments=tuple(segments),
            language=out.language,
            language_probability=float(out.language_probability),
            no_speech_prob=float(out.no_speech_prob),
            tokens=out.n_tokens,
            fallbacks=out.n_fallbacks,
            text_tokens=tuple(out.text_tokens),
            end_secs=out.end_cs / 100.0,
        )
