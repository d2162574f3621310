"""Streaming input readers: JSONL line by line, Parquet by record batches, so memory stays flat in N."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError
from .spec import InputSpec

PARQUET_BATCH_ROWS = 2048
HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class RawRow:
    """One input row: `row` is the 1-based line number (JSONL) or row number (Parquet)."""

    row: int
    data: dict[str, Any] | None
    error: str | None = None  # why the row could not be read, for a failure record


@dataclass(frozen=True)
class InputScan:
    rows: int
    digest: str  # sha256 of the file's bytes: part of the run fingerprint


def _open_parquet(path: Path) -> Any:
    import pyarrow as pa  # imported here: it costs ~50 MB of memory that JSONL runs do not need
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def iter_rows(spec: InputSpec, skip: Callable[[int], bool] | None = None) -> Iterator[RawRow]:
    """Yield the input's rows in order; rows for which `skip(row)` is true are passed over unparsed."""
    if spec.format == "parquet":
        yield from _iter_parquet(spec.path, skip)
    else:
        yield from _iter_jsonl(spec.path, skip)


def _iter_jsonl(path: Path, skip: Callable[[int], bool] | None) -> Iterator[RawRow]:
    loads = orjson.loads
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if skip is not None and skip(lineno):
                continue
            if not line.strip():
                continue
            try:
                data = loads(line)
            except orjson.JSONDecodeError as exc:
                yield RawRow(lineno, None, f"line {lineno}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(data, dict):
                yield RawRow(lineno, None, f"line {lineno}: expected a JSON object, got {type(data).__name__}")
                continue
            yield RawRow(lineno, data)


def _iter_parquet(path: Path, skip: Callable[[int], bool] | None) -> Iterator[RawRow]:
    pf = _open_parquet(path)
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        first = row + 1
        row += batch.num_rows
        if skip is not None and all(skip(r) for r in range(first, row + 1)):
            continue
        for offset, data in enumerate(batch.to_pylist()):
            r = first + offset
            if skip is None or not skip(r):
                yield RawRow(r, data)


def first_row(spec: InputSpec) -> dict[str, Any] | None:
    """The first readable row, to settle defaults (id field, how messages are built) before sending."""
    for raw in iter_rows(spec):
        if raw.data is not None:
            return raw.data
    return None


def scan_input(spec: InputSpec) -> InputScan:
    """Count rows and hash the file in one pass (the fingerprint must change when the input does)."""
    h = hashlib.sha256()
    if spec.format == "parquet":
        with open(spec.path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        return InputScan(rows=_open_parquet(spec.path).metadata.num_rows, digest=h.hexdigest())
    rows = 0
    with open(spec.path, "rb") as f:
        for line in f:
            h.update(line)
            if not line.isspace():
                rows += 1
    return InputScan(rows=rows, digest=h.hexdigest())
