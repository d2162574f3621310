"""The provider's prompt cache: hits read from each provider's own field, recorded and totalled as
`cached_prompt_tokens` (equal to the simulator's bill), in every lane; and batchrun's own response cache, counted
apart as `response_cache_*`, read right from a run directory written before the rename."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.sim.thinking import BLOCK_TOKENS, PromptCache

from .helpers import FAST_RETRY, cli, make_job, out_dir_usage, read_jsonl, submit, write_jsonl
from .simserver import SimServer
from .test_batch_lane import batch_job

SYSTEM = "You label support tickets by their topic, one word, lower case. " * 12  # ~190 tokens shared by every row
ROWS = [{"id": f"r{i}", "prompt": f"ticket {i}: my invoice is wrong"} for i in range(6)]
KEYS = {"deepseek": "DEEPSEEK_API_KEY", "moonshot": "MOONSHOT_API_KEY", "dashscope": "DASHSCOPE_API_KEY"}


@pytest.mark.parametrize("provider", ["deepseek", "moonshot", "dashscope"])
def test_cache_hits_are_read_from_each_providers_field(
    tmp_path: Path, start_sim: Callable[..., SimServer], provider: str
) -> None:
    sim = start_sim(speaks=provider)
    write_jsonl(tmp_path / "job.jsonl", ROWS)
    job = make_job(
        tmp_path,
        sim.base_url,
        ROWS,
        provider={"name": provider, "base_url": sim.base_url},
        input={"path": "job.jsonl", "system": SYSTEM},
        limits={"concurrency": 1},
    )
    env = {KEYS[provider]: "sk-dummy"}
    assert submit(job, env=env).exit_code == 0
    stats = sim.stats()
    usage = out_dir_usage(tmp_path)
    # the first row fills the cache; the other five share its system prompt's whole blocks
    hits = stats["billed_cached_prompt_tokens"]
    assert hits == 5 * 3 * BLOCK_TOKENS  # the system prompt's three whole blocks, for each row after the first
    assert usage["cached_prompt_tokens"] == stats["billed_cached_prompt_tokens"]
    assert usage["models"]["sim-small"]["cached_prompt_tokens"] == stats["billed_cached_prompt_tokens"]
    assert usage["prompt_tokens"] == stats["billed_prompt_tokens"]  # the hits are part of the prompt, not more
    bodies = [r["response"]["body"]["usage"] for r in read_jsonl(tmp_path / "runs/job/results.jsonl")]
    field = {"deepseek": "prompt_cache_hit_tokens", "moonshot": "cached_tokens", "dashscope": "prompt_tokens_details"}
    assert all(field[provider] in u for u in bodies)

    run = tmp_path / "runs" / "job"
    report = orjson.loads(cli("report", str(run), "--format", "json").stdout)
    assert report["cached_prompt_tokens"] == hits == report["models"][0]["cached_prompt_tokens"]
    assert f"{hits:,} prompt from the provider's cache" in cli("report", str(run)).stdout
    assert orjson.loads(cli("status", str(run), "--json").stdout)["cached_prompt_tokens"] == hits
    out = tmp_path / "out.csv"
    assert cli("export", str(run), "--to", str(out)).exit_code == 0
    lines = out.read_text().splitlines()
    column = lines[0].split(",").index("cached_prompt_tokens")
    assert [int(line.split(",")[column]) for line in lines[1:]] == [0] + [hits // 5] * 5


def test_batch_answers_count_their_cache_hits_at_the_batch_price(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=0.2)
    write_jsonl(tmp_path / "job.jsonl", ROWS)
    job = batch_job(tmp_path, sim, ROWS, input={"path": "job.jsonl", "system": SYSTEM})
    assert submit(job).exit_code == 0
    model = out_dir_usage(tmp_path)["models"]["sim-small"]
    billed = sim.stats()["billed_cached_prompt_tokens"]
    assert billed > 0 and model["cached_prompt_tokens"] == billed == model["batch_cached_prompt_tokens"]


def test_the_simulators_prompt_cache_hits_whole_blocks_of_a_prefix_seen() -> None:
    cache = PromptCache()
    shared = "a" * (4 * 64 * 3)  # three blocks of ASCII (four characters a token)
    first = {"model": "m", "messages": [{"role": "user", "content": shared + "one"}]}
    assert cache.hits("chat", first, 200) == 0  # nothing seen yet
    assert cache.hits("chat", first, 200) == 192  # its whole blocks again: the last part block is not cached
    other = {"model": "m", "messages": [{"role": "user", "content": shared + "two, and some more text after it"}]}
    assert cache.hits("chat", other, 200) == 192
    assert cache.hits("chat", {**first, "model": "n"}, 200) == 0  # each model its own cache
    assert cache.hits("chat", first, 100) == 100  # never more than the prompt
    short = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert cache.hits("chat", short, 5) == 0 and cache.hits("chat", short, 5) == 0  # under a block: never cached


def rename_to_old(run: Path) -> dict[str, Any]:
    """usage.json as batchrun wrote it before the provider's prompt cache was counted: the response cache's
    counters named cached_*, no reasoning or provider cache counters."""
    data: dict[str, Any] = orjson.loads((run / "usage.json").read_bytes())
    for name in ("reasoning_tokens", "cached_prompt_tokens"):
        data.pop(name)
    for model in data["models"].values():
        for name in list(model):
            if "reasoning" in name or "thinking" in name or name.endswith("cached_prompt_tokens"):
                model.pop(name)
        for part in ("rows", "prompt_tokens", "completion_tokens"):
            model[f"cached_{part}"] = model.pop(f"response_cache_{part}")
    (run / "usage.json").write_bytes(orjson.dumps(data))
    return data


def test_a_run_directory_with_the_old_counter_names_reports_and_resumes_right(tmp_path: Path, sim: SimServer) -> None:
    first = make_job(tmp_path, sim.base_url, ROWS, name="first")
    assert submit(first).exit_code == 0
    again = make_job(tmp_path, sim.base_url, name="again", input="first.jsonl", retry=FAST_RETRY)
    assert submit(again).exit_code == 0  # all six rows from the response cache
    run = tmp_path / "runs" / "again"
    old = rename_to_old(run)
    assert old["models"]["sim-small"]["cached_rows"] == 6
    saved = old["models"]["sim-small"]["cached_prompt_tokens"]
    assert saved > 0

    report = orjson.loads(cli("report", str(run), "--format", "json").stdout)
    assert (report["rows_cached"], report["cache"]["rows"], report["cached_prompt_tokens"]) == (6, 6, 0)
    assert "6 rows from the response cache" in cli("report", str(run)).stdout
    assert orjson.loads(cli("status", str(run), "--json").stdout)["cached"]["rows"] == 6

    write_jsonl(tmp_path / "first.jsonl", [*ROWS, {"id": "r6", "prompt": "ticket 6: a new one"}])
    resumed = submit(again)  # resumes from the old usage.json: one new row asked, six from the cache as before
    assert resumed.exit_code == 0, resumed.output
    model = out_dir_usage(tmp_path, "again")["models"]["sim-small"]
    assert (model["response_cache_rows"], model["response_cache_prompt_tokens"]) == (6, saved)
    assert model["rows_succeeded"] == 7 and model["cached_prompt_tokens"] == 0 and "cached_rows" not in model
