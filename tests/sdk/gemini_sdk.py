#!/usr/bin/env python3
"""Real-client check: drives Tollgate's Gemini endpoint (through Envoy) with the official
`google-genai` Python SDK and checks what the SDK gets back: plain and streamed replies, function
calls (plain, streamed, and the function-response round trip), thought signatures coming back
unchanged, and errors in Google's format, including one in the middle of a stream.

Environment:
  TOLLGATE_BASE_URL            gateway base URL without the API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY                 the Tollgate key (the SDK sends it as x-goog-api-key)
  TOLLGATE_CHAT_MODEL          model for the checks
  TOLLGATE_RATE_LIMITED_MODEL  a model whose provider answers 429
  TOLLGATE_STREAM_ERROR_MODEL  a model whose provider fails in the middle of a stream
  TOLLGATE_THINKING            "1": the provider returns thoughts and signs its calls (the
                               thought-signature check runs only then)

Prints one line per check; at the first failure prints what went wrong and exits 1.
Standalone on purpose (no pytest): `python3 tests/sdk/gemini_sdk.py`.
"""

from __future__ import annotations

import sys
from typing import Callable

from checks import env, expect, fail, run_plan
from google import genai
from google.genai import errors, types

PROMPT = "Say hello to the Tollgate gateway and tell me what you are"
SYSTEM = "You are a concise assistant."
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="The current weather of a city",
    parameters=types.Schema(
        type="OBJECT",
        properties={"city": types.Schema(type="STRING"), "days": types.Schema(type="INTEGER")},
        required=["city"],
    ),
)
NO_AUTO_CALLS = types.AutomaticFunctionCallingConfig(disable=True)


class NoStatusError(Exception):
    """google-genai has no status_code attribute: its errors all go through the APIError branch."""


