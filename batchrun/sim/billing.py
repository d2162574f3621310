"""What the simulated provider answers a request it let in, and what it bills for it: no HTTP here.

Each prompt is known by its digest, so its attempts and its bills belong together however many times it is sent
(the stats' `billed_twice` is what a client's resume or retry cost). Answers are deterministic from the prompt;
only the share of spoilt JSON answers (`invalid_json_rate`) draws from the simulator's random source.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..rows.tokens import estimate_messages, estimate_tokens, max_output_tokens
from .answers import (
    DIRECTIVE,
    SPOILS,
    add_logprobs,
    apply_answer_quirks,
    call_tools,
    choice_count,
    completion_answer,
    embeddings_answer,
    error_body,
    prompt_texts,
    structured_content,
)
from .thinking import PromptCache, add_thinking, reasoning_words, report_cached


@dataclass(frozen=True, slots=True)
class Call:
    """A request the simulator accepted: what answering it needs."""

    kind: str  # chat | completions | embeddings
    body: dict[str, Any]
    texts: list[str]  # the prompt's texts: message contents (the last user message last), prompts, or inputs
    key: bytes  # the prompt's digest: which attempts and bills belong together
    attempt: int
    directives: dict[str, str]
    prompt_tokens: int
    request_id: str  # this request's own, fixed when it arrived


def prompt_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def directives_of(text: str) -> dict[str, str]:
    """The `#sim:name=value` quirks a prompt asks for."""
    return {name: value for name, value in DIRECTIVE.findall(text)}


def prompt_tokens(kind: str, body: dict[str, Any], texts: list[str]) -> int:
    return estimate_messages(body["messages"]) if kind == "chat" else sum(estimate_tokens(t) for t in texts)


def max_output(kind: str, body: dict[str, Any], texts: list[str]) -> int:
    """The most tokens the answer may take: what TPM counted on admission reserves."""
    if kind == "chat":
        return max_output_tokens(body)
    return max_output_tokens(body) * choice_count(body) * len(texts) if kind == "completions" else 0


class Billing:
    """Each prompt's attempts, the answers it got, and the tokens billed for them."""

    def __init__(self, rng: random.Random, invalid_json_rate: float = 0.0, speaks: str = "openai") -> None:
        self.rng, self.invalid_json_rate, self.speaks = rng, invalid_json_rate, speaks
        self.attempts: Counter[bytes] = Counter()
        self.billed: Counter[bytes] = Counter()
        self.billed_prompt_tokens = self.billed_completion_tokens = 0
        # of those: chains of thought (billed as output), and prompt tokens the prompt cache served
        self.billed_reasoning_tokens = self.billed_cached_prompt_tokens = 0
        self.prompt_cache = PromptCache()
        self.reasoning_asked: Counter[str] = Counter()  # the reasoning controls requests carried, `key=value`
        self.structured: Counter[str] = Counter()  # JSON asked for, repairs seen, answers spoilt, by kind
        self.max_tokens_asked: Counter[str] = Counter()  # of requests asking for JSON

    def stats(self) -> dict[str, Any]:
        """What it billed, for /_sim/stats: tests check a run's totals against these."""
        return {
            "billed_requests": sum(self.billed.values()),
            "billed_prompts": len(self.billed),
            "billed_twice": sum(1 for n in self.billed.values() if n > 1),
            "billed_prompt_tokens": self.billed_prompt_tokens,
            "billed_completion_tokens": self.billed_completion_tokens,
            "billed_reasoning_tokens": self.billed_reasoning_tokens,  # of the completion tokens
            "billed_cached_prompt_tokens": self.billed_cached_prompt_tokens,  # of the prompt tokens
            "reasoning_asked": dict(self.reasoning_asked),
            "structured": dict(self.structured),
            "max_tokens_asked": dict(self.max_tokens_asked),
        }

    def attempt(self, key: bytes) -> int:
        """Count one more attempt of a prompt; which it is (1 for the first)."""
        self.attempts[key] += 1
        return self.attempts[key]

    def answer(self, call: Call) -> dict[str, Any]:
        """The answer the prompt gets, billed; a client that has gone (killed, or timed out) is billed all the
        same, as providers do."""
        if call.kind == "embeddings":
            answer = embeddings_answer(call.body, call.texts, call.prompt_tokens)
        else:
            # chat answers the last user message; completions answer each prompt of a list, n times each
            prompts = call.texts if call.kind == "completions" else call.texts[-1:]
            text = call.kind == "completions"
            answer = completion_answer(call.body, prompts, call.key, call.prompt_tokens, text=text)
            apply_answer_quirks(answer, call.directives)
            if call.kind == "chat":
                self._structure(answer, call)
                call_tools(answer, call.body, call.key)  # a function the request makes the model call
                add_logprobs(answer, call.body, call.key)  # of the content as it ends up
                self.reasoning_asked.update(reasoning_words(call.body))
                self.billed_reasoning_tokens += add_thinking(answer, call.body, call.key, self.speaks)
            hits = self.prompt_cache.hits(call.kind, call.body, answer["usage"]["prompt_tokens"])
            report_cached(answer["usage"], hits, self.speaks)
            self.billed_cached_prompt_tokens += hits
        self.billed[call.key] += 1
        self.billed_prompt_tokens += answer["usage"]["prompt_tokens"]
        self.billed_completion_tokens += answer["usage"].get("completion_tokens", 0)
        return answer

    def batch_call(self, kind: str, body: dict[str, Any]) -> Call | tuple[int, dict[str, Any]]:
        """One line of a batch as the online endpoint takes it (no rate limit: a batch has none), or the error
        its `#sim:status` asks for."""
        texts = prompt_texts(kind, body) or [""]
        text = "\n".join(texts)
        directives = directives_of(text)
        if "status" in directives:
            status = int(float(directives["status"] or 400))
            return status, error_body(f"sim_{status}", f"simulated HTTP {status}")
        key = prompt_key(text)
        return Call(kind, body, texts, key, self.attempt(key), directives, prompt_tokens(kind, body, texts), "")

    def _structure(self, answer: dict[str, Any], call: Call) -> None:
        """Asked for JSON (a response_format, or a schema in the prompt): JSON that fits. A first answer may be
        spoilt, as models spoil them (the prompt's `#sim:json=bad|type|missing|cut|fence`, or `invalid_json_rate`
        of them at random); a repair (the conversation holds an assistant answer and what was wrong with it) and
        the same question asked again are answered right."""
        messages = call.body.get("messages") or []
        # a first answer only: not a repair, nor the same question asked again (with more max_tokens, say)
        repair = any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
        first = (call.attempt == 1 and not repair) or "stubborn" in call.directives
        spoil = call.directives.get("json") if first else None
        if spoil is None and first and self.invalid_json_rate and self.rng.random() < self.invalid_json_rate:
            spoil = SPOILS[self.rng.randrange(len(SPOILS))]
        made = structured_content(call.body, call.key, spoil)
        if made is None:
            return
        self.structured.update(["asked", *(["repairs"] if repair else []), *([f"spoilt_{spoil}"] if spoil else [])])
        self.max_tokens_asked[str(call.body.get("max_tokens"))] += 1
        content, finish = made
        completion = estimate_tokens(content)
        for choice in answer["choices"]:
            choice["message"]["content"], choice["finish_reason"] = content, finish
        usage = answer["usage"]
        usage["completion_tokens"] = completion * len(answer["choices"])
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
