"""What an image file is, read from its own bytes: its format from the magic number at its start (never its name),
its width and height from its header (read by the `imagesize` package), and whether a GIF is animated. Pure
functions of bytes, so the first few KB of a file are enough (`validate` reads no more on a million-row input).
"""

from __future__ import annotations

import io
from typing import BinaryIO

import imagesize

from ..spec.images import ImageFormat

HEAD_BYTES = 64 * 1024  # enough for any header: a JPEG's size sits after its EXIF, which may run to 64 KB
MIME: dict[ImageFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
FORMAT_OF_MIME: dict[str, ImageFormat] = {**{v: k for k, v in MIME.items()}, "image/jpg": "jpeg"}


def read_head(f: BinaryIO) -> bytes:
    """The first bytes of an image file, as few as tell its format and size: 4 KB, or up to 64 KB for a JPEG whose
    frame header sits after a large EXIF block, or a GIF whose frames are counted."""
    head = f.read(4096)
    fmt = sniff(head)
    if (fmt == "jpeg" and dimensions(head) is None) or fmt == "gif":
        head += f.read(HEAD_BYTES - len(head))
    return head


def sniff(head: bytes) -> ImageFormat | None:
    """The format the bytes start with, or None when they are no image format batchrun knows."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def dimensions(head: bytes) -> tuple[int, int] | None:
    """(width, height) as the image is shown, or None when its header is not in `head` (the per-image token default
    then stands). The `imagesize` package reads the header (EXIF orientation included: a JPEG stored sideways gives
    its upright size, as a viewer and the provider see it); it gets a BytesIO, never a path, so only `head` is read."""
    width, height = imagesize.get(io.BytesIO(head))  # (-1, -1) when the header is cut short or not understood
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        return None
    return width, height


def gif_frames(data: bytes, stop: int = 2) -> int:
    """How many frames a GIF holds (counted up to `stop`): more than one is an animation. Counted here because
    `imagesize` reads sizes only, not frames (and Pillow, an optional extra, would decode far more than a walk of
    the blocks needs)."""
    try:
        at = 13
        flags = data[10]
        if flags & 0x80:
            at += 3 * (2 ** ((flags & 7) + 1))
        frames = 0
        while at < len(data):
            block = data[at]
            if block == 0x3B:  # trailer
                break
            if block == 0x21:  # extension: label, then sub-blocks
                at = _sub_blocks(data, at + 2)
            elif block == 0x2C:  # image descriptor
                frames += 1
                if frames >= stop:
                    return frames
                local = data[at + 9]
                at += 10
                if local & 0x80:
                    at += 3 * (2 ** ((local & 7) + 1))
                at = _sub_blocks(data, at + 1)  # after the LZW minimum code size
            else:
                break
        return frames
    except IndexError:
        return 0


def _sub_blocks(data: bytes, at: int) -> int:
    while data[at]:
        at += data[at] + 1
    return at + 1