class Checks:
    def __init__(self) -> None:
        self.base = env("TOLLGATE_BASE_URL")
        self.client = self.make_client(env("TOLLGATE_KEY"))
        self.model = env("TOLLGATE_CHAT_MODEL")
        self.rate_limited = env("TOLLGATE_RATE_LIMITED_MODEL")
        self.stream_error = env("TOLLGATE_STREAM_ERROR_MODEL")
        self.thinking = env("TOLLGATE_THINKING", required=False) == "1"
        self.text: str | None = None
        self.usage: tuple[int, int] | None = None

    def make_client(self, key: str) -> genai.Client:
        return genai.Client(
            api_key=key,
            http_options=types.HttpOptions(base_url=self.base, api_version="v1beta", timeout=30_000),
        )

    def config(self, **extra: object) -> types.GenerateContentConfig:
        return types.GenerateContentConfig(system_instruction=SYSTEM, max_output_tokens=256, **extra)  # type: ignore[arg-type]

    def plain(self) -> str:
        r = self.client.models.generate_content(model=self.model, contents=PROMPT, config=self.config())
        expect(bool(r.text), f"empty text: {r}")
        c = r.candidates[0]  # type: ignore[index]
        expect(c.finish_reason == types.FinishReason.STOP, f"finish_reason {c.finish_reason}")
        u = r.usage_metadata
        expect(u is not None and (u.prompt_token_count or 0) > 0, f"usage {u}")
        expect((u.candidates_token_count or 0) > 0, f"usage {u}")  # type: ignore[union-attr]
        expect(u.total_token_count == u.prompt_token_count + u.candidates_token_count, f"usage {u}")  # type: ignore[union-attr,operator]
        self.text = r.text
        self.usage = (u.prompt_token_count, u.candidates_token_count)  # type: ignore[union-attr,assignment]
        return f"{self.text!r}, usage {self.usage}"

    def streamed(self) -> str:
        expect(self.text is not None, "needs the plain check first")
        chunks = list(
            self.client.models.generate_content_stream(model=self.model, contents=PROMPT, config=self.config())
        )
        expect(len(chunks) > 1, f"{len(chunks)} chunks: not streamed")
        text = "".join(c.text or "" for c in chunks)
        expect(text == self.text, f"streamed {text!r} != plain {self.text!r}")
        last = chunks[-1]
        expect(last.candidates[0].finish_reason == types.FinishReason.STOP, "no finish_reason on the last chunk")  # type: ignore[index]
        u = last.usage_metadata
        usage = (u.prompt_token_count, u.candidates_token_count)  # type: ignore[union-attr]
        expect(usage == self.usage, f"streamed usage {usage} != plain usage {self.usage}")
        return f"{len(chunks)} chunks, text and usage match"

    def tool_call(self) -> str:
        config = self.config(tools=[types.Tool(function_declarations=[WEATHER])], automatic_function_calling=NO_AUTO_CALLS)
        question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
        r = self.client.models.generate_content(model=self.model, contents=[question], config=config)
        calls = r.function_calls or []
        expect(len(calls) == 1, f"function calls: {r}")
        expect(calls[0].name == "get_weather", f"name {calls[0].name!r}")
        expect(calls[0].args == {"city": "mock", "days": 1}, f"args {calls[0].args!r}")

        # Round trip: the model's turn as the SDK got it, then the function's response.
        answer = types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"result": "sunny"})],
        )
        r2 = self.client.models.generate_content(
            model=self.model, contents=[question, r.candidates[0].content, answer], config=config  # type: ignore[index,list-item]
        )
        expect(not r2.function_calls, f"called again after the response: {r2.function_calls}")
        expect(bool(r2.text), f"after the function response: {r2}")

        # Streamed: the call arrives whole, in one part.
        chunks = list(
            self.client.models.generate_content_stream(model=self.model, contents=[question], config=config)
        )
        streamed = [fc for c in chunks for fc in (c.function_calls or [])]
        expect(len(streamed) == 1 and streamed[0].args == {"city": "mock", "days": 1}, f"streamed calls {streamed}")
        return f"{calls[0].name}({calls[0].args}), then {r2.text!r}; streamed in {len(chunks)} chunks"

    def thought_signatures(self) -> str:
        if not self.thinking:
            return "skipped (the provider does not think)"
        config = self.config(
            tools=[types.Tool(function_declarations=[WEATHER])],
            automatic_function_calling=NO_AUTO_CALLS,
            thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024),
        )
        question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
        r = self.client.models.generate_content(model=self.model, contents=[question], config=config)
        parts = r.candidates[0].content.parts  # type: ignore[index,union-attr]
        expect(any(p.thought for p in parts), f"no thought part: {parts}")  # type: ignore[union-attr]
        signed = [p for p in parts if p.function_call and p.thought_signature]  # type: ignore[union-attr]
        expect(len(signed) == 1, f"the call carries no thought_signature: {parts}")
        answer = types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"result": "sunny"})],
        )
        # The provider refuses a history whose call lost its signature.
        r2 = self.client.models.generate_content(
            model=self.model, contents=[question, r.candidates[0].content, answer], config=config  # type: ignore[index,list-item]
        )
        expect(bool(r2.text), f"after the function response: {r2}")
        return f"signature of {len(signed[0].thought_signature)} bytes came back"  # type: ignore[arg-type]

    def models(self) -> str:
        names = [m.name for m in self.client.models.list()]
        expect(f"models/{self.model}" in names, f"models.list returned {names}, without {self.model}")
        return f"{len(names)} models, {self.model} among them"

    def errors(self) -> str:
        seen = []
        try:
            self.client.models.generate_content(model="no-such-model", contents=PROMPT)
            fail("an unknown model was accepted")
        except errors.ClientError as e:
            expect(e.code == 404 and e.status == "NOT_FOUND", f"{e.code} {e.status}: {e.message}")
            seen.append("404 NOT_FOUND")
        try:
            self.client.models.generate_content(model=self.rate_limited, contents=PROMPT)
            fail("the rate-limited model answered")
        except errors.ClientError as e:
            expect(e.code == 429 and e.status == "RESOURCE_EXHAUSTED", f"{e.code} {e.status}: {e.message}")
            seen.append("429 RESOURCE_EXHAUSTED")
        try:
            bad = self.make_client("tg-wrong")
            bad.models.generate_content(model=self.model, contents=PROMPT)
            fail("a wrong key was accepted")
        except errors.ClientError as e:
            expect(e.code == 401 and e.status == "UNAUTHENTICATED", f"{e.code} {e.status}: {e.message}")
            seen.append("401 UNAUTHENTICATED")
        text = []
        try:
            for chunk in self.client.models.generate_content_stream(model=self.stream_error, contents=PROMPT):
                text.append(chunk.text or "")
            fail("a stream that failed upstream ended without an error")
        except errors.APIError as e:
            expect(bool(text), "no text before the error")
            seen.append(f"mid-stream {type(e).__name__} {e.code} after {len(text)} chunks")
        return ", ".join(seen)


def main() -> int:
    checks = Checks()
    plan: list[tuple[str, Callable[[], str]]] = [
        ("generate_content", checks.plain),
        ("generate_content_stream", checks.streamed),
        ("function call, function response, streamed call", checks.tool_call),
        ("thought signatures come back", checks.thought_signatures),
        ("models.list in Gemini's shape", checks.models),
        ("errors in Google's format", checks.errors),
    ]
    print(f"google-genai {genai.__version__} against {checks.base}, model {checks.model}")
    return run_plan(plan, NoStatusError, errors.APIError)


if __name__ == "__main__":
    sys.exit(main())
