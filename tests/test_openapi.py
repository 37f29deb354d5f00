"""GET /openapi.json: a valid OpenAPI 3.1 document that lists exactly the application's
routes, and that the running gateway keeps: schemathesis fuzzes every operation (positive and
negative data) against a gateway in front of fake upstreams and checks each answer's status,
content type, headers and body against the document, and that no 5xx but the documented
upstream ones (502/503/504) ever comes back."""
from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict

import pytest
import requests
import schemathesis
import tornado.web
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apiarium import openapi, openapi_dialects, openapi_videos
from apiarium.app import routes
from tests.conftest import openai_models
from tests.support import MASTER_KEY

# Reproducible by default; APIARIUM_FUZZ=random:SCALE explores new cases, SCALE times as many.
FUZZ = os.environ.get("APIARIUM_FUZZ", "")
SCALE = int(FUZZ.partition(":")[2] or 1)
FUZZ_BUDGET_S = 40.0 * SCALE             # the whole fuzzing run stops generating after this
EXAMPLES = {GenerationMode.POSITIVE: 12 * SCALE, GenerationMode.NEGATIVE: 7 * SCALE}
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
UPSTREAM_5XX = {502, 503, 504}
LOOPBACK_URL = "http://127.0.0.1:9/nothing.png"     # refused at once: no traffic leaves
METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


# ---------------------------------------------------------------------------- the document
def route_paths() -> dict[str, type]:
    """{route regex: handler class} of the application."""
    return {pattern: handler for pattern, handler, *_ in routes()}


def matches(pattern: str, path: str) -> bool:
    """Whether an OpenAPI path template is the same route as a Tornado pattern: the
    template with a sample for each {param} matches, with as many groups as params."""
    params = re.findall(r"\{[^}]+\}", path)
    if re.compile(pattern).groups != len(params):
        return False
    sample = re.sub(r"\{[^}]+\}", "sample1.png", path)
    return re.fullmatch(pattern, sample) is not None


def handler_methods(handler: type) -> set[str]:
    unimplemented = tornado.web.RequestHandler._unimplemented_method
    return {m for m in METHODS if getattr(handler, m, unimplemented) is not unimplemented}


