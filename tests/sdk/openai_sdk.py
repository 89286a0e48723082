#!/usr/bin/env python3
"""Real-client check: drives an OpenAI-compatible endpoint (Tollgate through Envoy, or the mock
provider directly) with the official `openai` Python SDK and checks what the SDK gets back.

Environment:
  TOLLGATE_BASE_URL      base URL including the API prefix, e.g. http://127.0.0.1:8080/v1
  TOLLGATE_KEY           the key sent as `Authorization: Bearer`
  TOLLGATE_CHAT_MODEL    model for chat and legacy completions
  TOLLGATE_EMBED_MODEL   model for embeddings (legacy completions and embeddings are skipped
                         when empty or unset: a provider without those endpoints)
  TOLLGATE_EXPECT_MODELS comma-separated ids models.list must return, exactly that set
                         (the models check is skipped when empty or unset)
  TOLLGATE_STREAM_ERROR_MODEL  a model whose provider fails in the middle of a stream
                         (the check is skipped when empty or unset)
  TOLLGATE_JSON_MODE     "1": check structured output (`chat.completions.parse` and
                         `.stream` with a pydantic model) against a provider that follows the
                         schema (skipped otherwise: the OpenAI mock only echoes)

Prints one line per check; at the first failure prints what went wrong and exits 1.
Standalone on purpose (no pytest): `python3 tests/sdk/openai_sdk.py`.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Callable

import openai
from checks import env, expect, fail, run_plan
from openai import OpenAI
from pydantic import BaseModel


class City(BaseModel):
    name: str
    population: int

PROMPT = "Say hello to the Tollgate gateway and tell me what you are"
EMBED_INPUTS = ["The quick brown fox", "jumps over the lazy dog"]
# Float JSON and base64 carry the same f32 values; allow for a gateway that re-encodes JSON
# numbers with a last-digit difference, while still catching any real change of vector.
EMBED_TOLERANCE = 1e-6


def usage_tuple(usage: object) -> tuple[int, int, int]:
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)  # type: ignore[attr-defined]


def check_usage(usage: object, what: str) -> tuple[int, int, int]:
    expect(usage is not None, f"{what}: no usage in the response")
    prompt, completion, total = usage_tuple(usage)
    expect(prompt > 0, f"{what}: prompt_tokens is {prompt}")
    expect(completion > 0, f"{what}: completion_tokens is {completion}")
    expect(
        prompt + completion == total,
        f"{what}: prompt_tokens {prompt} + completion_tokens {completion} != total_tokens {total}",
    )
    return prompt, completion, total


class Checks:
    def __init__(self) -> None:
        self.client = OpenAI(
            base_url=env("TOLLGATE_BASE_URL"),
            api_key=env("TOLLGATE_KEY"),
            max_retries=0,
            timeout=30.0,
        )
        self.chat_model = env("TOLLGATE_CHAT_MODEL")
        self.embed_model = env("TOLLGATE_EMBED_MODEL", required=False)
        self.stream_error_model = env("TOLLGATE_STREAM_ERROR_MODEL", required=False)
        self.json_mode = env("TOLLGATE_JSON_MODE", required=False) == "1"
        expected = env("TOLLGATE_EXPECT_MODELS", required=False)
        self.expected_models = {m.strip() for m in expected.split(",") if m.strip()}
        # Filled by the non-streaming chat check, compared against by the streaming ones.
        self.chat_content: str | None = None
        self.chat_usage: tuple[int, int, int] | None = None

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": PROMPT},
        ]

    def chat(self) -> str:
        response = self.client.chat.completions.create(model=self.chat_model, messages=self.messages())
        expect(response.object == "chat.completion", f"object is {response.object!r}")
        expect(len(response.choices) >= 1, "no choices")
        choice = response.choices[0]
        content = choice.message.content
        expect(bool(content), f"empty content: {content!r}")
        expect(choice.message.role == "assistant", f"role is {choice.message.role!r}")
        expect(choice.finish_reason in ("stop", "length"), f"finish_reason is {choice.finish_reason!r}")
        self.chat_content = content
        self.chat_usage = check_usage(response.usage, "chat")
        return f"{content!r}, usage {self.chat_usage}"

    def chat_stream(self) -> str:
        self.require_chat()
        stream = self.client.chat.completions.create(
            model=self.chat_model, messages=self.messages(), stream=True
        )
        parts: list[str] = []
        finish_reasons: list[str] = []
        count = 0
        for chunk in stream:
            count += 1
            expect(
                chunk.usage is None,
                f"chunk {count} carries usage {chunk.usage} although the client did not ask for it "
                "(stream_options.include_usage must not leak to the client)",
            )
            expect(len(chunk.choices) >= 1, f"chunk {count} has no choices (a usage chunk leaked?)")
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)
        content = "".join(parts)
        expect(
            content == self.chat_content,
            f"streamed content {content!r} != non-streaming content {self.chat_content!r}",
        )
        expect(len(finish_reasons) == 1, f"finish reasons seen: {finish_reasons}")
        return f"{count} chunks, no usage, content matches"

    def chat_stream_usage(self) -> str:
        self.require_chat()
        stream = self.client.chat.completions.create(
            model=self.chat_model,
            messages=self.messages(),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        expect(bool(chunks), "empty stream")
        with_usage = [i for i, chunk in enumerate(chunks) if chunk.usage is not None]
        expect(len(with_usage) == 1, f"{len(with_usage)} chunks carry usage (chunk indexes {with_usage}), want exactly 1")
        expect(
            with_usage[0] == len(chunks) - 1,
            f"the usage chunk is chunk {with_usage[0]} of {len(chunks)}, want the last",
        )
        last = chunks[-1]
        expect(last.choices == [], f"the usage chunk has choices {last.choices}")
        usage = check_usage(last.usage, "streamed chat")
        expect(usage == self.chat_usage, f"streamed usage {usage} != non-streaming usage {self.chat_usage}")
        content = "".join(
            choice.delta.content or "" for chunk in chunks for choice in chunk.choices
        )
        expect(
            content == self.chat_content,
            f"streamed content {content!r} != non-streaming content {self.chat_content!r}",
        )
        return f"{len(chunks)} chunks, usage {usage} on the last only"

    def tool_calls(self) -> str:
        tools = [{
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The current weather of a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"],
                },
            },
        }]
        question = [{"role": "user", "content": "What is the weather in Paris?"}]
        response = self.client.chat.completions.create(model=self.chat_model, messages=question, tools=tools)
        choice = response.choices[0]
        expect(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason!r}")
        calls = choice.message.tool_calls or []
        expect(len(calls) == 1, f"tool calls: {calls}")
        call = calls[0]
        expect(call.function.name == "get_weather", f"name {call.function.name!r}")
        expect(
            json.loads(call.function.arguments) == {"city": "mock", "days": 1},
            f"arguments {call.function.arguments!r}",
        )
        stream = self.client.chat.completions.create(
            model=self.chat_model, messages=question, tools=tools, stream=True
        )
        # Accumulate as the SDK's stream helper does: repeated string fields are concatenated,
        # so an id or name sent twice would show here doubled.
        acc: dict[int, dict[str, str]] = {}
        finish = []
        for chunk in stream:
            for choice in chunk.choices:
                if choice.finish_reason:
                    finish.append(choice.finish_reason)
                for tc in choice.delta.tool_calls or []:
                    slot = acc.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] += tc.id or ""
                    if tc.function:
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
        expect(finish == ["tool_calls"], f"streamed finish reasons {finish}")
        expect(list(acc) == [0], f"streamed tool-call indexes {list(acc)}")
        scall = acc[0]
        # The mocks' call ids contain "mock" once: an id sent twice would contain it twice.
        expect(scall["id"].count("mock") == 1, f"streamed id {scall['id']!r}")
        expect(scall["name"] == "get_weather", f"streamed name {scall['name']!r}")
        expect(
            json.loads(scall["arguments"]) == {"city": "mock", "days": 1},
            f"streamed arguments {scall['arguments']!r}",
        )
        answer = self.client.chat.completions.create(
            model=self.chat_model,
            tools=tools,
            messages=question
            + [
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ],
        )
        expect(answer.choices[0].finish_reason == "stop", f"after the tool result: {answer.choices[0]}")
        return f"{call.function.name}({call.function.arguments}), streamed the same, then text"

    def stream_error(self) -> str:
        if not self.stream_error_model:
            return "SKIP (TOLLGATE_STREAM_ERROR_MODEL is empty)"
        parts = []
        try:
            stream = self.client.chat.completions.create(
                model=self.stream_error_model, messages=self.messages(), stream=True
            )
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
            fail("a stream that failed upstream ended without an error")
        except openai.APIError as error:
            expect(bool(parts), "no content before the error")
            return f"{type(error).__name__} after {len(parts)} content deltas"

    def completions(self) -> str:
        if not self.embed_model:
            return "SKIP (TOLLGATE_EMBED_MODEL is empty)"
        response = self.client.completions.create(model=self.chat_model, prompt=PROMPT)
        expect(response.object == "text_completion", f"object is {response.object!r}")
        expect(len(response.choices) >= 1, "no choices")
        text = response.choices[0].text
        expect(bool(text), f"empty text: {text!r}")
        usage = check_usage(response.usage, "completions")
        return f"{text!r}, usage {usage}"

    def embeddings(self) -> str:
        if not self.embed_model:
            return "SKIP (TOLLGATE_EMBED_MODEL is empty)"
        default = self.client.embeddings.create(model=self.embed_model, input=EMBED_INPUTS)
        floats = self.client.embeddings.create(
            model=self.embed_model, input=EMBED_INPUTS, encoding_format="float"
        )
        for name, response in (("default (base64)", default), ("float", floats)):
            expect(
                len(response.data) == len(EMBED_INPUTS),
                f"{name}: {len(response.data)} embeddings for {len(EMBED_INPUTS)} inputs",
            )
            for item in response.data:
                expect(
                    isinstance(item.embedding, list) and len(item.embedding) > 0,
                    f"{name}: embedding {item.index} is not a non-empty list of floats",
                )
            expect(response.usage is not None and response.usage.prompt_tokens > 0, f"{name}: no usage")
        for a, b in zip(sorted(default.data, key=lambda d: d.index), sorted(floats.data, key=lambda d: d.index)):
            expect(
                len(a.embedding) == len(b.embedding),
                f"embedding {a.index}: {len(a.embedding)} dimensions via base64, {len(b.embedding)} as floats",
            )
            worst = max(abs(x - y) for x, y in zip(a.embedding, b.embedding))
            expect(
                worst <= EMBED_TOLERANCE and all(math.isfinite(x) for x in a.embedding),
                f"embedding {a.index} differs between base64 and float by up to {worst}",
            )
        exact = all(a.embedding == b.embedding for a, b in zip(default.data, floats.data))
        dims = len(default.data[0].embedding)
        return f"{len(default.data)} x {dims} dims, base64 == float ({'exact' if exact else 'within tolerance'})"

    def models(self) -> str:
        if not self.expected_models:
            return "SKIP (TOLLGATE_EXPECT_MODELS is empty)"
        ids = {model.id for model in self.client.models.list()}
        expect(
            ids == self.expected_models,
            f"models.list returned {sorted(ids)}, want exactly {sorted(self.expected_models)}",
        )
        return f"{sorted(ids)}"

    def structured_output(self) -> str:
        if not self.json_mode:
            return "skipped (TOLLGATE_JSON_MODE unset)"
        messages = [{"role": "user", "content": "Name a big city"}]
        done = self.client.chat.completions.parse(
            model=self.chat_model, messages=messages, response_format=City  # type: ignore[arg-type]
        )
        choice = done.choices[0]
        expect(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason!r}")
        expect(not choice.message.tool_calls, f"tool calls leaked: {choice.message.tool_calls}")
        city = choice.message.parsed
        expect(isinstance(city, City), f"parsed {city!r} from {choice.message.content!r}")
        with self.client.chat.completions.stream(
            model=self.chat_model, messages=messages, response_format=City  # type: ignore[arg-type]
        ) as stream:
            final = stream.get_final_completion()
        streamed = final.choices[0].message.parsed
        expect(streamed == city, f"streamed {streamed!r} != {city!r}")
        expect(final.choices[0].finish_reason == "stop", "streamed finish_reason")
        return f"{city!r}, streamed too"

    def require_chat(self) -> None:
        expect(self.chat_content is not None, "needs the non-streaming chat check to pass first")


def main() -> int:
    checks = Checks()
    plan: list[tuple[str, Callable[[], str]]] = [
        ("chat non-streaming", checks.chat),
        ("chat streaming without stream_options", checks.chat_stream),
        ("chat streaming with include_usage", checks.chat_stream_usage),
        ("tool calls, streamed tool calls, tool result", checks.tool_calls),
        ("error in the middle of a stream", checks.stream_error),
        ("structured output (response_format json_schema)", checks.structured_output),
        ("legacy completions", checks.completions),
        ("embeddings base64 (SDK default) vs float", checks.embeddings),
        ("models.list", checks.models),
    ]
    print(f"openai SDK {openai.__version__} against {checks.client.base_url}")
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
