"""The provider kinds: ``KINDS`` (the one list of built-in kinds), ``provider_class`` (what a
``kind:`` value in models.yaml names) and ``build`` (one instance per configured provider).

A ``kind`` is either a name from ``KINDS`` or an import path ``package.module:ClassName``
naming a ``Provider`` subclass (so a new kind can live in a file of its own, outside this
package).  The config loader resolves every kind when it reads models.yaml, so a kind that
does not import is a ``FILE:LINE`` problem there, not a failure at the first request.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

import aiohttp

from ..catalog import Catalog
from ..metrics import Metrics
from ..outbound import ImageFetcher
from .anthropic import AnthropicProvider
from .base import Provider
from .demo import DemoProvider
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .rag import RagProvider
from .signatures import Signatures

KINDS: Mapping[str, type[Provider]] = MappingProxyType({
    cls.kind: cls for cls in (OpenAIProvider, AnthropicProvider, GeminiProvider, RagProvider,
                              DemoProvider)})


class KindError(ValueError):
    """A ``kind`` that names no Provider class; the message says why."""


def provider_class(kind: str) -> type[Provider]:
    """The Provider subclass a ``kind`` value names, or a ``KindError``."""
    cls = KINDS.get(kind)
    if cls is not None:
        return cls
    module_name, colon, attr = kind.partition(":")
    if not colon or not module_name or not attr:
        raise KindError(f"{kind!r} is not one of {', '.join(KINDS)} (nor an import path "
                        f"package.module:ClassName naming a Provider subclass)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001  (whatever the operator's module raises on import)
        raise KindError(f"{kind!r}: cannot import {module_name!r} "
                        f"({type(exc).__name__}: {exc})") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise KindError(f"{kind!r}: module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise KindError(f"{kind!r} is not a subclass of apiarium.providers.base.Provider")
    return cls


def build(catalog: Catalog, session: aiohttp.ClientSession, metrics: Metrics | None = None,
          fetcher: ImageFetcher | None = None,
          signatures: Signatures | None = None) -> dict[str, Provider]:
    """One Provider per provider of the catalog (kinds were checked when it was loaded);
    ``fetcher`` fetches user-given URLs for them; ``signatures`` is the gateway's store of
    what upstreams gave with tool calls (one for all of them, kept across reloads)."""
    signatures = signatures if signatures is not None else Signatures()
    return {name: provider_class(spec.kind)(spec, session, metrics, fetcher, signatures)
            for name, spec in catalog.providers.items()}
