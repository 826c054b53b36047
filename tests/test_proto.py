"""The API contract: proto/whisperd/v1 is documented, linted, and its generated code is fresh."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2 as d

ROOT = Path(__file__).resolve().parent.parent
PROTOSET = ROOT / "whisperd" / "v1" / "whisperd.protoset"
BUF = ROOT / ".cache" / "gobin" / "buf"

# RPC name -> (client streams, server streams).
EXPECTED_RPCS = {
    "Transcription": {
        "Submit": (True, False),
        "Get": (False, False),
        "List": (False, False),
        "Cancel": (False, False),
        "StreamProgress": (False, True),
        "GetTranscript": (False, False),
    },
    "ModelControl": {
        "Status": (False, False),
        "Load": (False, False),
        "Unload": (False, False),
        "WatchEvents": (False, True),
        "Cluster": (False, False),
    },
}

Path_ = tuple[int, ...]
F, M, E, S = d.FileDescriptorProto, d.DescriptorProto, d.EnumDescriptorProto, d.ServiceDescriptorProto


def our_files() -> list[d.FileDescriptorProto]:
    """The whisperd files of the committed descriptor set (its imports left out)."""
    assert PROTOSET.exists(), f"{PROTOSET.relative_to(ROOT)} missing: run `make gen`"
    fds = d.FileDescriptorSet.FromString(PROTOSET.read_bytes())
    return [f for f in fds.file if f.package.startswith("whisperd.")]


def _enum(enum: d.EnumDescriptorProto, path: Path_, scope: str) -> Iterator[tuple[str, Path_]]:
    name = f"{scope}.{enum.name}"
    yield f"enum {name}", path
    for i, value in enumerate(enum.value):
        yield f"enum value {name}.{value.name}", (*path, E.VALUE_FIELD_NUMBER, i)


def _message(msg: d.DescriptorProto, path: Path_, scope: str) -> Iterator[tuple[str, Path_]]:
    name = f"{scope}.{msg.name}"
    yield f"message {name}", path
    for i, field in enumerate(msg.field):
        yield f"field {name}.{field.name}", (*path, M.FIELD_FIELD_NUMBER, i)
    # proto3 `optional` fields get a synthetic oneof that has no place in the source.
    synthetic = {f.oneof_index for f in msg.field if f.proto3_optional}
    for i, oneof in enumerate(msg.oneof_decl):
        if i not in synthetic:
            yield f"oneof {name}.{oneof.name}", (*path, M.ONEOF_DECL_FIELD_NUMBER, i)
    for i, nested in enumerate(msg.nested_type):
        if not nested.options.map_entry:
            yield from _message(nested, (*path, M.NESTED_TYPE_FIELD_NUMBER, i), name)
    for i, enum in enumerate(msg.enum_type):
        yield from _enum(enum, (*path, M.ENUM_TYPE_FIELD_NUMBER, i), name)


def elements(file: d.FileDescriptorProto) -> Iterator[tuple[str, Path_]]:
    """Every documented element of a file with its SourceCodeInfo path."""
    for i, service in enumerate(file.service):
        path = (F.SERVICE_FIELD_NUMBER, i)
        yield f"service {service.name}", path
        for j, method in enumerate(service.method):
            yield f"rpc {service.name}.{method.name}", (*path, S.METHOD_FIELD_NUMBER, j)
    for i, msg in enumerate(file.message_type):
        yield from _message(msg, (F.MESSAGE_TYPE_FIELD_NUMBER, i), file.package)
    for i, enum in enumerate(file.enum_type):
        yield from _enum(enum, (F.ENUM_TYPE_FIELD_NUMBER, i), file.package)


def test_protoset_covers_every_proto() -> None:
    names = sorted(f.name for f in our_files())
    on_disk = sorted(p.relative_to(ROOT / "proto").as_posix() for p in ROOT.glob("proto/**/*.proto"))
    assert names == on_disk, "the descriptor set is stale: run `make gen`"


def test_every_element_has_a_leading_comment() -> None:
    missing, checked = [], 0
    for file in our_files():
        assert file.HasField("source_code_info"), f"{file.name}: no source info in the protoset"
        comments = {
            tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
        }
        for what, path in elements(file):
            checked += 1
            if not comments.get(path, "").strip():
                missing.append(f"{file.name}: {what}")
    assert checked > 100, f"only {checked} elements found: is the protoset complete?"
    assert not missing, "elements without a leading comment:\n  " + "\n  ".join(missing)


def test_buf_lint() -> None:
    if not BUF.exists():
        pytest.fail(
            f"{BUF.relative_to(ROOT)} is missing: `make setup` installs it "
            "(tools/go_tools.sh, needs Go)"
        )
    result = subprocess.run(
        [str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"buf lint:\n{result.stdout}{result.stderr}"


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_modules_expose_the_services() -> None:
    from whisperd.v1 import (
        model_control_pb2,
        model_control_pb2_grpc,
        transcription_pb2,
        transcription_pb2_grpc,
    )

    modules = {
        "Transcription": (transcription_pb2, transcription_pb2_grpc),
        "ModelControl": (model_control_pb2, model_control_pb2_grpc),
    }
    channel = grpc.insecure_channel("localhost:1")  # never connects: no call is made
    try:
        for service, (pb2, pb2_grpc) in modules.items():
            descriptor = pb2.DESCRIPTOR.services_by_name[service]
            assert descriptor.full_name == f"whisperd.v1.{service}"
            rpcs = {
                m.name: (m.client_streaming, m.server_streaming) for m in descriptor.methods
            }
            assert rpcs == EXPECTED_RPCS[service]
            stub = getattr(pb2_grpc, f"{service}Stub")(channel)
            servicer = getattr(pb2_grpc, f"{service}Servicer")
            for name in rpcs:
                assert callable(getattr(stub, name)), f"{service}Stub.{name}"
                assert callable(getattr(servicer, name)), f"{service}Servicer.{name}"
            assert callable(getattr(pb2_grpc, f"add_{service}Servicer_to_server"))
    finally:
        channel.close()
