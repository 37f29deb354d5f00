"""GET /health, GET /v1/models, GET /v1/keys/me, and the JSON 404 for every unknown path."""
from __future__ import annotations

import time

from .. import __version__
from ..errors import NotFound, RateLimited
from ..storage import KeyRecord
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


async def issue_key(handler: BaseHandler) -> tuple[str, KeyRecord]:
    """The visitor's key, as ``/v1/keys/me`` and the homepage hand it out: proxy, VPN and
    blocklist checks (403), at most ``security.key_requests_per_minute`` such visits a minute
    per IPv4 address or IPv6 /64 (429), then the key store (the operator's blocks, at most
    ``security.new_keys_per_ipv6_64_per_day`` new keys per IPv6 /64)."""
    handler.resolve_visitor()
    svc, ip = handler.svc, handler.client_ip
    s = svc.settings
    try:
        svc.keys.admit(ip, s.key_requests_per_minute)
        return await svc.keys.key_for_ip(ip, s.new_keys_per_ipv6_64_per_day)
    except RateLimited:
        svc.metrics.rate_limited.labels("key_issuance").inc()
        raise


class KeysMeHandler(BaseHandler):
    async def get(self) -> None:
        key, rec = await issue_key(self)
        self.set_header("Cache-Control", "no-store")
        s = self.svc.settings
        usage = self.svc.usage.spent_today(rec.key_hash).as_dict()     # today, UTC
        limit = s.daily_credits or None
        self.write_json({"object": "api_key", "key": key, "ip": rec.ip, "created": rec.created,
                         "rate_limit": {"rpm": rec.rpm or s.rpm}, "usage": usage,
                         "credits": {"daily_limit": limit, "remaining": None if limit is None
                                     else round(max(0.0, limit - usage["credits"]), 4)}})


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise NotFound(f"Unknown path {self.request.method} {self.request.path}. The API lives "
                       f"under /v1: see GET /openapi.json, or the homepage at /.")
