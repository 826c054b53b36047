#!/usr/bin/env bash
# Build and run bench/cross_int8_check.cu (the cross-attention kernels against a CPU
# reference, and their speed) on a GPU host, against the library bench/gpu.sh built:
#   bash bench/cross_int8_check.sh [build dir, default build/cuda-90-faOFF] [arch, default 90]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-build/cuda-90-faOFF}"
ARCH="${2:-90}"
# the nvcc that built the library (CMake found it; it need not be on PATH)
NVCC="${NVCC:-$(sed -n 's/^CMAKE_CUDA_COMPILER:[A-Z]*=//p' "$BUILD/CMakeCache.txt")}"
NVCC="${NVCC:-nvcc}"
OUTDIR="${OUT:-bench/results}"
mkdir -p "$OUTDIR"
# cuBLAS for cuda_common.cuh's helpers in the library; found at run time beside nvcc's toolkit
LIBDIR="$(cd "$(dirname "$(command -v "$NVCC")")/.." && pwd)/lib64"
"$NVCC" -O2 -std=c++17 -arch="sm_$ARCH" -I native/src bench/cross_int8_check.cu "$BUILD/libwhisperd_cuda.a" \
  -lcublas -lcublasLt -Xlinker -rpath -Xlinker "$LIBDIR" -o "$BUILD/cross_int8_check"
"$BUILD/cross_int8_check" | tee "$OUTDIR/cross_int8_check.log"
