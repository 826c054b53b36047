#!/usr/bin/env python3
"""The gRPC API reference in Markdown, from the proto's own comments.

    python tools/gen_api_docs.py [PROTOSET]    print it (default whisperd/v1/whisperd.protoset)

It reads the FileDescriptorSet that `make gen` writes beside the Python stubs (it keeps the
.proto files' comments as source info), so the proto stays the one source: the docs site
(tools/mkdocs_hooks.py) puts this text into docs/grpc-api.md when it is built, and
tests/test_docs.py checks that every service, RPC, message, field and enum value is there.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2 as d

ROOT = Path(__file__).resolve().parent.parent
PROTOSET = ROOT / "whisperd" / "v1" / "whisperd.protoset"
PACKAGE = "whisperd.v1"

# Field numbers of FileDescriptorProto / DescriptorProto / ... in SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_SYNTAX = 4, 5, 6, 12
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE, _SERVICE_METHOD, _METHOD_OPTIONS = 2, 2, 4
# Files in this order first (the jobs API before the model's), then the rest by name.
_FIRST = ("transcription.proto",)

_SCALARS = {
    getattr(d.FieldDescriptorProto, name): name[len("TYPE_"):].lower()
    for name in d.FieldDescriptorProto.Type.keys()
}


@dataclass(frozen=True)
class Comments:
    leading: str
    trailing: str

    @property
    def text(self) -> str:
        return "\n\n".join(part for part in (self.leading, self.trailing) if part)


def _clean(raw: str) -> str:
    """A proto comment as Markdown paragraphs: lines joined, blank lines kept."""
    paragraphs, current = [], []
    for line in raw.splitlines():
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(_escape(p) for p in paragraphs)


def _escape(text: str) -> str:
    """Keep <, > and & literal outside code spans (a comment is text, not HTML)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    return text.replace("\n\n", " ").replace("|", "\\|") or "—"


class _Source:
    def __init__(self, file: d.FileDescriptorProto) -> None:
        self._by_path = {
            tuple(loc.path): Comments(_clean(loc.leading_comments), _clean(loc.trailing_comments))
            for loc in file.source_code_info.location
        }
        self._detached = {
            tuple(loc.path): [_clean(c) for c in loc.leading_detached_comments]
            for loc in file.source_code_info.location
        }

    def at(self, *path: int) -> Comments:
        return self._by_path.get(path, Comments("", ""))

    def under(self, *prefix: int) -> str:
        """Comments inside an element (e.g. on a method's `option (google.api.http)`)."""
        n = len(prefix)
        found = [c.text for p, c in sorted(self._by_path.items()) if len(p) > n and p[:n] == prefix]
        return "\n\n".join(t for t in found if t)

    def header(self) -> str:
        """The file's opening comment (before `syntax`, attached or detached)."""
        parts = self._detached.get((_FILE_SYNTAX,), []) + [self.at(_FILE_SYNTAX).leading]
        return "\n\n".join(p for p in parts if p)


def _anchor(full_name: str) -> str:
    return full_name.lstrip(".")


def _type_ref(type_name: str) -> str:
    name = type_name.lstrip(".")
    if name.startswith(PACKAGE + "."):
        return f"[`{name[len(PACKAGE) + 1:]}`](#{name})"
    return f"`{name}`"


def _field_type(field: d.FieldDescriptorProto) -> str:
    if field.type in (d.FieldDescriptorProto.TYPE_MESSAGE, d.FieldDescriptorProto.TYPE_ENUM):
        base = _type_ref(field.type_name)
    else:
        base = f"`{_SCALARS[field.type]}`"
    if field.label == d.FieldDescriptorProto.LABEL_REPEATED:
        return "repeated " + base
    if field.proto3_optional:
        return "optional " + base
    return base


def _http_rule(method: d.MethodDescriptorProto) -> list[str]:
    if not method.options.HasExtension(annotations_pb2.http):
        return []
    rules: list[http_pb2.HttpRule] = [method.options.Extensions[annotations_pb2.http]]
    rules += list(rules[0].additional_bindings)
    out = []
    for rule in rules:
        verb = rule.WhichOneof("pattern")
        if verb == "custom":
            out.append(f"`{rule.custom.kind} {rule.custom.path}`")
        elif verb:
            out.append(f"`{verb.upper()} {getattr(rule, verb)}`")
    return out


