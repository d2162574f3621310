"""The hints that say how to run a run directory again name *that* directory (and its --limit), in the CLI's
words or the Python API's; and a run answered from the response cache says so, with the way out."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import batchrun
from batchrun.errors import BatchrunError
from batchrun.store.rerun import Rerun, api_call, from_manifest, submit_command

from .helpers import cli, make_job, read_jsonl, spawn_submit, submit, wait_for_lines, write_jsonl
from .simserver import SimServer

REPO = Path(__file__).parent.parent


def hint(text: str, label: str = "resume with: ") -> str:
    found = re.findall(rf"{label}(.+)", text)
    assert found, text
    return str(found[-1]).strip()


def follow(command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed `batchrun ...` command word for word, as a user pasting it in a shell would."""
    words = shlex.split(command)
    assert words[0] == "batchrun", command
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", *words[1:]], capture_output=True, text=True, timeout=300, check=False
    )


# --- the pure functions ---------------------------------------------------------------------------------------


def test_the_command_names_the_directory_and_the_limit_as_typed(tmp_path: Path) -> None:
    spec, out = tmp_path / "jobs" / "f.yaml", tmp_path / "runs" / "my alt"
    assert submit_command(spec, cwd=tmp_path) == "batchrun submit jobs/f.yaml"
    assert (
        submit_command(spec, output_dir=out, limit=50, options=("--no-cache",), fresh=True, cwd=tmp_path)
        == "batchrun submit jobs/f.yaml --output-dir 'runs/my alt' --limit 50 --no-cache --fresh"
    )
    assert submit_command(spec, cwd=tmp_path / "elsewhere") == f"batchrun submit {shlex.quote(str(spec))}"
    assert api_call(spec, limit=50, fresh=True, cwd=tmp_path) == 'batchrun.run("jobs/f.yaml", limit=50, fresh=True)'
    assert Rerun(spec, out, 50, api=True).text(cwd=tmp_path) == 'batchrun.run("jobs/f.yaml", limit=50)'


def test_an_older_manifest_gets_the_best_hint_it_can(tmp_path: Path) -> None:
    spec = tmp_path / "f.yaml"
    older = {"job": {"name": "f", "spec": str(spec), "output_dir": str(tmp_path / "runs" / "f")}}
    rerun = from_manifest(older, tmp_path / "runs" / "f")
    assert rerun is not None and rerun.text(cwd=tmp_path) == "batchrun submit f.yaml"
    rerun = from_manifest({"job": {**older["job"], "output_dir": str(tmp_path / "x")}}, tmp_path / "x")
    assert rerun is not None and rerun.text(cwd=tmp_path) == "batchrun submit f.yaml --output-dir x"
    moved = {**older, "rerun": {"output_dir": None, "limit": 7, "options": [], "api": False}}
    rerun = from_manifest(moved, tmp_path / "moved")  # the run directory was moved since it ran
    assert rerun is not None and rerun.text(cwd=tmp_path) == "batchrun submit f.yaml --output-dir moved --limit 7"


# --- submit, status, retry-failed ------------------------------------------------------------------------------


def test_the_hint_of_an_interrupted_run_resumes_it(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    """Started with --output-dir and --limit, interrupted: the printed hint, followed literally, resumes that
    directory with that limit (not the spec's default directory with every row); `status` prints the same."""
    server = start_sim(latency=0.2)
    make_job(tmp_path, server.base_url, n=300, limits={"concurrency": 2})
    proc = spawn_submit(Path("job.yaml"), "--output-dir", "runs/alt", "--limit", "50")
    wait_for_lines(tmp_path / "runs" / "alt" / "results.jsonl", 5, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out.decode()
    printed = hint(out.decode())
    assert printed == "batchrun submit job.yaml --output-dir runs/alt --limit 50"
    status = cli("status", "runs/alt")
    assert hint(status.stdout) == printed
    assert orjson.loads(cli("status", "runs/alt", "--json").stdout)["resume_command"] == printed

    resumed = follow(printed)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "rows already done" in resumed.stderr and "--limit 50" in resumed.stderr
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "runs" / "alt" / "results.jsonl")]
    assert sorted(ids) == sorted(f"r{i}" for i in range(1, 51))  # the limit's rows, each once
    assert not (tmp_path / "runs" / "job").exists()  # the spec's own directory was never touched
    # --limit's rows done: the rest is for a submit without --limit, in the same directory
    rest = hint(resumed.stdout)
    assert rest == "batchrun submit job.yaml --output-dir runs/alt" and hint(cli("status", "runs/alt").stdout) == rest
    assert follow(rest).returncode == 0
    assert len(read_jsonl(tmp_path / "runs" / "alt" / "results.jsonl")) == 300


