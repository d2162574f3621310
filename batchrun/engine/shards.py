"""The batch lane's files: a job's rows cut into provider-legal Batch API input files (shards), streamed to disk,
and the durable story of each shard (`batches.jsonl`) read back into what a resumed run must do next.

A shard line's `custom_id` is batchrun's own, `row-N`: unique in the file whatever the input's ids are, and it
maps an output line straight back to its row. The row's own id and model go in a sidecar, `shard-N.rows`, one
`[row, custom_id, model]` per line (and the response cache's key, when the job caches), so memory stays flat
however many rows a shard holds.

`batches.jsonl` is append-only, one event a line, fsynced before the run waits on what it says:

    {"shard": 3, "event": "written", "path": "shards/shard-00003.jsonl", "lines": 50000, "bytes": 81234567,
     "cut": "lines"}
    {"shard": 3, "event": "uploaded", "file_id": "file-abc"}
    {"shard": 3, "event": "created", "batch_id": "batch_xyz"}
    {"shard": 3, "event": "polled", "status": "in_progress", "completed": 1200, "failed": 3}
    {"shard": 3, "event": "harvested", "status": "expired", "recorded": 30000, "resend": 20000}
    {"shard": 3, "event": "deleted"}

`cut` says what closed the shard: the provider's most `lines` or `bytes` a file, a `model` change (one model per
file), or `end` (the rows ran out). A kill between any two of them leaves a state `next_step` resumes from: a file
whose id reached the disk is never uploaded again, and a batch whose id reached the disk is never created again.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from ..rows.request import Request
from ..spec.presets import BatchAPI, Endpoint

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
CUTS = {
    "lines": "at the most lines a file holds",
    "bytes": "at the most bytes a file holds",
    "model": "at a model change (one model per file)",
    "end": "where the rows ran out",
}


def cut_text(cut: str, api: BatchAPI | None, lines: int) -> str:
    """Why a shard ends where it does, for the log and `status`: `at 5,000 lines, Qianfan's most a file`."""
    title = api.title if api is not None else "the provider"
    if cut == "lines":
        return f"at {lines:,} lines, {title}'s most a file"
    if cut == "bytes" and api is not None:
        return f"at {api.max_bytes / 1024 / 1024:,.0f} MB, {title}'s most a file"
    return CUTS.get(cut, cut)


def line_problem(api: BatchAPI, request: Request, line: bytes) -> tuple[str, str] | None:
    """Why a row's line cannot go into any of the provider's batch files, as (code, message), or None: found
    before upload, so the row gets a failure record naming the rule and the rest go through."""
    if api.max_line_bytes is not None and len(line) > api.max_line_bytes:
        return (
            "line_too_large",
            f"row {request.row}'s batch line is {len(line):,} bytes, over {api.title}'s limit of "
            f"{api.max_line_bytes:,} bytes ({api.max_line_bytes / 1024 / 1024:g} MB) a line" + _images_named(request),
        )
    if len(line) > api.max_bytes:
        return (
            "too_large_for_batch",
            f"the request is larger than {api.max_bytes:,} bytes, the most a batch file may hold",
        )
    if api.ends_with_user:
        last = last_role(request.payload)
        if last != "user":
            return (
                "last_message_not_user",
                f"{api.title}'s Batch API takes only requests whose messages end with a user message; row "
                f"{request.row}'s last message is {last!r}",
            )
    return None


def _images_named(request: Request) -> str:
    """input.images: the images that make a line large, and what scales them down."""
    named = ", ".join(f"{i['ref']} ({i['bytes']:,} bytes)" for i in request.images if "bytes" in i)
    return f" (its images: {named}; input.image_max_side scales them down)" if named else ""


def last_role(payload: bytes) -> str | None:
    """The role of a chat body's last message (None: no messages)."""
    body = orjson.loads(payload)
    messages = body.get("messages") if isinstance(body, dict) else None
    last = messages[-1] if isinstance(messages, list) and messages else None
    role = last.get("role") if isinstance(last, dict) else None
    return str(role) if role is not None else None


def row_custom_id(row: int) -> str:
    return f"row-{row}"


def custom_id_row(custom_id: str) -> int | None:
    """The row a shard line's `custom_id` names (None: not one of batchrun's)."""
    head, _, number = custom_id.partition("-")
    return int(number) if head == "row" and number.isdigit() else None


