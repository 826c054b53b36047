#!/usr/bin/env python3
"""The server's settings as a Markdown table, from the code itself.

    python tools/gen_config_docs.py        print it

Read from server/config.py without importing it: each field of the `Settings` dataclass
(its default and its comment, on the line above or at the end of the line), the
environment variable `_ENV` maps it to, and the `whisperd serve` flag that overrides it
(whisperd/cli.py's `with_overrides(...)` call and the typer option behind each argument).
The docs site (tools/mkdocs_hooks.py) puts the table into docs/configuration.md when it is
built, and tests/test_docs.py checks it against the imported module, so a setting added
to server/config.py is documented by the comment written beside it.
"""
from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "server" / "config.py"
CLI = ROOT / "whisperd" / "cli.py"


@dataclass(frozen=True)
class Setting:
    name: str  # the Settings field
    env: str | None  # its environment variable (None: not read from the environment)
    flag: str | None  # the `whisperd serve` flag that overrides it
    default: str  # as a reader would type it
    meaning: str


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """line -> (comment text, whether the comment is the whole line)."""
    out: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            out[row] = (tok.string.lstrip("#").strip(), not lines[row - 1][:col].strip())
    return out


def _field_comment(node: ast.AnnAssign, comments: dict[int, tuple[str, bool]]) -> str:
    """The comment block right above the field, then the one at the end of its line."""
    above: list[str] = []
    row = node.lineno - 1
    while row in comments and comments[row][1]:
        above.insert(0, comments[row][0])
        row -= 1
    parts = above[:]
    end = node.end_lineno or node.lineno
    if end in comments and not comments[end][1]:
        parts.append(comments[end][0])
    return " ".join(parts)


def _value(node: ast.expr) -> object:
    """A default as Python would compute it, for the simple forms defaults take."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add, ast.Sub)):
        left, right = _value(node.left), _value(node.right)
        if isinstance(left, int) and isinstance(right, int):
            return {ast.Mult: left * right, ast.Add: left + right, ast.Sub: left - right}[type(node.op)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Path" and node.args:
        return Path(str(_value(node.args[0])))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "field":
        given = {k.arg: k.value for k in node.keywords}
        if "default" in given:
            return _value(given["default"])
        if "default_factory" in given:
            return ast.unparse(given["default_factory"]) + "()"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _value(node.operand)
        if isinstance(inner, (int, float)):
            return -inner
    return ast.unparse(node)


def _show_default(value: object) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Path):
        return f"`./{value}`" if not value.is_absolute() else f"`{value}`"
    return f"`{value}`"


def _strip_env_name(text: str, env: str | None) -> str:
    """`PORT`, `IDLE_TIMEOUT_SECS; 0 = never` -> what remains after the variable's name."""
    if env:
        text = re.sub(rf"^{re.escape(env)}\b\s*[:;,]?\s*", "", text)
        text = re.sub(rf"\(\s*{re.escape(env)}\s*[,;]\s*", "(", text)
        text = re.sub(rf"\s*\(\s*{re.escape(env)}\s*\)", "", text)
    return text


def _settings_fields(tree: ast.Module) -> list[ast.AnnAssign]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            return [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    raise SystemExit(f"{CONFIG}: no Settings class")


def _env_map(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "_ENV" and node.value is not None:
            return ast.literal_eval(node.value)
    raise SystemExit(f"{CONFIG}: no _ENV map")


def _serve_flags(cli_source: str) -> dict[str, tuple[str, str]]:
    """Settings field -> (flag, help) for `whisperd serve`."""
    tree = ast.parse(cli_source)
    serve = next(
        (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "serve"), None)
    if serve is None:
        return {}
    options: dict[str, tuple[str, str]] = {}
    params = serve.args.args + serve.args.kwonlyargs
    defaults = dict(zip([a.arg for a in params][-len(serve.args.defaults):], serve.args.defaults))
    defaults.update({a.arg: v for a, v in zip(serve.args.kwonlyargs, serve.args.kw_defaults) if v is not None})
    for arg, call in defaults.items():
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "Option":
            flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            help_ = next((k.value.value for k in call.keywords
                          if k.arg == "help" and isinstance(k.value, ast.Constant)), "")
            if flags:
                options[arg] = (flags[0], help_)
    out: dict[str, tuple[str, str]] = {}
    for node in ast.walk(serve):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "with_overrides":
            for kw in node.keywords:
                names = [n.id for n in ast.walk(kw.value) if isinstance(n, ast.Name) and n.id in options]
                if kw.arg and names:
                    out[kw.arg] = options[names[0]]
    return out


def settings(config_source: str | None = None, cli_source: str | None = None) -> list[Setting]:
    source = config_source if config_source is not None else CONFIG.read_text(encoding="utf-8")
    tree = ast.parse(source)
    comments = _comments(source)
    env = _env_map(tree)
    flags = _serve_flags(cli_source if cli_source is not None else CLI.read_text(encoding="utf-8"))
    out = []
    for node in _settings_fields(tree):
        name = node.target.id  # type: ignore[union-attr]
        env_name = env.get(name)
        flag, help_ = flags.get(name, (None, ""))
        meaning = _strip_env_name(_field_comment(node, comments), env_name)
        if not meaning:
            meaning = _strip_env_name(help_, env_name)
        default = _show_default(_value(node.value)) if node.value is not None else "—"
        out.append(Setting(name, env_name, flag, default, meaning))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;") or "—"


def render() -> str:
    rows = settings()
    lines = [
        "| variable | flag | default | meaning |",
        "|---|---|---|---|",
    ]
    for s in rows:
        if s.env:
            flag = f"`{s.flag}`" if s.flag else "—"
            lines.append(f"| `{s.env}` | {flag} | {s.default} | {_cell(s.meaning)} |")
    fixed = [s for s in rows if not s.env]
    if fixed:
        lines += ["", "Fixed in the code (no variable, no flag; the settings object still carries them):", ""]
        lines += [f"- `{s.name}` = {s.default}: {_cell(s.meaning)}" for s in fixed]
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
