"""The OpenAI-compatible chat-completions call path, shared by every preset that speaks it."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from ..errors import FatalProviderError
from ..request import Request
from ..retry import error_details
from ..transport import Reply, post_json


class ChatCompletions:
    """Synchronous call path: one POST per row to `{base_url}/chat/completions`."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    async def call(self, http: aiohttp.ClientSession, request: Request, timeout: float) -> Reply:
        return await post_json(http, self.url, request.payload, self.headers, timeout)


async def list_models(base_url: str, api_key: str | None, timeout: float = 30.0) -> list[str]:
    """`GET {base_url}/models`: the model ids a key may use; doubles as a check that the key works."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        async with aiohttp.ClientSession() as http, http.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            raw, status = await resp.read(), resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise FatalProviderError(f"cannot reach {url}: {type(exc).__name__}; check provider.base_url and the "
                                 "network") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = raw
    if status != 200:
        code, message = error_details(body)
        hint = "; check the key" if status in (401, 403) else ""
        raise FatalProviderError(f"{url} answered HTTP {status} ({code or 'no code'}: {message}){hint}")
    data = body.get("data") if isinstance(body, dict) else None
    return sorted(str(m.get("id")) for m in data or [] if isinstance(m, dict) and m.get("id"))
