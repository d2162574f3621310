from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrun.errors import RunDirError
from batchrun.records import record_row
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.recordfile import DoneRows
from batchrun.store.rundir import FAILURES, RESULTS, USAGE

FP = {"input": "abc", "model": "m"}


def record(row: int, *, failed: bool = False, tokens: int = 10) -> dict[str, object]:
    response = (
        None
        if failed
        else {
            "status_code": 200,
            "body": {"usage": {"prompt_tokens": tokens, "completion_tokens": 2, "total_tokens": tokens + 2}},
        }
    )
    return {
        "row": row,
        "id": f"batch_req_{row}",
        "custom_id": f"r{row}",
        "model": "m",
        "response": response,
        "error": {"code": "http_400", "message": "bad"} if failed else None,
        "attempts": 1,
        "rate_limited": 0,
    }


def test_record_row_fast_and_slow_paths() -> None:
    assert record_row(b'{"row":17,"id":"x"}\n') == 17
    assert record_row(b'{"id":"x","row":18}\n') == 18
    assert record_row(b'{"row":true}\n') is None
    assert record_row(b"garbage\n") is None


def test_done_rows() -> None:
    done = DoneRows()
    for r in (5, 5, 1, 100_000):
        done.add(r)
    assert done.count == 3
    assert 5 in done and 100_000 in done and 2 not in done and 10**9 not in done


def test_resume_repairs_a_torn_tail_and_recounts_usage(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.open(FP, {}, fresh=False)
    for r in (1, 2, 3):
        cp.append(record(r), failed=False)
    cp.append(record(4, failed=True), failed=True)
    cp.close()
    with open(tmp_path / RESULTS, "ab") as f:  # a crash mid-write
        f.write(b'{"row":9,"id":"batch_req_9","custom_id":"r9","response":{"status')
    state = Checkpoint(tmp_path).open(FP, {}, fresh=False)
    assert state.repaired_lines == 1
    assert [r for r in range(1, 10) if r in state.done] == [1, 2, 3, 4]
    assert (state.usage.rows_succeeded, state.usage.rows_failed, state.usage.prompt_tokens) == (3, 1, 30)
    assert (tmp_path / RESULTS).read_bytes().endswith(b"}\n")


def test_usage_json_is_trusted_only_up_to_what_it_covers(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.open(FP, {}, fresh=False)
    cp.append(record(1), failed=False)
    cp.write_usage({"rows_succeeded": 1, "prompt_tokens": 10})
    cp.append(record(2, tokens=5), failed=False)  # written after the last usage.json: the crash case
    cp.close()
    state = Checkpoint(tmp_path).open(FP, {}, fresh=False)
    assert (state.usage.rows_succeeded, state.usage.prompt_tokens) == (2, 15)


def test_usage_json_ahead_of_the_records_is_not_trusted(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.open(FP, {}, fresh=False)
    cp.append(record(1), failed=False)
    cp.close()
    (tmp_path / USAGE).write_bytes(orjson.dumps({"rows_succeeded": 99, "checkpoint": {RESULTS: 10**6, FAILURES: 0}}))
    state = Checkpoint(tmp_path).open(FP, {}, fresh=False)
    assert state.usage.rows_succeeded == 1


def test_second_open_is_refused_while_locked(tmp_path: Path) -> None:
    first = Checkpoint(tmp_path)
    first.open(FP, {}, fresh=False)
    with pytest.raises(RunDirError, match="in use by another batchrun"):
        Checkpoint(tmp_path).open(FP, {}, fresh=False)
    first.close()
    Checkpoint(tmp_path).open(FP, {}, fresh=False)


def test_changed_fingerprint_is_refused_and_fresh_moves_old_files_aside(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.open(FP, {}, fresh=False)
    cp.append(record(1), failed=False)
    cp.close()
    with pytest.raises(RunDirError, match="model changed"):
        Checkpoint(tmp_path).open({**FP, "model": "other"}, {}, fresh=False)
    fresh = Checkpoint(tmp_path)
    state = fresh.open({**FP, "model": "other"}, {}, fresh=True)
    assert state.done.count == 0 and state.archived_to is not None
    assert (state.archived_to / RESULTS).read_bytes().startswith(b'{"row":1,')


def test_secrets_are_redacted_from_records(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path, secrets=["sk-secret-123"])
    cp.open(FP, {}, fresh=False)
    cp.append({**record(1, failed=True), "error": {"message": "bad key sk-secret-123"}}, failed=True)
    cp.close()
    text = (tmp_path / FAILURES).read_text()
    assert "sk-secret-123" not in text and "[redacted]" in text


def test_a_file_where_the_run_directory_should_be_says_so(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(RunDirError, match="is a file, where the run directory should be"):
        Checkpoint(tmp_path / "run").open({}, {}, fresh=False)
