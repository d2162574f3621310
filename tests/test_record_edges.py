"""A record counts only when it is whole: damaged, repeated and torn lines in a real run directory, a usage.json
that disagrees with the records, a missing manifest, a run directory that cannot be written, a full disk."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from batchrun.records import error, record
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.rundir import FAILURES, MANIFEST, PREVIOUS, RESULTS, USAGE

from .helpers import cli, make_job, read_jsonl, submit
from .simserver import AppServer, SimServer

FP = {"input": "x"}


def finished_run(tmp_path: Path, sim: SimServer, n: int = 20) -> tuple[Path, Path]:
    job = make_job(tmp_path, sim.base_url, n=n, cache={"mode": "off"})
    assert submit(job).exit_code == 0
    return job, tmp_path / "runs" / "job"


def glue_line(run_dir: Path, at: int, keep: int = 30) -> tuple[int, int]:
    """Cut line `at` (0-based) of results.jsonl after `keep` bytes, so the next record sits on its line, as an
    older version left a write cut by a full disk. Returns (the torn row, the row glued after it)."""
    path = run_dir / RESULTS
    lines = path.read_bytes().splitlines(keepends=True)
    torn, glued = orjson.loads(lines[at])["row"], orjson.loads(lines[at + 1])["row"]
    lines[at] = lines[at][:keep]
    path.write_bytes(b"".join(lines))
    return torn, glued


def test_a_torn_record_with_the_next_glued_to_it_is_not_done(tmp_path: Path, sim: SimServer) -> None:
    job, run_dir = finished_run(tmp_path, sim)
    torn, glued = glue_line(run_dir, 4)

    status = cli("status", str(run_dir))
    assert status.exit_code == 0
    assert "19 of 20 done" in status.stdout and "1 pending" in status.stdout
    assert f"{RESULTS} line 5" in status.stdout  # named once, with its line

    for args in (["export", str(run_dir), "--to", str(tmp_path / "x.jsonl")], ["report", str(run_dir)]):
        ran = cli(*args)
        assert ran.exit_code == 0 and f"{RESULTS} line 5" in ran.stderr
    exported = {r["row"]: r for r in read_jsonl(tmp_path / "x.jsonl")}
    assert exported[torn]["status"] == "pending" and exported[glued]["status"] == "succeeded"
    assert cli("show", str(run_dir), f"r{glued}").exit_code == 0  # the glued record is whole: it is found

    before = sim.sim.stats()["requests"]
    resumed = submit(job)
    assert resumed.exit_code == 0, resumed.output
    assert "19 of 20 rows already done" in resumed.stderr and f"{RESULTS} line 5" in resumed.stderr
    assert sim.sim.stats()["requests"] - before == 1  # only the torn row is sent again
    rows = [r["row"] for r in read_jsonl(run_dir / RESULTS)]  # every line whole, every row once
    assert sorted(rows) == list(range(1, 21))
    assert len(list((run_dir / PREVIOUS).glob("damaged-*/" + RESULTS))) == 1  # the damaged bytes are kept aside
    usage = orjson.loads((run_dir / USAGE).read_bytes())
    assert usage["rows_succeeded"] == 20 and usage["requests"] == 20  # a fold over the whole records

    again = submit(job)  # reported once: the next run finds nothing to say
    assert again.exit_code == 0 and "line" not in again.stderr


def test_a_garbled_record_is_pending_and_a_repeated_one_counts_once(tmp_path: Path, sim: SimServer) -> None:
    job, run_dir = finished_run(tmp_path, sim)
    path = run_dir / RESULTS
    lines = path.read_bytes().splitlines(keepends=True)
    garbled = orjson.loads(lines[2])["row"]
    lines[2] = lines[2][:40] + b"\x00\xff" + lines[2][42:]
    lines.append(lines[7])  # a line written twice
    path.write_bytes(b"".join(lines))

    status = cli("status", str(run_dir), "--json")
    st = orjson.loads(status.stdout)
    assert st["rows_succeeded"] == 19 and st["rows_pending"] == 1
    assert any("a second record of row" in w for w in st["warnings"])
    assert any(f"{RESULTS} line 3" in w for w in st["warnings"])

    resumed = submit(job)
    assert resumed.exit_code == 0, resumed.output
    records = read_jsonl(path)
    assert sorted(r["row"] for r in records) == list(range(1, 21)) and garbled in {r["row"] for r in records}


def test_usage_json_that_disagrees_with_the_records_is_recounted(tmp_path: Path, sim: SimServer) -> None:
    job, run_dir = finished_run(tmp_path, sim)
    usage = orjson.loads((run_dir / USAGE).read_bytes())
    usage["rows_succeeded"] += 5  # the covered offsets and the CRC still match the files
    usage["prompt_tokens"] = 1
    (run_dir / USAGE).write_bytes(orjson.dumps(usage))

    st = orjson.loads(cli("status", str(run_dir), "--json").stdout)
    assert st["rows_succeeded"] == 20 and st["rows_done"] == 20

    resumed = submit(job)
    assert resumed.exit_code == 0 and "recounted" in resumed.stderr
    fixed = orjson.loads((run_dir / USAGE).read_bytes())
    recount = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in read_jsonl(run_dir / RESULTS))
    assert fixed["rows_succeeded"] == 20 and fixed["prompt_tokens"] == recount


@pytest.mark.parametrize("manifest", [None, b"{not json", b"[1, 2]"])
def test_records_without_a_readable_manifest_are_never_taken_as_this_job(
    tmp_path: Path, sim: SimServer, manifest: bytes | None
) -> None:
    job, run_dir = finished_run(tmp_path, sim)
    if manifest is None:
        (run_dir / MANIFEST).unlink()
    else:
        (run_dir / MANIFEST).write_bytes(manifest)
    before = sim.sim.stats()["requests"]
    ran = submit(job)
    assert ran.exit_code == 2 and "Traceback" not in ran.output
    assert MANIFEST in ran.stderr and "--fresh" in ran.stderr and ran.stderr.count("\n") == 1
    assert sim.sim.stats()["requests"] == before
    status = cli("status", str(run_dir))
    assert status.exit_code == 2 and MANIFEST in status.stderr

    fresh = submit(job, "--fresh")
    assert fresh.exit_code == 0 and len(read_jsonl(run_dir / RESULTS)) == 20


def test_a_failed_write_is_cut_back_so_the_next_record_starts_a_whole_line(tmp_path: Path) -> None:
    """In a process of its own, a file-size limit fills the disk part-way through a record; then space comes back
    and more records are written."""
    script = f"""
