"""The Python API, for notebooks and pipelines: the same runs, run directories and guarantees as the CLI.

    import batchrun
    outcome = batchrun.run("jobs/demo.yaml")                      # a spec file, as `batchrun submit`
    outcome = batchrun.run({"model": "glm-4-flash", "provider": "zhipu", "input": {"template": "Sum up: {text}"}},
                           rows=[{"id": "a", "text": "..."}])      # a spec as a dict, rows from memory
    for record in batchrun.final_records(outcome.run_dir): ...          # every row's final record, once

A spec given as a dict is written into its run directory as `job.yaml` (paths made absolute), and rows given in
memory as `input.jsonl` beside it: the run is then an ordinary one that `batchrun status`, `show`, `report`,
`retry-failed` and a later `run` of the same spec and rows (which resumes) all understand.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from .errors import SpecError
from .session import RunOutcome, run_job
from .spec.model import JobSpec
from .spec.parse import load_spec, parse_spec
from .store.rerun import Rerun
from .store.rundir import FAILURES, RESULTS, RunDir

SpecLike = str | os.PathLike[str] | Mapping[str, Any]


def run(
    spec: SpecLike,
    *,
    rows: Iterable[Mapping[str, Any]] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    limit: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Run (or resume) a job to its end and return what happened; `outcome.exit_code` is what `submit` exits with.

    `spec`: a job spec file, or the same as a dict (relative paths against `base_dir`, default the current
    directory). `rows`: the input as dicts instead of `input.path`. In a running event loop (Jupyter), use
    `await arun(...)`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        job = job_spec(spec, rows=rows, base_dir=base_dir, caller="batchrun.run(spec)")
        rerun = Rerun(job.spec_path, limit=limit, api=True)  # the hints name this call, not a command
        return asyncio.run(run_job(job, fresh=fresh, progress=progress, log=log or _quiet, limit=limit, rerun=rerun))
    raise SpecError(
        "batchrun.run() was called inside a running event loop (Jupyter, an async function), where it cannot wait: "
        "use `await batchrun.arun(...)` there, with the same arguments"
    )


async def arun(
    spec: SpecLike,
    *,
    rows: Iterable[Mapping[str, Any]] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    limit: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunOutcome:
    """`run` for code that already has an event loop."""
    job = job_spec(spec, rows=rows, base_dir=base_dir, caller="batchrun.arun(spec)")
    rerun = Rerun(job.spec_path, limit=limit, api=True)  # the hints name this call, not a command
    return await run_job(job, fresh=fresh, progress=progress, log=log or _quiet, limit=limit, rerun=rerun)


def job_spec(
    spec: SpecLike,
    *,
    rows: Iterable[Mapping[str, Any]] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    caller: str = "batchrun.run(spec)",
) -> JobSpec:
    """The checked spec; a dict spec (and in-memory rows) is written into its run directory, where `status`,
    `show` and `retry-failed` find it. Its errors, then and while it runs, name the dict's keys after `caller`,
    never the file written for it."""
    if not isinstance(spec, Mapping):
        if rows is not None:
            raise SpecError("rows= goes with a spec given as a dict; a spec file names its input.path")
        return load_spec(Path(spec))
    base = Path(base_dir or Path.cwd()).resolve()
    data = dict(spec)
    name = str(data.get("name") or "job")
    data["name"] = name
    out = Path(str(data.get("output_dir") or f"runs/{name}"))
    out = out if out.is_absolute() else base / out
    data["output_dir"] = str(out)
    source = data.get("input")
    source = dict(source) if isinstance(source, Mapping) else ({"path": source} if source is not None else {})
    out.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        if source.get("path") is not None:
            raise SpecError(f"{caller}: give the input as rows= or as input.path in the spec, not both")
        written = out / "input.jsonl"
        with open(written, "wb") as f:
            for row in rows:
                f.write(orjson.dumps(row) + b"\n")
        source["path"] = str(written)
    elif source.get("path") is None:
        raise SpecError(f"{caller}: the spec has no input: set input.path, or pass rows=[...]")
    elif not Path(str(source["path"])).is_absolute():
        source["path"] = str(base / str(source["path"]))
    data["input"] = source
    path = out / "job.yaml"
    checked = parse_spec(data, spec_path=path, source=caller, origin=caller)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return checked


def final_records(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every final record of a run directory (results, then failures): one per row that is done."""
    yield from _read(run_dir, RESULTS)
    yield from _read(run_dir, FAILURES)


def results(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The succeeded rows' records, each an OpenAI Batch output line."""
    yield from _read(run_dir, RESULTS)


def failures(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The failed rows' records, with `error: {code, message, status, attempts}`."""
    yield from _read(run_dir, FAILURES)


def _read(run_dir: str | os.PathLike[str], name: str) -> Iterator[dict[str, Any]]:
    for entry in RunDir(Path(run_dir)).entries((name,)):  # whole records only, the first of each row
        yield entry.parsed()


def _quiet(message: str) -> None:
    """The API says nothing unless given a `log`: notebooks and pipelines have their own."""
