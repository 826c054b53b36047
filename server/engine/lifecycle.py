"""The model lifecycle: unloaded → loading → ready → unloading → unloaded, plus
waiting_for_gpu when a load runs out of VRAM.

Every transition goes through `ModelHost._transition`, the one place that changes the
state, and becomes an event for the listeners (the events RPC, webhooks, logs). Loads run
on their own thread; workers block in `wait_ready` until the model is ready.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Callable

import numpy as np

from whisperd.inference import DecodingState, OutOfMemoryError, TranscribeOptions, WhisperModel
from whisperd.server.engine import gpu_info

log = logging.getLogger(__name__)

_WARM_UP_AUDIO = np.zeros(16000, dtype=np.float32)
_WARM_UP_OPTIONS = TranscribeOptions(beam_size=1, language="en", temperature_increment=0.0)


def warm_up(state: DecodingState) -> None:
    """1 s of silence, greedy: builds the kernels (and CUDA graphs) a first decode needs."""
    state.transcribe(_WARM_UP_AUDIO, _WARM_UP_OPTIONS)


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    WAITING_FOR_GPU = "waiting_for_gpu"
    UNLOADING = "unloading"


@dataclass(frozen=True, slots=True)
class Transition:
    state: ModelState
    previous: ModelState | None
    at: float  # epoch seconds
    reason: str


Listener = Callable[[Transition], None]


class ModelUnavailable(RuntimeError):
    """The model could not be loaded for a reason waiting will not fix (bad file...)."""


class ModelHost:
    """Owns the one loaded model; thread-safe."""

    def __init__(
        self,
        model_path: Path,
        *,
        use_gpu: bool,
        gpu_poll_interval: float,
        idle_timeout: float,
        fault_oom_loads: int = 0,
        gpu_device: int = 0,
    ) -> None:
        self.model_path = model_path
        self.use_gpu = use_gpu
        self.gpu_device = gpu_device  # which GPU (GPU_DEVICES: one host per GPU)
        self.gpu_poll_interval = gpu_poll_interval
        self.idle_timeout = idle_timeout
        # Test-only fault switch (WHISPERD_FAULT_OOM_LOADS): the next N loads fail as if
        # the GPU were full, so waiting_for_gpu is exercised without a GPU.
        self._fault_oom_loads = fault_oom_loads
        self._cond = threading.Condition()
        self._state = ModelState.UNLOADED
        self._model: WhisperModel | None = None
        self._abort_load = False
        self._load_after_unload: str | None = None
        self._stopping = False
        self._listeners: list[Listener] = []
        self._before_unload: Callable[[str], None] = lambda reason: None
        self._is_busy: Callable[[], bool] = lambda: False
        self._last_activity = time.monotonic()
        self.loaded_at: float | None = None
        self.last_error = ""
        self._idle_thread = threading.Thread(target=self._idle_loop, name="idle-unload", daemon=True)
        self._idle_thread.start()

    # ------------------------------------------------------------------ wiring

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def set_before_unload(self, fn: Callable[[str], None]) -> None:
        """Called (no lock held) before the weights go: stop jobs, release states."""
        self._before_unload = fn

    def set_busy_probe(self, fn: Callable[[], bool]) -> None:
        """True while any job is queued or running: the idle timer waits."""
        self._is_busy = fn

    # ------------------------------------------------------------------ queries

    @property
    def state(self) -> ModelState:
        return self._state

    def touch(self) -> None:
        """Work happened: restart the idle clock."""
        self._last_activity = time.monotonic()

    # ------------------------------------------------------------------ transitions

    def _transition(self, new: ModelState, reason: str) -> None:
        """The one place the state changes. Caller holds self._cond."""
        previous = self._state
        self._state = new
        event = Transition(new, previous, time.time(), reason)
        log.info("model %s -> %s: %s", previous, new, reason)
        self._cond.notify_all()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break the lifecycle
                log.exception("model event listener failed")

    def current_event(self) -> Transition:
        with self._cond:
            return Transition(self._state, None, time.time(), "current state")

    def request_load(self, reason: str) -> None:
        """Start loading unless loading or loaded; idempotent. During an unload, the load
        starts once the unload has finished."""
        with self._cond:
            if self._stopping:
                return
            if self._state == ModelState.UNLOADED:
                self._abort_load = False
                self._transition(ModelState.LOADING, reason)
                threading.Thread(target=self._load_loop, name="model-load", daemon=True).start()
            elif self._state == ModelState.UNLOADING:
                self._load_after_unload = reason
            # loading, waiting_for_gpu, ready: nothing to do

    def _load_loop(self) -> None:
        while True:
            try:
                model = self._load_once()
            except OutOfMemoryError as exc:
                with self._cond:
                    if self._abort_load or self._stopping:
                        self._transition(ModelState.UNLOADED, "load abandoned: unload requested")
                        return
                    self.last_error = str(exc)
                    self._transition(
                        ModelState.WAITING_FOR_GPU,
                        f"out of GPU memory ({exc}); {self._vram_summary()}; "
                        f"retrying every {self.gpu_poll_interval:g} s",
                    )
                    self._cond.wait_for(
                        lambda: self._abort_load or self._stopping, timeout=self.gpu_poll_interval
                    )
                    if self._abort_load or self._stopping:
                        self._transition(ModelState.UNLOADED, "stopped waiting for the GPU: unload requested")
                        return
                    self._transition(ModelState.LOADING, f"retrying the load; {self._vram_summary()}")
                continue
            except Exception as exc:  # a bad file: waiting will not help
                with self._cond:
                    self.last_error = str(exc)
                    self._transition(ModelState.UNLOADED, f"load failed: {exc}")
                return
            with self._cond:
                if self._abort_load or self._stopping:
                    model.close()
                    self._transition(ModelState.UNLOADED, "load abandoned: unload requested")
                    return
                self._model = model
                self.loaded_at = time.time()
                self.last_error = ""
                self.touch()
                self._transition(ModelState.READY, f"{self.model_path.name} loaded and warmed up")
                return

    def _load_once(self) -> WhisperModel:
        if self._fault_oom_loads > 0:
            self._fault_oom_loads -= 1
            raise OutOfMemoryError("injected fault: WHISPERD_FAULT_OOM_LOADS")
        started = time.monotonic()
        model = WhisperModel(
            self.model_path, use_gpu=self.use_gpu, gpu_device=self.gpu_device,
        )
        try:
            self._warm_up(model)
        except BaseException:
            model.close()
            raise
        log.info("model %s ready in %.2f s", self.model_path.name, time.monotonic() - started)
        return model

    @staticmethod
    def _warm_up(model: WhisperModel) -> None:
        # The first decode after a load builds kernels and CUDA graphs; the earlier
        # service's first job after a cold start returned no segments without this.
        with model.new_state() as state:
            warm_up(state)

    def _vram_summary(self) -> str:
        gpus = gpu_info.gpus()
        if not gpus:
            return "no NVML figures"
        return ", ".join(f"GPU {g.index} {g.free / 2**20:.0f} MiB free of {g.total / 2**20:.0f}" for g in gpus)

    def wait_ready(self, stop: threading.Event, timeout: float = 1.0) -> WhisperModel | None:
        """The ready model, or None after `timeout` without one."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._state == ModelState.READY or stop.is_set() or self._stopping,
                timeout=timeout,
            ):
                return None
            if self._state != ModelState.READY or self._model is None:
                return None
            return self._model

    def unload(self, reason: str) -> None:
        """Free the model now; idempotent. Blocks until unloaded (a load in flight is
        abandoned once its native call returns)."""
        with self._cond:
            if self._state == ModelState.UNLOADED:
                return
            if self._state in (ModelState.LOADING, ModelState.WAITING_FOR_GPU):
                self._abort_load = True
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._state == ModelState.UNLOADED)
                return
            if self._state == ModelState.UNLOADING:
                self._cond.wait_for(lambda: self._state == ModelState.UNLOADED)
                return
            self._transition(ModelState.UNLOADING, reason)
        self._before_unload(reason)
        with self._cond:
            model, self._model = self._model, None
            if model is not None:
                model.close()
            self.loaded_at = None
            self._transition(ModelState.UNLOADED, reason)
            again, self._load_after_unload = self._load_after_unload, None
        if again:
            self.request_load(again)

    def _idle_loop(self) -> None:
        while not self._stopping:
            time.sleep(0.25)
            if self.idle_timeout <= 0 or self._state != ModelState.READY:
                continue
            if self._is_busy():
                self.touch()
                continue
            if time.monotonic() - self._last_activity >= self.idle_timeout:
                self.unload(f"idle for {self.idle_timeout:g} s")

    def stop(self) -> None:
        """Server shutdown: abandon loads and free the model (jobs already stopped)."""
        with self._cond:
            self._stopping = True
            self._abort_load = True
            self._cond.notify_all()
        if self._state in (ModelState.READY, ModelState.LOADING, ModelState.WAITING_FOR_GPU):
            self.unload("server stopping")
