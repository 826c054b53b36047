"""Where the time goes when several jobs share one GPU (issue 6), in-process, no service.

N decoding states over one loaded model transcribe the same audio at once, one Python
thread each (the GIL is released inside whisper.cpp, as in the server's workers). For
every N it prints the aggregate speed (audio seconds per wall second) and, from
whisper.cpp's own per-state counters (patch 0004), the mean per state of: encoder ms per
30 s window, decoder ms per step (one token for every live beam), sampling ms per step
(choosing tokens on the CPU) and prompt ms. If the decoder's ms per step grows with N the
GPU (or the driver) is the shared resource; if sampling grows it is the CPU.

  python bench/gpu_concurrency.py --model M --audio A.wav [--jobs 1,2,4,8] [--beam 1]
      [--tokens 100] [--threads 2] [--label text] [--json out.json]

This is the per-state path (sequential mode, condition_on_previous_text); the batched
engine's figures come from bench/batch_bench.py.

Run it under GGML_CUDA_DISABLE_GRAPHS=1 to see what CUDA graphs buy (bench/gpu.sh does).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from whisperd import _native
from whisperd.audio import decode_audio
from whisperd.inference import DecodingState, TranscribeOptions, WhisperModel
from whisperd.transcript import DecodeTimings

SR = 16000


@dataclass
class Point:
    label: str
    jobs: int
    beam: int
    threads: int
    wall_s: float
    x_real_time: float
    encode_ms_per_window: float
    decoder_ms_per_step: float
    sample_ms_per_step: float
    prompt_ms: float
    steps_per_job: float
    vram_mib: float


def gpu_used() -> int:
    devs = [d for d in _native.devices() if d.type == "gpu"]
    return devs[0].memory_total - devs[0].memory_free if devs else 0


def run(model: WhisperModel, audio, n: int, opts: TranscribeOptions) -> tuple[float, list[DecodeTimings], int]:
    states: list[DecodingState] = [model.new_state() for _ in range(n)]
    for st in states:  # first call on a state: allocations and CUDA graph capture
        st.transcribe(audio[: 5 * SR], opts)
    used = gpu_used()
    timings: list[DecodeTimings | None] = [None] * n

    def work(i: int) -> None:
        timings[i] = states[i].transcribe(audio, opts).timings

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    for st in states:
        st.close()
    return wall, [x for x in timings if x is not None], used


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--jobs", default="1,2,4,8")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=0, help="forced tokens per window; 0 = real decoding")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--language", default="en")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-header", action="store_true")
    args = ap.parse_args()

    audio = decode_audio(args.audio)
    secs = len(audio) / SR
    base = gpu_used()
    model = WhisperModel(args.model, use_gpu=True)
    opts = TranscribeOptions(
        language=args.language, beam_size=args.beam, threads=args.threads,
        forced_tokens_per_window=args.tokens,
        # Random weights: a fixed token count, never a fallback re-decode.
        temperature_increment=0.0 if args.tokens else 0.2,
    )
    label = args.label or ("graphs off" if os.environ.get("GGML_CUDA_DISABLE_GRAPHS") else "graphs on")
    points: list[Point] = []
    if not args.no_header:
        print(header(), flush=True)
    for n in (int(x) for x in args.jobs.split(",")):
        wall, ts, used = run(model, audio, n, opts)
        steps = [max(1, t.decoder_steps) for t in ts]
        points.append(Point(
            label=label, jobs=n, beam=args.beam, threads=args.threads, wall_s=wall,
            x_real_time=n * secs / wall,
            encode_ms_per_window=statistics.mean(t.encode_ms / max(1, t.n_encode) for t in ts),
            decoder_ms_per_step=statistics.mean((t.decode_ms + t.batchd_ms) / s for t, s in zip(ts, steps)),
            sample_ms_per_step=statistics.mean(t.sample_ms / s for t, s in zip(ts, steps)),
            prompt_ms=statistics.mean(t.prompt_ms for t in ts),
            steps_per_job=statistics.mean(steps),
            vram_mib=(used - base) / 2**20,
        ))
        p = points[-1]
        print(f"| {label:<11} | {n:>4} | {args.beam:>4} | {args.threads:>3} | {wall:>7.2f} | {p.x_real_time:>7.1f} | "
              f"{p.encode_ms_per_window:>8.1f} | {p.decoder_ms_per_step:>8.2f} | {p.sample_ms_per_step:>7.2f} | "
              f"{p.prompt_ms:>7.1f} | {p.steps_per_job:>6.0f} | {p.vram_mib:>6.0f} |", flush=True)
    model.close()
    one = points[0].x_real_time if points and points[0].jobs == 1 else None
    if one:
        print("  scaling vs 1 job: " + ", ".join(f"{p.jobs}: {p.x_real_time / one:.2f}x" for p in points))
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2))


def header() -> str:
    return ("| run         | jobs | beam | thr | wall s  | x real  | enc ms/w | dec ms/tk | smp ms  | prompt  | steps  | VRAM   |\n"
            "|-------------|------|------|-----|---------|---------|----------|-----------|---------|---------|--------|--------|")


if __name__ == "__main__":
    main()
