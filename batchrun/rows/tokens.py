"""The token estimate the TPM limiter charges for a request, without a tokenizer: rough on purpose, and corrected
once a provider's answer says what it counted. Apart from building requests (`request`) because the simulated
provider charges its TPM by the same estimate, and needs nothing else of a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Output tokens charged to the TPM budget when neither the spec nor the row sets max_tokens.
DEFAULT_MAX_OUTPUT_TOKENS = 512
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """Rough token count without a tokenizer: ~1 token per CJK character, ~4 ASCII characters per token."""
    chars = len(text)
    if not chars:
        return 0
    wide = (len(text.encode("utf-8")) - chars) // 2  # 3-byte UTF-8 characters (CJK) add two bytes each
    return wide + (chars - wide + 3) // 4


def estimate_input(value: Any) -> int:
    """Tokens of a prompt or embeddings input: text, a list of texts, token ids, or lists of token ids."""
    if isinstance(value, str):
        return estimate_tokens(value)
    if isinstance(value, list):
        return sum(1 if isinstance(v, int) else estimate_input(v) for v in value)
    return 0


def estimate_messages(messages: list[Any]) -> int:
    total = 3
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += estimate_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += estimate_tokens(part["text"])
    return total


def max_output_tokens(body: Mapping[str, Any]) -> int:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_MAX_OUTPUT_TOKENS
