from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from batchrun.commands.validate import validate
from batchrun.engine.job import prepare
from batchrun.errors import InputError, SpecError
from batchrun.spec.parse import load_spec
from batchrun.spec.presets import PRESETS

from .helpers import cli, make_job, submit, write_jsonl
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
        ({**BASE, "input": "in.tsv"}, "input.path must end in .jsonl, .parquet or .csv"),
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


@pytest.mark.parametrize(
    ("rows", "override", "message"),
    [
        # The template was forgotten and every row's prompt is an object: one spec error, not a failure per row.
        ([{"id": i, "prompt": {"text": f"q{i}"}} for i in range(30)], {}, "all 30 rows fail the same way"),
        ([{"id": i, "prompt": " "} for i in range(150)], {}, "all 150 rows fail the same way"),
        ([{"id": i, "text": f"q{i}"} for i in range(5)], {}, "set input.template or input.prompt_field"),
        (
            [{"id": i, "text": f"q{i}"} for i in range(5)],
            {"input": {"path": "job.jsonl", "template": 'Answer as {"label": "x"}: {text}'}},
            "write it twice: {{ and }}",
        ),
    ],
)
def test_a_spec_no_row_fits_is_one_spec_error(
    tmp_path: Path, sim: SimServer, rows: list[dict[str, Any]], override: dict[str, Any], message: str
) -> None:
    write_jsonl(tmp_path / "job.jsonl", rows)
    job = make_job(tmp_path, sim.base_url, **({"input": "job.jsonl"} | override))
    for command in ("validate", "submit"):
        result = cli(command, str(job))
        assert result.exit_code == 2, result.output
        assert message in result.stderr and result.stderr.count("\n") == 1
        if "rows fail" in message:
            assert "input.template" in result.stderr
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "runs").exists()


def test_rows_failing_for_their_own_reasons_stay_failure_records(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": 0, "prompt": {"text": "q"}}, {"id": 1, "prompt": ""}, {"id": 2, "prompt": "fine"}]
    result = submit(make_job(tmp_path, sim.base_url, rows))
    assert result.exit_code == 3, result.output  # some rows failed
    assert sim.stats()["requests"] == 1
    # 150 rows failing the same way, then one that fits: the spec fits, the rows are at fault
    rows = [{"id": i, "prompt": ""} for i in range(150)] + [{"id": 150, "prompt": "fine too"}]
    result = submit(make_job(tmp_path, sim.base_url, rows, name="sorted"))
    assert result.exit_code == 3 and "150 failed" in result.stdout
    assert sim.stats()["requests"] == 2


def test_missing_key_for_a_real_provider_is_a_usage_error(tmp_path: Path) -> None:
    job = make_job(tmp_path, "", provider={"name": "zhipu", "base_url": "http://127.0.0.1:9/v4"})
    result = submit(job)
    assert result.exit_code == 2
    assert "ZHIPUAI_API_KEY is not set" in result.stderr


JOBS = sorted((Path(__file__).parent.parent / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_example_jobs_are_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(path)
    for env in spec.provider.key_envs:  # validate checks that submit has its key (never calling the API)
        monkeypatch.setenv(env, "sk-example-not-a-real-key")
    prepared = prepare(spec)
    assert prepared.scan.rows == 300
    assert validate(prepared).ok


def test_there_is_an_example_job_per_preset() -> None:
    assert {p.stem for p in JOBS} >= {*PRESETS, "demo", "async-demo"} - {"simulated"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sim-small: {input: 1}\n", "prices.yaml: sim-small.output: must be a price per million tokens"),
        ("sim-small: {input: 1, output: x, currency: CNY}\n", "sim-small.output: must be a price"),
        ("sim-small: [1, 2]\n", "prices.yaml: sim-small: must be a mapping with input, output and currency"),
        ("sim-small: {input: 1, output: 2, currency: CNY, cached: 1}\n", "sim-small: unknown key 'cached'"),
        ("a: b: c\n", "prices.yaml: not valid YAML at line 1"),
        ("", "prices.yaml: prices: must map model names to {input, output, currency}"),
        (None, "prices.yaml: no such prices file"),
    ],
)
def test_prices_file_errors_read_like_the_specs(tmp_path: Path, text: str | None, message: str) -> None:
    """`--prices` names the file and the key at fault in the job spec's shape: `file: model.key: what is wrong`."""
    job = make_job(tmp_path, "http://127.0.0.1:9/v1")
    if text is not None:
        (tmp_path / "prices.yaml").write_text(text)
    for command in (["estimate", str(job)], ["report", str(tmp_path)], ["status", str(tmp_path)]):
        result = cli(*command, "--prices", str(tmp_path / "prices.yaml"))
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"batchrun: error: {tmp_path / 'prices.yaml'}: ")
        assert message in result.stderr and "Traceback" not in result.output
