"""Streaming input readers: JSONL line by line, Parquet by record batches, so memory stays flat in N.

A run reads its input as it was when the run started: `scan_input` says how many bytes that is (the snapshot), and
every later read of a JSONL or CSV input stops there (`InputSpec.snapshot`, taken by `snapshot.scan_input`), so
rows an upstream job appends while the run goes are left for the next run, which sees them as the input grown
(job.prepare).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..errors import InputError
from ..spec.model import InputSpec
from .textin import arrow_reason, bad_row, first_undecodable, json_loads, open_quote, plain_utf8, why_not_json

PARQUET_BATCH_ROWS = 1024
LINES_HINT = 1 << 16  # bytes of whole lines read at a time
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which some editors put at the start of a file
# Columns a row may be read through when the spec names none (see request.RequestBuilder).
DEFAULT_COLUMNS = ("custom_id", "id", "messages", "prompt", "body", "method", "url")


@dataclass(frozen=True, slots=True)
class RawRow:
    """One input row: `row` is the 1-based line number (JSONL) or row number (Parquet)."""

    row: int
    data: dict[str, Any] | None
    error: str | None = None  # why the row could not be read, for a failure record


def open_parquet(path: Path) -> Any:
    """Open for streaming: one column chunk at a time, decoded page by page (no pre-buffering of whole row
    groups), through the system allocator (arrow's own pools keep what they freed): memory stays flat."""
    import pyarrow as pa  # imported here: it costs ~40 MB of memory that JSONL runs do not need
    import pyarrow.parquet as pq

    pa.set_memory_pool(pa.system_memory_pool())
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


class _Head(io.RawIOBase):
    """The first `size` bytes of a file, as pyarrow reads a CSV input: a run's snapshot of it."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 (closed with this stream, which pyarrow owns)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._file.readinto(memoryview(buffer)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def _csv_source(spec: InputSpec) -> Path | _Head:
    return spec.path if spec.snapshot is None else _Head(spec.path, spec.snapshot)


def _csv_text(spec: InputSpec) -> io.TextIOWrapper:
    """The run's snapshot of a CSV input as text, for the checks that name a line (rows/textin.py)."""
    size = spec.path.stat().st_size if spec.snapshot is None else spec.snapshot
    encoding = "utf-8-sig" if plain_utf8(spec.encoding) else spec.encoding
    return io.TextIOWrapper(io.BufferedReader(_Head(spec.path, size)), encoding=encoding, newline="")


def _open_csv(spec: InputSpec, columns: list[str] | None = None) -> Any:
    """A streaming CSV reader (pyarrow's), every column read as text: an id `007` stays `007`, and a prompt is
    never turned into a number. Rows are numbered from 1, the header not counted. A quoted value may hold
    newlines (the reader cuts its blocks between rows, not inside a value)."""
    import pyarrow as pa
    import pyarrow.csv as pc

    encoding = "utf8" if plain_utf8(spec.encoding) else spec.encoding
    parse = pc.ParseOptions(newlines_in_values=True)
    # use_threads=False: pyarrow 14's threaded reader, with newlines in values, can wait forever on its own pool
    # (a validate of a multi-line CSV hung there); a streaming reader decodes one block at a time anyway
    try:
        names = pc.open_csv(
            _csv_source(spec), read_options=pc.ReadOptions(encoding=encoding, use_threads=False), parse_options=parse
        ).schema.names
        wanted = names if columns is None else [c for c in names if c in columns]
        convert = pc.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            include_columns=wanted or names[:1],
        )
        return pc.open_csv(
            _csv_source(spec),
            read_options=pc.ReadOptions(block_size=1 << 20, encoding=encoding, use_threads=False),
            parse_options=parse,
            convert_options=convert,
        )
    except (OSError, UnicodeError, pa.ArrowException) as exc:
        raise _csv_error(spec, exc) from None


def _csv_error(spec: InputSpec, exc: Exception) -> InputError:
    """pyarrow's error, with the line it is on: its messages quote a row's text, never its line number."""
    message = str(exc)
    where = f"{spec.path}: not a readable CSV file with a header row ({exc})"
    line_safe = plain_utf8(spec.encoding) or "\n".encode(spec.encoding) == b"\n"
    if line_safe and ("invalid UTF8" in message or isinstance(exc, UnicodeError)):
        with open(spec.path, "rb") as f:
            line, why = first_undecodable(line_batches(f, spec.snapshot), spec.encoding)
        if line:
            return InputError(f"{spec.path}: line {line}: {why}")
    if plain_utf8(spec.encoding):
        with open(spec.path, "rb") as f:
            if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
                return InputError(f"{where}; it starts as UTF-16 text does: set input.encoding: utf-16")
    if "CSV parse error" in message:
        with _csv_text(spec) as text:
            found = bad_row(text)
        if found is not None:
            line, end, row = found
            spans = f" (this row runs to line {end:,}: is a quote left open?)" if end > line else ""
            return InputError(f"{spec.path}: line {line:,} (row {row:,}): {arrow_reason(message)}{spans}")
    return InputError(where)


