#!/usr/bin/env bash
# One command on a host with an NVIDIA GPU: build the CUDA extension, run the GPU tests,
# benchmark, print the tables. Used through the device tool as
#   bash bench/gpu.sh                 # sm_90 build, batched vs sequential check, the
#                                     # batched engine's table with the peer beside it
#   STAGES="tests diag" bash bench/gpu.sh   # only some stages (the build always runs;
#                                           # ninja makes it a no-op when it is current)
#   bash bench/gpu.sh --build-only 75 # prove the users' default architecture compiles
#   bash bench/gpu.sh --full-build    # the timed runs on exactly the users' build
# Stages:
#   tests    the engine and lifecycle tests on the GPU (pytest)
#   engine   bench/gpu_bench.py: our native path against whisper-cli, tiny.en
#   diag     bench/gpu_concurrency.py: where the time goes with 1-8 states at once on the
#            per-state path (sequential mode; large-v3 shape, random weights)
#   service  bench/gpu_service_bench.py: issue 6's table through a real server
#   peer     bench/peer_transformers.py: Hugging Face transformers, batched, same work
#   batch    bench/batch_bench.py: the batched engine at batch 8-128 over 3840 s (128
#            windows), the peer beside it on the same audio, and both under a 7.5 GB
#            VRAM cap (a ballast process holds the rest of the card)
#            (BATCH_ENV="WHISPERD_CROSS_KV_INT8=1": the same batches again under that setting)
#   multigpu bench/multi_gpu_bench.py on a host with two or more GPUs: 16 jobs through one
#            server on GPU 0 against all GPUs (GPU_DEVICES), tiny.en and the large-v3 shape;
#            one GPU held by another process (its model waits, the others serve, it
#            recovers when freed); one GPU's model unloaded while jobs run, then loaded
#   cap      only the 7.5 GiB part of "batch" (PEER_CAP_BATCH=16: the peer under the cap too)
#   check    batched vs sequential transcripts of real speech on the GPU (tiny.en)
#   service-batch  bench/batch_service_bench.py: 32 jobs of 121 s at once, one 1-hour job,
#            a short job behind it, through a real server (large-v3 shape)
#   profile  bench/profile_engine.py: the encoder per window and the decoder step, timed
#            apart (the encoder as a ggml graph and as our CUDA code), then the kernels of one
#            encode and of a step at batch 8 under ncu (NCU_REGIONS="encode step",
#            NCU_STEP_BATCH=8); PROFILE_GGML_ENCODER / PROFILE_CUBLAS_ATTENTION /
#            PROFILE_GGML_DECODER=0 skip the comparisons with the ggml encoder / the unfused
#            attention / the ggml decoder step
# The host needs cmake, ninja, nvcc, python3 with numpy and nanobind (torch and
# transformers for the peer); PyAV is optional (plain 16 kHz WAV is read without it).
# Inputs prepared here by bench/gpu_prep.sh travel in .gpu/ (a trimmed whisper.cpp
# source, a quantized tiny.en, wheels). The large-v3-shaped model is generated on the
# host (bench/make_random_model.py, ~3.1 GB, 15 s) and kept in build/ while the machine is.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_ONLY=0
FULL_BUILD=0
if [[ "${1:-}" == "--full-build" ]]; then FULL_BUILD=1; shift; fi
if [[ "${1:-}" == "--build-only" ]]; then BUILD_ONLY=1; FULL_BUILD=1; shift; fi
# The timed runs build without flash attention for quantised K/V types (never used by
# whisper.cpp, whose KV caches are f16): 239 s instead of 316-337 s on the H100 host. --full-build and
# --build-only build exactly what users get.
FA_ALL_QUANTS=$([[ $FULL_BUILD == 1 ]] && echo ON || echo OFF)
ARCHS="${1:-${CMAKE_CUDA_ARCHITECTURES:-90}}"
PY="${PYTHON:-python3}"
RESULTS="${OUT:-bench/results}"
MODEL="${WHISPERD_TEST_MODEL:-.gpu/ggml-tiny.en-q8_0.bin}"
# The default is the batched engine's table beside the peer (~8.5 minutes on the H200,
# 3.6 of them the build). Run the others as a second call while the machine is still
# warm (the build is then a no-op), e.g. STAGES="tests service-batch" bash bench/gpu.sh;
# "tests peer service" is the earlier per-state engine's table.
STAGES="${STAGES:-check batch}"
TOKENS="${TOKENS:-100}"
SECS="${BATCH_SECONDS:-3840}"  # audio of the batch, cap and peer stages
LARGE=build/ggml-large-v3-random-f16.bin  # build/ stays on a warm machine; .gpu/ is replaced by each carry
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

