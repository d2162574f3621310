"""What an image file is, read from its own bytes: its format from the magic number at its start (never its name),
its width and height from its header, and whether a GIF is animated. Pure functions of bytes, so the first few KB
of a file are enough (`validate` reads no more on a million-row input); no imaging library needed.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

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
    if (fmt == "jpeg" and _jpeg(head) is None) or fmt == "gif":
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


def dimensions(fmt: ImageFormat, head: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the header is not where it should be (the per-image token
    default then stands)."""
    try:
        if fmt == "png" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return w, h
        if fmt == "gif":
            w, h = struct.unpack("<HH", head[6:10])
            return w, h
        if fmt == "bmp":
            w, h = struct.unpack("<ii", head[18:26])
            return w, abs(h)
        if fmt == "webp":
            return _webp(head)
        if fmt == "jpeg":
            return _jpeg(head)
    except struct.error:
        return None
    return None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(head: bytes) -> tuple[int, int] | None:
    """The frame header's size: the segments are walked from the start (each says its length) to the first SOF."""
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        (length,) = struct.unpack(">H", head[at + 2 : at + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", head[at + 5 : at + 9])
            return w, h
        at += 2 + length
    return None


def gif_frames(data: bytes, stop: int = 2) -> int:
    """How many frames a GIF holds (counted up to `stop`): more than one is an animation."""
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
