#!/usr/bin/env python3
"""CPU benchmark: whisperd's native path against whisper-cli and faster-whisper.

One invocation measures, on the same Whisper tiny.en weights and the same 121 s speech
file (samples/jfk.wav concatenated 11 times), for beam 1 and beam 5:

  whisperd        our extension: WhisperModel(use_gpu=False) + DecodingState.transcribe,
                  whisper.cpp's whole-file decode on one state (the path before batching,
                  today's sequential mode); only the transcribe call is timed, model load
                  and state creation are reported separately
  whisperd-batched  the service's default path: the batch scheduler (windows cut at
                  silences, decoded together by the batched decoder), BatchScheduler.
                  transcribe timed; the decoder is made during the warm-up
  whisper-cli     whisper.cpp's own CLI built from the same source with the same flags
                  (bench/build_whisper_cli.sh): wall time of the process, and its own
                  `total time` / `load time` from whisper_print_timings
  faster-whisper  CTranslate2 int8 and float32, temperature 0 only, the lazy segment
                  generator read to the end inside the timing

Each engine runs in its own process (as whisper-cli does), so two OpenMP runtimes never
share the two cores. Per beam, every engine is warmed up once on jfk.wav (11 s) with the
same options, then --repeat rounds follow in which each engine runs once (alternating, so
drift of a shared machine spreads over all of them); the fastest run of each is reported.
Before each timed run the script waits for the CPUs to go quiet and records how much CPU
other processes took during it. The table goes to stdout as Markdown; the same figures go
to bench/results/cpu_bench.json.

  .venv/bin/python bench/cpu_bench.py [--repeat N] [--beams 1,5] [--flash-attn both]
  .venv/bin/python bench/cpu_bench.py --copies 55 --beams 1 --skip whisper-cli,faster-whisper
      (a 10-minute file: whisperd's two paths only)
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
JSON_OUT = RESULTS_DIR / "cpu_bench.json"
COPIES = 11  # --copies: jfk.wav repeated, 121 s by default
SAMPLE_RATE = 16000

# samples/jfk.wav, as spoken; the reference for the word error rate is this ×11.
JFK_SENTENCE = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)

# Workers inherit the parent's start, so every progress line counts from one origin.
_T0 = float(os.environ.setdefault("WHISPERD_BENCH_T0", repr(time.time())))


def progress(msg: str) -> None:
    """A progress line on stderr (stdout stays for the table)."""
    print(f"[{time.time() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ a quiet machine

# Two cores are easily disturbed: a test run beside the benchmark takes a core away from
# ggml's OpenMP threads, whose barriers then wait on a descheduled thread (3-10x slowdowns
# were seen). Each timed run waits for a quiet machine and records what else ran.
QUIET_BUSY = 0.10  # fraction of all CPUs busy that still counts as quiet
NOISY_BACKGROUND = 0.05  # a reported run during which others took more is flagged
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return 0, 0
    return sum(vals) - vals[3] - vals[4], sum(vals)


def wait_for_quiet(max_wait: float) -> float:
    """Wait until under QUIET_BUSY of the CPUs are busy (0.5 s samples); return the last level."""
    deadline = time.time() + max_wait
    warned = False
    while True:
        b0, t0 = _cpu_jiffies()
        time.sleep(0.5)
        b1, t1 = _cpu_jiffies()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy <= QUIET_BUSY or time.time() >= deadline:
            return busy
        if not warned:
            progress(f"machine busy ({100 * busy:.0f}% of CPUs used by others); waiting up to "
                     f"{max_wait:.0f} s for quiet")
            warned = True


class CpuMeter:
    """How much CPU other processes used while a measurement ran (fraction of all CPUs)."""

    def __init__(self, own: Callable[[], float]) -> None:
        self._own = own

    def __enter__(self) -> "CpuMeter":
        self._b0, _ = _cpu_jiffies()
        self._o0 = self._own()
        self._w0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._w0
        busy = (_cpu_jiffies()[0] - self._b0) / _HZ
        own = self._own() - self._o0
        self.background = max(0.0, (busy - own) / max(1e-9, wall * (os.cpu_count() or 1)))


def _own_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ word error rate

def normalise(text: str) -> list[str]:
    """Lower-case, drop punctuation, split on white space."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^\w\s]", " ", text).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, after normalise()."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))


