"""One exception root; every subclass carries a message the user can act on and the exit status it means."""

from __future__ import annotations


class BatchrunError(Exception):
    """Root of every error batchrun reports to a user."""

    exit_code = 1


class SpecError(BatchrunError):
    """The job spec or the command line is wrong: nothing was sent."""

    exit_code = 2


class InputError(BatchrunError):
    """The input file cannot be read as the spec describes: nothing was sent."""

    exit_code = 2


class RunDirError(BatchrunError):
    """The run directory cannot be used as asked (locked, or holds a different job)."""

    exit_code = 2


class FatalProviderError(BatchrunError):
    """An answer that dooms every row (bad key, arrears, quota): the run stops at once."""

    exit_code = 1


class CheckpointWriteError(BatchrunError):
    """Writing the run directory failed (disk full, permissions); the run stops cleanly and can resume."""

    exit_code = 1


class Interrupted(BatchrunError):
    """Ctrl-C or SIGTERM stopped a long phase (the input's scan, the id check, validate): whatever it had
    recorded stands, and the same command goes on from there."""

    exit_code = 130
