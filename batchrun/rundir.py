"""The run directory as readers see it: its files, its states, and one reader for report, status, export and
retry-failed. `checkpoint.Checkpoint` is the one writer; nothing here writes or takes the lock for long.

    results.jsonl / failures.jsonl   final records (see `records`)
    tasks.jsonl                      async mode: every task id, fsync'd before anything waits on it
    repairs.jsonl                    structured output: answers that did not fit, so a resumed repair goes on
    usage.json                       totals, and how far into each record file they reach
    manifest.json                    the job, its fingerprint and the run's state
    run.lock                         held while a `submit` runs
"""

from __future__ import annotations

import enum
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol

import orjson

from .errors import RunDirError
from .presets import batch_share
from .spec import InputSpec

RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"
RECORD_FILES = (RESULTS, FAILURES)
TASKS = "tasks.jsonl"
REPAIRS = "repairs.jsonl"  # structured output: every answer that did not fit the schema, and how it is repaired
BATCHES = "batches.jsonl"  # the batch lane: each shard's story (see shards.py)
SHARDS = "shards"  # the batch lane: the files uploaded to the provider's Batch API, and their row sidecars
USAGE = "usage.json"
MANIFEST = "manifest.json"
LOCK = "run.lock"
PREVIOUS = "previous"
RETRIED = "retried-"  # previous/retried-<time>/failures.jsonl: failure records retry-failed set aside


class RunState(str, enum.Enum):
    """A run's state in manifest.json and usage.json (`died` only as readers see a killed run)."""

    RUNNING = "running"
    FINISHED = "finished"
    FINISHED_WITH_FAILURES = "finished_with_failures"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"
    DIED = "died"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in (RunState.FINISHED, RunState.FINISHED_WITH_FAILURES)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def complete_lines(path: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every complete line from `start`, read-only: a line still being written (no newline
    yet) is left for next time. For readers beside a live run (report, status, export)."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        for line in f:
            if not line.endswith(b"\n"):
                return
            yield offset, line
            offset += len(line)


def covered_offsets(run_dir: Path, saved: Mapping[str, Any] | None) -> dict[str, int] | None:
    """How far into each record file usage.json's totals reach, or None when they cannot be trusted.

    usage.json is written after an fsync of the records, so it must cover no more than what is on disk;
    if it claims more (or says nothing), its totals are recounted from the records."""
    if saved is None:
        return None
    covers = saved.get("checkpoint") or {}
    out = {}
    for name in RECORD_FILES:
        path = run_dir / name
        size = path.stat().st_size if path.exists() else 0
        if not isinstance(covers.get(name), int) or covers[name] > size:
            return None
        out[name] = int(covers[name])
    return out


def set_aside(run_dir: Path) -> list[Path]:
    """The failure records retry-failed set aside: their rows were sent again, but what they were billed
    stays in the run's usage."""
    return sorted((run_dir / PREVIOUS).glob(f"{RETRIED}*/{FAILURES}"))


class Tally(Protocol):
    def add(self, record: Mapping[str, Any], *, rows: bool = True) -> None: ...


def fold_set_aside(run_dir: Path, usage: Tally) -> None:
    """Add what the set-aside failure records were billed to `usage`, their rows not counted."""
    for path in set_aside(run_dir):
        for _, line in complete_lines(path):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                usage.add(record, rows=False)


def is_live(path: Path) -> bool:
    """Whether a batchrun process holds the run directory's lock (checked without taking it for long)."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we got
    return False


class RunDir:
    """One run directory opened for reading; refuses a folder that is not one, saying what to pass instead."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if (self.path / MANIFEST).is_dir() or not self.path.is_dir():
            what = "no such folder" if not self.path.exists() else "not a folder"
            raise RunDirError(
                f"{self.path} is not a batchrun run directory ({what}): pass the folder that holds "
                f"{RESULTS}, e.g. runs/<job name>"
            )
        manifest = read_json(self.path / MANIFEST)
        if manifest is None:
            raise RunDirError(
                f"{self.path} is not a batchrun run directory (no {MANIFEST}): pass the folder that "
                f"holds {RESULTS}, e.g. runs/<job name>"
            )
        self.manifest = manifest
        self.job: dict[str, Any] = manifest.get("job") or {}

    @property
    def live(self) -> bool:
        return is_live(self.path)

    @property
    def state(self) -> str:
        """The recorded state; `died` for a run that says it is running while no process holds it."""
        state = str(self.manifest.get("state") or "unknown")
        return RunState.DIED.value if state == RunState.RUNNING.value and not self.live else state

    @property
    def batch_share(self) -> float:
        """The run's provider's Batch API price as a share of its online price (1 without a Batch API)."""
        return batch_share(str((self.job.get("provider") or {}).get("name")))

    @property
    def spec_path(self) -> str | None:
        path = self.job.get("spec")
        return str(path) if path else None

    def usage(self) -> dict[str, Any]:
        return read_json(self.path / USAGE) or {}

    def input_spec(self) -> InputSpec:
        """The input as the job read it (the manifest records every field of the spec's input)."""
        recorded = self.job.get("input") or {}
        known = {f.name for f in fields(InputSpec)}
        values = {k: v for k, v in recorded.items() if k in known and v is not None}
        return InputSpec(
            **{**values, "path": Path(str(recorded.get("path"))), "format": str(recorded.get("format") or "jsonl")}
        )

    def lines(self, name: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
        return complete_lines(self.path / name, start)
