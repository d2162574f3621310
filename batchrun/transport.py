"""One HTTP attempt, with every way it can go wrong turned into a `Reply` rather than an exception."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

NO_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int | None  # None: no HTTP answer (timeout, dropped connection)
    headers: Mapping[str, str]  # case-insensitive when it came from aiohttp
    body: Any  # parsed JSON, or the raw bytes when the body was not JSON
    elapsed: float
    error: str | None = None  # what went wrong on the wire, when status is None

    @property
    def request_id(self) -> str | None:
        rid = self.headers.get("x-request-id") or self.headers.get("request-id")
        if rid is None and isinstance(self.body, dict):
            value = self.body.get("request_id") or self.body.get("id")
            rid = str(value) if value is not None else None
        return rid


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """One pooled session per run; the connection cap follows the run's concurrency."""
    connector = aiohttp.TCPConnector(
        limit=max(1, concurrency), limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda o: orjson.dumps(o).decode(),
        auto_decompress=True,
        raise_for_status=False,
    )


async def fetch_json(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    payload: bytes | None = None,
) -> Reply:
    start = time.monotonic()
    try:
        async with http.request(
            method, url, data=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            raw = await resp.read()
            status, resp_headers = resp.status, resp.headers
    except NO_ANSWER as exc:
        return no_answer(exc, start)
    return Reply(status, resp_headers, parse_body(raw), time.monotonic() - start)


NO_ANSWER = (asyncio.TimeoutError, aiohttp.ClientError)


def no_answer(exc: BaseException, start: float) -> Reply:
    """A timeout or a dropped connection, as the Reply that retry.classify retries."""
    error = "timeout" if isinstance(exc, asyncio.TimeoutError) else f"connection_error ({type(exc).__name__})"
    return Reply(None, NO_HEADERS, None, time.monotonic() - start, error)


def parse_body(raw: bytes) -> Any:
    """JSON when it is JSON; otherwise the bytes, for the error message (HTML error pages, say)."""
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw
