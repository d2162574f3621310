"""The networks users have: a forward proxy (proxy.py, a real one, on 127.0.0.1), a CA of their own (trustme),
and a key that must not cross the network in the clear."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from batchrun.engine.job import refuse_plain_http
from batchrun.errors import SpecError
from batchrun.spec.simulator import SimulateSpec

from .helpers import make_job, read_jsonl, submit
from .simserver import SimServer


@dataclass
class Proxy:
    url: str
    log: Path

    def requests_to(self, target: str) -> int:
        """Requests the proxy forwarded to `target` (host:port), from its access log."""
        return sum(f"POST {target}/v1/chat/completions" in line for line in self.log.read_text().splitlines())


@contextlib.contextmanager
def forward_proxy(tmp_path: Path, *extra: str) -> Iterator[Proxy]:
    """proxy.py on a free loopback port, its access log in tmp_path."""
    port_file, log = tmp_path / "proxy.port", tmp_path / "proxy.log"
    args = ["--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--num-workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args, "--num-acceptors", "1", "--log-level", "INFO", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield Proxy(f"http://127.0.0.1:{port_file.read_text().strip()}", log)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    with forward_proxy(tmp_path) as running:
        yield running


def _target(sim: SimServer) -> str:
    return sim.base_url.split("//", 1)[1].split("/", 1)[0]


def test_requests_go_through_the_environments_proxy(tmp_path: Path, sim: SimServer, proxy: Proxy) -> None:
    result = submit(make_job(tmp_path, sim.base_url, n=6), env={"HTTP_PROXY": proxy.url})
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "runs/job/results.jsonl")) == 6
    assert proxy.requests_to(_target(sim)) == 6 == sim.stats()["requests"]


def test_proxy_credentials_from_the_environment(tmp_path: Path, sim: SimServer) -> None:
    with forward_proxy(tmp_path, "--basic-auth", "team:s3cret") as guarded:
        url = guarded.url.replace("http://", "http://team:s3cret@")
        result = submit(make_job(tmp_path, sim.base_url, n=3), env={"HTTPS_PROXY": url, "HTTP_PROXY": url})
        assert result.exit_code == 0, result.output
        assert guarded.requests_to(_target(sim)) == 3
        refused = submit(
            make_job(tmp_path, sim.base_url, n=2, name="nokey"), "--no-cache", env={"HTTP_PROXY": guarded.url}
        )  # the proxy wants credentials: 407 on every request, and the run stops rather than fail each row
        assert refused.exit_code == 1 and "HTTP 407 from the proxy" in refused.output
        assert not read_jsonl(tmp_path / "runs/nokey/failures.jsonl")  # every row still pending
        assert sim.stats()["requests"] == 3


def test_no_proxy_is_honoured(tmp_path: Path, sim: SimServer, proxy: Proxy) -> None:
    result = submit(make_job(tmp_path, sim.base_url, n=3), env={"HTTP_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"})
    assert result.exit_code == 0, result.output
    assert proxy.requests_to(_target(sim)) == 0 and sim.stats()["requests"] == 3


def test_provider_proxy_in_the_spec(tmp_path: Path, sim: SimServer, proxy: Proxy) -> None:
    provider = {"name": "simulated", "base_url": sim.base_url, "proxy": proxy.url}
    result = submit(make_job(tmp_path, sim.base_url, n=4, provider=provider))
    assert result.exit_code == 0, result.output
    assert proxy.requests_to(_target(sim)) == 4


def test_proxy_credentials_never_go_in_the_spec(tmp_path: Path) -> None:
    provider = {"name": "simulated", "base_url": "http://127.0.0.1:9/v1", "proxy": "http://me:secret@proxy:3128"}
    result = submit(make_job(tmp_path, "", n=1, provider=provider))
    assert result.exit_code == 2 and "set HTTPS_PROXY=" in result.stderr and "secret" not in result.stderr


# --- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_sim(tmp_path: Path) -> Iterator[tuple[SimServer, Path]]:
    """A simulated provider on https:// with a certificate from a CA only this test knows."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with SimServer(SimulateSpec(latency=0.0), tls=context) as server:
        yield server, bundle


def test_an_untrusted_certificate_stops_the_run_and_says_what_to_set(
    tmp_path: Path, tls_sim: tuple[SimServer, Path]
) -> None:
    server, _ = tls_sim
    assert server.base_url.startswith("https://")
    result = submit(make_job(tmp_path, server.base_url, n=20))
    assert result.exit_code == 1, result.output
    assert "TLS certificate is not trusted" in result.output and "provider.ca_bundle" in result.output
    assert not read_jsonl(tmp_path / "runs/job/failures.jsonl")  # no row failed for it: all still pending


def test_provider_ca_bundle(tmp_path: Path, tls_sim: tuple[SimServer, Path]) -> None:
    server, bundle = tls_sim
    provider = {"name": "simulated", "base_url": server.base_url, "ca_bundle": bundle.name}  # relative to the spec
    result = submit(make_job(tmp_path, server.base_url, n=5, provider=provider))
    assert result.exit_code == 0, result.output
    assert server.stats()["requests"] == 5


def test_ssl_cert_file_from_the_environment(tmp_path: Path, tls_sim: tuple[SimServer, Path]) -> None:
    server, bundle = tls_sim
    result = submit(make_job(tmp_path, server.base_url, n=5), env={"SSL_CERT_FILE": str(bundle)})
    assert result.exit_code == 0, result.output


def test_a_missing_ca_bundle_is_a_spec_error(tmp_path: Path) -> None:
    provider = {"name": "simulated", "base_url": "https://127.0.0.1:9/v1", "ca_bundle": "nope.pem"}
    result = submit(make_job(tmp_path, "", n=1, provider=provider))
    assert result.exit_code == 2 and "provider.ca_bundle names no such file 'nope.pem'" in result.stderr


# --- plain http ----------------------------------------------------------------------------------------------


def test_a_key_over_plain_http_to_another_host_is_refused(tmp_path: Path, sim: SimServer) -> None:
    provider = {"name": "openai", "base_url": "http://10.1.2.3:8000/v1"}
    result = submit(make_job(tmp_path, "", n=2, provider=provider), env={"OPENAI_API_KEY": "sk-test-1234567890"})
    assert result.exit_code == 2, result.output
    assert "plain http:// to 10.1.2.3" in result.stderr and "allow_insecure_http" in result.stderr
    assert "sk-test" not in result.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("url", "key", "allowed", "refused"),
    [
        ("http://10.0.0.5:8000/v1", "k", False, True),
        ("http://api.example.com/v1", "k", False, True),
        ("http://10.0.0.5:8000/v1", "k", True, False),  # provider.allow_insecure_http: true
        ("http://10.0.0.5:8000/v1", None, False, False),  # no key, nothing to protect
        ("https://api.example.com/v1", "k", False, False),
        ("http://127.0.0.1:8000/v1", "k", False, False),
        ("http://localhost:8000/v1", "k", False, False),
        ("http://[::1]:8000/v1", "k", False, False),
    ],
)
def test_refuse_plain_http(url: str, key: str | None, allowed: bool, refused: bool) -> None:
    if refused:
        with pytest.raises(SpecError, match="allow_insecure_http"):
            refuse_plain_http(url, key, allowed)
    else:
        refuse_plain_http(url, key, allowed)
