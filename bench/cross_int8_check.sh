#!/usr/bin/env bash
# Build and run bench/cross_int8_check.cu (the cross-attention kernels against a CPU
# reference, and their speed) on a GPU host, against the library bench/gpu.sh built:
#   bash bench/cross_int8_check.sh [build dir, default build/cuda-90-faOFF] [arch, default 90]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-build/cuda-90-faOFF}"
ARCH="${2:-90}"
NVCC="${NVCC:-nvcc}"
OUTDIR="${OUT:-bench/results}"
mkdir -p "$OUTDIR"
"$NVCC" -O2 -std=c++17 -arch="sm_$ARCH" -I native/src bench/cross_int8_check.cu "$BUILD/libwhisperd_cuda.a" \
  -lcublas -lcublasLt -o "$BUILD/cross_int8_check"
"$BUILD/cross_int8_check" | tee "$OUTDIR/cross_int8_check.log"
