"""The simulated provider as the official openai SDK sees it, over HTTP on 127.0.0.1: files listed as OpenAI pages
them, a cancelled batch that goes through `cancelling` and bills what it counts, at any moment (a clock of the
test's own moves the batch on), request ids on every answer, logprobs and tool calls, and x-ratelimit-* headers
that describe the per-minute window."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from batchrun.limits.hints import parse_duration
from batchrun.spec.model import SimulateSpec

from .helpers import make_job, read_jsonl, submit
from .simserver import SimServer


class Clock:
    """The simulator's monotonic clock, moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def batch_lines(texts: list[str]) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "sim-small", "messages": [{"role": "user", "content": text}]},
            }
        )
        + b"\n"
        for i, text in enumerate(texts)
    )


def create(client: openai.OpenAI, file_id: str) -> Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")


@pytest.fixture
def clocked() -> Iterator[tuple[SimServer, openai.OpenAI, Clock]]:
    clock = Clock()
    with SimServer(SimulateSpec(latency=0.0, batch_s=1.0), clock=clock) as server:
        yield server, openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0), clock


# --- GET /files -----------------------------------------------------------------------------------------------


def test_files_are_listed_and_paged_as_openai_lists_them(clocked: tuple[SimServer, openai.OpenAI, Clock]) -> None:
    _, client, clock = clocked
    uploaded = [client.files.create(file=(f"in{i}.jsonl", batch_lines([f"q{i}"])), purpose="batch") for i in range(3)]
    batch = create(client, uploaded[0].id)
    clock.now += 5
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id is not None
    page = client.files.list()
    assert [f.id for f in page.data] == [done.output_file_id, *(f.id for f in reversed(uploaded))]  # newest first
    assert page.has_more is False and all(isinstance(f, FileObject) for f in page.data)
    raw = client.files.with_raw_response.list(limit=2).http_response.json()
    assert raw["object"] == "list" and raw["has_more"] is True
    assert (raw["first_id"], raw["last_id"]) == (done.output_file_id, uploaded[2].id)
    assert [f.id for f in client.files.list(limit=1, order="asc")] == [f.id for f in uploaded] + [done.output_file_id]
    assert [f.id for f in client.files.list(purpose="batch", limit=2)] == [f.id for f in reversed(uploaded)]
    output = client.files.list(purpose="batch_output").data
    assert [(f.id, f.purpose) for f in output] == [(done.output_file_id, "batch_output")]
    assert output[0].created_at > 0 and output[0].bytes > 0
    assert client.files.list(after=uploaded[1].id).data[0].id == uploaded[0].id
    with pytest.raises(openai.BadRequestError):
        client.files.list(limit=0)


# --- a batch cancelled at any moment ----------------------------------------------------------------------------

TEXTS = [f"q{i}" for i in range(2)] + ["bad #sim:status=400"] + [f"q{i}" for i in range(3, 10)]


@pytest.mark.parametrize(
    ("cancel_after", "answered"),
    [
        (0.0, 0),  # at once: still validating (it used to answer 9 lines and count -1)
        (0.05, 0),  # within validation (0.1 s of a 1 s batch)
        (0.35, 2),  # a quarter of the way: c0, c1
        (0.6, 5),  # half way: c0..c4, the bad line among them
        (5.0, 10),  # after it completed: nothing to cancel
    ],
)
def test_a_cancelled_batch_bills_what_it_counts_at_any_moment(
    clocked: tuple[SimServer, openai.OpenAI, Clock], cancel_after: float, answered: int
) -> None:
    server, client, clock = clocked
    uploaded = client.files.create(file=("in.jsonl", batch_lines(TEXTS)), purpose="batch")
    batch = create(client, uploaded.id)
    clock.now += cancel_after
    cancelled = client.batches.cancel(batch.id)
    if answered == len(TEXTS):
        assert cancelled.status == "completed" and cancelled.cancelling_at is None
    else:
        assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
        assert cancelled.cancelled_at is None
        clock.now += 0.05  # cancelling lasts as long as validation does
        assert client.batches.retrieve(batch.id).status == "cancelling"
    clock.now += 10  # whatever time passes, nothing more is answered
    final = client.batches.retrieve(batch.id)
    counts = final.request_counts
    assert counts is not None and min(counts.completed, counts.failed) >= 0
    assert counts.completed + counts.failed == answered <= counts.total == len(TEXTS)
    assert counts.failed == (1 if answered > 2 else 0)
    if answered < len(TEXTS):
        assert final.status == "cancelled" and final.cancelled_at is not None and final.cancelling_at is not None
        assert (final.in_progress_at is None) == (cancel_after < 0.1)
    done = lines_of(client, final, "output_file_id")
    assert [line["custom_id"] for line in done] == [f"c{i}" for i in range(answered) if i != 2]
    assert server.stats()["billed_requests"] == counts.completed == len(done)
    assert [line["custom_id"] for line in lines_of(client, final, "error_file_id")] == (["c2"] if answered > 2 else [])


