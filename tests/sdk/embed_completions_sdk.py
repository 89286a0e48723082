#!/usr/bin/env python3
"""Real-client check: the official `openai` SDK's `embeddings.create` and legacy
`completions.create` (streaming and not) through Tollgate (and Envoy) onto providers of other
dialects (Gemini, Vertex AI, Bedrock, Anthropic), and the errors it gets for what those
providers cannot serve, in OpenAI's shape.

Environment:
  TOLLGATE_BASE_URL   base URL including the API prefix, e.g. http://127.0.0.1:8080/v1
  TOLLGATE_KEY        the key sent as `Authorization: Bearer`
  EMBED_MODEL         a model to embed with (skipped when unset)
  EMBED_INPUTS        how many inputs one request may hold (1 or more)
  EMBED_DIMENSIONS    the vector length the provider gives without `dimensions`
  EMBED_ASK           a `dimensions` to ask for (skipped when unset)
  COMPLETION_MODEL    a model for legacy completions (skipped when unset)

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import base64
import math
import struct
import sys
from typing import Callable

import openai
from checks import env, expect, fail, run_plan
from openai import OpenAI

TEXTS = ["The quick brown fox", "jumps over the lazy dog", "and runs away"]
PROMPT = "Say hello to the Tollgate gateway and tell me what you are"


def main() -> int:
    client = OpenAI(
        base_url=env("TOLLGATE_BASE_URL"),
        api_key=env("TOLLGATE_KEY"),
        max_retries=0,
        timeout=30.0,
    )
    embed_model = env("EMBED_MODEL", required=False)
    completion_model = env("COMPLETION_MODEL", required=False)

    def embed_default_and_float() -> str:
        n = int(env("EMBED_INPUTS"))
        dims = int(env("EMBED_DIMENSIONS"))
        texts = TEXTS[:n]
        # The SDK asks for base64 unless told otherwise, and decodes it into floats.
        default = client.embeddings.create(model=embed_model, input=texts)
        floats = client.embeddings.create(model=embed_model, input=texts, encoding_format="float")
        for name, r in (("default (base64)", default), ("float", floats)):
            expect(r.object == "list", f"{name}: object {r.object!r}")
            expect(len(r.data) == len(texts), f"{name}: {len(r.data)} embeddings for {len(texts)} inputs")
            expect([d.index for d in r.data] == list(range(len(texts))), f"{name}: indexes {[d.index for d in r.data]}")
            for d in r.data:
                expect(len(d.embedding) == dims, f"{name}: {len(d.embedding)} values, not {dims}")
                norm = math.sqrt(sum(x * x for x in d.embedding))
                expect(abs(norm - 1.0) < 1e-3, f"{name}: not a unit vector: {norm}")
            expect(r.usage.prompt_tokens > 0, f"{name}: usage {r.usage}")
            expect(r.usage.total_tokens == r.usage.prompt_tokens, f"{name}: usage {r.usage}")
        for a, b in zip(default.data, floats.data):
            expect(a.embedding == b.embedding, f"embedding {a.index}: base64 and float differ")
        if len(texts) > 1:
            expect(default.data[0].embedding != default.data[1].embedding, "two texts, one vector")
        return f"{len(texts)} x {dims} values, base64 == float exactly, usage {default.usage.prompt_tokens}"

    def embed_base64_on_the_wire() -> str:
        raw = client.embeddings.with_raw_response.create(
            model=embed_model, input=TEXTS[0], encoding_format="base64"
        )
        body = raw.http_response.json()
        encoded = body["data"][0]["embedding"]
        expect(isinstance(encoded, str), f"not base64 text: {type(encoded).__name__}")
        data = base64.b64decode(encoded)
        values = struct.unpack(f"<{len(data) // 4}f", data)
        floats = client.embeddings.create(model=embed_model, input=TEXTS[0], encoding_format="float")
        expect(list(values) == floats.data[0].embedding, "little-endian f32 bytes differ from the floats")
        return f"{len(data)} bytes = {len(values)} little-endian f32"

    def embed_dimensions() -> str:
        if not env("EMBED_ASK", required=False):
            return "SKIP (the model has one output size)"
        ask = int(env("EMBED_ASK"))
        r = client.embeddings.create(model=embed_model, input=TEXTS[0], dimensions=ask)
        expect(len(r.data[0].embedding) == ask, f"{len(r.data[0].embedding)} values, not {ask}")
        return f"{ask} values"

    def embed_refusals() -> str:
        seen = []
        cases = [([[1, 2, 3]], "input")]
        if int(env("EMBED_INPUTS")) == 1:
            cases.append((TEXTS[:2], "input"))
        for given, param in cases:
            try:
                client.embeddings.create(model=embed_model, input=given)  # type: ignore[arg-type]
                fail(f"input {given!r} was not refused")
            except openai.BadRequestError as e:
                expect(e.param == param, f"param {e.param!r}, not {param!r}: {e.message}")
                seen.append(e.message)
        return "; ".join(seen)

    def complete() -> str:
        r = client.completions.create(model=completion_model, prompt=PROMPT, max_tokens=64)
        expect(r.object == "text_completion", f"object is {r.object!r}")
        expect(len(r.choices) == 1, f"{len(r.choices)} choices")
        c = r.choices[0]
        expect(bool(c.text), f"empty text: {c.text!r}")
        expect(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}")
        u = r.usage
        expect(u is not None and u.prompt_tokens > 0 and u.completion_tokens > 0, f"usage {u}")
        expect(u.prompt_tokens + u.completion_tokens == u.total_tokens, f"usage {u}")
        state["text"] = c.text
        return f"{c.text!r} ({c.finish_reason}), usage {u.prompt_tokens}+{u.completion_tokens}"

    def complete_stream() -> str:
        text = ""
        finish = None
        usage = None
        chunks = 0
        stream = client.completions.create(
            model=completion_model,
            prompt=PROMPT,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            chunks += 1
            expect(chunk.object == "text_completion", f"chunk object {chunk.object!r}")
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
        expect(text == state.get("text"), f"streamed {text!r} != {state.get('text')!r}")
        expect(finish in ("stop", "length"), f"finish_reason {finish!r}")
        expect(usage is not None and usage.completion_tokens > 0, f"usage {usage}")
        plain = client.completions.create(model=completion_model, prompt=PROMPT, max_tokens=64, stream=True)
        plain_text = ""
        for chunk in plain:
            expect(chunk.usage is None, "a usage chunk the client did not ask for")
            plain_text += "".join(c.text for c in chunk.choices)
        expect(plain_text == text, "the stream without include_usage differs")
        return f"{chunks} chunks, {text!r}, usage {usage.prompt_tokens}+{usage.completion_tokens}"

    def complete_refusals() -> str:
        seen = []
        for extra, param in (
            ({"echo": True}, "echo"),
            ({"logprobs": 2}, "logprobs"),
            ({"best_of": 2}, "best_of"),
            ({"suffix": "end"}, "suffix"),
            ({"n": 2}, "n"),
        ):
            try:
                client.completions.create(model=completion_model, prompt=PROMPT, **extra)  # type: ignore[arg-type]
                fail(f"{extra} was not refused")
            except openai.BadRequestError as e:
                expect(e.param == param, f"param {e.param!r}, not {param!r}: {e.message}")
                seen.append(param)
        try:
            client.completions.create(model=completion_model, prompt=["one", "two"])
            fail("two prompts were not refused")
        except openai.BadRequestError as e:
            expect(e.param == "prompt", f"param {e.param!r}: {e.message}")
            seen.append("prompt")
        return ", ".join(seen)

    state: dict[str, str] = {}
    plan: list[tuple[str, Callable[[], str]]] = []
    if embed_model:
        plan += [
            ("embeddings base64 (SDK default) and float", embed_default_and_float),
            ("embeddings base64 bytes on the wire", embed_base64_on_the_wire),
            ("embeddings dimensions", embed_dimensions),
            ("embeddings refusals", embed_refusals),
        ]
    if completion_model:
        plan += [
            ("completions", complete),
            ("completions streamed", complete_stream),
            ("completions refusals", complete_refusals),
        ]
    print(f"openai SDK {openai.__version__} against {client.base_url}: {embed_model or completion_model}")
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
