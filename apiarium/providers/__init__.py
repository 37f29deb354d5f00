"""One Provider class per upstream ``kind``; ``build`` makes one instance per configured provider."""
from __future__ import annotations

import aiohttp

from ..catalog import Catalog
from ..metrics import Metrics
from .anthropic import AnthropicProvider
from .base import Provider
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .rag import RagProvider

KINDS: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "rag": RagProvider,
}


def build(catalog: Catalog, session: aiohttp.ClientSession,
          metrics: Metrics | None = None) -> dict[str, Provider]:
    return {name: KINDS.get(spec.kind, Provider)(spec, session, metrics)
            for name, spec in catalog.providers.items()}
