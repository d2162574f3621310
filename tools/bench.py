"""`make bench`: throughput, rate-limit, overhead, memory and resume figures against the simulated provider.

Each scenario starts `batchrun simulate` in its own process, runs `batchrun submit` in another, and reads
the figures from the run directory, the provider's counters and the client's rusage. `--quick` runs
smaller versions of the same scenarios in under a minute.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from batchrun.records import iso_epoch
from batchrun.rows.tokens import estimate_messages

from .bench_images import bench_images
from .bench_kit import (
    PROVIDER_LIKE,
    PY,
    Figure,
    Simulator,
    long_prompt,
    run_client,
    short_prompt,
    write_parquet,
    write_prompts,
)
from .bench_reasoning import bench_reasoning


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def bench_configured_rpm(work: Path, rows: int) -> list[Figure]:
    rpm = 6000
    sim = Simulator("--rpm", str(rpm), *PROVIDER_LIKE)
    try:
        run = run_client(
            work, sim, write_prompts(work / "rpm.jsonl", rows, short_prompt), limits={"rpm": rpm}, name="rpm"
        )
    finally:
        sim.close()
    share = run.rows_per_s / (rpm / 60)
    return [
        Figure(
            f"1 RPM {rpm} given: rows/s vs RPM/60 ({rows} rows)",
            ">= 97 %",
            f"{run.rows_per_s:.1f}/s = {pct(share)}",
            share >= 0.97,
        ),
        Figure("1 RPM given: requests answered 429", "<= 1 %", pct(run.share_429), run.share_429 <= 0.01),
    ]


def bench_key_pool(work: Path, rows: int, *, learned: bool) -> list[Figure]:
    """Three keys, each limited to 2000 RPM by the provider: the pool should fill the sum, 6000 RPM. Either each
    key's limit is given (limits.rpm applies per key) or none is, and each key learns its own from its 429s."""
    per_key, envs = 2000, ("BENCH_KEY_A", "BENCH_KEY_B", "BENCH_KEY_C")
    for i, env in enumerate(envs):
        os.environ[env] = f"sk-bench-pool-{i}-{os.getpid()}"
    args = [arg for env in envs for arg in ("--key-rpm", f"{env}={per_key}")]
    sim = Simulator(*args, *PROVIDER_LIKE)
    name = "pool-learned" if learned else "pool"
    try:
        run = run_client(
            work,
            sim,
            write_prompts(work / f"{name}.jsonl", rows, short_prompt),
            limits=None if learned else {"rpm": per_key},
            name=name,
            extra={"provider": {"name": "simulated", "base_url": sim.url, "api_key_env": list(envs)}},
        )
    finally:
        sim.close()
    total = per_key * len(envs)
    share = run.rows_per_s / (total / 60)
    how = "no limits given, each learnt" if learned else f"limits.rpm {per_key} per key"
    ok = (share >= 0.97 and run.share_429 <= 0.01) if not learned else (share >= 0.95 and run.share_429 <= 0.02)
    return [
        Figure(
            f"11 key pool, 3 keys of {per_key} RPM ({how}, {rows} rows): rows/s vs the sum, 429s",
            ">= 97 %, <= 1 %" if not learned else ">= 95 %, <= 2 %",
            f"{run.rows_per_s:.1f}/s = {pct(share)}, {pct(run.share_429)} 429s",
            ok,
        )
    ]


