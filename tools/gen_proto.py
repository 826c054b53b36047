#!/usr/bin/env python3
"""Generate the Python and Go gRPC code, the descriptor set and the OpenAPI document from
proto/ (`make gen`).

    python tools/gen_proto.py           regenerate the committed files in place
    python tools/gen_proto.py --check   exit 1 if the committed files differ from a fresh run
    python tools/gen_proto.py --buf-deps   copy google/api/*.proto to .cache/buf-deps for buf

protoc runs with `-I proto` on proto/whisperd/v1/*.proto, so the modules land at
whisperd/v1/*_pb2.py (+ .pyi, *_pb2_grpc.py) and their own imports read
`from whisperd.v1 import ...`: they import as `from whisperd.v1 import transcription_pb2`
with no sys.path changes and no rewriting. Alongside goes whisperd/v1/whisperd.protoset,
a FileDescriptorSet with imports and source info (comments), for server reflection,
grpcurl (`-protoset`) and tests/test_proto.py; it includes google/api/annotations.proto
(the REST mapping) and what that imports, so reflection can resolve every file.

The same protoc (grpcio-tools') then runs the pinned Go plugins from .cache/gobin
(tools/go_tools.sh installs them; this script runs it when one is missing):
protoc-gen-go, protoc-gen-go-grpc and protoc-gen-grpc-gateway write the REST gateway's
package gateway/gen/whisperdv1/ (go_package whisperd/gateway/gen/whisperdv1), and
protoc-gen-openapiv2 writes gateway/gen/openapi/whisperd.swagger.json, the generated half
of the gateway's /openapi.json. google/api/*.proto come from googleapis-common-protos
(site-packages), google/protobuf/*.proto from grpcio-tools.

Both modes generate into a temporary directory first; a normal run then copies only the
files that changed and removes generated files whose .proto is gone, so a failed run
leaves the tree as it was.
"""
from __future__ import annotations

import argparse
import difflib
import filecmp
import importlib.metadata
import importlib.resources
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTOSET = Path("whisperd/v1/whisperd.protoset")
# Files in a generated package directory that this script owns (stale ones are removed).
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*.protoset", "__init__.py")
# The Go module of the gateway; go_package paths below it land under gateway/.
GO_MODULE = "whisperd/gateway"
GO_OUT = Path("gateway")
GO_DIR = Path("gateway/gen/whisperdv1")
OPENAPI_DIR = Path("gateway/gen/openapi")
# The Go side's generated files, per directory (the embed.go beside the JSON is ours).
GO_OWNED = {GO_DIR: ("*.pb.go", "*.pb.gw.go"), OPENAPI_DIR: ("*.swagger.json",)}
GOBIN = ROOT / ".cache" / "gobin"
BUF_DEPS = Path(".cache/buf-deps")
GO_PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc", "protoc-gen-grpc-gateway", "protoc-gen-openapiv2")
INIT_TEXT = '''"""Generated gRPC modules of the whisperd.v1 API.

Made by `make gen` (tools/gen_proto.py) from proto/whisperd/v1/*.proto and committed;
do not edit: change the .proto files and run `make gen` again.
"""
'''
FIX_COMMAND = "make gen"


def proto_files() -> list[Path]:
    """Every .proto under proto/, as paths relative to the repository root."""
    files = sorted(p.relative_to(ROOT) for p in PROTO_DIR.rglob("*.proto"))
    if not files:
        sys.exit(f"gen_proto: no .proto files under {PROTO_DIR}")
    return files


def package_dirs(files: list[Path]) -> list[Path]:
    """The output directories (relative), one per directory of .proto files."""
    return sorted({f.parent.relative_to("proto") for f in files})


def includes() -> list[str]:
    """protoc's -I flags: ours, google/api (googleapis-common-protos), google/protobuf."""
    import google.api  # googleapis-common-protos: google/api/annotations.proto, http.proto

    googleapis = Path(next(iter(google.api.__path__))).parent.parent
    wkt_include = importlib.resources.files("grpc_tools") / "_proto"
    return [f"-I{PROTO_DIR.relative_to(ROOT)}", f"-I{googleapis}", f"-I{wkt_include}"]


def protoc(cmd: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *includes(), *cmd],
        cwd=ROOT, capture_output=True, text=True,
    )
    if result.returncode != 0 or result.stderr.strip():
        sys.stderr.write(result.stderr)
    if result.returncode != 0:
        sys.exit(f"gen_proto: protoc failed (exit {result.returncode})")


def go_plugins() -> list[str]:
    """--plugin flags for the pinned Go plugins, installing them first when missing."""
    if not all((GOBIN / name).exists() for name in GO_PLUGINS):
        subprocess.run(["bash", str(ROOT / "tools" / "go_tools.sh")], cwd=ROOT, check=True,
                       stdout=sys.stderr)
    return [f"--plugin={name}={GOBIN / name}" for name in GO_PLUGINS]


