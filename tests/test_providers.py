"""Each preset's quirks, reproduced on the simulated provider and checked over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun.simulate import SimServer

from .helpers import make_job, read_jsonl, submit


def run(tmp_path: Path, sim: SimServer, preset: str, base: str, key_env: str, prompts: dict[str, str]
        ) -> tuple[Any, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    root = sim.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": rid, "prompt": text} for rid, text in prompts.items()]
    job = make_job(tmp_path, "", rows, provider={"name": preset, "base_url": root + base})
    result = submit(job, env={key_env: "test-key-not-secret"})
    out = tmp_path / "runs" / "job"
    return (result, {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")},
            {f["custom_id"]: f for f in read_jsonl(out / "failures.jsonl")})


def test_zhipu_codes(tmp_path: Path, sim: SimServer) -> None:
    result, results, failures = run(tmp_path, sim, "zhipu", "/api/paas/v4", "ZHIPUAI_API_KEY", {
        "ok": "hello", "sensitive": "x #sim:error=400:1301", "busy": "y #sim:error=429:1302",
        "filtered": "z #sim:filter"})
    assert result.exit_code == 3, result.output
    assert set(results) == {"ok"}
    assert failures["sensitive"]["error"]["code"] == "1301" and failures["sensitive"]["attempts"] == 1
    assert failures["busy"]["error"]["code"] == "1302" and failures["busy"]["attempts"] == 5  # retried
    assert failures["filtered"]["error"]["code"] == "content_filter"
    assert failures["filtered"]["response"]["body"]["content_filter"]  # the provider's answer is kept


def test_zhipu_arrears_stops_the_run(tmp_path: Path, sim: SimServer) -> None:
    result, _, failures = run(tmp_path, sim, "zhipu", "/api/paas/v4", "ZHIPUAI_API_KEY",
                              {"a": "x #sim:error=429:1113"})
    assert result.exit_code == 1
    assert "refused the account (1113" in result.stdout and failures == {}


def test_baidu_legacy_rate_limit_and_moderation(tmp_path: Path, sim: SimServer) -> None:
    result, results, failures = run(tmp_path, sim, "qianfan", "/v2", "QIANFAN_API_KEY", {
        "legacy": "x #sim:legacy=1", "unsafe": "y #sim:error=403:system_unsafe", "hidden": "z #sim:flag=3"})
    assert result.exit_code == 3, result.output  # a 403 for moderation fails the row, not the run
    assert results["legacy"]["attempts"] == 2
    assert failures["unsafe"]["error"]["code"] == "system_unsafe"
    assert failures["hidden"]["error"]["code"] == "ernie_flag_3"


def test_modelarts_error_shape(tmp_path: Path, sim: SimServer) -> None:
    result, _, failures = run(tmp_path, sim, "modelarts", "/v1", "MODELARTS_API_KEY",
                              {"m": "x #sim:ma-error=403:ModelArts.81011"})
    assert result.exit_code == 3, result.output
    assert failures["m"]["error"]["code"] == "ModelArts.81011"


@pytest.mark.parametrize(("preset", "key_env"), [("genstudio", "GENSTUDIO_API_KEY"),
                                                 ("dashscope", "DASHSCOPE_API_KEY")])
def test_blocked_answers_are_never_successes(tmp_path: Path, sim: SimServer, preset: str, key_env: str) -> None:
    result, results, failures = run(tmp_path, sim, preset, "/maas/v1", key_env,
                                    {"b": "x #sim:blocked", "ok": "fine"})
    assert result.exit_code == 3, result.output
    assert failures["b"]["error"]["code"] == "blocked" and set(results) == {"ok"}


def test_reasoning_content_is_kept(tmp_path: Path, sim: SimServer) -> None:
    result, results, _ = run(tmp_path, sim, "modelarts", "/v1", "MODELARTS_API_KEY", {"t": "why? #sim:think"})
    assert result.exit_code == 0, result.output
    message = results["t"]["response"]["body"]["choices"][0]["message"]
    assert message["reasoning_content"].startswith("Let me think") and message["content"]


def test_stream_mode_assembles_the_ordinary_shape(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": "s", "prompt": "explain #sim:think"}, {"id": "cut", "prompt": "again #sim:cut=1"},
            {"id": "f", "prompt": "bad #sim:filter"}]
    job = make_job(tmp_path, sim.base_url, rows, provider={"name": "simulated", "base_url": sim.base_url,
                                                           "mode": "stream"})
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
    assert results["cut"]["response"]["body"]["choices"][0]["message"]["content"].endswith(
        results["cut"]["response"]["body"]["id"].removeprefix("chatcmpl-sim-")[:8])
    assert failures["f"]["error"]["code"] == "content_filter"  # moderation fields survive streaming
