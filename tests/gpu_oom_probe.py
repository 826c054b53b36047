"""Run in its own process by test_gpu.py (and under a debugger by bench/gpu.sh when it
crashes): fill the GPU with torch, load a model, report what happened, then recover."""
from __future__ import annotations

import sys

import torch

from whisperd.inference import OutOfMemoryError, WhisperModel

MiB = 1 << 20
path = sys.argv[1]
leave = int(sys.argv[2]) if len(sys.argv) > 2 else 16
free, _ = torch.cuda.mem_get_info()
hog = torch.empty(free - leave * MiB, dtype=torch.uint8, device="cuda")
print(f"free before load: {torch.cuda.mem_get_info()[0] / MiB:.0f} MiB", flush=True)
try:
    model = WhisperModel(path, use_gpu=True)
    print("model loaded", flush=True)
    model.new_state().close()
    print("NO-OOM", flush=True)
    model.close()
except OutOfMemoryError as exc:
    print(f"OOM: {exc}", flush=True)
del hog
torch.cuda.empty_cache()
model = WhisperModel(path, use_gpu=True)
model.new_state().close()
model.close()
print("RECOVERED", flush=True)
