"""Proxies at the edges: the key judged by every hop it crosses in the clear, a proxy that is dead or wants
credentials stopping the run like a dead endpoint, and a proxy setting that cannot work said in one line.

Real HTTP on 127.0.0.1 only. A proxy "off this machine" is only ever named (proxy.example), never connected to:
the refusal comes before anything is sent."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.engine.job import refuse_plain_http
from batchrun.errors import SpecError

from .helpers import FAST_RETRY, cli, make_job, read_jsonl, submit
from .simserver import SimServer, ThreadServer
from .test_network import forward_proxy

KEY_ENV = "BATCHRUN_SIM_API_KEY"  # the simulated preset's variable: optional, but once set it must be protected
KEY = "sk-proxy-edges-0123456789"
SECRET = "s3cret"  # the proxy password: never in any output
OFF_MACHINE = "http://proxy.example:3128"  # resolved by nothing: every test refuses before connecting to it


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class CredentialsProxy(ThreadServer):
    """A proxy that wants credentials and takes none: HTTP 407 to CONNECT and to plain requests alike."""

    what = "the proxy"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []  # the request line of each request it answered

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        async with server:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.seen.append(lines[0])
            length = next((int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0)
            await reader.readexactly(length)
            writer.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="corp"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def guarded() -> Iterator[CredentialsProxy]:
    with CredentialsProxy() as proxy:
        yield proxy


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://team:{SECRET}@")


def records(tmp_path: Path, name: str = "job") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    run = tmp_path / "runs" / name
    return read_jsonl(run / "results.jsonl"), read_jsonl(run / "failures.jsonl")


def one_line_error(stderr: str) -> str:
    """The `batchrun: error: ...` line, checked to be the only line about the error and no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("batchrun: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# --- A: the key over every hop it crosses in the clear --------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "mode"),
    [("HTTP_PROXY", "sync"), ("http_proxy", "stream"), ("ALL_PROXY", "async"), ("provider.proxy", "batch")],
)
def test_a_plain_http_request_through_a_proxy_off_this_machine_is_refused(
    tmp_path: Path, sim: SimServer, setting: str, mode: str
) -> None:
    provider: dict[str, Any] = {"name": "simulated", "base_url": sim.base_url, "mode": mode}
    env = {KEY_ENV: KEY}
    if setting == "provider.proxy":
        provider["proxy"] = OFF_MACHINE
    else:
        env[setting] = with_credentials(OFF_MACHINE)
    # the batch lane bounded by a deadline, should it ever get going
    extra = {"batch": {"poll_s": 0.05, "max_poll_s": 0.2, "deadline_s": 10}} if mode == "batch" else {}
    result = submit(make_job(tmp_path, sim.base_url, n=3, provider=provider, **extra), env=env)
    assert result.exit_code == 2, result.output
    line = one_line_error(result.stderr)
    assert f"plain http:// proxy http://{'***@' if setting != 'provider.proxy' else ''}proxy.example:3128" in line
    assert f"(from {setting})" in line and "allow_insecure_http" in line
    assert SECRET not in result.output and KEY not in result.output
    assert not (tmp_path / "runs").exists() and sim.stats()["requests"] == 0  # nothing sent, nothing written


