"""GET /health, GET /v1/models, GET /v1/keys/me, and the JSON 404 for every unknown path."""
from __future__ import annotations

import time

from .. import __version__
from ..errors import NotFound
from .base import ApiHandler, BaseHandler


class HealthHandler(BaseHandler):
    def get(self) -> None:
        svc = self.svc
        self.write_json({"status": "ok", "version": __version__,
                         "uptime_s": round(time.time() - svc.started, 1),
                         "models": len(svc.catalog), "keys": len(svc.keys)})


class ModelsHandler(ApiHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(self.svc.live.models_body)


class ModelHandler(ApiHandler):
    def get(self, alias: str) -> None:
        model = self.svc.catalog.resolve(alias)
        self.write_json({"id": model.alias, "object": "model", "created": model.created,
                         "owned_by": model.owned_by, "type": model.type})


class KeysMeHandler(BaseHandler):
    async def get(self) -> None:
        self.resolve_visitor()
        key, rec = await self.svc.keys.key_for_ip(self.client_ip)
        self.set_header("Cache-Control", "no-store")
        self.write_json({"object": "api_key", "key": key, "ip": rec.ip, "created": rec.created,
                         "rate_limit": {"rpm": rec.rpm or self.svc.settings.rpm}})


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise NotFound(f"Unknown path {self.request.method} {self.request.path}. The API lives "
                       f"under /v1: see GET /openapi.json, or the homepage at /.")
