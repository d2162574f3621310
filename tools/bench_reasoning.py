"""`make bench`'s reasoning job: a thinking model behind a prompt cache (the simulator speaking DeepSeek), with a
long system prompt every row shares; the reasoning and cached tokens batchrun totals must equal the simulator's
bill, and so must what they cost."""

from __future__ import annotations

from pathlib import Path

from batchrun.spec.pricing import Prices
from batchrun.store.usage import ModelUsage

from .bench_kit import PROVIDER_LIKE, Figure, Simulator, run_client, short_prompt, write_prompts

SYSTEM = "You are a careful analyst. Read the question, weigh the evidence, and answer in one sentence. " * 8


def bench_reasoning(work: Path, rows: int) -> list[Figure]:
    sim = Simulator("--speaks", "deepseek", *PROVIDER_LIKE)
    try:
        run = run_client(
            work,
            sim,
            write_prompts(work / "reasoning.jsonl", rows, short_prompt),
            name="reasoning",
            max_tokens=400,
            limits={"concurrency": 64},
            extra={
                "reasoning": {"thinking": True, "effort": "high"},
                "input": {"path": str(work / "reasoning.jsonl"), "system": SYSTEM},
            },
        )
    finally:
        sim.close()
    usage, stats = run.usage, run.stats
    pairs = {
        "prompt": (usage["prompt_tokens"], stats["billed_prompt_tokens"]),
        "completion": (usage["completion_tokens"], stats["billed_completion_tokens"]),
        "reasoning": (usage["reasoning_tokens"], stats["billed_reasoning_tokens"]),
        "cached prompt": (usage["cached_prompt_tokens"], stats["billed_cached_prompt_tokens"]),
    }
    prices = Prices()
    ours = prices.cost("sim-small", ModelUsage(**usage["models"]["sim-small"]))
    bill = prices.cost(
        "sim-small",
        ModelUsage(
            prompt_tokens=stats["billed_prompt_tokens"],
            completion_tokens=stats["billed_completion_tokens"],
            reasoning_tokens=stats["billed_reasoning_tokens"],
            cached_prompt_tokens=stats["billed_cached_prompt_tokens"],
            thinking_completion_tokens=stats["billed_completion_tokens"],
        ),
    )
    return [
        *(
            Figure(
                f"13 reasoning job, {rows:,} rows: {what} tokens batchrun totalled = the simulator's bill",
                "equal",
                f"{mine:,} = {billed:,}" if mine == billed else f"{mine:,} != {billed:,}",
                mine == billed and (billed > 0 or what == "prompt"),
            )
            for what, (mine, billed) in pairs.items()
        ),
        Figure(
            "13 reasoning job: cost batchrun reckons = the simulator's bill at the same prices",
            "equal",
            f"{ours:.6f} = {bill:.6f} CNY" if ours == bill else f"{ours} != {bill}",
            ours is not None and ours == bill,
        ),
        Figure(
            "13 reasoning job: share of completion tokens that were thinking",
            "",
            f"{usage['reasoning_tokens'] / max(1, usage['completion_tokens']):.0%}",
            None,
        ),
    ]