def test_document_is_valid_openapi_3_1():
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)                               # raises OpenAPIValidationError
    assert json.loads(openapi.document_bytes()) == doc
    assert doc["components"]["securitySchemes"]["bearer"] == {
        **doc["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}


def test_document_lists_exactly_the_app_routes():
    doc_paths = openapi.document()["paths"]
    app_routes = route_paths()
    for pattern, handler in app_routes.items():
        found = [p for p in doc_paths if matches(pattern, p)]
        assert len(found) == 1, f"route {pattern} ({handler.__name__}) is documented as {found}"
        documented = set(doc_paths[found[0]])
        assert documented == handler_methods(handler), (pattern, documented)
    for path in doc_paths:
        assert any(matches(p, path) for p in app_routes), f"{path} is not a route of the app"
    contract = {"/", "/health", "/v1/keys/me", "/v1/models", "/v1/models/{model}",
                "/v1/chat/completions", "/v1/completions", "/v1/images/generations",
                "/v1/videos/generations", "/v1/embeddings", "/media/{name}", "/openapi.json",
                "/metrics"}
    assert contract <= set(doc_paths)


def test_the_dialects_schemas_are_all_used_and_their_errors_are_anthropics():
    doc = openapi.document()
    text = json.dumps(doc["paths"]) + json.dumps(doc["components"]["schemas"])
    for name in openapi_dialects.SCHEMAS:
        assert f'"#/components/schemas/{name}"' in text, f"{name} is described but not used"
    post = doc["paths"]["/v1/messages"]["post"]
    assert post["responses"]["529"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnthropicError"}
    assert "503" not in post["responses"]                     # Anthropic says 529
    assert {"bearer": []} in post["security"] and {"x-api-key": []} in post["security"]


def test_the_video_job_schemas_are_the_sdks_and_all_used():
    """The job object names exactly the openai SDK's ``Video`` fields; the list, the JSON
    and the form bodies and the deletion its other types; each schema is referred to."""
    from openai.types import Video, VideoDeleteResponse
    schemas = openapi_videos.SCHEMAS
    assert set(schemas["VideoJob"]["properties"]) == set(Video.model_fields)
    assert set(schemas["VideoJobDeleted"]["properties"]) == set(VideoDeleteResponse.model_fields)
    assert set(schemas["VideoJobRequest"]["properties"]) == \
        set(schemas["VideoJobForm"]["properties"]) == {"model", "prompt", "seconds", "size",
                                                        "input_reference"}
    served = json.dumps(openapi.document()["paths"])
    for name in schemas:
        assert f"#/components/schemas/{name}" in served, name
    post = openapi.document()["paths"]["/v1/videos"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "multipart/form-data"}


def test_every_operation_documents_its_errors_and_request_id():
    doc = openapi.document()
    for path, item in doc["paths"].items():
        # each dialect's own envelope: Anthropic's on the Messages paths (503 is its 529)
        anthropic = path.startswith("/v1/messages")
        envelope = "AnthropicError" if anthropic else "Error"
        overloaded = "529" if anthropic else "503"
        for method, op in item.items():
            responses = op["responses"]
            for status, resp in responses.items():
                if "$ref" in resp:
                    resp = doc["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
                assert "x-request-id" in resp["headers"], (path, method, status)
                if status[0] == "4" and path != "/" and method != "head":
                    assert resp["content"] == {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{envelope}"}}}, (path, status)
            if op["security"]:
                assert {"401", "403"} <= set(responses), (path, method)
            if "requestBody" in op and not path.endswith(("/compact", "/count_tokens")):
                assert {"400", "413", "429", "502", overloaded, "504"} <= set(responses), path
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}


def test_served_document(gateway):
    status, headers, body = gateway.get("/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert "x-request-id" in headers
    assert json.loads(body) == openapi.document()


# ---------------------------------------------------------------------------- helpers
def conformance_failures(case, response) -> list[str]:
    try:
        case.validate_response(response, checks=CHECKS)
    except (AssertionError, BaseExceptionGroup) as exc:
        return [str(f).strip()[:600] for f in getattr(exc, "exceptions", [exc])]
    return []


def loopback_only(value):
    """No request may make the gateway fetch a URL off this machine (a video's image_url is
    downloaded): every http(s) URL in a generated body becomes a refused loopback one."""
    if isinstance(value, str):
        return LOOPBACK_URL if re.match(r"(?i)\s*https?:", value) else value
    if isinstance(value, list):
        return [loopback_only(v) for v in value]
    if isinstance(value, dict):
        return {k: loopback_only(v) for k, v in value.items()}
    return value


def describe(case, response) -> str:
    body = case.body if not isinstance(case.body, (bytes, bytearray)) else case.body[:200]
    body = None if type(body).__name__ == "NotSet" else body
    text = response.content[:300].decode("utf-8", "replace") if response is not None else ""
    return (f"{case.method} {case.formatted_path} headers={dict(case.headers or {})} "
            f"body={json.dumps(body, default=str)[:400]} -> "
            f"{response.status_code if response is not None else '-'} "
            f"{(response.headers.get('content-type') if response is not None else '')} {text}")


# ---------------------------------------------------------------------------- error paths
def test_scripted_answers_conform(make_gateway, fake_openai):
    """The statuses fuzzing rarely reaches (rate limits, upstream failures, streams that
    fail midway, ranges), each made to happen once and checked against the document."""
    gw = make_gateway(openai_models(fake_openai, models={
        "text-embedding-3-small": {"provider": "up", "type": "embedding"}}),
        rate_limit={"rpm": 1}, server={"max_body_mb": 0.01})
    schema = schemathesis.openapi.from_dict(requests.get(gw.url + "/openapi.json",
                                                         timeout=10).json())
    user, master = gw.key_for(), MASTER_KEY
    _status, _, body = gw.post("/v1/images/generations", {"model": "gpt-image-1",
                                                         "prompt": "a fox"}, key=master)
    media = json.loads(body)["data"][0]["url"].rsplit("/", 1)[1]
    chat = {"model": "gpt-5", "messages": [{"role": "user", "content": "Hi there"}]}
    error = {"error": {"message": "nope", "type": "invalid_request_error", "param": None,
                       "code": None}}
    fake = fake_openai
    scenarios = [   # (name, setup, path, method, case fields, key, expected status)
        ("chat", None, "/v1/chat/completions", "POST", {"body": chat}, user, 200),
        ("rate limited", None, "/v1/chat/completions", "POST", {"body": chat}, user, 429),
        ("stream", None, "/v1/chat/completions", "POST",
         {"body": {**chat, "stream": True, "stream_options": {"include_usage": True}}},
         master, 200),
        ("stream fails midway", lambda: fake.error_mid_stream_next(2),
         "/v1/chat/completions", "POST", {"body": {**chat, "stream": True}}, master, 200),
        ("legacy stream", None, "/v1/completions", "POST",
         {"body": {"model": "gpt-5", "prompt": "Say hi", "stream": True}}, master, 200),
        ("legacy", None, "/v1/completions", "POST",
         {"body": {"model": "gpt-5", "prompt": "Say hi", "echo": True}}, master, 200),
        ("image b64", None, "/v1/images/generations", "POST",
         {"body": {"model": "gpt-image-1", "prompt": "a fox", "n": 2,
                   "response_format": "b64_json"}}, master, 200),
        ("embeddings", None, "/v1/embeddings", "POST",
         {"body": {"model": "text-embedding-3-small", "input": ["a bee", "a hive"]}},
         master, 200),
        ("embeddings base64", None, "/v1/embeddings", "POST",
         {"body": {"model": "text-embedding-3-small", "input": [[1, 2, 3]],
                   "encoding_format": "base64", "dimensions": 8}}, master, 200),
        ("embeddings, too many", None, "/v1/embeddings", "POST",
         {"body": {"model": "text-embedding-3-small", "input": ["a"] * 2049}}, master, 400),
        ("embeddings, wrong type", None, "/v1/embeddings", "POST",
         {"body": {"model": "gpt-5", "input": "a"}}, master, 400),
        ("embeddings, upstream 429", lambda: fake.fail_next(429, error),
         "/v1/embeddings", "POST",
         {"body": {"model": "text-embedding-3-small", "input": "a"}}, master, 429),
        ("usage", None, "/v1/keys/me/usage", "GET", {"query": {"days": 3}}, user, 200),
        ("usage, bad days", None, "/v1/keys/me/usage", "GET", {"query": {"days": 0}}, user,
         400),
        ("no key", None, "/v1/models", "GET", {}, None, 401),
        ("bad key", None, "/v1/models", "GET", {}, "api-0000000000000000", 401),
        ("unknown model", None, "/v1/models/{model}", "GET",
         {"path_parameters": {"model": "nope"}}, master, 404),
        ("wrong type", None, "/v1/images/generations", "POST",
         {"body": {"model": "gpt-5", "prompt": "a fox"}}, master, 400),
        ("too large", None, "/v1/chat/completions", "POST",
         {"body": {**chat, "messages": [{"role": "user", "content": "x" * 20000}]}},
         master, 413),
        # on a model of its own: the upstream's Retry-After cools that model for 7 s
        ("upstream 429", lambda: fake.fail_next(429, error, {"Retry-After": "7"}),
         "/v1/chat/completions", "POST", {"body": {**chat, "model": "gpt-renamed"}}, master,
         429),
        ("upstream 422", lambda: fake.fail_next(422, error), "/v1/chat/completions", "POST",
         {"body": chat}, master, 422),
        ("upstream garbage", lambda: fake.garbage_next(), "/v1/chat/completions", "POST",
         {"body": chat}, master, 502),
        ("upstream down", None, "/v1/chat/completions", "POST",
         {"body": {**chat, "model": "dead-model"}}, master, 502),
        ("upstream 503", lambda: fake.fail_next(503, error), "/v1/completions", "POST",
         {"body": {"model": "gpt-5", "prompt": "hi"}}, master, 503),
        ("no provider key", None, "/v1/chat/completions", "POST",
         {"body": {**chat, "model": "nokey-model"}}, master, 503),
        ("upstream timeout", lambda: fake.hang_next(3), "/v1/chat/completions", "POST",
         {"body": chat}, master, 504),
        ("media range", None, "/media/{name}", "GET",
         {"path_parameters": {"name": media}, "headers": {"Range": "bytes=2-5"}}, None, 206),
        ("media range outside", None, "/media/{name}", "GET",
         {"path_parameters": {"name": media}, "headers": {"Range": "bytes=100000-"}},
         None, 416),
        ("media unknown", None, "/media/{name}", "GET",
         {"path_parameters": {"name": "x" * 32 + ".png"}}, None, 404),
    ]
    session = requests.Session()
    failures = []
    for name, setup, path, method, fields, key, expected in scenarios:
        if setup:
            setup()
        case = schema[path][method].Case(**fields)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = case.call(base_url=gw.url, session=session, headers=headers, timeout=20)
        problems = conformance_failures(case, response)
        if response.status_code != expected:
            problems.insert(0, f"status {response.status_code}, expected {expected}")
        if problems:
            failures.append(f"{name}: {describe(case, response)}\n    " + "\n    ".join(problems))
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------- fuzzing
@pytest.fixture
def fuzz_target(make_gateway, fake_openai, fake_gemini, fake_anthropic, fake_rag):
    """A gateway in front of every kind of fake upstream (and a dead and a keyless provider),
    with a media file already made, the master key and a generous rate limit."""
    gemini, anthropic, rag = fake_gemini, fake_anthropic, fake_rag
    models = openai_models(fake_openai, providers={
        "google": {"kind": "gemini", "base_url": gemini.base_url,
                   "api_key": gemini.api_key, "poll_interval_s": 0.05, "timeout_s": 5},
        "claude": {"kind": "anthropic", "base_url": anthropic.base_url,
                   "api_key": anthropic.api_key, "timeout_s": 5},
        "hub": {"kind": "rag", "base_url": rag.base_url, "api_key": rag.api_key,
                "timeout_s": 5},
    }, models={
        "gemini-2.5-pro": {"provider": "google"},
        "gemini-3-image": {"provider": "google", "upstream": "gemini-3-pro-image-preview",
                           "type": "image"},
        "veo-3": {"provider": "google", "upstream": "veo-3.0-generate-001",
                  "type": "video"},
        "claude-sonnet-4.5": {"provider": "claude", "upstream": "claude-sonnet-4-5"},
        "gemini-3": {"provider": "hub"},
        "text-embedding-3-small": {"provider": "up", "type": "embedding"},
        "gemini-embedding-001": {"provider": "google", "type": "embedding"},
    })
    gw = make_gateway(models, rate_limit={"rpm": 100000})
    status, _, body = gw.post("/v1/images/generations", {
        "model": "gpt-image-1", "prompt": "a fox"}, key=MASTER_KEY)
    assert status == 200, body
    media = json.loads(body)["data"][0]["url"].rsplit("/", 1)[1]
    yield gw, {m: spec.get("type", "chat") for m, spec in models["models"].items()}, media


def fuzzing_schema(doc: dict, models: dict[str, str], media: str) -> dict:
    """The served document, steered so that generated data reaches past the first checks:
    model fields (mostly models of the endpoint's type, one of another type and an unknown
    one), path parameters and ranges drawn from what the test gateway has.  Responses are
    left exactly as served."""
    doc = json.loads(json.dumps(doc))

    def names(*types: str) -> dict:
        fitting = sorted(m for m, t in models.items() if t in types)
        other = sorted(m for m, t in models.items() if t not in types)[:1]
        return {"type": "string", "enum": fitting + other + ["no-such-model"]}

    wanted = {"ChatCompletionRequest": names("chat", "image", "video"),
              "CompletionRequest": names("chat"), "ImageRequest": names("image"),
              "VideoRequest": names("video"), "ResponseRequest": names("chat"),
              "VideoJobRequest": names("video"), "VideoJobForm": names("video"),
              "MessagesRequest": names("chat"), "CountTokensRequest": names("chat"),
              "EmbeddingRequest": names("embedding")}
    for name, schema in wanted.items():
        doc["components"]["schemas"][name]["properties"]["model"] = schema
    paths = doc["paths"]
    params = {("/v1/models/{model}", "get"): names("chat", "image", "video", "embedding"),
              ("/media/{name}", "get"): {"type": "string", "enum": [media, "x" * 32 + ".png"]},
              ("/media/{name}", "head"): {"type": "string", "enum": [media]},
              ("/static/{name}", "get"): {"type": "string",
                                          "enum": ["style.css", "app.js", "nope.css"]},
              ("/static/{name}", "head"): {"type": "string", "enum": ["favicon.svg"]}}
    for (path, method), schema in params.items():
        for p in paths[path][method]["parameters"]:
            if p["in"] == "path":
                p["schema"] = schema
            elif p["name"] == "Range":
                p["schema"] = {"type": "string", "pattern": r"^bytes=[0-9]{0,5}-[0-9]{0,5}$"}
    return doc


def test_fuzzed_gateway_conforms_to_its_document(fuzz_target):
    gw, models, media = fuzz_target
    served = requests.get(gw.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(fuzzing_schema(served, models, media))
    session = requests.Session()
    auth = {"Authorization": f"Bearer {MASTER_KEY}"}
    deadline = time.monotonic() + FUZZ_BUDGET_S
    findings: dict[tuple, list[str]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    per_op: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    sent = 0

    def exercise(case) -> None:
        nonlocal sent
        if time.monotonic() > deadline:
            return
        if isinstance(case.body, (bytes, str)):
            if re.search(r"(?i)https?:", str(case.body)):
                return                   # could hold a URL for the gateway to fetch
        elif case.body is not None:
            case.body = loopback_only(case.body)
        try:
            response = case.call(base_url=gw.url, session=session, headers=auth, timeout=20)
        except Exception as exc:         # a request the client library could not send
            if "Invalid" in type(exc).__name__ or "header" in str(exc).lower():
                return
            raise
        sent += 1
        label = f"{case.method} {case.operation.path}"
        counts[response.status_code] += 1
        per_op[label][response.status_code] += 1
        if os.environ.get("APIARIUM_FUZZ_SHOW") and response.status_code in (
                400, 416, 206, 502, 503):
            print("   ", describe(case, response)[:600])
        if response.status_code == 500 or (
                response.status_code >= 500 and response.status_code not in UPSTREAM_5XX):
            findings[(label, f"server error {response.status_code}")].append(
                describe(case, response))
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as exc:
            failures = getattr(exc, "exceptions", [exc])
            for failure in failures:
                title = getattr(failure, "title", type(failure).__name__)
                findings[(label, title)].append(
                    f"{describe(case, response)}\n      {str(failure).strip()[:400]}")

    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 13
    for operation in ops:
        for mode, n in EXAMPLES.items():
            has_input = bool(operation.body) or any(True for _ in operation.iter_parameters())
            if mode is GenerationMode.NEGATIVE and not has_input:
                continue
            strategy = operation.as_strategy(generation_mode=mode)
            run = settings(max_examples=n, deadline=None, database=None,
                           derandomize=not FUZZ.startswith("random"),
                           phases=[Phase.explicit, Phase.generate],
                           suppress_health_check=list(HealthCheck))(given(strategy)(exercise))
            run()
    print(f"fuzzed {len(ops)} operations: {sent} requests, statuses "
          f"{dict(sorted(counts.items()))}")
    for label, statuses in sorted(per_op.items()):
        print(f"  {label}: {dict(sorted(statuses.items()))}")
    assert sent >= 150, f"only {sent} requests were sent in {FUZZ_BUDGET_S} s"
    report = "\n".join(f"{label}: {title} ({len(cases)}x)\n    " + "\n    ".join(cases[:2])
                       for (label, title), cases in sorted(findings.items()))
    assert not findings, f"{sent} requests, statuses {dict(counts)}:\n{report}"
    assert counts[200] >= 30, dict(counts)
    assert counts.get(500, 0) == 0
