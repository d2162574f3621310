"""`make bench` scenario 14: a 100,000-row image job (each row a path to one of 1,000 PNG files of ~20 KB):
peak memory (files are read when their row is sent, so it must stay flat), rows/s, and results.jsonl bytes per row
(records keep each image's path, bytes and digest, never its base64)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import orjson

from .bench_kit import Figure, Simulator, run_client

DISTINCT = 1_000  # files: rows cycle through them (each row's file is read when it is sent, as if it were new)
PAD = 20_000  # bytes of each file beyond its pixels: base64 held too long would show at once in the peak memory


def png(width: int, height: int, seed: int) -> bytes:
    """A valid PNG of `width` x `height` grey pixels, made larger by a private chunk of `PAD` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([seed % 256]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pad = seed.to_bytes(4, "big") * (PAD // 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"prVt", pad)
        + chunk(b"IEND", b"")
    )


def write_image_rows(folder: Path, n: int) -> Path:
    (folder / "pics").mkdir(exist_ok=True)
    for i in range(DISTINCT):
        (folder / "pics" / f"p{i}.png").write_bytes(png(64 + i % 64, 48, i))
    path = folder / "images.jsonl"
    with open(path, "wb") as f:
        for i in range(n):
            f.write(
                orjson.dumps({"id": f"r{i}", "q": f"What is in picture {i}?", "photo": f"pics/p{i % DISTINCT}.png"})
            )
            f.write(b"\n")
    return path


def bench_images(work: Path, rows: int) -> list[Figure]:
    path = write_image_rows(work, rows)
    sim = Simulator("--latency", "0")
    try:
        extra = {
            "input": {"path": str(path), "template": "{q}", "images": ["photo"], "image_detail": "low"},
            "cache": "off",
        }
        run = run_client(work, sim, path, name="images", extra=extra)
    finally:
        sim.close()
    results = work / "runs" / "images" / "results.jsonl"
    per_row = results.stat().st_size / max(1, int(run.usage["rows_succeeded"]))
    done = int(run.usage["rows_succeeded"])
    return [
        Figure(
            f"14 images, {rows:,} rows of one ~20 KB PNG each: peak RSS",
            "<= 150 MB",
            f"{run.peak_rss_mb:.1f} MB",
            run.peak_rss_mb <= 150,
        ),
        Figure(
            f"14 images: rows/s ({done:,} succeeded)",
            "",
            f"{run.rows_per_s:,.0f} rows/s, {1000 * run.cpu_s / max(1, done):.2f} ms CPU per row",
            None,
        ),
        Figure("14 images: results.jsonl bytes per row", "<= 1,000", f"{per_row:,.0f} bytes", per_row <= 1000),
    ]
