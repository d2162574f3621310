"""The job spec: a public contract, parsed strictly so a typo fails before anything is sent."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from ..errors import InputError, SpecError
from .output import DEFAULT_MAX_REPAIRS, DEFAULT_MAX_TOKENS_CAP, OutputSpec, body_max_tokens, schema_problem
from .presets import (
    ASK_FORMS,
    AUTHS,
    ENDPOINTS,
    MODES,
    PRESETS,
    TPM_ACCOUNTING,
    Auth,
    Endpoint,
    Mode,
    Preset,
    TpmAccounting,
)
from .pricing import Price, parse_prices
from .proxies import proxy_problem, without_credentials
from .section import Section, choice, names, seconds_range
from .yamlfile import load_yaml

CacheMode = Literal["read_write", "read", "write", "off"]
CACHE_MODES: tuple[CacheMode, ...] = ("read_write", "read", "write", "off")
FILE_NAME = "cache.sqlite3"


def default_path() -> Path:
    """`$XDG_CACHE_HOME/batchrun/cache.sqlite3` (`~/.cache/...` when it is not set)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "batchrun" / FILE_NAME


@dataclass(frozen=True)
class CacheSpec:
    """The spec's `cache:` block."""

    mode: CacheMode = "read_write"
    path: Path | None = None  # None: default_path()
    sampled: bool = True  # cache answers sampled with temperature > 0 (or no temperature) too

    @property
    def reads(self) -> bool:
        return self.mode in ("read_write", "read")

    @property
    def writes(self) -> bool:
        return self.mode in ("read_write", "write")

    def file(self) -> Path:
        return self.path or default_path()


INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
NULLS = ("fail", "empty")  # input.null
RESERVED_PARAMS = {"model": "model", "messages": "input.messages_field / input.prompt_field / input.template"}


@dataclass(frozen=True)
class InputSpec:
    path: Path
    format: str  # "jsonl" | "parquet" | "csv"
    id_field: str | None = None
    messages_field: str | None = None
    prompt_field: str | None = None
    template: str | None = None
    system: str | None = None
    null: str = "fail"  # a null in a field the template names: "fail" (a failure record) or "empty" (empty text)
    # Not a key of the spec: the bytes of the file a run reads, set by job.prepare from its scan, so that rows
    # appended while the run goes wait for the next one (None: the whole file).
    snapshot: int | None = None

    @property
    def template_fields(self) -> tuple[str, ...]:
        return template_fields(self.template) if self.template else ()


@dataclass(frozen=True)
class ScaleSpec:
    """`scale:` (or `submit --ray`): the job's slices run on Ray workers under one shared limit.

    `ray`: "local" starts a Ray on this machine (or joins the one this process already started); "auto" joins the
    cluster `ray start` or RAY_ADDRESS names; anything else is a cluster address (ray://head:10001)."""

    ray: str = "local"
    workers: int | None = None  # slices running at a time; by default the cluster's CPUs
    slice_rows: int = 10_000  # rows per slice (a Parquet row group is never split)


