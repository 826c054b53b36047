"""The documentation site builds strictly, and its reference pages say what the code says.

The site is built once, as `make docs` builds it (MkDocs, --strict: a broken link, a
missing page or a missing anchor fails it), into a temporary folder. The generated
sections are then checked against the code itself, not against the generators' inputs:
the settings against the imported Settings dataclass and the `whisperd serve` command,
the gRPC reference against the generated Python modules and the .proto files' comments,
the REST reference against the /openapi.json a real gateway serves.
"""
from __future__ import annotations

import dataclasses
import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from gateway_process import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "whisperd" / "v1"
README_MAX_LINES = 320


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


class _Page(HTMLParser):
    """The article of a built page: its text, its element ids, its table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.rows: list[list[str]] = []
        self.text_parts: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if ident:
            self.ids.add(ident)
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self) -> str:
        return " ".join("".join(self.text_parts).split())


def page(site: Path, name: str) -> _Page:
    path = site / name / "index.html"
    assert path.is_file(), f"the site has no page {name}/: {sorted(p.name for p in site.iterdir())}"
    parsed = _Page()
    parsed.feed(path.read_text(encoding="utf-8"))
    return parsed


def test_every_nav_page_is_built(site: Path) -> None:
    import yaml

    def pages(nav: object) -> Iterator[str]:
        if isinstance(nav, str):
            yield nav
        elif isinstance(nav, list):
            for item in nav:
                yield from pages(item)
        elif isinstance(nav, dict):
            for value in nav.values():
                yield from pages(value)

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    for md in pages(config["nav"]):
        built = site / ("index.html" if md == "index.md" else f"{md[:-3]}/index.html")
        assert built.is_file(), f"nav entry {md} was not built"


def _shown_default(value: object) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return str(value) if value.is_absolute() else f"./{value}"
    return str(value)


def test_configuration_page_lists_every_setting_with_its_default(site: Path) -> None:
    from whisperd.server import config

    built = page(site, "configuration")
    rows = {row[0]: row for row in built.rows if row}
    for field in dataclasses.fields(config.Settings):
        env = config._ENV.get(field.name)
        if env is None:
            assert f"{field.name} = " in built.text, f"setting {field.name} (no variable) is not on the page"
            continue
        assert env in rows, f"{env} ({field.name}) has no row in the configuration table"
        if field.default is not dataclasses.MISSING:
            assert rows[env][2] == _shown_default(field.default), (
                f"{env}: the page says default {rows[env][2]!r}, server/config.py {field.default!r}"
            )
        assert rows[env][3] not in ("", "—"), f"{env} has no meaning: comment its field in server/config.py"


def test_configuration_page_names_every_serve_flag(site: Path) -> None:
    import typer.main

    from whisperd.cli import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    flags = {opt for param in serve.params for opt in param.opts if opt.startswith("--")}
    flags.discard("--help")
    flag_cells = {row[1] for row in page(site, "configuration").rows if len(row) > 1}
    missing = sorted(flag for flag in flags if flag not in flag_cells)
    assert not missing, f"`whisperd serve` flags missing from the configuration table: {missing}"


def _proto_comments(kind: str) -> dict[str, str]:
    """name -> the comment block right above `rpc NAME(` / `message NAME {` in the .proto files."""
    out: dict[str, str] = {}
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        lines = proto.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = re.match(rf"\s*{kind}\s+(\w+)", line)
            if not m:
                continue
            block: list[str] = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("//"):
                block.insert(0, lines[j].strip()[2:].strip())
                j -= 1
            out[m.group(1)] = " ".join(" ".join(block).replace("`", "").split())
    return out


def test_grpc_reference_has_every_service_rpc_message_field_and_value(site: Path) -> None:
    from whisperd.v1 import model_control_pb2, transcription_pb2

    built = page(site, "grpc-api")
    text = html.unescape(built.text)
    for module in (transcription_pb2, model_control_pb2):
        file = module.DESCRIPTOR
        for service in file.services_by_name.values():
            assert service.full_name in built.ids, f"no section for service {service.full_name}"
            for method in service.methods:
                assert f"{service.full_name}.{method.name}" in built.ids, f"no section for RPC {method.full_name}"
        for message in file.message_types_by_name.values():
            assert message.full_name in built.ids, f"no section for message {message.full_name}"
            for field in message.fields:
                assert any(row and row[0] == field.name for row in built.rows), f"no row for {message.name}.{field.name}"
        for enum in file.enum_types_by_name.values():
            assert enum.full_name in built.ids, f"no section for enum {enum.full_name}"
            for value in enum.values:
                assert any(row and row[0] == value.name for row in built.rows), f"no row for {value.name}"
    for kind in ("rpc", "message", "service"):
        for name, comment in _proto_comments(kind).items():
            assert comment in text, f"the {kind} {name}'s comment in the .proto is not on the page: {comment!r}"


@pytest.fixture(scope="module")
def served_openapi() -> Iterator[dict]:
    # No whisperd behind it: /openapi.json is the gateway's own, served all the same.
    gateway = GatewayProcess(whisperd="127.0.0.1:9").start()
    try:
        yield httpx.get(f"{gateway.url}/openapi.json", timeout=30).raise_for_status().json()
    finally:
        gateway.stop()


def test_rest_reference_has_every_route_the_gateway_serves(site: Path, served_openapi: dict) -> None:
    built = page(site, "rest-reference")
    text = built.text
    alias_rows = {row[0]: row[1] for row in built.rows if len(row) == 2}
    for path, item in served_openapi["paths"].items():
        for method, op in item.items():
            if "legacy" in op.get("tags", []):
                assert alias_rows.get(path) == f"/v1{path}", f"legacy alias {path} is not in the alias table"
            else:
                assert f"{method.upper()} {path}" in text, f"{method.upper()} {path} is not in the REST reference"
    for name in served_openapi["definitions"]:
        assert f"def-{name.lower()}" in built.ids, f"definition {name} is not in the REST reference"


def test_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): reference material goes into "
        "a page under docs/ (and mkdocs.yml's nav), with a short paragraph and a link in the README"
    )
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = (ROOT / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"README.md links to {target}, which does not exist"


def test_user_docs_name_features_not_issue_numbers() -> None:
    pattern = re.compile(r"\bissues? #?\d+|FEATURES\.md|\b[A-D]\d{1,2} row|\brow [A-D]\d{1,2}\b", re.IGNORECASE)
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            assert not pattern.search(line), f"{doc.relative_to(ROOT)}:{n} names an issue or a FEATURES.md row: {line.strip()}"
