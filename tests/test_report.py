"""report, status, estimate, retry-failed and export: read from run directories that real runs wrote."""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from batchrun.commands.estimate import cost_range, limit_seconds
from batchrun.commands.report import percentile, rate_series
from batchrun.spec.pricing import BUILT_IN, Price, Prices, parse_prices

from .helpers import cli, make_job, read_jsonl, spawn_submit, submit
from .simserver import SimServer

SIM_SMALL = BUILT_IN["sim-small"]  # 1 / 2 CNY per million tokens


def run_dir(tmp_path: Path, name: str = "job") -> Path:
    return tmp_path / "runs" / name


def records(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path / "results.jsonl") + read_jsonl(path / "failures.jsonl")


def mixed_job(tmp_path: Path, sim: SimServer, name: str = "job", n: int = 12) -> Path:
    rows = [{"id": f"r{i}", "prompt": f"question number {i}"} for i in range(n)]
    rows[2]["prompt"] += " #sim:status=400"
    rows[5]["prompt"] += " #sim:fail=9"  # fails every attempt the run allows
    return make_job(
        tmp_path,
        sim.base_url,
        rows,
        name=name,
        retry={"max_attempts": 2, "timeout_s": 10, "backoff_s": 0, "max_backoff_s": 0},
        cache={"mode": "off"},  # each run asks its own questions: the report adds up what was billed
    )


# --- prices and the cost arithmetic -------------------------------------------------------------------


def test_cost_arithmetic_by_hand() -> None:
    qwen = Prices().get("Qwen-Plus")  # names compare case-insensitively
    assert qwen is not None and (qwen.input, qwen.output, qwen.currency) == (0.8, 2, "CNY")
    # 1,234,567 prompt tokens at 0.8 + 345,678 completion tokens at 2, per million
    assert qwen.cost(1_234_567, 345_678) == pytest.approx(0.9876536 + 0.691356)
    gpt = Prices().get("gpt-4o-mini")
    assert gpt is not None and gpt.currency == "USD" and gpt.cost(2_000_000, 1_000_000) == pytest.approx(0.9)
    assert cost_range(qwen, 1_000_000, 300_000, 1_000_000) == pytest.approx((1.4, 2.8))
    assert limit_seconds(600, 1_200_000, rpm=300, tpm=200_000) == {"rpm": 120.0, "tpm": 360.0}
    assert limit_seconds(10, 10, None, None) == {}
    assert all(price.source for price in BUILT_IN.values())  # every built-in price says where it came from


def test_price_overrides_and_unknown_models() -> None:
    table = Prices(parse_prices({"glm-4-flash": {"input": 0.1, "output": 0.2, "currency": "cny"}}, "x"))
    glm = table.get("glm-4-flash")
    assert glm is not None and (glm.input, glm.currency, glm.source) == (0.1, "CNY", "set in x")
    assert table.get("no-such-model") is None
    with pytest.raises(Exception, match=r"x: m.output: must be a price per million tokens"):
        parse_prices({"m": {"input": 1, "output": "cheap", "currency": "USD"}}, "x")
    with pytest.raises(Exception, match=r"x: m.currency"):
        parse_prices({"m": {"input": 1, "output": 1}}, "x")


def test_percentiles_and_series() -> None:
    values = [(float(i), 1) for i in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.9), percentile(values, 0.99)) == (50.0, 90.0, 99.0)
    assert percentile([(0.1, 89), (0.2, 10), (9.0, 1)], 0.9) == 0.2  # counted rows: the 90th of 100 is 0.2
    assert percentile([(0.1, 89), (0.2, 10), (9.0, 1)], 0.995) == 9.0
    assert percentile([], 0.5) is None
    # Two record files (results, failures), each in order; a 500 s idle gap is left out and marked as a break.
    series = rate_series([[0.0, 1.0, 2.0, 500.0, 501.0], [0.5, 1.5, 500.5, 502.0]], buckets=8)
    assert series.span == pytest.approx(4.0) and series.breaks == [pytest.approx(2.0)]
    edges = [t for t, _ in series.points] + [series.span]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    assert sum(w * rate for w, (_, rate) in zip(widths, series.points, strict=True)) == pytest.approx(9)
    assert all(rate > 0 for _, rate in series.points)  # no fall to zero for the pause