@dataclass(frozen=True)
class SimulateSpec:
    """How the simulated provider behaves: shared by `batchrun simulate` and `provider: {name: simulated}`."""

    rpm: float | None = None
    tpm: float | None = None
    latency: float = 0.05  # median seconds to answer
    latency_dist: str = "lognormal"  # lognormal (sigma 0.5) | uniform (0.5x to 1.5x) | fixed
    error_rate: float = 0.0
    seed: int = 0
    api_key: str | None = None  # when set, requests must carry it (to try auth failures)
    retry_after: bool = True  # send Retry-After with 429s (False: bare 429s, as Zhipu does)
    rate_headers: bool = False  # send x-ratelimit-* headers on every answer, as OpenAI does
    # answer as through a gateway: "litellm" (LiteLLM's proxy relaying it: headers renamed llm_provider-*), or
    # "litellm-key" (and rpm/tpm are a LiteLLM virtual key's own limits: limit and remaining headers, no reset)
    gateway: str = "none"
    tpm_accounting: str = "reserve"  # reserve: prompt + max_tokens on admission; actual: tokens used, after
    task_s: tuple[float, float] = (2.0, 20.0)  # how long an async task runs: uniform between the two
    drop_rate: float = 0.0  # share of requests whose connection is dropped without an answer
    slow_rate: float = 0.0  # share of requests answered only after slow_s (past a client's timeout)
    slow_s: float = 30.0
    max_inflight: int | None = None  # beyond this many requests being handled, 429 (Zhipu's 1302 concurrency)
    models: tuple[str, ...] | None = None  # the models it serves (others: 404 model_not_found); None: any name
    batch_s: float = 3.0  # how long a Batch API batch runs once validated (its lines are answered as it goes)
    invalid_json_rate: float = 0.0  # share of first answers to a response_format request spoilt (repairs never are)
    # key pools: each key's own RPM limit, and keys refused (401), named by the variables holding them
    key_rpm: tuple[tuple[str, float], ...] = ()
    revoked: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    base_url: str  # empty for an in-process simulated provider, filled in when it starts
    api_key_env: str  # the first (or only) variable holding a key
    key_required: bool
    simulate: SimulateSpec | None = None
    mode: Mode = "sync"  # sync: one answer per request; stream: server-sent events; async: submit, then poll
    auth: Auth = "bearer"  # bearer: the key as is; jwt: Zhipu's id.secret key signed into a short-lived token
    proxy: str | None = None  # every request through this HTTP proxy (else HTTPS_PROXY / HTTP_PROXY / NO_PROXY)
    ca_bundle: Path | None = None  # CA certificates to trust instead of the system's (else SSL_CERT_FILE)
    allow_insecure_http: bool = False  # send the key over plain http:// to a host that is not this machine
    key_pool: tuple[str, ...] = ()  # api_key_env given as a list: every variable, each key its own limits

    @property
    def key_envs(self) -> tuple[str, ...]:
        return self.key_pool or (self.api_key_env,)


LATENCY_DISTS = ("lognormal", "uniform", "fixed")
SIM_GATEWAYS = ("none", "litellm", "litellm-key")


@dataclass(frozen=True)
class Limits:
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None
    tpm_accounting: TpmAccounting = "auto"  # the spec's, or else the preset's (resolved when the spec is read)
    poll_rps: float = 20.0  # async mode: result polls per second, across all pending tasks
    max_pending: int = 1000  # async mode: tasks submitted and not yet finished
    batch_size: int = 1  # inputs per request: 1 unless embeddings (then the spec's, or else the preset's)
    max_cost: Mapping[str, float] | None = None  # the budget per currency ({"CNY": 50}): never spend past it


@dataclass(frozen=True)
class RetrySpec:
    max_attempts: int = 8
    timeout_s: float = 120.0
    backoff_s: float = 1.0  # first backoff; doubles per attempt, with jitter
    max_backoff_s: float = 60.0


@dataclass(frozen=True)
class BatchSettings:
    """provider.mode: batch: how often the batches are polled, their window, and whether files are kept."""

    poll_s: float = 30.0  # first wait between polls; it grows by half each quiet round up to max_poll_s
    max_poll_s: float = 300.0
    completion_window: str = "24h"
    keep_files: bool = False  # keep the uploaded input files at the provider (Zhipu stores 1,000 at most)
    max_lines: int | None = None  # fewer lines per file than the provider allows (smaller batches finish sooner)
    line_url: str | None = None  # each line's url and the batch's endpoint, when not the endpoint's own
    fallback: str = "batch"  # rows a batch did not finish: into a new batch ("batch") or the online lane ("online")
    deadline_s: float | None = None  # after this long, batches still going are cancelled and the rest go online


