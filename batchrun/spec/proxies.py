"""Which proxy a request goes through, and whether that setting can be used at all.

No network and no aiohttp here, so that the plain-http refusal (job.py) judges the very route the transport
(transport.py) takes, and a proxy URL that cannot work is a spec error before anything is sent.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import SpecError

SCHEMES = ("http", "https")  # what aiohttp can speak to: no socks5://, no scheme-less host:port


@dataclass(frozen=True)
class Route:
    """A proxy a request goes through, and the setting that named it (for messages that say what to change)."""

    url: str  # as given, credentials and all: only the transport reads this
    source: str  # "provider.proxy", or the environment variable (HTTPS_PROXY, http_proxy, ALL_PROXY, ...)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def shown(self) -> str:
        """The URL without its credentials: what a message may print."""
        return without_credentials(self.url)

    @property
    def has_credentials(self) -> bool:
        return bool(urlsplit(self.url).username)

    @property
    def from_env(self) -> bool:
        return self.source != "provider.proxy"


def route(url: str, configured: str | None, trust_env: bool) -> Route | None:
    """The proxy `url` goes through (None: straight to its host): provider.proxy, else the environment's unless
    NO_PROXY exempts the host. `trust_env=False` is the in-process simulator, which is never proxied. A setting
    that cannot work is a SpecError naming it, never a failure per row or a traceback."""
    if not trust_env:
        return None
    if configured:
        found = Route(configured, "provider.proxy")
    else:
        env = env_route(url)
        if env is None:
            return None
        found = env
    problem = proxy_problem(found.url)
    if problem is not None:
        shown = without_credentials(found.url)
        if found.from_env:
            raise SpecError(
                f"the environment variable {found.source}={shown!r} is not a proxy batchrun can use ({problem}): set "
                f"it to http://host:port (http://user:pass@host:port when the proxy wants credentials), or unset it"
            )
        raise SpecError(f"provider.proxy {shown!r} is not a proxy batchrun can use ({problem})")
    return found


def env_route(url: str) -> Route | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts its host: what
    the openai and zhipuai SDKs (httpx) and curl would use, read as urllib reads it (the lowercase name wins)."""
    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies_environment()
    for kind in (parts.scheme, "all"):
        value = proxies.get(kind)
        if value:
            return Route(value, _variable(kind, value))
    return None


def _variable(kind: str, value: str) -> str:
    """The name of the variable that holds `value` for `kind` ("https", "all"), as the user spelled it."""
    wanted = f"{kind}_proxy"
    names = [name for name, held in os.environ.items() if name.lower() == wanted and held == value]
    return min(names, key=lambda name: name != wanted) if names else wanted.upper()


def proxy_problem(url: str) -> str | None:
    """Why `url` cannot be used as a proxy URL (None: it can), in words that never hold its credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range", a port that is no number
        return str(exc) or "not a URL"
    if parts.scheme not in SCHEMES:
        if not parts.scheme or "//" not in url:
            return "no http:// or https:// in front"
        return f"a {parts.scheme}:// proxy, and only http:// and https:// proxies are supported"
    if not parts.hostname:
        return "no host in it"
    if port == 0:
        return "port 0"
    return None


def without_credentials(url: str) -> str:
    """`url` with any user:password@ replaced by ***@; works on a URL too malformed to parse."""
    at = url.rfind("@")
    if at < 0:
        return url
    scheme_end = url.find("://")
    start = scheme_end + 3 if 0 <= scheme_end < at else 0
    return url[:start] + "***" + url[at:]
