"""Other people's text made safe to keep and to show: keys blanked out of whatever batchrun writes (the run
directory's records and the response cache alike), and control characters escaped in what it prints.

A provider or gateway may echo the caller's key in an answer; whoever stores that answer replaces the key with
REDACTED first. Ids, prompts, answers and providers' messages are anyone's text: a terminal shows them rather
than obeys them. Depends on nothing else of batchrun, so that every layer can use it."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

import orjson

REDACTED = b"[redacted]"
# A key shorter than this is a placeholder (vLLM's "x"): replacing it would corrupt the records.
MIN_SECRET_LEN = 8


def secret_bytes(keys: Iterable[str | None]) -> list[bytes]:
    """The keys worth redacting, as bytes."""
    return [key.encode() for key in keys if key and len(key) >= MIN_SECRET_LEN]


@functools.lru_cache(maxsize=64)
def _needles(secrets: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Each key as it is and as it appears inside a JSON string (a `"` or `\\` in it is escaped there), the
    longest first: a key that holds a shorter one is replaced whole, not left with its tail showing."""
    forms = set(secrets)
    for secret in secrets:
        try:
            forms.add(orjson.dumps(secret.decode())[1:-1])
        except UnicodeDecodeError:
            continue
    return tuple(sorted(forms, key=len, reverse=True))


def redact(data: bytes, secrets: Sequence[bytes]) -> bytes:
    """`data` with every key in `secrets` (from `secret_bytes`) replaced by REDACTED."""
    if not secrets:
        return data
    for needle in _needles(tuple(secrets)):
        if needle in data:
            data = data.replace(needle, REDACTED)
    return data


def holds(data: bytes, secrets: Sequence[bytes]) -> bool:
    """Whether `data` holds any key in `secrets`, as it is or JSON-escaped."""
    return bool(secrets) and any(needle in data for needle in _needles(tuple(secrets)))


# What a terminal obeys instead of showing: C0 controls but tab (ESC starts ANSI sequences that clear the screen or
# retitle the window; CR and BS overwrite what the line said), DEL, and C1 (0x9b is an escape sequence on its own).
CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable_lines(lines: list[str]) -> list[str]:
    """The lines as a terminal shows them rather than obeys them: a control character (ANSI escapes, carriage
    returns, C1) is written as a \\x.. escape; tabs stay."""
    return [CONTROLS.sub(lambda found: f"\\x{ord(found.group()):02x}", line) for line in lines]
