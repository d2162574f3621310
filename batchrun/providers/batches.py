"""The Batch API calls, in the OpenAI shape that OpenAI, Zhipu, DashScope, Qianfan and GenStudio share: upload a
JSONL file, create a batch over it, retrieve it, stream a result file line by line, delete a file, cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .transport import NO_ANSWER, Http, Reply, fetch_json, no_answer, parse_body


class BatchAPIClient:
    def __init__(self, http: Http, base_url: str, auth: Callable[[], str | None], timeout: float) -> None:
        self.http, self.base, self.auth, self.timeout = http, base_url.rstrip("/"), auth, timeout

    def headers(self, json: bool = True) -> dict[str, str]:
        value = self.auth()
        out = {"Accept": "application/json"}
        if json:
            out["Content-Type"] = "application/json"
        return {**out, "Authorization": value} if value else out

    async def upload(self, path: Path) -> Reply:
        """`POST /files`, multipart, `purpose=batch`: a file of up to a few hundred MB, read from disk as it goes."""
        start = time.monotonic()
        url = f"{self.base}/files"
        try:
            with open(path, "rb") as f:
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", f, filename=path.name, content_type="application/jsonl")
                sent = self.http.session.post(
                    url,
                    data=form,
                    timeout=aiohttp.ClientTimeout(total=max(self.timeout, 600.0)),
                    **self.http.proxy_args(url, self.headers(json=False)),
                )
                async with self.http.proxied(url, sent) as resp:
                    raw = await resp.read()
                    return Reply(resp.status, resp.headers, parse_body(raw), time.monotonic() - start)
        except NO_ANSWER as exc:
            return no_answer(exc, start)

    async def create(
        self, file_id: str, endpoint: str, window: str, metadata: dict[str, str], extra: dict[str, Any] | None = None
    ) -> Reply:
        body = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": window,
            "metadata": metadata,
            **(extra or {}),
        }
        return await fetch_json(
            self.http, "POST", f"{self.base}/batches", self.headers(), self.timeout, orjson.dumps(body)
        )

    async def find(self, file_id: str, pages: int = 10) -> str | None:
        """The id of a batch already made from this file (`GET /batches`, newest first, up to `pages` pages of
        100), or None: none, or the provider does not list batches."""
        after = None
        for _ in range(pages):
            query = "?limit=100" + (f"&after={after}" if after else "")
            reply = await fetch_json(self.http, "GET", f"{self.base}/batches{query}", self.headers(), self.timeout)
            body = reply.body if reply.status == 200 and isinstance(reply.body, dict) else {}
            data = body.get("data")
            for batch in data if isinstance(data, list) else []:
                if isinstance(batch, dict) and batch.get("input_file_id") == file_id and batch.get("id"):
                    return str(batch["id"])
            after = body.get("last_id")
            if not (body.get("has_more") and isinstance(after, str)):
                return None
        return None

    async def count_files(self, purpose: str, pages: int = 100) -> int | None:
        """How many files of this purpose the provider holds (`GET /files`, a page of up to 10,000 at a time while
        it says there are more), or None: it did not answer with a list."""
        held, after = 0, None
        for _ in range(pages):
            query = f"?purpose={purpose}&limit=10000" + (f"&after={after}" if after else "")
            reply = await fetch_json(self.http, "GET", f"{self.base}/files{query}", self.headers(), self.timeout)
            body = reply.body if reply.status == 200 and isinstance(reply.body, dict) else None
            data = body.get("data") if body is not None else None
            if body is None or not isinstance(data, list):
                return None
            held += sum(1 for f in data if isinstance(f, dict) and f.get("purpose", purpose) == purpose)
            after = data[-1].get("id") if data and isinstance(data[-1], dict) else None
            if not (body.get("has_more") and isinstance(after, str)):
                break
        return held

    async def retrieve(self, batch_id: str) -> Reply:
        return await fetch_json(self.http, "GET", f"{self.base}/batches/{batch_id}", self.headers(), self.timeout)

    async def cancel(self, batch_id: str) -> Reply:
        return await fetch_json(
            self.http, "POST", f"{self.base}/batches/{batch_id}/cancel", self.headers(), self.timeout
        )

    async def delete(self, file_id: str) -> Reply:
        return await fetch_json(self.http, "DELETE", f"{self.base}/files/{file_id}", self.headers(), self.timeout)

    async def lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        """A result file's lines, parsed one at a time as they arrive: a 200 MB file is never held whole."""
        url = f"{self.base}/files/{file_id}/content"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=max(self.timeout, 300.0))
        sent = self.http.session.get(url, timeout=timeout, **self.http.proxy_args(url, self.headers(json=False)))
        async with self.http.proxied(url, sent) as resp:
            if resp.status != 200:
                raise DownloadError(f"HTTP {resp.status} downloading {file_id}: {(await resp.read())[:200]!r}")
            async for raw in resp.content:
                if raw.strip():
                    try:
                        line = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(line, dict):
                        yield line
                await asyncio.sleep(0)


class DownloadError(Exception):
    """A result file could not be read; the shard is harvested again on the next poll (or resume)."""