def test_cancel_judges_the_proxy_too(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(batch_s=0.0)
    provider = {"name": "simulated", "base_url": sim.base_url, "mode": "batch"}
    job = make_job(tmp_path, sim.base_url, n=2, provider=provider, batch={"poll_s": 0.05, "max_poll_s": 0.2})
    assert submit(job).exit_code == 0  # no key: nothing to protect, so it runs
    sent = sim.stats()["requests"]
    result = cli("cancel", str(tmp_path / "runs/job"), env={KEY_ENV: KEY, "HTTP_PROXY": OFF_MACHINE})
    assert result.exit_code == 2, result.output
    assert "proxy.example" in one_line_error(result.stderr) and sim.stats()["requests"] == sent


@pytest.mark.parametrize(
    ("url", "proxy", "env", "allowed", "refused"),
    [
        ("http://127.0.0.1:8000/v1", OFF_MACHINE, {}, False, True),  # provider.proxy
        ("http://127.0.0.1:8000/v1", None, {"HTTP_PROXY": OFF_MACHINE}, False, True),
        ("http://127.0.0.1:8000/v1", None, {"ALL_PROXY": OFF_MACHINE}, False, True),
        ("http://127.0.0.1:8000/v1", None, {"HTTP_PROXY": OFF_MACHINE}, True, False),  # allow_insecure_http
        ("http://127.0.0.1:8000/v1", None, {"HTTP_PROXY": OFF_MACHINE, "NO_PROXY": "127.0.0.1"}, False, False),
        ("http://127.0.0.1:8000/v1", None, {"HTTPS_PROXY": OFF_MACHINE}, False, False),  # not for http:// URLs
        ("http://127.0.0.1:8000/v1", "http://127.0.0.2:3128", {}, False, False),  # all of 127/8 is this machine
        ("http://localhost:8000/v1", None, {"HTTP_PROXY": "http://localhost:3128"}, False, False),
        ("http://127.0.0.1:8000/v1", "https://proxy.example:3128", {}, False, False),  # encrypted to the proxy...
        ("http://10.0.0.5:8000/v1", "https://proxy.example:3128", {}, False, True),  # ...but not after it
        ("http://10.0.0.5:8000/v1", "http://127.0.0.1:3128", {}, False, True),  # the hop after a local proxy
        ("https://api.example.com/v1", OFF_MACHINE, {"HTTPS_PROXY": OFF_MACHINE}, False, False),  # CONNECT: TLS
        ("http://[::ffff:127.0.0.1]:8000/v1", None, {}, False, False),
    ],
)
def test_the_refusal_judges_every_hop_in_the_clear(
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    proxy: str | None,
    env: dict[str, str],
    allowed: bool,
    refused: bool,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if refused:
        with pytest.raises(SpecError, match="allow_insecure_http") as caught:
            refuse_plain_http(url, KEY, allowed, proxy)
        assert KEY not in str(caught.value)
    else:
        refuse_plain_http(url, KEY, allowed, proxy)
    refuse_plain_http(url, None, allowed, proxy)  # no key: nothing to protect
    if not url.startswith("http://10."):  # the in-process simulator is never proxied: only base_url counts
        refuse_plain_http(url, KEY, allowed, proxy, trust_env=False)


def test_models_judges_the_route_as_submit_does(tmp_path: Path, sim: SimServer) -> None:
    args = ("models", "--provider", "simulated", "--base-url", sim.base_url)
    refused = cli(*args, env={KEY_ENV: KEY, "HTTP_PROXY": with_credentials(OFF_MACHINE)})
    assert refused.exit_code == 2, refused.output
    line = one_line_error(refused.stderr)
    assert "http://***@proxy.example:3128 (from HTTP_PROXY)" in line and "--allow-insecure-http" in line
    assert SECRET not in refused.output and KEY not in refused.output and sim.stats()["requests"] == 0
    exempt = cli(*args, env={KEY_ENV: KEY, "HTTP_PROXY": OFF_MACHINE, "NO_PROXY": "127.0.0.1"})
    assert exempt.exit_code == 0 and "sim-small" in exempt.stdout, exempt.output
    with forward_proxy(tmp_path) as local:  # a proxy on this machine may carry the key
        through = cli(*args, env={KEY_ENV: KEY, "HTTP_PROXY": local.url})
        assert through.exit_code == 0 and "sim-small" in through.stdout, through.output
        deadline = time.monotonic() + 30  # proxy.py writes its access line once the connection closes
        while "/v1/models" not in local.log.read_text():
            assert time.monotonic() < deadline, local.log.read_text()
            time.sleep(0.05)
    # the in-process simulator is never proxied, whatever the environment says
    inside = cli("models", "--provider", "simulated", env={"HTTP_PROXY": f"http://127.0.0.1:{closed_port()}"})
    assert inside.exit_code == 0 and "sim-small" in inside.stdout, inside.output


def test_the_in_process_simulator_is_never_proxied(tmp_path: Path) -> None:
    provider = {"name": "simulated", "simulate": {"latency": 0.0}, "proxy": f"http://127.0.0.1:{closed_port()}"}
    job = make_job(tmp_path, "", n=4, provider=provider)
    result = submit(job, env={KEY_ENV: KEY, "HTTP_PROXY": OFF_MACHINE, "ALL_PROXY": OFF_MACHINE})
    assert result.exit_code == 0, result.output
    assert len(records(tmp_path)[0]) == 4


# --- B: a proxy setting that cannot work ----------------------------------------------------------------------


BAD_PROXIES = ["http://[bad", "::::", f"socks5://team:{SECRET}@127.0.0.1:1080", "http://proxy:port", "proxy:3128"]


@pytest.mark.parametrize("value", BAD_PROXIES)
@pytest.mark.parametrize("command", ["submit https", "submit http", "models"])
def test_a_proxy_variable_that_cannot_work_is_one_line_and_exit_2(
    tmp_path: Path, sim: SimServer, value: str, command: str
) -> None:
    if command == "models":
        variable = "HTTP_PROXY"
        result = cli("models", "--provider", "simulated", "--base-url", sim.base_url, env={variable: value})
    else:
        variable, base_url = (
            ("HTTPS_PROXY", f"https://127.0.0.1:{closed_port()}/v1")
            if command == "submit https"
            else ("HTTP_PROXY", sim.base_url)
        )
        result = submit(make_job(tmp_path, base_url, n=3), env={variable: value})  # no key: judged all the same
        assert not (tmp_path / "runs").exists()
    assert result.exit_code == 2, result.output
    line = one_line_error(result.stderr)
    assert f"the environment variable {variable}=" in line and "set it to http://host:port" in line
    assert SECRET not in result.output
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    "value", ["http://[bad", "http://proxy:port", "http://proxy:99999", f"http://me:{SECRET}@[::1"]
)
def test_a_provider_proxy_that_cannot_work_is_a_spec_error(tmp_path: Path, sim: SimServer, value: str) -> None:
    provider = {"name": "simulated", "base_url": sim.base_url, "proxy": value}
    result = submit(make_job(tmp_path, sim.base_url, n=2, provider=provider))
    assert result.exit_code == 2, result.output
    assert "provider.proxy must be an http:// or https:// proxy URL" in one_line_error(result.stderr)
    assert SECRET not in result.output
    assert sim.stats()["requests"] == 0


# --- B: a dead proxy, a proxy that wants credentials -----------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "scheme", "mode"),
    [
        ("HTTPS_PROXY", "https", "sync"),
        ("HTTP_PROXY", "http", "sync"),
        ("HTTP_PROXY", "http", "async"),
        ("provider.proxy", "http", "stream"),
    ],
)
def test_a_dead_proxy_stops_the_run_with_every_row_pending(
    tmp_path: Path, sim: SimServer, setting: str, scheme: str, mode: str
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    base_url = sim.base_url if scheme == "http" else f"https://127.0.0.1:{closed_port()}/v1"
    provider: dict[str, Any] = {"name": "simulated", "base_url": base_url, "mode": mode}
    env = {KEY_ENV: KEY}
    if setting == "provider.proxy":
        provider["proxy"] = dead
    else:
        env[setting] = with_credentials(dead)
    result = submit(make_job(tmp_path, base_url, n=5, provider=provider), env=env)
    assert result.exit_code == 1, result.output  # not 3: no row failed, every one is still pending
    assert records(tmp_path) == ([], [])
    assert f"cannot connect to the proxy http://{'***@' if setting != 'provider.proxy' else ''}127.0.0.1:" in (
        result.output
    )
    assert f"(from {setting})" in result.output and "5 pending of 5 rows" in result.output
    assert SECRET not in result.output and KEY not in result.output
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("dead", ["proxy", "base_url"])
def test_the_batch_lane_stops_at_a_dead_proxy_or_endpoint(tmp_path: Path, sim: SimServer, dead: str) -> None:
    """Its uploads were tried again at every poll, for ever; as the online lane, it stops with every row pending."""
    closed = f"http://127.0.0.1:{closed_port()}"
    provider: dict[str, Any] = {"name": "simulated", "mode": "batch"}
    if dead == "proxy":
        provider.update(base_url=sim.base_url, proxy=closed)
    else:
        provider.update(base_url=closed + "/v1")
    batch = {"poll_s": 0.05, "max_poll_s": 0.2}
    result = submit(make_job(tmp_path, provider["base_url"], n=5, provider=provider, batch=batch), env={KEY_ENV: KEY})
    assert result.exit_code == 1, result.output
    assert records(tmp_path) == ([], [])
    assert "never an answer" in result.output and "5 pending of 5 rows" in result.output
    assert ("the proxy" if dead == "proxy" else closed) in result.output
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("how", "mode", "credentials"),
    [
        ("CONNECT", "sync", False),
        ("CONNECT", "sync", True),
        ("plain", "sync", False),
        ("plain", "async", True),
        ("plain", "batch", False),
        ("CONNECT", "pool", False),
        ("plain", "pool", False),
    ],
)
def test_a_proxy_that_wants_credentials_stops_the_run(
    tmp_path: Path, sim: SimServer, guarded: CredentialsProxy, how: str, mode: str, credentials: bool
) -> None:
    base_url = f"https://127.0.0.1:{closed_port()}/v1" if how == "CONNECT" else sim.base_url
    variable = "HTTPS_PROXY" if how == "CONNECT" else "HTTP_PROXY"
    provider: dict[str, Any] = {"name": "simulated", "base_url": base_url}
    env = {KEY_ENV: KEY, variable: with_credentials(guarded.url) if credentials else guarded.url}
    extra: dict[str, Any] = {}
    if mode == "pool":  # a key pool: the proxy refuses every key alike, so none is retired for it
        provider["api_key_env"] = ["SIM_KEY_A", "SIM_KEY_B"]
        env.update({"SIM_KEY_A": KEY, "SIM_KEY_B": KEY + "-b"})
    else:
        provider["mode"] = mode
    if mode == "batch":
        extra["batch"] = {"poll_s": 0.05, "max_poll_s": 0.2, "deadline_s": 10}
    result = submit(make_job(tmp_path, base_url, n=5, provider=provider, retry=FAST_RETRY, **extra), env=env)
    assert result.exit_code == 1, result.output
    assert records(tmp_path) == ([], [])  # every row still pending
    address = guarded.url.replace("http://", "http://***@" if credentials else "http://")
    assert f"HTTP 407 from the proxy {address} (from {variable})" in result.output
    if credentials:
        assert f"it refused the credentials in {variable}" in result.output
    else:
        assert f"set {variable}=http://user:pass@host:port" in result.output
    assert "retired" not in result.output and "top up" not in result.output
    assert SECRET not in result.output and KEY not in result.output
    assert guarded.seen and all(line.startswith("CONNECT " if how == "CONNECT" else "POST ") for line in guarded.seen)
    assert sim.stats()["requests"] == 0


