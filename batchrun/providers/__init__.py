"""The call paths to a provider, one module per provider family (openai: chat, completions, embeddings, stream;
zhipu: async tasks and JWT), and the Authorization header they send.

The presets (where each API lives, its error codes) are facts in `batchrun.spec.presets`."""

from __future__ import annotations

from collections.abc import Callable

from ..spec.presets import Auth


def make_auth(key: str | None, kind: Auth = "bearer") -> Callable[[], str | None]:
    """The Authorization header's value for each call: the key as a bearer token, or a Zhipu JWT signed with it."""
    if key is None:
        return lambda: None
    if kind == "jwt":
        from .zhipu import ZhipuJWT

        return ZhipuJWT(key)
    header = f"Bearer {key}"
    return lambda: header
