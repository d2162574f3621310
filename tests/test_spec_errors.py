"""Every kind of mistake a spec can hold, with the one line the hand-written parser said for it.

tests/spec_errors.json was written by the parser before the spec became pydantic models (one case per key and kind
of error, from some 56,000 specs each with one wrong key); the models must say the same, word for word. Each case:
[base spec, section, key, value (or "__left_out__"), error class, message after `job.yaml: `].
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import BatchrunError
from batchrun.spec.parse import parse_spec

CASES = orjson.loads((Path(__file__).parent / "spec_errors.json").read_bytes())
BASES: dict[str, dict[str, Any]] = {
    "sim": {
        "input": {"path": "in.jsonl"},
        "model": "m",
        "provider": {"name": "simulated", "simulate": {}},
        "output": {"schema": {"type": "object"}},
        "cache": {},
        "scale": {},
        "limits": {},
        "retry": {},
    },
    "zhipu": {"input": {"path": "in.jsonl"}, "model": "m", "provider": {"name": "zhipu"}, "limits": {}, "retry": {}},
    "openai-batch": {
        "input": {"path": "in.jsonl"},
        "model": "m",
        "provider": {"name": "openai", "mode": "batch"},
        "batch": {},
        "limits": {},
        "endpoint": "chat",
    },
    "emb": {
        "input": {"path": "in.jsonl"},
        "model": "m",
        "provider": {"name": "openai"},
        "endpoint": "embeddings",
        "limits": {},
    },
    "plain": {"input": "in.jsonl", "model": "m", "provider": "simulated"},
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The files the cases name: inputs, a CA bundle, a schema file and a broken one."""
    (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    (tmp_path / "in.csv").write_text("id,prompt\na,x\n")
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "s.json").write_text('{"type": "object"}')
    (tmp_path / "bad.json").write_text('{"type": ')
    return tmp_path


def spec_of(base: str, where: str | None, key: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASES[base])
    if where is None:
        del data[key]
        return data
    node = data
    for part in [p for p in where.split(".") if p]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[key] = value
    return data


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}:{c[1]}.{c[2]}={c[3]!r}"[:80] for c in CASES])
def test_each_mistake_reads_as_it_always_did(folder: Path, case: list[Any]) -> None:
    base, where, key, value, error, message = case
    with pytest.raises(BatchrunError) as info:
        parse_spec(spec_of(base, where, key, value), spec_path=folder / "job.yaml", source="job.yaml")
    assert type(info.value).__name__ == error
    assert str(info.value) == "job.yaml: " + message.replace("{root}", str(folder))
