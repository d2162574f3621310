from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import SpecError
from batchrun.rows.request import BadRow, Request, RequestBuilder
from batchrun.rows.sources import RawRow
from batchrun.rows.tokens import DEFAULT_MAX_OUTPUT_TOKENS, estimate_tokens
from batchrun.spec.model import InputSpec, JobSpec, ProviderSpec


def job(tmp_path: Path, **inp: Any) -> JobSpec:
    return JobSpec(
        name="t",
        spec_path=tmp_path / "t.yaml",
        model="m",
        params={"temperature": 0.1, "max_tokens": 64},
        input=InputSpec(path=tmp_path / "in.jsonl", format="jsonl", **inp),
        provider=ProviderSpec(
            name="simulated", base_url="http://127.0.0.1:1/v1", api_key_env="BATCHRUN_SIM_API_KEY", key_required=False
        ),
        output_dir=tmp_path / "runs",
    )


def body(built: Request | BadRow) -> dict[str, Any]:
    assert isinstance(built, Request), built
    decoded: dict[str, Any] = orjson.loads(built.payload)
    return decoded


def test_estimate_tokens_counts_cjk_per_character_and_ascii_per_four() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 10) == 10
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("你好 abcd") == 2 + 2


def test_template_and_system(tmp_path: Path) -> None:
    b = RequestBuilder(
        job(tmp_path, template="总结:{title}\n{body}", system="你是编辑"), {"id": "a", "title": "T", "body": "B"}
    )
    built = b.build(RawRow(1, {"id": "a", "title": "标题", "body": "正文"}))
    assert body(built) == {
        "model": "m",
        "temperature": 0.1,
        "max_tokens": 64,
        "messages": [{"role": "system", "content": "你是编辑"}, {"role": "user", "content": "总结:标题\n正文"}],
    }
    assert isinstance(built, Request) and built.custom_id == "a"
    assert built.tokens > 64


def test_template_field_missing_in_first_row_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"input.template names \{title\}"):
        RequestBuilder(job(tmp_path, template="{title}"), {"id": 1, "text": "x"})


def test_template_field_missing_in_a_later_row_is_a_bad_row(tmp_path: Path) -> None:
    b = RequestBuilder(job(tmp_path, template="{title}"), {"title": "x"})
    bad = b.build(RawRow(7, {"other": 1}))
    assert isinstance(bad, BadRow) and bad.code == "invalid_input" and "row 7" in bad.message


def test_each_row_keeps_its_own_id_as_a_string(tmp_path: Path) -> None:
    b = RequestBuilder(job(tmp_path), {"prompt": "p"})  # the first row has no id: later rows keep theirs
    ids = [
        b.build(RawRow(n, row))
        for n, row in enumerate(
            [
                {"prompt": "p"},
                {"custom_id": "request-2", "prompt": "p"},
                {"id": 3, "prompt": "p"},
                {"custom_id": "c", "id": "i", "prompt": "p"},
            ],
            1,
        )
    ]
    assert [r.custom_id for r in ids if isinstance(r, Request)] == ["1", "request-2", "3", "c"]


