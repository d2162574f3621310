"""The batch lane's files: shards within the provider's limits, and what a resumed run does with each."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import openai
import orjson
import pytest

from batchrun.engine.shards import ShardIndex, ShardWriter, custom_id_row, read_shards, shard_rows
from batchrun.rows.request import Request
from batchrun.spec.presets import PRESETS, BatchAPI

from .simserver import SimServer


def request(row: int, model: str = "sim-small", text: str = "hello") -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": f"{text} {row}"}]}
    return Request(row, f"id-{row}", model, orjson.dumps(body), 5, 16)


def write(folder: Path, api: BatchAPI, requests: list[Request]) -> list:
    writer = ShardWriter(folder, api, "chat")
    shards = [closed for r in requests if (closed := writer.add(r)) is not None]
    last = writer.close()
    return [*shards, last] if last else shards


def test_shards_keep_the_line_limit_and_map_lines_back_to_rows(tmp_path: Path) -> None:
    api = dataclasses.replace(PRESETS["openai"].batch, max_lines=4)  # type: ignore[type-var]
    shards = write(tmp_path, api, [request(r) for r in range(1, 11)])
    assert [s.lines for s in shards] == [4, 4, 2] and [s.index for s in shards] == [1, 2, 3]
    lines = [orjson.loads(line) for line in shards[1].path.read_bytes().splitlines()]
    assert [custom_id_row(line["custom_id"]) for line in lines] == [5, 6, 7, 8]
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["method"] == "POST"
    assert lines[0]["body"]["messages"][0]["content"] == "hello 5"
    assert list(shard_rows(shards[1].rows_path)) == [(r, f"id-{r}", "sim-small") for r in range(5, 9)]
    assert sum(s.bytes for s in shards) == sum(s.path.stat().st_size for s in shards)


def test_a_shard_index_finds_each_rows_ids_by_its_row(tmp_path: Path) -> None:
    api = PRESETS["openai"].batch
    assert api is not None
    (shard,) = write(tmp_path, api, [request(r) for r in (3, 8, 9, 20, 41)])
    index = ShardIndex(shard.rows_path)
    assert list(index.rows) == [3, 8, 9, 20, 41] and len(index) == 5
    assert index.ids(20) == ("id-20", "sim-small", None) and index.ids(3) == ("id-3", "sim-small", None)
    assert index.ids(4) is None and index.ids(99) is None and 9 in index and 10 not in index
    index.close()


def test_shards_keep_the_byte_limit_and_one_model_per_file(tmp_path: Path) -> None:
    zhipu = PRESETS["zhipu"].batch
    assert zhipu is not None and zhipu.line_url("chat") == "/v4/chat/completions" and zhipu.one_model_per_file
    small = dataclasses.replace(zhipu, max_bytes=600)
    models = ["glm-4-flash"] * 3 + ["glm-4-plus"] * 2 + ["glm-4-flash"]
    shards = write(tmp_path, small, [request(r, m, "x" * 100) for r, m in enumerate(models, 1)])
    assert all(s.bytes <= 600 for s in shards)
    for shard in shards:
        assert len({model for _, _, model in shard_rows(shard.rows_path)}) == 1
    assert sum(s.lines for s in shards) == 6
    writer = ShardWriter(tmp_path / "big", small, "chat")
    assert writer.fits(request(1)) and not writer.fits(request(2, text="x" * 700))


def test_embeddings_shards_take_the_providers_lower_line_cap() -> None:
    zhipu = PRESETS["zhipu"].batch
    assert zhipu is not None and zhipu.lines_for("embeddings") == 10_000 and zhipu.lines_for("chat") == 50_000
    assert PRESETS["qianfan"].batch is not None and PRESETS["qianfan"].batch.price_share == 0.4
    assert PRESETS["modelarts"].batch is None and PRESETS["vllm"].batch is None


@pytest.mark.parametrize(
    ("events", "steps"),
    [
        ([], {}),
        ([{"shard": 1, "event": "written", "path": "shards/shard-00001.jsonl", "lines": 3}], {1: "upload"}),
        ([{"shard": 1, "event": "written"}, {"shard": 1, "event": "uploaded", "file_id": "f"}], {1: "create"}),
        (
            [
                {"shard": 1, "event": "uploaded", "file_id": "f"},
                {"shard": 1, "event": "created", "batch_id": "b"},
                {"shard": 1, "event": "polled", "status": "in_progress", "completed": 2},
                {"shard": 2, "event": "written"},
            ],
            {1: "poll", 2: "upload"},
        ),
        (
            [
                {"shard": 1, "event": "uploaded", "file_id": "f"},
                {"shard": 1, "event": "created", "batch_id": "b"},
                {"shard": 1, "event": "polled", "status": "expired"},
            ],
            {1: "harvest"},
        ),
        (
            [
                {"shard": 1, "event": "uploaded", "file_id": "f"},
                {"shard": 1, "event": "created", "batch_id": "b"},
                {"shard": 1, "event": "harvested", "status": "completed"},
            ],
            {1: "clean"},
        ),
        (
            [
                {"shard": 1, "event": "uploaded", "file_id": "f"},
                {"shard": 1, "event": "created", "batch_id": "b"},
                {"shard": 1, "event": "harvested", "status": "completed"},
                {"shard": 1, "event": "deleted"},
            ],
            {1: "done"},
        ),
    ],
)
def test_what_a_resumed_run_does_with_each_shard(events: list[dict[str, object]], steps: dict[int, str]) -> None:
    lines = [orjson.dumps(e) + b"\n" for e in events]
    assert {i: s.next_step for i, s in read_shards(lines).items()} == steps


def test_a_torn_last_event_is_as_if_it_never_happened() -> None:
    lines = [
        orjson.dumps({"shard": 1, "event": "uploaded", "file_id": "f"}) + b"\n",
        b'{"shard": 1, "event": "created", "batch_',  # killed mid-write: the batch id never reached the disk
    ]
    (state,) = read_shards(lines).values()
    assert state.file_id == "f" and state.next_step == "create"


def test_shards_are_accepted_and_answered_by_the_batch_api(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    """Judged by the simulator's Batch API through the official SDK: every line valid, every row answered."""
    server = start_sim(batch_s=0.3)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-sim", max_retries=0)
    api = PRESETS["simulated"].batch
    assert api is not None
    (shard,) = write(tmp_path, api, [request(r) for r in range(1, 8)])
    uploaded = client.files.create(file=(shard.path.name, shard.path.read_bytes()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=api.line_url("chat"), completion_window="24h")
    deadline = time.monotonic() + 20
    while batch.status != "completed":
        assert batch.status not in ("failed", "expired", "cancelled") and time.monotonic() < deadline, batch
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.output_file_id is not None
    answered = [orjson.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(custom_id_row(a["custom_id"]) for a in answered) == list(range(1, 8))
