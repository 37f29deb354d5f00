"""Embedding requests and answers: parsing and validation (400 naming the field), the
OpenAI answer shape, vector encoding (``float`` lists or base64 of little-endian float32) and
the token estimate used where an upstream gives no counts.

The request (OpenAI ``POST /v1/embeddings``): ``input`` a string, a list of strings, one
token array (a list of ints) or a list of token arrays; ``model``; ``dimensions``;
``encoding_format`` ``float`` (the default) or ``base64``; ``user``.  At most
``MAX_INPUTS`` inputs (OpenAI's own limit, for every caller).  ``floats`` is the size of the
answer in numbers, inputs x dimensions, a request without ``dimensions`` counted at
``DEFAULT_DIMENSIONS`` (the native size of the largest common models, text-embedding-3-large
and gemini-embedding-001): ``services.costs`` caps it.

Token estimate: an upstream that does not count (Gemini's Developer API returns no token
counts for embeddings) is booked at one token per ``CHARS_PER_TOKEN`` (4) bytes of UTF-8
text, rounded up, at least one per input; a token array counts its own length.
"""
from __future__ import annotations

import base64
import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest, echo

MAX_INPUTS = 2048
DEFAULT_DIMENSIONS = 3072
MAX_TOKEN_ID = 2**31 - 1
CHARS_PER_TOKEN = 4
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingRequest:
    """One validated request.  ``inputs`` holds strings, or token arrays when ``tokens``;
    ``body`` / ``raw`` are the client's JSON (an OpenAI-compatible upstream takes them as
    they are); ``size`` is the input's size in bytes (a token counted as 4 bytes)."""
    inputs: tuple[str, ...] | tuple[tuple[int, ...], ...]
    tokens: bool
    dimensions: int | None
    encoding_format: str
    user: str | None
    body: dict[str, Any]
    raw: bytes | None
    size: int

    def texts(self, alias: str) -> tuple[str, ...]:
        """The inputs as strings, or a 400 naming ``input`` (for an upstream that takes
        text only)."""
        if self.tokens:
            raise InvalidRequest(f"`input`: `{alias}` takes text only on this gateway; send "
                                 f"a string or a list of strings, not token arrays.",
                                 param="input")
        return tuple(t for t in self.inputs if isinstance(t, str))

    @property
    def floats(self) -> int:
        """How many numbers the answer holds (``DEFAULT_DIMENSIONS`` a vector if the request
        does not say)."""
        return len(self.inputs) * (self.dimensions or DEFAULT_DIMENSIONS)

    def estimate(self) -> int:
        """Prompt tokens by the estimate above."""
        return sum(len(t) if isinstance(t, tuple) else estimate_tokens(t) for t in self.inputs)


def estimate_tokens(text: str) -> int:
    return max(1, -(-len(text.encode("utf-8", "surrogatepass")) // CHARS_PER_TOKEN))


def _token_array(value: Any, where: str) -> tuple[int, ...] | None:
    """``value`` as a token array, None if it is no list of ints; a 400 if it is one, badly."""
    if not isinstance(value, list) or not value or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in value):
        return None
    if any(not 0 <= t <= MAX_TOKEN_ID for t in value):
        raise InvalidRequest(f"`{where}`: token ids must be whole numbers from 0 to "
                             f"{MAX_TOKEN_ID}.", param="input")
    return tuple(value)


def _inputs(value: Any) -> tuple[tuple[Any, ...], bool]:
    shape = ("`input` must be a non-empty string, a list of non-empty strings, a token "
             "array (a list of token ids) or a list of token arrays")
    if value is None:
        raise InvalidRequest(f"{shape}; it is missing.", param="input")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest(f"{shape}; it is an empty string.", param="input")
        return (value,), False
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{shape}.", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"`input` holds {len(value)} items; at most {MAX_INPUTS} "
                             f"inputs fit in one request. Split it into several.",
                             param="input")
    single = _token_array(value, "input")
    if single is not None:
        return (single,), True
    if all(isinstance(v, str) for v in value):
        for i, v in enumerate(value):
            if not v:
                raise InvalidRequest(f"{shape}; `input[{i}]` is an empty string.",
                                     param="input")
        return tuple(value), False
    arrays = []
    for i, v in enumerate(value):
        arr = _token_array(v, f"input[{i}]")
        if arr is None:
            raise InvalidRequest(f"{shape}; `input[{i}]` is none of these (and a list must "
                                 f"not mix strings and token arrays).", param="input")
        arrays.append(arr)
    return tuple(arrays), True


def embedding_request(body: dict[str, Any], raw: bytes | None = None) -> EmbeddingRequest:
    """The request in ``body``, checked (a 400 naming the first bad field)."""
    inputs, tokens = _inputs(body.get("input"))
    dims = body.get("dimensions")
    if isinstance(dims, float) and dims.is_integer():
        dims = int(dims)
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise InvalidRequest(f"`dimensions` must be a positive whole number (got {echo(dims)}).",
                             param="dimensions")
    fmt = body.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODINGS:
        raise InvalidRequest(f"`encoding_format` must be `float` or `base64` (got {echo(fmt)}).",
                             param="encoding_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("`user` must be a string.", param="user")
    if tokens:
        size = sum(len(t) for t in inputs) * CHARS_PER_TOKEN
    else:
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in inputs)
    return EmbeddingRequest(inputs, tokens, dims, fmt, user, body, raw, size)


# ---------------------------------------------------------------------- vectors and answers

def normalized(values: Sequence[float]) -> list[float]:
    """``values`` scaled to length 1 (L2), as a truncated MRL vector must be to be used with
    cosine or dot-product similarity; a zero vector stays as it is."""
    norm = math.hypot(*values)
    if norm == 0.0 or abs(norm - 1.0) < 1e-6:
        return list(values)
    return [v / norm for v in values]


def encode(values: Sequence[float], encoding_format: str) -> list[float] | str:
    """One vector as the client asked: a list of floats, or base64 of little-endian float32
    (what the openai SDK decodes)."""
    if encoding_format != "base64":
        return list(values)
    packed = array("f", values)
    if sys.byteorder != "little":                    # pragma: no cover
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def decode(data: str) -> list[float]:
    """A base64 float32 (little-endian) vector as floats."""
    packed = array("f")
    packed.frombytes(base64.b64decode(data, validate=True))
    if sys.byteorder != "little":                    # pragma: no cover
        packed.byteswap()
    return packed.tolist()


def usage(prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}


def answer(alias: str, vectors: Sequence[Sequence[float]], encoding_format: str,
           prompt_tokens: int) -> dict[str, Any]:
    """The OpenAI ``list`` answer, vectors in input order."""
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v, encoding_format)}
                     for i, v in enumerate(vectors)],
            "model": alias, "usage": usage(prompt_tokens)}
