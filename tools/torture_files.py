"""`make torture`, the run directory's own suites: a disk that fills and frees space while in-flight rows finish,
and torn, garbled and repeated lines placed at random in a finished run directory.

Both end with the checks every suite ends with (`torture.finish`): every input row exactly once, no torn line,
usage.json equal to a fold over the records, the key nowhere.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

import orjson

from batchrun.store.rundir import FAILURES, RESULTS
from tools.bench_kit import PY, write_prompts
from tools.torture_kit import KEY_ENV, Outcome, finish, job_spec, prompt, provider, start_submit


def disk_frees_in_grace(work: Path, rows: int = 400, limit_bytes: int = 30_000) -> Outcome:
    """The disk fills part-way through a record (a file-size limit stands in for it), then space comes back
    while the 5 s grace lets the rows in flight finish: their records must not land on the torn one, and the
    resume must end with every row once."""
    out = Outcome("disk fills, then frees in the grace", rows=rows)
    log = work / "frees.log"
    with provider("--latency", "1.5") as (key, sim):  # rows still in flight a while after the disk fills
        prompts = write_prompts(work / "frees.jsonl", rows, prompt)
        job = job_spec(work, "frees", sim.url, prompts, timeout_s=10, cache={"mode": "off"})
        results = work / "runs" / "frees" / RESULTS
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]

        def small_disk() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing us
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))

        proc = start_submit(job, key, log, preexec_fn=small_disk)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if "stopping: waiting" in log.read_text(errors="replace"):  # a write failed: the grace has begun
                break
            if results.exists() and results.stat().st_size >= limit_bytes - 1:  # a write was cut at the limit
                break
            time.sleep(0.005)
        if proc.poll() is None:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space is back, mid-grace
            out.faults["space freed in the grace"] = 1
        else:
            out.problems.append("the run ended before its disk filled: nothing was tried")
        code = proc.wait(120)
        out.faults["write errors"] = 1
        if code != 1 or "then run the same command again to resume" not in log.read_text(errors="replace"):
            out.problems.append(f"the full disk ended the run with exit {code}, not a clean stop")
        data = results.read_bytes() if results.exists() else b""
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                out.problems.append(f"{RESULTS} line {number} is not a whole record after the stop")
        if start_submit(job, key, log).wait(120) != 0:
            out.problems.append("the resume after the full disk did not finish")
    return finish(out, work / "runs" / "frees", rows, key, log)


def damage_lines(run_dir: Path, rng: random.Random, count: int) -> dict[str, int]:
    """Damage `count` random record lines in place: a line cut part-way with the next glued to it, bytes
    garbled in the middle, a line written twice. Returns how many of each kind."""
    kinds = {"cut and glued": 0, "garbled": 0, "repeated": 0}
    for name in (RESULTS, FAILURES):
        path = run_dir / name
        if not path.exists():
            continue
        lines = path.read_bytes().splitlines(keepends=True)
        share = count if name == RESULTS else max(1, count // 10)
        for at in sorted(rng.sample(range(len(lines)), min(share, len(lines))), reverse=True):
            kind = rng.choice(list(kinds))
            line = lines[at]
            if kind == "cut and glued":
                lines[at] = line[: rng.randrange(1, len(line) - 1)]  # the next line now starts on this one
            elif kind == "garbled":
                middle = rng.randrange(10, len(line) - 10)
                lines[at] = line[:middle] + b"\x00\xff garbled \x00" + line[middle + 5 :]
            else:
                lines.insert(at, line)
            kinds[kind] += 1
        path.write_bytes(b"".join(lines))
    return kinds


def torn_lines(work: Path, rows: int = 600, count: int = 20, seed: int = 5) -> Outcome:
    """A finished run directory with lines damaged at random: status, report, export and show say so and
    exit 0, never a traceback; the resume sends again exactly the rows left without a whole record."""
    out = Outcome("torn lines in a finished run", rows=rows)
    log = work / "torn.log"
    with provider("--latency", "0", "--error-rate", "0.02") as (key, sim):
        job = job_spec(work, "torn", sim.url, write_prompts(work / "torn.jsonl", rows, prompt), cache={"mode": "off"})
        run_dir = work / "runs" / "torn"
        if start_submit(job, key, log).wait(120) not in (0, 3):
            out.problems.append("the first run did not finish")
            return finish(out, run_dir, rows, key, log)
        out.faults.update(damage_lines(run_dir, random.Random(seed), count))
        env = {**os.environ, KEY_ENV: key}
        some_id = orjson.loads((run_dir / RESULTS).read_bytes().splitlines()[-1])["custom_id"]
        for args in (
            ["status", str(run_dir)],
            ["report", str(run_dir)],
            ["export", str(run_dir), "--to", str(work / "torn.parquet")],
            ["show", str(run_dir), some_id],
        ):
            ran = subprocess.run([*PY, *args], capture_output=True, text=True, env=env, timeout=120)
            if ran.returncode != 0 or "Traceback" in ran.stderr:
                out.problems.append(f"batchrun {args[0]} exited {ran.returncode}: {ran.stderr.strip()[-300:]}")
            elif args[0] != "show" and "line" not in ran.stdout + ran.stderr:
                out.problems.append(f"batchrun {args[0]} did not name a damaged line")
        if start_submit(job, key, log).wait(120) not in (0, 3):
            out.problems.append("the resume after the damage did not finish")
        out.notes.append(f"{sim.stats().get('requests', 0):,} requests in all for {rows:,} rows")
    return finish(out, run_dir, rows, key, log)
