"""One Provider class per upstream ``kind``; ``build`` makes one instance per configured provider."""
from __future__ import annotations

import aiohttp

from ..catalog import Catalog
from .base import Provider
from .openai import OpenAIProvider

KINDS: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
}


def build(catalog: Catalog, session: aiohttp.ClientSession) -> dict[str, Provider]:
    return {name: KINDS.get(spec.kind, Provider)(spec, session)
            for name, spec in catalog.providers.items()}
