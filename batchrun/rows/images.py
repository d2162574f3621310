"""A row's images (`input.images`): each value read into what the request carries (a data URL, or a URL the
provider fetches) and what the records keep (a reference: the path or URL, its bytes and sha256 digest; never its
base64), checked against the provider's rules (`spec.images`) before anything is sent.

A local file is read when its row is built (rows are built one at a time as the run takes them) for its digest and
limits, and read again as its request is sent (`put_files`), when the base64 is made: a row waiting to be sent or
retried holds its images' digests, so a million-row job holds only the base64 of the requests on the wire.
`validate` reads each file's size and header only (`light`: 4 KB, 64 KB for some JPEGs and GIFs): format, pixels,
bytes and count are checked, not the digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import SpecError
from ..spec.images import Detail, ImageFormat, ImageRules, image_tokens, rules_for
from ..spec.model import JobSpec
from .imagefile import HEAD_BYTES, MIME, dimensions, gif_frames, read_head, sniff
from .render import RowProblem

IMAGE_UNREADABLE = "image_unreadable"
IMAGE_LIMIT = "image_over_limit"
IMAGE_FORMAT = "image_format"
IMAGE_CHANGED = "image_changed"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image as the records keep it."""

    ref: str  # the path or URL as the row gave it; `data:image/png` for a data URL; `column[i]` for bytes
    size: int | None = None  # its bytes (None: a URL the provider fetches)
    sha256: str | None = None
    format: ImageFormat | None = None
    width: int | None = None
    height: int | None = None  # as sent (after input.image_max_side)
    shrink: bool = False  # input.image_max_side scales it down

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ref": self.ref}
        if self.size is not None:
            out["bytes"] = self.size
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


@dataclass(frozen=True, slots=True)
class RowImages:
    """What a row's images put into its request."""

    refs: tuple[ImageRef, ...]
    urls: tuple[str, ...]  # each image's `url` in the request
    keys: tuple[str, ...]  # what the response cache's key reads for each: its digest (or its URL)
    fetch: tuple[str, ...]  # URLs fetched here when the row is sent (input.fetch_images)
    tokens: int  # estimated
    files: tuple[tuple[str, str, str], ...] = ()  # (its key in the request, path, name) of files read when sent


