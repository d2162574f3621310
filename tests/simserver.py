"""A simulated provider on its own thread and loop, for tests: `with SimServer(cfg) as s:`, then `s.base_url`."""

from __future__ import annotations

import asyncio
import ssl
import threading
import urllib.request
from typing import Any

import orjson

from batchrun.simulate import SimProvider, serve
from batchrun.spec import SimulateSpec


class SimServer:
    """A simulated provider on its own thread and loop, for tests and benchmarks: `with SimServer(cfg) as s:`."""

    def __init__(self, cfg: SimulateSpec | None = None, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.cfg = cfg or SimulateSpec(latency=0.0)
        self.tls = tls
        self.sim = SimProvider(self.cfg)
        self.port = port
        self.base_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="batchrun-simulate", daemon=True)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self.cfg, port=self.port, sim=self.sim, tls=self.tls) as url:
            self.base_url = url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> SimServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the simulated provider did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def stats(self) -> dict[str, Any]:
        """Read the counters over HTTP, as any client would."""
        root = self.base_url.rsplit("/v1", 1)[0]
        # The counters are this test's own: a TLS server's made-up certificate need not be checked to read them.
        context = ssl._create_unverified_context() if self.tls else None
        with urllib.request.urlopen(f"{root}/_sim/stats", timeout=10, context=context) as resp:
            data: dict[str, Any] = orjson.loads(resp.read())
        return data
