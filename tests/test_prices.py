"""Prices beyond input and output: the provider's prompt cache (cached input), the thinking-output price, the
Batch API's cache rules, time-of-day windows (and a run that waits for the cheap one), and `batchrun prices`.

Pure arithmetic and window planning with the clock passed in; runs over HTTP against a provider of the test's own
that reports cache hits and reasoning tokens, and against the simulator for a schedule-held run."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from batchrun.commands.estimate import Estimate, window_lines
from batchrun.commands.validate import ModelLoad
from batchrun.engine.schedule import PriceHold
from batchrun.errors import SpecError
from batchrun.limits.budget import worst_cost
from batchrun.spec.parse import load_spec
from batchrun.spec.pricing import BUILT_IN, Price, Prices, SlotTokens, parse_prices, tokens_cost
from batchrun.spec.windows import Window, cheapest, hold, local_text, multiplier_at, next_change, parse_windows
from batchrun.store.usage import Usage, quarter_of

from .helpers import cli, make_job, out_dir_usage, read_jsonl, spawn_submit, submit
from .simserver import AppServer, SimServer

H = 3600


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()  # type: ignore[misc]


def shanghai(*args: int) -> float:
    return utc(*args) - 8 * H  # Asia/Shanghai is UTC+8 all year


# --- the cost arithmetic ----------------------------------------------------------------------------------


def test_cached_and_thinking_tokens_are_priced_apart() -> None:
    qwen = Prices().get("qwen-plus")
    assert qwen is not None and (qwen.input, qwen.cached_input, qwen.output, qwen.thinking_output) == (0.8, 0.2, 2, 8)
    # 1,000,000 prompt tokens of which 400,000 hit the cache; 100,000 completion tokens of which 60,000 reasoned
    assert qwen.cost(1_000_000, 100_000, 400_000, 60_000) == pytest.approx(0.48 + 0.08 + 0.08 + 0.48)
    plain = Price(1, 2, "CNY", "s")  # no cached or thinking price: both at the plain ones
    assert plain.cost(1_000_000, 1_000_000, 500_000, 500_000) == pytest.approx(3.0)
    assert plain.describe() == "1 / 2 CNY per 1M tokens (s)"
    assert qwen.describe().startswith("0.8 / 2 CNY per 1M tokens, cached input 0.2, thinking output 8 (")


def test_batch_prices_keep_each_providers_cache_rule() -> None:
    price = Price(1, 2, "CNY", "s", cached_input=0.2, thinking_output=8)
    tokens = SlotTokens(
        prompt_tokens=1_000_000,
        completion_tokens=0,
        cached_prompt_tokens=1_000_000,
        batch_prompt_tokens=1_000_000,
        batch_cached_prompt_tokens=1_000_000,
    )
    # None: the cached price at the batch share (0.2 x 0.5)
    assert tokens_cost(price, price.scaled(0.5), tokens) == pytest.approx(0.1)
    # DashScope: no cache discount through its Batch API (a hit costs the batch input price)
    assert tokens_cost(price, price.scaled(0.5, 1.0), tokens) == pytest.approx(0.5)
    # Ark's batch chat: a hit at 0.4 of the batch input price
    assert tokens_cost(price, price.scaled(0.5, 0.4), tokens) == pytest.approx(0.2)
    assert price.scaled(0.5).thinking_output == 4  # the thinking price is halved like the rest
    # half online, half through the Batch API, with the thinking price on the answers that reasoned
    mixed = SlotTokens(2_000_000, 200_000, 0, 200_000, 1_000_000, 100_000, 0, 100_000)
    assert tokens_cost(price, price.scaled(0.5), mixed) == pytest.approx((1 + 0.8) + (0.5 + 0.4))
    assert tokens_cost(price, price.scaled(0.5), mixed, hits=False) == tokens_cost(price, price.scaled(0.5), mixed)


def test_every_built_in_price_says_where_from_and_the_sim_shows_each_kind() -> None:
    assert all(p.source and p.currency in ("CNY", "USD") for p in BUILT_IN.values())
    for name in ("deepseek-v4-flash", "deepseek-v4-pro", "glm-4.6", "kimi-k2.6", "gpt-5-mini", "qwen-vl-plus"):
        assert BUILT_IN[name].cached_input is not None, name
    assert "unverified" in BUILT_IN["doubao-seed-1.6"].source
    assert "retired 2026-07-24" in BUILT_IN["deepseek-chat"].source
    flash = BUILT_IN["deepseek-v4-flash"]
    assert flash.windows and all("unverified" in w.name for w in flash.windows)
    assert BUILT_IN["sim-small"].cached_input is not None and BUILT_IN["sim-small"].thinking_output is not None


# --- windows ----------------------------------------------------------------------------------------------


def test_deepseek_peak_hours_in_beijing_time() -> None:
    peak = BUILT_IN["deepseek-v4-flash"].windows
    assert multiplier_at(peak, shanghai(2026, 12, 7, 10, 0)) == 2  # 10:00 Beijing = 02:00 UTC
    assert multiplier_at(peak, shanghai(2026, 12, 7, 12, 30)) == 1
    assert multiplier_at(peak, shanghai(2026, 12, 7, 17, 59, 59)) == 2
    assert multiplier_at(peak, shanghai(2026, 12, 7, 18, 0)) == 1
    assert next_change(peak, shanghai(2026, 12, 7, 11, 0)) == shanghai(2026, 12, 7, 12, 0)
    assert next_change(peak, shanghai(2026, 12, 7, 20, 0)) == shanghai(2026, 12, 8, 9, 0)  # past midnight
    assert cheapest(peak, shanghai(2026, 12, 7, 15, 0)) == (1.0, shanghai(2026, 12, 7, 18, 0))
    assert cheapest(peak, shanghai(2026, 12, 7, 13, 0)) == (1.0, shanghai(2026, 12, 7, 13, 0))  # now


def test_a_window_past_midnight_on_chosen_weekdays() -> None:
    # Friday nights, 22:00 to 06:00 Shanghai time, at half price; 2026-12-11 is a Friday
    (night,) = parse_windows(
        [{"hours": "22:00-06:00", "zone": "Asia/Shanghai", "days": ["fri"], "multiplier": 0.5}], "w"
    )
    assert multiplier_at([night], shanghai(2026, 12, 11, 23, 0)) == 0.5
    assert multiplier_at([night], shanghai(2026, 12, 12, 3, 0)) == 0.5  # Saturday morning: begun on Friday
    assert multiplier_at([night], shanghai(2026, 12, 12, 23, 0)) == 1  # Saturday night
    assert multiplier_at([night], shanghai(2026, 12, 11, 3, 0)) == 1  # Friday morning: begun on Thursday
    # from Saturday noon the next change is the next Friday night
    assert next_change([night], shanghai(2026, 12, 12, 12, 0)) == shanghai(2026, 12, 18, 22, 0)
    assert cheapest([night], shanghai(2026, 12, 14, 9, 0)) == (0.5, shanghai(2026, 12, 18, 22, 0))
    held = hold([night], shanghai(2026, 12, 14, 9, 0))
    assert held is not None and held.until == shanghai(2026, 12, 18, 22, 0) and held.cheapest == 0.5


def test_windows_follow_the_zone_and_its_summer_time() -> None:
    (office,) = parse_windows(
        [{"hours": "09:00-17:00", "zone": "America/New_York", "days": "mon", "multiplier": 3}], "w"
    )
    # 09:00 in New York: 14:00 UTC in winter (EST), 13:00 UTC in summer (EDT); both Mondays
    assert (
        multiplier_at([office], utc(2026, 1, 5, 14, 0)) == 3 and multiplier_at([office], utc(2026, 1, 5, 13, 30)) == 1
    )
    assert multiplier_at([office], utc(2026, 7, 6, 13, 0)) == 3 and multiplier_at([office], utc(2026, 7, 6, 21, 0)) == 1
    # DeepSeek's 2025 night discount, in UTC: the cheapest time is its window, found across midnight
    night = parse_windows([{"hours": ["16:30-00:30"], "zone": "UTC", "multiplier": 0.5, "name": "off-peak"}], "w")
    assert cheapest(night, utc(2025, 3, 1, 12, 0)) == (0.5, utc(2025, 3, 1, 16, 30))
    assert next_change(night, utc(2025, 3, 1, 23, 0)) == utc(2025, 3, 2, 0, 30)
    assert hold(night, utc(2025, 3, 1, 23, 0)) is None  # inside the cheap window: go
    held = hold(night, utc(2025, 3, 2, 0, 30))  # the window closed: hold again, until it opens
    assert held is not None and held.until == utc(2025, 3, 2, 16, 30)
    assert (
        held.text(1200, utc(2025, 3, 2, 0, 30)) == "the price (×1) until 16:30 UTC, then ×0.5; holding, 1,200 rows left"
    )
    assert hold((), utc(2025, 3, 1)) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"hours": "25:00-01:00", "zone": "UTC", "multiplier": 2}, "w[0].hours: '25:00-01:00' is not a span"),
        ({"hours": "09:00-09:00", "zone": "UTC", "multiplier": 2}, "is not a span of the day"),
        ({"hours": "09:00-10:00", "zone": "Mars/Olympus", "multiplier": 2}, "w[0].zone: 'Mars/Olympus' is not a time"),
        ({"hours": "09:00-10:00", "zone": "UTC"}, "w[0].multiplier: must be a number >= 0"),
        ({"hours": "09:00-10:00", "zone": "UTC", "multiplier": 2, "days": ["funday"]}, "'funday' is not a weekday"),
        ({"hours": "09:00-10:00", "zone": "UTC", "multiplier": 2, "dayz": []}, "unknown key 'dayz': did you mean"),
    ],
)
def test_window_mistakes_are_one_line_naming_the_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_windows([entry], "w")


def test_prices_read_cached_thinking_and_windows_and_write_them_back() -> None:
    data = {
        "m": {
            "input": 1,
            "output": 2,
            "currency": "cny",
            "cached_input": 0.1,
            "thinking_output": 6,
            "windows": [{"hours": "09:00-12:00:30", "zone": "Asia/Shanghai", "multiplier": 2, "days": ["sat", "sun"]}],
        }
    }
    price = parse_prices(data, "x")["m"]
    assert (price.cached_input, price.thinking_output, price.currency) == (0.1, 6, "CNY")
    assert price.windows == (Window(((9 * H, 12 * H + 30),), "Asia/Shanghai", 2.0, (5, 6)),)
    assert parse_prices({"m": price.as_dict()}, "x")["m"] == price  # the manifest keeps it so
    with pytest.raises(SpecError, match=r"x: m.cached_input: must be a price per million tokens"):
        parse_prices({"m": {"input": 1, "output": 2, "currency": "CNY", "cached_input": "cheap"}}, "x")
    with pytest.raises(SpecError, match=r"x: m: unknown key 'cache_input': did you mean 'cached_input'"):
        parse_prices({"m": {"input": 1, "output": 2, "currency": "CNY", "cache_input": 1}}, "x")
    with pytest.raises(SpecError, match=r"x: m.windows: must be a list of windows"):
        parse_prices({"m": {"input": 1, "output": 2, "currency": "CNY", "windows": "peak"}}, "x")


def test_tokens_are_priced_by_when_they_were_answered_and_repriced_by_other_windows() -> None:
    usage = Usage()
    for at, prompt in (("2026-12-07T02:10:00.000Z", 1_000_000), ("2026-12-07T05:10:00.000Z", 2_000_000)):
        body = {"usage": {"prompt_tokens": prompt, "completion_tokens": 0}}
        usage.add({"row": 1, "model": "m", "response": {"status": 200, "body": body}, "completed_at": at})
    assert set(usage.slots["m"]) == {int(utc(2026, 12, 7, 2, 0) // 900), int(utc(2026, 12, 7, 5, 0) // 900)}
    flat = Prices({"m": Price(1, 2, "CNY", "s")})
    assert flat.cost("m", usage.models["m"], usage.slots["m"]) == pytest.approx(3.0)
    # 02:10 UTC is 10:10 Beijing: peak; 05:10 UTC is 13:10: not
    peak = Prices({"m": Price(1, 2, "CNY", "s", windows=BUILT_IN["deepseek-v4-flash"].windows)})
    assert peak.cost("m", usage.models["m"], usage.slots["m"]) == pytest.approx(2 * 1 + 2)
    assert peak.spent(usage.models, usage.slots)[0] == {"CNY": pytest.approx(4.0)}
    assert peak.cost("m", usage.models["m"]) == pytest.approx(3.0)  # no slots (an older usage.json): plain price
    again = Usage.from_totals(json.loads(json.dumps(usage.totals())))  # usage.json keeps the slots
    assert again.slots == usage.slots


def test_an_older_usage_json_reads_its_response_cache_counters_right() -> None:
    old = {"models": {"m": {"rows_succeeded": 3, "cached_rows": 2, "cached_prompt_tokens": 50}}}
    model = Usage.from_totals(old).models["m"]
    assert (model.response_cache_rows, model.response_cache_prompt_tokens, model.cached_prompt_tokens) == (2, 50, 0)


def test_the_budget_holds_the_thinking_price_and_the_window_at_the_time() -> None:
    price = Price(1, 2, "CNY", "s", thinking_output=4, windows=BUILT_IN["deepseek-v4-flash"].windows)
    off_peak, peak = shanghai(2026, 12, 7, 13, 0), shanghai(2026, 12, 7, 10, 0)
    assert worst_cost(price, 1_000_000, 1_000_000, False, off_peak) == pytest.approx(3.0)
    assert worst_cost(price, 1_000_000, 1_000_000, True, off_peak) == pytest.approx(5.0)
    assert worst_cost(price, 1_000_000, 1_000_000, True, peak) == pytest.approx(10.0)


def test_estimate_says_what_waiting_for_the_cheap_window_saves() -> None:
    est = Estimate(10, 0, 10, 1_000_000, 1_000_000, {"deepseek-v4-flash": ModelLoad(10, 1_000_000, 1_000_000)})
    lines = window_lines(est, Prices(), 0.5, shanghai(2026, 12, 7, 15, 0))
    assert lines[0] == "  time of day    deepseek-v4-flash: now ×2, peak (unverified): 4.0000 to 6.0000 CNY"
    assert "cheapest ×1 from 18:00 Asia/Shanghai (in 3.0 h): 2.0000 to 3.0000 CNY" in lines[1]
    assert "waiting saves 2.0000 to 3.0000 CNY" in lines[1]
    calm = window_lines(est, Prices(), 0.5, shanghai(2026, 12, 7, 13, 0))
    assert "nothing to gain by waiting" in calm[1]
    assert window_lines(est, Prices({"deepseek-v4-flash": Price(1, 2, "CNY", "s")}), 0.5, 0) == []


def test_a_run_holds_again_when_the_cheap_window_closes(tmp_path: Path) -> None:
    """The planner with its clock passed in: inside the cheap window rows go; once it closes (mid-run) the next
    row waits, saying why and until when; it goes on by itself once the window opens again."""
    import asyncio

    pricing = {"m": {"input": 1, "output": 1, "currency": "CNY", "windows": [NIGHT]}}
    spec = load_spec(make_job(tmp_path, "http://127.0.0.1:9/v1", n=1, model="m", pricing=pricing))
    said: list[str] = []
    times = iter([utc(2025, 3, 1, 23, 0), utc(2025, 3, 2, 16, 30) - 0.02, utc(2025, 3, 2, 16, 30)])
    planner = PriceHold(spec, lambda: 7, said.append, clock=lambda: next(times))
    asyncio.run(planner.until_cheap())  # 23:00: inside the window, goes at once
    assert said == [] and planner.steady_until == utc(2025, 3, 2, 0, 30)
    asyncio.run(planner.until_cheap())  # the window has closed: holds (20 ms here), then goes on
    assert said == [
        "the price (×1) until 16:30 UTC, then ×0.5; holding, 7 rows left",
        "the price is at its cheapest now: going on, 7 rows left",
    ]


NIGHT = {"hours": "16:30-00:30", "zone": "UTC", "multiplier": 0.5, "name": "off-peak"}


# --- over HTTP --------------------------------------------------------------------------------------------


def _provider() -> web.Application:
    """A provider that bills like DeepSeek or DashScope: prompt-cache hits in `prompt_tokens_details` (rows asking
    with #hit), reasoning tokens in `completion_tokens_details` (rows asking with #think)."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        usage: dict[str, Any] = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
        message: dict[str, Any] = {"role": "assistant", "content": "ok"}
        if "#hit" in text:
            usage["prompt_tokens_details"] = {"cached_tokens": 600}
        if "#think" in text:
            usage["completion_tokens_details"] = {"reasoning_tokens": 40}
            message["reasoning_content"] = "let me think"
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response(
            {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def test_a_run_is_priced_with_cached_and_thinking_tokens(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "prompt": "one #hit #think"},
        {"id": "b", "prompt": "two #hit"},
        {"id": "c", "prompt": "three #think"},
        {"id": "d", "prompt": "four"},
    ]
    with AppServer(_provider()) as server:
        url = server.url + "/v1"
        provider = {"name": "openai", "base_url": url, "api_key_env": "GW_KEY"}
        job = make_job(tmp_path, url, rows, model="qwen-plus", provider=provider, cache={"mode": "off"})
        ran = submit(job, env={"GW_KEY": "sk-test"})
    assert ran.exit_code == 0, ran.output
    model = out_dir_usage(tmp_path)["models"]["qwen-plus"]
    assert (model["cached_prompt_tokens"], model["reasoning_tokens"], model["thinking_completion_tokens"]) == (
        1200,
        80,
        200,
    )
    # qwen-plus: 2,800 prompt tokens at 0.8, 1,200 cache hits at 0.2, 200 plain completion tokens at 2, the 200 of
    # answers that reasoned at the thinking price 8
    cost = (2800 * 0.8 + 1200 * 0.2 + 200 * 2 + 200 * 8) / 1e6
    assert "cost 0.0045 CNY" in ran.stdout
    report = orjson.loads(cli("report", str(tmp_path / "runs" / "job"), "--format", "json").stdout)
    assert report["cost"] == {"CNY": pytest.approx(cost)}
    assert report["cached_prompt_tokens"] == 1200
    assert report["provider_cache_saved"] == {"CNY": pytest.approx(1200 * (0.8 - 0.2) / 1e6)}
    assert report["cache"]["rows"] == 0  # batchrun's own response cache answered nothing: apart
    table = cli("report", str(tmp_path / "runs" / "job")).stdout
    assert "1,200 of 4,000 prompt tokens hit the provider's prompt cache, which saved 0.0007 CNY" in table
    page = tmp_path / "r.html"
    assert cli("report", str(tmp_path / "runs" / "job"), "--html", str(page)).exit_code == 0
    assert "<th>prompt cache</th><td>1,200 of 4,000 prompt tokens hit the provider&#x27;s prompt cache" in (
        page.read_text()
    )
    # a --prices file with a window over every hour of every day: the same tokens, three times the price
    prices = tmp_path / "prices.yaml"
    triple = {"hours": "00:00-24:00", "zone": "Asia/Shanghai", "multiplier": 3}
    entry = {"input": 0.8, "output": 2, "cached_input": 0.2, "thinking_output": 8, "currency": "CNY"}
    prices.write_text(yaml.safe_dump({"qwen-plus": {**entry, "windows": [triple]}}))
    again = cli("report", str(tmp_path / "runs" / "job"), "--format", "json", "--prices", str(prices))
    assert orjson.loads(again.stdout)["cost"] == {"CNY": pytest.approx(3 * cost)}


def _span(start: float, end: float) -> str:
    """`HH:MM:SS-HH:MM:SS` in UTC (a span past midnight reads as one)."""

    def clock(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S")

    return f"{clock(start)}-{clock(end)}"


def _peak_job(tmp_path: Path, sim: SimServer, until: float, n: int = 5) -> Path:
    peak = {"hours": _span(until - H, until), "zone": "UTC", "multiplier": 2, "name": "peak"}
    return make_job(
        tmp_path,
        sim.base_url,
        n=n,
        cache={"mode": "off"},
        pricing={"sim-small": {"input": 1, "output": 2, "currency": "CNY", "windows": [peak]}},
        schedule={"avoid_peak": True},
    )


def test_a_run_avoiding_the_peak_waits_for_the_window_and_goes_on_by_itself(tmp_path: Path, sim: SimServer) -> None:
    # The peak ends in 15 s (whole seconds: HH:MM:SS): far more than the run's start-up takes on a loaded machine,
    # so the run is held; the planner's own timing is tested above with its clock passed in.
    until = float(int(time.time()) + 15)
    ran = submit(_peak_job(tmp_path, sim, until))
    assert ran.exit_code == 0, ran.output
    stamp = local_text(until, "UTC")  # `18:37:05 UTC`, or `18:37 UTC` on a whole minute
    assert f"peak price (×2) until {stamp}, then ×1; holding, 5 rows left" in ran.stderr
    assert "the price is at its cheapest now: going on, 5 rows left" in ran.stderr
    done = read_jsonl(tmp_path / "runs" / "job" / "results.jsonl")
    assert len(done) == 5
    # nothing was answered (so nothing sent) before the peak ended
    assert all(dt.datetime.fromisoformat(r["completed_at"].replace("Z", "+00:00")).timestamp() >= until for r in done)


def test_a_run_started_in_the_cheap_window_goes_at_once(tmp_path: Path, sim: SimServer) -> None:
    ran = submit(_peak_job(tmp_path, sim, time.time() - 2 * H))  # the peak ended two hours ago
    assert ran.exit_code == 0, ran.output
    assert "holding" not in ran.output and len(read_jsonl(tmp_path / "runs" / "job" / "results.jsonl")) == 5


def test_ctrl_c_while_holding_stops_cleanly(tmp_path: Path, sim: SimServer) -> None:
    proc = spawn_submit(_peak_job(tmp_path, sim, time.time() + H))
    watchdog = threading.Timer(120, proc.kill)  # a hung run fails the test rather than hang it
    watchdog.start()
    try:
        assert proc.stdout is not None
        seen = b""
        while b"holding" not in seen:
            line = proc.stdout.readline()
            assert line, seen.decode()
            seen += line
        while "holding  peak price (×2) until" not in (said := cli("status", str(tmp_path / "runs" / "job")).stdout):
            assert proc.poll() is None, said  # usage.json says so within a second of the hold: look again
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read().decode()
        assert proc.wait() == 130, out
    finally:
        watchdog.cancel()
    assert read_jsonl(tmp_path / "runs" / "job" / "results.jsonl") == []
    manifest = orjson.loads((tmp_path / "runs" / "job" / "manifest.json").read_bytes())
    assert manifest["state"] == "interrupted"


def test_batchrun_prices_lists_what_a_run_is_charged_and_from_where(tmp_path: Path) -> None:
    one = cli("prices", "qwen-plus", "--provider", "dashscope")
    assert one.exit_code == 0, one.output
    row = one.stdout.splitlines()[1].split()
    assert row == ["qwen-plus", "0.8", "0.2", "2", "8", "0.4", "/", "1", "CNY", "built-in"]
    assert "batch: dashscope's Batch API at 50% of online" in one.stdout
    assert "qwen-plus: Aliyun AI PaaS billing rules" in one.stdout
    wrong = cli("prices", "deepseek-v4-flsh")
    assert wrong.exit_code == 2 and "no price for 'deepseek-v4-flsh' (did you mean 'deepseek-v4-flash'?)" in (
        wrong.stderr
    )
    job = make_job(
        tmp_path,
        "http://127.0.0.1:9/v1",
        model="my-model",
        pricing={"my-model": {"input": 3, "output": 4, "currency": "USD", "windows": [NIGHT]}},
    )
    from_job = orjson.loads(cli("prices", "--job", str(job), "--format", "json").stdout)
    (entry,) = from_job["models"]
    assert (entry["model"], entry["from"], entry["input"], entry["windows"][0]["name"]) == (
        "my-model",
        "pricing: in job.yaml",
        3,
        "off-peak",
    )
    assert entry["multiplier_now"] in (0.5, 1.0) and entry["input_now"] == 3 * entry["multiplier_now"]
    assert from_job["provider"] == "simulated" and entry["batch"]["input"] == 1.5
    prices = tmp_path / "p.yaml"
    prices.write_text(yaml.safe_dump({"my-model": {"input": 5, "output": 6, "currency": "USD"}}))
    file_wins = orjson.loads(cli("prices", "--job", str(job), "--prices", str(prices), "--format", "json").stdout)
    assert (file_wins["models"][0]["from"], file_wins["models"][0]["input"]) == (f"--prices {prices}", 5)
    everything = cli("prices").stdout
    assert "deepseek-v4-flash" in everything and "kimi-k2.6" in everything and "window ×2 09:00-12:00" in everything


def test_estimate_of_a_job_in_its_peak_says_what_waiting_saves(tmp_path: Path) -> None:
    now = time.time()
    peak = {"hours": _span(now - H, now + 2 * H), "zone": "UTC", "multiplier": 2, "name": "peak"}
    job = make_job(
        tmp_path,
        "http://127.0.0.1:9/v1",
        n=10,
        pricing={"sim-small": {"input": 1, "output": 2, "currency": "CNY", "windows": [peak]}},
    )
    ran = cli("estimate", str(job))
    assert ran.exit_code == 0, ran.output
    assert "time of day    sim-small: now ×2, peak:" in ran.stdout
    assert "cheapest ×1 from " in ran.stdout and "waiting saves" in ran.stdout


def test_a_time_reads_with_seconds_only_when_it_has_them() -> None:
    assert local_text(utc(2026, 12, 7, 18, 37), "UTC") == "18:37 UTC"
    assert local_text(utc(2026, 12, 7, 18, 37, 5), "Asia/Shanghai") == "02:37:05 Asia/Shanghai"


def test_a_records_quarter_hour_is_the_same_read_by_its_minute_or_whole() -> None:
    """A run's records are put in their quarter hour by the minute they name (read once per minute); a time in
    another form is read whole, and one that does not read has no quarter."""
    quarter = int(utc(2026, 12, 7, 19, 45) // 900)
    assert quarter_of("2026-12-07T19:59:59.999Z") == quarter_of("2026-12-07T19:45:00.000Z") == quarter
    assert quarter_of("2026-12-07T19:44:59.999Z") == quarter - 1
    assert quarter_of("2026-12-08T03:50:00+08:00") == quarter  # the same instant, read whole
    assert quarter_of("not a time") is None and quarter_of(None) is None
