"""Load and validate ``apiarium.yaml`` and ``models.yaml``.

Every string value may use ``${VAR}`` or ``${VAR:-default}``.  Relative paths are relative to
the folder of the file that names them.  Every problem (YAML syntax, unknown key, wrong type,
a model naming a missing provider, a provider ``kind`` that names no Provider class) is
reported as ``FILE:LINE: message``, all at once.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import hosts
from .catalog import Catalog, ModelSpec, ProviderSpec
from .config_limits import endpoint_limits, limiter_backend, per_process
from .config_pricing import ALLOW, CREDITS, model_allow, model_credits
from .modeltypes import MODEL_TYPES
from .providers import KindError, provider_class
from .providers.base import Provider
from .providers.reasoning import THINKING, thinking_problem
from .storage import is_url, secret_beside
from .yamlschema import Bool, Ctx, Enum, ListOf, MapOf, Num, Problem, Section, Str, parse

DEFAULT_CONFIG = "config/apiarium.yaml"
MIN_MASTER_KEY = 32            # characters: a master key is a password that bypasses every limit
MIN_METRICS_TOKEN = 16
METRICS_CIDRS = ("127.0.0.0/8", "::1/128")     # who may read /metrics without the token


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


# --------------------------------------------------------------------------- the two schemas

SETTINGS_SCHEMA = Section({
    "server": Section({
        "host": Str("127.0.0.1"),
        "port": Num(8080, 0, 65535, integer=True),
        "public_url": Str(""),
        "allowed_hosts": ListOf(Str()),
        "trusted_proxies": ListOf(Str()),
        "client_ip_header": Enum(("X-Forwarded-For", "X-Real-IP"), "X-Forwarded-For"),
        "max_body_mb": Num(25, 0.001, 4096),
        "shutdown_grace_s": Num(30, 0, 86400),
        "workers": Num(1, 1, 256, integer=True),
        "header_timeout_s": Num(30, 0.1, 3600),
        "body_timeout_s": Num(120, 0.1, 86400),
        "write_timeout_s": Num(60, 0.1, 86400),
    }),
    "database": Str("../data/apiarium.sqlite3"),
    "secret_file": Str(""),
    "catalog": Str("models.yaml"),
    "master_key": Str(""),
    "rate_limit": Section({"rpm": Num(4, 1, 1_000_000, integer=True),
                           "daily_credits": Num(200, 0, 1e12), "per_process": Bool(False),
                           "endpoints": MapOf(Str()), "backend": Str("memory"),
                           "on_backend_down": Enum(("closed", "local"), "closed"),
                           "instances": Num(1, 1, 100_000, integer=True),
                           "backend_timeout_ms": Num(250, 10, 10_000, integer=True),
                           "lookups_per_minute": Num(60, 1, 1_000_000, integer=True)}),
    "limits": Section({"max_images": Num(4, 1, 100, integer=True),
                       "max_chat_choices": Num(1, 1, 128, integer=True),
                       "max_tool_calls": Num(8, 1, 1000, integer=True),
                       "max_concurrent_requests": Num(4, 0, 1_000_000, integer=True),
                       "max_embedding_input_mb": Num(2, 0.001, 4096),
                       "max_embedding_floats": Num(262_144, 1, 1_000_000_000, integer=True)}),
    "media": Section({"dir": Str("../data/media"), "ttl_hours": Num(24, 0.001, 100_000),
                      "max_gb": Num(5, 0.000001, 1_000_000),
                      "max_prompt_bytes": Num(8192, 1, 100_000_000, integer=True),
                      "fetch_image_urls": Bool(True),
                      "fetch_allow_cidrs": ListOf(Str()),
                      "image_url_max_mb": Num(20, 0.001, 1024),
                      "fetch_timeout_s": Num(30, 0.1, 3600),
                      "fetch_connect_timeout_s": Num(10, 0.1, 600),
                      "fetch_concurrency": Num(8, 1, 100_000, integer=True)}),
    "security": Section({"block_proxy_headers": Bool(True), "blocklists": ListOf(Str()),
                         "key_requests_per_minute": Num(60, 0, 1_000_000, integer=True),
                         "new_keys_per_ipv6_64_per_day": Num(8, 0, 1_000_000, integer=True),
                         "new_keys_per_ipv6_48_per_day": Num(32, 0, 1_000_000, integer=True),
                         "new_keys_per_ipv6_32_per_day": Num(1024, 0, 10_000_000, integer=True),
                         "new_keys_per_hour": Num(1000, 0, 10_000_000, integer=True),
                         "master_key_guesses_per_minute": Num(10, 0, 1_000_000, integer=True),
                         "public_requests_per_minute": Num(600, 1, 10_000_000,
                                                           integer=True)}),
    "metrics": Section({"allow_cidrs": ListOf(Str(), default=METRICS_CIDRS),
                        "token": Str("")}),
})

CATALOG_SCHEMA = Section({
    "providers": MapOf(Section({
        "kind": Str(),                 # a name of providers.KINDS, or package.module:Class
        "base_url": Str(""),
        "api_key": Str(""),
        "auth": Enum(("key", "none"), "key"),
        "timeout_s": Num(600, 0.001, 86400), "connect_timeout_s": Num(10, 0.001, 3600),
        "headers": MapOf(Str()),
        "poll_interval_s": Num(10, 0.001, 3600),
        "breaker_failures": Num(3, 0, 1000, integer=True),
        "breaker_cooldown_s": Num(30, 0, 86400),
        "responses": Bool(True),       # openai kind: the upstream has its own /responses
        "frame_delay_ms": Num(20, 0, 10_000),   # demo kind: the pause between stream frames
    }, required=("kind",))),
    "models": MapOf(Section({
        "provider": Str(),
        "upstream": Str(""),
        "type": Enum(tuple(MODEL_TYPES), "chat"),
        "fallbacks": ListOf(Str()),
        "max_output_tokens": Num(0, 0, 100_000_000, integer=True),
        "thinking": Enum(THINKING, ""),
        "cache": Enum(("auto", "off"), ""),
        "completions": Enum(("chat", "native"), "chat"),
        "allow": ALLOW,                # config_pricing: what passes, and what it costs
        "credits": CREDITS,
    }, required=("provider",))),
})


@dataclass(frozen=True)
class Settings:
    path: Path
    host: str
    port: int
    public_url: str
    allowed_hosts: tuple[str, ...]            # host names (optionally :port); empty: any
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    client_ip_header: str                     # what the trusted proxies set
    max_body_bytes: int
    shutdown_grace_s: float
    database: Path | str          # a SQLite file, or a postgresql:// URL as written
    secret_file: Path             # the key secret, which every process on the database shares
    catalog_path: Path
    master_key: str
    rpm: int
    daily_credits: float          # 0: unlimited
    endpoint_limits: Mapping[str, tuple[int, float]]   # endpoint -> (requests, per seconds)
    max_images: int               # `n` on the images endpoint
    max_chat_choices: int         # `n` on chat
    media_dir: Path
    media_ttl_hours: float
    block_proxy_headers: bool
    blocklists: tuple[Path, ...]
    header_timeout_s: float                   # slow clients: the whole request head
    body_timeout_s: float                     # ... and the whole body
    key_requests_per_minute: int              # per IPv4 address or IPv6 /64 (0: no limit)
    new_keys_per_ipv6_64_per_day: int         # 0: no limit (and the same below)
    new_keys_per_ipv6_48_per_day: int
    new_keys_per_ipv6_32_per_day: int
    new_keys_per_hour: int                    # in the whole gateway
    # image_url (outbound.FetchPolicy): fetch http(s) URLs at all; addresses fetchable even
    # though not public; the size limit (data: URLs too); timeouts; fetches at once
    fetch_image_urls: bool = True
    fetch_allow_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    image_url_max_bytes: int = 20 * 1024 * 1024
    fetch_timeout_s: float = 30.0
    fetch_connect_timeout_s: float = 10.0
    fetch_concurrency: int = 8
    max_embedding_input_bytes: int = 2 * 1024 * 1024   # an embeddings request's text, in all
    max_embedding_floats: int = 262_144       # ... and its answer: inputs x dimensions
    max_concurrent_requests: int = 4          # credit holds per key in flight (0: no cap)
    media_max_bytes: int = 5 * 1024 ** 3      # the media folder's cap (oldest files go first)
    max_prompt_bytes: int = 8192              # an image or video prompt, in bytes of UTF-8
    master_key_guesses_per_minute: int = 10   # failed non-key tokens per network (0: no limit)
    workers: int = 1                          # gateway processes (apiarium serve --workers)
    metrics_allow_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    metrics_token: str = ""                   # empty: only metrics_allow_cidrs may scrape
    limiter_backend: str = "memory"           # or a redis:// / rediss:// URL (config_limits)
    limiter_on_down: str = "closed"           # Redis unreachable: "closed" (503) or "local"
    limiter_instances: int = 1                # gateways sharing the backend (local: limit/N)
    limiter_timeout_s: float = 0.25           # connect / answer, then it counts as down
    lookups_per_minute: int = 60              # per key: reads that reach no model
    public_requests_per_minute: int = 600     # per network (each process): what needs no key
    write_timeout_s: float = 60.0             # a client that reads nothing this long is cut
    limiter_per_process: bool = False         # workers on memory: limits x N, accepted
    max_tool_calls: int = 8                   # hosted tool calls a request may make (held for)


@dataclass(frozen=True)
class Config:
    settings: Settings
    catalog: Catalog


# --------------------------------------------------------------------------- loading

# settings a running gateway took at start (its sockets, servers, stores and clients were
# made from them): a reload that changes one says so, and it applies from the next restart
READ_AT_START = {"host": "server.host", "port": "server.port", "workers": "server.workers",
                 "header_timeout_s": "server.header_timeout_s",
                 "body_timeout_s": "server.body_timeout_s", "database": "database",
                 "secret_file": "secret_file", "media_dir": "media.dir",
                 "limiter_backend": "rate_limit.backend",
                 "limiter_timeout_s": "rate_limit.backend_timeout_ms"}


def changed_at_start(old: Settings, new: Settings) -> list[str]:
    """The settings of ``READ_AT_START`` that differ between ``old`` and ``new``."""
    return [name for field, name in READ_AT_START.items()
            if getattr(old, field) != getattr(new, field)]


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _database(base: Path, value: str) -> Path | str:
    """The ``database`` setting: a PostgreSQL URL as written, else a path (relative to the
    config's folder)."""
    return value if is_url(value) else _resolve(base, value)


def _secret_file(base: Path, value: str, database: Path | str, media_dir: Path) -> Path:
    """``secret_file``: as set; else ``<database>.secret`` beside a SQLite file, or
    ``apiarium.secret`` beside the media folder (in the data folder) for PostgreSQL."""
    if value:
        return _resolve(base, value)
    return media_dir.parent / "apiarium.secret" if is_url(database) else secret_beside(database)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Sequence[str], ctx: Ctx, problems: list[Problem],
              key: tuple[str, str] = ("server", "trusted_proxies")) -> tuple[Network, ...]:
    nets: list[Network] = []
    for i, v in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            problems.append(Problem(str(ctx.file), ctx.lines.get((*key, i), 0),
                                    f"{'.'.join(key)}: {v!r} is not an IP address or CIDR"))
    return tuple(nets)


