"""Repeated ids: the rows whose id an earlier row already has. They get a `duplicate_id` failure record and are
never sent, since a second answer under the same `custom_id` could not be told apart from the first (the OpenAI
Batch API refuses such a file outright).

Finding them needs every id of the input at once: a million ids would cost tens of megabytes as a Python set, so
they go through an on-disk SQLite table (the standard library's), which sorts in bounded memory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from .. import halt
from ..errors import Interrupted
from ..spec.model import InputSpec
from .request import ID_FIELDS, BadRow, row_id
from .sources import input_lines, iter_rows, parquet_id_columns
from .textin import json_loads

DUPLICATE_ID = "duplicate_id"
CHECKING = "checking the ids for repeats"  # the phase, as the progress line and an interrupt name it
STOP_CHECK_OPS = 100_000  # sqlite steps between looks at the stop flag (well under a millisecond)


@dataclass(frozen=True, slots=True)
class Repeat:
    row: int
    custom_id: str
    first: int  # the earlier row with the same id

    def message(self) -> str:
        return (
            f"row {self.row}: duplicate id {self.custom_id!r} (first at row {self.first}); ids must be unique, "
            "so this row is not sent"
        )


def _ids(spec: InputSpec) -> Iterator[tuple[int, str, int]]:
    """(hash, id, row) for every readable row. JSONL lines that name no id field are their row number, unparsed."""
    if spec.format == "jsonl":
        names = [f'"{name}"'.encode() for name in ((spec.id_field,) if spec.id_field else ID_FIELDS)]
        first, *others = names
        loads = json_loads(spec.encoding)
        row = read = 0
        for lines in input_lines(spec):  # the run's snapshot of the input, as the rows are read
            halt.step(CHECKING, read, spec.snapshot, "B")
            read += sum(map(len, lines))
            for line in lines:
                row += 1
                if first not in line and not any(name in line for name in others):
                    if line.strip():
                        text = str(row)
                        yield hash(text), text, row
                    continue
                with contextlib.suppress(orjson.JSONDecodeError, UnicodeDecodeError):
                    data = loads(line)
                    if isinstance(data, dict):
                        found = row_id(data, row, spec.id_field)
                        if not isinstance(found, BadRow):
                            yield hash(found), found, row
        return
    columns = parquet_id_columns(spec)
    for raw in iter_rows(spec, columns=columns):
        if raw.row % 4096 == 0:
            halt.step(CHECKING, raw.row)
        found = row_id(raw.data or {}, raw.row, spec.id_field)
        if not isinstance(found, BadRow):
            yield hash(found), found, raw.row


def repeated_ids(spec: InputSpec, workdir: Path | None = None) -> Iterator[Repeat]:
    """Every row whose id an earlier row has, in row order (the scratch table lives in `workdir`).

    Only the ids' 64-bit hashes are sorted (small records sort fast); the rows whose hash repeats are then
    compared by the ids themselves, so a hash collision never makes a false repeat."""
    fd, name = tempfile.mkstemp(prefix=".ids-", suffix=".sqlite", dir=workdir)
    os.close(fd)
    try:
        with contextlib.closing(sqlite3.connect(name)) as db:
            db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-512;"  # 512 KiB: memory stays flat
                "PRAGMA temp_store=FILE; CREATE TABLE ids (h INTEGER, id TEXT, row INTEGER);"
            )
            # sorting a million ids is long, and all in sqlite: it looks at the stop flag as it goes
            db.set_progress_handler(halt.stopped, STOP_CHECK_OPS)
            try:
                db.executemany("INSERT INTO ids VALUES (?, ?, ?)", _ids(spec))
                found = db.execute(
                    "SELECT id, row FROM ids WHERE h IN (SELECT h FROM ids GROUP BY h HAVING COUNT(*) > 1) ORDER BY row"
                )
                first: dict[str, int] = {}
                for custom_id, row in found:
                    earlier = first.setdefault(custom_id, row)
                    if earlier != row:
                        yield Repeat(row, custom_id, earlier)
            except sqlite3.OperationalError:
                if halt.stopped():
                    raise Interrupted(f"interrupted while {CHECKING}") from None
                raise
    finally:
        os.unlink(name)
