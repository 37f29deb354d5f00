"""Fake upstream servers (real HTTP on 127.0.0.1, own loop in a daemon thread).

    with FakeOpenAI() as oa:          # or oa = FakeOpenAI().start(); ...; oa.stop()
        models_yaml_base_url = oa.base_url
        ...
        assert oa.last().json["model"] == "gpt-5"
"""
from .anthropic import FakeAnthropic, anthropic_error
from .base import FakeUpstream, Recorded, split_pieces, words
from .gemini import FakeGemini, google_error, make_mp4
from .openai import FakeOpenAI, make_png, openai_error
from .rag import FakeRag

__all__ = [
    "FakeAnthropic",
    "FakeGemini",
    "FakeOpenAI",
    "FakeRag",
    "FakeUpstream",
    "Recorded",
    "anthropic_error",
    "google_error",
    "make_mp4",
    "make_png",
    "openai_error",
    "split_pieces",
    "words",
]
