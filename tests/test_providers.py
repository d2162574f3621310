"""Each preset's quirks, reproduced on the simulated provider and checked over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.providers.openai import split_embeddings

from .helpers import make_job, read_jsonl, submit
from .simserver import SimServer


def run(
    tmp_path: Path, sim: SimServer, preset: str, base: str, key_env: str, prompts: dict[str, str]
) -> tuple[Any, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    root = sim.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": rid, "prompt": text} for rid, text in prompts.items()]
    job = make_job(tmp_path, "", rows, provider={"name": preset, "base_url": root + base})
    result = submit(job, env={key_env: "test-key-not-secret"})
    out = tmp_path / "runs" / "job"
    return (
        result,
        {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")},
        {f["custom_id"]: f for f in read_jsonl(out / "failures.jsonl")},
    )


def test_zhipu_codes(tmp_path: Path, sim: SimServer) -> None:
    result, results, failures = run(
        tmp_path,
        sim,
        "zhipu",
        "/api/paas/v4",
        "ZHIPUAI_API_KEY",
        {
            "ok": "hello",
            "sensitive": "x #sim:error=400:1301",
            "busy": "y #sim:error=429:1302",
            "filtered": "z #sim:filter",
        },
    )
    assert result.exit_code == 3, result.output
    assert set(results) == {"ok"}
    assert failures["sensitive"]["error"]["code"] == "1301" and failures["sensitive"]["attempts"] == 1
    assert failures["busy"]["error"]["code"] == "1302" and failures["busy"]["attempts"] == 5  # retried
    assert failures["filtered"]["error"]["code"] == "content_filter"
    assert failures["filtered"]["response"]["body"]["content_filter"]  # the provider's answer is kept


def test_zhipu_arrears_stops_the_run(tmp_path: Path, sim: SimServer) -> None:
    result, _, failures = run(tmp_path, sim, "zhipu", "/api/paas/v4", "ZHIPUAI_API_KEY", {"a": "x #sim:error=429:1113"})
    assert result.exit_code == 1
    assert "refused the account (1113" in result.stdout and failures == {}


def test_baidu_legacy_rate_limit_and_moderation(tmp_path: Path, sim: SimServer) -> None:
    result, results, failures = run(
        tmp_path,
        sim,
        "qianfan",
        "/v2",
        "QIANFAN_API_KEY",
        {"legacy": "x #sim:legacy=1", "unsafe": "y #sim:error=403:system_unsafe", "hidden": "z #sim:flag=3"},
    )
    assert result.exit_code == 3, result.output  # a 403 for moderation fails the row, not the run
    assert results["legacy"]["attempts"] == 2
    assert failures["unsafe"]["error"]["code"] == "system_unsafe"
    assert failures["hidden"]["error"]["code"] == "ernie_flag_3"


def test_modelarts_error_shape(tmp_path: Path, sim: SimServer) -> None:
    result, _, failures = run(
        tmp_path, sim, "modelarts", "/v1", "MODELARTS_API_KEY", {"m": "x #sim:ma-error=403:ModelArts.81011"}
    )
    assert result.exit_code == 3, result.output
    assert failures["m"]["error"]["code"] == "ModelArts.81011"


@pytest.mark.parametrize(
    ("preset", "key_env"), [("genstudio", "GENSTUDIO_API_KEY"), ("dashscope", "DASHSCOPE_API_KEY")]
)
def test_blocked_answers_are_never_successes(tmp_path: Path, sim: SimServer, preset: str, key_env: str) -> None:
    result, results, failures = run(tmp_path, sim, preset, "/maas/v1", key_env, {"b": "x #sim:blocked", "ok": "fine"})
    assert result.exit_code == 3, result.output
    assert failures["b"]["error"]["code"] == "blocked" and set(results) == {"ok"}


def test_reasoning_content_is_kept(tmp_path: Path, sim: SimServer) -> None:
    result, results, _ = run(tmp_path, sim, "modelarts", "/v1", "MODELARTS_API_KEY", {"t": "why? #sim:think"})
    assert result.exit_code == 0, result.output
    message = results["t"]["response"]["body"]["choices"][0]["message"]
    assert message["reasoning_content"].startswith("Let me think") and message["content"]


def test_stream_mode_assembles_the_ordinary_shape(tmp_path: Path, sim: SimServer) -> None:
    rows = [
        {"id": "s", "prompt": "explain #sim:think"},
        {"id": "cut", "prompt": "again #sim:cut=1"},
        {"id": "f", "prompt": "bad #sim:filter"},
    ]
    job = make_job(
        tmp_path, sim.base_url, rows, provider={"name": "simulated", "base_url": sim.base_url, "mode": "stream"}
    )
    result = submit(job)
    assert result.exit_code == 3, result.output
    out = tmp_path / "runs" / "job"
    results = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    failures = {f["custom_id"]: f for f in read_jsonl(out / "failures.jsonl")}
    body = results["s"]["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
    message = body["choices"][0]["message"]
    assert message["content"].startswith("[simulated sim-small] explain")
    assert message["reasoning_content"].startswith("Let me think")
    assert body["usage"]["completion_tokens"] > 0  # from the last chunk: include_usage was sent
    assert results["cut"]["attempts"] == 2  # a cut stream is retried, never recorded short
    assert re.search(r"#[0-9a-f]{8}$", results["cut"]["response"]["body"]["choices"][0]["message"]["content"])
    assert failures["f"]["error"]["code"] == "content_filter"  # moderation fields survive streaming


def test_embeddings_share_requests_up_to_the_presets_batch_size(tmp_path: Path, sim: SimServer) -> None:
    root = sim.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": f"e{i}", "text": f"短文本 {i}"} for i in range(40)]
    job = make_job(
        tmp_path,
        "",
        rows,
        model="embedding-v1",
        endpoint="embeddings",
        params={},
        provider={"name": "aistudio", "base_url": root + "/llm/lmapi/v3"},
    )
    result = submit(job, env={"AISTUDIO_ACCESS_TOKEN": "test-key-not-secret"})
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "job"
    results = read_jsonl(out / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(r["id"] for r in rows)
    stats = sim.stats()
    assert stats["requests"] == 3  # 16 + 16 + 8: ERNIE embedding-v1 takes at most 16 texts
    assert sorted(r["batch"]["size"] for r in results if r["batch"]["index"] == 0) == [8, 16, 16]
    for r in results:
        data = r["response"]["body"]["data"]
        assert len(data) == 1 and len(data[0]["embedding"]) == 8 and data[0]["index"] == 0
    usage = orjson.loads((out / "usage.json").read_bytes())
    assert usage["requests"] == 3 and usage["prompt_tokens"] == stats["billed_prompt_tokens"]
    # The same text always gets the same vector, whichever request carried it.
    alone = make_job(
        tmp_path,
        "",
        [rows[5]],
        name="alone",
        model="embedding-v1",
        endpoint="embeddings",
        params={},
        provider={"name": "aistudio", "base_url": root + "/llm/lmapi/v3"},
    )
    assert submit(alone, env={"AISTUDIO_ACCESS_TOKEN": "test-key-not-secret"}).exit_code == 0
    vector = read_jsonl(tmp_path / "runs" / "alone" / "results.jsonl")[0]["response"]["body"]["data"][0]
    assert vector == next(r for r in results if r["custom_id"] == "e5")["response"]["body"]["data"][0]


def test_a_bad_input_in_a_shared_request_fails_only_its_row(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": f"e{i}", "input": f"text {i}" + (" #sim:status=400" if i == 3 else "")} for i in range(10)]
    job = make_job(tmp_path, sim.base_url, rows, endpoint="embeddings", params={}, limits={"batch_size": 5})
    result = submit(job)
    assert result.exit_code == 3, result.output
    out = tmp_path / "runs" / "job"
    assert [f["custom_id"] for f in read_jsonl(out / "failures.jsonl")] == ["e3"]
    assert len(read_jsonl(out / "results.jsonl")) == 9
    assert sim.stats()["requests"] == 1 + 5 + 1  # the failed request, its rows one by one, the other five
    usage = orjson.loads((out / "usage.json").read_bytes())
    assert usage["requests"] == 7 and usage["retries"] == 1  # the failed shared request is counted too


def test_split_embeddings_shares_usage_exactly() -> None:
    body = {
        "object": "list",
        "model": "m",
        "usage": {"prompt_tokens": 10, "total_tokens": 10},
        "data": [
            {"index": 1, "embedding": [0.0, 1.0]},
            {"index": 0, "embedding": [1.0, 0.0]},
            {"index": 2, "embedding": [0.5, 0.5]},
        ],
    }
    parts = split_embeddings(body, [1, 1, 1])
    assert parts is not None
    assert [p["data"][0]["embedding"] for p in parts] == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    assert [p["usage"]["prompt_tokens"] for p in parts] == [3, 3, 4] and parts[0]["model"] == "m"
    assert split_embeddings(body, [1, 1]) is None and split_embeddings({"data": "x"}, [1]) is None


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_completions_endpoint(tmp_path: Path, sim: SimServer, mode: str) -> None:
    root = sim.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": "c1", "prompt": "Once upon a time"}, {"id": "c2", "messages": [{"role": "user", "content": "x"}]}]
    job = make_job(
        tmp_path, "", rows, endpoint="completions", provider={"name": "vllm", "base_url": root + "/v1", "mode": mode}
    )
    result = submit(job)
    assert result.exit_code == 3, result.output
    out = tmp_path / "runs" / "job"
    body = read_jsonl(out / "results.jsonl")[0]["response"]["body"]
    assert body["object"] == "text_completion" and body["choices"][0]["text"].startswith("[simulated sim-small] Once")
    assert re.search(r"#[0-9a-f]{8}$", body["choices"][0]["text"]) and body["usage"]["completion_tokens"] > 0
    failure = read_jsonl(out / "failures.jsonl")[0]
    assert failure["custom_id"] == "c2" and "'prompt' must be a non-empty string" in failure["error"]["message"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"endpoint": "embeddings", "provider": {"name": "modelarts"}},
            "endpoint 'embeddings' is not offered by Huawei ModelArts MaaS",
        ),
        (
            {"endpoint": "embeddings", "provider": {"name": "simulated", "mode": "stream"}},
            "provider.mode 'stream' does not apply to embeddings",
        ),
        (
            {"endpoint": "completions", "provider": {"name": "zhipu", "mode": "async"}},
            "'completions' is not offered by Zhipu GLM",
        ),
        ({"endpoint": "chats"}, "endpoint must be one of chat, completions, embeddings"),
    ],
)
def test_endpoint_checks(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    result = submit(make_job(tmp_path, "http://127.0.0.1:9/v1", n=1, **extra))
    assert result.exit_code == 2 and message in result.output, result.output


def test_batch_rows_must_match_the_endpoint(tmp_path: Path, sim: SimServer) -> None:
    rows = [
        {"custom_id": "a", "url": "/v1/embeddings", "body": {"input": ["one", "two"]}},
        {"custom_id": "b", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}},
    ]
    result = submit(make_job(tmp_path, sim.base_url, rows, endpoint="embeddings", params={}))
    assert result.exit_code == 3
    out = tmp_path / "runs" / "job"
    assert len(read_jsonl(out / "results.jsonl")[0]["response"]["body"]["data"]) == 2  # a list input: its own request
    assert "is not this job's endpoint (/embeddings)" in read_jsonl(out / "failures.jsonl")[0]["error"]["message"]
