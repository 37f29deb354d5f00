"""What each model of the catalog can do right now: ``GET /v1/models`` and the homepage show it.

Every model object carries three fields beside OpenAI's (the SDKs keep unknown fields and
ignore them):

    status          ready | not_configured | demo | cooling_down
    status_detail   what to do or what it means, one line: "set OPENAI_API_KEY"
                    (null when ready)
    available_at    cooling_down: when its provider is tried again (Unix seconds); else null

``not_configured``: the model's provider has no base_url or key (the detail names the
environment variable that would set it, else the models.yaml key); ``demo``: its provider
is of kind ``demo`` (canned answers); ``cooling_down``: its provider's circuit breaker for it
is open, or the provider's rate limit cools it.  The status is the model's own provider's: a
fallback may still answer for it.

All but ``cooling_down`` change only with the catalog, so ``Live`` builds the list once;
a request re-builds it only while some breaker is open (``models_body``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..catalog import Catalog, ModelSpec
from .fallback import BreakerKey, Breakers

READY, NOT_CONFIGURED, DEMO, COOLING_DOWN = "ready", "not_configured", "demo", "cooling_down"
DEMO_DETAIL = "answers come from the built-in demo provider, not from a real model"


def cooling_until(breakers: Breakers, model: ModelSpec) -> float | None:
    """When (wall clock) ``model`` is tried again, or None if it is now."""
    left = breakers.skipped().get(BreakerKey.of(model))
    return time.time() + left if left else None


def cooling(catalog: Catalog, breakers: Breakers) -> dict[str, float]:
    """The models skipped now (an open breaker or an upstream's rate-limit cool-down of their
    provider and upstream model): alias -> when (wall clock) they are tried again.  The one
    place that reads breaker state; it runs on every ``GET /v1/models``, and looks at the
    models only while something is skipped."""
    hot = breakers.skipped()
    if not hot:
        return {}
    now = time.time()
    return {alias: now + hot[key] for alias, m in catalog.models.items()
            if (key := BreakerKey.of(m)) in hot}


def status_fields(model: ModelSpec, until: float | None = None) -> dict[str, Any]:
    """The three fields of one model; ``until``: when it is tried again (``cooling``)."""
    if model.provider.kind == "demo":
        return {"status": DEMO, "status_detail": DEMO_DETAIL, "available_at": None}
    hint = model.provider.setup_hint()
    if hint:
        return {"status": NOT_CONFIGURED, "status_detail": hint, "available_at": None}
    if until is not None:
        at = math.ceil(until)
        return {"status": COOLING_DOWN, "available_at": at,
                "status_detail": f"its provider `{model.provider.name}` is failing (or rate "
                                 f"limiting it) and it is skipped until "
                                 f"{time.strftime('%H:%M:%S', time.gmtime(at))} UTC"}
    return {"status": READY, "status_detail": None, "available_at": None}


def model_object(model: ModelSpec, until: float | None = None) -> dict[str, Any]:
    """One model as ``GET /v1/models`` lists it: OpenAI's fields, ``type``, the status."""
    return {"id": model.alias, "object": "model", "created": model.created,
            "owned_by": model.owned_by, "type": model.type, **status_fields(model, until)}


def listing(catalog: Catalog, cooling_now: Mapping[str, float] | None = None) -> list[dict]:
    """Every model, in catalog order; ``cooling_now``: what ``cooling`` says (none: no
    breaker open)."""
    hot = cooling_now or {}
    return [model_object(m, hot.get(m.alias)) for m in catalog.models.values()]


def list_body(catalog: Catalog, cooling_now: Mapping[str, float] | None = None) -> bytes:
    return orjson.dumps({"object": "list", "data": listing(catalog, cooling_now)})


def models_body(catalog: Catalog, built: bytes, breakers: Breakers) -> bytes:
    """``GET /v1/models``: ``built`` (the list with no breaker open, made once per catalog)
    unless a breaker is open now."""
    hot = cooling(catalog, breakers)
    return list_body(catalog, hot) if hot else built
