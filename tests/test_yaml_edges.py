"""YAML the user writes: anchors that refer to themselves, alias bombs, nesting too deep and keys given twice are
one `not valid YAML at line N` spec error (exit 2, nothing sent), never a traceback, a hang or a silent choice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchrun.errors import SpecError
from batchrun.spec.yamlfile import MAX_VALUES, load_yaml

from .helpers import cli, make_job, write_jsonl
from .simserver import SimServer

HEAD = "input: in.jsonl\nmodel: sim-small\nretry: {max_attempts: 2, timeout_s: 10, backoff_s: 0}\n"


def write_spec(tmp_path: Path, base_url: str, body: str) -> Path:
    """A job spec whose first lines are fixed (line 4 on is `body`), for a simulated provider at `base_url`."""
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    path = tmp_path / "job.yaml"
    path.write_text(HEAD + f"provider: {{name: simulated, base_url: '{base_url}'}}\n" + textwrap.dedent(body))
    return path


def bomb(levels: int = 9, fanout: int = 9, indent: str = "") -> str:
    """A "billion laughs": each anchor a list of `fanout` aliases of the one before."""
    lines = [f"{indent}l0: &l0 [" + ", ".join(["lol"] * fanout) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fanout) + "]")
    return "\n".join(lines) + "\n"


CASES = [
    # (spec lines from line 5 on, the line at fault, what the message says)
    ("params: &p {extra: *p}\n", 5, "the alias *p is inside its own anchor &p"),
    ("params: {stop: &s [a, *s]}\n", 5, "the alias *s is inside its own anchor &s"),
    ("limits: &l\n  <<: *l\n  rpm: 5\n", 6, "the alias *l is inside its own anchor &l"),  # a merge into itself
    ("limits: {rpm: 60}\nlimits: {rpm: 6000}\n", 6, "duplicate key 'limits' at the top level (first at line 5)"),
    ("limits:\n  rpm: 60\n  tpm: 1000\n  rpm: 6000\n", 8, "duplicate key 'rpm' in limits (first at line 6)"),
    ("params:\n  stop:\n    - {a: 1, a: 2}\n", 7, "duplicate key 'a' in params.stop[0] (first at line 7)"),
    ("model: other\n", 5, "duplicate key 'model' at the top level (first at line 2)"),
    ("params: {x: &a 1, y: &a 2}\n", 5, "the anchor &a is defined twice (first at line 5)"),
    ("params: {x: " + "[" * 300 + "]" * 300 + "}\n", 5, "nested more than 100 levels deep"),
    ("params: {x: " + "[" * 5000 + "]" * 5000 + "}\n", 5, "nested more than 100 levels deep"),
]


@pytest.mark.parametrize(("body", "line", "message"), CASES, ids=[c[2][:30] for c in CASES])
def test_bad_yaml_is_one_spec_error_naming_the_file_and_line(
    tmp_path: Path, sim: SimServer, body: str, line: int, message: str
) -> None:
    job = write_spec(tmp_path, sim.base_url, body)
    for command in ("validate", "submit", "preview", "estimate"):
        result = cli(command, str(job))
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.startswith(f"batchrun: error: {job}: not valid YAML at line {line}: "), result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.output and result.stdout == ""
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "runs").exists()


def test_what_yaml_allows_still_loads(tmp_path: Path) -> None:
    """Aliases of finished anchors, merges whose keys the mapping overrides, and keys that only look alike."""
    path = tmp_path / "ok.yaml"
    path.write_text(
        "base: &b {temperature: 0.3, max_tokens: 64}\n"
        "a: {<<: *b, max_tokens: 128}\n"  # the mapping's own key wins over the merged one: not a duplicate
        "b: {<<: [*b, *b]}\n"
        "c: [*b, *b]\n"
        "d: {1: one, '1': text}\n"  # an int key and a string key
        f"e: {'[' * 90}{']' * 90}\n"  # deep, not too deep
    )
    data = load_yaml(path, "job spec")
    assert data["a"] == {"temperature": 0.3, "max_tokens": 128}
    assert data["b"] == data["base"] and data["c"] == [data["base"], data["base"]]
    assert data["d"] == {1: "one", "1": "text"}


def test_keys_that_mean_the_same_are_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("sim-small: {input: 1, output: 2, currency: CNY}\n0x1: a\n1.0: b\n")
    with pytest.raises(SpecError, match=r"prices.yaml: not valid YAML at line 3: duplicate key '1.0' at the top level"):
        load_yaml(path, "prices")


def test_a_price_table_with_a_model_given_twice_is_refused(tmp_path: Path) -> None:
    """`--prices` files go through the same loader: the second price of a model no longer silently wins."""
    job = make_job(tmp_path, "http://127.0.0.1:9/v1")
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "sim-small: {input: 1, output: 2, currency: CNY}\nsim-small: {input: 9, output: 9, currency: CNY}\n"
    )
    result = cli("estimate", str(job), "--prices", str(prices))
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"batchrun: error: {prices}: not valid YAML at line 2: duplicate key 'sim-small' at the top level "
        "(first at line 1): give each key once\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        bomb(),
        # the same through merge keys, and through mappings
        "m0: &m0 {k: v}\n"
        + "".join(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}], k{i}: v}}\n" for i in range(1, 10)),
        "m0: &m0 {k: v}\n"
        + "".join(f"m{i}: &m{i} {{{', '.join(f'x{j}: *m{i - 1}' for j in range(9))}}}\n" for i in range(1, 10)),
    ],
    ids=["lists", "merges", "mappings"],
)
def test_an_alias_bomb_is_refused_by_the_loader(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_yaml(path, "job spec")
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML at line ")
    assert f"its aliases expand to more than {MAX_VALUES:,} values" in message and "\n" not in message


def test_an_alias_bomb_in_a_spec_is_refused_before_it_grows(tmp_path: Path) -> None:
    """`batchrun validate` of a spec whose params hold a billion laughs, in a process of its own with its address
    space capped at 1 GB (expanded, the bomb takes tens of GB): refused, and its peak memory stays small."""
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    job = tmp_path / "job.yaml"
    job.write_text(HEAD + "provider: {name: simulated}\nparams:\n" + bomb(indent="  "))
    probe = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from batchrun.cli import main
        try:
            main(["validate", sys.argv[1]])
        finally:
            # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across exec, so a large
            # pytest process would be counted as this one's
            hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
            sys.stderr.write(f"\\npeak_kb={hwm.split()[1]}\\n")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(job)],
        capture_output=True,
        text=True,
        timeout=300,  # a safety net, not a measure: refusing takes well under a second
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    error, _, peak = done.stderr.rpartition("\npeak_kb=")
    assert done.returncode == 2, done.stderr[-2000:]
    assert error.strip() == (
        f"batchrun: error: {job}: not valid YAML at line 11: its aliases expand to more than {MAX_VALUES:,} values, "
        "far more than any spec needs (a YAML alias bomb?): write the values out, or use fewer aliases"
    )
    assert int(peak) < 400_000  # KB: what the process needs anyway, not the bomb's gigabytes
