"""What the simulated provider answers, as pure functions of the request: completions with `n` choices per
prompt, embeddings (floats or base64), the chunks of a stream, provider quirks asked for by directives, error
and model bodies, task ids that carry their task, and what a chat request's `tools`/`tool_choice` and
`logprobs`/`top_logprobs` add to its answer."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

from ..rows.structured import schema_in_text
from ..rows.tokens import estimate_tokens, max_output_tokens

DIRECTIVE = re.compile(r"#sim:([a-z0-9-]+)(?:=([\w.:-]+))?")
MODELS = ("sim-small", "sim-large", "glm-4-flash", "qwen-plus", "ernie-3.5-8k", "gpt-4o-mini")


def stream_events(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """An answer as the server-sent chunks a provider streams: for each choice its role, reasoning and content in
    pieces (a token a chunk, with its logprobs, when asked for them), its tool calls (or text pieces, for
    /completions), then its finish_reason; usage last when asked for."""
    text = answer["object"] == "text_completion"
    head = {
        "id": answer["id"],
        "object": "text_completion" if text else "chat.completion.chunk",
        "created": answer["created"],
        "model": answer["model"],
    }
    events: list[dict[str, Any]] = []
    for choice in answer["choices"]:
        index = choice["index"]
        if text:  # /completions: pieces of text, no deltas; the last chunk has text "" and the finish_reason
            events += [
                {**head, "choices": [{"index": index, "text": t, "logprobs": None, "finish_reason": None}]}
                for t in pieces(choice["text"])
            ]
            last = {"index": index, "text": "", "logprobs": None, "finish_reason": choice["finish_reason"]}
        else:
            message = choice["message"]
            calls = message.get("tool_calls") or []
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None if calls else ""}]
            deltas += [{"reasoning_content": t} for t in pieces(message.get("reasoning_content") or "")]
            tokens = (choice.get("logprobs") or {}).get("content")
            if tokens:  # asked for logprobs: a token a chunk, each with its own, as OpenAI streams them
                deltas += [{"content": t["token"], "logprobs": {"content": [t], "refusal": None}} for t in tokens]
            else:
                deltas += [{"content": t} for t in pieces(message.get("content") or "")]
            for i, call in enumerate(calls):  # OpenAI's way: id, name and no arguments, then the arguments in pieces
                function = call["function"]
                head_call = {"index": i, "id": call["id"], "type": "function"}
                deltas.append({"tool_calls": [{**head_call, "function": {"name": function["name"], "arguments": ""}}]})
                deltas += [
                    {"tool_calls": [{"index": i, "function": {"arguments": t}}]} for t in pieces(function["arguments"])
                ]
            for d in deltas:  # a chunk's logprobs sit beside its delta, not in it
                logprobs = {"logprobs": d.pop("logprobs")} if "logprobs" in d else {}
                events.append({**head, "choices": [{"index": index, "delta": d, **logprobs, "finish_reason": None}]})
            last = {"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}
            if "moderation_hit_type" in choice:  # Ark sends it beside the finish_reason
                last["moderation_hit_type"] = choice["moderation_hit_type"]
        extra = {k: v for k, v in answer.items() if k not in (*head, "object", "choices", "usage")}
        events.append({**head, **extra, "choices": [last]})
    if include_usage:
        events.append({**head, "choices": [], "usage": answer["usage"]})
    return events


def choice_count(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def completion_answer(
    body: dict[str, Any], prompts: list[str], key: bytes, prompt_tokens: int, *, text: bool
) -> dict[str, Any]:
    """A deterministic answer: `n` choices for each prompt, each an echo of the prompt's last line cut to
    max_tokens. The id is new every time, as a provider's is."""
    limit = max_output_tokens(body)
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for prompt in prompts:
        lines = [line for line in DIRECTIVE.sub("", prompt).splitlines() if line.strip()] or [""]
        snippet = " ".join(lines[-1].split())[:60]
        content = f"[simulated {body.get('model', 'model')}] {snippet} #{key.hex()[:8]}"
        finish = "stop"
        while estimate_tokens(content) > limit and content:
            content, finish = content[: max(0, len(content) * limit // estimate_tokens(content) - 1)], "length"
        for _ in range(choice_count(body)):
            completion_tokens += estimate_tokens(content)
            index = len(choices)
            choices.append(
                {"index": index, "text": content, "logprobs": None, "finish_reason": finish}
                if text
                else {"index": index, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            )
    return {
        "id": f"{'cmpl' if text else 'chatcmpl'}-sim-{uuid.uuid4().hex[:24]}",
        "object": "text_completion" if text else "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "sim-small"),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def encode_task(task: dict[str, Any]) -> str:
    """A task id that carries the task itself (when it is due, how it ends, its answer), so any simulator,
    even a fresh in-process one after a restart, answers its polls as a real provider that kept it would."""
    return "sim" + base64.urlsafe_b64encode(zlib.compress(orjson.dumps(task))).decode().rstrip("=")


def decode_task(text: str) -> dict[str, Any] | None:
    if not text.startswith("sim"):
        return None
    try:
        raw = zlib.decompress(base64.urlsafe_b64decode(text[3:] + "=" * (-len(text[3:]) % 4)))
        task = orjson.loads(raw)
    except (ValueError, zlib.error, orjson.JSONDecodeError):
        return None
    return task if isinstance(task, dict) and {"due", "failed", "gone", "answer"} <= set(task) else None


def pieces(text: str) -> list[str]:
    step = max(1, len(text) // 3)
    return [text[i : i + step] for i in range(0, len(text), step)]


def prompt_texts(kind: str, body: Any) -> list[str] | None:
    """The texts a request carries, or None when its body lacks what the endpoint needs. A prompt or input may
    be text, a list of texts, token ids, or a list of token-id lists (each becomes one text)."""
    if not isinstance(body, dict):
        return None
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        contents = [m for m in messages if isinstance(m, dict)]
        user = [message_text(m) for m in contents if m.get("role") == "user"]
        others = [message_text(m) for m in contents if m.get("role") != "user"]
        return others + (user or [""])
    value = body.get("prompt" if kind == "completions" else "input")
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        value = [value]  # one prompt of token ids
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        return None
    texts = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            texts.append(" ".join(f"<{t}>" for t in item))
        else:
            return None
    return texts


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


EMBEDDING_DIMS = 8


def embeddings_answer(body: dict[str, Any], texts: list[str], prompt_tokens: int) -> dict[str, Any]:
    """Deterministic unit vectors drawn from each text's digest."""
    data = []
    for i, text in enumerate(texts):
        digest = hashlib.blake2b(text.encode(), digest_size=EMBEDDING_DIMS).digest()
        raw = [b / 127.5 - 1.0 for b in digest]
        norm = math.sqrt(sum(v * v for v in raw)) or 1.0
        vector = [round(v / norm, 6) for v in raw]
        encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": encoded if body.get("encoding_format") == "base64" else vector,
            }
        )
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "sim-embedding"),
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def apply_answer_quirks(answer: dict[str, Any], directives: dict[str, str]) -> None:
    """Dress a good answer in a provider's moderation or thinking-model fields, as the prompt asked."""
    choice = answer["choices"][0]  # a completions choice has text, and no message to reason in
    if "blocked" in directives:
        answer["blocked"] = True
    if directives.get("flag"):
        answer["flag"], answer["ban_round"] = int(directives["flag"]), -1
    if "filter" in directives:
        answer["content_filter"] = [{"role": "assistant", "level": 1}]
        choice["finish_reason"] = "sensitive"
    if directives.get("moderation"):  # Ark: the category its moderation found in the answer
        choice["moderation_hit_type"], choice["finish_reason"] = directives["moderation"], "content_filter"
    if directives.get("finish"):
        choice["finish_reason"] = directives["finish"]
    if "think" in directives and "message" in choice:
        choice["message"]["reasoning_content"] = "Let me think step by step. " + choice["message"]["content"]


def go_duration(seconds: float) -> str:
    """A duration as Go prints it, the way OpenAI's x-ratelimit-reset-* headers spell it: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


# The headers LiteLLM's proxy passes on as they are (litellm.types.utils.OPENAI_RESPONSE_HEADERS); it relays every
# header of the provider's answer, these too, renamed `llm_provider-<name>` (process_response_headers).
LITELLM_PASSED = frozenset(
    f"x-ratelimit-{part}-{kind}" for part in ("limit", "remaining", "reset") for kind in ("requests", "tokens")
)


def through_gateway(
    gateway: str, upstream: Mapping[str, str] | None, own: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The headers a client gets when the simulator's answer (`upstream`) comes through `gateway`, with the
    gateway's `own` (a LiteLLM virtual key's limits, its own 429's retry-after) in place of any relayed ones."""
    if gateway == "none":
        return {**(upstream or {}), **(own or {})} or None
    out: dict[str, str] = {}
    for name, value in (upstream or {}).items():
        low = name.lower()
        if low in LITELLM_PASSED:
            out[low] = value
        out[f"llm_provider-{low}"] = value
    return {**out, **(own or {})} or None


def litellm_limit_body(kind: str, limit: float) -> dict[str, Any]:
    """The 429 body of LiteLLM's own limiter (`kind` rpm or tpm: a virtual key's rpm_limit or tpm_limit), in the
    proxy's error shape."""
    message = (
        "LiteLLM Rate Limit Handler for rate limit type = key. Max parallel request limit reached. "
        f"current {kind}: {limit:.0f}, {kind} limit: {limit:.0f}"
    )
    return {"error": {"message": message, "type": "None", "param": "None", "code": "429"}}


def model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "batchrun"}


def unknown_model(name: str) -> dict[str, Any]:
    return error_body("model_not_found", f"The model `{name}` does not exist or you do not have access to it.")


def error_body(code: str, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": kind}}


# --- structured output: answers that fit (or, when asked, spoil) a request's response_format ------------------

SPOILS = ("bad", "type", "missing", "cut")


def structured_content(body: dict[str, Any], key: bytes, spoil: str | None) -> tuple[str, str] | None:
    """(content, finish_reason) for a request that asks for JSON: `response_format` json_schema (an instance of
    its schema), a schema in the prompt as batchrun's instruction puts it, or json_object (an object); None when
    it asks for none. Content longer than max_tokens allows is cut there, as a model's is. `spoil` makes it
    invalid the way models get it wrong: `bad` (not JSON), `type` (a field of the wrong type), `missing` (a
    required field left out), `cut` (stopped at max_tokens), or `fence` (valid, but in a ```json fence with talk
    around it)."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    given = fmt.get("json_schema") if isinstance(fmt, dict) else None
    spec: dict[str, Any] = given if isinstance(given, dict) else {}
    schema = spec.get("schema") if kind == "json_schema" and isinstance(spec.get("schema"), dict) else None
    if schema is None:
        messages = body.get("messages")
        texts = [message_text(m) for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        schema = schema_in_text("\n".join(texts))
    if schema is None and kind not in ("json_schema", "json_object"):
        return None
    value = sample(schema or {"type": "object", "properties": {"answer": {"type": "string"}}}, key.hex())
    if spoil == "type" and isinstance(value, dict) and value:
        name = next(iter(value))
        value[name] = "not a number" if isinstance(value[name], (int, float)) else 12345
    if spoil == "missing" and isinstance(value, dict) and value:
        value.pop(next(iter(value)))
    text = orjson.dumps(value).decode()
    if spoil == "bad":
        return "Sure! Here is the JSON: {" + text[1 : len(text) // 2], "stop"
    if spoil == "cut":
        return text[: max(1, len(text) // 2)], "length"
    if spoil == "fence":
        text = f"Here you go:\n```json\n{text}\n```\nAnything else?"
    limit = max_output_tokens(body)
    if estimate_tokens(text) > limit:  # the model ran out of room
        return text[: max(1, limit * 4 - 4)], "length"
    return text, "stop"


def sample(schema: Any, seed: str, depth: int = 0) -> Any:
    """A deterministic instance of a JSON Schema (the common keywords: type, properties, items, enum, const,
    minimum/maximum, minLength, minItems, anyOf/oneOf), varied by `seed`."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    pick = int(hashlib.blake2b(f"{seed}{depth}".encode(), digest_size=4).hexdigest(), 16)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][pick % len(schema["enum"])]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample(schema[key][0], seed, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        found = schema.get("properties")
        props: dict[str, Any] = found if isinstance(found, dict) else {}
        return {name: sample(sub, f"{seed}.{name}", depth + 1) for name, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems") or 0), 2)
        if isinstance(schema.get("maxItems"), int):
            count = min(count, schema["maxItems"])
        return [sample(schema.get("items") or {"type": "string"}, f"{seed}[{i}]", depth + 1) for i in range(count)]
    if kind in ("integer", "number"):
        low_given = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        low = math.ceil(low_given) if isinstance(low_given, (int, float)) else 0
        high_given = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
        high = math.floor(high_given) if isinstance(high_given, (int, float)) else low + 100
        if "exclusiveMinimum" in schema:
            low += 1
        if "exclusiveMaximum" in schema:
            high -= 1
        value = low + pick % max(1, high - low + 1)
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return bool(pick % 2)
    if kind == "null":
        return None
    names = re.findall(r"\.([A-Za-z_]\w*)", seed)
    text = f"{names[-1] if names else 'text'} {pick % 1000}"
    return text.ljust(int(schema.get("minLength") or 0), "x")[: schema.get("maxLength") or None]


# --- tools and logprobs: what a chat request asks of its answer beyond its content ---------------------------


def called_function(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function a request makes the model call: the first of its `tools` with `tool_choice: "required"`, the
    one `tool_choice` names; None when it leaves the model free (`auto`, `none`, no tools), so it answers text."""
    tools = body.get("tools")
    functions: list[dict[str, Any]] = [
        t["function"]
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if not functions:
        return None
    if choice == "required":
        return functions[0]
    named = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = named.get("name") if isinstance(named, dict) else None
    return next((f for f in functions if f.get("name") == name), None) if name else None


def call_tools(answer: dict[str, Any], body: dict[str, Any], key: bytes) -> None:
    """The answer as a call of the function the request makes the model call (if any): each choice a `tool_calls`
    message whose JSON arguments fit the function's parameters, finish_reason `tool_calls`."""
    function = called_function(body)
    if function is None:
        return
    name = str(function.get("name") or "function")
    parameters = function.get("parameters")
    schema = parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}
    completion = 0
    for choice in answer["choices"]:
        arguments = orjson.dumps(sample(schema, f"{key.hex()}{choice['index']}")).decode()
        call_id = "call_" + hashlib.blake2b(f"{key.hex()}{choice['index']}".encode(), digest_size=12).hexdigest()
        choice["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        }
        choice["finish_reason"] = "tool_calls"
        completion += estimate_tokens(name + arguments)
    usage = answer["usage"]
    usage["completion_tokens"] = completion
    usage["total_tokens"] = usage["prompt_tokens"] + completion


TOKEN = re.compile(r"\s*(?:[^\s\x00-\x7f]|[^\s\x80-\U0010ffff]{1,4})|\s+")  # a CJK character, or up to 4 ASCII
ALTERNATIVES = (" the", " a", ",", ".", " and", " of", " to", " in", " is", " that", "\n", " for", " it", " on")


def add_logprobs(answer: dict[str, Any], body: dict[str, Any], key: bytes) -> None:
    """With `logprobs: true`, each choice's `logprobs.content` as OpenAI's: its content's tokens (they join back
    into it), each with a made-up but fixed logprob, its UTF-8 bytes, and `top_logprobs` of them, the token itself
    the likeliest and the rest sharing what is left (their probabilities never add up past 1)."""
    if body.get("logprobs") is not True:
        return
    given = body.get("top_logprobs")
    top = given if isinstance(given, int) and not isinstance(given, bool) and 0 <= given <= 20 else 0
    for choice in answer["choices"]:
        content = choice["message"].get("content")
        tokens = TOKEN.findall(content) if isinstance(content, str) else None
        entries = None if tokens is None else [_token_entry(t, top, key, i) for i, t in enumerate(tokens)]
        choice["logprobs"] = {"content": entries, "refusal": None}


def _token_entry(token: str, top: int, key: bytes, index: int) -> dict[str, Any]:
    pick = int.from_bytes(hashlib.blake2b(key + index.to_bytes(4, "big"), digest_size=4).digest(), "big")
    chance = 0.4 + 0.55 * (pick % 1000) / 1000  # the token's probability, 0.4 to 0.95
    logprob = round(math.log(chance), 6)
    others = [a for a in ALTERNATIVES if a != token]
    tops = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    for k in range(1, top):
        other = others[(pick + k) % len(others)] if k <= len(others) else f"<alt{k}>"
        share = round(math.log((1 - chance) / 2**k), 6)
        tops.append({"token": other, "logprob": share, "bytes": list(other.encode())})
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": tops[:top]}
