"""A job checked against its input before any request: what submit, validate and estimate share.

Nothing here touches the network, so validate and estimate load neither aiohttp nor the run loop.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .errors import SpecError
from .presets import PRESETS
from .request import BadRow, RequestBuilder
from .rundir import RunDir
from .sources import InputScan, first_row, iter_rows, scan_input
from .spec import JobSpec, ProviderSpec, load_spec


@dataclass(frozen=True)
class Prepared:
    spec: JobSpec
    scan: InputScan
    builder: RequestBuilder
    fingerprint: dict[str, str]


_HINTS = {
    "invalid_input": 'say how a row becomes a request with input.template (e.g. template: "Translate: {text}"), '
    "input.prompt_field or input.messages_field",
    "missing_id": "name the field that holds each row's id with input.id_field",
    "invalid_id": "name the field that holds each row's id with input.id_field",
}


def prepare(spec: JobSpec) -> Prepared:
    scan = scan_input(spec.input)
    builder = RequestBuilder(spec, first_row(spec.input))
    prove_rows(spec, builder)
    return Prepared(spec, scan, builder, fingerprint(spec, scan))


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
    raise SpecError(f"{spec.spec_path.name}: no row can become a request: {which} fail the same way ({reason}); {hint}")


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
    }
    found = {
        "input": scan.digest,
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
        raise SpecError(
            f"the environment variable {env} is not set: export {env}=<your {preset.title} key> "
            "(keys never go in the job spec)"
        )
    return key


def provider_key(provider: ProviderSpec) -> str | None:
    """The job's key, from its environment variable, and only when it would not cross the network in the clear."""
    return provider_keys(provider)[0][1]


def provider_keys(provider: ProviderSpec) -> list[tuple[str, str | None]]:
    """(variable, key) for each variable of the job (several: a key pool); every one must be set."""
    keys = [(env, api_key(provider.name, env)) for env in provider.key_envs]
    for env, key in keys:
        if key is None and provider.key_pool:  # a pool of keys, one of them missing: not a pool of one fewer
            raise SpecError(f"the environment variable {env} is not set: a key pool needs a key in each variable")
        refuse_plain_http(provider.base_url, key, provider.allow_insecure_http)
    return keys


def refuse_plain_http(base_url: str, key: str | None, allowed: bool) -> None:
    """A key sent over plain http:// can be read by anyone on the way; only this machine's own servers (a local
    vLLM, the simulator) are spared the question, and `provider.allow_insecure_http: true` answers it."""
    parts = urlsplit(base_url)
    if key is None or allowed or parts.scheme != "http" or _loopback(parts.hostname or ""):
        return
    raise SpecError(
        f"provider.base_url {base_url} is plain http:// to {parts.hostname}: the API key would cross the network "
        "unencrypted; use https://, or set provider.allow_insecure_http: true if this network is yours"
    )


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def job_of_run(run_dir: Path, job: str | None = None) -> JobSpec:
    """The job a run directory holds, from the spec file its manifest names (or `job`), writing into it."""
    run = RunDir(run_dir)
    path = job or run.spec_path
    if not path or not Path(path).is_file():
        raise SpecError(f"the job spec {path or '(none recorded)'} of {run_dir} is not there: pass it with --job")
    return replace(load_spec(path), output_dir=run.path.resolve())


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
