"""Provider presets: where each hosted API lives and which environment variable holds its key.

Kept free of I/O so the spec can validate a preset name without importing the HTTP stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

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


PRESETS: dict[str, Preset] = {
    p.name: p
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


def call_path(base_url: str, api_key: str | None) -> CallPath:
    from .openai import ChatCompletions

    return ChatCompletions(base_url, api_key)
