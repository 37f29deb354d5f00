"""GET /openapi.json: the OpenAPI 3.1 description of this API (built once, served as is)."""
from __future__ import annotations

from ..openapi import document_bytes
from .admission import admits, public
from .base import BaseHandler


@admits(GET=public("the document built once"))
class OpenApiHandler(BaseHandler):
    endpoint = "openapi"

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(document_bytes())