@dataclass(frozen=True)
class JobSpec:
    name: str
    spec_path: Path
    input: InputSpec
    model: str
    params: Mapping[str, Any]
    provider: ProviderSpec
    output_dir: Path
    limits: Limits = field(default_factory=Limits)
    retry: RetrySpec = field(default_factory=RetrySpec)
    endpoint: Endpoint = "chat"  # chat (/chat/completions), completions (/completions) or embeddings (/embeddings)
    pricing: Mapping[str, Price] = field(default_factory=dict)  # overrides of the built-in prices
    batch: BatchSettings = field(default_factory=BatchSettings)
    output: OutputSpec | None = None  # structured output: the schema every answer must fit
    cache: CacheSpec = field(default_factory=CacheSpec)  # the response cache shared across runs
    scale: ScaleSpec | None = None  # run on Ray: not part of the fingerprint (the records are the same)

    @property
    def cache_scope(self) -> bytes:
        """What besides the body decides an answer: the provider's base URL (an in-process simulator's port is
        new each run, so it is named by the preset) and the endpoint."""
        where = self.provider.base_url or f"{self.provider.name}:in-process"
        return f"{where}\n{self.endpoint}\n".encode()

    def describe(self) -> dict[str, Any]:
        """The job as recorded in the manifest: paths as strings, never a key."""
        return {
            "name": self.name,
            "spec": str(self.spec_path),
            "input": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.input).items() if k != "snapshot"
            },
            "model": self.model,
            "endpoint": self.endpoint,
            "params": dict(self.params),
            "provider": {
                "name": self.provider.name,
                "base_url": self.provider.base_url,
                "api_key_env": list(self.provider.key_pool) if self.provider.key_pool else self.provider.api_key_env,
                "mode": self.provider.mode,
                "auth": self.provider.auth,
                "proxy": self.provider.proxy,
                "ca_bundle": str(self.provider.ca_bundle) if self.provider.ca_bundle else None,
                "allow_insecure_http": self.provider.allow_insecure_http,
            },
            "limits": vars(self.limits),
            "retry": vars(self.retry),
            "batch": vars(self.batch),
            "output_dir": str(self.output_dir),
            "pricing": {model: vars(price) for model, price in self.pricing.items()},
            **({"output": {**vars(self.output), "schema": dict(self.output.schema)}} if self.output else {}),
            "cache": {"mode": self.cache.mode, "path": str(self.cache.file()), "sampled": self.cache.sampled},
            **({"scale": vars(self.scale)} if self.scale else {}),
        }


LITERAL_BRACES = "to put a literal brace in the text (JSON, say) write it twice: {{ and }}"


def template_fields(template: str) -> tuple[str, ...]:
    """Top-level row fields a str.format template names, in order, without repeats."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc}; {LITERAL_BRACES}") from None
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        top = name.split(".", 1)[0].split("[", 1)[0]
        if not top.strip() or any(c in top for c in "\"' \t\n"):
            if top.strip():
                field = " ".join(f"{{{name}{':' + spec if spec else ''}}}".split())
                raise ValueError(f"{field[:40]} is not a field name; {LITERAL_BRACES}")
            raise ValueError("positional fields such as {} are not allowed: name a field, e.g. {title}")
        if top not in names:
            names.append(top)
    return tuple(names)


def load_spec(path: str | Path) -> JobSpec:
    """Read and check a job spec file; relative paths resolve against the spec's folder."""
    spec_path = Path(path)
    source = str(spec_path)
    data = load_yaml(spec_path, "job spec")
    return parse_spec(data, spec_path=spec_path.resolve(), source=source)


def parse_spec(data: Any, *, spec_path: Path, source: str, rows_given: bool = False) -> JobSpec:
    """`rows_given`: the rows come from elsewhere (a Ray Dataset), so input says only how a row becomes a request."""
    top = Section(
        "",
        data,
        {
            "name",
            "input",
            "model",
            "endpoint",
            "params",
            "provider",
            "limits",
            "retry",
            "output_dir",
            "pricing",
            "batch",
            "output",
            "cache",
            "scale",
        },
        source,
    )
    base = spec_path.parent
    name = top.text("name", spec_path.stem)
    assert name is not None
    if "/" in name or "\\" in name or name in {".", ".."}:
        raise top.fail("name", f"must not contain a path separator, got {name!r}")
    model = top.text("model", required=True)
    assert model is not None

    params = top.mapping("params") or {}
    for key, use in RESERVED_PARAMS.items():
        if key in params:
            raise SpecError(f"{source}: params.{key} is not allowed here: set it with {use}")

    output = top.text("output_dir")
    # Beside the spec, like every other relative path: the same spec run from another folder resumes its run.
    output_dir = base / (output or f"runs/{name}")
    endpoint = choice(top, "endpoint", ENDPOINTS, "chat")
    provider = _parse_provider(top.data.get("provider"), source, base)
    preset = PRESETS[provider.name]
    if endpoint not in preset.endpoints:
        raise top.fail(
            "endpoint", f"{endpoint!r} is not offered by {preset.title} (it offers: {', '.join(preset.endpoints)})"
        )
    if provider.mode == "batch":
        api = preset.batch
        assert api is not None  # "batch" is among a preset's modes only when it has a Batch API
        if endpoint not in api.endpoints:
            raise top.fail(
                "endpoint",
                f"{endpoint!r} is not offered by {preset.title}'s Batch API (it offers: {', '.join(api.endpoints)})",
            )
    elif provider.mode != "sync" and endpoint == "embeddings":
        raise SpecError(f"{source}: provider.mode {provider.mode!r} does not apply to embeddings: leave it as sync")
    if provider.mode == "async" and endpoint != "chat":
        raise SpecError(f"{source}: provider.mode async submits chat completions only: use endpoint: chat")

    return JobSpec(
        name=name,
        spec_path=spec_path,
        input=_parse_input(top, base, source, rows_given),
        model=model,
        params=dict(params),
        provider=provider,
        output_dir=output_dir.resolve(),
        limits=_parse_limits(top.data.get("limits"), source, preset, endpoint),
        retry=_parse_retry(top.data.get("retry"), source),
        endpoint=endpoint,
        pricing=parse_prices(top.data["pricing"], source, "pricing.") if top.data.get("pricing") else {},
        batch=_parse_batch(top.data.get("batch"), source, provider.mode),
        output=_parse_output(top.data.get("output"), source, base, preset, endpoint, params),
        cache=_parse_cache(top.data.get("cache"), source, base),
        scale=_parse_scale(top.data.get("scale"), source),
    )


