"""Print pip constraints that pin every runtime dependency to the lowest version pyproject.toml allows.

`make test-floors` installs them into a separate environment and runs the suite there, so that the floors we
declare are floors that work (an API used from a later version shows up as a failing test, not a user's bug).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

# What the floors bring along: pyarrow 14 was built against numpy 1.x and does not load beside numpy 2.
COMPANIONS = {"pyarrow": "numpy<2"}


def _toml(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib.loads(text)
    sys.exit("floors: needs Python 3.11 or later (tomllib)")


# name[extras]>=version
REQUIREMENT = re.compile(r"\s*([A-Za-z0-9_.-]+)(?:\[[A-Za-z0-9_,.-]+\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*")
# The optional extras whose floors are tested too (`make test-floors` installs them).
EXTRAS = ("ray",)


def floors(pyproject: Path) -> list[str]:
    pins = []
    project = _toml(pyproject.read_text(encoding="utf-8"))["project"]
    extras = [r for name in EXTRAS for r in project["optional-dependencies"][name]]
    for requirement in [*project["dependencies"], *extras]:
        found = re.fullmatch(
            r"\s*([A-Za-z0-9_.-]+)(?:\[[A-Za-z0-9_,.-]+\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement
        )
        if found is None:
            sys.exit(f"floors: {requirement!r} has no plain '>=' floor; give it one")
        name, version = found.groups()
        pins.append(f"{name}=={version}")
        if name.lower() in COMPANIONS:
            pins.append(COMPANIONS[name.lower()])
    return pins


if __name__ == "__main__":
    print("\n".join(floors(Path(__file__).resolve().parent.parent / "pyproject.toml")))
