#!/usr/bin/env python3
"""Real-client check of the Responses API: drives Tollgate through Envoy with the official
`openai` Python SDK's `responses.create`, `responses.stream`, `responses.retrieve` and
`responses.delete`, and checks what the SDK gets back.

Environment:
  TOLLGATE_BASE_URL      base URL including the API prefix, e.g. http://127.0.0.1:8080/v1
  TOLLGATE_KEY           the key sent as `Authorization: Bearer`
  TOLLGATE_MODEL         the model (any backend)
  TOLLGATE_STREAM_ERROR_MODEL  a model whose provider fails in the middle of a stream
                         (skipped when empty or unset)
  TOLLGATE_REASONING     "1": the backend issues reasoning items with encrypted content that
                         must go back unchanged (the OpenAI mock)

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import openai
from checks import env, expect, fail, run_plan
from openai import OpenAI

PROMPT = "Say hello to the Tollgate gateway and tell me what you are"
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
# The event types `responses.stream()` must see for a text answer, in this order.
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def check_usage(usage: Any, what: str) -> tuple[int, int]:
    expect(usage is not None, f"{what}: no usage")
    expect(usage.input_tokens > 0, f"{what}: input_tokens {usage.input_tokens}")
    expect(usage.output_tokens > 0, f"{what}: output_tokens {usage.output_tokens}")
    expect(
        usage.total_tokens == usage.input_tokens + usage.output_tokens,
        f"{what}: total_tokens {usage.total_tokens}",
    )
    return usage.input_tokens, usage.output_tokens


def in_order(seen: list[str], wanted: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


class Checks:
    def __init__(self) -> None:
        self.client = OpenAI(
            base_url=env("TOLLGATE_BASE_URL"),
            api_key=env("TOLLGATE_KEY"),
            max_retries=0,
            timeout=30.0,
        )
        self.model = env("TOLLGATE_MODEL")
        self.stream_error_model = env("TOLLGATE_STREAM_ERROR_MODEL", required=False)
        self.reasoning = env("TOLLGATE_REASONING", required=False) == "1"
        self.text: str | None = None
        self.first_id: str | None = None

    def create(self) -> str:
        r = self.client.responses.create(
            model=self.model, input=PROMPT, instructions="You are a concise assistant."
        )
        expect(r.object == "response", f"object {r.object!r}")
        expect(r.id.startswith("resp_"), f"id {r.id!r}")
        expect(r.status == "completed", f"status {r.status!r}")
        expect(bool(r.output_text), f"empty output_text: {r.output}")
        expect(r.output[-1].type == "message", f"last item {r.output[-1].type}")
        usage = check_usage(r.usage, "create")
        self.text = r.output_text
        self.first_id = r.id
        return f"{r.id}: {r.output_text!r}, usage {usage}"

    def stream(self) -> str:
        expect(self.text is not None, "needs the create check first")
        types: list[str] = []
        seqs: list[int] = []
        deltas: list[str] = []
        with self.client.responses.stream(model=self.model, input=PROMPT,
                                          instructions="You are a concise assistant.") as s:
            for event in s:
                types.append(event.type)
                seqs.append(event.sequence_number)
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = s.get_final_response()
        expect(in_order(types, TEXT_EVENTS), f"event order {types}")
        expect(seqs == list(range(len(seqs))), f"sequence numbers {seqs}")
        expect("".join(deltas) == final.output_text, "deltas != final text")
        expect(final.output_text == self.text, f"streamed {final.output_text!r} != {self.text!r}")
        usage = check_usage(final.usage, "stream")
        return f"{len(types)} events, text matches, usage {usage}"

    def agent_loop(self) -> str:
        """Call → function_call_output → final answer, with the whole conversation sent back."""
        conversation: list[Any] = [
            {"role": "user", "content": "What is the weather in Paris? Use get_weather."}
        ]
        kwargs: dict[str, Any] = {}
        if self.reasoning:
            kwargs["reasoning"] = {"effort": "low"}
            kwargs["include"] = ["reasoning.encrypted_content"]
        r1 = self.client.responses.create(model=self.model, input=conversation, tools=TOOLS, **kwargs)
        calls = [o for o in r1.output if o.type == "function_call"]
        expect(len(calls) == 1, f"want one function call, got {r1.output}")
        call = calls[0]
        expect(call.name == "get_weather", f"called {call.name}")
        expect("city" in call.arguments, f"arguments {call.arguments!r}")
        if self.reasoning:
            enc = [o.encrypted_content for o in r1.output if o.type == "reasoning"]
            expect(bool(enc) and all(enc), f"no encrypted reasoning: {r1.output}")
        conversation += [o.model_dump(exclude_none=True) for o in r1.output]
        conversation.append(
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
        )
        r2 = self.client.responses.create(model=self.model, input=conversation, tools=TOOLS, **kwargs)
        expect(not [o for o in r2.output if o.type == "function_call"], f"called again: {r2.output}")
        expect(bool(r2.output_text), "no final answer")
        # The same loop streamed: the call arrives as argument deltas.
        args: list[str] = []
        with self.client.responses.stream(model=self.model, input=conversation[:1], tools=TOOLS) as s:
            for event in s:
                if event.type == "response.function_call_arguments.delta":
                    args.append(event.delta)
            final = s.get_final_response()
        streamed = [o for o in final.output if o.type == "function_call"]
        expect(len(streamed) == 1, f"streamed output {final.output}")
        expect("".join(args) == streamed[0].arguments, "argument deltas != final arguments")
        return f"{call.call_id} → {r2.output_text!r}; streamed call {streamed[0].arguments}"

    def continuation(self) -> str:
        """`previous_response_id`: the tool loop with only the new item sent."""
        r1 = self.client.responses.create(
            model=self.model,
            input="What is the weather in Paris? Use get_weather.",
            tools=TOOLS,
        )
        call = next(o for o in r1.output if o.type == "function_call")
        r2 = self.client.responses.create(
            model=self.model,
            previous_response_id=r1.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            tools=TOOLS,
        )
        expect(r2.previous_response_id == r1.id, f"previous_response_id {r2.previous_response_id}")
        expect(bool(r2.output_text), "no final answer")
        expect(r2.usage.input_tokens > r1.usage.input_tokens, "the stored conversation was not sent")
        r3 = self.client.responses.create(
            model=self.model, previous_response_id=r2.id, input="And tomorrow?", stream=True,
            tools=TOOLS,
        )
        done = [e for e in r3 if e.type == "response.completed"]
        expect(len(done) == 1, "no response.completed")
        return f"{r1.id} → {r2.id} → {done[0].response.id}"

    def retrieve_delete(self) -> str:
        expect(self.first_id is not None, "needs the create check first")
        got = self.client.responses.retrieve(self.first_id)
        expect(got.id == self.first_id, f"retrieved {got.id}")
        expect(got.output_text == self.text, "retrieved text differs")
        items = list(self.client.responses.input_items.list(self.first_id, order="asc"))
        expect(len(items) == 1 and items[0].type == "message", f"input items {items}")
        expect(items[0].content[0].text == PROMPT, f"input item {items[0]}")
        deleted = self.client.responses.delete(self.first_id)
        expect(deleted is None or True, "delete")
        try:
            self.client.responses.retrieve(self.first_id)
        except openai.NotFoundError:
            pass
        else:
            fail("a deleted response is still there")
        try:
            self.client.responses.create(model=self.model, previous_response_id=self.first_id, input="x")
        except openai.BadRequestError as e:
            expect("not found" in str(e), f"error {e}")
        else:
            fail("a deleted previous_response_id was accepted")
        return "retrieved, deleted, gone"

    def stream_error(self) -> str:
        if not self.stream_error_model:
            return "skipped"
        types: list[str] = []
        stream = self.client.responses.create(model=self.stream_error_model, input=PROMPT, stream=True)
        try:
            for event in stream:
                types.append(event.type)
        except openai.APIError as e:
            return f"raised {type(e).__name__} after {types}"
        expect("error" in types or "response.failed" in types, f"no error event: {types}")
        expect("response.completed" not in types, f"completed after an error: {types}")
        return f"events {types[-2:]}"


def main() -> int:
    checks = Checks()
    plan: list[tuple[str, Callable[[], str]]] = [
        ("responses.create", checks.create),
        ("responses.stream", checks.stream),
        ("agent loop with a function tool", checks.agent_loop),
        ("previous_response_id continuation", checks.continuation),
        ("retrieve and delete", checks.retrieve_delete),
        ("error in the middle of a stream", checks.stream_error),
    ]
    print(f"openai SDK {openai.__version__} against {checks.client.base_url} ({checks.model})")
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
