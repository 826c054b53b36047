#!/usr/bin/env bash
# Fetches swagger-ui-dist from the npm registry (pinned, sha256-checked) and extracts the
# files the /docs page needs into dist/ beside this script, for //go:embed. Idempotent:
# a dist/ that already holds this version is kept. Uses `npm pack` when npm is there,
# else the registry tarball through curl. Nothing third-party is committed.
set -euo pipefail

VERSION=5.32.1
SHA256=bd1aad94af1bd171b77617e0a4e3fee73023b764a14f0a5baa2d3877d805eadc
FILES=(swagger-ui.css swagger-ui-bundle.js swagger-ui-standalone-preset.js favicon-16x16.png favicon-32x32.png LICENSE NOTICE)

HERE="$(cd "$(dirname "$0")" && pwd)"
DIST="$HERE/dist"
STAMP="$DIST/.version"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ] && [ -f "$DIST/swagger-ui-bundle.js" ]; then
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
TARBALL="$TMP/swagger-ui-dist-$VERSION.tgz"
if command -v npm >/dev/null 2>&1; then
  (cd "$TMP" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null)
else
  curl -fsSL -o "$TARBALL" "https://registry.npmjs.org/swagger-ui-dist/-/swagger-ui-dist-$VERSION.tgz"
fi
echo "$SHA256  $TARBALL" | sha256sum -c --quiet - || {
  echo "fetch_swagger_ui.sh: swagger-ui-dist $VERSION does not match the recorded sha256" >&2
  exit 1
}
tar -xzf "$TARBALL" -C "$TMP" "${FILES[@]/#/package/}"
for f in "${FILES[@]}"; do
  cp "$TMP/package/$f" "$DIST/$f"
done
echo "$VERSION" > "$STAMP"
echo "swagger-ui-dist $VERSION -> ${DIST#"$PWD"/}"
