"""`batchrun export`: one row per input row, in input order, with its answer or error beside it.

Records sit in the run directory in completion order. An index of where each row's record starts (8 bytes
a row) lets the export walk the input in order and read each record with one pread, so memory stays
bounded however large the run: output is written in batches of EXPORT_BATCH rows.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, SpecError
from ..rows.sources import input_lines, table_batches
from ..rows.textin import json_loads
from ..spec.model import InputSpec
from ..store.rundir import RECORD_FILES, RunDir
from .columns import (
    INPUT_PREFIX,
    OUTPUT_COLUMNS,
    OutputField,
    Shape,
    arrow_type,
    column_types,
    flatten,
    output_arrays,
    output_fields,
)

EXPORT_BATCH = 10_000
WINDOW = 1 << 20
NONE = -1


class RecordIndex:
    """Where each row's final record starts: offset * 2 + (1 for failures.jsonl), or NONE."""

    def __init__(self, run: RunDir) -> None:
        self.index = array("q")
        self.fds: list[int] = []
        self.windows: list[tuple[bytes, int]] = [(b"", 0), (b"", 0)]  # per file: bytes read, and where from
        for name in RECORD_FILES:
            path = run.path / name
            self.fds.append(os.open(path, os.O_RDONLY) if path.exists() else -1)
        bits = {name: bit for bit, name in enumerate(RECORD_FILES)}
        for entry in run.entries():  # whole records only, the first of each row
            row = entry.row
            if row >= len(self.index):
                self.index.extend([NONE] * (row + 1 - len(self.index) + 4096))
            self.index[row] = entry.offset * 2 + bits[entry.name]
        self.warnings = run.warnings()

    def get(self, row: int) -> dict[str, Any] | None:
        where = self.index[row] if 0 <= row < len(self.index) else NONE
        if where == NONE:
            return None
        which, offset = where & 1, where >> 1
        buf, start = self.windows[which]
        at = offset - start
        end = buf.find(b"\n", at) if 0 <= at < len(buf) else -1
        if end < 0:  # outside the window (or the line runs past it): read a new window from this record on
            buf, start, at = self._window(which, offset), offset, 0
            end = buf.find(b"\n")
        record: dict[str, Any] = orjson.loads(buf[at:end] if end >= 0 else buf[at:])
        return record

    def _window(self, which: int, offset: int) -> bytes:
        """WINDOW bytes from `offset`, longer if one record is longer: records are mostly read in file order,
        so one pread serves hundreds of them."""
        size = WINDOW
        while True:
            buf = os.pread(self.fds[which], size, offset)
            if b"\n" in buf or len(buf) < size:
                self.windows[which] = (buf, offset)
                return buf
            size *= 4

    def close(self) -> None:
        for fd in self.fds:
            if fd >= 0:
                os.close(fd)


def export_run(
    run_dir: Path, to: Path, *, with_input: bool = False, warn: Callable[[str], None] = lambda _: None
) -> int:
    """Write `to` (.parquet, .jsonl or .csv): one row per input row, in input order. Returns the rows written;
    `warn` hears of each record line that counts for nothing (damaged, or a row's second record)."""
    run = RunDir(run_dir)
    spec = run.input_spec()
    if not spec.path.is_file():
        raise InputError(f"the input {spec.path} of {run_dir} is not there: export pairs records with input rows")
    kind = to.suffix.lower()
    schema = (run.job.get("output") or {}).get("schema")
    fields = output_fields(schema) if isinstance(schema, dict) else []
    writers: dict[str, Callable[[Path, Iterator[Batch]], int]] = {
        ".parquet": functools.partial(_write_parquet, fields=fields),
        ".jsonl": _write_jsonl,
        ".csv": _write_csv,
    }
    if kind not in writers:
        raise SpecError(f"--to must end in .parquet, .jsonl or .csv, got {to.name!r}")
    embeddings = run.job.get("endpoint") == "embeddings"
    index = RecordIndex(run)
    for line in index.warnings:
        warn(line)
    try:
        shape = Shape(embeddings, fields, typed=kind == ".parquet")
        return writers[kind](to, _batches(spec, index, shape, with_input))
    finally:
        index.close()


Batch = tuple[list[dict[str, Any]], Any]  # export rows, and the input's own columns (an arrow batch) or None


