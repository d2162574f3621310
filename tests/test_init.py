"""`batchrun init`: a commented job spec a newcomer can run at once, from a provider's name and an input file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.commands.init import SAMPLE_FILE, SCHEMA_FILE, propose
from batchrun.spec.parse import load_spec, schema_text
from batchrun.spec.presets import PRESETS
from batchrun.spec.yamlfile import load_yaml

from .helpers import cli, read_jsonl, submit, write_jsonl

SCHEMA = orjson.loads((Path(__file__).parent.parent / "docs" / "job.schema.json").read_bytes())
ROWS = [
    {"doc_id": f"d{i}", "title": f"Title {i}", "body": f"The body of item {i}.", "views": str(10 * i)} for i in range(5)
]


def _input(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / "data" / f"news.{fmt}"
    path.parent.mkdir(exist_ok=True)
    if fmt == "jsonl":
        write_jsonl(path, [{**r, "views": int(r["views"])} for r in ROWS])
    elif fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
            writer.writeheader()
            writer.writerows(ROWS)
    else:
        pq.write_table(pa.Table.from_pylist([{**r, "views": int(r["views"])} for r in ROWS]), path)
    return path


def _checked(job: Path) -> dict[str, Any]:
    """The written spec parses as batchrun reads it and fits the JSON Schema editors check it against."""
    load_spec(job)
    data = load_yaml(job, "job spec")
    jsonschema.validate(data, SCHEMA)
    return data  # type: ignore[no-any-return]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("provider", ["simulated", "zhipu", "openai", "dashscope", "vllm"])
def test_init_writes_a_spec_that_parses_and_fits_the_schema(tmp_path: Path, provider: str, fmt: str) -> None:
    source = _input(tmp_path, fmt)
    result = cli("init", "--provider", provider, "--input", str(source), "-o", str(tmp_path / "jobs" / "news.yaml"))
    assert result.exit_code == 0, result.output
    job = tmp_path / "jobs" / "news.yaml"
    data = _checked(job)
    assert data["provider"] == {"name": provider}
    assert data["input"] == {
        "path": f"../data/news.{fmt}",
        "template": "Summarise in one sentence:\n\ntitle: {title}\nbody: {body}",  # the text columns, not views
        "id_field": "doc_id",
    }
    assert "limits" not in data  # left for batchrun to learn from the provider
    text = job.read_text()
    assert text.startswith(f"# yaml-language-server: $schema={SCHEMA_FILE}\n")
    assert (job.parent / SCHEMA_FILE).read_text() == schema_text()
    assert "# limits:\n" in text and "batchrun submit news.yaml" in text
    preset = PRESETS[provider]
    if preset.key_required:
        assert f"export {preset.api_key_env}=<your key>" in text
        assert f"export {preset.api_key_env}=" in result.stdout
    assert "next: batchrun validate" in result.stdout


def test_the_key_s_variable_is_named_and_its_value_never_written(tmp_path: Path) -> None:
    result = cli("init", "--provider", "zhipu", env={"ZHIPUAI_API_KEY": "id.secret-never-written"})
    assert result.exit_code == 0, result.output
    text = (tmp_path / "job.yaml").read_text()
    assert "export ZHIPUAI_API_KEY=<your key>" in text
    assert "secret-never-written" not in text + result.output
    assert _checked(tmp_path / "job.yaml")["model"] == "glm-4-flash"


def test_init_with_nothing_given_runs_end_to_end_on_the_simulator(tmp_path: Path) -> None:
    made = cli("init")
    assert made.exit_code == 0, made.output
    assert "wrote job.yaml: provider simulated, model sim-small" in made.stdout
    assert (tmp_path / SAMPLE_FILE).exists() and _checked(tmp_path / "job.yaml")["input"]["path"] == SAMPLE_FILE
    assert cli("validate", "job.yaml").exit_code == 0
    ran = submit(tmp_path / "job.yaml")  # the in-process simulated provider: no key, no server to start
    assert ran.exit_code == 0, ran.output
    records = read_jsonl(tmp_path / "runs" / "job" / "results.jsonl")
    assert sorted(r["custom_id"] for r in records) == ["q1", "q2", "q3"]


def test_init_keeps_an_existing_spec_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("# mine\n")
    refused = cli("init")
    assert refused.exit_code == 2 and "job.yaml exists: pass --force" in refused.stderr
    assert (tmp_path / "job.yaml").read_text() == "# mine\n"
    assert cli("init", "--force", "--model", "sim-large").exit_code == 0
    assert _checked(tmp_path / "job.yaml")["model"] == "sim-large"


def test_init_s_mistakes_are_one_line(tmp_path: Path) -> None:
    wrong = cli("init", "--provider", "glm")
    assert wrong.exit_code == 2 and "did you mean 'zhipu'?" in wrong.stderr
    missing = cli("init", "--input", "nope.jsonl")
    assert missing.exit_code == 2 and "--input: no such file 'nope.jsonl'" in missing.stderr
    (tmp_path / "rows.txt").write_text("x\n")
    assert "--input must end in .jsonl, .parquet or .csv" in cli("init", "--input", "rows.txt").stderr
    assert not (tmp_path / "job.yaml").exists()


def test_rows_with_their_own_prompt_need_no_template(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hello"}, {"id": "b", "prompt": "Hi"}])
    assert cli("init", "--input", "p.jsonl").exit_code == 0
    data = _checked(tmp_path / "job.yaml")
    assert data["input"] == {"path": "p.jsonl", "id_field": "id"}
    assert "Each row's 'prompt' is sent as it is" in (tmp_path / "job.yaml").read_text()


def test_propose() -> None:
    chat = propose([{"messages": [{"role": "user", "content": "x"}]}])
    assert chat.template is None and chat.ready == "messages" and chat.id_field is None
    # a 'body' that is text is a column like another, not a Batch API line's
    assert propose([{"body": "words"}]).template == "Summarise in one sentence:\n\n{body}"
    # an id column only when no two rows share a value; numbers written as text are not text to summarise
    rows = [
        {"id": "1", "key": "a", "score": "0.5", "review": "Good"},
        {"id": "1", "key": "b", "score": "1", "review": ""},
    ]
    found = propose(rows)
    assert found.id_field == "key" and found.template == "Summarise in one sentence:\n\n{review}"
    # no column a template can name: no template proposed, rather than one batchrun would refuse
    assert propose([{"Full text": "words", "page.no": "3"}]).template is None
