"""Keys blanked out of whatever batchrun writes: the run directory's records and the response cache alike.

A provider or gateway may echo the caller's key in an answer; whoever stores that answer replaces the key with
REDACTED first. Depends on nothing else of batchrun, so that every layer can use it."""

from __future__ import annotations

import functools
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