def _blocklists(base: Path, values: Sequence[str], ctx: Ctx,
                problems: list[Problem]) -> tuple[Path, ...]:
    paths = tuple(_resolve(base, v) for v in values)
    for i, p in enumerate(paths):
        if not (p.is_file() and os.access(p, os.R_OK)):
            why = "cannot be read" if p.exists() else "does not exist"
            problems.append(Problem(str(ctx.file), ctx.lines.get(("security", "blocklists", i), 0),
                                    f"security.blocklists: {str(p)!r} {why} (see "
                                    f"scripts/update-blocklists)"))
    return paths


def _allowed_hosts(values: Sequence[str], ctx: Ctx, problems: list[Problem]) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(values):
        host = hosts.normalize(v)
        if host is None:
            problems.append(Problem(str(ctx.file), ctx.lines.get(("server", "allowed_hosts", i), 0),
                                    f"server.allowed_hosts: {v!r} is not a host name (with an "
                                    f"optional :port), e.g. api.example.com"))
        else:
            out.append(host)
    return tuple(out)


def _secret(value: str, key: str, least: int, ctx: Ctx, problems: list[Problem]) -> str:
    """A password-like setting: empty (off), or at least ``least`` characters."""
    if value and len(value) < least:
        problems.append(Problem(str(ctx.file), ctx.lines.get(tuple(key.split(".")), 0),
                                f"{key}: {len(value)} characters is too short to be guessed "
                                f"at safely; use at least {least} (e.g. the output of "
                                f"`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                                f", or leave it empty"))
    return value


def _build_settings(path: Path, d: dict, ctx: Ctx, problems: list[Problem]) -> Settings:
    base = path.parent
    s, sec, media = d["server"], d["security"], d["media"]
    public = s["public_url"].rstrip("/")
    database, media_dir = _database(base, d["database"]), _resolve(base, media["dir"])
    if public and not re.match(r"^https?://[^/\s]+", public):
        problems.append(Problem(str(path), ctx.lines.get(("server", "public_url"), 0),
                                f"server.public_url: {public!r} must start with http:// or https://"))
    return Settings(
        path=path, host=s["host"], port=s["port"], public_url=public,
        allowed_hosts=_allowed_hosts(s["allowed_hosts"], ctx, problems),
        trusted_proxies=_networks(s["trusted_proxies"], ctx, problems),
        client_ip_header=s["client_ip_header"],
        max_body_bytes=int(s["max_body_mb"] * 1024 * 1024),
        shutdown_grace_s=float(s["shutdown_grace_s"]), workers=s["workers"],
        database=database, catalog_path=_resolve(base, d["catalog"]),
        secret_file=_secret_file(base, d["secret_file"], database, media_dir),
        master_key=_secret(d["master_key"], "master_key", MIN_MASTER_KEY, ctx, problems),
        rpm=d["rate_limit"]["rpm"], max_concurrent_requests=d["limits"]["max_concurrent_requests"],
        daily_credits=float(d["rate_limit"]["daily_credits"]),
        endpoint_limits=endpoint_limits(d["rate_limit"]["endpoints"], ctx, problems),
        limiter_backend=limiter_backend(d["rate_limit"]["backend"], ctx, problems),
        limiter_on_down=d["rate_limit"]["on_backend_down"],
        limiter_instances=d["rate_limit"]["instances"],
        limiter_timeout_s=d["rate_limit"]["backend_timeout_ms"] / 1000,
        lookups_per_minute=d["rate_limit"]["lookups_per_minute"],
        public_requests_per_minute=sec["public_requests_per_minute"],
        limiter_per_process=per_process(s["workers"], d["rate_limit"], ctx, problems),
        max_images=d["limits"]["max_images"], max_chat_choices=d["limits"]["max_chat_choices"],
        max_tool_calls=d["limits"]["max_tool_calls"],
        media_dir=media_dir, media_ttl_hours=float(d["media"]["ttl_hours"]),
        block_proxy_headers=sec["block_proxy_headers"],
        blocklists=_blocklists(base, sec["blocklists"], ctx, problems),
        header_timeout_s=float(s["header_timeout_s"]), body_timeout_s=float(s["body_timeout_s"]),
        write_timeout_s=float(s["write_timeout_s"]),
        key_requests_per_minute=sec["key_requests_per_minute"],
        new_keys_per_ipv6_64_per_day=sec["new_keys_per_ipv6_64_per_day"],
        new_keys_per_ipv6_48_per_day=sec["new_keys_per_ipv6_48_per_day"],
        new_keys_per_ipv6_32_per_day=sec["new_keys_per_ipv6_32_per_day"],
        new_keys_per_hour=sec["new_keys_per_hour"],
        fetch_image_urls=media["fetch_image_urls"],
        fetch_allow_cidrs=_networks(media["fetch_allow_cidrs"], ctx, problems,
                                    ("media", "fetch_allow_cidrs")),
        image_url_max_bytes=int(media["image_url_max_mb"] * 1024 * 1024),
        fetch_timeout_s=float(media["fetch_timeout_s"]),
        fetch_connect_timeout_s=float(media["fetch_connect_timeout_s"]),
        fetch_concurrency=media["fetch_concurrency"],
        max_embedding_input_bytes=int(d["limits"]["max_embedding_input_mb"] * 1024 * 1024),
        max_embedding_floats=d["limits"]["max_embedding_floats"],
        media_max_bytes=int(media["max_gb"] * 1024 ** 3),
        max_prompt_bytes=media["max_prompt_bytes"],
        master_key_guesses_per_minute=sec["master_key_guesses_per_minute"],
        metrics_allow_cidrs=_networks(d["metrics"]["allow_cidrs"], ctx, problems,
                                      ("metrics", "allow_cidrs")),
        metrics_token=_secret(d["metrics"]["token"], "metrics.token", MIN_METRICS_TOKEN, ctx,
                              problems),
    )


def _provider_spec(path: Path, name: str, p: dict, ctx: Ctx,
                   problems: list[Problem]) -> ProviderSpec:
    """One entry of ``providers:``, checked: its URL, its kind (a name of
    ``providers.KINDS`` or an import path, resolved here), its auth."""
    def problem(key: str, message: str) -> None:
        problems.append(Problem(str(path), ctx.lines.get(("providers", name, key), 0),
                                f"providers.{name}.{key}: {message}"))
    url = p["base_url"].rstrip("/")
    if url and not re.match(r"^https?://[^/\s]+", url):
        problem("base_url", f"{url!r} must start with http:// or https://")
    owned_by = ""
    if p["kind"] is not None:            # missing: already a problem of its own
        try:
            owned_by = provider_class(p["kind"]).owned_by
        except KindError as exc:
            problem("kind", str(exc))
    if p["auth"] == "none" and p["api_key"]:
        problem("api_key", "is set, but auth is none, so it would never be sent "
                           "(remove one of the two)")
    return ProviderSpec(
        name=name, kind=p["kind"], base_url=url, api_key=p["api_key"], auth=p["auth"],
        timeout_s=float(p["timeout_s"]), connect_timeout_s=float(p["connect_timeout_s"]),
        headers=dict(p["headers"]), poll_interval_s=float(p["poll_interval_s"]),
        breaker_failures=p["breaker_failures"], responses=p["responses"],
        breaker_cooldown_s=float(p["breaker_cooldown_s"]), owned_by=owned_by,
        frame_delay_ms=float(p["frame_delay_ms"]),
        base_url_vars=ctx.variables.get(("providers", name, "base_url"), ()),
        api_key_vars=ctx.variables.get(("providers", name, "api_key"), ()))


def _check_serves(path: Path, alias: str, type_name: str, provider: ProviderSpec, ctx: Ctx,
                  problems: list[Problem]) -> None:
    """A model's provider kind must implement its type's method (``MODEL_TYPES``)."""
    try:
        cls = provider_class(provider.kind)
    except KindError:
        return                                     # reported with the provider
    method = MODEL_TYPES[type_name].provider_method
    if getattr(cls, method, None) is getattr(Provider, method, None):
        problems.append(Problem(str(path), ctx.lines.get(("models", alias, "type"), 0) or
                                ctx.lines.get(("models", alias), 0),
                                f"models.{alias}.type: a `{provider.kind}` provider "
                                f"({provider.name}) cannot serve {type_name} models"))


def _check_controls(path: Path, alias: str, m: dict, provider: ProviderSpec, ctx: Ctx,
                    problems: list[Problem]) -> None:
    """``thinking`` must be a control the provider's kind has (providers/reasoning.py);
    ``cache: auto`` is for Anthropic upstreams (the others cache by themselves)."""
    def problem(key: str, message: str) -> None:
        problems.append(Problem(str(path), ctx.lines.get(("models", alias, key), 0),
                                f"models.{alias}.{key}: {message}"))
    why = m["thinking"] and thinking_problem(provider.kind, m["thinking"])
    if why:
        problem("thinking", why)
    if m["cache"] == "auto" and provider.kind != "anthropic":
        problem("cache", f"`auto` adds Anthropic cache breakpoints; a `{provider.kind}` "
                         f"provider ({provider.name}) caches prompts by itself (remove it)")
    try:
        native = "completions" in provider_class(provider.kind).native_dialects
    except KindError:
        native = True                                  # reported with the provider
    if m["completions"] == "native" and not native:
        problem("completions", f"`native` sends /v1/completions to the upstream's own "
                               f"/completions, which a `{provider.kind}` provider "
                               f"({provider.name}) has not (OpenAI-compatible ones have)")


def _build_catalog(path: Path, d: dict, ctx: Ctx, problems: list[Problem]) -> Catalog:
    providers = {name: _provider_spec(path, name, p, ctx, problems)
                 for name, p in d["providers"].items()}
    try:
        created = int(path.stat().st_mtime)
    except OSError:
        created = 0
    models = {}
    for alias, m in d["models"].items():
        provider = providers.get(m["provider"])
        if provider is None:
            if m["provider"]:
                known = ", ".join(providers) or "none"
                problems.append(Problem(str(path), ctx.lines.get(("models", alias, "provider"), 0),
                                        f"models.{alias}.provider: no provider named "
                                        f"{m['provider']!r} (defined: {known})"))
            continue
        _check_serves(path, alias, m["type"], provider, ctx, problems)
        _check_controls(path, alias, m, provider, ctx, problems)
        allow = model_allow(path, alias, m, ctx, problems)
        models[alias] = ModelSpec(alias=alias, provider=provider, upstream=m["upstream"] or alias,
                                  type=m["type"], created=created,
                                  credits=model_credits(alias, m, provider, allow),
                                  fallbacks=tuple(m["fallbacks"]),
                                  max_output_tokens=m["max_output_tokens"],
                                  thinking=m["thinking"], cache=m["cache"],
                                  completions=m["completions"], allow=allow)
    for alias, m in models.items():
        for i, other in enumerate(m.fallbacks):
            target = models.get(other)
            line = ctx.lines.get(("models", alias, "fallbacks", i), 0)
            if target is None or other == alias:
                problems.append(Problem(str(path), line, f"models.{alias}.fallbacks: "
                                        f"{other!r} is not another model of this catalog"))
            elif target.type != m.type:
                problems.append(Problem(str(path), line, f"models.{alias}.fallbacks: {other!r} "
                                        f"is of type {target.type}, not {m.type}"))
            elif target.completions != m.completions:
                problems.append(Problem(str(path), line, f"models.{alias}.fallbacks: {other!r} "
                                        f"has completions: {target.completions}, not "
                                        f"{m.completions} (a fallback answers the same way)"))
    return Catalog(providers, models)


def config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(explicit or env.get("APIARIUM_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Config:
    """Load both files; raise ConfigError listing every problem found in either."""
    env = os.environ if env is None else env
    path = Path(path)
    problems: list[Problem] = []
    raw, ctx = parse(path, SETTINGS_SCHEMA, env, problems)
    if raw is None:
        raise ConfigError(problems)
    settings = _build_settings(path, raw, ctx, problems)
    raw_cat, cctx = parse(settings.catalog_path, CATALOG_SCHEMA, env, problems)
    catalog = _build_catalog(settings.catalog_path, raw_cat, cctx, problems) if raw_cat else None
    if problems or catalog is None:      # no catalog: parse said why
        raise ConfigError(problems)
    return Config(settings, catalog)

