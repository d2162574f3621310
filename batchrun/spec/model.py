"""The job spec, declared once: every key with its type, default, bounds and one line of doc.

The models are the records the rest of batchrun reads (`spec.limits.rpm`), the parser (`parse.parse_spec`), the
source of the one-line errors (`parse.render`) and of the JSON Schema (`batchrun schema`). What a key checks beyond
its type lives in `checks`; the fields are declared in the order the spec has always been read, so that of several
mistakes the one reported first is the one it always was.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from . import checks, lanechecks, presetkeys
from .base import Count, Derived, Expect, Internal, NonNegative, Positive, Reading, Share, SpecModel, Text
from .cachespec import CacheSpec
from .images import Detail, ImageLimitsSpec, image_columns
from .output import OutputSpec
from .presets import ENDPOINT_ALIASES, MODE_ALIASES, Auth, Endpoint, Mode, TpmAccounting
from .pricing import Price
from .reasoning import Effort, reasoning_fits, thinking_value
from .simulator import SimulateSpec

InputFormat = Literal["jsonl", "parquet", "csv"]
# Request parameters a spec may set at the top by mistake: the error points to params.
REQUEST_PARAMS = (
    *("temperature", "max_tokens", "max_completion_tokens", "top_p", "top_k", "stop", "seed", "n"),
    *("presence_penalty", "frequency_penalty", "response_format", "tools", "tool_choice"),
)
template_fields = checks.template_fields  # the fields a template names: rows/render reads them from here


class InputSpec(SpecModel):
    """The spec's `input:` block (or just its path): the rows, and how each becomes a request's messages."""

    shorthand_key = "path"

    path: Annotated[
        Path,
        Field(description="The input file (.jsonl, .parquet or .csv), relative to the spec's folder."),
        BeforeValidator(checks.input_path),
    ]
    format: Annotated[
        InputFormat,
        Derived(),
        Field(description="jsonl, parquet or csv; default: from the path's suffix."),
        BeforeValidator(checks.input_format),
    ]
    template: Annotated[
        Text | None,
        Field(description="A str.format template of the row's fields, e.g. 'Summarise: {title}'."),
        AfterValidator(checks.template),
        BeforeValidator(checks.one_way),
    ] = None
    id_field: Text | None = Field(None, description="The row field holding its id; default: the row's number.")
    messages_field: Text | None = Field(None, description="The row field holding a ready list of chat messages.")
    prompt_field: Text | None = Field(None, description="The row field holding the prompt text; default 'prompt'.")
    system: Text | None = Field(None, description="A system message sent before every row's prompt.")
    null: Literal["fail", "empty"] = Field(
        "fail", description="A null in a field the template names: fail (a failure record) or empty (empty text)."
    )
    encoding: Annotated[
        Text,
        Field(description="The text encoding of a CSV or JSONL input (gbk, gb18030, utf-16, ...); default utf-8."),
        AfterValidator(checks.input_encoding),
    ] = "utf-8"
    max_value_lines: Count = Field(
        20,
        description="CSV: the most lines one quoted value may span; more is taken as a quote left open by mistake.",
    )
    images: Annotated[
        list[Text] | None,
        Field(
            description="Columns holding each row's images (a column may hold a list): a path (relative to the "
            "input's folder), an http(s) URL, a data: URL, or bytes (Parquet).",
            json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        ),
        BeforeValidator(image_columns),
    ] = None
    image_detail: Detail | None = Field(None, description="The image parts' detail: auto, low or high.")
    fetch_images: bool = Field(
        False, description="Fetch http(s) image URLs here and send their bytes (the provider cannot reach them)."
    )
    image_max_side: Count | None = Field(
        None, description="Scale larger images down to this many pixels on their longest side (needs Pillow)."
    )
    image_limits: ImageLimitsSpec | None = Field(
        None, description="The provider's image limits, where batchrun's table lacks or mistakes them."
    )
    # The bytes of the file a run reads, set by job.prepare from its scan, so that rows appended while the run goes
    # wait for the next one (None: the whole file).
    snapshot: Annotated[int | None, Internal()] = None

    @classmethod
    def as_written(cls, data: dict[str, Any], spec: Reading) -> dict[str, Any]:
        return checks.input_as_written(data, spec)

    @property
    def template_fields(self) -> tuple[str, ...]:
        return template_fields(self.template) if self.template else ()


class ScaleSpec(SpecModel):
    """`scale:` (or `submit --ray`): the job's slices run on Ray workers under one shared limit."""

    ray: Annotated[
        str,
        Field(
            description="local: a Ray on this machine; auto: the cluster `ray start` or RAY_ADDRESS names; "
            "else a cluster address (ray://head:10001)."
        ),
        BeforeValidator(checks.ray_address),
    ] = "local"
    workers: Count | None = Field(None, description="Slices running at a time; default the cluster's CPUs.")
    slice_rows: Count = Field(10_000, description="Rows per slice (a Parquet row group is never split).")


