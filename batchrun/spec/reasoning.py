"""The job's `reasoning:` block in each provider's own words: one table, one row per preset.

A reasoning model is told whether to think, how hard, and how long, in words that differ by provider (DeepSeek's
`thinking: {type}` and `reasoning_effort`, DashScope's `enable_thinking` and `thinking_budget`, OpenAI's
`reasoning_effort` alone, vLLM's chat template switch). The spec says it once; `reasoning_params` writes it into
the request, and `reasoning_problem` says, when the spec is read, what a provider cannot honour. Sources:
docs/job-spec.md (the translation table) and the 2026 provider reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import ValidationInfo

from .base import fail, fail_line, kind, reading

if TYPE_CHECKING:
    from .model import ReasoningSpec

Effort = Literal["low", "medium", "high", "max"]
EFFORTS: tuple[Effort, ...] = ("low", "medium", "high", "max")
ThinkingWords = Literal["type", "enable", "template", "effort"]
# Reserved on top of max_tokens for the chain of thought where max_tokens does not cap it (SiliconFlow) and the
# spec sets no reasoning.budget_tokens: SiliconFlow's documented default thinking_budget.
DEFAULT_THINKING_RESERVE = 4096


@dataclass(frozen=True)
class Words:
    """How one provider is told to reason. `thinking`: how on/off is said (None: it cannot be): `type` is
    `thinking: {type: enabled|disabled}`, `enable` `enable_thinking: bool`, `template` vLLM's
    `chat_template_kwargs: {enable_thinking: bool}`, `effort` OpenAI's (off is `reasoning_effort: none`)."""

    title: str
    thinking: ThinkingWords | None = None
    auto: bool = False  # thinking: auto is a value it takes (Ark)
    efforts: Mapping[str, str] | None = None  # reasoning.effort -> its reasoning_effort; None: not offered
    budget: tuple[int, int] | None = None  # thinking_budget's bounds; None: not offered
    # max_tokens caps the answer only, not the chain of thought: the TPM reservation and a budget's worst case
    # add budget_tokens (or DEFAULT_THINKING_RESERVE) to it
    max_tokens_excludes_reasoning: bool = False
    takes_every_form: bool = False  # the simulated provider: every provider's words at once


SAME: dict[str, str] = {e: e for e in EFFORTS}
ANY_BUDGET = (1, 1_000_000)
WORDS: dict[str, Words] = {
    "openai": Words("OpenAI", thinking="effort", efforts=SAME),
    "deepseek": Words(
        "DeepSeek", thinking="type", efforts={"low": "high", "medium": "high", "high": "high", "max": "max"}
    ),
    "zhipu": Words("Zhipu GLM", thinking="type"),
    "ark": Words(
        "Volcengine Ark (Doubao)",
        thinking="type",
        auto=True,
        efforts={"low": "low", "medium": "medium", "high": "high"},
    ),
    "moonshot": Words("Moonshot Kimi", thinking="type"),
    "dashscope": Words("Alibaba DashScope (Qwen)", thinking="enable", budget=ANY_BUDGET),
    "siliconflow": Words("SiliconFlow", thinking="enable", budget=(128, 32_768), max_tokens_excludes_reasoning=True),
    "vllm": Words("self-hosted vLLM / SGLang", thinking="template"),
    "simulated": Words(
        "batchrun's simulated provider",
        thinking="type",
        auto=True,
        efforts=SAME,
        budget=ANY_BUDGET,
        takes_every_form=True,
    ),
}


def words(provider: str) -> Words:
    """The provider's words; a preset without a reasoning control in batchrun has none of them."""
    return WORDS.get(provider) or Words(provider)


def takes(w: Words) -> str:
    """What of the block a provider takes, for the end of an error: `it takes thinking: true or false, effort: high`."""
    parts = []
    if w.thinking is not None:
        parts.append("thinking: true, false or auto" if w.auto else "thinking: true or false")
    if w.efforts is not None:
        parts.append(f"effort: {', '.join(w.efforts)}")
    if w.budget is not None:
        parts.append(f"budget_tokens: {w.budget[0]:,} to {w.budget[1]:,}")
    return f"it takes {'; '.join(parts)}"


