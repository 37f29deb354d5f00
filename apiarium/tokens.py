"""Token counts, one record for every vendor: ``TokenUsage``.

Each vendor does its own arithmetic, and the gateway's one record undoes it:

    vendor      its input count                               what is cached / written
    OpenAI      prompt_tokens INCLUDES                        prompt_tokens_details.cached_tokens
                                                              (.cache_write_tokens on servers
                                                              that report it)
    Anthropic   input_tokens EXCLUDES                         cache_read_input_tokens and
                                                              cache_creation_input_tokens
    Gemini      promptTokenCount (+ toolUsePromptTokenCount)  cachedContentTokenCount
                INCLUDES

    output: OpenAI completion_tokens (reasoning_tokens among them); Anthropic output_tokens
    (output_tokens_details.thinking_tokens among them); Gemini candidatesTokenCount +
    thoughtsTokenCount (reported apart, added here).

The record holds ``input`` (uncached input only, never negative), ``cache_read``,
``cache_write``, ``output`` (every token written, reasoning included) and ``reasoning`` (how
many of those were thinking).  ``chat()`` gives it back in the OpenAI chat fields a client
reads: ``prompt_tokens`` = all three inputs, ``prompt_tokens_details.cached_tokens`` and
``.cache_write_tokens``, ``completion_tokens``, ``completion_tokens_details.reasoning_tokens``.
The chat usage object is what providers hand the services, and ``from_openai`` reads it back.
"""
from __future__ import annotations

from typing import Any, NamedTuple


def _n(value: Any) -> int:
    """A count as an upstream sent it: a non-negative int, anything else 0 (a bool, a string,
    a negative or non-finite number).  The usual JSON integer is decided first: this runs a
    few times on every request."""
    if type(value) is int:
        return value if value > 0 else 0
    if isinstance(value, float) and 0 < value < 1e18:
        return int(value)
    return 0


def _at_most(value: Any, most: int) -> int:
    """``_n(value)``, but no more than ``most`` (a part of a count cannot exceed it)."""
    n = _n(value)
    return n if n < most else most


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


class TokenUsage(NamedTuple):
    """Immutable, and a tuple: made on every request's path, where a frozen dataclass's
    field-by-field ``__init__`` cost more than all the arithmetic (callgrind: 9.5k vs ~1k
    instructions per construction)."""
    input: int = 0              # input tokens read uncached
    cache_read: int = 0         # input tokens read from the provider's prompt cache
    cache_write: int = 0        # input tokens written to it (Anthropic bills these apart)
    output: int = 0             # every output token, reasoning included
    reasoning: int = 0          # the thinking among them

    @property
    def prompt(self) -> int:
        """Every input token, however it was read (OpenAI's ``prompt_tokens``)."""
        return self.input + self.cache_read + self.cache_write

    # ------------------------------------------------------------------ from each vendor
    @classmethod
    def from_openai(cls, usage: Any) -> TokenUsage:
        """OpenAI chat ``usage`` (also what every provider of this gateway answers with)."""
        u = _d(usage)
        prompt, out = _n(u.get("prompt_tokens")), _n(u.get("completion_tokens"))
        read = write = reasoning = 0
        if details := _d(u.get("prompt_tokens_details")):
            read = _at_most(details.get("cached_tokens"), prompt)
            write = _at_most(details.get("cache_write_tokens"), prompt - read)
        if details := _d(u.get("completion_tokens_details")):
            reasoning = _at_most(details.get("reasoning_tokens"), out)
        return cls(prompt - read - write, read, write, out, reasoning)

    @classmethod
    def from_responses(cls, usage: Any) -> TokenUsage:
        """OpenAI Responses ``usage``: ``input_tokens`` (``input_tokens_details.cached_tokens``
        of them from the cache), ``output_tokens`` (``output_tokens_details.reasoning_tokens``
        of them thinking)."""
        u = _d(usage)
        return cls.from_openai({"prompt_tokens": u.get("input_tokens"),
                                "prompt_tokens_details": u.get("input_tokens_details"),
                                "completion_tokens": u.get("output_tokens"),
                                "completion_tokens_details": u.get("output_tokens_details")})

    @classmethod
    def from_anthropic(cls, usage: Any) -> TokenUsage:
        """Anthropic ``usage`` (a Message's, or a stream's merged message_start and
        message_delta counts)."""
        u = _d(usage)
        out = _n(u.get("output_tokens"))
        thinking = _n(_d(u.get("output_tokens_details")).get("thinking_tokens"))
        return cls(_n(u.get("input_tokens")), _n(u.get("cache_read_input_tokens")),
                   _n(u.get("cache_creation_input_tokens")), out, min(out, thinking))

    @classmethod
    def from_gemini(cls, meta: Any) -> TokenUsage:
        """Gemini ``usageMetadata``."""
        m = _d(meta)
        prompt = _n(m.get("promptTokenCount")) + _n(m.get("toolUsePromptTokenCount"))
        read = min(prompt, _n(m.get("cachedContentTokenCount")))
        thoughts = _n(m.get("thoughtsTokenCount"))
        return cls(prompt - read, read, 0, _n(m.get("candidatesTokenCount")) + thoughts,
                   thoughts)

    # ------------------------------------------------------------------ to the client
    def chat(self) -> dict:
        """The OpenAI chat ``usage`` object."""
        prompt = self.prompt
        details: dict[str, int] = {"cached_tokens": self.cache_read}
        if self.cache_write:
            details["cache_write_tokens"] = self.cache_write
        return {"prompt_tokens": prompt, "completion_tokens": self.output,
                "total_tokens": prompt + self.output, "prompt_tokens_details": details,
                "completion_tokens_details": {"reasoning_tokens": self.reasoning}}