# --- report -----------------------------------------------------------------------------------------------


def test_report_adds_up_from_the_records(tmp_path: Path, sim: SimServer) -> None:
    assert submit(mixed_job(tmp_path, sim)).exit_code == 3
    assert submit(mixed_job(tmp_path, sim, name="two", n=6)).exit_code == 3
    one, two = run_dir(tmp_path), run_dir(tmp_path, "two")
    result = cli("report", str(one), str(two), "--format", "json")
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    recs = records(one) + records(two)
    ok = [r for r in recs if not r["error"]]
    prompt = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in ok)
    completion = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in ok)
    assert (data["rows_succeeded"], data["rows_failed"], data["rows_pending"]) == (14, 4, 0)
    assert (data["prompt_tokens"], data["completion_tokens"]) == (prompt, completion)
    assert data["requests"] == sum(r["attempts"] for r in recs)
    assert data["cost"] == {"CNY": pytest.approx((prompt * 1 + completion * 2) / 1e6)}
    assert data["failures_by_code"] == {"internal_error": 2, "sim_400": 2}
    latencies = sorted(r["latency_s"] for r in recs)
    assert data["latency_s"]["p50"] == latencies[math.ceil(0.5 * len(latencies)) - 1]  # nearest rank
    assert data["latency_s"]["p50"] <= data["latency_s"]["p90"] <= data["latency_s"]["p99"]

    table = cli("report", str(one), "--format", "table")
    assert "failures by code" in table.stdout and "sim_400" in table.stdout and "CNY" in table.stdout
    rows = list(csv.DictReader(io.StringIO(cli("report", str(one), "--format", "csv").stdout)))
    assert rows[0]["model"] == "sim-small" and rows[-1]["model"] == "TOTAL" and rows[-1]["currency"] == "CNY"


def test_a_model_without_a_price_is_never_free(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=3, model="mystery-model")
    assert submit(job).exit_code == 0
    data = orjson.loads(cli("report", str(run_dir(tmp_path)), "--format", "json").stdout)
    assert data["cost"] == {} and data["unpriced_models"] == ["mystery-model"]
    assert data["models"][0]["cost"] is None and data["models"][0]["price"] is None
    assert "their cost is unknown, not zero" in cli("report", str(run_dir(tmp_path))).stdout
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"mystery-model": {"input": 3, "output": 6, "currency": "USD"}}))
    priced = orjson.loads(cli("report", str(run_dir(tmp_path)), "--format", "json", "--prices", str(prices)).stdout)
    assert priced["cost"] == {
        "USD": pytest.approx((3 * priced["prompt_tokens"] + 6 * priced["completion_tokens"]) / 1e6)
    }