if [[ ! -f third_party/whisper.cpp/include/whisper.h ]]; then
  if [[ -f .gpu/whisper.cpp.tgz ]]; then
    mkdir -p third_party && tar -xzf .gpu/whisper.cpp.tgz -C third_party
  else
    "$PY" native/fetch_whisper_cpp.py third_party/whisper.cpp
  fi
fi

BUILD="build/cuda-$ARCHS-fa$FA_ALL_QUANTS"
# QUICK_BUILD=1: without ggml's flash-attention kernels and whisper-cli, for a short call
# that runs only `batch` (whisperd's own CUDA encoder and step need neither; ggml graphs
# with flash attention, the tests and sequential mode do).
QUICK=()
TARGETS=(_native whisper-cli)
if [[ "${QUICK_BUILD:-0}" == 1 ]]; then
  BUILD="$BUILD-quick"; QUICK=(-DGGML_CUDA_FA=OFF); TARGETS=(_native)
fi
t0=$(date +%s)
cmake -S native -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DWHISPERD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
  -DWHISPER_CPP_DIR="$PWD/third_party/whisper.cpp" \
  -DWHISPERD_WHISPER_CLI=ON -DWHISPERD_CUDA_FA_ALL_QUANTS="$FA_ALL_QUANTS" "${QUICK[@]}" \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dnanobind_DIR="$("$PY" -m nanobind --cmake_dir)" >"$RESULTS/cmake-$ARCHS.log"
cmake --build "$BUILD" --target "${TARGETS[@]}" -j"$(nproc)" >"$RESULTS/build-$ARCHS.log"
t1=$(date +%s)
echo "CUDA build for sm_$ARCHS (flash attention for all quantised K/V types: $FA_ALL_QUANTS): $((t1 - t0)) s"
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

tests_rc=0
if has_stage tests; then
  # The CUDA encoder's tests need an f16 model: an f16 copy of the carried q8_0 tiny.en.
  # The multilingual base model cannot be fetched there: its test is deselected.
  F16_MODEL=build/ggml-tiny.en-f16.bin
  [[ -f $F16_MODEL ]] || { mkdir -p build && "$PY" bench/dequantize_model.py "$MODEL" "$F16_MODEL"; }
  set +e
  WHISPERD_TEST_GPU=1 WHISPERD_TEST_MODEL="$MODEL" WHISPERD_TEST_F16_MODEL="$F16_MODEL" "$PY" -m pytest -p no:cacheprovider -q \
    -rfEP --tb=short ${GPU_TESTS:-tests/test_native.py tests/test_gpu.py tests/test_gpu_lifecycle.py tests/test_device_mel.py tests/test_cuda_encoder.py tests/test_cuda_decoder.py tests/test_batch_slots.py::test_cuda_steps_cover_multiples_of_32_slots tests/test_greedy_sampling.py --deselect tests/test_greedy_sampling.py::test_a_detected_language_then_greedy_tokens_give_whisper_cpps_segments} --junitxml="$RESULTS/gpu-tests.xml" \
    2>&1 | tee "$RESULTS/gpu-tests.log"
  tests_rc=${PIPESTATUS[0]}
  set -e
fi

if has_stage engine; then
  "$PY" bench/gpu_bench.py --model "$MODEL" --whisper-cli "$BUILD/bin/whisper-cli" \
    --build-seconds $((t1 - t0)) --archs "$ARCHS" --tests-xml "$RESULTS/gpu-tests.xml" \
    --json "$RESULTS/gpu_bench.json"
fi

if has_stage diag || has_stage service || has_stage peer || has_stage batch || has_stage profile || has_stage service-batch || has_stage cap || has_stage multigpu; then
  "$PY" -c "from whisperd.audio import decode_audio, write_wav; import numpy as np; \
a = decode_audio('third_party/whisper.cpp/samples/jfk.wav'); write_wav('$RESULTS/speech121.wav', np.tile(a, 11))"
fi
if (has_stage diag || has_stage service || has_stage batch || has_stage profile || has_stage service-batch || has_stage cap || has_stage multigpu) && [[ ! -f $LARGE ]]; then
  mkdir -p build
  t=$(date +%s)
  "$PY" bench/make_random_model.py --shape large-v3 --ftype f16 --out "$LARGE"
  echo "large-v3-shaped random model: $(( $(date +%s) - t )) s, $(du -h "$LARGE" | cut -f1)"
fi

if has_stage diag; then
  echo
  echo "== where the time goes: N states at once, in-process (121 s of audio each, $TOKENS tokens per window)"
  echo "   (the per-state path: sequential mode; the batched engine is the batch stage)"
  diag() { "$PY" bench/gpu_concurrency.py --audio "$RESULTS/speech121.wav" "$@"; }
  diag --model "$LARGE" --tokens "$TOKENS" --jobs 1,4,8 --beam 1 --label "large b1" --json "$RESULTS/diag-large-b1.json"
  diag --model "$LARGE" --tokens "$TOKENS" --jobs 1,4,8 --beam 5 --label "large b5" --json "$RESULTS/diag-large-b5.json" --no-header
