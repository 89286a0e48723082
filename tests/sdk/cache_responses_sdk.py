#!/usr/bin/env python3
"""Real-client check of the response cache on OpenAI's Responses API: for each model, the
official `openai` SDK asks the same thing twice, whole and streamed; the second answer is
written by Tollgate from the cached one (`x-tollgate-cache: exact`) with a fresh response id,
reads the same text and usage in the SDK's own types (`responses.create`,
`responses.create(stream=True)`, the `responses.stream` helper's final response), and is
stored like any response: `responses.retrieve` finds it and `previous_response_id` continues
it. A continuation asked twice is answered from the cache the second time (its conversation
resolved the same); `store=False` hits are answered but not retrievable.

Environment:
  TOLLGATE_BASE_URL  base URL without an API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY       a key allowed every model
  TOLLGATE_MODELS    comma-separated cached models (e.g. one served natively by an OpenAI
                     target, one through the hub)

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys

import openai
from checks import env, expect, run_plan

BASE = env("TOLLGATE_BASE_URL")
KEY = env("TOLLGATE_KEY")
MODELS = [m.strip() for m in env("TOLLGATE_MODELS").split(",") if m.strip()]
CLIENT = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)


def create(model: str, **kwargs):
    raw = CLIENT.responses.with_raw_response.create(model=model, max_output_tokens=50, **kwargs)
    return raw.headers.get("x-tollgate-cache"), raw.parse()


def whole(model: str) -> str:
    prompt = f"Say hello to the responses cache of {model}"
    cache1, first = create(model, input=prompt)
    cache2, second = create(model, input=prompt)
    expect(cache1 is None, f"first answer came from the cache: {cache1}")
    expect(cache2 == "exact", f"second answer not from the cache: {cache2}")
    expect(first.output_text and first.output_text == second.output_text,
           f"texts differ: {first.output_text!r} vs {second.output_text!r}")
    expect(second.id != first.id and second.id.startswith("resp_"), f"ids: {first.id} {second.id}")
    expect(second.status == "completed", f"status {second.status}")
    expect(second.usage is not None and second.usage.output_tokens > 0, f"usage {second.usage}")
    # The hit is a stored response of its own: retrievable, and continued by id.
    got = CLIENT.responses.retrieve(second.id)
    expect(got.id == second.id and got.output_text == second.output_text, f"retrieved {got}")
    follow = f"And now say goodbye ({model})"
    cache3, cont = create(model, input=follow, previous_response_id=second.id)
    expect(cache3 is None, f"a new continuation came from the cache: {cache3}")
    expect(cont.previous_response_id == second.id, f"previous {cont.previous_response_id}")
    # The same continuation again: the resolved conversation is the same, so it is a hit.
    cache4, again = create(model, input=follow, previous_response_id=second.id)
    expect(cache4 == "exact", f"repeated continuation not from the cache: {cache4}")
    expect(again.output_text == cont.output_text and again.id != cont.id, "continuation hit")
    expect(again.previous_response_id == second.id, f"previous {again.previous_response_id}")
    # `store=False`: answered from the cache (store does not key), but not kept.
    cache5, unstored = create(model, input=prompt, store=False)
    expect(cache5 == "exact", f"store=false request not from the cache: {cache5}")
    try:
        CLIENT.responses.retrieve(unstored.id)
        expect(False, "a store=false hit was stored")
    except openai.NotFoundError:
        pass
    return f"{second.id}: {second.output_text[:40]!r}"


def streamed(model: str) -> str:
    prompt = f"Stream hello to the responses cache of {model}"
    with CLIENT.responses.with_streaming_response.create(
        model=model, input=prompt, max_output_tokens=50, stream=True
    ) as raw:
        cache1 = raw.headers.get("x-tollgate-cache")
        events = list(raw.parse())
    first = events[-1].response
    expect(cache1 is None, f"first stream came from the cache: {cache1}")
    expect(events[-1].type == "response.completed", f"last event {events[-1].type}")
    # The helper's accumulator reads the replayed stream (deltas, items, final response).
    with CLIENT.responses.stream(model=model, input=prompt, max_output_tokens=50) as stream:
        cache2 = stream._raw_stream.response.headers.get("x-tollgate-cache")  # noqa: SLF001
        text = ""
        kinds = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    expect(cache2 == "exact", f"second stream not from the cache: {cache2}")
    expect(kinds[0] == "response.created" and kinds[-1] == "response.completed", f"{kinds}")
    expect(text == first.output_text == final.output_text and text, f"texts {text!r} {first.output_text!r}")
    expect(final.id != first.id, "the replayed stream reused the cached id")
    expect(final.usage is not None and final.usage.output_tokens > 0, f"usage {final.usage}")
    got = CLIENT.responses.retrieve(final.id)
    expect(got.output_text == text, f"retrieved {got.output_text!r}")
    return f"{len(kinds)} events"


def main() -> int:
    print(f"responses cache through {BASE}")
    plan = []
    for model in MODELS:
        plan.append((f"{model} whole", lambda m=model: whole(m)))
        plan.append((f"{model} streamed", lambda m=model: streamed(m)))
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