class ScheduleSpec(SpecModel):
    """`schedule:`: when a run may send, by the model's time-of-day prices (its price table's windows)."""

    avoid_peak: bool = Field(
        False,
        description="Send nothing while the model's price is above its cheapest window's; go on by itself inside it.",
    )


class ProviderSpec(SpecModel):
    """The spec's `provider:` block (or just its name): where requests go, with which key, how."""

    shorthand_key = "name"

    name: Annotated[
        Text,
        Field(description="A provider preset.", json_schema_extra={"enum": checks.PROVIDER_NAMES}),
        AfterValidator(checks.provider_name),
    ]
    region: Annotated[
        Text | None,
        Field(
            description="Which of the preset's base URLs: china (its default) or international (z.ai, DashScope "
            "Singapore, BytePlus ModelArk, api.moonshot.ai, api.siliconflow.com); keys of one do not work at the "
            "other."
        ),
        AfterValidator(presetkeys.region),
    ] = None
    base_url: Annotated[
        str,
        Derived(),
        Field(
            description="The API's base URL, e.g. http://127.0.0.1:8000/v1; default the preset's (in provider.region)."
        ),
        BeforeValidator(presetkeys.base_url),
    ]
    api_key_env: Annotated[
        str,
        Derived(),
        Expect(keep_null=True),
        Field(
            description="The environment variable holding the key (keys never go in the spec), or a list of them: "
            "a key pool, each key with its own limits; default the preset's.",
            json_schema_extra=checks.string_or_names,
        ),
        BeforeValidator(checks.key_envs),
    ]
    # api_key_env given as a list: every variable, each key its own limits
    key_pool: Annotated[tuple[str, ...], Internal(), Derived(), BeforeValidator(checks.key_pool)] = ()
    simulate: Annotated[
        SimulateSpec | None,
        Derived(),
        Field(description="How the simulated provider behaves (provider.name: simulated only)."),
        BeforeValidator(checks.simulate),
    ] = None
    mode: Annotated[
        Mode,
        Expect(aliases=tuple(MODE_ALIASES.items())),
        Field(
            description="sync: one answer per request; stream: server-sent events; async: submit, then poll; "
            "batch: the provider's Batch API; batch-chat: Ark's batch chat (chat requests at the batch price)."
        ),
        AfterValidator(checks.mode),
    ] = "sync"
    batch_price_share: Annotated[
        Share | None,
        Field(
            description="The Batch API's price as a share of online, where the preset's is unverified (Kimi); "
            "default the preset's."
        ),
        AfterValidator(lanechecks.batch_price_share),
    ] = None
    auth: Annotated[
        Auth,
        Field(description="bearer: the key as is; jwt: Zhipu's id.secret key signed into a short-lived token."),
        AfterValidator(checks.auth),
    ] = "bearer"
    proxy: Annotated[
        Text | None,
        Field(description="Every request through this http:// proxy; default HTTPS_PROXY / HTTP_PROXY / NO_PROXY."),
        AfterValidator(checks.proxy),
    ] = None
    ca_bundle: Annotated[
        Path | None,
        Field(description="CA certificates to trust instead of the system's (default SSL_CERT_FILE)."),
        BeforeValidator(checks.ca_bundle),
    ] = None
    allow_insecure_http: bool = Field(
        False, description="Send the key over plain http:// to a host that is not this machine."
    )
    tier: Annotated[
        Text | None,
        Field(
            description="The account's tier at the provider (moonshot: tier0 to tier5): the limits a job's limits: "
            "leaves out are that tier's."
        ),
        AfterValidator(presetkeys.tier),
    ] = None
    # whether a missing key is an error (the preset's say)
    key_required: Annotated[bool, Internal(), Derived(), BeforeValidator(checks.key_required)] = True

    @classmethod
    def as_written(cls, data: dict[str, Any], spec: Reading) -> dict[str, Any]:
        if isinstance(data.get("api_key_env"), list):
            data["key_pool"] = data["api_key_env"]  # checked as api_key_env, kept whole as the pool
        return data

    @property
    def key_envs(self) -> tuple[str, ...]:
        return self.key_pool or (self.api_key_env,)


