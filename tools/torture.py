"""`make torture`: try hard to lose a row or pay for one twice, and print what was tried and what survived.

Crash torture: a run against a simulated provider that fails 5 % of requests with HTTP 500, drops 1 % of
connections and answers some requests only after the client's timeout, killed with SIGKILL at random
moments and resumed each time; then every input row must have exactly one final record, no line may be
torn, usage.json must agree with the records, and the provider may have billed a row twice only for
requests that were in flight at a kill or answered after the timeout. The same in async mode, where a
task whose id was written down must never be submitted again. Then staged faults, a full disk and SIGTERM
storms. `tests/test_torture.py` runs short versions of the same functions in `make test`.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from batchrun.rows.structured import Checker
from batchrun.spec.output import OutputSpec
from batchrun.store.rundir import FAILURES, REPAIRS, RESULTS, TASKS
from tools.bench import BENCH_SCHEMA
from tools.bench_kit import PY, write_prompts
from tools.torture_files import disk_frees_in_grace, torn_lines
from tools.torture_kit import (
    CONCURRENCY,
    KEY_ENV,
    Outcome,
    finish,
    job_spec,
    prompt,
    provider,
    start_submit,
)


def crash_torture(
    work: Path, rows: int, kills: int, *, mode: str = "sync", seed: int = 1, structured: bool = False
) -> Outcome:
    """Kill a run with SIGKILL at `kills` random moments, resume it each time, then check everything. With
    `structured`, the job has an output schema and 20 % of first answers do not fit it: every row must end valid,
    each repair going on from its last step rather than asking the first question again."""
    rng = random.Random(seed)
    name = f"crash-{mode}" + ("-structured" if structured else "")
    out = Outcome(f"crash torture, {mode}" + (", structured output" if structured else ""), rows=rows)
    shaped: dict[str, Any] = {"output": {"schema": BENCH_SCHEMA}, "params": {"max_tokens": 256}} if structured else {}
    log = work / f"{name}.log"
    run_dir = work / "runs" / name
    with provider(
        "--latency",
        "0.05",
        "--error-rate",
        "0.05",
        "--drop-rate",
        "0.01",
        "--slow-rate",
        "0.002",
        "--slow-s",
        "3",
        "--seed",
        str(seed),
        "--task-s",
        "0.2",
        "1.0",
        *(["--invalid-json-rate", "0.2"] if structured else []),
    ) as (key, sim):
        job = job_spec(work, name, sim.url, write_prompts(work / f"{name}.jsonl", rows, prompt), mode=mode, **shaped)
        while out.kills < kills:
            proc = start_submit(job, key, log)
            time.sleep(rng.uniform(0.3, 2.5))
            if proc.poll() is not None:  # finished before the kill came
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            out.kills += 1
            out.inflight_at_kills += int(sim.stats()["inflight"])
        final = start_submit(job, key, log)
        if final.wait(600) not in (0, 3):
            out.problems.append(f"the final resume exited {final.returncode}; see {log}")
        time.sleep(0.5)  # let answers to killed clients finish, so the bill is complete
        stats = sim.stats()
    out.extra_bills = int(stats["billed_requests"]) - int(stats["billed_prompts"])
    out.faults.update({k: int(v) for k, v in stats["injected"].items()})
    if structured:
        out.extra_bills -= check_outputs(run_dir, out)
    # A row may be paid for again only if its request was in flight at a kill (the client can have at most
    # CONCURRENCY out, and some answers were on their way back, unseen by the provider's count) or was
    # answered after the client's timeout.
    slow = int(stats["injected"].get("slow", 0))
    out.bill_bound = out.kills * CONCURRENCY + slow
    out.notes.append(
        f"{out.extra_bills} rows billed again: the provider was handling {out.inflight_at_kills} "
        f"requests at the {out.kills} kills, and answered {slow} after the client's timeout"
    )
    if mode == "async":
        out.resubmitted_tasks = resubmitted_tasks(run_dir)
        out.notes.append(
            f"{stats['tasks_submitted']} tasks submitted for {rows} rows; "
            f"{out.resubmitted_tasks} rows submitted again while their recorded task was good"
        )
    return finish(out, run_dir, rows, key, log)


def batch_torture(
    work: Path, rows: int, kills: int, *, seed: int = 1, lines: int = 2000, batch_s: float = 8.0
) -> Outcome:
    """The batch lane killed with SIGKILL at random moments (writing shards, uploading, creating, polling,
    harvesting) and resumed each time: every row once, and no file uploaded or batch created again for a shard
    whose file id or batch id reached the disk."""
    rng = random.Random(seed)
    name = "crash-batch"
    out = Outcome("crash torture, batch lane", rows=rows)
    log = work / f"{name}.log"
    run_dir = work / "runs" / name
    with provider("--batch-s", str(batch_s), "--seed", str(seed)) as (key, sim):
        job = job_spec(
            work,
            name,
            sim.url,
            write_prompts(work / f"{name}.jsonl", rows, prompt),
            mode="batch",
            batch={"poll_s": 0.1, "max_poll_s": 0.5, "max_lines": lines},
        )
        while out.kills < kills:
            proc = start_submit(job, key, log)
            time.sleep(rng.uniform(0.05, 1.2))  # early kills land in writing, uploading and creating
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            out.kills += 1
        final = start_submit(job, key, log)
        if final.wait(600) not in (0, 3):
            out.problems.append(f"the final resume exited {final.returncode}; see {log}")
        stats = sim.stats()
    events = [orjson.loads(line) for line in (run_dir / "batches.jsonl").read_bytes().splitlines()]
    per_shard: Counter[tuple[int, str]] = Counter((e["shard"], e["event"]) for e in events)
    twice = {kind: sum(1 for (_, k), n in per_shard.items() if k == kind and n > 1) for kind in ("uploaded", "created")}
    if twice["uploaded"] or twice["created"]:
        out.problems.append(
            f"shards uploaded again after their file id was on disk: {twice['uploaded']}, "
            f"batches created again after their id was on disk: {twice['created']}"
        )
    if stats["files_with_two_batches"]:
        out.problems.append(f"{stats['files_with_two_batches']} uploaded files got a second batch")
    shards = len({e["shard"] for e in events})
    out.extra_bills = int(stats["billed_requests"]) - int(stats["billed_prompts"])
    out.bill_bound = out.kills * lines  # a kill after a batch was created but before its id reached the disk
    out.notes.append(
        f"{shards} shards; the provider saw {stats['files_uploaded']} uploads and {stats['batches_created']} batches "
        f"(a kill mid-upload or mid-create may leave one the run never learnt of); {out.extra_bills} rows billed "
        "again"
    )
    return finish(out, run_dir, rows, key, log)


def check_outputs(run_dir: Path, out: Outcome) -> int:
    """Every result's output fits the schema, no row is invalid; returns the questions asked again with more
    max_tokens (the same prompt billed twice, rightly)."""
    checker = Checker(OutputSpec(schema=BENCH_SCHEMA))
    for line in (run_dir / RESULTS).read_bytes().splitlines():
        record = orjson.loads(line)
        if "output" not in record or checker.judge(record["response"]["body"]).value != record["output"]:
            out.problems.append(f"row {record['row']}: its output is missing or does not fit the schema")
    for line in (run_dir / FAILURES).read_bytes().splitlines() if (run_dir / FAILURES).exists() else []:
        out.problems.append(f"row {orjson.loads(line)['row']} failed: {orjson.loads(line)['error']['code']}")
    steps = [orjson.loads(line) for line in (run_dir / REPAIRS).read_bytes().splitlines() if line.endswith(b"}")]
    kinds = Counter(step.get("kind") for step in steps)
    out.faults.update({f"spoilt ({kind})": n for kind, n in kinds.items()})
    return kinds.get("length", 0)


def resubmitted_tasks(run_dir: Path) -> int:
    """Rows submitted again although their recorded task was never reported expired or failed."""
    entries: dict[int, list[dict[str, Any]]] = {}
    for line in (run_dir / TASKS).read_bytes().splitlines():
        entry = orjson.loads(line)
        entries.setdefault(entry["row"], []).append(entry)
    bad = 0
    for tasks in entries.values():
        for later in tasks[1:]:
            reasons = [r["task_id"] for r in later.get("resubmitted") or []]
            if not set(t["task_id"] for t in tasks[: tasks.index(later)]) <= set(reasons):
                bad += 1
    return bad


# --- staged faults -------------------------------------------------------------------------------------------

FAULT_DIRECTIVES = {
    "429 storm": "#sim:storm=2",  # every request of every row refused for 2 s from this row's arrival
    "provider hangs past the timeout": "#sim:sleep=2.5",  # longer than the 1.5 s timeout, every attempt
    "malformed JSON in a 200": "#sim:garbage=1",
    "200 with no choices": "#sim:nochoices=1",
    "HTML body on a 500": "#sim:html=1",
    "connection reset mid-stream": "#sim:cut=1",
}


def fault_suite(work: Path, per_kind: int = 20) -> Outcome:
    """Rows that each meet one staged fault on their first attempts: all must end as one good record.
    The hanging rows can never be answered within the timeout: they must end as timeout failures."""
    out = Outcome("staged faults")
    log = work / "faults.log"
    run_dir = work / "runs" / "faults"
    prompts = [f"{kind} row {i} {directive}" for kind, directive in FAULT_DIRECTIVES.items() for i in range(per_kind)]
    out.rows = len(prompts)
    with provider("--latency", "0.02") as (key, sim):
        path = write_prompts(work / "faults.jsonl", len(prompts), lambda i: prompts[i])
        job = job_spec(
            work,
            "faults",
            sim.url,
            path,
            mode="stream",
            retry={"max_attempts": 4, "timeout_s": 1.5, "backoff_s": 0.05, "max_backoff_s": 0.2},
        )
        start_submit(job, key, log).wait(300)
    for f in (orjson.loads(x) for x in (run_dir / FAILURES).read_bytes().splitlines()):
        kind = prompts[int(str(f["custom_id"])[1:])].split(" row ")[0]  # ids are r<index>
        if kind != "provider hangs past the timeout" or f["error"]["code"] != "timeout":
            out.problems.append(f"unexpected failure for {kind}: {f['error']}")
    for kind in FAULT_DIRECTIVES:
        out.faults[kind] = per_kind
    return finish(out, run_dir, len(prompts), key, log)


def disk_full(work: Path, rows: int = 400, limit_bytes: int = 60_000) -> Outcome:
    """The run directory's disk fills up (a file-size limit stands in for it): a clean stop, then a resume
    on a roomier disk finishes with every row once and no torn line."""
    out = Outcome("disk fills up", rows=rows)
    log = work / "disk.log"
    with provider("--latency", "0.01") as (key, sim):
        job = job_spec(work, "disk", sim.url, write_prompts(work / "disk.jsonl", rows, prompt))

        def small_disk() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing us
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

        code = start_submit(job, key, log, preexec_fn=small_disk).wait(120)
        if code != 1 or "then run the same command again to resume" not in log.read_text(errors="replace"):
            out.problems.append(f"the full disk ended the run with exit {code}, not a clean stop")
        out.faults["write errors"] = 1
        if start_submit(job, key, log).wait(120) != 0:
            out.problems.append("the resume after the full disk did not finish")
    return finish(out, work / "runs" / "disk", rows, key, log)


def sigterm_storm(work: Path, rows: int = 3000, terms: int = 6, seed: int = 2) -> Outcome:
    """SIGTERM at random moments, some of them as usage.json is being flushed (every second): every stop
    must be clean (exit 130), and the run must resume to one record per row."""
    rng = random.Random(seed)
    out = Outcome("SIGTERM storm", rows=rows)
    log = work / "term.log"
    with provider("--latency", "0.05") as (key, sim):
        job = job_spec(work, "term", sim.url, write_prompts(work / "term.jsonl", rows, prompt))
        for _ in range(terms):
            sent = int(sim.stats()["requests"])
            said = log.stat().st_size if log.exists() else 0  # this session's lines come after
            proc = start_submit(job, key, log)
            while int(sim.stats()["requests"]) == sent and proc.poll() is None:  # wait for the run to start
                time.sleep(0.02)
            time.sleep(rng.uniform(0.5, 1.5))  # straddles the first flush, 1 s after the run starts
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            out.kills += 1
            if code == 0 and "finished: " in log.read_text(errors="replace")[said:]:
                out.notes.append("a SIGTERM came as the run had just finished: exit 0, as it did")
            elif code != 130:
                out.problems.append(f"SIGTERM ended the run with exit {code}, not 130")
        if start_submit(job, key, log).wait(300) != 0:
            out.problems.append("the final resume did not finish")
    out.faults["SIGTERM"] = out.kills
    return finish(out, work / "runs" / "term", rows, key, log)


# --- bad input -----------------------------------------------------------------------------------------------

BIG_LINE_BYTES = 10 * 1024 * 1024
BAD_LINES: list[tuple[bytes, str]] = [  # (line, what validate must say about it; "" for a good row)
    (b'{"id": "ok1", "prompt": "a fine row"}', ""),
    (b'{"id": "broken", "prompt": ', "line 2: not valid JSON"),
    (b'{"prompt": "no id at all: its row number is its id"}', ""),
    (b'{"id": "ok1", "prompt": "the same id again"}', "row 4: duplicate id 'ok1' (first at row 1)"),
    (b'{"id": "empty", "messages": []}', "row 5: 'messages' must be a non-empty list of messages, got an empty list"),
    (b'{"id": "wrongtype", "messages": "hello"}', "row 6: 'messages' must be a non-empty list of messages"),
    (b'{"id": ["a", "list"], "prompt": "x"}', "row 7: 'id' must be a non-empty string or a whole number"),
    (b'{"id": "number", "prompt": 42}', "row 8: 'prompt' must be a non-empty string, got int"),
    (b'{"id": "latin1", "prompt": "caf\xe9"}', "line 9: not valid UTF-8 (byte 0xe9"),
    (b'{"id": "big", "prompt": "' + b"x" * BIG_LINE_BYTES + b'"}', ""),
    (b'{"id": "ok2", "prompt": "another fine row"}', ""),
]


def bad_input_suite(work: Path) -> Outcome:
    """Every kind of bad row gets a message with its line or row number from validate and a failure record
    from submit, while the good rows (a 10 MB one among them) are answered; an empty file and a Parquet
    file without the column the template names stop cleanly before anything is sent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Outcome("bad input", rows=len(BAD_LINES))
    log = work / "bad.log"
    run_dir = work / "runs" / "bad"
    with provider("--latency", "0") as (key, sim):
        env = {**os.environ, KEY_ENV: key}
        path = work / "bad.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line, _ in BAD_LINES))
        job = job_spec(work, "bad", sim.url, path)
        checked = subprocess.run([*PY, "validate", str(job)], capture_output=True, text=True, env=env)
        for _, expected in BAD_LINES:
            if expected and expected not in checked.stdout:
                out.problems.append(f"validate did not say {expected!r}")
        if start_submit(job, key, log).wait(120) != 3:
            out.problems.append("submit of the bad input did not finish with failure records")
        (work / "empty.jsonl").write_bytes(b"")
        empty = subprocess.run(
            [*PY, "submit", str(job_spec(work, "empty", sim.url, work / "empty.jsonl")), "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
        )
        if empty.returncode != 0 or "0 succeeded, 0 failed, 0 pending of 0 rows" not in empty.stdout:
            out.problems.append(f"an empty input: exit {empty.returncode}: {empty.stdout}{empty.stderr}")
        pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), work / "cols.parquet")
        spec = job_spec(work, "cols", sim.url, work / "cols.parquet")
        data = yaml.safe_load(spec.read_text())
        data["input"] = {"path": str(work / "cols.parquet"), "template": "Summarise: {body}"}
        spec.write_text(yaml.safe_dump(data))
        missing = subprocess.run([*PY, "submit", str(spec), "--no-progress"], capture_output=True, text=True, env=env)
        if missing.returncode != 2 or "names {body}, but the first row has no field 'body'" not in missing.stderr:
            out.problems.append(
                f"a Parquet file without the template's column: exit {missing.returncode}: {missing.stderr}"
            )
        billed = int(sim.stats()["billed_prompts"])
    results = [orjson.loads(x) for x in (run_dir / RESULTS).read_bytes().splitlines()]
    # The row without an id is answered under its row number; the row repeating an id is never sent.
    if sorted(r["custom_id"] for r in results) != ["3", "big", "ok1", "ok2"] or billed != 4:
        out.problems.append(f"expected the four good rows answered, got {[r['custom_id'] for r in results]}")
    out.faults["bad rows"] = sum(1 for _, expected in BAD_LINES if expected)
    return finish(out, run_dir, len(BAD_LINES), key, log)


