"""The job spec declared once: its JSON Schema (printed, checked in, met by every example job) and the
`batchrun simulate` options made from the simulator's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from batchrun.sim.command import option_name, settings
from batchrun.spec.base import Internal, marker
from batchrun.spec.parse import load_spec, parse_spec
from batchrun.spec.simulator import SimulateSpec
from batchrun.spec.yamlfile import load_yaml

from .helpers import cli, write_jsonl

ROOT = Path(__file__).parent.parent
SCHEMA_FILE = ROOT / "docs" / "job.schema.json"
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
HEADER = "# yaml-language-server: $schema=../docs/job.schema.json"


def validator() -> jsonschema.protocols.Validator:
    schema = orjson.loads(SCHEMA_FILE.read_bytes())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_checked_in_schema_is_what_batchrun_schema_prints() -> None:
    """docs/job.schema.json cannot go stale: after a change to the model, `batchrun schema > docs/job.schema.json`."""
    result = cli("schema")
    assert result.exit_code == 0, result.output
    assert result.stdout == SCHEMA_FILE.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_every_example_job_names_the_schema_fits_it_and_parses(path: Path) -> None:
    assert path.read_text(encoding="utf-8").splitlines()[0] == HEADER
    validator().validate(load_yaml(path, "job spec"))
    assert load_spec(path).name  # what the schema allows, the parser reads (no key or network needed)


def test_the_schema_says_what_the_parser_says(tmp_path: Path) -> None:
    """Typos and wrong types are flagged in the editor, as `batchrun validate` refuses them."""
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    good: dict[str, Any] = {"input": "in.jsonl", "model": "m", "provider": "simulated", "cache": "off"}
    check = validator()
    check.validate(good)
    parse_spec(good, spec_path=tmp_path / "job.yaml", source="job.yaml")
    for bad in (
        {**good, "modle": "x"},
        {**good, "limits": {"burst": 3}},
        {**good, "limits": {"rpm": "fast"}},
        {**good, "limits": {"concurrency": 0}},
        {**good, "provider": {"name": "openia"}},
        {**good, "provider": {"name": "simulated", "simulate": {"error_rate": 1.5}}},
        {**good, "provider": {"name": "simulated", "simulate": {"api_key": "k"}}},  # not a key of the spec
        {**good, "input": {"path": "in.jsonl", "snapshot": 3}},
        {k: v for k, v in good.items() if k != "model"},
    ):
        assert not check.is_valid(bad), bad
        with pytest.raises(Exception, match=r"job\.yaml: "):
            parse_spec(bad, spec_path=tmp_path / "job.yaml", source="job.yaml")


def test_internal_fields_are_refused_in_a_spec_and_named_as_unknown(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    data = {"input": {"path": "in.jsonl", "snapshot": 3}, "model": "m", "provider": "simulated"}
    with pytest.raises(
        Exception, match=r"unknown key 'input.snapshot' \(allowed here: encoding, fetch_images, format, "
    ):
        parse_spec(data, spec_path=tmp_path / "job.yaml", source="job.yaml")


OPTIONS_BEFORE = [
    "--port",
    "--rpm",
    "--tpm",
    "--latency",
    "--latency-dist",
    "--error-rate",
    "--drop-rate",
    "--slow-rate",
    "--slow-s",
    "--seed",
    "--max-inflight",
    "--bare-429",
    "--rate-headers",
    "--gateway",
    "--tpm-accounting",
    "--task-s",
    "--invalid-json-rate",
    "--batch-s",
    "--models",
    "--tls",
    "--key-rpm",
    "--revoked-key",
    "--require-key",
]
OPTIONS_ADDED = [
    "--speaks",
    "--queue-s",
    "--balance",
    "--resource-cut-rate",
    "--batch-chat-latency",
]  # options since the spec model became the options' one source


def test_simulate_lists_every_option_and_one_per_field() -> None:
    shown = cli("simulate", "--help")
    assert shown.exit_code == 0, shown.output
    assert all(f"{option} " in shown.stdout for option in OPTIONS_BEFORE), shown.stdout
    fields = [n for n in SimulateSpec.model_fields if marker(SimulateSpec, n, Internal) is None]
    assert all(f"{option} " in shown.stdout for option in OPTIONS_ADDED), shown.stdout
    assert all(option_name(n) in OPTIONS_BEFORE + OPTIONS_ADDED for n in fields)
    assert "Median seconds to answer.  [default: 0.3]" in shown.stdout  # the command's own default
    assert SimulateSpec().latency == 0.05  # the spec's


def test_simulate_options_are_read_as_the_spec_section_is() -> None:
    cfg = settings(
        {"models": "a, b", "key_rpm": ("K=600",), "revoked": ("R",), "retry_after": True, "task_s": (1.0, 2.0)}, "k"
    )
    assert cfg.models == ("a", "b") and cfg.key_rpm == (("K", 600.0),) and cfg.revoked == ("R",)
    assert cfg.retry_after is False and cfg.task_s == (1.0, 2.0) and cfg.api_key == "k"  # --bare-429 given


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--error-rate", "1.5"], "--error-rate must be between 0 and 1, got 1.5"),
        (["--max-inflight", "0"], "--max-inflight must be >= 1, got 0"),
        (["--task-s", "3", "1"], "--task-s must be seconds (a number >= 0) or [low, high]"),
        (["--key-rpm", "nope"], "--key-rpm takes VAR=RPM"),
    ],
)
def test_simulate_bounds_are_the_models(args: list[str], said: str) -> None:
    result = cli("simulate", "--port", "0", *args)
    assert result.exit_code == 2 and said in result.stderr and result.stderr.count("\n") == 1, result.output