def test_the_specs_pricing_block_travels_with_the_run(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(
        tmp_path,
        sim.base_url,
        n=2,
        pricing={"sim-small": {"input": 10, "output": 0, "currency": "CNY", "source": "our contract"}},
    )
    assert submit(job).exit_code == 0
    data = orjson.loads(cli("report", str(run_dir(tmp_path)), "--format", "json").stdout)
    assert data["models"][0]["price"]["source"] == "our contract"
    assert data["cost"]["CNY"] == pytest.approx(10 * data["prompt_tokens"] / 1e6)


def html_report(tmp_path: Path, sim: SimServer) -> Path:
    """Two sessions (an idle pause between them), two models priced in two currencies, some failures."""
    rows = [
        {
            "custom_id": f"c{i}",
            "body": {
                "model": "sim-large" if i % 3 == 0 else "sim-small",
                "messages": [
                    {"role": "user", "content": f"question {i}" + (" #sim:status=400" if i % 10 == 0 else "")}
                ],
            },
        }
        for i in range(60)
    ]
    pricing = {
        "sim-small": {"input": 1, "output": 2, "currency": "CNY"},
        "sim-large": {"input": 3, "output": 6, "currency": "USD"},
    }
    job = make_job(tmp_path, sim.base_url, rows, pricing=pricing)
    assert submit(job, "--limit", "30").exit_code == 3
    time.sleep(1.2)  # a pause longer than the chart's idle cut-off (max_gap below)
    assert submit(job).exit_code == 3
    page = tmp_path / "report.html"
    result = cli("report", str(run_dir(tmp_path)), "--html", str(page))
    assert result.exit_code == 0, result.output
    return page


def test_html_report_is_one_self_contained_page(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batchrun.commands.report.IDLE_GAP_S", 1.0)  # the helper's 1.2 s pause counts as idle
    text = html_report(tmp_path, sim).read_text(encoding="utf-8")
    root = ET.fromstring(text.split("\n", 1)[1])  # well-formed XML after the doctype
    svg = "{http://www.w3.org/2000/svg}svg"
    charts = {s.get("aria-label"): s for s in root.iter(svg)}
    # rows/s, latency, one cost chart per currency (never one scale for CNY and USD), failures by code
    assert list(charts) == ["rows per second over time", "latency histogram", "cost (CNY)", "cost (USD)", "rows"]
    headings = [h.text for h in root.iter("{http://www.w3.org/1999/xhtml}h2")]
    assert headings == ["Rows per second over time", "Latency", "Cost by model", "Failures by code"]
    for chart in charts.values():  # the width follows the page: a viewBox, no fixed width
        assert chart.get("viewBox") and chart.get("width") is None
    texts = {name: [t.text for t in chart.iter("{http://www.w3.org/2000/svg}text")] for name, chart in charts.items()}
    # axis titles and tick labels from 0
    assert "rows/s" in texts["rows per second over time"] and "0" in texts["rows per second over time"]
    assert any("active time (s)" in (t or "") for t in texts["rows per second over time"])
    assert "session 2" in texts["rows per second over time"]  # the second session's start is marked
    lines = list(charts["rows per second over time"].iter("{http://www.w3.org/2000/svg}polyline"))
    assert len(lines) == 2  # one line per session: no fall to zero for the pause between them
    marks = [t for t in texts["latency histogram"] if t and t[:3] in ("p50", "p90", "p99")]
    assert [m[:3] for m in marks] == ["p50", "p90", "p99"]
    grid = [
        ln
        for ln in charts["latency histogram"].iter("{http://www.w3.org/2000/svg}line")
        if ln.get("stroke") == "#e3e6ee"
    ]
    assert len(grid) >= 3
    assert any("CNY" in (t or "") for t in texts["cost (CNY)"]) and not any(
        "USD" in (t or "") for t in texts["cost (CNY)"]
    )
    external = [a for el in root.iter() for k, a in el.attrib.items() if k in ("src", "href") or "url(" in a]
    assert (
        external == []
        and "<script" not in text
        and "http://"
        not in text.replace('xmlns="http://www.w3.org/1999/xhtml"', "").replace(
            'xmlns="http://www.w3.org/2000/svg"', ""
        )
    )
    assert "sim_400" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="headless Chromium is not installed (CI installs it: apt-get install chromium)",
)
def test_html_report_renders_in_headless_chromium(tmp_path: Path, sim: SimServer) -> None:
    assert CHROMIUM is not None, "CI must have chromium: .ci/run installs it"
    page = html_report(tmp_path, sim)
    spans = []
    for width in (700, 1200):  # the charts follow the page's width
        shot = tmp_path / f"shot-{width}.png"
        screenshot(page, shot, width)
        pixels, columns = png_pixels(shot.read_bytes())
        blue = [i % columns for i, p in enumerate(pixels) if p == bytes([0x3B, 0x6F, 0xB6])]  # bars and lines
        red = sum(p[0] > 150 and p[1] < 110 and p[2] < 110 for p in pixels)  # p50/p90/p99 and session marks
        assert len(blue) > 500 and red > 50, "the charts did not render"
        spans.append(max(blue) - min(blue))
    assert spans[1] > 1.2 * spans[0]  # fixed-width charts would draw the same span at both widths


def screenshot(page: Path, shot: Path, width: int) -> None:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},1400",
                f"--screenshot={shot}",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=90,
        )
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]


