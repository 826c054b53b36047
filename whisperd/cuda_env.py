"""Process-wide settings of the CUDA libraries, made once before a model loads on a GPU.

Both are read by the libraries when they first start, so they must be in the environment
before the first matrix product; a value the user set is never changed.

- ``NVIDIA_TF32_OVERRIDE=0``: cuBLAS would round the f32 matrix products to TF32 (10-bit
  mantissa). The only f32 products are the mel spectrogram's DFT, where TF32 turns the
  quiet bins into noise; the f16 weights' products are not affected.
- ``GGML_CUDA_FORCE_CUBLAS_COMPUTE_32F=1`` on GPUs whose tensor cores accumulate f16
  products in f32 at full rate (A100, H100/H200, B200): ggml-cuda then writes each
  product straight to f32 instead of writing f16 and converting it in a second kernel
  (the conversions were a fifth of the encoder's time on an H200). GeForce and
  workstation cards accumulate in f32 at half rate, so they keep ggml's default.

``WHISPERD_CUDA_ENCODER`` (set by nobody; the server validates it at start as one of its
settings and passes it on, library users get it read here): ``1`` runs the batched
engine's encoder layers as whisperd's CUDA code on any GPU, ``0`` keeps them a ggml graph;
``auto`` or unset, the CUDA code runs on the same full-rate GPUs as above (it needs an f16
model).

``WHISPERD_GPU_SAMPLING`` (a diagnostic switch, read here when a batched decoder is made):
``0`` downloads every row's logits and summarises greedy rows on the CPU, as a CPU
decoder does; ``1`` or unset, greedy rows are summarised on the GPU and only the summaries
are downloaded. Both give the same tokens; benchmarks and tests compare them.

``WHISPERD_CUDA_DECODER`` (``0``, ``1``, ``auto``), ``WHISPERD_CUDA_DECODER_MAX_BATCH`` (a
number of windows) and ``WHISPERD_CUDA_ATTENTION`` (``fused``, ``cublas``, ``auto``) are
read by the native library when a batched decoder is made (the decoder step and the
encoder's attention as whisperd's CUDA code, native/src/cuda_decoder.hpp and
cuda_attention.hpp); ``check_switches`` lets the server refuse a bad value at start.

``WHISPERD_CROSS_KV_INT8`` (``1``, the default, or ``0``), read by the native library
too: ``1`` keeps an int8 copy of every window's cross-attention keys and values beside
the f16 caches, which greedy steps of the CUDA decoder step read instead (half the bytes
of the step's largest part; ~1e-2 relative error in those keys and values, ~5e-3 in the
attention's outputs). Without the CUDA decoder step it changes nothing; ``slot_cost``
counts the copy's memory.

``WHISPERD_CUDA_STEP_FUSION`` (``1``, the default, or ``0``), read by the native library
when a CUDA decoder step is made: ``0`` runs the step's query, key and value products
separately and FC1's bias and GELU as their own pass instead of one batched product and
one product with its epilogue (a diagnostic A/B; the same results up to the last bits).
``WHISPERD_CUDA_STEP_TUNE`` (``1``, the default, or ``0``): ``1`` times a few of
cuBLASLt's algorithms and cuBLAS's own choice for each of the step's products once per
shape (in a run of the step not recorded into a CUDA graph), and the fused products
against the unfused ones, and keeps the fastest; ``0``, cuBLAS's own choice.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# (major, minor) compute capabilities of the data-centre parts with full-rate f32 accumulation.
_FULL_RATE_F32_ACCUMULATE = {(8, 0), (9, 0), (10, 0), (10, 3)}
_FORCE_32F = "GGML_CUDA_FORCE_CUBLAS_COMPUTE_32F"
_FORCE_16F = "GGML_CUDA_FORCE_CUBLAS_COMPUTE_16F"
_done = False


def compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of every NVIDIA GPU NVML sees; empty without NVML or a driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        try:
            return [
                tuple(pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(pynvml.nvmlDeviceGetCount())
            ]
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return []


def configure(capabilities: list[tuple[int, int]] | None = None) -> dict[str, str]:
    """Set the variables above where the user has not; returns what was set."""
    global _done
    if _done and capabilities is None:
        return {}
    _done = True
    caps = compute_capabilities() if capabilities is None else capabilities
    chosen: dict[str, str] = {}
    if "NVIDIA_TF32_OVERRIDE" not in os.environ:
        chosen["NVIDIA_TF32_OVERRIDE"] = "0"
    if (caps and all(c in _FULL_RATE_F32_ACCUMULATE for c in caps)
            and _FORCE_32F not in os.environ and _FORCE_16F not in os.environ):
        chosen[_FORCE_32F] = "1"
    os.environ.update(chosen)
    if chosen:
        log.info("CUDA settings: %s", ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return chosen


def cuda_encoder_choice() -> bool | None:
    """WHISPERD_CUDA_ENCODER as True/False; None when unset (automatic)."""
    raw = os.environ.get("WHISPERD_CUDA_ENCODER", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"WHISPERD_CUDA_ENCODER must be 0, 1 or auto, got {raw!r}")


def gpu_sampling_choice(value: str | None = None) -> bool:
    """WHISPERD_GPU_SAMPLING (or `value`) as True/False; True when unset."""
    raw = (os.environ.get("WHISPERD_GPU_SAMPLING", "") if value is None else value).strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"WHISPERD_GPU_SAMPLING must be 0 or 1, got {raw!r}")


# The native library's switches and the exact values it accepts (see the module's text).
_NATIVE_SWITCHES = {
    "WHISPERD_CUDA_DECODER": ("0", "1", "auto"),
    "WHISPERD_CUDA_ATTENTION": ("fused", "cublas", "auto"),
    "WHISPERD_CROSS_KV_INT8": ("0", "1"),
    "WHISPERD_CUDA_STEP_FUSION": ("0", "1"),
    "WHISPERD_CUDA_STEP_TUNE": ("0", "1"),
}


def cross_kv_int8(env: Mapping[str, str] | None = None) -> bool:
    """WHISPERD_CROSS_KV_INT8 (of `env`, else the process's) as True/False; True when unset."""
    raw = (os.environ if env is None else env).get("WHISPERD_CROSS_KV_INT8", "")
    check_switches({"WHISPERD_CROSS_KV_INT8": raw})
    return raw != "0"


def check_switches(env: Mapping[str, str]) -> None:
    """Raise ValueError naming the first diagnostic switch whose value would be refused
    when a model loads (empty means unset)."""
    if env.get("WHISPERD_GPU_SAMPLING", ""):
        gpu_sampling_choice(env.get("WHISPERD_GPU_SAMPLING", ""))
    for name, allowed in _NATIVE_SWITCHES.items():
        raw = env.get(name, "")
        if raw and raw not in allowed:
            raise ValueError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {raw!r}")
    raw = env.get("WHISPERD_CUDA_DECODER_MAX_BATCH", "")
    if raw and not (raw.isdigit() and int(raw) <= 1 << 20):
        raise ValueError(f"WHISPERD_CUDA_DECODER_MAX_BATCH must be a number of windows, got {raw!r}")