def _parse_scale(raw: Any, source: str) -> ScaleSpec | None:
    """`scale: {ray: local|auto|ADDRESS, workers, slice_rows}`; `scale: true` is a local Ray."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return ScaleSpec()
    sec = Section("scale", raw, {"ray", "workers", "slice_rows"}, source)
    ray = sec.data.get("ray", "local")
    return ScaleSpec(
        ray="local" if ray is True or ray is None else str(ray),
        workers=sec.integer("workers"),
        slice_rows=sec.integer("slice_rows", 10_000) or 10_000,
    )


def _parse_cache(raw: Any, source: str, base: Path) -> CacheSpec:
    """`cache: {mode, path, sampled}`; YAML reads a bare `off` as false, so false is off (and true the default)."""
    if raw is None or raw is True:
        return CacheSpec()
    if raw is False:
        return CacheSpec(mode="off")
    if isinstance(raw, str):
        raw = {"mode": raw}
    if isinstance(raw, Mapping) and raw.get("mode") is False:
        raw = {**raw, "mode": "off"}
    sec = Section("cache", raw, {"mode", "path", "sampled"}, source)
    text = sec.text("path")
    path = None
    if text is not None:
        path = Path(os.path.expanduser(text))
        path = path if path.is_absolute() else base / path
    return CacheSpec(
        mode=choice(sec, "mode", CACHE_MODES, "read_write"), path=path, sampled=sec.boolean("sampled", True)
    )


def _parse_output(
    raw: Any, source: str, base: Path, preset: Preset, endpoint: Endpoint, params: Mapping[str, Any]
) -> OutputSpec | None:
    if raw is None:
        return None
    sec = Section("output", raw, {"schema", "schema_file", "name", "ask", "max_repairs", "max_tokens_cap"}, source)
    if endpoint != "chat":
        raise SpecError(f"{source}: output: structured output applies to endpoint: chat only")
    n = params.get("n")
    if isinstance(n, int) and n > 1:
        raise SpecError(f"{source}: output: checks one answer per row; leave params.n out (it is {n})")
    schema_file = sec.text("schema_file")
    if (sec.data.get("schema") is None) == (schema_file is None):
        raise SpecError(f"{source}: output: give exactly one of output.schema (a mapping) or output.schema_file")
    where = "output.schema"
    if schema_file is not None:
        path = (base / schema_file).resolve()
        where = f"output.schema_file ({schema_file})"
        try:
            schema = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise sec.fail("schema_file", f"cannot be read: {exc.strerror} ({path})") from None
        except orjson.JSONDecodeError as exc:
            raise sec.fail("schema_file", f"is not JSON: {exc}") from None
    else:
        schema = sec.data["schema"]
    problem = schema_problem(schema)
    if problem is not None:
        raise SpecError(f"{source}: {where} {problem}")
    name = sec.text("name", "output") or "output"
    if not all(c.isalnum() or c in "_-" for c in name) or len(name) > 64:
        raise sec.fail("name", f"must be letters, digits, _ or - (64 at most), as response_format wants: {name!r}")
    asked = body_max_tokens(params)
    return OutputSpec(
        schema=dict(schema),
        name=name,
        ask=choice(sec, "ask", ASK_FORMS, preset.ask),
        max_repairs=sec.integer("max_repairs", DEFAULT_MAX_REPAIRS, minimum=0) or 0,
        max_tokens_cap=sec.integer("max_tokens_cap", max(DEFAULT_MAX_TOKENS_CAP, 4 * (asked or 0))) or 1,
        schema_file=schema_file,
    )


def _parse_input(top: Section, base: Path, source: str, rows_given: bool = False) -> InputSpec:
    raw = top.data.get("input")
    if raw is None and rows_given:
        raw = {}
    if raw is None:
        raise top.fail("input", "is required: a path to a .jsonl, .parquet or .csv file, or a mapping with 'path'")
    if isinstance(raw, str):
        raw = {"path": raw}
    keys = {"path", "format", "id_field", "messages_field", "prompt_field", "template", "system", "null"}
    sec = Section("input", raw, keys, source)
    if rows_given:
        if sec.data.get("path") is not None:
            raise sec.fail("path", "is not used here: the rows are the dataset's")
        sec = Section("input", {**sec.data, "path": os.devnull, "format": "jsonl"}, keys, source)
    rel = sec.text("path", required=True)
    assert rel is not None
    path = (base / rel).resolve()
    fmt = sec.text("format")
    if fmt is None:
        fmt = INPUT_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise sec.fail("path", f"must end in .jsonl, .parquet or .csv (or set input.format), got {rel!r}")
    elif fmt not in {"jsonl", "parquet", "csv"}:
        raise sec.fail("format", f"must be 'jsonl', 'parquet' or 'csv', got {fmt!r}")
    if not path.is_file() and not rows_given:
        raise InputError(f"{source}: input.path: no such file {rel!r} (looked for {path})")

    chosen = [k for k in ("messages_field", "prompt_field", "template") if sec.data.get(k) is not None]
    if len(chosen) > 1:
        raise SpecError(
            f"{source}: input.{chosen[0]} and input.{chosen[1]} both given: choose one way to build the messages"
        )
    template = sec.text("template")
    if template is not None:
        try:
            template_fields(template)
        except ValueError as exc:
            raise sec.fail("template", f"is not a valid template: {exc}") from None
    return InputSpec(
        path=path,
        format=fmt,
        id_field=sec.text("id_field"),
        messages_field=sec.text("messages_field"),
        prompt_field=sec.text("prompt_field"),
        template=template,
        system=sec.text("system"),
        null=choice(sec, "null", NULLS, "fail"),
    )


def _parse_provider(raw: Any, source: str, spec_dir: Path) -> ProviderSpec:
    if raw is None:
        raise SpecError(f"{source}: provider is required, e.g. provider: {{name: simulated}}")
    if isinstance(raw, str):
        raw = {"name": raw}
    sec = Section(
        "provider",
        raw,
        {"name", "base_url", "api_key_env", "simulate", "mode", "auth", "proxy", "ca_bundle", "allow_insecure_http"},
        source,
    )
    name = sec.text("name", required=True)
    assert name is not None
    preset = PRESETS.get(name)
    if preset is None:
        raise sec.fail("name", f"must be one of {', '.join(PRESETS)}, got {name!r}")
    base_url = (sec.text("base_url") or preset.base_url).rstrip("/")
    if base_url and not base_url.startswith(("http://", "https://")):
        raise sec.fail("base_url", f"must start with http:// or https://, got {base_url!r}")
    envs = _key_envs(sec, preset.api_key_env)
    api_key_env = envs[0]
    simulate = None
    sim_raw = sec.mapping("simulate")
    if sim_raw is not None:
        if name != "simulated":
            raise sec.fail("simulate", "only applies to provider.name: simulated")
        simulate = parse_simulate(sim_raw, "provider.simulate", source)
    elif name == "simulated" and not base_url:
        simulate = SimulateSpec()
    mode = choice(sec, "mode", MODES, "sync")
    if mode not in preset.modes:
        raise sec.fail("mode", f"{mode!r} is not offered by {preset.title} (it offers: {', '.join(preset.modes)})")
    auth = choice(sec, "auth", AUTHS, "bearer")
    if auth not in preset.auths:
        raise sec.fail("auth", f"{auth!r} is not offered by {preset.title} (it offers: {', '.join(preset.auths)})")
    proxy = sec.text("proxy")
    if proxy is not None:
        problem = proxy_problem(proxy)  # what the transport could not use: said now, not by every row
        if problem is not None:
            raise sec.fail(
                "proxy",
                f"must be an http:// or https:// proxy URL such as http://proxy:3128 ({problem}), got "
                f"{without_credentials(proxy)!r}",
            )
        parts = urlsplit(proxy)
        if parts.username or parts.password:
            raise sec.fail(
                "proxy",
                "holds credentials, which never go in the job spec: set HTTPS_PROXY=http://user:pass@host:port "
                "in the environment instead (and leave provider.proxy out)",
            )
    ca_bundle = None
    ca_text = sec.text("ca_bundle")
    if ca_text is not None:
        ca_bundle = Path(os.path.expanduser(ca_text))
        ca_bundle = ca_bundle if ca_bundle.is_absolute() else spec_dir / ca_bundle
        if not ca_bundle.is_file():
            raise sec.fail("ca_bundle", f"names no such file {ca_text!r} (looked for {ca_bundle})")
    return ProviderSpec(
        name=name,
        base_url=base_url,
        api_key_env=api_key_env,
        key_required=preset.key_required,
        simulate=simulate,
        mode=mode,
        auth=auth,
        proxy=proxy,
        ca_bundle=ca_bundle,
        allow_insecure_http=sec.boolean("allow_insecure_http", False),
        key_pool=envs if len(envs) > 1 else (),
    )


def _key_envs(sec: Section, default: str) -> tuple[str, ...]:
    """`api_key_env`: one variable's name, or a list of them (a key pool)."""
    raw = sec.data.get("api_key_env", default)
    names = raw if isinstance(raw, list) else [raw]
    if not names:
        raise sec.fail("api_key_env", "is an empty list: name at least one environment variable")
    for name in names:
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise sec.fail(
                "api_key_env",
                f"must name an environment variable, or a list of them (keys never go in the spec), got {name!r}",
            )
    if len(set(names)) < len(names):
        raise sec.fail("api_key_env", "names a variable twice")
    if len(names) > 1 and sec.data.get("mode") == "batch":
        raise sec.fail(
            "api_key_env",
            "is a key pool, which the online and async lanes use: a batch job's files and batches live in one "
            "account, so give it one variable",
        )
    return tuple(names)


