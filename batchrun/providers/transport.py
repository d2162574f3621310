"""One HTTP attempt, with every way it can go wrong turned into a `Reply` rather than an exception."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import orjson

from ..spec.proxies import Route, env_route, route

NO_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int | None  # None: no HTTP answer (timeout, dropped connection)
    headers: Mapping[str, str]  # case-insensitive when it came from aiohttp
    body: Any  # parsed JSON, or the raw bytes when the body was not JSON
    elapsed: float
    error: str | None = None  # what went wrong on the wire, when status is None
    queued: float = 0.0  # of elapsed, the time the provider held the request queued (keep-alives) before answering

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
    trust_env: bool = True  # False for the in-process simulator: never proxied, not even by provider.proxy


class ProxyError(aiohttp.ClientConnectionError):
    """The proxy, not the provider, failed the request: refused or unknown (`proxy_unreachable`), wants
    credentials (`proxy_auth_required`), or would not open the tunnel (`proxy_error`). The message names the
    proxy and the setting it came from, never its credentials; retry.py reads it off the Reply's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        self._routes: dict[str, tuple[Route | None, str | None, dict[str, str] | None]] = {}

    def _resolved(self, url: str) -> tuple[Route | None, str | None, dict[str, str] | None]:
        """The route for `url`'s host, and the proxy URL and Proxy-Authorization aiohttp is given for it."""
        origin = url.split("/", 3)
        key = "/".join(origin[:3])
        found = self._routes.get(key)
        if found is None:
            via = route(url, self.network.proxy, self.network.trust_env)  # a SpecError for a proxy that cannot work
            found = (via, *_with_auth(via.url)) if via else (None, None, None)
            self._routes[key] = found
        return found

    def route_for(self, url: str) -> Route | None:
        """The proxy `url`'s requests go through, and the setting that named it (None: straight there)."""
        return self._resolved(url)[0]

    def proxy_args(self, url: str, headers: Mapping[str, str]) -> dict[str, Any]:
        """`headers`, `proxy` and `proxy_headers` for a request to `url` on `session`. aiohttp sends proxy_headers
        only with a CONNECT: to a plain http:// request the proxy's credentials are added as ordinary headers."""
        _, proxy, proxy_headers = self._resolved(url)
        if proxy_headers and url.startswith("http://"):  # no tunnel: the proxy reads them off the request itself
            headers, proxy_headers = {**headers, **proxy_headers}, None
        return {"headers": headers, "proxy": proxy, "proxy_headers": proxy_headers}

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        timeout: float,
        payload: bytes | None = None,
        queue_s: float = 0.0,
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """`queue_s`: how long more the provider may hold the request queued, sending keep-alives meanwhile: the
        total allowed grows by it, and `timeout` also bounds each silence (a keep-alive resets it), so a queue
        that has gone quiet is still found out in `timeout`."""
        limit = aiohttp.ClientTimeout(total=timeout + queue_s, sock_read=timeout if queue_s else None)
        sent = self.session.request(method, url, data=payload, timeout=limit, **self.proxy_args(url, headers))
        return self.proxied(url, sent)

    def proxied(
        self, url: str, sent: contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """`sent`, a request to `url` made on `session` (with `proxy_args`), the proxy's own failures raised as a
        ProxyError that names it."""
        via = self.route_for(url)
        return sent if via is None else _through(via, url, sent)

    async def close(self) -> None:
        await self.session.close()


def env_proxy(url: str) -> str | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts its host: what
    the openai and zhipuai SDKs (httpx) and curl would use."""
    found = env_route(url)
    return found.url if found else None


@contextlib.asynccontextmanager
async def _through(
    via: Route, url: str, sent: contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]
) -> AsyncIterator[aiohttp.ClientResponse]:
    """`sent`, a request through the proxy `via`, with the proxy's own failures raised as a ProxyError that
    names it: as told apart from the provider's, they stop a run instead of failing every row."""
    try:
        async with sent as resp:
            if resp.status == 407:  # only a proxy says 407; to a plain http:// request it answers itself
                raise ProxyError("proxy_auth_required", _auth_wanted(via, url, "a plain http:// request"))
            yield resp
    except ProxyError:
        raise
    except aiohttp.ClientError as exc:
        failure = proxy_failure(exc, via, url)
        if failure is None:
            raise
        raise failure from exc


def proxy_failure(exc: BaseException, via: Route | None = None, url: str = "") -> ProxyError | None:
    """`exc` as a ProxyError when the proxy caused it (None: it did not). Without `via` (a request made on the
    session directly) the proxy is named by what aiohttp's exception knows of it."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # its answer to CONNECT, for an https:// URL
        if exc.status == 407:
            return ProxyError("proxy_auth_required", _auth_wanted(via, url, "CONNECT"))
        return ProxyError("proxy_error", f"the proxy {_named(via)} answered HTTP {exc.status} {exc.message} to CONNECT")
    # Through a proxy, the proxy is the only host connected to; a TLS error is the provider's, inside the tunnel.
    proxied = via is not None or isinstance(exc, aiohttp.ClientProxyConnectionError)
    if proxied and isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError):
        where = _named(via) if via is not None else f"{exc.host}:{exc.port}"
        return ProxyError("proxy_unreachable", f"cannot connect to the proxy {where}: {_reason(exc.os_error)}")
    return None


def _named(via: Route | None) -> str:
    return f"{via.shown} (from {via.source})" if via is not None else "(from HTTPS_PROXY / HTTP_PROXY)"


def _auth_wanted(via: Route | None, url: str, what: str) -> str:
    """A 407: the credentials to give, and where (the environment's proxy URL; never the spec)."""
    head = f"HTTP 407 from the proxy {_named(via)} to {what}"
    if via is not None and via.has_credentials:
        return f"{head}: it refused the credentials in {via.source}; check the user and password there"
    variable = via.source if via is not None and via.from_env else f"{urlsplit(url).scheme.upper() or 'HTTPS'}_PROXY"
    leave = " (and leave provider.proxy out)" if via is not None and not via.from_env else ""
    return (
        f"{head}: it wants credentials; set {variable}=http://user:pass@host:port in the environment{leave}, "
        "never in the spec"
    )


def _reason(error: OSError) -> str:
    """`Connection refused`, `Name or service not known`: the OS's words for why a connection failed."""
    number = error.errno
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    return error.strerror or str(error) or type(error).__name__


def _with_auth(proxy: str) -> tuple[str, dict[str, str] | None]:
    """A proxy URL's credentials as the Proxy-Authorization header aiohttp sends beside it."""
    parts = urlsplit(proxy)
    if not parts.username:
        return proxy, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
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
    queue_s: float = 0.0,
) -> Reply:
    start = time.monotonic()
    queued = 0.0
    try:
        async with http.request(method, url, headers, timeout, payload, queue_s) as resp:
            if queue_s:
                raw, queued = await read_queued(resp.content, start)
            else:
                raw = await resp.read()
            status, resp_headers = resp.status, resp.headers
    except NO_ANSWER as exc:
        return no_answer(exc, start)
    return Reply(status, resp_headers, parse_body(raw), time.monotonic() - start, queued=queued)


async def read_queued(content: aiohttp.StreamReader, start: float) -> tuple[bytes, float]:
    """A body whose provider may first hold the request queued, sending blank lines to keep the connection open
    (DeepSeek): the body, and the seconds until the last of those before it (the wait, not the provider's work).
    JSON allows the leading whitespace, so the body parses as it is."""
    parts: list[bytes] = []
    queued, begun = 0.0, False
    async for chunk in content.iter_any():
        if not begun:
            if chunk.strip():
                begun = True
            else:
                queued = time.monotonic() - start
        parts.append(chunk)
    return b"".join(parts), queued


NO_ANSWER = (asyncio.TimeoutError, aiohttp.ClientError)


def no_answer(exc: BaseException, start: float) -> Reply:
    """A timeout or a dropped connection, as the Reply that retry.classify retries; a proxy's failure as one
    that retry.py tells apart (its code, then what the proxy did)."""
    failure = proxy_failure(exc)
    if failure is not None:
        error = f"{failure.code} ({failure})"
    elif isinstance(exc, asyncio.TimeoutError):
        error = "timeout"
    else:
        error = f"connection_error ({type(exc).__name__})"
    return Reply(None, NO_HEADERS, None, time.monotonic() - start, error)


def parse_body(raw: bytes) -> Any:
    """JSON when it is JSON; otherwise the bytes, for the error message (HTML error pages, say)."""
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw
