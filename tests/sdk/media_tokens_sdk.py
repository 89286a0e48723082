#!/usr/bin/env python3
"""Real-client check of the token-billed media models: the official `openai` SDK's
`images.generate` and `images.edit` with `gpt-image-1`, `audio.transcriptions.create` with
`gpt-4o-transcribe` on an MP3 made here (silent MPEG-1 layer III frames: only their headers
matter), and `audio.speech.create` with `gpt-4o-mini-tts` (streamed). The `usage` each answer
carried, as the SDK parsed it, is written to a JSON file so the test can price it itself.

Environment:
  TOLLGATE_BASE_URL     base URL including the API prefix, e.g. http://127.0.0.1:8080/v1
  TOLLGATE_KEY          the key sent as `Authorization: Bearer`
  TOLLGATE_IMAGE_MODEL  a public model served by gpt-image-1
  TOLLGATE_AUDIO_MODEL  a public model served by gpt-4o-transcribe
  TOLLGATE_SPEECH_MODEL a public model served by gpt-4o-mini-tts
  TOLLGATE_USAGE_OUT    the JSON file the usages are written to

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any, Callable

import openai
from checks import env, expect, run_plan
from openai import OpenAI

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
SPEECH_INPUT = "Token-billed speech from the Tollgate media check."


def mp3_silence(frames: int) -> bytes:
    """`frames` MPEG-1 layer III frames, 128 kbit/s, 48 kHz mono: 384 bytes and 24 ms each."""
    frame = bytes([0xFF, 0xFB, 0x94, 0xC0]) + bytes(380)
    return frame * frames


class Checks:
    def __init__(self) -> None:
        self.client = OpenAI(base_url=env("TOLLGATE_BASE_URL"), api_key=env("TOLLGATE_KEY"), max_retries=0)
        self.image_model = env("TOLLGATE_IMAGE_MODEL")
        self.audio_model = env("TOLLGATE_AUDIO_MODEL")
        self.speech_model = env("TOLLGATE_SPEECH_MODEL")
        self.out = env("TOLLGATE_USAGE_OUT")
        self.usage: dict[str, Any] = {}

    def generate(self) -> str:
        r = self.client.images.generate(
            model=self.image_model, prompt="a lighthouse at dusk", size="1024x1536", quality="low"
        )
        expect(r.data is not None and len(r.data) == 1, f"data: {r.data}")
        expect(r.usage is not None, "no usage")
        self.usage["image_generations"] = r.usage.model_dump()
        return f"usage {self.usage['image_generations']}"

    def edit(self) -> str:
        r = self.client.images.edit(
            model=self.image_model, image=("cat.png", PNG, "image/png"), prompt="add a hat", quality="medium"
        )
        expect(r.data is not None and len(r.data) == 1, f"data: {r.data}")
        expect(r.usage is not None, "no usage")
        self.usage["image_edits"] = r.usage.model_dump()
        return f"usage {self.usage['image_edits']}"

    def transcribe(self) -> str:
        r = self.client.audio.transcriptions.create(
            model=self.audio_model, file=("hello.mp3", mp3_silence(125), "audio/mpeg"), prompt="Tollgate"
        )
        expect("mock transcription" in r.text, f"text: {r.text}")
        expect(r.usage is not None and r.usage.type == "tokens", f"usage: {r.usage}")
        self.usage["audio_transcriptions"] = r.usage.model_dump()
        return f"usage {self.usage['audio_transcriptions']}"

    def speech(self) -> str:
        audio = b""
        with self.client.audio.speech.with_streaming_response.create(
            model=self.speech_model, voice="alloy", input=SPEECH_INPUT
        ) as r:
            expect(r.headers.get("content-type") == "audio/mpeg", f"content-type: {r.headers.get('content-type')}")
            for chunk in r.iter_bytes(4096):
                audio += chunk
        expect(audio[:2] == b"\xff\xfb", f"not MPEG frames: {audio[:4]!r}")
        self.usage["audio_speech"] = {"bytes": len(audio), "characters": len(SPEECH_INPUT)}
        with open(self.out, "w", encoding="utf-8") as f:
            json.dump(self.usage, f)
        return f"{len(audio)} bytes"


def main() -> int:
    checks = Checks()
    plan: list[tuple[str, Callable[[], str]]] = [
        ("images.generate gpt-image-1 (usage)", checks.generate),
        ("images.edit gpt-image-1 (usage)", checks.edit),
        ("audio.transcriptions.create gpt-4o-transcribe on an MP3 (usage)", checks.transcribe),
        ("audio.speech.create gpt-4o-mini-tts (streamed)", checks.speech),
    ]
    print(f"openai SDK {openai.__version__} against {checks.client.base_url}")
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
