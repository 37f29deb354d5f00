"""FakeGemini: generateContent, streamGenerateContent (SSE), image output, Veo long-running ops,
batchEmbedContents.

generateContent bodies are validated with google-genai's types and Gemini's own rules
(``gemini_checks``): a bad one gets Gemini's 400.  Gemini 3 models (``gemini-3*``) sign their
function calls (``thoughtSignature``, remembered in ``signatures``) and refuse a history whose
calls lack the signature they gave.  A request with a ``thinkingConfig`` (a level, or a
budget above 0) thinks: ``thought_text`` is counted as ``thoughtsTokenCount``, and sent as a
``thought`` part when it asks ``includeThoughts``.  ``cached_tokens`` of the prompt are
reported as read from the cache (``cachedContentTokenCount``, inside ``promptTokenCount``)."""
from __future__ import annotations

import asyncio
import base64
import re
import secrets
import struct

import orjson
import pydantic
from aiohttp import web
from google.genai import types as genai_types

from . import gemini_checks
from .base import BEHAVIOUR, JSON, FakeUpstream, embedding_vector, split_pieces, sse_data, words
from .openai import make_png

IMAGE_TOKENS = 1290
EMBED_BATCH = 100                 # Google's limit of requests per batchEmbedContents call
EMBED_FIELDS = {"model", "content", "taskType", "title", "outputDimensionality"}
VEO_FILTER_REASON = ("Unfortunately, we can't create videos from this prompt: it may violate "
                     "our policies (fake safety filter).")


def google_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    """A google.rpc.Status error body (wire-formats 5.8)."""
    err = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    return {"error": err}


