"""Every GPU of a host through one server (GPU_DEVICES), on real GPUs: the two-GPU proof.

What (a real `whisperd serve` and its client; the 121 s speech file):
  a. scaling     --jobs jobs submitted at once to a server on one GPU (GPU_DEVICES=0),
                 then to one on all of --devices: all their audio / wall seconds from the
                 first Submit to the last job done, the ratio, which GPU started each job
                 (the workers' "started on gpu N" lines), each GPU's memory in use once
                 the model is ready (NVML, through ModelControl.Status), and the batch
                 schedulers' timeline lines (where the wall time went);
  b. --oom       the server loads on every GPU and unloads; another process then holds
                 all but --leave-gib of the last GPU (bench/vram_ballast.py) and the model
                 is loaded again: that GPU's model waits for VRAM while the others serve;
                 --jobs jobs must all finish, on the others; the ballast is then killed:
                 the waiting GPU must load by itself (how long it took) and take jobs again;
  c. --unload-one  the last GPU's model unloaded 1 s after --jobs jobs were submitted
                 (Unload's gpu_indices; all uploads are in by then, so no Submit loads it
                 again): the jobs all end done, the other GPUs stay ready; then it is
                 loaded again. Needs jobs that run longer than 1 s (the large-v3 shape).
Server settings are the defaults (BATCH_SIZE and PARALLEL_JOBS automatic) unless --env.
Exits 1 when a job is lost or fails, or a GPU never becomes ready.

Usage (a host with two GPUs, bench/gpu.sh stage `multigpu`):
  python bench/multi_gpu_bench.py --model .gpu/ggml-tiny.en-q8_0.bin --wav speech121.wav \
      --jobs 16 --devices 0,1 --oom --json out/multi_gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from batch_service_bench import TIMELINE, many_at_once  # noqa: E402
from server_process import ServerProcess  # noqa: E402

from whisperd.audio import decode_audio, write_wav  # noqa: E402
from whisperd.client import WhisperdClient  # noqa: E402
from whisperd.v1 import model_control_pb2 as mpb  # noqa: E402

SR = 16000
STARTED = re.compile(r"job (\S+): started on gpu (\d+)")


def device_states(client: WhisperdClient) -> dict[int, str]:
    """Each GPU's model state (ModelControl.Status's devices; one GPU: the top level)."""
    st = client.model_status()
    if not st.pb.devices:
        return {0: st.state.value}
    return {d.gpu_index: mpb.ModelState.Name(d.state).removeprefix("MODEL_STATE_").lower()
            for d in st.pb.devices}


def wait_states(client: WhisperdClient, want: dict[int, set[str]], timeout: float) -> float:
    """Seconds until every GPU in `want` is in one of its states; RuntimeError after timeout."""
    t = time.perf_counter()
    while True:
        states = device_states(client)
        if all(states.get(d) in ok for d, ok in want.items()):
            return time.perf_counter() - t
        if time.perf_counter() - t > timeout:
            raise RuntimeError(f"GPU states {states} after {timeout:.0f} s, wanted {want}")
        time.sleep(0.1)


def memory_used_gib(client: WhisperdClient) -> dict[int, float]:
    return {g.index: g.memory_used_bytes / 2**30 for g in client.model_status().gpus}


def started_per_gpu(server: ServerProcess, since: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for line in list(server.log_lines)[since:]:
        if m := STARTED.search(line):
            counts[int(m.group(2))] = counts.get(int(m.group(2)), 0) + 1
    return counts


def serve(tmp: Path, name: str, model: Path, env: dict[str, str]) -> tuple[ServerProcess, WhisperdClient]:
    server = ServerProcess(tmp / name, model, env=env, use_gpu=True).start(timeout=300)
    return server, WhisperdClient(f"127.0.0.1:{server.port}", timeout=600)


def scaling(tmp: Path, args: argparse.Namespace, env: dict[str, str], devices: list[int],
            clip: Path) -> dict[str, Any]:
    """Part a on `devices`."""
    server, client = serve(tmp, "gpus-" + "-".join(map(str, devices)),
                           args.model, env | {"GPU_DEVICES": ",".join(map(str, devices))})
    try:
        client.load_model()
        load_s = wait_states(client, {d: {"ready"} for d in devices}, 300)
        memory = memory_used_gib(client)
        # Warm every GPU: enough clips at once that each GPU's workers take some.
        many_at_once(client, clip, 4 * len(devices))
        mark = len(server.log_lines)
        wall, accepted, first_done = many_at_once(client, args.wav, args.jobs)
        time.sleep(1.0)  # each scheduler logs its timeline once its last job has gone
        per_gpu = started_per_gpu(server, mark)
        timeline = [ln[ln.index(TIMELINE) + len(TIMELINE):].strip()
                    for ln in list(server.log_lines)[mark:] if TIMELINE in ln]
    finally:
        server.stop()
    audio = args.jobs * len(decode_audio(args.wav)) / SR
    return {"devices": devices, "jobs": args.jobs, "audio_s": audio, "wall_s": wall,
            "x_real_time": audio / wall, "all_accepted_s": accepted, "first_done_s": first_done,
            "jobs_started_per_gpu": per_gpu, "ready_after_s": load_s, "memory_used_gib": memory,
            "timeline": timeline}


def out_of_memory(tmp: Path, args: argparse.Namespace, env: dict[str, str], devices: list[int],
                  clip: Path) -> dict[str, Any]:
    """Part b: the last GPU taken by another process while the model is unloaded, then freed.

    The server loads on every GPU first (as tests/test_gpu_lifecycle.py, the process's
    CUDA context must exist on a GPU before its memory is taken), unloads, and loads
    again once the ballast holds the last GPU."""
    held = devices[-1]
    others = devices[:-1]
    server, client = serve(tmp, "oom", args.model,
                           env | {"GPU_DEVICES": ",".join(map(str, devices)), "GPU_POLL_INTERVAL_SECS": "1"})
    ballast: subprocess.Popen[str] | None = None
    try:
        client.load_model()
        wait_states(client, {d: {"ready"} for d in devices}, 300)
        client.unload_model()
        wait_states(client, {d: {"unloaded"} for d in devices}, 60)
        ballast = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "vram_ballast.py"), "--leave-gib", str(args.leave_gib)],
            env=os.environ | {"CUDA_VISIBLE_DEVICES": str(held)}, stdout=subprocess.PIPE, text=True)
        assert ballast.stdout is not None
        line = ballast.stdout.readline().strip()
        if not line.startswith("holding"):
            raise RuntimeError(f"the ballast on gpu {held} did not start (bench/vram_ballast.py needs torch)")
        print(f"ballast on gpu {held}: {line}", flush=True)
        client.load_model()
        wait_states(client, {d: {"ready"} for d in others} | {held: {"waiting_for_gpu"}}, 300)
        states_held = device_states(client)
        mark = len(server.log_lines)
        wall, _, _ = many_at_once(client, args.wav, args.jobs)
        time.sleep(0.3)
        while_held = started_per_gpu(server, mark)
        freed = time.perf_counter()
        ballast.kill()
        ballast.wait()
        wait_states(client, {d: {"ready"} for d in devices}, 120)
        recovered_s = time.perf_counter() - freed
        mark = len(server.log_lines)
        many_at_once(client, clip, 4 * len(devices))
        many_at_once(client, args.wav, args.jobs)
        time.sleep(0.3)
        after = started_per_gpu(server, mark)
    finally:
        if ballast is not None and ballast.poll() is None:
            ballast.kill()
            ballast.wait()
        server.stop()
    return {"held_gpu": held, "states_while_held": states_held, "jobs": args.jobs,
            "wall_s_while_held": wall, "jobs_started_per_gpu_while_held": while_held,
            "ready_after_freed_s": recovered_s, "jobs_started_per_gpu_after": after}


def unload_one(tmp: Path, args: argparse.Namespace, env: dict[str, str], devices: list[int]) -> dict[str, Any]:
    """Part c: the last GPU's model unloaded (ModelControl.Unload's gpu_indices) while
    --jobs jobs run, then loaded again; every job must end done."""
    one = devices[-1]
    server, client = serve(tmp, "unload-one", args.model, env | {"GPU_DEVICES": ",".join(map(str, devices))})
    try:
        client.load_model()
        wait_states(client, {d: {"ready"} for d in devices}, 300)
        outcome: list[tuple[float, float, float]] = []
        errors: list[BaseException] = []

        def jobs() -> None:
            try:
                outcome.append(many_at_once(client, args.wav, args.jobs))
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        runner = threading.Thread(target=jobs)
        runner.start()
        time.sleep(1.0)
        t = time.perf_counter()
        client.unload_model(gpus=[one])
        wait_states(client, {one: {"unloaded"}}, 60)
        unloaded_s = time.perf_counter() - t
        states_after = device_states(client)
        runner.join()
        if errors:
            raise errors[0]
        t = time.perf_counter()
        client.load_model(gpus=[one])
        wait_states(client, {d: {"ready"} for d in devices}, 120)
        loaded_s = time.perf_counter() - t
    finally:
        server.stop()
    return {"gpu": one, "unloaded_after_s": unloaded_s, "states_after_unload": states_after,
            "jobs": args.jobs, "wall_s": outcome[0][0], "loaded_again_after_s": loaded_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--wav", type=Path, required=True, help="the 121 s speech file")
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--devices", default="0,1", help="the GPUs of the many-GPU server")
    ap.add_argument("--tokens", type=int, default=0,
                    help="tokens per 30 s window (a random-weights model); 0 decodes for real")
    ap.add_argument("--oom", action="store_true",
                    help="part b: one GPU held by another process (two or more --devices)")
    ap.add_argument("--unload-one", action="store_true",
                    help="part c: one GPU's model unloaded while jobs run, then loaded again (two or more --devices)")
    ap.add_argument("--leave-gib", type=float, default=0.0625, help="what the ballast leaves free")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    env = {"IDLE_TIMEOUT_SECS": "0"}
    if args.tokens:
        env["WHISPERD_BENCH_TOKENS_PER_WINDOW"] = str(args.tokens)
    env.update(dict(kv.split("=", 1) for kv in args.env))
    devices = [int(d) for d in args.devices.split(",")]
    result: dict[str, Any] = {"model": args.model.name}
    failed = False
    with tempfile.TemporaryDirectory(prefix="whisperd-multi-gpu-") as name:
        tmp = Path(name)
        clip = tmp / "clip.wav"
        write_wav(clip, decode_audio(args.wav)[: 5 * SR])
        one = scaling(tmp, args, env, devices[:1], clip)
        many = scaling(tmp, args, env, devices, clip)
        result |= {"one_gpu": one, "all_gpus": many, "speedup": many["x_real_time"] / one["x_real_time"]}
        secs = len(decode_audio(args.wav)) / SR
        print(f"{args.model.name}: {args.jobs} jobs of {secs:.0f} s at once")
        print(f"{'GPUs':<8} {'x real time':>11} {'wall s':>7}  jobs started per GPU   memory in use (GiB)")
        for r in (one, many):
            mem = ", ".join(f"gpu {i} {g:.1f}" for i, g in sorted(r["memory_used_gib"].items()))
            print(f"{','.join(map(str, r['devices'])):<8} {r['x_real_time']:>11.1f} {r['wall_s']:>7.2f}  "
                  f"{str(r['jobs_started_per_gpu']):<22} {mem}")
        print(f"speed-up, {len(devices)} GPUs against 1: {result['speedup']:.2f}x")
        # The schedulers' own account (one per GPU): where the wall time went.
        for r in (one, many):
            for ln in r["timeline"]:
                print(f"timeline, GPUs {','.join(map(str, r['devices']))}: {ln}")
        parts: list[tuple[str, str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], str]]] = []
        if args.oom and len(devices) > 1:
            parts.append(("oom", "out-of-memory", lambda: out_of_memory(tmp, args, env, devices, clip), lambda r: (
                f"gpu {r['held_gpu']} held by another process: states {r['states_while_held']}; "
                f"{args.jobs} jobs all done in {r['wall_s_while_held']:.2f} s, started per GPU "
                f"{r['jobs_started_per_gpu_while_held']}; freed: ready again after "
                f"{r['ready_after_freed_s']:.1f} s, then jobs started per GPU {r['jobs_started_per_gpu_after']}")))
        if args.unload_one and len(devices) > 1:
            parts.append(("unload_one", "one-GPU unload", lambda: unload_one(tmp, args, env, devices), lambda r: (
                f"gpu {r['gpu']}'s model unloaded while {args.jobs} jobs ran: unloaded in "
                f"{r['unloaded_after_s']:.2f} s, states {r['states_after_unload']}; every job done "
                f"({r['wall_s']:.2f} s); loaded again in {r['loaded_again_after_s']:.1f} s")))
        for key, label, run, describe in parts:
            try:
                result[key] = run()
                print(describe(result[key]))
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says it
                result[key] = {"error": str(exc)}
                print(f"{label} part FAILED: {exc}")
                failed = True
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
