"""A short job behind a long one through the batch scheduler, and a long file's speed.

Prints: the short job's time alone and beside a long job already decoding (the goal: at
most ~2x), the long file's real-time factor through the scheduler, and (with
--compare-sequential) the same file on one whisper.cpp state, window after window.

    .venv/bin/python bench/scheduler_fairness.py --long-secs 300
    .venv/bin/python bench/scheduler_fairness.py --gpu --model models/ggml-large-v3.bin --long-secs 3600
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from whisperd import paths
from whisperd.audio import decode_audio
from whisperd.inference import CancelToken, TranscribeOptions, WhisperModel
from whisperd.server.engine.decoder_factory import default_decoder_factory, windows_per_job
from whisperd.server.engine.scheduler import BatchScheduler

SR = 16000


def tiled(speech: np.ndarray, secs: float) -> np.ndarray:
    """`speech` repeated with 1-4 s pauses until `secs` long."""
    parts, total, i = [], 0, 0
    while total < secs * SR:
        gap = np.zeros(int((1.0, 2.5, 4.0)[i % 3] * SR), np.float32)
        parts += [speech, gap]
        total += len(speech) + len(gap)
        i += 1
    return np.concatenate(parts)[: int(secs * SR)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=paths.models_dir() / "ggml-tiny.en.bin")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--long-secs", type=float, default=300.0)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = automatic (BATCH_SIZE)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--compare-sequential", action="store_true",
                    help="also the long job alone, through the scheduler and on one state (the "
                         "path before batching), best of --repeat each")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    jfk = decode_audio(paths.samples_dir() / "jfk.wav")
    short = jfk[: 5 * SR]
    long_audio = tiled(jfk, args.long_secs)
    options = TranscribeOptions(beam_size=args.beam_size, threads=args.threads)
    model = WhisperModel(args.model, use_gpu=args.gpu)
    factory = default_decoder_factory(batch_size=args.batch_size, threads=args.threads, gpu=args.gpu)
    scheduler = BatchScheduler(factory, vad_threads=args.threads or 1, windows_per_job=windows_per_job(args.gpu))

    def run(audio: np.ndarray, **kw: object) -> float:
        t0 = time.monotonic()
        scheduler.transcribe(model, audio, options, cancel=CancelToken(), **kw)  # type: ignore[arg-type]
        return time.monotonic() - t0

    try:
        run(short)  # warm-up: the decoder is made, kernels built
        alone = statistics.median(run(short) for _ in range(3))
        started = threading.Event()
        long_time: list[float] = []
        t = threading.Thread(
            target=lambda: long_time.append(run(long_audio, on_progress=lambda p: started.set() if p > 0 else None))
        )
        t.start()
        started.wait()  # its first windows are done: the batch is full of them
        beside = run(short)
        t.join()
        print(f"model {args.model.name}, {'GPU' if args.gpu else 'CPU'}, beam {args.beam_size}")
        print(f"short 5 s job alone:              {alone:7.2f} s")
        print(f"short 5 s job beside a long one:  {beside:7.2f} s  ({beside / alone:.2f}x alone)")
        print(
            f"long {args.long_secs:.0f} s job (scheduler):     {long_time[0]:7.2f} s  "
            f"({args.long_secs / long_time[0]:.1f}x real time, the short job beside it)"
        )
        if args.compare_sequential:
            batched = min(run(long_audio) for _ in range(args.repeat))

            def one_state() -> float:
                t0 = time.monotonic()
                with model.new_state() as state:
                    state.transcribe(long_audio, options)
                return time.monotonic() - t0

            seq = min(one_state() for _ in range(args.repeat))
            print(f"long job alone (scheduler):       {batched:7.2f} s  ({args.long_secs / batched:.1f}x real time)")
            print(f"long job, sequential (one state): {seq:7.2f} s  ({args.long_secs / seq:.1f}x real time)"
                  f"  -> scheduler {seq / batched:.2f}x as fast")
    finally:
        scheduler.close()
        model.close()


if __name__ == "__main__":
    main()
