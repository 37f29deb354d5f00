"""Wiring: build the services, the Tornado application and the HTTP server; run and stop.

The only module that knows every other one.  ``Gateway`` owns the lifecycle:
``start`` (config, key store, one aiohttp session, listening sockets, background tasks),
``reload`` (SIGHUP: both YAML files; a bad edit keeps the old configuration), and
``stop`` (stop accepting, let in-flight requests finish within the grace, close).  Both
``start`` and ``reload`` read the configuration through ``load``, which in demo mode
(``apiarium serve --demo``) puts the demo provider in front of every model whose provider
has no key, so a reload keeps the mode.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import tornado.httpserver
import tornado.netutil
import tornado.web

from . import __version__, errors, hosts
from .accesslog import AccessLog
from .catalog import Catalog
from .config import Config, ConfigError, changed_at_start, load_config
from .handlers import admission, bodies, embeddings, messages, pages, responses, videos
from .handlers.base import BaseHandler
from .handlers.chat import ChatHandler, CompletionsHandler
from .handlers.info import (
    HealthHandler,
    KeysMeHandler,
    ModelHandler,
    ModelsHandler,
    NotFoundHandler,
)
from .handlers.media import ImagesHandler, MediaFileHandler, VideosHandler
from .handlers.openapi import OpenApiHandler
from .handlers.ops import MetricsHandler
from .handlers.usage import KeyUsageHandler
from .live import Live, Services, WorkerInfo
from .media import MediaStore
from .metrics import Metrics
from .netguard import Blocklist, NetGuard
from .outbound import FetchPolicy, ImageFetcher
from .providers import build as build_providers
from .providers.demo import demo_note, keyless_note, with_demo
from .providers.signatures import Signatures
from .services.keys import KeyService
from .services.limits_redis import RedisBackend, where
from .storage import StorageUnavailable, database_url
from .usage import UsageLedger
from .usagejournal import journal_folder
from .yamlschema import Problem

log = logging.getLogger("apiarium")

CHANGE_POLL_S = 0.5      # how often other processes' writes (the CLI's) are looked for
PUSHED_POLL_S = 2.0      # ... while PostgreSQL's LISTEN tells at once (the fallback poll)
HOUSEKEEPING_S = 2.0     # last-used times written (and, every PRUNE_S, the prune)
TAKEOVER_S = 10.0        # how often expired video-job leases are looked for (lease: 60 s)
PRUNE_S = 60.0           # how often buckets, media and dead video jobs are pruned
USAGE_FLUSH_S = 2.0      # how often usage counted in memory is written
METRICS_SAVE_S = 1.0     # with workers: how often a worker's metrics are shared
RELOAD_SLOW_S = 0.1      # a reload of keys longer than this waits 3 times as long after it
LOG_FLUSH_S = 0.25       # how often access-log lines are written
LISTEN_BACKLOG = 4096    # a burst of new connections waits here, not in SYN retries


def bind_sockets(host: str, port: int, reuse_port: bool = False) -> list[socket.socket]:
    """The listening sockets for ``host``:``port`` (every address family the name has; port 0:
    one free port, the same for all); ``reuse_port``: SO_REUSEPORT (workers)."""
    return tornado.netutil.bind_sockets(port, host, backlog=LISTEN_BACKLOG,
                                        reuse_port=reuse_port)


def routes() -> list:
    return [                 # matched in order: the busiest first
        (r"/v1/chat/completions", ChatHandler),
        (r"/v1/completions", CompletionsHandler),
        *responses.routes,
        *messages.routes,
        *pages.routes(),
        (r"/health", HealthHandler),
        (r"/v1/models", ModelsHandler),
        (r"/v1/models/(.+)", ModelHandler),
        (r"/v1/keys/me/usage", KeyUsageHandler),
        (r"/v1/keys/me", KeysMeHandler),
        (r"/v1/images/generations", ImagesHandler),
        (r"/v1/videos/generations", VideosHandler),
        *videos.routes,
        *embeddings.routes,
        (r"/media/([^/]+)", MediaFileHandler),
        (r"/metrics", MetricsHandler),
        (r"/openapi\.json", OpenApiHandler),
    ]


def _every_address(host: str) -> bool:
    """Whether listening on ``host`` means every address (0.0.0.0, ::, or none given)."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def model_label(handler: tornado.web.RequestHandler, catalog: Catalog) -> str:
    """The model a request names, as metrics and the access log show it: an alias of the
    catalog, ``unknown`` for anything else a client sent (so no client can mint a series of
    its own), ``-`` when no model was read."""
    alias = getattr(handler, "model_alias", "")
    if not alias:
        return "-"
    return alias if alias in catalog.models else "unknown"


