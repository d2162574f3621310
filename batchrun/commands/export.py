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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, SpecError
from ..rows.sources import input_lines, table_batches
from ..spec.model import InputSpec
from ..store.rundir import RECORD_FILES, RunDir

EXPORT_BATCH = 10_000
WINDOW = 1 << 20
NONE = -1
OUTPUT_COLUMNS = (
    "row",
    "custom_id",
    "status",
    "model",
    "answer",
    "reasoning",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "error_code",
    "error_message",
    "attempts",
    "latency_s",
)
INPUT_PREFIX = "input_"
OutputField = tuple[str, str, Any]  # structured output: column name, property name, the property's schema


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


@dataclass(frozen=True)
class Shape:
    """What an export's rows hold beyond OUTPUT_COLUMNS: an embedding, structured output's columns."""

    embeddings: bool = False
    fields: Sequence[OutputField] = ()  # structured output: one column per property of the schema
    typed: bool = False  # the output's values fitted to their Arrow types (Parquet)


def flatten(row: int, record: Mapping[str, Any] | None, shape: Shape = Shape()) -> dict[str, Any]:
    """The export's columns for one row: its answer text, reasoning, finish_reason, usage and error.

    Written for speed (a million rows): records come from orjson, so plain `type(x) is dict` checks."""
    if record is None:
        out = dict.fromkeys(OUTPUT_COLUMNS)
        out.update(row=row, status="pending")
        if shape.embeddings:
            out["embedding"] = None
        if shape.fields:
            output_values(out, None, shape.fields, shape.typed)
        return out
    error = record.get("error")
    response = record.get("response")
    body = response.get("body") if type(response) is dict else None
    if type(body) is not dict:
        body = _EMPTY
    usage = body.get("usage")
    if type(usage) is not dict:
        usage = _EMPTY
    choices = body.get("choices")
    choice = choices[0] if type(choices) is list and choices and type(choices[0]) is dict else _EMPTY
    message = choice.get("message")
    if type(message) is not dict:
        message = _EMPTY
    text = message.get("content") if message else choice.get("text")
    reasoning = message.get("reasoning_content")
    custom_id = record.get("custom_id")
    out = {
        "row": row,
        "custom_id": None if custom_id is None else str(custom_id),
        "status": "failed" if error else "succeeded",
        "model": record.get("model"),
        "answer": text if type(text) is str else None,
        "reasoning": reasoning if type(reasoning) is str else None,
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": _count(usage.get("prompt_tokens")),
        "completion_tokens": _count(usage.get("completion_tokens")),
        "total_tokens": _count(usage.get("total_tokens")),
        "error_code": error.get("code") if type(error) is dict else None,
        "error_message": error.get("message") if type(error) is dict else None,
        "attempts": record.get("attempts"),
        "latency_s": record.get("latency_s"),
    }
    if shape.embeddings:
        data = body.get("data")
        first = data[0] if type(data) is list and data and type(data[0]) is dict else _EMPTY
        out["embedding"] = first.get("embedding")
    if shape.fields:
        output_values(out, None if error else record.get("output"), shape.fields, shape.typed)
    return out


_EMPTY: dict[str, Any] = {}


def _count(value: Any) -> int | None:
    return value if type(value) is int else None


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


# --- structured output: one column per top-level property of the job's schema ----------------------------------


def output_fields(schema: Mapping[str, Any]) -> list[OutputField]:
    """The schema's top-level properties as columns, named as the properties are (with `output_` before a name
    that batchrun's own columns already use)."""
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return [("output", "", schema)]  # not an object of properties: the whole output in one column
    taken = {*OUTPUT_COLUMNS, "embedding", "output"}
    return [
        (f"output_{name}" if name in taken or name.startswith(INPUT_PREFIX) else name, name, sub)
        for name, sub in props.items()
    ]


def output_values(out: dict[str, Any], value: Any, fields: Sequence[OutputField], typed: bool) -> None:
    """A row's output values in its columns: for Parquet fitted to each column's type (`coerce`)."""
    for column, name, sub in fields:
        item = (value.get(name) if isinstance(value, dict) else None) if name else value
        out[column] = coerce(item, sub) if typed else item


def arrow_type(schema: Any) -> Any:
    """The Arrow type of a JSON Schema: string, int64, double, bool, lists and structs; anything else (anyOf, an
    object without properties) as JSON text."""
    import pyarrow as pa

    kind = _kind(schema)
    if kind == "string":
        return pa.string()
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array":
        return pa.list_(arrow_type(schema.get("items")))
    if kind == "object":
        return pa.struct([(name, arrow_type(sub)) for name, sub in schema["properties"].items()])
    return pa.string()


def coerce(value: Any, schema: Any) -> Any:
    """`value` in the shape its column's `arrow_type` takes (None where it does not fit)."""
    if value is None:
        return None
    kind = _kind(schema)
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == "number":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "array":
        return [coerce(v, schema.get("items")) for v in value] if isinstance(value, list) else None
    if kind == "object":
        if not isinstance(value, dict):
            return None
        return {name: coerce(value.get(name), sub) for name, sub in schema["properties"].items()}
    return orjson.dumps(value).decode()


def _kind(schema: Any) -> str | None:
    """The one JSON type a schema names (`["string", "null"]` is a string that may be missing), else None."""
    if not isinstance(schema, Mapping):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None and isinstance(schema.get("enum"), list) and schema["enum"]:
        values = schema["enum"]
        kind = "string" if all(isinstance(v, str) for v in values) else None
    if kind == "object" and not isinstance(schema.get("properties"), Mapping):
        return None
    if kind is None and isinstance(schema.get("properties"), Mapping):
        return "object"
    return kind if isinstance(kind, str) else None


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
    for lines in input_lines(spec):  # a byte order mark before the first line is no part of its JSON
        for line in lines:
            lineno += 1
            if not line.strip():
                continue
            out = flatten(lineno, index.get(lineno), shape)
            if with_input:
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError:
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
                empty = {name: pa.array([], type={**_types(), **typed}.get(name) or pa.string()) for name in names}
                writer = pq.ParquetWriter(f, pa.RecordBatch.from_pydict(empty).schema)
        finally:
            if writer is not None:
                writer.close()
    return written


def output_arrays(rows: Sequence[Mapping[str, Any]], fields: Sequence[OutputField] = ()) -> dict[str, Any]:
    """Flattened rows' output columns as Arrow arrays of their types (structured output's by its schema)."""
    import pyarrow as pa

    types = {**_types(), **{column: arrow_type(sub) for column, _, sub in fields}}
    return {name: pa.array([r[name] for r in rows], type=types.get(name)) for name in rows[0] if name != "input"}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@functools.cache
def _types() -> dict[str, Any]:
    """Arrow types of the output columns, made on first use: pyarrow is loaded only for Parquet exports."""
    import pyarrow as pa

    return {
        "row": pa.int64(),
        "custom_id": pa.string(),
        "status": pa.string(),
        "model": pa.string(),
        "answer": pa.string(),
        "reasoning": pa.string(),
        "finish_reason": pa.string(),
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
        "total_tokens": pa.int64(),
        "error_code": pa.string(),
        "error_message": pa.string(),
        "attempts": pa.int64(),
        "latency_s": pa.float64(),
        "embedding": pa.list_(pa.float32()),
    }


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
