"""The 2026 presets' own facts: error tables (retry, fail the row, stop the run), where each is served, how it
limits a client, and how long it may hold a request queued. Sources and dates: docs/providers.md, from
`providers-2026.md` sections 1.1-1.4 (DeepSeek D3/D6/D10, Ark A5, Kimi K3/K5/K6, SiliconFlow S3-S5).

Kept apart from presets.py so that the tables read as the providers' pages do; presets.py attaches them.
"""

from __future__ import annotations

from ..retry import ErrorTable

Pairs = tuple[tuple[str, float], ...]

CHINA, INTERNATIONAL = "china", "international"

# DeepSeek: one account-wide cap on requests in flight, so every 429 is about concurrency (the body's code is not
# documented: the status says it); 402 is an empty balance; a request waits queued (blank lines) up to 10 minutes.
DEEPSEEK = ErrorTable(
    concurrency=frozenset({"http_429"}),
    stop=frozenset({"http_402"}),
    retry_finish=frozenset({"insufficient_system_resource"}),
    fixes=(
        (
            "http_402",
            "the DeepSeek balance is used up: top it up at platform.deepseek.com, then run the same command to resume",
        ),
    ),
)
DEEPSEEK_LIMITS: Pairs = (("concurrency", 500),)  # v4-pro's cap, the lower of the two (v4-flash 2,500), 2026-06-11
DEEPSEEK_QUEUE_S = 600.0  # "closed if inference has not started after 10 min" (2026; the 2025 page said 30)

# Volcengine Ark / BytePlus ModelArk. The codes of A5; those marked (u) are Ark's own names seen beside them, not
# checked against the page, and harmless where wrong (an unknown code falls back to its HTTP status).
ARK = ErrorTable(
    retry=frozenset(
        {
            "TooManyRequests",
            "RateLimitExceeded.EndpointRPMExceeded",
            "RateLimitExceeded.EndpointTPMExceeded",
            "ModelAccountRpmRateLimitExceeded",  # (u)
            "ModelAccountTpmRateLimitExceeded",  # (u)
            "ServerOverloaded",  # (u)
        }
    ),
    fail_row=frozenset(
        {
            "SensitiveContentDetected",
            "SensitiveContentDetected.SevereViolation",
            "SensitiveContentDetected.Violence",
            "InputTextSensitiveContentDetected",
            "InputImageSensitiveContentDetected",
            "OutputTextSensitiveContentDetected",  # (u)
            "OutputTextRiskDetection",
            "InputTextRiskDetection",
            "InputImageRiskDetection",  # (u)
        }
    ),
    stop=frozenset({"AccountOverdueError", "InvalidEndpointOrModel.ModelIDAccessDisabled"}),
    fixes=(
        ("AccountOverdueError", "the Ark account is in arrears: top it up in the Volcengine (or BytePlus) console"),
        (
            "InvalidEndpointOrModel.ModelIDAccessDisabled",
            "the model is not enabled for this account: enable it in the Ark console (开通管理)",
        ),
    ),
)

# Moonshot Kimi. The 429 and 403 type names are the help center's (K6), not the API reference's: unverified.
MOONSHOT = ErrorTable(
    retry=frozenset({"rate_limit_reached_error", "engine_overloaded_error"}),
    fail_row=frozenset({"content_filter"}),
    stop=frozenset({"exceeded_current_quota_error", "permission_denied_error"}),
    fixes=(
        (
            "exceeded_current_quota_error",
            "the Kimi balance or quota is used up: top up at platform.moonshot.cn (or platform.moonshot.ai for "
            "region: international), then resume",
        ),
        (
            "http_401",
            "Kimi keys work only where they were made: a platform.moonshot.cn key with region china (the default), a "
            "platform.moonshot.ai key with provider.region: international",
        ),
    ),
)
# Kimi's tiers by cumulative top-up (K3): (concurrency, RPM, TPM) each; the same on .cn and .ai.
MOONSHOT_TIERS: tuple[tuple[str, Pairs], ...] = tuple(
    (f"tier{n}", (("concurrency", c), ("rpm", r), ("tpm", t)))
    for n, (c, r, t) in enumerate(
        (
            (1, 3, 500_000),
            (50, 200, 2_000_000),
            (100, 500, 3_000_000),
            (200, 5_000, 3_000_000),
            (400, 5_000, 4_000_000),
            (1_000, 10_000, 5_000_000),
        )
    )
)

# SiliconFlow: errors as {"code": 20012, "message", "data"} (retry.error_details reads the shape); a 429 names the
# limit it hit only in its message ("Details: TPM limit reached."): per minute, retried as a rate; per hour or per
# day, the run stops saying when to go on (retrying into a wall that stands for hours only fails the rows).
DAILY, HOURLY = "daily_limit_reached", "hourly_limit_reached"
SILICONFLOW = ErrorTable(
    retry=frozenset({"rate_limit_reached"}),
    fail_row=frozenset({"20012", "20015"}),  # 20012 no such model, 20015 (u) a parameter out of range
    stop=frozenset({DAILY, HOURLY, "30001", "30011"}),  # 30001 / 30011 (u): balance used up
    messages=(
        (r"\b(?:RPD|TPD|IPD) limit reached", DAILY),
        (r"\b(?:RPH|TPH) limit reached", HOURLY),
        (r"\b(?:RPM|TPM|IPM) limit reached", "rate_limit_reached"),
    ),
    fixes=(
        (
            DAILY,
            "a per-day limit of this account and model was reached (RPD/TPD/IPD): run the same command after it "
            "resets at midnight Beijing time (UTC+8; SiliconFlow does not say, unverified), or raise the limit",
        ),
        (HOURLY, "a per-hour limit (RPH) of this account and model was reached: run the same command within the hour"),
        ("30001", "the SiliconFlow balance is used up: top up at cloud.siliconflow.cn, then resume"),
        ("30011", "the SiliconFlow balance is used up: top up at cloud.siliconflow.cn, then resume"),
        (
            "http_403",
            "SiliconFlow refuses accounts without real-name verification (实名认证) for this model: complete it at "
            "cloud.siliconflow.cn, then resume",
        ),
    ),
)

# (region, base URL): the first is the preset's base_url; provider.region picks another.
REGIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "zhipu": ((CHINA, "https://open.bigmodel.cn/api/paas/v4"), (INTERNATIONAL, "https://api.z.ai/api/paas/v4")),
    "dashscope": (
        (CHINA, "https://dashscope.aliyuncs.com/compatible-mode/v1"),
        (INTERNATIONAL, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
    ),
    "ark": (
        (CHINA, "https://ark.cn-beijing.volces.com/api/v3"),
        (INTERNATIONAL, "https://ark.ap-southeast.bytepluses.com/api/v3"),
    ),
    "moonshot": ((CHINA, "https://api.moonshot.cn/v1"), (INTERNATIONAL, "https://api.moonshot.ai/v1")),
    "siliconflow": ((CHINA, "https://api.siliconflow.cn/v1"), (INTERNATIONAL, "https://api.siliconflow.com/v1")),
}
REGION_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("cn", "mainland", "beijing", "volcengine", "volces", "bigmodel"), (CHINA,)),
    **dict.fromkeys(
        ("intl", "global", "overseas", "singapore", "byteplus", "modelark", "zai", "z.ai"), (INTERNATIONAL,)
    ),
}
