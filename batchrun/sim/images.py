"""The simulator looks at a request's image parts as the provider it speaks for does: the format from the bytes,
each image's bytes, the images a request carries, URLs it will not fetch (Kimi), by the same table batchrun checks
rows against (`spec.images`), so a refusal is what that provider would say, in its own error shape as far as it
is known (the server words it as that provider does: `manners.spoken`). Images it takes are counted as prompt
tokens by that provider's rule.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..rows.imagefile import dimensions, gif_frames, sniff
from ..spec.images import Detail, ImageRules, image_tokens, rules_for
from .answers import error_body


@dataclass(frozen=True, slots=True)
class Looked:
    """What the simulator made of a request's images: the tokens they cost, or the refusal (status, body)."""

    images: int = 0
    tokens: int = 0
    refused: tuple[int, dict[str, Any]] | None = None


# (speaks, what) -> the provider's code for it; Ark's are its documented InvalidParameter.* codes, Zhipu's its
# numeric parameter error; the others answer in OpenAI's shape
_CODES: dict[str, dict[str, str]] = {
    "ark": {
        "format": "InvalidParameter.UnsupportedImageFormat",
        "size": "InvalidParameter.OversizedImage",
        "count": "InvalidParameter.UnsupportedImageCount",
        "url": "InvalidParameter",
    },
    "zhipu": {"format": "1210", "size": "1210", "count": "1210", "url": "1210"},
    "dashscope": {"format": "InvalidParameter", "size": "InvalidParameter", "count": "InvalidParameter"},
    "moonshot": dict.fromkeys(("format", "size", "count", "url"), "invalid_request_error"),
}
_OPENAI_CODES = {"format": "invalid_image_format", "size": "image_too_large", "count": "too_many_images"}


def image_parts(body: dict[str, Any]) -> Iterator[tuple[str, Detail | None]]:
    """(url, detail) of every image part in a chat body's messages."""
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                detail = image.get("detail") if isinstance(image, dict) else None
                yield (url if isinstance(url, str) else ""), (detail if detail in ("auto", "low", "high") else None)


def look(speaks: str, body: dict[str, Any]) -> Looked:
    """A chat body's images judged as `speaks`'s provider judges them."""
    model = str(body.get("model") or "")
    rules = rules_for(speaks, model)
    parts = list(image_parts(body))
    if not parts:
        return Looked()
    if rules.max_images is not None and len(parts) > rules.max_images:
        return _refuse(speaks, "count", f"{len(parts)} images, more than the {rules.max_images} {model} takes")
    tokens = 0
    for i, (url, detail) in enumerate(parts):
        seen = _one(speaks, rules, url, i)
        if isinstance(seen, Looked):
            return seen
        width, height = seen
        tokens += image_tokens(rules, width, height, detail)
    return Looked(len(parts), tokens)


def _one(speaks: str, rules: ImageRules, url: str, i: int) -> tuple[int | None, int | None] | Looked:
    """One image's size, or the refusal it gets."""
    if url.startswith(("http://", "https://")):
        if not rules.urls:
            return _refuse(speaks, "url", f"image {i}: only base64 images are supported, not URLs")
        return None, None  # the simulator fetches nothing: the per-image figure stands
    text = url
    if url.startswith("data:"):
        head, _, text = url.partition(",")
        if not head.endswith(";base64"):
            return _refuse(speaks, "format", f"image {i}: the data URL is not base64")
    elif speaks != "zhipu":  # bare base64 is Zhipu's (as its examples send it), nobody else's
        return _refuse(speaks, "format", f"image {i}: the url is neither an http(s) URL nor a data URL")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return _refuse(speaks, "format", f"image {i}: invalid base64")
    fmt = sniff(data[:64])
    if fmt is None or fmt not in rules.formats:
        return _refuse(speaks, "format", f"image {i}: unsupported image format {fmt or 'unknown'}")
    if fmt == "gif" and not rules.animated_gif and gif_frames(data) > 1:
        return _refuse(speaks, "format", f"image {i}: animated GIFs are not supported")
    if rules.max_bytes is not None and len(data) > rules.max_bytes:
        return _refuse(speaks, "size", f"image {i}: {len(data)} bytes, over the {rules.max_bytes} allowed")
    dims = dimensions(data[:65536])
    if dims is not None and rules.max_pixels is not None and dims[0] * dims[1] > rules.max_pixels:
        return _refuse(speaks, "size", f"image {i}: {dims[0]}x{dims[1]} pixels, over the {rules.max_pixels} allowed")
    return dims if dims is not None else (None, None)


def _refuse(speaks: str, what: str, message: str) -> Looked:
    code = _CODES.get(speaks, _OPENAI_CODES).get(what, "invalid_request_error")
    return Looked(refused=(400, error_body(code, message)))