def make_mp4(payload_size: int = 8192) -> bytes:
    """A minimal valid ISO-BMFF file: ftyp + moov(mvhd) + mdat (patterned payload)."""
    def box(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", 8 + len(data)) + tag + data

    ftyp = box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd = box(b"mvhd", struct.pack(">B3xIIII", 0, 0, 0, 1000, 8000)
               + struct.pack(">IH10x", 0x10000, 0x100) + matrix + bytes(24)
               + struct.pack(">I", 2))
    mdat = box(b"mdat", bytes((i * 7 + 3) % 256 for i in range(payload_size)))
    return ftyp + box(b"moov", mvhd) + mdat


def _logprobs(parts: list, top: int) -> dict:
    """A made-up ``logprobsResult``: each word of the parts' text (with the spaces after it)
    chosen at -0.25, and ``top`` candidates per step."""
    tokens = [w for p in parts if not p.get("thought")
              for w in re.findall(r"\s*\S+\s*|\s+", p.get("text") or "")]
    return {"chosenCandidates": [{"token": t, "logProbability": -0.25} for t in tokens],
            "topCandidates": [{"candidates": [{"token": t, "logProbability": -0.25}] + [
                {"token": f" alt{k}", "logProbability": -2.0 - k} for k in range(top - 1)]}
                for t in tokens] if top else [],
            "logProbabilitySum": -0.25 * len(tokens)}


def _parts_text(content) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    return " ".join(p["text"] for p in parts or [] if isinstance(p, dict) and p.get("text"))


class FakeGemini(FakeUpstream):
    default_api_key = "gm-fake"

    def __init__(self, api_key: str | None = None):
        super().__init__(api_key)
        self.image_bytes = make_png()
        self.video_bytes = make_mp4()
        self.veo_polls_until_done = 2
        self.veo_polls: dict[str, int] = {}
        self.image_in_words = False   # an image model answers in words only, as they do
        self.cached_tokens = 0        # prompt tokens reported as read from the cache
        self.thought_text = "Weighing the question step by step."
        self.signatures: set[str] = set()     # thought signatures given out (kept by reset)
        self._ops: dict[str, dict] = {}
        self.embedding_dims = 256     # the native size of every embedding model here
        self.embed_delay = 0.0        # seconds each batchEmbedContents call takes
        self.embed_peak = 0           # the most batchEmbedContents calls seen at once
        self._embed_now = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{tail:.+}", self._post_model)
        app.router.add_get("/v1beta/models/{model}/operations/{op}", self._poll)
        app.router.add_get("/v1beta/files/{tail}", self._download)
        app.router.add_get("/blob/{name}", self._blob)

    # ---- scripting helpers -------------------------------------------------
    def overloaded_next(self, path_contains: str | None = None) -> None:
        self.fail_next(503, google_error(503, "UNAVAILABLE", "The model is overloaded. "
                                         "Please try again later."), path_contains=path_contains)

    def rate_limited_next(self, retry_delay: str = "37s", per_day: bool = False,
                          path_contains: str | None = None) -> None:
        period = "PerDay" if per_day else "PerMinute"
        details = [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": ("generativelanguage.googleapis.com/"
                                "generate_content_free_tier_requests"),
                "quotaId": f"GenerateRequests{period}PerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "fake-model"},
                "quotaValue": "250" if per_day else "10"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
        self.fail_next(429, google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current "
                                         "quota, please check your plan and billing details.",
                                         details), path_contains=path_contains)

    def error_mid_stream_next(self, after_events: int, path_contains: str | None = None) -> None:
        """Next stream: ``after_events`` events, then a ``data: {"error": ...}`` event, then close.
        A non-streaming request that takes it gets a 503 UNAVAILABLE."""
        frame = sse_data(google_error(503, "UNAVAILABLE", "The model is overloaded."))
        self._push(path_contains, kind="error", after=after_events, frame=frame)

    def mid_stream_fallback(self, b: dict):
        return self.json_response(google_error(503, "UNAVAILABLE", "The model is overloaded."), 503)

    def veo_filtered_next(self) -> None:
        """The next Veo operation ends done, safety-filtered, with no samples."""
        self._push(":predictLongRunning", kind="veo", outcome="filtered")

    def veo_error_next(self, code: int = 13, message: str = "Video generation failed.") -> None:
        """The next Veo operation ends done with ``error: {code, message}``."""
        self._push(":predictLongRunning", kind="veo", outcome="error", code=code, message=message)

    # ---- helpers -----------------------------------------------------------
    def _auth_error(self, request: web.Request):
        if request.headers.get("x-goog-api-key") == self.api_key:
            return None
        return self.json_response(google_error(
            400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
            [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
              "domain": "googleapis.com",
              "metadata": {"service": "generativelanguage.googleapis.com"}}]), 400)

    def _bad(self, message: str, code: int = 400, status: str = "INVALID_ARGUMENT"):
        return self.json_response(google_error(code, status, message), code)

    # ---- generateContent -----------------------------------------------------
    async def _post_model(self, request: web.Request) -> web.StreamResponse:
        err = self._auth_error(request)
        if err:
            return err
        model, _, action = request.match_info["tail"].rpartition(":")
        body = request[JSON]
        if not model or not isinstance(body, dict):
            return self._bad("Invalid JSON payload received.")
        if action == "predictLongRunning":
            return self._start_veo(request, model, body)
        if action == "batchEmbedContents":
            return await self._embed(model, body)
        if action not in ("generateContent", "streamGenerateContent"):
            return self._bad(f"Method {action!r} not found for models/{model}.", 404, "NOT_FOUND")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return self._bad("* GenerateContentRequest.contents: contents is not specified")
        problem = (gemini_checks.type_problem(await request.read())
                   or gemini_checks.thinking_problem(model, body)
                   or gemini_checks.signature_problem(model, body, self.signatures))
        if problem:
            return self._bad(problem)
        prompt = words(_parts_text(body.get("systemInstruction"))) + sum(
            words(_parts_text(c)) for c in contents)
        cached = min(prompt, self.cached_tokens)
        last_user = next((_parts_text(c) for c in reversed(contents)
                          if isinstance(c, dict) and c.get("role", "user") == "user"), "")
        text = self.answer_for(last_user)
        gen = body.get("generationConfig") or {}
        image = "IMAGE" in (gen.get("responseModalities") or [])
        tool = self.tool_for(request, body)
        rid = secrets.token_urlsafe(12)
        thinking = gen.get("thinkingConfig") or {}
        thinks = bool(thinking.get("thinkingLevel") or thinking.get("thinkingBudget"))
        thoughts = words(self.thought_text) if thinks else 0
        shown = [{"text": self.thought_text, "thought": True}] \
            if thinks and thinking.get("includeThoughts") else []

        def resp(parts, final=True, out_tokens=0, extra_usage=None):
            cand = {"content": {"role": "model", "parts": parts}, "index": 0}
            if gen.get("responseLogprobs"):
                cand["logprobsResult"] = _logprobs(parts, gen.get("logprobs") or 0)
            usage = {"promptTokenCount": prompt, "totalTokenCount": prompt}
            if cached:
                usage["cachedContentTokenCount"] = cached
            if final:
                cand["finishReason"] = "STOP"
                usage.update(candidatesTokenCount=out_tokens,
                             totalTokenCount=prompt + out_tokens + thoughts,
                             **(extra_usage or {}))
                if thoughts:
                    usage["thoughtsTokenCount"] = thoughts
            return gemini_checks.response({"candidates": [cand], "usageMetadata": usage,
                                           "modelVersion": model, "responseId": rid})

        if tool:
            args = orjson.loads(tool["arguments"] or "{}")
            call = {"functionCall": {"name": tool["name"], "args": args}}
            if model.startswith("gemini-3"):
                call["thoughtSignature"] = sig = base64.b64encode(
                    secrets.token_bytes(24)).decode()
                self.signatures.add(sig)
            if shown and action != "generateContent":
                chunks = [resp(shown, final=False), resp([call], out_tokens=words(
                    tool["arguments"]))]
            else:
                chunks = [resp([*shown, call], out_tokens=words(tool["arguments"]))]
        elif image and self.image_in_words:
            chunks = [resp([{"text": "I can't draw that, but here is a description."}],
                           out_tokens=9)]
        elif image:
            n = words(text)
            parts = [{"text": text}, {"inlineData": {
                "mimeType": "image/png", "data": base64.b64encode(self.image_bytes).decode()}}]
            chunks = [resp(parts, out_tokens=n + IMAGE_TOKENS, extra_usage={
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": n},
                                            {"modality": "IMAGE", "tokenCount": IMAGE_TOKENS}]})]
        elif action == "generateContent":
            chunks = [resp([*shown, {"text": text}], out_tokens=words(text))]
        else:
            pieces = split_pieces(text, self.stream_events)
            chunks = [resp(shown, final=False)] if shown else []
            chunks += [resp([{"text": p}], final=False) for p in pieces[:-1]]
            chunks.append(resp([{"text": pieces[-1]}], out_tokens=words(text)))
        if action == "generateContent":
            return self.json_response(chunks[0])
        return await self.stream(request, [sse_data(c) for c in chunks])

    # ---- batchEmbedContents -------------------------------------------------
    async def _embed(self, model: str, body: dict) -> web.Response:
        """At most 100 requests a call (a 400 beyond, as Google answers); each request
        checked with google-genai's types; ``embedding_vector`` of each text, cut to
        ``outputDimensionality`` and NOT scaled again (Google normalises only the full
        size).  No token counts (the Developer API gives none)."""
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return self._bad("* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(requests) > EMBED_BATCH:
            return self._bad(f"* BatchEmbedContentsRequest.requests: at most {EMBED_BATCH} "
                             f"requests can be in one batch")
        texts, dims = [], None
        for i, req in enumerate(requests):
            where = f"* BatchEmbedContentsRequest.requests[{i}]"
            if not isinstance(req, dict):
                return self._bad(f"{where}: not an object")
            if set(req) - EMBED_FIELDS:
                return self._bad(f"{where}: unknown fields {sorted(set(req) - EMBED_FIELDS)}")
            if req.get("model") != f"models/{model}":
                return self._bad(f"{where}.model: {req.get('model')!r} does not match the "
                                 f"URL's models/{model}")
            try:
                content = genai_types.Content.model_validate(req.get("content"))
                config = genai_types.EmbedContentConfig.model_validate(
                    {k: v for k, v in req.items() if k not in ("model", "content")})
            except pydantic.ValidationError as exc:
                return self._bad(f"{where}: {exc}")
            text = " ".join(p.text for p in content.parts or [] if p.text)
            if not text:
                return self._bad(f"{where}.content: no text to embed")
            dims = config.output_dimensionality
            if dims is not None and not 1 <= dims <= self.embedding_dims:
                return self._bad(f"{where}.outputDimensionality: must be between 1 and "
                                 f"{self.embedding_dims}")
            texts.append((text, dims))
        self._embed_now += 1
        self.embed_peak = max(self.embed_peak, self._embed_now)
        try:
            if self.embed_delay:
                await asyncio.sleep(self.embed_delay)
        finally:
            self._embed_now -= 1
        answer = {"embeddings": [{"values": embedding_vector(t, self.embedding_dims)[:d]}
                                 for t, d in texts]}
        genai_types.EmbedContentResponse.model_validate(answer)
        return self.json_response(answer)

    # ---- Veo -------------------------------------------------------------
    def _start_veo(self, request: web.Request, model: str, body: dict) -> web.Response:
        inst = body.get("instances")
        first = inst[0] if isinstance(inst, list) and inst and isinstance(inst[0], dict) else None
        if not first or not (first.get("prompt") or first.get("image")):
            return self._bad("* instances[0]: prompt or image is required")
        if isinstance(first.get("image"), dict) and "inlineData" in first["image"]:
            return self._bad("`inlineData` isn't supported by this model.")
        op = secrets.token_hex(8)
        b = request.get(BEHAVIOUR)
        self._ops[op] = {"model": model, "outcome": b if b and b["kind"] == "veo" else None}
        self.veo_polls[op] = 0
        return self.json_response({"name": f"models/{model}/operations/{op}"})

    async def _poll(self, request: web.Request) -> web.Response:
        err = self._auth_error(request)
        if err:
            return err
        model, op = request.match_info["model"], request.match_info["op"]
        if op not in self._ops:
            return self._bad(f"Operation {op} not found.", 404, "NOT_FOUND")
        self.veo_polls[op] = self.veo_polls.get(op, 0) + 1
        name = f"models/{model}/operations/{op}"
        if self.veo_polls[op] <= self.veo_polls_until_done:
            return self.json_response({"name": name})
        outcome = self._ops[op]["outcome"] or {"outcome": "ok"}
        done = {"name": name, "done": True}
        if outcome["outcome"] == "error":
            done["error"] = {"code": outcome["code"], "message": outcome["message"]}
            return self.json_response(done)
        video = {"generatedSamples": [{"video": {
            "uri": f"{self.root}/v1beta/files/{op}:download?alt=media"}}]}
        if outcome["outcome"] == "filtered":
            video = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [VEO_FILTER_REASON]}
        done["response"] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                     "PredictLongRunningResponse", "generateVideoResponse": video}
        return self.json_response(done)

    async def _download(self, request: web.Request) -> web.Response:
        err = self._auth_error(request)
        if err:
            return err
        file_id, _, action = request.match_info["tail"].partition(":")
        if action != "download" or request.query.get("alt") != "media":
            return self._bad("Download requires ':download?alt=media'.")
        if file_id not in self._ops:
            return self._bad(f"File {file_id} not found.", 404, "NOT_FOUND")
        return web.Response(status=302, headers={"Location": f"{self.root}/blob/{file_id}.mp4"})

    async def _blob(self, request: web.Request) -> web.Response:
        data = self.video_bytes
        if request.match_info["name"].removesuffix(".mp4") not in self._ops:
            return web.Response(status=404, text="not found")
        headers = {"Accept-Ranges": "bytes"}
        rng = request.http_range
        if rng.start is not None or rng.stop is not None:
            start, stop, _ = rng.indices(len(data))
            if start >= stop:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
            return web.Response(status=206, body=data[start:stop], headers=headers,
                                content_type="video/mp4")
        return web.Response(body=data, headers=headers, content_type="video/mp4")
