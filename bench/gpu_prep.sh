#!/usr/bin/env bash
# Run here (not on the GPU host): pack what bench/gpu.sh needs into .gpu/, which the
# device tool carries (`carry: [".gpu"]`). The GPU host has no network, and the copy of the
# tree it gets is limited to 64 MiB, so whisper.cpp travels trimmed to the parts the
# build uses, and tiny.en travels quantized to q8_0 (~42 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p .gpu
"$PY" native/fetch_whisper_cpp.py third_party/whisper.cpp >/dev/null
tar -czf .gpu/whisper.cpp.tgz -C third_party \
  --exclude='whisper.cpp/ggml/src/ggml-'{vulkan,sycl,metal,cann,opencl,webgpu,musa,hexagon,zdnn,kompute} \
  whisper.cpp/CMakeLists.txt whisper.cpp/cmake whisper.cpp/include whisper.cpp/src \
  whisper.cpp/ggml whisper.cpp/examples whisper.cpp/samples \
  whisper.cpp/models/for-tests-silero-v6.2.0-ggml.bin whisper.cpp/.whisperd-fetched
if [[ ! -f .gpu/ggml-tiny.en-q8_0.bin ]]; then
  tiny=$("$PY" -c "from whisperd import paths; from whisperd.models.bundled import ensure_tiny_en; print(ensure_tiny_en(paths.models_dir()))")
  .venv/bin/whisperd model quantize "$tiny" .gpu/ggml-tiny.en-q8_0.bin q8_0
fi
# The GPU host's Python lacks these (and has an older grpcio than our generated stubs).
"$PY" -m pip download -q --no-deps --only-binary :all: --python-version 3.12 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
  grpcio==1.85.1 grpcio-status==1.85.1 grpcio-health-checking==1.85.1 \
  grpcio-reflection==1.85.1 googleapis-common-protos==1.76.0
du -sh .gpu/*
