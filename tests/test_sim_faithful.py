"""The simulated provider as the official openai SDK sees it, over HTTP on 127.0.0.1: files listed as OpenAI pages
them, a cancelled batch that goes through `cancelling` and bills what it counts, at any moment (a clock of the
test's own moves the batch on), request ids on every answer, logprobs and tool calls, and x-ratelimit-* headers
that describe the per-minute window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openai.types import Batch, FileObject

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
