"""A simulated provider on its own thread and loop, for tests: `with SimServer(cfg) as s:`, then `s.base_url`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from batchrun.sim.server import SimProvider, serve
from batchrun.spec.simulator import SimulateSpec

S = TypeVar("S", bound="ThreadServer")


class ThreadServer:
    """A server of a test's own on 127.0.0.1, on its own thread and loop: a subclass's `serving()` starts it and
    says its URL; `with` starts it and waits for that, and stops it at the end."""

    what = "the test's server"

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=self.what, daemon=True)

    def serving(self) -> contextlib.AbstractAsyncContextManager[str]:
        raise NotImplementedError

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with self.serving() as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self: S) -> S:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self.what} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class AppServer(ThreadServer):
    """An aiohttp application of a test's own (a gateway, a refusing provider), served on a free loopback port."""

    def __init__(self, app: web.Application) -> None:
        super().__init__()
        self.app = app

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        runner = web.AppRunner(self.app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


class SimServer(ThreadServer):
    """A simulated provider on its own thread and loop, for tests and benchmarks: `with SimServer(cfg) as s:`."""

    what = "the simulated provider"

    def __init__(
        self,
        cfg: SimulateSpec | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.cfg = cfg or SimulateSpec(latency=0.0)
        self.tls = tls
        self.sim = SimProvider(self.cfg, clock)  # a test's own clock moves batches on at the moments it picks
        self.port = port

    def serving(self) -> contextlib.AbstractAsyncContextManager[str]:
        return serve(self.cfg, port=self.port, sim=self.sim, tls=self.tls)

    @property
    def base_url(self) -> str:
        return self.url

    def stats(self) -> dict[str, Any]:
        """Read the counters over HTTP, as any client would."""
        root = self.base_url.rsplit("/v1", 1)[0]
        # The counters are this test's own: a TLS server's made-up certificate need not be checked to read them.
        context = ssl._create_unverified_context() if self.tls else None
        with urllib.request.urlopen(f"{root}/_sim/stats", timeout=10, context=context) as resp:
            data: dict[str, Any] = orjson.loads(resp.read())
        return data
