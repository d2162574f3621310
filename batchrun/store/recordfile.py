"""Reading record files so that a row counts only from a record that parses whole.

A line can be damaged in ways the `{"row":N,` prefix does not show: a write cut part-way by an older version
with the next record glued to it, a disk that lost a page, a hand edit. Every reader (resume, status, report,
export, show, the Python API) goes through `RecordReader`, which accepts a row from a whole record only, the first
one when a row has two, and notes each damaged or repeated line once with its file and line number.

A region of a file can be trusted without parsing it: usage.json records the size and CRC-32 of each record file
as the writer left it (`checkpoint`), and bytes that still match were written whole by one writer that never
writes a row twice.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from ..records import ROW_PREFIX, count, record_row
from ..text.words import plural

CRC_KEY = "crc32"  # usage.json's checkpoint: {file: size, ..., "crc32": {file: crc}}
LINES_KEY = "lines"  # and {"lines": {file: count}}
CHUNK = 1 << 20
MAX_SHOWN = 5  # damaged lines named one by one; the rest counted


class DoneRows:
    """Which rows hold a final record: one byte per row, so a million rows cost a megabyte."""

    def __init__(self) -> None:
        self._flags = bytearray()
        self.count = 0

    def add(self, row: int) -> bool:
        """Mark `row` done; False when it was already (or is not a row)."""
        if row < 0:
            return False
        if row >= len(self._flags):
            self._flags.extend(bytes(row + 1 - len(self._flags) + 4096))
        if self._flags[row]:
            return False
        self._flags[row] = 1
        self.count += 1
        return True

    def __contains__(self, row: int) -> bool:
        return 0 <= row < len(self._flags) and self._flags[row] == 1

    def count_upto(self, row: int) -> int:
        """How many rows up to and including `row` are done."""
        return self._flags.count(1, 0, row + 1)


@dataclass(frozen=True, slots=True)
class Damage:
    """A line that counts for nothing: not a whole record, or a second record of a row."""

    name: str  # the record file
    line: int  # 1-based
    offset: int
    length: int  # bytes, newline included
    row: int | None  # the row its prefix names, when it names one
    salvaged: int | None = None  # the row of a whole record found inside the damaged line (kept)
    repeat: bool = False  # a whole record of a row that has one earlier

    def describe(self) -> str:
        where = f"{self.name} line {self.line:,}"
        if self.repeat:
            return f"{where}: a second record of row {self.row}: counted once"
        what = f"{where}: not a whole record (cut by an interrupted write, or damaged)"
        if self.salvaged is not None:
            what += f"; the whole record of row {self.salvaged} inside it counts"
        if self.row is not None and self.row != self.salvaged:
            what += f"; row {self.row} has no record from it"
        return what


class Entry(NamedTuple):
    """One whole record: where it starts, its bytes (newline included), its row, and the record when parsed (a
    tuple: a million of them are made on a resume)."""

    name: str
    offset: int
    line_no: int
    line: bytes
    row: int
    record: dict[str, Any] | None  # None inside a trusted region (not parsed: use `parsed()`)

    def parsed(self) -> dict[str, Any]:
        if self.record is not None:
            return self.record
        out: dict[str, Any] = orjson.loads(self.line)
        return out


def whole(line: bytes) -> tuple[int, dict[str, Any]] | None:
    """(row, record) when the line is one whole record, else None."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    row = obj.get("row")
    return (row, obj) if type(row) is int and row >= 0 else None


def salvage(line: bytes) -> tuple[int, int, dict[str, Any]] | None:
    """A whole record glued after a torn one (`{"row":5,"id":..{"row":6,...}`): (its start, row, record)."""
    at = line.find(ROW_PREFIX, 1)
    while at > 0:
        found = whole(line[at:])
        if found is not None:
            return at, found[0], found[1]
        at = line.find(ROW_PREFIX, at + 1)
    return None


