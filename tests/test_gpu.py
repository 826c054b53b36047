"""GPU behaviour of the native core. Runs on a CUDA build (bench/gpu.sh on a GPU host);
a CPU build skips it, since there is no GPU to observe."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from whisperd import _native
from whisperd.inference import WhisperModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not _native.built_with_cuda(), reason="CPU build: run bench/gpu.sh on a CUDA host"
    ),
]

MiB = 1 << 20


def gpu_used() -> int:
    dev = next(d for d in _native.devices() if d.type == "gpu")
    return dev.memory_total - dev.memory_free


def test_a_cuda_device_is_visible() -> None:
    gpus = [d for d in _native.devices() if d.type == "gpu"]
    assert gpus, [d.name for d in _native.devices()]
    assert gpus[0].memory_total > 1 << 30
    assert _native.cuda_architectures()


def test_weights_go_to_vram_and_come_back_on_close(tiny_en_model: Path) -> None:
    before = gpu_used()
    model = WhisperModel(tiny_en_model, use_gpu=True)
    state = model.new_state()
    loaded = gpu_used()
    state.close()
    model.close()
    time.sleep(0.2)
    after = gpu_used()
    assert loaded - before > 20 * MiB, (before, loaded)
    assert abs(after - before) < 100 * MiB, (before, loaded, after)


@pytest.mark.parametrize("leave_mib", [16, 80])
def test_out_of_gpu_memory_is_its_own_exception(tiny_en_model: Path, leave_mib: int) -> None:
    """Another process's allocations leave too little VRAM: a clean OutOfMemoryError,
    then the same process loads fine once the memory is back."""
    pytest.importorskip("torch")
    probe = Path(__file__).with_name("gpu_oom_probe.py")
    # Its own process: a crash here must fail this test, not end the whole run.
    proc = subprocess.run(
        [sys.executable, str(probe), str(tiny_en_model), str(leave_mib)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "OOM: out of memory" in proc.stdout, proc.stdout
    assert "RECOVERED" in proc.stdout, proc.stdout
