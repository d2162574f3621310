"""Provider presets: where each hosted API lives and which environment variable holds its key.

Kept free of I/O so the spec can validate a preset name without importing the HTTP stack.
"""

from __future__ import annotations

import dataclasses
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
        retry=frozenset({"1302", "1303", "1305", "1312"}),
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
    "modelarts": ErrorTable(
        retry=frozenset({"ModelArts.81101", "ModelArts.81103"}),
        fail_row=frozenset({"ModelArts.81011", "ModelArts.4910"}),
        stop=frozenset({"ModelArts.81005"}),
    ),
}


PRESETS: dict[str, Preset] = {
    p.name: dataclasses.replace(p, errors=ERRORS.get(p.name, GENERIC))
    for p in (
        Preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "OpenAI", tpm_accounting="reserve"),
        Preset("zhipu", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", "Zhipu GLM"),
        Preset(
            "dashscope",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            "Alibaba DashScope (Qwen)",
        ),
        Preset("aistudio", "https://aistudio.baidu.com/llm/lmapi/v3", "AISTUDIO_ACCESS_TOKEN", "Baidu AI Studio"),
        Preset("qianfan", "https://qianfan.baidubce.com/v2", "QIANFAN_API_KEY", "Baidu Qianfan"),
        Preset("genstudio", "https://cloud.infini-ai.com/maas/v1", "GENSTUDIO_API_KEY", "Infini-AI GenStudio"),
        Preset("modelarts", "https://api.modelarts-maas.com/v1", "MODELARTS_API_KEY", "Huawei ModelArts MaaS"),
        Preset("vllm", "http://127.0.0.1:8000/v1", "VLLM_API_KEY", "self-hosted vLLM / SGLang", key_required=False),
        Preset("simulated", "", "BATCHRUN_SIM_API_KEY", "batchrun's built-in simulated provider", key_required=False),
    )
}


class CallPath(Protocol):
    """How one row's request reaches a provider: sync now; stream and submit-and-poll later."""

    async def call(self, http: aiohttp.ClientSession, request: Request, timeout: float) -> Reply: ...


def call_path(base_url: str, api_key: str | None, mode: str = "sync") -> CallPath:
    from .openai import ChatCompletions, ChatCompletionsStream

    return (ChatCompletionsStream if mode == "stream" else ChatCompletions)(base_url, api_key)
