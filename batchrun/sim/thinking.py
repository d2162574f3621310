"""What a reasoning model and a provider's prompt cache add to the simulated provider's answers, as each provider
it `speaks` reports them: pure functions of the request, and a prompt cache that remembers what it has seen.

A request that asks for thinking (in any provider's words: `thinking: {type}`, `enable_thinking`,
`reasoning_effort`, vLLM's `chat_template_kwargs`) is answered with `reasoning_content` beside the content and
`usage.completion_tokens_details.reasoning_tokens`, counted in completion_tokens (billed as output). max_tokens
caps the chain of thought and the answer together, except speaking SiliconFlow, where it caps the answer only.
The prompt cache counts, per model, the prompt prefixes it has seen in 64-token blocks: a later prompt's blocks
that repeat one seen are hits, reported in the spoken provider's fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from ..rows.tokens import estimate_tokens, max_output_tokens

BLOCK_TOKENS = 64
EFFORT_STEPS = {"minimal": 1, "low": 1, "medium": 2, "high": 3, "xhigh": 4, "max": 4}


def asks_thinking(body: Mapping[str, Any]) -> bool:
    """Whether the request asks the model to think, in any provider's words (an explicit off wins)."""
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, Mapping) else None
    template = body.get("chat_template_kwargs")
    enable = template.get("enable_thinking") if isinstance(template, Mapping) else None
    effort = body.get("reasoning_effort")
    switches = (
        None if kind is None else kind != "disabled",
        body.get("enable_thinking") if isinstance(body.get("enable_thinking"), bool) else None,
        enable if isinstance(enable, bool) else None,
        None if not isinstance(effort, str) else effort != "none",
    )
    said = [s for s in switches if s is not None]
    return bool(said) and all(said)


def chain_of_thought(key: bytes, effort: Any, cap: int) -> str:
    """A deterministic chain of thought of the prompt: longer the harder the effort, cut to `cap` tokens."""
    steps = (3 + key[0] % 5) * EFFORT_STEPS.get(effort if isinstance(effort, str) else "medium", 2)
    text = "Let me think step by step. " + " ".join(
        f"Step {i}: weigh the question #{key.hex()[:6]}." for i in range(steps)
    )
    while estimate_tokens(text) > cap and text:
        text = text[: max(0, len(text) * cap // estimate_tokens(text) - 1)]
    return text


def add_thinking(answer: dict[str, Any], body: Mapping[str, Any], key: bytes, speaks: str) -> int:
    """Give a chat answer that was asked to think its chain of thought; the reasoning tokens added to usage."""
    if not asks_thinking(body) or not all("message" in c for c in answer["choices"]):
        return 0
    usage = answer["usage"]
    choices = answer["choices"]
    budget = body.get("thinking_budget")
    cap = budget if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 else 1 << 20
    if speaks != "siliconflow":  # max_tokens caps thought and answer together
        each = usage.get("completion_tokens", 0) // max(1, len(choices))
        cap = min(cap, max(0, max_output_tokens(body) - each))
    added = 0
    for choice in choices:
        thought = chain_of_thought(key, body.get("reasoning_effort"), cap)
        if thought:
            choice["message"]["reasoning_content"] = thought
            added += estimate_tokens(thought)
    usage["completion_tokens"] = usage.get("completion_tokens", 0) + added
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage["completion_tokens_details"] = {"reasoning_tokens": added}
    return added


def prefix_digests(text: str) -> list[bytes]:
    """The digests of the text's prefixes that end a 64-token block (a CJK character a token, ASCII four a
    token, as the simulator's token estimate counts them)."""
    if len(text) < BLOCK_TOKENS:
        return []
    digests, h, weight, start = [], hashlib.blake2b(digest_size=8), 0.0, 0
    for i, ch in enumerate(text):
        weight += 0.25 if ch < "\x80" else 1.0
        if weight >= BLOCK_TOKENS:
            h.update(text[start : i + 1].encode())
            digests.append(h.copy().digest())
            weight, start = weight - BLOCK_TOKENS, i + 1
    return digests


class PromptCache:
    """Per model, the prompt prefixes seen (in 64-token blocks): a repeat's shared prefix is a hit."""

    def __init__(self) -> None:
        self.seen: dict[str, set[bytes]] = {}

    def hits(self, kind: str, body: Mapping[str, Any], prompt_tokens: int) -> int:
        """The prompt tokens this request's prefix shares with earlier ones of its model; then it is seen too."""
        if kind == "embeddings":
            return 0
        prompt = body.get("messages") if kind == "chat" else body.get("prompt")
        text = orjson.dumps(prompt).decode() if not isinstance(prompt, str) else prompt
        digests = prefix_digests(text)
        if not digests:
            return 0
        seen = self.seen.setdefault(str(body.get("model")), set())
        blocks = next((i for i, d in enumerate(digests) if d not in seen), len(digests))
        seen.update(digests)
        return min(prompt_tokens, blocks * BLOCK_TOKENS)


def report_cached(usage: dict[str, Any], hits: int, speaks: str) -> None:
    """The cache hits in the spoken provider's usage field(s)."""
    if speaks == "deepseek":
        usage["prompt_cache_hit_tokens"] = hits
        usage["prompt_cache_miss_tokens"] = usage["prompt_tokens"] - hits
        return
    if speaks == "moonshot":
        usage["cached_tokens"] = hits
    usage["prompt_tokens_details"] = {"cached_tokens": hits}


def reasoning_words(body: Mapping[str, Any]) -> list[str]:
    """The reasoning controls a request carried, as `key=value` (the stats count them: what a client said)."""
    out = []
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping):
        out += [f"thinking.{k}={_word(v)}" for k, v in thinking.items()]
    template = body.get("chat_template_kwargs")
    if isinstance(template, Mapping) and "enable_thinking" in template:
        out.append(f"chat_template_kwargs.enable_thinking={_word(template['enable_thinking'])}")
    out += [f"{k}={_word(body[k])}" for k in ("enable_thinking", "thinking_budget", "reasoning_effort") if k in body]
    return out


def _word(value: Any) -> str:
    return orjson.dumps(value).decode().strip('"')
