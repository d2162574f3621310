"""report, status and export count what happened: a repair (asking again about an answer that did not fit the
schema) is not a retry (sending again after a transient error or a 429), and a row the response cache answered
took no time, so it is counted apart and left out of throughput, latencies and the charts."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from batchrun.commands.report import build_report
from batchrun.records import encode, line_cached

from .helpers import cli, make_job, read_jsonl, submit
from .simserver import SimServer
from .test_structured import SCHEMA

SVG = "{http://www.w3.org/2000/svg}"
XHTML = "{http://www.w3.org/1999/xhtml}"


def records(run: Path) -> list[dict[str, Any]]:
    return read_jsonl(run / "results.jsonl") + read_jsonl(run / "failures.jsonl")


def report_json(*runs: Path) -> dict[str, Any]:
    result = cli("report", *map(str, runs), "--format", "json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = orjson.loads(result.stdout)
    return data


def html(tmp_path: Path, run: Path) -> ET.Element:
    page = tmp_path / f"{run.name}.html"
    assert cli("report", str(run), "--html", str(page)).exit_code == 0
    return ET.fromstring(page.read_text(encoding="utf-8").split("\n", 1)[1])


def facts(root: ET.Element) -> dict[str, str]:
    table = next(root.iter(f"{XHTML}table"))
    return {
        str(row.find(f"{XHTML}th").text): str(row.find(f"{XHTML}td").text)  # type: ignore[union-attr]
        for row in table.iter(f"{XHTML}tr")
    }


def chart(root: ET.Element, label: str) -> ET.Element:
    return next(s for s in root.iter(f"{SVG}svg") if s.get("aria-label") == label)


def titled_rows(svg: ET.Element, tag: str, pattern: str) -> int:
    """Rows a chart drew, from the tooltips of its bars or lines."""
    found = [re.search(pattern, el.findtext(f"{SVG}title") or "") for el in svg.iter(f"{SVG}{tag}")]
    return sum(int(m.group(1).replace(",", "")) for m in found if m)


def muted(root: ET.Element) -> list[str]:
    return [str(p.text) for p in root.iter(f"{XHTML}p") if p.get("class") == "muted"]


# --- repairs are not retries ---------------------------------------------------------------------------------


def test_repairs_are_counted_apart_from_retries(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    rows = [
        {"id": "repaired", "prompt": "label a #sim:json=bad"},  # one repair, no retry
        {"id": "retried", "prompt": "label b #sim:fail=2"},  # two retries (HTTP 500), no repair
        {"id": "plain", "prompt": "label c"},
        {"id": "never", "prompt": "label d #sim:json=type #sim:stubborn"},  # one repair, then out of repairs
    ]
    output = {"schema": SCHEMA, "name": "labels", "max_repairs": 1}
    job = make_job(tmp_path, sim.base_url, rows, output=output, params={"max_tokens": 200}, cache={"mode": "off"})
    ran = submit(job)
    assert ran.exit_code == 3, ran.output
    run = tmp_path / "runs" / "job"
    recs = {r["custom_id"]: r for r in records(run)}
    assert [len(recs[k].get("repairs", [])) for k in ("repaired", "retried", "plain", "never")] == [1, 0, 0, 1]
    requests = sum(r["attempts"] for r in recs.values())
    assert requests == sim.stats()["billed_requests"] + 2  # the two 500s were not billed

    data = report_json(run)
    assert (data["requests"], data["retries"], data["repairs"]) == (requests, 2, 2)
    assert f"requests    {requests} (retries 2, repairs 2, 429s 0)" in cli("report", str(run)).stdout
    assert f"requests {requests}, retries 2 (429s 0), repairs 2, tokens" in ran.stdout  # the closing summary
    status = orjson.loads(cli("status", str(run), "--json").stdout)
    assert (status["retries"], status["repairs"]) == (2, 2)
    assert facts(html(tmp_path, run))["requests"] == f"{requests} (retries 2, repairs 2, 429s 0)"


@pytest.mark.parametrize("lane", ["batch", "async"])
def test_repairs_in_the_batch_and_task_lanes_are_not_retries(
    tmp_path: Path, start_sim: Callable[..., SimServer], lane: str
) -> None:
    """A repair sent in a follow-up shard, or as a new async task, is a repair there too."""
    sim = start_sim(batch_s=0.2, task_s=(0.05, 0.2))
    rows = [{"id": f"r{i}", "prompt": f"label {i}" + (" #sim:json=bad" if i % 4 == 0 else "")} for i in range(8)]
    extra: dict[str, Any] = (
        {
            "provider": {"name": "simulated", "base_url": sim.base_url, "mode": "batch"},
            "batch": {"poll_s": 0.05, "max_poll_s": 0.2, "fallback": "batch"},
        }
        if lane == "batch"
        else {
            "provider": {
                "name": "zhipu",
                "base_url": sim.base_url.rsplit("/v1", 1)[0] + "/api/paas/v4",
                "mode": "async",
            },
            "limits": {"concurrency": 8, "poll_rps": 200},
        }
    )
    job = make_job(tmp_path, "", rows, output={"schema": SCHEMA}, params={"max_tokens": 200}, **extra)
    ran = submit(job, env={"ZHIPUAI_API_KEY": "test-key-not-secret"})
    assert ran.exit_code == 0, ran.output
    run = tmp_path / "runs" / "job"
    assert sum(len(r.get("repairs", [])) for r in records(run)) == 2
    data = report_json(run)
    assert (data["requests"], data["retries"], data["repairs"]) == (10, 0, 2)


# --- answers from the cache ------------------------------------------------------------------------------------


def cached_runs(tmp_path: Path, sim: SimServer) -> tuple[Path, Path, Path]:
    """Three runs sharing one response cache: `first` asks 6 questions, `mixed` asks those (answered from the
    cache) and 6 new ones, `again` asks only the first 6 (every answer from the cache)."""
    old = [{"id": f"o{i}", "prompt": f"old question {i}"} for i in range(6)]
    new = [{"id": f"n{i}", "prompt": f"new question {i}"} for i in range(6)]
    for name, rows in (("first", old), ("mixed", [*old, *new]), ("again", old)):
        ran = submit(make_job(tmp_path, sim.base_url, rows, name=name))
        assert ran.exit_code == 0, ran.output
    return tmp_path / "runs" / "first", tmp_path / "runs" / "mixed", tmp_path / "runs" / "again"


def test_cached_rows_are_counted_apart_and_left_out_of_timings(tmp_path: Path, sim: SimServer) -> None:
    _, mixed, again = cached_runs(tmp_path, sim)
    recs = records(mixed)
    asked = [r for r in recs if not r.get("cached")]
    assert len(asked) == 6 and all(r["custom_id"].startswith("n") for r in asked)

    data = report_json(mixed)
    assert (data["rows_succeeded"], data["rows_cached"], data["cache"]["rows"]) == (12, 6, 6)
    assert data["requests"] == sum(r["attempts"] for r in asked)
    assert data["rows_per_s"] is not None
    report = build_report([mixed])
    assert report.rows_asked == 6 and report.rows_per_s == 6 / report.active_s
    assert sum(report.series.rows) == 6  # the chart's completions: the rows asked, no spike of cached ones
    assert sum(n for _, n in report.latencies) == 6
    latencies = sorted(r["latency_s"] for r in asked)
    assert data["latency_s"]["p99"] == latencies[-1]
    assert "(6 rows from the response cache left out)" in cli("report", str(mixed)).stdout

    root = html(tmp_path, mixed)
    assert facts(root)["cache"].startswith("6 rows from the response cache")
    assert titled_rows(chart(root, "rows per second over time"), "polyline", r"([\d,]+) rows asked") == 6
    assert titled_rows(chart(root, "latency histogram"), "rect", r"s: ([\d,]+) rows") == 6
    assert "6 rows from the response cache are left out: they took no time" in muted(root)

    # every row from the cache: nothing was asked, so there is no rate, no latency and nothing to draw
    data = report_json(again)
    assert (data["rows_succeeded"], data["rows_cached"], data["requests"]) == (6, 6, 0)
    assert data["rows_per_s"] is None and data["latency_s"] == {"p50": None, "p90": None, "p99": None}
    assert "throughput  - (all 6 rows from the response cache)" in cli("report", str(again)).stdout
    root = html(tmp_path, again)
    assert not list(chart_or_none(root, "rows per second over time"))
    assert "no rows to draw: 6 rows came from the response cache, which took no time" in muted(root)
    status = orjson.loads(cli("status", str(again), "--json").stdout)
    assert status["average_rows_per_s"] is None and status["cached"]["rows"] == 6
    assert "rate" not in cli("status", str(again)).stdout


def chart_or_none(root: ET.Element, label: str) -> list[ET.Element]:
    return [s for s in root.iter(f"{SVG}svg") if s.get("aria-label") == label]


def test_export_has_a_cached_column(tmp_path: Path, sim: SimServer) -> None:
    _, mixed, _ = cached_runs(tmp_path, sim)
    to = tmp_path / "out.parquet"
    assert cli("export", str(mixed), "--to", str(to)).exit_code == 0
    table = pq.read_table(to)
    assert str(table.schema.field("cached").type) == "bool"
    assert {r["custom_id"]: r["cached"] for r in table.to_pylist()} == {
        **{f"o{i}": True for i in range(6)},
        **{f"n{i}": False for i in range(6)},
    }
    jsonl = tmp_path / "out.jsonl"
    assert cli("export", str(mixed), "--to", str(jsonl)).exit_code == 0
    assert [r["cached"] for r in read_jsonl(jsonl)] == [True] * 6 + [False] * 6


def test_a_cached_line_is_known_by_its_tail() -> None:
    rec: dict[str, Any] = {"row": 1, "response": {"body": {"usage": {"cached": True}}}, "completed_at": "2026-01-01Z"}
    assert not line_cached(encode(rec))  # the body's own key, before completed_at, is not the record's
    assert line_cached(encode({**rec, "cached": True}))
    assert not line_cached(encode({**rec, "repairs": [{"usage": {"cached": True}}]}))  # after it, but not the key