def shard_line(request: Request, url: bytes) -> bytes:
    """The request as a line of a Batch API input file."""
    return (
        b'{"custom_id":"'
        + row_custom_id(request.row).encode()
        + b'","method":"POST","url":"'
        + url
        + b'","body":'
        + request.payload
        + b"}\n"
    )


@dataclass(frozen=True)
class Shard:
    index: int
    path: Path  # the JSONL file to upload
    rows_path: Path  # its sidecar: [row, custom_id, model] per line, in the file's order
    lines: int
    bytes: int
    cut: str = "end"  # what closed it (CUTS)

    def event(self, root: Path) -> dict[str, Any]:
        return {
            "shard": self.index,
            "event": "written",
            "path": str(self.path.relative_to(root)),
            "lines": self.lines,
            "bytes": self.bytes,
            "cut": self.cut,
        }


class ShardWriter:
    """Writes requests as Batch API lines into shard files, starting a new shard before a line would break the
    provider's limits (lines, bytes, one model per file)."""

    def __init__(
        self, folder: Path, api: BatchAPI, endpoint: Endpoint, first_index: int = 1, url: str | None = None
    ) -> None:
        self.folder, self.api, self.endpoint = folder, api, endpoint
        self.url = (url or api.line_url(endpoint)).encode()
        self.max_lines = api.lines_for(endpoint)
        self.index = first_index - 1
        self._file: Any = None
        self._rows: Any = None
        self._lines = self._bytes = 0
        self._model: str | None = None

    def line(self, request: Request) -> bytes:
        return shard_line(request, self.url)

    def fits(self, request: Request) -> bool:
        """Whether the request fits in a shard at all (a line larger than a whole file never will)."""
        return len(self.line(request)) <= self.api.max_bytes

    def problem(self, request: Request) -> tuple[str, str] | None:
        """Why the request fits in no shard (its line too large, a rule of the provider's broken), or None."""
        return line_problem(self.api, request, self.line(request))

    def add(self, request: Request) -> Shard | None:
        """Write one request; returns the shard it closed to make room, if it closed one."""
        line = self.line(request)
        closed = None
        if self._file is not None:
            cut = (
                "lines"
                if self._lines + 1 > self.max_lines
                else "bytes"
                if self._bytes + len(line) > self.api.max_bytes
                else "model"
                if self.api.one_model_per_file and request.model != self._model
                else None
            )
            if cut is not None:
                closed = self.close(cut)
        if self._file is None:
            self._open(request.model)
        self._file.write(line)
        entry: list[Any] = [request.row, request.custom_id, request.model]
        if request.cache_key is not None or request.images:  # so that a harvested answer goes into the response cache
            entry.append(request.cache_key.hex() if request.cache_key is not None else None)
        if request.images:  # each image's reference, for its record
            entry.append(request.images)
        self._rows.write(orjson.dumps(entry) + b"\n")
        self._lines += 1
        self._bytes += len(line)
        return closed

    def close(self, cut: str = "end") -> Shard | None:
        """Finish the shard being written (`cut`: why there): both files on disk (fsynced) before anyone is told
        of it."""
        if self._file is None:
            return None
        for f in (self._file, self._rows):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        shard = Shard(self.index, Path(self._file.name), Path(self._rows.name), self._lines, self._bytes, cut)
        self._file = self._rows = None
        return shard

    def _open(self, model: str) -> None:
        self.index += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self.folder / f"shard-{self.index:05d}"
        self._file = open(stem.with_suffix(".jsonl"), "wb")  # noqa: SIM115 - closed in close()
        self._rows = open(stem.with_suffix(".rows"), "wb")  # noqa: SIM115
        self._lines = self._bytes = 0
        self._model = model


class ShardLine(NamedTuple):
    custom_id: str
    model: str
    cache_key: bytes | None  # the response cache's key of the row's first question