def print_table(outcomes: list[Outcome]) -> None:
    cols = (
        "suite",
        "rows",
        "kills",
        "lost",
        "dup",
        "torn",
        "usage ok",
        "extra bills / bound",
        "faults injected",
        "key found",
        "",
    )
    table = [cols]
    for o in outcomes:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(o.faults.items()) if v) or "-"
        table.append(
            (
                o.name,
                f"{o.rows:,}",
                str(o.kills),
                str(o.lost),
                str(o.duplicated),
                str(o.torn),
                "yes" if not o.usage_disagrees else "NO: " + ",".join(o.usage_disagrees),
                f"{o.extra_bills} / {o.bill_bound}",
                faults,
                str(o.secret_hits),
                "ok" if o.ok else "FAILED",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * len(widths)))
    for o in outcomes:
        for note in o.notes + o.problems:
            print(f"{o.name}: {note}")


@click.command(help=__doc__)
@click.option("--rows", default=20_000, show_default=True, help="Rows of each crash-torture run.")
@click.option("--kills", default=10, show_default=True, help="SIGKILLs per crash-torture run.")
@click.option("--seed", type=int, help="Seed of the random moments (default: from the clock).")
def main(rows: int, kills: int, seed: int | None) -> None:
    import tempfile

    seed = int(time.time()) % 10_000 if seed is None else seed
    t0 = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="batchrun-torture-") as tmp:
        os.environ["XDG_CACHE_HOME"] = f"{tmp}/xdg-cache"  # a response cache of this run's own, empty at start
        for suite in (
            lambda w: crash_torture(w, rows, kills, seed=seed),
            lambda w: crash_torture(w, rows, kills, mode="async", seed=seed + 1),
            lambda w: crash_torture(w, rows // 4, kills, seed=seed + 3, structured=True),
            lambda w: batch_torture(w, rows, kills, seed=seed + 2),
            fault_suite,
            disk_full,
            disk_frees_in_grace,
            lambda w: torn_lines(w, seed=seed + 4),
            sigterm_storm,
            bad_input_suite,
        ):
            work = Path(tmp) / f"s{len(outcomes)}"
            work.mkdir()
            outcomes.append(suite(work))
            print(f"... {outcomes[-1].name} done ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    print(f"\nbatchrun torture (seed {seed}): {time.monotonic() - t0:.0f} s\n")
    print_table(outcomes)
    sys.exit(0 if all(o.ok for o in outcomes) else 1)


if __name__ == "__main__":
    main()
