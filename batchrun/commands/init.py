"""`batchrun init`: a commented job spec to start from, so that a newcomer never assembles one from the README.

The spec names the provider's preset and the variable its key is read from (never a key), proposes a template
from the input's columns (and an id field when a column looks like one), leaves the limits for batchrun to learn
from the provider, and ends with what to run next. Beside it goes the JSON Schema an editor checks it against,
and, when no input is given, a small sample input, so that `batchrun init && batchrun submit job.yaml` runs
end to end on the simulated provider with no key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import SpecError
from ..rows.sources import iter_rows, table_columns
from ..spec.checks import INPUT_FORMATS, template_fields
from ..spec.model import InputFormat, InputSpec
from ..spec.parse import parse_spec, schema_text
from ..spec.presets import PRESETS, Preset, unknown_preset
from ..spec.yamlfile import parse_yaml

SCHEMA_FILE = "batchrun-job.schema.json"
SAMPLE_FILE = "sample-input.jsonl"
SAMPLE_ROWS = (
    {"id": "q1", "text": "The river flooded the old mill twice this spring, and the village voted to rebuild it."},
    {"id": "q2", "text": "A new bus line links the station to the hospital every ten minutes from six to midnight."},
    {"id": "q3", "text": "The library's reading room reopens on Monday after a year of repairs to its roof."},
)
# A model each preset's account is likely to offer (the jobs/ examples'); `batchrun models` lists the real ones.
MODELS = {
    "openai": "gpt-4o-mini",
    "zhipu": "glm-4-flash",
    "dashscope": "qwen-plus",
    "aistudio": "ernie-3.5-8k",
    "qianfan": "ernie-3.5-8k",
    "genstudio": "qwen2.5-7b-instruct",
    "modelarts": "DeepSeek-V3",
    "vllm": "Qwen/Qwen2.5-7B-Instruct",
    "simulated": "sim-small",
}
SAMPLED_ROWS = 20  # rows read to tell which columns hold text and which an id
MAX_TEMPLATE_FIELDS = 4
ID_NAMES = ("custom_id", "id", "uuid", "guid", "key", "doc_id", "row_id")
# A row whose field holds this is sent without a template: a Batch API line's body, chat messages, a prompt.
READY_FIELDS: dict[str, type | tuple[type, ...]] = {"body": Mapping, "messages": list, "prompt": str}


@dataclass(frozen=True)
class Proposal:
    """How the input's rows become requests, as init proposes it."""

    columns: list[str]
    template: str | None  # None: the rows carry their own prompt (READY_FIELDS)
    id_field: str | None
    ready: str | None = None  # the field the rows are sent from, when there is no template


@dataclass(frozen=True)
class Written:
    job: Path
    schema: Path
    sample: Path | None  # the sample input written, when no input was given
    proposal: Proposal
    provider: Preset
    model: str

    def lines(self) -> list[str]:
        """What `batchrun init` prints: what it wrote and the command to run next."""
        job = _shown(self.job)
        how = f"template from {', '.join(_fields(self.proposal.template))}" if self.proposal.template else ""
        ready = self.proposal.ready
        how = how or (f"each row's {ready!r} sent as it is" if ready else "no template: see input in the file")
        out = [f"wrote {job}: provider {self.provider.name}, model {self.model}, {how}"]
        if self.sample is not None:
            out.append(f"wrote {_shown(self.sample)}: {len(SAMPLE_ROWS)} sample rows (point input.path at yours)")
        out.append(f"wrote {_shown(self.schema)}: the JSON Schema your editor checks {job} against")
        if self.provider.key_required:
            out.append(f"before submitting: export {self.provider.api_key_env}=<your {self.provider.title} key>")
        out.append(f"next: batchrun validate {job}")
        return out