def test_the_batch_lane_gives_the_proxy_its_credentials(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(batch_s=0.0)
    provider = {"name": "simulated", "base_url": sim.base_url, "mode": "batch"}
    batch = {"poll_s": 0.05, "max_poll_s": 0.2, "deadline_s": 20}  # bounded even where the uploads are refused
    job = make_job(tmp_path, sim.base_url, n=4, provider=provider, batch=batch)
    with forward_proxy(tmp_path, "--basic-auth", f"team:{SECRET}") as local:
        result = submit(job, env={"HTTP_PROXY": with_credentials(local.url)})  # plain http://: no CONNECT
    assert result.exit_code == 0, result.output
    done, _ = records(tmp_path)
    assert len(done) == 4 and all(r.get("batch_id") for r in done)  # through the Batch API, not the online lane
    assert SECRET not in result.output


# --- the pieces, directly -------------------------------------------------------------------------------------


def test_proxy_failures_are_told_apart_from_the_providers() -> None:
    from batchrun.retry import Verdict, classify, endpoint_sign

    wants = "proxy_auth_required (HTTP 407 from the proxy http://p:3128 (from HTTPS_PROXY) to CONNECT: ...)"
    decision = classify(None, None, {}, wants)
    assert decision.verdict is Verdict.STOP_RUN and decision.code == "proxy_auth_required"
    assert decision.message.startswith("HTTP 407 from the proxy http://p:3128")
    assert endpoint_sign(None, None, wants) is None  # stops at once, needs no proof from the first rows
    dead = "proxy_unreachable (cannot connect to the proxy http://p:3128 (from HTTPS_PROXY): Connection refused)"
    assert classify(None, None, {}, dead).verdict is Verdict.RETRY  # a proxy restarting mid-run: try again
    assert endpoint_sign(None, None, dead) == dead.split(" ", 1)[1][1:-1]


def test_a_poll_through_a_proxy_that_wants_credentials_stops_the_run() -> None:
    """Tasks held from an earlier session are only polled: the 407 must stop the run there too, not poll forever."""
    from batchrun.providers.transport import Reply
    from batchrun.providers.zhipu import TaskAction, judge_task
    from batchrun.retry import GENERIC, Verdict

    wants = "proxy_auth_required (HTTP 407 from the proxy http://p:3128 (from HTTPS_PROXY) to CONNECT: ...)"
    verdict = judge_task(Reply(None, {}, None, 0.0, wants), GENERIC)
    assert verdict.action is TaskAction.DECIDE and verdict.decision is not None
    assert verdict.decision.verdict is Verdict.STOP_RUN
    dropped = judge_task(Reply(None, {}, None, 0.0, "connection_error (ServerDisconnectedError)"), GENERIC)
    assert dropped.action is TaskAction.POLL  # an ordinary dropped poll is polled again


def test_a_proxy_is_named_without_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchrun.spec.proxies import route, without_credentials

    assert without_credentials(f"http://team:{SECRET}@[bad") == "http://***@[bad"
    assert without_credentials(f"team:{SECRET}@proxy:3128") == "***@proxy:3128"
    monkeypatch.setenv("https_proxy", with_credentials("http://127.0.0.1:3128"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.9:3128")  # the lowercase one wins, as in curl and httpx
    found = route("https://api.example.com/v1", None, True)
    assert found is not None and found.source == "https_proxy" and found.shown == "http://***@127.0.0.1:3128"
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert route("https://api.example.com/v1", None, True) is None


def test_proxy_credentials_become_a_header_beside_an_ipv6_proxy_too() -> None:
    from batchrun.providers.transport import _with_auth

    url, headers = _with_auth(f"http://team:{SECRET}@[::1]:3128")
    assert url == "http://[::1]:3128" and headers is not None and "Proxy-Authorization" in headers
