"""The run directory: append-only record files, an atomic usage.json and manifest, and a lock.

Each record is written with one os.write as soon as its row is final, so a killed process loses at most
the rows in flight. Records start with `{"row":N,` so resuming a million-row run reads row numbers
without parsing whole lines; a torn last line (crash mid-write) is cut off before appending again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import CheckpointWriteError, RunDirError
from .records import Record, encode, now_iso, record_row
from .rundir import (
    BATCHES,
    FAILURES,
    LOCK,
    MANIFEST,
    PREVIOUS,
    RECORD_FILES,
    REPAIRS,
    RESULTS,
    RETRIED,
    SHARDS,
    TASKS,
    USAGE,
    covered_offsets,
    fold_set_aside,
    read_json,
)
from .usage import Usage

REDACTED = b"[redacted]"
MIN_SECRET_LEN = 8


class DoneRows:
    """Which rows hold a final record: one byte per row, so a million rows cost a megabyte."""

    def __init__(self) -> None:
        self._flags = bytearray()
        self.count = 0

    def add(self, row: int) -> None:
        if row < 0:
            return
        if row >= len(self._flags):
            self._flags.extend(bytes(row + 1 - len(self._flags) + 4096))
        if not self._flags[row]:
            self._flags[row] = 1
            self.count += 1

    def __contains__(self, row: int) -> bool:
        return 0 <= row < len(self._flags) and self._flags[row] == 1

    def count_upto(self, row: int) -> int:
        """How many rows up to and including `row` are done."""
        return self._flags.count(1, 0, row + 1)


@dataclass
class ResumeState:
    done: DoneRows = field(default_factory=DoneRows)
    usage: Usage = field(default_factory=Usage)
    previous: dict[str, Any] = field(default_factory=dict)  # the last usage.json, if any
    repaired_lines: int = 0  # torn tails cut off
    unreadable_lines: int = 0  # complete lines that are not records (ignored: their rows are sent again)
    archived_to: Path | None = None  # where --fresh moved an earlier run's files
    abandoned_tasks: int = 0  # async tasks --fresh gave up on: submitted (paid for), never answered
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)  # async: row → its last task, if not final
    repairs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # row → its repair steps, if not final
    released: int = 0  # failure records dropped by retry-failed: their rows are pending again

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


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _scan(path: Path, covered: int, state: ResumeState, fold: bool) -> int:
    """Mark the rows recorded in one record file; fold lines past `covered` into usage. Returns its size."""
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        offset = 0
        for line in f:
            if not line.endswith(b"\n"):  # torn tail: the process died mid-write
                f.truncate(offset)
                state.repaired_lines += 1
                break
            row = record_row(line)
            if row is None:
                state.unreadable_lines += 1
            else:
                state.done.add(row)
                if fold or offset >= covered:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        state.usage.add(orjson.loads(line))
            offset += len(line)
        return offset


class Checkpoint:
    """Owns one run directory for the length of a run."""

    def __init__(self, path: Path, secrets: Sequence[str] = ()) -> None:
        self.path = path
        # A key shorter than this is a placeholder (vLLM's "x"): replacing it would corrupt the records.
        self.secrets = [s.encode() for s in secrets if len(s) >= MIN_SECRET_LEN]
        self._lock_fd: int | None = None
        self._fds: dict[str, int] = {}
        self.sizes: dict[str, int] = {RESULTS: 0, FAILURES: 0}
        self._dirty = False
        self.manifest: dict[str, Any] = {}
        self._task_writes = self._task_synced = 0
        self._task_sync: asyncio.Future[None] | None = None

    # --- opening -------------------------------------------------------------------------------------

    def open(
        self,
        fingerprint: Mapping[str, str],
        job: Mapping[str, Any],
        *,
        fresh: bool,
        retry: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> ResumeState:
        """Lock the directory, check it holds this job, repair torn tails and read what is done.

        `retry` picks failure records to drop first, so that their rows are sent again (retry-failed)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if self.path.exists() and not self.path.is_dir():
                raise RunDirError(
                    f"{self.path} is a file, where the run directory should be: move it, or set output_dir to a folder"
                ) from None
            raise RunDirError(f"cannot create the run directory {self.path}: {exc.strerror}") from None
        self._lock()
        try:
            return self._open_locked(fingerprint, job, fresh, retry)
        except BaseException:
            self.close()
            raise

    def _open_locked(
        self,
        fingerprint: Mapping[str, str],
        job: Mapping[str, Any],
        fresh: bool,
        retry: Callable[[Mapping[str, Any]], bool] | None,
    ) -> ResumeState:
        manifest = read_json(self.path / MANIFEST)
        archived, abandoned = None, 0
        if manifest is not None and fresh:
            abandoned = len(self._read_state().tasks) if (self.path / TASKS).exists() else 0
            archived = self._archive()
            manifest = None
        if manifest is not None:
            self._check_fingerprint(manifest.get("fingerprint") or {}, fingerprint)
        released = self._release_failures(retry) if retry is not None else 0
        state = self._read_state()
        state.archived_to, state.released, state.abandoned_tasks = archived, released, abandoned
        self.write_manifest(
            {
                "batchrun": "run",
                "job": dict(job),
                "fingerprint": dict(fingerprint),
                "created_at": (manifest or {}).get("created_at") or now_iso(),
                "state": "running",
                "pid": os.getpid(),
                "updated_at": now_iso(),
                "ids_checked": bool((manifest or {}).get("ids_checked")),  # repeated ids have their failure records
            }
        )
        for name in RECORD_FILES:
            self._fds[name] = os.open(self.path / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return state

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(
                f"{self.path} is in use by another batchrun (pid {holder}): wait for it to finish "
                "or stop it; two runs on one directory would send rows twice"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _check_fingerprint(self, old: Mapping[str, Any], new: Mapping[str, str]) -> None:
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if changed:
            raise RunDirError(
                f"{self.path} holds a run of a different job ({', '.join(changed)} changed since it started): "
                "rerun with --fresh to start over (the earlier records are moved aside, not deleted), or set "
                "output_dir to a new folder"
            )

    def _archive(self) -> Path | None:
        names = [
            n for n in (RESULTS, FAILURES, TASKS, REPAIRS, BATCHES, SHARDS, USAGE, MANIFEST) if (self.path / n).exists()
        ]
        if not names:
            return None
        dest = self.path / PREVIOUS / now_iso().replace(":", "-")
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.move(str(self.path / name), str(dest / name))
        return dest

    def _release_failures(self, pick: Callable[[Mapping[str, Any]], bool]) -> int:
        """Drop the picked failure records so their rows count as pending, keeping a copy in previous/.

        Each step leaves a consistent directory: the copy first, then failures.jsonl replaced atomically, then
        usage.json told to recount, then any async task of those rows marked as not to be polled again."""
        path = self.path / FAILURES
        if not path.exists():
            return 0
        keep, released, rows = [], [], []
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    keep.append(line)
                    continue
                if isinstance(record, dict) and isinstance(record.get("row"), int) and pick(record):
                    released.append(line)
                    rows.append(record["row"])
                else:
                    keep.append(line)
        if not released:
            return 0
        try:
            dest = self.path / PREVIOUS / f"{RETRIED}{now_iso().replace(':', '-')}"
            dest.mkdir(parents=True, exist_ok=True)
            atomic_write(dest / FAILURES, b"".join(released))
            atomic_write(path, b"".join(keep))
            usage = read_json(self.path / USAGE)
            if usage is not None:
                usage.pop("checkpoint", None)  # totals no longer match the records: recount them
                atomic_write(self.path / USAGE, orjson.dumps(usage, option=orjson.OPT_INDENT_2))
            for side in (TASKS, REPAIRS):  # the rows start afresh: no task to poll, no repair to go on with
                if (self.path / side).exists():
                    with open(self.path / side, "ab") as f:
                        f.write(
                            b"".join(
                                orjson.dumps({"row": r, "task_id": None, "cleared": "retry-failed"}) + b"\n"
                                for r in rows
                            )
                        )
                        os.fsync(f.fileno())
        except OSError as exc:
            raise CheckpointWriteError(_write_error(path, exc)) from None
        return len(released)

    def _read_state(self) -> ResumeState:
        state = ResumeState()
        previous = read_json(self.path / USAGE)
        covers = covered_offsets(self.path, previous)
        if covers is not None and previous is not None:
            state.previous = previous
            state.usage = Usage.from_totals(previous)
        elif previous is not None:
            state.previous = {k: previous[k] for k in ("started_at", "active_s") if k in previous}
        for name in RECORD_FILES:
            self.sizes[name] = _scan(self.path / name, covers[name] if covers else 0, state, fold=covers is None)
        if covers is None:
            fold_set_aside(self.path, state.usage)
        for row, entry in self._side_entries(TASKS, state):
            state.note_task(row, entry)
        for row, entry in self._side_entries(REPAIRS, state):
            state.note_repair(row, entry)
        return state

    def _side_entries(self, name: str, state: ResumeState) -> Iterator[tuple[int, dict[str, Any]]]:
        """The entries of a side file (`{"row": N, ...}` a line) whose rows hold no final record yet; a torn tail
        is cut off."""
        path = self.path / name
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
                row = record_row(line)
                if row is None or row in state.done:
                    continue
                with contextlib.suppress(orjson.JSONDecodeError):
                    entry = orjson.loads(line)
                    if isinstance(entry, dict):
                        yield row, entry

    # --- writing -------------------------------------------------------------------------------------

    def append(self, record: Record, *, failed: bool) -> None:
        """Write one final record for a row; it is on disk (page cache) when this returns."""
        self.append_line(encode(record), failed=failed)

    def append_line(self, line: bytes, *, failed: bool) -> None:
        """A final record already encoded (by a worker of a scaled-out run)."""
        name = FAILURES if failed else RESULTS
        self.sizes[name] += self._write(name, line)
        self._dirty = True

    def append_side(self, name: str, line: bytes) -> None:
        """A tasks.jsonl or repairs.jsonl line already encoded (by a worker of a scaled-out run)."""
        self._open_side(name)
        self._write(name, line)
        self._dirty = True

    def _open_side(self, name: str) -> int:
        """A file only some lanes write (tasks.jsonl, batches.jsonl), opened for appending on first use."""
        if name not in self._fds:
            try:
                self._fds[name] = os.open(self.path / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise CheckpointWriteError(_write_error(self.path / name, exc)) from None
        return self._fds[name]

    def append_task(self, entry: Mapping[str, Any]) -> None:
        """Note a submitted task (`{"row": N, "task_id": ...}`); `tasks_durable` makes it survive a power cut."""
        self._open_side(TASKS)
        self._write(TASKS, orjson.dumps(entry) + b"\n")
        self._task_writes += 1

    def append_repair(self, entry: Mapping[str, Any]) -> None:
        """Note an answer that did not fit the schema and the repair asked for it (`{"row": N, ...}`); made durable
        with the records, once a second."""
        self._open_side(REPAIRS)
        self._write(REPAIRS, orjson.dumps(entry) + b"\n")
        self._dirty = True

    def append_batch_event(self, event: Mapping[str, Any]) -> None:
        """One event of a shard's story (batches.jsonl), fsynced before the run acts on it: a file id or batch id
        that reached the disk is never uploaded or created again."""
        fd = self._open_side(BATCHES)
        self._write(BATCHES, orjson.dumps(event) + b"\n")
        try:
            os.fsync(fd)
        except OSError as exc:
            raise CheckpointWriteError(_write_error(self.path / BATCHES, exc)) from None

    async def tasks_durable(self) -> None:
        """Return once every task line written so far is fsync'd: one fdatasync serves all who wait (group
        commit), so thousands of submissions a minute cost a few syncs a second."""
        target = self._task_writes
        while self._task_synced < target:
            if self._task_sync is None:
                self._task_sync = asyncio.ensure_future(self._sync_tasks())
            await asyncio.shield(self._task_sync)

    async def _sync_tasks(self) -> None:
        upto = self._task_writes
        try:
            await asyncio.to_thread(os.fdatasync, self._fds[TASKS])
        except OSError as exc:
            raise CheckpointWriteError(_write_error(self.path / TASKS, exc)) from None
        finally:
            self._task_sync = None
        self._task_synced = max(self._task_synced, upto)

    def redact(self, line: bytes) -> bytes:
        """A line with every key of the run blanked out: no key reaches a file, whoever wrote the line."""
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line

    def _write(self, name: str, line: bytes) -> int:
        line = self.redact(line)
        fd = self._fds[name]
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise CheckpointWriteError(_write_error(self.path / name, exc)) from None
        return len(line)

    def write_usage(self, data: dict[str, Any]) -> None:
        """Make the records durable, then write usage.json saying how much of them it covers."""
        try:
            if self._dirty:
                for fd in self._fds.values():
                    os.fsync(fd)
                self._dirty = False
            data["checkpoint"] = dict(self.sizes)
            atomic_write(self.path / USAGE, orjson.dumps(data, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise CheckpointWriteError(_write_error(self.path / USAGE, exc)) from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        try:
            atomic_write(self.path / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise CheckpointWriteError(_write_error(self.path / MANIFEST, exc)) from None
        self.manifest = manifest

    def set_state(self, state: str, **extra: Any) -> None:
        self.note(state=state, **extra)

    def note(self, **facts: Any) -> None:
        """Record facts about the run in its manifest (its state, why it stopped, that ids were checked)."""
        self.write_manifest({**self.manifest, "updated_at": now_iso(), **facts})

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)
        self._fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _write_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"the disk is full writing {path}: free some space, then run the same command again to "
            "resume (rows already recorded are kept)"
        )
    return f"cannot write {path}: {exc.strerror}; fix that, then run the same command again to resume"