def init_job(
    output: Path,
    provider: str = "simulated",
    input_path: Path | None = None,
    model: str | None = None,
    *,
    force: bool = False,
) -> Written:
    """Write the job spec (refusing to replace one unless `force`), its schema and, with no input, a sample."""
    preset = PRESETS.get(provider)
    if preset is None:
        raise SpecError(f"--provider {unknown_preset(provider)}")
    if output.suffix.lower() not in (".yaml", ".yml"):
        raise SpecError(f"--output must name a .yaml file, got {str(output)!r}")
    if output.exists() and not force:
        raise SpecError(f"{output} exists: pass --force to replace it, or -o to write another file")
    folder = output.parent
    sample = None
    if input_path is None:
        input_path = folder / SAMPLE_FILE
        if not input_path.exists():
            sample = input_path
    elif not input_path.is_file():
        raise SpecError(f"--input: no such file {str(input_path)!r}")
    fmt = cast("InputFormat | None", INPUT_FORMATS.get(input_path.suffix.lower()))
    if fmt is None:
        raise SpecError(f"--input must end in .jsonl, .parquet or .csv, got {str(input_path)!r}")
    rows = list(SAMPLE_ROWS) if sample is not None else read_rows(input_path, fmt)
    proposal = propose(rows)
    model = MODELS[preset.name] if model is None else model
    text = job_text(preset, model, _relative(input_path, folder), proposal, output.name)
    folder.mkdir(parents=True, exist_ok=True)
    if sample is not None:
        sample.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SAMPLE_ROWS), encoding="utf-8")
    parse_spec(parse_yaml(text, str(output)), spec_path=output.resolve(), source=str(output))  # a bug, not a file
    schema = folder / SCHEMA_FILE
    schema.write_text(schema_text(), encoding="utf-8")
    output.write_text(text, encoding="utf-8")
    return Written(output, schema, sample, proposal, preset, model)


def read_rows(path: Path, fmt: InputFormat) -> list[dict[str, Any]]:
    """The input's first rows that read as rows (a JSONL line that is not an object is passed over)."""
    spec = InputSpec(path=path.resolve(), format=fmt)
    rows: list[dict[str, Any]] = []
    try:
        for raw in iter_rows(spec, columns=None if fmt == "jsonl" else table_columns(spec)):
            if isinstance(raw.data, Mapping):
                rows.append(dict(raw.data))
            if len(rows) >= SAMPLED_ROWS:
                break
    except (OSError, ValueError) as exc:
        raise SpecError(f"--input: cannot read {str(path)!r} as {fmt}: {exc}") from None
    if not rows:
        raise SpecError(f"--input: {str(path)!r} has no rows to propose a template from")
    return rows


def propose(rows: Sequence[Mapping[str, Any]]) -> Proposal:
    """An id field when a column looks like one (an id's name, a value on every row, no two alike), and a
    template of the columns that hold text; none when the rows already carry a prompt, messages or a body."""
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    id_field = next((c for c in columns if _looks_like_id(c, rows)), None)
    ready = next((f for f, kind in READY_FIELDS.items() if all(isinstance(r.get(f), kind) for r in rows)), None)
    if ready is not None:
        return Proposal(columns, None, id_field, ready)
    rest = [c for c in columns if c != id_field and c.isidentifier()]
    text = [c for c in rest if sum(1 for r in rows if _is_text(r.get(c))) >= len(rows) / 2]
    chosen = (text or rest)[:MAX_TEMPLATE_FIELDS]
    if not chosen:  # a template names a field by a name without spaces or dots: none here to name
        return Proposal(columns, None, id_field)
    body = f"{{{chosen[0]}}}" if len(chosen) == 1 else "\n".join(f"{c}: {{{c}}}" for c in chosen)
    return Proposal(columns, f"Summarise in one sentence:\n\n{body}", id_field)


def _looks_like_id(column: str, rows: Sequence[Mapping[str, Any]]) -> bool:
    name = column.lower()
    if not (name in ID_NAMES or name.endswith(("_id", "-id"))):
        return False
    values = [r.get(column) for r in rows]
    whole = all(isinstance(v, (str, int)) and not isinstance(v, bool) and v != "" for v in values)
    return whole and len({str(v) for v in values}) == len(values)


