#!/usr/bin/env bash
# One command on a host with an NVIDIA GPU: build the CUDA extension, run the engine tests
# on the GPU, benchmark, print one table. Used through the device tool as
#   bash bench/gpu.sh                 # sm_90 (H100) build + tests + bench
#   bash bench/gpu.sh --build-only 75 # prove the users' default architecture compiles
# The host needs cmake, ninja, nvcc, python3 with numpy and nanobind; PyAV is optional
# (plain 16 kHz WAV is read without it). Inputs prepared here by bench/gpu_prep.sh travel
# in .gpu/ (a trimmed whisper.cpp source and a quantized tiny.en).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_ONLY=0
if [[ "${1:-}" == "--build-only" ]]; then BUILD_ONLY=1; shift; fi
ARCHS="${1:-${CMAKE_CUDA_ARCHITECTURES:-90}}"
PY="${PYTHON:-python3}"
RESULTS="${OUT:-bench/results}"
MODEL="${WHISPERD_TEST_MODEL:-.gpu/ggml-tiny.en-q8_0.bin}"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

if [[ ! -f third_party/whisper.cpp/include/whisper.h ]]; then
  if [[ -f .gpu/whisper.cpp.tgz ]]; then
    mkdir -p third_party && tar -xzf .gpu/whisper.cpp.tgz -C third_party
  else
    "$PY" native/fetch_whisper_cpp.py third_party/whisper.cpp
  fi
fi

BUILD="build/cuda-$ARCHS"
t0=$(date +%s)
cmake -S native -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DWHISPERD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
  -DWHISPER_CPP_DIR="$PWD/third_party/whisper.cpp" \
  -DWHISPERD_WHISPER_CLI=ON \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dnanobind_DIR="$("$PY" -m nanobind --cmake_dir)" >"$RESULTS/cmake-$ARCHS.log"
cmake --build "$BUILD" --target _native whisper-cli -j"$(nproc)" >"$RESULTS/build-$ARCHS.log"
t1=$(date +%s)
echo "CUDA build for sm_$ARCHS: $((t1 - t0)) s"
if [[ $BUILD_ONLY == 1 ]]; then
  ls -la "$BUILD"/_native*.so
  exit 0
fi

# Python packages the host lacks travel as wheels in .gpu/wheels.
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-deps --no-index --target .gpu/pylib .gpu/wheels/*.whl
  export PYTHONPATH="$PWD/.gpu/pylib${PYTHONPATH:+:$PYTHONPATH}"
fi

# Put the CUDA module where `import whisperd._native` finds it (source tree on PYTHONPATH).
cp "$BUILD"/_native*.so whisperd/
# The wheel maps server/ and client/ to whisperd.server and whisperd.client; so do links here.
ln -sfn ../server whisperd/server
ln -sfn ../client whisperd/client
cp third_party/whisper.cpp/models/for-tests-silero-v6.2.0-ggml.bin whisperd/silero-v6.2.0-ggml.bin
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "from whisperd import _native as n; print('whisper.cpp', n.whisper_version(), 'CUDA', n.built_with_cuda(), n.cuda_architectures()); [print(' ', d.name, d.description, round(d.memory_total/2**30, 1), 'GiB') for d in n.devices()]"

set +e
WHISPERD_TEST_GPU=1 WHISPERD_TEST_MODEL="$MODEL" "$PY" -m pytest -p no:cacheprovider -q \
  -rfEP --tb=short tests/test_native.py tests/test_gpu.py tests/test_gpu_lifecycle.py --junitxml="$RESULTS/gpu-tests.xml" \
  2>&1 | tee "$RESULTS/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}
# When the out-of-memory probe crashes, show where, natively.
if command -v cuda-gdb >/dev/null && ! "$PY" tests/gpu_oom_probe.py "$MODEL" 16 >"$RESULTS/oom-probe.log" 2>&1; then
  echo "out-of-memory probe failed; native backtrace:"
  cuda-gdb -batch -ex run -ex bt --args "$PY" tests/gpu_oom_probe.py "$MODEL" 16 >"$RESULTS/oom-gdb.log" 2>&1
  grep -A25 -m1 "signal SIG" "$RESULTS/oom-gdb.log" || tail -30 "$RESULTS/oom-gdb.log"
fi
set -e

"$PY" bench/gpu_bench.py --model "$MODEL" --whisper-cli "$BUILD/bin/whisper-cli" \
  --build-seconds $((t1 - t0)) --archs "$ARCHS" --tests-xml "$RESULTS/gpu-tests.xml" \
  --json "$RESULTS/gpu_bench.json"
exit "$tests_rc"
