"""One HTTP attempt, with every way it can go wrong turned into a `Reply` rather than an exception."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class Network:
    """How requests reach the provider, as the openai and zhipuai SDKs do it: the environment's proxies
    (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) and CA bundle (SSL_CERT_FILE) unless the spec names its own."""

    proxy: str | None = None  # provider.proxy: every request through it, whatever the environment says
    ca_bundle: Path | None = None  # provider.ca_bundle: the CAs to trust instead of the system's
    trust_env: bool = True  # False for the in-process simulator: a loopback server is never proxied


class Http:
    """One pooled HTTP session per run, with its network settings applied to every request."""

    def __init__(self, concurrency: int, network: Network) -> None:
        tls: dict[str, Any] = {}
        # aiohttp builds its default context once, at import: SSL_CERT_FILE is read here so that it always counts.
        cafile = network.ca_bundle or (os.environ.get("SSL_CERT_FILE") if network.trust_env else None)
        if cafile:
            tls["ssl"] = ssl.create_default_context(cafile=str(cafile))
        connector = aiohttp.TCPConnector(
            limit=max(1, concurrency), limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True, **tls
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            json_serialize=lambda o: orjson.dumps(o).decode(),
            auto_decompress=True,
            raise_for_status=False,
            trust_env=network.trust_env,
        )
        self.proxy = network.proxy

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, headers: Mapping[str, str], timeout: float, payload: bytes | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self.session.request(
            method,
            url,
            data=payload,
            headers=headers,
            proxy=self.proxy,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            yield resp

    async def close(self) -> None:
        await self.session.close()


async def fetch_json(
    http: Http,
    method: str,
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    payload: bytes | None = None,
) -> Reply:
    start = time.monotonic()
    try:
        async with http.request(method, url, headers, timeout, payload) as resp:
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