def png_pixels(png: bytes) -> tuple[list[bytes], int]:
    """RGB(A) pixels of an 8-bit PNG, unfiltered, standard library only."""
    pos, idat, width, height, channels = 8, b"", 0, 0, 3
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
            channels = {2: 3, 6: 4}[data[9]]
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw, stride, prev, out = zlib.decompress(idat), width * channels, bytearray(width * channels), []
    columns = width
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(kind)
            if pred is None:  # Paeth
                p = a + b - c
                pa_, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa_ <= pb and pa_ <= pc else b if pb <= pc else c
            line[i] = (line[i] + pred) & 0xFF
        out += [bytes(line[x : x + 3]) for x in range(0, stride, channels)]
        prev = line
    return out, columns


# --- estimate -------------------------------------------------------------------------------------------


def test_estimate_reads_the_input_without_calling_anything(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": "x" * 400} for i in range(10)]  # 100 tokens each, +8 message overhead
    job = make_job(
        tmp_path,
        "http://127.0.0.1:9/v1",
        rows,
        model="qwen-plus",
        params={"max_tokens": 200},
        limits={"rpm": 5, "tpm": 1000},
        provider={"name": "dashscope", "base_url": "http://127.0.0.1:9/v1"},
    )
    result = cli("estimate", str(job), "--output-share", "0.5")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "10 rows, 10 requests to dashscope" in out and "~1,070 (estimated" in out
    assert "up to 2,000" in out and "~1,000 at a typical 50%" in out
    # 1,070 * 0.8 / 1e6 + 1,000 (or 2,000) * 2 / 1e6
    assert "0.0029 to 0.0049 CNY" in out
    # RPM: 10 / 5 = 2 min; TPM (dashscope counts actual tokens): (1,070 + 1,000) / 1000 = 2.07 min
    # concurrency (new): 10 requests x an assumed latency / 256 at once, well under a second
    assert "at least 2.1 min: the TPM limit binds (concurrency 0 s, RPM 2.0 min, TPM 2.1 min)" in out
    assert "tasks " not in out  # only async jobs wait on tasks after submitting


def test_estimate_prices_each_batch_line_at_its_own_model(tmp_path: Path) -> None:
    """Mixed models in an OpenAI Batch input: each line's tokens at its model's price, one that has none named."""
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 100},
        }
        for i, model in enumerate(["m-big", "m-small", "m-small", "m-none"])
    ]
    (tmp_path / "prices.yaml").write_text(
        "m-big: {input: 10, output: 20, currency: USD}\nm-small: {input: 1, output: 2, currency: USD}\n"
    )
    job = make_job(tmp_path, "http://127.0.0.1:9/v1", lines, model="m-big", params={})
    result = cli("estimate", str(job), "--output-share", "1", "--prices", str(tmp_path / "prices.yaml"))
    assert result.exit_code == 0, result.output
    # 108 prompt tokens + 100 output per line: m-big 108*10 + 100*20, m-small 2 * (108*1 + 100*2), per 1M
    assert f"{(1080 + 2000 + 2 * (108 + 200)) / 1e6:,.4f} to" in result.stdout
    assert "m-big (1 row) at 10 / 20 USD" in result.stdout and "m-small (2 rows) at 1 / 2 USD" in result.stdout
    assert "unknown for m-none" in result.stdout
    assert "models m-small (2 rows), m-big (1 row), m-none (1 row)" in cli("validate", str(job)).stdout


def test_validate_estimate_and_submit_agree_on_embeddings_requests(tmp_path: Path, sim: SimServer) -> None:
    """Rows alike share a request only while consecutive: a line with other parameters breaks the run of them."""
    rows: list[dict[str, Any]] = [{"id": f"t{i}", "input": f"text {i}"} for i in range(7)]
    rows.insert(3, {"custom_id": "odd", "body": {"input": "other", "dimensions": 8}})
    job = make_job(tmp_path, sim.base_url, rows, endpoint="embeddings", limits={"batch_size": 2})
    assert "requests: 5 (embeddings: 8 rows" in cli("validate", str(job)).stdout
    assert "8 rows, 5 requests to simulated" in cli("estimate", str(job)).stdout
    assert submit(job).exit_code == 0
    assert sim.stats()["requests"] == 5  # [t0 t1] [t2] [odd] [t3 t4] [t5 t6]


def test_estimate_of_an_async_job_adds_the_task_time(tmp_path: Path) -> None:
    job = make_job(tmp_path, "", n=3, provider={"name": "simulated", "mode": "async", "simulate": {"task_s": [2, 45]}})
    result = cli("estimate", str(job))
    assert result.exit_code == 0, result.output
    assert "the time above is for submitting; each task then runs up to 45 s (simulated)" in result.stdout


