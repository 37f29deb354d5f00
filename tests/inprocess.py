"""The gateway's services and application built in-process from a config on disk, the way
``app.Gateway.start`` builds them (but without listening sockets or background tasks): for
service tests (``async with InProcess(path) as env: env.services.chat...``) and for
pytest-tornado ``app`` fixtures (``env.app()``)."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import tornado.web
import yaml

from apiarium.app import make_app, make_live, make_session
from apiarium.config import Config, load_config
from apiarium.live import Services
from apiarium.metrics import Metrics
from apiarium.services.keys import KeyService
from apiarium.usage import UsageLedger

MASTER = "m-key-0123456789abcdef0123456789abcdef"


def write_config(folder: Path, models: dict, **settings: object) -> Path:
    """apiarium.yaml (test defaults, overridden section by section) and models.yaml in
    ``folder``; the path of apiarium.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    base: dict = {"database": "db.sqlite3", "master_key": MASTER,
                  "rate_limit": {"rpm": 100}, "media": {"dir": "media"}}
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    (folder / "apiarium.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (folder / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    return folder / "apiarium.yaml"


class InProcess:
    """``Services`` over a real key store, usage ledger and aiohttp session."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.config: Config | None = None
        self._services: Services | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def services(self) -> Services:
        assert self._services is not None, "open() first"
        return self._services

    async def open(self) -> InProcess:
        self.config = config = load_config(self.config_path)
        keys = await KeyService(config.settings.database, config.settings.secret_file).open()
        usage = await UsageLedger(config.settings.database).open()
        metrics = Metrics(key_count=lambda: len(keys))
        self._session = make_session()
        self._services = Services(live=make_live(config, self._session, metrics), keys=keys,
                                  usage=usage, metrics=metrics)
        return self

    async def close(self) -> None:
        if self._services is not None:
            await self._services.detached.close()
            await self._services.jobs.close()
            await self._services.usage.close()
            await self._services.keys.close()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> InProcess:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def app(self) -> tornado.web.Application:
        return make_app(self.services)
