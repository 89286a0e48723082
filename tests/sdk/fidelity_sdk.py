#!/usr/bin/env python3
"""Real-client checks of translation fidelity (issue 13), with the official `anthropic` and
`openai` SDKs through Tollgate and Envoy:

- Anthropic clients see reasoning usage (`usage.output_tokens_details.thinking_tokens`) from
  backends that report it, in complete responses and in the stream's final `message_delta`;
- several tool calls reach Anthropic clients as strictly sequential content blocks (each
  `content_block_stop` before the next `content_block_start`, indices 0..n-1, every block's
  arguments complete JSON), streamed and complete;
- Gemini's `thoughtSignature` survives a round trip through OpenAI and Anthropic clients (the
  mock Gemini refuses a call echoed without the signature it issued), and the same history
  still works when the client switches to another provider mid-conversation.

Environment:
  TOLLGATE_BASE_URL         gateway base URL without the API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY              the Tollgate key
  TOLLGATE_MODELS           comma-separated models for the parallel tool-call checks
  TOLLGATE_REASONING_MODELS models whose provider reports reasoning tokens (may be empty)
  TOLLGATE_GEMINI_MODELS    Gemini-family models for the signature round trip (may be empty)
  TOLLGATE_OTHER_MODELS     models a conversation switches to after a Gemini turn (may be empty)

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import anthropic
import openai
from checks import env, expect, run_plan

WEATHER = {
    "name": "get_weather",
    "description": "The current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "The local time of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PARALLEL_PROMPT = "Use get_weather and get_time for Paris, both at once."
ONE_PROMPT = "What is the weather in Paris?"


def models(name: str) -> list[str]:
    return [m for m in env(name, required=False).split(",") if m]


def openai_tool(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]},
    }


class Checks:
    def __init__(self) -> None:
        base = env("TOLLGATE_BASE_URL")
        key = env("TOLLGATE_KEY")
        self.anthropic = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=30.0)
        self.openai = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30.0)
        self.models = models("TOLLGATE_MODELS")
        self.reasoning = models("TOLLGATE_REASONING_MODELS")
        self.gemini = models("TOLLGATE_GEMINI_MODELS")
        self.others = models("TOLLGATE_OTHER_MODELS")

    # -- 2. several tool calls, sequential blocks ---------------------------------------------

    def parallel_complete(self) -> str:
        seen = []
        for model in self.models:
            r = self.anthropic.messages.create(
                model=model,
                max_tokens=256,
                tools=[WEATHER, TIME],
                messages=[{"role": "user", "content": PARALLEL_PROMPT}],
            )
            calls = [b for b in r.content if b.type == "tool_use"]
            expect([c.name for c in calls] == ["get_weather", "get_time"], f"{model}: calls {r.content}")
            expect(all(isinstance(c.input, dict) for c in calls), f"{model}: inputs {calls}")
            expect(calls[0].input.get("city") == "mock", f"{model}: input {calls[0].input}")  # type: ignore[union-attr]
            expect(r.stop_reason == "tool_use", f"{model}: stop_reason {r.stop_reason}")
            expect(len({c.id for c in calls}) == 2, f"{model}: ids {[c.id for c in calls]}")
            seen.append(model)
        return f"2 tool_use blocks from {', '.join(seen)}"

    def parallel_streamed(self) -> str:
        seen = []
        for model in self.models:
            stream = self.anthropic.messages.create(
                model=model,
                max_tokens=256,
                tools=[WEATHER, TIME],
                messages=[{"role": "user", "content": PARALLEL_PROMPT}],
                stream=True,
            )
            open_block: int | None = None
            next_index = 0
            kinds: dict[int, str] = {}
            args: dict[int, str] = {}
            for event in stream:
                if event.type == "content_block_start":
                    expect(open_block is None, f"{model}: block {event.index} started while {open_block} open")
                    expect(event.index == next_index, f"{model}: block index {event.index}, expected {next_index}")
                    open_block = event.index
                    next_index += 1
                    kinds[event.index] = event.content_block.type
                    if event.content_block.type == "tool_use":
                        args[event.index] = ""
                elif event.type == "content_block_delta":
                    expect(event.index == open_block, f"{model}: delta for {event.index} while {open_block} open")
                    if event.delta.type == "input_json_delta":
                        args[event.index] += event.delta.partial_json
                elif event.type == "content_block_stop":
                    expect(event.index == open_block, f"{model}: stop of {event.index} while {open_block} open")
                    open_block = None
            inputs = [json.loads(a) if a else {} for _, a in sorted(args.items())]
            expect(len(inputs) == 2, f"{model}: tool blocks {kinds}")
            expect(inputs[0].get("city") == "mock", f"{model}: inputs {inputs}")
            # And the SDK's own accumulator agrees.
            with self.anthropic.messages.stream(
                model=model,
                max_tokens=256,
                tools=[WEATHER, TIME],
                messages=[{"role": "user", "content": PARALLEL_PROMPT}],
            ) as s:
                final = s.get_final_message()
            calls = [b for b in final.content if b.type == "tool_use"]
            expect([c.name for c in calls] == ["get_weather", "get_time"], f"{model}: final {final.content}")
            seen.append(model)
        return f"sequential blocks, complete arguments from {', '.join(seen)}"

    # -- 1. reasoning usage --------------------------------------------------------------------

    def thinking_tokens(self) -> str:
        seen = []
        for model in self.reasoning:
            kwargs: dict[str, Any] = dict(
                model=model,
                max_tokens=4096,
                thinking={"type": "enabled", "budget_tokens": 1024},
                messages=[{"role": "user", "content": "Think, then say hello"}],
            )
            r = self.anthropic.messages.create(**kwargs)
            details = r.usage.model_dump().get("output_tokens_details") or {}
            thinking = details.get("thinking_tokens") or 0
            expect(thinking > 0, f"{model}: usage {r.usage.model_dump()}")
            expect(r.usage.output_tokens >= thinking, f"{model}: usage {r.usage}")
            final_usage = None
            for event in self.anthropic.messages.create(stream=True, **kwargs):
                if event.type == "message_delta":
                    final_usage = event.usage.model_dump()
            expect(final_usage is not None, f"{model}: no message_delta")
            streamed = ((final_usage or {}).get("output_tokens_details") or {}).get("thinking_tokens")
            expect(streamed == thinking, f"{model}: streamed usage {final_usage}, complete {thinking}")
            seen.append(f"{model} {thinking}")
        return "thinking_tokens: " + ", ".join(seen) if seen else "no reasoning models"

    # -- 3. Gemini signatures through other clients ----------------------------------------------

    def switch(self, history_openai: list[dict[str, Any]], history_anthropic: list[dict[str, Any]]) -> None:
        """The same conversation, continued on every other provider."""
        for other in self.others:
            r = self.openai.chat.completions.create(model=other, messages=history_openai, tools=[openai_tool(WEATHER)])
            expect(r.choices[0].message.content is not None, f"switch to {other}: {r}")
            m = self.anthropic.messages.create(
                model=other, max_tokens=256, tools=[WEATHER], messages=history_anthropic
            )
            expect(m.stop_reason == "end_turn", f"switch to {other}: {m}")

    def openai_round_trip(self) -> str:
        seen = []
        for model in self.gemini:
            for streamed in (False, True):
                question = {"role": "user", "content": ONE_PROMPT}
                if streamed:
                    calls: dict[int, dict[str, Any]] = {}
                    for chunk in self.openai.chat.completions.create(
                        model=model, messages=[question], tools=[openai_tool(WEATHER)], stream=True
                    ):
                        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                            c = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                            c["id"] += d.id or ""
                            c["name"] += (d.function.name or "") if d.function else ""
                            c["arguments"] += (d.function.arguments or "") if d.function else ""
                    tool_calls = [
                        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                        for _, c in sorted(calls.items())
                    ]
                    assistant = {"role": "assistant", "content": None, "tool_calls": tool_calls}
                else:
                    r = self.openai.chat.completions.create(model=model, messages=[question], tools=[openai_tool(WEATHER)])
                    assistant = r.choices[0].message.model_dump(exclude_none=True)
                    tool_calls = assistant["tool_calls"]
                expect(len(tool_calls) == 1, f"{model}: tool calls {tool_calls}")
                history = [
                    question,
                    assistant,
                    {"role": "tool", "tool_call_id": tool_calls[0]["id"], "content": "sunny"},
                ]
                r2 = self.openai.chat.completions.create(model=model, messages=history, tools=[openai_tool(WEATHER)])
                expect(r2.choices[0].finish_reason == "stop", f"{model}: after the result {r2}")
                anthropic_history = [
                    {"role": "user", "content": ONE_PROMPT},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": tool_calls[0]["id"],
                        "name": "get_weather", "input": json.loads(tool_calls[0]["function"]["arguments"])}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_calls[0]["id"],
                        "content": "sunny"}]},
                ]
                self.switch(history, anthropic_history)
            seen.append(model)
        return f"signatures came back through the openai SDK from {', '.join(seen)}"

    def anthropic_round_trip(self) -> str:
        seen = []
        for model in self.gemini:
            for streamed in (False, True):
                ask = dict(model=model, max_tokens=256, tools=[WEATHER],
                           messages=[{"role": "user", "content": ONE_PROMPT}])
                if streamed:
                    with self.anthropic.messages.stream(**ask) as s:  # type: ignore[arg-type]
                        r = s.get_final_message()
                else:
                    r = self.anthropic.messages.create(**ask)  # type: ignore[arg-type]
                calls = [b for b in r.content if b.type == "tool_use"]
                expect(len(calls) == 1, f"{model}: {r.content}")
                # Many agent loops keep only the tool calls of a turn.
                echoed = [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls]
                history = [
                    {"role": "user", "content": ONE_PROMPT},
                    {"role": "assistant", "content": echoed},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"}]},
                ]
                r2 = self.anthropic.messages.create(model=model, max_tokens=256, tools=[WEATHER], messages=history)
                expect(r2.stop_reason == "end_turn", f"{model}: after the result {r2}")
                # The whole turn echoed works as well.
                whole = [history[0], {"role": "assistant", "content": [b.model_dump() for b in r.content]}, history[2]]
                r3 = self.anthropic.messages.create(model=model, max_tokens=256, tools=[WEATHER], messages=whole)
                expect(r3.stop_reason == "end_turn", f"{model}: whole turn echoed {r3}")
                openai_history = [
                    {"role": "user", "content": ONE_PROMPT},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0].id, "type": "function",
                        "function": {"name": calls[0].name, "arguments": json.dumps(calls[0].input)}}]},
                    {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
                ]
                self.switch(openai_history, history)
            seen.append(model)
        return f"signatures came back through the anthropic SDK from {', '.join(seen)}"


def main() -> int:
    checks = Checks()
    plan: list[tuple[str, Callable[[], str]]] = [
        ("several tool calls, complete", checks.parallel_complete),
        ("several tool calls, streamed as sequential blocks", checks.parallel_streamed),
        ("thinking_tokens from reasoning backends", checks.thinking_tokens),
        ("Gemini signatures through the openai SDK", checks.openai_round_trip),
        ("Gemini signatures through the anthropic SDK", checks.anthropic_round_trip),
    ]
    print(f"anthropic SDK {anthropic.__version__}, openai SDK {openai.__version__}")
    return run_plan(plan, anthropic.APIStatusError, anthropic.APIError)


if __name__ == "__main__":
    sys.exit(main())