def check_quotes(spec: InputSpec) -> None:
    """A quoted value that swallows many lines, or runs to the end of the file, is almost always a quote left open
    by mistake: rows merged into one, silently, unless this says so."""
    with _csv_text(spec) as text:
        found = open_quote(text, spec.max_value_lines)
    if found is not None:
        raise InputError(f"{spec.path}: {found.message(spec.max_value_lines)}")


def table_columns(spec: InputSpec) -> list[str]:
    """The column names of a Parquet or CSV input."""
    if spec.format == "csv":
        return list(_open_csv(spec).schema.names)
    return list(open_parquet(spec.path).schema_arrow.names)


def table_batches(spec: InputSpec, columns: list[str] | None, batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[Any]:
    """A Parquet or CSV input as arrow record batches, in order (`columns`: only these; [] for none)."""
    if spec.format == "csv":
        import pyarrow as pa

        try:
            for batch in _open_csv(spec, columns):
                yield batch if columns is None or columns else batch.select([])
        except (OSError, UnicodeError, pa.ArrowException) as exc:
            raise _csv_error(spec, exc) from None
        return
    yield from open_parquet(spec.path).iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)


def iter_rows(
    spec: InputSpec, skip: Callable[[int], bool] | None = None, columns: list[str] | None = None
) -> Iterator[RawRow]:
    """Yield the input's rows in order; rows for which `skip(row)` is true are passed over unparsed. `columns`
    narrows what a Parquet or CSV input decodes (by default, what the requests are built from)."""
    if spec.format in ("parquet", "csv"):
        yield from _iter_table(spec, skip, columns)
    else:
        yield from _jsonl_rows(input_lines(spec), 1, skip, spec.encoding)


def nth_row(spec: InputSpec, n: int) -> int:
    """The row number of the input's n-th row (blank lines are not rows), or of its last when it has fewer."""
    last = 0
    no_columns: list[str] = []  # Parquet: the row numbers are all that is wanted
    for count, raw in enumerate(iter_rows(spec, columns=no_columns), 1):
        last = raw.row
        if count >= n:
            break
    return last


def input_lines(spec: InputSpec, start: int = 0, end: int | None = None) -> Iterator[list[bytes]]:
    """A JSONL input's lines from byte `start` to byte `end` (by default, to the end of the run's snapshot), a list
    at a time; a byte order mark before the first line is dropped (it is no part of the JSON)."""
    with open(spec.path, "rb") as f:
        f.seek(start)
        batches = line_batches(f, spec.snapshot if end is None else end)
        if start == 0:
            first = next(batches, None)
            if first is None:
                return
            if first[0].startswith(BOM):
                first[0] = first[0][len(BOM) :]
            yield first
        yield from batches


def line_batches(f: BinaryIO, end: int | None) -> Iterator[list[bytes]]:
    """Whole lines from where `f` stands up to byte `end` of the file (None: its end), a list at a time: a loop
    over them costs what a loop over the file would, and bytes appended past `end` are never read."""
    if end is None:
        while lines := f.readlines(LINES_HINT):
            yield lines
        return
    left = end - f.tell()
    while left > 0 and (lines := f.readlines(min(left, LINES_HINT))):
        size = sum(map(len, lines))
        if size > left:  # the file grew past the snapshot (which ends at a line end, or where the file ended)
            lines = cut_lines(lines, left)
        left -= size
        yield lines


def cut_lines(lines: list[bytes], left: int) -> list[bytes]:
    """The lines within the first `left` bytes of `lines`."""
    kept = []
    for line in lines:
        if left <= 0:
            break
        kept.append(line[:left])
        left -= len(line)
    return kept


def _jsonl_rows(
    batches: Iterable[list[bytes]], first: int, skip: Callable[[int], bool] | None, encoding: str = "utf-8"
) -> Iterator[RawRow]:
    """JSONL lines as rows, the first numbered `first`, read as `encoding`."""
    loads = json_loads(encoding)
    lineno = first - 1
    for lines in batches:
        for line in lines:
            lineno += 1
            if skip is not None and skip(lineno):
                continue
            if not line.strip():
                continue
            try:
                data = loads(line)
            except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
                yield RawRow(lineno, None, f"line {lineno}: {why_not_json(line, exc, encoding)}")
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
        meta = open_parquet(spec.path).metadata
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
        for lines in line_batches(f, spec.snapshot):
            for line in lines:
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
        parquet = open_parquet(spec.path)
        columns = parquet_columns(spec, list(parquet.schema_arrow.names))
        batches = parquet.iter_batches(
            batch_size=PARQUET_BATCH_ROWS, row_groups=list(part.groups), columns=columns, use_threads=False
        )
        yield from _batch_rows(batches, part.first, skip)
        return
    yield from _jsonl_rows(input_lines(spec, part.start, part.end), part.first, skip, spec.encoding)


def parquet_columns(spec: InputSpec, available: list[str]) -> list[str]:
    """Only the columns the requests are built from: a wide table costs no more than a narrow one."""
    named = [spec.id_field, spec.messages_field, spec.prompt_field, *spec.template_fields, *(spec.images or ())]
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
