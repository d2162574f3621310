"""Hermetic fixtures: a real simulated provider on 127.0.0.1 and job specs written into tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.spec.simulator import SimulateSpec

from .simserver import SimServer

# The machine's own proxy settings must not route the tests' loopback requests (tests/test_network.py sets them).
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file"}


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real key leaks into a test, and relative run directories land in tmp_path."""
    for name in list(os.environ):
        if name.endswith(("_API_KEY", "_ACCESS_TOKEN")) or name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # each test its own response cache


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimulateSpec(latency=0.0)) as server:
        yield server


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimServer]]:
    servers: list[SimServer] = []

    def start(**cfg: Any) -> SimServer:
        server = SimServer(SimulateSpec(**{"latency": 0.0, **cfg}))
        servers.append(server.__enter__())
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
