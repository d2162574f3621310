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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..errors import RunDirError
from ..spec.model import InputSpec
from ..spec.presets import batch_cache_share, batch_share
from .recordfile import LINES_KEY, Entry, RecordReader, trusted_offsets

RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"
RECORD_FILES = (RESULTS, FAILURES)
ROW_COUNTERS = {RESULTS: "rows_succeeded", FAILURES: "rows_failed"}  # usage.json's count of each file's lines
TASKS = "tasks.jsonl"
REPAIRS = "repairs.jsonl"  # structured output: every answer that did not fit the schema, and how it is repaired
BATCHES = "batches.jsonl"  # the batch lane: each shard's story (see shards.py)
SHARDS = "shards"  # the batch lane: the files uploaded to the provider's Batch API, and their row sidecars
USAGE = "usage.json"
MANIFEST = "manifest.json"
LOCK = "run.lock"
PREVIOUS = "previous"
RETRIED = "retried-"  # previous/retried-<time>/failures.jsonl: failure records retry-failed set aside
DAMAGED = "damaged-"  # previous/damaged-<time>/<file>: record lines that were not whole, or repeated a row


# A fingerprint's entries (engine.job.fingerprint) in the spec's words, for the message that a run directory holds
# another job; input_mapping, params and output are digests: which of their keys changed is read from the jobs the
# manifests describe.
FINGERPRINT_WORDS = {
    "input": "the input file's rows",
    "input_bytes": "the input file's rows",
    "input_mapping": "input.template / input.*_field / input.system",
    "tasks": "provider.mode",
    "lane": "provider.mode",
}
DIGESTED: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "input_mapping": ("input", None),
    "params": ("params", None),
    "output": ("output", ("schema", "name", "ask")),
}


def changed_keys(changed: Sequence[str], held: Mapping[str, Any], job: Mapping[str, Any]) -> list[str]:
    """The spec's keys behind the fingerprint entries that `changed` between the job a run directory `held` and
    this `job` (each as the manifest describes it): `input.template`, `params.temperature`, never `input_mapping`."""
    named: list[str] = []
    for entry in changed:
        keys: list[str] = []
        if entry in DIGESTED:
            section, only = DIGESTED[entry]
            old, new = held.get(section), job.get(section)
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                keys = [
                    f"{section}.{k}"
                    for k in sorted(set(old) | set(new), key=str)
                    if k != "path" and (only is None or k in only) and old.get(k) != new.get(k)
                ]
        for key in keys or [FINGERPRINT_WORDS.get(entry, entry)]:
            if key not in named:
                named.append(key)
    return named


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
            what = f"its {MANIFEST} is damaged" if (self.path / MANIFEST).exists() else f"no {MANIFEST}"
            raise RunDirError(
                f"{self.path} is not a batchrun run directory ({what}): pass the folder that "
                f"holds {RESULTS}, e.g. runs/<job name>"
            )
        self.manifest = manifest
        self.job: dict[str, Any] = manifest.get("job") or {}
        self.reader = RecordReader(self.path)  # what the record files held, as read so far
        self._saved: dict[str, Any] | None = None
        self._trusted: dict[str, int] | bool | None = False

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
        provider = self.job.get("provider") or {}
        override = provider.get("batch_price_share")
        return batch_share(str(provider.get("name")), override if isinstance(override, (int, float)) else None)

    @property
    def batch_cache_share(self) -> float | None:
        """A prompt-cache hit through the run's provider's Batch API, as a share of its batch input price."""
        return batch_cache_share(str((self.job.get("provider") or {}).get("name")))

    @property
    def spec_path(self) -> str | None:
        path = self.job.get("spec")
        return str(path) if path else None

    def usage(self) -> dict[str, Any]:
        """usage.json as it was when first asked for (a live run rewrites it every second)."""
        if self._saved is None:
            self._saved = read_json(self.path / USAGE) or {}
        return self._saved

    def trusted(self) -> dict[str, int] | None:
        """How far into each record file usage.json's totals hold, unread (None: recount from the records)."""
        if self._trusted is False:
            self._trusted = trusted_offsets(self.path, self.usage() or None, ROW_COUNTERS)
        return self._trusted if isinstance(self._trusted, dict) else None

    def entries(self, names: tuple[str, ...] = RECORD_FILES, *, from_covered: bool = False) -> Iterator[Entry]:
        """Each row's record that counts (the first whole one, results.jsonl before failures.jsonl); damaged and
        repeated lines end up in `self.reader.damage`. `from_covered`: only those past what usage.json counts."""
        trusted = self.trusted() or {}
        lines = (self.usage().get("checkpoint") or {}).get(LINES_KEY) or {}
        for name in RECORD_FILES:
            covered = trusted.get(name, 0)
            if from_covered:
                first = lines.get(name, 0) if name in trusted else 0
                found = self.reader.entries(name, trusted=covered, start=covered, start_line=first)
            else:
                found = self.reader.entries(name, trusted=covered)
            if name in names:
                yield from found
            else:
                for _ in found:  # its rows are taken: a later file's record of one of them does not count
                    pass

    def warnings(self) -> list[str]:
        return self.reader.warnings()

    def input_spec(self) -> InputSpec:
        """The input as the job read it (the manifest records every field of the spec's input)."""
        recorded = self.job.get("input") or {}
        known = set(InputSpec.model_fields)
        values = {k: v for k, v in recorded.items() if k in known and v is not None}
        return InputSpec(
            **{**values, "path": Path(str(recorded.get("path"))), "format": str(recorded.get("format") or "jsonl")}
        )
