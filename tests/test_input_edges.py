"""The input as the user meant it: read as it was when the run started (rows appended meanwhile wait for the next
run, which says the input grew), and each value put into the prompt as the user wrote it (a byte order mark is no
part of the first row, a null is a failure that names its field, lists and objects are JSON, not Python)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.engine.job import prepare
from batchrun.rows.ids import repeated_ids
from batchrun.rows.sources import iter_rows, nth_row, slices
from batchrun.spec.parse import load_spec

from .helpers import cli, make_job, read_jsonl, spawn_submit, submit, wait_for_lines, write_jsonl
from .simserver import SimServer


def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "job"


def records(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return read_jsonl(run_dir(tmp_path) / "results.jsonl"), read_jsonl(run_dir(tmp_path) / "failures.jsonl")


def answer(record: dict[str, Any]) -> str:
    content: str = record["response"]["body"]["choices"][0]["message"]["content"]
    return content


def rows(first: int, last: int, id_of: Callable[[int], str] = lambda i: f"r{i}") -> list[dict[str, Any]]:
    return [{"id": id_of(i), "prompt": f"question {i}"} for i in range(first, last + 1)]


def append_jsonl(path: Path, data: list[dict[str, Any]]) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in data))


def one_record_per_row(tmp_path: Path) -> None:
    results, failures = records(tmp_path)
    counts = Counter(r["row"] for r in results + failures)
    assert max(counts.values()) == 1, [row for row, n in counts.items() if n > 1]


# --- A: the input is a snapshot ------------------------------------------------------------------------------


def test_rows_appended_while_a_run_goes_wait_for_the_next_run(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    """An upstream job appends 50 rows (25 repeating ids the run has, 25 new) while the run goes: the run sends its
    120 rows, each id once; the next submit says the input grew, records the 25 repeats as duplicate ids and sends
    exactly the 25 new rows."""
    server = start_sim(latency=0.05)
    job = make_job(tmp_path, server.base_url, rows=rows(1, 120), limits={"concurrency": 2})
    proc = spawn_submit(job)
    wait_for_lines(run_dir(tmp_path) / "results.jsonl", 5, proc)
    appended = rows(1, 25) + rows(1001, 1025)
    append_jsonl(tmp_path / "job.jsonl", appended)
    still_going = (run_dir(tmp_path) / "results.jsonl").read_bytes().count(b"\n")
    out, _ = proc.communicate(timeout=120)
    assert still_going < 100, "the run had all but finished before the rows were appended"
    assert proc.returncode == 0, out.decode()

    results, failures = records(tmp_path)
    assert failures == []
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(1, 121))  # each id once
    assert max(r["row"] for r in results) == 120  # the appended rows are not in this run
    sent_before = server.stats()["billed_prompts"]
    assert sent_before == 120

    checked = cli("validate", str(job))
    assert "170 rows, 50 of them new since the run started (submit sends them)" in checked.stdout, checked.stdout
    again = submit(job)
    assert "job.jsonl grew by 50 rows since this run started (120 -> 170): the 50 new rows will be sent" in (
        again.output
    )
    assert again.exit_code == 3, again.output  # the 25 repeated ids are failure records
    assert server.stats()["billed_prompts"] - sent_before == 25  # exactly the new rows
    results, failures = records(tmp_path)
    assert sorted(r["custom_id"] for r in results if r["row"] > 120) == [f"r{i}" for i in range(1001, 1026)]
    assert sorted(f["row"] for f in failures) == list(range(121, 146))
    assert {f["error"]["code"] for f in failures} == {"duplicate_id"}
    one_record_per_row(tmp_path)

    unchanged = submit(job)  # the grown input is now the run's: nothing grew since
    assert unchanged.exit_code == 3 and "grew" not in unchanged.output, unchanged.output
    lines = (tmp_path / "job.jsonl").read_bytes().splitlines(keepends=True)
    lines[0] = orjson.dumps({"id": "r1", "prompt": "a changed question"}) + b"\n"
    (tmp_path / "job.jsonl").write_bytes(b"".join(lines) + orjson.dumps({"id": "z", "prompt": "more"}) + b"\n")
    changed = submit(job)  # grown, but not from what the run read: a different job
    assert changed.exit_code == 2 and "a different job" in changed.output, changed.output


def test_every_read_of_a_run_stops_at_its_snapshot(tmp_path: Path) -> None:
    """Rows appended once the input is scanned are not read by the rows, the --limit row count, the Ray slices nor
    the repeated-ids check (a later row repeating an earlier id is not a repeat of this run's)."""
    write_jsonl(tmp_path / "in.jsonl", rows(1, 30))
    (tmp_path / "job.yaml").write_text(
        "model: m\ninput: in.jsonl\nprovider: {name: simulated}\n",
        encoding="utf-8",
    )
    prepared = prepare(load_spec(tmp_path / "job.yaml"))
    append_jsonl(tmp_path / "in.jsonl", rows(1, 10))
    spec = prepared.spec.input
    assert [r.row for r in iter_rows(spec)] == list(range(1, 31))
    assert nth_row(spec, 35) == 30
    parts = slices(spec, 8)
    assert sum(p.count for p in parts) == 30 and parts[-1].end == prepared.scan.size
    assert list(repeated_ids(spec, tmp_path)) == []
    assert prepared.scan.rows == 30


def test_a_run_directory_from_before_snapshots_resumes_and_then_grows(tmp_path: Path, sim: SimServer) -> None:
    """A run directory whose fingerprint has no snapshot size (an older batchrun's) resumes as it always did, and
    from then on holds the size, so that rows appended later are the input grown, not a different job."""
    job = make_job(tmp_path, sim.base_url, rows=rows(1, 10))
    assert submit(job).exit_code == 0
    manifest_path = run_dir(tmp_path) / "manifest.json"
    manifest = orjson.loads(manifest_path.read_bytes())
    del manifest["fingerprint"]["input_bytes"]
    manifest_path.write_bytes(orjson.dumps(manifest))

    resumed = submit(job)
    assert resumed.exit_code == 0 and "10 of 10 rows already done" in resumed.output, resumed.output
    size = (tmp_path / "job.jsonl").stat().st_size
    assert orjson.loads(manifest_path.read_bytes())["fingerprint"]["input_bytes"] == str(size)

    append_jsonl(tmp_path / "job.jsonl", rows(11, 13))
    grown = submit(job)
    assert grown.exit_code == 0 and "grew by 3 rows since this run started (10 -> 13)" in grown.output, grown.output
    assert sim.stats()["billed_prompts"] == 13


def test_a_last_line_still_being_written_is_left_for_the_next_run(tmp_path: Path, sim: SimServer) -> None:
    """A snapshot taken while an upstream job is halfway through a line: that line is not a broken row, it is left
    out, and the next submit sends it once it is whole."""
    job = make_job(tmp_path, sim.base_url, rows=rows(1, 5))
    with open(tmp_path / "job.jsonl", "ab") as f:
        f.write(b'{"id": "r6", "prompt": "quest')
    checked = cli("validate", str(job))
    assert "line 6: no newline at its end and not whole JSON: left out as still being written" in checked.stdout

    first = submit(job)
    assert first.exit_code == 0, first.output
    assert "job.jsonl: line 6 has no newline at its end and is not whole JSON" in first.output
    results, failures = records(tmp_path)
    assert failures == [] and len(results) == 5  # not a broken row 6

    with open(tmp_path / "job.jsonl", "ab") as f:
        f.write(b'ion 6"}\n')
    second = submit(job)
    assert (
        second.exit_code == 0
        and "grew by 1 row since this run started (5 -> 6): the new row will be sent" in second.output
    ), second.output
    results, failures = records(tmp_path)
    assert failures == [] and sorted(r["custom_id"] for r in results) == [f"r{i}" for i in range(1, 7)]
    assert "question 6" in answer(next(r for r in results if r["custom_id"] == "r6"))


def test_a_csv_input_that_grew_sends_only_its_new_rows(tmp_path: Path, sim: SimServer) -> None:
    (tmp_path / "items.csv").write_text("id,title\n" + "".join(f"{i:03d},title {i}\n" for i in range(1, 8)), "utf-8")
    job = make_job(tmp_path, sim.base_url, input={"path": "items.csv", "template": "T: {title}"})
    assert submit(job).exit_code == 0
    with open(tmp_path / "items.csv", "a", encoding="utf-8") as f:
        f.write("008,title 8\n009,title 9\n")
    grown = submit(job)
    assert grown.exit_code == 0, grown.output
    assert "items.csv grew by 2 rows since this run started (7 -> 9): the 2 new rows will be sent" in grown.output
    assert sim.stats()["billed_prompts"] == 9
    results, _ = records(tmp_path)
    assert sorted(r["custom_id"] for r in results) == [f"{i:03d}" for i in range(1, 10)]


# --- B: values reach the prompt as the user meant them ----------------------------------------------------------


def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path: Path, sim: SimServer) -> None:
    """Saved by an editor that starts UTF-8 files with a BOM: the first row is read, and its id counts in the
    repeated-ids check (row 3 repeats it)."""
    data = [{"id": "a", "prompt": "第一行"}, {"id": "b", "prompt": "second"}, {"id": "a", "prompt": "again"}]
    (tmp_path / "job.jsonl").write_bytes(b"\xef\xbb\xbf" + b"".join(orjson.dumps(r) + b"\n" for r in data))
    job = make_job(tmp_path, sim.base_url, input="job.jsonl")
    checked = cli("validate", str(job))
    assert "row 3: duplicate id 'a' (first at row 1)" in checked.stdout and "1 problem" in checked.stdout
    result = submit(job)
    assert result.exit_code == 3, result.output
    results, failures = records(tmp_path)
    assert sorted((r["row"], r["custom_id"]) for r in results) == [(1, "a"), (2, "b")]
    assert "第一行" in answer(next(r for r in results if r["row"] == 1))
    assert [(f["row"], f["error"]["code"]) for f in failures] == [(3, "duplicate_id")]
    exported = cli("export", str(run_dir(tmp_path)), "--to", str(tmp_path / "x.jsonl"), "--with-input")
    assert exported.exit_code == 0, exported.output  # the BOM costs the export's first row its input neither
    first = read_jsonl(tmp_path / "x.jsonl")[0]
    assert (first["input_id"], first["input_prompt"]) == ("a", "第一行")


