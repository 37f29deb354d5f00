"""The homepage (GET /) and its static files (GET /static/NAME).

The page is rendered on the server from ``web/*.html`` (Tornado templates, every value
autoescaped), so it works with JavaScript off: the visitor's key, the base URL as they
reached us, runnable examples and the catalog grouped by type.  ``web/app.js`` only adds
the copy buttons and the live catalog refresh (GET /v1/models with the key in a header,
never in a URL), and the two parts that need it: the playground (a chat answer streamed,
an image drawn, on the public API with the visitor's key) and the usage panel (GET
/v1/keys/me/usage, drawn as plain SVG).

Static files are read once at start-up, gzipped once, and served with a content hash:
``/static/style.css?v=<hash>`` is cacheable for a year, any other URL revalidates by ETag.
The page itself holds a key, so it is ``no-store``.  Errors on these paths (a VPN visitor's
403 above all) are answered as HTML pages, not JSON.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.template

from .. import __version__
from ..errors import ApiError, Forbidden, NotFound, echo
from ..modeltypes import MODEL_TYPES, ModelType
from ..services import status
from ..services.keys import AddressBlocked
from .admission import FREE, ISSUANCE, NO_BODY, Admission, admits, public
from .base import BaseHandler, as_api_error

log = logging.getLogger("apiarium")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
                 ".webp": "image/webp"}
IMMUTABLE = "public, max-age=31536000, immutable"
GZIP_MIN_BYTES = 512
PROMPT = "Say hello in one sentence."


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None      # None: compression does not pay for this file
    digest: str
    content_type: str


class Assets:
    """The files of ``web/``: static ones read and compressed once, templates compiled once."""

    def __init__(self, root: Path = WEB_DIR):
        self.loader = tornado.template.Loader(str(root), whitespace="single")
        self.files: dict[str, Asset] = {}
        for path in sorted(root.iterdir()):
            ctype = CONTENT_TYPES.get(path.suffix)
            if ctype is None or not path.is_file():
                continue
            body = path.read_bytes()
            packed = gzip.compress(body, 9, mtime=0)
            worth = len(body) >= GZIP_MIN_BYTES and len(packed) < 0.9 * len(body)
            self.files[path.name] = Asset(body, packed if worth else None,
                                          hashlib.sha256(body).hexdigest()[:16], ctype)

    def url(self, name: str) -> str:
        return f"/static/{name}?v={self.files[name].digest}"

    def render(self, name: str, **values: Any) -> bytes:
        return self.loader.load(name).generate(asset=self.url, version=__version__, **values)


def routes(assets: Assets | None = None) -> list:
    """The homepage routes, sharing one ``Assets`` (built here, once per application)."""
    assets = assets or Assets()
    return [(r"/", HomeHandler, {"assets": assets}),
            (r"/static/([A-Za-z0-9][A-Za-z0-9._-]*)", StaticHandler, {"assets": assets})]


def accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def pick_example_model(models: list[dict]) -> str:
    chat = [m["id"] for m in models if m["type"] == "chat"]
    if "gpt-5" in chat:
        return "gpt-5"
    return (chat or [m["id"] for m in models] or ["gpt-5"])[0]


def examples(base: str, key: str, model: str) -> list[dict]:
    """Copy-paste examples, runnable as printed (values quoted for their language)."""
    api = f"{base}/v1"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}]})
    curl = (f"curl {shlex.quote(api + '/chat/completions')} \\\n"
            f"  -H \"Authorization: Bearer {key}\" \\\n"
            f"  -H \"Content-Type: application/json\" \\\n"
            f"  -d {shlex.quote(body)}")
    python = (f"from openai import OpenAI\n\n"
              f"client = OpenAI(base_url={json.dumps(api)}, api_key={json.dumps(key)})\n\n"
              f"response = client.chat.completions.create(\n"
              f"    model={json.dumps(model)},\n"
              f"    messages=[{{\"role\": \"user\", \"content\": {json.dumps(PROMPT)}}}],\n"
              f")\n"
              f"print(response.choices[0].message.content)")
    javascript = (f"import OpenAI from \"openai\";\n\n"
                  f"const client = new OpenAI({{\n"
                  f"  baseURL: {json.dumps(api)},\n"
                  f"  apiKey: {json.dumps(key)},\n"
                  f"}});\n\n"
                  f"const response = await client.chat.completions.create({{\n"
                  f"  model: {json.dumps(model)},\n"
                  f"  messages: [{{ role: \"user\", content: {json.dumps(PROMPT)} }}],\n"
                  f"}});\n"
                  f"console.log(response.choices[0].message.content);")
    codex = (f"# ~/.codex/config.toml\n"
             f"model = {json.dumps(model)}\n"
             f"model_provider = \"apiarium\"\n\n"
             f"[model_providers.apiarium]\n"
             f"name = \"Apiarium\"\n"
             f"base_url = {json.dumps(api)}\n"
             f"env_key = \"APIARIUM_API_KEY\"\n"
             f"wire_api = \"responses\"\n\n"
             f"# then, in your shell:\n"
             f"# export APIARIUM_API_KEY={shlex.quote(key)}\n"
             f"# codex exec {shlex.quote(PROMPT)}")
    claude = (f"export ANTHROPIC_BASE_URL={shlex.quote(base)}\n"
              f"export ANTHROPIC_AUTH_TOKEN={shlex.quote(key)}\n"
              f"export ANTHROPIC_MODEL={shlex.quote(model)}\n"
              f"export ANTHROPIC_DEFAULT_HAIKU_MODEL={shlex.quote(model)}\n"
              f"export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1\n"
              f"claude -p {shlex.quote(PROMPT)}")
    return [
        {"id": "curl", "label": "curl", "code": curl,
         "note": "Any shell with curl. The answer is JSON; the text is in choices[0].message."},
        {"id": "python", "label": "Python", "code": python,
         "note": "pip install openai  (then run the file with python)"},
        {"id": "js", "label": "JavaScript", "code": javascript,
         "note": "npm install openai  (Node 18+; save as hello.mjs, run node hello.mjs)"},
        {"id": "codex", "label": "Codex CLI", "code": codex,
         "note": "npm install -g @openai/codex  (Codex speaks the Responses API: any chat "
                 "model of this gateway works)"},
        {"id": "claude", "label": "Claude Code", "code": claude,
         "note": "npm install -g @anthropic-ai/claude-code  (Claude Code speaks the Messages "
                 "API: any chat model of this gateway works)"},
    ]


def group_example(t: ModelType, api: str, key: str, models: list[dict]) -> str:
    """The runnable openai-SDK snippet under a group: its row's ``example`` on the group's
    first model ("" when the row has none or the group is empty)."""
    if not t.example or not models:
        return ""
    return (f"from openai import OpenAI\n\n"
            f"client = OpenAI(base_url={json.dumps(api)}, api_key={json.dumps(key)})\n\n"
            + t.example.replace("{model}", json.dumps(models[0]["id"])))


TILE_LABELS = {status.READY: "Ready", status.NOT_CONFIGURED: "Not configured",
               status.DEMO: "Demo", status.COOLING_DOWN: "Cooling down"}


def tile_status(model: dict) -> str:
    """What a model's tile says of its status (``services.status``), as ``app.js`` does."""
    label = TILE_LABELS.get(model["status"], model["status"])
    if model["status"] == status.NOT_CONFIGURED:
        return f"{label}: {model['status_detail']}"
    if model["status"] == status.COOLING_DOWN:
        at = time.strftime("%H:%M:%S", time.gmtime(model["available_at"]))
        return f"{label} until {at} UTC"
    return label