# ------------------------------------------------------------------ engines in child processes

class _WhisperdEngine:
    """whisperd's native path; a fresh decoding state per call, created outside the timing."""

    def __init__(self, args: argparse.Namespace) -> None:
        from whisperd import _native
        from whisperd.inference import TranscribeOptions, WhisperModel

        self._options = TranscribeOptions
        self._threads = args.threads
        t = time.perf_counter()
        self._model = WhisperModel(args.model, use_gpu=False, flash_attn=args.flash_attn == "on")
        self.load_s = time.perf_counter() - t
        self.info = {"system_info": _native.system_info(),
                     "whisper_version": _native.whisper_version()}

    def run(self, samples, beam: int) -> dict:
        opts = self._options(beam_size=beam, threads=self._threads)
        # A fresh state per run, as whisper-cli starts fresh: a reused state would prompt the
        # first window with the previous call's text (whisper.cpp keeps it in the state
        # unless no_context is set).
        t = time.perf_counter()
        st = self._model.new_state()
        state_s = time.perf_counter() - t
        with CpuMeter(_own_cpu) as meter:
            t = time.perf_counter()
            tr = st.transcribe(samples, opts)
            wall = time.perf_counter() - t
        st.close()
        return {"wall_s": wall, "state_s": state_s, "text": tr.text, "segments": len(tr.segments),
                "background": meter.background, "best_of": opts.best_of}

    def close(self) -> None:
        self._model.close()


class _FasterWhisperEngine:
    """faster-whisper: temperature 0 only, the lazy segment generator read inside the timing."""

    def __init__(self, args: argparse.Namespace) -> None:
        from faster_whisper import WhisperModel as FWModel
        from faster_whisper import __version__ as fw_version

        t = time.perf_counter()
        self._model = FWModel(str(args.model), device="cpu", compute_type=args.compute_type,
                              cpu_threads=args.threads, num_workers=1)
        self.load_s = time.perf_counter() - t
        self.info = {"faster_whisper_version": fw_version}

    def run(self, samples, beam: int) -> dict:
        with CpuMeter(_own_cpu) as meter:
            t = time.perf_counter()
            segments, _info = self._model.transcribe(samples, beam_size=beam, temperature=0.0)
            segs = list(segments)  # the generator does the work: read it to the end
            wall = time.perf_counter() - t
        text = " ".join(s.text.strip() for s in segs if s.text.strip())
        return {"wall_s": wall, "text": text, "segments": len(segs),
                "background": meter.background}

    def close(self) -> None:
        pass