def test_bad_and_missing_ids(tmp_path: Path) -> None:
    b = RequestBuilder(job(tmp_path), {"prompt": "p"})
    bad = b.build(RawRow(4, {"id": {"x": 1}, "prompt": "p"}))
    assert isinstance(bad, BadRow) and bad.code == "invalid_id" and bad.custom_id == "4"
    line = {"url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}}
    missing = b.build(RawRow(5, line))
    assert isinstance(missing, BadRow) and missing.code == "missing_id" and "custom_id" in missing.message
    named = RequestBuilder(job(tmp_path, id_field="doc"), {"doc": "a", "prompt": "p"})
    assert isinstance(named.build(RawRow(1, {"doc": 7, "id": "x", "prompt": "p"})), Request)
    assert named.build(RawRow(2, {"id": "x", "prompt": "p"})).custom_id == "2"  # type: ignore[union-attr]


def test_valid_openai_bodies_pass_through(tmp_path: Path) -> None:
    tool_call = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    chat = {"custom_id": "t", "url": "/v1/chat/completions", "body": {"messages": tool_call}}
    assert body(RequestBuilder(job(tmp_path), chat).build(RawRow(1, chat)))["messages"] == tool_call
    emb = JobSpec(**{**vars(job(tmp_path)), "endpoint": "embeddings"})
    for value in ([1, 2, 3], [[1, 2], [3]], ["a", "b"]):
        line = {"custom_id": "e", "url": "/v1/embeddings", "body": {"input": value}}
        built = RequestBuilder(emb, line).build(RawRow(1, line))
        assert body(built)["input"] == value and isinstance(built, Request) and built.prompt_tokens > 0
    comp = JobSpec(**{**vars(job(tmp_path)), "endpoint": "completions"})
    line = {"custom_id": "p", "url": "/v1/completions", "body": {"prompt": ["one", "two"]}}
    assert body(RequestBuilder(comp, line).build(RawRow(1, line)))["prompt"] == ["one", "two"]


def test_a_line_asking_to_stream_streams_with_usage(tmp_path: Path) -> None:
    line = {
        "custom_id": "s",
        "url": "/v1/chat/completions",
        "body": {"stream": True, "messages": [{"role": "user", "content": "x"}]},
    }
    built = RequestBuilder(job(tmp_path), line).build(RawRow(1, line))
    assert isinstance(built, Request) and built.stream
    assert body(built)["stream_options"] == {"include_usage": True}


def test_messages_and_prompt_fields(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert (
        body(RequestBuilder(job(tmp_path), {"messages": messages}).build(RawRow(1, {"messages": messages})))["messages"]
        == messages
    )
    b = RequestBuilder(job(tmp_path, prompt_field="text"), {"text": "x"})
    assert body(b.build(RawRow(1, {"text": "hello"})))["messages"] == [{"role": "user", "content": "hello"}]


def test_openai_batch_rows_are_taken_as_they_are(tmp_path: Path) -> None:
    row = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "other", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
    }
    built = RequestBuilder(job(tmp_path), row).build(RawRow(1, row))
    assert body(built) == {
        "model": "other",
        "temperature": 0.1,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    assert isinstance(built, Request) and built.model == "other" and built.custom_id == "req-1"


@pytest.mark.parametrize(
    ("row", "code", "text"),
    [
        ({"id": "a", "prompt": ""}, "invalid_input", "non-empty string"),
        ({"id": "a", "messages": []}, "invalid_input", "non-empty list"),
        ({"id": "a", "messages": [{"content": "x"}]}, "invalid_input", "with a 'role'"),
        ({"id": "", "prompt": "x"}, "invalid_id", "non-empty string"),
        ({"id": ["x"], "prompt": "x"}, "invalid_id", "string or a whole number"),
    ],
)
def test_bad_rows(tmp_path: Path, row: dict[str, Any], code: str, text: str) -> None:
    built = RequestBuilder(job(tmp_path), {"id": "first", "prompt": "p"}).build(RawRow(3, row))
    assert isinstance(built, BadRow) and built.code == code and text in built.message and "row 3" in built.message


def test_default_output_tokens_charged_without_max_tokens(tmp_path: Path) -> None:
    spec = job(tmp_path)
    spec = JobSpec(**{**vars(spec), "params": {}})
    built = RequestBuilder(spec, {"prompt": "p"}).build(RawRow(1, {"prompt": "p"}))
    assert isinstance(built, Request) and built.tokens > DEFAULT_MAX_OUTPUT_TOKENS


def test_stream_assembler_joins_chunks_and_spots_a_cut_stream() -> None:
    from batchrun.providers.openai import StreamAssembler

    lines = [
        b": keep-alive\n",
        b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n',
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"reasoning_content":"hmm "}}]}\n',
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"\xe4\xbd\xa0\xe5\xa5\xbd"}}]}\n',
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}\n',
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n',
    ]
    cut = StreamAssembler()
    for line in lines:
        cut.feed(line)
    assert not cut.complete  # no [DONE]: retried, not recorded short
    whole = StreamAssembler()
    assert not any(whole.feed(line) for line in lines)
    assert whole.feed(b"data: [DONE]\n") and whole.complete
    body = whole.body()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "你好!", "reasoning_content": "hmm "}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2} and body["id"] == "c1"


def test_url_endpoint_tells_chat_from_completions() -> None:
    from batchrun.rows.request import url_endpoint

    assert url_endpoint("/v1/chat/completions") == "chat"
    assert url_endpoint("/v4/chat/completions/") == "chat"
    assert url_endpoint("/v1/completions") == "completions"
    assert url_endpoint("/v1/embeddings") == "embeddings"
    assert url_endpoint("/v1/images/generations") is None
