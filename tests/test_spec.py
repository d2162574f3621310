from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from batchrun.errors import InputError, SpecError
from batchrun.job import prepare
from batchrun.presets import PRESETS
from batchrun.spec import load_spec
from batchrun.validate import validate

from .helpers import make_job, submit, write_jsonl
from .simserver import SimServer


def spec_file(tmp_path: Path, data: Any) -> Path:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


BASE = {"input": "in.jsonl", "model": "m", "provider": {"name": "simulated"}}


def test_full_spec_with_defaults(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, {**BASE, "limits": {"rpm": 600}, "retry": {"max_attempts": 3}}))
    assert spec.name == "job"
    assert spec.input.path == tmp_path / "in.jsonl" and spec.input.format == "jsonl"
    assert spec.output_dir == (tmp_path / "runs" / "job").resolve()  # tests run in tmp_path
    assert spec.limits.rpm == 600 and spec.limits.tpm is None
    assert spec.retry.max_attempts == 3 and spec.retry.timeout_s == 120
    assert spec.provider.simulate is not None and spec.provider.api_key_env == "BATCHRUN_SIM_API_KEY"


def test_preset_defaults_and_overrides(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, {**BASE, "provider": {"name": "zhipu"}, "output_dir": "out"}))
    assert spec.provider.base_url == "https://open.bigmodel.cn/api/paas/v4"
    assert spec.provider.api_key_env == "ZHIPUAI_API_KEY"
    assert spec.output_dir == tmp_path / "out"
    spec = load_spec(
        spec_file(
            tmp_path,
            {**BASE, "provider": {"name": "zhipu", "base_url": "http://127.0.0.1:9/v4/", "api_key_env": "MY_KEY"}},
        )
    )
    assert (spec.provider.base_url, spec.provider.api_key_env) == ("http://127.0.0.1:9/v4", "MY_KEY")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**BASE, "modle": "x"}, "unknown key 'modle'"),
        ({**BASE, "limits": {"rpm": "fast"}}, "limits.rpm must be a number, got the string 'fast'"),
        ({**BASE, "limits": {"concurrency": 0}}, "limits.concurrency must be >= 1"),
        ({**BASE, "limits": {"burst": 3}}, "unknown key 'limits.burst'"),
        ({**BASE, "retry": {"max_attempts": 2.5}}, "retry.max_attempts must be a whole number"),
        ({**BASE, "provider": {"name": "openia"}}, "provider.name must be one of"),
        ({**BASE, "params": ["temperature"]}, "params must be a mapping"),
        ({**BASE, "params": {"messages": []}}, "params.messages is not allowed"),
        ({**BASE, "input": {"path": "in.jsonl", "template": "{a}", "prompt_field": "b"}}, "choose one way"),
        ({**BASE, "input": {"path": "in.jsonl", "template": "{}"}}, "input.template is not a valid template"),
        ({**BASE, "input": "in.csv"}, "input.path must end in .jsonl or .parquet"),
        ({k: v for k, v in BASE.items() if k != "model"}, "model is required"),
        ("model: [unclosed", "not valid YAML"),
        ({**BASE, "provider": {"name": "zhipu", "api_key_env": "sk-abc.def"}}, "must name an environment variable"),
    ],
)
def test_bad_specs_name_the_key(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec_file(tmp_path, data))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_input_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"input\.path: no such file .nope\.jsonl."):
        load_spec(spec_file(tmp_path, {**BASE, "input": "nope.jsonl"}))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"limits": {"rpm": -1}}, "limits.rpm must be > 0"),
        ({"input": "missing.jsonl"}, "input.path: no such file"),
        ({"input": {"path": "job.jsonl", "template": "{title}"}}, "input.template names {title}"),
    ],
)
def test_bad_specs_exit_2_and_send_nothing(
    tmp_path: Path, sim: SimServer, override: dict[str, Any], message: str
) -> None:
    job = make_job(tmp_path, sim.base_url, **override)
    if "input" in override:
        write_jsonl(tmp_path / "job.jsonl", [{"id": "a", "prompt": "x"}])
    result = submit(job)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("batchrun: error:") and "Traceback" not in result.output
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "runs").exists()


def test_missing_key_for_a_real_provider_is_a_usage_error(tmp_path: Path) -> None:
    job = make_job(tmp_path, "", provider={"name": "zhipu", "base_url": "http://127.0.0.1:9/v4"})
    result = submit(job)
    assert result.exit_code == 2
    assert "ZHIPUAI_API_KEY is not set" in result.stderr


JOBS = sorted((Path(__file__).parent.parent / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_example_jobs_are_valid(path: Path) -> None:
    prepared = prepare(load_spec(path))
    assert prepared.scan.rows == 300
    assert validate(prepared).ok


def test_there_is_an_example_job_per_preset() -> None:
    assert {p.stem for p in JOBS} >= {*PRESETS, "demo", "async-demo"} - {"simulated"}
