#!/usr/bin/env bash
# Builds versitygw (Apache-2.0), the S3-compatible object store the multi-replica tests
# and docker-compose use, into .cache/gobin/ with `go install` through the Go module
# proxy. Pinned; idempotent (a binary of the pinned version is kept). Takes a few
# minutes on two cores the first time.
set -euo pipefail

VERSITYGW_VERSION=v1.8.0

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export GOBIN="$ROOT/.cache/gobin"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
export CGO_ENABLED=0

GO="${GO:-$(command -v go || true)}"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
if [ -z "$GO" ]; then
  echo "versitygw.sh: no Go toolchain found (install Go >= 1.25 or set GO=/path/to/go)" >&2
  exit 1
fi

have=""
if [ -x "$GOBIN/versitygw" ]; then
  have="$("$GO" version -m "$GOBIN/versitygw" 2>/dev/null \
    | awk '$1 == "mod" && $2 == "github.com/versity/versitygw" { print $3 }')"
fi
if [ "$have" = "$VERSITYGW_VERSION" ]; then
  echo "versitygw $VERSITYGW_VERSION already in .cache/gobin"
  exit 0
fi
mkdir -p "$GOBIN"
echo "installing versitygw $VERSITYGW_VERSION (go install, a few minutes)"
start=$SECONDS
"$GO" install -trimpath "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
echo "versitygw $VERSITYGW_VERSION installed in $((SECONDS - start)) s"
