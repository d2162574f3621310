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
