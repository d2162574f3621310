"""Resume planning: what a run directory holds done, read from whole records only, and the totals to go on from.

A row is done by the first whole record of it (results.jsonl before failures.jsonl). usage.json's totals are
taken as they are where the records they counted are provably as written (`recordfile.trusted_offsets`), else
checked against the records or recounted from them. Lines that count for nothing (damaged, or a row's second
record) are reported once and moved to previous/damaged-<time>/, so the files hold one whole record per row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import CheckpointWriteError
from ..records import count, now_iso
from ..text.words import plural
from .durable import atomic_write, write_error
from .recordfile import CRC_KEY, DoneRows, RecordReader, salvage, trusted_offsets, whole
from .rundir import (
    DAMAGED,
    PREVIOUS,
    RECORD_FILES,
    REPAIRS,
    ROW_COUNTERS,
    TASKS,
    USAGE,
    fold_set_aside,
    read_json,
)
from .usage import Usage


@dataclass
class ResumeState:
    done: DoneRows = field(default_factory=DoneRows)
    usage: Usage = field(default_factory=Usage)
    previous: dict[str, Any] = field(default_factory=dict)  # the last usage.json, if any
    repaired_lines: int = 0  # torn tails cut off
    notes: list[str] = field(default_factory=list)  # damaged or repeated record lines set aside, a recount
    archived_to: Path | None = None  # where --fresh moved an earlier run's files
    abandoned_tasks: int = 0  # async tasks --fresh gave up on: submitted (paid for), never answered
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)  # async: row → its last task, if not final
    repairs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # row → its repair steps, if not final
    released: int = 0  # failure records dropped by retry-failed: their rows are pending again
    ends: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # record file → (size, CRC-32, lines)

    def note_task(self, row: int, entry: dict[str, Any]) -> None:
        """A tasks.jsonl entry of a row without a final record: the task it holds (polled, not submitted again),
        or none (cleared by retry-failed: the row is submitted afresh)."""
        if isinstance(entry.get("task_id"), str):
            self.tasks[row] = entry
        else:
            self.tasks.pop(row, None)

    def note_repair(self, row: int, entry: dict[str, Any]) -> None:
        """A repairs.jsonl entry of a row without a final record: one more step (a resumed run asks its next
        question, not its first), or cleared by retry-failed."""
        if entry.get("cleared"):
            self.repairs.pop(row, None)
        else:
            self.repairs.setdefault(row, []).append(entry)


def read_state(run_dir: Path, *, repair: bool = True) -> ResumeState:
    """What is done, from whole records only. usage.json's totals stand where its CRC shows the records it
    counted are as written; one of an older version (sizes, no CRC) stands if every line it covers is whole
    and as many as it counts rows; else they are recounted. Damaged and repeated lines are set aside."""
    state = ResumeState()
    previous = read_json(run_dir / USAGE)
    # an older version's totals lack the count of async tasks submitted: only a run that polled can have any, so
    # only such a run's totals are recounted (a recount reads every record: a 1M-row resume's time, many times over)
    stale = previous is not None and "tasks" not in previous and bool(previous.get("polls"))
    trusted = None if stale else trusted_offsets(run_dir, previous, ROW_COUNTERS)
    checkpoint = (previous or {}).get("checkpoint")
    kept_crc = isinstance(checkpoint, dict) and CRC_KEY in checkpoint
    covers = None if stale else trusted or (None if kept_crc else _legacy_covers(run_dir, checkpoint))
    if covers is not None and previous is not None:
        state.previous = previous
        state.usage = Usage.from_totals(previous)
    elif previous is not None:
        state.previous = {k: previous[k] for k in ("started_at", "active_s") if k in previous}
        if kept_crc and not stale:
            state.notes.append(f"{USAGE} did not match the records it counted: recounted from the records")
    reader = RecordReader(run_dir, state.done)
    within = dict.fromkeys(RECORD_FILES, 0)  # whole records inside what usage.json counted
    for name in RECORD_FILES:
        covered = covers[name] if covers else 0
        upto = trusted[name] if trusted else 0
        known = int(checkpoint[CRC_KEY][name]) if trusted and isinstance(checkpoint, dict) else 0  # it matched
        for found in reader.entries(name, trusted=upto, digest=True, trusted_crc=known, quiet_trusted=True):
            if found.offset >= covered:
                state.usage.add(found.parsed())
            else:  # a legacy usage.json's region: counted to check its totals
                within[name] += 1
        end, crc, lines = reader.ends[name]
        state.ends[name] = (end, crc, lines)
        state.repaired_lines += _cut_tail(run_dir / name, end)
    if reader.damage and repair:
        notes = reader.warnings()
        dest = _set_damaged_aside(run_dir, reader)
        notes.append(
            f"moved {plural(len(reader.damage), 'record line')} that count for nothing to {dest}; rows left "
            "without a whole record are sent again"
        )
        state = read_state(run_dir)
        state.notes[:0] = notes
        return state
    legacy = covers is not None and previous is not None and trusted is None
    if legacy and any(within[n] != count((previous or {}).get(c)) for n, c in ROW_COUNTERS.items()):
        covers, state.usage = None, Usage()  # its totals disagree with the records: recount them
        state.previous = {k: v for k, v in (previous or {}).items() if k in ("started_at", "active_s")}
        recount = RecordReader(run_dir)
        for name in RECORD_FILES:
            for found in recount.entries(name):
                state.usage.add(found.parsed())
    if covers is None:
        fold_set_aside(run_dir, state.usage)
    for row, entry in _side_entries(run_dir / TASKS, state):
        state.note_task(row, entry)
    for row, entry in _side_entries(run_dir / REPAIRS, state):
        state.note_repair(row, entry)
    return state


def _cut_tail(path: Path, end: int) -> int:
    """Cut a record file back to its last complete line (a write torn by a crash); 1 if there was a tail."""
    if not path.exists() or path.stat().st_size <= end:
        return 0
    try:
        os.truncate(path, end)
    except OSError as exc:
        raise CheckpointWriteError(write_error(path, exc)) from None
    return 1


def _set_damaged_aside(run_dir: Path, reader: RecordReader) -> Path:
    """Rewrite each record file with its whole records only (the first of each row), the lines taken out kept
    in previous/damaged-<time>/; usage.json is told to recount. Each step leaves a directory a resume reads."""
    dest = run_dir / PREVIOUS / f"{DAMAGED}{now_iso().replace(':', '-')}"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name in sorted({d.name for d in reader.damage}):
            path = run_dir / name
            taken = [d for d in reader.damage if d.name == name]
            with open(path, "rb") as f:
                atomic_write(dest / name, b"".join(os.pread(f.fileno(), d.length, d.offset) for d in taken))
            kept = RecordReader(run_dir)
            for earlier in RECORD_FILES[: RECORD_FILES.index(name)]:  # a row's first record may be in there
                for _ in kept.entries(earlier):
                    pass
            atomic_write(path, b"".join(entry.line for entry in kept.entries(name)))
        usage = read_json(run_dir / USAGE)
        if usage is not None:
            usage.pop("checkpoint", None)  # totals no longer match the records: recount them
            atomic_write(run_dir / USAGE, orjson.dumps(usage, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise CheckpointWriteError(write_error(dest, exc)) from None
    return dest


def _side_entries(path: Path, state: ResumeState) -> Iterator[tuple[int, dict[str, Any]]]:
    """The entries of a side file (`{"row": N, ...}` a line) whose rows hold no final record yet; a torn tail
    is cut off, and an entry glued after a torn one is read all the same."""
    if not path.exists():
        return
    with open(path, "r+b") as f:
        offset = 0
        for line in f:
            if not line.endswith(b"\n"):
                f.truncate(offset)
                state.repaired_lines += 1
                break
            offset += len(line)
            found = whole(line)
            if found is None and (glued := salvage(line)) is not None:
                found = glued[1:]
            if found is not None and found[0] not in state.done:
                yield found


def _legacy_covers(run_dir: Path, checkpoint: Any) -> dict[str, int] | None:
    """The sizes an older version's usage.json says its totals cover, when each is inside its file."""
    if not isinstance(checkpoint, dict):
        return None
    out = {}
    for name in RECORD_FILES:
        size = checkpoint.get(name)
        path = run_dir / name
        if type(size) is not int or size > (path.stat().st_size if path.exists() else 0):
            return None
        out[name] = size
    return out
