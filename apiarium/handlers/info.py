"""GET /health, GET /v1/models, GET /v1/keys/me, and the JSON 404 for every unknown path."""
from __future__ import annotations

import os
import time

from .. import __version__
from ..errors import NotFound, echo
from ..services import status
from .admission import FREE, ISSUANCE, METHODS, NO_BODY, Admission, admits, lookup, public
from .base import ApiHandler, BaseHandler


@admits(GET=public("the answer from memory"))
class HealthHandler(BaseHandler):
    def get(self) -> None:
        svc = self.svc
        worker = svc.worker
        self.write_json({"status": "ok", "version": __version__,
                         "uptime_s": round(time.time() - svc.started, 1),
                         "models": len(svc.catalog), "keys": len(svc.keys),
                         "backends": {
                             "database": {"engine": svc.database_engine,
                                          "state": "ok" if svc.database_ok else "down"},
                             "limiter": {"engine": "memory", "state": "ok"}
                             if svc.shared is None else
                             {"engine": "redis", "state": svc.shared.state}},
                         "workers": {"count": worker.count if worker else 1,
                                     "pid": os.getpid()}})


@admits(GET=lookup("the catalog from memory"))
class ModelsHandler(ApiHandler):
    """OpenAI's list shape; Anthropic's (``type: model``, ``display_name``, paging fields)
    for a client that sends ``anthropic-version`` or pages with ``?limit=``."""

    def get(self) -> None:
        svc = self.svc
        live = svc.live
        catalog = live.config.catalog
        if self.request.headers.get("anthropic-version") or self.get_argument("limit", ""):
            models = status.listing(catalog, status.cooling(catalog, svc.breakers))
            self.write_json(anthropic_list(models, self.get_argument("limit", "")))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(status.models_body(catalog, live.models_body, svc.breakers))


def anthropic_list(models: list[dict], limit: str) -> dict:
    """The catalog as Anthropic's ``GET /v1/models`` answers (all of it: one page), with the
    status fields of ``services.status``."""
    n = int(limit) if limit.isdigit() and int(limit) > 0 else len(models)
    data = [{"type": "model", "id": m["id"], "display_name": m["id"], "lifecycle": "active",
             "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m["created"])),
             "status": m["status"], "status_detail": m["status_detail"],
             "available_at": m["available_at"]}
            for m in models[:n]]
    return {"data": data, "has_more": len(models) > n,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


@admits(GET=lookup("one model from memory"))
class ModelHandler(ApiHandler):
    def get(self, alias: str) -> None:
        model = self.svc.catalog.resolve(alias)
        until = status.cooling_until(self.svc.breakers, model)
        self.write_json(status.model_object(model, until))


@admits(GET=Admission(ISSUANCE, FREE, NO_BODY, "the visitor's key: at most one new key, "
                                                    "within the issuance caps"))
class KeysMeHandler(BaseHandler):
    async def get(self) -> None:
        key, rec = await self.issue_key()
        self.set_header("Cache-Control", "no-store")
        s = self.svc.settings
        usage = self.svc.usage.spent_today(rec.key_hash).as_dict()     # today, UTC
        limit = s.daily_credits or None
        spent = await self.svc.credits.spent(rec.key_hash)     # every process's, with Redis
        self.write_json({"object": "api_key", "key": key, "ip": rec.ip, "created": rec.created,
                         "rate_limit": {"rpm": rec.rpm or s.rpm}, "usage": usage,
                         "credits": {"daily_limit": limit, "remaining": None if limit is None
                                     else round(max(0.0, limit - spent), 4)}})


@admits(**dict.fromkeys(METHODS, public("an error answer")))
class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise NotFound(f"Unknown path {echo(self.request.method, quote=False)} "
                       f"{echo(self.request.path, quote=False)}. The API lives "
                       f"under /v1: see GET /openapi.json, or the homepage at /.")
