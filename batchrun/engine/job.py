"""A job checked against its input before any request: what submit, validate and estimate share.

Nothing here touches the network, so validate and estimate load neither aiohttp nor the run loop.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..errors import SpecError
from ..rows.render import NULL_FIELD
from ..rows.request import BadRow, RequestBuilder
from ..rows.snapshot import InputScan, scan_input
from ..rows.sources import first_row, iter_rows
from ..spec.model import JobSpec, ProviderSpec
from ..spec.parse import load_spec
from ..spec.presets import PRESETS
from ..spec.proxies import route
from ..store.rundir import MANIFEST, RunDir, read_json
from ..text.words import plural


@dataclass(frozen=True)
class Growth:
    """The input grew since the run in the run directory started: rows appended, the ones before unchanged."""

    before: int  # rows in the run's snapshot
    after: int  # rows now

    def line(self, spec: JobSpec) -> str:
        new = self.after - self.before
        return (
            f"{spec.input.path.name} grew by {plural(new, 'row')} since this run started ({self.before:,} -> "
            f"{self.after:,}): " + ("the new row will be sent" if new == 1 else f"the {new:,} new rows will be sent")
        )


@dataclass(frozen=True)
class Prepared:
    spec: JobSpec  # its input.snapshot set: every read of the run stops where the scan did
    scan: InputScan
    builder: RequestBuilder
    fingerprint: dict[str, str]
    # The fingerprint the run directory holds when it is not `fingerprint` but the run goes on all the same: the
    # input grew (`growth`), or an older batchrun wrote it. Checkpoint.open is given it; then `fingerprint` is
    # recorded in its place (and, the input grown, the ids checked again).
    held: dict[str, str] | None = None
    growth: Growth | None = None

    def input_notes(self, *, fresh: bool = False) -> list[str]:
        """What a run says of its input before it starts: that it grew since the run began (unless the run starts
        over), that its last line is still being written."""
        notes = [self.growth.line(self.spec)] if self.growth is not None and not fresh else []
        if self.scan.held_back is not None:
            notes.append(unfinished_line(self.spec, self.scan.held_back))
        return notes


def unfinished_line(spec: JobSpec, line: int) -> str:
    return (
        f"{spec.input.path.name}: line {line} has no newline at its end and is not whole JSON: taken as still being "
        "written, it is left for a later run"
    )


_HINTS = {
    "invalid_input": 'say how a row becomes a request with input.template (e.g. template: "Translate: {text}"), '
    "input.prompt_field or input.messages_field",
    "missing_id": "name the field that holds each row's id with input.id_field",
    "invalid_id": "name the field that holds each row's id with input.id_field",
    NULL_FIELD: "",  # the reason says what to do
    "image_unreadable": "a relative image path is read from the input file's folder (docs/images.md)",
}
SNAPSHOT_KEY = "input_bytes"  # the fingerprint's record of the snapshot's size, beside its digest ("input")


def prepare(spec: JobSpec) -> Prepared:
    """The job against its input as it is now: the snapshot the run reads, its requests proven buildable, and how
    it stands to the run already in its run directory."""
    held = _held_fingerprint(spec)
    upto = held.get(SNAPSHOT_KEY) if held is not None and spec.input.format != "parquet" else None
    scan = scan_input(spec.input, int(upto) if isinstance(upto, str) and upto.isdigit() else None)
    spec = spec.model_copy(update={"input": spec.input.model_copy(update={"snapshot": scan.size})})
    builder = RequestBuilder(spec, first_row(spec.input))
    prove_rows(spec, builder)
    found = fingerprint(spec, scan)
    if held is None or held == found:
        return Prepared(spec, scan, builder, found)
    if SNAPSHOT_KEY not in held:  # an older batchrun's run: the same job if all else matches, as it always was
        older = {k: v for k, v in found.items() if k != SNAPSHOT_KEY}
        return Prepared(spec, scan, builder, found, older if held == older else None)
    grown = scan.prefix is not None and scan.prefix.digest == held.get("input")
    same = all(held.get(k) == v for k, v in found.items() if k not in ("input", SNAPSHOT_KEY))
    if grown and same and len(held) == len(found) and scan.prefix is not None:
        return Prepared(spec, scan, builder, found, held, Growth(scan.prefix.rows, scan.rows))
    return Prepared(spec, scan, builder, found)  # a different job: Checkpoint.open says so


def _held_fingerprint(spec: JobSpec) -> dict[str, str] | None:
    """The fingerprint of the run already in the job's run directory, if there is one (read without its lock:
    Checkpoint.open checks again under it)."""
    manifest = read_json(spec.output_dir / MANIFEST)
    held = manifest.get("fingerprint") if manifest is not None else None
    return {str(k): str(v) for k, v in held.items()} if isinstance(held, dict) else None


def prove_rows(spec: JobSpec, builder: RequestBuilder) -> None:
    """One spec error instead of a failure record per row when every row fails the same way. Reading stops at the
    first row that builds (the first row, for a spec that fits), or at a second reason."""
    reasons: set[tuple[str, str]] = set()
    rows = 0
    for raw in iter_rows(spec.input):
        built = builder.build(raw)
        if not isinstance(built, BadRow):
            return
        rows += 1
        reasons.add((built.code, built.message.removeprefix(f"row {raw.row}: ")))
        if len(reasons) > 1:
            return
    if not reasons:
        return
    ((code, reason),) = reasons
    which = f"all {rows:,} rows" if rows > 1 else "its one row"
    hint = _HINTS.get(code, "see batchrun validate")
    raise SpecError(
        f"{spec.called}: no row can become a request: {which} fail the same way ({reason})"
        + (f"; {hint}" if hint else "")
    )


def fingerprint(spec: JobSpec, scan: InputScan) -> dict[str, str]:
    """What decides the requests; a resumed run must match it (limits and retry settings may change)."""
    inp = spec.input
    mapping = {
        "format": inp.format,
        "id_field": inp.id_field,
        "messages_field": inp.messages_field,
        "prompt_field": inp.prompt_field,
        "template": inp.template,
        "system": inp.system,
        **({"null": inp.null} if inp.null != "fail" else {}),  # only when not the default, as below
        **({"encoding": inp.encoding} if inp.encoding != "utf-8" else {}),
        # input.images: which columns, and how they are sent
        **(
            {
                "images": inp.images,
                "image_detail": inp.image_detail,
                "fetch_images": inp.fetch_images,
                "image_max_side": inp.image_max_side,
            }
            if inp.images
            else {}
        ),
    }
    found = {
        "input": scan.digest,
        # always: an input that grew is told from one that changed; a run directory without it is an older
        # batchrun's, which prepare lets resume as it did (and then records it)
        SNAPSHOT_KEY: str(scan.size),
        "input_mapping": _digest(mapping),
        "model": spec.model,
        "params": _digest(dict(spec.params)),
    }
    # Only when not the default, so run directories from before these keys existed still resume.
    if spec.endpoint != "chat":
        found["endpoint"] = spec.endpoint
    if spec.provider.mode == "async":  # held task ids mean nothing to the sync path, and vice versa
        found["tasks"] = "async"
    if spec.provider.mode == "batch":  # rows in batches at the provider mean nothing to the online lanes
        found["lane"] = "batch"
    if spec.output is not None:  # the schema is in every request, and decides which answers are kept
        out = spec.output
        found["output"] = _digest({"schema": dict(out.schema), "name": out.name, "ask": out.ask})
    return found


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def api_key(preset_name: str, env: str) -> str | None:
    """The key from the environment only; a missing required key is a usage error naming the variable."""
    preset = PRESETS[preset_name]
    key = os.environ.get(env, "").strip() or None
    if key is None and preset.key_required:
        raise SpecError(_no_key(env, f"export {env}=<your {preset.title} key> (keys never go in the job spec)"))
    return key


def _no_key(env: str, fix: str) -> str:
    """`KEY=""` is set, to nothing: told apart from a variable not set at all (a typo in its name, say)."""
    return f"the environment variable {env} {'is empty' if env in os.environ else 'is not set'}: {fix}"


def key_problems(provider: ProviderSpec) -> list[str]:
    """What is wrong with the job's key variables, one line each, in the words submit stops with (batchrun
    validate lists them all). Never the key itself."""
    problems = []
    for env in provider.key_envs:
        try:
            key = api_key(provider.name, env)
        except SpecError as exc:
            problems.append(str(exc))
            continue
        if key is None and provider.key_pool:
            problems.append(_no_key(env, "a key pool needs a key in each variable"))
    if not problems:
        try:
            provider_keys(provider)
        except SpecError as exc:  # the key would cross the network in the clear
            problems.append(str(exc))
    return problems


def provider_key(provider: ProviderSpec) -> str | None:
    """The job's key, from its environment variable, and only when it would not cross the network in the clear."""
    return provider_keys(provider)[0][1]