def catalog_summary(models: list[dict]) -> tuple[str, str]:
    """(state, text) above the tiles: ``ok`` (a green dot) only while some model is ready;
    ``demo`` when only demo models answer; ``down`` when none answers.  ``app.js`` says
    the same after each refresh."""
    ready = sum(m["status"] == status.READY for m in models)
    demo = sum(m["status"] == status.DEMO for m in models)
    if ready:
        return "ok", (f"All {ready} models ready" if ready == len(models) else
                      f"{ready} of {len(models)} models ready")
    if demo:
        return "demo", (f"Demo: {demo} of {len(models)} models give canned answers from the "
                        f"built-in demo provider; none is connected to a real one")
    if not models:
        return "down", "No models on this gateway yet"
    return "down", "No model is ready: each one below says why"


class PageHandler(BaseHandler):
    """An HTML page or asset: security headers on every answer, errors as HTML."""

    def initialize(self, assets: Assets) -> None:      # type: ignore[override]
        super().initialize()
        self.assets = assets

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def compute_etag(self) -> None:
        return None

    def send_html(self, html: bytes, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Vary", "Accept-Encoding")
        if len(html) >= GZIP_MIN_BYTES and accepts_gzip(
                self.request.headers.get("Accept-Encoding", "")):
            html = gzip.compress(html, 6)
            self.set_header("Content-Encoding", "gzip")
        self.finish(html)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = as_api_error(exc, status_code, self.request)
        for name, value in err.headers.items():
            self.set_header(name, value)
        if err.status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if self.request.path.startswith("/static/"):
            super().write_error(status_code, **kwargs)
            return
        internal = err.status >= 500 and not isinstance(exc, ApiError)
        try:
            html = self.assets.render(
                "error.html", status=err.status, code=err.code or "", message=err.message,
                vpn=isinstance(err, Forbidden) and not isinstance(err, AddressBlocked),
                request_id=self.request_id,
                internal=internal, title=f"{err.status} · Apiarium")
        except Exception:                   # the error page must never fail in turn
            log.exception("%s could not render the error page", self.request_id)
            super().write_error(status_code, **kwargs)
            return
        self.send_html(html, err.status)


@admits(GET=Admission(ISSUANCE, FREE, NO_BODY, "the visitor's key (at most one new key, "
                                                    "within the issuance caps) and the page"),
        HEAD=public("the headers alone: no key issued"))
class HomeHandler(PageHandler):
    def head(self) -> None:
        """Agent clients (Claude Code) probe the base URL with HEAD /: answered without
        issuing a key."""
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish()

    async def get(self) -> None:
        key, rec = await self.issue_key()        # 403, 429 -> write_error -> an HTML page
        svc = self.svc
        base = self.public_base()
        catalog = svc.catalog
        models = status.listing(catalog, status.cooling(catalog, svc.breakers))
        groups = []
        for t in MODEL_TYPES.values():
            members = [m for m in models if m["type"] == t.name]
            groups.append({"type": t.name, "label": t.label, "endpoint": t.blurb,
                           "models": members,
                           "example": group_example(t, f"{base}/v1", key, members)})
        model = pick_example_model(models)
        html = self.assets.render(
            "index.html", title="Apiarium · OpenAI-compatible API", key=key, ip=rec.ip,
            rpm=rec.rpm or svc.settings.rpm, base=base, api=f"{base}/v1", groups=groups,
            model_count=len(models), example_model=model, examples=examples(base, key, model),
            summary=catalog_summary(models), tile_status=tile_status,
            max_mb=f"{svc.settings.max_body_bytes / 1048576:g}")
        self.send_html(html)


@admits(GET=public("one asset from memory"), HEAD=public("one asset's headers"))
class StaticHandler(PageHandler):
    def get(self, name: str) -> None:
        self.serve(name, include_body=True)

    def head(self, name: str) -> None:
        self.serve(name, include_body=False)

    def serve(self, name: str, include_body: bool) -> None:
        asset = self.assets.files.get(name)
        if asset is None:
            raise NotFound(f"No static file named `{echo(name, False)}`.")
        packed = asset.gzipped is not None and accepts_gzip(
            self.request.headers.get("Accept-Encoding", ""))
        self.set_header("Content-Type", asset.content_type)
        self.set_header("Vary", "Accept-Encoding")
        self.set_header("Etag", f'"{asset.digest}{"-gz" if packed else ""}"')
        versioned = self.get_query_argument("v", "") == asset.digest
        self.set_header("Cache-Control", IMMUTABLE if versioned else "no-cache")
        if asset.digest in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        data = asset.gzipped if packed and asset.gzipped is not None else asset.body
        if packed:
            self.set_header("Content-Encoding", "gzip")
        self.set_header("Content-Length", len(data))
        self.finish(data if include_body else None)