def log_request(handler: BaseHandler) -> None:
    """Tornado's per-request hook: metrics, then one access-log line."""
    settings = handler.application.settings
    metrics = settings["services"].metrics
    ours = isinstance(handler, BaseHandler)
    endpoint, dialect = (handler.endpoint, handler.dialect) if ours else ("other", "openai")
    # 499 (nginx's "client closed request"): the client left before the answer was whole,
    # whatever status its first bytes carried
    status = 499 if getattr(handler, "client_gone", False) else handler.get_status()
    model = model_label(handler, settings["services"].catalog)
    req = handler.request
    elapsed = req.request_time()
    metrics.observe_request(endpoint, dialect, model, status, elapsed)
    rec = getattr(handler, "key_record", None)
    upstream = getattr(handler, "upstream_ms", None)
    settings["access_log"].write(      # the method and path a client's: cut (errors.echo)
        f"{getattr(handler, 'request_id', '-')} {errors.echo(req.method, quote=False)} "
        f"{errors.echo(req.path, quote=False)} {status} "
        f"{1000.0 * elapsed:.1f}ms ip={getattr(handler, 'client_ip', '') or req.remote_ip} "
        f"key={rec.key_prefix if rec else '-'} model={model} "
        f"bytes={getattr(handler, 'bytes_out', 0)} "
        f"upstream_ms={'-' if upstream is None else f'{upstream:.1f}'}")


def make_app(services: Services,
             access_log: AccessLog | None = None) -> tornado.web.Application:
    table = routes()
    admission.check_routes([route[1] for route in table] + [NotFoundHandler])
    return tornado.web.Application(table, services=services,
                                   access_log=access_log or AccessLog(),
                                   default_handler_class=NotFoundHandler,
                                   log_function=log_request, xsrf_cookies=False)


def make_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                 headers={"User-Agent": f"apiarium/{__version__}"},
                                 trust_env=False)


def make_live(config: Config, session: aiohttp.ClientSession,
              metrics: Metrics | None = None, fetcher: ImageFetcher | None = None,
              media: MediaStore | None = None,
              signatures: Signatures | None = None) -> Live:
    s = config.settings
    started = time.perf_counter()
    try:
        blocklist = Blocklist.from_files(s.blocklists)
    except OSError as exc:         # checked by load_config; this is a file that just went
        raise ConfigError([Problem(str(s.path), 0, f"security.blocklists: cannot read "
                                   f"{exc.filename}: {exc.strerror or exc}")]) from None
    for problem in blocklist.problems:
        log.warning("blocklist: %s", problem)
    if blocklist.bad_lines > len(blocklist.problems):
        log.warning("blocklists: %d unreadable lines skipped in all", blocklist.bad_lines)
    if s.blocklists:
        log.info("blocklists: %d ranges from %d files loaded in %.2f s", blocklist.entries,
                 len(s.blocklists), time.perf_counter() - started)
    guard = NetGuard(s.trusted_proxies, s.block_proxy_headers, blocklist, s.client_ip_header)
    # user-given image URLs go through the fetcher, never the providers' session
    return Live.make(config, guard, build_providers(config.catalog, session, metrics, fetcher,
                                                    signatures), media)


