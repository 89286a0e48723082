#!/usr/bin/env python3
"""Real-client check: the official `google-genai` SDK's `models.count_tokens` and
`models.embed_content` (one content and several) through Tollgate (and Envoy), and the errors
it gets for a model Tollgate does not know, in Google's format.

Environment:
  TOLLGATE_BASE_URL  gateway base URL without the API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY       the Tollgate key (the SDK sends it as x-goog-api-key)
  COUNT_MODEL        a model to count with (skipped when unset)
  EXPECTED_TOKENS    the count expected for the prompt below
  EXPECTED_SOURCE    `provider` or `estimate`: the x-tollgate-token-count header expected
  EMBED_MODEL        a model to embed with (skipped when unset)
  EMBED_DIMENSIONS   the vector length the provider gives without outputDimensionality

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

from checks import env, expect, run_plan
from google import genai
from google.genai import errors, types

PROMPT = "count these six words right here"
TEXTS = ["the first text", "a second, longer text to embed", "third"]


class NoStatusError(Exception):
    """google-genai has no status_code attribute: its errors all go through the APIError branch."""


def main() -> int:
    client = genai.Client(
        api_key=env("TOLLGATE_KEY"),
        http_options=types.HttpOptions(
            base_url=env("TOLLGATE_BASE_URL"), api_version="v1beta", timeout=30_000
        ),
    )
    count_model = env("COUNT_MODEL", required=False)
    embed_model = env("EMBED_MODEL", required=False)

    def count() -> str:
        expected = int(env("EXPECTED_TOKENS"))
        source = env("EXPECTED_SOURCE")
        r = client.models.count_tokens(model=count_model, contents=PROMPT)
        expect(r.total_tokens == expected, f"{r.total_tokens} tokens, not {expected}")
        headers = r.sdk_http_response.headers if r.sdk_http_response else {}
        got = (headers or {}).get("x-tollgate-token-count")
        expect(got == source, f"x-tollgate-token-count: {got!r}, not {source!r}")
        return f"{r.total_tokens} tokens ({source})"

    def vectors(r: types.EmbedContentResponse) -> list[list[float]]:
        expect(r.embeddings is not None, f"no embeddings: {r}")
        return [list(e.values or []) for e in r.embeddings or []]

    def embed_one() -> str:
        dims = int(env("EMBED_DIMENSIONS"))
        r = client.models.embed_content(model=embed_model, contents=PROMPT)
        v = vectors(r)
        expect(len(v) == 1, f"{len(v)} embeddings for one content")
        expect(len(v[0]) == dims, f"{len(v[0])} values, not {dims}")
        norm = math.sqrt(sum(x * x for x in v[0]))
        expect(abs(norm - 1.0) < 1e-3, f"not a unit vector: {norm}")
        return f"one vector of {len(v[0])} values"

    def embed_several() -> str:
        r = client.models.embed_content(
            model=embed_model,
            contents=TEXTS,
            config=types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", output_dimensionality=4),
        )
        v = vectors(r)
        expect(len(v) == len(TEXTS), f"{len(v)} embeddings for {len(TEXTS)} contents: {r}")
        expect(all(len(x) == 4 for x in v), f"lengths {[len(x) for x in v]}, not 4")
        expect(len({tuple(x) for x in v}) == len(TEXTS), "two texts got the same vector")
        # In request order: the second text alone gets the second vector.
        alone = vectors(
            client.models.embed_content(
                model=embed_model,
                contents=TEXTS[1],
                config=types.EmbedContentConfig(output_dimensionality=4),
            )
        )[0]
        expect(
            all(abs(a - b) < 1e-6 for a, b in zip(alone, v[1])),
            f"order: {alone} is not {v[1]}",
        )
        return f"{len(v)} vectors of 4 values, in order"

    def unknown_model() -> str:
        seen = []
        for call in (
            lambda: client.models.count_tokens(model="no-such-model", contents=PROMPT),
            lambda: client.models.embed_content(model="no-such-model", contents=PROMPT),
        ):
            try:
                call()
            except errors.ClientError as e:
                expect(e.code == 404, f"code {e.code}: {e}")
                expect(e.status == "NOT_FOUND", f"status {e.status}: {e}")
                seen.append(e.code)
                continue
            expect(False, "an unknown model was accepted")
        return f"404 NOT_FOUND for both ({seen})"

    plan: list[tuple[str, Callable[[], str]]] = []
    if count_model:
        plan.append((f"models.count_tokens {count_model}", count))
    if embed_model:
        plan.append((f"models.embed_content one content {embed_model}", embed_one))
        plan.append((f"models.embed_content several contents {embed_model}", embed_several))
    plan.append(("unknown model", unknown_model))
    return run_plan(plan, NoStatusError, errors.APIError)


if __name__ == "__main__":
    sys.exit(main())