class _WhisperdBatchedEngine(_WhisperdEngine):
    """The service's path: one batch scheduler (and its decoder) for every run."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        from whisperd.server.engine.decoder_factory import default_decoder_factory, windows_per_job
        from whisperd.server.engine.scheduler import BatchScheduler

        self._scheduler = BatchScheduler(default_decoder_factory(threads=self._threads),
                                         vad_threads=self._threads, windows_per_job=windows_per_job(False))

    def run(self, samples, beam: int) -> dict:
        from whisperd.inference import CancelToken

        opts = self._options(beam_size=beam, threads=self._threads)
        with CpuMeter(_own_cpu) as meter:
            t = time.perf_counter()
            tr = self._scheduler.transcribe(self._model, samples, opts, cancel=CancelToken())
            wall = time.perf_counter() - t
        return {"wall_s": wall, "state_s": 0.0, "text": tr.text, "segments": len(tr.segments),
                "background": meter.background, "best_of": opts.best_of}

    def close(self) -> None:
        self._scheduler.close()  # its decoder first: it holds the model's weights
        super().close()


_WORKERS = {"whisperd": _WhisperdEngine, "whisperd-batched": _WhisperdBatchedEngine,
            "faster-whisper": _FasterWhisperEngine}


def serve_worker(args: argparse.Namespace) -> int:
    """Child side: load once, then one JSON request per stdin line, one JSON answer per line."""
    from whisperd.audio import decode_audio

    audio = {"long": decode_audio(args.audio), "warmup": decode_audio(args.warmup)}
    engine = _WORKERS[args.worker](args)
    print(json.dumps({"load_s": engine.load_s, **engine.info}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quiet_wait", 0) > 0:
            wait_for_quiet(req["quiet_wait"])
        print(json.dumps(engine.run(audio[req["audio"]], req["beam"])), flush=True)
    engine.close()
    return 0


class Worker:
    """Parent side of one engine in a child process (its own OpenMP runtime and heap)."""

    def __init__(self, kind: str, model: Path, compute_type: str, flash_attn: str,
                 args: argparse.Namespace) -> None:
        self.kind = kind
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--model", str(model), "--compute-type", compute_type,
               "--audio", str(args.audio), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--flash-attn", flash_attn]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, cwd=ROOT)
        self.hello = self._read()

    def _read(self) -> dict:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died (exit status {self._proc.wait()})")
        return json.loads(line)

    def run(self, beam: int, warmup: bool, quiet_wait: float) -> dict:
        assert self._proc.stdin is not None
        req = {"beam": beam, "audio": "warmup" if warmup else "long",
               "quiet_wait": 0 if warmup else quiet_wait}
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=60)


# ------------------------------------------------------------------ whisper-cli

_TIMING = re.compile(r"whisper_print_timings:\s+(\w+) time =\s+([\d.]+) ms")
_RUNS = re.compile(r"whisper_print_timings:\s+(\w+) time =.*/\s+(\d+) runs")
_FALLBACKS = re.compile(r"fallbacks =\s+(\d+) p /\s+(\d+) h")
_SEGMENT = re.compile(r"^\[[\d:.]+ --> [\d:.]+\]\s*(.*)$")


def run_cli_once(cli: Path, model: Path, wav: Path, beam: int, best_of: int, threads: int,
                 flash_attn: bool, no_prints: bool, quiet_wait: float = 0.0) -> dict:
    cmd = [str(cli), "-m", str(model), "-f", str(wav), "-t", str(threads),
           "-bs", str(beam), "-bo", str(best_of)]
    if not flash_attn:
        cmd.append("-nfa")
    if no_prints:
        cmd.append("-np")  # also silences whisper_print_timings: no internal times then
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait)
    with CpuMeter(_children_cpu) as meter:
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"whisper-cli failed ({proc.returncode}): {proc.stderr[-2000:]}")
    timings = {name: float(ms) / 1000.0 for name, ms in _TIMING.findall(proc.stderr)}
    counts = {name: int(n) for name, n in _RUNS.findall(proc.stderr)}
    fb = _FALLBACKS.search(proc.stderr)
    texts = [m.group(1).strip() for line in proc.stdout.splitlines()
             if (m := _SEGMENT.match(line.strip())) and m.group(1).strip()]
    sysinfo = next((ln.split("|", 1)[1].strip() for ln in proc.stderr.splitlines()
                    if ln.startswith("system_info:")), "")
    return {"wall_s": wall, "timings_s": timings, "runs": counts, "text": " ".join(texts),
            "segments": len(texts), "cmd": cmd, "system_info": sysinfo,
            "background": meter.background,
            "fallbacks": [int(fb.group(1)), int(fb.group(2))] if fb else None}


# ------------------------------------------------------------------ measurement

class Engine:
    """One line-up entry: how to run it once, and how its runs become table rows."""

    def __init__(self, name: str, compute_type: str, flash_attn: bool | None,
                 run: Callable[[int, bool], dict], load_s: float | None = None,
                 info: dict | None = None, close: Callable[[], None] | None = None) -> None:
        self.name, self.compute_type, self.flash_attn = name, compute_type, flash_attn
        self.run, self.load_s, self.info = run, load_s, info or {}
        self.close = close or (lambda: None)

    @property
    def label(self) -> str:
        fa = "" if self.flash_attn is None else f" fa={'on' if self.flash_attn else 'off'}"
        return f"{self.name} {self.compute_type}{fa}"

    def rows(self, beam: int, runs: list[dict], threads: int) -> list[dict]:
        best = min(runs, key=lambda r: r["wall_s"])
        base = {"engine": self.name, "compute_type": self.compute_type, "beam": beam,
                "flash_attn": self.flash_attn, "threads": threads, "text": best["text"],
                "segments": best["segments"], "background_cpu": best["background"], **self.info}
        if self.name != "whisper-cli":
            extra = {k: best[k] for k in ("state_s", "best_of") if k in best}
            timed = "transcribe()" if self.name.startswith("whisperd") else "transcribe()+segments"
            return [{**base, **extra, "timed": timed, "wall_s": best["wall_s"],
                     "load_s": self.load_s, "runs_s": [r["wall_s"] for r in runs]}]
        # whisper-cli: the process, and its own figures; each the best of its own.
        base.update(cmd=best["cmd"], fallbacks=best["fallbacks"],
                    system_info=best["system_info"])
        out = [{**base, "timed": "process wall", "wall_s": best["wall_s"], "load_s": None,
                "runs_s": [r["wall_s"] for r in runs], "timings_s": best["timings_s"],
                "timing_runs": best["runs"]}]
        timed = [r for r in runs if "total" in r["timings_s"] and "load" in r["timings_s"]]
        if timed:
            totals = [r["timings_s"]["total"] for r in timed]
            loads = [r["timings_s"]["load"] for r in timed]
            minus = [t - ld for t, ld in zip(totals, loads)]
            out.append({**base, "timed": "own total time", "wall_s": min(totals),
                        "load_s": min(loads), "runs_s": totals})
            out.append({**base, "timed": "own total - load", "wall_s": min(minus),
                        "load_s": min(loads), "runs_s": minus})
        return out


def line_up(args: argparse.Namespace, ggml: Path, gtype: str, ct2: Path, cli: Path | None,
            fa_modes: list[str], best_of: int) -> list[Engine]:
    engines: list[Engine] = []
    for fa in fa_modes:
        for kind in ("whisperd", "whisperd-batched"):
            if kind in args.skip:
                continue
            progress(f"{kind} fa={fa}: loading the model in a worker process")
            w = Worker(kind, ggml, gtype, fa, args)
            engines.append(Engine(kind, gtype, fa == "on",
                                  lambda beam, warm, w=w: w.run(beam, warm, args.quiet_wait),
                                  w.hello["load_s"], {"system_info": w.hello["system_info"]},
                                  w.close))
        if cli is not None:
            def cli_run(beam: int, warm: bool, fa_on: bool = fa == "on") -> dict:
                return run_cli_once(cli, ggml, args.warmup if warm else args.audio, beam, best_of,
                                    args.threads, fa_on, args.cli_no_prints,
                                    0 if warm else args.quiet_wait)
            engines.append(Engine("whisper-cli", gtype, fa == "on", cli_run,
                                  info={"best_of": best_of}))
    if "faster-whisper" not in args.skip:
        if importlib.util.find_spec("faster_whisper") is None:
            progress("faster-whisper is not installed: pip install faster-whisper==1.2.1 "
                     "(make bench-cpu does); skipping it")
        else:
            for ct in ("int8", "float32"):
                progress(f"faster-whisper {ct}: loading the model in a worker process")
                w = Worker("faster-whisper", ct2, ct, "on", args)
                engines.append(Engine("faster-whisper", ct, None,
                                      lambda beam, warm, w=w: w.run(beam, warm, args.quiet_wait),
                                      w.hello["load_s"],
                                      {"version": w.hello["faster_whisper_version"]}, w.close))
    return engines


def measure(engines: list[Engine], args: argparse.Namespace) -> list[dict]:
    """Per beam: warm every engine up, then rounds in which each engine runs once.

    Alternating the engines spreads any drift of the machine (another job, the clock)
    over all of them instead of landing on whichever happened to run then.
    """
    rows: list[dict] = []
    for beam in args.beams:
        runs: dict[int, list[dict]] = {i: [] for i in range(len(engines))}
        for e in engines:
            progress(f"beam {beam}: {e.label}: warm-up on jfk.wav (11 s)")
            e.run(beam, True)
        for k in range(args.repeat):
            for i, e in enumerate(engines):
                r = e.run(beam, False)
                own = r.get("timings_s", {}).get("total")
                progress(f"beam {beam}: {e.label}: run {k + 1}/{args.repeat} {r['wall_s']:.2f} s"
                         + (f" (own total {own:.2f} s)" if own is not None else "")
                         + f", others used {100 * r['background']:.0f}% CPU")
                runs[i].append(r)
        for i, e in enumerate(engines):
            rows += e.rows(beam, runs[i], args.threads)
    return rows


# ------------------------------------------------------------------ preparation

def ggml_type_name(path: Path) -> str:
    """The weight type from a whisper.cpp GGML header (hparams ftype)."""
    with open(path, "rb") as f:
        head = f.read(48)
    magic, *hp = struct.unpack("<12i", head)
    if magic != 0x67676D6C:
        return "?"
    return {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1"}.get(
        hp[10] % 1000, f"ftype {hp[10]}")


def prepare_audio(copies: int) -> tuple[Path, Path, float]:
    from whisperd import paths
    from whisperd.audio import decode_audio, write_wav
    import numpy as np

    jfk = paths.samples_dir() / "jfk.wav"
    if not jfk.is_file():
        sys.exit(f"error: {jfk} is missing (make native fetches whisper.cpp's source)")
    one = decode_audio(jfk)
    long = np.tile(one, copies)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    wav = RESULTS_DIR / f"jfk_x{copies}.wav"
    if not wav.is_file() or wav.stat().st_size != 44 + 2 * len(long):
        write_wav(wav, long, SAMPLE_RATE)
    secs = len(decode_audio(wav)) / SAMPLE_RATE
    return wav, jfk, secs


def build_cli() -> Path:
    script = ROOT / "bench" / "build_whisper_cli.sh"
    proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit("error: building whisper-cli failed (see above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


# ------------------------------------------------------------------ report

def add_derived(rows: list[dict], audio_s: float, reference: str) -> None:
    baseline = {(r["beam"], r["flash_attn"]): r["wall_s"] for r in rows
                if r["engine"] == "whisper-cli" and r["timed"] == "own total - load"}
    fallback = {(r["beam"], r["flash_attn"]): r["wall_s"] for r in rows
                if r["engine"] == "whisper-cli" and r["timed"] == "process wall"}
    for r in rows:
        r["x_real_time"] = audio_s / r["wall_s"]
        r["wer"] = word_error_rate(reference, r["text"])
        r["vs_cli_pct"] = None
        if r["engine"] != "whisper-cli":
            # faster-whisper has no flash-attention switch: compare with the default (on).
            key = (r["beam"], r["flash_attn"] if r["flash_attn"] is not None else True)
            base = baseline.get(key) or fallback.get(key)
            if base:
                r["vs_cli_pct"] = 100.0 * (r["wall_s"] / base - 1.0)
                r["vs_cli_basis"] = ("whisper-cli own total - load" if key in baseline
                                     else "whisper-cli process wall")


def table(rows: list[dict], audio_s: float, show_fa: bool) -> str:
    head = ["engine", "compute", "beam"] + (["flash attn"] if show_fa else []) + [
        "timed span", "wall s", "load s", f"x real time ({audio_s:.0f} s / wall)",
        "WER %", "vs whisper-cli %", "others' CPU %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        fa = {True: "on", False: "off", None: "-"}[r["flash_attn"]]
        cells = [r["engine"], r["compute_type"], str(r["beam"])] + ([fa] if show_fa else []) + [
            r["timed"], f"{r['wall_s']:.2f}",
            "-" if r.get("load_s") is None else f"{r['load_s']:.2f}",
            f"{r['x_real_time']:.1f}x", f"{100 * r['wer']:.1f}",
            "-" if r["vs_cli_pct"] is None else f"{r['vs_cli_pct']:+.1f}",
            "-" if r.get("background_cpu") is None else f"{100 * r['background_cpu']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def footnotes(rows: list[dict]) -> list[str]:
    notes = []
    for r in rows:
        if r["engine"] != "whisperd":
            continue
        key = (r["beam"], r["flash_attn"])
        cli = {c["timed"]: c for c in rows if c["engine"] == "whisper-cli"
               and (c["beam"], c["flash_attn"]) == key}
        total = cli.get("own total time")
        wall = cli.get("process wall")
        minus = cli.get("own total - load")
        if minus and len(r["runs_s"]) > 1:
            mo, mc = statistics.median(r["runs_s"]), statistics.median(minus["runs_s"])
            notes.append(f"whisperd beam {r['beam']} fa={'on' if r['flash_attn'] else 'off'}: "
                         f"median of {len(r['runs_s'])} runs {mo:.3f} s vs whisper-cli own "
                         f"total - load {mc:.3f} s ({100 * (mo / mc - 1):+.1f}%)")
        ours = r["load_s"] + r["state_s"] + r["wall_s"]
        parts = [f"whisperd beam {r['beam']} fa={'on' if r['flash_attn'] else 'off'}: "
                 f"load {r['load_s']:.3f} s + new_state {r['state_s']:.3f} s + "
                 f"transcribe {r['wall_s']:.3f} s = {ours:.3f} s"]
        if total:
            parts.append(f"vs whisper-cli own total {total['wall_s']:.3f} s "
                         f"({100 * (ours / total['wall_s'] - 1):+.1f}%)")
        if wall:
            parts.append(f"vs process wall {wall['wall_s']:.3f} s "
                         f"({100 * (ours / wall['wall_s'] - 1):+.1f}%)")
        notes.append("; ".join(parts))
    for r in rows:
        if r["engine"] != "whisperd-batched":
            continue
        one = next((o for o in rows if o["engine"] == "whisperd" and o["beam"] == r["beam"]
                    and o["flash_attn"] == r["flash_attn"]), None)
        if one:
            notes.append(f"whisperd-batched beam {r['beam']}: {one['wall_s'] / r['wall_s']:.2f}x as fast "
                         f"as one state ({r['wall_s']:.2f} s vs {one['wall_s']:.2f} s)")
    for r in rows:
        if r["engine"] == "whisper-cli" and r["timed"] == "process wall" and r.get("fallbacks"):
            p, h = r["fallbacks"]
            notes.append(f"whisper-cli beam {r['beam']} fa={'on' if r['flash_attn'] else 'off'}: "
                         f"temperature fallbacks {p} p / {h} h")
    busy = sorted({f"{r['engine']} {r['compute_type']} beam {r['beam']}" for r in rows
                   if (r.get("background_cpu") or 0) > NOISY_BACKGROUND})
    if busy:
        notes.append(f"WARNING: other processes took over {100 * NOISY_BACKGROUND:.0f}% of the "
                     f"CPUs during the reported run of {', '.join(busy)}: those figures are "
                     "slower than this machine can do; re-run when it is idle")
    return notes


# ------------------------------------------------------------------ main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1, help="timed runs per measurement; best is kept")
    p.add_argument("--beams", default="1,5", help="comma-separated beam sizes (default 1,5)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="threads for every engine (default: CPU count)")
    p.add_argument("--flash-attn", choices=["on", "off", "both"], default="on",
                   help="for whisperd and whisper-cli (default on, both engines' default)")
    p.add_argument("--skip", default="",
                   help="comma-separated: whisperd, whisperd-batched, whisper-cli, faster-whisper")
    p.add_argument("--copies", type=int, default=COPIES,
                   help=f"jfk.wav repeated this many times (default {COPIES}: 121 s; 55: 10 minutes)")
    p.add_argument("--cli-no-prints", action="store_true",
                   help="pass -np to whisper-cli (it then prints no timings of its own)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each timed run, wait up to this many seconds for other "
                        "processes to leave the CPUs alone (default 30; 0 = do not wait)")
    p.add_argument("--json", type=Path, default=JSON_OUT, help=f"output (default {JSON_OUT})")
    # Internal: one engine in a child process.
    p.add_argument("--worker", choices=sorted(_WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--compute-type", default="", help=argparse.SUPPRESS)
    p.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.beams = [int(b) for b in str(args.beams).split(",") if b.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.repeat < 1 or args.threads < 1:
        p.error("--repeat and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args)

    os.chdir(ROOT)  # whisperd.paths resolves models/ and .cache/ from here
    sys.path.insert(0, str(ROOT))
    from whisperd import paths
    from whisperd.models.bundled import ensure_ct2_tiny_en, ensure_tiny_en

    started = dt.datetime.now().astimezone()
    progress("preparing models, audio and whisper-cli")
    ggml = ensure_tiny_en(paths.models_dir())
    ct2 = ensure_ct2_tiny_en()
    gtype = ggml_type_name(ggml)
    args.audio, args.warmup, audio_s = prepare_audio(args.copies)
    cli = build_cli() if "whisper-cli" not in args.skip else None
    reference = " ".join([JFK_SENTENCE] * args.copies)
    progress(f"audio {args.audio.name}: {audio_s:.1f} s; model {ggml.name} ({gtype}); "
             f"threads {args.threads}; beams {args.beams}; repeat {args.repeat}")

    fa_modes = ["on", "off"] if args.flash_attn == "both" else [args.flash_attn]
    best_of = 5  # TranscribeOptions' default; passed to whisper-cli as -bo to match
    engines = line_up(args, ggml, gtype, ct2, cli, fa_modes, best_of)
    try:
        rows = measure(engines, args)
    finally:
        for e in engines:
            e.close()

    order = {"whisperd": 0, "whisperd-batched": 1, "whisper-cli": 2, "faster-whisper": 3}
    rows.sort(key=lambda r: (r["beam"], r["flash_attn"] is False, order[r["engine"]]))
    add_derived(rows, audio_s, reference)
    runtime = time.time() - _T0
    info = machine()

    print()
    print(f"CPU benchmark, {started:%Y-%m-%d %H:%M %Z}: {info['cpu']}, {info['cpus']} CPUs, "
          f"{args.threads} threads; tiny.en ({gtype} GGML / CTranslate2 from the same weights); "
          f"{audio_s:.0f} s of speech (jfk.wav x{args.copies}); best of {args.repeat} run(s) after "
          "one warm-up.")
    bases = sorted({r["vs_cli_basis"] for r in rows if r.get("vs_cli_basis")})
    print("x real time = audio seconds / wall seconds (higher is faster). vs whisper-cli = "
          f"wall / ({' or '.join(bases) or 'whisper-cli'}) at the same beam, - 1.")
    print()
    print(table(rows, audio_s, show_fa=len(fa_modes) > 1))
    print()
    for n in footnotes(rows):
        print(f"- {n}")
    print(f"- total runtime {runtime:.0f} s")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": started.isoformat(timespec="seconds"), "machine": info,
        "runtime_s": runtime, "threads": args.threads, "repeat": args.repeat,
        "audio": {"path": str(args.audio), "seconds": audio_s, "copies_of_jfk": args.copies},
        "model": {"ggml": str(ggml), "ggml_type": gtype, "ct2": str(ct2)},
        "whisper_cli": str(cli) if cli else None,
        "x_real_time": "audio seconds / wall seconds",
        "vs_cli_pct": "100 * (wall / whisper-cli own (total - load) - 1), same beam and flash attn",
        "reference": reference, "rows": rows,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    progress(f"wrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
