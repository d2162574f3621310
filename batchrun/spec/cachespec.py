"""The spec's `cache:` block: the response cache shared across runs, where its file is and how a job uses it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from . import checks
from .base import Reading, SpecModel

CacheMode = Literal["read_write", "read", "write", "off"]
CACHE_MODES: tuple[CacheMode, ...] = ("read_write", "read", "write", "off")
FILE_NAME = "cache.sqlite3"


def default_path() -> Path:
    """`$XDG_CACHE_HOME/batchrun/cache.sqlite3` (`~/.cache/...` when it is not set)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "batchrun" / FILE_NAME


class CacheSpec(SpecModel):
    """The spec's `cache:` block: the response cache shared across runs (`cache: off` turns it off)."""

    path: Annotated[
        Path | None,
        Field(description="The cache file; default $XDG_CACHE_HOME/batchrun/cache.sqlite3."),
        BeforeValidator(checks.cache_path),
    ] = None
    mode: CacheMode = Field("read_write", description="read_write, read (never write), write (never read), or off.")
    sampled: bool = Field(True, description="Cache answers sampled with temperature > 0 (or no temperature) too.")

    @classmethod
    def shorthand(cls, data: Any, spec: Reading) -> Any:
        """YAML reads a bare `off` as false: `cache: false` is off, `cache: true` the default, `cache: read` a mode."""
        if data is True:
            return {}
        if data is False:
            return {"mode": "off"}
        if isinstance(data, str):
            return {"mode": data}
        if isinstance(data, Mapping) and data.get("mode") is False:
            return {**data, "mode": "off"}
        return data

    @property
    def reads(self) -> bool:
        return self.mode in ("read_write", "read")

    @property
    def writes(self) -> bool:
        return self.mode in ("read_write", "write")

    def file(self) -> Path:
        return self.path or default_path()
