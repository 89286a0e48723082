#!/usr/bin/env python3
"""Real-client check of failover: each official SDK (openai, anthropic, google-genai) asks a
model whose chain fails over across dialects, complete and streamed, and must get a normal
answer in its own API, with `x-tollgate-provider` naming the target that answered.

Environment:
  TOLLGATE_BASE_URL      base URL without an API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY           a key allowed every model
  TOLLGATE_CHAIN_MODEL   the failover model (its earlier targets fail, the last answers)
  TOLLGATE_ANSWERING     the provider that must answer

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
MODEL = env("TOLLGATE_CHAIN_MODEL")
ANSWERING = env("TOLLGATE_ANSWERING")
PROMPT = "Say hello"


def openai_complete() -> str:
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
    )
    expect(raw.headers.get("x-tollgate-provider") == ANSWERING, f"answered by {raw.headers.get('x-tollgate-provider')}")
    r = raw.parse()
    expect(bool(r.choices[0].message.content), f"no text: {r}")
    expect(r.usage is not None and r.usage.prompt_tokens > 0, f"no usage: {r.usage}")
    return r.choices[0].message.content or ""


def openai_stream() -> str:
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)
    text, usage = "", None
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": PROMPT}],
    ) as raw:
        expect(raw.headers.get("x-tollgate-provider") == ANSWERING, f"answered by {raw.headers.get('x-tollgate-provider')}")
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage
    expect(bool(text), "no streamed text")
    expect(usage is not None and usage.completion_tokens > 0, f"no usage: {usage}")
    return text


def anthropic_complete() -> str:
    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
    )
    expect(raw.headers.get("x-tollgate-provider") == ANSWERING, f"answered by {raw.headers.get('x-tollgate-provider')}")
    m = raw.parse()
    expect(m.type == "message" and m.content and m.content[0].type == "text", f"not a message: {m}")
    expect(m.usage.output_tokens > 0, f"no usage: {m.usage}")
    return m.content[0].text


def anthropic_stream() -> str:
    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    with client.messages.stream(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    expect(bool(text), "no streamed text")
    expect(final.usage.output_tokens > 0, f"no usage: {final.usage}")
    return text


# Kept for the whole run: a garbage-collected client closes its transport.
GEMINI = genai.Client(
    api_key=KEY,
    http_options=types.HttpOptions(base_url=BASE, api_version="v1beta", timeout=30_000),
)


def gemini_client() -> genai.Client:
    return GEMINI


def gemini_complete() -> str:
    r = gemini_client().models.generate_content(model=MODEL, contents=PROMPT)
    expect(bool(r.text), f"no text: {r}")
    expect(r.usage_metadata is not None and (r.usage_metadata.prompt_token_count or 0) > 0, f"no usage: {r.usage_metadata}")
    return r.text or ""


def gemini_stream() -> str:
    text = ""
    for chunk in gemini_client().models.generate_content_stream(model=MODEL, contents=PROMPT):
        text += chunk.text or ""
    expect(bool(text), "no streamed text")
    return text


def main() -> int:
    print(f"failover through {MODEL}, answered by {ANSWERING}")
    plan = [
        ("openai complete", openai_complete),
        ("openai stream", openai_stream),
        ("anthropic complete", anthropic_complete),
        ("anthropic stream", anthropic_stream),
        ("gemini complete", gemini_complete),
        ("gemini stream", gemini_stream),
    ]
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