def generate(out: Path, files: list[Path]) -> None:
    """Run protoc into `out` (an empty directory)."""
    (out / PROTOSET).parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out / PROTOSET}",
        *map(str, files),
    ]
    protoc(cmd)
    for pkg in package_dirs(files):
        (out / pkg / "__init__.py").write_text(INIT_TEXT)
    (out / GO_OUT).mkdir(parents=True, exist_ok=True)
    (out / OPENAPI_DIR).mkdir(parents=True, exist_ok=True)
    protoc([
        *go_plugins(),
        f"--go_out={out / GO_OUT}", f"--go_opt=module={GO_MODULE}",
        f"--go-grpc_out={out / GO_OUT}", f"--go-grpc_opt=module={GO_MODULE}",
        f"--grpc-gateway_out={out / GO_OUT}", f"--grpc-gateway_opt=module={GO_MODULE}",
        # One document for both services; proto field names, as the gateway's JSON has
        # them; our error shape instead of the default google.rpc.Status one (the
        # gateway's openapi merge adds it).
        f"--openapiv2_out={out / OPENAPI_DIR}",
        "--openapiv2_opt=allow_merge=true,merge_file_name=whisperd,"
        "json_names_for_fields=false,disable_default_errors=true",
        *map(str, files),
    ])


def buf_deps() -> int:
    """Copy the google/api files the proto imports into .cache/buf-deps, the second module
    of buf.yaml: buf has no offline way to get them, and they are not linted."""
    import google.api

    src = Path(next(iter(google.api.__path__)))
    dst = ROOT / BUF_DEPS / "google" / "api"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("annotations.proto", "http.proto"):
        shutil.copyfile(src / name, dst / name)
    print(f"gen_proto: google/api/annotations.proto, http.proto -> {BUF_DEPS}")
    return 0


def owned_files(base: Path, dirs: list[Path]) -> set[Path]:
    """Generated files (relative) present under `base` in the package directories."""
    found: set[Path] = set()
    owned = {d: GENERATED_PATTERNS for d in dirs} | GO_OWNED
    for d, patterns in owned.items():
        for pattern in patterns:
            found.update(p.relative_to(base) for p in (base / d).glob(pattern) if p.is_file())
    return found


def compare(fresh: Path, dirs: list[Path]) -> dict[str, list[Path]]:
    """What differs between a fresh generation and the working tree."""
    want = owned_files(fresh, dirs)
    have = owned_files(ROOT, dirs)
    return {
        "missing": sorted(want - have),
        "changed": sorted(
            p for p in want & have if not filecmp.cmp(fresh / p, ROOT / p, shallow=False)
        ),
        "stale": sorted(have - want),
    }


def diff_summary(fresh: Path, path: Path) -> str:
    """'+a -b lines' for a text file, 'binary, N -> M bytes' for the descriptor set."""
    old, new = ROOT / path, fresh / path
    if path.suffix == ".protoset":
        return f"binary, {old.stat().st_size} -> {new.stat().st_size} bytes"
    lines = list(difflib.unified_diff(
        old.read_text().splitlines(), new.read_text().splitlines(), lineterm="", n=0
    ))
    added = sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---"))
    return f"+{added} -{removed} lines"


def tool_versions() -> str:
    protoc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "--version"],
        capture_output=True, text=True,
    ).stdout.strip()
    return (f"grpcio-tools {importlib.metadata.version('grpcio-tools')} ({protoc}), "
            "Go plugins pinned in tools/go_tools.sh")


def check(fresh: Path, dirs: list[Path]) -> int:
    drift = compare(fresh, dirs)
    if not any(drift.values()):
        print("gen_proto: generated code is up to date")
        return 0
    print("gen_proto: the committed generated code differs from proto/:", file=sys.stderr)
    for path in drift["changed"]:
        print(f"  changed  {path}  ({diff_summary(fresh, path)})", file=sys.stderr)
    for path in drift["missing"]:
        print(f"  missing  {path}", file=sys.stderr)
    for path in drift["stale"]:
        print(f"  stale    {path}  (no .proto generates it)", file=sys.stderr)
    print(
        f"Fix: run `{FIX_COMMAND}` and commit the result "
        f"(this check used {tool_versions()}; a different version also shows as drift).",
        file=sys.stderr,
    )
    return 1


def update(fresh: Path, dirs: list[Path]) -> int:
    drift = compare(fresh, dirs)
    for path in drift["missing"] + drift["changed"]:
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh / path, ROOT / path)
        print(f"gen_proto: wrote {path}")
    for path in drift["stale"]:
        (ROOT / path).unlink()
        print(f"gen_proto: removed {path}")
    if not any(drift.values()):
        print("gen_proto: generated code is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true",
        help="compare a fresh generation with the committed files; exit 1 on drift",
    )
    parser.add_argument(
        "--buf-deps", action="store_true",
        help=f"copy google/api/*.proto into {BUF_DEPS} (buf.yaml's second module) and exit",
    )
    args = parser.parse_args(argv)
    if args.buf_deps:
        return buf_deps()
    files = proto_files()
    dirs = package_dirs(files)
    with tempfile.TemporaryDirectory(prefix="whisperd-gen-") as tmp:
        fresh = Path(tmp)
        generate(fresh, files)
        return check(fresh, dirs) if args.check else update(fresh, dirs)


if __name__ == "__main__":
    sys.exit(main())
