"""Words a user reads: counts in the singular when there is one, and a suggestion for a name misspelt.

At the bottom of the layers, so that every message, from the spec's errors to the closing summary, says
"1 row" and "did you mean 'params'?" the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

# How close a misspelling must be to a name for it to be suggested (difflib's ratio): close enough for a
# letter left out, doubled or swapped (parms, zhipuai, modle, rpn), far enough that 'x' or 'bogus' suggests nothing.
CUTOFF = 0.6


def plural(count: float, word: str, many: str | None = None) -> str:
    """`1 row`, `2 rows`, `12,000 rows`; `many` where adding an s is wrong (`1 entry`, `2 entries`)."""
    shown = f"{count:,}" if isinstance(count, int) else f"{count:,g}"
    return f"{shown} {word if count == 1 else (many or word + 's')}"


def closest(given: str, names: Iterable[str], aliases: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """The names `given` was most likely meant to be: its alias's (the name a user may know a thing by), else the
    nearest by spelling (at most one), else none. Matching ignores case and `-` versus `_`."""
    key = given.strip().lower().replace("-", "_")
    for tail in _tails(key) if aliases is not None else ():  # an alias, or a URL or path ending in one
        if aliases is not None and tail in aliases:
            return list(aliases[tail])
    folded = {n.lower().replace("-", "_"): n for n in names}
    if key in folded and folded[key] != given:
        return [folded[key]]
    if "/" in key and not any("/" in n for n in folded):
        return []  # a path is not a misspelt name: its last part alike proves nothing
    found = difflib.get_close_matches(key, list(folded), n=1, cutoff=CUTOFF)
    return [folded[found[0]]] if found else []


def _tails(key: str) -> list[str]:
    """`key`, and where it is a path or URL, each of its endings from the longest (`/v1/chat/completions`,
    `v1/chat/completions`, `/chat/completions`, ...)."""
    parts = key.split("/")
    tails = [key]
    for i in range(1, len(parts)):
        rest = "/".join(parts[i:])
        tails += [f"/{rest}", rest]
    return tails


def did_you_mean(suggestions: Iterable[str]) -> str:
    """`did you mean 'zhipu'?`, `did you mean 'aistudio' or 'qianfan'?`, or "" for none."""
    names = [f"'{s}'" for s in suggestions]
    if not names:
        return ""
    return f"did you mean {' or '.join(names) if len(names) < 3 else ', '.join(names[:-1]) + ' or ' + names[-1]}?"


def suggestion(given: object, names: Iterable[str], aliases: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """`: did you mean 'x'?` to end a message with, or "" when nothing is close (or `given` is not a string)."""
    if not isinstance(given, str) or not given.strip():
        return ""
    found = did_you_mean(closest(given, names, aliases))
    return f": {found}" if found else ""