class Limits(SpecModel):
    """The spec's `limits:` block: how fast to go; what it leaves out is the preset's."""

    rpm: Annotated[
        Positive | None,
        Derived(),
        Field(description="Requests per minute, at most; default the preset's (its provider.tier's), else none."),
        BeforeValidator(presetkeys.preset_limit),
    ] = None
    tpm: Annotated[
        Positive | None,
        Derived(),
        Field(
            description="Tokens per minute, at most (prompt + max_tokens); default the preset's (its "
            "provider.tier's), else none."
        ),
        BeforeValidator(presetkeys.preset_limit),
    ] = None
    concurrency: Annotated[
        Count | None,
        Derived(),
        Field(
            description="Requests in flight at once, at most; default the preset's (DeepSeek 500, a Kimi "
            "provider.tier's; batch-chat 1000), else learnt from the provider's answers."
        ),
        BeforeValidator(presetkeys.concurrency),
    ] = None
    tpd: Annotated[
        Positive | None,
        Derived(),
        Field(description="provider.mode batch-chat: tokens a day per model, at most (Ark's quota; default 10e9)."),
        BeforeValidator(lanechecks.tpd),
    ] = None
    tpm_accounting: Annotated[
        TpmAccounting,
        Derived(),
        Field(
            description="How the provider counts TPM: reserve (prompt + max_tokens on admission), actual (tokens "
            "used, after), auto (actual until 429s say otherwise); default the preset's."
        ),
        BeforeValidator(checks.tpm_accounting),
    ] = "auto"
    poll_rps: Positive = Field(20.0, description="Async mode: result polls per second, across all pending tasks.")
    max_pending: Count = Field(1000, description="Async mode: tasks submitted and not yet finished, at most.")
    batch_size: Annotated[
        Count,
        Derived(),
        Field(description="Embeddings: inputs per request; default the preset's (1 for other endpoints)."),
        BeforeValidator(checks.batch_size),
    ] = 1
    max_cost: Annotated[
        Mapping[str, float] | None,
        Field(
            description="The budget per currency, e.g. {CNY: 50}: the run never spends past it.",
            json_schema_extra=checks.budget_schema,
        ),
        BeforeValidator(checks.budget),
    ] = None


class ReasoningSpec(SpecModel):
    """The spec's `reasoning:` block: whether a reasoning model thinks, how hard and how long, said once and written
    into each provider's own words (spec/reasoning.py)."""

    thinking: Annotated[
        bool | Literal["auto"] | None,
        Field(description="Think before answering: true, false, or auto (the model decides; Ark only)."),
        BeforeValidator(thinking_value),
    ] = None
    effort: Effort | None = Field(
        None, description="How hard: low, medium, high or max (each provider's nearest; see docs/job-spec.md)."
    )
    budget_tokens: Count | None = Field(
        None, description="The most tokens the chain of thought may take (DashScope, SiliconFlow)."
    )


