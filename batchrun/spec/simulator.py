"""How the simulated provider behaves: a job spec's `provider.simulate:` and `batchrun simulate`'s options.

Declared once here; `sim/command.py` makes the command's options from these fields (`Flag` says where the command
spells or defaults a field differently), and the spec parser reads the section with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo

from .base import Count, Internal, NonNegative, Positive, Share, SpecModel, either, fail, fail_at, kind, reading

LatencyDist = Literal["lognormal", "uniform", "fixed"]
Gateway = Literal["none", "litellm", "litellm-key"]
LATENCY_DISTS: tuple[LatencyDist, ...] = ("lognormal", "uniform", "fixed")
SIM_GATEWAYS: tuple[Gateway, ...] = ("none", "litellm", "litellm-key")
# Whose wire shape the simulator answers in: usage fields, error bodies, queueing, batch paths and limits.
Speaks = Literal["openai", "zhipu", "dashscope", "qianfan", "deepseek", "ark", "moonshot", "siliconflow"]
SIM_SPEAKS: tuple[Speaks, ...] = (
    "openai",
    "zhipu",
    "dashscope",
    "qianfan",
    "deepseek",
    "ark",
    "moonshot",
    "siliconflow",
)


@dataclass(frozen=True)
class Flag:
    """How `batchrun simulate` spells a field where it is not `--kebab-name` with the spec's default."""

    name: str | None = None  # the option, e.g. --bare-429
    default: Any = None  # the command's own default (None: the field's)
    inverted: bool = False  # a flag that sets a true-by-default field false
    metavar: str | None = None
    multiple: bool = False
    parse: Callable[[str], Any] | None = None  # the option's text as the spec would hold it
    pairs: bool = False  # each option given is a (key, value) pair of the spec's mapping


def _seconds_range(value: Any, info: ValidationInfo) -> tuple[float, float]:
    """A number of seconds, or [low, high] for a uniform draw between them."""
    pair = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if (
        len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in pair)
        or pair[0] > pair[1]
    ):
        fail(f"must be seconds (a number >= 0) or [low, high], got {kind(value)}")
    return float(pair[0]), float(pair[1])


def _names(value: Any, info: ValidationInfo) -> Any:
    if reading(info) is None:
        return value
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        fail(f"must be a list of names, got {kind(value)}")
    return tuple(value)


def _key_rpm(value: Any) -> Any:
    """`key_rpm: {VAR: 600}`: the RPM limit of the key in each variable (the variable's name, never the key)."""
    if isinstance(value, tuple):
        return value  # built in code: already (name, rpm) pairs
    if not isinstance(value, Mapping):
        fail(f"must be a mapping, got {kind(value)}")
    pairs = []
    for env, rpm in value.items():
        if isinstance(rpm, bool) or not isinstance(rpm, (int, float)):
            fail_at(env, f"must be a number, got {kind(rpm)}")
        if rpm <= 0:
            fail_at(env, f"must be > 0, got {rpm}")
        pairs.append((str(env), float(rpm)))
    return tuple(pairs)


def _key_rpm_schema(extra: dict[str, Any]) -> None:
    for key in ("items", "type"):
        extra.pop(key, None)
    extra.update(type="object", additionalProperties={"type": "number", "exclusiveMinimum": 0}, default={})


def _models(pair: str) -> list[str] | None:
    return [m.strip() for m in pair.split(",") if m.strip()] or None


def _key_rpm_option(pair: str) -> tuple[str, float]:
    from ..errors import SpecError

    env, _, rpm = pair.partition("=")
    try:
        value = float(rpm)
    except ValueError:
        value = -1.0
    if not env or value <= 0:
        raise SpecError(f"--key-rpm takes VAR=RPM, such as TEAM_KEY_1=600, got {pair!r}")
    return env, value


