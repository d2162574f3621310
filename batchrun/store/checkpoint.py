"""The run directory: append-only record files, an atomic usage.json and manifest, and a lock.

Each record is written with one os.write as soon as its row is final, so a killed process loses at most
the rows in flight; a write cut part-way (a full disk) is cut back off, so the next line never lands on a torn
one. usage.json keeps each record file's size, CRC-32 and lines as written, so that a resume (`resume`) can
trust the totals without parsing a million records. What a resume finds done is read in `resume`; this module
only writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..errors import BatchrunError, CheckpointWriteError, RunDirError
from ..records import Record, encode, now_iso
from ..text.redaction import MIN_SECRET_LEN, redact
from .durable import atomic_write, unwritable_dir, write_error
from .recordfile import CRC_KEY, LINES_KEY
from .rerun import Rerun
from .resume import ResumeState, read_state
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
    changed_keys,
    read_json,
)

RUN_FILES = (RESULTS, FAILURES, TASKS, REPAIRS, BATCHES, SHARDS, USAGE, MANIFEST)  # what --fresh moves aside


class Checkpoint:
    """Owns one run directory for the length of a run."""

    def __init__(self, path: Path, secrets: Sequence[str] = ()) -> None:
        self.path = path
        # A key shorter than this is a placeholder (vLLM's "x"): replacing it would corrupt the records.
        self.secrets = [s.encode() for s in secrets if len(s) >= MIN_SECRET_LEN]
        self._lock_fd: int | None = None
        self._fds: dict[str, int] = {}
        self.sizes: dict[str, int] = {RESULTS: 0, FAILURES: 0}
        self.crcs: dict[str, int] = {RESULTS: 0, FAILURES: 0}  # CRC-32 of each record file's bytes, in usage.json
        self.lines: dict[str, int] = {RESULTS: 0, FAILURES: 0}
        self._ends: dict[str, int] = {}  # each open file's size after its last whole line
        self._torn: set[str] = set()  # files whose cut-back after a failed write failed too
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
        rows: int | None = None,
        rerun: Rerun | None = None,
    ) -> ResumeState:
        """Lock the directory, check it holds this job, repair torn tails and read what is done. `rows`: the
        input's, kept in the manifest for readers when usage.json is not there yet. `rerun`: what runs this
        directory again, kept in the manifest for `status` and named by a refusal that wants --fresh.

        `retry` picks failure records to drop first, so that their rows are sent again (retry-failed)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if self.path.exists() and not self.path.is_dir():
                raise RunDirError(
                    f"{self.path} is a file, where the run directory should be: move it, or set output_dir to a folder"
                ) from None
            raise RunDirError(f"cannot create the run directory {self.path}: {exc.strerror}") from None
        try:
            self._lock()
        except OSError as exc:
            raise _open_error(self.path, exc) from None
        try:
            return self._open_locked(fingerprint, job, fresh, retry, rows, rerun)
        except OSError as exc:
            self.close()
            raise _open_error(self.path, exc) from None
        except BaseException:
            self.close()
            raise

    def _open_locked(
        self,
        fingerprint: Mapping[str, str],
        job: Mapping[str, Any],
        fresh: bool,
        retry: Callable[[Mapping[str, Any]], bool] | None,
        rows: int | None,
        rerun: Rerun | None,
    ) -> ResumeState:
        manifest = read_json(self.path / MANIFEST)
        held = [n for n in RUN_FILES if n != MANIFEST and _holds(self.path / n)]
        archived, abandoned = None, 0
        if fresh and (manifest is not None or held):
            abandoned = len(read_state(self.path, repair=False).tasks) if (self.path / TASKS).exists() else 0
            archived = self._archive()
            manifest, held = None, []
        if manifest is not None:
            self._check_fingerprint(manifest, fingerprint, job, rerun)
        elif held:  # records without the job they belong to: never taken as this job's
            what = "is damaged (not a JSON object)" if (self.path / MANIFEST).exists() else "is missing"
            raise RunDirError(
                f"{self.path / MANIFEST} {what}, but the folder holds a run's files ({', '.join(held)}): it cannot "
                f"tell whether they are this job's; {start_over(rerun)} to start over (they are moved aside, not "
                "deleted), or set output_dir to a new folder"
            )
        released = self._release_failures(retry) if retry is not None else 0
        state = read_state(self.path)
        for name, (end, crc, lines) in state.ends.items():
            self.sizes[name], self.crcs[name], self.lines[name] = end, crc, lines
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
                **({"rows_total": rows} if rows is not None else {}),
                **({"rerun": rerun.facts()} if rerun is not None else {}),
            }
        )
        for name in RECORD_FILES:
            self._open_append(name)
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

    def _check_fingerprint(
        self, manifest: Mapping[str, Any], new: Mapping[str, str], job: Mapping[str, Any], rerun: Rerun | None
    ) -> None:
        old = manifest.get("fingerprint") or {}
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if changed:
            held = manifest.get("job")
            named = changed_keys(changed, held if isinstance(held, Mapping) else {}, job)
            cached = ""
            if _cache_mode(manifest.get("job")) in WRITES and _cache_mode(job) in READS:
                cached = (
                    "; the rows whose request did not change are answered from the response cache at no cost, "
                    f"unless {rerun.no_cache if rerun is not None else '--no-cache'}"
                )
            raise RunDirError(
                f"{self.path} holds a run of a different job ({', '.join(named)} changed since it started): "
                f"{start_over(rerun)} to start over (the earlier records are moved aside, not deleted{cached}), "
                "or set output_dir to a new folder"
            )

    def _archive(self) -> Path | None:
        names = [n for n in RUN_FILES if (self.path / n).exists()]
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
            raise CheckpointWriteError(write_error(path, exc)) from None
        return len(released)

    # --- writing -------------------------------------------------------------------------------------

    def append(self, record: Record, *, failed: bool) -> None:
        """Write one final record for a row; it is on disk (page cache) when this returns."""
        self.append_line(encode(record), failed=failed)

    def append_line(self, line: bytes, *, failed: bool) -> None:
        """A final record already encoded (by a worker of a scaled-out run)."""
        name = FAILURES if failed else RESULTS
        line = self._write(name, line)
        self.sizes[name] += len(line)
        self.crcs[name] = zlib.crc32(line, self.crcs[name])
        self.lines[name] += 1
        self._dirty = True

    def append_side(self, name: str, line: bytes) -> None:
        """A tasks.jsonl or repairs.jsonl line already encoded (by a worker of a scaled-out run)."""
        self._open_side(name)
        self._write(name, line)
        self._dirty = True

    def _open_side(self, name: str) -> int:
        """A file only some lanes write (tasks.jsonl, batches.jsonl), opened for appending on first use (a torn
        last line, which a reader would glue to the next, cut off first)."""
        if name not in self._fds:
            self._open_append(name)
        return self._fds[name]

    def _open_append(self, name: str) -> None:
        path = self.path / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            end = _last_line_end(fd)
            if end < os.fstat(fd).st_size:
                os.ftruncate(fd, end)
        except OSError as exc:
            raise CheckpointWriteError(write_error(path, exc)) from None
        self._fds[name], self._ends[name] = fd, end

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
            raise CheckpointWriteError(write_error(self.path / BATCHES, exc)) from None

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
            raise CheckpointWriteError(write_error(self.path / TASKS, exc)) from None
        finally:
            self._task_sync = None
        self._task_synced = max(self._task_synced, upto)

    def redact(self, line: bytes) -> bytes:
        """A line with every key of the run blanked out: no key reaches a file, whoever wrote the line (the response
        cache blanks them out of its answers the same way)."""
        return redact(line, self.secrets)

    def _write(self, name: str, line: bytes) -> bytes:
        """Append one whole line, or nothing: a write cut part-way (a full disk) is cut back off the file, so the
        next line never lands on a torn one. Returns the line as written (keys blanked out)."""
        line = self.redact(line)
        fd, end = self._fds[name], self._ends[name]
        try:
            if name in self._torn:  # an earlier cut-back failed: try it again before writing anything
                os.ftruncate(fd, end)
                self._torn.discard(name)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            try:
                os.ftruncate(fd, end)
            except OSError:
                self._torn.add(name)
            raise CheckpointWriteError(write_error(self.path / name, exc)) from None
        self._ends[name] = end + len(line)
        return line

    def write_usage(self, data: dict[str, Any]) -> None:
        """Make the records durable, then write usage.json saying how much of them it covers."""
        try:
            if self._dirty:
                for fd in self._fds.values():
                    os.fsync(fd)
                self._dirty = False
            data["checkpoint"] = {**self.sizes, CRC_KEY: dict(self.crcs), LINES_KEY: dict(self.lines)}
            atomic_write(self.path / USAGE, self.redact(orjson.dumps(data, option=orjson.OPT_INDENT_2)))
        except OSError as exc:
            raise CheckpointWriteError(write_error(self.path / USAGE, exc)) from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        try:
            # why a run stopped may quote a provider's message, and that may quote the key
            atomic_write(self.path / MANIFEST, self.redact(orjson.dumps(manifest, option=orjson.OPT_INDENT_2)))
        except OSError as exc:
            raise CheckpointWriteError(write_error(self.path / MANIFEST, exc)) from None
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


