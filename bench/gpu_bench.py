"""GPU figures for the native core, printed as one table (run by bench/gpu.sh).

Same model, same audio, same options for our path and whisper.cpp's own whisper-cli from
the same build. Audio: jfk.wav (11 s) and jfk.wav x 11 (121 s of real speech).
"Speed" is audio seconds per wall second (x real time).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gpu_concurrency import gpu_used, run as run_states  # beside this script in bench/
from whisperd import _native
from whisperd.audio import decode_audio, write_wav
from whisperd.inference import TranscribeOptions, WhisperModel

SR = 16000
EXPECTED = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


def norm(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


@dataclass
class Row:
    what: str
    engine: str
    beam: int
    audio_s: float
    wall_s: float
    note: str = ""

    @property
    def speed(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else 0.0


def time_ours(model: WhisperModel, audio: np.ndarray, beam: int, repeat: int) -> tuple[float, str]:
    opts = TranscribeOptions(beam_size=beam)
    best, text = float("inf"), ""
    with model.new_state() as st:
        st.transcribe(audio[: 5 * SR], opts)  # warm-up: CUDA graphs, kernels
        for _ in range(repeat):
            t = time.perf_counter()
            text = st.transcribe(audio, opts).text
            best = min(best, time.perf_counter() - t)
    return best, text


def time_cli(cli: Path, model: Path, wav: Path, beam: int, repeat: int) -> tuple[float, float | None]:
    """Best wall time of the whole process, and of its work alone (its total minus its load)."""
    cmd = [str(cli), "-m", str(model), "-f", str(wav), "-t", str(os.cpu_count()), "-bs", str(beam)]
    subprocess.run(cmd + ["-np"], capture_output=True, check=True)  # warm-up (page cache)
    best, work = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        # Without -np it prints its own timings, read below.
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        best = min(best, time.perf_counter() - t)
        total = re.search(r"total time\s*=\s*([\d.]+)\s*ms", proc.stderr)
        load = re.search(r"load time\s*=\s*([\d.]+)\s*ms", proc.stderr)
        if total and load:
            w = (float(total.group(1)) - float(load.group(1))) / 1000
            work = w if work is None else min(work, w)
    return best, work


def time_ours_fresh(model: WhisperModel, audio: np.ndarray, beam: int) -> float:
    """One call on a new state, as whisper-cli makes one: first-call costs included."""
    with model.new_state() as st:
        t = time.perf_counter()
        st.transcribe(audio, TranscribeOptions(beam_size=beam))
        return time.perf_counter() - t


def concurrent(model: WhisperModel, audio: np.ndarray, n: int, beam: int) -> tuple[float, int]:
    wall, _, used = run_states(model, audio, n, TranscribeOptions(beam_size=beam))
    return wall, used


def tests_summary(xml: Path | None) -> str:
    if xml is None or not xml.exists():
        return "no test report"
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    a = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return f"{a['tests'] - a['failures'] - a['errors'] - a['skipped']} passed, {a['failures'] + a['errors']} failed, {a['skipped']} skipped"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--whisper-cli", type=Path)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--build-seconds", type=int, default=0)
    ap.add_argument("--archs", default="")
    ap.add_argument("--tests-xml", type=Path)
    ap.add_argument("--json", type=Path, default=Path("bench/results/gpu_bench.json"))
    args = ap.parse_args()

    jfk = decode_audio(Path("third_party/whisper.cpp/samples/jfk.wav"))
    long_audio = np.tile(jfk, 11)
    wav = args.json.parent / "speech121.wav"
    write_wav(wav, long_audio)
    rows: list[Row] = []

    base = gpu_used()
    t = time.perf_counter()
    model = WhisperModel(args.model, use_gpu=True)
    load_s = time.perf_counter() - t
    st = model.new_state()
    vram_model = gpu_used() - base
    st.close()

    for beam in (1, 5):
        wall, text = time_ours(model, jfk, beam, args.repeat)
        rows.append(Row("jfk 11 s", "whisperd", beam, 11.0, wall, "sentence ok" if norm(text) == EXPECTED else f"WRONG: {text}"))
    for beam in (1, 5):
        wall, _ = time_ours(model, long_audio, beam, args.repeat)
        rows.append(Row("speech 121 s", "whisperd", beam, 121.0, wall, "warm state"))
        fresh = time_ours_fresh(model, long_audio, beam)
        rows.append(Row("speech 121 s", "whisperd", beam, 121.0, fresh, "new state, first call"))
        if args.whisper_cli and args.whisper_cli.exists():
            cli_wall, cli_work = time_cli(args.whisper_cli, args.model, wav, beam, args.repeat)
            rows.append(Row("speech 121 s", "whisper-cli", beam, 121.0, cli_wall, "whole process"))
            if cli_work:
                over = (fresh / cli_work - 1) * 100
                rows.append(Row("speech 121 s", "whisper-cli", beam, 121.0, cli_work,
                                f"its total minus its load; ours (new state) {over:+.1f}%"))
    per_state: dict[int, int] = {}
    for n in (1, 2, 4, 8):
        wall, used = concurrent(model, long_audio, n, 1)
        per_state[n] = used - base
        rows.append(Row(f"{n} jobs at once", "whisperd", 1, 121.0 * n, wall, f"VRAM {(used - base) / 2**20:.0f} MiB"))
    model.close()

    dev = next(d for d in _native.devices() if d.type == "gpu")
    print()
    print(f"device: {dev.description}; whisper.cpp {_native.whisper_version()}; CUDA archs {_native.cuda_architectures()}")
    print(f"build: {args.build_seconds} s for sm_{args.archs}; tests on the GPU: {tests_summary(args.tests_xml)}")
    print(f"model: {args.model.name}; load {load_s:.2f} s; VRAM for weights + one state {vram_model / 2**20:.0f} MiB")
    print()
    header = f"| {'audio':<16} | {'engine':<11} | beam | {'wall s':>7} | {'x real time':>11} | note"
    print(header)
    print("|" + "-" * 18 + "|" + "-" * 13 + "|------|" + "-" * 9 + "|" + "-" * 13 + "|------")
    for r in rows:
        print(f"| {r.what:<16} | {r.engine:<11} | {r.beam:>4} | {r.wall_s:>7.3f} | {r.speed:>11.1f} | {r.note}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "device": dev.description, "archs": args.archs, "build_seconds": args.build_seconds,
        "tests": tests_summary(args.tests_xml), "model": args.model.name, "load_seconds": load_s,
        "vram_model_bytes": vram_model, "vram_by_jobs": per_state,
        "rows": [asdict(r) | {"x_real_time": r.speed} for r in rows],
    }, indent=2))


if __name__ == "__main__":
    main()
