"""The response cache shared across runs, over HTTP against the simulator: a re-run pays for nothing it paid for
before, in every lane; what decides an answer (base URL, endpoint, the exact body) is its key."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import SpecError
from batchrun.spec.cachespec import default_path
from batchrun.store.cache import parse_age

from .helpers import cli, make_job, read_jsonl, spawn_submit, submit
from .simserver import SimServer
from .test_outside import BatchOutputLine

ROWS = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(12)]


def results(tmp_path: Path, name: str = "job") -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r for r in read_jsonl(tmp_path / "runs" / name / "results.jsonl")}


def usage(tmp_path: Path, name: str = "job") -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((tmp_path / "runs" / name / "usage.json").read_bytes())
    return data


def test_a_rerun_sends_nothing_and_costs_nothing(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    job = make_job(tmp_path, sim.base_url, ROWS)
    assert submit(job).exit_code == 0
    first = results(tmp_path)
    assert default_path().exists() and str(default_path()).startswith(str(tmp_path))  # XDG_CACHE_HOME
    again = submit(job, "--fresh")
    assert again.exit_code == 0, again.output
    assert sim.stats()["requests"] == 12  # all from the first run
    second = results(tmp_path)
    assert len(second) == 12 and all(rec["cached"] is True and rec["attempts"] == 0 for rec in second.values())
    for cid, rec in second.items():
        BatchOutputLine.model_validate(rec)
        assert rec["response"] == first[cid]["response"]  # the original answer, its usage kept for reference
    totals = usage(tmp_path)
    assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]) == (0, 0, 0)
    model = totals["models"]["sim-small"]
    assert model["response_cache_rows"] == 12  # renamed from cached_rows: cached_* now count the provider's cache
    assert model["response_cache_completion_tokens"] == sum(
        r["response"]["body"]["usage"]["completion_tokens"] for r in first.values()
    )
    assert "12 rows from the response cache, which saved" in again.output
    assert "12 rows from the response cache" in cli("status", str(tmp_path / "runs" / "job")).output
    report = cli("report", str(tmp_path / "runs" / "job"), "--format", "json")
    assert orjson.loads(report.stdout)["cache"]["rows"] == 12


def test_one_changed_row_sends_one_request(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    assert submit(make_job(tmp_path, sim.base_url, ROWS, name="a")).exit_code == 0
    changed = [dict(r) for r in ROWS]
    changed[5]["prompt"] = "question five, reworded"
    grown = [*changed, {"id": "new", "prompt": "a new row"}]
    assert submit(make_job(tmp_path, sim.base_url, grown, name="b")).exit_code == 0
    assert sim.stats()["requests"] == 12 + 2  # the changed row and the new one
    cached = {cid for cid, rec in results(tmp_path, "b").items() if rec.get("cached")}
    assert cached == {f"r{i}" for i in range(12)} - {"r5"}


def test_params_and_the_base_url_are_part_of_the_key(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    one, other = start_sim(), start_sim()
    assert submit(make_job(tmp_path, one.base_url, ROWS, name="a")).exit_code == 0
    assert submit(make_job(tmp_path, other.base_url, ROWS, name="b")).exit_code == 0  # another provider
    assert other.stats()["requests"] == 12
    hotter = make_job(tmp_path, one.base_url, ROWS, name="c", params={"max_tokens": 32, "temperature": 0.9})
    assert submit(hotter).exit_code == 0  # another generation parameter: another question
    assert one.stats()["requests"] == 24


@pytest.mark.parametrize("mode", ["read", "write", "off"])
def test_modes(tmp_path: Path, start_sim: Callable[..., SimServer], mode: str) -> None:
    sim = start_sim()
    first = make_job(tmp_path, sim.base_url, ROWS, name="a", cache={"mode": mode})
    assert submit(first).exit_code == 0
    assert submit(make_job(tmp_path, sim.base_url, ROWS, name="b")).exit_code == 0  # read_write
    # read and off wrote nothing, so b asked again; write wrote, so b asked nothing
    assert sim.stats()["requests"] == (12 if mode == "write" else 24)
    again = make_job(tmp_path, sim.base_url, ROWS, name="c", cache={"mode": mode})
    assert submit(again).exit_code == 0  # write and off never read
    assert sim.stats()["requests"] == {"read": 24, "write": 24, "off": 36}[mode]


def test_no_cache_and_a_bare_off(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    assert submit(make_job(tmp_path, sim.base_url, ROWS, name="a")).exit_code == 0
    assert submit(make_job(tmp_path, sim.base_url, ROWS, name="b"), "--no-cache").exit_code == 0
    spec = make_job(tmp_path, sim.base_url, ROWS, name="c")
    spec.write_text(spec.read_text() + "cache: off\n")  # YAML reads off as false
    assert submit(spec).exit_code == 0
    assert sim.stats()["requests"] == 36


def test_only_good_answers_are_cached(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    rows = [*ROWS[:3], {"id": "bad", "prompt": "refused #sim:status=400"}]
    assert submit(make_job(tmp_path, sim.base_url, rows, name="a")).exit_code == 3
    assert submit(make_job(tmp_path, sim.base_url, rows, name="b")).exit_code == 3
    assert sim.stats()["requests"] == 5  # the refused row was asked twice, the rest once


def test_sampled_answers_are_cached_unless_the_job_says_not(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim()
    warm = {"max_tokens": 32, "temperature": 0.7}
    for name in ("a", "b"):
        assert submit(make_job(tmp_path, sim.base_url, ROWS, name=name, params=warm)).exit_code == 0
    assert sim.stats()["requests"] == 12
    for name in ("c", "d"):
        job = make_job(tmp_path, sim.base_url, ROWS, name=name, params=warm, cache={"sampled": False})
        assert submit(job).exit_code == 0
    assert sim.stats()["requests"] == 36
    cold = {"max_tokens": 32, "temperature": 0}
    for name in ("e", "f"):
        job = make_job(tmp_path, sim.base_url, ROWS, name=name, params=cold, cache={"sampled": False})
        assert submit(job).exit_code == 0
    assert sim.stats()["requests"] == 48


def test_structured_output_caches_only_valid_answers(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rows = [
        {"id": "fixed", "prompt": "count #sim:json=type"},
        {"id": "never", "prompt": "count #sim:json=bad #sim:stubborn"},
        {"id": "fine", "prompt": "count"},
    ]
    output = {"schema": schema, "max_repairs": 1}
    for name in ("a", "b"):
        assert submit(make_job(tmp_path, sim.base_url, rows, name=name, output=output)).exit_code == 3
    got = results(tmp_path, "b")
    assert (
        got["fixed"]["cached"]
        and got["fine"]["cached"]
        and got["fixed"]["output"] == results(tmp_path, "a")["fixed"]["output"]
    )
    assert sim.stats()["billed_requests"] == 2 + 2 + 1 + 2  # run a: 5; run b: only the invalid row's 2


def test_the_async_and_batch_lanes_use_the_cache(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(task_s=(0.05, 0.1), batch_s=0.2)
    batch = {"name": "simulated", "base_url": sim.base_url, "mode": "batch"}
    fast = {"poll_s": 0.05, "max_poll_s": 0.2}
    for name in ("a", "b"):
        assert submit(make_job(tmp_path, sim.base_url, ROWS, name=name, provider=batch, batch=fast)).exit_code == 0
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["billed_requests"] == 12
    assert all(rec["cached"] for rec in results(tmp_path, "b").values())
    # the batch lane's answers are in the cache for the online lane too: same base URL, endpoint and body
    assert submit(make_job(tmp_path, sim.base_url, ROWS, name="c")).exit_code == 0
    assert sim.stats()["requests"] == stats["requests"]
    tasks = {"name": "simulated", "base_url": sim.base_url, "mode": "async"}
    other = [{"id": f"t{i}", "prompt": f"task {i}"} for i in range(6)]
    for name in ("d", "e"):
        job = make_job(tmp_path, sim.base_url, other, name=name, provider=tasks, limits={"poll_rps": 100})
        assert submit(job).exit_code == 0
    assert sim.stats()["tasks_submitted"] == 6


def test_embeddings_are_cached_per_row(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    rows = [{"id": f"e{i}", "input": f"text {i}"} for i in range(10)]
    assert submit(make_job(tmp_path, sim.base_url, rows, name="a", endpoint="embeddings", params={})).exit_code == 0
    grown = [*rows, {"id": "e10", "input": "text 10"}]
    assert submit(make_job(tmp_path, sim.base_url, grown, name="b", endpoint="embeddings", params={})).exit_code == 0
    got = results(tmp_path, "b")
    assert {cid for cid, rec in got.items() if not rec.get("cached")} == {"e10"}
    assert (
        got["e3"]["response"]["body"]["data"][0]["embedding"]
        == results(tmp_path, "a")["e3"]["response"]["body"]["data"][0]["embedding"]
    )
    assert (
        sim.stats()["billed_prompt_tokens"]
        == usage(tmp_path, "a")["prompt_tokens"] + usage(tmp_path, "b")["prompt_tokens"]
    )


def test_cache_stats_and_prune(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    path = tmp_path / "shared.sqlite3"
    assert submit(make_job(tmp_path, sim.base_url, ROWS, cache={"path": str(path)})).exit_code == 0
    found = orjson.loads(cli("cache", "stats", "--path", str(path), "--json").stdout)
    assert found["entries"] == 12 and found["bytes_per_entry"] > 0 and found["models"] == {"sim-small": 12}
    assert "12 entries" in cli("cache", "stats", "--path", str(path)).output
    with sqlite3.connect(path) as db:  # as if half were written 40 days ago
        db.execute("UPDATE answers SET created = ? WHERE key IN (SELECT key FROM answers LIMIT 6)", (0,))
    pruned = cli("cache", "prune", "--path", str(path), "--older-than", "30d")
    assert pruned.exit_code == 0 and "deleted 6 entries" in pruned.output
    assert orjson.loads(cli("cache", "stats", "--path", str(path), "--json").stdout)["entries"] == 6
    assert cli("cache", "prune", "--path", str(path), "--older-than", "soon").exit_code == 2
    assert cli("cache", "stats", "--path", str(tmp_path / "none.sqlite3")).exit_code == 2


def test_parse_age() -> None:
    assert parse_age("30d") == 30 * 86400 and parse_age("1.5h") == 5400 and parse_age("90m") == 5400
    for bad in ("30", "d", "-1d", "3w"):
        with pytest.raises(SpecError):
            parse_age(bad)


def test_a_cache_that_cannot_be_opened_is_a_spec_error(tmp_path: Path, sim: SimServer) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    job = make_job(tmp_path, sim.base_url, ROWS, cache={"path": str(blocker / "cache.sqlite3")})
    result = submit(job)
    assert result.exit_code == 2 and "cannot open the response cache" in result.output and "--no-cache" in result.output
    assert sim.stats()["requests"] == 0


def test_runs_sharing_the_cache_at_once_both_finish(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(latency=0.01)
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(300)]
    jobs = [make_job(tmp_path, sim.base_url, rows, name=name) for name in ("a", "b")]
    procs = [spawn_submit(job, env={"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}) for job in jobs]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stdout.read() if proc.stdout else ""
    for name in ("a", "b"):
        assert len(results(tmp_path, name)) == 300
