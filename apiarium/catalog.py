"""The model catalog: which alias is served by which provider, under which upstream id.

Immutable once built (a reload builds a new one), so handlers can hold a reference
for the length of a request while a SIGHUP swaps in the next.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from .errors import InvalidRequest, NotFound
from .modeltypes import MODEL_TYPES


@dataclass(frozen=True)
class ProviderSpec:
    """One provider of models.yaml.  ``kind`` is as written there (a name from
    ``providers.KINDS`` or a ``package.module:ClassName`` path); ``owned_by`` is what that
    kind's class says /v1/models should show (filled in when the config is loaded)."""
    name: str
    kind: str
    base_url: str
    api_key: str
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    poll_interval_s: float = 10.0
    breaker_failures: int = 3          # consecutive failures that open the circuit (0: never)
    breaker_cooldown_s: float = 30.0   # how long an open circuit skips the provider
    auth: str = "key"                  # "none": no credential is sent, no api_key needed
    responses: bool = True             # openai kind: /v1/responses goes to its own /responses
    frame_delay_ms: float = 20.0       # demo kind: the pause between two stream frames
    owned_by: str = ""

    @property
    def configured(self) -> bool:
        """Whether it can answer: a ``base_url`` and a key (or ``auth: none``); the ``demo``
        kind calls nothing, so it always can."""
        return self.kind == "demo" or bool(self.base_url and (self.api_key or
                                                             self.auth == "none"))


@dataclass(frozen=True)
class Credits:
    """What one request costs; the defaults depend on the model's type (``for_model``).

    Tokens are priced per 1k: ``input`` (uncached input), ``cached_input`` (read from the
    provider's prompt cache), ``cache_write`` (written to it) and ``output`` (reasoning
    included).  ``per_1k_tokens`` is the older single price: what ``input`` and ``output``
    cost when they are not given; ``cached_input`` and ``cache_write`` cost what ``input``
    does unless given.  The four rates are worked out once per model (a reload makes new
    Credits): they are read on every metered request."""
    request: float = 0.0
    per_1k_tokens: float = 0.0
    image: float = 0.0
    video_second: float = 0.0
    resolution: Mapping[str, float] = field(default_factory=dict)   # video multipliers
    input: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None
    output: float | None = None

    @cached_property
    def input_rate(self) -> float:
        return self.per_1k_tokens if self.input is None else self.input

    @cached_property
    def cached_input_rate(self) -> float:
        return self.input_rate if self.cached_input is None else self.cached_input

    @cached_property
    def cache_write_rate(self) -> float:
        return self.input_rate if self.cache_write is None else self.cache_write

    @cached_property
    def output_rate(self) -> float:
        return self.per_1k_tokens if self.output is None else self.output

    @classmethod
    def for_model(cls, alias: str, type_: str, given: Mapping | None = None) -> Credits:
        """Type defaults (an alias ending in -pro costs double), overridden by ``given``."""
        factor = 2.0 if alias.endswith("-pro") else 1.0
        base = MODEL_TYPES[type_].credits
        values: dict[str, Any] = {k: (v * factor if isinstance(v, float) else v)
                                  for k, v in base.items()}
        values.update({k: v for k, v in (given or {}).items() if v is not None and v != {}})
        return cls(**values)


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    provider: ProviderSpec
    upstream: str
    type: str = "chat"
    created: int = 0
    credits: Credits = field(default_factory=Credits)
    fallbacks: tuple[str, ...] = ()
    max_output_tokens: int = 0         # the most output tokens a request may ask for (0: any)
    # reasoning control (providers/reasoning.py): "level", "budget", "none"; "" = by family
    thinking: str = ""
    cache: str = ""                    # "auto": the gateway adds cache breakpoints (Anthropic)
    completions: str = "chat"          # "native": /v1/completions goes to the upstream's own

    @property
    def owned_by(self) -> str:
        return self.provider.owned_by or self.provider.name


class Catalog:
    def __init__(self, providers: Mapping[str, ProviderSpec], models: Mapping[str, ModelSpec]):
        self.providers = MappingProxyType(dict(providers))
        self.models = MappingProxyType(dict(models))

    def __len__(self) -> int:
        return len(self.models)

    def resolve(self, alias: object) -> ModelSpec:
        if not isinstance(alias, str) or not alias:
            raise InvalidRequest("`model` must be a non-empty string naming a model; "
                                 "GET /v1/models lists them.", param="model", code="invalid_model")
        spec = self.models.get(alias)
        if spec is None:
            shown = alias[:100] + ("…" if len(alias) > 100 else "")
            raise NotFound(f"The model `{shown}` does not exist. GET /v1/models lists the "
                           f"{len(self.models)} models this gateway serves.",
                           param="model", code="model_not_found")
        return spec

    def resolve_for(self, alias: object, endpoint: str) -> ModelSpec:
        """Resolve, and refuse a model whose type ``endpoint`` does not serve (the
        ``endpoints`` of its row in ``MODEL_TYPES``)."""
        spec = self.resolve(alias)
        if endpoint not in MODEL_TYPES[spec.type].endpoints:
            hint = MODEL_TYPES[spec.type].home
            raise InvalidRequest(f"`{spec.alias}` is a {spec.type} model and cannot be used with "
                                 f"{endpoint}; use {hint} instead.",
                                 param="model", code="model_type_mismatch")
        return spec

    def chain(self, model: ModelSpec) -> list[ModelSpec]:
        """The model, then its fallbacks, in order."""
        return [model, *(self.models[a] for a in model.fallbacks if a in self.models)]

    def listing(self) -> list[dict]:
        return [{"id": m.alias, "object": "model", "created": m.created,
                 "owned_by": m.owned_by, "type": m.type} for m in self.models.values()]
