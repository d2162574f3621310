"""The OpenAI-compatible chat-completions call path, shared by every preset that speaks it."""

from __future__ import annotations

import aiohttp

from ..request import Request
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
