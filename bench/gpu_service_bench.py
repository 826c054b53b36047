"""Issue 6's table: whisperd end to end on a GPU, through the client, in one run.

For each model (tiny.en, real speech; and a large-v3-shaped model with random weights,
`bench/make_random_model.py`, which decodes exactly --tokens tokens per 30 s window
through WHISPERD_BENCH_TOKENS_PER_WINDOW, whisper-cli the same through our patch 0005):

  a. correctness   jfk.wav through the service (tiny.en): the sentence;
  b. overhead      Submit->done of the 121 s file (jfk x 11) against whisper-cli from the
                   same build on the same file with the same options (language en, beam,
                   threads, flash attention): its own "total time" minus its "load time",
                   and the whole process; median of --repeat runs each;
  c. concurrency   N jobs of the 121 s file submitted at once (N = 1, 2, 4, 8): audio
                   seconds of all jobs / wall seconds from the first Submit to the last
                   job done; VRAM peak (NVML, whole GPU) minus the VRAM with the model
                   loaded and idle, and per extra job;
  d. latency       a 5 s clip alone (median of 3), then the same clip while a 10-minute
                   job runs (median of 3): the ratio should stay under 2;
  e. the peer      read from --peer-json (bench/peer_transformers.py, run by gpu.sh).

The server is a real `whisperd serve` (tests/server_process.py) with PARALLEL_JOBS=8 and
THREADS=--threads per job; every job is a new decoding state, as in production.
Prints one Markdown table; writes every figure to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import EXPECTED_JFK, normalise  # noqa: E402
from server_process import ServerProcess  # noqa: E402

from whisperd.audio import decode_audio, write_wav  # noqa: E402
from whisperd.client import WhisperdClient  # noqa: E402

SR = 16000


@dataclass
class Row:
    section: str
    model: str
    what: str
    beam: int
    wall_s: float
    audio_s: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else 0.0


class VramSampler:
    """Peak GPU memory in use (NVML, whole device) while the block runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._h = None
        try:  # no NVML (a CPU-only smoke run): every reading is 0
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001
            pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def used(self) -> int:
        if self._h is None:
            return 0
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._h).used)

    def __enter__(self) -> VramSampler:
        self.peak = self.used()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, self.used())

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


def wait_ready(client: WhisperdClient, timeout: float = 300) -> None:
    client.load_model()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.model_status()
        if st.state.value == "ready":
            return
        if st.state.value == "waiting_for_gpu" or st.last_error:
            raise RuntimeError(f"model did not load: {st.last_error}")
        time.sleep(0.1)
    raise RuntimeError("model did not load in time")


def run_job(client: WhisperdClient, path: Path, beam: int) -> tuple[float, Any]:
    t = time.perf_counter()
    job = client.submit(path, language="en", beam_size=beam)
    done = client.wait(job.id)
    wall = time.perf_counter() - t
    if done.status.value != "done":
        raise RuntimeError(f"job {job.id} ended {done.status.value}: {done.error}")
    return wall, done


def cli_times(cli: Path, model: Path, wav: Path, beam: int, threads: int, tokens: int, repeat: int) -> dict[str, float]:
    cmd = [str(cli), "-m", str(model), "-f", str(wav), "-t", str(threads), "-bs", str(beam), "-l", "en"]
    env = dict(os.environ)
    if tokens:
        env["WHISPERD_BENCH_TOKENS_PER_WINDOW"] = str(tokens)
    subprocess.run(cmd + ["-np"], capture_output=True, check=True, env=env)  # page cache, warm-up
    walls, works, decodes = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        walls.append(time.perf_counter() - t)
        total = re.search(r"total time\s*=\s*([\d.]+)\s*ms", proc.stderr)
        load = re.search(r"load time\s*=\s*([\d.]+)\s*ms", proc.stderr)
        runs = re.findall(r"(decode|batchd) time\s*=\s*[\d.]+\s*ms\s*/\s*(\d+) runs", proc.stderr)
        if total and load:
            works.append((float(total.group(1)) - float(load.group(1))) / 1000)
        decodes.append(sum(int(n) for _, n in runs))
    return {
        "whole_s": statistics.median(walls),
        "work_s": statistics.median(works) if works else float("nan"),
        "decoder_runs": statistics.median(decodes) if decodes else 0,
    }


