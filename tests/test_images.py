"""Rows with images (`input.images`), over real HTTP against the simulator: every kind of value (path, URL passed
through, URL fetched here, data URL, Parquet bytes), every lane (sync, stream, async, batch), the limits refused
before anything is sent, the cache keyed by each image's digest, and records that keep references, not base64."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from PIL import Image

from batchrun.rows.imagefile import dimensions, gif_frames, read_head, sniff
from batchrun.rows.images import downscale
from batchrun.spec import presets
from batchrun.spec.images import openai_patches, openai_tiles, qwen_patches

from .helpers import cli, make_job, read_jsonl, submit, write_jsonl
from .simserver import AppServer, SimServer

SAMPLES = Path(__file__).parent.parent / "sample_data" / "images"


def png(width: int, height: int, pad: int = 0) -> bytes:
    """A valid PNG of `width` x `height` grey pixels; `pad` bytes of a private ancillary chunk make it larger."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw))
    if pad:
        body += chunk(b"prVt", b"\x00" * pad)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def gif(frames: int) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", (4, 4), (60 * i, 255 - 60 * i, 0)) for i in range(frames)]
    images[0].save(out, format="GIF", save_all=frames > 1, append_images=images[1:])
    return out.getvalue()


def image_job(tmp_path: Path, base_url: str, rows: list[dict[str, Any]], **input_keys: Any) -> Path:
    write_jsonl(tmp_path / "job.jsonl", rows)
    extra = {k: v for k, v in input_keys.items() if k in ("provider", "model", "cache", "params")}
    keys = {k: v for k, v in input_keys.items() if k not in extra}
    return make_job(
        tmp_path,
        base_url,
        input={"path": "job.jsonl", "template": "{q}", "images": ["photo"], **keys},
        **extra,
    )


