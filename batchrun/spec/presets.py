"""Provider presets: where each hosted API lives, which variable holds its key, what it offers, and its error codes.

A leaf of the house (it imports only the pure error table): the spec validates against it, and every layer above
reads the same facts. Sources of the tables: docs/providers.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..retry import GENERIC, ErrorTable
from ..text.words import suggestion
from . import errortables as t2026

Mode = Literal["sync", "stream", "async", "batch", "batch-chat"]
Endpoint = Literal["chat", "completions", "embeddings"]
TpmAccounting = Literal["auto", "reserve", "actual"]
Auth = Literal["bearer", "jwt"]
AskForm = Literal["json_schema", "json_object", "instruction"]  # how a job with `output:` asks for JSON
MODES: tuple[Mode, ...] = ("sync", "stream", "async", "batch", "batch-chat")
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completions", "embeddings")
TPM_ACCOUNTING: tuple[TpmAccounting, ...] = ("auto", "reserve", "actual")
AUTHS: tuple[Auth, ...] = ("bearer", "jwt")
ASK_FORMS: tuple[AskForm, ...] = ("json_schema", "json_object", "instruction")
ENDPOINT_URLS: dict[Endpoint, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


@dataclass(frozen=True)
class BatchAPI:
    """A provider's Batch API (the OpenAI shape: upload a JSONL file, create a batch, poll, download), with the
    limits a shard file must keep, checked before upload rather than found out from a rejection; or its batch-chat
    path (Ark: ordinary chat requests answered slowly at the batch price), or both."""

    line_prefix: str  # what a line's `url` starts with: "/v1" + "/chat/completions"
    max_lines: int = 50_000
    max_bytes: int = 100 * 1024 * 1024
    max_embedding_lines: int | None = None  # a lower line cap for embeddings files
    endpoints: tuple[Endpoint, ...] = ("chat",)
    one_model_per_file: bool = False
    price_share: float = 0.5  # batch price / online price
    max_line_bytes: int | None = None  # a cap on one request line (DashScope: 6 MB), None: only the file's
    # a provider prompt-cache hit through the Batch API, as a share of the batch input price (DashScope: 1, no
    # cache discount in batch); None: the model's cached-input price at price_share, as online
    cache_hit_share: float | None = None
    source: str = ""  # where the figures come from, and when
    create_extra: tuple[tuple[str, object], ...] = ()  # fields the provider's create call takes beyond OpenAI's
    queue_caps: tuple[tuple[str, int], ...] = ()  # (model, rows) the provider queues at most at once, per model
    files: bool = True  # the files-and-batches API (`provider.mode: batch`)
    chat_path: str | None = None  # the batch-chat path under the base URL (`provider.mode: batch-chat`)
    max_files: int | None = None  # batch-purpose files the provider holds per organisation (Kimi: 1,000)
    replace_model: bool = False  # the create call names the file's model: `replace: {"model": ...}` (SiliconFlow)
    ends_with_user: bool = False  # a line's messages must end with a user message (SiliconFlow)
    price_unverified: bool = False  # price_share is a guess until the provider documents it (docs say so)
    # (word, what to do) for a refused upload or create whose code or message holds the word
    refusal_hints: tuple[tuple[str, str], ...] = ()
    title: str = "the provider"  # how messages name it

    def line_url(self, endpoint: Endpoint) -> str:
        return self.line_prefix + ENDPOINT_URLS[endpoint]

    def lines_for(self, endpoint: Endpoint) -> int:
        return self.max_embedding_lines or self.max_lines if endpoint == "embeddings" else self.max_lines


@dataclass(frozen=True)
class Preset:
    name: str
    base_url: str
    api_key_env: str
    title: str
    key_required: bool = True  # False: send the key only when the variable is set (vLLM, the simulator)
    # How the provider counts TPM: "reserve" charges prompt + max_tokens on admission (OpenAI's way),
    # "actual" the tokens used once answered; "auto" assumes actual until 429s show otherwise.
    tpm_accounting: TpmAccounting = "auto"
    errors: ErrorTable = field(default=GENERIC)  # the provider's own codes (docs/providers.md)
    modes: tuple[Mode, ...] = ("sync", "stream")
    endpoints: tuple[Endpoint, ...] = ("chat", "embeddings")
    embedding_batch: int = 16  # inputs per /embeddings request the provider accepts
    auths: tuple[Auth, ...] = ("bearer",)
    batch: BatchAPI | None = None  # the provider's Batch API, where it has one
    # structured output: the strongest way the provider documents to ask for JSON (structured.py)
    ask: AskForm = "instruction"
    # (region, base URL) where the provider serves more than one (provider.region); the first is base_url's
    regions: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, float], ...] = ()  # limits the job leaves out: (key of limits:, value)
    tiers: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()  # provider.tier: the limits of each
    queue_s: float = 0.0  # how long the provider may hold a request queued before answering (retry.queue_s)


MB = 1024 * 1024
GB = 1024 * MB
BATCH_APIS: dict[str, BatchAPI] = {
    "openai": BatchAPI(
        "/v1",
        max_bytes=200 * MB,
        endpoints=("chat", "completions", "embeddings"),
        title="OpenAI",
        source="OpenAI Batch API (50,000 requests, 200 MB per file; 50 % off): openai-python, 2026-08",
    ),
    "zhipu": BatchAPI(
        "/v4",
        max_bytes=100 * MB,
        max_embedding_lines=10_000,
        endpoints=("chat", "embeddings"),
        one_model_per_file=True,
        create_extra=(("auto_delete_input_file", True),),
        queue_caps=(("glm-4-plus", 2_000_000),),
        title="Zhipu",
        source="bigmodel.cn Batch API (50,000 lines, 100 MB, embeddings 10,000; one model per file; 50 % off), 2025/26",
    ),
    "dashscope": BatchAPI(
        "/v1",
        max_bytes=500 * MB,
        max_line_bytes=6 * MB,
        endpoints=("chat", "embeddings"),
        one_model_per_file=True,
        cache_hit_share=1.0,  # batch calls get no context-cache discount
        title="DashScope",
        source="Model Studio batch inference (50,000 requests, 500 MB a file, 6 MB a line, one model per file; "
        "50 %, no cache discount), 2026",
    ),
    "qianfan": BatchAPI(
        "/v2",
        max_lines=5_000,
        max_bytes=1 * GB,
        price_share=0.4,
        refusal_hints=(
            (
                "bos",
                "activate BOS (Baidu Object Storage) for this account in the Baidu Cloud console: Qianfan's "
                "Batch API keeps its files there",
            ),
        ),
        title="Qianfan",
        source="Qianfan batch inference (5,000 requests and 1 GB a file; 40 % of online; BOS must be activated), 2026",
    ),
    "genstudio": BatchAPI(
        "/v1",
        max_bytes=200 * MB,
        title="GenStudio",
        source="Infini-AI GenStudio batch API (50,000 lines, 200 MB; 50 % off), 2025",
    ),
    "ark": BatchAPI(
        "/v3",
        files=False,  # Ark's file-based batch jobs need TOS object storage and signed calls: not built
        chat_path="/batch/chat/completions",
        cache_hit_share=0.4,  # a cache hit is a further 60 % off the batch input price
        title="Ark",
        source="Volcengine Ark batch chat (50 %; a cache hit 40 % of the batch input price; 10B tokens a day per "
        "model): volcengine.com/docs/82379/1399519, 2025-06",
    ),
    "moonshot": BatchAPI(
        "/v1",
        max_bytes=100 * MB,
        one_model_per_file=True,
        max_files=1_000,
        price_share=1.0,  # unverified: no saving is assumed until Kimi documents one (provider.batch_price_share)
        price_unverified=True,
        title="Kimi",
        source="Kimi Batch API guide (100 MB a file, one model per file, 1,000 batch files per organisation; "
        "price share unverified), 2026",
    ),
    "siliconflow": BatchAPI(
        "/v1",
        max_lines=5_000,
        max_bytes=1 * GB,
        one_model_per_file=True,
        replace_model=True,
        ends_with_user=True,
        title="SiliconFlow",
        source="SiliconFlow batch guide (5,000 lines and 1 GB a file, messages end with user, replace.model; "
        "50 %), 2026",
    ),
    "simulated": BatchAPI(
        "/v1",
        endpoints=("chat", "completions", "embeddings"),
        title="the simulator",
        source="batchrun's simulated provider (the OpenAI shape and limits)",
    ),
}


BAIDU_ERRORS = ErrorTable(
    retry=frozenset(
        {
            "rpm_rate_limit_exceeded",
            "tpm_rate_limit_exceeded",
            "input_tpm_rate_limit_exceeded",
            "output_tpm_rate_limit_exceeded",
            "user_rate_limit_exceeded",
            "cluster_rate_limit_exceeded",
            "preemptible_rate_limit_exceeded",
            "336501",
            "336502",
            "18",
        }
    ),
    fail_row=frozenset({"system_unsafe", "user_setting_unsafe", "functions_unsafe"}),
    stop=frozenset({"account_overdue", "model_offline"}),
)
ERRORS = {
    "openai": ErrorTable(stop=frozenset({"insufficient_quota"})),
    "zhipu": ErrorTable(
        retry=frozenset({"1303", "1305", "1312"}),
        concurrency=frozenset({"1302"}),
        fail_row=frozenset({"1210", "1211", "1212", "1213", "1214", "1215", "1301"}),
        stop=frozenset({"1113", "1304", "1308", "1310"}),
    ),
    "dashscope": ErrorTable(
        retry=frozenset({"Throttling", "Throttling.RateQuota", "LimitRequests", "insufficient_quota"}),
        fail_row=frozenset({"DataInspectionFailed", "data_inspection_failed"}),
        stop=frozenset({"PrepaidBillOverdue", "PostpaidBillOverdue", "CommodityNotPurchased"}),
    ),
    "aistudio": BAIDU_ERRORS,
    "qianfan": BAIDU_ERRORS,
    "simulated": ErrorTable(concurrency=frozenset({"1302"})),  # its --max-inflight answers as Zhipu does
    "modelarts": ErrorTable(
        retry=frozenset({"ModelArts.81101", "ModelArts.81103"}),
        fail_row=frozenset({"ModelArts.81011", "ModelArts.4910"}),
        stop=frozenset({"ModelArts.81005"}),
    ),
    "deepseek": t2026.DEEPSEEK,
    "ark": t2026.ARK,
    "moonshot": t2026.MOONSHOT,
    "siliconflow": t2026.SILICONFLOW,
}


def batch_modes(api: BatchAPI | None) -> tuple[Mode, ...]:
    """The modes a provider's Batch API adds: `batch` (files and batches), `batch-chat` (Ark's path)."""
    if api is None:
        return ()
    return (*(("batch",) if api.files else ()), *(("batch-chat",) if api.chat_path else ()))


PRESETS: dict[str, Preset] = {
    p.name: dataclasses.replace(
        p,
        errors=ERRORS.get(p.name, GENERIC),
        batch=BATCH_APIS.get(p.name),
        regions=t2026.REGIONS.get(p.name, ()),
        modes=(*p.modes, *batch_modes(BATCH_APIS.get(p.name))),
    )
    for p in (
        Preset(
            "openai",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
            "OpenAI",
            tpm_accounting="reserve",
            endpoints=("chat", "completions", "embeddings"),
            embedding_batch=256,
            ask="json_schema",
        ),
        Preset(
            "zhipu",
            "https://open.bigmodel.cn/api/paas/v4",
            "ZHIPUAI_API_KEY",
            "Zhipu GLM",
            modes=("sync", "stream", "async"),
            embedding_batch=64,
            auths=("bearer", "jwt"),
            ask="json_object",
        ),
        Preset(
            "dashscope",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            "Alibaba DashScope (Qwen)",
            embedding_batch=10,
            ask="json_object",
        ),
        Preset(
            "aistudio",
            "https://aistudio.baidu.com/llm/lmapi/v3",
            "AISTUDIO_ACCESS_TOKEN",
            "Baidu AI Studio",
            ask="json_object",
        ),
        Preset("qianfan", "https://qianfan.baidubce.com/v2", "QIANFAN_API_KEY", "Baidu Qianfan", ask="json_object"),
        Preset("genstudio", "https://cloud.infini-ai.com/maas/v1", "GENSTUDIO_API_KEY", "Infini-AI GenStudio"),
        Preset(
            "modelarts",
            "https://api.modelarts-maas.com/v1",
            "MODELARTS_API_KEY",
            "Huawei ModelArts MaaS",
            endpoints=("chat", "completions"),
        ),
        Preset(
            "deepseek",
            "https://api.deepseek.com",
            "DEEPSEEK_API_KEY",
            "DeepSeek",
            limits=t2026.DEEPSEEK_LIMITS,
            queue_s=t2026.DEEPSEEK_QUEUE_S,
        ),
        Preset("ark", "https://ark.cn-beijing.volces.com/api/v3", "ARK_API_KEY", "Volcengine Ark (Doubao)"),
        Preset(
            "moonshot",
            "https://api.moonshot.cn/v1",
            "MOONSHOT_API_KEY",
            "Moonshot Kimi",
            tiers=t2026.MOONSHOT_TIERS,
        ),
        Preset("siliconflow", "https://api.siliconflow.cn/v1", "SILICONFLOW_API_KEY", "SiliconFlow"),
        Preset(
            "vllm",
            "http://127.0.0.1:8000/v1",
            "VLLM_API_KEY",
            "self-hosted vLLM / SGLang",
            key_required=False,
            endpoints=("chat", "completions", "embeddings"),
            embedding_batch=64,
            ask="json_schema",
        ),
        Preset(
            "simulated",
            "",
            "BATCHRUN_SIM_API_KEY",
            "batchrun's built-in simulated provider",
            key_required=False,
            modes=("sync", "stream", "async"),
            endpoints=("chat", "completions", "embeddings"),
            ask="json_schema",
        ),
    )
}


# Names a user may know a provider or a value by: suggested in the error, never taken for the preset's own name, so
# that a spec (and its run's manifest) names each preset one way and the user learns it once. ERNIE is served by two
# presets: both are named.
PROVIDER_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("qwen", "tongyi", "bailian", "aliyun", "alibaba", "modelstudio"), ("dashscope",)),
    **dict.fromkeys(("glm", "chatglm", "bigmodel", "zhipuai", "zhipu_ai"), ("zhipu",)),
    **dict.fromkeys(("ernie", "wenxin", "yiyan", "baidu"), ("aistudio", "qianfan")),
    **dict.fromkeys(("infini", "infiniai", "infini_ai"), ("genstudio",)),
    **dict.fromkeys(("huawei", "pangu", "maas"), ("modelarts",)),
    **dict.fromkeys(("sglang", "local"), ("vllm",)),
    **dict.fromkeys(("sim", "simulator", "simulate", "fake", "mock"), ("simulated",)),
    **dict.fromkeys(("gpt", "chatgpt"), ("openai",)),
    **dict.fromkeys(("doubao", "volcengine", "volcano", "volces", "byteplus", "modelark"), ("ark",)),
    **dict.fromkeys(("kimi", "moonshotai"), ("moonshot",)),
    **dict.fromkeys(("silicon", "sf", "siliconcloud"), ("siliconflow",)),
    **dict.fromkeys(("deepseek-ai", "deepseek_ai"), ("deepseek",)),
}
ENDPOINT_ALIASES: dict[str, tuple[str, ...]] = {
    form: (endpoint,)
    for endpoint, url in ENDPOINT_URLS.items()
    for form in (url, url[1:], url[1:].replace("/", "_"), url[1:].replace("/", "."))
    if form != endpoint
}
MODE_ALIASES: dict[str, tuple[str, ...]] = {
    "synchronous": ("sync",),
    "asynchronous": ("async",),
    "online": ("sync", "stream"),
    "offline": ("batch",),
}


def unknown_preset(name: str) -> str:
    """What the error for a provider name that is no preset says after the key (provider.name, --provider)."""
    return f"must be one of {', '.join(PRESETS)}, got {name!r}{suggestion(name, PRESETS, PROVIDER_ALIASES)}"


def batch_share(provider: str, override: float | None = None) -> float:
    """The provider's Batch API price as a share of its online price (answers with a batch_id, or from Ark's
    batch chat, cost this); `override`: the job's `provider.batch_price_share`, where the preset's is a guess. 1
    for a provider without a Batch API, or one unknown (a run directory of an older batchrun)."""
    if override is not None:
        return override
    preset = PRESETS.get(provider)
    return preset.batch.price_share if preset is not None and preset.batch is not None else 1.0


def batch_cache_share(provider: str) -> float | None:
    """A prompt-cache hit's price through the provider's Batch API as a share of its batch input price; None: the
    model's cached-input price at the batch share (`BatchAPI.cache_hit_share`)."""
    preset = PRESETS.get(provider)
    return preset.batch.cache_hit_share if preset is not None and preset.batch is not None else None


def region_url(preset: Preset, region: str | None) -> str:
    """The preset's base URL in `region` (None: its first, the base_url)."""
    return dict(preset.regions).get(region or "", preset.base_url)


def preset_limits(preset: Preset, tier: str | None) -> dict[str, float]:
    """The limits a job of this preset leaves out: its tier's (provider.tier), else the preset's own."""
    return dict(dict(preset.tiers).get(tier or "", preset.limits))
