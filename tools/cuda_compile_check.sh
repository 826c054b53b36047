#!/usr/bin/env bash
# Compile the CUDA build on a machine without a GPU (CI and the development machines have
# none): nvcc, the CUDA runtime and cuBLAS come from NVIDIA's wheels on PyPI (pinned and
# hashed in tools/cuda-wheels.txt, ~600 MB, kept in .cache/cuda-toolkit), then the same
# CMake configuration as bench/gpu.sh. Nothing runs; it proves that our sources compile
# and link for an architecture before device time is spent on them.
#   bash tools/cuda_compile_check.sh          # sm_75 (the users' default): our CUDA code
#                                             # and the C++ that calls it (a minute)
#   bash tools/cuda_compile_check.sh 90 --all # the whole extension, ggml-cuda included
#                                             # (all quantised flash-attention kernels, as
#                                             # users build it: ~40 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH="${1:-75}"
ALL=$([[ "${2:-}" == "--all" ]] && echo 1 || echo 0)
PY="${PYTHON:-.venv/bin/python}"
ROOT=.cache/cuda-toolkit
TK="$PWD/$ROOT/nvidia/cu13"

if [[ ! -x $TK/bin/nvcc ]]; then
  echo "fetching the CUDA compiler, runtime and cuBLAS wheels into $ROOT"
  mkdir -p "$ROOT/wheels"
  "$PY" -m pip download --no-deps --require-hashes -q -d "$ROOT/wheels" -r tools/cuda-wheels.txt
  for w in "$ROOT"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$ROOT"; done
  chmod +x "$TK"/bin/* "$TK"/nvvm/bin/*  # zip archives keep no modes
  # FindCUDAToolkit wants unversioned libraries, lib64/, and the driver's stub library
  # (linking only: a GPU host has the real one).
  for lib in cudart cublas cublasLt; do ln -sf "lib$lib.so.13" "$TK/lib/lib$lib.so"; done
  ln -sfn lib "$TK/lib64"
  mkdir -p "$TK/lib/stubs"
  echo 'int cuInit(unsigned int flags) { return flags ? 0 : 0; }' > "$ROOT/stub.c"
  cc -shared -fPIC "$ROOT/stub.c" -o "$TK/lib/stubs/libcuda.so"
fi
[[ -f third_party/whisper.cpp/include/whisper.h ]] || "$PY" native/fetch_whisper_cpp.py third_party/whisper.cpp

BUILD="build/cuda-check-$ARCH"
PATH="$TK/bin:$PATH" cmake -S native -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DWHISPERD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_CUDA_COMPILER="$TK/bin/nvcc" \
  -DCUDAToolkit_ROOT="$TK" -DWHISPER_CPP_DIR="$PWD/third_party/whisper.cpp" \
  -DPython_EXECUTABLE="$(command -v "$PY")" -Dnanobind_DIR="$("$PY" -m nanobind --cmake_dir)" >"$BUILD.cmake.log"
t0=$(date +%s)
if [[ $ALL == 1 ]]; then
  PATH="$TK/bin:$PATH" cmake --build "$BUILD" --target _native
else
  # our CUDA library, and every source of the extension compiled with WHISPERD_WITH_CUDA
  objs=$(cd native/src && ls *.cpp | sed 's|^|CMakeFiles/_native.dir/src/|; s|$|.o|')
  PATH="$TK/bin:$PATH" ninja -C "$BUILD" whisperd_cuda $objs
fi
echo "sm_$ARCH: compiled in $(( $(date +%s) - t0 )) s ($([[ $ALL == 1 ]] && echo 'the whole extension' || echo 'whisperd code only'))"
