"""`batchrun validate`: read the whole input as submit would, without calling any API."""

from __future__ import annotations

from dataclasses import dataclass, field

from .request import BadRow, Request
from .runner import Prepared, display_path
from .sources import iter_rows

MAX_LISTED = 20


@dataclass
class Validation:
    rows: int = 0
    requests: int = 0  # rows that become a request (shared embedding requests are not counted as one)
    prompt_tokens: int = 0  # estimated
    max_output_tokens: int = 0  # max_tokens (or the default) of every row
    problems: list[str] = field(default_factory=list)  # the first MAX_LISTED, each naming its row
    problem_count: int = 0
    duplicate_ids: int = 0

    @property
    def tokens(self) -> int:
        """Prompt estimate + max output, as the TPM limiter charges them."""
        return self.prompt_tokens + self.max_output_tokens

    @property
    def ok(self) -> bool:
        return self.problem_count == 0 and self.duplicate_ids == 0

    def _problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(text)


def validate(prepared: Prepared) -> Validation:
    report = Validation()
    first_seen: dict[int, int] = {}  # hash of the id -> first row; ids themselves would cost more memory
    build = prepared.builder.build
    for raw in iter_rows(prepared.spec.input):
        report.rows += 1
        built = build(raw)
        if isinstance(built, BadRow):
            report._problem(f"{built.message} [{built.code}]")
            continue
        assert isinstance(built, Request)
        report.requests += 1
        report.prompt_tokens += built.prompt_tokens
        report.max_output_tokens += built.max_output
        if prepared.builder.id_field is None:
            continue
        key = hash((type(built.custom_id), built.custom_id))
        first = first_seen.setdefault(key, built.row)
        if first != built.row:
            report.duplicate_ids += 1
            report._problem(f"row {built.row}: duplicate id {built.custom_id!r} (first at row {first})")
    return report


def validation_lines(prepared: Prepared, report: Validation) -> list[str]:
    spec, builder = prepared.spec, prepared.builder
    ids = f"from field {builder.id_field!r}" if builder.id_field else "the row numbers (no id field)"
    lines = [
        f"{display_path(spec.spec_path)}: {'ok' if report.ok else 'problems found'}",
        f"  input: {display_path(spec.input.path)} ({spec.input.format}), {report.rows} rows",
        f"  requests: {report.requests} to {spec.provider.name} model {spec.model}, about {report.tokens} tokens "
        "charged to TPM (prompt estimate + max_tokens)",
        f"  ids: {ids}" + (f", {report.duplicate_ids} duplicated" if report.duplicate_ids else ", all unique"),
        f"  run directory: {display_path(spec.output_dir)}",
    ]
    if report.problem_count:
        lines.append(f"  {report.problem_count} problem(s)"
                     + (f", the first {MAX_LISTED}:" if report.problem_count > MAX_LISTED else ":"))
        lines += [f"    {p}" for p in report.problems]
        lines.append("  submit would record rows with problems in failures.jsonl and send the rest")
    return lines
