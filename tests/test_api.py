"""The Python API: the same runs and guarantees as the CLI, for notebooks and pipelines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import batchrun
from batchrun.errors import SpecError

from .helpers import cli, make_job
from .simserver import SimServer


def test_run_a_spec_file_and_read_its_records(tmp_path: Path, sim: SimServer) -> None:
    outcome = batchrun.run(make_job(tmp_path, sim.base_url, n=5))
    assert outcome.exit_code == 0 and outcome.usage.rows_succeeded == 5
    assert outcome.run_dir == tmp_path / "runs" / "job"
    records = list(batchrun.final_records(outcome.run_dir))
    assert sorted(r["custom_id"] for r in records) == [f"r{i}" for i in range(1, 6)]
    assert list(batchrun.failures(outcome.run_dir)) == []
    again = batchrun.run(tmp_path / "job.yaml")  # resumes: nothing left to send
    assert again.rows_this_session == 0 and sim.stats()["requests"] == 5


def test_run_a_dict_spec_over_rows_in_memory(tmp_path: Path, sim: SimServer) -> None:
    spec = {
        "name": "labels",
        "model": "sim-small",
        "provider": {"name": "simulated", "base_url": sim.base_url},
        "input": {"template": "Label: {text}", "id_field": "key"},
        "retry": {"backoff_s": 0},
    }
    rows = [{"key": f"k{i}", "text": f"item {i}"} for i in range(4)] + [{"key": "bad", "text": "x #sim:status=400"}]
    outcome = batchrun.run(spec, rows=rows, base_dir=tmp_path)
    assert outcome.exit_code == 3  # one row failed, as `submit` would say
    run_dir = tmp_path / "runs" / "labels"
    assert {r["custom_id"] for r in batchrun.results(run_dir)} == {"k0", "k1", "k2", "k3"}
    (failure,) = batchrun.failures(run_dir)
    assert failure["custom_id"] == "bad" and failure["error"]["code"] == "sim_400"
    # an ordinary run directory: the CLI reads it, and the same call resumes it
    assert "5 of 5 done" in cli("status", str(run_dir)).stdout
    assert "Label: item 2" in cli("show", str(run_dir), "k2").stdout
    assert batchrun.run(spec, rows=rows, base_dir=tmp_path).rows_this_session == 0
    assert sim.stats()["requests"] == 5


def test_arun_inside_an_event_loop(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=3)

    async def notebook_cell() -> int:
        with pytest.raises(SpecError, match=r"await batchrun\.arun"):
            batchrun.run(job)
        return (await batchrun.arun(job)).usage.rows_succeeded

    assert asyncio.run(notebook_cell()) == 3


def test_api_errors_are_batchrun_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no input"):
        batchrun.run({"model": "m", "provider": "simulated"}, base_dir=tmp_path)
    with pytest.raises(SpecError, match="rows= goes with a spec given as a dict"):
        batchrun.run(tmp_path / "x.yaml", rows=[])