def file_digest(path: Path, upto: int) -> tuple[int, int] | None:
    """(CRC-32, newlines) of a file's first `upto` bytes, or None when it is shorter."""
    crc = lines = 0
    left = upto
    try:
        with open(path, "rb") as f:
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    return None
                crc = zlib.crc32(chunk, crc)
                lines += chunk.count(b"\n")
                left -= len(chunk)
    except FileNotFoundError:
        return None if upto else (0, 0)
    return crc, lines


def trusted_offsets(
    run_dir: Path, saved: Mapping[str, Any] | None, counters: Mapping[str, str]
) -> dict[str, int] | None:
    """How far into each record file usage.json's totals can be trusted unread, or None when they cannot.

    They can when the bytes they cover are still those the writer left (same CRC-32) and hold as many lines as
    the totals count rows (`counters`: each record file's counter); usage.json from before the CRC was kept is
    not trusted: its rows are read again."""
    checkpoint = (saved or {}).get("checkpoint")
    if saved is None or not isinstance(checkpoint, Mapping):
        return None
    crcs, counts = checkpoint.get(CRC_KEY), checkpoint.get(LINES_KEY)
    if not isinstance(crcs, Mapping) or not isinstance(counts, Mapping):
        return None
    out = {}
    for name, counter in counters.items():
        size = checkpoint.get(name)
        if type(size) is not int or size < 0 or count(saved.get(counter)) != counts.get(name):
            return None
        found = file_digest(run_dir / name, size)
        if found is None or found != (crcs.get(name), counts.get(name)):
            return None
        out[name] = size
    return out


@dataclass
class RecordReader:
    """Reads the record files of one run directory, the first whole record of each row counting."""

    run_dir: Path
    done: DoneRows = field(default_factory=DoneRows)
    damage: list[Damage] = field(default_factory=list)
    # per file, what was read: its end (past the last complete line), CRC-32 and complete lines up to there
    ends: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def entries(
        self,
        name: str,
        *,
        trusted: int = 0,
        start: int = 0,
        start_line: int = 0,
        digest: bool = False,
        trusted_crc: int = 0,
        quiet_trusted: bool = False,
    ) -> Iterator[Entry]:
        """The whole records of one file, first per row; lines before `trusted` are taken unparsed (their rows
        from the prefix; only marked done with `quiet_trusted`). From `start` on only, its line being
        `start_line` + 1. `digest`: the CRC-32 of the file's bytes read, in `ends`, going on from `trusted_crc`,
        the CRC of the trusted bytes."""
        assert not (digest and start), "a digest is of the whole file"
        path = self.run_dir / name
        crc, line_no, offset = trusted_crc, start_line, start
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the generator's last line
        except FileNotFoundError:
            self.ends[name] = (0, 0, 0)
            return
        with f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):  # still being written, or torn: not a record yet
                    break
                line_no += 1
                if digest and offset >= trusted:
                    crc = zlib.crc32(line, crc)
                at = offset
                offset += len(line)
                if at < trusted:
                    row = record_row(line)
                    if row is not None and self.done.add(row) and not quiet_trusted:
                        yield Entry(name, at, line_no, line, row, None)
                    continue
                found = whole(line)
                if found is not None:
                    row, rec = found
                    if self.done.add(row):
                        yield Entry(name, at, line_no, line, row, rec)
                    else:
                        self.damage.append(Damage(name, line_no, at, len(line), row, repeat=True))
                    continue
                glued = salvage(line)
                if glued is not None and not self.done.add(glued[1]):
                    glued = None  # a row that has its record already: nothing to keep
                self.damage.append(
                    Damage(name, line_no, at, len(line), record_row(line), glued[1] if glued is not None else None)
                )
                if glued is not None:
                    start_at, row, rec = glued
                    yield Entry(name, at + start_at, line_no, line[start_at:], row, rec)
        self.ends[name] = (offset, crc, line_no)

    def warnings(self) -> list[str]:
        """One line per damaged or repeated line (the first few; then how many more)."""
        out = [d.describe() for d in self.damage[:MAX_SHOWN]]
        if len(self.damage) > MAX_SHOWN:
            out.append(f"... and {plural(len(self.damage) - MAX_SHOWN, 'more such line')}")
        return out
