"""Reasoning models: the `reasoning:` block in each provider's words (what preview shows and what the simulator
receives), what a provider cannot honour as a one-line spec error, and reasoning tokens counted from the answers
into usage.json, status, report and export, equal to the simulator's bill."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.limits.controllers import TokenAccounting
from batchrun.rows.request import Request, RequestBuilder
from batchrun.rows.sources import RawRow
from batchrun.spec.parse import parse_spec
from batchrun.spec.reasoning import DEFAULT_THINKING_RESERVE, reasoning_params
from batchrun.store.usage import Usage, usage_counts

from .helpers import cli, make_job, out_dir_usage, read_jsonl, submit
from .simserver import SimServer

KEYS = {
    "deepseek": "DEEPSEEK_API_KEY",
    "zhipu": "ZHIPUAI_API_KEY",
    "ark": "ARK_API_KEY",
    "moonshot": "MOONSHOT_API_KEY",
    "dashscope": "DASHSCOPE_API_KEY",
    "siliconflow": "SILICONFLOW_API_KEY",
    "openai": "OPENAI_API_KEY",
    "vllm": "VLLM_API_KEY",
}
SPEAKS = {"vllm": "openai", "simulated": "openai"}

# provider, the block, what the request carries, what the simulator counts of it
TRANSLATIONS: list[tuple[str, dict[str, Any], dict[str, Any], set[str]]] = [
    (
        "deepseek",
        {"thinking": True, "effort": "low"},
        {"thinking": {"type": "enabled"}, "reasoning_effort": "high"},
        {"thinking.type=enabled", "reasoning_effort=high"},
    ),
    ("deepseek", {"effort": "max"}, {"reasoning_effort": "max"}, {"reasoning_effort=max"}),
    ("zhipu", {"thinking": True}, {"thinking": {"type": "enabled"}}, {"thinking.type=enabled"}),
    (
        "ark",
        {"thinking": "auto", "effort": "medium"},
        {"thinking": {"type": "auto"}, "reasoning_effort": "medium"},
        {"thinking.type=auto", "reasoning_effort=medium"},
    ),
    ("moonshot", {"thinking": True}, {"thinking": {"type": "enabled"}}, {"thinking.type=enabled"}),
    (
        "dashscope",
        {"thinking": True, "budget_tokens": 500},
        {"enable_thinking": True, "thinking_budget": 500},
        {"enable_thinking=true", "thinking_budget=500"},
    ),
    (
        "siliconflow",
        {"thinking": True, "budget_tokens": 128},
        {"enable_thinking": True, "thinking_budget": 128},
        {"enable_thinking=true", "thinking_budget=128"},
    ),
    ("openai", {"effort": "medium"}, {"reasoning_effort": "medium"}, {"reasoning_effort=medium"}),
    (
        "vllm",
        {"thinking": True},
        {"chat_template_kwargs": {"enable_thinking": True}},
        {"chat_template_kwargs.enable_thinking=true"},
    ),
    (
        "simulated",
        {"thinking": True, "effort": "high", "budget_tokens": 900},
        {"thinking": {"type": "enabled"}, "reasoning_effort": "high", "thinking_budget": 900},
        {"thinking.type=enabled", "reasoning_effort=high", "thinking_budget=900"},
    ),
]


def provider_job(
    tmp_path: Path, provider: str, url: str, reasoning: dict[str, Any] | None, mode: str = "sync", **more: Any
) -> tuple[Path, dict[str, str]]:
    """A job for `provider`'s preset pointed at the simulator, and the environment with a dummy key for it."""
    block = {"reasoning": reasoning} if reasoning is not None else {}
    job = make_job(tmp_path, url, n=4, provider={"name": provider, "base_url": url, "mode": mode}, **block, **more)
    return job, ({KEYS[provider]: "sk-dummy"} if provider in KEYS else {})


