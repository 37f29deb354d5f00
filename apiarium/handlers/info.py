"""GET /health, GET /v1/models, GET /v1/keys/me, and the JSON 404 for every unknown path."""
from __future__ import annotations

import os
import time

from .. import __version__
from ..errors import NotFound, echo
from .base import ApiHandler, BaseHandler


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


class ModelsHandler(ApiHandler):
    """OpenAI's list shape; Anthropic's (``type: model``, ``display_name``, paging fields)
    for a client that sends ``anthropic-version`` or pages with ``?limit=``."""

    def get(self) -> None:
        if self.request.headers.get("anthropic-version") or self.get_argument("limit", ""):
            self.write_json(anthropic_list(self.svc.catalog.listing(),
                                           self.get_argument("limit", "")))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(self.svc.live.models_body)


def anthropic_list(models: list[dict], limit: str) -> dict:
    """The catalog as Anthropic's ``GET /v1/models`` answers (all of it: one page)."""
    n = int(limit) if limit.isdigit() and int(limit) > 0 else len(models)
    data = [{"type": "model", "id": m["id"], "display_name": m["id"], "lifecycle": "active",
             "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m["created"]))}
            for m in models[:n]]
    return {"data": data, "has_more": len(models) > n,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


class ModelHandler(ApiHandler):
    def get(self, alias: str) -> None:
        model = self.svc.catalog.resolve(alias)
        self.write_json({"id": model.alias, "object": "model", "created": model.created,
                         "owned_by": model.owned_by, "type": model.type})


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


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise NotFound(f"Unknown path {echo(self.request.method, quote=False)} "
                       f"{echo(self.request.path, quote=False)}. The API lives "
                       f"under /v1: see GET /openapi.json, or the homepage at /.")