def concurrent(client: WhisperdClient, path: Path, n: int, beam: int, vram: VramSampler) -> tuple[float, int]:
    walls: list[float] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            run_job(client, path, beam)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    with vram:
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        walls.append(time.perf_counter() - t)
    if errors:
        raise errors[0]
    return walls[0], vram.peak


def latency(client: WhisperdClient, clip: Path, long: Path, beam: int) -> tuple[float, float, float]:
    alone = statistics.median(run_job(client, clip, beam)[0] for _ in range(3))
    long_job = client.submit(long, language="en", beam_size=beam)
    deadline = time.monotonic() + 120
    while client.get(long_job.id).status.value != "running":
        if time.monotonic() > deadline:
            raise RuntimeError("the 10-minute job never started")
        time.sleep(0.05)
    time.sleep(0.5)  # well into its work
    behind = []
    for _ in range(3):
        behind.append(run_job(client, clip, beam)[0])
    still = client.get(long_job.id).status.value
    client.cancel(long_job.id) if still in ("queued", "running") else None
    if still != "running":
        print(f"warning: the long job was {still} before the short jobs ended", file=sys.stderr)
    return alone, statistics.median(behind), client.get(long_job.id).progress


def bench_model(label: str, model: Path, tokens: int, args: argparse.Namespace, files: dict[str, Path],
                rows: list[Row], vram: VramSampler) -> None:
    env = {"PARALLEL_JOBS": "8", "THREADS": str(args.threads), "IDLE_TIMEOUT_SECS": "0"}
    if tokens:
        env["WHISPERD_BENCH_TOKENS_PER_WINDOW"] = str(tokens)
    with tempfile.TemporaryDirectory(prefix="whisperd-bench-") as tmp:
        idle_before = vram.used()
        server = ServerProcess(Path(tmp), model, env=env, use_gpu=True).start(timeout=300)
        try:
            client = WhisperdClient(f"127.0.0.1:{server.port}", timeout=600)
            t = time.perf_counter()
            wait_ready(client)
            load_s = time.perf_counter() - t
            idle = vram.used()
            rows.append(Row("model", label, f"load (VRAM +{(idle - idle_before) / 2**20:.0f} MiB)", 0, load_s, 0))
            if not tokens:
                wall, job = run_job(client, files["jfk"], 5)
                text = " ".join(s.text.strip() for s in job.segments)
                ok = normalise(text) == normalise(EXPECTED_JFK)
                rows.append(Row("a. correctness", label, "jfk 11 s", 5, wall, 11.0,
                                "sentence ok" if ok else f"WRONG: {text}"))
            speech = files["speech"]
            secs = len(decode_audio(speech)) / SR
            run_job(client, files["clip"], 1)  # warm-up through the whole path
            for beam in (1, 5):
                ours = statistics.median(run_job(client, speech, beam)[0] for _ in range(args.repeat))
                rows.append(Row("b. overhead", label, f"{secs:.0f} s, service", beam, ours, secs))
                if args.whisper_cli:
                    cli = cli_times(args.whisper_cli, model, speech, beam, args.threads, tokens, args.repeat)
                    over = (ours / cli["work_s"] - 1) * 100
                    rows.append(Row("b. overhead", label, f"{secs:.0f} s, whisper-cli work", beam, cli["work_s"], secs,
                                    f"service {over:+.1f}% vs this", {"decoder_runs": cli["decoder_runs"]}))
                    rows.append(Row("b. overhead", label, f"{secs:.0f} s, whisper-cli process", beam, cli["whole_s"], secs,
                                    "incl. its model load"))
            for beam in args.beams:
                one = None
                peak1 = None
                for n in args.jobs:
                    wall, peak = concurrent(client, speech, n, beam, vram)
                    agg = n * secs / wall
                    one = one or agg
                    peak1 = peak1 or peak
                    per_job = (peak - peak1) / (n - 1) / 2**20 if n > 1 else 0.0
                    rows.append(Row("c. concurrency", label, f"{n} jobs at once", beam, wall, n * secs,
                                    f"{agg / one:.2f}x of 1 job; VRAM +{(peak - idle) / 2**20:.0f} MiB"
                                    + (f", {per_job:.0f} MiB per extra job" if n > 1 else ""),
                                    {"vram_peak_over_idle": peak - idle, "vram_per_extra_job": per_job * 2**20}))
            alone, behind, long_progress = latency(client, files["clip"], files["long"], 5)
            rows.append(Row("d. latency", label, "5 s job alone", 5, alone, 5.0))
            rows.append(Row("d. latency", label, "5 s job behind a 10-min job", 5, behind, 5.0,
                            f"{behind / alone:.2f}x its time alone (goal <= 2)",
                            {"ratio": behind / alone, "long_job_progress_at_end": long_progress}))
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", type=Path, required=True)
    ap.add_argument("--large", type=Path)
    ap.add_argument("--whisper-cli", type=Path)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--beams", default="1,5")
    ap.add_argument("--quick", action="store_true", help="smoke run: short files, 1 and 2 jobs")
    ap.add_argument("--peer-json", type=Path)
    ap.add_argument("--json", type=Path, default=Path("bench/results/gpu_service_bench.json"))
    args = ap.parse_args()
    args.beams = [int(b) for b in args.beams.split(",")]
    args.jobs = (1, 2) if args.quick else (1, 2, 4, 8)
    speech_x, long_s = (3, 60) if args.quick else (11, 600)
    out = args.json.parent
    out.mkdir(parents=True, exist_ok=True)

    jfk = decode_audio(ROOT / "third_party/whisper.cpp/samples/jfk.wav")
    files = {"jfk": ROOT / "third_party/whisper.cpp/samples/jfk.wav"}
    for name, audio in (("speech", np.tile(jfk, speech_x)), ("clip", jfk[: 5 * SR]),
                        ("long", np.tile(jfk, int(np.ceil(long_s * SR / len(jfk))))[: long_s * SR])):
        files[name] = out / f"bench-{name}.wav"
        write_wav(files[name], audio)

    rows: list[Row] = []
    vram = VramSampler()
    bench_model("tiny.en q8_0", args.tiny, 0, args, files, rows, vram)
    if args.large and args.large.exists():
        bench_model(f"large-v3 shape, random, {args.tokens} tok/window", args.large, args.tokens, args, files, rows, vram)
    if args.peer_json and args.peer_json.exists():
        for p in json.loads(args.peer_json.read_text()).get("rows", []):
            rows.append(Row("e. peer", f"large-v3 shape, random, {args.tokens} tok/window",
                            f"transformers {p['mode']}, fp16 sdpa, batch {p['batch_size']}", 1,
                            p["wall_s"], p["audio_s"],
                            f"{p['ms_per_token_step']:.1f} ms per step; VRAM peak {p['peak_vram_mib']:.0f} MiB"))

    print()
    print("| section | model | what | beam | wall s | x real time | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r.x_real_time:.1f}" if r.audio_s else ""
        print(f"| {r.section} | {r.model} | {r.what} | {r.beam or ''} | {r.wall_s:.3f} | {speed} | {r.note} |")
    args.json.write_text(json.dumps([asdict(r) | {"x_real_time": r.x_real_time} for r in rows], indent=2))


if __name__ == "__main__":
    main()