@pytest.mark.parametrize(("provider", "block", "words", "heard"), TRANSLATIONS, ids=lambda v: str(v)[:24])
def test_each_provider_is_told_in_its_own_words(
    tmp_path: Path,
    start_sim: Callable[..., SimServer],
    provider: str,
    block: dict[str, Any],
    words: dict[str, Any],
    heard: set[str],
) -> None:
    sim = start_sim(speaks=SPEAKS.get(provider, provider))
    job, env = provider_job(tmp_path, provider, sim.base_url, block)
    shown = cli("preview", str(job), env=env)
    assert shown.exit_code == 0, shown.output
    params = orjson.loads(next(line for line in shown.stdout.splitlines() if "params:" in line).split("params: ")[1])
    assert params == {"max_tokens": 32, **words}
    held = "max 160 out, 128 of it held for the chain of thought max_tokens does not cap"
    assert (held in shown.stdout) == (provider == "siliconflow")  # its max_tokens caps the answer only
    done = submit(job, env=env)
    assert done.exit_code == 0, done.output
    stats = sim.stats()
    assert stats["reasoning_asked"] == dict.fromkeys(heard, 4)  # every row's request said it so
    usage = out_dir_usage(tmp_path)
    assert stats["billed_reasoning_tokens"] > 0  # the simulator thought, and billed it as output
    assert usage["reasoning_tokens"] == stats["billed_reasoning_tokens"]
    assert usage["completion_tokens"] == stats["billed_completion_tokens"]
    model = usage["models"]["sim-small"]
    assert model["reasoning_tokens"] == stats["billed_reasoning_tokens"]
    assert model["thinking_completion_tokens"] == usage["completion_tokens"]  # every answer reasoned


def test_thinking_off_is_said_and_nothing_is_thought(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="deepseek")
    job, env = provider_job(tmp_path, "deepseek", sim.base_url, {"thinking": False})
    assert submit(job, env=env).exit_code == 0
    stats = sim.stats()
    assert stats["reasoning_asked"] == {"thinking.type=disabled": 4}
    usage = out_dir_usage(tmp_path)
    assert usage["reasoning_tokens"] == 0 == stats["billed_reasoning_tokens"]
    assert usage["models"]["sim-small"]["thinking_completion_tokens"] == 0
    for rec in read_jsonl(tmp_path / "runs" / "job" / "results.jsonl"):
        assert "reasoning_content" not in rec["response"]["body"]["choices"][0]["message"]


def test_openai_thinking_off_is_effort_none() -> None:
    assert reasoning_params("openai", False, None, None) == {"reasoning_effort": "none"}
    assert reasoning_params("openai", True, None, None) == {}  # the model's own default effort
    assert reasoning_params("openai", None, "max", None) == {"reasoning_effort": "max"}


@pytest.mark.parametrize(
    ("provider", "block", "message"),
    [
        (
            "deepseek",
            {"budget_tokens": 2000},
            "reasoning.budget_tokens is not offered by DeepSeek (it takes thinking: true or false; effort: low, "
            "medium, high, max)",
        ),
        (
            "dashscope",
            {"thinking": "auto"},
            "reasoning.thinking: auto is not offered by Alibaba DashScope (Qwen) (it takes thinking: true or false; "
            "budget_tokens: 1 to 1,000,000)",
        ),
        (
            "ark",
            {"effort": "max"},
            "reasoning.effort: max is not offered by Volcengine Ark (Doubao) (it takes thinking: true, false or "
            "auto; effort: low, medium, high)",
        ),
        (
            "zhipu",
            {"effort": "high"},
            "reasoning.effort is not offered by Zhipu GLM (it takes thinking: true or false)",
        ),
        (
            "siliconflow",
            {"budget_tokens": 64},
            "reasoning.budget_tokens must be 128 to 32,768 for SiliconFlow, got 64",
        ),
        (
            "qianfan",
            {"thinking": True},
            "reasoning.thinking: true is not offered by Baidu Qianfan (set the model's own parameter under params: "
            "instead)",
        ),
        (
            "deepseek",
            {"thinking": False, "effort": "high"},
            "reasoning.effort is set with reasoning.thinking: false, which asks for no reasoning: leave one out",
        ),
        ("deepseek", {"thinking": "yes"}, "reasoning.thinking must be true, false or auto, got the string 'yes'"),
        (
            "deepseek",
            {"thinking": "enabled"},
            "reasoning.thinking must be true, false or auto, got the string 'enabled': did you mean true?",
        ),
        (
            "dashscope",
            {"effort": "low"},
            "reasoning.effort is not offered by Alibaba DashScope (Qwen) (it takes thinking: true or false; "
            "budget_tokens: 1 to 1,000,000)",
        ),
    ],
)
def test_what_a_provider_cannot_honour_is_a_spec_error(
    tmp_path: Path, provider: str, block: dict[str, Any], message: str
) -> None:
    job, env = provider_job(tmp_path, provider, "http://127.0.0.1:9/v1", block)
    ran = cli("validate", str(job), env=env)
    assert ran.exit_code == 2
    assert ran.stderr.strip().splitlines()[-1] == f"batchrun: error: {job}: {message}"


