"""A response cache shared across runs: an answer already paid for, in any run directory, is not paid for again.

Each entry is keyed by what decides its answer: the provider's base URL, the endpoint, and the exact request body
sent (model, messages, params), hashed (`request.cache_key`). Only good answers are stored (with structured output,
only answers that fit the schema), under the key of the row's first question, so a re-run, a grown input or a
job with three rows changed asks only what it has not asked before.

SQLite from the standard library, in WAL mode: crash-safe, one file, readers never blocked, several runs may share
it. New entries are written a few hundred at a time, and at least once a second (with the run's usage.json), so a
run never holds the write lock for long; a kill loses at most those entries, never the file. Writing costs about
0.05 ms of CPU a row (an insert among many random keys); reading, 0.013 ms.

The run's API keys never go in (a gateway may echo one in its answer) nor come out (a file an older batchrun wrote
may hold one). A file found damaged, or failing to be read or written, costs one warning and the rest of the run's
lookups: a cache is worth a request, never a run.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from ..errors import SpecError
from ..records import Response
from ..spec.cachespec import CacheSpec
from ..text.redaction import holds, redact, secret_bytes
from .durable import unwritable_dir

# New entries are written this many at a time (and at least once a second): a larger transaction costs SQLite
# tens of megabytes of memory while it lasts (measured: 22 MB for 5,000 entries, 4 MB for 500) and saves no time,
# since entries with random keys land on pages of their own either way. For the same reason SQLite's own page
# cache is kept small (256 KB): lookups are served by the system's file cache as well.
COMMIT_EVERY = 200
OPEN_WAIT_S = 30.0  # how long opening waits for other runs opening (or writing) the same file
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,   -- blake2b-128 of base URL, endpoint and request body
    model TEXT NOT NULL,
    created REAL NOT NULL,  -- epoch seconds
    answer BLOB NOT NULL    -- {"response": {status_code, request_id, body}, "output"?: ...} as JSON
) WITHOUT ROWID
"""
_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


@dataclass(frozen=True)
class Hit:
    response: Response
    output: Any
    has_output: bool


class NotAnAnswer(ValueError):
    """An entry that does not decode as an answer: the file was damaged (or written by something else)."""


