"""What the `make torture` suites share: the outcome they report, the provider they run against, and the checks
each ends with (every row once, no torn line, usage.json a fold over the records, the key nowhere)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from batchrun.store.rundir import FAILURES, RESULTS, USAGE
from batchrun.store.usage import COUNTERS, Usage
from tools.bench_kit import PY, Simulator

KEY_ENV = "BATCHRUN_SIM_API_KEY"
CONCURRENCY = 32


@dataclass
class Outcome:
    """What one suite tried and what survived."""

    name: str
    rows: int = 0
    kills: int = 0
    lost: int = 0  # input rows without a final record
    duplicated: int = 0  # rows with more than one final record
    torn: int = 0  # record lines that are not whole JSON lines
    usage_disagrees: list[str] = field(default_factory=list)  # usage.json counters that differ from the records
    extra_bills: int = 0  # answers the provider billed beyond one per row
    bill_bound: int = 0  # requests that can be in flight at the kills + answers slower than the client's timeout
    inflight_at_kills: int = 0  # requests the provider was handling when the client was killed
    resubmitted_tasks: int = 0  # async: rows submitted again while their recorded task was still good
    faults: Counter[str] = field(default_factory=Counter)
    secret_hits: int = 0  # places the API key was found in the run directory or the logs
    notes: list[str] = field(default_factory=list)  # what the table cannot say
    problems: list[str] = field(default_factory=list)  # what went wrong besides the counted failures

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.torn
            or self.usage_disagrees
            or self.secret_hits
            or self.resubmitted_tasks
            or self.extra_bills > self.bill_bound
            or self.problems
        )


def new_key() -> str:
    return "sk-torture-" + secrets.token_hex(12)


@contextlib.contextmanager
def provider(*args: str) -> Iterator[tuple[str, Simulator]]:
    """A simulated provider in its own process that requires a fresh key: (the key, the provider)."""
    key = new_key()
    sim = Simulator(*args, "--require-key", env={**os.environ, KEY_ENV: key})
    try:
        yield key, sim
    finally:
        sim.close()


def finish(out: Outcome, run_dir: Path, rows: int, key: str, log: Path) -> Outcome:
    """The checks every suite ends with: its records, and the key nowhere in the run directory or the log."""
    check_records(run_dir, rows, out)
    out.secret_hits = secret_hits(key, [run_dir, log])
    return out


def job_spec(
    work: Path, name: str, sim_url: str, input_path: Path, *, mode: str = "sync", timeout_s: float = 1.5, **extra: Any
) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "input": str(input_path),
        "model": "sim-small",
        "params": {"max_tokens": 16},
        "provider": {"name": "simulated", "base_url": sim_url, "mode": mode},
        "limits": {"concurrency": CONCURRENCY, "poll_rps": 1000, "max_pending": 2000},
        "retry": {"max_attempts": 30, "timeout_s": timeout_s, "backoff_s": 0.05, "max_backoff_s": 1},
        "output_dir": str(work / "runs" / name),
    }
    spec.update(extra)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_submit(job: Path, key: str, log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 (the child keeps it; closed when the process is reaped)
    return subprocess.Popen(
        [*PY, "submit", str(job), "--no-progress"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, KEY_ENV: key},
        **popen,
    )


def prompt(i: int) -> str:
    return f"torture question {i}: summarise this row in a few words"


def check_records(run_dir: Path, rows: int, out: Outcome) -> None:
    """Every input row exactly once, no id twice in results.jsonl, no torn lines, and usage.json equal to a fold
    over the records."""
    seen: Counter[int] = Counter()
    usage = Usage()
    ids: Counter[str] = Counter()
    for name in (RESULTS, FAILURES):
        path = run_dir / name
        if not path.exists():
            continue
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            out.torn += 1
        for line in data.splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                out.torn += 1
                continue
            seen[record["row"]] += 1
            usage.add(record)
            if name == RESULTS:
                ids[record["custom_id"]] += 1
    out.lost = sum(1 for row in range(1, rows + 1) if row not in seen)
    out.duplicated = sum(1 for n in seen.values() if n > 1) + sum(1 for n in ids.values() if n > 1)
    saved = orjson.loads((run_dir / USAGE).read_bytes())
    out.usage_disagrees = [c for c in COUNTERS if saved.get(c, 0) != getattr(usage, c)]


def secret_hits(key: str, places: list[Path]) -> int:
    needle, hits = key.encode(), 0
    for place in places:
        files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
        hits += sum(1 for f in files if needle in f.read_bytes())
    return hits
