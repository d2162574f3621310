"""An input's text told truthfully: a CSV quote left open named by its line, pyarrow's errors with theirs, the
input's encoding (input.encoding), and validate checking what submit needs besides the rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .helpers import cli, make_job, read_jsonl, submit, write_jsonl
from .simserver import SimServer


def csv_job(tmp_path: Path, base_url: str, lines: list[str], *, saved_as: str = "utf-8", **inp: object) -> Path:
    """A CSV input written line by line as given (so a mistake in it stays), and a job reading it."""
    (tmp_path / "in.csv").write_bytes(("\n".join(lines) + "\n").encode(saved_as))
    return make_job(tmp_path, base_url, input={"path": "in.csv", "id_field": "id", "template": "{prompt}", **inp})


def numbered(n: int) -> list[str]:
    return ["id,prompt"] + [f"{i},hello {i}" for i in range(1, n + 1)]


def answers(tmp_path: Path) -> dict[str, str]:
    results = read_jsonl(tmp_path / "runs" / "job" / "results.jsonl")
    return {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in results}


# --- CSV: quotes, parse errors -------------------------------------------------------------------------------------


def test_a_stray_quote_on_row_500_is_named_by_validate_and_refused_by_submit(tmp_path: Path, sim: SimServer) -> None:
    lines = numbered(1000)
    lines[500] = '500,"hello 500'  # its quote never closes: the 500 rows after it would be one value
    job = csv_job(tmp_path, sim.base_url, lines)
    checked = cli("validate", str(job))
    assert checked.exit_code == 2
    assert "in.csv: line 501 (row 500): a quote opens in this row and is never closed" in checked.stderr
    assert "Traceback" not in checked.output and len(checked.stderr.strip().splitlines()) == 1
    sent = submit(job)
    assert sent.exit_code == 2
    assert "line 501 (row 500)" in sent.stderr
    assert sim.stats()["requests"] == 0


def test_a_quote_closed_hundreds_of_lines_below_is_named(tmp_path: Path, sim: SimServer) -> None:
    lines = numbered(1000)
    lines[500] = '500,"hello 500'
    lines[800] = '800,he said "hi'  # a second stray quote closes the first: rows 500 to 800 would be one
    result = cli("validate", str(csv_job(tmp_path, sim.base_url, lines)))
    assert result.exit_code == 2
    assert "line 501 (row 500): a quoted value opens in this row and runs 301 lines, to line 801" in result.stderr
    assert "set input.max_value_lines: 301" in result.stderr


def test_a_quote_closed_on_the_next_line_with_text_after_it_is_named(tmp_path: Path, sim: SimServer) -> None:
    lines = ["id,prompt"] + [f'{i},"hello {i}"' for i in range(1, 1001)]
    lines[500] = '500,"hello 500'  # closed by the quote opening row 501's value: two rows read as one
    result = cli("validate", str(csv_job(tmp_path, sim.base_url, lines)))
    assert result.exit_code == 2
    assert "line 501 (row 500): a quoted value opens in this row and closes on line 502" in result.stderr


def test_a_long_multi_line_value_needs_max_value_lines_and_then_arrives_whole(tmp_path: Path, sim: SimServer) -> None:
    text = "\n".join(f"paragraph {k}" for k in range(1, 31))  # 30 lines in one quoted value
    lines = ["id,prompt", f'a,"{text}"', "b,short one"]
    job = csv_job(tmp_path, sim.base_url, lines)
    refused = cli("validate", str(job))
    assert refused.exit_code == 2
    assert "line 2 (row 1): a quoted value opens in this row and runs 30 lines" in refused.stderr
    job = csv_job(tmp_path, sim.base_url, lines, max_value_lines=40)
    assert cli("validate", str(job)).exit_code == 0
    assert submit(job).exit_code == 0
    got = answers(tmp_path)
    assert "paragraph 30" in got["a"] and "short one" in got["b"]  # the simulator echoes the prompt's last line


def test_multi_line_values_across_the_readers_blocks_are_read(tmp_path: Path, sim: SimServer) -> None:
    rows = [f'r{i},"Summarise item {i}:\nthe quick brown fox {i}."' for i in range(40_000)]  # ~2.5 MB: 3 blocks
    job = csv_job(tmp_path, sim.base_url, ["id,prompt", *rows])
    result = cli("validate", str(job))
    assert result.exit_code == 0, result.output
    assert "40000 rows" in result.stdout


def test_a_row_with_too_many_fields_names_its_line(tmp_path: Path, sim: SimServer) -> None:
    lines = numbered(1000)
    lines[500] = "500,hello,500"
    result = cli("validate", str(csv_job(tmp_path, sim.base_url, lines)))
    assert result.exit_code == 2
    assert "in.csv: line 501 (row 500): Expected 2 columns, got 3: 500,hello,500" in result.stderr


# --- input.encoding ------------------------------------------------------------------------------------------------

CHINESE = [f"你好，世界 {i}" for i in range(1, 6)]


def test_a_gbk_csv_says_to_set_the_encoding_and_then_works(tmp_path: Path, sim: SimServer) -> None:
    lines = ["id,prompt"] + [f"r{i},{p}" for i, p in enumerate(CHINESE, 1)]
    job = csv_job(tmp_path, sim.base_url, lines, saved_as="gbk")
    refused = cli("validate", str(job))
    assert refused.exit_code == 2
    assert "in.csv: line 2: not valid UTF-8 (byte 0xc4 at column 4)" in refused.stderr
    assert "set input.encoding: gbk (or gb18030)" in refused.stderr
    job = csv_job(tmp_path, sim.base_url, lines, saved_as="gbk", encoding="gbk")
    assert cli("validate", str(job)).exit_code == 0
    assert submit(job).exit_code == 0
    assert "你好，世界 3" in answers(tmp_path)["r3"]
    out = tmp_path / "out.csv"
    assert cli("export", str(tmp_path / "runs" / "job"), "--to", str(out), "--with-input").exit_code == 0
    with open(out, encoding="utf-8", newline="") as f:
        assert [r["input_prompt"] for r in csv.DictReader(f)] == CHINESE


def test_a_gbk_jsonl_says_to_set_the_encoding_and_then_works(tmp_path: Path, sim: SimServer) -> None:
    data = "".join(
        json.dumps({"id": f"r{i}", "prompt": p}, ensure_ascii=False) + "\n" for i, p in enumerate(CHINESE, 1)
    )
    (tmp_path / "in.jsonl").write_bytes(data.encode("gbk"))
    job = make_job(tmp_path, sim.base_url, input="in.jsonl")
    refused = submit(job)
    assert refused.exit_code == 2
    assert "in.jsonl: line 1: not valid UTF-8" in refused.stderr
    assert "set input.encoding: gbk (or gb18030)" in refused.stderr
    assert sim.stats()["requests"] == 0
    job = make_job(tmp_path, sim.base_url, input={"path": "in.jsonl", "encoding": "gbk"})
    assert cli("validate", str(job)).exit_code == 0
    assert submit(job).exit_code == 0
    assert "你好，世界 5" in answers(tmp_path)["r5"]
    out = tmp_path / "out.jsonl"
    assert cli("export", str(tmp_path / "runs" / "job"), "--to", str(out), "--with-input").exit_code == 0
    assert [r["input_prompt"] for r in read_jsonl(out)] == CHINESE


def test_a_utf16_csv_says_so_and_then_works(tmp_path: Path, sim: SimServer) -> None:
    lines = ["id,prompt"] + [f"r{i},{p}" for i, p in enumerate(CHINESE, 1)]
    job = csv_job(tmp_path, sim.base_url, lines, saved_as="utf-16")
    refused = cli("validate", str(job))
    assert refused.exit_code == 2
    assert "set input.encoding: utf-16" in refused.stderr
    job = csv_job(tmp_path, sim.base_url, lines, saved_as="utf-16", encoding="utf-16")
    assert cli("validate", str(job)).exit_code == 0
    assert submit(job).exit_code == 0
    assert "你好，世界 2" in answers(tmp_path)["r2"]


def test_an_encoding_that_cannot_apply_is_one_line_naming_the_key(tmp_path: Path, sim: SimServer) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    pq.write_table(pa.table({"prompt": ["x"]}), tmp_path / "in.parquet")
    cases = {
        ("in.jsonl", "klingon"): "input.encoding must be a text encoding such as utf-8, gbk, gb18030 or utf-16, got",
        ("in.jsonl", "utf-16"): "input.encoding 'utf-16' cannot be read as JSONL line by line: convert the file",
        ("in.parquet", "gbk"): "input.encoding does not apply to a Parquet input (its text is always UTF-8)",
    }
    for (path, encoding), expected in cases.items():
        job = make_job(tmp_path, sim.base_url, input={"path": path, "encoding": encoding})
        result = cli("validate", str(job))
        assert result.exit_code == 2
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- validate: what submit needs besides the rows ----------------------------------------------------------------


def zhipu_job(tmp_path: Path, **overrides: object) -> Path:
    return make_job(tmp_path, "", provider={"name": "zhipu", "base_url": "http://127.0.0.1:9/v4"}, **overrides)


def test_validate_says_the_key_is_not_set_or_empty_and_never_prints_it(tmp_path: Path) -> None:
    job = zhipu_job(tmp_path)
    unset = cli("validate", str(job))
    assert unset.exit_code == 2
    assert "problem: the environment variable ZHIPUAI_API_KEY is not set: export ZHIPUAI_API_KEY=" in unset.stdout
    empty = cli("validate", str(job), env={"ZHIPUAI_API_KEY": ""})
    assert empty.exit_code == 2
    assert "problem: the environment variable ZHIPUAI_API_KEY is empty" in empty.stdout
    key = "sk-validate-secret-0123456789"
    ok = cli("validate", str(job), env={"ZHIPUAI_API_KEY": key})
    assert ok.exit_code == 0, ok.output
    assert ": ok" in ok.stdout and "problem" not in ok.stdout and key not in ok.output
    simulated = cli("validate", str(make_job(tmp_path, "http://127.0.0.1:9/v1")))  # needs no key
    assert simulated.exit_code == 0 and "problem" not in simulated.stdout


def test_submit_says_an_empty_key_is_empty(tmp_path: Path) -> None:
    result = submit(zhipu_job(tmp_path), env={"ZHIPUAI_API_KEY": " "})
    assert result.exit_code == 2
    assert "the environment variable ZHIPUAI_API_KEY is empty" in result.stderr


def test_validate_names_every_missing_key_of_a_pool(tmp_path: Path) -> None:
    provider = {"name": "simulated", "base_url": "http://127.0.0.1:9/v1", "api_key_env": ["KEY_A", "KEY_B", "KEY_C"]}
    job = make_job(tmp_path, "", provider=provider)
    result = cli("validate", str(job), env={"KEY_A": "sk-a-0123456789", "KEY_B": ""})
    assert result.exit_code == 2
    assert "problem: the environment variable KEY_B is empty: a key pool needs a key in each variable" in result.stdout
    assert "problem: the environment variable KEY_C is not set" in result.stdout
    assert "KEY_A" not in result.stdout and "sk-a-0123456789" not in result.output


def test_validate_says_the_run_directory_cannot_be_made(tmp_path: Path, sim: SimServer) -> None:
    (tmp_path / "a-file").write_text("not a folder")  # a path under a file can be made by no one, root included
    job = make_job(tmp_path, sim.base_url, output_dir=str(tmp_path / "a-file" / "runs"))
    result = cli("validate", str(job))
    assert result.exit_code == 2
    assert (
        f"problem: cannot create the run directory {tmp_path / 'a-file' / 'runs'} ({tmp_path / 'a-file'} is a file)"
        in (result.stdout)
    )
    (tmp_path / "runs-file").write_text("")
    job = make_job(tmp_path, sim.base_url, output_dir=str(tmp_path / "runs-file"))
    result = cli("validate", str(job))
    assert result.exit_code == 2
    assert "runs-file is a file, where the run directory should be" in result.stdout


def test_validate_says_the_cache_is_damaged_unless_it_is_off(tmp_path: Path, sim: SimServer) -> None:
    damaged = tmp_path / "cache.sqlite3"
    damaged.write_bytes(b"this is not an SQLite database, whatever its name says" * 20)
    job = make_job(tmp_path, sim.base_url, cache={"path": str(damaged)})
    result = cli("validate", str(job))
    assert result.exit_code == 2
    assert f"problem: the response cache {damaged} is damaged" in result.stdout
    assert "delete it" in result.stdout
    job = make_job(tmp_path, sim.base_url, cache={"path": str(damaged), "mode": "off"})
    assert cli("validate", str(job)).exit_code == 0
    fresh = make_job(tmp_path, sim.base_url, cache={"path": str(tmp_path / "new" / "cache.sqlite3")})
    assert cli("validate", str(fresh)).exit_code == 0
    assert not (tmp_path / "new").exists()  # validate makes nothing


def test_validate_lists_each_problem_on_a_line_of_its_own(tmp_path: Path) -> None:
    job = zhipu_job(tmp_path, output_dir=str(tmp_path / "job.yaml" / "runs"))
    result = cli("validate", str(job))
    assert result.exit_code == 2
    problems = [line for line in result.stdout.splitlines() if line.startswith("  problem: ")]
    assert len(problems) == 2, result.stdout
    assert "ZHIPUAI_API_KEY is not set" in problems[0] and "cannot create the run directory" in problems[1]
