"""Repair, not repeat: an answer that does not fit the job's schema is asked about again, with the model's own
answer and what is wrong with it in the conversation (sending the same request again gets the same mistake);
an answer cut at max_tokens is asked for again with more room.

Every step is an entry in `repairs.jsonl`, written before the next question is sent, so every lane and a
resumed run build a row's next question the same way: from its input row and its entries so far
(`Repairs.build`). Each step was billed: its usage goes into the row's final record under `repairs`, where
usage.json counts it (at the batch price when a batch answered it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..records import count
from ..retry import Decision, Verdict
from ..rows.request import BadRow, Request, with_body
from ..rows.sources import RawRow
from ..rows.structured import (
    Checker,
    Judged,
    grown_max_tokens,
    repair_message,
    repaired_body,
)
from ..spec.output import OutputSpec, body_max_tokens
from ..store.checkpoint import Checkpoint

INVALID_OUTPUT = "invalid_output"
SUMMARY_KEYS = ("kind", "path", "message", "usage", "batch_id")  # an entry as the final record keeps it


class Repairs:
    """One run's repairs: the schema's checker, and the steps of every row not yet final."""

    def __init__(
        self,
        output: OutputSpec,
        params: Mapping[str, Any],
        checkpoint: Checkpoint,
        held: dict[int, list[dict[str, Any]]],
    ) -> None:
        self.output, self.params, self.checkpoint, self.held = output, params, checkpoint, held
        self.checker = Checker(output)

    def judge(self, body: Any) -> Judged:
        return self.checker.judge(body)

    def build(self, build: Callable[[RawRow], Request | BadRow]) -> Callable[[RawRow], Request | BadRow]:
        """`build` with each row's repair steps so far applied: the question the row is at."""
        held = self.held

        def built(raw: RawRow) -> Request | BadRow:
            request = build(raw)
            steps = held.get(raw.row) if held else None
            if steps and isinstance(request, Request):
                first = body = orjson.loads(request.payload)
                for step in steps:
                    body = repaired_body(body, step)
                request = with_body(request, first, body)
            return request

        return built

    def steps(self, row: int) -> int:
        """Questions asked of the row before its current one (each a billed request)."""
        return len(self.held.get(row, ()))

    def next_request(self, request: Request, judged: Judged, body: Any) -> Request | None:
        """The row's next question after an answer that is not the output (its step written first), or None when
        it has had all the repairs it may."""
        asked = orjson.loads(request.payload)
        entry = self._step(request.row, judged, body, body_max_tokens(asked))
        return None if entry is None else with_body(request, asked, repaired_body(asked, entry))

    def note(self, row: int, judged: Judged, body: Any, batch_id: str) -> bool:
        """The batch lane: write the step of an answer a batch brought back; the row's next question is built
        when it next goes out (`build`). False when it has had all the repairs it may."""
        steps = self.held.get(row, ())
        if any(e.get("batch_id") == batch_id for e in steps):
            return True  # harvested again after a kill: this answer's step is written already
        grown = [int(e["max_tokens"]) for e in steps if e.get("kind") == "length"]
        asked = grown[-1] if grown else body_max_tokens(self.params)
        return self._step(row, judged, body, asked, batch_id) is not None

    def _step(
        self, row: int, judged: Judged, body: Any, max_tokens: int | None, batch_id: str | None = None
    ) -> dict[str, Any] | None:
        problem = judged.problem
        assert problem is not None
        found = body.get("usage") if isinstance(body, dict) else None
        usage = found if isinstance(found, dict) else {}
        entry: dict[str, Any] = {"row": row, "kind": problem.kind, "path": problem.path}
        if problem.kind == "length":
            grown = grown_max_tokens(max_tokens, count(usage.get("completion_tokens")), self.output.max_tokens_cap)
            if grown is None:
                return None
            entry.update(message=f"cut at max_tokens; asked again with max_tokens {grown}", max_tokens=grown)
        else:
            done = sum(1 for e in self.held.get(row, ()) if e.get("kind") != "length")
            if done >= self.output.max_repairs:
                return None
            entry.update(message=problem.message, answer=judged.text or "", feedback=repair_message(problem))
        entry["usage"] = usage
        if batch_id is not None:
            entry["batch_id"] = batch_id
        self.checkpoint.append_repair(entry)
        self.held.setdefault(row, []).append(entry)
        return entry

    def failure(self, judged: Judged) -> tuple[Decision, str]:
        """The failure of a row out of repairs, and the path of its first error."""
        problem = judged.problem
        assert problem is not None
        tried = self.output.max_repairs
        if problem.kind == "length":
            why = f"the answer was cut at max_tokens {self.output.max_tokens_cap} (output.max_tokens_cap)"
        else:
            why = f"after {tried} repair{'s' if tried != 1 else ''} the answer still does not fit the schema"
        return Decision(Verdict.FAIL_ROW, INVALID_OUTPUT, f"{why}: {problem.describe()}"), problem.path

    def finish(self, row: int) -> list[dict[str, Any]] | None:
        """The row's steps as its final record keeps them (and forgotten here: the row is final)."""
        steps = self.held.pop(row, None)
        if not steps:
            return None
        return [{k: step[k] for k in SUMMARY_KEYS if k in step} for step in steps]