class RetrySpec(SpecModel):
    """The spec's `retry:` block: how often and how patiently a request is tried."""

    max_attempts: Count = Field(8, description="Tries per row, the first included.")
    timeout_s: Annotated[
        Positive,
        Derived(),
        Field(description="Seconds to wait for an answer; default 120 (batch-chat: 86400, a day)."),
        BeforeValidator(lanechecks.timeout),
    ] = 120.0
    queue_s: Annotated[
        NonNegative,
        Derived(),
        Field(
            description="Seconds more a provider may hold a request queued, sending keep-alives, before it starts "
            "answering (DeepSeek's blank lines); default the preset's (deepseek 600, others 0)."
        ),
        BeforeValidator(presetkeys.queue_s),
    ] = 0.0
    backoff_s: NonNegative = Field(1.0, description="The first backoff; it doubles per attempt, with jitter.")
    max_backoff_s: NonNegative = Field(60.0, description="The longest backoff.")


class BatchSettings(SpecModel):
    """`batch:` (provider.mode: batch only): how the batches are polled, their window, whether files are kept."""

    line_url: Annotated[
        Text | None,
        Field(description="Each line's url and the batch's endpoint, when not the endpoint's own (a path)."),
        AfterValidator(checks.line_url),
    ] = None
    poll_s: Positive = Field(30.0, description="First wait between polls; it grows by half each quiet round.")
    max_poll_s: Annotated[
        Positive,
        Derived(),
        Field(description="The longest wait between polls (at least poll_s)."),
        BeforeValidator(checks.max_poll),
    ] = 300.0
    completion_window: Text = Field("24h", description="The window the provider is given to finish a batch.")
    keep_files: bool = Field(False, description="Keep the uploaded input files at the provider (Zhipu keeps 1,000).")
    max_lines: Count | None = Field(None, description="Fewer lines per file than the provider allows.")
    fallback: Literal["batch", "online"] = Field(
        "batch", description="Rows a batch did not finish: into a new batch, or through the online lane."
    )
    deadline_s: Positive | None = Field(
        None, description="After this long, batches still going are cancelled and the rest go online."
    )

    @classmethod
    def shorthand(cls, data: Any, spec: Reading) -> Any:
        return lanechecks.batch_mode(data, spec)