fi

if has_stage peer; then
  echo
  echo "== the peer: transformers Whisper, large-v3 shape, random weights, $TOKENS tokens per window"
  # 960 s = 32 windows, the audio of 8 jobs of 121 s; batch 1 alone would take ~90 s here
  # (measured once: 10.8x real time), so the routine run starts at batch 8.
  "$PY" bench/peer_transformers.py --wav "$RESULTS/speech121.wav" --tile-to 960 --tokens-per-window "$TOKENS" \
    --batch-sizes "${PEER_BATCHES:-8,16,32}" --modes generate --json "$RESULTS/peer.json" || echo "peer benchmark failed"
fi

if has_stage service; then
  echo
  echo "== issue 6: whisperd end to end through the client"
  "$PY" bench/gpu_service_bench.py --tiny "$MODEL" --large "$LARGE" --whisper-cli "$BUILD/bin/whisper-cli" \
    --tokens "$TOKENS" --peer-json "$RESULTS/peer.json" --json "$RESULTS/gpu_service_bench.json" ${SERVICE_ARGS:-}
fi
if has_stage check; then
  echo
  echo "== batched vs sequential on real speech (tiny.en, GPU)"
  "$PY" bench/batch_check.py --model "$MODEL" --wav third_party/whisper.cpp/samples/jfk.wav \
    || echo "check: the batched greedy transcript differs from the sequential one"
fi

