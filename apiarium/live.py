"""What one running gateway holds, handed to every handler as ``settings["services"]``.

Built by ``app.py``; a configuration reload replaces ``config``, ``guard`` and ``providers``
together by swapping in a new ``Live`` (one attribute write, so a request sees either the
old world or the new one, never half of each).  The services (``chat``, ``media``,
``embeddings``) read the current ``Live`` at the start of each request.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import Catalog
from .config import Config, Settings
from .media import MediaStore
from .metrics import Metrics
from .netguard import NetGuard
from .providers.base import Provider
from .ratelimit import FailedGuesses, PublicRequests
from .services import status
from .services.chat import ChatService
from .services.costs import CreditBook
from .services.credits_redis import RedisCredits
from .services.detached import Detached
from .services.embeddings import EmbeddingService
from .services.fallback import Breakers
from .services.keys import KeyService
from .services.limits import Limiter, RequestLimits
from .services.limits_redis import RedisBackend, RedisLimits, SharedIssuance
from .services.media import MediaService
from .services.videojobs import VideoJobService
from .usage import UsageLedger


@dataclass(frozen=True)
class Live:
    """Everything that a reload replaces at once."""
    config: Config
    guard: NetGuard
    providers: dict[str, Provider]
    media: MediaStore
    models_body: bytes

    @classmethod
    def make(cls, config: Config, guard: NetGuard, providers: dict[str, Provider],
             media: MediaStore | None = None) -> Live:
        """``media``: the running store, kept (with what it counted) when a reload leaves
        ``media.dir`` as it was."""
        body = status.list_body(config.catalog)        # as long as no breaker is open
        s = config.settings
        if media is not None and media.folder == s.media_dir:
            media.configure(s.media_ttl_hours, s.media_max_bytes)
        else:
            media = MediaStore(s.media_dir, s.media_ttl_hours, s.media_max_bytes)
        return cls(config, guard, providers, media, body)


@dataclass(frozen=True)
class WorkerInfo:
    """One worker of ``apiarium serve --workers N``: its slot (0..N-1), N, and the folder
    where the workers share their metrics."""
    slot: int
    count: int
    metrics_dir: Path


@dataclass
class Services:
    live: Live
    keys: KeyService
    usage: UsageLedger
    metrics: Metrics
    started: float = field(default_factory=time.time)
    inflight: set = field(default_factory=set)      # handlers not yet finished
    stopping: bool = False                          # SIGTERM: finishing what is in flight
    breakers: Breakers = field(default_factory=Breakers)    # kept across reloads
    worker: WorkerInfo | None = None                # None: the one process (no --workers)
    database_engine: str = "sqlite"                 # or postgresql
    database_ok: bool = True                        # the last refresh reached the key store
    shared: RedisBackend | None = None     # rate_limit.backend: Redis (None: this process)
    limits: Limiter = field(init=False)
    guesses: FailedGuesses = field(init=False)       # at the master key, per network
    public: PublicRequests = field(init=False)       # what needs no key, per network
    credits: CreditBook | RedisCredits = field(init=False)
    chat: ChatService = field(init=False)
    media: MediaService = field(init=False)
    jobs: VideoJobService = field(init=False)
    embeddings: EmbeddingService = field(init=False)
    detached: Detached = field(default_factory=Detached)   # calls whose client left

    def __post_init__(self) -> None:
        self.limits = (RequestLimits(self.usage, self.metrics) if self.shared is None
                       else RedisLimits(self.shared, self.usage, self.metrics))
        self.credits = CreditBook(self.usage) if self.shared is None else \
            RedisCredits(self.shared, self.usage, self.metrics, lambda: self.settings)
        if self.shared is not None:
            issuance = SharedIssuance(self.shared, lambda: self.settings, self.keys.admit)
            self.keys.shared_caps, self.keys.shared_visits = issuance, issuance.visit
        self.guesses = FailedGuesses(self.metrics.rate_limited.labels("failed_auth"))
        self.public = PublicRequests(self.metrics.rate_limited.labels("public"))
        self.chat = ChatService(lambda: self.live, self.breakers, self.usage, self.credits,
                                self.detached)
        self.jobs = VideoJobService(lambda: self.live, self.breakers, self.usage, self.credits)
        self.media = MediaService(lambda: self.live, self.breakers, self.usage, self.credits,
                                  self.jobs)
        self.embeddings = EmbeddingService(lambda: self.live, self.breakers, self.usage,
                                           self.credits, self.detached)

    @property
    def settings(self) -> Settings:
        return self.live.config.settings

    @property
    def catalog(self) -> Catalog:
        return self.live.config.catalog