def test_a_param_set_twice_is_a_spec_error(tmp_path: Path) -> None:
    job, env = provider_job(
        tmp_path,
        "deepseek",
        "http://127.0.0.1:9/v1",
        {"effort": "high"},
        params={"max_tokens": 32, "reasoning_effort": "max"},
    )
    ran = cli("validate", str(job), env=env)
    assert ran.exit_code == 2
    assert (
        "params.reasoning_effort and reasoning: both set it (deepseek is told reasoning: as "
        '{"reasoning_effort":"high"}): keep one'
    ) in ran.stderr
    # a mapping both set is merged where they do not meet (Kimi's thinking.keep beside the block's thinking.type)
    job, env = provider_job(
        tmp_path, "moonshot", "http://127.0.0.1:9/v1", {"thinking": True}, params={"thinking": {"keep": "all"}}
    )
    shown = cli("preview", str(job), env=env)
    assert '"thinking":{"keep":"all","type":"enabled"}' in shown.stdout, shown.output


def builder(tmp_path: Path, provider: str | dict[str, Any], reasoning: dict[str, Any] | None) -> Request:
    where = {"name": provider, "base_url": "http://127.0.0.1:9/v1"} if isinstance(provider, str) else provider
    spec_data: dict[str, Any] = {
        "model": "m",
        "provider": where,
        "input": "in.jsonl",
        "params": {"max_tokens": 100},
        **({"reasoning": reasoning} if reasoning else {}),
    }
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    spec = parse_spec(spec_data, spec_path=tmp_path / "job.yaml", source="job.yaml")
    built = RequestBuilder(spec, {"prompt": "hi"}).build(RawRow(1, {"prompt": "hi"}))
    assert isinstance(built, Request)
    return built


def test_siliconflow_reserves_the_chain_of_thought_beyond_max_tokens(tmp_path: Path) -> None:
    """SiliconFlow's max_tokens caps the answer only: the TPM charge and a budget's worst case add the budget."""
    assert builder(tmp_path, "siliconflow", {"budget_tokens": 2000}).max_output == 2100
    assert builder(tmp_path, "siliconflow", None).max_output == 100 + DEFAULT_THINKING_RESERVE
    assert builder(tmp_path, "siliconflow", {"thinking": False}).max_output == 100
    assert builder(tmp_path, "dashscope", {"budget_tokens": 2000}).max_output == 100  # within max_tokens there
    speaking = {"name": "simulated", "simulate": {"speaks": "siliconflow"}}  # the simulator answers so too
    assert builder(tmp_path, speaking, {"budget_tokens": 2000}).max_output == 2100
    assert builder(tmp_path, {"name": "simulated"}, {"budget_tokens": 2000}).max_output == 100


def test_the_tpm_charge_holds_the_chain_of_thought(tmp_path: Path) -> None:
    """TPM is charged prompt + max_output on admission: with SiliconFlow's reserve in it; settled on the answer's
    completion tokens, which count the reasoning tokens."""
    built = builder(tmp_path, "siliconflow", {"budget_tokens": 2000})
    accounting = TokenAccounting("actual")
    charge = accounting.charge(built.prompt_tokens, built.max_output)
    assert charge.amount == built.prompt_tokens + 2100
    # an answer of 1,500 reasoning + 80 answer tokens: what was held beyond them goes back, nothing more
    assert accounting.settle(charge, built.prompt_tokens, 1580) == 2100 - 1580


