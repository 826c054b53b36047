"""Where the batch scheduler's time goes, from the first job of a busy spell until the
scheduler has no job left: when the first window was planned and encoded, how many
windows the jobs were cut into and how long they were, the time inside the decoder's
add (encoder) and step calls, and how full the steps were. Logged once per spell (one
INFO line, `batch timeline: ...`), which bench/batch_service_bench.py prints beside its
figures: the decoder's busy share says whether the GPU waited for the service."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from whisperd.batching import WindowDecoder
from whisperd.inference import SAMPLE_RATE
from whisperd.stream_windows import PlannedWindow

log = logging.getLogger(__name__)


@dataclass
class Spell:
    started: float
    jobs: int = 0
    windows: int = 0  # planned
    window_samples: int = 0
    first_planned: float | None = None
    last_planned: float | None = None  # a long file's planning (its VAD) ends here
    first_encoded: float | None = None  # the first add() returned: its windows are encoded
    adds: int = 0
    added: int = 0  # windows handed to the decoder (rests of windows included)
    add_secs: float = 0.0
    steps: int = 0
    step_secs: float = 0.0
    step_windows: int = 0  # sum over steps of the windows in flight
    capacity: int = 0
    # The jobs' callers: reading the audio's chunks, and the planner (its own work plus
    # waiting for the detector); the detector's thread time, summed over its threads.
    read_secs: float = 0.0
    plan_secs: float = 0.0
    chunks: int = 0
    detector_at_start: float = 0.0
    # The same threads waiting: for room in the read-ahead while their audio was still
    # being read (a planner held back), and handing finished windows out (stitching,
    # segment and progress callbacks, which write to the store) between chunks.
    room_secs: float = 0.0
    out_secs: float = 0.0


def _engine_ms(decoder: WindowDecoder | None) -> tuple[float, float, float] | None:
    stats = getattr(decoder, "stats", None)
    if stats is None:
        return None
    s = stats()
    return (s.encode_ms, s.decode_ms, s.sample_ms)


class Timeline:
    """Called by the scheduler: job_started/planned/idle under its lock, added/stepped
    from its thread only."""

    def __init__(self, detector_secs: Callable[[], float] | None = None) -> None:
        self.spell: Spell | None = None
        # Thread seconds the voice activity detector has run so far (windows.VadPool).
        self._detector_secs = detector_secs or (lambda: 0.0)
        self.last: dict[str, float] | None = None  # the last finished spell's figures
        # The engine's counters (encode, decode, sample ms) when the last spell ended.
        self._engine: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def job_started(self) -> None:
        if self.spell is None:
            self.spell = Spell(started=time.perf_counter(), detector_at_start=self._detector_secs())
        self.spell.jobs += 1

    def read(self, read_secs: float, plan_secs: float) -> None:
        """A job's caller read a chunk in read_secs and planned it in plan_secs."""
        spell = self.spell
        if spell is None:
            return
        spell.chunks += 1
        spell.read_secs += read_secs
        spell.plan_secs += plan_secs

    def waited_for_room(self, secs: float) -> None:
        """A job's caller, its audio not all read yet, waited secs: held back by the
        read-ahead."""
        spell = self.spell
        if spell is not None:
            spell.room_secs += secs

    def handed_out(self, secs: float) -> None:
        """A job's caller spent secs handing finished windows out (stitch, callbacks)."""
        spell = self.spell
        if spell is not None:
            spell.out_secs += secs

    def planned(self, windows: list[PlannedWindow]) -> None:
        spell = self.spell
        if spell is None:
            return
        spell.last_planned = time.perf_counter()
        if spell.first_planned is None:
            spell.first_planned = spell.last_planned
        spell.windows += len(windows)
        spell.window_samples += sum(w.end - w.start for w in windows)

    def added(self, n: int, secs: float, decoder: WindowDecoder) -> None:
        spell = self.spell
        if spell is None:
            return
        spell.adds += 1
        spell.added += n
        spell.add_secs += secs
        if spell.first_encoded is None:
            spell.first_encoded = time.perf_counter()

    def stepped(self, active: int, capacity: int, secs: float) -> None:
        spell = self.spell
        if spell is None:
            return
        spell.steps += 1
        spell.step_secs += secs
        spell.step_windows += active
        spell.capacity = capacity

    def idle(self, decoder: WindowDecoder | None, jobs: int) -> None:
        """The scheduler has nothing to do; a spell ends when no job is left either."""
        spell = self.spell
        if spell is None or jobs > 0:
            return
        self.spell = None
        if spell.steps == 0:  # every job failed or was cancelled before a step
            return
        wall = time.perf_counter() - spell.started
        busy = spell.add_secs + spell.step_secs
        since = lambda t: float("nan") if t is None else t - spell.started  # noqa: E731
        self.last = {
            "jobs": spell.jobs, "wall_s": wall, "windows": spell.windows,
            "mean_window_s": spell.window_samples / SAMPLE_RATE / max(1, spell.windows),
            "decoder_windows": spell.added, "first_planned_s": since(spell.first_planned),
            "last_planned_s": since(spell.last_planned),
            "first_encoded_s": since(spell.first_encoded), "add_s": spell.add_secs, "adds": spell.adds,
            "steps": spell.steps, "step_s": spell.step_secs,
            "mean_step_windows": spell.step_windows / spell.steps, "capacity": spell.capacity,
            "decoder_busy": busy / wall if wall > 0 else 0.0,
            "chunks": spell.chunks, "read_s": spell.read_secs, "plan_s": spell.plan_secs,
            "detector_s": self._detector_secs() - spell.detector_at_start,
            "room_s": spell.room_secs, "hand_out_s": spell.out_secs,
        }
        engine = _engine_ms(decoder)
        if engine is not None:
            before = self._engine if all(b <= e for b, e in zip(self._engine, engine)) else (0.0, 0.0, 0.0)
            encode, decode, sample = ((e - b) / 1e3 for b, e in zip(before, engine))
            self.last.update(engine_encode_s=encode, engine_decode_s=decode, engine_sample_s=sample)
            self._engine = engine
        f = self.last
        log.info(
            "batch timeline: %d jobs in %.2f s: %d windows planned (mean %.1f s), %d into the decoder; "
            "first window planned at %.2f s, encoded at %.2f s, last planned at %.2f s; "
            "encoder %.2f s in %d adds; %d steps %.2f s (mean %.1f windows of %d); "
            "decoder busy %.0f %% of the time",
            f["jobs"], wall, f["windows"], f["mean_window_s"], f["decoder_windows"], f["first_planned_s"],
            f["first_encoded_s"], f["last_planned_s"], f["add_s"], f["adds"], f["steps"], f["step_s"],
            f["mean_step_windows"], f["capacity"], 100 * f["decoder_busy"],
        )
        log.info(
            "batch timeline: planning: %d chunks read in %.2f s, planned in %.2f s (the planner and its "
            "waits for the detector); the detector ran %.2f thread seconds; the jobs' threads waited "
            "%.2f s for room in the read-ahead and spent %.2f s handing results out",
            f["chunks"], f["read_s"], f["plan_s"], f["detector_s"], f["room_s"], f["hand_out_s"],
        )
        if engine is not None:
            log.info(
                "batch timeline: engine: encoder %.2f s, decoder graphs %.2f s, sampling %.2f s",
                f["engine_encode_s"], f["engine_decode_s"], f["engine_sample_s"],
            )
