"""What every `make bench` scenario shares: the simulated provider in its own process, a client run of
`batchrun submit` read back from its run directory, the inputs, and the figure a scenario reports.

Its own module, so that the scenarios kept apart (bench_images, bench_reasoning) and bench.py all import it and
none imports another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

PY = [sys.executable, "-m", "batchrun.cli"]
PROVIDER_LIKE = ["--latency", "0.3", "--error-rate", "0.02"]  # median latency and 2 % HTTP 500, as hosted APIs


@dataclass
class Figure:
    name: str
    target: str
    value: str
    ok: bool | None  # None: a figure with no target


@dataclass
class ClientRun:
    usage: dict[str, Any]
    stats: dict[str, Any]
    peak_rss_mb: float  # the run's own VmHWM, from usage.json
    cpu_s: float

    @property
    def rows_per_s(self) -> float:
        return float(self.usage["rows_succeeded"]) / max(float(self.usage["active_s"]), 1e-9)

    @property
    def share_429(self) -> float:
        return float(self.stats["responses"].get("429", 0)) / max(float(self.stats["requests"]), 1.0)


class Simulator:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*PY, "simulate", "--port", "0", *args], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "simulated provider at " not in line:
            self.proc.kill()
            raise RuntimeError(f"the simulated provider did not start: {line!r}")
        self.url = line.split("simulated provider at ", 1)[1].split()[0]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url.rsplit("/v1", 1)[0] + "/_sim/stats", timeout=10) as resp:
            data: dict[str, Any] = orjson.loads(resp.read())
        return data

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def write_prompts(path: Path, n: int, make: Callable[[int], str]) -> Path:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": f"r{i}", "prompt": make(i)}) + b"\n")
    return path


def write_parquet(path: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("prompt", pa.string())])) as writer:
        for start in range(0, n, 100_000):
            ids = [f"r{i}" for i in range(start, min(n, start + 100_000))]
            writer.write_table(pa.table({"id": ids, "prompt": [f"Summarise item {i[1:]} in five words." for i in ids]}))
    return path


def short_prompt(i: int) -> str:
    return f"Summarise item {i} in five words: the quick brown fox, 快速的棕色狐狸 {i}."


def long_prompt(i: int) -> str:  # about 1000 tokens
    return f"Document {i}. " + ("The committee reviewed the quarterly figures and noted steady growth. " * 57)


def run_client(
    workdir: Path,
    sim: Simulator,
    input_path: Path,
    *,
    limits: dict[str, Any] | None = None,
    max_tokens: int = 16,
    name: str = "bench",
    mode: str = "sync",
    extra: dict[str, Any] | None = None,
    args: tuple[str, ...] = (),
) -> ClientRun:
    spec = {
        "name": name,
        "input": str(input_path),
        "model": "sim-small",
        "params": {"max_tokens": max_tokens},
        "provider": {"name": "simulated", "base_url": sim.url, "mode": mode},
        "output_dir": str(workdir / "runs" / name),
        "retry": {"max_attempts": 10, "timeout_s": 30, "backoff_s": 0.25, "max_backoff_s": 5},
    }
    if limits:
        spec["limits"] = limits
    spec.update(extra or {})
    job = workdir / f"{name}.yaml"
    job.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen(
        [*PY, "submit", str(job), "--no-progress", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"batchrun submit exited {proc.returncode}:\n{output}")
    usage = orjson.loads((workdir / "runs" / name / "usage.json").read_bytes())
    # The client's own VmHWM: rusage's maxrss would carry over this process's peak from before the fork.
    return ClientRun(usage, sim.stats(), float(usage["peak_rss_mb"]), rusage.ru_utime + rusage.ru_stime)
