"""A response cache shared across runs: an answer already paid for, in any run directory, is not paid for again.

Each entry is keyed by what decides its answer: the provider's base URL, the endpoint, and the exact request body
sent (model, messages, params), hashed (`request.cache_key`). Only good answers are stored (with structured output,
only answers that fit the schema), under the key of the row's first question, so a re-run, a grown input or a
job with three rows changed asks only what it has not asked before.

SQLite from the standard library, in WAL mode: crash-safe, one file, readers never blocked, several runs may share
it. New entries are written a few hundred at a time, and at least once a second (with the run's usage.json), so a
run never holds the write lock for long; a kill loses at most those entries, never the file. Writing costs about
0.05 ms of CPU a row (an insert among many random keys); reading, 0.013 ms.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from .errors import SpecError
from .records import Response

CacheMode = Literal["read_write", "read", "write", "off"]
CACHE_MODES: tuple[CacheMode, ...] = ("read_write", "read", "write", "off")
FILE_NAME = "cache.sqlite3"
# New entries are written this many at a time (and at least once a second): a larger transaction costs SQLite
# tens of megabytes of memory while it lasts (measured: 22 MB for 5,000 entries, 4 MB for 500) and saves no time,
# since entries with random keys land on pages of their own either way. For the same reason SQLite's own page
# cache is kept small (256 KB): lookups are served by the system's file cache as well.
COMMIT_EVERY = 200
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,   -- blake2b-128 of base URL, endpoint and request body
    model TEXT NOT NULL,
    created REAL NOT NULL,  -- epoch seconds
    answer BLOB NOT NULL    -- {"response": {status_code, request_id, body}, "output"?: ...} as JSON
) WITHOUT ROWID
"""


def default_path() -> Path:
    """`$XDG_CACHE_HOME/batchrun/cache.sqlite3` (`~/.cache/...` when it is not set)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "batchrun" / FILE_NAME


@dataclass(frozen=True)
class CacheSpec:
    """The spec's `cache:` block."""

    mode: CacheMode = "read_write"
    path: Path | None = None  # None: default_path()
    sampled: bool = True  # cache answers sampled with temperature > 0 (or no temperature) too

    @property
    def reads(self) -> bool:
        return self.mode in ("read_write", "read")

    @property
    def writes(self) -> bool:
        return self.mode in ("read_write", "write")

    def file(self) -> Path:
        return self.path or default_path()


@dataclass(frozen=True)
class Hit:
    response: Response
    output: Any
    has_output: bool


class Cache:
    """One run's handle on the cache file."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self.path = spec.file()
        self.db = _open(self.path)
        self.pending: list[tuple[bytes, str, float, bytes]] = []
        self.hits = self.misses = self.written = 0

    def get(self, key: bytes) -> Hit | None:
        if not self.spec.reads:
            return None
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        data = orjson.loads(row[0])
        return Hit(data["response"], data.get("output"), "output" in data)

    def put(self, key: bytes, model: str, response: Mapping[str, Any], output: Any = None, *, has_output: bool) -> None:
        if not self.spec.writes:
            return
        answer = {"response": response, "output": output} if has_output else {"response": response}
        self.pending.append((key, model, time.time(), orjson.dumps(answer)))
        if len(self.pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        """Write the entries gathered since the last commit, in one transaction."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", pending)
        except sqlite3.Error:
            return  # a cache that cannot be written costs later runs a request; it never stops this one
        self.written += len(pending)

    def close(self) -> None:
        self.commit()
        self.db.close()


def _open(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-256")
        db.execute(SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise SpecError(
            f"cannot open the response cache {path} ({exc}): set cache.path to a writable file, or run with --no-cache"
        ) from None
    db.isolation_level = "DEFERRED"  # `with db:` is then one transaction
    return db


# --- batchrun cache stats | prune ---------------------------------------------------------------------------------


def stats(path: Path) -> dict[str, Any]:
    """Entries, file size (WAL included) and bytes per entry, the oldest and newest, and entries per model."""
    if not path.exists():
        raise SpecError(f"no response cache at {path} (it is made by the first run that caches an answer)")
    db = _open(path)
    try:
        entries, oldest, newest = db.execute("SELECT count(*), min(created), max(created) FROM answers").fetchone()
        models = dict(db.execute("SELECT model, count(*) FROM answers GROUP BY model ORDER BY 2 DESC").fetchall())
    finally:
        db.close()
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
    db = _open(path)
    try:
        with db:
            deleted = db.execute("DELETE FROM answers WHERE created < ?", (time.time() - older_than_s,)).rowcount
        db.isolation_level = None
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
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
