"""Per-GPU memory from NVML (nvidia-ml-py), read before each load and for Status.

On a host without an NVIDIA driver NVML does not initialise and the list is empty.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

try:
    import pynvml
except ImportError:  # nvidia-ml-py is optional on CPU hosts
    pynvml = None  # type: ignore[assignment]

_init_lock = threading.Lock()
_initialised: bool | None = None


@dataclass(frozen=True, slots=True)
class GpuMemory:
    index: int
    name: str
    total: int
    used: int
    free: int


def _ensure_nvml() -> bool:
    global _initialised
    with _init_lock:
        if _initialised is None:
            if pynvml is None:
                _initialised = False
            else:
                try:
                    pynvml.nvmlInit()
                    _initialised = True
                except pynvml.NVMLError as exc:
                    log.info("NVML unavailable (%s): no GPU memory figures", exc)
                    _initialised = False
        return _initialised


def gpus() -> list[GpuMemory]:
    """Every GPU NVML sees, with its memory in bytes; empty without NVML."""
    if not _ensure_nvml():
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append(
                GpuMemory(
                    i, name.decode() if isinstance(name, bytes) else name,
                    int(mem.total), int(mem.used), int(mem.free),
                )
            )
    except pynvml.NVMLError as exc:
        log.warning("NVML query failed: %s", exc)
    return out
