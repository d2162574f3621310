"""`input.fetch_images: true`: an image URL fetched here, when its row is sent, and its bytes sent in its place (for
a provider that cannot reach the URL, or takes no URLs). The fetch goes through the run's own HTTP session, so the
run's proxy and TLS settings apply; a fetch that fails is an attempt that failed (retried as the row is, then the
row's failure record names the URL and why).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import aiohttp
import orjson

from ..providers.transport import NO_HEADERS, Http, Reply
from ..records import Record
from ..rows.images import ImageReader
from ..rows.render import RowProblem
from ..rows.request import Request

FETCH_FAILED = "image_fetch_failed"
MAX_FETCH_BYTES = 64 * 1024 * 1024  # more than any provider takes in one image: a larger answer is not read on


async def _body(resp: aiohttp.ClientResponse) -> bytes | None:
    """The answer's bytes, or None once they pass MAX_FETCH_BYTES (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1024 * 1024):
        size += len(chunk)
        if size > MAX_FETCH_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def with_fetched(
    request: Request, http: Http, reader: ImageReader, timeout: float
) -> tuple[Request, dict[str, dict[str, Any]]] | Reply:
    """`request` with each URL it fetches replaced by the image's data URL, and each URL's reference (its bytes and
    digest, as fetched); or, when one cannot be had, the Reply of an attempt that got no answer, naming the URL and
    the reason."""
    start = time.monotonic()
    payload = request.payload
    refs: dict[str, dict[str, Any]] = {}
    for url in request.fetch:
        problem: str | None = None
        try:
            async with http.request("GET", url, {}, timeout) as resp:
                if resp.status != 200:
                    problem = f"HTTP {resp.status}"
                elif (got := await _body(resp)) is None:
                    problem = f"more than {MAX_FETCH_BYTES:,} bytes"
                else:
                    data = got
        except asyncio.TimeoutError:
            problem = f"no answer in {timeout:g} s"
        except aiohttp.ClientError as exc:
            problem = str(exc) or type(exc).__name__
        if problem is None:
            try:
                ref, data_url, _ = reader.encoded(url, data, reader.rules(request.model))
            except RowProblem as exc:
                problem = str(exc)
            else:
                quoted = b'"url":' + orjson.dumps(url)
                payload = payload.replace(quoted, b'"url":' + orjson.dumps(data_url), 1)
                refs[url] = ref.record()
                continue
        error = f"{FETCH_FAILED} (image {url!r} could not be fetched: {problem})"
        return Reply(None, NO_HEADERS, None, time.monotonic() - start, error)
    return replace(request, payload=payload, fetch=()), refs


class Fetcher:
    """What a lane calls before sending a request: the images it fetches put in (nothing to do for most jobs)."""

    def __init__(self, reader: ImageReader | None) -> None:
        self.reader = reader  # None: the job has no images
        self.fetched: dict[int, dict[str, dict[str, Any]]] = {}  # row -> what its last attempt fetched, till recorded

    async def ready(self, request: Request, http: Http, timeout: float) -> Request | Reply:
        """The request as it is sent: local files read in, URLs fetched; or the Reply of an attempt that failed,
        naming the image and why."""
        if self.reader is None:
            return request
        if request.files:
            try:
                payload = self.reader.put_files(request.payload, request.files, request.model)
            except RowProblem as exc:
                return Reply(None, NO_HEADERS, None, 0.0, f"{exc.code} ({exc})")
            request = replace(request, payload=payload, files=())
        if not request.fetch:
            return request
        got = await with_fetched(request, http, self.reader, timeout)
        if isinstance(got, Reply):
            return got
        sent, refs = got
        self.fetched[request.row] = refs
        return sent

    def annotate(self, record: Record) -> None:
        """A fetched URL's reference in the row's record gains the bytes and digest it was fetched with."""
        refs = self.fetched.pop(record["row"], None) if self.fetched else None
        if refs and "images" in record:
            record["images"] = [refs.get(i["ref"], i) if "bytes" not in i else i for i in record["images"]]
