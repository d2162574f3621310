"""How to run a run directory again: the command (or the Python API call) that resumes *this* run.

`batchrun submit f.yaml` resumes the spec's own output_dir, with every row: a run started with `--output-dir` or
`--limit` is only resumed by a command that says them again. Every hint (submit's summary, `status`,
`retry-failed`, the refusals that want `--fresh`) is built here, and the run's manifest keeps what it needs
(`rerun`), so that `status` of a stopped run names the same command its submit printed."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Rerun:
    """What a session was given that picks its run directory and its rows."""

    spec: Path  # the job spec, absolute
    output_dir: Path | None = None  # only when it is not the spec's own output_dir
    limit: int | None = None  # --limit N: the hint without it would run every row
    options: tuple[str, ...] = ()  # --no-cache, --ray [ADDRESS], --workers N: the session ran so, its resume too
    api: bool = False  # started by batchrun.run(): the hint is a call, not a command

    def text(self, *, fresh: bool = False, no_cache: bool = False, cwd: Path | None = None) -> str:
        """The command (or call) to type, with --fresh (fresh=True) when it is to start over, and --no-cache
        when the provider is to answer (the API's caller sets cache: off in the spec)."""
        if self.api:
            return api_call(self.spec, limit=self.limit, fresh=fresh, cwd=cwd)
        options = self.options + (("--no-cache",) if no_cache and "--no-cache" not in self.options else ())
        return submit_command(
            self.spec, output_dir=self.output_dir, limit=self.limit, options=options, fresh=fresh, cwd=cwd
        )

    @property
    def no_cache(self) -> str:
        """How to keep the response cache out of it, in the caller's words."""
        return "cache: off in the spec" if self.api else "--no-cache"

    def facts(self) -> dict[str, Any]:
        """What the manifest keeps, for `status`."""
        return {
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "limit": self.limit,
            "options": list(self.options),
            "api": self.api,
        }


def submit_command(
    spec: Path,
    *,
    output_dir: Path | None = None,
    limit: int | None = None,
    options: tuple[str, ...] = (),
    fresh: bool = False,
    cwd: Path | None = None,
) -> str:
    """`batchrun submit SPEC [--output-dir DIR] [--limit N] [options] [--fresh]`, paths as typed from `cwd` and
    quoted for a shell."""
    words = ["batchrun", "submit", shown(spec, cwd)]
    if output_dir is not None:
        words += ["--output-dir", shown(output_dir, cwd)]
    if limit is not None:
        words += ["--limit", str(limit)]
    words += options
    if fresh:
        words.append("--fresh")
    return shlex.join(words)


def api_call(spec: Path, *, limit: int | None = None, fresh: bool = False, cwd: Path | None = None) -> str:
    """`batchrun.run("SPEC", limit=N, fresh=True)`: the API names its run directory in the spec, so the spec
    (a dict spec's is the job.yaml written into its run directory) resumes it."""
    args = [json.dumps(shown(spec, cwd), ensure_ascii=False)]
    if limit is not None:
        args.append(f"limit={limit}")
    if fresh:
        args.append("fresh=True")
    return f"batchrun.run({', '.join(args)})"


def shown(path: Path, cwd: Path | None = None) -> str:
    """A path as the user would type it: relative to the current directory when it is below it."""
    here = cwd if cwd is not None else Path.cwd()
    try:
        return str(path.relative_to(here)) or "."
    except ValueError:
        return str(path)


def from_manifest(manifest: Mapping[str, Any], run_dir: Path) -> Rerun | None:
    """The rerun a run directory's manifest describes; a run written by an older batchrun (no `rerun` there)
    gets the best it can: `--output-dir` unless the directory is the spec's default one, and no --limit."""
    job = manifest.get("job")
    if not isinstance(job, Mapping) or not job.get("spec"):
        return None
    spec, here = Path(str(job["spec"])), run_dir.resolve()
    facts = manifest.get("rerun")
    if isinstance(facts, Mapping):
        recorded = facts.get("output_dir")
        out = Path(str(recorded)) if recorded else None
        if here != (out or Path(str(job.get("output_dir") or here))).resolve():
            out = here  # the run directory was moved since: name where it is now
        limit = facts.get("limit")
        options = tuple(str(o) for o in facts.get("options") or ())
        return Rerun(spec, out, limit if isinstance(limit, int) else None, options, bool(facts.get("api")))
    default = (spec.parent / "runs" / str(job.get("name") or spec.stem)).resolve()
    return Rerun(spec, None if here == default else here)


def session_options(*, no_cache: bool = False, ray: str | None = None, workers: int | None = None) -> tuple[str, ...]:
    """The submit options a resume repeats besides --output-dir and --limit: how the session asked (not where)."""
    words = ["--no-cache"] if no_cache else []
    if ray is not None:
        words.append("--ray" if ray == "local" else f"--ray={ray}")
    if workers is not None:
        words += ["--workers", str(workers)]
    return tuple(words)