def records(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    run = tmp_path / "runs" / "job"
    return read_jsonl(run / "results.jsonl"), read_jsonl(run / "failures.jsonl")


def pictures(files: dict[str, bytes], served: list[str]) -> AppServer:
    """A web server of pictures on 127.0.0.1, as a company's intranet would serve them."""

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            return web.Response(status=404, text="no such picture")
        served.append(name)
        return web.Response(body=files[name], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/pics/{name}", handle)
    return AppServer(app)


# --- what an image is, from its bytes ----------------------------------------------------------------------------


def test_format_and_size_come_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    for name, fmt, size in (
        ("sun.png", "png", (96, 64)),
        ("receipt.jpg", "jpeg", (120, 80)),
        ("chart.webp", "webp", (80, 80)),
    ):
        head = (SAMPLES / name).read_bytes()
        assert sniff(head) == fmt and dimensions(head) == size
    assert sniff(b"%PDF-1.7") is None and sniff(gif(1)) == "gif"
    assert gif_frames(gif(1)) == 1 and gif_frames(gif(3)) == 2  # counted up to the second: an animation


def test_a_jpeg_stored_sideways_has_its_upright_size(tmp_path: Path) -> None:
    """EXIF orientation 6 (turn 90 degrees to show): 40 x 20 stored, shown 20 x 40, as the provider sees it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "grey").save(buffer, format="JPEG", exif=exif.tobytes())
    (tmp_path / "side.jpg").write_bytes(buffer.getvalue())
    with (tmp_path / "side.jpg").open("rb") as f:
        head = read_head(f)
    assert sniff(head) == "jpeg" and dimensions(head) == (20, 40)
    # a frame header after 8 KB of EXIF is past the first 4 KB: read_head reads on to find it
    exif[0x010E] = "x" * 8000  # ImageDescription
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "grey").save(buffer, format="JPEG", exif=exif.tobytes())
    assert dimensions(buffer.getvalue()[:4096]) is None
    buffer.seek(0)
    assert dimensions(read_head(buffer)) == (20, 40)


def test_token_rules_follow_the_providers_documents() -> None:
    assert openai_tiles(1024, 1024, "high") == 765 and openai_tiles(4000, 3000, "low") == 85
    assert openai_tiles(2048, 4096, None) == 85 + 170 * 6  # 1024x2048, then 768x1536: 2 x 3 tiles of 512 px
    assert qwen_patches(1024, 1024, "high") == 1369 and qwen_patches(1024, 1024, "low") == 256
    assert qwen_patches(10, 10, None) == 4  # clamped up to 56x56
    assert openai_patches(1024, 1024, 1.62) == 1659 and openai_patches(64, 64, 1.0) == 4


# --- each kind of value, each lane -------------------------------------------------------------------------------


def test_a_path_becomes_a_data_url_and_the_record_keeps_its_reference(tmp_path: Path, sim: SimServer) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.picture").write_bytes(png(64, 64, pad=30_000))  # the name says nothing of the format
    rows = [{"id": f"r{i}", "q": f"what is in picture {i}?", "photo": "pics/a.picture"} for i in range(3)]
    rows.append({"id": "two", "q": "compare", "photo": ["pics/a.picture", str(SAMPLES / "receipt.jpg")]})
    rows.append({"id": "none", "q": "no picture", "photo": None})
    result = submit(image_job(tmp_path, sim.base_url, rows, image_detail="low"))
    assert result.exit_code == 0, result.output
    good, bad = records(tmp_path)
    assert len(good) == 5 and not bad
    by_id = {r["custom_id"]: r for r in good}
    data = (tmp_path / "pics" / "a.picture").read_bytes()
    assert by_id["r0"]["images"] == [
        {"ref": "pics/a.picture", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    assert [i["ref"] for i in by_id["two"]["images"]] == ["pics/a.picture", str(SAMPLES / "receipt.jpg")]
    assert "images" not in by_id["none"]
    # the provider was sent the picture, and counted it: OpenAI's low detail is 85 tokens an image
    text_only = by_id["none"]["response"]["body"]["usage"]["prompt_tokens"]
    assert by_id["r0"]["response"]["body"]["usage"]["prompt_tokens"] >= text_only + 85
    assert by_id["two"]["response"]["body"]["usage"]["prompt_tokens"] > 170
    assert sim.stats()["images"] == 5  # three rows of one, one of two, and none for the row without
    # records stay small: a 30 KB picture leaves no base64 behind
    results = (tmp_path / "runs" / "job" / "results.jsonl").read_bytes()
    assert b"base64" not in results and len(results) / 5 < 2_000
    shown = cli("show", str(tmp_path / "runs" / "job"), "two")
    assert "[image data:image/png;base64,… (30" in shown.stdout and "pics/a.picture (30," in shown.stdout


def test_streaming_and_async_lanes_carry_images(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="zhipu")
    (tmp_path / "a.png").write_bytes(png(32, 32))
    rows = [{"id": f"r{i}", "q": f"q{i}", "photo": "a.png"} for i in range(4)]
    for mode in ("stream", "async"):
        job = image_job(
            tmp_path,
            sim.base_url,
            rows,
            provider={"name": "simulated", "base_url": sim.base_url, "mode": mode},
        )
        result = submit(job, "--fresh", "--no-cache")
        assert result.exit_code == 0, result.output
        good, _ = records(tmp_path)
        assert len(good) == 4 and all(r["images"][0]["ref"] == "a.png" for r in good)


def test_zhipu_takes_bare_base64_when_set_and_the_others_refuse_it(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    (tmp_path / "a.png").write_bytes(png(16, 16))
    rows = [{"id": "r", "q": "what?", "photo": "a.png"}]
    zhipu = start_sim(speaks="zhipu")
    job = image_job(tmp_path, zhipu.base_url, rows, image_limits={"encoding": "base64"})
    assert submit(job).exit_code == 0
    openai = start_sim()
    job = image_job(tmp_path, openai.base_url, rows, image_limits={"encoding": "base64"})
    result = submit(job, "--fresh", "--no-cache")
    _, bad = records(tmp_path)
    assert result.exit_code == 3 and bad[0]["error"]["code"] == "invalid_image_format"
    assert openai.stats()["images_refused"] == 1


def test_a_url_passes_through_and_a_data_url_is_checked(tmp_path: Path, sim: SimServer) -> None:
    data = png(8, 8)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    rows = [
        {"id": "web", "q": "a", "photo": "https://pictures.example/cat.png"},
        {"id": "inline", "q": "b", "photo": url},
        {"id": "broken", "q": "c", "photo": "data:image/png;base64,@@@"},
    ]
    result = submit(image_job(tmp_path, sim.base_url, rows))
    assert result.exit_code == 3, result.output
    good, bad = records(tmp_path)
    by_id = {r["custom_id"]: r for r in good}
    assert by_id["web"]["images"] == [{"ref": "https://pictures.example/cat.png"}]
    assert by_id["inline"]["images"] == [
        {"ref": "data:image/png", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    assert [(r["custom_id"], r["error"]["code"]) for r in bad] == [("broken", "image_unreadable")]
    assert sim.stats()["requests"] == 2  # the broken row never left


def test_urls_are_fetched_here_when_asked(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="moonshot")  # Kimi takes base64 only: a URL that reached it would be refused
    served: list[str] = []
    with pictures({"cat.png": png(20, 20)}, served) as server:
        rows = [
            {"id": "cat", "q": "a", "photo": f"{server.url}/pics/cat.png"},
            {"id": "gone", "q": "b", "photo": f"{server.url}/pics/dog.png"},
        ]
        refused = image_job(tmp_path, sim.base_url, rows, provider={"name": "moonshot", "base_url": sim.base_url})
        result = submit(refused, env={"MOONSHOT_API_KEY": "sk-test"})
        assert result.exit_code == 3 and sim.stats()["requests"] == 0  # refused before sending
        _, bad = records(tmp_path)
        assert "does not fetch: set input.fetch_images: true" in bad[0]["error"]["message"]
        job = image_job(
            tmp_path,
            sim.base_url,
            rows,
            fetch_images=True,
            provider={"name": "moonshot", "base_url": sim.base_url},
        )
        result = submit(job, "--fresh", env={"MOONSHOT_API_KEY": "sk-test"})
        assert result.exit_code == 3, result.output
        good, bad = records(tmp_path)
        assert [r["custom_id"] for r in good] == ["cat"] and served == ["cat.png"]
        cat = png(20, 20)
        assert good[0]["images"] == [
            {"ref": f"{server.url}/pics/cat.png", "bytes": len(cat), "sha256": hashlib.sha256(cat).hexdigest()}
        ]
        assert bad[0]["custom_id"] == "gone" and bad[0]["error"]["code"] == "image_fetch_failed"
        assert f"{server.url}/pics/dog.png" in bad[0]["error"]["message"] and "HTTP 404" in bad[0]["error"]["message"]


def test_parquet_bytes_become_data_urls(tmp_path: Path, sim: SimServer) -> None:
    data = png(24, 12)
    table = pa.table({"id": ["a", "b"], "q": ["one", "two"], "photo": [data, (SAMPLES / "receipt.jpg").read_bytes()]})
    pq.write_table(table, tmp_path / "in.parquet")
    job = make_job(tmp_path, sim.base_url, input={"path": "in.parquet", "template": "{q}", "images": "photo"})
    assert submit(job).exit_code == 0
    good, _ = records(tmp_path)
    by_id = {r["custom_id"]: r for r in good}
    assert by_id["a"]["images"] == [{"ref": "photo", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    assert b"base64" not in (tmp_path / "runs/job/results.jsonl").read_bytes()


def test_the_batch_lane_carries_images_and_names_a_line_over_the_cap(
    tmp_path: Path, start_sim: Callable[..., SimServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    capped = dataclasses.replace(presets.BATCH_APIS["simulated"], max_line_bytes=20_000)
    monkeypatch.setitem(presets.PRESETS, "simulated", dataclasses.replace(presets.PRESETS["simulated"], batch=capped))
    sim = start_sim(batch_s=0.2)
    (tmp_path / "small.png").write_bytes(png(16, 16))
    (tmp_path / "big.png").write_bytes(png(16, 16, pad=30_000))
    rows = [{"id": "s", "q": "a", "photo": "small.png"}, {"id": "b", "q": "b", "photo": "big.png"}]
    provider = {"name": "simulated", "base_url": sim.base_url, "mode": "batch"}
    job = image_job(tmp_path, sim.base_url, rows, provider=provider)
    text = job.read_text() + "batch: {poll_s: 0.05, max_poll_s: 0.2}\n"
    job.write_text(text)
    result = submit(job)
    assert result.exit_code == 3, result.output
    good, bad = records(tmp_path)
    assert good[0]["custom_id"] == "s" and good[0]["images"][0]["ref"] == "small.png" and good[0]["batch_id"]
    assert good[0]["response"]["body"]["usage"]["prompt_tokens"] > 85
    assert bad[0]["custom_id"] == "b" and bad[0]["error"]["code"] == "line_too_large"
    assert "limit of 20,000 bytes" in bad[0]["error"]["message"] and "big.png (30," in bad[0]["error"]["message"]
    assert bad[0]["images"][0]["ref"] == "big.png"
    checked = cli("validate", str(job))  # reads no image in full, yet knows the line's size
    assert "row 2's batch line is" in checked.stdout and "[line_too_large]" in checked.stdout
    assert "row 1's batch line" not in checked.stdout


# --- limits, before anything is sent -----------------------------------------------------------------------------


def test_limits_are_found_before_sending_by_validate_and_submit(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(speaks="zhipu")
    (tmp_path / "a.png").write_bytes(png(8, 8))
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.7 not a picture")
    (tmp_path / "moving.gif").write_bytes(gif(3))
    rows = [
        {"id": "one", "q": "a", "photo": "a.png"},
        {"id": "two", "q": "b", "photo": ["a.png", "a.png"]},
        {"id": "pdf", "q": "c", "photo": "doc.pdf"},
        {"id": "missing", "q": "d", "photo": "nowhere.png"},
    ]
    provider = {"name": "zhipu", "base_url": sim.base_url}
    job = image_job(tmp_path, sim.base_url, rows, provider=provider, model="glm-4v-flash")
    env = {"ZHIPUAI_API_KEY": "id.secret"}
    checked = cli("validate", str(job), env=env)
    assert checked.exit_code != 0
    assert "row 2: 2 images, over zhipu's 1 a request for glm-4v-flash" in checked.stdout
    assert "row 3: image 'doc.pdf' is not an image" in checked.stdout
    assert "row 4: image 'nowhere.png': no such file" in checked.stdout
    assert "4 images in 1 row" not in checked.stdout and "1 image in 1 row" in checked.stdout
    result = submit(job, env=env)
    assert result.exit_code == 3
    good, bad = records(tmp_path)
    assert [r["custom_id"] for r in good] == ["one"] and sim.stats()["requests"] == 1
    assert {r["custom_id"]: r["error"]["code"] for r in bad} == {
        "two": "image_over_limit",
        "pdf": "image_format",
        "missing": "image_unreadable",
    }
    # OpenAI takes no animated GIF, nor one over 20 MB; set by hand, a smaller cap counts too
    openai = start_sim()
    rows = [{"id": "gif", "q": "a", "photo": "moving.gif"}, {"id": "big", "q": "b", "photo": "a.png"}]
    job = image_job(tmp_path, openai.base_url, rows, image_limits={"max_bytes": 50})
    job.write_text(job.read_text().replace("name: simulated", "name: simulated\n  simulate: {speaks: openai}"))
    result = submit(job, "--fresh")
    _, bad = records(tmp_path)
    messages = {r["custom_id"]: r["error"]["message"] for r in bad}
    assert "is an animated GIF, which openai does not take" in messages["gif"]
    assert f"is {len(png(8, 8)):,} bytes, over openai's 50 an image" in messages["big"]
    assert openai.stats()["requests"] == 0


def test_the_simulator_refuses_what_the_provider_refuses(start_sim: Callable[..., SimServer]) -> None:
    import urllib.error
    import urllib.request

    def post(server: SimServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            server.base_url + "/chat/completions", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())

    def body(model: str, *urls: str) -> dict[str, Any]:
        parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        return {"model": model, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *parts]}]}

    def data_url(data: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(data).decode()

    openai, ark, zhipu = start_sim(), start_sim(speaks="ark"), start_sim(speaks="zhipu")
    status, answer = post(openai, body("gpt-4o", data_url(gif(2))))
    assert status == 400 and answer["error"]["code"] == "invalid_image_format"
    status, answer = post(openai, body("gpt-4o", data_url(b"BM" + b"\x00" * 40)))
    assert status == 400 and answer["error"]["code"] == "invalid_image_format"
    status, answer = post(ark, body("doubao", data_url(b"%PDF")))
    assert status == 400 and answer["error"]["code"] == "InvalidParameter.UnsupportedImageFormat"
    status, answer = post(zhipu, body("glm-4v", *[data_url(png(4, 4))] * 6))
    assert status == 400 and answer["error"]["code"] == "1210"
    status, answer = post(openai, body("gpt-4o", data_url(png(1024, 1024))))
    assert status == 200 and answer["usage"]["prompt_tokens"] >= 765


# --- the response cache, by digest -------------------------------------------------------------------------------


def test_the_cache_key_is_the_images_digest(tmp_path: Path, sim: SimServer) -> None:
    (tmp_path / "a.png").write_bytes(png(10, 10))
    rows = [{"id": "r", "q": "what?", "photo": "a.png"}]
    assert submit(image_job(tmp_path, sim.base_url, rows)).exit_code == 0
    shutil.copy(tmp_path / "a.png", tmp_path / "b.png")  # the same picture under another name: a hit
    assert submit(image_job(tmp_path, sim.base_url, [{**rows[0], "photo": "b.png"}]), "--fresh").exit_code == 0
    good, _ = records(tmp_path)
    assert good[0]["cached"] is True and good[0]["images"][0]["ref"] == "b.png"
    assert sim.stats()["requests"] == 1
    (tmp_path / "b.png").write_bytes(png(11, 10))  # a changed file: asked again
    assert submit(image_job(tmp_path, sim.base_url, [{**rows[0], "photo": "b.png"}]), "--fresh").exit_code == 0
    good, _ = records(tmp_path)
    assert "cached" not in good[0] and sim.stats()["requests"] == 2


# --- downscaling -------------------------------------------------------------------------------------------------


def test_large_images_are_scaled_down_when_asked(tmp_path: Path, sim: SimServer) -> None:
    Image.new("RGB", (3000, 1500), (10, 200, 30)).save(tmp_path / "big.jpg", quality=90)
    rows = [{"id": "r", "q": "what?", "photo": "big.jpg"}]
    assert submit(image_job(tmp_path, sim.base_url, rows, image_max_side=300)).exit_code == 0
    good, _ = records(tmp_path)
    # 300 x 150 under OpenAI's rule is one 512-px tile: 85 + 170; the full picture would be 6 tiles
    assert good[0]["response"]["body"]["usage"]["prompt_tokens"] < 85 + 170 * 2 + 50
    assert good[0]["images"][0]["bytes"] == (tmp_path / "big.jpg").stat().st_size  # the file's own, as given


def test_a_photo_stored_sideways_is_scaled_down_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored 40 x 20, shown 20 x 40
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "grey").save(buffer, format="JPEG", exif=exif.tobytes())
    data, fmt = downscale(buffer.getvalue(), "jpeg", 30)
    with Image.open(io.BytesIO(data)) as sent:
        assert (fmt, sent.size) == ("jpeg", (15, 30))


def test_downscaling_without_pillow_says_how_to_install_it(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    (tmp_path / "a.png").write_bytes(png(8, 8))
    result = submit(image_job(tmp_path, sim.base_url, [{"id": "r", "q": "a", "photo": "a.png"}], image_max_side=64))
    assert result.exit_code == 2
    assert (
        "input.image_max_side scales images down with Pillow, which is not installed: pip install 'batchrun[images]'"
        in result.stderr
    )
    assert "Traceback" not in result.output


def test_export_keeps_image_columns_as_given(tmp_path: Path, sim: SimServer) -> None:
    (tmp_path / "a.png").write_bytes(png(8, 8))
    rows = [{"id": "r", "q": "a", "photo": "a.png"}]
    job = image_job(tmp_path, sim.base_url, rows)
    assert submit(job).exit_code == 0
    out = tmp_path / "out.jsonl"
    result = cli("export", str(tmp_path / "runs" / "job"), "--to", str(out), "--with-input")
    assert result.exit_code == 0, result.output
    exported = out.read_bytes()
    assert b"base64" not in exported and b"a.png" in exported


def test_report_counts_image_rows_and_images(tmp_path: Path, sim: SimServer) -> None:
    (tmp_path / "a.png").write_bytes(png(8, 8))
    rows = [
        {"id": "one", "q": "a", "photo": "a.png"},
        {"id": "two", "q": "b", "photo": ["a.png", "a.png"]},
        {"id": "none", "q": "c", "photo": None},
    ]
    assert submit(image_job(tmp_path, sim.base_url, rows)).exit_code == 0
    run = str(tmp_path / "runs" / "job")
    assert "images      3 images in 2 rows" in cli("report", run).stdout
    data = orjson.loads(cli("report", run, "--format", "json").stdout)
    assert (data["image_rows"], data["images"]) == (2, 3)
    page = tmp_path / "report.html"
    assert cli("report", run, "--html", str(page)).exit_code == 0
    assert "<th>images</th><td>3 images in 2 rows</td>" in page.read_text()


@pytest.mark.parametrize(
    ("input_keys", "extra", "message"),
    [
        ({"images": ["picture"]}, {}, "input.images names 'picture', but the first row has no field 'picture'"),
        ({"images": []}, {}, "input.images is an empty list"),
        ({"image_detail": "low"}, {}, "input.image_detail is set, but input.images names no columns"),
        ({"images": "photo", "image_limits": {"formats": ["png", "heic"]}}, {}, "has 'heic': expected some of png,"),
        (
            {"images": "photo", "fetch_images": True},
            {"provider": {"name": "simulated", "mode": "batch"}},
            "input.fetch_images: the batch lane writes its files before sending",
        ),
    ],
)
def test_image_keys_are_checked_in_one_line(
    tmp_path: Path, input_keys: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "q": "x", "photo": "a.png"}])
    job = make_job(
        tmp_path, "http://127.0.0.1:9/v1", input={"path": "in.jsonl", "template": "{q}", **input_keys}, **extra
    )
    result = cli("validate", str(job))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_estimate_and_validate_count_image_tokens_by_the_providers_rule(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(1024, 1024))
    rows = [{"id": f"r{i}", "q": "x", "photo": "a.png"} for i in range(4)]
    provider = {"name": "dashscope", "base_url": "http://127.0.0.1:9/v1"}
    job = image_job(tmp_path, "http://127.0.0.1:9/v1", rows, provider=provider, model="qwen-vl-plus")
    result = cli("estimate", str(job), env={"DASHSCOPE_API_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    assert "4 images in 4 rows: ~5,476 of the prompt tokens (Qwen's 28-px patches)" in result.stdout  # 4 x 37 x 37


def test_rules_are_per_provider_and_model_and_the_spec_overrides_them() -> None:
    from batchrun.spec.images import ImageLimitsSpec, image_tokens, rules_for

    assert rules_for("zhipu", "glm-4v-plus-0111").max_images == 5 and rules_for("zhipu", "glm-4v-flash").max_images == 1
    assert rules_for("zhipu", "glm-4.6v").max_images is None  # not published: no guess
    assert rules_for("openai", "gpt-4.1-mini-2025").tokens == "openai_patches"
    sf = rules_for("siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct")
    assert image_tokens(sf, 1024, 1024, "auto") == 256 and image_tokens(sf, 1024, 1024, "high") == 1369
    assert not rules_for("moonshot", "kimi-k2.5").urls
    given = ImageLimitsSpec(max_images=2, tokens_per_image=700).over(rules_for("openai", "gpt-4o"))
    assert given.max_images == 2 and image_tokens(given, 1024, 1024, None) == 700 and given.max_bytes == 20 * 1024**2


def test_a_job_whose_only_image_is_missing_says_where_paths_are_read_from(tmp_path: Path, sim: SimServer) -> None:
    result = submit(image_job(tmp_path, sim.base_url, [{"id": "r", "q": "a", "photo": "pics/gone.png"}]))
    assert result.exit_code == 2
    assert "no row can become a request: its one row fail the same way (image 'pics/gone.png': no such file" in (
        result.stderr
    )
    assert "a relative image path is read from the input file's folder" in result.stderr


def test_a_rows_image_values_are_read_from_lists_arrays_and_structs(tmp_path: Path) -> None:
    import numpy as np

    from batchrun.rows.images import ImageReader
    from batchrun.spec.parse import parse_spec

    write_jsonl(tmp_path / "in.jsonl", [{"q": "x", "a": "a.png", "b": None}])
    spec = parse_spec(
        {"input": {"path": "in.jsonl", "template": "{q}", "images": ["a", "b"]}, "model": "m", "provider": "simulated"},
        spec_path=tmp_path / "job.yaml",
        source="job.yaml",
    )
    reader = ImageReader(spec)
    row = {"a": np.array(["x.png", "y.png"], dtype=object), "b": {"bytes": b"\x89PNG", "path": "z.png"}}
    assert list(reader.values(row)) == [
        ("a[0]", "x.png"),
        ("a[1]", "y.png"),
        ("b", {"bytes": b"\x89PNG", "path": "z.png"}),
    ]
    assert list(reader.values({"a": "", "b": []})) == []


def test_a_built_row_holds_its_images_digest_and_reads_the_file_as_it_is_sent(tmp_path: Path) -> None:
    """A row waiting to be sent (or retried) holds no base64: its file is read in as it goes out, and a file that
    changed since its row was read is not sent as if it were the one recorded."""
    from batchrun.engine.job import prepare
    from batchrun.rows.request import BadRow, Request
    from batchrun.rows.sources import iter_rows
    from batchrun.spec.parse import load_spec

    (tmp_path / "a.png").write_bytes(png(40, 40, pad=5_000))
    job = image_job(tmp_path, "http://127.0.0.1:9/v1", [{"id": "r", "q": "what?", "photo": "a.png"}])
    prepared = prepare(load_spec(job))
    (raw,) = list(iter_rows(prepared.spec.input))
    built = prepared.builder.build(raw)
    assert isinstance(built, Request) and b"base64" not in built.payload and len(built.payload) < 500
    sent = prepared.builder.ready(built)
    assert isinstance(sent, Request) and b'"url":"data:image/png;base64,' in sent.payload and not sent.files
    (tmp_path / "a.png").write_bytes(png(41, 40))
    changed = prepared.builder.ready(built)
    assert isinstance(changed, BadRow) and changed.code == "image_changed"
    assert "image 'a.png' changed after its row was read" in changed.message


def test_arks_batch_chat_lane_carries_images(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(speaks="ark", batch_chat_latency=0.01)
    (tmp_path / "a.png").write_bytes(png(32, 32))
    rows = [{"id": f"r{i}", "q": f"q{i}", "photo": "a.png"} for i in range(3)]
    provider = {"name": "ark", "base_url": sim.base_url, "mode": "batch-chat"}
    job = image_job(tmp_path, sim.base_url, rows, provider=provider, model="doubao-seed-1.6-vision")
    result = submit(job, env={"ARK_API_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    good, _ = records(tmp_path)
    assert len(good) == 3 and all(r["batch_chat"] is True and r["images"][0]["ref"] == "a.png" for r in good)
    assert sim.stats()["images"] == 3 and sim.stats()["batch_chat_requests"] == 3
