"""Reading the YAML files users write (job specs, price tables), with one shape of error for all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError


def load_yaml(path: Path, what: str) -> Any:
    """The parsed file; a missing, unreadable or malformed file is a SpecError naming it and the line at fault."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{source}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{source}: cannot read the {what} ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
