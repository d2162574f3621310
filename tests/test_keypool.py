"""Key pools over HTTP against the simulator, which gives each key its own limit or refuses it: rows spread over
the keys, a refused key is retired and the rest carry on, usage is broken down by the variables' names, and no
key ever reaches the run directory or the output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from .helpers import cli, make_job, read_jsonl, submit
from .simserver import SimServer

KEYS = {"POOL_A": "sk-pool-alpha-0001", "POOL_B": "sk-pool-bravo-0002", "POOL_C": "sk-pool-charlie-0003"}
ROWS = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(90)]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for env, key in KEYS.items():
        monkeypatch.setenv(env, key)
    return KEYS


def pool_job(tmp_path: Path, sim: SimServer, envs: list[str], rows: list[Any] = ROWS, **extra: Any) -> Path:
    provider = {"name": "simulated", "base_url": sim.base_url, "api_key_env": envs, **extra.pop("provider", {})}
    return make_job(tmp_path, sim.base_url, rows, provider=provider, cache={"mode": "off"}, **extra)


def no_key_anywhere(tmp_path: Path, *outputs: str) -> None:
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(key.encode() in data for key in KEYS.values()), path
    assert not any(key in text for key in KEYS.values() for text in outputs)


def test_rows_spread_over_the_keys_each_under_its_own_limit(
    tmp_path: Path, start_sim: Callable[..., SimServer], keys: dict[str, str]
) -> None:
    sim = start_sim(key_rpm=tuple((env, 1200.0) for env in keys), latency=0.01)
    result = submit(pool_job(tmp_path, sim, list(keys)))
    assert result.exit_code == 0, result.output
    records = read_jsonl(tmp_path / "runs/job/results.jsonl")
    assert len(records) == 90
    used = {rec["api_key_env"] for rec in records}
    assert used == set(keys)  # every key took rows
    by_key = sim.stats()["by_key"]
    assert sum(n for name, n in by_key.items() if name.endswith(" 200")) == 90
    usage = orjson.loads((tmp_path / "runs/job/usage.json").read_bytes())
    assert sum(k["rows_succeeded"] for k in usage["keys"].values()) == 90
    assert sum(k["prompt_tokens"] for k in usage["keys"].values()) == usage["prompt_tokens"]
    assert set(usage["key_throttles"]) == set(keys)  # each key's own throttle
    report = cli("report", str(tmp_path / "runs/job"))
    assert all(env in report.output for env in keys) and "key" in report.output
    no_key_anywhere(tmp_path, result.output, report.output)


def test_a_revoked_key_is_retired_and_the_rest_carry_on(
    tmp_path: Path, start_sim: Callable[..., SimServer], keys: dict[str, str]
) -> None:
    sim = start_sim(revoked=("POOL_B",))
    result = submit(pool_job(tmp_path, sim, list(keys)))
    assert result.exit_code == 0, result.output
    assert result.output.count("$POOL_B: that key is retired") == 1
    records = read_jsonl(tmp_path / "runs/job/results.jsonl")
    assert len(records) == 90 and {rec["api_key_env"] for rec in records} == {"POOL_A", "POOL_C"}
    assert not read_jsonl(tmp_path / "runs/job/failures.jsonl")
    usage = orjson.loads((tmp_path / "runs/job/usage.json").read_bytes())
    assert "POOL_B" not in usage["keys"] and usage["key_throttles"]["POOL_B"]["retired"] == "401 invalid_api_key"
    no_key_anywhere(tmp_path, result.output)


def test_a_pool_with_every_key_refused_stops_resumably(
    tmp_path: Path, start_sim: Callable[..., SimServer], keys: dict[str, str]
) -> None:
    sim = start_sim(revoked=tuple(keys))
    result = submit(pool_job(tmp_path, sim, list(keys)))
    assert result.exit_code == 1 and "refused every key of the pool" in result.output
    assert all(f"${env}" in result.output for env in keys)
    assert not read_jsonl(tmp_path / "runs/job/failures.jsonl")  # every row still pending
    no_key_anywhere(tmp_path, result.output)


def test_async_tasks_are_polled_with_the_key_that_submitted_them(
    tmp_path: Path, start_sim: Callable[..., SimServer], keys: dict[str, str]
) -> None:
    sim = start_sim(task_s=(0.05, 0.2), key_rpm=tuple((env, 6000.0) for env in keys))
    job = pool_job(tmp_path, sim, list(keys), ROWS[:20], provider={"mode": "async"}, limits={"poll_rps": 100})
    result = submit(job)
    assert result.exit_code == 0, result.output
    tasks = read_jsonl(tmp_path / "runs/job/tasks.jsonl")
    assert len(tasks) == 20 and {t["key_env"] for t in tasks} <= set(keys)
    records = {rec["row"]: rec for rec in read_jsonl(tmp_path / "runs/job/results.jsonl")}
    assert all(records[t["row"]]["api_key_env"] == t["key_env"] for t in tasks)


def test_pool_specs(tmp_path: Path, sim: SimServer, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    twice = pool_job(tmp_path, sim, ["POOL_A", "POOL_A"])
    assert submit(twice).exit_code == 2 and "names a variable twice" in submit(twice).output
    batch = pool_job(tmp_path, sim, ["POOL_A", "POOL_B"], provider={"mode": "batch"})
    assert "a batch job's files and batches live in one account" in submit(batch).output
    monkeypatch.delenv("POOL_C")
    missing = submit(pool_job(tmp_path, sim, list(keys)))
    assert missing.exit_code == 2 and "POOL_C is not set" in missing.output
    assert sim.stats()["requests"] == 0
