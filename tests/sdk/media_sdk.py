#!/usr/bin/env python3
"""Real-client check of the media APIs: drives Tollgate through Envoy with the official `openai`
Python SDK's `images.generate`, `images.edit` (multipart with a small PNG),
`audio.transcriptions.create` and `audio.translations.create` (multipart with a small WAV made
here with the `wave` module), `audio.speech.create` (streamed bytes) and `moderations.create`.

Environment:
  TOLLGATE_BASE_URL         base URL including the API prefix, e.g. http://127.0.0.1:8080/v1
  TOLLGATE_KEY              the key sent as `Authorization: Bearer`
  TOLLGATE_IMAGE_MODEL      an image model (dall-e-3 at the provider)
  TOLLGATE_AUDIO_MODEL      a transcription model (whisper-1 at the provider)
  TOLLGATE_SPEECH_MODEL     a speech model (tts-1 at the provider)
  TOLLGATE_MODERATION_MODEL a moderation model
  TOLLGATE_SPEECH_OUT       a file the speech audio the SDK received is written to

Prints one line per check; at the first failure prints what went wrong and exits 1.
"""

from __future__ import annotations

import base64
import io
import struct
import sys
import wave
from typing import Callable

import openai
from checks import env, expect, run_plan
from openai import OpenAI

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
SPEECH_INPUT = "Hello from the Tollgate media check."


def wav_bytes(seconds: float = 1.5, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV of a quiet tone."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = int(seconds * rate)
        w.writeframes(b"".join(struct.pack("<h", (i % 64) * 16) for i in range(frames)))
    return buf.getvalue()


class Checks:
    def __init__(self) -> None:
        self.client = OpenAI(base_url=env("TOLLGATE_BASE_URL"), api_key=env("TOLLGATE_KEY"), max_retries=0)
        self.image_model = env("TOLLGATE_IMAGE_MODEL")
        self.audio_model = env("TOLLGATE_AUDIO_MODEL")
        self.speech_model = env("TOLLGATE_SPEECH_MODEL")
        self.moderation_model = env("TOLLGATE_MODERATION_MODEL")
        self.speech_out = env("TOLLGATE_SPEECH_OUT")
        self.wav = wav_bytes()

    def generate(self) -> str:
        r = self.client.images.generate(
            model=self.image_model, prompt="a lighthouse at dusk", n=2, size="1024x1024", quality="hd"
        )
        expect(r.data is not None and len(r.data) == 2, f"data: {r.data}")
        url = r.data[0].url or ""
        expect(url.startswith("https://"), f"url: {url}")
        return f"{len(r.data)} images, {url}"

    def generate_b64(self) -> str:
        r = self.client.images.generate(model=self.image_model, prompt="a cat", response_format="b64_json")
        expect(r.data is not None and len(r.data) == 1, f"data: {r.data}")
        raw = base64.b64decode(r.data[0].b64_json or "")
        expect(raw.startswith(b"\x89PNG"), f"not a PNG: {raw[:8]!r}")
        return f"{len(raw)} PNG bytes"

    def edit(self) -> str:
        r = self.client.images.edit(
            model=self.image_model, image=("cat.png", PNG, "image/png"), prompt="add a hat", n=1
        )
        expect(r.data is not None and len(r.data) == 1, f"data: {r.data}")
        return f"edited: {r.data[0].url}"

    def transcribe(self) -> str:
        r = self.client.audio.transcriptions.create(
            model=self.audio_model, file=("hello.wav", self.wav, "audio/wav")
        )
        expect("mock transcription" in r.text, f"text: {r.text}")
        return r.text

    def transcribe_verbose(self) -> str:
        r = self.client.audio.transcriptions.create(
            model=self.audio_model,
            file=("hello.wav", self.wav, "audio/wav"),
            response_format="verbose_json",
            language="en",
        )
        expect(abs(r.duration - 1.5) < 0.01, f"duration: {r.duration}")
        return f"duration {r.duration}s"

    def transcribe_text(self) -> str:
        r = self.client.audio.transcriptions.create(
            model=self.audio_model, file=("hello.wav", self.wav, "audio/wav"), response_format="text"
        )
        expect(isinstance(r, str) and "mock transcription" in r, f"text: {r!r}")
        return repr(r.strip())

    def translate(self) -> str:
        r = self.client.audio.translations.create(model=self.audio_model, file=("hola.wav", self.wav, "audio/wav"))
        expect("mock translation" in r.text, f"text: {r.text}")
        return r.text

    def speech(self) -> str:
        chunks = 0
        audio = b""
        with self.client.audio.speech.with_streaming_response.create(
            model=self.speech_model, voice="alloy", input=SPEECH_INPUT
        ) as r:
            expect(r.headers.get("content-type") == "audio/mpeg", f"content-type: {r.headers.get('content-type')}")
            for chunk in r.iter_bytes(4096):
                chunks += 1
                audio += chunk
        expect(len(audio) > 4096 * 3, f"{len(audio)} bytes")
        with open(self.speech_out, "wb") as f:
            f.write(audio)
        return f"{len(audio)} bytes in {chunks} chunks"

    def moderate(self) -> str:
        r = self.client.moderations.create(
            model=self.moderation_model, input=["I will kill the process", "good morning"]
        )
        expect(len(r.results) == 2, f"results: {r.results}")
        expect(r.results[0].flagged and not r.results[1].flagged, f"flags: {[x.flagged for x in r.results]}")
        expect(r.results[0].categories.violence, "violence not flagged")
        return f"flagged {[x.flagged for x in r.results]}"


def main() -> int:
    checks = Checks()
    plan: list[tuple[str, Callable[[], str]]] = [
        ("images.generate (url)", checks.generate),
        ("images.generate (b64_json)", checks.generate_b64),
        ("images.edit (multipart PNG)", checks.edit),
        ("audio.transcriptions.create (json)", checks.transcribe),
        ("audio.transcriptions.create (verbose_json)", checks.transcribe_verbose),
        ("audio.transcriptions.create (text)", checks.transcribe_text),
        ("audio.translations.create", checks.translate),
        ("audio.speech.create (streamed)", checks.speech),
        ("moderations.create", checks.moderate),
    ]
    print(f"openai SDK {openai.__version__} against {checks.client.base_url}")
    return run_plan(plan, openai.APIStatusError, openai.APIError)


if __name__ == "__main__":
    sys.exit(main())
