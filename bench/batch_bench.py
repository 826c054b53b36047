"""The batched engine alone, in-process: x real time at each maximum batch size.

What: N windows of 30 s (the audio tiled to --seconds) decoded through
whisperd.batch_decoder.BatchDecoder with at most B windows in flight, slots refilled as
windows end (continuous batching), each window decoding exactly --tokens tokens (random
weights: speed only; --tokens 0 decodes for real: a real model on real speech). Printed
per B: wall seconds (encode + decode + sampling), x real time, decoder ms per step, the
memory floor of a step (decoder weights once + every window's cross-attention K/V, in
the int8 copy when greedy CUDA steps read it, and its self-attention cells read once) and how far above it the step is, VRAM (NVML, the
process's device memory), and the batch size that automatic sizing picks for the free
VRAM (--vram-cap GiB: what is left after a ballast).

Usage (GPU host, from bench/gpu.sh):
  python bench/batch_bench.py --model build/ggml-large-v3-random-f16.bin --wav speech121.wav \
      --seconds 3840 --batches 8,16,32,64,128 --tokens 100 --json out/batch.json
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from whisperd import cuda_env
from whisperd.audio import decode_audio
from whisperd.batch_decoder import BatchDecoder, cells_for, cross_kv_int8_bytes, slot_cost
from whisperd.batching import WindowRequest
from whisperd.inference import SAMPLE_RATE, TranscribeOptions, WhisperModel
from whisperd.server.engine import gpu_info

HBM_BYTES_PER_S = 4.8e12  # H200


def gpu_memory() -> tuple[int, int]:
    """(used, free) bytes of GPU 0, from NVML; (0, 0) without it."""
    found = gpu_info.gpus()
    return (found[0].used, found[0].free) if found else (0, 0)


def decoder_weight_bytes(model: WhisperModel) -> int:
    """Weights one decoder step reads: per layer self-attention (4 n^2), cross-attention
    query and output (2 n^2), MLP (8 n^2), plus the token embedding for the logits."""
    m = model.native
    n = m.n_text_state
    return 2 * (m.n_text_layer * 14 * n * n + m.n_vocab * n)


def run(model: WhisperModel, windows: list[np.ndarray], batch: int, tokens: int,
        beam: int, encode_batch: int, prep_threads: int, threads: int = 0) -> dict:
    opts = TranscribeOptions(language="en", beam_size=beam, temperature_increment=0.0,
                             forced_tokens_per_window=tokens)
    used0, _ = gpu_memory()
    dec = BatchDecoder(model, batch, threads, max_beams=beam, encode_batch=encode_batch)
    pending = [WindowRequest(i, w, opts) for i, w in enumerate(windows)]
    # Warm-up at this batch size: its CUDA graphs are recorded per step width and cuBLAS
    # picks its kernels per shape, on first use (a first size measured cold ran at 1475x
    # against 1800x warm at 128). A few steps of a full batch, then the windows dropped.
    warm = [WindowRequest(-1 - i, windows[i % len(windows)], opts) for i in range(min(batch, len(windows)))]
    for i in range(0, len(warm), encode_batch):
        dec.add(warm[i:i + encode_batch])
    for _ in range(3):
        dec.step()
    for req in warm:
        dec.drop(req.window_id)
    while dec.active():
        dec.step()
    s0 = dec.stats()
    t0 = time.perf_counter()
    # Mel spectrograms on CPU threads while the GPU decodes, as the service prepares the
    # windows of queued jobs (inside the timing: the work is done, only overlapped).
    pool = ThreadPoolExecutor(max_workers=prep_threads)
    for i in range(0, len(pending), encode_batch):
        pool.submit(dec.prepare, pending[i:i + encode_batch])
    done = 0
    peak = 0
    add_s = step_s = 0.0  # wall time inside add() and step(), beside the engine's own timers
    while done < len(windows):
        free = dec.free_slots()
        if free and pending:
            take = pending[: min(free, encode_batch)]
            pending = pending[len(take):]
            ta = time.perf_counter()
            dec.add(take)
            add_s += time.perf_counter() - ta
            continue
        ta = time.perf_counter()
        done += len(dec.step())
        step_s += time.perf_counter() - ta
        peak = max(peak, dec.active())
    wall = time.perf_counter() - t0
    pool.shutdown(cancel_futures=True)
    used1, _ = gpu_memory()
    s1 = dec.stats()
    steps = s1.steps - s0.steps
    audio = sum(len(w) for w in windows) / SAMPLE_RATE
    ms_step = (s1.decode_ms - s0.decode_ms) / max(1, steps)
    m = model.native
    # The cross K/V as the step reads it: greedy CUDA steps read the int8 copy (the
    # window's positions, a byte a value, an f16 scale a head and position), else the
    # padded f16 caches.
    int8 = dec.cuda_decoder and beam == 1 and cuda_env.cross_kv_int8()
    if int8:
        cross = cross_kv_int8_bytes(model)
    else:
        cross = 2 * m.n_text_layer * m.n_text_state * 1536 * 2
    self_kv = 2 * m.n_text_layer * m.n_text_state * 256 * 2
    floor_ms = (decoder_weight_bytes(model) + batch * (cross + self_kv)) / HBM_BYTES_PER_S * 1e3
    cuda_encoder = dec.cuda_encoder
    dec.close()
    return {
        "batch": batch, "beam": beam, "windows": len(windows), "audio_s": audio,
        "wall_s": wall, "x_real_time": audio / wall, "steps": steps,
        "ms_per_step": ms_step, "floor_ms_per_step": floor_ms, "over_floor": ms_step / floor_ms,
        "cross_kv_int8": int8,
        "encode_ms": s1.encode_ms - s0.encode_ms, "decode_ms": s1.decode_ms - s0.decode_ms,
        "sample_ms": s1.sample_ms - s0.sample_ms, "graph_builds": s1.graph_builds,
        "add_wall_s": add_s, "step_wall_s": step_s, "other_wall_s": wall - add_s - step_s,
        "vram_used_gib": used1 / 2**30, "vram_added_gib": (used1 - used0) / 2**30,
        "peak_in_flight": peak, "cuda_encoder": cuda_encoder,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--wav", required=True)
    ap.add_argument("--seconds", type=float, default=3840)
    ap.add_argument("--batches", default="8,16,32,64,128")
    ap.add_argument("--tokens", type=int, default=100, help="per window; 0 = decode for real")
    ap.add_argument("--threads", type=int, default=0, help="decoder threads (0 = every CPU)")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--encode-batch", type=int, default=8)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--prep-threads", type=int, default=8, help="CPU threads preparing mels ahead")
    ap.add_argument("--auto", action="store_true", help="also the batch automatic sizing picks")
    ap.add_argument("--json")
    args = ap.parse_args()

    audio = decode_audio(Path(args.wav))
    n = int(args.seconds * SAMPLE_RATE)
    audio = np.tile(audio, n // len(audio) + 1)[:n]
    step = 30 * SAMPLE_RATE
    windows = [audio[i:i + step] for i in range(0, n, step)]
    model = WhisperModel(args.model, use_gpu=not args.cpu)
    rows = []
    print(f"{'batch':>5} {'x real time':>11} {'wall s':>7} {'ms/step':>8} {'floor ms':>8} "
          f"{'x floor':>7} {'encode s':>8} {'sample s':>8} {'VRAM GiB':>8}")
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.auto:
        _, free = gpu_memory()
        cost = slot_cost(model, max_beams=args.beam, encode_batch=args.encode_batch)
        auto = min(256, cost.fits(free))
        print(f"free VRAM {free / 2**30:.1f} GiB -> automatic batch size {auto} "
              f"({cost.per_slot_bytes / 2**20:.0f} MiB per window, cells {cells_for(args.beam)})")
        batches = [auto] if auto else []
    for b in batches:
        r = run(model, windows, b, args.tokens, args.beam, args.encode_batch, args.prep_threads, args.threads)
        rows.append(r)
        print(f"{b:>5} {r['x_real_time']:>11.1f} {r['wall_s']:>7.2f} {r['ms_per_step']:>8.2f} "
              f"{r['floor_ms_per_step']:>8.2f} {r['over_floor']:>7.2f} {r['encode_ms'] / 1e3:>8.2f} "
              f"{r['sample_ms'] / 1e3:>8.2f} {r['vram_used_gib']:>8.1f}", flush=True)
        print(f"      wall: add() {r['add_wall_s']:.3f} s (encoder {r['encode_ms'] / 1e3:.3f}), step() "
              f"{r['step_wall_s']:.3f} s (steps {r['decode_ms'] / 1e3:.3f} + sampling "
              f"{r['sample_ms'] / 1e3:.3f}), between {r['other_wall_s']:.3f} s", flush=True)
    if rows:
        print("encoder layers: " + ("whisperd's CUDA code" if rows[0]["cuda_encoder"] else "a ggml graph"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
