"""Writing a run file so that a crash or a full disk never leaves half of it: the whole file replaced at once, and
the one line that says what to do when a write fails. Shared by the writer (`checkpoint`) and the reader that
repairs a directory before a resume (`resume`), so neither imports the other for it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"the disk is full writing {path}: free some space, then run the same command again to "
            "resume (rows already recorded are kept)"
        )
    return f"cannot write {path}: {exc.strerror}; fix that, then run the same command again to resume"


def unwritable_dir(path: Path) -> str | None:
    """Why this user could not make or write the folder `path` (None: it could), found without making anything:
    what batchrun validate says of the run directory and the cache's folder before submit needs them. The
    nearest folder that is there must be writable (and be a folder: a path under a file is never one)."""
    probe = path
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            return f"{probe} is a file"
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return f"{probe} is on a read-only file system"
    except OSError as exc:
        return f"{probe}: {exc.strerror}"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"permission denied in {probe}"
    return None