def _is_text(value: Any) -> bool:
    """Words, not a number written as text (a CSV's every value is text)."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False


def _fields(template: str | None) -> list[str]:
    return list(template_fields(template)) if template else []


def _relative(path: Path, folder: Path) -> str:
    """The input's path as the spec holds it: relative to the spec's folder, where it can be."""
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive
        return str(path.resolve())


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _q(value: str) -> str:
    """A YAML scalar: JSON's double-quoted string is YAML's too."""
    return json.dumps(value, ensure_ascii=False)


def job_text(preset: Preset, model: str, input_path: str, proposal: Proposal, job: str) -> str:
    """The commented spec: every key with a line on what it does, the rest as commented-out examples."""
    cols = ", ".join(proposal.columns)
    lines = [
        f"# yaml-language-server: $schema={SCHEMA_FILE}",
        "# A batchrun job, written by `batchrun init`; every key is described in batchrun's docs/job-spec.md.",
        f"# Editors check this file against {SCHEMA_FILE} (after an upgrade: batchrun schema > {SCHEMA_FILE}).",
        "",
        "# The rows, one request each.",
        "input:",
        f"  path: {_q(input_path)}  # relative to this file: .jsonl, .parquet or .csv",
        f"  # its columns: {cols}",
    ]
    if proposal.template is not None:
        lines += [
            "  # Each row's prompt, filled from its columns ({column}; write {{ and }} for a literal brace):",
            f"  template: {_q(proposal.template)}",
        ]
    elif proposal.ready is None:
        lines += [
            "  # No column can be named in a template ({title} names a column `title`; a name with a space or a dot",
            "  # cannot be): rename the columns, or give each row a prompt field.",
            f"  # template: {_q('Summarise in one sentence: {text}')}",
        ]
    else:
        example = next((c for c in proposal.columns if c not in READY_FIELDS and c != proposal.id_field), "text")
        lines += [
            f"  # Each row's {proposal.ready!r} is sent as it is; to build the prompt from columns instead:",
            f"  # template: {_q('Summarise in one sentence: {' + example + '}')}",
        ]
    if proposal.id_field is not None:
        lines.append(
            f"  id_field: {_q(proposal.id_field)}  # each row's id, in its record (default: its own id or number)"
        )
    else:
        lines.append("  # id_field: id  # the column holding each row's id (default: its row number)")
    lines += [
        '  # system: "You are a careful assistant."  # a system message before every prompt',
        "",
        f"# The model every request names (the provider's list: batchrun models --provider {preset.name}).",
        f"model: {_q(model)}",
        "# Request parameters, sent as they are.",
        "params:",
        "  max_tokens: 256",
        "  temperature: 0.3",
        "",
    ]
    lines += _provider_lines(preset)
    currency = "USD" if preset.name == "openai" else "CNY"
    lines += [
        "",
        "# How fast to go: leave it out and batchrun learns the provider's limits (its rate-limit headers and 429s)",
        "# and holds just under them. Set a key only to go slower than the provider allows, or to cap the spend:",
        "# limits:",
        "#   rpm: 300          # requests per minute, at most",
        "#   tpm: 500000       # tokens per minute, at most",
        "#   concurrency: 16   # requests in flight at once, at most",
        f"#   max_cost: {{{currency}: 50}}  # the run never spends past this",
        "",
        "# Next:",
        f"#   batchrun validate {job}   check this file and read the whole input, sending nothing",
        f"#   batchrun preview {job}    the first requests, exactly as they would be sent",
        f"#   batchrun estimate {job}   rows, tokens, cost and time, sending nothing",
        f"#   batchrun submit {job}     run it; after a stop, the same command resumes",
        "",
    ]
    return "\n".join(lines)


def _provider_lines(preset: Preset) -> list[str]:
    if preset.name == "simulated":
        where = ["# Where requests go: batchrun's simulated provider, started in-process: no key, nothing billed."]
        where.append("# For a real one: provider: zhipu (or openai, dashscope, ...; see docs/providers.md).")
    else:
        where = [f"# Where requests go: the {preset.name} preset ({preset.title}), {preset.base_url}."]
        if preset.key_required:
            where += [
                "# The key is read from the environment, never from this file:",
                f"#   export {preset.api_key_env}=<your key>",
            ]
        else:
            where.append(f"# A key, when your server wants one, is read from ${preset.api_key_env}, never this file.")
    where += [
        "provider:",
        f"  name: {preset.name}",
        f"  # mode: sync  # {', '.join(preset.modes)}",
    ]
    if preset.base_url and preset.name != "simulated":
        where.append(f"  # base_url: {preset.base_url}  # the preset's; another host of the same API")
    return where
