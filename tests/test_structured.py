"""Structured output: answers judged against the job's schema and repaired by telling the model what was wrong,
in every lane, over HTTP against the simulator; each answer the simulator gives is judged again by jsonschema
(the pure-Python library, not the one batchrun uses), and the typed export is read back with pyarrow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.commands.columns import arrow_type, coerce, output_fields
from batchrun.errors import SpecError
from batchrun.rows.request import BadRow
from batchrun.rows.structured import (
    Checker,
    ask,
    grown_max_tokens,
    instruction,
    parse_answer,
    repair_message,
    schema_in_text,
    strict_ok,
)
from batchrun.spec.output import OutputSpec, schema_problem
from batchrun.spec.parse import parse_spec

from .helpers import cli, make_job, read_jsonl, submit, write_jsonl
from .simserver import SimServer
from .test_outside import BatchOutputLine

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "enum": ["economy", "sport", "tech"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "entities": {"type": "array", "items": {"type": "string"}},
        "urgent": {"type": "boolean"},
        "source": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
            "required": ["name", "year"],
            "additionalProperties": False,
        },
    },
    "required": ["topic", "score", "confidence", "entities", "urgent", "source"],
    "additionalProperties": False,
}
LOOSE = {"type": "object", "properties": {"score": {"type": "integer", "maximum": 5}}, "required": ["score"]}


def chat(content: str, finish: str = "stop", completion_tokens: int = 10) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens},
    }


# --- pure: parsing, judging, asking --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"score": 3}',
        '  {"score": 3}\n',
        'Here you go:\n```json\n{"score": 3}\n```\nAnything else?',
        'Sure! {"score": 3} is my answer.',
        '<think>the score is 3</think>{"score": 3}',
    ],
)
def test_an_answer_is_parsed_from_the_json_in_it(text: str) -> None:
    assert parse_answer(text) == {"score": 3}


def test_text_without_json_is_not_parsed() -> None:
    with pytest.raises(ValueError):
        parse_answer('Sure! Here is the JSON: {"score": ')


def test_judging_names_the_path_and_the_message() -> None:
    checker = Checker(OutputSpec(schema=SCHEMA))
    judged = checker.judge(chat(orjson.dumps({"topic": "tech", "score": 7, "entities": [1]}).decode()))
    problem = judged.problem
    assert problem is not None and problem.kind == "schema"
    assert "$.score: 7 is greater than the maximum of 5" in problem.errors
    assert '$.entities[0]: 1 is not of type "string"' in problem.errors
    message = repair_message(problem)
    assert "$.score: 7 is greater than the maximum of 5" in message and "JSON object only" in message
    good = {"score": 2}
    assert Checker(OutputSpec(schema=LOOSE)).judge(chat(orjson.dumps(good).decode())).value == good


def test_a_cut_answer_is_a_length_problem_and_an_empty_one_is_empty() -> None:
    checker = Checker(OutputSpec(schema=LOOSE))
    assert checker.judge(chat('{"sco', "length")).problem.kind == "length"  # type: ignore[union-attr]
    assert checker.judge(chat("   ")).problem.kind == "empty"  # type: ignore[union-attr]
    assert checker.judge(chat("not json")).problem.kind == "json"  # type: ignore[union-attr]
    assert checker.judge({"choices": []}).problem is not None


def test_max_tokens_grows_to_the_cap_and_no_further() -> None:
    assert grown_max_tokens(64, 64, 1000) == 128
    assert grown_max_tokens(None, 300, 1000) == 600  # unset: from what the cut answer used
    assert grown_max_tokens(600, 600, 1000) == 1000
    assert grown_max_tokens(1000, 1000, 1000) is None


def test_each_form_asks_for_json_its_way() -> None:
    out = OutputSpec(schema=SCHEMA, name="labels")
    messages = [{"role": "user", "content": "x"}]
    strong = ask({"messages": messages}, out, "json_schema")
    assert strong["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "labels", "schema": SCHEMA, "strict": True},
    }
    assert strong["messages"] == messages
    mode = ask({"messages": messages}, out, "json_object")
    assert mode["response_format"] == {"type": "json_object"}
    assert mode["messages"][0]["role"] == "system" and schema_in_text(mode["messages"][0]["content"]) == SCHEMA
    told = ask({"messages": [{"role": "system", "content": "Be brief."}, *messages]}, out, "instruction")
    assert "response_format" not in told and told["messages"][0]["content"].startswith("Be brief.\n\n")
    assert schema_in_text(told["messages"][0]["content"]) == SCHEMA
    mine = {"type": "json_object"}
    assert ask({"messages": messages, "response_format": mine}, out, "json_schema")["response_format"] is mine
    assert instruction(SCHEMA) in mode["messages"][0]["content"]


def test_strict_mode_only_for_schemas_it_takes() -> None:
    assert strict_ok(SCHEMA)
    assert not strict_ok(LOOSE)  # additionalProperties not false
    nested = {**SCHEMA, "properties": {**SCHEMA["properties"], "source": {"type": "object", "properties": {}}}}
    assert not strict_ok(nested)


def test_a_broken_schema_is_named() -> None:
    assert schema_problem({"type": "objekt"}) is not None
    assert schema_problem({"type": "object", "properties": {"a": {"minimum": "five"}}}) is not None
    assert schema_problem([1]) is not None
    assert schema_problem(SCHEMA) is None


def spec_of(tmp_path: Path, **extra: Any) -> Any:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    data = {"input": "in.jsonl", "model": "m", "provider": {"name": "zhipu"}, **extra}
    return parse_spec(data, spec_path=tmp_path / "job.yaml", source="job.yaml")


def test_the_output_block_is_read_strictly(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_bytes(orjson.dumps(SCHEMA))
    spec = spec_of(tmp_path, output={"schema_file": "s.json"}, params={"max_tokens": 2000})
    assert spec.output.schema == SCHEMA and spec.output.ask == "json_object"  # Zhipu's strongest form
    assert spec.output.max_tokens_cap == 8000 and spec.output.max_repairs == 2
    assert spec_of(tmp_path, output={"schema": LOOSE, "ask": "instruction"}).output.ask == "instruction"
    for bad, said in [
        ({"schema": {"type": "objekt"}}, "output.schema is not a valid JSON Schema"),
        ({"schema_file": "missing.json"}, "output.schema_file cannot be read"),
        ({}, "exactly one of output.schema"),
        ({"schema": LOOSE, "ask": "xml"}, "output.ask must be one of"),
        ({"schema": LOOSE, "name": "has space"}, "output.name must be letters"),
    ]:
        with pytest.raises(SpecError, match=said):
            spec_of(tmp_path, output=bad)
    with pytest.raises(SpecError, match="one answer per row"):
        spec_of(tmp_path, output={"schema": LOOSE}, params={"n": 2})
    with pytest.raises(SpecError, match="endpoint: chat only"):
        spec_of(tmp_path, output={"schema": LOOSE}, endpoint="embeddings")


def test_validate_refuses_a_broken_schema_with_exit_2(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=2, output={"schema": {"type": "object", "required": "score"}})
    result = cli("validate", str(job))
    assert result.exit_code == 2 and "output.schema is not a valid JSON Schema" in result.output
    assert sim.stats()["requests"] == 0


# --- over HTTP: every lane ---------------------------------------------------------------------------------------


def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "job"


def usage_of(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((run_dir(tmp_path) / "usage.json").read_bytes())
    return data


def assert_usage_is_the_bill(tmp_path: Path, sim: SimServer) -> None:
    usage, stats = usage_of(tmp_path), sim.stats()
    assert usage["prompt_tokens"] == stats["billed_prompt_tokens"]
    assert usage["completion_tokens"] == stats["billed_completion_tokens"]


def structured_job(tmp_path: Path, sim: SimServer, rows: list[dict[str, Any]], **extra: Any) -> Path:
    output = {"schema": SCHEMA, "name": "labels", **extra.pop("output", {})}
    return make_job(tmp_path, sim.base_url, rows, output=output, params={"max_tokens": 200}, **extra)


SPOILS = ["bad", "type", "missing", "cut", "fence"]


def test_each_kind_of_invalid_answer_is_repaired(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    rows = [{"id": kind, "prompt": f"label this #sim:json={kind}"} for kind in SPOILS]
    rows += [{"id": f"ok{i}", "prompt": f"label item {i}"} for i in range(5)]
    result = submit(structured_job(tmp_path, sim, rows))
    assert result.exit_code == 0, result.output
    results = {r["custom_id"]: r for r in read_jsonl(run_dir(tmp_path) / "results.jsonl")}
    assert len(results) == 10
    for rec in results.values():
        BatchOutputLine.model_validate(rec)
        jsonschema.validate(rec["output"], SCHEMA)  # judged again, by another library
        content = rec["response"]["body"]["choices"][0]["message"]["content"]
        assert parse_answer(content) == rec["output"]
    kinds = {cid: [step["kind"] for step in rec.get("repairs", [])] for cid, rec in results.items()}
    assert kinds == {
        "bad": ["json"],
        "type": ["schema"],
        "missing": ["schema"],
        "cut": ["length"],
        "fence": [],  # valid JSON in a fence: kept as it is, no repair
        **{f"ok{i}": [] for i in range(5)},
    }
    assert results["type"]["repairs"][0]["path"].startswith("$")
    stats = sim.stats()
    assert stats["structured"]["repairs"] == 3  # bad, type, missing: the conversation went on
    assert stats["max_tokens_asked"] == {"200": 13, "400": 1}  # the cut answer: asked again with more room
    assert stats["billed_requests"] == 14
    usage = usage_of(tmp_path)
    model = usage["models"]["sim-small"]
    assert (model["outputs_first_try"], model["outputs_repaired"], model["outputs_invalid"], model["repairs"]) == (
        6,
        4,
        0,
        4,
    )
    assert usage["requests"] == 14
    assert_usage_is_the_bill(tmp_path, sim)
    repairs = read_jsonl(run_dir(tmp_path) / "repairs.jsonl")
    told = next(step for step in repairs if step["row"] == 2)
    assert told["answer"] and "does not fit the JSON Schema" in told["feedback"]
    counted = "6 fit at the first answer, 4 after repairs (4 repair requests), 0 invalid"
    for command in ("report", "status"):
        assert counted in cli(command, str(run_dir(tmp_path))).output
    assert "output: 6 fit at the first answer" in result.output


def test_out_of_repairs_is_invalid_output_with_the_answer_kept(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim()
    rows = [{"id": "never", "prompt": "label #sim:json=type #sim:stubborn"}, {"id": "fine", "prompt": "label"}]
    result = submit(structured_job(tmp_path, sim, rows, output={"max_repairs": 1}))
    assert result.exit_code == 3, result.output
    (failed,) = read_jsonl(run_dir(tmp_path) / "failures.jsonl")
    BatchOutputLine.model_validate(failed)
    error = failed["error"]
    assert error["code"] == "invalid_output" and error["path"].startswith("$.")
    assert "after 1 repair the answer still does not fit the schema: $." in error["message"]
    raw = failed["response"]["body"]["choices"][0]["message"]["content"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(orjson.loads(raw), SCHEMA)
    assert len(failed["repairs"]) == 1 and failed["attempts"] == 2
    assert sim.stats()["billed_requests"] == 3
    usage = usage_of(tmp_path)
    assert usage["models"]["sim-small"]["outputs_invalid"] == 1
    assert usage["failures_by_code"] == {"invalid_output": 1}
    assert_usage_is_the_bill(tmp_path, sim)


def test_a_cut_answer_is_asked_again_with_more_max_tokens_up_to_the_cap(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim()
    rows = [{"id": "a", "prompt": "label a"}]
    small = {"max_tokens": 10}
    job = make_job(tmp_path, sim.base_url, rows, output={"schema": SCHEMA}, params=small)
    assert submit(job).exit_code == 0
    (rec,) = read_jsonl(run_dir(tmp_path) / "results.jsonl")
    assert [s["kind"] for s in rec["repairs"]] == ["length"] * len(rec["repairs"]) and rec["repairs"]
    asked = sim.stats()["max_tokens_asked"]
    assert asked["10"] == 1 and "20" in asked  # doubled each time it was cut
    assert_usage_is_the_bill(tmp_path, sim)

    capped = make_job(
        tmp_path, sim.base_url, rows, name="capped", output={"schema": SCHEMA, "max_tokens_cap": 20}, params=small
    )
    assert submit(capped, "--no-cache").exit_code == 3
    (failed,) = read_jsonl(tmp_path / "runs" / "capped" / "failures.jsonl")
    assert failed["error"]["code"] == "invalid_output" and "cut at max_tokens 20" in failed["error"]["message"]


def test_a_schema_in_the_prompt_is_enough_for_providers_without_json_schema(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim()
    rows = [{"id": f"r{i}", "prompt": f"label {i}" + (" #sim:json=missing" if i == 0 else "")} for i in range(4)]
    job = structured_job(tmp_path, sim, rows, output={"ask": "instruction"})
    assert submit(job).exit_code == 0
    results = read_jsonl(run_dir(tmp_path) / "results.jsonl")
    assert len(results) == 4
    for rec in results:
        jsonschema.validate(rec["output"], SCHEMA)
    assert sum(len(rec.get("repairs", [])) for rec in results) == 1


def test_zhipu_async_tasks_are_repaired_too(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(task_s=(0.05, 0.2))
    root = sim.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": f"r{i}", "prompt": f"label {i}" + (" #sim:json=type" if i < 3 else "")} for i in range(8)]
    job = make_job(
        tmp_path,
        "",
        rows,
        provider={"name": "zhipu", "base_url": root + "/api/paas/v4", "mode": "async"},
        limits={"concurrency": 8, "poll_rps": 200},
        output={"schema": SCHEMA},
        params={"max_tokens": 200},
    )
    result = submit(job, env={"ZHIPUAI_API_KEY": "test-key-not-secret"})
    assert result.exit_code == 0, result.output
    results = {r["custom_id"]: r for r in read_jsonl(run_dir(tmp_path) / "results.jsonl")}
    assert len(results) == 8
    for rec in results.values():
        jsonschema.validate(rec["output"], SCHEMA)
    assert all(len(results[f"r{i}"].get("repairs", [])) == (1 if i < 3 else 0) for i in range(8))
    assert sim.stats()["tasks_submitted"] == 11
    assert_usage_is_the_bill(tmp_path, sim)


@pytest.mark.parametrize("fallback", ["batch", "online"])
def test_the_batch_lane_repairs_in_a_follow_up_shard_or_online(
    tmp_path: Path, start_sim: Callable[..., SimServer], fallback: str
) -> None:
    sim = start_sim(batch_s=0.2)
    rows = [{"id": f"r{i}", "prompt": f"label {i}" + (" #sim:json=bad" if i % 4 == 0 else "")} for i in range(12)]
    provider = {"name": "simulated", "base_url": sim.base_url, "mode": "batch"}
    batch = {"poll_s": 0.05, "max_poll_s": 0.2, "fallback": fallback}
    job = structured_job(tmp_path, sim, rows, provider=provider, batch=batch)
    result = submit(job)
    assert result.exit_code == 0, result.output
    results = {r["custom_id"]: r for r in read_jsonl(run_dir(tmp_path) / "results.jsonl")}
    assert len(results) == 12
    for rec in results.values():
        jsonschema.validate(rec["output"], SCHEMA)
    repaired = [results[f"r{i}"] for i in (0, 4, 8)]
    assert all(len(rec["repairs"]) == 1 and rec["repairs"][0]["batch_id"] for rec in repaired)
    stats = sim.stats()
    assert stats["batches_created"] == (2 if fallback == "batch" else 1)
    assert all(("batch_id" in rec) == (fallback == "batch") for rec in repaired)  # where the answer came from
    usage = usage_of(tmp_path)["models"]["sim-small"]
    assert usage["outputs_repaired"] == 3 and usage["repairs"] == 3
    first_answers = sum(rec["repairs"][0]["usage"]["completion_tokens"] for rec in repaired)
    batch_tokens = sum(
        rec["response"]["body"]["usage"]["completion_tokens"] for rec in results.values() if "batch_id" in rec
    )
    assert usage["batch_completion_tokens"] == batch_tokens + first_answers  # every batch answer at batch price
    assert_usage_is_the_bill(tmp_path, sim)


def test_a_resumed_run_goes_on_with_a_repair_instead_of_asking_afresh(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim()
    rows = [{"id": "a", "prompt": "label a"}, {"id": "b", "prompt": "label b"}]
    job = structured_job(tmp_path, sim, rows)
    assert submit(job, "--limit", "1").exit_code == 0
    # as a run killed mid-repair leaves it: row 2's first answer did not fit, and its step is on disk
    step = {
        "row": 2,
        "kind": "schema",
        "path": "$.score",
        "message": "7 is greater than the maximum of 5",
        "answer": '{"score": 7}',
        "feedback": "Your answer does not fit the JSON Schema:\n- $.score: 7 is greater than the maximum of 5",
        "usage": {"prompt_tokens": 50, "completion_tokens": 6, "total_tokens": 56},
    }
    (run_dir(tmp_path) / "repairs.jsonl").write_bytes(orjson.dumps(step) + b"\n")
    assert submit(job).exit_code == 0
    results = {r["custom_id"]: r for r in read_jsonl(run_dir(tmp_path) / "results.jsonl")}
    assert results["b"]["repairs"] == [{k: step[k] for k in ("kind", "path", "message", "usage")}]
    assert results["b"]["attempts"] == 2  # the answer before the kill, and the repair
    stats = sim.stats()
    assert stats["structured"]["repairs"] == 1 and stats["billed_requests"] == 2  # no first question again
    usage = usage_of(tmp_path)
    assert usage["prompt_tokens"] == stats["billed_prompt_tokens"] + 50  # the step billed before the "kill"


def test_retry_failed_starts_an_invalid_row_afresh(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    job = structured_job(
        tmp_path, sim, [{"id": "x", "prompt": "label #sim:json=bad #sim:stubborn"}], output={"max_repairs": 1}
    )
    assert submit(job).exit_code == 3
    assert cli("retry-failed", str(run_dir(tmp_path)), "--no-progress").exit_code == 3
    (failed,) = read_jsonl(run_dir(tmp_path) / "failures.jsonl")
    assert failed["error"]["code"] == "invalid_output"
    assert len(failed["repairs"]) == 1 and failed["attempts"] == 2  # not going on from the first run's repair
    assert sim.stats()["billed_requests"] == 4  # each run: the question, then one repair


# --- export: the schema's properties as typed columns ------------------------------------------------------------


def test_export_gives_each_property_a_typed_column(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()
    rows = [
        {"id": f"r{i}", "prompt": f"label {i}" + (" #sim:json=type #sim:stubborn" if i == 2 else "")} for i in range(5)
    ]
    assert submit(structured_job(tmp_path, sim, rows, output={"max_repairs": 0})).exit_code == 3
    to = tmp_path / "out.parquet"
    assert cli("export", str(run_dir(tmp_path)), "--to", str(to)).exit_code == 0
    table = pq.read_table(to)
    types = {name: str(table.schema.field(name).type) for name in SCHEMA["properties"]}
    assert types == {
        "topic": "string",
        "score": "int64",
        "confidence": "double",
        "entities": "list<element: string>",
        "urgent": "bool",
        "source": "struct<name: string, year: int64>",
    }
    data = table.to_pylist()
    results = {r["row"]: r for r in read_jsonl(run_dir(tmp_path) / "results.jsonl")}
    for row in data:
        if row["row"] in results:
            assert {k: row[k] for k in SCHEMA["properties"]} == results[row["row"]]["output"]
            assert row["answer"]  # the raw answer beside them
        else:
            assert row["status"] == "failed" and row["score"] is None and row["answer"]
    jsonl = tmp_path / "out.jsonl"
    assert cli("export", str(run_dir(tmp_path)), "--to", str(jsonl)).exit_code == 0
    assert read_jsonl(jsonl)[0]["source"] == results[1]["output"]["source"]


def test_arrow_types_and_coercion_for_the_common_schema_shapes() -> None:
    assert str(arrow_type({"type": ["integer", "null"]})) == "int64"
    assert str(arrow_type({"enum": ["a", "b"]})) == "string"
    assert str(arrow_type({"anyOf": [{"type": "string"}, {"type": "integer"}]})) == "string"  # as JSON text
    assert arrow_type({"type": "array", "items": {"type": "number"}}) == pa.list_(pa.float64())
    assert coerce(3.0, {"type": "integer"}) == 3 and coerce(True, {"type": "integer"}) is None
    assert coerce(2, {"type": "number"}) == 2.0
    assert coerce({"a": 1}, {"anyOf": []}) == '{"a":1}'
    fields = output_fields({"type": "object", "properties": {"answer": {"type": "string"}, "x": {}}})
    assert [column for column, _, _ in fields] == ["output_answer", "x"]  # `answer` is batchrun's own column


def test_the_tpm_estimate_counts_the_schema_the_provider_reads(tmp_path: Path) -> None:
    from batchrun.rows.request import RequestBuilder
    from batchrun.rows.sources import RawRow

    def tokens(**extra: Any) -> int:
        spec = parse_spec(
            {"input": "in.jsonl", "model": "m", "provider": {"name": "openai"}, **extra},
            spec_path=tmp_path / "job.yaml",
            source="job.yaml",
        )
        built = RequestBuilder(spec, {"prompt": "x"}).build(RawRow(1, {"prompt": "label this"}))
        assert not isinstance(built, BadRow)
        return built.prompt_tokens

    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    plain, shaped = tokens(), tokens(output={"schema": SCHEMA})
    assert shaped - plain >= len(orjson.dumps(SCHEMA)) // 4  # about a token per 4 characters of schema
    told = tokens(output={"schema": SCHEMA, "ask": "instruction"})  # the schema in the system message instead
    assert told - plain >= len(orjson.dumps(SCHEMA)) // 4
