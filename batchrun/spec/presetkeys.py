"""The spec keys a preset answers for: `provider.region` (which of its base URLs), `provider.tier` (an account tier's
limits), the limits and queue allowance a job leaves out. Checks as `checks.py` writes them, kept apart to keep
that module small.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationInfo

from ..text.words import suggestion
from .base import LeftOut, fail, reading
from .checks import text
from .errortables import REGION_ALIASES
from .lanechecks import BATCH_CHAT, BATCH_CHAT_CONCURRENCY
from .presets import preset_limits, region_url


def region(value: str | None, info: ValidationInfo) -> str | None:
    """`provider.region`: one of the preset's regions (china, international), each its own base URL and keys."""
    spec = reading(info)
    if spec is None or value is None or spec.preset is None:
        return value
    preset = spec.preset
    names = [name for name, _ in preset.regions]
    if not names:
        fail(f"is not offered by {preset.title}: it has one base URL, {preset.base_url}; leave region out")
    if value not in names:
        fail(f"must be one of {', '.join(names)}, got {value!r}{suggestion(value, names, REGION_ALIASES)}")
    return value


def base_url(value: Any, info: ValidationInfo) -> Any:
    """The base URL given, else the preset's (in provider.region, when given): not both, as they could disagree."""
    spec = reading(info)
    if spec is None:
        return value
    where = info.data.get("region")
    if where is not None and not isinstance(value, LeftOut):
        fail(f"and provider.region ({where!r}) both say where requests go: give one of them")
    preset = region_url(spec.preset, where) if spec.preset is not None else ""
    value = (preset if isinstance(value, LeftOut) else text(value)).rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        fail(f"must start with http:// or https://, got {value!r}")
    return value


def tier(value: str | None, info: ValidationInfo) -> str | None:
    """`provider.tier`: the account tier whose limits (concurrency, rpm, tpm) the job's limits: leave out take."""
    spec = reading(info)
    if spec is None or value is None or spec.preset is None:
        return value
    preset = spec.preset
    names = [name for name, _ in preset.tiers]
    if not names:
        fail(f"is not offered by {preset.title} (it has no account tiers); set limits: yourself")
    if value not in names:
        fail(f"must be one of {', '.join(names)}, got {value!r}{suggestion(value, names)}")
    spec.tier = value
    return value


def preset_limit(value: Any, info: ValidationInfo) -> Any:
    """`limits.concurrency`, `rpm`, `tpm` left out: the tier's (provider.tier), else the preset's, else none."""
    spec = reading(info)
    if spec is None or not isinstance(value, LeftOut):
        return value
    if spec.preset is None:
        return None
    found = preset_limits(spec.preset, spec.tier).get(str(info.field_name))
    if found is None:
        return None
    return int(found) if info.field_name == "concurrency" else float(found)


def concurrency(value: Any, info: ValidationInfo) -> Any:
    """`limits.concurrency` left out: Ark's batch chat keeps many in flight (lanechecks), else as `preset_limit`."""
    spec = reading(info)
    if spec is not None and isinstance(value, LeftOut) and spec.mode == BATCH_CHAT:
        return BATCH_CHAT_CONCURRENCY
    return preset_limit(value, info)


def queue_s(value: Any, info: ValidationInfo) -> Any:
    """`retry.queue_s` left out: how long the preset's provider may hold a request queued (DeepSeek: 600 s)."""
    spec = reading(info)
    if spec is None or not isinstance(value, LeftOut):
        return value
    return spec.preset.queue_s if spec.preset is not None else 0.0