# --- status -------------------------------------------------------------------------------------------------


def test_status_of_a_live_and_then_a_dead_run(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(latency=0.05)
    job = make_job(tmp_path, server.base_url, n=400, limits={"concurrency": 2})
    proc = spawn_submit(job)
    usage = run_dir(tmp_path) / "usage.json"
    deadline = time.monotonic() + 30
    while not (usage.exists() and (orjson.loads(usage.read_bytes()).get("rate_rows_per_s") or 0) > 0):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    live = cli("status", str(run_dir(tmp_path)))
    assert live.exit_code == 0
    assert "running (a batchrun process is running it)" in live.stdout
    assert "rows/s, about" in live.stdout and "to go" in live.stdout and "cost so far" in live.stdout
    proc.kill()
    proc.wait(10)
    dead = cli("status", str(run_dir(tmp_path))).stdout
    assert ": died" in dead and "resume with: batchrun submit" in dead


def test_status_and_report_refuse_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    for command in ("status", "report"):
        result = cli(command, str(tmp_path))
        assert result.exit_code == 2 and "is not a batchrun run directory" in result.output


# --- retry-failed -----------------------------------------------------------------------------------------


def test_retry_failed_by_code_keeps_one_final_record_per_row(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(8)]
    rows[1]["prompt"] += " #sim:fail=2"  # fails both attempts the run allows, then would succeed
    rows[2]["prompt"] += " #sim:status=400"
    job = make_job(
        tmp_path, sim.base_url, rows, retry={"max_attempts": 2, "timeout_s": 10, "backoff_s": 0, "max_backoff_s": 0}
    )
    assert submit(job).exit_code == 3
    out = run_dir(tmp_path)
    assert sorted(f["error"]["code"] for f in read_jsonl(out / "failures.jsonl")) == ["internal_error", "sim_400"]

    result = cli("retry-failed", str(out), "--code", "internal_error", "--no-progress")
    assert result.exit_code == 3, result.output  # the 400 is still a failure
    assert "sending 1 failed row again" in result.output
    counts = Counter(r["custom_id"] for r in records(out))
    assert set(counts) == {r["id"] for r in rows} and max(counts.values()) == 1
    assert [f["custom_id"] for f in read_jsonl(out / "failures.jsonl")] == ["r2"]
    retried = next((out / "previous").glob("retried-*/failures.jsonl"))
    assert [f["custom_id"] for f in read_jsonl(retried)] == ["r1"]
    usage = orjson.loads((out / "usage.json").read_bytes())
    assert (usage["rows_succeeded"], usage["rows_failed"]) == (7, 1)
    assert usage["failures_by_code"] == {"sim_400": 1}
    # Nothing already billed disappears: the set-aside attempts still count, in usage.json and in report.
    stats = sim.stats()
    assert usage["requests"] == stats["requests"] == 8 + 1 + 1  # r1 failed twice, then once more: answered
    assert usage["prompt_tokens"] == stats["billed_prompt_tokens"]
    (out / "usage.json").unlink()  # a recount from the records alone agrees
    reported = orjson.loads(cli("report", str(out), "--format", "json").stdout)
    assert (reported["requests"], reported["rows_succeeded"], reported["rows_failed"]) == (10, 7, 1)


def test_retry_failed_names_the_codes_a_run_has(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": "a", "prompt": "fine"}, {"id": "b", "prompt": "#sim:status=400"}]
    assert submit(make_job(tmp_path, sim.base_url, rows)).exit_code == 3
    result = cli("retry-failed", str(run_dir(tmp_path)), "--code", "sim_500", "--no-progress")
    assert result.exit_code == 2 and "has no failure with that code (its failure codes: sim_400 ×1)" in result.stderr
    assert sim.stats()["requests"] == 2


def test_retry_failed_on_an_async_run_submits_afresh(tmp_path: Path, sim: SimServer) -> None:
    root = sim.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": "a", "prompt": "fine #sim:task=0.2"}, {"id": "b", "prompt": "flaky #sim:task-fail=2 #sim:task=0.2"}]
    job = make_job(
        tmp_path,
        "",
        rows,
        provider={"name": "zhipu", "base_url": root + "/api/paas/v4", "mode": "async"},
        limits={"poll_rps": 100},
        retry={"max_attempts": 2, "timeout_s": 10, "backoff_s": 0, "max_backoff_s": 0},
        cache={"mode": "off"},  # each run asks its own questions: the report adds up what was billed
    )
    env = {"ZHIPUAI_API_KEY": "test-key-not-secret"}
    assert submit(job, env=env).exit_code == 3
    out = run_dir(tmp_path)
    assert read_jsonl(out / "failures.jsonl")[0]["error"]["code"] == "task_failed"
    result = cli("retry-failed", str(out), "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert {r["custom_id"] for r in read_jsonl(out / "results.jsonl")} == {"a", "b"}
    assert read_jsonl(out / "failures.jsonl") == []
    assert read_jsonl(out / "tasks.jsonl")[-2]["cleared"] == "retry-failed"


# --- export ---------------------------------------------------------------------------------------------------


def test_export_round_trip_in_input_order(tmp_path: Path, sim: SimServer) -> None:
    assert submit(mixed_job(tmp_path, sim, n=30)).exit_code == 3
    out = run_dir(tmp_path)
    # Make row 10 pending, as an interrupted run leaves it.
    lines = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
    (out / "results.jsonl").write_bytes(b"".join(x for x in lines if orjson.loads(x)["custom_id"] != "r9"))
    by_id = {r["custom_id"]: r for r in records(out)}
    for target in (tmp_path / "out.parquet", tmp_path / "out.jsonl"):
        result = cli("export", str(out), "--to", str(target), "--with-input")
        assert result.exit_code == 0 and "wrote 30 rows" in result.output, result.output
        exported = pq.read_table(target).to_pylist() if target.suffix == ".parquet" else read_jsonl(target)
        assert [r["input_id"] for r in exported] == [f"r{i}" for i in range(30)]  # input order
        assert [r["row"] for r in exported] == list(range(1, 31))
        for r in exported:
            rec = by_id.get(r["input_id"])
            if rec is None:
                assert r["input_id"] == "r9" and r["status"] == "pending" and r["answer"] is None
            elif rec["error"]:
                assert r["status"] == "failed" and r["error_code"] == rec["error"]["code"]
            else:
                body = rec["response"]["body"]
                assert r["status"] == "succeeded" and r["custom_id"] == r["input_id"]
                assert r["answer"] == body["choices"][0]["message"]["content"]
                assert r["finish_reason"] == "stop"
                assert r["prompt_tokens"] == body["usage"]["prompt_tokens"]
            assert r["input_prompt"].startswith("question number")


def test_export_of_a_parquet_run_keeps_the_inputs_types(tmp_path: Path, sim: SimServer) -> None:
    table = pa.table({"doc": ["a", "b", "c"], "n": pa.array([1, 2, 3], pa.int32()), "text": ["one", "two", "three"]})
    pq.write_table(table, tmp_path / "in.parquet")
    job = make_job(tmp_path, sim.base_url, input={"path": "in.parquet", "id_field": "doc", "template": "say {text}"})
    assert submit(job).exit_code == 0
    target = tmp_path / "out.parquet"
    assert cli("export", str(run_dir(tmp_path)), "--to", str(target), "--with-input").exit_code == 0
    got = pq.read_table(target)
    assert got.schema.field("input_n").type == pa.int32()
    assert got.column("custom_id").to_pylist() == ["a", "b", "c"]
    assert all(a.startswith("[simulated sim-small] say") for a in got.column("answer").to_pylist())


def test_export_refuses_other_formats(tmp_path: Path, sim: SimServer) -> None:
    assert submit(make_job(tmp_path, sim.base_url, n=1)).exit_code == 0
    result = cli("export", str(run_dir(tmp_path)), "--to", str(tmp_path / "x.xlsx"))
    assert result.exit_code == 2 and "must end in .parquet, .jsonl or .csv" in result.output


def test_price_objects_are_plain_data() -> None:
    assert Price(1, 2, "CNY", "s").describe() == "1 / 2 CNY per 1M tokens (s)"
