"""The everyday commands around a run: try the first rows, see what rows become, look one row up, script status."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .helpers import cli, make_job, read_jsonl, submit, write_jsonl
from .simserver import SimServer


def test_limit_runs_the_first_rows_and_a_later_submit_the_rest(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=30)
    first = submit(job, "--limit", "10")
    assert first.exit_code == 0, first.output
    assert sorted(r["row"] for r in read_jsonl(tmp_path / "runs/job/results.jsonl")) == list(range(1, 11))
    assert "20 pending of 30 rows" in first.stdout and "--limit 10" in first.stdout
    assert "resume with: batchrun submit" in first.stdout
    status = orjson.loads(cli("status", str(tmp_path / "runs/job"), "--json").stdout)
    assert (status["state"], status["rows_done"], status["rows_pending"]) == ("stopped", 10, 20)
    assert status["reason"].startswith("--limit 10") and status["resume_command"].startswith("batchrun submit")

    second = submit(job, "--limit", "15")  # the first 15 rows: 5 more
    assert second.exit_code == 0 and "(10 of them already done)" in second.stderr
    rest = submit(job)
    assert rest.exit_code == 0 and "finished: 30 succeeded" in rest.stdout
    rows = [r["row"] for r in read_jsonl(tmp_path / "runs/job/results.jsonl")]
    assert sorted(rows) == list(range(1, 31))  # every row once
    assert sim.stats()["requests"] == 30


def test_output_dir_on_the_command_line(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=3)
    result = submit(job, "--output-dir", str(tmp_path / "elsewhere"))
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "elsewhere/results.jsonl")) == 3
    assert not (tmp_path / "runs").exists()
    assert "new run of job in elsewhere" in result.stderr


def test_status_json_of_a_run_with_failures(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": "a", "prompt": "fine"}, {"id": "b", "prompt": "no #sim:status=400"}]
    submit(make_job(tmp_path, sim.base_url, rows, pricing={"sim-small": {"input": 1, "output": 2, "currency": "CNY"}}))
    status = orjson.loads(cli("status", str(tmp_path / "runs/job"), "--json").stdout)
    assert status["state"] == "finished_with_failures" and status["live"] is False
    assert (status["rows_succeeded"], status["rows_failed"], status["rows_pending"]) == (1, 1, 0)
    assert status["failures_by_code"] == {"sim_400": 1} and status["requests"] == 2
    assert status["cost"]["CNY"] > 0 and status["unpriced_models"] == [] and status["resume_command"] is None


def test_preview_shows_the_exact_requests_and_sends_nothing(tmp_path: Path, sim: SimServer) -> None:
    write_jsonl(tmp_path / "job.jsonl", [{"id": f"n{i}", "title": f"headline {i}"} for i in range(5)])
    job = make_job(
        tmp_path,
        sim.base_url,
        input={"path": "job.jsonl", "template": "Label: {title}", "system": "You label news."},
        params={"max_tokens": 16, "temperature": 0},
    )
    text = cli("preview", str(job), "-n", "2")
    assert text.exit_code == 0, text.output
    assert text.stdout.count("POST ") == 2 and "Label: headline 1" in text.stdout and "headline 2" not in text.stdout
    assert "You label news." in text.stdout and '"temperature":0' in text.stdout
    lines = [orjson.loads(line) for line in cli("preview", str(job), "--format", "jsonl").stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == ["n0", "n1", "n2"]
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["method"] == "POST"
    assert lines[0]["body"] == {
        "model": "sim-small",
        "max_tokens": 16,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You label news."},
            {"role": "user", "content": "Label: headline 0"},
        ],
    }
    assert sim.stats()["requests"] == 0 and not (tmp_path / "runs").exists()


def test_show_one_row_request_and_answer_or_failure(tmp_path: Path, sim: SimServer) -> None:
    rows = [
        {"id": "a", "prompt": "what is up"},
        {"id": "b", "prompt": "bad #sim:status=400"},
        {"id": "c", "prompt": "x"},
    ]
    job = make_job(tmp_path, sim.base_url, rows)
    submit(job, "--limit", "2")
    run = str(tmp_path / "runs/job")

    ok = cli("show", run, "a")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("row 1, id a: succeeded after 1 attempt")
    assert "what is up" in ok.stdout and "finish_reason stop" in ok.stdout and "[simulated sim-small]" in ok.stdout

    bad = cli("show", run, "b")
    assert "failed after 1 attempt" in bad.stdout and "error: sim_400, HTTP 400" in bad.stdout
    assert '"type": "invalid_request_error"' in bad.stdout  # the provider's answer, kept in the record

    pending = cli("show", run, "c")
    assert pending.stdout.startswith("id c: pending") and "  user:\n    x" in pending.stdout

    record = orjson.loads(cli("show", run, "a", "--json").stdout)
    assert record["custom_id"] == "a" and record["response"]["status_code"] == 200

    missing = cli("show", run, "zz")
    assert missing.exit_code == 2 and "no row with id 'zz'" in missing.stderr


def test_csv_input_and_csv_export(tmp_path: Path, sim: SimServer) -> None:
    """CSV read as text (ids keep their zeros, quoted commas and newlines stay), exported as CSV a spreadsheet
    opens, with the input's columns beside the answers."""
    (tmp_path / "items.csv").write_text('id,title\n007,"Hello, world"\n008,"two\nlines"\n009,\n', encoding="utf-8")
    job = make_job(tmp_path, sim.base_url, input={"path": "items.csv", "prompt_field": "title"})
    assert "(csv), 3 rows" in cli("validate", str(job)).stdout
    result = submit(job)
    assert result.exit_code == 3, result.output  # the empty title cannot become a request
    assert {r["custom_id"] for r in read_jsonl(tmp_path / "runs/job/results.jsonl")} == {"007", "008"}
    (failure,) = read_jsonl(tmp_path / "runs/job/failures.jsonl")
    assert failure["custom_id"] == "009" and failure["error"]["code"] == "invalid_input"
    assert "  user:\n    two\n    lines" in cli("show", str(tmp_path / "runs/job"), "008").stdout

    out = tmp_path / "out.csv"
    assert cli("export", str(tmp_path / "runs/job"), "--to", str(out), "--with-input").exit_code == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["custom_id"] for r in rows] == ["007", "008", "009"]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "failed"]
    assert rows[1]["input_title"] == "two\nlines" and "Hello, world" in rows[0]["answer"]
    assert rows[2]["error_code"] == "invalid_input" and rows[0]["prompt_tokens"].isdigit()


def test_a_parquet_input_with_a_template_keeps_each_rows_own_id(tmp_path: Path, sim: SimServer) -> None:
    pq.write_table(pa.table({"id": ["a", "b"], "title": ["x", "y"]}), tmp_path / "t.parquet")
    job = make_job(tmp_path, sim.base_url, input={"path": "t.parquet", "template": "T: {title}"})
    assert submit(job).exit_code == 0
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "runs/job/results.jsonl")) == ["a", "b"]


def test_limit_below_the_endpoint_proof_still_stops_on_a_wrong_endpoint(tmp_path: Path) -> None:
    """Two rows tried against a closed port: not 8 to prove the endpoint wrong, but every row tried said so."""
    job = make_job(tmp_path, "http://127.0.0.1:9/v1", n=30, retry={"max_attempts": 2, "backoff_s": 0})
    result = submit(job, "--limit", "2")
    assert result.exit_code == 1, result.output
    assert "all failed as if the endpoint were wrong" in result.output and "cannot connect" in result.output
    assert read_jsonl(tmp_path / "runs/job/results.jsonl") == read_jsonl(tmp_path / "runs/job/failures.jsonl") == []
