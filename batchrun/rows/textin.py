"""An input's text in the encoding the spec names, and where it goes wrong, by line: a CSV quote left open, a row
pyarrow cannot parse, bytes the encoding cannot decode.

Pure functions over streams and line batches (rows/sources.py opens the files): the checks read as they go, so
memory stays flat however long the input.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

UTF8 = ("utf-8", "utf-8-sig")
SHOWN = 80  # characters of a row quoted in an error


def plain_utf8(encoding: str) -> bool:
    """UTF-8, the encoding orjson and pyarrow read as they are (a byte order mark is dropped either way)."""
    return codecs.lookup(encoding).name in UTF8


def gbk_hint(line: bytes) -> str:
    """The fix when a line that is not UTF-8 reads as GB18030, which is what Excel saves Chinese text as."""
    try:
        line.decode("gb18030")
    except UnicodeDecodeError:
        return ""
    return "; it reads as Chinese GBK text: set input.encoding: gbk (or gb18030)"


def undecodable(line: bytes, encoding: str) -> str | None:
    """Why `line` is not text in `encoding`, and what to do (None: it is)."""
    try:
        line.decode(encoding)
    except UnicodeDecodeError as bad:
        at = f"byte 0x{line[bad.start]:02x} at column {bad.start + 1}"
        if plain_utf8(encoding):
            return f"not valid UTF-8 ({at})" + (gbk_hint(line) or "; save the file as UTF-8")
        return f"not valid {encoding} ({at}); check input.encoding"
    return None


def json_loads(encoding: str) -> Callable[[bytes], Any]:
    """orjson.loads for lines in `encoding` (orjson reads UTF-8 bytes as they are)."""
    if plain_utf8(encoding):
        return orjson.loads
    return lambda line: orjson.loads(line.decode(encoding))


def why_not_json(line: bytes, exc: ValueError, encoding: str) -> str:
    """Why a JSONL line is no row: its bytes, or its JSON."""
    why = undecodable(line, encoding)
    if why is not None:
        return why
    return f"not valid JSON ({exc.msg if isinstance(exc, orjson.JSONDecodeError) else exc})"


def first_undecodable(batches: Iterable[list[bytes]], encoding: str, *, gbk_only: bool = False) -> tuple[int, str]:
    """The first line (1-based) that `encoding` cannot decode, and why; (0, "") when there is none. `gbk_only`:
    only a line that reads as GBK counts (for JSONL, whose other undecodable lines are failure records). For
    encodings that write a newline as one byte (checks.input_encoding holds JSONL to them)."""
    lineno = 0
    for lines in batches:
        try:
            b"".join(lines).decode(encoding)
        except UnicodeDecodeError:
            for n, line in enumerate(lines, lineno + 1):
                why = undecodable(line, encoding)
                if why is not None and (not gbk_only or gbk_hint(line)):
                    return n, why
        lineno += len(lines)
    return 0, ""


@dataclass(frozen=True)
class OpenQuote:
    """A quoted CSV value spanning more lines than allowed, or left open at the end of the file."""

    line: int  # where the row holding it starts
    row: int  # that row's number (the header not counted), as failure records and exports number it
    last: int  # the line it reached
    at_end: bool  # it runs to the end of the file
    text_after: bool = False  # it closes on a later line with text after the quote, as no value does

    def message(self, limit: int) -> str:
        spans = self.last - self.line + 1
        where = f"line {self.line:,} (row {self.row:,})"
        close = 'close the quote (a quote that is part of the text is written twice: "")'
        if self.text_after:
            return (
                f"{where}: a quoted value opens in this row and closes on line {self.last:,} with text after the "
                f"closing quote, as a quote left open does; {close}"
            )
        if self.at_end:
            return (
                f"{where}: a quote opens in this row and is never closed: its value swallows the {spans:,} lines "
                f"to the end of the file; {close}"
            )
        return (
            f"{where}: a quoted value opens in this row and runs {spans:,} lines, to line {self.last:,} "
            f"(input.max_value_lines is {limit}): is a quote left open? {close}, or if values really hold that "
            f"many lines, set input.max_value_lines: {spans}"
        )


def open_quote(text: TextIO, limit: int) -> OpenQuote | None:
    """The first row whose quoted value spans more than `limit` lines or runs to the end of the file.

    Python's csv reader parses as pyarrow does (a quote opens a value only at its start; "" is a quote within
    one) and counts lines; a value longer than its field limit (128 KB) is not held whole: past `limit` lines
    it is taken as open, otherwise the check stops there, as it does at anything else the reader finds strange
    (pyarrow, which reads the rows, is the judge of those)."""
    reader = csv.reader(text, strict=True)
    last = rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:  # the quote closed with text after it, say, or a value past the field limit
            if "unexpected end of data" in str(exc):
                return OpenQuote(last + 1, rows, reader.line_num, True)
            if reader.line_num - last > 1:
                return OpenQuote(last + 1, rows, reader.line_num, False, reader.line_num - last <= limit)
            return None
        except UnicodeDecodeError:
            return None  # said where pyarrow fails on it
        if reader.line_num - last > limit:
            return OpenQuote(last + 1, rows, reader.line_num, False)
        rows += bool(row)
        last = reader.line_num


def bad_row(text: TextIO) -> tuple[int, int, int] | None:
    """(the line a row starts on, the line it ends on, its row number) of the first row whose number of fields is
    not the header's: where a pyarrow "Expected 3 columns, got 4" is, which quotes the row but not its line."""
    reader = csv.reader(text)
    last = rows = 0
    width: int | None = None
    try:
        for row in reader:
            if row:
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    return last + 1, reader.line_num, rows
                rows += 1
            last = reader.line_num
    except (csv.Error, UnicodeDecodeError):
        return (last + 1, last + 1, rows) if width is not None else None
    return None


def arrow_reason(message: str) -> str:
    """pyarrow's message without its prefix, the row text it quotes cut short."""
    message = message.removeprefix("CSV parse error: ").strip()
    message = re.sub(r"^Row #\d+: ", "", message)  # a serial reader's own count (of physical lines, not rows)
    return message if len(message) <= SHOWN else message[: SHOWN - 3] + "..."
