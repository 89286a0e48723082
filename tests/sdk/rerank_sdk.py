#!/usr/bin/env python3
"""Real-client check: the official `cohere` Python SDK's `rerank` (the v2 client at
`/v2/rerank`, the v1 client at `/v1/rerank`) through Tollgate (and Envoy) onto one rerank
model, whatever its provider's API: ordering, `top_n`, `return_documents`, billed units, and a
bad request refused with 400 in Cohere's error shape.

Environment:
  TOLLGATE_BASE_URL  gateway base URL without the API prefix, e.g. http://127.0.0.1:8080
  TOLLGATE_KEY       the Tollgate key
  RERANK_MODEL       the public rerank model
  BILLED             what `meta.billed_units` carries: `search_units` or `input_tokens`

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import sys
from typing import Callable

import cohere
from cohere.core.api_error import ApiError
from checks import env, expect, fail, run_plan

QUERY = "what is the capital of france"
DOCUMENTS = [
    "Berlin is the capital of Germany",
    "Paris is the capital of France",
    "Bananas are yellow",
    "The capital of Italy is Rome",
]


class _NeverRaised(Exception):
    """run_plan's status error type: the cohere SDK's errors go through its `ApiError`."""


def main() -> int:
    base = env("TOLLGATE_BASE_URL")
    key = env("TOLLGATE_KEY")
    model = env("RERANK_MODEL")
    billed = env("BILLED")
    v2 = cohere.ClientV2(api_key=key, base_url=base, max_retries=0, timeout=30.0)
    v1 = cohere.Client(api_key=key, base_url=base, max_retries=0, timeout=30.0)

    def rerank_v2() -> str:
        r = v2.rerank(model=model, query=QUERY, documents=DOCUMENTS, top_n=2)
        expect(len(r.results) == 2, f"{len(r.results)} results, not top_n=2")
        expect(r.results[0].index == 1, f"best index {r.results[0].index}, not 1 (Paris)")
        scores = [x.relevance_score for x in r.results]
        expect(scores == sorted(scores, reverse=True), f"not most relevant first: {scores}")
        expect(getattr(r.results[0], "document", None) is None, "a document without return_documents")
        units = r.meta.billed_units if r.meta else None
        value = getattr(units, billed, None) if units else None
        expect(value is not None and value > 0, f"meta.billed_units.{billed}: {units}")
        expect(bool(r.id), "no id")
        return f"{[x.index for x in r.results]}, {billed}={value}"

    def rerank_v1_documents() -> str:
        r = v1.rerank(model=model, query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True)
        expect(len(r.results) == 3, f"{len(r.results)} results, not top_n=3")
        doc = r.results[0].document
        expect(doc is not None and doc.text == DOCUMENTS[1], f"first document {doc}")
        return f"{[x.index for x in r.results]} with documents"

    def empty_documents_refused() -> str:
        try:
            v2.rerank(model=model, query=QUERY, documents=[])
        except ApiError as e:
            expect(e.status_code == 400, f"status {e.status_code}")
            expect(isinstance(e.body, dict) and "message" in e.body, f"body {e.body!r}")
            return f"400 {e.body['message']!r}"
        fail("empty documents were accepted")

    plan: list[tuple[str, Callable[[], str]]] = [
        ("ClientV2.rerank", rerank_v2),
        ("Client.rerank (v1) return_documents", rerank_v1_documents),
        ("empty documents", empty_documents_refused),
    ]
    return run_plan(plan, _NeverRaised, ApiError)


if __name__ == "__main__":
    sys.exit(main())
