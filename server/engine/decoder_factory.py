"""Which window decoder the scheduler uses: the batched one when this build has it."""
from __future__ import annotations

import logging
from typing import Callable

from whisperd.batching import WindowDecoder
from whisperd.inference import WhisperModel
from whisperd.sequential_decoder import SequentialWindowDecoder

log = logging.getLogger(__name__)

DecoderFactory = Callable[[WhisperModel], WindowDecoder]

# BATCH_SIZE 0 on a CPU: enough windows to keep 2-8 cores busy without a long wait for
# the first window's result.
CPU_BATCH_SIZE = 4
# New windows encoded in one graph: 8 on a GPU with a batch of 32 or more, as the
# engine's table is measured (H200 run 9: 8.2 ms a window there, 9.6-9.9 in the service's
# groups of at most 4), else the decoder's default of 4: each window more in a group
# costs ~130 MiB of large-v3 working memory, on an 8 GB card a quarter of a slot.
_GPU_ENCODE_BATCH = 8
_ENCODE_BATCH_FROM = 32  # slots that fit with the larger groups


def windows_per_job(gpu: bool) -> int:
    """How many of one job's windows the scheduler keeps in the decoder at once: on a GPU
    all slots but one (0), so that one long file fills the batch; on a CPU one, since a
    step there is compute-bound (a job's windows would only take turns) and a window's
    unfinished rest can then join the job's next window instead of costing its own
    encoder pass (tiny.en, 2 cores, 121 s of continuous speech, beam 5: 8 encoder passes
    -> 6, 10.4 s -> 8.4 s)."""
    return 0 if gpu else 1


def default_decoder_factory(
    *, batch_size: int = 0, threads: int = 0, gpu: bool = False, max_beams: int = 5,
    cuda_encoder: bool | None = None,
) -> DecoderFactory:
    """The batched decoder when this build has it, else the sequential reference.

    batch_size 0 = automatic: on a GPU the batched decoder's own choice from free VRAM
    (`BatchDecoder.auto_capacity(model)` when it has one), CPU_BATCH_SIZE on a CPU. The
    sequential decoder always gets one slot: it decodes one window per step anyway, and
    windows waiting in its slots would only delay a new job's first window.
    """
    try:
        from whisperd.batch_decoder import BatchDecoder  # type: ignore[import-not-found]
    except ImportError:
        BatchDecoder = None  # noqa: N806

    def make(model: WhisperModel) -> WindowDecoder:
        if BatchDecoder is None:
            return SequentialWindowDecoder(model, 1, threads)
        capacity = batch_size
        extra: dict[str, int] = {}
        if capacity == 0:
            auto = getattr(BatchDecoder, "auto_capacity", None)
            if gpu and auto is not None:
                capacity = auto(model, max_beams=max_beams, encode_batch=_GPU_ENCODE_BATCH)
                if capacity < _ENCODE_BATCH_FROM:
                    capacity = auto(model, max_beams=max_beams)
            else:
                capacity = CPU_BATCH_SIZE
        if gpu and capacity >= _ENCODE_BATCH_FROM:
            extra["encode_batch"] = _GPU_ENCODE_BATCH
        log.info("batched window decoder with %d slots of %d beams", capacity, max_beams)
        return BatchDecoder(model, capacity, threads, max_beams=max_beams, cuda_encoder=cuda_encoder, **extra)

    return make
