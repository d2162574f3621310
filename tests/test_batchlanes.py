"""The 2026 batch lanes over HTTP against the simulator speaking each provider: Ark's batch chat at the batch price,
Kimi's and SiliconFlow's Batch APIs end to end, and the file rules of Qianfan and DashScope kept before upload
(lines, bytes, one line's bytes), with the limit that cut each shard said."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from batchrun.engine.shards import cut_text, line_problem
from batchrun.lanes.batchchat import TokensPerDay, beijing_day, quota_refusal
from batchrun.spec.presets import BATCH_APIS, PRESETS, batch_cache_share, batch_share

from .helpers import cli, make_job, out_dir_usage, read_jsonl, submit
from .simserver import AppServer, SimServer

FAST = {"poll_s": 0.05, "max_poll_s": 0.2}
PRICE = {"sim-small": {"input": 2.0, "output": 8.0, "currency": "CNY"}}
KEYS = {
    "ark": "ARK_API_KEY",
    "moonshot": "MOONSHOT_API_KEY",
    "siliconflow": "SILICONFLOW_API_KEY",
    "qianfan": "QIANFAN_API_KEY",
    "dashscope": "DASHSCOPE_API_KEY",
}


def preset_job(
    tmp_path: Path, sim: SimServer, preset: str, rows: list[dict[str, Any]], mode: str = "batch", **extra: Any
) -> Path:
    """A job for `preset` pointed at the simulator (which speaks as that provider)."""
    provider = {"name": preset, "base_url": sim.base_url, "mode": mode, **extra.pop("provider", {})}
    if mode == "batch":
        extra.setdefault("batch", FAST)
    return make_job(tmp_path, sim.base_url, rows, provider=provider, **extra)


def run(job: Path, preset: str, *args: str) -> Any:
    return submit(job, *args, env={KEYS[preset]: "sk-test-dummy"})


def records(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = tmp_path / "runs" / "job"
    return read_jsonl(out / "results.jsonl"), read_jsonl(out / "failures.jsonl")


def events(tmp_path: Path) -> list[dict[str, Any]]:
    return read_jsonl(tmp_path / "runs/job/batches.jsonl")


# --- Ark's batch chat ---------------------------------------------------------------------------------------


def test_ark_batch_chat_is_priced_at_the_batch_share(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="ark", batch_chat_latency=0.05)
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(12)]
    result = run(preset_job(tmp_path, sim, "ark", rows, mode="batch-chat", pricing=PRICE), "ark")
    assert result.exit_code == 0, result.output
    good, bad = records(tmp_path)
    assert len(good) == 12 and not bad and all(r["batch_chat"] is True for r in good)
    stats = sim.stats()
    assert stats["batch_chat_requests"] == 12 and stats["billed_requests"] == 12  # every row through the path
    usage = out_dir_usage(tmp_path)
    model = usage["models"]["sim-small"]
    assert model["batch_prompt_tokens"] == stats["billed_prompt_tokens"] == usage["prompt_tokens"]
    assert model["batch_completion_tokens"] == stats["billed_completion_tokens"]
    online = (2.0 * stats["billed_prompt_tokens"] + 8.0 * stats["billed_completion_tokens"]) / 1e6
    report = orjson.loads(cli("report", str(tmp_path / "runs/job"), "--format", "json").stdout)
    assert report["batch_share"] == 0.5 and report["cost"] == {"CNY": pytest.approx(online * 0.5)}
    assert report["saved"] == {"CNY": pytest.approx(online * 0.5)}


def test_ark_batch_chat_waits_long_and_keeps_many_in_flight(tmp_path: Path) -> None:
    from batchrun.spec.parse import load_spec

    job = make_job(
        tmp_path, "http://127.0.0.1:9/api/v3", n=1, provider={"name": "ark", "mode": "batch-chat"}, limits={}, retry={}
    )
    spec = load_spec(str(job))
    assert (spec.limits.concurrency, spec.retry.timeout_s, spec.limits.tpd) == (1000, 86_400.0, 10e9)
    assert (batch_share("ark"), batch_cache_share("ark")) == (0.5, 0.4)
    assert "batch-chat" in PRESETS["ark"].modes and "batch" not in PRESETS["ark"].modes
    assert all("batch-chat" not in p.modes for name, p in PRESETS.items() if name != "ark")
    example = load_spec(str(Path(__file__).parent.parent / "jobs/ark-batch-chat.yaml"))
    assert example.provider.mode == "batch-chat" and example.retry.timeout_s == 86_400.0
    estimated = cli("estimate", str(Path(__file__).parent.parent / "jobs/ark-batch-chat.yaml"))
    assert "batch chat answers within hours" in estimated.stdout, estimated.output


@pytest.mark.parametrize(
    ("provider", "extra", "message"),
    [
        ({"name": "openai", "mode": "batch-chat"}, {}, "provider.mode 'batch-chat' is not offered by OpenAI"),
        ({"name": "ark"}, {"limits": {"tpd": 1000}}, "limits.tpd applies to provider.mode: batch-chat only"),
        ({"name": "ark", "mode": "batch-chat"}, {"endpoint": "completions"}, "is not offered by"),
        ({"name": "ark", "batch_price_share": 0.3}, {}, "provider.batch_price_share applies to provider.mode: batch"),
    ],
)
def test_batch_chat_spec_errors_are_one_line(
    tmp_path: Path, provider: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    job = make_job(tmp_path, "http://127.0.0.1:9/v1", n=1, provider=provider, **extra)
    result = cli("validate", str(job))
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_ark_batch_chat_waits_out_429s_beyond_the_rows_attempts(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(speaks="ark", batch_chat_latency=0.0)
    rows = [{"id": "busy", "prompt": "q #sim:429=7 #sim:retry-after=0"}]
    job = preset_job(tmp_path, sim, "ark", rows, mode="batch-chat", retry={"max_attempts": 3, "backoff_s": 0})
    result = run(job, "ark")
    assert result.exit_code == 0, result.output
    (good,), bad = records(tmp_path)
    assert not bad and good["attempts"] == 8 and good["rate_limited"] == 7 and good["batch_chat"] is True


def test_ark_daily_quota_stops_the_run_with_the_rest_pending(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(speaks="ark", batch_chat_latency=0.0)
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(30)]
    job = preset_job(tmp_path, sim, "ark", rows, mode="batch-chat", limits={"tpd": 60, "concurrency": 1})
    result = run(job, "ark")
    assert result.exit_code == 1 and "limits.tpd: 60 tokens of sim-small answered today" in result.output
    good, bad = records(tmp_path)
    assert 1 <= len(good) < 30 and not bad  # what was answered is kept; the rest wait for tomorrow's quota


def test_ark_quota_429_stops_rather_than_retrying(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="ark", batch_chat_latency=0.0)
    rows = [{"id": "r0", "prompt": "q #sim:error=429:RateLimitExceeded.EndpointTPDExceeded"}]
    result = run(preset_job(tmp_path, sim, "ark", rows, mode="batch-chat"), "ark")
    assert result.exit_code == 1 and "daily batch quota of sim-small" in result.output, result.output
    assert sim.stats()["batch_chat_requests"] == 1 and records(tmp_path) == ([], [])


def test_daily_quota_counts_by_model_and_beijing_day() -> None:
    now = [1_700_000_000.0]
    tpd = TokensPerDay(100, clock=lambda: now[0])
    tpd.add("a", {"total_tokens": 60})
    tpd.add("b", {"total_tokens": 60})
    assert not tpd.spent("a")
    tpd.add("a", {"total_tokens": 40})
    assert tpd.spent("a") and not tpd.spent("b")
    now[0] += 86_400
    assert not tpd.spent("a")
    assert beijing_day(16 * 3600.0) == 1 and beijing_day(16 * 3600.0 - 1) == 0  # midnight in Beijing is 16:00 UTC
    assert quota_refusal(429, {"error": {"code": "RateLimitExceeded.EndpointTPMExceeded"}}) is None
    assert quota_refusal(429, {"error": {"code": "QuotaExceeded", "message": "daily"}}) is not None


def test_the_simulator_has_no_batch_chat_path_unless_it_speaks_ark(start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim()

    async def post() -> int:
        async with aiohttp.ClientSession() as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(sim.base_url + "/batch/chat/completions", json=body) as resp:
                return resp.status

    assert asyncio.run(post()) == 404


# --- Kimi and SiliconFlow -----------------------------------------------------------------------------------


def test_a_kimi_batch_job_end_to_end_one_model_a_file(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="moonshot", batch_s=0.2)
    rows = [  # OpenAI Batch lines, each naming its own model
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "sim-large" if i >= 4 else "sim-small",
                "messages": [{"role": "user", "content": f"q{i}"}],
            },
        }
        for i in range(8)
    ]
    pricing = {**PRICE, "sim-large": {"input": 2.0, "output": 8.0, "currency": "CNY"}}
    job = preset_job(tmp_path, sim, "moonshot", rows, pricing=pricing, provider={"batch_price_share": 0.5})
    result = run(job, "moonshot")
    assert result.exit_code == 0, result.output
    good, bad = records(tmp_path)
    assert sorted(r["custom_id"] for r in good) == [f"r{i}" for i in range(8)] and not bad
    written = [e for e in events(tmp_path) if e["event"] == "written"]
    assert [(e["lines"], e["cut"]) for e in written] == [(4, "model"), (4, "end")]
    assert "cut at a model change (one model per file)" in result.stderr
    report = orjson.loads(cli("report", str(tmp_path / "runs/job"), "--format", "json").stdout)
    assert report["batch_share"] == 0.5  # the user's word for Kimi's unverified price share
    assert BATCH_APIS["moonshot"].price_unverified and batch_share("moonshot") == 1.0


def test_kimi_refuses_past_a_thousand_files_and_the_run_says_what_to_delete(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(speaks="moonshot", batch_s=0.2)

    async def fill() -> list[int]:
        async with aiohttp.ClientSession() as http:

            async def one(i: int) -> int:
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", b"{}\n", filename=f"old-{i}.jsonl")
                async with http.post(sim.base_url + "/files", data=form) as resp:
                    return resp.status

            done = [await one(i) for i in range(1000)]
            return [*done, await one(1000)]

    statuses = asyncio.run(fill())
    assert statuses[:1000] == [200] * 1000 and statuses[1000] == 400  # the simulator keeps Kimi's cap
    result = run(preset_job(tmp_path, sim, "moonshot", [{"id": "r0", "prompt": "q"}]), "moonshot")
    assert result.exit_code == 1, result.output
    assert "Kimi already holds 1,000 batch files, its most per organisation is 1,000: delete" in result.output
    assert sim.stats()["files_uploaded"] == 1000 and records(tmp_path) == ([], [])


def test_a_siliconflow_batch_job_end_to_end(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="siliconflow", batch_s=0.2)
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(6)]
    rows.append({"id": "ends-with-assistant", "messages": chat})
    job = preset_job(tmp_path, sim, "siliconflow", rows, pricing=PRICE)
    validated = cli("validate", str(job), env={"SILICONFLOW_API_KEY": "sk-test-dummy"})
    assert "last message is 'assistant' [last_message_not_user]" in validated.output
    result = run(job, "siliconflow")
    assert result.exit_code == 3, result.output  # one row failed, before upload
    good, bad = records(tmp_path)
    assert sorted(r["custom_id"] for r in good) == [f"r{i}" for i in range(6)]
    assert [(r["custom_id"], r["error"]["code"]) for r in bad] == [("ends-with-assistant", "last_message_not_user")]
    assert "end with a user message" in bad[0]["error"]["message"]
    assert all(r["response"]["body"]["model"] == "sim-small" for r in good)
    assert sim.stats()["batches_created"] == 1 and out_dir_usage(tmp_path)["models"]["sim-small"]["batch_prompt_tokens"]


def test_the_simulator_answers_a_siliconflow_batch_with_replace_model(start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="siliconflow", batch_s=0.0)
    lines = b"".join(
        orjson.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "whatever", "messages": [{"role": "user", "content": f"q{i}"}]},
            }
        )
        + b"\n"
        for i in range(3)
    )

    async def go() -> list[str]:
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", lines, filename="in.jsonl")
            async with http.post(sim.base_url + "/files", data=form) as resp:
                file_id = (await resp.json())["id"]
            body = {
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "replace": {"model": "sim-large"},
            }
            async with http.post(sim.base_url + "/batches", json=body) as resp:
                batch_id = (await resp.json())["id"]
            for _ in range(200):
                async with http.get(f"{sim.base_url}/batches/{batch_id}") as resp:
                    batch = await resp.json()
                if batch["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            async with http.get(f"{sim.base_url}/files/{batch['output_file_id']}/content") as resp:
                out = await resp.read()
        return [orjson.loads(line)["response"]["body"]["model"] for line in out.splitlines()]

    assert asyncio.run(go()) == ["sim-large"] * 3


# --- file rules: Qianfan, DashScope -------------------------------------------------------------------------


def test_a_5001_row_qianfan_job_is_cut_into_two_shards_and_says_why(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(speaks="qianfan", batch_s=0.2)
    rows = [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(5001)]
    result = run(preset_job(tmp_path, sim, "qianfan", rows), "qianfan")
    assert result.exit_code == 0, result.output
    assert "into 2 batch files (cut at 5,000 lines, Qianfan's most a file)" in result.stderr
    assert len(records(tmp_path)[0]) == 5001 and sim.stats()["batches_created"] == 2
    written = [e for e in events(tmp_path) if e["event"] == "written"]
    assert [(e["lines"], e["cut"]) for e in written] == [(5000, "lines"), (1, "end")]
    status = cli("status", str(tmp_path / "runs/job"))
    assert "cut at 5,000 lines, the provider's most a file" in status.stdout
    shards = orjson.loads(cli("status", str(tmp_path / "runs/job"), "--json").stdout)["batches"]
    assert [s["cut"] for s in shards] == ["lines", "end"]


def test_a_line_over_dashscopes_6_mb_becomes_a_failure_record_and_the_rest_go_through(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(speaks="dashscope", batch_s=0.2)
    rows = [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(5)]
    rows.insert(2, {"id": "huge", "prompt": "x" * (6 * 1024 * 1024 + 10)})
    result = run(preset_job(tmp_path, sim, "dashscope", rows), "dashscope")
    assert result.exit_code == 3, result.output
    good, bad = records(tmp_path)
    assert sorted(r["custom_id"] for r in good) == [f"r{i}" for i in range(5)]
    assert [(r["custom_id"], r["error"]["code"]) for r in bad] == [("huge", "line_too_large")]
    assert "row 3's batch line is" in bad[0]["error"]["message"]
    assert "over DashScope's limit of 6,291,456 bytes (6 MB) a line" in bad[0]["error"]["message"]
    assert sim.stats()["batches_created"] == 1


def test_the_simulator_refuses_files_as_each_provider_would(start_sim: Callable[..., SimServer]) -> None:
    """A client that broke the rules would be refused: the simulator's checks, met directly."""
    sim = start_sim(speaks="dashscope", batch_s=0.0)
    big = "x" * (6 * 1024 * 1024 + 1)
    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": m, "messages": c}}
        for m, c in (
            ("sim-small", [{"role": "user", "content": "q"}]),
            ("sim-large", [{"role": "user", "content": "q"}]),
            ("sim-small", [{"role": "user", "content": big}]),
        )
    ]
    lines[1]["custom_id"], lines[2]["custom_id"] = "b", "c"
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)

    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", content, filename="in.jsonl")
            async with http.post(sim.base_url + "/files", data=form) as resp:
                file_id = (await resp.json())["id"]
            body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            async with http.post(sim.base_url + "/batches", json=body) as resp:
                batch_id = (await resp.json())["id"]
            for _ in range(200):
                async with http.get(f"{sim.base_url}/batches/{batch_id}") as resp:
                    batch: dict[str, Any] = await resp.json()
                if batch["status"] in ("failed", "completed"):
                    return batch
                await asyncio.sleep(0.05)
        raise AssertionError("the batch never ended")

    batch = asyncio.run(go())
    assert batch["status"] == "failed"
    codes = {(e["code"], e["line"]) for e in batch["errors"]["data"]}
    assert ("line_too_large", 3) in codes and ("mixed_models", None) in codes


