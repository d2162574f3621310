"""`input.fetch_images: true`: an image URL fetched here, when its row is sent, and its bytes sent in its place (for
a provider that cannot reach the URL, or takes no URLs). The fetch goes through the run's own HTTP session, so the
run's proxy and TLS settings apply; a fetch that fails is an attempt that failed (retried as the row is, then the
row's failure record names the URL and why).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import aiohttp
import orjson

from ..providers.transport import NO_HEADERS, Http, Reply
from ..rows.images import ImageReader
from ..rows.render import RowProblem
from ..rows.request import Request

FETCH_FAILED = "image_fetch_failed"


async def with_fetched(request: Request, http: Http, reader: ImageReader, timeout: float) -> Request | Reply:
    """`request` with each URL it fetches replaced by the image's data URL; or, when one cannot be had, the Reply
    of an attempt that got no answer, naming the URL and the reason."""
    start = time.monotonic()
    payload = request.payload
    for url in request.fetch:
        problem: str | None = None
        try:
            async with http.request("GET", url, {}, timeout) as resp:
                data = await resp.read()
                if resp.status != 200:
                    problem = f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            problem = f"no answer in {timeout:g} s"
        except aiohttp.ClientError as exc:
            problem = str(exc) or type(exc).__name__
        if problem is None:
            try:
                _, data_url, _ = reader.encoded(url, data, reader.rules(request.model))
            except RowProblem as exc:
                problem = str(exc)
            else:
                quoted = b'"url":' + orjson.dumps(url)
                payload = payload.replace(quoted, b'"url":' + orjson.dumps(data_url), 1)
                continue
        error = f"{FETCH_FAILED} (image {url!r} could not be fetched: {problem})"
        return Reply(None, NO_HEADERS, None, time.monotonic() - start, error)
    return replace(request, payload=payload, fetch=())


class Fetcher:
    """What a lane calls before sending a request: the images it fetches put in (nothing to do for most jobs)."""

    def __init__(self, reader: ImageReader | None) -> None:
        self.reader = reader

    async def ready(self, request: Request, http: Http, timeout: float) -> Request | Reply:
        if not request.fetch or self.reader is None:
            return request
        return await with_fetched(request, http, self.reader, timeout)
