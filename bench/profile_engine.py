"""Where the batched engine's GPU time goes: the encoder per window and the decoder step.

What: whisper.cpp's CPU mel once for reference, then the time of add() per
window at several encode group sizes (the batched encoder: one graph per group), and
the time of a decoder step at several numbers of windows in flight. With --ncu-region
encode|step only that region runs between cudaProfilerStart/Stop, so that
`ncu --profile-from-start off` (bench/gpu.sh's profile stage) lists its kernels alone.

Usage (GPU host):
  python bench/profile_engine.py --model build/ggml-large-v3-random-f16.bin --wav speech.wav
"""
from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np

from whisperd.audio import decode_audio
from whisperd.batch_decoder import BatchDecoder
from whisperd.batching import WindowRequest
from whisperd.inference import SAMPLE_RATE, TranscribeOptions, WhisperModel


def _cudart() -> ctypes.CDLL | None:
    """The CUDA runtime the extension loaded, for cudaProfilerStart/Stop."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _requests(windows: list[np.ndarray], opts: TranscribeOptions, base: int) -> list[WindowRequest]:
    return [WindowRequest(base + i, w, opts) for i, w in enumerate(windows)]


def time_encode(model: WhisperModel, windows: list[np.ndarray], opts: TranscribeOptions,
                group: int, groups: int) -> float:
    """ms per window of add() for `groups` groups of `group` windows, mels prepared."""
    dec = BatchDecoder(model, group, max_beams=1, encode_batch=group)
    warm = _requests(windows[:group], opts, 10_000)
    dec.prepare(warm)
    dec.add(warm)
    for r in warm:
        dec.drop(r.window_id)
    total = 0.0
    for g in range(groups):
        reqs = _requests(windows[:group], opts, g * group)
        dec.prepare(reqs)
        t0 = time.perf_counter()
        dec.add(reqs)
        total += time.perf_counter() - t0
        for r in reqs:
            dec.drop(r.window_id)
    dec.close()
    return total / (groups * group) * 1e3


def time_steps(model: WhisperModel, windows: list[np.ndarray], opts: TranscribeOptions,
               batch: int, steps: int, cudart: ctypes.CDLL | None = None) -> float:
    """ms per decoder step with `batch` windows in flight (after a warm-up of 5 steps)."""
    dec = BatchDecoder(model, batch, max_beams=1, encode_batch=min(batch, 16))
    reqs = _requests([windows[i % len(windows)] for i in range(batch)], opts, 0)
    dec.prepare(reqs)
    dec.add(reqs)
    for _ in range(5):
        dec.step()
    if cudart is not None:
        cudart.cudaProfilerStart()
    s0 = dec.stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        dec.step()
    wall = (time.perf_counter() - t0) / steps * 1e3
    if cudart is not None:
        cudart.cudaProfilerStop()
    s1 = dec.stats()
    dec.close()
    gpu = (s1.decode_ms - s0.decode_ms) / steps
    sample = (s1.sample_ms - s0.sample_ms) / steps
    print(f"  step at batch {batch:>3}: {wall:6.2f} ms wall, {gpu:6.2f} ms graph, {sample:5.2f} ms sampling")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--wav", required=True)
    ap.add_argument("--groups", default="1,4,8,16")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--ncu-region", choices=["encode", "step"], default=None)
    ap.add_argument("--ncu-step-batch", type=int, default=8, help="windows in flight for --ncu-region step")
    args = ap.parse_args()

    audio = decode_audio(Path(args.wav))
    step = 30 * SAMPLE_RATE
    audio = np.tile(audio, 16 * step // len(audio) + 1)
    windows = [audio[i * step:(i + 1) * step] for i in range(16)]
    opts = TranscribeOptions(language="en", beam_size=1, temperature_increment=0.0,
                             forced_tokens_per_window=100)
    model = WhisperModel(args.model, use_gpu=True)

    if args.ncu_region == "encode":
        cudart = _cudart()
        dec = BatchDecoder(model, 8, max_beams=1, encode_batch=4)
        warm = _requests(windows[:4], opts, 100)
        dec.prepare(warm)
        dec.add(warm)
        reqs = _requests(windows[:4], opts, 0)
        dec.prepare(reqs)
        cudart.cudaProfilerStart()
        dec.add(reqs)
        cudart.cudaProfilerStop()
        dec.close()
        return
    if args.ncu_region == "step":
        time_steps(model, windows, opts, args.ncu_step_batch, 3, _cudart())
        return

    probe = model.native.new_batch_decoder(1, 256, 1, 1)
    t0 = time.perf_counter()
    mel = probe.mel(windows[0])
    mel_ms = (time.perf_counter() - t0) * 1e3
    probe.close()
    print(f"whisper.cpp's mel on one CPU thread: {mel_ms:.1f} ms a window ({len(mel)} values)")
    print("encoder (the mel in its graph): ms per window")
    for g in [int(x) for x in args.groups.split(",") if x]:
        ms = time_encode(model, windows, opts, g, max(1, 16 // g))
        print(f"  group {g:>2}: {ms:6.1f} ms a window")
    print("decoder step (greedy, 1 row per window)")
    for b in [int(x) for x in args.batches.split(",") if x]:
        time_steps(model, windows, opts, b, 20)


if __name__ == "__main__":
    main()