def provider_keys(provider: ProviderSpec) -> list[tuple[str, str | None]]:
    """(variable, key) for each variable of the job (several: a key pool); every one must be set."""
    keys = [(env, api_key(provider.name, env)) for env in provider.key_envs]
    for env, key in keys:
        if key is None and provider.key_pool:  # a pool of keys, one of them missing: not a pool of one fewer
            raise SpecError(_no_key(env, "a key pool needs a key in each variable"))
        refuse_plain_http(
            provider.base_url, key, provider.allow_insecure_http, provider.proxy, trust_env=provider.simulate is None
        )
    return keys


def refuse_plain_http(
    base_url: str,
    key: str | None,
    allowed: bool,
    proxy: str | None = None,
    *,
    trust_env: bool = True,
    option: bool = False,
) -> None:
    """A key sent over plain http:// can be read by anyone on the way, and the way is every hop it crosses in the
    clear: to an http:// proxy (provider.proxy, else HTTP_PROXY / ALL_PROXY unless NO_PROXY exempts the host),
    then to base_url's host. Only this machine's own servers (a local vLLM, the simulator, a proxy on loopback)
    are spared the question, and `provider.allow_insecure_http: true` (`option`: batchrun models'
    `--allow-insecure-http`) answers it. An https:// request is tunnelled through any proxy (CONNECT), its key
    encrypted end to end; an https:// proxy encrypts the hop to itself, so an http:// request through one is
    judged by the hop after it. `trust_env=False`: the in-process simulator, never proxied.

    The proxy is resolved as the transport resolves it, so a proxy setting that cannot work is a spec error here,
    before anything is sent, key or no key."""
    via = route(base_url, proxy, trust_env)
    parts = urlsplit(base_url)
    if key is None or allowed or parts.scheme != "http":
        return
    where = "the base URL" if option else "provider.base_url"
    allow = "pass --allow-insecure-http" if option else "set provider.allow_insecure_http: true"
    if via is not None and via.scheme == "http" and not _loopback(via.host):
        exempt = f"add {parts.hostname} to NO_PROXY" if via.from_env else "leave provider.proxy out"
        raise SpecError(
            f"{where} {base_url} is plain http:// and goes through the plain http:// proxy {via.shown} (from "
            f"{via.source}): the API key would cross the network unencrypted to {via.host}; use https://, {exempt}, "
            f"or {allow} if this network is yours"
        )
    if not _loopback(parts.hostname or ""):
        raise SpecError(
            f"{where} {base_url} is plain http:// to {parts.hostname}: the API key would cross the network "
            f"unencrypted; use https://, or {allow} if this network is yours"
        )


def _loopback(host: str) -> bool:
    """This machine itself: localhost, 127.0.0.0/8, ::1 (also written as ::ffff:127.x.y.z)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def job_of_run(run_dir: Path, job: str | None = None) -> JobSpec:
    """The job a run directory holds, from the spec file its manifest names (or `job`), writing into it."""
    run = RunDir(run_dir)
    path = job or run.spec_path
    if not path or not Path(path).is_file():
        raise SpecError(f"the job spec {path or '(none recorded)'} of {run_dir} is not there: pass it with --job")
    return load_spec(path).model_copy(update={"output_dir": run.path.resolve()})


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
