"""The batched engine through the service: many jobs at once, one long job, and a short
job behind a long one, each through a real `whisperd serve` and its client.

What (large-v3-shaped random model; every 30 s window decodes exactly --tokens tokens
through WHISPERD_BENCH_TOKENS_PER_WINDOW; the audio is real speech, so VAD cuts it):
  a. --jobs jobs of the 121 s file submitted at once: all their audio / wall seconds
     from the first Submit to the last job done (uploads included);
  b. one --long-minutes job alone: its audio / Submit-to-done wall seconds;
  c. a 5 s clip alone (median of 3), then while the long job runs: the ratio (the
     scheduler's promise is under 2).
Server settings are the defaults (BATCH_SIZE and PARALLEL_JOBS automatic) unless --env.

Under the table, the server's timeline of each part (its `batch timeline:` log lines, one
per busy spell of the scheduler): windows planned and their mean length, when the first
window was planned and encoded, the encoder's and the steps' time, the mean windows a
step of the slots, and the share of the wall time the decoder was busy (add + step
calls); then the engine's own split (encoder, decoder graphs, sampling). A busy share
well under 100 % means the GPU waited for the service (planning, uploads, job turns).

Usage (GPU host, bench/gpu.sh stage `service-batch`):
  python bench/batch_service_bench.py --model build/ggml-large-v3-random-f16.bin \
      --wav speech121.wav --jobs 32 --long-minutes 60 --json out/batch_service.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_service_bench import run_job, wait_ready  # noqa: E402
from server_process import ServerProcess  # noqa: E402

from whisperd.audio import decode_audio, write_wav  # noqa: E402
from whisperd.client import WhisperdClient  # noqa: E402

SR = 16000
TIMELINE = "batch timeline:"


def timeline_since(server: ServerProcess, seen: int, wait_s: float = 5.0) -> tuple[list[str], int]:
    """The server's timeline lines after the first `seen`: the scheduler logs a spell
    when its last job has gone, which can be a moment after the client saw it done."""
    deadline = time.monotonic() + wait_s
    count = lambda: sum(TIMELINE in ln for ln in list(server.log_lines))  # noqa: E731
    while count() <= seen and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # the engine's line follows the spell's
    lines = [ln for ln in list(server.log_lines) if TIMELINE in ln]
    return [ln[ln.index(TIMELINE) + len(TIMELINE):].strip() for ln in lines[seen:]], len(lines)


def greedy_job(client: WhisperdClient, path: Path) -> float:
    """Submit-to-done wall seconds of one greedy job (gpu_service_bench.run_job)."""
    return run_job(client, path, 1)[0]


def many_at_once(client: WhisperdClient, path: Path, n: int) -> tuple[float, float, float]:
    """Wall seconds from the first Submit to the last job done, and when the last Submit
    returned (every upload accepted) and the first job ended, from the same start."""
    errors: list[BaseException] = []
    accepted: list[float] = []
    ended: list[float] = []

    def one() -> None:
        try:
            job = client.submit(path, language="en", beam_size=1)
            accepted.append(time.perf_counter() - t)
            done = client.wait(job.id)
            ended.append(time.perf_counter() - t)
            if done.status.value != "done":
                raise RuntimeError(f"job {job.id} ended {done.status.value}: {done.error}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} jobs failed: {errors[0]}")
    return time.perf_counter() - t, max(accepted), min(ended)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--wav", type=Path, required=True, help="the 121 s speech file")
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--long-minutes", type=float, default=60)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cpu", action="store_true", help="run the server on the CPU (a smoke test)")
    args = ap.parse_args()

    env = {"IDLE_TIMEOUT_SECS": "0", "WHISPERD_BENCH_TOKENS_PER_WINDOW": str(args.tokens)}
    env.update(dict(kv.split("=", 1) for kv in args.env))
    speech = decode_audio(args.wav)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="whisperd-batch-bench-") as tmp:
        long_path = Path(tmp) / "long.wav"
        n_long = int(args.long_minutes * 60 * SR)
        write_wav(long_path, np.tile(speech, n_long // len(speech) + 1)[:n_long])
        clip_path = Path(tmp) / "clip.wav"
        write_wav(clip_path, speech[: 5 * SR])
        server = ServerProcess(Path(tmp) / "data", args.model, env=env, use_gpu=not args.cpu).start(timeout=300)
        try:
            client = WhisperdClient(f"127.0.0.1:{server.port}", timeout=600)
            wait_ready(client)
            greedy_job(client, clip_path)  # warm-up: the decoder, its graphs, the VAD
            _, seen = timeline_since(server, 0)
            secs = len(speech) / SR
            wall, accepted, first_done = many_at_once(client, args.wav, args.jobs)
            timeline, seen = timeline_since(server, seen)
            rows.append({"what": f"{args.jobs} jobs of {secs:.0f} s at once", "audio_s": args.jobs * secs,
                         "wall_s": wall, "timeline": timeline, "all_accepted_s": accepted,
                         "first_done_s": first_done,
                         "note": f"uploads all accepted at {accepted:.2f} s, first job done at {first_done:.2f} s"})
            alone = statistics.median(greedy_job(client, clip_path) for _ in range(3))
            alone_timeline, seen = timeline_since(server, seen)
            long_wall: list[float] = []
            long_thread = threading.Thread(target=lambda: long_wall.append(greedy_job(client, long_path)))
            long_thread.start()
            time.sleep(2.0)  # the long job's windows fill the batch first
            behind = statistics.median(greedy_job(client, clip_path) for _ in range(3))
            long_thread.join()
            long_timeline, seen = timeline_since(server, seen)
            rows.append({"what": f"one {args.long_minutes:g}-minute job alone (a 5 s clip joined it)",
                         "audio_s": n_long / SR, "wall_s": long_wall[0], "timeline": long_timeline})
            rows.append({"what": "5 s clip alone", "audio_s": 5.0, "wall_s": alone, "timeline": alone_timeline[-2:]})
            rows.append({"what": "5 s clip behind the long job", "audio_s": 5.0, "wall_s": behind,
                         "note": f"{behind / alone:.2f}x its time alone"})
            # Which decoder the server made, and anything it warned of: a figure far from
            # bench/batch_bench.py's means the service did not run the batched engine.
            batch_lines = [ln for ln in server.log_lines if TIMELINE not in ln
                           and ("decoder" in ln or " WARNING " in ln or " ERROR " in ln)]
        finally:
            server.stop()
    print(f"{'what':<52} {'audio s':>8} {'wall s':>7} {'x real time':>11}")
    for r in rows:
        x = float(r["audio_s"]) / float(r["wall_s"])  # type: ignore[arg-type]
        r["x_real_time"] = x
        print(f"{r['what']:<52} {r['audio_s']:>8.0f} {r['wall_s']:>7.2f} {x:>11.1f}  {r.get('note', '')}")
    for r in rows:
        for ln in r.get("timeline", []):  # type: ignore[union-attr]
            print(f"timeline, {r['what']}: {ln}")
    for ln in batch_lines[:12]:
        print("server:", ln.strip()[-160:])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
