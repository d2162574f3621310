"""What a run shows while it runs: a bar fitted to the terminal, plain lines in a log, messages above the bar."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.engine.progress import KEEP, LINE_EVERY_S, Progress, Stat, fit

from .helpers import make_job
from .simserver import SimServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_fit_drops_whole_stats_never_cuts_one() -> None:
    parts = [Stat(text, KEEP[text.split()[-1]]) for text in ("3 failed", "98.3 req/s", "12 429s", "40 retries")]
    parts.append(Stat("1.2M tok", KEEP["tok"]))
    assert fit(parts, 80) == "3 failed, 98.3 req/s, 12 429s, 40 retries, 1.2M tok"
    assert fit(parts, 30) == "3 failed, 12 429s, 40 retries"  # the rate goes before the 429s (it used to stay)
    assert fit(parts, 7) == ""
    assert all(len(fit(parts, n)) <= n for n in range(60))


def test_not_a_terminal_a_plain_line_every_few_seconds() -> None:
    clock, log = Clock(), io.StringIO()
    progress = Progress(1000, 100, enabled=True, desc="news", stream=log, clock=clock)
    for i in range(300):
        progress.attempt(retried=False, rate_limited=False)
        progress.row_done(failed=i % 100 == 0, tokens=50)
    clock.now += 1
    progress.refresh()
    assert log.getvalue() == ""  # not yet
    clock.now += LINE_EVERY_S
    progress.refresh()
    progress.refresh()  # a second refresh at the same moment prints nothing more
    progress.close(done=400)
    (line,) = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert line.startswith("news: 400/1,000 rows (40%), 27.3 rows/s, ~22 s to go; 3 failed, 27.3 req/s")


def test_on_a_terminal_the_bar_fits_and_messages_go_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    screen = Terminal()
    progress = Progress(3000, 0, enabled=True, desc="job", stream=screen)
    progress.tasks = 12
    for _ in range(10):
        progress.attempt(retried=True, rate_limited=True)
        progress.row_done(failed=True, tokens=10)
    progress.refresh()
    with progress.above():
        print("batchrun: a message", file=screen)
    progress.close(done=10)
    text = screen.getvalue()
    assert "\rbatchrun: a message\n" in text  # on a line of its own: the bar was cleared first
    assert "10 failed, 10 429s" in text  # 80 columns: the failures and 429s stay, the rest (tasks out) go first
    assert "| 10/3,000 [" in text.split("\r")[-1]  # the last drawn state is what the run directory holds
    assert max(len(drawn.rstrip("\n")) for drawn in text.split("\r")) <= 80


def test_a_piped_run_draws_no_carriage_return_bar(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=20)
    ran = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "submit", str(job)], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert "\r" not in ran.stderr and "%|" not in ran.stderr
    assert "finished: 20 succeeded" in ran.stdout