def _batches(spec: InputSpec, index: RecordIndex, shape: Shape, with_input: bool) -> Iterator[Batch]:
    if spec.format in ("parquet", "csv"):
        row = 0
        for batch in table_batches(spec, None if with_input else [], EXPORT_BATCH):
            yield (
                [flatten(r, index.get(r), shape) for r in range(row + 1, row + 1 + batch.num_rows)],
                batch if with_input else None,
            )
            row += batch.num_rows
        return
    rows: list[dict[str, Any]] = []
    lineno = 0
    loads = json_loads(spec.encoding)
    for lines in input_lines(spec):  # a byte order mark before the first line is no part of its JSON
        for line in lines:
            lineno += 1
            if not line.strip():
                continue
            out = flatten(lineno, index.get(lineno), shape)
            if with_input:
                try:
                    data = loads(line)
                except (orjson.JSONDecodeError, UnicodeDecodeError):
                    data = None
                out["input"] = data if isinstance(data, dict) else {}
            rows.append(out)
            if len(rows) >= EXPORT_BATCH:
                yield rows, None
                rows = []
    if rows:
        yield rows, None


def _flat_rows(batches: Iterator[Batch]) -> Iterator[dict[str, Any]]:
    """Each export row with its input's columns beside it (prefixed input_), for the row-by-row writers."""
    for rows, table in batches:
        inputs = table.to_pylist() if table is not None else None
        for i, row in enumerate(rows):
            extra = row.pop("input", None) if inputs is None else inputs[i]
            if extra:
                row.update({INPUT_PREFIX + k: v for k, v in extra.items()})
            yield row


def _write_jsonl(to: Path, batches: Iterator[Batch]) -> int:
    written = 0
    with _atomic(to) as f:
        for row in _flat_rows(batches):
            f.write(orjson.dumps(row, default=str) + b"\n")
            written += 1
    return written


def _write_csv(to: Path, batches: Iterator[Batch]) -> int:
    """A spreadsheet's view: one line per row, lists and objects (embeddings, an input's nested fields) as JSON
    text in their cell. Written with the csv module, which quotes what needs quoting (commas, newlines)."""
    written = 0
    with _atomic(to) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        out = None
        for row in _flat_rows(batches):
            if out is None:
                out = csv.DictWriter(text, fieldnames=list(row), extrasaction="ignore")
                out.writeheader()
            out.writerow({k: _cell(v) for k, v in row.items()})
            written += 1
        if out is None:
            csv.writer(text).writerow(OUTPUT_COLUMNS)
        text.flush()
        text.detach()
    return written


def _cell(value: Any) -> Any:
    return orjson.dumps(value, default=str).decode() if isinstance(value, (list, dict)) else value


def _write_parquet(to: Path, batches: Iterator[Batch], fields: Sequence[OutputField] = ()) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    typed = {column: arrow_type(sub) for column, _, sub in fields}
    writer = None
    written = 0
    input_fields: list[str] | None = None
    with _atomic(to) as f:
        try:
            for rows, table in batches:
                arrays = output_arrays(rows, fields)
                if table is not None:  # Parquet input: its own columns, types kept
                    for name, column in zip(table.schema.names, table.columns, strict=True):
                        arrays[INPUT_PREFIX + name] = column
                elif "input" in rows[0]:  # JSONL input: the first readable row's fields, as text unless text
                    if input_fields is None:
                        input_fields = next((list(r["input"]) for r in rows if r["input"]), None)
                    for name in input_fields or ():
                        arrays[INPUT_PREFIX + name] = pa.array(
                            [_text(r["input"].get(name)) for r in rows], type=pa.string()
                        )
                batch = pa.RecordBatch.from_pydict(arrays)
                if writer is None:
                    writer = pq.ParquetWriter(f, batch.schema)
                writer.write_batch(batch)
                written += len(rows)
            if writer is None:  # an empty input: still a valid file with the output columns
                names = [*OUTPUT_COLUMNS, *typed]
                empty = {
                    name: pa.array([], type={**column_types(), **typed}.get(name) or pa.string()) for name in names
                }
                writer = pq.ParquetWriter(f, pa.RecordBatch.from_pydict(empty).schema)
        finally:
            if writer is not None:
                writer.close()
    return written


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class _atomic:
    """Write to a temporary file beside `path`, then rename: a failed export leaves no half-written file."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")

    def __enter__(self) -> Any:
        try:
            self.f = open(self.tmp, "wb")
        except OSError as exc:
            raise SpecError(f"--to: cannot write {self.path}: {exc.strerror}") from None
        return self.f

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
