#!/usr/bin/env python3
"""Service latency: Submit→done through a real whisperd server, against the native path.

Everything runs on this machine's CPU with Whisper tiny.en (f16 GGML), beam 1 (greedy),
language "en", other decoding options the service's defaults (temperature 0 with the
0.2 fallback, best_of 5). Each server is a real `whisperd serve --cpu` subprocess on a
free port (tests/server_process.py) started with IDLE_TIMEOUT_SECS=0; the model is loaded
first (ModelControl.Load, then Status until READY), so load time is never in a latency.

  1. idle      a 5 s clip (the first 5 s of samples/jfk.wav) on an idle server,
               PARALLEL_JOBS=1 (2 threads per job): one warm-up job, then N runs.
               Submit→done is split into upload+probe (the Submit call), queue wait
               (started_at - created_at), transcription (completed_at - started_at, the
               worker's decode + transcribe + store writes) and notification (done event
               received - completed_at).
  2. busy      the same clip while a 10-minute job runs, PARALLEL_JOBS=2 (1 thread per
               job, so the short job gets its own worker): the 10-minute file is jfk tiled
               to 600 s; once it runs with progress > 0, three short jobs run one after
               another, then the long job is cancelled. The long job's speed (audio
               seconds per wall second, from its progress events) is compared before,
               during and after the short jobs. A row of the same short jobs on the idle
               PARALLEL_JOBS=2 server separates "one thread" from "the long job".
  3. overhead  the service against the native path on the same files (jfk 11 s and jfk
               tiled to 60 s): native = WhisperModel in this process, a new state per
               run, threads=2, timed over decode_audio(file) + transcribe(); service =
               Submit→done of the same file, PARALLEL_JOBS=1 (threads = 2 CPUs / 1).
               Runs alternate native / service. Before each service run the model is
               unloaded and loaded again (ModelControl.Unload / Load, not timed), so the
               job, like the native run, starts from a new decoding state: a worker keeps
               its state from job to job, and a state that still carried the previous
               call's text as decoder context (no_context off, before commit 38aca75)
               changed what was decoded. The row says whether the transcripts match.

After part 1 one jfk job runs on the server whose worker has just done the 5 s clips; its
transcript is checked against the full sentence (the context carry-over check).

Timestamps created_at / started_at / completed_at come from the server's clock
(time.time() in the same machine), so they subtract from the client's time.time().
Before timed runs (not in part 2, where the long job is the point) the script waits up to
--quiet-wait seconds for other processes to leave the CPUs alone, and every row reports
the CPU other processes took meanwhile; the load average is recorded at start and end.

The table goes to stdout as Markdown (progress lines to stderr); the same figures, with
every run, go to bench/results/service_bench.json.

  .venv/bin/python bench/service_bench.py [--runs 5] [--repeat 5] [--quiet-wait 10]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's server helper and reference text

from conftest import EXPECTED_JFK, normalise  # noqa: E402
from server_process import ServerProcess, submit_requests  # noqa: E402

from whisperd import paths  # noqa: E402
from whisperd.audio import decode_audio, write_wav  # noqa: E402
from whisperd.v1 import model_control_pb2 as mpb, transcription_pb2 as pb  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
JSON_OUT = RESULTS_DIR / "service_bench.json"
SR = 16000
BEAM = 1
CLIP_SECS = 5.0
LONG_SECS = 600.0
TILE_SECS = 60.0

_T0 = time.time()


def progress(msg: str) -> None:
    """A progress line on stderr (stdout stays for the table)."""
    print(f"[{time.time() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ what else runs

_HZ = os.sysconf("SC_CLK_TCK")
QUIET_BUSY = 0.10  # others' share of all CPUs that still counts as quiet


def _busy_secs() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / _HZ


def _proc_cpu(pid: int) -> float:
    """user + system CPU seconds of one process, all its threads (/proc/PID/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


class Ours:
    """CPU time of this process and of the server subprocess in use."""

    server_pid: int | None = None

    @classmethod
    def cpu(cls) -> float:
        t = os.times()
        own = t.user + t.system
        return own + (_proc_cpu(cls.server_pid) if cls.server_pid else 0.0)


class CpuMeter:
    """Share of all CPUs that other processes used while the block ran (0..1)."""

    def __enter__(self) -> CpuMeter:
        self._b0, self._o0, self._w0 = _busy_secs(), Ours.cpu(), time.perf_counter()
        self._s0 = _proc_cpu(Ours.server_pid) if Ours.server_pid else 0.0
        t = os.times()
        self._own0 = t.user + t.system
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._w0
        cpus = wall * (os.cpu_count() or 1)
        others = (_busy_secs() - self._b0) - (Ours.cpu() - self._o0)
        self.others = max(0.0, others / max(1e-9, cpus))
        server = _proc_cpu(Ours.server_pid) - self._s0 if Ours.server_pid else 0.0
        self.server = max(0.0, server / max(1e-9, cpus))
        self.server_s = server  # CPU seconds the server used
        t = os.times()
        self.own_s = t.user + t.system - self._own0  # CPU seconds this process used


def wait_for_quiet(max_wait: float) -> float:
    """Wait (0.5 s samples, at most max_wait) until others use under QUIET_BUSY of the CPUs."""
    if max_wait <= 0:
        return -1.0
    deadline = time.time() + max_wait
    while True:
        with CpuMeter() as m:
            time.sleep(0.5)
        if m.others <= QUIET_BUSY or time.time() >= deadline:
            return m.others


# ------------------------------------------------------------------ helpers

def secs(ts: Any) -> float | None:
    return ts.seconds + ts.nanos / 1e9 if (ts.seconds or ts.nanos) else None


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    if len(xs) == 1:
        return xs[0]
    return float(np.percentile(xs, 90))  # linear interpolation between closest ranks


def load_model(server: ServerProcess, timeout: float = 120.0) -> float:
    """ModelControl.Load, then Status until READY; returns the seconds it took."""
    t0 = time.time()
    server.model.Load(mpb.LoadModelRequest())
    deadline = t0 + timeout
    while True:
        st = server.model.Status(mpb.ModelStatusRequest())
        if st.state == mpb.MODEL_STATE_READY:
            return time.time() - t0
        if time.time() > deadline:
            raise RuntimeError(f"model not READY after {timeout} s:\n{server.log()}")
        time.sleep(0.02)


def fresh_state(server: ServerProcess) -> None:
    """Unload and load the model: the workers' decoding states go with it, so the next job
    starts from a new state with no decoder context left by the previous job."""
    server.model.Unload(mpb.UnloadModelRequest())
    load_model(server)


def job_options(name: str) -> pb.JobOptions:
    return pb.JobOptions(beam_size=BEAM, language="en", filename=name)


def submit_and_wait(server: ServerProcess, data: bytes, name: str, timeout: float = 600.0) -> dict:
    """Submit, follow StreamProgress to the done event; the latency and its parts."""
    with CpuMeter() as meter:
        t0 = time.time()
        job = server.jobs.Submit(submit_requests(data, job_options(name)), timeout=timeout)
        t1 = time.time()
        final = None
        for ev in server.jobs.StreamProgress(pb.StreamProgressRequest(id=job.id), timeout=timeout):
            if ev.WhichOneof("event") == "done":
                t2 = time.time()
                final = ev.done
                break
    if final is None or final.status != pb.JOB_STATUS_DONE:
        raise RuntimeError(f"job {job.id} ended {final and pb.JobStatus.Name(final.status)}:\n{server.log()}")
    created, started, completed = secs(final.created_at), secs(final.started_at), secs(final.completed_at)
    assert created and started and completed
    r = {
        "job_id": job.id,
        "audio_s": final.duration_secs,
        "total_s": t2 - t0,
        "upload_probe_s": t1 - t0,
        "queue_s": started - created,
        "transcribe_s": completed - started,
        "notify_s": t2 - completed,
        "others_cpu": meter.others,
        "server_cpu_s": meter.server_s,
        "client_cpu_s": meter.own_s,
        "text": " ".join(s.text.strip() for s in final.segments if s.text.strip()),
    }
    # created_at is stamped inside Submit, so Submit's tail overlaps the queue wait:
    # the parts add up to slightly more than the total (this is negative, ~ms).
    r["unaccounted_s"] = r["total_s"] - (r["upload_probe_s"] + r["queue_s"] + r["transcribe_s"] + r["notify_s"])
    return r


def summarise(runs: list[dict]) -> dict:
    tot = [r["total_s"] for r in runs]
    out = {
        "n": len(runs),
        "median_s": median(tot),
        "p90_s": p90(tot),
        "min_s": min(tot),
        "max_s": max(tot),
        "others_cpu": median([r["others_cpu"] for r in runs]),
    }
    for k in ("upload_probe_s", "queue_s", "transcribe_s", "notify_s"):
        out[k] = median([r[k] for r in runs])
    return out


def clip_bytes(samples: np.ndarray, secs_: float, tmp: Path, name: str) -> tuple[Path, bytes]:
    path = write_wav(tmp / name, samples[: int(secs_ * SR)])
    return path, path.read_bytes()


def tiled(samples: np.ndarray, secs_: float) -> np.ndarray:
    n = int(secs_ * SR)
    reps = -(-n // len(samples))
    return np.tile(samples, reps)[:n]


def start_server(data_dir: Path, model: Path, parallel: int) -> ServerProcess:
    env = {"IDLE_TIMEOUT_SECS": "0", "PARALLEL_JOBS": str(parallel), "LOG_LEVEL": "INFO"}
    os.environ.pop("THREADS", None)  # threads per job: the default, cpu_count / PARALLEL_JOBS
    t0 = time.time()
    server = ServerProcess(data_dir, model, env=env).start()
    Ours.server_pid = server.pid
    load_s = load_model(server)
    progress(f"server PARALLEL_JOBS={parallel} up on port {server.port} in {time.time() - t0 - load_s:.1f} s, "
             f"model READY after {load_s:.2f} s")
    return server


# ------------------------------------------------------------------ part 1

def part_idle(server: ServerProcess, clip: bytes, args: argparse.Namespace) -> dict:
    progress("part 1: 5 s clip on an idle server (PARALLEL_JOBS=1) - warm-up job")
    warm = submit_and_wait(server, clip, "clip5.wav")
    progress(f"  warm-up: {warm['total_s']:.3f} s")
    runs = []
    for i in range(args.runs):
        wait_for_quiet(args.quiet_wait)
        r = submit_and_wait(server, clip, "clip5.wav")
        runs.append(r)
        progress(f"  run {i + 1}/{args.runs}: {r['total_s']:.3f} s (upload+probe {1e3 * r['upload_probe_s']:.0f} ms, "
                 f"queue {1e3 * r['queue_s']:.0f} ms, transcription {r['transcribe_s']:.3f} s, "
                 f"notification {1e3 * r['notify_s']:.0f} ms; others' CPU {100 * r['others_cpu']:.0f}%)")
    # The worker's state now holds the clip's text as context; does the next job suffer?
    jfk_bytes = (paths.samples_dir() / "jfk.wav").read_bytes()
    after = submit_and_wait(server, jfk_bytes, "jfk.wav")
    full = normalise(after["text"]) == normalise(EXPECTED_JFK)
    progress(f"  context carry-over check, jfk after the clips: {after['text']!r} "
             f"({'the full sentence' if full else 'NOT the full sentence'})")
    carry = {"job": "jfk.wav (11 s) right after the 5 s clip jobs, same worker", "text": after["text"],
             "full_sentence": full, "total_s": after["total_s"]}
    return {"warmup": warm, "runs": runs, "summary": summarise(runs), "context_carryover": carry}


# ------------------------------------------------------------------ part 2

class LongJobWatch(threading.Thread):
    """Follows the long job's StreamProgress, recording (time, percent) of each step."""

    def __init__(self, server: ServerProcess, job_id: str) -> None:
        super().__init__(daemon=True)
        self.server, self.job_id = server, job_id
        self.points: list[tuple[float, float]] = []
        self.final: pb.Job | None = None
        self.done_at: float | None = None
        self.error: BaseException | None = None
        self.changed = threading.Event()

    def run(self) -> None:
        try:
            for ev in self.server.jobs.StreamProgress(pb.StreamProgressRequest(id=self.job_id), timeout=900):
                kind = ev.WhichOneof("event")
                now = time.time()
                if kind == "progress":
                    self.points.append((now, ev.progress.percent))
                    self.changed.set()
                elif kind == "done":
                    self.final, self.done_at = ev.done, now
                    self.changed.set()
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
            self.changed.set()

    def positive(self) -> list[tuple[float, float]]:
        return [(t, p) for t, p in self.points if 0 < p < 100]

    def position(self, t: float) -> float | None:
        """Percent done at time t, linear between progress events."""
        pts = self.positive()
        for (ta, pa), (tb, pb_) in zip(pts, pts[1:]):
            if ta <= t <= tb:
                return pa + (pb_ - pa) * (t - ta) / max(1e-9, tb - ta)
        return None


def rate_between(watch: LongJobWatch, t_from: float, t_to: float, audio_s: float) -> dict:
    """Audio seconds per wall second over [t_from, t_to]: from progress events inside it."""
    pts = [(t, p) for t, p in watch.positive() if t_from <= t <= t_to]
    if len(pts) < 2:
        return {"rate": None, "events": len(pts)}
    (ta, pa), (tb, pb_) = pts[0], pts[-1]
    return {"rate": (pb_ - pa) / 100 * audio_s / (tb - ta), "events": len(pts), "span_s": tb - ta}


def part_busy(server: ServerProcess, clip: bytes, long_bytes: bytes, args: argparse.Namespace) -> dict:
    progress("part 2: PARALLEL_JOBS=2 (1 thread per job) - warm-up job, then the clip on the idle server")
    warm = submit_and_wait(server, clip, "clip5.wav")
    idle_runs = []
    wait_for_quiet(args.quiet_wait)
    for i in range(args.busy_runs):
        r = submit_and_wait(server, clip, "clip5.wav")
        idle_runs.append(r)
        progress(f"  idle run {i + 1}/{args.busy_runs}: {r['total_s']:.3f} s (transcription {r['transcribe_s']:.3f} s)")

    progress(f"  submitting the {LONG_SECS / 60:.0f}-minute job ({len(long_bytes) / 1e6:.1f} MB)")
    t0 = time.time()
    long_job = server.jobs.Submit(submit_requests(long_bytes, job_options("long600.wav")), timeout=300)
    long_submit_s = time.time() - t0
    watch = LongJobWatch(server, long_job.id)
    watch.start()
    # Running with progress > 0, and enough progress steps (one per ~30 s window) to
    # measure its speed before the short jobs start.
    deadline = time.time() + 90
    while len(watch.positive()) < args.before_steps and watch.final is None and watch.error is None:
        if time.time() > deadline:
            break
        watch.changed.wait(0.5)
        watch.changed.clear()
    if watch.final is not None or watch.error is not None or not watch.positive():
        raise RuntimeError(f"long job not running as expected ({watch.error}):\n{server.log()}")
    status = server.jobs.Get(pb.GetJobRequest(id=long_job.id))
    progress(f"  long job {pb.JobStatus.Name(status.status)} at {watch.positive()[-1][1]:.0f}%; "
             "timing 3 short jobs beside it")
    runs = []
    t_short0 = time.time()
    for i in range(args.busy_runs):
        r = submit_and_wait(server, clip, "clip5.wav")
        runs.append(r)
        progress(f"  run {i + 1}/{args.busy_runs}: {r['total_s']:.3f} s (queue {1e3 * r['queue_s']:.0f} ms, "
                 f"transcription {r['transcribe_s']:.3f} s)")
    t_short1 = time.time()
    # A little more of the long job alone, as a check on "before".
    t_after_end = time.time() + args.after_secs
    while time.time() < t_after_end and watch.final is None:
        time.sleep(0.1)
    t_cancel = time.time()
    if watch.final is None:
        server.jobs.Cancel(pb.CancelJobRequest(id=long_job.id))
    watch.join(60)
    cancel_s = (watch.done_at - t_cancel) if watch.done_at else None
    final_status = pb.JobStatus.Name(watch.final.status) if watch.final else "?"
    progress(f"  long job {final_status} ({cancel_s and f'{cancel_s:.2f} s after Cancel'}) at "
             f"{watch.points[-1][1] if watch.points else 0:.0f}%")

    audio = LONG_SECS
    first_t = watch.positive()[0][0]
    before = rate_between(watch, first_t, t_short0, audio)
    after = rate_between(watch, t_short1, t_cancel, audio)
    p_start, p_end = watch.position(t_short0), watch.position(t_short1)
    during: dict[str, Any] = {"rate": None}
    if p_start is not None and p_end is not None:
        during = {
            "rate": (p_end - p_start) / 100 * audio / (t_short1 - t_short0),
            "span_s": t_short1 - t_short0,
            "events": sum(1 for t, _ in watch.positive() if t_short0 <= t <= t_short1),
            "note": "percent interpolated linearly between progress events at both ends",
        }
    long_info = {
        "audio_s": audio,
        "submit_s": long_submit_s,
        "threads": 1,
        "before": before,
        "during": during,
        "after": after,
        "slowdown_pct": (100 * (1 - during["rate"] / before["rate"]))
        if during.get("rate") and before.get("rate") else None,
        "cancel_to_done_s": cancel_s,
        "final_status": final_status,
        "progress_events": [(round(t - first_t, 3), p) for t, p in watch.points],
        "short_jobs_window_s": [round(t_short0 - first_t, 3), round(t_short1 - first_t, 3)],
    }
    progress("  long job speed (audio s / wall s): "
             + ", ".join(f"{k} {v['rate']:.1f}" if v.get("rate") else f"{k} n/a"
                         for k, v in (("before", before), ("during", during), ("after", after))))
    return {
        "warmup": warm,
        "idle_runs": idle_runs,
        "idle_summary": summarise(idle_runs),
        "runs": runs,
        "summary": summarise(runs),
        "long_job": long_info,
    }


# ------------------------------------------------------------------ part 3

def part_overhead(server: ServerProcess, model_path: Path, files: list[tuple[str, Path]],
                  args: argparse.Namespace) -> list[dict]:
    from whisperd.inference import TranscribeOptions, WhisperModel

    progress("part 3: native path in this process against the service (PARALLEL_JOBS=1)")
    t0 = time.time()
    model = WhisperModel(model_path, use_gpu=False)
    load_s = time.time() - t0
    opts = TranscribeOptions(language="en", beam_size=BEAM, threads=2)

    def native(path: Path) -> dict:
        with CpuMeter() as meter:
            a = time.perf_counter()
            state = model.new_state()
            b = time.perf_counter()
            samples = decode_audio(path)
            c = time.perf_counter()
            result = state.transcribe(samples, opts)
            d = time.perf_counter()
            state.close()
        return {"new_state_s": b - a, "decode_s": c - b, "transcribe_s": d - c, "total_s": d - b,
                "others_cpu": meter.others, "server_cpu": meter.server, "cpu_s": meter.own_s,
                "text": result.text}

    with model:
        warm = native(files[0][1])  # first transcription in this process
        progress(f"  native warm-up ({files[0][0]}): {warm['total_s']:.3f} s; model load {load_s:.2f} s")
        rows = []
        for label, path in files:
            data = path.read_bytes()
            nat, svc = [], []
            for i in range(args.repeat):
                wait_for_quiet(args.quiet_wait)
                nat.append(native(path))
                fresh_state(server)
                wait_for_quiet(args.quiet_wait)
                svc.append(submit_and_wait(server, data, path.name))
                progress(f"  {label} {i + 1}/{args.repeat}: native {nat[-1]['total_s']:.3f} s "
                         f"(decode {1e3 * nat[-1]['decode_s']:.0f} ms), service {svc[-1]['total_s']:.3f} s "
                         f"(worker {svc[-1]['transcribe_s']:.3f} s); others' CPU "
                         f"{100 * nat[-1]['others_cpu']:.0f}% / {100 * svc[-1]['others_cpu']:.0f}%")
                if svc[-1]["text"] != nat[-1]["text"]:
                    progress(f"  NOTE: texts differ - native {nat[-1]['text'][-80:]!r}, "
                             f"service {svc[-1]['text'][-80:]!r}")
            n_med = median([r["total_s"] for r in nat])
            s = summarise(svc)
            rows.append({
                "label": label,
                "path": str(path),
                "audio_s": svc[0]["audio_s"],
                "native_runs": nat,
                "service_runs": svc,
                "native_median_s": n_med,
                "native_transcribe_median_s": median([r["transcribe_s"] for r in nat]),
                "native_decode_median_s": median([r["decode_s"] for r in nat]),
                "native_others_cpu": median([r["others_cpu"] for r in nat]),
                "native_server_idle_cpu": max(r["server_cpu"] for r in nat),
                "summary": s,
                "overhead_pct": 100 * (s["median_s"] / n_med - 1),
                "overhead_best_pct": 100 * (s["min_s"] / min(r["total_s"] for r in nat) - 1),
                "native_cpu_s": median([r["cpu_s"] for r in nat]),
                "service_server_cpu_s": median([r["server_cpu_s"] for r in svc]),
                "service_client_cpu_s": median([r["client_cpu_s"] for r in svc]),
                "overhead_ms": 1e3 * (s["median_s"] - n_med),
                "worker_minus_native_ms": 1e3 * (s["transcribe_s"] - n_med),
                "same_text": all(r["text"] == nat[0]["text"] for r in nat + svc),
            })
    return rows


# ------------------------------------------------------------------ report

def table(res: dict) -> str:
    head = ("| # | scenario | audio s | server | n | Submit→done median s | p90 s | upload+probe ms "
            "| queue wait ms | transcription s | notification ms | native s | overhead % | others' CPU % |")
    lines = [head, "|" + "---|" * 14]

    def row(num: str, name: str, audio: float, server: str, s: dict, native: str = "", over: str = "",
            others: str = "") -> None:
        others = others or f"{100 * s['others_cpu']:.0f}"
        lines.append(
            f"| {num} | {name} | {audio:.1f} | {server} | {s['n']} | {s['median_s']:.3f} | {s['p90_s']:.3f} "
            f"| {1e3 * s['upload_probe_s']:.0f} | {1e3 * s['queue_s']:.0f} | {s['transcribe_s']:.3f} "
            f"| {1e3 * s['notify_s']:.0f} | {native} | {over} | {others} |")

    p1, p2 = res["idle"], res["busy"]
    row("1", "5 s clip, idle server", CLIP_SECS, "1 job × 2 thr", p1["summary"])
    row("2a", "5 s clip, idle server", CLIP_SECS, "2 jobs × 1 thr", p2["idle_summary"])
    row("2b", "5 s clip beside a 10-min job", CLIP_SECS, "2 jobs × 1 thr", p2["summary"])
    for i, r in enumerate(res["overhead"]):
        row(f"3{'abc'[i]}", f"service vs native, {r['label']}", r["audio_s"], "1 job × 2 thr", r["summary"],
            f"{r['native_median_s']:.3f}", f"{r['overhead_pct']:+.1f}",
            f"{100 * r['summary']['others_cpu']:.0f} / {100 * r['native_others_cpu']:.0f}")
    return "\n".join(lines)


def footnotes(res: dict) -> list[str]:
    out = []
    lj = res["busy"]["long_job"]

    def fmt(v: dict) -> str:
        return f"{v['rate']:.1f}" if v.get("rate") else "n/a"

    sd = lj["slowdown_pct"]
    slow = ("not measurable" if sd is None else f"{sd:.0f}% slower" if sd >= 0 else f"{-sd:.0f}% faster")
    out.append(
        f"- Long job (600 s, 1 thread): {fmt(lj['before'])} audio s per wall s before the short jobs, "
        f"{fmt(lj['during'])} during them ({slow}), {fmt(lj['after'])} after; Cancel → done event "
        + (f"{lj['cancel_to_done_s']:.2f} s." if lj["cancel_to_done_s"] is not None else "n/a."))
    c = res["idle"]["context_carryover"]
    fresh, same = c["new_state_text"], c["same_as_new_state"]
    out.append("- Context carry-over check (jfk right after the 5 s clip jobs on the same worker): "
               + (f"transcript {c['text']!r}; " if not same else "")
               + ("the full sentence" if c["full_sentence"] else "NOT the full sentence")
               + (", identical to a new state's transcript." if same else
                  f"; a new state gives {fresh!r}: the previous jobs' text primed the decoder."))
    w1, w2 = res["idle"]["warmup"], res["busy"]["warmup"]
    out.append(f"- First job after load (warm-up, not in the rows): {w1['total_s']:.3f} s at 1 job × 2 threads, "
               f"{w2['total_s']:.3f} s at 2 jobs × 1 thread.")
    for r in res["overhead"]:
        s = r["summary"]
        out.append(
            f"- {r['label']}: native {r['native_median_s']:.3f} s = decode {1e3 * r['native_decode_median_s']:.0f} ms "
            f"+ transcribe {r['native_transcribe_median_s']:.3f} s; service − native = {r['overhead_ms']:+.0f} ms, of "
            f"which upload+probe {1e3 * s['upload_probe_s']:.0f}, queue {1e3 * s['queue_s']:.0f}, worker − native "
            f"{r['worker_minus_native_ms']:+.0f}, notification {1e3 * s['notify_s']:.0f} (medians); best run "
            f"against best run {r['overhead_best_pct']:+.1f}%; CPU s per run: native {r['native_cpu_s']:.2f}, "
            f"service {r['service_server_cpu_s']:.2f} in the server + {r['service_client_cpu_s']:.2f} in the client; "
            f"same text: {'yes' if r['same_text'] else 'NO'}; others' CPU service / native "
            f"{100 * r['summary']['others_cpu']:.0f}% / {100 * r['native_others_cpu']:.0f}%, idle server's "
            f"CPU during native runs at most {100 * r['native_server_idle_cpu']:.1f}%.")
    la0, la1 = res["loadavg_start"], res["loadavg_end"]
    out.append(f"- Load average (1/5/15 min): {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f} at start, "
               f"{la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} at end; runtime {res['runtime_s']:.0f} s.")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs of the 5 s clip on the idle server (5)")
    p.add_argument("--busy-runs", type=int, default=3, help="short jobs beside the long one (3)")
    p.add_argument("--repeat", type=int, default=5, help="native/service pairs per file in part 3 (5)")
    p.add_argument("--before-steps", type=int, default=4,
                   help="progress events of the long job to see before the short jobs start (4)")
    p.add_argument("--after-secs", type=float, default=6.0,
                   help="seconds the long job runs alone after the short jobs, before Cancel (6)")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="seconds to wait at most for other processes to go quiet before a timed run (10)")
    p.add_argument("--json", type=Path, default=JSON_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    started = time.time()
    loadavg_start = os.getloadavg()
    progress(f"load average {loadavg_start[0]:.2f} {loadavg_start[1]:.2f} {loadavg_start[2]:.2f} "
             f"on {os.cpu_count()} CPUs")
    from whisperd.models.bundled import ensure_tiny_en

    model_path = ensure_tiny_en(paths.models_dir())
    jfk_path = paths.samples_dir() / "jfk.wav"
    jfk = decode_audio(jfk_path)
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="whisperd-service-bench-") as tmp_s:
        tmp = Path(tmp_s)
        _, clip = clip_bytes(jfk, CLIP_SECS, tmp, "clip5.wav")
        tile_path = write_wav(tmp / "jfk_60s.wav", tiled(jfk, TILE_SECS))
        long_path = write_wav(tmp / "long600.wav", tiled(jfk, LONG_SECS))

        server = start_server(tmp / "data1", model_path, parallel=1)
        try:
            res["idle"] = part_idle(server, clip, args)
            res["overhead"] = part_overhead(
                server, model_path, [(f"jfk {len(jfk) / SR:.0f} s", jfk_path), ("jfk ×6 60 s", tile_path)], args)
        finally:
            server.stop()
            Ours.server_pid = None
        server = start_server(tmp / "data2", model_path, parallel=2)
        try:
            res["busy"] = part_busy(server, clip, long_path.read_bytes(), args)
        finally:
            server.stop()
            Ours.server_pid = None

    for r in res["idle"]["runs"]:
        if normalise(r["text"]) not in normalise(EXPECTED_JFK):
            progress(f"note: 5 s clip transcript {r['text']!r} is not a prefix of the JFK sentence")
    carry = res["idle"]["context_carryover"]
    carry["new_state_text"] = res["overhead"][0]["native_runs"][0]["text"]  # jfk, native, new state
    carry["same_as_new_state"] = carry["text"] == carry["new_state_text"]
    res["loadavg_start"] = list(loadavg_start)
    res["loadavg_end"] = list(os.getloadavg())
    res["runtime_s"] = time.time() - started
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": str(model_path),
        "decoding": {"beam_size": BEAM, "language": "en", "temperature": 0.0, "temperature_increment": 0.2,
                     "best_of": 5},
        "server_env": {"IDLE_TIMEOUT_SECS": 0, "THREADS": "default (cpu_count / PARALLEL_JOBS)"},
        "fields": {
            "total_s": "client time.time() from the Submit call's start to the done event's arrival",
            "upload_probe_s": "the Submit call (64 KiB chunks, spool to disk, PyAV probe, store insert)",
            "queue_s": "started_at - created_at (server clock)",
            "transcribe_s": "completed_at - started_at: the worker's decode_audio + transcribe + store writes",
            "notify_s": "done event received (client) - completed_at (server)",
            "others_cpu": "share of all CPUs used by processes other than this script and the server",
            "p90_s": "numpy percentile 90, linear interpolation",
        },
        **res,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nService latency - whisperd on {os.cpu_count()} CPUs, no GPU, tiny.en f16, beam 1, language en, "
          f"{doc['date']}\n")
    print(table(res))
    print()
    print("\n".join(footnotes(res)))
    progress(f"wrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
