"""Helpers shared by the tests: job specs written into tmp_path, and the CLI run in or out of process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from click.testing import CliRunner

from batchrun.cli import main

FAST_RETRY = {"max_attempts": 5, "timeout_s": 10, "backoff_s": 0, "max_backoff_s": 0}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def make_job(
    tmp_path: Path, base_url: str, rows: list[Any] | None = None, *, n: int = 20, name: str = "job", **overrides: Any
) -> Path:
    """Write a job spec (and, unless `input` is overridden, a JSONL input of `n` prompts)."""
    spec: dict[str, Any] = {
        "name": name,
        "model": "sim-small",
        "params": {"max_tokens": 32},
        "provider": {"name": "simulated", "base_url": base_url},
        "retry": FAST_RETRY,
        "limits": {"concurrency": 8},
    }
    if "input" not in overrides:
        data = rows if rows is not None else [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(1, n + 1)]
        write_jsonl(tmp_path / f"{name}.jsonl", data)
        spec["input"] = f"{name}.jsonl"
    spec.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Ran:
    """What a CLI call printed, stdout and stderr apart, on every click the project allows (8.1 mixes them
    unless told not to; 8.2 no longer takes the option)."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli(*args: str, env: dict[str, str] | None = None) -> Ran:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg,unused-ignore]
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def submit(job: Path, *extra: str, env: dict[str, str] | None = None) -> Ran:
    return cli("submit", str(job), "--no-progress", *extra, env=env)


def wait_for_lines(path: Path, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """Wait until a running submit has written `at_least` lines to `path` (it must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        n = path.read_bytes().count(b"\n") if path.exists() else 0
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} lines in {path} after {timeout} s")


def spawn_submit(job: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`batchrun submit` in its own process, for kill and signal tests."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", "submit", str(job), "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def out_dir_usage(tmp_path: Path, name: str = "job") -> dict[str, Any]:
    """The usage.json of the job `make_job` wrote (its run directory under tmp_path/runs)."""
    data: dict[str, Any] = orjson.loads((tmp_path / "runs" / name / "usage.json").read_bytes())
    return data