WRITES, READS = ("read_write", "write"), ("read_write", "read")


def _cache_mode(job: Any) -> str:
    """The response cache's mode a manifest's job ran with (an older batchrun's: the default)."""
    cache = job.get("cache") if isinstance(job, Mapping) else None
    return str(cache.get("mode") or "read_write") if isinstance(cache, Mapping) else "read_write"


def start_over(rerun: Rerun | None) -> str:
    """`rerun with --fresh`, as the command (or call) that starts this very run directory over."""
    return f"rerun with `{rerun.text(fresh=True)}`" if rerun is not None else "rerun with --fresh"


def _holds(path: Path) -> bool:
    """Whether a run file is there with something in it (an empty one holds nothing to lose)."""
    try:
        return path.is_dir() or path.stat().st_size > 0
    except OSError:
        return False


def run_dir_problem(path: Path) -> str | None:
    """Why submit could not make or write the run directory (None: it could), in the words submit uses, found
    without making anything (batchrun validate)."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, where the run directory should be: move it, or set output_dir to a folder"
    why = unwritable_dir(path)
    if why is None:
        return None
    if path.is_dir():
        return (
            f"cannot write to the run directory {path} ({why}): make it writable by this user, or set output_dir "
            "(or --output-dir) to a folder you can write"
        )
    return f"cannot create the run directory {path} ({why}): set output_dir (or --output-dir) to a folder you can write"


def _open_error(path: Path, exc: OSError) -> BatchrunError:
    """An OSError opening the run directory as the one line that says what to fix."""
    if exc.errno == errno.ENOSPC:
        return CheckpointWriteError(write_error(path, exc))
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = "it is on a read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return RunDirError(
            f"cannot write to the run directory {path} ({where}): make it writable by this user, or set "
            "output_dir (or --output-dir) to a folder you can write"
        )
    return CheckpointWriteError(write_error(path, exc))


def _last_line_end(fd: int) -> int:
    """The size of a file up to and including its last newline."""
    size = os.fstat(fd).st_size
    at = size
    while at > 0:
        start = max(0, at - 65536)
        block = os.pread(fd, at - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        at = start
    return 0
