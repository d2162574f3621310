"""One HTTP attempt, with every way it can go wrong turned into a `Reply` rather than an exception."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
import urllib.request
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

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
    """One pooled HTTP session per run, with its network settings applied to every request.

    The environment's proxy is resolved once per host, not by aiohttp's `trust_env` on every request (which
    costs more than all the rest of batchrun's work on a row)."""

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
        )
        self.network = network
        self._proxies: dict[str, tuple[str | None, dict[str, str] | None]] = {}

    def proxy_for(self, url: str) -> tuple[str | None, dict[str, str] | None]:
        """The proxy (and its credentials) for `url`'s host: provider.proxy, else the environment's, else none."""
        origin = url.split("/", 3)
        key = "/".join(origin[:3])
        found = self._proxies.get(key)
        if found is None:
            proxy = self.network.proxy or (env_proxy(url) if self.network.trust_env else None)
            found = _with_auth(proxy) if proxy else (None, None)
            self._proxies[key] = found
        return found

    def request(
        self, method: str, url: str, headers: Mapping[str, str], timeout: float, payload: bytes | None = None
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        proxy, proxy_headers = self.proxy_for(url)
        if proxy_headers and url.startswith("http://"):  # no tunnel: the proxy reads them off the request itself
            headers, proxy_headers = {**headers, **proxy_headers}, None
        return self.session.request(
            method,
            url,
            data=payload,
            headers=headers,
            proxy=proxy,
            proxy_headers=proxy_headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self.session.close()


def env_proxy(url: str) -> str | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts its host: what
    the openai and zhipuai SDKs (httpx) and curl would use."""
    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all")


def _with_auth(proxy: str) -> tuple[str, dict[str, str] | None]:
    """A proxy URL's credentials as the Proxy-Authorization header aiohttp sends beside it."""
    parts = urlsplit(proxy)
    if not parts.username:
        return proxy, None
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return urlunsplit(parts._replace(netloc=netloc)), {"Proxy-Authorization": "Basic " + b64encode(pair).decode()}


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