class ImageReader:
    """Reads a job's image columns; the provider's rules settled once per model."""

    def __init__(self, spec: JobSpec) -> None:
        inp = spec.input
        assert inp.images is not None
        self.columns = tuple(inp.images)
        self.folder = Path(inp.path).parent
        self.detail: Detail | None = inp.image_detail
        self.fetch = inp.fetch_images
        self.max_side = inp.image_max_side
        self.limits = inp.image_limits
        simulate = spec.provider.simulate  # the simulator checks images as the provider it speaks for does
        speaks = simulate.speaks if spec.provider.name == "simulated" and simulate is not None else None
        self.provider: str = speaks or spec.provider.name
        self.light = False  # validate: sizes and headers only, no digest, no base64
        self._rules: dict[str, ImageRules] = {}
        if self.max_side is not None:
            pillow(f"{spec.called}: input.image_max_side")

    def rules(self, model: str) -> ImageRules:
        found = self._rules.get(model)
        if found is None:
            found = rules_for(self.provider, model)
            if self.limits is not None:
                found = self.limits.over(found)
            self._rules[model] = found
        return found

    def values(self, data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        """(where, value) of each image the row names, in column order; nulls and empty strings are no image."""
        for column in self.columns:
            value: Any = data.get(column)
            tolist = getattr(value, "tolist", None)
            if tolist is not None and not isinstance(value, (bytes, bytearray)):  # numpy, from Ray Data
                value = tolist()
            items = value if isinstance(value, (list, tuple)) else [value]
            for i, item in enumerate(items):
                if item is None or item == "":
                    continue
                yield (f"{column}[{i}]" if isinstance(value, (list, tuple)) else column), item

    def read(self, data: Mapping[str, Any], model: str) -> RowImages | None:
        """The row's images, or None when it has none; a RowProblem names the image and the limit it breaks."""
        rules = self.rules(model)
        refs: list[ImageRef] = []
        urls: list[str] = []
        keys: list[str] = []
        fetch: list[str] = []
        files: list[tuple[str, str, str]] = []
        tokens = total = 0
        for where, value in self.values(data):
            if len(refs) == rules.max_images:
                count = sum(1 for _ in self.values(data))
                raise RowProblem(
                    f"{count} images, over {self.provider}'s {rules.max_images} a request for {model} "
                    "(input.image_limits.max_images)",
                    IMAGE_LIMIT,
                )
            ref, url, key, path = self._one(where, value, rules)
            if path is not None:
                files.append((key, path, ref.ref))
            if ref.size is None and url.startswith(("http://", "https://")) and self.fetch:
                fetch.append(url)
            refs.append(ref)
            urls.append(url)
            keys.append(key)
            tokens += image_tokens(rules, ref.width, ref.height, self.detail)
            total += ref.size or 0
            if rules.max_request_bytes is not None and total > rules.max_request_bytes:
                raise RowProblem(
                    f"the images come to {total:,} bytes by {ref.ref!r}, over {self.provider}'s "
                    f"{rules.max_request_bytes:,} a request (input.image_limits.max_request_bytes)",
                    IMAGE_LIMIT,
                )
        if not refs:
            return None
        return RowImages(tuple(refs), tuple(urls), tuple(keys), tuple(fetch), tokens, tuple(files))

    def _one(self, where: str, value: Any, rules: ImageRules) -> tuple[ImageRef, str, str, str | None]:
        """The image's reference, its url in the request, its key in the cache's, and for a local file its path:
        a file's bytes are put in when its row is sent (`put_files`), so a row waiting to be sent or retried holds
        its digest, not its base64."""
        if isinstance(value, Mapping) and ("bytes" in value or "path" in value):  # a Hugging Face image struct
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return (*self._bytes(where, bytes(value), rules), None)
        if not isinstance(value, str):
            raise RowProblem(
                f"{where!r} holds {type(value).__name__}, not an image path, URL or bytes", IMAGE_UNREADABLE
            )
        if value.startswith(("http://", "https://")):
            if not rules.urls and not self.fetch:
                raise RowProblem(
                    f"image {value!r} is a URL, which {self.provider} does not fetch: set input.fetch_images: true",
                    IMAGE_LIMIT,
                )
            return ImageRef(value), value, value, None
        if value.startswith("data:"):
            return (*self._data_url(value, rules), None)
        return self._file(value, rules)

    def _file(self, value: str, rules: ImageRules) -> tuple[ImageRef, str, str, str | None]:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.folder / path
        try:
            if self.light:
                size = path.stat().st_size
                with open(path, "rb") as f:
                    head = read_head(f)
                ref = self.check(value, head, size, rules, whole=False)
                return ref, "", "", None
            data = path.read_bytes()
        except FileNotFoundError:
            raise RowProblem(f"image {value!r}: no such file ({path})", IMAGE_UNREADABLE) from None
        except OSError as exc:
            raise RowProblem(f"image {value!r} cannot be read: {exc.strerror or exc}", IMAGE_UNREADABLE) from None
        ref = self.check(value, data, len(data), rules, whole=True)
        key = f"sha256:{ref.sha256}" + (f";max_side={self.max_side}" if ref.shrink else "")
        return ref, key, key, str(path)

    def put_files(self, payload: bytes, files: tuple[tuple[str, str, str], ...], model: str) -> bytes:
        """`payload` with each local file's bytes put in place of its key, as its data URL: read now, as its row
        is sent. A file that changed since its row was read (another digest) is a RowProblem, not sent as it is."""
        rules = self.rules(model)
        for key, path, name in files:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise RowProblem(
                    f"image {name!r} cannot be read as its row is sent: {exc.strerror or exc}", IMAGE_UNREADABLE
                ) from None
            ref, url, _ = self.encoded(name, data, rules)
            if not key.startswith(f"sha256:{ref.sha256}"):
                raise RowProblem(
                    f"image {name!r} changed after its row was read (its sha256 is not the one recorded): "
                    "batchrun retry-failed sends the row again as the file is now",
                    IMAGE_CHANGED,
                )
            payload = payload.replace(b'"url":' + orjson.dumps(key), b'"url":' + orjson.dumps(url))
        return payload

    def _bytes(self, where: str, data: bytes, rules: ImageRules) -> tuple[ImageRef, str, str]:
        if self.light:
            return self.check(where, data[:HEAD_BYTES], len(data), rules, whole=False), "", ""
        return self.encoded(where, data, rules)

    def _data_url(self, value: str, rules: ImageRules) -> tuple[ImageRef, str, str]:
        head, _, text = value.partition(",")
        declared = head[5:].split(";", 1)[0] or "data:"
        if not head.endswith(";base64"):
            raise RowProblem(f"image 'data:{declared}' is not base64 (';base64,' is missing)", IMAGE_UNREADABLE)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RowProblem(f"image 'data:{declared}' holds base64 that does not decode", IMAGE_UNREADABLE) from None
        name = f"data:{declared}"
        if self.light:
            return self.check(name, data[:HEAD_BYTES], len(data), rules, whole=False), "", ""
        ref = self.check(name, data, len(data), rules, whole=True)
        if ref.shrink:
            return self.encoded(name, data, rules)
        url = text if rules.encoding == "base64" else value
        return ref, url, f"sha256:{ref.sha256}"

    def encoded(self, name: str, data: bytes, rules: ImageRules) -> tuple[ImageRef, str, str]:
        """A file's (or a column's, or a fetched URL's) bytes, checked, downscaled if asked, as the request's url:
        `data:<type from the bytes>;base64,...`, or bare base64 where the provider's encoding is that."""
        ref = self.check(name, data, len(data), rules, whole=True)
        key = f"sha256:{ref.sha256}"
        if ref.shrink:
            assert self.max_side is not None and ref.format is not None
            data, fmt = downscale(data, ref.format, self.max_side)
            key += f";max_side={self.max_side}"
            if rules.max_bytes is not None and len(data) > rules.max_bytes:
                raise RowProblem(
                    f"image {name!r} is {len(data):,} bytes scaled down to {self.max_side} px, over "
                    f"{self.provider}'s {rules.max_bytes:,} an image (input.image_limits.max_bytes)",
                    IMAGE_LIMIT,
                )
        else:
            assert ref.format is not None
            fmt = ref.format
        text = base64.b64encode(data).decode("ascii")
        return ref, text if rules.encoding == "base64" else f"data:{MIME[fmt]};base64,{text}", key

    def check(self, name: str, head: bytes, size: int, rules: ImageRules, *, whole: bool) -> ImageRef:
        """The image's reference, once it is known to keep `rules` (a RowProblem names the limit it breaks).
        `head` is the whole image when `whole`, else its first bytes."""
        fmt = sniff(head)
        if fmt is None:
            raise RowProblem(
                f"image {name!r} is not an image (its first bytes are no PNG, JPEG, WEBP, GIF, BMP or TIFF)",
                IMAGE_FORMAT,
            )
        takes = ", ".join(f.upper() for f in rules.formats)
        if fmt not in rules.formats:
            raise RowProblem(
                f"image {name!r} is {fmt.upper()}, which {self.provider} does not take (it takes {takes}; "
                "input.image_limits.formats)",
                IMAGE_FORMAT,
            )
        dims = dimensions(head)
        width, height = dims if dims is not None else (None, None)
        if fmt == "gif" and not rules.animated_gif and gif_frames(head) > 1:  # validate: frames in the first 64 KB
            raise RowProblem(f"image {name!r} is an animated GIF, which {self.provider} does not take", IMAGE_FORMAT)
        shrinks = False
        if self.max_side is not None and width is not None and height is not None:
            shrinks = max(width, height) > self.max_side
            scale = min(1.0, self.max_side / max(width, height))
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        if rules.max_bytes is not None and size > rules.max_bytes and not shrinks:
            raise RowProblem(
                f"image {name!r} is {size:,} bytes, over {self.provider}'s {rules.max_bytes:,} an image "
                "(input.image_limits.max_bytes; input.image_max_side scales it down)",
                IMAGE_LIMIT,
            )
        if (
            rules.max_pixels is not None
            and width is not None
            and height is not None
            and width * height > rules.max_pixels
        ):
            raise RowProblem(
                f"image {name!r} is {width}x{height} = {width * height:,} pixels, over {self.provider}'s "
                f"{rules.max_pixels:,} (input.image_limits.max_pixels; input.image_max_side scales it down)",
                IMAGE_LIMIT,
            )
        digest = hashlib.sha256(head).hexdigest() if whole else None
        return ImageRef(name, size, digest, fmt, width, height, shrinks)


def pillow(what: str) -> Any:
    """Pillow's Image module, or a SpecError saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise SpecError(
            f"{what} scales images down with Pillow, which is not installed: pip install 'batchrun[images]' "
            "(or leave image_max_side out to send images as they are)"
        ) from None
    return Image


def downscale(data: bytes, fmt: ImageFormat, max_side: int) -> tuple[bytes, ImageFormat]:
    """The image scaled to `max_side` on its longest side, in its own format (a GIF as PNG), turned upright first:
    the copy sent keeps no EXIF, so a photo stored sideways would otherwise go sideways."""
    image_module = pillow("input.image_max_side")
    from PIL import ImageOps

    with image_module.open(io.BytesIO(data)) as stored:
        image = ImageOps.exif_transpose(stored)
        image.thumbnail((max_side, max_side))
        out_fmt: ImageFormat = "png" if fmt in ("gif", "bmp", "tiff") else fmt
        if out_fmt == "jpeg" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=out_fmt.upper(), **({"quality": 90} if out_fmt in ("jpeg", "webp") else {}))
    return buffer.getvalue(), out_fmt


def with_images(body: dict[str, Any], urls: tuple[str, ...], detail: Detail | None) -> dict[str, Any]:
    """`body` with one image part per url in its last user message (after its text), as the OpenAI content-part
    shape has it; the messages are copied, the row's own left as they were."""
    messages = [dict(m) if isinstance(m, Mapping) else m for m in body["messages"]]
    parts = [{"type": "image_url", "image_url": {"url": u, **({"detail": detail} if detail else {})}} for u in urls]
    at = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if at is None:
        messages.append({"role": "user", "content": parts})
    else:
        content = messages[at].get("content")
        if isinstance(content, list):
            messages[at]["content"] = [*content, *parts]
        else:
            text = [{"type": "text", "text": content}] if isinstance(content, str) and content else []
            messages[at]["content"] = [*text, *parts]
    return {**body, "messages": messages}
