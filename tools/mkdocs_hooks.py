"""MkDocs hooks (mkdocs.yml `hooks:`): the reference sections generated from the code.

A page asks for one with a line of its own, `<!-- generated: NAME -->`; the build puts the
generator's Markdown there, so the site always says what the proto, the gateway's OpenAPI
document and server/config.py say, and the committed page keeps only the prose around it.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_api_docs  # noqa: E402
import gen_config_docs  # noqa: E402
import gen_rest_docs  # noqa: E402

GENERATORS: dict[str, Callable[[], str]] = {
    "grpc-api": gen_api_docs.render,
    "configuration": gen_config_docs.render,
    "rest-reference": gen_rest_docs.render,
}
# What they read, so that `mkdocs serve` rebuilds when one changes.
SOURCES = (
    gen_api_docs.PROTOSET,
    gen_config_docs.CONFIG,
    gen_config_docs.CLI,
    gen_rest_docs.GENERATED,
    gen_rest_docs.ROUTES,
)
_MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


def on_config(config: Any) -> Any:
    config.watch.extend(str(p) for p in SOURCES)
    return config


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: no generator named {name!r} ({', '.join(GENERATORS)})")
        return GENERATORS[name]()

    return _MARKER.sub(expand, markdown)
