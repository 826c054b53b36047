#!/usr/bin/env bash
# Installs the pinned Go tools the proto workflow uses into .cache/gobin/:
#   buf     - lints proto/ (`make lint`) and checks breaking changes
#   grpcurl - talks to a running server through reflection (README examples, tests)
#   protoc-gen-go, protoc-gen-go-grpc, protoc-gen-grpc-gateway, protoc-gen-openapiv2 -
#             the protoc plugins `make gen` (tools/gen_proto.py) runs for the REST gateway;
#             their versions show in the generated files, so they are pinned like the rest
# Idempotent: a binary already there with the pinned version is kept. Built from source
# with `go install` through the Go module proxy; needs Go >= 1.26.7 (buf's go.mod).
# GOTOOLCHAIN=local: never download another Go; a pin that needs a newer Go fails here.
set -euo pipefail

BUF_VERSION=v1.75.0
GRPCURL_VERSION=v1.9.4
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
GRPC_GATEWAY_VERSION=v2.33.0

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export GOBIN="$ROOT/.cache/gobin"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
export CGO_ENABLED=0

GO="${GO:-$(command -v go || true)}"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
if [ -z "$GO" ]; then
  echo "go_tools.sh: no Go toolchain found (install Go >= 1.26.7 or set GO=/path/to/go)" >&2
  exit 1
fi

# The version of module $2 that binary $1 was built from, or nothing.
built_version() {
  [ -x "$1" ] || return 0
  "$GO" version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m { print $3 }'
}

# install NAME MODULE PACKAGE VERSION
install() {
  local name=$1 module=$2 package=$3 version=$4
  local have
  have="$(built_version "$GOBIN/$name" "$module")"
  if [ "$have" = "$version" ]; then
    echo "$name $version already in .cache/gobin"
    return 0
  fi
  echo "installing $name $version (go install $package@$version)"
  local start=$SECONDS
  "$GO" install "$package@$version"
  echo "$name $version installed in $((SECONDS - start)) s"
}

mkdir -p "$GOBIN"
install buf github.com/bufbuild/buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
install grpcurl github.com/fullstorydev/grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
install protoc-gen-go google.golang.org/protobuf \
  google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"
install protoc-gen-grpc-gateway github.com/grpc-ecosystem/grpc-gateway/v2 \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway "$GRPC_GATEWAY_VERSION"
install protoc-gen-openapiv2 github.com/grpc-ecosystem/grpc-gateway/v2 \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2 "$GRPC_GATEWAY_VERSION"
