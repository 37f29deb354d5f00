"""FakeRag: the `rag` provider kind (CONTRACT.md section 2): POST {base_url}/query."""
from __future__ import annotations

from aiohttp import web

from .base import JSON, FakeUpstream


class FakeRag(FakeUpstream):
    """Answers ``{"answer", "sources"}``; never streams (the gateway emulates streaming)."""

    default_api_key = "rag-fake"

    def __init__(self, api_key: str | None = None):
        super().__init__(api_key)
        self.sources: list[dict] = [{"title": "Doc A", "url": "https://example.com/a"}]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/query", self._query)

    async def _query(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.json_response({"error": "invalid api key"}, 401)
        body = request[JSON]
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) \
                or not isinstance(body.get("model"), str):
            return self.json_response({"error": "body must be {\"query\": str, \"model\": str}"},
                                      400)
        return self.json_response({"answer": self.answer_for(body["query"]),
                                   "sources": list(self.sources)})
