#!/usr/bin/env python3
"""Real-client check of the response cache's stream replay: each official SDK (openai,
anthropic, google-genai) streams the same request twice; the first answer comes from the
provider, the second is replayed by Tollgate from the cached complete answer
(`x-tollgate-cache: exact`) and must read the same text, with usage, in the SDK's own API.

Environment:
  TOLLGATE_BASE_URL        base URL without an API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY             a key allowed every model
  TOLLGATE_OPENAI_MODEL    a cached model for the openai SDK
  TOLLGATE_ANTHROPIC_MODEL a cached model for the anthropic SDK
  TOLLGATE_GEMINI_MODEL    a cached model for the google-genai SDK

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys

import anthropic
import openai
from checks import env, expect, run_plan
from google import genai
from google.genai import types

BASE = env("TOLLGATE_BASE_URL")
KEY = env("TOLLGATE_KEY")
OPENAI_MODEL = env("TOLLGATE_OPENAI_MODEL")
ANTHROPIC_MODEL = env("TOLLGATE_ANTHROPIC_MODEL")
GEMINI_MODEL = env("TOLLGATE_GEMINI_MODEL")


def openai_once(prompt: str) -> tuple[str, str | None, object]:
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)
    text, usage, roles = "", None, 0
    with client.chat.completions.with_streaming_response.create(
        model=OPENAI_MODEL,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": prompt}],
    ) as raw:
        cache = raw.headers.get("x-tollgate-cache")
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.role:
                roles += 1
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage
    expect(roles == 1, f"role sent {roles} times")
    return text, cache, usage


def openai_stream() -> str:
    prompt = "Say hello to the openai cache"
    first, cache1, _ = openai_once(prompt)
    second, cache2, usage = openai_once(prompt)
    expect(cache1 is None, f"first answer came from the cache: {cache1}")
    expect(cache2 == "exact", f"second answer not from the cache: {cache2}")
    expect(first == second and first, f"texts differ: {first!r} vs {second!r}")
    expect(usage is not None and usage.completion_tokens > 0, f"no usage: {usage}")
    return second


def anthropic_stream() -> str:
    prompt = "Say hello to the anthropic cache"
    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    texts, caches = [], []
    for _ in range(2):
        with client.messages.stream(
            model=ANTHROPIC_MODEL, max_tokens=50, messages=[{"role": "user", "content": prompt}]
        ) as stream:
            caches.append(stream.response.headers.get("x-tollgate-cache"))
            texts.append("".join(stream.text_stream))
            final = stream.get_final_message()
    expect(caches == [None, "exact"], f"cache headers: {caches}")
    expect(texts[0] == texts[1] and texts[0], f"texts differ: {texts}")
    expect(final.usage.output_tokens > 0, f"no usage: {final.usage}")
    expect(final.stop_reason == "end_turn", f"stop reason: {final.stop_reason}")
    return texts[1]


GEMINI = genai.Client(
    api_key=KEY,
    http_options=types.HttpOptions(base_url=BASE, api_version="v1beta", timeout=30_000),
)


def gemini_stream() -> str:
    prompt = "Say hello to the gemini cache"
    texts, usage = [], None
    for _ in range(2):
        text = ""
        for chunk in GEMINI.models.generate_content_stream(model=GEMINI_MODEL, contents=prompt):
            text += chunk.text or ""
            if chunk.usage_metadata and chunk.usage_metadata.candidates_token_count:
                usage = chunk.usage_metadata
        texts.append(text)
    expect(texts[0] == texts[1] and texts[0], f"texts differ: {texts}")
    expect(usage is not None, "no usage")
    return texts[1]


def main() -> int:
    print(f"cache replay through {BASE}")
    plan = [
        ("openai stream replay", openai_stream),
        ("anthropic stream replay", anthropic_stream),
        ("gemini stream replay", gemini_stream),
    ]
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
