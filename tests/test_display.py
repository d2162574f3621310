"""What a run shows: the bar at fixed widths on a real pseudo-terminal, the closing summary agreeing with it, and
which limit bound the run (summary, status, estimate)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from batchrun.engine.progress import KEEP, Stat, fit, layout
from batchrun.limits.binding import NOTHING, bound_by

from .helpers import cli, make_job, out_dir_usage, spawn_submit, submit
from .simserver import SimServer

KEY = {"ZHIPUAI_API_KEY": "test-key-not-secret"}


def on_pty(args: list[str], columns: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`batchrun ARGS` on a pseudo-terminal `columns` wide: its exit status and everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": str(columns), **(env or {})},
        close_fds=True,
    )
    os.close(slave)
    drawn = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end is closed: the command ended
                break
            if not chunk:
                break
            drawn += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(30), drawn.decode("utf-8", "replace")


def frames(screen: str) -> list[str]:
    """The bars' states as drawn, one per carriage return, as wide as they show: the cursor moves that place a
    second bar (a start-up phase's, under the run's) take no column."""
    visible = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen)
    return [f for part in visible.split("\n") for f in part.split("\r") if "%|" in f]


STATS = [
    Stat("28 failed", KEEP["failed"]),
    Stat("3 tasks out", KEEP["tasks"]),
    Stat("98.3 req/s", KEEP["req/s"]),
    Stat("1,204 429s", KEEP["429s"]),
    Stat("40 retries", KEEP["retries"]),
    Stat("1.2M tok", KEEP["tok"]),
]


def test_fit_drops_the_least_useful_first_and_the_failures_last() -> None:
    assert fit(STATS, 200) == "28 failed, 3 tasks out, 98.3 req/s, 1,204 429s, 40 retries, 1.2M tok"
    assert fit(STATS, 50) == "28 failed, 3 tasks out, 1,204 429s, 40 retries"
    assert fit(STATS, 21) == "28 failed, 1,204 429s"
    assert fit(STATS, 9) == "28 failed"
    assert fit(STATS, 8) == ""
    for width in range(0, 120):
        shown = fit(STATS, width)
        assert len(shown) <= width
        if width >= len("28 failed"):
            assert shown.startswith("28 failed")  # whatever else goes, the failures stay


def test_layout_keeps_the_failures_by_narrowing_the_bar_then_the_name() -> None:
    stats = [Stat("28 failed", 0), Stat("12.0 req/s", 5)]
    for width in range(60, 130):
        desc, postfix = layout(stats, width, "news-summaries-2024", len("10,000"))
        assert "28 failed" in postfix, width
        assert desc == "news-summaries-2024" or desc.endswith("…")


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_the_bar_fits_each_width_keeps_the_failures_and_separates_thousands(tmp_path: Path, columns: int) -> None:
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" #sim:error=400:1214" if i % 40 == 0 else "")} for i in range(1100)]
    job = make_job(tmp_path, "", rows, provider={"name": "simulated"}, limits={"concurrency": 64})
    code, screen = on_pty(["submit", str(job)], columns)
    assert code == 3, screen
    drawn = frames(screen)
    assert drawn, screen
    last = drawn[-1]
    assert "1,100/1,100" in last  # tqdm's own counts, with separators
    assert "28 failed" in last
    assert all(len(f) <= columns for f in drawn)
    assert "28 failed" in screen.split("finished with failures:")[-1]


def test_async_bar_and_summary_agree_and_the_summary_names_tasks_and_polls(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(task_s=(0.1, 0.3))
    root = server.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" #sim:429=1 #sim:retry-after=0" if i < 3 else "")} for i in range(8)]
    job = make_job(
        tmp_path,
        "",
        rows,
        provider={"name": "zhipu", "base_url": root + "/api/paas/v4", "mode": "async"},
        limits={"concurrency": 4, "poll_rps": 200},
    )
    code, screen = on_pty(["submit", str(job)], 160, KEY)
    assert code == 0, screen
    last = frames(screen)[-1]
    assert "3 429s, 3 retries" in last
    summary = screen.split("job: finished")[-1]
    polls = server.stats()["polls"]
    assert f"requests 11 (tasks submitted 8, polls {polls:,}), retries 3 (429s 3)" in summary


def test_a_resumed_async_run_keeps_the_429s_of_its_held_tasks(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(task_s=(2.0, 2.5))
    root = server.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" #sim:429=1 #sim:retry-after=0" if i < 2 else "")} for i in range(6)]
    job = make_job(
        tmp_path,
        "",
        rows,
        provider={"name": "zhipu", "base_url": root + "/api/paas/v4", "mode": "async"},
        limits={"concurrency": 4, "poll_rps": 200},
    )
    tasks = tmp_path / "runs" / "job" / "tasks.jsonl"
    proc = spawn_submit(job, env=KEY)
    deadline = time.monotonic() + 60
    while not (tasks.exists() and tasks.read_bytes().count(b"\n") == 6):  # all held, none answered yet
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    result = submit(job, env=KEY)
    assert result.exit_code == 0, result.output
    assert "retries 2 (429s 2)" in result.stdout
    assert out_dir_usage(tmp_path)["rate_limited"] == 2


@pytest.mark.parametrize("polled", [True, False], ids=["async", "sync"])
def test_an_older_usage_json_without_the_tasks_counter_is_recounted_only_where_tasks_ran(
    tmp_path: Path, sim: SimServer, polled: bool
) -> None:
    """An older version's usage.json has no count of async tasks: one whose run polled is recounted from the
    records; any other is trusted as it is (a recount reads every record, which a large resume cannot afford)."""
    job = make_job(tmp_path, sim.base_url, n=4)
    assert submit(job, "--limit", "2").exit_code == 0
    usage_path = tmp_path / "runs" / "job" / "usage.json"
    data = orjson.loads(usage_path.read_bytes())
    del data["tasks"]
    data["polls"] = 1 if polled else 0
    data["requests"] = 999  # an older version's totals would be taken as they are; these are recounted
    usage_path.write_bytes(orjson.dumps(data))
    result = submit(job)
    assert result.exit_code == 0, result.output
    assert "did not match" not in result.output
    assert out_dir_usage(tmp_path)["requests"] == (4 if polled else 1001) and out_dir_usage(tmp_path)["tasks"] == 0


def test_a_run_held_back_by_concurrency_says_so_in_the_summary_and_status(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(latency=0.5, latency_dist="fixed")
    job = make_job(tmp_path, server.base_url, n=16, limits={"concurrency": 2, "rpm": 6000})
    result = submit(job, "--no-cache")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("  bound by: "))
    assert re.fullmatch(r"  bound by: concurrency 2 × [\d.,]+ s latency ≈ [\d,]+ RPM(; .*)?", line), line
    status = cli("status", str(tmp_path / "runs" / "job"))
    assert "  bound by concurrency 2 × " in status.stdout
    assert orjson.loads(cli("status", str(tmp_path / "runs" / "job"), "--json").stdout)["bound_by"].startswith(
        "concurrency 2 × "
    )


def test_a_run_held_back_by_a_given_rpm_names_it(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=10, limits={"rpm": 120})
    result = submit(job, "--no-cache")
    assert result.exit_code == 0, result.output
    assert "  bound by: RPM 120 (given)" in result.stdout


def test_a_short_run_was_bound_by_nothing(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=3, limits={"concurrency": 8})
    result = submit(job, "--no-cache")
    assert f"  bound by: {NOTHING}" in result.stdout


def test_bound_by_names_each_limit() -> None:
    def throttle(gate: str, **extra: object) -> dict[str, object]:
        waited = dict.fromkeys(("concurrency", "rpm", "tpm", "paused", "max_pending"), 0.0)
        waited[gate] = 30.0
        pace = {"waited_s": waited, "span_s": 60.0, "sent": 600, "latency_s": 4.1, "rpm_source": None}
        pace.update(extra.pop("pace", {}))  # type: ignore[call-overload]
        given = {"rpm": None, "tpm": None, "concurrency": None, "max_pending": 1000, **extra.pop("given", {})}  # type: ignore[dict-item]
        return {"rpm": None, "rpm_learned": False, "concurrency": 64, "pace": pace, "given": given, **extra}

    assert bound_by(throttle("concurrency", given={"concurrency": 64})) == "concurrency 64 × 4.1 s latency ≈ 937 RPM"
    assert bound_by(throttle("rpm", rpm=597.0, pace={"rpm_source": "given"}, given={"rpm": 600})) == "RPM 600 (given)"
    assert bound_by(throttle("rpm", rpm=480.0, rpm_learned=True)) == "the provider's 429s (learned ceiling 480 RPM)"
    named = throttle("rpm", rpm=298.5, rpm_ceiling=300.0, pace={"rpm_source": "named"})
    assert bound_by(named) == "RPM 300 (the provider's, named in its 429s)"
    assert bound_by(throttle("tpm", pace={"tpm_source": "given"}, given={"tpm": 100_000})) == "TPM 100,000 (given)"
    assert bound_by(throttle("concurrency", concurrency_ceiling=12, concurrency=12)).startswith(
        "concurrency 12 (the provider's limit on requests in flight)"
    )
    short = throttle("rpm", pace={"waited_s": {"rpm": 0.5}, "span_s": 1.0})
    assert bound_by(short) == NOTHING
    assert bound_by({"rpm": 600}) is None  # an older version's usage.json: nothing said


def test_estimate_includes_concurrency_and_names_what_binds(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=1000, limits={"concurrency": 2, "rpm": 6000})
    result = cli("estimate", str(job))
    assert result.exit_code == 0, result.output
    assert "the concurrency limit binds" in result.stdout
    assert re.search(
        r"  concurrency +2 × [\d.]+ s latency ≈ [\d,]+ RPM \(latency assumed: set it with --latency\)", result.stdout
    )
    simulated = make_job(tmp_path, "", n=3, name="sim0", provider={"name": "simulated", "simulate": {"latency": 0}})
    assert "the RPM limit binds" not in cli("estimate", str(simulated)).stdout  # no RPM given, nothing divided by 0
    faster = cli("estimate", str(job), "--latency", "0.01")
    assert "the RPM limit binds" in faster.stdout