def parse_simulate(raw: Any, where: str, source: str) -> SimulateSpec:
    sec = Section(
        where,
        raw,
        {
            "rpm",
            "tpm",
            "latency",
            "latency_dist",
            "error_rate",
            "seed",
            "retry_after",
            "rate_headers",
            "gateway",
            "tpm_accounting",
            "task_s",
            "drop_rate",
            "slow_rate",
            "slow_s",
            "max_inflight",
            "models",
            "batch_s",
            "invalid_json_rate",
            "key_rpm",
            "revoked",
        },
        source,
    )
    shares = {}
    for name in ("error_rate", "drop_rate", "slow_rate", "invalid_json_rate"):
        share = sec.number(name, 0.0, inclusive=True) or 0.0
        if share > 1:
            raise sec.fail(name, f"must be between 0 and 1, got {share}")
        shares[name] = share
    return SimulateSpec(
        rpm=sec.number("rpm"),
        tpm=sec.number("tpm"),
        latency=sec.number("latency", 0.05, inclusive=True) or 0.0,
        error_rate=shares["error_rate"],
        drop_rate=shares["drop_rate"],
        slow_rate=shares["slow_rate"],
        slow_s=sec.number("slow_s", SimulateSpec.slow_s) or 0.0,
        max_inflight=sec.integer("max_inflight", None, minimum=1),
        seed=sec.integer("seed", 0, minimum=0) or 0,
        retry_after=sec.boolean("retry_after", True),
        rate_headers=sec.boolean("rate_headers", False),
        gateway=choice(sec, "gateway", SIM_GATEWAYS, "none"),
        latency_dist=choice(sec, "latency_dist", LATENCY_DISTS, "lognormal"),
        tpm_accounting=choice(sec, "tpm_accounting", ("reserve", "actual"), "reserve"),
        task_s=seconds_range(sec, "task_s", SimulateSpec.task_s),
        models=names(sec, "models"),
        batch_s=sec.number("batch_s", 3.0, inclusive=True) or 0.0,
        invalid_json_rate=shares["invalid_json_rate"],
        key_rpm=_key_rpm(sec),
        revoked=names(sec, "revoked") or (),
    )


