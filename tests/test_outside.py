"""Judged by code nobody here wrote: the official openai SDK parses the simulated provider's answers, and
pydantic models of OpenAI's Batch output line judge every record batchrun writes."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from .helpers import make_job, read_jsonl, submit
from .simserver import SimServer

# --- OpenAI's Batch output line (https://platform.openai.com/docs/api-reference/batch/request-output) --------


class BatchResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status_code: StrictInt
    request_id: StrictStr
    body: dict[str, Any]


class BatchError(BaseModel):
    model_config = ConfigDict(extra="allow")  # batchrun adds status and attempts (documented in records.py)
    code: StrictStr
    message: StrictStr


class BatchOutputLine(BaseModel):
    model_config = ConfigDict(extra="allow")  # batchrun's own keys: row, model, attempts, latency_s, ...
    id: StrictStr
    custom_id: StrictStr
    response: BatchResponse | None
    error: BatchError | None


def test_every_record_is_an_openai_batch_output_line(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim()
    rows: list[Any] = [
        {"id": 7, "prompt": "an integer id"},
        {"prompt": "no id: its row number"},
        {"id": "bad-request", "prompt": "#sim:status=400"},
        {"id": "html", "prompt": "a gateway's page #sim:html=9"},
        {"id": "dropped", "prompt": "never answered #sim:drop=9"},
        {"id": "fine", "prompt": "fine"},
        {"id": "fine", "prompt": "a repeated id"},
    ]
    job = make_job(tmp_path, server.base_url, rows)
    with open(tmp_path / "job.jsonl", "ab") as f:
        f.write(b'{"id": "torn", "prompt": \n')
    assert submit(job).exit_code == 3
    out = tmp_path / "runs" / "job"
    lines = read_jsonl(out / "results.jsonl") + read_jsonl(out / "failures.jsonl")
    assert len(lines) == 8
    by_id = {}
    for line in lines:
        parsed = BatchOutputLine.model_validate(line)
        by_id.setdefault(parsed.custom_id, parsed)
    assert {"7", "2", "bad-request", "html", "dropped", "fine", "8"} <= set(by_id)
    assert by_id["7"].response is not None and by_id["7"].response.request_id.startswith("sim-")
    html = by_id["html"].response
    assert html is not None and "500 Internal Server Error" in html.body["text"]  # a page kept as text
    assert by_id["dropped"].response is None and by_id["dropped"].error is not None
    assert by_id["8"].error is not None and by_id["8"].error.code == "invalid_input"


def test_a_line_asking_to_stream_is_streamed_and_every_billed_token_counted(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim()
    rows = [
        {
            "custom_id": f"s{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"stream": True, "messages": [{"role": "user", "content": f"stream {i}"}]},
        }
        for i in range(3)
    ]
    rows.append(
        {
            "custom_id": "empty",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "an empty answer first #sim:nochoices=1"}]},
        }
    )
    assert submit(make_job(tmp_path, server.base_url, rows)).exit_code == 0
    out = tmp_path / "runs" / "job"
    results = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    assert results["s0"]["attempts"] == 1 and results["s0"]["response"]["body"]["object"] == "chat.completion"
    assert results["s0"]["response"]["body"]["usage"]["completion_tokens"] > 0
    assert results["empty"]["attempts"] == 2 and results["empty"]["retried_usage"]["prompt_tokens"] > 0
    usage, stats = orjson.loads((out / "usage.json").read_bytes()), server.stats()
    assert stats["billed_requests"] == usage["requests"] == 5
    assert usage["prompt_tokens"] == stats["billed_prompt_tokens"]
    assert usage["completion_tokens"] == stats["billed_completion_tokens"]


# --- the simulated provider, parsed by the openai SDK ------------------------------------------------------------


@pytest.fixture
def client(start_sim: Callable[..., SimServer]) -> openai.OpenAI:
    server = start_sim(models=("sim-small", "sim-large"))
    return openai.OpenAI(base_url=server.base_url, api_key="not-a-real-key", max_retries=0)


def test_sdk_chat_with_n_choices_and_unique_ids(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="sim-small", n=2, messages=[{"role": "user", "content": "hello #sim:think"}]
    )
    again = client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "hello"}])
    assert [c.index for c in first.choices] == [0, 1] and first.id != again.id
    assert first.usage is not None and first.usage.completion_tokens == 2 * again.usage.completion_tokens  # type: ignore[union-attr]
    assert first.choices[0].message.content and first.choices[0].message.content.startswith("[simulated sim-small]")


def test_sdk_completions_prompt_lists_n_thinking_and_streams(client: openai.OpenAI) -> None:
    done = client.completions.create(model="sim-small", prompt=["one #sim:think", "two"], n=2, max_tokens=30)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert "one" in done.choices[0].text and "two" in done.choices[3].text
    tokens = client.completions.create(model="sim-small", prompt=[1, 2, 3], max_tokens=30)
    assert len(tokens.choices) == 1 and tokens.usage is not None and tokens.usage.prompt_tokens > 0
    texts: dict[int, str] = {}
    finished: dict[int, str | None] = {}
    for chunk in client.completions.create(model="sim-small", prompt=["a story", "another"], stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text  # the SDK joins .text: never None
            finished[choice.index] = choice.finish_reason
    assert set(texts) == {0, 1} and all(finished.values()) and "another" in texts[1]


def test_sdk_embeddings_as_floats_and_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="sim-small", input=["a", "b"], encoding_format="float")
    raw = client.embeddings.with_raw_response.create(model="sim-small", input=["a"], encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = struct.unpack(f"<{len(base64.b64decode(encoded)) // 4}f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)
    default = client.embeddings.create(model="sim-small", input="a")  # the SDK asks for base64 and decodes it
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_sdk_models_and_unknown_models(client: openai.OpenAI) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["sim-small", "sim-large"] and all(m.created for m in listed.data)
    assert client.models.retrieve("sim-large").id == "sim-large"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert raised.value.code == "model_not_found"


def test_request_ids_are_each_requests_own(start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(latency=0.05)
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)

    def ask(i: int) -> str | None:
        raw = sdk.chat.completions.with_raw_response.create(
            model="sim-small", messages=[{"role": "user", "content": f"q{i}"}]
        )
        return raw.headers.get("x-request-id")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(ask, range(16)))
    assert len(set(ids)) == 16


def test_sim_models_flag_is_a_spec_key_too(tmp_path: Path) -> None:
    from batchrun.spec.parse import load_spec

    job = make_job(tmp_path, "", provider={"name": "simulated", "simulate": {"models": ["m1", "m2"]}})
    spec = load_spec(job)
    assert spec.provider.simulate is not None and spec.provider.simulate.models == ("m1", "m2")


def test_the_command_tables_list_every_command_and_option() -> None:
    """The README's command table names every command; the commands page, the user's reference, lists every
    command and every option in its row."""
    import click

    from batchrun.cli import main

    root = Path(__file__).parent.parent

    def rows_of(page: str) -> dict[str, str]:
        text = (root / page).read_text(encoding="utf-8")
        return {line.split("`")[1].split()[1]: line for line in text.splitlines() if line.startswith("| `batchrun ")}

    assert set(rows_of("README.md")) == set(main.commands), "commands missing from (or stale in) the README's table"
    rows = rows_of("docs/commands.md")
    assert set(rows) == set(main.commands), "commands missing from (or stale in) docs/commands.md's table"
    for name, command in main.commands.items():
        subcommands = list(command.commands.values()) if isinstance(command, click.Group) else []
        for sub in subcommands:
            assert sub.name in rows[name], f"docs/commands.md: `batchrun {name}` does not list {sub.name}"
        for param in [p for c in (command, *subcommands) for p in c.params]:
            if isinstance(param, click.Option) and param.name != "help":
                flag = max(param.opts, key=len)
                assert flag in rows[name], f"docs/commands.md: `batchrun {name}` does not list {flag}"


# --- the simulated provider's Batch API, driven by the official openai SDK ----------------------------------


def batch_file(lines: list[str], url: str = "/v1/chat/completions") -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": url,
                "body": {"model": "sim-small", "messages": [{"role": "user", "content": text}]},
            }
        )
        + b"\n"
        for i, text in enumerate(lines)
    )


def run_batch(client: openai.OpenAI, content: bytes, *, cancel: bool = False) -> Any:
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "t"}
    )
    assert batch.status == "validating" and batch.input_file_id == uploaded.id
    if cancel:
        time.sleep(0.5)
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    return batch


def output_lines(client: openai.OpenAI, file_id: str | None) -> list[BatchOutputLine]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [BatchOutputLine.model_validate_json(line) for line in text.splitlines()]


@pytest.fixture
def batch_sim(start_sim: Callable[..., SimServer]) -> tuple[SimServer, openai.OpenAI]:
    server = start_sim(batch_s=1.0)
    return server, openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0)


def test_simulated_batch_api_runs_a_batch_for_the_openai_sdk(batch_sim: tuple[SimServer, openai.OpenAI]) -> None:
    server, client = batch_sim
    batch = run_batch(client, batch_file([f"question {i}" for i in range(9)] + ["bad #sim:status=400"]))
    assert batch.status == "completed" and batch.metadata == {"job": "t"}
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 9, 1)
    good, bad = output_lines(client, batch.output_file_id), output_lines(client, batch.error_file_id)
    assert sorted(line.custom_id for line in good) == [f"c{i}" for i in range(9)]
    assert all(line.response is not None and line.response.status_code == 200 for line in good)
    assert good[0].response is not None and good[0].response.body["usage"]["prompt_tokens"] > 0
    assert [line.custom_id for line in bad] == ["c9"] and bad[0].response is not None
    assert bad[0].response.status_code == 400
    stats = server.stats()
    assert (stats["files_uploaded"], stats["batches_created"], stats["billed_requests"]) == (1, 1, 9)
    assert client.files.delete(batch.input_file_id).deleted and server.stats()["files_deleted"] == 1


def test_simulated_batch_expires_with_part_of_its_work_done(batch_sim: tuple[SimServer, openai.OpenAI]) -> None:
    server, client = batch_sim
    batch = run_batch(client, batch_file([f"q{i}" for i in range(9)] + ["q9 #sim:batch-expire=0.6"]))
    assert batch.status == "expired" and batch.request_counts.completed == 6
    assert [line.custom_id for line in output_lines(client, batch.output_file_id)] == [f"c{i}" for i in range(6)]
    assert server.stats()["billed_requests"] == 6  # what it finished is billed, and returned


def test_simulated_batch_fails_validation_naming_the_lines(batch_sim: tuple[SimServer, openai.OpenAI]) -> None:
    server, client = batch_sim
    texts = [f"q{i}" + (" #sim:batch-invalid" if i in (2, 5, 7) else "") for i in range(10)]
    batch = run_batch(client, batch_file(texts))
    assert batch.status == "failed" and batch.output_file_id is None
    assert batch.errors is not None and [e.line for e in batch.errors.data or []] == [3, 6, 8]  # 1-based lines
    assert server.stats()["billed_requests"] == 0
    wrong_url = run_batch(client, batch_file(["q"], url="/v1/embeddings"))
    assert wrong_url.status == "failed" and wrong_url.errors is not None
    assert (wrong_url.errors.data or [])[0].code == "mismatched_url"


def test_simulated_batch_cancelled_keeps_what_it_finished(batch_sim: tuple[SimServer, openai.OpenAI]) -> None:
    server, client = batch_sim
    batch = run_batch(client, batch_file([f"q{i}" for i in range(40)]), cancel=True)
    assert batch.status == "cancelled" and server.stats()["batches_cancelled"] == 1
    done = output_lines(client, batch.output_file_id)
    assert 0 < len(done) < 40 and len(done) == batch.request_counts.completed == server.stats()["billed_requests"]


def test_simulated_batch_refused_for_enqueued_tokens(batch_sim: tuple[SimServer, openai.OpenAI]) -> None:
    _, client = batch_sim
    batch = run_batch(client, batch_file(["q0", "q1 #sim:batch-tokens"]))
    assert batch.status == "failed" and batch.errors is not None
    assert (batch.errors.data or [])[0].code == "token_limit_exceeded"


# --- the simulator's structured answers, judged by jsonschema ---------------------------------------------------

LABEL_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["sports", "politics", "tech"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "urgent": {"type": "boolean"},
    },
    "required": ["label", "score", "confidence", "tags", "urgent"],
    "additionalProperties": False,
}


def ask(client: openai.OpenAI, text: str, history: list[Any] | None = None) -> Any:
    return client.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": text}, *(history or [])],
        response_format={"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL_SCHEMA}},
    )


def test_simulated_structured_answers_fit_the_schema(start_sim: Callable[..., SimServer]) -> None:
    import jsonschema

    server = start_sim()
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0)
    for i in range(20):
        answer = ask(client, f"classify headline {i}")
        jsonschema.validate(orjson.loads(answer.choices[0].message.content or ""), LABEL_SCHEMA)
    plain = client.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
    )
    assert isinstance(orjson.loads(plain.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("spoil", ["bad", "type", "missing", "cut"])
def test_simulated_spoilt_answers_are_invalid_and_a_repair_is_right(
    start_sim: Callable[..., SimServer], spoil: str
) -> None:
    import jsonschema

    server = start_sim()
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0)
    first = ask(client, f"classify this #sim:json={spoil}")
    content = first.choices[0].message.content or ""
    with pytest.raises((orjson.JSONDecodeError, jsonschema.ValidationError)):
        jsonschema.validate(orjson.loads(content), LABEL_SCHEMA)
    assert (first.choices[0].finish_reason == "length") == (spoil == "cut")
    history = [{"role": "assistant", "content": content}, {"role": "user", "content": "That was wrong: fix it."}]
    repaired = ask(client, f"classify this #sim:json={spoil}", history)
    jsonschema.validate(orjson.loads(repaired.choices[0].message.content or ""), LABEL_SCHEMA)


def test_simulated_invalid_json_rate(start_sim: Callable[..., SimServer]) -> None:
    import jsonschema

    server = start_sim(invalid_json_rate=0.3, seed=5)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0)
    invalid = 0
    for i in range(100):
        try:
            jsonschema.validate(orjson.loads(ask(client, f"q{i}").choices[0].message.content or ""), LABEL_SCHEMA)
        except (orjson.JSONDecodeError, jsonschema.ValidationError):
            invalid += 1
    assert 15 <= invalid <= 45  # about 30 of 100
