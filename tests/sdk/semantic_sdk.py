#!/usr/bin/env python3
"""Real-client check of a semantic cache hit replayed as a stream: the openai and anthropic
SDKs each ask a question, then stream a rewording of it; the second answer is the first
one's, replayed by Tollgate (`x-tollgate-cache: semantic`) in the SDK's own stream format.

Environment:
  TOLLGATE_BASE_URL        base URL without an API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY             a key allowed every model
  TOLLGATE_OPENAI_MODEL    a model under a semantic cache policy, for the openai SDK
  TOLLGATE_ANTHROPIC_MODEL a model under a semantic cache policy, for the anthropic SDK

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys

import anthropic
import openai
from checks import env, expect, run_plan

BASE = env("TOLLGATE_BASE_URL")
KEY = env("TOLLGATE_KEY")
OPENAI_MODEL = env("TOLLGATE_OPENAI_MODEL")
ANTHROPIC_MODEL = env("TOLLGATE_ANTHROPIC_MODEL")


def openai_semantic_stream() -> str:
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)
    first = client.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL,
        max_tokens=50,
        messages=[{"role": "user", "content": "Which river flows through the city of Paris?"}],
    )
    expect(first.headers.get("x-tollgate-cache") is None, "the first answer came from a cache")
    answer = first.parse().choices[0].message.content
    text, usage = "", None
    with client.chat.completions.with_streaming_response.create(
        model=OPENAI_MODEL,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "which river flows through the city of paris"}],
    ) as raw:
        cache = raw.headers.get("x-tollgate-cache")
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage
    expect(cache == "semantic", f"the reworded question was not a semantic hit: {cache}")
    expect(text == answer, f"replayed {text!r}, stored {answer!r}")
    expect(usage is not None and usage.completion_tokens > 0, f"no usage: {usage}")
    return text


def anthropic_semantic_stream() -> str:
    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    first = client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=50,
        messages=[{"role": "user", "content": "Which mountain is the highest in Europe?"}],
    )
    answer = "".join(b.text for b in first.content if b.type == "text")
    with client.messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=50,
        messages=[{"role": "user", "content": "which mountain is the highest in europe"}],
    ) as stream:
        cache = stream.response.headers.get("x-tollgate-cache")
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    expect(cache == "semantic", f"the reworded question was not a semantic hit: {cache}")
    expect(text == answer, f"replayed {text!r}, stored {answer!r}")
    expect(final.stop_reason == "end_turn", f"stop reason: {final.stop_reason}")
    return text


def main() -> int:
    print(f"semantic cache replay through {BASE}")
    plan = [
        ("openai semantic stream replay", openai_semantic_stream),
        ("anthropic semantic stream replay", anthropic_semantic_stream),
    ]
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
