"""The response cache at its edges: a key a gateway echoes never reaches the file nor another run; runs opening a
new file at the same moment all start; a damaged file costs a warning and cache misses, never the run."""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web

from batchrun.records import response
from batchrun.spec.cachespec import CacheSpec
from batchrun.store.cache import Cache
from batchrun.store.checkpoint import Checkpoint
from batchrun.text.redaction import redact

from .helpers import cli, make_job, read_jsonl, submit
from .simserver import AppServer, SimServer, ThreadServer

KEY_A = "sk-edge-aaaa-0123456789abcdef"
KEY_B = "sk-edge-bbbb-fedcba9876543210"
KEY_ENV = "EDGE_TEST_API_KEY"
ROWS = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(10)]


def records(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    run = tmp_path / "runs" / name
    return read_jsonl(run / "results.jsonl") + read_jsonl(run / "failures.jsonl")


class EchoGateway(ThreadServer):
    """A gateway in front of the simulator that echoes the caller's key (the Authorization header's) in every
    answer, as some do: in a `gateway` field of each JSON answer and stream chunk, and in a chat answer's text."""

    what = "the gateway"

    def __init__(self, upstream: str, first: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.upstream = upstream.rsplit("/v1", 1)[0]
        self.first = first  # done when the first request arrives, before it is forwarded

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{path:.*}", self._forward)
        async with ClientSession() as self.session, AppServer(app).serving() as url:
            yield url

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self.first is not None:
            first, self.first = self.first, None
            first()
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        url = self.upstream + request.rel_url.path_qs
        async with self.session.request(request.method, url, data=await request.read(), headers=headers) as up:
            body, kind = await up.read(), up.headers.get("Content-Type", "")
            status, request_id = up.status, up.headers.get("x-request-id")
        out = {"Content-Type": kind, **({"x-request-id": request_id} if request_id else {})}
        return web.Response(status=status, body=_echo(body, kind, key), headers=out)


def _echo(body: bytes, kind: str, key: str) -> bytes:
    def into(answer: Any) -> Any:
        if isinstance(answer, dict):
            answer["gateway"] = {"caller": key}
            for choice in answer.get("choices") or []:
                message = choice.get("message") if isinstance(choice, dict) else None
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    message["content"] += f" (answered for {key})"
        return answer

    if "event-stream" in kind:
        lines = body.split(b"\n")
        return b"\n".join(
            b"data: " + orjson.dumps(into(orjson.loads(line[6:]))) if line.startswith(b"data: {") else line
            for line in lines
        )
    if "jsonl" in kind:  # a batch's output file: each line's answer
        out = []
        for line in body.splitlines():
            entry = orjson.loads(line)
            into((entry.get("response") or {}).get("body"))
            out.append(orjson.dumps(entry))
        return b"".join(line + b"\n" for line in out)
    if "json" in kind:
        return orjson.dumps(into(orjson.loads(body)))
    return body


@pytest.fixture
def gateway(start_sim: Callable[..., SimServer]) -> Iterator[tuple[SimServer, EchoGateway]]:
    sim = start_sim(task_s=(0.05, 0.1), batch_s=0.2)
    with EchoGateway(sim.base_url) as gw:
        yield sim, gw


def file_bytes(path: Path) -> bytes:
    """The cache file and its write-ahead log, as they are on disk."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def stored_answers(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        return [bytes(row[0]) for row in db.execute("SELECT answer FROM answers")]


LANES: dict[str, dict[str, Any]] = {
    "sync": {},
    "stream": {"provider": {"mode": "stream"}},
    "async": {"provider": {"mode": "async"}, "limits": {"poll_rps": 100}},
    "batch": {"provider": {"mode": "batch"}, "batch": {"poll_s": 0.05, "max_poll_s": 0.2}},
    "embeddings": {"endpoint": "embeddings", "params": {}},
}


def edge_job(tmp_path: Path, base_url: str, name: str, lane: str, cache: Path, **extra: Any) -> Path:
    options = {k: v for k, v in LANES[lane].items() if k != "provider"}
    provider = {"name": "simulated", "base_url": base_url, "api_key_env": KEY_ENV, **LANES[lane].get("provider", {})}
    rows = [{"id": r["id"], "input": r["prompt"]} for r in ROWS] if lane == "embeddings" else ROWS
    return make_job(
        tmp_path, base_url, rows, name=name, provider=provider, cache={"path": str(cache)}, **options, **extra
    )


@pytest.mark.parametrize("lane", list(LANES))
def test_an_echoed_key_never_reaches_the_cache_nor_a_later_run(
    tmp_path: Path, gateway: tuple[SimServer, EchoGateway], lane: str
) -> None:
    sim, gw = gateway
    path = tmp_path / "shared" / "cache.sqlite3"
    path.parent.mkdir()
    # Another run holding the file open keeps the write-ahead log on disk, as a shared cache's often is.
    Cache(CacheSpec(path=path), secrets=(), warn=pytest.fail).close()
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM answers").fetchone() == (0,)
    try:
        first = submit(edge_job(tmp_path, gw.base_url, "a", lane, path), env={KEY_ENV: KEY_A})
        assert first.exit_code == 0, first.output
        answered = orjson.dumps(records(tmp_path, "a"))
        assert b"[redacted]" in answered and KEY_A.encode() not in answered  # the gateway echoed the key
        assert KEY_A.encode() not in file_bytes(path)
        assert path.with_name(path.name + "-wal").exists()
    finally:
        other.close()
    entries = stored_answers(path)
    assert len(entries) == len(ROWS) and all(b"[redacted]" in e and KEY_A.encode() not in e for e in entries)
    sent = sim.stats()["requests"]
    second = submit(edge_job(tmp_path, gw.base_url, "b", lane, path), env={KEY_ENV: KEY_B})
    assert second.exit_code == 0, second.output
    again = records(tmp_path, "b")
    assert len(again) == len(ROWS) and all(rec.get("cached") for rec in again)
    assert KEY_A.encode() not in orjson.dumps(again) and sim.stats()["requests"] == sent
    assert KEY_A not in first.output + second.output


def test_a_key_an_older_version_stored_raw_is_never_handed_back(
    tmp_path: Path, gateway: tuple[SimServer, EchoGateway]
) -> None:
    sim, gw = gateway
    path = tmp_path / "cache.sqlite3"
    assert submit(edge_job(tmp_path, gw.base_url, "a", "sync", path), env={KEY_ENV: KEY_A}).exit_code == 0
    with sqlite3.connect(path) as db:  # as an older batchrun left it: the key stored as the gateway sent it
        db.execute("UPDATE answers SET answer = CAST(replace(CAST(answer AS TEXT), '[redacted]', ?) AS BLOB)", (KEY_A,))
    assert all(KEY_A.encode() in e for e in stored_answers(path))
    # a run under that key gets the answers without it, and stores them again without it
    assert submit(edge_job(tmp_path, gw.base_url, "b", "sync", path), env={KEY_ENV: KEY_A}).exit_code == 0
    assert all(rec["cached"] for rec in records(tmp_path, "b"))
    assert not any(KEY_A.encode() in e for e in stored_answers(path))
    # so a run under another key is never served it
    assert submit(edge_job(tmp_path, gw.base_url, "c", "sync", path), env={KEY_ENV: KEY_B}).exit_code == 0
    later = records(tmp_path, "c")
    assert all(rec["cached"] for rec in later) and KEY_A.encode() not in orjson.dumps(later)
    assert sim.stats()["requests"] == len(ROWS)


def test_a_read_only_cache_hands_back_no_key_of_the_run_and_escaped_keys_are_found(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    odd = 'sk-"quoted"\\slash-0123'  # inside JSON text it is escaped: `sk-\"quoted\"\\slash-0123`
    answer = response(200, "req-1", {"choices": [{"message": {"content": f"for {odd} and {KEY_A}"}}]})
    writer = Cache(CacheSpec(path=path), secrets=[odd, "short"], warn=pytest.fail)
    writer.put(b"k" * 16, "m", answer, has_output=False)
    writer.close()
    raw = file_bytes(path)
    assert odd.encode() not in raw and orjson.dumps(odd)[1:-1] not in raw and KEY_A.encode() in raw
    reader = Cache(CacheSpec(mode="read", path=path), secrets=[KEY_A], warn=pytest.fail)
    hit = reader.get(b"k" * 16)
    reader.close()
    assert hit is not None and KEY_A not in orjson.dumps(hit.response).decode()
    assert KEY_A.encode() in b"".join(stored_answers(path))  # read mode never writes, not even to clean up


def test_a_key_json_escapes_is_blanked_out_of_records_and_cache_alike(
    tmp_path: Path, gateway: tuple[SimServer, EchoGateway]
) -> None:
    _, gw = gateway
    odd = 'sk-"odd"\\key-0123456789'  # in a JSON line it reads sk-\"odd\"\\key-0123456789
    path = tmp_path / "cache.sqlite3"
    ran = submit(edge_job(tmp_path, gw.base_url, "a", "sync", path), env={KEY_ENV: odd})
    assert ran.exit_code == 0, ran.output
    written = (tmp_path / "runs" / "a" / "results.jsonl").read_bytes() + file_bytes(path)
    assert b"[redacted]" in written
    assert odd.encode() not in written and orjson.dumps(odd)[1:-1] not in written and b"key-0123456789" not in written


def test_a_key_holding_another_is_blanked_out_whole(tmp_path: Path) -> None:
    short, long = "sk-team-01234567", "sk-team-01234567-extended"  # a pool's keys: one holds the other
    line = f"for {long} and {short}".encode()
    for keys in ([short, long], [long, short]):
        assert redact(line, [k.encode() for k in keys]) == b"for [redacted] and [redacted]"
        assert Checkpoint(tmp_path, secrets=keys).redact(line) == b"for [redacted] and [redacted]"


# --- many runs opening one new file at the same moment ----------------------------------------------------------

OPENERS, ROUNDS = 4, 60


def _open_at_the_barrier(folder: str, barrier: Any, said: Any) -> None:
    """One process: at each round, open (and use) that round's new cache file the moment every process does; then
    say what failed (None: nothing did)."""
    failed: list[str] = []
    for round_ in range(ROUNDS):
        barrier.wait()
        try:
            cache = Cache(CacheSpec(path=Path(folder) / f"{round_}.sqlite3"), secrets=(), warn=failed.append)
            cache.put(os.urandom(16), "m", response(200, None, {"n": round_}), has_output=False)
            cache.close()
        except Exception as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
    said.put(failed)


def test_runs_opening_a_new_cache_at_the_same_moment_all_start(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, said = ctx.Barrier(OPENERS, timeout=120), ctx.Queue()
    procs = [ctx.Process(target=_open_at_the_barrier, args=(str(tmp_path), barrier, said)) for _ in range(OPENERS)]
    for proc in procs:
        proc.start()
    failed = [line for _ in procs for line in said.get(timeout=300)]  # read before joining: a full pipe would wait
    for proc in procs:
        proc.join(60)
    assert failed == [] and [proc.exitcode for proc in procs] == [0] * OPENERS
    for round_ in range(ROUNDS):
        with sqlite3.connect(tmp_path / f"{round_}.sqlite3") as db:
            assert db.execute("SELECT count(*) FROM answers").fetchone() == (OPENERS,)


# --- a damaged file --------------------------------------------------------------------------------------------


def _damage_pages(path: Path, size: int = 0) -> None:
    """Overwrite every page past the table's root (its leaves, where the answers are) with garbage, in place."""
    if not size:
        with sqlite3.connect(path) as db:
            size = db.execute("PRAGMA page_size").fetchone()[0]
    length = path.stat().st_size
    assert length > 8 * size
    with open(path, "r+b") as f:
        f.seek(2 * size)
        f.write(b"\xa5" * (length - 2 * size))


def _filled(tmp_path: Path, sim: SimServer, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "cache.sqlite3"
    assert submit(make_job(tmp_path, sim.base_url, rows, name="fill", cache={"path": str(path)})).exit_code == 0
    return path


DAMAGES: dict[str, Callable[[Path], object]] = {
    "pages overwritten": _damage_pages,
    "not a database": lambda path: path.write_bytes(os.urandom(64 * 1024)),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 3]),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("mode", ["read_write", "write"])
def test_a_damaged_cache_costs_one_warning_and_cache_misses(
    tmp_path: Path, start_sim: Callable[..., SimServer], damage: str, mode: str
) -> None:
    sim = start_sim()
    rows = [{"id": f"r{i}", "prompt": f"question {i} " + "and more words " * 20} for i in range(200)]
    path = _filled(tmp_path, sim, rows)
    DAMAGES[damage](path)
    sent = sim.stats()["requests"]
    ran = submit(make_job(tmp_path, sim.base_url, rows, name="job", cache={"mode": mode, "path": str(path)}))
    assert ran.exit_code == 0, ran.output
    assert "Traceback" not in ran.output
    warnings = [line for line in ran.output.splitlines() if "response cache" in line and "warning" in line]
    assert len(warnings) == 1, ran.output
    assert str(path) in warnings[0] and "delete it" in warnings[0] and "goes on without it" in warnings[0]
    done = Counter(rec["row"] for rec in records(tmp_path, "job"))
    assert set(done) == set(range(1, len(rows) + 1)) and set(done.values()) == {1}
    assert read_jsonl(tmp_path / "runs" / "job" / "failures.jsonl") == []
    assert sim.stats()["requests"] == sent + len(rows)  # every row asked again, none lost
    status = cli("status", str(tmp_path / "runs" / "job"), "--json")
    assert status.exit_code == 0 and orjson.loads(status.stdout)["rows_done"] == len(rows), status.output
    stats = cli("cache", "stats", "--path", str(path))  # says what to do too, in one line
    assert stats.exit_code == 2 and "Traceback" not in stats.output and "delete it" in stats.output


def test_a_cache_damaged_while_a_run_uses_it_costs_one_warning(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim()
    path = _filled(tmp_path, sim, [{"id": f"f{i}", "prompt": f"filler {i}"} for i in range(600)])
    with sqlite3.connect(path) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(30)]
    # The run has opened the file and looked its first rows up when its first request reaches the gateway; the
    # rows after them are looked up, and their answers written, in a file whose pages are garbage.
    with EchoGateway(sim.base_url, first=lambda: _damage_pages(path, size)) as gw:
        job = make_job(tmp_path, gw.base_url, rows, cache={"path": str(path)}, limits={"concurrency": 1})
        ran = submit(job)
    assert ran.exit_code == 0 and "Traceback" not in ran.output, ran.output
    warnings = [line for line in ran.output.splitlines() if "response cache" in line and "warning" in line]
    assert len(warnings) == 1 and "damaged" in warnings[0] and str(path) in warnings[0], ran.output
    done = Counter(rec["row"] for rec in records(tmp_path, "job"))
    assert set(done) == set(range(1, len(rows) + 1)) and set(done.values()) == {1}
    assert read_jsonl(tmp_path / "runs" / "job" / "failures.jsonl") == []


# --- on Ray: the workers write the cache ------------------------------------------------------------------------

HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(not HAVE_RAY, reason="the ray extra is not installed (pip install 'batchrun[ray]')")
def test_ray_workers_never_store_an_echoed_key(tmp_path: Path, gateway: tuple[SimServer, EchoGateway]) -> None:
    import ray

    sim, gw = gateway
    path = tmp_path / "cache.sqlite3"
    # The workers' environment is the one they start with: the key reaches them through it.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024**2,
        runtime_env={"env_vars": {KEY_ENV: KEY_A}},
    )
    try:
        scale = {"slice_rows": 5, "workers": 2}
        ran = submit(edge_job(tmp_path, gw.base_url, "a", "sync", path, scale=scale), env={KEY_ENV: KEY_A})
        assert ran.exit_code == 0, ran.output
    finally:
        ray.shutdown()
    assert b"[redacted]" in orjson.dumps(records(tmp_path, "a"))
    entries = stored_answers(path)
    assert len(entries) == len(ROWS) and not any(KEY_A.encode() in e for e in entries)
    assert KEY_A.encode() not in file_bytes(path)
    again = submit(edge_job(tmp_path, gw.base_url, "b", "sync", path), env={KEY_ENV: KEY_B})
    assert again.exit_code == 0 and all(rec["cached"] for rec in records(tmp_path, "b"))
    assert KEY_A.encode() not in orjson.dumps(records(tmp_path, "b")) and sim.stats()["requests"] == len(ROWS)
