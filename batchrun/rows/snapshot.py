"""An input's snapshot: its rows counted and its bytes hashed in one pass, before a run reads it.

The bytes hashed are where every later read of the run stops (`InputSpec.snapshot`), and their digest is part of
the run's fingerprint; `upto` (an earlier run's snapshot) tells an input that grew from one that changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .. import halt
from ..errors import InputError
from ..spec.model import InputSpec
from .sources import BOM, check_quotes, cut_lines, line_batches, open_parquet, table_batches, table_columns
from .textin import first_undecodable, json_loads, plain_utf8

HASH_CHUNK = 1 << 20
SCANNING = "scanning the input"  # the phase, as the progress line and an interrupt name it


@dataclass(frozen=True)
class Prefix:
    """The first bytes of the input an earlier run read (its snapshot), as they are now."""

    digest: str
    rows: int


@dataclass(frozen=True)
class InputScan:
    rows: int
    digest: str  # sha256 of the snapshot's bytes: part of the run fingerprint
    size: int = 0  # the snapshot: bytes hashed, where every later read of the run stops
    held_back: int | None = None  # JSONL: the number of an unfinished last line left out (still being written)
    prefix: Prefix | None = None  # when asked for: the first `upto` bytes


def scan_input(spec: InputSpec, upto: int | None = None) -> InputScan:
    """Count rows and hash the file in one pass (the fingerprint must change when the input does): the bytes hashed
    are the run's snapshot. `upto` (an earlier run's snapshot): also hash and count the first `upto` bytes, to
    tell an input that grew from one that changed."""
    if spec.format == "jsonl":
        return _scan_jsonl(spec, upto)
    h, size, prefix, newlines = _hash_file(spec.path, upto)
    if spec.format == "parquet":  # written whole: it never grows, and is read as it is
        return InputScan(open_parquet(spec.path).metadata.num_rows, h.hexdigest(), size)
    snapshot = spec.model_copy(update={"snapshot": size})
    rows = _csv_rows(snapshot)
    if newlines > rows + 1:  # some value holds a newline (or there are blank lines): read it again, line by line
        check_quotes(snapshot)
    found = (
        Prefix(prefix.hexdigest(), _csv_rows(spec.model_copy(update={"snapshot": upto}))) if prefix and upto else None
    )
    return InputScan(rows, h.hexdigest(), size, prefix=found)


def _hash_file(path: Path, upto: int | None) -> tuple[Any, int, Any, int]:
    """The sha256 of the file as it is, its size, the sha256 of its first `upto` bytes (None: not asked, or the
    file is not longer), and its newline bytes."""
    h, size, prefix, newlines = hashlib.sha256(), 0, None, 0
    total = path.stat().st_size
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            halt.step(SCANNING, size, total, "B")
            if upto is not None and prefix is None and size + len(chunk) > upto:
                prefix = h.copy()
                prefix.update(chunk[: upto - size])
            h.update(chunk)
            size += len(chunk)
            newlines += chunk.count(b"\n")
    return h, size, prefix, newlines


def _csv_rows(spec: InputSpec) -> int:
    first = table_columns(spec)[:1]
    rows = 0
    for batch in table_batches(spec, first):
        halt.step(SCANNING, rows)
        rows += batch.num_rows
    return rows


def _scan_jsonl(spec: InputSpec, upto: int | None) -> InputScan:
    """A JSONL input's snapshot: every line there is, but an unfinished last one (no newline, not whole JSON: an
    upstream job is writing it) is left for the next run rather than read as a broken row."""
    h, size, rows, count, last = hashlib.sha256(), 0, 0, 0, b""
    prefix: Prefix | None = None
    gbk: str | None = None  # a line that is not UTF-8 but reads as GBK: the file needs input.encoding
    total = spec.path.stat().st_size
    with open(spec.path, "rb") as f:
        for lines in line_batches(f, None):
            halt.step(SCANNING, size, total, "B")
            if size == 0 and lines[0].startswith(BOM) and lines[0][len(BOM) :].isspace():
                rows -= 1  # a line holding only the byte order mark is blank once that is dropped
            chunk = b"".join(lines)
            if gbk is None and not chunk.isascii() and plain_utf8(spec.encoding) and not _utf8(chunk):
                line, why = first_undecodable([lines], spec.encoding, gbk_only=True)
                gbk = f"line {count + line}: {why}" if line else None
            if upto is not None and prefix is None and size + len(chunk) > upto:
                prefix = _prefix(h.copy(), lines, upto - size, rows)
            h.update(chunk)
            size += len(chunk)
            rows += len(lines) - sum(map(bytes.isspace, lines))
            count += len(lines)
            last = lines[-1]
    if gbk is not None:
        raise InputError(f"{spec.path}: {gbk}")
    if last and not last.endswith(b"\n") and not last.isspace() and not _whole_json(last, count == 1, spec.encoding):
        size -= len(last)
        return InputScan(rows - 1, _sha256(spec.path, size), size, count, prefix)
    return InputScan(rows, h.hexdigest(), size, prefix=prefix)


def _prefix(h: Any, lines: list[bytes], left: int, rows: int) -> Prefix:
    """The digest and rows of the bytes hashed into `h` and the first `left` bytes of `lines`."""
    for line in cut_lines(lines, left):
        h.update(line)
        rows += not line.isspace()
    return Prefix(h.hexdigest(), rows)


def _sha256(path: Path, size: int) -> str:
    """The sha256 of a file's first `size` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while size > 0 and (chunk := f.read(min(HASH_CHUNK, size))):
            h.update(chunk)
            size -= len(chunk)
    return h.hexdigest()


def _utf8(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _whole_json(line: bytes, first: bool, encoding: str) -> bool:
    loads = json_loads(encoding)
    try:
        loads(line.removeprefix(BOM) if first else line)
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return False
    return True
