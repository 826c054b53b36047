"""Every GPU of a host in one process (GPU_DEVICES): one model host and its workers per
GPU, all claiming from the one job queue, so a job goes to whichever GPU has a free
worker; a GPU that runs out of memory reloads (or waits for VRAM) on its own while the
others keep working.

The API layer talks to one host and one pool; with several GPUs it gets `MultiHost` and
`MultiPool`, which fan calls out to every device and sum up what they report. With one
GPU, or on a CPU, nothing here is in the way: the single ModelHost and WorkerPool are used
as they are.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from whisperd.server.engine.lifecycle import Listener, ModelHost, ModelState, Transition
from whisperd.server.engine.workers import WorkerPool


def parse_gpu_devices(setting: str, visible: int) -> list[int]:
    """GPU_DEVICES ("" or "all" = every visible GPU; "0,2" = those) as device indices.

    Raises ValueError with a message naming the setting when an index is not a visible
    GPU or appears twice. No visible GPU: [] (the model runs on the CPU).
    """
    text = setting.strip().lower()
    if visible <= 0:
        return []
    if text in ("", "all"):
        return list(range(visible))
    try:
        wanted = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"GPU_DEVICES must be 'all' or GPU indices like 0,1, got {setting!r}") from None
    if not wanted:
        raise ValueError(f"GPU_DEVICES names no GPU: {setting!r}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"GPU_DEVICES names a GPU twice: {setting!r}")
    missing = [i for i in wanted if not 0 <= i < visible]
    if missing:
        raise ValueError(
            f"GPU_DEVICES names GPU {missing[0]}, but this host has {visible} (0 to {visible - 1})"
        )
    return wanted


# How the state of several GPUs reads as one: ready if any GPU can run jobs.
_PRECEDENCE = (
    ModelState.READY, ModelState.LOADING, ModelState.WAITING_FOR_GPU,
    ModelState.UNLOADING, ModelState.UNLOADED,
)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    gpu_index: int
    state: ModelState
    running_jobs: int
    last_error: str
    loaded_at: float | None


class MultiHost:
    """The model hosts of several GPUs, read and driven as one."""

    def __init__(self, hosts: Sequence[ModelHost], devices: Sequence[int]) -> None:
        if len(hosts) != len(devices) or not hosts:
            raise ValueError("one model host per device, at least one")
        self.hosts = list(hosts)
        self.devices = list(devices)
        self.model_path: Path = hosts[0].model_path
        self.use_gpu = hosts[0].use_gpu
        self.idle_timeout = hosts[0].idle_timeout
        self.pools: list[WorkerPool] = []  # set by MultiPool, for per-device running counts

    @property
    def state(self) -> ModelState:
        states = {h.state for h in self.hosts}
        return next(s for s in _PRECEDENCE if s in states)

    @property
    def loaded_at(self) -> float | None:
        times = [h.loaded_at for h in self.hosts if h.loaded_at is not None]
        return min(times) if times else None

    @property
    def last_error(self) -> str:
        return "; ".join(f"gpu {d}: {h.last_error}" for d, h in zip(self.devices, self.hosts) if h.last_error)

    def add_listener(self, listener: Listener) -> None:
        """Every device's transitions, each reason naming its GPU."""
        for device, host in zip(self.devices, self.hosts):
            host.add_listener(_on_device(device, listener))

    def request_load(self, reason: str) -> None:
        for host in self.hosts:
            host.request_load(reason)

    def unload(self, reason: str) -> None:
        for host in self.hosts:
            host.unload(reason)

    def touch(self) -> None:
        for host in self.hosts:
            host.touch()

    def pick(self, gpu_indices: Sequence[int]) -> list[ModelHost]:
        """The hosts of these GPUs, each once, in the order given; ValueError naming an
        index this server does not drive."""
        by_device = dict(zip(self.devices, self.hosts))
        for index in gpu_indices:
            if index not in by_device:
                raise ValueError(f"GPU {index} is not one of this server's GPUs "
                                 f"({', '.join(map(str, self.devices))}; GPU_DEVICES)")
        return [by_device[i] for i in dict.fromkeys(gpu_indices)]

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()

    def current_event(self) -> Transition:
        return Transition(self.state, None, time.time(), "current state")

    def device_status(self) -> list[DeviceStatus]:
        running = [p.running_count() for p in self.pools] or [0] * len(self.hosts)
        return [
            DeviceStatus(d, h.state, n, h.last_error, h.loaded_at)
            for d, h, n in zip(self.devices, self.hosts, running)
        ]


def _on_device(device: int, listener: Listener) -> Listener:
    def forward(t: Transition) -> None:
        listener(Transition(t.state, t.previous, t.at, f"gpu {device}: {t.reason}"))

    return forward


class MultiPool:
    """The worker pools of several GPUs (each bound to its own model host), driven as one."""

    def __init__(self, pools: Sequence[WorkerPool], host: MultiHost | None = None) -> None:
        self.pools = list(pools)
        if host is not None:
            host.pools = self.pools

    def start(self) -> None:
        for p in self.pools:
            p.start()

    def wake(self) -> None:
        for p in self.pools:
            p.wake()

    def cancel(self, job_id: str) -> bool:
        return any(p.cancel(job_id) for p in self.pools)

    def running_count(self) -> int:
        return sum(p.running_count() for p in self.pools)

    def running_ids(self) -> list[str]:
        return [job_id for p in self.pools for job_id in p.running_ids()]

    def busy(self) -> bool:
        return any(p.busy() for p in self.pools)

    def stop(self, grace: float) -> None:
        for p in self.pools:
            p.stop(grace)


def make_hosts(devices: Sequence[int], make_host: Callable[[int], ModelHost]) -> ModelHost | MultiHost:
    """One model host per GPU in `devices`; a plain one for one GPU or none (on a CPU
    `make_host(0)`, the index unused)."""
    if len(devices) <= 1:
        return make_host(devices[0] if devices else 0)
    return MultiHost([make_host(d) for d in devices], devices)


def make_pools(
    host: ModelHost | MultiHost, make_pool: Callable[[ModelHost], WorkerPool]
) -> WorkerPool | MultiPool:
    """The workers of each model host that make_hosts made."""
    if isinstance(host, MultiHost):
        return MultiPool([make_pool(h) for h in host.hosts], host)
    return make_pool(host)


def per_device(
    devices: Sequence[int],
    make_host: Callable[[int], ModelHost],
    make_pool: Callable[[ModelHost], WorkerPool],
) -> tuple[ModelHost | MultiHost, WorkerPool | MultiPool]:
    host = make_hosts(devices, make_host)
    return host, make_pools(host, make_pool)
