"""Provider presets: where each hosted API lives and which environment variable holds its key.

Kept free of I/O so the spec can validate a preset name without importing the HTTP stack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..retry import GENERIC, ErrorTable

if TYPE_CHECKING:
    import aiohttp

    from ..request import Request
    from ..transport import Reply


@dataclass(frozen=True)
class Preset:
    name: str
    base_url: str
    api_key_env: str
    title: str
    key_required: bool = True  # False: send the key only when the variable is set (vLLM, the simulator)
    # How the provider counts TPM: "reserve" charges prompt + max_tokens on admission (OpenAI's way),
    # "actual" the tokens used once answered; "auto" assumes actual until 429s show otherwise.
    tpm_accounting: str = "auto"
    errors: ErrorTable = field(default=GENERIC)  # the provider's own codes (providers.md)
    modes: tuple[str, ...] = ("sync", "stream")
    endpoints: tuple[str, ...] = ("chat", "embeddings")
    embedding_batch: int = 16  # inputs per /embeddings request the provider accepts
    auths: tuple[str, ...] = ("bearer",)


BAIDU_ERRORS = ErrorTable(
    retry=frozenset({"rpm_rate_limit_exceeded", "tpm_rate_limit_exceeded", "input_tpm_rate_limit_exceeded",
                     "output_tpm_rate_limit_exceeded", "user_rate_limit_exceeded", "cluster_rate_limit_exceeded",
                     "preemptible_rate_limit_exceeded", "336501", "336502", "18"}),
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
}


PRESETS: dict[str, Preset] = {
    p.name: dataclasses.replace(p, errors=ERRORS.get(p.name, GENERIC))
    for p in (
        Preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "OpenAI", tpm_accounting="reserve",
               endpoints=("chat", "completions", "embeddings"), embedding_batch=256),
        Preset("zhipu", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", "Zhipu GLM",
               modes=("sync", "stream", "async"), embedding_batch=64, auths=("bearer", "jwt")),
        Preset(
            "dashscope",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            "Alibaba DashScope (Qwen)",
            embedding_batch=10,
        ),
        Preset("aistudio", "https://aistudio.baidu.com/llm/lmapi/v3", "AISTUDIO_ACCESS_TOKEN", "Baidu AI Studio"),
        Preset("qianfan", "https://qianfan.baidubce.com/v2", "QIANFAN_API_KEY", "Baidu Qianfan"),
        Preset("genstudio", "https://cloud.infini-ai.com/maas/v1", "GENSTUDIO_API_KEY", "Infini-AI GenStudio"),
        Preset("modelarts", "https://api.modelarts-maas.com/v1", "MODELARTS_API_KEY", "Huawei ModelArts MaaS",
               endpoints=("chat", "completions")),
        Preset("vllm", "http://127.0.0.1:8000/v1", "VLLM_API_KEY", "self-hosted vLLM / SGLang", key_required=False,
               endpoints=("chat", "completions", "embeddings"), embedding_batch=64),
        Preset("simulated", "", "BATCHRUN_SIM_API_KEY", "batchrun's built-in simulated provider", key_required=False,
               modes=("sync", "stream", "async"), endpoints=("chat", "completions", "embeddings")),
    )
}


class CallPath(Protocol):
    """How one request reaches a provider: sync, stream, or the submission of an async task."""

    async def call(self, http: aiohttp.ClientSession, request: Request, timeout: float) -> Reply: ...


def make_auth(key: str | None, kind: str = "bearer") -> Callable[[], str | None]:
    """The Authorization header's value for each call: the key as a bearer token, or a Zhipu JWT signed with it."""
    if key is None:
        return lambda: None
    if kind == "jwt":
        from .zhipu import ZhipuJWT

        return ZhipuJWT(key)
    header = f"Bearer {key}"
    return lambda: header


def call_path(base_url: str, auth: Callable[[], str | None], mode: str = "sync", endpoint: str = "chat") -> CallPath:
    from .openai import ChatCompletions, ChatCompletionsStream

    if mode == "async":
        from .zhipu import AsyncCompletions

        return AsyncCompletions(base_url, auth)
    if mode == "stream":
        return ChatCompletionsStream(base_url, auth, endpoint)
    return ChatCompletions(base_url, auth, endpoint)