def test_a_budget_holds_the_chain_of_thought_siliconflow_may_add(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    """Each row's worst case is its prompt and max_tokens plus the thinking budget: a budget that fits the first
    but not the second sends nothing, and says so."""
    sim = start_sim(speaks="siliconflow")
    pricing = {"sim-small": {"input": 1000, "output": 1000, "currency": "CNY"}}
    limits = {"concurrency": 1, "max_cost": {"CNY": 1.0}}  # 1,000 tokens' worth: 32 + a prompt fits, 32,800 not
    job, env = provider_job(
        tmp_path, "siliconflow", sim.base_url, {"budget_tokens": 32_768}, pricing=pricing, limits=limits
    )
    ran = submit(job, env=env)
    assert ran.exit_code == 1 and "budget reached" in ran.output
    assert sim.stats()["requests"] == 0
    job, env = provider_job(tmp_path, "siliconflow", sim.base_url, {"thinking": False}, pricing=pricing, limits=limits)
    ran = submit(job, "--fresh", env=env)
    assert sim.stats()["requests"] > 0, ran.output


def test_siliconflow_thinks_past_max_tokens(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    """Speaking SiliconFlow, the simulator's chain of thought is not cut by max_tokens (others' is)."""
    sim = start_sim(speaks="siliconflow")
    job, env = provider_job(tmp_path, "siliconflow", sim.base_url, {"thinking": True}, params={"max_tokens": 8})
    assert submit(job, env=env).exit_code == 0
    usage = out_dir_usage(tmp_path)
    assert usage["reasoning_tokens"] > 4 * 8 and usage["reasoning_tokens"] == sim.stats()["billed_reasoning_tokens"]


def test_reasoning_tokens_reach_status_report_and_export(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="deepseek")
    job, env = provider_job(tmp_path, "deepseek", sim.base_url, {"thinking": True}, params={"max_tokens": 200})
    assert submit(job, env=env).exit_code == 0
    billed = sim.stats()["billed_reasoning_tokens"]
    run = tmp_path / "runs" / "job"
    report = orjson.loads(cli("report", str(run), "--format", "json").stdout)
    assert report["reasoning_tokens"] == billed == report["models"][0]["reasoning_tokens"]
    assert report["models"][0]["thinking_completion_tokens"] == report["completion_tokens"]
    assert f"(reasoning {billed:,} of the completion" in cli("report", str(run)).stdout
    status = orjson.loads(cli("status", str(run), "--json").stdout)
    assert status["reasoning_tokens"] == billed
    assert f"(reasoning {billed:,} of the completion" in cli("status", str(run)).stdout
    html = tmp_path / "report.html"
    assert cli("report", str(run), "--html", str(html)).exit_code == 0
    assert f"reasoning {billed:,} of the completion" in html.read_text()
    out = tmp_path / "out.jsonl"
    assert cli("export", str(run), "--to", str(out)).exit_code == 0
    rows = read_jsonl(out)
    assert sum(r["reasoning_tokens"] for r in rows) == billed and all(r["reasoning"] for r in rows)


def test_a_stream_counts_its_reasoning_tokens(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="dashscope")
    job, env = provider_job(
        tmp_path, "dashscope", sim.base_url, {"thinking": True}, mode="stream", params={"max_tokens": 200}
    )
    assert submit(job, env=env).exit_code == 0
    usage = out_dir_usage(tmp_path)
    assert usage["reasoning_tokens"] == sim.stats()["billed_reasoning_tokens"] > 0
    for rec in read_jsonl(tmp_path / "runs" / "job" / "results.jsonl"):
        assert rec["response"]["body"]["choices"][0]["message"]["reasoning_content"].startswith("Let me think")


def test_usage_counts_reads_each_providers_fields() -> None:
    openai = {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert usage_counts(openai) == usage_counts({**openai}) and usage_counts(openai).reasoning == 30
    assert usage_counts(openai).cached_prompt == 64
    deepseek = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 36,
    }
    assert (usage_counts(deepseek).cached_prompt, usage_counts(deepseek).total) == (64, 105)
    kimi = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "cached_tokens": 64,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    assert usage_counts(kimi).cached_prompt == 64  # said twice, counted once
    assert usage_counts({"prompt_tokens": 3}).cached_prompt == 0 and usage_counts(None).prompt == 0
    assert usage_counts({"prompt_tokens": 3, "cached_tokens": 9}).cached_prompt == 3  # never more than the prompt


def test_an_answer_with_a_chain_of_thought_but_no_count_is_thinking_output() -> None:
    """A provider that sends reasoning_content without reasoning_tokens: its completion is still thinking output."""
    usage = Usage()
    body = {
        "choices": [{"message": {"content": "4", "reasoning_content": "2 and 2"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7},
    }
    usage.add({"custom_id": "a", "model": "m", "attempts": 1, "response": {"status_code": 200, "body": body}})
    model = usage.models["m"]
    assert (model.reasoning_tokens, model.thinking_completion_tokens) == (0, 7)
    assert Usage.from_totals(usage.totals()).models["m"] == model