def bench_configured_tpm(work: Path, rows: int, accounting: str) -> list[Figure]:
    tpm = 6_000_000
    sim = Simulator("--tpm", str(tpm), "--tpm-accounting", accounting, *PROVIDER_LIKE)
    try:
        path = write_prompts(work / f"tpm-{accounting}.jsonl", rows, long_prompt)
        run = run_client(work, sim, path, limits={"tpm": tpm}, max_tokens=512, name=f"tpm-{accounting}")
    finally:
        sim.close()
    stats = run.stats
    if accounting == "reserve":  # what each request costs the provider's bucket
        per_row = estimate_messages([{"role": "user", "content": long_prompt(rows // 2)}]) + 512
    else:
        per_row = (stats["billed_prompt_tokens"] + stats["billed_completion_tokens"]) / stats["billed_requests"]
    ideal = tpm / 60 / per_row
    share = run.rows_per_s / ideal
    label = {"reserve": "(a) prompt + max_tokens on admission", "actual": "(b) actual tokens after the answer"}
    return [
        Figure(
            f"1 TPM given, {label[accounting]}: rows/s vs TPM allows",
            ">= 97 %",
            f"{run.rows_per_s:.1f}/s of {ideal:.1f}/s = {pct(share)}",
            share >= 0.97,
        ),
        Figure(
            f"1 TPM given, ({accounting}): requests answered 429", "<= 1 %", pct(run.share_429), run.share_429 <= 0.01
        ),
    ]


# How providers say no: Zhipu's bare 429s; OpenAI's, with Retry-After and the limit named in the message; and
# x-ratelimit-* headers on every answer.
PUSHBACK = {
    "bare": ("bare 429s", ["--bare-429"]),
    "retry-after": ("429s with Retry-After naming the limit", []),
    "headers": ("x-ratelimit headers", ["--rate-headers"]),
}


def bench_unknown_limits(work: Path, rows: int, *, kind: str) -> list[Figure]:
    rpm = 6000
    how, extra = PUSHBACK[kind]
    sim = Simulator("--rpm", str(rpm), *extra, *PROVIDER_LIKE)
    try:
        run = run_client(work, sim, write_prompts(work / "unknown.jsonl", rows, short_prompt), name=f"unknown-{kind}")
    finally:
        sim.close()
    share = run.rows_per_s / (rpm / 60)
    learned = run.usage.get("throttle", {})
    figures = [
        Figure(
            f"2 no limits given, {how}: rows/s vs true {rpm} RPM ({rows} rows)",
            ">= 97 %",
            f"{run.rows_per_s:.1f}/s = {pct(share)}",
            share >= 0.97,
        ),
        Figure(f"2 no limits given, {how}: requests answered 429", "<= 2 %", pct(run.share_429), run.share_429 <= 0.02),
    ]
    figures.append(
        Figure(
            f"2 {how}: rate and concurrency at the end",
            "",
            f"{learned.get('rpm')} RPM, concurrency {learned.get('concurrency')}",
            None,
        )
    )
    return figures


def bench_concurrency_limit(work: Path, rows: int) -> list[Figure]:
    """A provider that limits requests in flight, not their rate (Zhipu's 429 code 1302), no limits given:
    the most it can answer is its limit over the mean answer time."""
    limit = 20
    sim = Simulator("--max-inflight", str(limit), "--bare-429", "--latency", "0.3")
    try:
        run = run_client(work, sim, write_prompts(work / "inflight.jsonl", rows, short_prompt), name="inflight")
    finally:
        sim.close()
    with open(work / "runs" / "inflight" / "results.jsonl", "rb") as f:
        latencies = [float(orjson.loads(line)["latency_s"]) for line in f]
    ideal = limit / (sum(latencies) / len(latencies))
    share = run.rows_per_s / ideal
    return [
        Figure(
            f"2 no limits given, {limit} in flight at most (Zhipu 1302): rows/s vs limit / mean latency",
            ">= 90 %",
            f"{run.rows_per_s:.1f}/s of {ideal:.1f}/s = {pct(share)}",
            share >= 0.90,
        ),
        Figure("2 in-flight limit: requests answered 429", "<= 3 %", pct(run.share_429), run.share_429 <= 0.03),
        Figure(
            "2 in-flight limit: concurrency at the end", "", f"{run.usage.get('throttle', {}).get('concurrency')}", None
        ),
    ]


def bench_overhead(work: Path, rows: int) -> list[Figure]:
    sim = Simulator("--latency", "0")
    try:
        run = run_client(work, sim, write_prompts(work / "overhead.jsonl", rows, short_prompt), name="overhead")
    finally:
        sim.close()
    return [
        Figure(
            f"3 client overhead, zero-latency provider ({rows} rows): rows/s",
            ">= 4000",
            f"{run.rows_per_s:.0f}",
            run.rows_per_s >= 4000,
        ),
        Figure("3 client CPU per row (user + system)", "", f"{1000 * run.cpu_s / rows:.3f} ms", None),
    ]


def answered_rate(run_dir: Path) -> float:
    """Rows answered per second from the first answer to the last: a Ray run's start-up (a few seconds to start
    Ray and its workers) left out, as it would be in a long run."""
    stamps = sorted(
        iso_epoch(orjson.loads(line)["completed_at"])
        for line in (run_dir / "results.jsonl").read_bytes().splitlines()
        if line.strip()
    )
    return (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)


def bench_ray_limit(work: Path, rows: int, *, learned: bool) -> list[Figure]:
    """Four Ray workers against one provider limited to 6000 RPM: together they should fill it, as one client."""
    rpm = 6000
    sim = Simulator("--rpm", str(rpm), *PROVIDER_LIKE)
    name = "ray-learned" if learned else "ray"
    try:
        run = run_client(
            work,
            sim,
            write_prompts(work / f"{name}.jsonl", rows, short_prompt),
            limits=None if learned else {"rpm": rpm},
            name=name,
            extra={"scale": {"slice_rows": rows // 8}},
            args=("--ray", "--workers", "4"),
        )
    finally:
        sim.close()
    rate = answered_rate(work / "runs" / name)
    share = rate / (rpm / 60)
    how = "no limits given, learnt together" if learned else f"limits.rpm {rpm}"
    ok = share >= 0.95 and run.share_429 <= (0.02 if learned else 0.01)
    return [
        Figure(
            f"12 Ray, 4 workers, one provider of {rpm} RPM ({how}, {rows} rows): answered/s vs RPM/60, 429s",
            ">= 95 %, " + ("<= 2 %" if learned else "<= 1 %"),
            f"{rate:.1f}/s = {pct(share)}, {pct(run.share_429)} 429s",
            ok,
        )
    ]


def bench_ray_overhead(work: Path, rows: int) -> list[Figure]:
    """1, 2 and 4 Ray workers against a zero-latency provider on this machine: what the shared limit and the
    shipping of records cost, beside one process without Ray; and the memory of each worker."""
    sim = Simulator("--latency", "0")
    figures = []
    try:
        source = write_prompts(work / "ray-overhead.jsonl", rows, short_prompt)
        # every run asks the provider: the response cache would answer the later runs from the first one's answers
        run_client(work, sim, source, name="no-ray", extra={"cache": "off"})
        rate = answered_rate(work / "runs" / "no-ray")
        figures.append(Figure(f"12 zero-latency, no Ray ({rows} rows): rows/s", "", f"{rate:.0f}/s", None))
        for workers in (1, 2, 4):
            name = f"ray-{workers}"
            run = run_client(
                work,
                sim,
                source,
                name=name,
                limits={"rpm": 6_000_000},  # a limit to lease, far above what this machine can send
                extra={"scale": {"slice_rows": rows // 8}, "cache": "off"},
                args=("--ray", "--workers", str(workers)),
            )
            rate = answered_rate(work / "runs" / name)
            ray_facts = run.usage["ray"]
            figures.append(
                Figure(
                    f"12 zero-latency, Ray with {workers} worker(s): rows/s; peak RSS per worker, driver",
                    "",
                    f"{rate:.0f}/s; {ray_facts['worker_peak_rss_mb']:.0f} MB, {run.peak_rss_mb:.0f} MB; "
                    f"{ray_facts['lease_calls']:,} lease calls",
                    None,
                )
            )
    finally:
        sim.close()
    return figures


def bench_async(work: Path, rows: int) -> list[Figure]:
    """Zhipu-style asyncCompletions: tasks take 2-20 s; how many polls each costs, and how long the tail is."""
    rpm, poll_rps = 1200, 50
    sim = Simulator("--rpm", str(rpm), "--task-s", "2", "20", "--latency", "0.1")
    try:
        run = run_client(
            work,
            sim,
            write_prompts(work / "async.jsonl", rows, short_prompt),
            name="async",
            mode="async",
            limits={"rpm": rpm, "poll_rps": poll_rps},
        )
    finally:
        sim.close()
    run_dir = work / "runs" / "async"
    last_submit = max(orjson.loads(line)["t"] for line in (run_dir / "tasks.jsonl").read_bytes().splitlines())
    last_result = max(
        iso_epoch(orjson.loads(line)["completed_at"]) for line in (run_dir / "results.jsonl").read_bytes().splitlines()
    )
    tail = last_result - last_submit
    per_task = run.usage["polls"] / max(1, run.usage["rows_succeeded"])
    submitted = run.stats["tasks_submitted"]
    return [
        Figure(
            f"6 async, tasks 2-20 s ({rows} rows, {poll_rps} polls/s budget): polls per completed task",
            "<= 5",
            f"{per_task:.2f} ({run.usage['polls']} polls)",
            per_task <= 5,
        ),
        Figure(
            "6 async: last submission to last result",
            "<= 35 s (20 s task + one poll interval)",
            f"{tail:.1f} s",
            tail <= 35,
        ),
        Figure("6 async: tasks submitted per row", "1.00", f"{submitted / rows:.2f} ({submitted})", submitted == rows),
    ]


def bench_batch(work: Path, big: int, small: int) -> list[Figure]:
    """The batch lane on the simulator's Batch API: every row once, one upload and one batch per shard, and
    memory that does not grow with the rows."""
    figures = []
    rss = {}
    for n in (small, big):
        sim = Simulator("--batch-s", "2", "--latency", "0")
        try:
            path = write_prompts(work / f"batch-{n}.jsonl", n, short_prompt)
            t0 = time.monotonic()
            run = run_client(
                work, sim, path, name=f"batch-{n}", mode="batch", extra={"batch": {"poll_s": 0.5, "max_poll_s": 2}}
            )
            wall = time.monotonic() - t0
        finally:
            sim.close()
        path.unlink()
        rss[n] = run.peak_rss_mb
        shards = math.ceil(n / 50_000)
        stats, usage = run.stats, run.usage
        once = usage["rows_succeeded"] == n and stats["billed_twice"] == 0 and stats["billed_requests"] == n
        figures.append(
            Figure(
                f"8 batch lane, {n:,} rows: records, rows billed twice",
                f"{n:,}, 0",
                f"{usage['rows_succeeded']:,}, {stats['billed_twice']} ({wall:.1f} s with a 2 s batch)",
                once,
            )
        )
        figures.append(
            Figure(
                f"8 batch lane, {n:,} rows: files uploaded, batches created",
                f"{shards}, {shards} (one per shard)",
                f"{stats['files_uploaded']}, {stats['batches_created']}",
                stats["files_uploaded"] == stats["batches_created"] == shards,
            )
        )
    growth = rss[big] / rss[small] - 1
    figures.append(
        Figure(
            f"8 batch lane peak RSS, {small:,} -> {big:,} rows",
            "<= 20 % growth",
            f"{rss[small]:.1f} -> {rss[big]:.1f} MB ({growth:+.1%})",
            growth <= 0.2,
        )
    )
    return figures


BENCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "enum": ["economy", "technology", "politics", "sport", "culture"]},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "entities": {"type": "array", "items": {"type": "string"}},
        "is_local": {"type": "boolean"},
    },
    "required": ["topic", "sentiment", "score", "entities", "is_local"],
    "additionalProperties": False,
}


def bench_structured(work: Path, rows: int) -> list[Figure]:
    """Structured output with 10 % of first answers spoilt (bad JSON, a wrong type, a missing field, a cut answer):
    every row valid at the end, what the repairs cost, and the CPU judging an answer takes."""
    from batchrun.rows.structured import Checker
    from batchrun.spec.output import OutputSpec

    sim = Simulator("--latency", "0", "--invalid-json-rate", "0.1")
    try:
        run = run_client(
            work,
            sim,
            write_prompts(work / "structured.jsonl", rows, short_prompt),
            name="structured",
            max_tokens=256,
            extra={"output": {"schema": BENCH_SCHEMA}},
        )
    finally:
        sim.close()
    model = run.usage["models"]["sim-small"]
    valid = model["outputs_first_try"] + model["outputs_repaired"]
    bodies = [
        orjson.loads(line)["response"]["body"]
        for line in (work / "runs" / "structured" / "results.jsonl").read_bytes().splitlines()
    ]
    checker = Checker(OutputSpec(schema=BENCH_SCHEMA))
    t0 = time.perf_counter()
    judged = [checker.judge(body) for body in bodies]
    per_row_ms = 1000 * (time.perf_counter() - t0) / max(1, len(bodies))
    assert all(j.problem is None for j in judged), "a kept answer does not fit the schema"
    return [
        Figure(
            f"9 structured output, {rows:,} rows, 10 % spoilt first answers: rows valid at the end",
            "100 %",
            f"{pct(valid / rows)} ({model['outputs_repaired']:,} after repairs, {model['outputs_invalid']} invalid)",
            valid == rows,
        ),
        Figure(
            "9 structured output: extra requests spent on repairs",
            "",
            f"{pct(model['repairs'] / rows)} ({model['repairs']:,} requests)",
            None,
        ),
        Figure(
            "9 structured output: judging CPU per answer (parse + validate)",
            "<= 0.05 ms",
            f"{per_row_ms:.4f} ms",
            per_row_ms <= 0.05,
        ),
        Figure("9 structured output: client CPU per row", "", f"{1000 * run.cpu_s / rows:.3f} ms", None),
    ]


def bench_cache(work: Path, entries: int, rows: int) -> list[Figure]:
    """The response cache at size: lookups in a cache of `entries` answers, the file's size per entry, and a
    re-run of a job whose every answer is in it."""
    import hashlib
    import random

    from batchrun.spec.cachespec import CacheSpec
    from batchrun.store.cache import Cache
    from batchrun.store.cache import stats as cache_stats

    path = work / "cache.sqlite3"
    cache = Cache(CacheSpec(path=path), secrets=(), warn=print)
    t0 = time.perf_counter()
    for i in range(entries):  # answers shaped as the simulator's, about as long as a short chat answer
        key = hashlib.blake2b(f"filler {i}".encode(), digest_size=16).digest()
        body = {
            "id": f"chatcmpl-sim-{i:024d}",
            "object": "chat.completion",
            "created": 1795500000,
            "model": "sim-small",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"[simulated sim-small] item {i} in five words"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
        }
        cache.put(key, "sim-small", {"status_code": 200, "request_id": f"sim-{i}", "body": body}, has_output=False)
        if len(cache.pending) >= 50_000:
            cache.commit()
    cache.close()
    fill_s = time.perf_counter() - t0
    size = int(cache_stats(path)["bytes"])
    cache = Cache(CacheSpec(path=path, mode="read"), secrets=(), warn=print)
    keys = [
        hashlib.blake2b(f"filler {i}".encode(), digest_size=16).digest() for i in random.sample(range(entries), rows)
    ]
    t0 = time.perf_counter()
    hits = sum(1 for key in keys if cache.get(key) is not None)
    lookup_ms = 1000 * (time.perf_counter() - t0) / rows
    cache.close()
    sim = Simulator("--latency", "0")
    try:
        prompts = write_prompts(work / "cached.jsonl", rows, short_prompt)
        extra = {"cache": {"path": str(path)}}
        run_client(work, sim, prompts, name="cache-first", extra=extra)
        before = sim.stats()["requests"]
        again = run_client(work, sim, prompts, name="cache-again", extra=extra)
        sent = sim.stats()["requests"] - before
    finally:
        sim.close()
    from_cache = again.usage["models"]["sim-small"]["response_cache_rows"]
    return [
        Figure(
            f"10 response cache of {entries:,} entries: lookup per row (random hits, {hits:,} of {rows:,})",
            "<= 0.05 ms",
            f"{lookup_ms:.4f} ms",
            lookup_ms <= 0.05 and hits == rows,
        ),
        Figure(
            "10 response cache: file size per entry",
            "",
            f"{size / entries:,.0f} bytes ({size / 1e6:,.0f} MB; filled at {entries / fill_s:,.0f} entries/s)",
            None,
        ),
        Figure(
            f"10 re-run of a {rows:,}-row job from the cache: requests sent, rows cached, rows/s",
            f"0, {rows:,}",
            f"{sent}, {from_cache:,}, {again.rows_per_s:,.0f} rows/s ({1000 * again.cpu_s / rows:.3f} ms CPU a row)",
            sent == 0 and from_cache == rows,
        ),
    ]


def bench_memory(work: Path, big: int, small: int) -> list[Figure]:
    figures = []
    for kind in ("jsonl", "parquet"):
        rss, concurrency = {}, {}
        for n in (small, big):
            sim = Simulator("--latency", "0")
            try:
                path = work / f"mem-{n}.{kind}"
                if kind == "jsonl":
                    write_prompts(path, n, short_prompt)
                else:
                    write_parquet(path, n)
                run = run_client(work, sim, path, name=f"mem-{kind}-{n}")
                rss[n], concurrency[n] = run.peak_rss_mb, run.usage.get("throttle", {}).get("concurrency")
            finally:
                sim.close()
            path.unlink()
        growth = rss[big] / rss[small] - 1
        figures.append(
            Figure(
                f"4 peak RSS, {big:,} {kind} rows",
                "<= 100 MB",
                f"{rss[big]:.1f} MB (concurrency at the end {concurrency[big]})",
                rss[big] <= 100,
            )
        )
        figures.append(
            Figure(
                f"4 peak RSS growth, {kind} {small:,} -> {big:,} rows",
                "<= 20 %",
                f"{rss[small]:.1f} -> {rss[big]:.1f} MB ({100 * growth:+.1f} %)",
                growth <= 0.20,
            )
        )
    return figures


def _digests(crc: int, lines: int) -> dict[str, Any]:
    from batchrun.store.recordfile import CRC_KEY, LINES_KEY
    from batchrun.store.rundir import FAILURES, RESULTS

    return {CRC_KEY: {RESULTS: crc, FAILURES: 0}, LINES_KEY: {RESULTS: lines, FAILURES: 0}}


def write_done_run(work: Path, done: int, extra: int, sim_url: str, *, legacy: bool = False) -> tuple[Path, Path]:
    """A job over `done + extra` prompts whose run directory already holds `done` results, written directly;
    `legacy`: its usage.json as versions before the CRC left it (its totals are recounted on resume)."""
    from batchrun.engine.job import prepare
    from batchrun.spec.parse import load_spec
    from batchrun.store.durable import atomic_write
    from batchrun.store.rundir import FAILURES, MANIFEST, RESULTS, USAGE

    path = write_prompts(work / "done.jsonl", done + extra, short_prompt)
    spec_path = work / "done.yaml"
    run_dir = work / "runs" / "done"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "done",
                "input": str(path),
                "model": "sim-small",
                "params": {"max_tokens": 16},
                "provider": {"name": "simulated", "base_url": sim_url},
                "output_dir": str(run_dir),
            }
        )
    )
    prepared = prepare(load_spec(spec_path))
    run_dir.mkdir(parents=True)
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "done before"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }
    rng = random.Random(7)  # answer times spread as a hosted API's do: lognormal around 0.3 s, 0.1 ms steps
    with open(run_dir / RESULTS, "wb") as f:
        for row in range(1, done + 1):
            latency = round(0.3 * math.exp(0.5 * rng.gauss(0, 1)), 4)
            f.write(
                orjson.dumps(
                    {
                        "row": row,
                        "id": f"batch_req_{row}",
                        "custom_id": f"r{row - 1}",
                        "model": "sim-small",
                        "response": {"status_code": 200, "request_id": "x", "body": body},
                        "error": None,
                        "attempts": 1,
                        "rate_limited": 0,
                        "latency_s": latency,
                        "completed_at": f"2026-11-23T10:{row // 60000 % 60:02d}:{row // 1000 % 60:02d}.000Z",
                    }
                )
                + b"\n"
            )
    size = (run_dir / RESULTS).stat().st_size
    crc = zlib.crc32((run_dir / RESULTS).read_bytes())
    atomic_write(
        run_dir / MANIFEST,
        # as a real run that recorded rows left it: its first session checked the input's ids
        orjson.dumps(
            {
                "job": prepared.spec.describe(),
                "fingerprint": prepared.fingerprint,
                "state": "interrupted",
                "ids_checked": True,
            }
        ),
    )
    atomic_write(
        run_dir / USAGE,
        orjson.dumps(
            {
                "rows_total": done + extra,
                "rows_succeeded": done,
                "requests": done,
                "prompt_tokens": 20 * done,
                "completion_tokens": 5 * done,
                "total_tokens": 25 * done,
                "models": {
                    "sim-small": {
                        "rows_succeeded": done,
                        "requests": done,
                        "prompt_tokens": 20 * done,
                        "completion_tokens": 5 * done,
                        "total_tokens": 25 * done,
                    }
                },
                "active_s": 100.0,
                # as this version's writer leaves it: sizes, and each file's CRC-32 and lines (`recordfile`)
                "checkpoint": {RESULTS: size, FAILURES: 0, **({} if legacy else _digests(crc, done))},
            }
        ),
    )
    return spec_path, run_dir


def bench_resume(work: Path, done: int, *, legacy: bool = False) -> list[Figure]:
    """A run directory with `done` rows recorded: how long until the resumed run sends its first request.
    `legacy`: one left by a version before usage.json kept the CRC of the records (read whole once)."""
    from batchrun.store.rundir import RESULTS

    extra = 1000
    sim = Simulator("--latency", "0")
    try:
        spec_path, run_dir = write_done_run(work, done, extra, sim.url, legacy=legacy)
        started = time.time()
        proc = subprocess.Popen(
            [*PY, "submit", str(spec_path), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        first = None
        while proc.poll() is None and first is None:
            first = sim.stats()["first_request_at"]
            time.sleep(0.02)
        out = proc.communicate()[0].decode()
        first = first or sim.stats()["first_request_at"]
        if first is None:
            raise RuntimeError(f"the resumed run sent nothing:\n{out}")
        results = (run_dir / RESULTS).read_bytes().count(b"\n")
    finally:
        sim.close()
    startup = first - started
    which = "an older version's run directory" if legacy else f"{done:,} rows done"
    return [
        Figure(f"5 resume with {which}: time to first request", "< 5 s", f"{startup:.2f} s", startup < 5),
        Figure(
            "5 resumed run: rows recorded at the end (done + new)",
            f"{done + extra:,}",
            f"{results:,}",
            results == done + extra,
        ),
    ]


def bench_operations(work: Path, done: int) -> list[Figure]:
    """report, status and export on a run directory holding `done` rows: time and peak memory of each; then what
    reads the whole input before anything is sent (validate, estimate, and a submit's start-up: the input's scan
    and the id check, with one row sent), on its `done + 1000` rows, as figures (no target)."""
    spec_path, run_dir = write_done_run(work, done, 1000, "http://127.0.0.1:9/v1")
    startup = work / "startup.yaml"
    startup.write_text(
        yaml.safe_dump(
            {
                "name": "startup",
                "input": str(work / "done.jsonl"),
                "model": "sim-small",
                "params": {"max_tokens": 16},
                "provider": {"name": "simulated", "simulate": {"latency": 0}},
                "output_dir": str(work / "runs" / "startup"),
                "cache": "off",
            }
        )
    )
    figures = []
    # The command's own VmHWM, printed at exit: rusage would carry over this process's high-water mark.
    wrapper = (
        "import atexit, sys\nfrom batchrun.store.usage import peak_rss_mb\n"
        "atexit.register(lambda: print(f'PEAK_RSS_MB={peak_rss_mb()}', file=sys.stderr))\n"
        "from batchrun.cli import main\nmain(sys.argv[1:])"
    )
    for name, args in (
        ("report", ["report", str(run_dir), "--html", str(work / "r.html")]),
        ("status", ["status", str(run_dir)]),
        ("export to Parquet", ["export", str(run_dir), "--to", str(work / "x.parquet")]),
        ("validate", ["validate", str(spec_path)]),
        ("estimate", ["estimate", str(spec_path)]),
        ("submit start-up (scan, id check) and 1 row", ["submit", str(startup), "--limit", "1", "--no-progress"]),
    ):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", wrapper, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"batchrun {name} failed: {proc.stderr}")
        peak = proc.stderr.rsplit("PEAK_RSS_MB=", 1)[-1].strip()
        if name in ("report", "status", "export to Parquet"):
            limit = 1 if name == "status" else 10
            target, ok = f"< {limit} s", elapsed < limit
        else:  # the whole input read: a figure to watch, Ctrl-C stopping it at any point
            target, ok = "-", None
        figures.append(
            Figure(f"7 {name} on {done:,} rows: seconds, peak RSS", target, f"{elapsed:.2f} s, {peak} MB", ok)
        )
    return figures


def print_table(figures: list[Figure]) -> None:
    width = max(len(f.name) for f in figures)
    tw = max(len(f.target) for f in figures)
    print(f"{'figure':<{width}}  {'target':<{tw}}  value")
    print("-" * (width + tw + 40))
    for f in figures:
        mark = "" if f.ok is None else ("  ok" if f.ok else "  MISSED")
        print(f"{f.name:<{width}}  {f.target:<{tw}}  {f.value}{mark}")


@click.command(help=__doc__)
@click.option("--quick", is_flag=True, help="Smaller runs, under a minute in all.")
@click.option("--only", help="Run only the scenarios whose number is listed, e.g. 1,3.")
def main(quick: bool, only: str | None) -> None:

    q = quick
    scenarios: list[tuple[str, Callable[[Path], list[Figure]]]] = [
        ("1", lambda w: bench_configured_rpm(w, 600 if q else 3000)),
        ("1", lambda w: bench_configured_tpm(w, 300 if q else 2000, "reserve")),
        ("1", lambda w: bench_configured_tpm(w, 300 if q else 2000, "actual")),
        ("2", lambda w: bench_unknown_limits(w, 1000 if q else 3000, kind="bare")),
        ("2", lambda w: bench_unknown_limits(w, 1000 if q else 3000, kind="retry-after")),
        ("2", lambda w: bench_unknown_limits(w, 600 if q else 3000, kind="headers")),
        ("2", lambda w: bench_concurrency_limit(w, 600 if q else 3000)),
        ("3", lambda w: bench_overhead(w, 10_000 if q else 50_000)),
        ("4", lambda w: bench_memory(w, 50_000 if q else 1_000_000, 5_000 if q else 100_000)),
        ("5", lambda w: bench_resume(w, 100_000 if q else 1_000_000)),
        ("5", lambda w: bench_resume(w, 100_000 if q else 1_000_000, legacy=True)),
        ("6", lambda w: bench_async(w, 300 if q else 1200)),
        ("7", lambda w: bench_operations(w, 100_000 if q else 1_000_000)),
        ("8", lambda w: bench_batch(w, 20_000 if q else 100_000, 2_000 if q else 10_000)),
        ("9", lambda w: bench_structured(w, 5_000 if q else 20_000)),
        ("10", lambda w: bench_cache(w, 100_000 if q else 1_000_000, 5_000 if q else 20_000)),
        ("11", lambda w: bench_key_pool(w, 1500 if q else 6000, learned=False)),
        ("11", lambda w: bench_key_pool(w, 1500 if q else 6000, learned=True)),
        ("12", lambda w: bench_ray_limit(w, 3000 if q else 9000, learned=False)),
        ("12", lambda w: bench_ray_limit(w, 3000 if q else 9000, learned=True)),
        ("12", lambda w: bench_ray_overhead(w, 10_000 if q else 40_000)),
        ("13", lambda w: bench_reasoning(w, 500 if q else 3000)),
        ("14", lambda w: bench_images(w, 10_000 if q else 100_000)),
    ]
    numbers = set(only.split(",")) if only else None
    figures: list[Figure] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as tmp:
        os.environ["XDG_CACHE_HOME"] = f"{tmp}/xdg-cache"  # a response cache of this bench's own, empty at start
        for number, scenario in scenarios:
            if numbers and number not in numbers:
                continue
            work = Path(tmp) / f"s{len(figures)}"
            work.mkdir()
            figures += scenario(work)
            print(f"... {figures[-1].name.split(':')[0]} done ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    print(
        f"\nbatchrun bench{' --quick' if q else ''}: {os.cpu_count()} cores, simulated provider in its own "
        f"process, {time.monotonic() - t0:.0f} s\n"
    )
    if q:  # short runs carry a fixed start-up cost the targets (set for the full sizes) do not allow for
        figures = [Figure(f.name, f"({f.target})" if f.target else "", f.value, None) for f in figures]
        print("--quick: smaller runs than the targets are set for; figures are indicative, targets in brackets\n")
    print_table(figures)
    sys.exit(0 if all(f.ok is not False for f in figures) else 1)


if __name__ == "__main__":
    main()
