"""Ctrl-C and SIGTERM in every phase, through real processes: the start-up scan and id check (nothing is sent), a
replay from the response cache (the rows replayed so far are kept), validate and estimate (one line, exit 130).

The inputs are big enough that each phase lasts a while on a fast machine; each test waits for the phase's own
progress line (or its first records) before it sends the signal, never for a fixed time."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import orjson
import pytest

from batchrun.engine.job import prepare
from batchrun.engine.progress import PHASE_LINE_S, Phases
from batchrun.rows.request import Request
from batchrun.rows.sources import iter_rows
from batchrun.spec.parse import load_spec
from batchrun.store.cache import Cache

from .helpers import make_job, read_jsonl, submit, wait_for_lines
from .simserver import SimServer

BIG = 300_000  # rows: the id check alone takes seconds, even on a fast machine
PADDING = "words to make the line long enough " * 3


def big_job(tmp_path: Path, base_url: str, n: int = BIG, **overrides: object) -> Path:
    job = make_job(tmp_path, base_url, n=1, name="big", **overrides)
    with open(tmp_path / "big.jsonl", "wb") as f:
        for start in range(0, n, 10_000):
            f.write(
                b"".join(
                    orjson.dumps({"id": f"r{i}", "prompt": f"question {i}: {PADDING}"}) + b"\n"
                    for i in range(start + 1, min(n, start + 10_000) + 1)
                )
            )
    return job


def spawn(*args: str) -> subprocess.Popen[str]:
    """batchrun in its own process, its stderr a pipe (not a terminal: its progress comes as lines)."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def wait_for_marker(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """Read the process's stderr until a line holds `marker` (the phase has started), and return what it said."""
    stream: IO[str] | None = proc.stderr
    assert stream is not None
    seen = []
    while line := stream.readline():
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} never shown; the process said: {''.join(seen)}")


def stopped(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_start_up_id_check_sends_nothing(
    tmp_path: Path, sim: SimServer, sig: signal.Signals
) -> None:
    job = big_job(tmp_path, sim.base_url)
    proc = spawn("submit", str(job))
    wait_for_marker(proc, "checking the ids for repeats")
    code, out, err = stopped(proc, sig)
    assert code == 130, out + err
    assert sim.stats()["requests"] == 0  # not one request went out
    assert "Traceback" not in err
    assert "interrupted" in out and "resume with: batchrun submit" in out
    # the run directory resumes: a later submit does every row (a small slice of them, to stay quick)
    again = submit(job, "--limit", "5")
    assert again.exit_code == 0, again.output
    assert sim.stats()["requests"] == 5


def warm_cache(job: Path) -> int:
    """Put an answer for every row of the job's input in the response cache (as an earlier run would have)."""
    prepared = prepare(load_spec(job))
    spec = prepared.spec
    cache = Cache(spec.cache, secrets=(), warn=print)
    n = 0
    for raw in iter_rows(spec.input):
        request = prepared.builder.build(raw)
        assert isinstance(request, Request) and request.cache_key is not None
        body = {
            "id": f"chatcmpl-{raw.row}",
            "object": "chat.completion",
            "model": spec.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {raw.row}"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
        cache.put(request.cache_key, spec.model, {"status_code": 200, "body": body}, has_output=False)
        n += 1
    cache.close()
    return n


def test_ctrl_c_during_a_replay_from_the_cache_stops_it_and_keeps_what_was_replayed(
    tmp_path: Path, sim: SimServer
) -> None:
    job = big_job(tmp_path, sim.base_url, n=30_000, cache={"path": str(tmp_path / "cache.sqlite3")})
    rows = warm_cache(job)
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", "submit", str(job), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    run_dir = load_spec(job).output_dir
    wait_for_lines(run_dir / "results.jsonl", 1000, proc)  # type: ignore[arg-type]
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    replayed = read_jsonl(run_dir / "results.jsonl")  # every line whole
    assert 1000 <= len(replayed) < rows, "the replay did not stop"
    assert all(rec["cached"] for rec in replayed)
    assert "resume with: batchrun submit" in out
    again = submit(job)
    assert again.exit_code == 0, again.output
    done = [rec["row"] for rec in read_jsonl(run_dir / "results.jsonl")]
    assert sorted(done) == list(range(1, rows + 1))  # every row exactly once
    assert sim.stats()["requests"] == 0  # all of them from the cache


@pytest.mark.parametrize(("command", "sig"), [("validate", signal.SIGINT), ("estimate", signal.SIGTERM)])
def test_validate_and_estimate_stop_at_once_with_one_line(
    tmp_path: Path, sim: SimServer, command: str, sig: signal.Signals
) -> None:
    job = big_job(tmp_path, sim.base_url)
    proc = spawn(command, str(job))
    said = wait_for_marker(proc, "checking the ids for repeats")
    code, out, err = stopped(proc, sig)
    assert code == 130, out + err
    assert out == ""  # no report of a pass that did not finish
    lines = [line for line in err.splitlines() if line.startswith("batchrun:")]
    assert len(lines) == 1 and lines[0].startswith("batchrun: interrupted"), err
    assert "Traceback" not in err and not any("Traceback" in line for line in said)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_in_a_log_a_big_phase_says_so_as_it_starts_then_every_few_seconds() -> None:
    log, clock = io.StringIO(), Clock()
    phases = Phases(enabled=True, stream=log, clock=clock)
    phases("checking the ids for repeats", 0, 50_000_000, "B")  # big: said at once
    phases("checking the ids for repeats", 1_000_000, 50_000_000, "B")
    clock.now += PHASE_LINE_S
    phases("checking the ids for repeats", 25_000_000, 50_000_000, "B")
    phases("reading the rows", 0, 2_000, "row")  # small: only if it lasts
    clock.now += PHASE_LINE_S
    phases("reading the rows", 1_000, 2_000, "row")
    assert log.getvalue().splitlines() == [
        "checking the ids for repeats: 0% (0.0 MB of 50.0 MB)",
        "checking the ids for repeats: 50% (25.0 MB of 50.0 MB)",
        "reading the rows: 50% (1,000 rows of 2,000 rows)",
    ]
    quiet = io.StringIO()
    Phases(enabled=False, stream=quiet)("reading the rows", 0, 10**9, "row")
    assert quiet.getvalue() == ""
