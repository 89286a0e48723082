#!/usr/bin/env python3
"""Real-client check of the Responses API's reasoning, `include`, `metadata` and the output cap
on hub backends: drives Tollgate through Envoy with the official `openai` Python SDK.

Environment:
  TOLLGATE_BASE_URL   base URL including the API prefix, e.g. http://127.0.0.1:8080/v1
  TOLLGATE_KEY        the key sent as `Authorization: Bearer`
  TOLLGATE_MODEL      the model
  TOLLGATE_PLAN       "thinking": an agent loop with thinking + a function tool, twice, not
                      streamed and streamed, with the reasoning items (and their
                      encrypted_content) sent back, then the same through
                      `previous_response_id` without `include`; `metadata` echoed.
                      "loop": the same agent loop without reasoning (any backend).
                      "cap": a stream cut by the gateway's output cap ends with
                      `response.incomplete` (reason `max_output_tokens`).

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import openai
from checks import env, expect, run_plan
from openai import OpenAI

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "default": "Paris"}},
            "required": ["city"],
        },
    }
]
REASONING: Any = {"effort": "low", "summary": "auto"}
INCLUDE: Any = ["reasoning.encrypted_content"]


class Checks:
    def __init__(self) -> None:
        self.client = OpenAI(
            base_url=env("TOLLGATE_BASE_URL"),
            api_key=env("TOLLGATE_KEY"),
            max_retries=0,
            timeout=30.0,
        )
        self.model = env("TOLLGATE_MODEL")
        self.thinking = env("TOLLGATE_PLAN") == "thinking"

    def turn(self, conversation: list[Any], stream: bool) -> Any:
        kwargs: dict[str, Any] = dict(
            model=self.model, input=conversation, tools=TOOLS, metadata={"run": "thinking"},
        )
        if self.thinking:
            kwargs.update(reasoning=REASONING, include=INCLUDE)
        if not stream:
            return self.client.responses.create(**kwargs)
        with self.client.responses.stream(**kwargs) as s:
            for _ in s:
                pass
            return s.get_final_response()

    def loop(self, stream: bool) -> str:
        """Two tool round trips, every output item (reasoning first) sent back each time."""
        conversation: list[Any] = []
        seen = []
        for question in ["What is the weather in Paris? Use get_weather.",
                         "And in Rome? Use get_weather again."]:
            conversation.append({"role": "user", "content": question})
            r1 = self.turn(conversation, stream)
            expect(r1.metadata == {"run": "thinking"}, f"metadata {r1.metadata}")
            if self.thinking:
                reasoning = [o for o in r1.output if o.type == "reasoning"]
                expect(len(reasoning) == 1, f"want one reasoning item first: {r1.output}")
                expect(r1.output[0].type == "reasoning", f"reasoning not first: {r1.output}")
                item = reasoning[0]
                expect(item.id.startswith("rs_tg_"), f"reasoning id {item.id}")
                expect(bool(item.encrypted_content), f"no encrypted_content: {item}")
                expect(bool(item.summary) and bool(item.summary[0].text), f"no summary: {item}")
            call = next(o for o in r1.output if o.type == "function_call")
            conversation += [o.model_dump(exclude_none=True) for o in r1.output]
            conversation.append(
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
            )
            r2 = self.turn(conversation, stream)
            expect(r2.status == "completed", f"status {r2.status}")
            expect(not [o for o in r2.output if o.type == "function_call"], f"called again: {r2.output}")
            expect(bool(r2.output_text), f"no final answer: {r2.output}")
            conversation += [o.model_dump(exclude_none=True) for o in r2.output]
            seen.append(call.call_id)
        return f"two round trips {seen}" + (", reasoning sent back each time" if self.thinking else "")

    def loop_create(self) -> str:
        return self.loop(stream=False)

    def loop_stream(self) -> str:
        return self.loop(stream=True)

    def stored(self) -> str:
        """Without `include` the client sees no encrypted_content; the store keeps it."""
        r1 = self.client.responses.create(
            model=self.model, input="What is the weather in Paris? Use get_weather.",
            tools=TOOLS, reasoning=REASONING, metadata={"run": "stored"},
        )
        items = [o for o in r1.output if o.type == "reasoning"]
        expect(len(items) == 1, f"reasoning items {r1.output}")
        expect(not items[0].encrypted_content, f"encrypted_content without include: {items[0]}")
        call = next(o for o in r1.output if o.type == "function_call")
        r2 = self.client.responses.create(
            model=self.model, previous_response_id=r1.id, tools=TOOLS, reasoning=REASONING,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            stream=True,
        )
        done = [e for e in r2 if e.type == "response.completed"]
        expect(len(done) == 1, "no response.completed")
        got = self.client.responses.retrieve(r1.id)
        expect(got.metadata == {"run": "stored"}, f"stored metadata {got.metadata}")
        kept = [o for o in got.output if o.type == "reasoning"]
        expect(not kept[0].encrypted_content, f"GET without include: {kept}")
        got = self.client.responses.retrieve(r1.id, include=INCLUDE)
        kept = [o for o in got.output if o.type == "reasoning"]
        expect(bool(kept[0].encrypted_content), f"GET with include: {kept}")
        return f"{r1.id} → {done[0].response.id}"

    def cap(self) -> str:
        types: list[str] = []
        seqs: list[int] = []
        text: list[str] = []
        last: Any = None
        with self.client.responses.stream(
            model=self.model, metadata={"run": "cap"},
            input="Tell me a long story about the gateway and every provider behind it please",
        ) as s:
            for event in s:
                types.append(event.type)
                seqs.append(event.sequence_number)
                if event.type == "response.output_text.delta":
                    text.append(event.delta)
                last = event
            try:
                s.get_final_response()
                completed = True
            except RuntimeError:
                completed = False
        expect(not completed, "a response.completed came after the cap")
        expect(types[-1] == "response.incomplete", f"last event {types[-1]}: {types}")
        expect(seqs == list(range(len(seqs))), f"sequence numbers {seqs}")
        r = last.response
        expect(r.status == "incomplete", f"status {r.status}")
        expect(r.incomplete_details.reason == "max_output_tokens", f"{r.incomplete_details}")
        expect(r.metadata == {"run": "cap"}, f"metadata {r.metadata}")
        expect(r.output[0].content[0].text == "".join(text), f"output {r.output}")
        expect(r.usage.output_tokens <= 5, f"usage {r.usage}")
        return f"{len(types)} events, cut after {''.join(text)!r}"


def main() -> int:
    checks = Checks()
    plans: dict[str, list[tuple[str, Callable[[], str]]]] = {
        "thinking": [
            ("thinking + tool loop, create", checks.loop_create),
            ("thinking + tool loop, stream", checks.loop_stream),
            ("previous_response_id keeps the thinking", checks.stored),
        ],
        "loop": [
            ("tool loop twice, create", checks.loop_create),
            ("tool loop twice, stream", checks.loop_stream),
        ],
        "cap": [("output cap ends the stream", checks.cap)],
    }
    plan = plans[env("TOLLGATE_PLAN")]
    print(f"openai SDK {openai.__version__} against {checks.client.base_url} ({checks.model})")
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
