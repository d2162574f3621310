"""The command line: parses options and calls the library; errors become one line and an exit status."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from . import __version__, halt
from .commands.validate import validate, validation_lines
from .engine.job import job_of_run, prepare
from .engine.progress import Phases
from .errors import BatchrunError, Interrupted, SpecError
from .session import EXIT_INTERRUPTED, cancel_run, list_provider_models, run_job, summary_lines
from .sim.command import command as simulate_command
from .spec.cachespec import default_path
from .spec.model import ScaleSpec
from .spec.parse import load_spec, schema_text
from .spec.presets import PRESETS, unknown_preset
from .spec.pricing import Prices, load_prices
from .store import cache as response_cache
from .store.rerun import Rerun, from_manifest, session_options
from .store.rundir import RunDir
from .text.redaction import printable_lines
from .text.words import plural

F = TypeVar("F", bound=Callable[..., Any])


def _echo(text: str, *, err: bool = False) -> None:
    """Text for a person: ids, answers and providers' messages are anyone's, so a control character in them (an
    ANSI escape) is shown escaped, not obeyed. JSON and CSV output goes out as it is."""
    click.echo("\n".join(printable_lines(text.split("\n"))), err=err)


def _log(message: str) -> None:
    # stderr may be closed (`2>&1 | head`, a closed terminal): a lost log line must not break the run.
    with contextlib.suppress(OSError):
        _echo(f"batchrun: {message}", err=True)


def _friendly(fn: F) -> F:
    """Turn every BatchrunError into `batchrun: error: ...` and its exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:  # a long phase stopped by Ctrl-C or SIGTERM: what it was doing, how to go on
            _echo(f"batchrun: {exc}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BatchrunError as exc:
            _echo(f"batchrun: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("batchrun: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def _stoppable(fn: F) -> F:
    """A command that reads the whole input (validate, estimate): its long phases show how far they are (a bar on
    a terminal, a line now and then in a log), and Ctrl-C or SIGTERM stops them within moments."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        phases = Phases(enabled=True)
        with halt.watching(phases), contextlib.closing(phases):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchrun")
def main() -> None:
    """Run large batches of prompts through LLM APIs: every row done, once, at the provider's rate."""
    # Until a run installs its own graceful handler, SIGTERM stops us like Ctrl-C: one line and exit 130.
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option(
    "--fresh",
    is_flag=True,
    help="Start over even if the run directory holds this or another job: its earlier files are moved aside (to "
    "previous/), not deleted. Answers already in the response cache are still reused at no cost; add --no-cache "
    "to have the provider answer every row again.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (the closing summary is still printed).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Only the input's first N rows; a later submit (without --limit) runs the rest in the same directory.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The run directory, instead of the spec's output_dir.",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the response cache shared across runs.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Run the job's slices on Ray workers under one shared limit: a local Ray, or the cluster at ADDRESS "
    "('auto': the one `ray start` made). Needs pip install 'batchrun[ray]'.",
)
@click.option("--workers", type=click.IntRange(min=1), help="With --ray: slices at a time (default: the CPUs).")
@_friendly
def submit(
    job: str,
    fresh: bool,
    no_progress: bool,
    limit: int | None,
    output_dir: Path | None,
    no_cache: bool,
    ray_address: str | None,
    workers: int | None,
) -> None:
    """Run JOB (a job spec YAML), or resume it where it stopped.

    Exit status: 0 all rows succeeded (or all of --limit's), 3 some rows failed, 1 stopped by an error that
    dooms every row, 2 spec or usage error, 130 interrupted.
    """
    spec = load_spec(job)
    own_dir = spec.output_dir
    if output_dir is not None:
        spec = spec.model_copy(update={"output_dir": output_dir.resolve()})
    scale = spec.scale
    if ray_address is not None or (workers is not None and scale is not None):
        scale = scale or ScaleSpec()
        scale = scale.model_copy(update={"ray": ray_address or scale.ray, "workers": workers or scale.workers})
    elif workers is not None:
        raise SpecError("--workers goes with --ray (or a scale: block in the spec)")
    outcome = asyncio.run(
        run_job(
            spec,
            fresh=fresh,
            progress=not no_progress,
            log=_log,
            limit=limit,
            use_cache=not no_cache,
            scale=scale,
            rerun=Rerun(
                spec.spec_path,
                None if spec.output_dir == own_dir else spec.output_dir,
                limit,
                session_options(no_cache=no_cache, ray=ray_address, workers=workers),
            ),
        )
    )
    for line in summary_lines(outcome):
        _echo(line)
    sys.exit(outcome.exit_code)


@main.command(name="retry-failed")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--code", "codes", multiple=True, help="Only failures with this error code (repeatable).")
@click.option("--job", type=click.Path(dir_okay=False), help="The job spec, if not where the run recorded it.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the response cache shared across runs.")
@_friendly
def retry_failed(run_dir: Path, codes: tuple[str, ...], job: str | None, no_progress: bool, no_cache: bool) -> None:
    """Send RUN_DIR's failed rows (or those with --code) again; each row keeps exactly one final record."""
    spec = job_of_run(run_dir, job)
    recorded = from_manifest(RunDir(run_dir).manifest, run_dir)  # whether run_dir is its spec's own output_dir
    rerun = Rerun(
        spec.spec_path, recorded.output_dir if recorded else spec.output_dir, options=session_options(no_cache=no_cache)
    )
    outcome = asyncio.run(
        run_job(spec, progress=not no_progress, log=_log, retry_codes=codes, use_cache=not no_cache, rerun=rerun)
    )
    for line in summary_lines(outcome):
        _echo(line)
    sys.exit(outcome.exit_code)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--job", type=click.Path(dir_okay=False), help="The job spec, if not where the run recorded it.")
@_friendly
def cancel(run_dir: Path, job: str | None) -> None:
    """Cancel RUN_DIR's batches still going (provider.mode: batch); what they finished stays billed and is
    recorded by the next submit."""
    for line in asyncio.run(cancel_run(job_of_run(run_dir, job))):
        _echo(line)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="FILE.parquet, FILE.jsonl or FILE.csv",
)
@click.option("--with-input", is_flag=True, help="Add the input row's columns (prefixed input_).")
@_friendly
def export(run_dir: Path, to: Path, with_input: bool) -> None:
    """One row per input row of RUN_DIR, in input order: id, answer, reasoning, finish_reason, usage, error."""
    from .commands.export import export_run

    rows = export_run(run_dir, to, with_input=with_input, warn=lambda line: _log(f"warning: {line}"))
    _log(f"wrote {plural(rows, 'row')} to {to}")


@main.command(name="validate")
@click.argument("job", type=click.Path(dir_okay=False))
@_friendly
@_stoppable
def validate_cmd(job: str) -> None:
    """Check JOB's spec and read its whole input, without calling any API."""
    prepared = prepare(load_spec(job))
    report = validate(prepared)
    for line in validation_lines(prepared, report):
        _echo(line)
    sys.exit(0 if report.ok else SpecError.exit_code)


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("-n", "rows", type=click.IntRange(min=1), default=3, show_default=True, help="How many rows.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="jsonl: OpenAI Batch API input lines, bodies exactly as they would be sent.",
)
@_friendly
def preview(job: str, rows: int, fmt: str) -> None:
    """The requests JOB's first rows become (template, system message, params), sending nothing."""
    from .commands.show import batch_line, first_requests, preview_lines
    from .rows.request import Request

    prepared = prepare(load_spec(job))
    for built in first_requests(prepared, rows):
        if fmt == "jsonl":
            if isinstance(built, Request):
                click.echo(orjson.dumps(batch_line(prepared, built)).decode())
            else:
                _log(f"row {built.row}: cannot be sent: {built.message} [{built.code}]")
        else:
            _echo("\n".join(preview_lines(prepared, built)))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("row_id")
@click.option("--job", type=click.Path(dir_okay=False), help="The job spec, if not where the run recorded it.")
@click.option("--json", "as_json", is_flag=True, help="The row's final record as it is stored.")
@_friendly
def show(run_dir: Path, row_id: str, job: str | None, as_json: bool) -> None:
    """One row of RUN_DIR by its id: the request it was sent as and its answer (or failure)."""
    from .commands.show import find_record, show_lines
    from .store.rundir import RunDir

    run = RunDir(run_dir)
    try:
        if as_json:
            found = find_record(run, row_id)
            if found is None:
                raise SpecError(f"{run_dir}: no final record with id {row_id!r} (the row may still be pending)")
            click.echo(orjson.dumps(found[1], option=orjson.OPT_INDENT_2).decode())
            return
        _echo("\n".join(show_lines(run, prepare(job_of_run(run_dir, job)), row_id)))
    finally:
        for line in run.warnings():
            _log(f"warning: {line}")


@main.command(name="estimate")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option(
    "--output-share",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Share of max_tokens a typical answer uses.",
)
@click.option("--prices", type=click.Path(dir_okay=False), help="YAML: model -> {input, output, currency} per 1M.")
@click.option(
    "--latency",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a request takes (default: assumed from the answer length; see docs/rate-limits.md).",
)
@_friendly
@_stoppable
def estimate_cmd(job: str, output_share: float, prices: str | None, latency: float | None) -> None:
    """Rows, tokens, cost range and time the limits allow for JOB, without calling any API."""
    from .commands.estimate import estimate, estimate_lines

    prepared = prepare(load_spec(job))
    table = Prices.of(
        {**prepared.spec.pricing, **(load_prices(prices) if prices else {})},
        prepared.spec.provider.name,
        prepared.spec.provider.batch_price_share,
    )
    _echo("\n".join(estimate_lines(prepared, estimate(prepared), table, output_share, latency)))


@main.command(name="prices")
@click.argument("model", required=False)
@click.option("--job", type=click.Path(dir_okay=False), help="A job spec: its pricing: block, provider and model.")
@click.option("--provider", metavar="NAME", help="Show the batch price at this provider's share.")
@click.option("--prices", type=click.Path(dir_okay=False), help="YAML: model -> {input, output, currency} per 1M.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_friendly
def prices_cmd(model: str | None, job: str | None, provider: str | None, prices: str | None, fmt: str) -> None:
    """What a run would be charged for MODEL (default: every priced model, or the --job's), and from where."""
    from .commands.prices import prices_shown

    shown = prices_shown(model, job, provider, prices)
    if fmt == "json":
        click.echo(orjson.dumps(shown.json(), option=orjson.OPT_INDENT_2).decode())
    else:
        _echo("\n".join(shown.lines()))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--prices", type=click.Path(dir_okay=False), help="YAML: model -> {input, output, currency} per 1M.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="Also write a self-contained page.")
@_friendly
def report(run_dirs: tuple[Path, ...], fmt: str, prices: str | None, html: Path | None) -> None:
    """What RUN_DIRS did and cost (several are summed); reads the run directories only, calls no API."""
    from .commands.report import build_report
    from .commands.report_text import report_csv, report_json, report_table

    built = build_report(run_dirs, load_prices(prices) if prices else None)
    for run in built.runs:
        for line in run.warnings:
            _log(f"warning: {run.path}: {line}")
    if fmt == "json":
        click.echo(orjson.dumps(report_json(built), option=orjson.OPT_INDENT_2).decode())
    elif fmt == "csv":
        click.echo(report_csv(built), nl=False)
    else:
        _echo("\n".join(report_table(built)))
    if html is not None:
        from .commands.report_html import render_html

        try:
            html.write_text(render_html(built), encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"--html: cannot write {html}: {exc.strerror}") from None
        _log(f"wrote {html}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prices", type=click.Path(dir_okay=False), help="YAML: model -> {input, output, currency} per 1M.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@_friendly
def status(run_dir: Path, prices: str | None, as_json: bool) -> None:
    """State, progress, rate, ETA and cost so far of RUN_DIR, live or not."""
    from .commands.status import status_json, status_lines

    table = load_prices(prices) if prices else None
    if as_json:
        click.echo(orjson.dumps(status_json(run_dir, table), option=orjson.OPT_INDENT_2).decode())
    else:
        _echo("\n".join(status_lines(run_dir, table)))


@main.group()
def cache() -> None:
    """The response cache shared across runs (default $XDG_CACHE_HOME/batchrun/cache.sqlite3)."""


CACHE_PATH = click.option(
    "--path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The cache file, if not the default (a job's cache.path).",
)


@cache.command(name="stats")
@CACHE_PATH
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_friendly
def cache_stats(path: Path | None, as_json: bool) -> None:
    """Entries, file size and bytes per entry, the oldest and newest, and entries per model."""
    found = response_cache.stats(path or default_path())
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    _echo("\n".join(response_cache.stats_lines(found)))


@cache.command(name="prune")
@CACHE_PATH
@click.option("--older-than", required=True, help="Delete entries written longer ago than this: 30d, 12h, 90m.")
@_friendly
def cache_prune(path: Path | None, older_than: str) -> None:
    """Delete old entries and give their space back to the disk."""
    where = path or default_path()
    deleted, freed = response_cache.prune(where, response_cache.parse_age(older_than))
    click.echo(
        f"{where}: deleted {plural(deleted, 'entry', 'entries')} written more than {older_than} ago, freed "
        f"{plural(freed, 'byte')}"
    )


@main.command()
@click.option("--provider", "name", required=True, metavar="NAME", help=f"A provider preset: {', '.join(PRESETS)}.")
@click.option("--base-url", help="Override the preset's base URL.")
@click.option("--api-key-env", help="Read the key from this variable instead of the preset's.")
@click.option(
    "--allow-insecure-http", is_flag=True, help="Send the key over plain http:// to a host that is not this machine."
)
@_friendly
def models(name: str, base_url: str | None, api_key_env: str | None, allow_insecure_http: bool) -> None:
    """List the provider's models (GET /models): a quick check that the key works."""
    if name not in PRESETS:
        raise SpecError(f"--provider {unknown_preset(name)}")
    for model in asyncio.run(list_provider_models(name, base_url, api_key_env, allow_insecure_http)):
        _echo(model)


main.add_command(simulate_command(_friendly))


@main.command()
@click.option(
    "--provider", default="simulated", show_default=True, metavar="NAME", help=f"A preset: {', '.join(PRESETS)}."
)
@click.option(
    "--input", "input_path", type=click.Path(dir_okay=False, path_type=Path), help="The rows: JSONL/CSV/Parquet."
)
@click.option("--model", help="The model every request names (default: one the provider offers).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("job.yaml"),
    show_default=True,
    help="The job spec to write (its schema, and a sample input, go beside it).",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@_friendly
def init(provider: str, input_path: Path | None, model: str | None, output: Path, force: bool) -> None:
    """Write a commented job spec to start from: the provider's preset and key variable, a template from the
    input's columns (a sample input when none is given), and what to run next."""
    from .commands.init import init_job

    for line in init_job(output, provider, input_path, model, force=force).lines():
        _echo(line)


@main.command()
def schema() -> None:
    """Print the job spec's JSON Schema (docs/job.schema.json holds the same), for editors to check specs against."""
    click.echo(schema_text(), nl=False)


def entry() -> None:
    """The `batchrun` command. Once a command has done its work and said so, a SIGTERM is held back until the
    process exits: the interpreter's finalization puts the default handler back, and a SIGTERM then would end a
    finished run with -15 instead of its exit status."""
    try:
        main()  # click's standalone mode ends in SystemExit
    finally:
        with contextlib.suppress(ValueError, OSError):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


if __name__ == "__main__":
    entry()