def _key_rpm(sec: Section) -> tuple[tuple[str, float], ...]:
    """`key_rpm: {VAR: 600}`: the RPM limit of the key in each variable (the variable's name, never the key)."""
    raw = sec.mapping("key_rpm")
    if raw is None:
        return ()
    each = Section(sec.key("key_rpm"), raw, set(raw), sec.source)
    return tuple((str(env), each.number(str(env)) or 0.0) for env in raw)


def _parse_limits(raw: Any, source: str, preset: Preset, endpoint: Endpoint) -> Limits:
    """The limits, with what the spec leaves out settled from the preset here, once."""
    sec = Section(
        "limits",
        {} if raw is None else raw,
        {"rpm", "tpm", "concurrency", "tpm_accounting", "poll_rps", "max_pending", "batch_size", "max_cost"},
        source,
    )
    d = Limits()
    batch_size = (sec.integer("batch_size") or preset.embedding_batch) if endpoint == "embeddings" else 1
    return Limits(
        rpm=sec.number("rpm"),
        tpm=sec.number("tpm"),
        concurrency=sec.integer("concurrency"),
        tpm_accounting=choice(sec, "tpm_accounting", TPM_ACCOUNTING, preset.tpm_accounting),
        poll_rps=sec.number("poll_rps", d.poll_rps) or d.poll_rps,
        max_pending=sec.integer("max_pending", d.max_pending) or d.max_pending,
        batch_size=batch_size,
        max_cost=_parse_budget(sec),
    )


