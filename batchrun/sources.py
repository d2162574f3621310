"""Streaming input readers: JSONL line by line, Parquet by record batches, so memory stays flat in N."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .errors import InputError
from .spec import InputSpec

PARQUET_BATCH_ROWS = 1024
HASH_CHUNK = 1 << 20
# Columns a row may be read through when the spec names none (see request.RequestBuilder).
DEFAULT_COLUMNS = ("custom_id", "id", "messages", "prompt", "body", "method", "url")


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
    """Open for streaming: one column chunk at a time, decoded page by page (no pre-buffering of whole row
    groups), through the system allocator (arrow's own pools keep what they freed): memory stays flat."""
    import pyarrow as pa  # imported here: it costs ~40 MB of memory that JSONL runs do not need
    import pyarrow.parquet as pq

    pa.set_memory_pool(pa.system_memory_pool())
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def _open_csv(path: Path, columns: list[str] | None = None) -> Any:
    """A streaming CSV reader (pyarrow's), every column read as text: an id `007` stays `007`, and a prompt is
    never turned into a number. Rows are numbered from 1, the header not counted."""
    import pyarrow as pa
    import pyarrow.csv as pc

    try:
        names = pc.open_csv(path).schema.names
        wanted = names if columns is None else [c for c in names if c in columns]
        convert = pc.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            include_columns=wanted or names[:1],
        )
        return pc.open_csv(path, read_options=pc.ReadOptions(block_size=1 << 20), convert_options=convert)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable CSV file with a header row ({exc})") from None


def table_columns(spec: InputSpec) -> list[str]:
    """The column names of a Parquet or CSV input."""
    if spec.format == "csv":
        return list(_open_csv(spec.path).schema.names)
    return list(_open_parquet(spec.path).schema_arrow.names)


def table_batches(spec: InputSpec, columns: list[str] | None, batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[Any]:
    """A Parquet or CSV input as arrow record batches, in order (`columns`: only these; [] for none)."""
    if spec.format == "csv":
        for batch in _open_csv(spec.path, columns):
            yield batch if columns is None or columns else batch.select([])
        return
    yield from _open_parquet(spec.path).iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)


def iter_rows(
    spec: InputSpec, skip: Callable[[int], bool] | None = None, columns: list[str] | None = None
) -> Iterator[RawRow]:
    """Yield the input's rows in order; rows for which `skip(row)` is true are passed over unparsed. `columns`
    narrows what a Parquet or CSV input decodes (by default, what the requests are built from)."""
    if spec.format in ("parquet", "csv"):
        yield from _iter_table(spec, skip, columns)
    else:
        yield from _iter_jsonl(spec.path, skip)


def nth_row(spec: InputSpec, n: int) -> int:
    """The row number of the input's n-th row (blank lines are not rows), or of its last when it has fewer."""
    last = 0
    no_columns: list[str] = []  # Parquet: the row numbers are all that is wanted
    for count, raw in enumerate(iter_rows(spec, columns=no_columns), 1):
        last = raw.row
        if count >= n:
            break
    return last


def _iter_jsonl(path: Path, skip: Callable[[int], bool] | None) -> Iterator[RawRow]:
    with open(path, "rb") as f:
        yield from _jsonl_rows(f, 1, skip)


def _jsonl_rows(lines: Iterable[bytes], first: int, skip: Callable[[int], bool] | None) -> Iterator[RawRow]:
    """JSONL lines as rows, the first numbered `first`."""
    loads = orjson.loads
    for lineno, line in enumerate(lines, first):
        if skip is not None and skip(lineno):
            continue
        if not line.strip():
            continue
        try:
            data = loads(line)
        except orjson.JSONDecodeError as exc:
            yield RawRow(lineno, None, f"line {lineno}: {_why_not_json(line, exc)}")
            continue
        if not isinstance(data, dict):
            yield RawRow(lineno, None, f"line {lineno}: expected a JSON object, got {type(data).__name__}")
            continue
        yield RawRow(lineno, data)


@dataclass(frozen=True, slots=True)
class Slice:
    """A contiguous part of the input: rows `first` to `last`, at bytes `start` to `end` (JSONL) or in row groups
    `groups` (Parquet). What one worker of a scaled-out run reads on its own."""

    index: int
    first: int
    last: int
    count: int  # its rows (blank lines are not rows)
    start: int = 0
    end: int = 0
    groups: tuple[int, ...] = ()


