"""Short versions of `make torture` (crash, the batch lane, faults, full disk, SIGTERM, bad input), and a property
test of resume planning. Each suite checks its own invariants and greps its run directory and logs for the key."""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.rows.sources import iter_rows
from batchrun.spec.model import InputSpec
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.rundir import FAILURES, MANIFEST, RESULTS
from tools.torture import (
    Outcome,
    bad_input_suite,
    batch_torture,
    crash_torture,
    disk_full,
    fault_suite,
    sigterm_storm,
)
from tools.torture_files import disk_frees_in_grace, torn_lines


def assert_survived(out: Outcome) -> None:
    assert out.ok, (
        out.name,
        out.lost,
        out.duplicated,
        out.torn,
        out.usage_disagrees,
        out.extra_bills,
        out.bill_bound,
        out.resubmitted_tasks,
        out.secret_hits,
        out.problems,
    )


def test_crash_torture_sync(tmp_path: Path) -> None:
    out = crash_torture(tmp_path, rows=1500, kills=3, seed=11)
    assert_survived(out)
    assert out.kills >= 1 and out.faults["500"] > 0


def test_crash_torture_structured_output(tmp_path: Path) -> None:
    out = crash_torture(tmp_path, rows=600, kills=3, seed=14, structured=True)
    assert_survived(out)
    assert out.kills >= 1 and sum(n for kind, n in out.faults.items() if kind.startswith("spoilt")) > 0


def test_crash_torture_async(tmp_path: Path) -> None:
    out = crash_torture(tmp_path, rows=400, kills=2, mode="async", seed=12)
    assert_survived(out)
    assert out.kills >= 1 and out.resubmitted_tasks == 0


def test_crash_torture_batch_lane(tmp_path: Path) -> None:
    out = batch_torture(tmp_path, rows=600, kills=3, seed=13, lines=100, batch_s=1.5)
    assert_survived(out)
    assert out.kills >= 1


def test_staged_faults(tmp_path: Path) -> None:
    out = fault_suite(tmp_path, per_kind=2)
    assert_survived(out)


def test_a_full_disk_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    assert_survived(disk_full(tmp_path, rows=300, limit_bytes=40_000))


def test_space_freed_in_the_grace_never_glues_a_record_to_a_torn_one(tmp_path: Path) -> None:
    out = disk_frees_in_grace(tmp_path, rows=300, limit_bytes=20_000)
    assert_survived(out)
    assert out.faults["space freed in the grace"] == 1


def test_torn_lines_in_a_finished_run(tmp_path: Path) -> None:
    out = torn_lines(tmp_path, rows=300, count=12, seed=3)
    assert_survived(out)
    assert sum(out.faults.values()) >= 12


def test_sigterm_storm(tmp_path: Path) -> None:
    out = sigterm_storm(tmp_path, rows=1200, terms=3)
    assert_survived(out)
    assert out.kills >= 1


def test_bad_input(tmp_path: Path) -> None:
    assert_survived(bad_input_suite(tmp_path))


# --- resume planning, for any interleaving of result, failure and torn lines ----------------------------------

ROWS = 40
record = st.tuples(st.sampled_from([RESULTS, FAILURES]), st.integers(min_value=1, max_value=ROWS))


def line_for(row: int, failed: bool) -> bytes:
    rec = {
        "row": row,
        "id": f"batch_req_{row}",
        "custom_id": f"r{row}",
        "model": "m",
        "response": None
        if failed
        else {"status_code": 200, "body": {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 3}}},
        "error": {"code": "x"} if failed else None,
        "attempts": 1,
    }
    return orjson.dumps(rec) + b"\n"


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(record, max_size=60),
    glued=st.lists(st.tuples(record, st.integers(min_value=1, max_value=ROWS), st.integers(1, 80)), max_size=4),
    torn=st.dictionaries(st.sampled_from([RESULTS, FAILURES]), st.integers(min_value=1, max_value=ROWS)),
    cut=st.integers(min_value=1, max_value=200),
    garbage=st.booleans(),
)
def test_resume_sends_exactly_the_rows_without_a_final_record(
    records: list[tuple[str, int]],
    glued: list[tuple[tuple[str, int], int, int]],
    torn: dict[str, int],
    cut: int,
    garbage: bool,
) -> None:
    """Whole lines, repeated rows, garbage, torn records with a whole one glued after them (a write cut part-way
    by an older version), and a torn tail: a row is done only by a whole record, counted once."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "in.jsonl").write_bytes(
            b"".join(orjson.dumps({"id": f"r{i}", "prompt": "x"}) + b"\n" for i in range(1, ROWS + 1))
        )
        run = base / "run"
        run.mkdir()
        (run / MANIFEST).write_bytes(orjson.dumps({"fingerprint": {"k": "v"}}))
        final: set[int] = set()
        files = {RESULTS: bytearray(), FAILURES: bytearray()}
        for name, row in records:  # whole lines, in any order, rows possibly repeated across files
            files[name] += line_for(row, failed=name == FAILURES)
            final.add(row)
        for (name, row), torn_row, at in glued:  # part of one record, then a whole one on the same line
            partial = line_for(torn_row, failed=name == FAILURES)
            files[name] += partial[: min(at, len(partial) - 2)] + line_for(row, failed=name == FAILURES)
            final.add(row)
        if garbage:  # a whole line that is not a record: ignored, its row is not done by it
            files[RESULTS] += b"not a record\n"
        for name, row in torn.items():  # a crash mid-write: part of one more record, no newline
            partial = line_for(row, failed=name == FAILURES)
            files[name] += partial[: min(cut, len(partial) - 1)]
        for name, data in files.items():
            (run / name).write_bytes(bytes(data))

        checkpoint = Checkpoint(run)
        state = checkpoint.open({"k": "v"}, {}, fresh=False)
        checkpoint.close()
        spec = InputSpec(path=base / "in.jsonl", format="jsonl")
        to_send = {raw.row for raw in iter_rows(spec, skip=state.done.__contains__)}
        assert to_send == set(range(1, ROWS + 1)) - final
        assert state.done.count == len(final)
        assert state.usage.rows_succeeded + state.usage.rows_failed == len(final)  # each row counted once
        for name in (RESULTS, FAILURES):  # torn tails are cut off, so the next append starts a whole line
            data = (run / name).read_bytes()
            assert not data or data.endswith(b"\n")
            for line in data.splitlines():  # what is left is whole records, one per row
                assert isinstance(orjson.loads(line)["row"], int)
        reopened = Checkpoint(run)
        again = reopened.open({"k": "v"}, {}, fresh=False)  # damage is reported once: it was set aside
        reopened.close()
        assert not again.notes and again.done.count == len(final)