if has_stage service-batch; then
  # SERVICE_ENV: server settings to compare, one run each ("default" = none), e.g.
  # SERVICE_ENV="default BATCH_SIZE=256"
  for senv in ${SERVICE_ENV:-default}; do
    echo
    echo "== the batched engine through the service ($senv): large-v3 shape, $TOKENS tokens per window"
    sargs=()
    [[ $senv == default ]] || sargs=(--env "$senv")
    stag=${senv/#default/}
    stag=${stag//=/-}  # the device tool brings back no file whose name holds '='

    "$PY" bench/batch_service_bench.py --model "$LARGE" --wav "$RESULTS/speech121.wav" --tokens "$TOKENS" \
      --jobs "${SERVICE_JOBS:-32}" --long-minutes "${LONG_MINUTES:-60}" "${sargs[@]}" \
      --json "$RESULTS/batch_service${stag}.json" \
      || echo "service-batch benchmark failed"
  done
fi

if has_stage multigpu; then
  echo
  echo "== every GPU of the host through one server (GPU_DEVICES): 1 GPU against all, one GPU held by another process"
  ngpu=$("$PY" -c "from whisperd import _native as n; print(sum(1 for d in n.devices() if 'CUDA' in d.name))")
  if (( ngpu < 2 )); then
    echo "$ngpu GPU(s) here: the multigpu stage needs two"
  else
    gpus=$(seq -s, 0 $((ngpu - 1)))
    "$PY" bench/multi_gpu_bench.py --model "$MODEL" --wav "$RESULTS/speech121.wav" --jobs "${MULTI_JOBS:-16}" \
      --devices "$gpus" --oom --json "$RESULTS/multi_gpu_tiny.json" || echo "multigpu (tiny.en) failed"
    "$PY" bench/multi_gpu_bench.py --model "$LARGE" --wav "$RESULTS/speech121.wav" --jobs "${MULTI_JOBS:-16}" \
      --devices "$gpus" --tokens "$TOKENS" --unload-one --json "$RESULTS/multi_gpu_large.json" \
      || echo "multigpu (large-v3 shape) failed"
  fi
fi

if has_stage profile; then
  echo
  echo "== where the batched engine's GPU time goes (large-v3 shape)"
  # the encoder's layers as a ggml graph against whisperd's CUDA code (the default here)
  if [[ "${PROFILE_GGML_ENCODER:-1}" == 1 ]]; then
    echo "-- WHISPERD_CUDA_ENCODER=0 (the encoder as a ggml graph)"
    WHISPERD_CUDA_ENCODER=0 "$PY" bench/profile_engine.py --model "$LARGE" \
      --wav "$RESULTS/speech121.wav" ${PROFILE_ARGS:-}
  fi
  if [[ "${PROFILE_CUBLAS_ATTENTION:-1}" == 1 ]]; then
    echo "-- WHISPERD_CUDA_ATTENTION=cublas (the encoder's attention unfused, through cuBLAS)"
    WHISPERD_CUDA_ATTENTION=cublas "$PY" bench/profile_engine.py --model "$LARGE" \
      --wav "$RESULTS/speech121.wav" --batches "" ${PROFILE_ARGS:-}
  fi
  if [[ "${PROFILE_GGML_DECODER:-1}" == 1 ]]; then
    echo "-- WHISPERD_CUDA_DECODER=0 (the decoder step as a ggml graph)"
    WHISPERD_CUDA_DECODER=0 "$PY" bench/profile_engine.py --model "$LARGE" \
      --wav "$RESULTS/speech121.wav" --groups "" ${PROFILE_ARGS:-}
  fi
  echo "-- whisperd's defaults on this GPU"
  "$PY" bench/profile_engine.py --model "$LARGE" --wav "$RESULTS/speech121.wav" ${PROFILE_ARGS:-}
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
  if [[ -n "$NCU" ]]; then
    for region in ${NCU_REGIONS:-encode step}; do
      echo
      echo "== ncu: kernels of one $region"
      "$NCU" --clock-control none --profile-from-start off --csv --metrics gpu__time_duration.sum \
        --log-file "$RESULTS/ncu-$region.csv" "$PY" bench/profile_engine.py --model "$LARGE" \
        --wav "$RESULTS/speech121.wav" --ncu-region "$region" --ncu-step-batch "${NCU_STEP_BATCH:-8}" \
        >"$RESULTS/ncu-$region.out" 2>&1 \
        || { echo "ncu failed:"; tail -5 "$RESULTS/ncu-$region.out"; }
      "$PY" bench/ncu_summary.py "$RESULTS/ncu-$region.csv" --top "${NCU_TOP:-25}" || true
    done
  else
    echo "no ncu on this host"
  fi
fi

if has_stage batch; then
  echo
  echo "== batched engine: large-v3 shape, ${SECS} s of audio, $TOKENS tokens per window"
  batch_run() {
    "$PY" bench/batch_bench.py --model "$LARGE" --wav "$RESULTS/speech121.wav" --seconds "$SECS" \
      --batches "${BATCHES-8,16,32,64,128}" --tokens "$TOKENS" "$@"
  }
  batch_run --json "$RESULTS/batch.json"
  # BATCH_ENV: more settings to run the same batches under, e.g. BATCH_ENV="WHISPERD_CROSS_KV_INT8=0"
  for benv in ${BATCH_ENV:-}; do
    echo "-- with $benv"
    (export "$benv"; batch_run --json "$RESULTS/batch-${benv//[^A-Za-z0-9_-]/-}.json") \
      || echo "batch run with $benv failed"
  done
fi
# the cap alone: STAGES=cap (part of "batch" unless CAP_GIB=0)
if has_stage cap || { has_stage batch && [[ "${CAP_GIB:-7.5}" != "0" ]]; }; then
  echo
  echo "== under a ${CAP_GIB:-7.5} GiB VRAM cap (the users' RTX 2080): the batch size chosen from free VRAM"
  "$PY" bench/vram_ballast.py --leave-gib "${CAP_GIB:-7.5}" > "$RESULTS/ballast.log" 2>&1 &
  ballast=$!
  for _ in $(seq 1 60); do grep -q holding "$RESULTS/ballast.log" 2>/dev/null && break; sleep 1; done
  cat "$RESULTS/ballast.log"
  "$PY" bench/batch_bench.py --model "$LARGE" --wav "$RESULTS/speech121.wav" --seconds "$SECS" \
    --auto --encode-batch 4 --tokens "$TOKENS" --json "$RESULTS/batch-capped.json" || echo "capped run failed"
  if [[ -n "${PEER_CAP_BATCH:-}" ]]; then
    "$PY" bench/peer_transformers.py --wav "$RESULTS/speech121.wav" --tile-to "$SECS" --tokens-per-window "$TOKENS" \
      --batch-sizes "$PEER_CAP_BATCH" --modes generate,loop --json "$RESULTS/peer-capped.json" || echo "capped peer failed"
  fi
  kill "$ballast" 2>/dev/null || true
  wait "$ballast" 2>/dev/null || true
fi
if has_stage batch; then
  if [[ -n "${PEER_BATCH-8,16,32,64,128}" ]]; then
    echo
    echo "== the peer on the same ${SECS} s: transformers, large-v3 shape, $TOKENS tokens per window"
    "$PY" bench/peer_transformers.py --wav "$RESULTS/speech121.wav" --tile-to "$SECS" --tokens-per-window "$TOKENS" \
      --batch-sizes "${PEER_BATCH-8,16,32,64,128}" --modes "${PEER_MODES:-generate,loop}" --json "$RESULTS/peer-batch.json" \
      || echo "peer benchmark failed"
    if [[ -s "$RESULTS/batch.json" && -s "$RESULTS/peer-batch.json" ]]; then
      echo
      echo "== whisperd beside the peer (same audio, same call)"
      "$PY" bench/batch_table.py "$RESULTS/batch.json" "$RESULTS/peer-batch.json" || true
    fi
  fi
fi
exit "$tests_rc"