def test_retry_failed_names_the_run_directory_it_retried(tmp_path: Path, sim: SimServer) -> None:
    """A retry-failed stopped short (here by the budget) is resumed by a submit of that directory, without the
    first submit's --limit (retry-failed sent every row left); status names the same."""
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(40)]
    rows[1]["prompt"] += " #sim:status=400"
    price = {"sim-small": {"input": 1000, "output": 1000, "currency": "CNY"}}  # per million tokens: a dear model
    job = make_job(tmp_path, sim.base_url, rows, pricing=price, limits={"concurrency": 4, "max_cost": {"CNY": 0.5}})
    assert submit(job, "--output-dir", "runs/alt", "--limit", "3").exit_code == 3
    retried = cli("retry-failed", "runs/alt", "--no-progress")
    assert retried.exit_code == 1 and "budget reached" in retried.stdout, retried.output
    assert hint(retried.stdout) == "batchrun submit job.yaml --output-dir runs/alt"
    assert hint(cli("status", "runs/alt").stdout) == "batchrun submit job.yaml --output-dir runs/alt"


# --- the --fresh refusals, and the Python API's words ---------------------------------------------------------


def test_a_changed_input_names_fresh_for_this_directory_and_the_cache(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=10)
    assert submit(job, "--output-dir", "runs/alt").exit_code == 0
    write_jsonl(tmp_path / "job.jsonl", [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(1, 12)][1:])
    refused = submit(job, "--output-dir", "runs/alt")
    assert refused.exit_code != 0
    assert "`batchrun submit job.yaml --output-dir runs/alt --fresh` to start over" in refused.stderr
    assert "answered from the response cache at no cost, unless --no-cache" in refused.stderr
    requests = sim.stats()["requests"]
    again = follow(hint(refused.stderr, "rerun with `").split("` to start over")[0])
    assert again.returncode == 0, again.stderr
    assert sim.stats()["requests"] == requests + 1  # only the one new row was sent: the others came from the cache


def test_the_python_api_says_fresh_true(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=10)
    outcome = batchrun.run(str(job), limit=4)
    assert outcome.exit_code == 0 and outcome.rerun is not None
    assert outcome.rerun.text() == 'batchrun.run("job.yaml")'  # --limit's rows done: the rest is a call without it
    assert orjson.loads(cli("status", "runs/job", "--json").stdout)["resume_command"] == 'batchrun.run("job.yaml")'
    write_jsonl(tmp_path / "job.jsonl", [{"id": "x", "prompt": "another"}])
    with pytest.raises(BatchrunError) as refused:
        batchrun.run("job.yaml")
    message = str(refused.value)
    assert 'rerun with `batchrun.run("job.yaml", fresh=True)`' in message and "--fresh" not in message
    assert "unless cache: off in the spec" in message and "--no-cache" not in message


# --- the response cache says so --------------------------------------------------------------------------------


def test_a_run_answered_from_the_cache_says_so_and_how_to_ask_instead(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=10)
    assert submit(job).exit_code == 0
    fresh = submit(job, "--fresh")
    assert fresh.exit_code == 0
    way_out = hint(
        fresh.stdout, "cache: 10 rows from the response cache.*?; to have the provider answer every row instead: "
    )
    assert way_out == "batchrun submit job.yaml --no-cache --fresh"
    requests = sim.stats()["requests"]
    asked = follow(way_out)
    assert asked.returncode == 0 and "cache:" not in asked.stdout
    assert sim.stats()["requests"] == requests + 10
    assert "response cache" in cli("submit", "--help").stdout  # --fresh's help says what it does with the cache


def test_the_demo_asks_the_provider_on_a_machine_with_a_warm_cache(tmp_path: Path) -> None:
    """`make demo` shows retries whatever an earlier demo left in the cache; run twice, it sends nothing."""
    demo = str(REPO / "jobs" / "demo.yaml")
    first = submit(Path(demo), "--output-dir", "runs/demo")
    assert first.exit_code == 0, first.output
    again = submit(Path(demo), "--output-dir", "runs/demo", "--fresh")
    assert again.exit_code == 0, again.output
    counts = re.search(r"requests ([\d,]+), retries ([\d,]+)", again.stdout)
    assert counts is not None and int(counts[1].replace(",", "")) >= 300 and int(counts[2]) > 0, again.stdout
    assert "cache:" not in again.stdout
    twice = submit(Path(demo), "--output-dir", "runs/demo")
    assert twice.exit_code == 0 and "300 of 300 rows already done" in twice.stderr
    assert "this session: 0 rows" in twice.stdout
