"""The call paths to a provider: one small interface, one module per provider family (openai, zhipu).

The presets (where each API lives, its error codes) are facts in `batchrun.presets`, below the spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..presets import Auth

if TYPE_CHECKING:
    import aiohttp

    from ..request import Request
    from ..transport import Reply


class CallPath(Protocol):
    """How one request reaches a provider: sync, stream, or the submission of an async task."""

    async def call(self, http: aiohttp.ClientSession, request: Request, timeout: float) -> Reply: ...


def make_auth(key: str | None, kind: Auth = "bearer") -> Callable[[], str | None]:
    """The Authorization header's value for each call: the key as a bearer token, or a Zhipu JWT signed with it."""
    if key is None:
        return lambda: None
    if kind == "jwt":
        from .zhipu import ZhipuJWT

        return ZhipuJWT(key)
    header = f"Bearer {key}"
    return lambda: header