import resource, signal, sys
from pathlib import Path
from batchrun.store.checkpoint import Checkpoint
from batchrun.errors import CheckpointWriteError
from batchrun.records import record
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
cp = Checkpoint(Path({str(tmp_path / "run")!r}))
cp.open({FP!r}, {{}}, fresh=False)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, hard))
failed = []
for row in range(1, 40):
    try:
        cp.append(record(row, f"r{{row}}", "m", None, None, attempts=1), failed=False)
    except CheckpointWriteError as exc:
        failed.append(row)
        if len(failed) == 3:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space freed
cp.write_usage({{"rows_succeeded": 39 - len(failed), "rows_failed": 0}})
cp.close()
print(",".join(map(str, failed)))
"""
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    failed = {int(r) for r in ran.stdout.strip().split(",")}
    assert len(failed) == 3
    data = (tmp_path / "run" / RESULTS).read_bytes()
    rows = [orjson.loads(line)["row"] for line in data.splitlines()]  # every line whole
    assert sorted(rows) == sorted(set(range(1, 40)) - failed)
    state = Checkpoint(tmp_path / "run").open(FP, {}, fresh=False)
    assert state.done.count == 36 and not state.notes


def test_side_file_entry_glued_after_a_torn_one_is_still_read(tmp_path: Path) -> None:
    """A task id glued after a torn tasks.jsonl line must still be polled, never submitted (and paid) again."""
    cp = Checkpoint(tmp_path)
    cp.open(FP, {}, fresh=False)
    cp.close()
    first = orjson.dumps({"row": 1, "task_id": "t-1"}) + b"\n"
    second = orjson.dumps({"row": 2, "task_id": "t-2"}) + b"\n"
    (tmp_path / "tasks.jsonl").write_bytes(first[:12] + second)
    state = Checkpoint(tmp_path).open(FP, {}, fresh=False)
    assert state.tasks[2]["task_id"] == "t-2" and 1 not in state.tasks


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path: Path, sim: SimServer) -> None:
    """A read-only mount (root, who may write anywhere else, gets one of its own), or a folder this user may not
    write."""
    job, run_dir = finished_run(tmp_path, sim, n=5)
    command = [sys.executable, "-m", "batchrun.cli", "submit", str(job), "--no-progress"]
    if os.geteuid() == 0:
        mount = f'mount --bind -o ro {run_dir} {run_dir} && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", mount, "sh", *command]
    else:
        run_dir.chmod(0o555)
    try:
        ran = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    finally:
        run_dir.chmod(0o755)
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr and ran.stderr.count("\n") == 1
    assert "cannot write to the run directory" in ran.stderr and "output_dir" in ran.stderr


def test_a_disk_full_at_start_is_one_line(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=5, cache={"mode": "off"})

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    ran = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "submit", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        preexec_fn=full_disk,
        cwd=tmp_path,
    )
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr and ran.stderr.count("\n") == 1
    assert "run the same command again" in ran.stderr
    assert sim.sim.stats()["requests"] == 0


def test_a_failure_record_glued_in_failures_jsonl_counts(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.open(FP, {}, fresh=False)
    for row in (1, 2):
        cp.append(record(row, f"r{row}", "m", None, error("x", "bad", None, 1), attempts=1), failed=True)
    cp.close()
    path = tmp_path / FAILURES
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0][:20] + lines[1])
    state = Checkpoint(tmp_path).open(FP, {}, fresh=False)
    assert 2 in state.done and 1 not in state.done and state.usage.rows_failed == 1


def test_a_key_quoted_in_a_refusal_reaches_no_file_and_no_terminal(tmp_path: Path) -> None:
    """A gateway that refuses the key and quotes it whole in its message (as some do, in 401 bodies), with a
    terminal escape after it."""
    key = "sk-echoed-" + "k" * 24

    async def refuse(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        message = f"Incorrect API key provided: {sent}. You can find your API key at your dashboard.\x1b[2J"
        return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    app.router.add_get("/v1/models", refuse)
    with AppServer(app) as gateway:
        base_url = gateway.url + "/v1"
        provider = {"name": "openai", "base_url": base_url, "api_key_env": "GATEWAY_API_KEY"}
        job = make_job(tmp_path, base_url, n=5, provider=provider, cache={"mode": "off"})
        ran = submit(job, env={"GATEWAY_API_KEY": key})
        asked = ("models", "--provider", "openai", "--base-url", base_url, "--api-key-env", "GATEWAY_API_KEY")
        models = cli(*asked, env={"GATEWAY_API_KEY": key})
    assert ran.exit_code == 1, ran.output
    assert "Incorrect API key" in ran.output and "[redacted]" in ran.output  # the message is kept, the key not
    assert key not in ran.output
    assert models.exit_code == 1 and "Incorrect API key" in models.output and key not in models.output
    for said in (ran.output, models.output):  # the gateway's ANSI escape is shown, not obeyed
        assert "\x1b" not in said and "\\x1b[2J" in said
    for path in (tmp_path / "runs" / "job").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path.name


def test_a_sigterm_after_the_run_loop_still_stops_cleanly() -> None:
    """asyncio's remove_signal_handler leaves SIGTERM at its default, so a SIGTERM while the session flushes and
    closes killed the process (exit -15, `make torture`'s SIGTERM storm): the handler from before is put back."""
    import asyncio

    from batchrun import halt

    async def session() -> None:  # a session's signal handling, as run_job wraps the whole of it
        with halt.watching(None, lambda from_keyboard: None):
            await asyncio.sleep(0)

    def before(signum: int, frame: object) -> None: ...

    previous = signal.signal(signal.SIGTERM, before)
    try:
        asyncio.run(session())
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)
