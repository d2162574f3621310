"""Words a user recognises: keys as the spec spells them, a suggestion for a name misspelt (and none for one far
off), "1 row" rather than "1 rows", and the Python API's errors naming the dict and the call, not a generated file."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import batchrun
from batchrun.errors import SpecError
from batchrun.spec.parse import parse_spec
from batchrun.store.rundir import changed_keys
from batchrun.text.words import closest, plural

from .helpers import cli, make_job, submit, write_jsonl
from .simserver import SimServer


def test_plural_says_one_in_the_singular() -> None:
    assert plural(1, "row") == "1 row"
    assert plural(0, "row") == "0 rows"
    assert plural(12_000, "row") == "12,000 rows"
    assert plural(1, "entry", "entries") == "1 entry" and plural(3, "entry", "entries") == "3 entries"


def _error(tmp_path: Path, **given: Any) -> str:
    (tmp_path / "in.jsonl").write_text('{"prompt": "x"}\n')
    data = {"model": "m", "provider": "simulated", "input": "in.jsonl", **given}
    with pytest.raises(SpecError) as info:
        parse_spec(data, spec_path=tmp_path / "job.yaml", source="job.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ({"parms": {}}, "unknown key 'parms': did you mean 'params'?"),
        ({"modle": "m"}, "unknown key 'modle': did you mean 'model'?"),
        ({"limits": {"rpn": 5}}, "unknown key 'limits.rpn': did you mean 'limits.rpm'?"),
        ({"provider": {"name": "zhipu", "api_key": "x"}}, "did you mean 'provider.api_key_env'?"),
        ({"provider": {"name": "simulated", "simulate": {"rpn": 5}}}, "did you mean 'provider.simulate.rpm'?"),
        ({"input": {"path": "in.jsonl", "prompt": "p"}}, "did you mean 'input.prompt_field'?"),
        # a top-level key written in a section: named as it is, beside any of the section's spelt alike
        ({"provider": {"name": "zhipu", "model": "glm-4"}}, "did you mean 'provider.mode' or 'model'?"),
        ({"input": {"path": "in.jsonl", "params": {}}}, "unknown key 'input.params': did you mean 'params'?"),
        # a key of a section written at the top, and a request parameter beside params
        ({"rpm": 60}, "unknown key 'rpm': did you mean 'limits.rpm'?"),
        ({"mode": "batch"}, "unknown key 'mode': did you mean 'provider.mode' or 'cache.mode'?"),
        ({"temperature": 0.2}, "unknown key 'temperature': did you mean 'params.temperature'?"),
        # provider names, spelt alike or known by another name
        ({"provider": "zhipuai"}, "got 'zhipuai': did you mean 'zhipu'?"),
        ({"provider": "Zhipu"}, "got 'Zhipu': did you mean 'zhipu'?"),
        ({"provider": "glm"}, "got 'glm': did you mean 'zhipu'?"),
        ({"provider": "bigmodel"}, "got 'bigmodel': did you mean 'zhipu'?"),
        ({"provider": "qwen"}, "got 'qwen': did you mean 'dashscope'?"),
        ({"provider": {"name": "bailian"}}, "got 'bailian': did you mean 'dashscope'?"),
        ({"provider": "ernie"}, "got 'ernie': did you mean 'aistudio' or 'qianfan'?"),
        # modes, endpoints and other choices
        ({"provider": {"name": "simulated", "mode": "asyn"}}, "got 'asyn': did you mean 'async'?"),
        ({"endpoint": "embedding"}, "got 'embedding': did you mean 'embeddings'?"),
        ({"endpoint": "/v1/chat/completions"}, "got '/v1/chat/completions': did you mean 'chat'?"),
        ({"cache": "of"}, "cache.mode must be one of read_write, read, write, off, got 'of': did you mean 'off'?"),
        ({"input": {"path": "in.jsonl", "format": "json"}}, "got 'json': did you mean 'jsonl'?"),
        ({"pricing": {"m": {"input": 1, "output": 2, "currency": "CNY", "sauce": "x"}}}, "did you mean 'source'?"),
    ],
)
def test_a_name_misspelt_gets_the_one_meant(tmp_path: Path, given: dict[str, Any], meant: str) -> None:
    line = _error(tmp_path, **given)
    assert meant in line, line
    assert line.count("did you mean") == 1


@pytest.mark.parametrize(
    "given",
    [
        {"x": 1},
        {"bogus": 1},
        {"qwerty": 1},
        {"limits": {"speed": 5}},
        {"provider": "x"},
        {"provider": "mistral"},  # no preset of its own, and none spelt like it
        {"provider": "anthropic"},
        {"provider": {"name": "simulated", "mode": "fast"}},
        {"endpoint": "/v1/images/generations"},  # a path whose last part is no endpoint: no guess from it
        {"endpoint": "audio"},
    ],
)
def test_a_name_far_off_gets_no_suggestion(tmp_path: Path, given: dict[str, Any]) -> None:
    assert "did you mean" not in _error(tmp_path, **given)


def test_closest_is_one_name_or_the_alias_s() -> None:
    assert closest("zhipuai", ["openai", "zhipu"]) == ["zhipu"]
    assert closest("open-ai", ["openai", "zhipu"]) == ["openai"]
    assert closest("wenxin", ["aistudio", "qianfan"], {"wenxin": ("aistudio", "qianfan")}) == ["aistudio", "qianfan"]
    assert closest("zz", ["openai", "zhipu"]) == []


def test_models_provider_suggests_the_preset(tmp_path: Path) -> None:
    result = cli("models", "--provider", "zhipuai")
    assert result.exit_code == 2
    assert "--provider must be one of openai, zhipu" in result.stderr and "did you mean 'zhipu'?" in result.stderr
    assert "Traceback" not in result.output


def test_a_dict_spec_s_errors_name_the_call_and_its_keys(tmp_path: Path) -> None:
    rows = [{"prompt": "x"}]
    with pytest.raises(SpecError) as info:
        batchrun.run({"model": "m", "provider": "simulated", "limits": {"rpm": -1}}, rows=rows, base_dir=tmp_path)
    assert str(info.value) == "batchrun.run(spec): limits.rpm must be > 0, got -1"
    with pytest.raises(SpecError) as info:
        batchrun.run({"model": "m", "provider": "qwen"}, rows=rows, base_dir=tmp_path)
    assert str(info.value).startswith("batchrun.run(spec): provider.name must be one of")
    assert not (tmp_path / "runs" / "job" / "job.yaml").exists()  # nothing written for a spec that is wrong
    # a mistake found once the rows are read names the call too, not the file written for it
    with pytest.raises(SpecError) as info:
        batchrun.run({"model": "m", "provider": "simulated", "input": {"template": "{title}"}}, rows=rows)
    assert str(info.value).startswith("batchrun.run(spec): input.template names {title}"), str(info.value)

    async def cell() -> None:
        with pytest.raises(SpecError) as info:
            await batchrun.arun({"model": "m", "provider": "simulated", "parms": {}}, rows=rows)
        assert str(info.value).startswith("batchrun.arun(spec): unknown key 'parms': did you mean 'params'?")

    asyncio.run(cell())


def test_run_inside_an_event_loop_says_to_await_arun(tmp_path: Path) -> None:
    async def cell() -> None:
        with pytest.raises(SpecError) as info:
            batchrun.run({"model": "m", "provider": "simulated"}, rows=[{"prompt": "x"}], base_dir=tmp_path)
        assert "use `await batchrun.arun(...)`" in str(info.value)
        assert "\n" not in str(info.value)

    asyncio.run(cell())
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_a_changed_job_names_the_keys_that_changed(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=3, input={"path": "in.jsonl", "template": "Q: {prompt}"})
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(3)])
    assert submit(job).exit_code == 0
    spec = yaml.safe_load(job.read_text())
    spec["input"]["template"] = "Question: {prompt}"
    spec["params"]["temperature"] = 0.5
    job.write_text(yaml.safe_dump(spec))
    again = submit(job)
    assert again.exit_code == 2
    assert "(input.template, params.temperature changed since it started)" in again.stderr, again.stderr
    assert "input_mapping" not in again.output


def test_changed_keys_in_the_spec_s_words() -> None:
    held = {"input": {"path": "a.jsonl", "id_field": "id"}, "params": {"max_tokens": 5}}
    now = {"input": {"path": "a.jsonl", "id_field": "key"}, "params": {"max_tokens": 9}}
    changed = ["input", "input_bytes", "input_mapping", "lane", "params"]
    assert changed_keys(changed, held, now) == [
        "the input file's rows",
        "input.id_field",
        "provider.mode",
        "params.max_tokens",
    ]
    # an older manifest without the job described: the digest's name in words still
    assert changed_keys(["input_mapping"], {}, now) == ["input.template / input.*_field / input.system"]


def test_one_row_reads_one_row(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=1)
    checked = cli("validate", str(job))
    assert "(jsonl), 1 row" in checked.stdout and "1 rows" not in checked.stdout, checked.stdout
    ran = submit(job)
    assert ran.exit_code == 0
    assert "new run of job in runs/job: 1 row\n" in ran.stderr, ran.stderr
    assert "0 pending of 1 row\n" in ran.stdout and "this session: 1 row in" in ran.stdout, ran.stdout
    assert re.search(r"(?<![\d.,])1 rows", ran.output) is None, ran.output


def test_a_field_the_rows_lack_suggests_the_one_they_have(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"doc": "d1", "title": "Floods", "body": "The river rose."}])
    for given, meant in [
        ({"template": "Sum up: {titel}"}, "has no field 'titel' (it has: doc, title, body): did you mean 'title'?"),
        ({"id_field": "docs"}, "has no field 'docs' (it has: doc, title, body): did you mean 'doc'?"),
        ({"template": "{summary}"}, "has no field 'summary' (it has: doc, title, body)\n"),
    ]:
        job = make_job(tmp_path, "http://127.0.0.1:9", input={"path": "in.jsonl", "template": "{title}", **given})
        checked = cli("validate", str(job))
        assert checked.exit_code == 2 and meant in checked.stderr, checked.stderr
