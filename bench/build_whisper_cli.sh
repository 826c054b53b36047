#!/usr/bin/env bash
# Build whisper.cpp's own `whisper-cli` from the same source tree as our extension, with
# the flags our extension uses (native/CMakeLists.txt): Release, GGML_NATIVE=ON, AMX
# kernels off, static libraries, position-independent code, tests and server off. The benchmarks run it as
# the reference that whisperd's native path is measured against.
#
#   bash bench/build_whisper_cli.sh                       # CPU build
#   bash bench/build_whisper_cli.sh -DGGML_CUDA=ON ...    # extra cmake arguments
#
# Environment:
#   WHISPER_CPP_DIR        whisper.cpp source (default third_party/whisper.cpp)
#   WHISPER_CLI_BUILD_DIR  build folder (default build/whisper-cli)
#   JOBS                   parallel compile jobs (default: every CPU)
#   WHISPERD_AMX=ON        keep ggml's AMX kernels (as -DWHISPERD_AMX=ON does for the extension)
#
# Idempotent: when the binary exists and was configured with the same arguments, nothing
# is configured or compiled (ninja just confirms it is up to date). Different arguments
# reconfigure the same folder and rebuild what changed.
# The last line printed on stdout is the binary's path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${WHISPER_CPP_DIR:-$ROOT/third_party/whisper.cpp}"
BUILD="${WHISPER_CLI_BUILD_DIR:-$ROOT/build/whisper-cli}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
BIN="$BUILD/bin/whisper-cli"
STAMP="$BUILD/.whisperd-cmake-args"

if [[ ! -f "$SRC/include/whisper.h" || ! -f "$SRC/examples/cli/cli.cpp" ]]; then
  echo "error: $SRC is not a whisper.cpp source tree (run 'make native' first, which fetches it," \
       "or set WHISPER_CPP_DIR)" >&2
  exit 2
fi
for tool in cmake ninja; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool not found on PATH" >&2
    exit 2
  fi
done

# native/CMakeLists.txt turns ggml's AMX kernels off after -march=native (they crash on
# q4_0 models in ggml 0.9); do the same unless WHISPERD_AMX=ON. GCC honours an explicit
# -mno-* whatever its position relative to -march=native.
NO_AMX=()
if [[ "${WHISPERD_AMX:-OFF}" != "ON" && "$(uname -m)" =~ ^(x86_64|amd64|AMD64)$ ]]; then
  NO_AMX=("-DCMAKE_C_FLAGS=-mno-amx-int8 -mno-amx-tile -mno-amx-bf16"
          "-DCMAKE_CXX_FLAGS=-mno-amx-int8 -mno-amx-tile -mno-amx-bf16")
fi

# Mirrors native/CMakeLists.txt; only WHISPER_BUILD_EXAMPLES differs (the CLI is an example).
ARGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON
  -DGGML_NATIVE=ON
  -DWHISPER_BUILD_EXAMPLES=ON
  -DWHISPER_BUILD_TESTS=OFF
  -DWHISPER_BUILD_SERVER=OFF
  -DWHISPER_SDL2=OFF
  -DWHISPER_CURL=OFF
  -DWHISPER_FFMPEG=OFF
  ${NO_AMX[@]+"${NO_AMX[@]}"}
  "$@"
)
WANT="$SRC ${ARGS[*]}"

if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  # Configured and built with these arguments: ninja only checks that nothing changed
  # (a fraction of a second), so an edited source tree is still picked up.
  if cmake --build "$BUILD" --target whisper-cli -j "$JOBS" | grep -q "no work to do"; then
    echo "whisper-cli is up to date ($BIN); skipping the build" >&2
  fi
  echo "$BIN"
  exit 0
fi

echo "configuring whisper-cli in $BUILD: ${ARGS[*]}" >&2
rm -f "$STAMP"
cmake -S "$SRC" -B "$BUILD" -G Ninja "${ARGS[@]}" >&2
echo "building whisper-cli with $JOBS jobs" >&2
cmake --build "$BUILD" --target whisper-cli -j "$JOBS" >&2
if [[ ! -x "$BIN" ]]; then
  echo "error: the build finished but $BIN is missing" >&2
  exit 1
fi
printf '%s' "$WANT" >"$STAMP"
echo "$BIN"