def test_show_on_a_grown_input_says_nothing_changed_but_on_a_changed_one_it_does(
    tmp_path: Path, sim: SimServer
) -> None:
    job = make_job(tmp_path, sim.base_url, rows(1, 5))
    assert submit(job).exit_code == 0
    append_jsonl(tmp_path / "job.jsonl", rows(6, 7))  # grown: the rows the run read are all still there
    shown = cli("show", str(run_dir(tmp_path)), "r2")
    assert shown.exit_code == 0 and "changed" not in shown.output
    (tmp_path / "job.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows(1, 5, lambda i: f"x{i}")))
    changed = cli("show", str(run_dir(tmp_path)), "r2")
    assert "the input file changed after this run" in changed.output


def test_nulls_in_template_fields_fail_their_rows_naming_the_field(tmp_path: Path, sim: SimServer) -> None:
    """JSON null and, in Parquet, a null string and a NaN float: a failure record naming the field, counted by
    validate, never the text None or nan."""
    write_jsonl(tmp_path / "job.jsonl", [{"id": "a", "title": None}, {"id": "b", "title": "fine"}])
    job = make_job(tmp_path, sim.base_url, input={"path": "job.jsonl", "template": "T: {title}"})
    checked = cli("validate", str(job))
    assert "row 1: input.template names {title}, which is null in this row" in checked.stdout
    assert "[null_field]" in checked.stdout and "1 problem" in checked.stdout
    result = submit(job)
    assert result.exit_code == 3, result.output
    results, failures = records(tmp_path)
    assert [answer(r).split("] ", 1)[1].split(" #")[0] for r in results] == ["T: fine"]
    assert [(f["custom_id"], f["error"]["code"]) for f in failures] == [("a", "null_field")]
    assert "{title}" in failures[0]["error"]["message"]

    table = pa.table({"id": ["p", "q", "s"], "title": ["x", None, "z"], "score": [0.5, 1.0, float("nan")]})
    pq.write_table(table, tmp_path / "t.parquet")
    job = make_job(tmp_path, sim.base_url, name="pq", input={"path": "t.parquet", "template": "{title} {score}"})
    result = submit(job)
    assert result.exit_code == 3, result.output
    results = read_jsonl(tmp_path / "runs/pq/results.jsonl")
    assert [answer(r).split("] ", 1)[1].split(" #")[0] for r in results] == ["x 0.5"]
    failures = read_jsonl(tmp_path / "runs/pq/failures.jsonl")
    assert sorted((f["custom_id"], f["error"]["code"]) for f in failures) == [("q", "null_field"), ("s", "null_field")]
    messages = {f["custom_id"]: f["error"]["message"] for f in failures}
    assert "{title}" in messages["q"] and "{score}" in messages["s"]


def test_input_null_empty_sends_a_null_as_empty_text(tmp_path: Path, sim: SimServer) -> None:
    pq.write_table(pa.table({"id": ["a", "b"], "title": [None, "B"], "n": [None, 2]}), tmp_path / "t.parquet")
    job = make_job(tmp_path, sim.base_url, input={"path": "t.parquet", "template": "<{title}|{n}>", "null": "empty"})
    shown = [orjson.loads(line) for line in cli("preview", str(job), "--format", "jsonl").stdout.splitlines()]
    assert [line["body"]["messages"][0]["content"] for line in shown] == ["<|>", "<B|2>"]
    assert submit(job).exit_code == 0
    results, failures = records(tmp_path)
    assert failures == [] and sorted(answer(r).split("] ", 1)[1].split(" #")[0] for r in results) == ["<B|2>", "<|>"]

    bad = make_job(tmp_path, sim.base_url, name="bad", input={"path": "t.parquet", "template": "{n}", "null": "skip"})
    refused = submit(bad)
    assert refused.exit_code == 2 and "input.null must be one of fail, empty, got 'skip'" in refused.stderr
    assert "Traceback" not in refused.output


def test_lists_objects_booleans_and_numbers_are_written_as_json_text(tmp_path: Path, sim: SimServer) -> None:
    """Nested values as JSON (non-ASCII kept), true/false, numbers as written: what preview shows and what the
    simulated provider receives; the same from Parquet's struct, list and bool columns."""
    meta = {"城市": "北京", "tags": ["x", 1, None]}
    write_jsonl(tmp_path / "job.jsonl", [{"id": "a", "meta": meta, "ok": True, "n": 3, "x": 0.5}])
    job = make_job(tmp_path, sim.base_url, input={"path": "job.jsonl", "template": "{meta} {ok} {n} {x}"})
    expected = '{"城市":"北京","tags":["x",1,null]} true 3 0.5'
    shown = orjson.loads(cli("preview", str(job), "--format", "jsonl").stdout)
    assert shown["body"]["messages"][0]["content"] == expected
    assert submit(job).exit_code == 0
    (result,) = records(tmp_path)[0]
    assert expected in answer(result)

    table = pa.table(
        {"id": ["p"], "s": [{"k": "值", "v": 2}], "l": [[1, 2]], "b": [False], "f": [2.25]},
    )
    pq.write_table(table, tmp_path / "t.parquet")
    job = make_job(tmp_path, sim.base_url, name="pq", input={"path": "t.parquet", "template": "{s}|{l}|{b}|{f}"})
    text = cli("preview", str(job)).stdout
    assert '{"k":"值","v":2}|[1,2]|false|2.25' in text, text

    nested = make_job(tmp_path, sim.base_url, name="nested", input={"path": "t.parquet", "template": "{s[k]}:{s}"})
    assert '值:{"k":"值","v":2}' in cli("preview", str(nested)).stdout


def test_a_null_prompt_or_messages_field_is_a_failure_naming_it(tmp_path: Path, sim: SimServer) -> None:
    write_jsonl(tmp_path / "job.jsonl", [{"id": "a", "text": None}, {"id": "b", "text": "fine"}])
    job = make_job(tmp_path, sim.base_url, input={"path": "job.jsonl", "prompt_field": "text"})
    assert submit(job).exit_code == 3
    (failure,) = records(tmp_path)[1]
    assert failure["custom_id"] == "a" and failure["error"]["code"] == "null_field"
    assert "'text' is null in this row" in failure["error"]["message"]

    hello = [{"role": "user", "content": "hi"}]
    write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "conv": None}, {"id": "b", "conv": hello}])
    job = make_job(tmp_path, sim.base_url, name="m", input={"path": "m.jsonl", "messages_field": "conv"})
    assert submit(job).exit_code == 3
    (failure,) = read_jsonl(tmp_path / "runs/m/failures.jsonl")
    assert failure["custom_id"] == "a" and failure["error"]["code"] == "null_field"
    assert "'conv' is null in this row" in failure["error"]["message"]