class ShardIndex:
    """A shard's sidecar, indexed: which row each line is and where its ids are, at 16 bytes a row. Output lines
    come back in any order; each is looked up by its row (a bisect and one read), never a dict of every id."""

    def __init__(self, rows_path: Path) -> None:
        self.path = rows_path
        self.rows: array[int] = array("q")  # in line order (ascending: rows go into a shard in input order)
        self.offsets: array[int] = array("q")
        offset = 0
        with open(rows_path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                self.rows.append(int(line[1 : line.index(b",")]))
                self.offsets.append(offset)
                offset += len(line)
        if any(a >= b for a, b in zip(self.rows, self.rows[1:], strict=False)):
            raise ValueError(f"{rows_path}: rows are not in ascending order")
        self._f = open(rows_path, "rb")  # noqa: SIM115 - closed in close()

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, row: int) -> bool:
        i = bisect_left(self.rows, row)
        return i < len(self.rows) and self.rows[i] == row

    def ids(self, row: int) -> ShardLine | None:
        """The row's ids (and cache key), or None when the shard does not hold it."""
        i = bisect_left(self.rows, row)
        if i == len(self.rows) or self.rows[i] != row:
            return None
        self._f.seek(self.offsets[i])
        _, custom_id, model, *rest = orjson.loads(self._f.readline())
        return ShardLine(str(custom_id), str(model), bytes.fromhex(rest[0]) if rest and rest[0] else None)

    def images(self, row: int) -> list[dict[str, Any]]:
        """input.images: the row's images as its record keeps them (path or URL, bytes, digest)."""
        i = bisect_left(self.rows, row)
        if i == len(self.rows) or self.rows[i] != row:
            return []
        self._f.seek(self.offsets[i])
        entry = orjson.loads(self._f.readline())
        return list(entry[4]) if len(entry) > 4 else []

    def close(self) -> None:
        self._f.close()


def shard_rows(rows_path: Path) -> Iterator[tuple[int, str, str]]:
    """(row, custom_id, model) of each line of a shard, in order."""
    with open(rows_path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                row, custom_id, model, *_ = orjson.loads(line)
                yield int(row), str(custom_id), str(model)


# --- the durable story of each shard ---------------------------------------------------------------------------


@dataclass
class ShardState:
    index: int
    path: str = ""
    lines: int = 0
    cut: str | None = None  # what closed the shard (CUTS); None in an older run's events
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the batch's last known status
    counts: dict[str, int] = field(default_factory=dict)  # request_counts at the last poll
    harvested: bool = False
    deleted: bool = False

    @property
    def next_step(self) -> str:
        """What a (resumed) run does next with this shard: upload | create | poll | harvest | clean | done."""
        if self.harvested:
            return "done" if self.deleted or self.file_id is None else "clean"
        if self.file_id is None:
            return "upload"
        if self.batch_id is None:
            return "create"
        if self.status in FINAL_STATUSES:
            return "harvest"
        return "poll"


def read_shards(lines: Iterable[bytes]) -> dict[int, ShardState]:
    """Each shard's state from the events of `batches.jsonl`; a torn or unreadable line (a kill mid-write) is
    passed over, as if that event had not happened, which is what resuming must assume."""
    shards: dict[int, ShardState] = {}
    for raw in lines:
        if not raw.endswith(b"\n"):
            continue
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("shard"), int):
            continue
        state = shards.setdefault(event["shard"], ShardState(event["shard"]))
        kind = event.get("event")
        if kind == "written":
            state.path, state.lines = str(event.get("path") or ""), int(event.get("lines") or 0)
            state.cut = str(event["cut"]) if isinstance(event.get("cut"), str) else None
        elif kind == "uploaded":
            state.file_id = event.get("file_id")
        elif kind == "created":
            state.batch_id = event.get("batch_id")
        elif kind == "polled":
            state.status = event.get("status")
            state.counts = {k: int(event[k]) for k in ("completed", "failed", "total") if isinstance(event.get(k), int)}
        elif kind == "harvested":
            state.status, state.harvested = event.get("status"), True
        elif kind == "deleted":
            state.deleted = True
    return shards


class Tries:
    """How many shards each row has been in: one byte a row, grown as rows appear."""

    def __init__(self) -> None:
        self._counts = bytearray()

    def __getitem__(self, row: int) -> int:
        return self._counts[row] if 0 <= row < len(self._counts) else 0

    def add(self, row: int) -> None:
        if row >= len(self._counts):
            self._counts.extend(bytes(row + 1 - len(self._counts) + 4096))
        self._counts[row] = min(255, self._counts[row] + 1)

    def sub(self, row: int) -> None:
        if 0 <= row < len(self._counts) and self._counts[row]:
            self._counts[row] -= 1