def test_each_presets_file_rules() -> None:
    qianfan, dashscope = BATCH_APIS["qianfan"], BATCH_APIS["dashscope"]
    assert (qianfan.max_lines, qianfan.max_bytes, qianfan.price_share) == (5_000, 1024**3, 0.4)
    assert (dashscope.max_lines, dashscope.max_bytes, dashscope.max_line_bytes) == (50_000, 500 * 1024**2, 6 * 1024**2)
    assert batch_cache_share("dashscope") == 1.0
    silicon = BATCH_APIS["siliconflow"]
    assert (silicon.max_lines, silicon.max_bytes, silicon.replace_model, silicon.ends_with_user) == (
        5_000,
        1024**3,
        True,
        True,
    )
    assert cut_text("lines", qianfan, 5000) == "at 5,000 lines, Qianfan's most a file"
    assert cut_text("bytes", dashscope, 1) == "at 500 MB, DashScope's most a file"


def test_a_qianfan_upload_refused_for_bos_says_to_activate_it(tmp_path: Path) -> None:
    async def refuse(request: web.Request) -> web.Response:
        body = {"error": {"code": "BosNotActivated", "message": "BOS service is not activated for this account"}}
        return web.json_response(body, status=400)

    app = web.Application()
    app.router.add_post("/v2/files", refuse)
    with AppServer(app) as qianfan:
        job = make_job(
            tmp_path,
            qianfan.url + "/v2",
            n=2,
            provider={"name": "qianfan", "base_url": qianfan.url + "/v2", "mode": "batch"},
            batch=FAST,
        )
        result = run(job, "qianfan")
    assert result.exit_code == 1 and "activate BOS (Baidu Object Storage)" in result.output, result.output
    assert records(tmp_path) == ([], [])


