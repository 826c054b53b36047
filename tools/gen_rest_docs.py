#!/usr/bin/env python3
"""The REST gateway's OpenAPI document as a Markdown reference.

    python tools/gen_rest_docs.py        print it

The gateway serves /openapi.json as the document `make gen` generates from the proto's
google.api.http rules (gateway/gen/openapi/whisperd.swagger.json) merged with its
hand-written routes (gateway/internal/docs/routes.json: multipart upload, SSE, the raw
transcript, the OpenAI routes, /health), plus each /v1/jobs... and /v1/model/... route again
without /v1. This script merges the same two files the same way (gateway/internal/docs/
openapi.go) and renders them; the docs site (tools/mkdocs_hooks.py) puts the result into
docs/rest-reference.md when it is built, and tests/test_docs.py checks every operation is
there.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "gateway" / "gen" / "openapi" / "whisperd.swagger.json"
ROUTES = ROOT / "gateway" / "internal" / "docs" / "routes.json"
# As openapi.go's legacyPrefixes: the /v1 routes the earlier service had without /v1.
LEGACY_PREFIXES = ("/v1/jobs", "/v1/model/")
TAG_ORDER = ("Transcription", "ModelControl", "OpenAI", "Gateway")
METHODS = ("get", "post", "put", "patch", "delete")


def document() -> dict[str, Any]:
    """The merged document (without the legacy aliases, which `legacy_aliases` lists)."""
    doc = json.loads(GENERATED.read_text(encoding="utf-8"))
    extra = json.loads(ROUTES.read_text(encoding="utf-8"))
    for path, item in extra["paths"].items():
        doc["paths"].setdefault(path, {}).update(item)  # hand-written operations win
    doc["definitions"].update(extra["definitions"])
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS]


def legacy_aliases(doc: dict[str, Any]) -> list[str]:
    return sorted(p for p in doc["paths"] if p.startswith(LEGACY_PREFIXES))


def _text(text: str) -> str:
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    # protoc-gen-openapiv2 lists an enum's values as " - NAME: text" lines: one a line.
    text = _text(text.strip())
    text = re.sub(r"\n\s*-\s+([A-Z0-9_]+):", r"<br>`\1`:", text)
    return re.sub(r"\s*\n+\s*", " ", text).replace("|", "\\|") or "—"


def _anchor(name: str) -> str:
    return "def-" + name.lower()


def _schema(schema: dict[str, Any] | None) -> str:
    if not schema:
        return "—"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{_anchor(name)})"
    if schema.get("type") == "array":
        return "array of " + _schema(schema.get("items"))
    kind = schema.get("type", "object")
    if schema.get("format"):
        kind += f" ({schema['format']})"
    if schema.get("enum"):
        kind += ": " + ", ".join(f"`{v}`" for v in schema["enum"])
    return kind if "`" in kind else f"`{kind}`"


def _operation(lines: list[str], path: str, method: str, op: dict[str, Any]) -> None:
    lines += [f"### {method.upper()} {path}", ""]
    for key in ("summary", "description"):
        if op.get(key):
            lines += [_text(op[key].strip()), ""]
    for key, label in (("consumes", "Request body"), ("produces", "Answers")):
        if op.get(key):
            lines += [f"{label}: " + ", ".join(f"`{t}`" for t in op[key]) + ".", ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema") or p
            if re.search(r"\n\s*-\s+[A-Z0-9_]+:", p.get("description", "")):
                # The description lists the values with their meaning; the type need not.
                schema = {k: v for k, v in schema.items() if k != "enum"}
                if "items" in schema:
                    schema["items"] = {k: v for k, v in schema["items"].items() if k != "enum"}
            kind = _schema(schema)
            if "default" in p:
                kind += f" (default `{p['default']}`)"
            lines.append(f"| `{p['name']}` | {p['in']} | {kind} | {'yes' if p.get('required') else 'no'} | "
                         f"{_cell(p.get('description', ''))} |")
        lines.append("")
    responses = op.get("responses", {})
    if responses:
        lines += ["| status | description | body |", "|---|---|---|"]
        for code, resp in responses.items():
            lines.append(f"| {code} | {_cell(resp.get('description', ''))} | {_schema(resp.get('schema'))} |")
        lines.append("")


def _definition(lines: list[str], name: str, schema: dict[str, Any]) -> None:
    lines += [f"### {name} {{#{_anchor(name)}}}", ""]
    if schema.get("description") or schema.get("title"):
        lines += [_text((schema.get("title", "") + " " + schema.get("description", "")).strip()), ""]
    props = schema.get("properties", {})
    if props:
        lines += ["| property | type | description |", "|---|---|---|"]
        for prop, sub in props.items():
            desc = " ".join(x for x in (sub.get("title", ""), sub.get("description", "")) if x)
            lines.append(f"| `{prop}` | {_schema(sub)} | {_cell(desc)} |")
        lines.append("")
    elif schema.get("enum"):
        lines += ["Values: " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
        if schema.get("default") is not None:
            lines += [f"Default: `{schema['default']}`.", ""]


def render() -> str:
    doc = document()
    ops = operations(doc)
    tags = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}
    order = list(TAG_ORDER) + sorted({(op.get("tags") or ["other"])[0] for _, _, op in ops} - set(TAG_ORDER))
    lines: list[str] = []
    for tag in order:
        tagged = [(p, m, op) for p, m, op in ops if (op.get("tags") or ["other"])[0] == tag]
        if not tagged:
            continue
        lines += [f"## {tag}", ""]
        if tags.get(tag):
            lines += [_text(tags[tag]), ""]
        for path, method, op in sorted(tagged, key=lambda t: (t[0], METHODS.index(t[1]))):
            _operation(lines, path, method, op)
    aliases = legacy_aliases(doc)
    lines += ["## The earlier service's paths", "",
              "Each of these routes also answers without `/v1`, as the earlier service's clients "
              "call it (same behaviour and JSON; tagged `legacy` in the document):", "",
              "| path | alias of |", "|---|---|"]
    lines += [f"| `{p[len('/v1'):]}` | `{p}` |" for p in aliases]
    lines += ["", "## Definitions", ""]
    for name in sorted(doc["definitions"]):
        _definition(lines, name, doc["definitions"][name])
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
