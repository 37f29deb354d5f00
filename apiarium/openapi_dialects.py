"""The OpenAPI description of the two agent dialects: OpenAI Responses and Anthropic Messages.

Kept apart from ``openapi.py`` (which merges these paths and schemas into the document) so
each module stays readable.  Responses errors are OpenAI's envelope, like every other
``/v1`` path; Messages errors are Anthropic's ``{"type": "error", "error": {"type",
"message"}}``, with 529 where the gateway would say 503.
"""
from __future__ import annotations

from typing import Any

JSON = "application/json"
SSE = "text/event-stream"
INT, NUM, STR, BOOL = ({"type": "integer"}, {"type": "number"}, {"type": "string"},
                       {"type": "boolean"})
MODEL = {"type": "string", "minLength": 1, "description": "A model alias from GET /v1/models.",
         "examples": ["gpt-5"]}
REQUEST_ID = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict, **extra: Any) -> dict:
    return {"type": "object", "required": required, "properties": props, **extra}


def _event(description: str) -> dict:
    return _obj(["data"], {"event": STR, "data": STR}, description=description)


SCHEMAS: dict[str, Any] = {
    "ResponseRequest": _obj(["model", "input"], {
        "model": MODEL,
        "input": {"anyOf": [STR, {"type": "array", "items": {"type": "object"}}],
                  "description": "A string, or the whole conversation as input items."},
        "instructions": {"anyOf": [STR, {"type": "null"}]},
        "stream": {"anyOf": [BOOL, {"type": "null"}]},
        "tools": {"type": "array"}, "tool_choice": {}, "parallel_tool_calls": BOOL,
        "reasoning": {"type": "object"}, "text": {"type": "object"},
        "max_output_tokens": {"anyOf": [INT, {"type": "null"}]},
        "temperature": {"anyOf": [NUM, {"type": "null"}]},
        "top_p": {"anyOf": [NUM, {"type": "null"}]}, "store": BOOL},
        description="The Responses API, stateless: `previous_response_id` and `conversation` "
                    "are refused (400 naming the field); `store` is accepted and sent as "
                    "false.  Passed through as sent to an `openai` provider's own "
                    "`/responses` (hosted tools included); translated for other kinds, "
                    "where a hosted tool is a 400 naming it."),
    "Response": _obj(["id", "object", "created_at", "status", "output"], {
        "id": STR, "object": {"const": "response"}, "created_at": INT, "status": STR,
        "model": STR, "output": {"type": "array", "items": {"type": "object"}},
        "usage": {"anyOf": [{"type": "object"}, {"type": "null"}]}}),
    "CompactedResponse": _obj(["id", "object", "output"], {
        "id": STR, "object": {"const": "response.compaction"}, "created_at": INT,
        "output": {"type": "array", "minItems": 1, "maxItems": 1,
                   "items": {"type": "object"}}}),
    "ResponseEvent": _event("One event: `event: response.<…>` and its JSON `data` with a "
                            "`sequence_number`; the stream always ends with "
                            "`response.completed`, `response.incomplete` or "
                            "`response.failed`."),
    "MessagesRequest": _obj(["model", "messages", "max_tokens"], {
        "model": MODEL,
        "messages": {"type": "array", "items": {"type": "object"}},
        "system": {"anyOf": [STR, {"type": "array"}]},
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": BOOL, "tools": {"type": "array"}, "tool_choice": {"type": "object"},
        "thinking": {"type": "object"}, "stop_sequences": {"type": "array", "items": STR},
        "temperature": NUM, "top_p": NUM, "metadata": {"type": "object"}},
        description="Anthropic's Messages request; every chat model, whatever its provider."),
    "CountTokensRequest": _obj(["model", "messages"], {
        "model": MODEL, "messages": {"type": "array", "items": {"type": "object"}},
        "system": {"anyOf": [STR, {"type": "array"}]}, "tools": {"type": "array"}}),
    "AnthropicMessage": _obj(["id", "type", "role", "content", "model", "usage"], {
        "id": STR, "type": {"const": "message"}, "role": {"const": "assistant"},
        "content": {"type": "array", "items": {"type": "object"}}, "model": STR,
        "stop_reason": {"anyOf": [STR, {"type": "null"}]},
        "usage": _obj(["input_tokens", "output_tokens"], {"input_tokens": INT,
                                                          "output_tokens": INT})}),
    "TokenCount": _obj(["input_tokens"], {"input_tokens": INT}),
    "AnthropicEvent": _event("One Anthropic event (message_start … message_stop, or `error`)."),
    "AnthropicError": _obj(["type", "error"], {
        "type": {"const": "error"}, "request_id": STR,
        "error": _obj(["type", "message"], {"type": STR, "message": STR})},
        description="Anthropic's error envelope: every error of the Messages endpoints."),
}

