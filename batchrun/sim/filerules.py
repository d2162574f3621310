"""The batch-file rules each provider the simulator speaks enforces, as that provider states them (kept apart
from the presets', so that a preset that gets one wrong is caught by the tests, not agreed with), and the checks
that find a file or a line breaking them. Pure: no HTTP here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MB = 1024 * 1024


@dataclass(frozen=True)
class FileRules:
    max_lines: int | None = None  # None: the simulator's own (50,000)
    max_bytes: int | None = None  # a file's bytes, refused at upload; None: no cap
    max_line_bytes: int | None = None  # one line's bytes
    one_model: bool = False  # every line names the same model
    ends_with_user: bool = False  # a line's messages end with a user message
    max_files: int | None = None  # batch-purpose files held at once, refused at upload


RULES: dict[str, FileRules] = {
    "openai": FileRules(),
    "zhipu": FileRules(50_000, 100 * MB, one_model=True),
    "dashscope": FileRules(50_000, 500 * MB, 6 * MB, one_model=True),
    "qianfan": FileRules(5_000, 1024 * MB),
    "moonshot": FileRules(None, 100 * MB, one_model=True, max_files=1_000),
    "siliconflow": FileRules(5_000, 1024 * MB, ends_with_user=True),
}


def upload_refusal(rules: FileRules, size: int, held: int) -> str | None:
    """Why an upload of `size` bytes is refused when `held` batch files are held already, or None."""
    if rules.max_bytes is not None and size > rules.max_bytes:
        return f"file size {size} bytes exceeds the limit of {rules.max_bytes} bytes"
    if rules.max_files is not None and held >= rules.max_files:
        return f"too many files: at most {rules.max_files} files of purpose batch per organisation; delete some"
    return None


def line_refusal(rules: FileRules, raw: bytes, body: Any) -> tuple[str, str] | None:
    """(code, message) for a line the provider refuses by its own rules (size, last message), or None."""
    if rules.max_line_bytes is not None and len(raw) > rules.max_line_bytes:
        return "line_too_large", f"line is {len(raw)} bytes, over the limit of {rules.max_line_bytes} bytes"
    if rules.ends_with_user:
        messages = body.get("messages") if isinstance(body, dict) else None
        last = messages[-1] if isinstance(messages, list) and messages else None
        if not (isinstance(last, dict) and last.get("role") == "user"):
            return "invalid_messages", "the last message of messages must have role user"
    return None


def mixed_models(rules: FileRules, lines: list[dict[str, Any]], replace: Any) -> str | None:
    """The message for a file whose lines name more than one model, where the provider takes one (a
    `replace.model` names it for every line, so a file under one is never mixed)."""
    if not rules.one_model or (isinstance(replace, dict) and replace.get("model")):
        return None
    models = {orjson.dumps(line.get("body", {}).get("model")) for line in lines if isinstance(line.get("body"), dict)}
    return f"a batch file holds one model, this one {len(models)}" if len(models) > 1 else None