def test_a_qianfan_refusal_for_bos_says_to_activate_it() -> None:
    from batchrun.engine.batchrules import refusal_hint

    hint = refusal_hint(BATCH_APIS["qianfan"], "bos_not_activated", "BOS service is not activated")
    assert "activate BOS" in hint
    assert "asking again would not change that" in refusal_hint(BATCH_APIS["qianfan"], "invalid", "bad file")


def test_line_problem_names_the_row_and_the_limit() -> None:
    from batchrun.rows.request import Request

    request = Request(
        row=4,
        custom_id="r4",
        model="m",
        payload=b'{"messages":[{"role":"system","content":"x"}]}',
        prompt_tokens=1,
        max_output=1,
    )
    problem = line_problem(BATCH_APIS["siliconflow"], request, b"{}")
    assert problem is not None and problem[0] == "last_message_not_user" and "row 4's last message" in problem[1]
    assert line_problem(BATCH_APIS["dashscope"], request, b"x" * (6 * 1024 * 1024 + 1)) is not None
    assert line_problem(BATCH_APIS["openai"], request, b"x" * 100) is None


def test_the_simulators_file_rules_are_each_providers() -> None:
    from batchrun.sim.filerules import RULES, line_refusal, mixed_models, upload_refusal

    mb = 1024 * 1024
    assert upload_refusal(RULES["moonshot"], 100 * mb + 1, 0) is not None
    assert upload_refusal(RULES["moonshot"], 100 * mb, 999) is None
    assert "at most 1000 files" in (upload_refusal(RULES["moonshot"], 10, 1000) or "")
    assert upload_refusal(RULES["siliconflow"], 1024 * mb + 1, 0) is not None
    assert upload_refusal(RULES["dashscope"], 500 * mb + 1, 0) is not None and RULES["qianfan"].max_lines == 5_000
    ends = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert line_refusal(RULES["siliconflow"], b"{}", ends) == (
        "invalid_messages",
        "the last message of messages must have role user",
    )
    assert line_refusal(RULES["openai"], b"x" * (7 * mb), ends) is None
    lines = [{"body": {"model": "a"}}, {"body": {"model": "b"}}]
    assert mixed_models(RULES["zhipu"], lines, None) and mixed_models(RULES["openai"], lines, None) is None
    assert mixed_models(RULES["moonshot"], lines, {"model": "a"}) is None  # replace.model names one for all


def test_the_simulator_speaking_qianfan_fails_a_batch_past_5000_lines(start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="qianfan", batch_s=0.0)
    line = {"method": "POST", "url": "/v2/chat/completions", "body": {"model": "m", "messages": [{"role": "user"}]}}
    content = b"".join(orjson.dumps({"custom_id": f"c{i}", **line}) + b"\n" for i in range(5001))

    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", content, filename="in.jsonl")
            async with http.post(sim.base_url + "/files", data=form) as resp:
                file_id = (await resp.json())["id"]
            body = {"input_file_id": file_id, "endpoint": "/v2/chat/completions", "completion_window": "24h"}
            async with http.post(sim.base_url + "/batches", json=body) as resp:
                batch_id = (await resp.json())["id"]
            for _ in range(200):
                async with http.get(f"{sim.base_url}/batches/{batch_id}") as resp:
                    batch: dict[str, Any] = await resp.json()
                if batch["status"] in ("failed", "completed"):
                    return batch
                await asyncio.sleep(0.05)
        raise AssertionError("the batch never ended")

    batch = asyncio.run(go())
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "too_many_lines"