class Cache:
    """One run's handle on the cache file.

    `secrets`: the run's API keys, blanked out of every answer going in or coming out. `warn`: how the one line
    saying the cache failed, and that the run goes on without it, is told."""

    def __init__(self, spec: CacheSpec, *, secrets: Iterable[str | None], warn: Callable[[str], None]) -> None:
        self.spec = spec
        self.path = spec.file()
        self.warn = warn
        self.secrets = secret_bytes(secrets)
        self.pending: list[tuple[bytes, str, float, bytes]] = []
        self.hits = self.misses = self.written = 0
        self.db: sqlite3.Connection | None = None  # None: off for the rest of the run (it failed)
        try:
            self.db = _open(self.path)
        except sqlite3.DatabaseError as exc:  # damaged; a path that cannot be used at all is a SpecError
            self._give_up(exc)

    def get(self, key: bytes) -> Hit | None:
        if self.db is None or not self.spec.reads:
            return None
        try:
            row = self.db.execute("SELECT model, created, answer FROM answers WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            model, created, blob = str(row[0]), float(row[1]), bytes(row[2])
            hit = _decode(blob)
        except (sqlite3.Error, TypeError, ValueError) as exc:  # NotAnAnswer too
            self._give_up(exc)
            return None
        if holds(blob, self.secrets):  # stored raw by an older batchrun: handed back, and stored again, without
            blob = redact(blob, self.secrets)
            try:
                hit = _decode(blob)
            except NotAnAnswer:  # the key could not be cut out cleanly: asked again, as if it were not there
                self.misses += 1
                return None
            if self.spec.writes:
                self.pending.append((key, model, created, blob))
        self.hits += 1
        return hit

    def put(self, key: bytes, model: str, response: Mapping[str, Any], output: Any = None, *, has_output: bool) -> None:
        if self.db is None or not self.spec.writes:
            return
        answer = {"response": response, "output": output} if has_output else {"response": response}
        blob = orjson.dumps(answer)
        if holds(blob, self.secrets):  # echoed by the provider (or a gateway): never stored, never served to others
            blob = redact(blob, self.secrets)
            try:
                _decode(blob)
            except NotAnAnswer:
                return  # the key could not be cut out cleanly: not cached at all
        self.pending.append((key, model, time.time(), blob))
        if len(self.pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        """Write the entries gathered since the last commit, in one transaction."""
        if self.db is None or not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", pending)
        except sqlite3.Error as exc:
            self._give_up(exc)
            return
        self.written += len(pending)

    def close(self) -> None:
        self.commit()
        db, self.db = self.db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _give_up(self, exc: Exception) -> None:
        """One warning, then no lookups or writes for the rest of the run: every row is still asked and recorded."""
        db, self.db = self.db, None
        self.pending = []
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        what, fix = _trouble(self.path, exc, "or run with --no-cache")
        self.warn(f"warning: {what}, so this run goes on without it: {fix}")


def _decode(blob: bytes) -> Hit:
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise NotAnAnswer(f"an entry that is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("response"), dict):
        raise NotAnAnswer("an entry that is not an answer")
    return Hit(cast(Response, data["response"]), data.get("output"), "output" in data)


def _code(exc: BaseException) -> int | None:
    """SQLite's primary result code (Python 3.11 on), else None."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _busy(exc: sqlite3.Error) -> bool:
    code = _code(exc)
    return code in _BUSY if code is not None else "locked" in str(exc)


def _damaged(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.Error):
        return True  # an entry that does not decode
    code = _code(exc)
    return code in _DAMAGED if code is not None else "malformed" in str(exc) or "not a database" in str(exc)


def _trouble(path: Path, exc: BaseException, otherwise: str) -> tuple[str, str]:
    """What went wrong with the cache file, and what to do about it (`otherwise`, when it is not damaged)."""
    if _damaged(exc):
        return (
            f"the response cache {path} is damaged ({exc})",
            "delete it (with its -wal and -shm files, if any) and the next run starts a new one",
        )
    return (
        f"the response cache {path} failed ({exc})",
        f"check the disk and the file, {otherwise}",
    )


def _open(path: Path) -> sqlite3.Connection:
    """The file, in WAL mode, with its table. A path that cannot be used is a SpecError; a file that is damaged
    raises sqlite3.DatabaseError (the caller decides what that costs)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=OPEN_WAIT_S, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise _unusable(path, exc) from None
    try:
        _prepare(db)
    except sqlite3.Error as exc:
        db.close()
        if isinstance(exc, sqlite3.DatabaseError) and _damaged(exc):
            raise
        raise _unusable(path, exc) from None
    db.isolation_level = "DEFERRED"  # `with db:` is then one transaction
    return db


def _prepare(db: sqlite3.Connection) -> None:
    """WAL mode and the table, however many runs open the file at the same moment.

    Switching a new file to WAL needs it to itself, and SQLite answers SQLITE_BUSY at once when another
    connection is reading or switching it (SQLite does not wait the busy timeout there: it could deadlock). So
    the whole step is tried again, after a growing, jittered pause, until OPEN_WAIT_S: each try holds no lock
    once it has failed, one of the runs wins the switch, and the others find the file in WAL mode already."""
    deadline = time.monotonic() + OPEN_WAIT_S
    pause = 0.002
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-256")
            db.execute(SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.25)


def cache_problem(spec: CacheSpec) -> str | None:
    """Why a run could not use the cache file (None: it could), in the words a run uses; a file not there yet is
    not made (batchrun validate). A damaged file is a problem too: a run goes on without it, paying again."""
    if spec.mode == "off":
        return None
    path = spec.file()
    if not path.exists():
        why = unwritable_dir(path.parent)
        return None if why is None else str(_unusable(path, why))
    try:
        _open(path).close()
    except SpecError as exc:
        return str(exc)
    except sqlite3.DatabaseError as exc:
        what, fix = _trouble(path, exc, "or run with --no-cache")
        return f"{what}: a run would go on without it, asking every row again; {fix}"
    return None


def _unusable(path: Path, exc: BaseException | str) -> SpecError:
    return SpecError(
        f"cannot open the response cache {path} ({exc}): set cache.path to a writable file, or run with --no-cache"
    )


@contextlib.contextmanager
def _admin(path: Path) -> Iterator[sqlite3.Connection]:
    """The file opened for `cache stats` or `cache prune`: a damaged one is a one-line error saying what to do."""
    try:
        db = _open(path)
        try:
            yield db
        finally:
            db.close()
    except sqlite3.Error as exc:
        what, fix = _trouble(path, exc, "or try again once the runs using it have finished")
        raise SpecError(f"{what}: {fix}") from None


# --- batchrun cache stats | prune ---------------------------------------------------------------------------------


def stats(path: Path) -> dict[str, Any]:
    """Entries, file size (WAL included) and bytes per entry, the oldest and newest, and entries per model."""
    if not path.exists():
        raise SpecError(f"no response cache at {path} (it is made by the first run that caches an answer)")
    with _admin(path) as db:
        entries, oldest, newest = db.execute("SELECT count(*), min(created), max(created) FROM answers").fetchone()
        models = dict(db.execute("SELECT model, count(*) FROM answers GROUP BY model ORDER BY 2 DESC").fetchall())
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    return {
        "path": str(path),
        "entries": entries,
        "bytes": size,
        "bytes_per_entry": round(size / entries) if entries else None,
        "oldest": oldest,
        "newest": newest,
        "models": models,
    }


def stats_lines(found: Mapping[str, Any]) -> list[str]:
    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))

    per = found["bytes_per_entry"]
    lines = [
        f"{found['path']}: {found['entries']:,} entries, {found['bytes'] / 1e6:,.1f} MB"
        + (f" ({per:,} bytes an entry)" if per else ""),
        f"  written  {when(found['oldest'])} to {when(found['newest'])}",
    ]
    lines += [f"  {model}: {n:,}" for model, n in list(found["models"].items())[:10]]
    return lines


def prune(path: Path, older_than_s: float) -> tuple[int, int]:
    """Delete the entries written more than `older_than_s` ago and give their space back: (entries deleted, bytes
    freed)."""
    before = stats(path)["bytes"]
    with _admin(path) as db:
        with db:
            deleted = db.execute("DELETE FROM answers WHERE created < ?", (time.time() - older_than_s,)).rowcount
        db.isolation_level = None
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return deleted, max(0, before - stats(path)["bytes"])


def parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s` as seconds."""
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value < 0:
        raise SpecError(f"--older-than must be a number and a unit (d, h, m or s), such as 30d, got {text!r}")
    return value * units[unit]