class SimulateSpec(SpecModel):
    """How the simulated provider behaves: shared by `batchrun simulate` and `provider: {name: simulated}`."""

    error_rate: Share = Field(0.0, description="Share of requests answered HTTP 500.")
    drop_rate: Share = Field(0.0, description="Share of requests whose connection is dropped.")
    slow_rate: Share = Field(0.0, description="Share of requests answered only after slow_s (--slow-s).")
    invalid_json_rate: Share = Field(
        0.0,
        description="Share of first answers to a response_format request given invalid JSON (repairs are "
        "answered right).",
    )
    rpm: Positive | None = Field(None, description="Requests per minute to allow; beyond it, 429.")
    tpm: Positive | None = Field(None, description="Tokens per minute to allow (prompt + max_tokens); beyond it, 429.")
    latency: Annotated[NonNegative, Flag(default=0.3)] = Field(0.05, description="Median seconds to answer.")
    slow_s: Positive = Field(30.0, description="How long the slow answers take.")
    max_inflight: Count | None = Field(
        None, description="Requests handled at once; beyond it, 429 with Zhipu's code 1302 (a concurrency limit)."
    )
    seed: int = Field(0, ge=0, description="Seed for injected errors and latency.")
    retry_after: Annotated[bool, Flag(name="--bare-429", inverted=True)] = Field(
        True, description="Send Retry-After with 429s; false (--bare-429): bare 429s, as Zhipu does."
    )
    rate_headers: bool = Field(False, description="Send x-ratelimit-* headers on every answer, as OpenAI does.")
    gateway: Gateway = Field(
        "none",
        description="Answer as through a gateway: litellm (LiteLLM's proxy: the provider's headers renamed "
        "llm_provider-*), litellm-key (and rpm/tpm are a LiteLLM virtual key's limits: limit and remaining "
        "headers, no reset).",
    )
    speaks: Speaks = Field(
        "openai",
        description="Answer in this provider's own shapes (usage fields, error bodies, queueing, batch paths and "
        "limits), so a job for its preset can be tried with no key.",
    )
    queue_s: NonNegative = Field(
        0.0,
        description="Hold every request queued this long before answering, sending keep-alives meanwhile (blank "
        "lines; in a stream ': keep-alive' comments), as DeepSeek does under load.",
    )
    balance: Count | None = Field(
        None,
        description="The account's balance in tokens: once this many are billed, every request is refused as the "
        "provider refuses an empty account (deepseek: 402 Insufficient Balance).",
    )
    resource_cut_rate: Share = Field(
        0.0,
        description="Share of answers cut short with finish_reason insufficient_system_resource (DeepSeek's), billed "
        "all the same.",
    )
    latency_dist: LatencyDist = Field("lognormal", description="How answer times spread around the median.")
    tpm_accounting: Literal["reserve", "actual"] = Field(
        "reserve",
        description="Charge TPM prompt + max_tokens on admission (reserve) or the tokens used, after (actual).",
    )
    task_s: Annotated[
        tuple[float, float],
        Flag(metavar="LOW HIGH"),
        Field(
            description="Async tasks (Zhipu's asyncCompletions) take between LOW and HIGH seconds (or a number).",
            json_schema_extra=lambda extra: either(extra, {"type": "number", "minimum": 0}),
        ),
        BeforeValidator(_seconds_range),
    ] = (2.0, 20.0)
    models: Annotated[
        tuple[str, ...] | None,
        Flag(parse=_models, metavar="M1,M2"),
        Field(description="The models to serve; any other is answered 404 model_not_found (default: any name)."),
        BeforeValidator(_names),
    ] = None
    batch_s: NonNegative = Field(
        3.0, description="How long a Batch API batch (POST /batches) runs once its file is validated."
    )
    batch_chat_latency: NonNegative = Field(
        1.0, description="speaks: ark: seconds Ark's batch chat (POST /batch/chat/completions) takes to answer."
    )
    key_rpm: Annotated[
        tuple[tuple[str, float], ...],
        Flag(metavar="VAR=RPM", multiple=True, parse=_key_rpm_option, pairs=True),
        Field(
            description="Key pools: the key in $VAR has its own RPM limit (name the variable, never the key).",
            json_schema_extra=_key_rpm_schema,
        ),
        BeforeValidator(_key_rpm),
    ] = ()
    revoked: Annotated[
        tuple[str, ...],
        Flag(name="--revoked-key", metavar="VAR", multiple=True),
        Field(description="Answer 401 to the keys in these variables."),
        BeforeValidator(_names),
    ] = ()
    # when set, requests must carry it (to try auth failures): `batchrun simulate --require-key`
    api_key: Annotated[str | None, Internal()] = None
