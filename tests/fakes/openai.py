"""FakeOpenAI: chat completions, legacy completions, the Responses API (``openai_responses``),
image generation, embeddings, models list.

``cached_tokens`` of a chat prompt are reported as read from the prompt cache
(``prompt_tokens_details.cached_tokens``, inside ``prompt_tokens``, as OpenAI counts them)."""
from __future__ import annotations

import base64
import secrets
import struct
import time
import zlib

from aiohttp import web

from . import openai_responses
from .base import (
    JSON,
    FakeUpstream,
    embedding_vector,
    split_pieces,
    sse_data,
    sse_event,
    words,
)
from .openai_responses import served_tier

DONE = b"data: [DONE]\n\n"
SERVER_ERROR = "The server had an error while processing your request."


def openai_error(message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> dict:
    """The OpenAI error envelope (wire-formats 1.5)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def make_png(width: int = 8, height: int = 8, rgb: tuple = (230, 160, 20)) -> bytes:
    """A real, valid PNG: solid colour, 8-bit RGB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text") or "" for p in content
                        if isinstance(p, dict) and p.get("type") == "text")
    return ""


class FakeOpenAI(FakeUpstream):
    default_api_key = "sk-fake-openai"

    def __init__(self, api_key: str | None = None):
        super().__init__(api_key)
        self.image_bytes = make_png()
        self.models = ["gpt-5", "gpt-4o-mini", "gpt-3.5-turbo-instruct", "gpt-image-1"]
        self.embedding_dims = 256     # the native size of every embedding model here
        self.cached_tokens = 0
        # hosted tool calls a Responses answer makes before its message, by item type
        # (``web_search_call``, ``image_generation_call``, ``code_interpreter_call``)
        self.hosted_calls: list[str] = []

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    # ---- scripting helpers -------------------------------------------------
    def error_mid_stream_next(self, after_events: int, path_contains: str | None = None) -> None:
        """Next stream: ``after_events`` frames, then ``data: {"error": ...}``, then a clean end.
        A non-streaming request that takes it gets a 500 with the same body."""
        self._push(path_contains, kind="error", after=after_events,
                   frame=sse_data(openai_error(SERVER_ERROR, "server_error")))

    def responses_error_next(self, after_events: int, code: str = "server_error") -> None:
        """Next Responses stream: ``after_events`` events, then the Responses API's own
        ``error`` event (``{"type": "error", "code", "message"}``), then a clean end."""
        self._push("/responses", kind="error", after=after_events, frame=sse_event(
            "error", {"type": "error", "sequence_number": after_events, "code": code,
                      "message": SERVER_ERROR, "param": None}))

    def mid_stream_fallback(self, b: dict):
        return self.json_response(openai_error(SERVER_ERROR, "server_error"), 500)

    # ---- helpers ---------------------------------------------------------
    def _check(self, request: web.Request, *required: str):
        """Auth + required fields; returns (body, None) or (None, error response)."""
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return None, self.json_response(openai_error(
                "Incorrect API key provided.", code="invalid_api_key"), 401)
        body = request[JSON]
        if request.method == "GET":
            return body, None
        if not isinstance(body, dict):
            return None, self.json_response(openai_error(
                "We could not parse the JSON body of your request."), 400)
        for field in required:
            if not body.get(field):
                return None, self.json_response(openai_error(
                    f"Missing required parameter: '{field}'.", param=field,
                    code="missing_required_parameter"), 400)
        return body, None

    @staticmethod
    def _usage(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    # ---- chat ------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, err = self._check(request, "model", "messages")
        if err:
            return err
        msgs = [m for m in body["messages"] if isinstance(m, dict)]
        prompt = sum(words(_text_of(m.get("content"))) for m in msgs)
        last_user = next((_text_of(m.get("content")) for m in reversed(msgs)
                          if m.get("role") == "user"), "")
        text, cut = self.within_limit(self.answer_for(last_user),
                                      body.get("max_completion_tokens") or body.get("max_tokens"))
        tool = self.tool_for(request, body)
        completion = words(tool["arguments"]) if tool else words(text)
        finish = "tool_calls" if tool else "length" if cut else "stop"
        usage = self._usage(prompt, completion)
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(prompt, self.cached_tokens)}
        cid, created = "chatcmpl-fake" + secrets.token_hex(6), int(time.time())
        model = body["model"]
        call = None
        if tool:
            call = {"id": "call_fake01", "type": "function",
                    "function": {"name": tool["name"], "arguments": tool["arguments"]}}
        tier = served_tier(body)                  # OpenAI names the tier that served it
        if not body.get("stream"):
            message = {"role": "assistant", "content": None if tool else text, "refusal": None}
            if call:
                message["tool_calls"] = [call]
            return self.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish}],
                "usage": usage, "system_fingerprint": "fp_fake", **tier})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta, finish=None, choices=True):
            c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": finish}] if choices else [], **tier}
            if include_usage:
                c["usage"] = None if choices else usage
            return sse_data(c)

        if tool:
            first = dict(call, index=0, function={"name": tool["name"], "arguments": ""})
            frames = [chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
            frames += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                       for part in split_pieces(tool["arguments"], 3)]
            frames.append(chunk({}, "tool_calls"))
        else:
            frames = [chunk({"role": "assistant", "content": ""})]
            frames += [chunk({"content": p}) for p in split_pieces(text, self.stream_events)]
            frames.append(chunk({}, finish))
        if include_usage:
            frames.append(chunk(None, choices=False))
        frames.append(DONE)
        return await self.stream(request, frames)

    # ---- the Responses API -------------------------------------------------
    async def _responses(self, request: web.Request) -> web.StreamResponse:
        _, err = self._check(request, "model", "input")
        return err or await openai_responses.responses(self, request)

    # ---- legacy completions ---------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, err = self._check(request, "model", "prompt")
        if err:
            return err
        p = body["prompt"]
        prompt_text = p if isinstance(p, str) else " ".join(x for x in p if isinstance(x, str))
        text = self.answer_for(prompt_text)
        usage = self._usage(words(prompt_text), words(text))
        cid, created, model = "cmpl-fake" + secrets.token_hex(6), int(time.time()), body["model"]

        def obj(piece, finish, choices=True):
            o = {"id": cid, "object": "text_completion", "created": created, "model": model,
                 "choices": [{"text": piece, "index": 0, "logprobs": None,
                              "finish_reason": finish}] if choices else []}
            return o

        if not body.get("stream"):
            o = obj(text, "stop")
            o["usage"] = usage
            return self.json_response(o)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = [obj(piece, None) for piece in split_pieces(text, self.stream_events)]
        chunks.append(obj("", "stop"))
        if include_usage:
            for c in chunks:
                c["usage"] = None
            last = obj("", None, choices=False)
            last["usage"] = usage
            chunks.append(last)
        return await self.stream(request, [sse_data(c) for c in chunks] + [DONE])

    # ---- images and models -----------------------------------------------
    async def _images(self, request: web.Request) -> web.Response:
        body, err = self._check(request, "prompt")
        if err:
            return err
        n = int(body.get("n") or 1)
        if not 1 <= n <= 10:
            return self.json_response(openai_error(
                f"Invalid 'n': {n}; must be between 1 and 10.", param="n",
                code="integer_above_max_value"), 400)
        b64 = base64.b64encode(self.image_bytes).decode()
        prompt_tokens = words(body["prompt"])
        return self.json_response({
            "created": int(time.time()),
            "data": [{"b64_json": b64} for _ in range(n)],
            "background": "opaque", "output_format": "png",
            "quality": body.get("quality") or "medium",
            "size": body.get("size") or "1024x1024",
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 1056 * n,
                      "total_tokens": prompt_tokens + 1056 * n,
                      "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0}}})

    # ---- embeddings --------------------------------------------------------
    async def _embeddings(self, request: web.Request) -> web.Response:
        """OpenAI's embeddings: ``embedding_vector`` of each input (a token array as
        ``tokens:1,2,3``), cut to ``dimensions`` and scaled to length 1 again (as
        text-embedding-3 does), as floats or base64 float32; prompt tokens = words (or the
        token array's length)."""
        body, err = self._check(request, "model", "input")
        if err:
            return err

        def bad(message: str, param: str):
            return self.json_response(openai_error(message, param=param), 400)

        inputs = body["input"]
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and all(isinstance(t, int) for t in inputs)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= 2048:
            return bad("'$.input' is invalid. Please check the API reference.", "input")
        texts, tokens = [], 0
        for item in inputs:
            if isinstance(item, str) and item:
                texts.append(item)
                tokens += words(item)
            elif isinstance(item, list) and item and all(
                    isinstance(t, int) and not isinstance(t, bool) for t in item):
                texts.append("tokens:" + ",".join(map(str, item)))
                tokens += len(item)
            else:
                return bad("'$.input' is invalid. Please check the API reference.", "input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            return bad(f"Invalid value: '{fmt}'. Supported values are: 'float' and "
                       f"'base64'.", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)
                                 or not 1 <= dims <= self.embedding_dims):
            return bad(f"This model does not support {dims} dimensions.", "dimensions")
        data = []
        for i, text in enumerate(texts):
            vector = embedding_vector(text, self.embedding_dims)
            if dims:
                cut = vector[:dims]
                norm = sum(v * v for v in cut) ** 0.5 or 1.0
                vector = [v / norm for v in cut]
            out = (base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                   if fmt == "base64" else vector)
            data.append({"object": "embedding", "index": i, "embedding": out})
        return self.json_response({"object": "list", "data": data, "model": body["model"],
                                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _models(self, request: web.Request) -> web.Response:
        _, err = self._check(request)
        if err:
            return err
        return self.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1767225600, "owned_by": "openai"}
            for m in self.models]})
