#!/usr/bin/env python3
"""Real-client check: drives Tollgate's Anthropic Messages endpoint (through Envoy) with the
official `anthropic` Python SDK and checks what the SDK gets back: plain and streamed replies,
tool calls (plain, streamed, and the tool-result round trip), and errors in Anthropic's format.

Environment:
  TOLLGATE_BASE_URL            gateway base URL without the API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY                 the Tollgate key (the SDK sends it as x-api-key)
  TOLLGATE_CHAT_MODEL          model for the checks
  TOLLGATE_RATE_LIMITED_MODEL  a model whose provider answers 429
  TOLLGATE_STREAM_ERROR_MODEL  a model whose provider fails in the middle of a stream

Prints one line per check; at the first failure prints what went wrong and exits 1.
Standalone on purpose (no pytest): `python3 tests/sdk/anthropic_sdk.py`.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import anthropic
from checks import env, expect, fail, run_plan
from anthropic import Anthropic

PROMPT = "Say hello to the Tollgate gateway and tell me what you are"
SYSTEM = "You are a concise assistant."
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


class Checks:
    def __init__(self) -> None:
        self.client = Anthropic(
            base_url=env("TOLLGATE_BASE_URL"),
            api_key=env("TOLLGATE_KEY"),
            max_retries=0,
            timeout=30.0,
        )
        self.model = env("TOLLGATE_CHAT_MODEL")
        self.rate_limited = env("TOLLGATE_RATE_LIMITED_MODEL")
        self.stream_error = env("TOLLGATE_STREAM_ERROR_MODEL")
        self.text: str | None = None
        self.usage: tuple[int, int] | None = None

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": PROMPT}]

    def plain(self) -> str:
        r = self.client.messages.create(
            model=self.model, max_tokens=256, system=SYSTEM, messages=self.messages()
        )
        expect(r.type == "message" and r.role == "assistant", f"type/role {r.type}/{r.role}")
        expect(len(r.content) == 1 and r.content[0].type == "text", f"content {r.content}")
        expect(bool(r.content[0].text), "empty text")
        expect(r.stop_reason == "end_turn", f"stop_reason {r.stop_reason!r}")
        expect(r.usage.input_tokens > 0 and r.usage.output_tokens > 0, f"usage {r.usage}")
        self.text = r.content[0].text
        self.usage = (r.usage.input_tokens, r.usage.output_tokens)
        return f"{self.text!r}, usage {self.usage}"

    def count_tokens(self) -> str:
        short = self.client.messages.count_tokens(model=self.model, messages=self.messages())
        long = self.client.messages.count_tokens(
            model=self.model,
            system=SYSTEM,
            messages=[{"role": "user", "content": PROMPT + " and more words" * 20}],
        )
        expect(short.input_tokens > 0, f"input_tokens {short.input_tokens}")
        expect(long.input_tokens > short.input_tokens, f"{long.input_tokens} <= {short.input_tokens}")
        return f"{short.input_tokens} then {long.input_tokens} input tokens"

    def streamed(self) -> str:
        expect(self.text is not None, "needs the plain check first")
        kinds: list[str] = []
        with self.client.messages.stream(
            model=self.model, max_tokens=256, system=SYSTEM, messages=self.messages()
        ) as stream:
            for event in stream:
                kinds.append(event.type)
            final = stream.get_final_message()
        expect(kinds.count("message_start") == 1, f"message_start {kinds.count('message_start')} times")
        expect(kinds[-1] == "message_stop", f"last event {kinds[-1]}")
        text = "".join(b.text for b in final.content if b.type == "text")
        expect(text == self.text, f"streamed {text!r} != plain {self.text!r}")
        usage = (final.usage.input_tokens, final.usage.output_tokens)
        expect(usage == self.usage, f"streamed usage {usage} != plain usage {self.usage}")
        expect(final.stop_reason == "end_turn", f"stop_reason {final.stop_reason!r}")
        return f"{len(kinds)} events, text and usage match"

    def tool_call(self) -> str:
        r = self.client.messages.create(
            model=self.model,
            max_tokens=256,
            tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        )
        expect(r.stop_reason == "tool_use", f"stop_reason {r.stop_reason!r}")
        calls = [b for b in r.content if b.type == "tool_use"]
        expect(len(calls) == 1, f"tool_use blocks: {r.content}")
        call = calls[0]
        expect(call.name == "get_weather", f"name {call.name!r}")
        expect(call.input == {"city": "mock", "days": 1}, f"input {call.input!r}")
        expect(bool(call.id), "no tool_use id")

        # Round trip: the tool's result goes back, the model answers in text.
        r2 = self.client.messages.create(
            model=self.model,
            max_tokens=256,
            tools=[WEATHER_TOOL],
            messages=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": [b.model_dump() for b in r.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
                },
            ],
        )
        expect(r2.stop_reason == "end_turn", f"after the tool result: stop_reason {r2.stop_reason!r}")
        expect(r2.content[0].type == "text", f"after the tool result: {r2.content}")
        return f"{call.name}({call.input}), then {r2.content[0].text!r}"

    def tool_call_streamed(self) -> str:
        with self.client.messages.stream(
            model=self.model,
            max_tokens=256,
            tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        ) as stream:
            final = stream.get_final_message()
        calls = [b for b in final.content if b.type == "tool_use"]
        expect(len(calls) == 1, f"tool_use blocks: {final.content}")
        expect(calls[0].input == {"city": "mock", "days": 1}, f"input {calls[0].input!r}")
        expect(final.stop_reason == "tool_use", f"stop_reason {final.stop_reason!r}")
        return f"{len(final.content)} blocks, input {calls[0].input}"

    def models(self) -> str:
        ids = [m.id for m in self.client.models.list()]
        expect(self.model in ids, f"models.list returned {ids}, without {self.model}")
        expect(all(m.type == "model" for m in self.client.models.list()), "entries are not models")
        return f"{len(ids)} models, {self.model} among them"

    def errors(self) -> str:
        seen = []
        try:
            self.client.messages.create(model="no-such-model", max_tokens=10, messages=self.messages())
            fail("an unknown model was accepted")
        except anthropic.NotFoundError as e:
            expect(e.body["type"] == "error", f"body {e.body}")  # type: ignore[index]
            expect(e.body["error"]["type"] == "not_found_error", f"body {e.body}")  # type: ignore[index]
            seen.append("404 not_found_error")
        try:
            self.client.messages.create(model=self.rate_limited, max_tokens=10, messages=self.messages())
            fail("the rate-limited model answered")
        except anthropic.RateLimitError as e:
            expect(e.body["error"]["type"] == "rate_limit_error", f"body {e.body}")  # type: ignore[index]
            seen.append("429 rate_limit_error")
        bad = Anthropic(base_url=str(self.client.base_url), api_key="tg-wrong", max_retries=0)
        try:
            bad.messages.create(model=self.model, max_tokens=10, messages=self.messages())
            fail("a wrong key was accepted")
        except anthropic.AuthenticationError as e:
            expect(e.body["error"]["type"] == "authentication_error", f"body {e.body}")  # type: ignore[index]
            seen.append("401 authentication_error")
        text = []
        try:
            with self.client.messages.stream(
                model=self.stream_error, max_tokens=100, messages=self.messages()
            ) as stream:
                for chunk in stream.text_stream:
                    text.append(chunk)
            fail("a stream that failed upstream ended without an error")
        except anthropic.APIStatusError as e:
            expect(bool(text), "no text before the error")
            seen.append(f"mid-stream {type(e).__name__} after {len(text)} deltas")
        return ", ".join(seen)


def main() -> int:
    checks = Checks()
    plan: list[tuple[str, Callable[[], str]]] = [
        ("messages non-streaming", checks.plain),
        ("messages streaming", checks.streamed),
        ("tool call and tool result", checks.tool_call),
        ("tool call streaming", checks.tool_call_streamed),
        ("models.list in Anthropic's shape", checks.models),
        ("messages.count_tokens", checks.count_tokens),
        ("errors in Anthropic format", checks.errors),
    ]
    print(f"anthropic SDK {anthropic.__version__} against {checks.client.base_url}, model {checks.model}")
    return run_plan(plan, anthropic.APIStatusError, anthropic.APIError)


if __name__ == "__main__":
    sys.exit(main())