def reasoning_problem(
    provider: str, title: str, thinking: bool | str | None, effort: str | None, budget: int | None
) -> str | None:
    """What of the block `provider` cannot honour, as the spec error's line (the key first); None: all of it."""
    w = words(provider)
    off = "with reasoning.thinking: false, which asks for no reasoning: leave one out"
    if thinking is False and effort is not None:
        return f"reasoning.effort is set {off}"
    if thinking is False and budget is not None:
        return f"reasoning.budget_tokens is set {off}"
    what = f"({takes(w)})" if w.thinking is not None else "(set the model's own parameter under params: instead)"
    if thinking is not None and (w.thinking is None or (thinking == "auto" and not w.auto)):
        value = "auto" if thinking == "auto" else str(thinking).lower()
        return f"reasoning.thinking: {value} is not offered by {title} {what}"
    if effort is not None and w.efforts is None:
        return f"reasoning.effort is not offered by {title} {what}"
    if effort is not None and w.efforts is not None and effort not in w.efforts:
        return f"reasoning.effort: {effort} is not offered by {title} {what}"
    if budget is not None and w.budget is None:
        return f"reasoning.budget_tokens is not offered by {title} {what}"
    if budget is not None and w.budget is not None and not w.budget[0] <= budget <= w.budget[1]:
        return f"reasoning.budget_tokens must be {w.budget[0]:,} to {w.budget[1]:,} for {title}, got {budget:,}"
    return None


def reasoning_params(
    provider: str, thinking: bool | str | None, effort: str | None, budget: int | None
) -> dict[str, Any]:
    """The request parameters that say the block in the provider's words (checked by `reasoning_problem`)."""
    w = words(provider)
    out: dict[str, Any] = {}
    if thinking is not None:
        on = "auto" if thinking == "auto" else "enabled" if thinking else "disabled"
        if w.thinking == "type":
            out["thinking"] = {"type": on}
        elif w.thinking == "enable":
            out["enable_thinking"] = bool(thinking)
        elif w.thinking == "template":
            out["chat_template_kwargs"] = {"enable_thinking": bool(thinking)}
        elif w.thinking == "effort" and thinking is False:
            out["reasoning_effort"] = "none"  # OpenAI's models that think by default (gpt-5.1 on) stop
    if effort is not None and w.efforts is not None:
        out["reasoning_effort"] = w.efforts[effort]
    if budget is not None and w.budget is not None:
        out["thinking_budget"] = budget
    return out


def thinking_reserve(provider: str, thinking: bool | str | None, budget: int | None, speaks: str | None = None) -> int:
    """Tokens reserved beyond max_tokens for a chain of thought max_tokens does not cap (0 where it does); the
    simulated provider answers as the provider it `speaks` does."""
    if provider == "simulated" and speaks is not None:
        provider = speaks
    if not words(provider).max_tokens_excludes_reasoning or thinking is False:
        return 0
    return budget or DEFAULT_THINKING_RESERVE


def conflicts(params: Mapping[str, Any], added: Mapping[str, Any], at: str = "") -> list[str]:
    """Keys both `params:` and the block set (nested: `thinking.type`); a mapping in both is merged below."""
    found = []
    for key, value in added.items():
        if key not in params:
            continue
        if isinstance(value, Mapping) and isinstance(params[key], Mapping):
            found += conflicts(params[key], value, f"{at}{key}.")
        else:
            found.append(f"{at}{key}")
    return found


def merged(params: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """`params:` with the block's parameters added (no key in both: `conflicts` said so when the spec was read)."""
    out = dict(params)
    for key, value in added.items():
        mine = out.get(key)
        out[key] = merged(mine, value) if isinstance(mine, Mapping) and isinstance(value, Mapping) else value
    return out


def reasoning_fits(value: ReasoningSpec | None, info: ValidationInfo) -> ReasoningSpec | None:
    """The block, checked against the provider (what it can honour) and `params:` (no key set twice)."""
    spec = reading(info)
    provider = info.data.get("provider")
    if value is None or spec is None or spec.preset is None or provider is None:
        return value
    problem = reasoning_problem(provider.name, spec.preset.title, value.thinking, value.effort, value.budget_tokens)
    if problem is not None:
        fail_line(problem)
    if spec.endpoint != "chat":
        fail_line(f"reasoning: applies to chat models only, and this job's endpoint is {spec.endpoint}: leave it out")
    added = reasoning_params(provider.name, value.thinking, value.effort, value.budget_tokens)
    both = conflicts(spec.params or {}, added)
    if both:
        fail_line(
            f"params.{both[0]} and reasoning: both set it ({provider.name} is told reasoning: as "
            f"{_json(added)}): keep one"
        )
    return value


def _json(value: Mapping[str, Any]) -> str:
    return orjson.dumps(value).decode()


def thinking_value(value: Any) -> Any:
    """`reasoning.thinking`: true, false or auto, and nothing else (said in one line, not per type tried)."""
    if value is True or value is False or value == "auto" or value is None:
        return value
    said = {"enabled": "true", "enable": "true", "disabled": "false", "disable": "false"}.get(str(value).lower())
    fail(f"must be true, false or auto, got {kind(value)}" + (f": did you mean {said}?" if said else ""))