def lines_of(client: openai.OpenAI, batch: Batch, which: str) -> list[dict[str, Any]]:
    file_id = getattr(batch, which)
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).text.splitlines()]


# --- request ids on every answer ---------------------------------------------------------------------------------


def test_every_answer_errors_included_carries_a_request_id() -> None:
    with SimServer(SimulateSpec(latency=0.0, api_key="right")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="right", max_retries=0)
        wrong = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
        ids: list[str | None] = []
        for prompt in ("#sim:status=400", "#sim:429=1", "#sim:fail=1", "#sim:html=1", "#sim:error=403:system_unsafe"):
            with pytest.raises(openai.APIStatusError) as raised:
                client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": prompt}])
            ids.append(raised.value.request_id)
        for call in (
            lambda: wrong.models.list(),  # 401
            lambda: client.files.retrieve("file-none"),  # 404 from the Batch API
            lambda: client.post("/nowhere", cast_to=object),  # the router's own 404
        ):
            with pytest.raises(openai.APIStatusError) as raised:
                call()
            ids.append(raised.value.request_id)
        fine = client.files.with_raw_response.list().headers.get("x-request-id")
    assert all(isinstance(i, str) and i.startswith("sim-") for i in [*ids, fine])
    assert len(set([*ids, fine])) == len(ids) + 1


def test_a_failure_record_carries_the_providers_request_id(tmp_path: Path) -> None:
    with SimServer(SimulateSpec(latency=0.0)) as server:
        job = make_job(tmp_path, server.base_url, [{"id": "bad", "prompt": "#sim:status=400"}])
        assert submit(job).exit_code == 3
        requests = server.stats()["requests"]
    (failure,) = read_jsonl(tmp_path / "runs" / "job" / "failures.jsonl")
    assert requests == 1 and failure["response"]["request_id"] == "sim-1"  # the one request's x-request-id


# --- logprobs and tool calls, judged by the SDK's own types -------------------------------------------------------


@pytest.fixture
def client() -> Iterator[openai.OpenAI]:
    with SimServer(SimulateSpec(latency=0.0)) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0)


def test_logprobs_and_top_logprobs_come_in_openais_shape(client: openai.OpenAI) -> None:
    import math

    raw = client.chat.completions.with_raw_response.create(
        model="sim-small", n=2, logprobs=True, top_logprobs=3, messages=[{"role": "user", "content": "新闻 news"}]
    )
    answer = ChatCompletion.model_validate(raw.http_response.json())
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.logprobs.content and choice.message.content
        tokens = choice.logprobs.content
        assert "".join(t.token for t in tokens) == choice.message.content
        for token in tokens:
            assert token.bytes == list(token.token.encode()) and token.logprob < 0
            assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
            assert sum(math.exp(t.logprob) for t in token.top_logprobs) <= 1
            assert [t.logprob for t in token.top_logprobs] == sorted(
                (t.logprob for t in token.top_logprobs), reverse=True
            )
    bare = client.chat.completions.create(model="sim-small", logprobs=True, messages=[{"role": "user", "content": "x"}])
    assert bare.choices[0].logprobs is not None and bare.choices[0].logprobs.content
    assert all(t.top_logprobs == [] for t in bare.choices[0].logprobs.content)
    plain = client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "x"}])
    assert plain.choices[0].logprobs is None
    streamed = [
        part
        for chunk in client.chat.completions.create(
            model="sim-small", logprobs=True, stream=True, messages=[{"role": "user", "content": "x"}]
        )
        for part in chunk.choices
        if part.logprobs is not None
    ]
    assert "".join(p.delta.content or "" for p in streamed) == bare.choices[0].message.content
    streamed_tokens = [t for p in streamed for t in (p.logprobs.content if p.logprobs else None) or []]
    assert streamed_tokens == bare.choices[0].logprobs.content  # the same tokens, logprobs and top_logprobs


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "a forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


