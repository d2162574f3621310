"""What each provider takes of an image, known before anything is sent: the formats, the bytes of one image and of a
request, the images a request may carry, the pixels, how an image is written (a data URL or bare base64), whether it
may be a URL the provider fetches, and how its tokens are counted. Kept apart from `presets` (one table, per provider
and per model where the provider documents one) so the limits read in one place; `input.image_limits` overrides any
of them, since most are not published (docs/images.md says which are).

The token rules are plain functions of an image's width and height, used for the TPM reservation, budgets and
`estimate`; the answer's usage then says what the provider counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from .base import Count, SpecModel, fail

Detail = Literal["auto", "low", "high"]
Encoding = Literal["data_url", "base64"]
TokenRule = Literal["openai_tiles", "openai_patches", "qwen_patches", "per_image"]
ImageFormat = Literal["png", "jpeg", "webp", "gif", "bmp", "tiff"]
FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg", "webp", "gif", "bmp", "tiff")
MB = 1024 * 1024
DEFAULT_IMAGE_TOKENS = 1_500  # where no rule is published: about a 1024-px photo under Qwen's and OpenAI's rules


@dataclass(frozen=True, slots=True)
class ImageRules:
    """One provider's (and model's) image rules; None: no limit known to batchrun (the provider still judges)."""

    formats: tuple[ImageFormat, ...] = ("png", "jpeg", "webp", "gif")
    animated_gif: bool = True  # False: an animated GIF is refused (OpenAI takes only still ones)
    max_bytes: int | None = None  # one image's bytes (as decoded, not its base64)
    max_images: int | None = None  # images in one request
    max_request_bytes: int | None = None  # all of a request's images' bytes together
    max_pixels: int | None = None  # width x height of one image
    urls: bool = True  # False: the provider takes no http(s) URL (Kimi): input.fetch_images sends the bytes
    encoding: Encoding = "data_url"  # how a local image is written into the request
    tokens: TokenRule = "per_image"
    tokens_per_image: int = DEFAULT_IMAGE_TOKENS  # the per_image rule's figure, and any image of unknown size
    patch_factor: float = 1.0  # openai_patches: the model's multiplier (gpt-4.1-mini 1.62)
    auto_is_low: bool = False  # detail auto means low resolution (SiliconFlow), not high
    source: str = "not published: batchrun's defaults"  # where the figures come from


_OPENAI = ImageRules(
    formats=("png", "jpeg", "webp", "gif"),
    animated_gif=False,
    max_bytes=20 * MB,
    max_images=500,
    max_request_bytes=50 * MB,
    tokens="openai_tiles",
    source="OpenAI vision guide: PNG, JPEG, WEBP, non-animated GIF; 20 MB an image, 500 images and 50 MB a request",
)
_QWEN = ImageRules(tokens="qwen_patches", source="Qwen: 1 token per 28x28 px, pixels clamped to 56x56..3584x3584")
_ZHIPU = ImageRules(source="Zhipu: GLM-4V at most 5 images, GLM-4V-Flash 1 (BigModel docs); other caps not published")

# provider -> (model prefix -> rules), the longest prefix that matches wins; "" is every other model
TABLE: dict[str, dict[str, ImageRules]] = {
    "openai": {
        "": _OPENAI,
        "gpt-4.1-mini": replace(_OPENAI, tokens="openai_patches", patch_factor=1.62),
        "gpt-4.1-nano": replace(_OPENAI, tokens="openai_patches", patch_factor=2.46),
    },
    "zhipu": {
        "": _ZHIPU,
        "glm-4v": replace(_ZHIPU, max_images=5),
        "glm-4v-flash": replace(_ZHIPU, max_images=1),
    },
    "dashscope": {"": _QWEN, "qwen": _QWEN},
    "siliconflow": {  # its model names start with the maker: Qwen/Qwen2.5-VL-72B-Instruct
        "": ImageRules(),
        "Qwen/": replace(_QWEN, auto_is_low=True, source="SiliconFlow: " + _QWEN.source + "; detail auto is low"),
    },
    "moonshot": {"": ImageRules(urls=False, source="Kimi: base64 data URLs only (no http URLs); png, jpeg, webp, gif")},
}


def rules_for(provider: str, model: str) -> ImageRules:
    """The rules of `provider` (a preset's name, or what the simulator speaks) for `model`."""
    by_model = TABLE.get(provider, {})
    prefix = max((p for p in by_model if model.startswith(p)), key=len, default=None)
    return by_model[prefix] if prefix is not None else ImageRules()


def _formats(value: list[str]) -> list[str]:
    wrong = [v for v in value if v not in FORMATS]
    if wrong:
        fail(f"has {wrong[0]!r}: expected some of {', '.join(FORMATS)}")
    return value


class ImageLimitsSpec(SpecModel):
    """`input.image_limits:`: any of the provider's image rules, set by hand (most providers publish few)."""

    formats: Annotated[
        list[str] | None,
        Field(description="The image formats the provider takes: png, jpeg, webp, gif, bmp, tiff."),
        AfterValidator(_formats),
    ] = None
    max_bytes: Count | None = Field(None, description="The most bytes one image may have.")
    max_images: Count | None = Field(None, description="The most images one request may carry.")
    max_request_bytes: Count | None = Field(None, description="The most bytes a request's images may have together.")
    max_pixels: Count | None = Field(None, description="The most pixels (width x height) one image may have.")
    tokens_per_image: Count | None = Field(
        None, description=f"Tokens one image is estimated at where no rule is known; default {DEFAULT_IMAGE_TOKENS}."
    )
    encoding: Encoding | None = Field(
        None, description="data_url (data:image/png;base64,...) or base64 (bare, as some Zhipu examples send it)."
    )

    def over(self, rules: ImageRules) -> ImageRules:
        """`rules` with what this block sets put in."""
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if "formats" in given:
            given["formats"] = tuple(given["formats"])
        if "tokens_per_image" in given:
            given["tokens"] = "per_image"
        if given:
            given["source"] = rules.source + "; input.image_limits"
        return replace(rules, **given)


def rule_text(rules: ImageRules) -> str:
    """How the rules count an image's tokens, in a few words."""
    return {
        "openai_tiles": "OpenAI's 512-px tiles",
        "openai_patches": f"OpenAI's 32-px patches x {rules.patch_factor:g}",
        "qwen_patches": "Qwen's 28-px patches",
    }.get(rules.tokens, f"{rules.tokens_per_image:,} an image: no rule published; input.image_limits.tokens_per_image")


# --- image tokens ---------------------------------------------------------------------------------------------


def image_tokens(rules: ImageRules, width: int | None, height: int | None, detail: Detail | None) -> int:
    """The tokens one image is estimated at under `rules`."""
    if width is None or height is None or width <= 0 or height <= 0:
        return rules.tokens_per_image
    if detail == "auto" and rules.auto_is_low:
        detail = "low"
    if rules.tokens == "openai_tiles":
        return openai_tiles(width, height, detail)
    if rules.tokens == "openai_patches":
        return openai_patches(width, height, rules.patch_factor)
    if rules.tokens == "qwen_patches":
        return qwen_patches(width, height, detail)
    return rules.tokens_per_image


def openai_tiles(width: int, height: int, detail: Detail | None) -> int:
    """gpt-4o family: low detail 85; else fit in 2048x2048, shortest side to 768, then 85 + 170 per 512-px tile."""
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def openai_patches(width: int, height: int, factor: float) -> int:
    """gpt-4.1-mini/nano: 32x32-px patches, scaled down to fit 1536 patches, times the model's factor."""
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        shrink = math.sqrt(1536 * 32 * 32 / (width * height))
        w, h = width * shrink, height * shrink
        shrink *= min(math.floor(w / 32) / (w / 32), math.floor(h / 32) / (h / 32))
        patches = min(1536, math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32))
    return math.ceil(patches * factor)


QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 3584 * 3584


def qwen_patches(width: int, height: int, detail: Detail | None) -> int:
    """Qwen-VL: 1 token per 28x28 px, the pixels clamped to 56x56..3584x3584; low detail is 448x448 = 256."""
    if detail == "low":
        return 256
    pixels = width * height
    scale = 1.0
    if pixels > QWEN_MAX_PIXELS:
        scale = math.sqrt(QWEN_MAX_PIXELS / pixels)
    elif pixels < QWEN_MIN_PIXELS:
        scale = math.sqrt(QWEN_MIN_PIXELS / pixels)
    return max(1, round(width * scale / 28)) * max(1, round(height * scale / 28))


def image_columns(value: object) -> object:
    """`images: photo` is `images: [photo]`; an empty list is refused (leave the key out)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and not value:
        fail("is an empty list: name the columns holding images, or leave images out")
    return value
