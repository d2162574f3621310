"""Budgets over HTTP against the simulator: a run never spends past limits.max_cost by more than what was in
flight, stops with exit 1 saying what was spent, and goes on when the budget is raised."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from batchrun.errors import SpecError
from batchrun.spec.parse import parse_spec
from batchrun.spec.pricing import Prices, parse_prices
from batchrun.store.usage import Usage

from .helpers import cli, make_job, read_jsonl, submit, write_jsonl
from .simserver import SimServer

PRICE = {"sim-small": {"input": 1000, "output": 1000, "currency": "CNY"}}  # per million tokens: a dear model
ROWS = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(40)]


def spent(run_dir: Path) -> float:
    usage = Usage()
    for name in ("results.jsonl", "failures.jsonl"):
        for rec in read_jsonl(run_dir / name):
            usage.add(rec)
    costs, _ = Prices(parse_prices(PRICE, "test")).spent(usage.models)
    return costs.get("CNY", 0.0)


def budget_job(tmp_path: Path, base_url: str, budget: dict[str, Any], **extra: Any) -> Path:
    limits = {"concurrency": 4, "max_cost": budget, **extra.pop("limits", {})}
    return make_job(tmp_path, base_url, ROWS, pricing=PRICE, limits=limits, cache={"mode": "off"}, **extra)


def test_a_run_stops_at_its_budget_and_goes_on_when_it_is_raised(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(latency=0.05)
    job = budget_job(tmp_path, sim.base_url, {"CNY": 0.5})
    result = submit(job)
    assert result.exit_code == 1, result.output
    assert "budget reached: spent" in result.output and "of 0.5000 CNY" in result.output
    assert "Raise limits.max_cost in job.yaml and run the same command" in result.output
    run_dir = tmp_path / "runs" / "job"
    done = len(read_jsonl(run_dir / "results.jsonl"))
    assert 5 < done < 40  # it spent most of the budget, and stopped short of the rows
    assert 0.25 < spent(run_dir) <= 0.5  # never past it: every row went out only if its worst case fitted
    stats = sim.stats()
    assert stats["requests"] == done  # nothing left in flight unrecorded
    status = cli("status", str(run_dir))
    assert "stopped" in status.output and "budget reached" in status.output
    raised = yaml.safe_load(job.read_text())
    raised["limits"]["max_cost"] = {"CNY": 100}
    job.write_text(yaml.safe_dump(raised))
    again = submit(job)
    assert again.exit_code == 0, again.output
    assert len(read_jsonl(run_dir / "results.jsonl")) == 40
    assert sim.stats()["billed_twice"] == 0


def test_the_batch_lane_stops_at_its_budget(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(batch_s=0.2)
    provider = {"name": "simulated", "base_url": sim.base_url, "mode": "batch"}
    job = budget_job(tmp_path, sim.base_url, {"CNY": 0.2}, provider=provider, batch={"poll_s": 0.05, "max_poll_s": 0.2})
    result = submit(job)
    assert result.exit_code == 1 and "budget reached" in result.output, result.output
    run_dir = tmp_path / "runs" / "job"
    done = len(read_jsonl(run_dir / "results.jsonl"))
    assert 5 < done < 40
    # at the batch price (half): what the usage says was spent, priced as the batch lane is
    usage = orjson.loads((run_dir / "usage.json").read_bytes())
    model = usage["models"]["sim-small"]
    cost = (model["prompt_tokens"] + model["completion_tokens"]) * 1000 / 1e6 * 0.5
    assert 0.1 < cost <= 0.2


def test_a_model_without_a_price_and_a_budget_is_a_spec_error(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, ROWS, model="mystery-model", limits={"max_cost": {"CNY": 5}})
    result = submit(job)
    assert result.exit_code == 2 and "'mystery-model' has no price" in result.output
    assert sim.stats()["requests"] == 0
    usd = make_job(tmp_path, sim.base_url, ROWS, name="usd", limits={"max_cost": {"USD": 5}})
    result = submit(usd)
    assert result.exit_code == 2 and "no CNY budget" in result.output
    assert sim.stats()["requests"] == 0


def test_estimate_says_whether_the_job_fits(tmp_path: Path, sim: SimServer) -> None:
    for budget, said in [(100.0, "fits, even at max_tokens"), (0.01, "does not fit")]:
        job = budget_job(tmp_path, sim.base_url, {"CNY": budget})
        assert said in cli("estimate", str(job)).output


@pytest.mark.parametrize(
    "budget, said",
    [({"cny": 5}, "currencies such as CNY"), ({"CNY": -1}, "must be > 0"), ({}, "is empty"), (5, "must be a mapping")],
)
def test_max_cost_is_read_strictly(tmp_path: Path, budget: Any, said: str) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    with pytest.raises(SpecError, match=said):
        parse_spec(
            {"input": "in.jsonl", "model": "m", "provider": "simulated", "limits": {"max_cost": budget}},
            spec_path=tmp_path / "job.yaml",
            source="job.yaml",
        )
