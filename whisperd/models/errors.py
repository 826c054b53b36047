"""Exceptions raised while reading, converting and fetching model files."""
from __future__ import annotations


class ModelFormatError(ValueError):
    """A model file is truncated, foreign, or holds something this code cannot convert."""


class ModelFetchError(RuntimeError):
    """A model package could not be fetched or did not match its pinned checksum."""