class JobSpec(SpecModel):
    """A job spec: which rows, which model, which provider, how fast; read strictly, so a typo fails at once."""

    key_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {name: (f"params.{name}",) for name in REQUEST_PARAMS}

    name: Annotated[
        Text,
        Derived(),
        Field(description="The job's name (its run directory's); default the spec file's name."),
        AfterValidator(checks.job_name),
    ]
    model: Text = Field(description="The model every request names (a row's own `model` wins).")
    params: Annotated[
        Mapping[str, Any],
        Field(description="Request parameters sent as they are: temperature, max_tokens, ..."),
        AfterValidator(checks.params),
    ] = {}
    output_dir: Annotated[
        Path,
        Derived(),
        Field(description="The run directory, relative to the spec's folder; default runs/<name>."),
        BeforeValidator(checks.output_dir),
    ]
    endpoint: Annotated[
        Endpoint,
        Expect(aliases=tuple(ENDPOINT_ALIASES.items())),
        Field(description="chat (/chat/completions), completions (/completions) or embeddings (/embeddings)."),
        AfterValidator(checks.endpoint),
    ] = "chat"
    provider: Annotated[
        ProviderSpec,
        Expect(required="is required, e.g. provider: {name: simulated}"),
        Field(description="Where requests go (a preset's name, or a mapping).", json_schema_extra=checks.or_preset),
        AfterValidator(checks.provider_fits),
    ]
    input: Annotated[
        InputSpec,
        Expect(required="is required: a path to a .jsonl, .parquet or .csv file, or a mapping with 'path'"),
        Field(description="The rows (a file's path, or a mapping).", json_schema_extra=checks.or_string),
    ]
    reasoning: Annotated[
        ReasoningSpec | None,
        Field(description="Reasoning models: thinking, effort, budget_tokens, in the provider's own words."),
        AfterValidator(reasoning_fits),
    ] = None
    limits: Limits = Field(Limits(), description="How fast to go; what is left out is the preset's.")
    retry: RetrySpec = Field(RetrySpec(), description="How often and how patiently a request is tried.")
    pricing: Annotated[
        Mapping[str, Price],
        Field(
            description="Prices per million tokens, overriding the built-in ones: {model: {input, output, currency}}.",
            json_schema_extra=checks.prices_schema,
        ),
        BeforeValidator(checks.prices),
    ] = {}
    batch: BatchSettings = Field(BatchSettings(), description="provider.mode: batch only: polling, window, files.")
    output: Annotated[
        OutputSpec | None, Field(description="Structured output: the JSON Schema every answer must fit.")
    ] = None
    cache: Annotated[
        CacheSpec,
        Field(
            description="The response cache shared across runs (off, read, write, or a mapping).",
            json_schema_extra=checks.or_cache_words,
        ),
    ] = CacheSpec()
    scale: Annotated[
        ScaleSpec | None,
        Field(
            description="Run on Ray (true: a local Ray); not part of the fingerprint.", json_schema_extra=checks.or_bool
        ),
        BeforeValidator(checks.scale),
    ] = None
    schedule: ScheduleSpec = Field(
        ScheduleSpec(), description="When to send: avoid_peak holds the run while the price is above its cheapest."
    )
    spec_path: Annotated[Path, Internal(), Derived(), BeforeValidator(checks.spec_path)]
    # how messages name a spec not read from a file the user wrote: `batchrun.run(spec)` (parse_spec's origin)
    origin: Annotated[str, Internal()] = ""

    @classmethod
    def as_written(cls, data: dict[str, Any], spec: Reading) -> dict[str, Any]:
        return checks.job_as_written(data, spec)

    @property
    def called(self) -> str:
        """How a message names the spec: its file's name, or the Python API call it was given to."""
        return self.origin or self.spec_path.name

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
                k: (str(v) if isinstance(v, Path) else v.model_dump() if isinstance(v, SpecModel) else v)
                for k, v in vars(self.input).items()
                if k != "snapshot"
            },
            "model": self.model,
            "endpoint": self.endpoint,
            "params": dict(self.params),
            **({"reasoning": vars(self.reasoning)} if self.reasoning else {}),
            "provider": {
                "name": self.provider.name,
                "base_url": self.provider.base_url,
                "api_key_env": list(self.provider.key_pool) if self.provider.key_pool else self.provider.api_key_env,
                "mode": self.provider.mode,
                "batch_price_share": self.provider.batch_price_share,
                "auth": self.provider.auth,
                "proxy": self.provider.proxy,
                "ca_bundle": str(self.provider.ca_bundle) if self.provider.ca_bundle else None,
                "allow_insecure_http": self.provider.allow_insecure_http,
            },
            "limits": vars(self.limits),
            "retry": vars(self.retry),
            "batch": vars(self.batch),
            "output_dir": str(self.output_dir),
            "pricing": {model: price.as_dict() for model, price in self.pricing.items()},
            **({"output": {**vars(self.output), "schema": dict(self.output.schema)}} if self.output else {}),
            "cache": {"mode": self.cache.mode, "path": str(self.cache.file()), "sampled": self.cache.sampled},
            **({"scale": vars(self.scale)} if self.scale else {}),
        }
