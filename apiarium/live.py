"""The services one running gateway holds, handed to every handler.

Built by ``app.py``; a configuration reload replaces ``config``, ``guard`` and ``providers``
together by swapping in a new ``Live`` (one attribute write, so a request sees either the
old world or the new one, never half of each).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from .catalog import Catalog, ModelSpec, ProviderSpec
from .config import Config, Settings
from .media import MediaStore
from .metrics import Metrics
from .netguard import NetGuard
from .providers.base import Provider
from .ratelimit import TokenBuckets
from .resilience import Breaker
from .services.keys import KeyService
from .usage import UsageLedger


@dataclass(frozen=True)
class Live:
    """Everything that a reload replaces at once."""
    config: Config
    guard: NetGuard
    providers: dict[str, Provider]
    media: MediaStore
    models_body: bytes

    @classmethod
    def make(cls, config: Config, guard: NetGuard, providers: dict[str, Provider]) -> "Live":
        body = orjson.dumps({"object": "list", "data": config.catalog.listing()})
        s = config.settings
        return cls(config, guard, providers, MediaStore(s.media_dir, s.media_ttl_hours), body)


@dataclass
class Services:
    live: Live
    keys: KeyService
    usage: UsageLedger
    metrics: Metrics
    buckets: TokenBuckets = field(default_factory=TokenBuckets)
    started: float = field(default_factory=time.time)
    inflight: set = field(default_factory=set)      # handlers not yet finished
    stopping: bool = False                          # SIGTERM: finishing what is in flight
    breakers: dict = field(default_factory=dict)    # provider name -> Breaker (kept on reload)

    @property
    def settings(self) -> Settings:
        return self.live.config.settings

    @property
    def catalog(self) -> Catalog:
        return self.live.config.catalog

    def provider(self, model: ModelSpec) -> Provider:
        return self.live.providers[model.provider.name]

    def breaker(self, spec: ProviderSpec) -> Breaker:
        b = self.breakers.get(spec.name)
        if b is None or (b.failures, b.cooldown_s) != (spec.breaker_failures,
                                                         spec.breaker_cooldown_s):
            b = self.breakers[spec.name] = Breaker(spec.breaker_failures,
                                                   spec.breaker_cooldown_s)
        return b
