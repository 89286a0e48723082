#!/usr/bin/env python3
"""Real-client check: the official `anthropic` Python SDK's `messages.count_tokens` through
Tollgate (and Envoy) gets the count of the model's provider, in Anthropic's shape.

Environment:
  TOLLGATE_BASE_URL  gateway base URL without the API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY       the Tollgate key
  COUNT_MODEL        a model whose provider can count tokens
  EXPECTED_TOKENS    the count that provider gives the prompt below

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys
from typing import Callable

import anthropic
from anthropic import Anthropic
from checks import env, expect, run_plan


def main() -> int:
    client = Anthropic(
        base_url=env("TOLLGATE_BASE_URL"),
        api_key=env("TOLLGATE_KEY"),
        max_retries=0,
        timeout=30.0,
    )
    model = env("COUNT_MODEL")
    expected = int(env("EXPECTED_TOKENS"))

    def count() -> str:
        raw = client.messages.with_raw_response.count_tokens(
            model=model,
            system="You are terse.",
            messages=[{"role": "user", "content": "count these six words right here"}],
        )
        source = raw.headers.get("x-tollgate-token-count")
        expect(source == "provider", f"x-tollgate-token-count: {source!r}")
        result = raw.parse()
        expect(result.input_tokens == expected, f"{result.input_tokens} tokens, not {expected}")
        return f"{result.input_tokens} input tokens, counted by the provider"

    plan: list[tuple[str, Callable[[], str]]] = [("messages.count_tokens", count)]
    return run_plan(plan, anthropic.APIStatusError, anthropic.APIError)


if __name__ == "__main__":
    sys.exit(main())
