"""Gemini embeddings: OpenAI ``/v1/embeddings`` over ``batchEmbedContents``.

``POST {base_url}/v1beta/models/{upstream}:batchEmbedContents`` with
``{"requests": [{"model": "models/{upstream}", "content": {"parts": [{"text": …}]},
"outputDimensionality": N}]}`` answers ``{"embeddings": [{"values": […]}]}`` in request order
(next-apis §2d).  Google takes at most ``BATCH`` (100) requests per call, so the inputs go in
chunks of 100, at most ``CONCURRENT`` (4) calls at once; the vectors come back in input order.
A failed chunk fails the request (the calls still under way are cancelled).

``dimensions`` → ``outputDimensionality``.  Gemini normalises only its full-size vectors; a
shorter one (Matryoshka truncation) is L2-normalised here, so that cosine and dot products
work as they do on OpenAI's.  Text only: token arrays are refused (400 naming ``input``).
Usage: the Developer API gives no token counts for embeddings, so the prompt tokens are the
estimate of ``embedding.estimate_tokens`` (4 bytes of UTF-8 a token).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .. import embedding
from ..catalog import ModelSpec
from ..embedding import EmbeddingRequest
from ..errors import UpstreamError

if TYPE_CHECKING:
    from .gemini import GeminiProvider

BATCH = 100
CONCURRENT = 4


async def embed(provider: GeminiProvider, model: ModelSpec,
                req: EmbeddingRequest) -> dict[str, Any]:
    texts = req.texts(model.alias)
    provider.require_configured()
    url = provider.url(f"models/{model.upstream}:batchEmbedContents")
    name = f"models/{model.upstream}"
    extra = {"outputDimensionality": req.dimensions} if req.dimensions else {}
    gate = asyncio.Semaphore(CONCURRENT)

    async def chunk(part: tuple[str, ...]) -> list[list[float]]:
        body = {"requests": [{"model": name, "content": {"parts": [{"text": t}]}, **extra}
                             for t in part]}
        async with gate:
            data = await provider.call_json("POST", url, json=body)
        return _vectors(provider, data, len(part), req.dimensions)

    calls = [asyncio.ensure_future(chunk(texts[i:i + BATCH]))
             for i in range(0, len(texts), BATCH)]
    try:
        parts = await asyncio.gather(*calls)
    finally:                    # one chunk failed (or the client left): stop the others
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    vectors = [v for part in parts for v in part]
    return embedding.answer(model.alias, vectors, req.encoding_format, req.estimate())


def _vectors(provider: GeminiProvider, data: dict[str, Any], count: int,
             dimensions: int | None) -> list[list[float]]:
    """The ``values`` of a batchEmbedContents answer, checked; truncated ones normalised."""
    embeddings = data.get("embeddings")
    embeddings = embeddings if isinstance(embeddings, list) else []
    out: list[list[float]] = []
    for e in embeddings:
        v = e.get("values") if isinstance(e, dict) else None
        if not (isinstance(v, list) and v and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            break
        out.append(embedding.normalized(v[:dimensions]) if dimensions else v)
    if len(out) != count or len(embeddings) != count:
        raise UpstreamError(f"The upstream provider `{provider.spec.name}` answered "
                            f"batchEmbedContents without one vector of numbers per input.")
    return out