class Gateway:
    def __init__(self, config_path: str | Path, worker: WorkerInfo | None = None,
                 demo: bool = False):
        self.config_path = Path(config_path)
        self.worker = worker                # None: the one process (no --workers)
        self.demo = demo                    # apiarium serve --demo
        self._services: Services | None = None
        self.server: tornado.httpserver.HTTPServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self.fetcher: ImageFetcher | None = None
        # Gemini thought signatures and Anthropic thinking by tool call id: one store for the
        # life of the process, handed to each reload's providers
        self.signatures = Signatures()
        self.port = 0
        self._tasks: list[asyncio.Task] = []

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the gateway has not been started")
        return self._services

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the gateway has not been started")
        return self._session

    def load(self) -> Config:
        """Both YAML files (a ``ConfigError`` if they have problems); in demo mode, the
        catalog with the demo provider in front of every model whose provider has no key.
        Logs (in one worker of several) which models are demo, or, without demo mode and
        without any provider key, how to get real answers or a demo."""
        config = load_config(self.config_path)
        if self.demo:
            catalog, served, left = with_demo(config.catalog)
            config = Config(config.settings, catalog)
            note: str | None = demo_note(served, left)
        else:
            note = keyless_note(config.catalog)
        if note and (self.worker is None or self.worker.slot == 0):
            log.log(logging.INFO if self.demo else logging.WARNING, "%s", note)
        return config

    async def start(self, host: str | None = None, port: int | None = None,
                    sockets: list[socket.socket] | None = None) -> None:
        """Serve on ``sockets`` (a worker: the supervisor's), or bind ``host``:``port``."""
        config = self.load()                          # raises ConfigError: nothing started
        s = config.settings
        keys = await KeyService(s.database, s.secret_file).open()
        usage = await UsageLedger(s.database, journal_folder(s.database, s.media_dir)).open()
        metrics = Metrics(key_count=lambda: len(keys),
                          shared_dir=self.worker.metrics_dir if self.worker else None)
        self._session = make_session()
        self.fetcher = ImageFetcher(FetchPolicy.from_settings(s))
        shared = None
        if s.limiter_backend != "memory":
            shared = RedisBackend(s.limiter_backend, metrics, timeout_s=s.limiter_timeout_s)
            await shared.ping()
            log.info("rate limits: shared in Redis at %s (if it is down: %s)",
                     where(s.limiter_backend), s.limiter_on_down)
            if s.limiter_on_down == "local" and s.limiter_instances == 1:
                log.warning("rate_limit.on_backend_down is local and rate_limit.instances is "
                            "1: while Redis is down each process allows a key its whole limit; "
                            "set instances to the number of gateway processes")
        self._services = Services(live=make_live(config, self.session, metrics, self.fetcher,
                                                 signatures=self.signatures),
                                  keys=keys, usage=usage, metrics=metrics,
                                  worker=self.worker, database_engine="sqlite"
                                  if database_url(s.database) is None else "postgresql",
                                  shared=shared)
        await self.services.live.media.sweep()        # counts what the media folder holds
        await self.services.jobs.resume()             # video renders a stop interrupted
        self.access_log = AccessLog(shared=self.worker is not None)
        app = make_app(self.services, self.access_log)
        self.server = tornado.httpserver.HTTPServer(
            # 64 KB for every path that takes no body; ApiHandler.prepare raises it to
            # max_body_mb for its POSTs, whose bodies it streams and counts
            app, max_body_size=64 * 1024, max_header_size=64 * 1024,
            idle_connection_timeout=s.header_timeout_s,   # also Tornado's whole-head limit
            body_timeout=s.body_timeout_s)
        host = host or s.host
        if sockets is None:
            sockets = bind_sockets(host, s.port if port is None else port)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._tasks.append(asyncio.ensure_future(self._watch_changes()))
        self._tasks.append(asyncio.ensure_future(self._housekeeping()))
        self._tasks.append(asyncio.ensure_future(self._flush_usage()))
        self._tasks.append(asyncio.ensure_future(self._flush_log()))
        self._tasks.append(asyncio.ensure_future(bodies.watch(self.services, s.body_timeout_s)))
        if self.worker is not None:
            self._tasks.append(asyncio.ensure_future(self._save_metrics()))
        shown = f"[{host}]" if ":" in host else host
        if self.worker is not None:          # the supervisor says "listening" for them all
            log.info("worker %d (pid %d) serving http://%s:%d", self.worker.slot,
                     os.getpid(), shown, self.port)
            return
        if _every_address(host) and not (s.public_url or s.allowed_hosts):
            log.warning("listening on every address (%s) without server.public_url: the "
                        "homepage and media URLs take their host name from each request's "
                        "Host header, which any client chooses; set server.public_url (or "
                        "server.allowed_hosts)", host or "*")
        if rebinding := hosts.rebinding_warning(host, s.allowed_hosts):
            log.warning("%s", rebinding)
        log.info("apiarium listening on http://%s:%d", shown, self.port)

    async def _watch_changes(self) -> None:
        """Reload keys and blocks when another process (a worker, another host, the CLI)
        changed them: told at once by PostgreSQL's LISTEN, else by polling (SQLite's
        ``PRAGMA data_version``: one cheap read every 0.5 s)."""
        svc = self.services
        changed = asyncio.Event()
        was_pushed = False
        while True:
            try:
                pushed = await svc.keys.listen(changed.set)
            except Exception:
                log.exception("listening for key changes failed; polling")
                pushed = False
            if pushed != was_pushed:
                log.info("key changes: %s", "the database tells at once (LISTEN)" if pushed
                         else f"looked for every {CHANGE_POLL_S:g} s until it can tell again")
                was_pushed = pushed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), PUSHED_POLL_S if pushed else CHANGE_POLL_S)
            changed.clear()
            try:
                began = time.monotonic()
                if await svc.keys.refresh():
                    took = time.monotonic() - began
                    log.info("key store changed: %d active keys", len(svc.keys))
                    if took > RELOAD_SLOW_S:     # a big table: reloading at most 1/4 of the time
                        await asyncio.sleep(3 * took)
                if not svc.database_ok:
                    log.info("key store reachable again")
                svc.database_ok = True
            except StorageUnavailable as exc:          # an outage: one line, not a traceback
                if svc.database_ok:
                    log.warning("reading key changes: %s; will retry", exc)
                svc.database_ok = False
            except Exception:
                log.exception("reading key changes failed; will retry")
                await asyncio.sleep(HOUSEKEEPING_S)

    async def _save_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_SAVE_S)
            try:
                self.services.metrics.save()
            except OSError as exc:
                log.warning("sharing metrics: %s", exc)

    async def _housekeeping(self) -> None:
        last_prune = last_takeover = time.monotonic()
        svc = self.services
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await svc.keys.flush()                 # when each key was last used
                if time.monotonic() - last_takeover > TAKEOVER_S:
                    last_takeover = time.monotonic()
                    await svc.jobs.resume()            # video jobs of a process that died
                if time.monotonic() - last_prune > PRUNE_S:
                    last_prune = time.monotonic()
                    await self._prune()
            except StorageUnavailable as exc:          # an outage: one line, not a traceback
                log.warning("housekeeping: %s; will retry", exc)
            except Exception:
                log.exception("housekeeping failed; will retry")

    async def _prune(self) -> None:
        """Drop refilled buckets (they equal fresh ones), expired media, dead video jobs."""
        svc = self.services
        s = svc.settings
        svc.limits.prune(lambda h: svc.keys.rpm_of(h, s.rpm), s)
        visits = s.key_requests_per_minute or 1
        svc.keys.visits.prune(lambda _: visits)
        svc.guesses.prune(s.master_key_guesses_per_minute)
        svc.public.prune(s.public_requests_per_minute)
        removed = await svc.live.media.sweep()
        if removed:
            log.info("media sweep: %d expired files removed", removed)
        await svc.jobs.prune()                 # failed or expired media.ttl_hours ago

    async def _flush_log(self) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_S)
            self.access_log.flush()

    async def _flush_usage(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            try:     # shielded: a shutdown never cuts a write in half (close() waits for it)
                await asyncio.shield(self.services.usage.flush())
                await self.services.credits.flush()     # bookings to a shared counter
            except StorageUnavailable as exc:
                log.warning("writing usage: %s; will retry", exc)
            except Exception:
                log.exception("writing usage failed; will retry")

    def reload(self) -> bool:
        """Re-read both YAML files.  On any error the running configuration stays."""
        svc = self.services
        try:
            config = self.load()
            live = make_live(config, self.session, svc.metrics, self.fetcher, svc.live.media,
                             self.signatures)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            return False
        except OSError as exc:
            log.error("reload rejected: %s", exc)
            return False
        for name in changed_at_start(svc.settings, config.settings):
            log.warning("%s changed: it is read at start, so it takes effect at the next "
                        "restart", name)
        svc.live = live
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(self._resume_jobs()))
        if self.fetcher is not None:
            self.fetcher.configure(FetchPolicy.from_settings(config.settings))
        log.info("configuration reloaded: %d models", len(config.catalog))
        return True

    async def _resume_jobs(self) -> None:
        """SIGHUP: poll again the unfinished video jobs no render here is waiting on."""
        try:
            await self.services.jobs.resume()
        except StorageUnavailable as exc:
            log.warning("resuming video jobs: %s", exc)
        except Exception:
            log.exception("resuming video jobs failed")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting; let requests in flight finish within the grace; then end the
        rest cleanly (a 503, or an SSE error event on a stream); write usage; close."""
        if self._services is None:           # start failed half-way: close what it opened
            if self._session is not None:
                await self._session.close()
            if self.fetcher is not None:
                await self.fetcher.close()
            return
        svc = self.services
        grace = svc.settings.shutdown_grace_s if grace_s is None else grace_s
        svc.stopping = True
        if self.server is not None:
            self.server.stop()
            deadline = time.monotonic() + grace     # upstream calls whose client left too
            while (svc.inflight or svc.detached.tasks) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if svc.inflight:
                log.warning("grace over: ending %d requests still in flight", len(svc.inflight))
                for handler in list(svc.inflight):
                    if hasattr(handler, "interrupt"):
                        handler.interrupt()
                deadline = time.monotonic() + 2
                while svc.inflight and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            await self.server.close_all_connections()
        # the background loops end before the stores they use close (housekeeping would
        # open the video jobs' store again after jobs.close())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        renders = list(svc.media.background)   # renders whose clients left, past the grace
        for task in renders:
            task.cancel()
        await asyncio.gather(*renders, return_exceptions=True)
        await svc.detached.close()             # each books its whole hold
        await svc.jobs.close()                 # unfinished jobs resume at the next start
        if self._session is not None:
            await self._session.close()
        if self.fetcher is not None:
            await self.fetcher.close()
        self.access_log.flush()
        with contextlib.suppress(OSError):
            svc.metrics.save()                 # a worker's last counts, for the others
        await svc.usage.close()
        await svc.keys.close()
        await svc.credits.flush()
        if svc.shared is not None:
            await svc.shared.close()

    async def run_until_signalled(self, reload_first: bool = False,
                                  stopping: asyncio.Event | None = None) -> None:
        """Until SIGTERM or SIGINT (then ``stop``); SIGHUP reloads.  ``reload_first``: a
        SIGHUP came while the gateway was starting (``workers.serve_one`` holds it until
        now), so reload at once; ``stopping``: set by a SIGTERM or SIGINT held the same way
        (it stops at once)."""
        loop = asyncio.get_running_loop()
        stopping = stopping or asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if reload_first:
            self.reload()
        await stopping.wait()
        log.info("shutting down: waiting up to %gs for requests in flight",
                 self.services.settings.shutdown_grace_s)
        await self.stop()
        log.info("stopped")