def _parse_budget(sec: Section) -> dict[str, float] | None:
    raw = sec.mapping("max_cost")
    if raw is None:
        return None
    budget = Section(sec.key("max_cost"), raw, set(raw), sec.source)
    out = {}
    for currency in raw:
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha() and currency.isupper()):
            raise sec.fail("max_cost", f"takes currencies such as CNY or USD as keys, got {currency!r}")
        out[currency] = budget.number(currency) or 0.0
    if not out:
        raise sec.fail("max_cost", "is empty: give a budget per currency, e.g. {CNY: 50}")
    return out


def _parse_batch(raw: Any, source: str, mode: str) -> BatchSettings:
    if raw is None:
        return BatchSettings()
    if mode != "batch":
        raise SpecError(f"{source}: batch: applies to provider.mode: batch only")
    sec = Section(
        "batch",
        raw,
        {"poll_s", "max_poll_s", "completion_window", "keep_files", "max_lines", "line_url", "fallback", "deadline_s"},
        source,
    )
    line_url = sec.text("line_url")
    if line_url is not None and not line_url.startswith("/"):
        raise sec.fail("line_url", f"must be a path such as /v1/chat/ds-test, got {line_url!r}")
    d = BatchSettings()
    poll = sec.number("poll_s", d.poll_s) or d.poll_s
    return BatchSettings(
        poll_s=poll,
        max_poll_s=max(poll, sec.number("max_poll_s", d.max_poll_s) or d.max_poll_s),
        completion_window=sec.text("completion_window", d.completion_window) or d.completion_window,
        keep_files=sec.boolean("keep_files", d.keep_files),
        max_lines=sec.integer("max_lines", None, minimum=1),
        line_url=line_url,
        fallback=choice(sec, "fallback", ("batch", "online"), "batch"),
        deadline_s=sec.number("deadline_s"),
    )


def _parse_retry(raw: Any, source: str) -> RetrySpec:
    if raw is None:
        return RetrySpec()
    sec = Section("retry", raw, {"max_attempts", "timeout_s", "backoff_s", "max_backoff_s"}, source)
    d = RetrySpec()
    return RetrySpec(
        max_attempts=sec.integer("max_attempts", d.max_attempts) or d.max_attempts,
        timeout_s=sec.number("timeout_s", d.timeout_s) or d.timeout_s,
        backoff_s=sec.number("backoff_s", d.backoff_s, inclusive=True) or 0.0,
        max_backoff_s=sec.number("max_backoff_s", d.max_backoff_s, inclusive=True) or 0.0,
    )