def slices(spec: InputSpec, rows_per_slice: int) -> list[Slice]:
    """Cut the input into slices of about `rows_per_slice` rows: JSONL at line ends, Parquet at row groups (a row
    group is never split: it is the unit Parquet reads)."""
    if spec.format == "csv":
        raise InputError(
            f"{spec.path}: a CSV input cannot be cut into parts that workers read on their own; convert it to "
            "Parquet or JSONL first (pyarrow.csv.read_csv, then pyarrow.parquet.write_table)"
        )
    cut: list[Slice] = []
    if spec.format == "parquet":
        meta = _open_parquet(spec.path).metadata
        first, groups, count = 1, [], 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            count += meta.row_group(g).num_rows
            if count >= rows_per_slice or g == meta.num_row_groups - 1:
                cut.append(Slice(len(cut), first, first + count - 1, count, groups=tuple(groups)))
                first, groups, count = first + count, [], 0
        return cut
    with open(spec.path, "rb") as f:
        start = offset = rows = 0
        first = lineno = 1
        for line in f:
            offset += len(line)
            if not line.isspace():
                rows += 1
            if lineno - first + 1 >= rows_per_slice:
                cut.append(Slice(len(cut), first, lineno, rows, start, offset))
                start, first, rows = offset, lineno + 1, 0
            lineno += 1
        if offset > start:
            cut.append(Slice(len(cut), first, lineno - 1, rows, start, offset))
    return cut


def slice_rows(spec: InputSpec, part: Slice, skip: Callable[[int], bool] | None = None) -> Iterator[RawRow]:
    """The rows of one slice, numbered as in the whole input."""
    if spec.format == "parquet":
        parquet = _open_parquet(spec.path)
        columns = parquet_columns(spec, list(parquet.schema_arrow.names))
        batches = parquet.iter_batches(
            batch_size=PARQUET_BATCH_ROWS, row_groups=list(part.groups), columns=columns, use_threads=False
        )
        yield from _batch_rows(batches, part.first, skip)
        return
    with open(spec.path, "rb") as f:
        f.seek(part.start)
        yield from _jsonl_rows(_upto(f, part.end), part.first, skip)


def _upto(f: BinaryIO, end: int) -> Iterator[bytes]:
    """Lines of an open file from where it stands up to byte `end`."""
    at = f.tell()
    for line in f:
        if at >= end:
            return
        at += len(line)
        yield line


def _why_not_json(line: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte 0x{line[bad.start]:02x} at column {bad.start + 1}); save the file as UTF-8"
    return f"not valid JSON ({exc.msg})"


def parquet_columns(spec: InputSpec, available: list[str]) -> list[str]:
    """Only the columns the requests are built from: a wide table costs no more than a narrow one."""
    named = [spec.id_field, spec.messages_field, spec.prompt_field, *spec.template_fields]
    wanted = [c for c in named if c]
    if spec.id_field is None:  # each row's own custom_id or id, as the ids check reads them
        wanted += ["custom_id", "id"]
    if not (spec.messages_field or spec.prompt_field or spec.template):
        wanted += DEFAULT_COLUMNS
    return [c for c in available if c in wanted]


def parquet_id_columns(spec: InputSpec) -> list[str]:
    """The columns a Parquet or CSV input's ids can come from."""
    names = table_columns(spec)
    wanted = (spec.id_field,) if spec.id_field else ("custom_id", "id", "body")
    return [c for c in names if c in wanted]


def _iter_table(spec: InputSpec, skip: Callable[[int], bool] | None, columns: list[str] | None) -> Iterator[RawRow]:
    if columns is None:
        columns = parquet_columns(spec, table_columns(spec))
    yield from _batch_rows(table_batches(spec, columns), 1, skip)


def _batch_rows(batches: Iterable[Any], first_row: int, skip: Callable[[int], bool] | None) -> Iterator[RawRow]:
    """Arrow record batches as rows, the first numbered `first_row`; a batch whose rows are all passed over is
    never decoded."""
    row = first_row - 1
    for batch in batches:
        first = row + 1
        row += batch.num_rows
        if skip is not None and all(skip(r) for r in range(first, row + 1)):
            continue
        for offset, data in enumerate(batch.to_pylist()):
            r = first + offset
            if skip is None or not skip(r):
                yield RawRow(r, data)


def first_row(spec: InputSpec) -> dict[str, Any] | None:
    """The first readable row, to settle defaults (id field, how messages are built) before sending.

    For Parquet the schema says which fields every row has, without decoding any data."""
    if spec.format in ("parquet", "csv"):
        return dict.fromkeys(table_columns(spec))
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
    if spec.format == "csv":
        with open(spec.path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        first = table_columns(spec)[:1]
        return InputScan(rows=sum(b.num_rows for b in table_batches(spec, first)), digest=h.hexdigest())
    rows = 0
    with open(spec.path, "rb") as f:
        for line in f:
            h.update(line)
            if not line.isspace():
                rows += 1
    return InputScan(rows=rows, digest=h.hexdigest())