def _service(lines: list[str], file: d.FileDescriptorProto, src: _Source, si: int) -> None:
    service = file.service[si]
    full = f"{PACKAGE}.{service.name}"
    lines += [f"### {service.name} {{#{full}}}", "", src.at(_FILE_SERVICE, si).text, ""]
    lines += ["| RPC | request | response | REST |", "|---|---|---|---|"]
    for method in service.method:
        req = ("stream " if method.client_streaming else "") + _type_ref(method.input_type)
        resp = ("stream " if method.server_streaming else "") + _type_ref(method.output_type)
        rest = ", ".join(_http_rule(method)) or "—"
        lines.append(f"| [`{method.name}`](#{full}.{method.name}) | {req} | {resp} | {rest} |")
    lines.append("")
    for mi, method in enumerate(service.method):
        stream_in = "stream " if method.client_streaming else ""
        stream_out = "stream " if method.server_streaming else ""
        signature = (
            f"rpc {method.name}({stream_in}{method.input_type.rsplit('.', 1)[-1]}) "
            f"returns ({stream_out}{method.output_type.rsplit('.', 1)[-1]})"
        )
        lines += [f"#### {method.name} {{#{full}.{method.name}}}", "", f"`{signature}`", ""]
        lines += [src.at(_FILE_SERVICE, si, _SERVICE_METHOD, mi).text, ""]
        # The comment on the HTTP rule usually says it in words ("REST: GET ..., and ...");
        # the bare rule is shown only where it has none.
        inner = src.under(_FILE_SERVICE, si, _SERVICE_METHOD, mi, _METHOD_OPTIONS)
        rules = _http_rule(method)
        if rules and not inner.startswith("REST:"):
            lines += [f"REST: {', '.join(rules)}", ""]
        if inner:
            lines += [inner, ""]


def _message(lines: list[str], msg: d.DescriptorProto, prefix: str, src: _Source, path: tuple[int, ...]) -> None:
    full = f"{prefix}.{msg.name}"
    lines += [f"### {full[len(PACKAGE) + 1:]} {{#{full}}}", "", src.at(*path).text, ""]
    if msg.field:
        lines += ["| field | type | number | description |", "|---|---|---|---|"]
        for fi, field in enumerate(msg.field):
            text = src.at(*path, _MSG_FIELD, fi).text
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = msg.oneof_decl[field.oneof_index].name
                text = f"One of `{oneof}`. {text}"
            lines.append(f"| `{field.name}` | {_field_type(field)} | {field.number} | {_cell(text)} |")
        lines.append("")
    for oi, oneof in enumerate(msg.oneof_decl):
        if oneof.name.startswith("_"):
            continue  # the synthetic oneof of a proto3 `optional` field
        text = src.at(*path, _MSG_ONEOF, oi).text
        if text:
            lines += [f"`oneof {oneof.name}`: {text.replace(chr(10) * 2, ' ')}", ""]
    for ni, nested in enumerate(msg.nested_type):
        if not nested.options.map_entry:
            _message(lines, nested, full, src, path + (_MSG_NESTED, ni))
    for ei, enum in enumerate(msg.enum_type):
        _enum(lines, enum, full, src, path + (_MSG_ENUM, ei))


def _enum(lines: list[str], enum: d.EnumDescriptorProto, prefix: str, src: _Source, path: tuple[int, ...]) -> None:
    full = f"{prefix}.{enum.name}"
    lines += [f"### {full[len(PACKAGE) + 1:]} {{#{full}}}", "", src.at(*path).text, ""]
    lines += ["| value | number | description |", "|---|---|---|"]
    for vi, value in enumerate(enum.value):
        lines.append(f"| `{value.name}` | {value.number} | {_cell(src.at(*path, _ENUM_VALUE, vi).text)} |")
    lines.append("")


def our_files(protoset: Path = PROTOSET) -> list[d.FileDescriptorProto]:
    fds = d.FileDescriptorSet.FromString(protoset.read_bytes())
    ours = [f for f in fds.file if f.package == PACKAGE]
    return sorted(ours, key=lambda f: (Path(f.name).name not in _FIRST, f.name))


def render(protoset: Path = PROTOSET) -> str:
    """The reference, one section per .proto file: services, then messages, then enums."""
    lines: list[str] = []
    for file in our_files(protoset):
        src = _Source(file)
        lines += [f"## {Path(file.name).name}", "", src.header(), ""]
        for si in range(len(file.service)):
            _service(lines, file, src, si)
        for mi, msg in enumerate(file.message_type):
            _message(lines, msg, PACKAGE, src, (_FILE_MESSAGE, mi))
        for ei, enum in enumerate(file.enum_type):
            _enum(lines, enum, PACKAGE, src, (_FILE_ENUM, ei))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def main() -> None:
    sys.stdout.write(render(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTOSET))


if __name__ == "__main__":
    main()
