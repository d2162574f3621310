"""What a lane changes of the spec's defaults and rules: Ark's batch chat (`provider.mode: batch-chat`) waits long,
keeps many requests in flight and has a daily token quota; a Batch API's price share may be the user's to say.

Validators of single fields of `model`, as `checks` holds (kept apart so that neither grows past a screen's worth).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationInfo

from .base import LeftOut, Reading, fail, fail_line, reading

BATCH_CHAT = "batch-chat"
# Ark's batch chat answers within hours, not seconds: its SDK retries a request until its read timeout, and Ark's
# guide sets that to a day. A shorter wait would send a row again while the first request is still queued there
# (and may yet be answered and billed).
BATCH_CHAT_TIMEOUT_S = 86_400.0
# Ark's guide advises thousands of requests in flight, since each waits in Ark's queue rather than on a GPU. 1,000
# keeps the queue full at a few requests a second answered, and within one machine's sockets and memory.
BATCH_CHAT_CONCURRENCY = 1_000
# Ark's default batch quota: 10 billion tokens a day per model (its 2025-06 guide; a 2024 page said 1.3 billion).
BATCH_CHAT_TPD = 10_000_000_000.0
ONLINE_TIMEOUT_S = 120.0


def tpd(value: Any, info: ValidationInfo) -> Any:
    """Tokens a day per model: Ark's batch-chat quota (the spec's, or Ark's default); no other lane counts it."""
    spec = reading(info)
    if spec is None:
        return None if isinstance(value, LeftOut) else value
    if spec.mode != BATCH_CHAT:
        if not isinstance(value, LeftOut):
            fail_line("limits.tpd applies to provider.mode: batch-chat only (Ark's daily batch token quota)")
        return None
    return BATCH_CHAT_TPD if isinstance(value, LeftOut) else value


def timeout(value: Any, info: ValidationInfo) -> Any:
    """Seconds to wait for an answer: the spec's; left out, a day for batch chat, else two minutes."""
    spec = reading(info)
    if not isinstance(value, LeftOut):
        return value
    return BATCH_CHAT_TIMEOUT_S if spec is not None and spec.mode == BATCH_CHAT else ONLINE_TIMEOUT_S


def batch_price_share(value: float | None, info: ValidationInfo) -> float | None:
    """A Batch API's price share the user states (the preset's may be unverified): batch lanes only."""
    if value is not None and reading(info) is not None and info.data.get("mode") not in ("batch", BATCH_CHAT):
        fail("applies to provider.mode: batch or batch-chat only")
    return value


def endpoint_fits(mode: str, endpoint: str) -> None:
    """Ark's batch chat takes chat completions only."""
    if mode == BATCH_CHAT and endpoint != "chat":
        fail_line("provider.mode batch-chat sends chat completions only: use endpoint: chat")


def batch_mode(data: Any, spec: Reading) -> Any:
    """`batch:` settles how files and batches go: the files-and-batches lane only."""
    if spec.mode != "batch":
        fail_line("batch: applies to provider.mode: batch only")
    return data
