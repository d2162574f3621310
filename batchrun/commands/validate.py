"""`batchrun validate`: read the whole input as submit would, without calling any API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import halt
from ..engine.job import Prepared, display_path, key_problems
from ..engine.shards import line_problem, shard_line
from ..rows.ids import DUPLICATE_ID, repeated_ids
from ..rows.request import BadRow, Request, batched
from ..rows.sources import iter_rows
from ..spec.model import JobSpec
from ..spec.presets import PRESETS
from ..store.cache import cache_problem
from ..store.checkpoint import run_dir_problem
from ..text.words import plural

MAX_LISTED = 20
VALIDATING = "reading the rows"  # the phase, as the progress line and an interrupt name it


@dataclass
class ModelLoad:
    """What the rows asking for one model add up to (a Batch API line may name its own model)."""

    rows: int = 0
    prompt_tokens: int = 0  # estimated
    max_output_tokens: int = 0  # max_tokens (or the default) of every row


@dataclass
class Validation:
    rows: int = 0
    requests: int = 0  # rows that become a request
    sent: int = 0  # requests as they would be sent: embeddings rows alike share one, as submit batches them
    prompt_tokens: int = 0  # estimated
    max_output_tokens: int = 0  # max_tokens (or the default) of every row
    models: dict[str, ModelLoad] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first MAX_LISTED, each naming its row
    problem_count: int = 0
    image_rows: int = 0  # input.images: rows that carry images
    images: int = 0
    image_tokens: int = 0  # of prompt_tokens
    duplicate_ids: int = 0
    blockers: list[str] = field(default_factory=list)  # what submit would stop at before sending a row

    @property
    def tokens(self) -> int:
        """Prompt estimate + max output, as the TPM limiter charges them."""
        return self.prompt_tokens + self.max_output_tokens

    @property
    def ok(self) -> bool:
        return self.problem_count == 0 and self.duplicate_ids == 0 and not self.blockers

    def _problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(text)


def validate(prepared: Prepared) -> Validation:
    """Every row built as submit builds it, and every repeated id, each problem named by its row."""
    report = Validation(blockers=blockers(prepared.spec))
    prepared.builder.check_only()  # images: size and header only
    spec = prepared.spec
    api = PRESETS[spec.provider.name].batch if spec.provider.mode == "batch" else None
    url = (spec.batch.line_url or (api.line_url(spec.endpoint) if api else "")).encode()
    if prepared.scan.held_back is not None:  # not read (a submit says so too), but a run may never read it either
        report._problem(
            f"line {prepared.scan.held_back}: no newline at its end and not whole JSON: left out as still being written"
        )
    for sent in batched(_built(prepared, report), prepared.spec.limits.batch_size):
        if isinstance(sent, BadRow):
            report._problem(f"{sent.message} [{sent.code}]")
            continue
        report.sent += 1
        for built in sent.parts or (sent,):
            if api is not None and (problem := line_problem(api, built, _line(built, url))) is not None:
                report._problem(f"{problem[1]} [{problem[0]}]")  # the batch lane records it as failed
                continue
            report.requests += 1
            report.prompt_tokens += built.prompt_tokens
            report.max_output_tokens += built.max_output
            report.image_rows += bool(built.images)
            report.images += len(built.images)
            report.image_tokens += built.image_tokens
            load = report.models.setdefault(built.model, ModelLoad())
            load.rows += 1
            load.prompt_tokens += built.prompt_tokens
            load.max_output_tokens += built.max_output
    return report


def _line(built: Request, url: bytes) -> bytes:
    """The row's batch line, as long as it will be: validate reads no image in full, so each local image's base64
    (4 bytes per 3, and its `data:` prefix) is stood in for by as many spaces."""
    line = shard_line(built, url)
    base64 = sum(4 * -(-int(i["bytes"]) // 3) + 24 for i in built.images if "bytes" in i)
    return line + b" " * base64 if base64 else line


def blockers(spec: JobSpec) -> list[str]:
    """What submit needs besides the rows, checked without calling any API or making anything: the key variables
    set and not empty, the run directory writable (or creatable), the response cache usable."""
    found = key_problems(spec.provider)
    found += [p for p in (run_dir_problem(spec.output_dir), cache_problem(spec.cache)) if p is not None]
    return found


def _built(prepared: Prepared, report: Validation) -> Iterator[Request | BadRow]:
    """Every row built as submit builds it; a repeated id is all that is said of its row, as in submit."""
    repeats = repeated_ids(prepared.spec.input)
    repeat = next(repeats, None)
    build = prepared.builder.build
    total = prepared.scan.rows
    for raw in iter_rows(prepared.spec.input):
        report.rows += 1
        if report.rows % 4096 == 0:  # Ctrl-C stops here, and the progress line moves
            halt.step(VALIDATING, report.rows, total)
        if repeat is not None and repeat.row == raw.row:
            report.duplicate_ids += 1
            report._problem(f"{repeat.message()} [{DUPLICATE_ID}]")
            repeat = next(repeats, None)
            continue
        yield build(raw)


def _requests(report: Validation) -> str:
    if report.sent == report.requests:
        return f"{report.sent:,}"
    return f"{report.sent:,} (embeddings: {report.requests:,} rows, those alike sharing a request)"


def _models(report: Validation, default: str) -> str:
    names = sorted(report.models, key=lambda m: -report.models[m].rows) or [default]
    if len(names) == 1:
        return f"model {names[0]}"
    return "models " + ", ".join(f"{m} ({plural(report.models[m].rows, 'row')})" for m in names)


def validation_lines(prepared: Prepared, report: Validation) -> list[str]:
    spec, builder = prepared.spec, prepared.builder
    ids = (
        f"from field {builder.id_field!r}"
        if builder.id_field
        else "each row's own custom_id or id (its row number when it has none)"
    )
    grown = prepared.growth
    lines = [
        f"{display_path(spec.spec_path)}: {'ok' if report.ok else 'problems found'}",
        f"  input: {display_path(spec.input.path)} ({spec.input.format}), {plural(report.rows, 'row')}"
        + (f", {grown.after - grown.before:,} of them new since the run started (submit sends them)" if grown else ""),
        f"  requests: {_requests(report)} to {spec.provider.name} {_models(report, spec.model)}, about "
        f"{plural(report.tokens, 'token')} charged to TPM (prompt estimate + max_tokens)",
        f"  ids: {ids}" + (f", {report.duplicate_ids} duplicated" if report.duplicate_ids else ", all unique"),
        f"  run directory: {display_path(spec.output_dir)}",
    ]
    if spec.input.images:
        lines.insert(
            -1,
            f"  images: {plural(report.images, 'image')} in {plural(report.image_rows, 'row')}, each checked by its "
            "size and header (format, pixels, bytes, count per request); URLs are not fetched",
        )
    if (out := spec.output) is not None:
        props = out.schema.get("properties")
        fields = plural(len(props), "property", "properties") if isinstance(props, dict) else "a schema"
        how = {"json_schema": "response_format json_schema", "json_object": "response_format json_object"}
        asked = how.get(out.ask, "the schema in the system message")
        if out.ask == "json_object":
            asked += " and the schema in the system message"
        if out.ask == "json_schema" and builder.asking and builder.asking.response_format:
            strict = builder.asking.response_format["json_schema"]["strict"]
            asked += " (strict)" if strict else " (not strict: the schema does not meet strict mode's rules)"
        lines.append(
            f"  output: {fields}, asked for with {asked}; an answer that does not fit is repaired up to "
            f"{plural(out.max_repairs, 'time')}"
        )
    lines += [f"  problem: {line}" for line in report.blockers]
    if report.problem_count:
        lines.append(
            f"  {plural(report.problem_count, 'problem')}"
            + (f", the first {MAX_LISTED}:" if report.problem_count > MAX_LISTED else ":")
        )
        lines += [f"    {p}" for p in report.problems]
        lines.append("  submit would record rows with problems in failures.jsonl and send the rest")
    return lines
