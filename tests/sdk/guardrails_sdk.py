#!/usr/bin/env python3
"""Real-client check of guardrails: the official `openai` and `anthropic` SDKs, with a key whose
policy blocks cards in requests, redacts phone numbers in responses and blocks `TOPSECRET-nnnn`
in responses (the e2e stack's `e2e` policy), see what their users would: a blocked request is
the SDK's bad-request error naming the rule, a redacted stream accumulates to the redacted
text, a stream blocked midway raises in the SDK.

Environment:
  TOLLGATE_BASE_URL   gateway base URL without the API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY        the guarded Tollgate key
  TOLLGATE_OPENAI_MODEL, TOLLGATE_ANTHROPIC_MODEL   models for each SDK

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys

import anthropic
import openai
from checks import env, expect, fail, run_plan

CARD = "4111 1111 1111 1111"
PHONE = "+44 20 7946 0958"
REDACTED = "Mock reply to: call me at [REDACTED:reply-phone] tomorrow"


def main() -> int:
    base = env("TOLLGATE_BASE_URL")
    key = env("TOLLGATE_KEY")
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30.0)
    an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=30.0)
    oa_model = env("TOLLGATE_OPENAI_MODEL")
    an_model = env("TOLLGATE_ANTHROPIC_MODEL")

    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    def openai_block() -> str:
        try:
            oa.chat.completions.create(model=oa_model, messages=user(f"card {CARD}"))
        except openai.BadRequestError as e:
            body = e.body if isinstance(e.body, dict) else {}
            expect(body.get("code") == "guardrail_blocked", f"code: {e.body}")
            expect("no-cards" in str(e.message) and "4111" not in str(e.message), str(e.message))
            return f"BadRequestError: {e.message}"
        fail("no error")

    def openai_stream_redacted() -> str:
        stream = oa.chat.completions.create(
            model=oa_model, messages=user(f"call me at {PHONE} tomorrow"), stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        expect(text == REDACTED, repr(text))
        return text

    def openai_stream_blocked() -> str:
        stream = oa.chat.completions.create(
            model=oa_model, messages=user("say TOPSECRET-4242 now"), stream=True
        )
        seen = ""
        try:
            for c in stream:
                if c.choices:
                    seen += c.choices[0].delta.content or ""
        except openai.APIError as e:
            expect("TOPSECRET" not in seen, seen)
            expect("reply-secret" in str(e), str(e))
            return f"{type(e).__name__} after {seen!r}"
        fail(f"the stream ended without an error: {seen!r}")

    def anthropic_block() -> str:
        try:
            an.messages.create(model=an_model, max_tokens=64, messages=user(f"card {CARD}"))
        except anthropic.BadRequestError as e:
            expect("no-cards" in str(e.message) and "4111" not in str(e.message), str(e.message))
            return f"BadRequestError: {e.message}"
        fail("no error")

    def anthropic_stream_redacted() -> str:
        with an.messages.stream(
            model=an_model, max_tokens=64, messages=user(f"call me at {PHONE} tomorrow")
        ) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        expect(text == REDACTED, repr(text))
        expect(final.content[0].text == REDACTED, repr(final.content))
        return text

    def anthropic_stream_blocked() -> str:
        seen = ""
        try:
            with an.messages.stream(
                model=an_model, max_tokens=64, messages=user("say TOPSECRET-4242 now")
            ) as s:
                for t in s.text_stream:
                    seen += t
        except anthropic.APIError as e:
            expect("TOPSECRET" not in seen, seen)
            expect("reply-secret" in str(e), str(e))
            return f"{type(e).__name__} after {seen!r}"
        fail(f"the stream ended without an error: {seen!r}")

    plan = [
        ("openai: a blocked request is a BadRequestError naming the rule", openai_block),
        ("openai: a redacted stream accumulates to the redacted text", openai_stream_redacted),
        ("openai: a stream blocked midway raises", openai_stream_blocked),
        ("anthropic: a blocked request is a BadRequestError naming the rule", anthropic_block),
        ("anthropic: a redacted stream accumulates to the redacted text", anthropic_stream_redacted),
        ("anthropic: a stream blocked midway raises", anthropic_stream_blocked),
    ]
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__} against {base}")
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