def test_a_required_or_named_tool_is_called_with_arguments_that_fit(client: openai.OpenAI) -> None:
    import jsonschema

    messages: list[Any] = [{"role": "user", "content": "weather in Hangzhou?"}]
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small", messages=messages, tools=TOOLS, tool_choice="required"
    )
    answer = ChatCompletion.model_validate(raw.http_response.json())
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    named = client.chat.completions.create(
        model="sim-small",
        messages=messages,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (time_call,) = named.choices[0].message.tool_calls or []
    assert time_call.function.name == "get_time" and json.loads(time_call.function.arguments) == {}  # type: ignore[union-attr]
    free = client.chat.completions.create(model="sim-small", messages=messages, tools=TOOLS, tool_choice="auto")
    assert free.choices[0].finish_reason == "stop" and free.choices[0].message.content
    streamed = ""
    finish = None
    for chunk in client.chat.completions.create(
        model="sim-small", messages=messages, tools=TOOLS, tool_choice="required", stream=True
    ):
        for part in chunk.choices:
            for delta in part.delta.tool_calls or []:
                streamed += (delta.function.arguments or "") if delta.function else ""
            finish = part.finish_reason or finish
    assert streamed == call.function.arguments and finish == "tool_calls"


# --- x-ratelimit-* headers: the per-minute window ------------------------------------------------------------------


def test_rate_headers_describe_the_minute_not_the_second() -> None:
    """600 RPM is enforced a second at a time (10 at once, then 429s), as OpenAI may; its headers say what is
    left of the minute's 600 and when the minute is whole again."""
    clock = Clock()
    with SimServer(SimulateSpec(latency=0.0, rpm=600, tpm=60_000, rate_headers=True), clock=clock) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0)

        def ask(i: int) -> tuple[int, Any]:
            raw = client.chat.completions.with_raw_response
            try:
                answer = raw.create(model="sim-small", max_tokens=10, messages=[{"role": "user", "content": f"q{i}"}])
                return answer.http_response.status_code, answer.headers
            except openai.RateLimitError as refused:
                return refused.status_code, refused.response.headers

        answers = [ask(i) for i in range(12)]
        charged = server.stats()["tpm_charged"]
        clock.now += 0.5
        _, later = ask(99)
    assert [status for status, _ in answers] == [200] * 10 + [429] * 2
    last = answers[-1][1]
    assert last["x-ratelimit-limit-requests"] == "600" and last["x-ratelimit-remaining-requests"] == "590"
    assert parse_duration(last["x-ratelimit-reset-requests"]) == pytest.approx(1.0)  # 10 requests at 10 a second
    assert last["x-ratelimit-limit-tokens"] == "60000"
    assert int(last["x-ratelimit-remaining-tokens"]) == 60_000 - charged
    assert parse_duration(last["x-ratelimit-reset-tokens"]) == pytest.approx(charged / 1000, abs=0.002)
    assert later["x-ratelimit-remaining-requests"] == "594"  # 5 back in half a second, one more taken


# --- jobs/batch-demo.yaml --------------------------------------------------------------------------------------


def test_the_batch_demo_job_runs_on_the_in_process_simulator(tmp_path: Path) -> None:
    """jobs/batch-demo.yaml as a user runs it (the in-process simulator's Batch API), its polls made quicker."""
    import yaml

    repo = Path(__file__).parent.parent
    spec = yaml.safe_load((repo / "jobs/batch-demo.yaml").read_text(encoding="utf-8"))
    assert (spec["provider"]["name"], spec["provider"]["mode"]) == ("simulated", "batch")
    spec["input"]["path"] = str(repo / "sample_data/news.jsonl")
    spec["provider"]["simulate"]["batch_s"] = 0.3
    spec["batch"].update({"poll_s": 0.1, "max_poll_s": 0.2})
    job = tmp_path / "batch-demo.yaml"
    job.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    result = submit(job)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "batch-demo"
    results = read_jsonl(run / "results.jsonl")
    assert len(results) == 300 and all(r["batch_id"].startswith("batch-") for r in results)
    events = read_jsonl(run / "batches.jsonl")
    assert sum(e["event"] == "created" for e in events) == 3