# status -> when (Anthropic's error `type` follows the status)
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error: a bad field (the message names its path), a model of another "
         "type, or a prompt too long (worded as Anthropic words it)",
    401: "authentication_error: no key (`x-api-key` or Bearer), an unknown key, another IP's",
    403: "permission_error: VPN, proxy or blocked address",
    404: "not_found_error: unknown model",
    413: "request_too_large: the body is over `server.max_body_mb`",
    421: "invalid_request_error: a host name not in `server.allowed_hosts`",
    429: "rate_limit_error: over the key's limits or credits, or the upstream's",
    500: "api_error: an internal error",
    502: "api_error: the upstream failed or cannot be reached",
    504: "api_error: the upstream did not answer in time",
    529: "overloaded_error: the upstream is overloaded, not configured, or skipped for now",
}


def _anthropic_errors(statuses: tuple[int, ...]) -> dict:
    out: dict[str, Any] = {}
    for status in statuses:
        headers: dict[str, Any] = dict(REQUEST_ID)
        if status in (429, 529):
            headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
        out[str(status)] = {"description": _ANTHROPIC_ERRORS[status], "headers": headers,
                            "content": {JSON: {"schema": _ref("AnthropicError")}}}
    out["4XX"] = {"description": "An upstream 4xx about the request itself, in Anthropic's "
                                 "envelope with the upstream's status.", "headers": REQUEST_ID,
                  "content": {JSON: {"schema": _ref("AnthropicError")}}}
    return out


def paths(operation: Any, ok: Any, upstream_errors: tuple[int, ...],
          authed_errors: tuple[int, ...], rate_headers: dict) -> dict:
    """The dialects' paths, built with ``openapi.py``'s ``operation`` and ``ok`` helpers."""
    anthropic_security: list[dict[str, list[str]]] = [{"bearer": []}, {"x-api-key": []}]

    def messages_op(op_id: str, summary: str, responses: dict, body: str,
                    statuses: tuple[int, ...]) -> dict:
        return {"operationId": op_id, "tags": ["anthropic"], "summary": summary,
                "security": anthropic_security,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref(body)}}},
                "responses": {**{str(s): r for s, r in responses.items()},
                              **_anthropic_errors(statuses)}}

    all_errors = (400, 401, 403, 404, 413, 429, 500, 502, 504, 529)
    return {
        "/v1/responses": {"post": operation(
            "createResponse", "responses", "Responses API, every chat model (stateless)",
            {200: ok("The `Response`; with `stream: true` the Responses events.",
                     {JSON: {"schema": _ref("Response")}, SSE: {"schema": _ref("ResponseEvent")}},
                     rate_headers)},
            auth=True, body="ResponseRequest", errors=upstream_errors, passthrough=True)},
        "/v1/responses/compact": {"post": operation(
            "compactResponse", "responses",
            "The conversation as one compaction item (answered by the gateway)",
            {200: ok("The compacted response.", {JSON: {"schema": _ref("CompactedResponse")}})},
            auth=True, body="ResponseRequest", errors=(*authed_errors, 400, 404))},
        "/v1/messages": {"post": messages_op(
            "createMessage", "Anthropic Messages, every chat model",
            {200: ok("The `Message`; with `stream: true` Anthropic's events.",
                     {JSON: {"schema": _ref("AnthropicMessage")},
                      SSE: {"schema": _ref("AnthropicEvent")}}, rate_headers)},
            "MessagesRequest", all_errors)},
        "/v1/messages/count_tokens": {"post": messages_op(
            "countMessageTokens", "Input tokens of a Messages request (an estimate)",
            {200: ok("The count.", {JSON: {"schema": _ref("TokenCount")}})},
            "CountTokensRequest", (400, 401, 403, 404, 413, 500))},
    }
