"""Run the real gateway on a loopback port, and talk to it the way users do: the openai SDK,
curl, plain HTTP, from chosen source addresses.

Two runners with one interface (``url``, ``port``, ``log``, ``start``, ``stop``, ``restart``,
``reload``, ``write_models`` and the clients):

- ``InProcessGateway`` (the default of conftest's ``make_gateway``): ``apiarium.app.Gateway``
  inside the test process, on its own event loop (uvloop when installed, as the CLI) in a
  background thread.  Blocking SDK calls from the test thread are served by that thread.
- ``Gateway`` (also named ``ProcessGateway``): ``python -m apiarium serve`` in a subprocess,
  for what needs a process: signals, exit codes, the CLI's own output, the process's memory.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai

try:                      # openai>=3 ships on httpx2, older releases on httpx
    import httpx2 as httpx
except ImportError:       # pragma: no cover
    import httpx
import yaml

MASTER_KEY = "master-test-key-0123456789abcdefghijkl"   # 32+ characters, as check-config asks
READY = re.compile(r"apiarium listening on (http://\S+)")


def settings_yaml(tmp: Path, **overrides) -> dict:
    """Test defaults for apiarium.yaml; keyword overrides are merged section by section."""
    settings = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
        "database": str(tmp / "data" / "apiarium.sqlite3"),
        "catalog": "models.yaml",
        "master_key": MASTER_KEY,
        "rate_limit": {"rpm": 4},
        "media": {"dir": str(tmp / "data" / "media")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return settings


class _GatewayBase:
    """A config folder under ``tmp`` and the clients; the runners add the lifecycle."""

    def __init__(self, tmp: Path, models: dict, **settings):
        self.dir = tmp / "config"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "apiarium.yaml"
        self.models_path = self.dir / "models.yaml"
        self.config.write_text(yaml.safe_dump(settings_yaml(tmp, **settings), sort_keys=False))
        self.write_models(models)
        self.log: list[str] = []
        self.url = ""

    def write_models(self, models: dict) -> None:
        self.models_path.write_text(yaml.safe_dump(models, sort_keys=False))

    def restart(self):
        self.stop()
        return self.start()

    @property
    def port(self) -> int:
        return urlsplit(self.url).port

    def base_url_for(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/v1"

    # ------------------------------------------------------------------ clients
    def key_for(self, ip: str = "127.0.0.1") -> str:
        status, _, body = request(self.url + "/v1/keys/me", ip=ip)
        assert status == 200, body
        return json.loads(body)["key"]

    def sdk(self, key: str, ip: str = "127.0.0.1", **kw) -> openai.OpenAI:
        transport = httpx.HTTPTransport(local_address=ip)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key,
                             max_retries=0, http_client=openai.DefaultHttpxClient(
                                 transport=transport), **kw)

    def async_sdk(self, key: str, ip: str = "127.0.0.1", **kw) -> openai.AsyncOpenAI:
        transport = httpx.AsyncHTTPTransport(local_address=ip)
        return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key,
                                  max_retries=0, http_client=openai.DefaultAsyncHttpxClient(
                                      transport=transport), **kw)

    def post(self, path: str, body, key: str | None = None, ip: str = "127.0.0.1",
             headers: dict | None = None):
        h = {"Content-Type": "application/json", **(headers or {})}
        if key:
            h["Authorization"] = f"Bearer {key}"
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return request(self.url + path, "POST", data, h, ip=ip)

    def get(self, path: str, key: str | None = None, ip: str = "127.0.0.1",
            headers: dict | None = None):
        h = dict(headers or {})
        if key:
            h["Authorization"] = f"Bearer {key}"
        return request(self.url + path, "GET", None, h, ip=ip)


class Gateway(_GatewayBase):
    """One gateway process (``python -m apiarium serve``) on its own config folder under
    ``tmp``; ``log`` is its stdout and stderr, line by line; ``args``: more of ``serve``'s
    arguments (``--demo``, ``--workers N``)."""
    args: tuple[str, ...] = ()

    def __init__(self, tmp: Path, models: dict, env: dict | None = None, **settings):
        super().__init__(tmp, models, **settings)
        self.env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> Gateway:
        self.log = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apiarium", "serve", "--config", str(self.config),
             *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        ready = threading.Event()

        def drain(stream=self.proc.stdout):
            for line in stream:
                self.log.append(line.rstrip("\n"))
                m = READY.search(line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()
        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.log))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def reload(self) -> None:
        """SIGHUP: the process re-reads both YAML files (asynchronously: wait for the effect)."""
        self.proc.send_signal(signal.SIGHUP)


ProcessGateway = Gateway

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"     # as apiarium.cli sets it
_app_logger = logging.getLogger("apiarium")
_info_holders = 0
_info_lock = threading.Lock()
_info_saved_level = logging.NOTSET


def _hold_info_level() -> None:
    """While any in-process gateway runs, the 'apiarium' logger passes INFO records (as the
    CLI's logging setup does); the level it had comes back when the last one stops."""
    global _info_holders, _info_saved_level
    with _info_lock:
        if _info_holders == 0:
            _info_saved_level = _app_logger.level
            if _app_logger.getEffectiveLevel() > logging.INFO:
                _app_logger.setLevel(logging.INFO)
        _info_holders += 1


def _release_info_level() -> None:
    global _info_holders
    with _info_lock:
        _info_holders -= 1
        if _info_holders == 0:
            _app_logger.setLevel(_info_saved_level)


class _ThreadLog(logging.Handler):
    """The records logged on one gateway's loop thread, formatted as the CLI prints them,
    appended line by line to ``lines`` (a traceback gives several lines, as on stderr)."""

    def __init__(self, lines: list[str], thread: threading.Thread):
        super().__init__(logging.DEBUG)
        self.lines, self.thread = lines, thread
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread.ident

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.extend(self.format(record).splitlines())
        except Exception:                                  # pragma: no cover
            self.handleError(record)


class _LineSink:
    """A text stream for the access log: what it writes lands in ``lines``, line by line."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return len(text)

    def flush(self) -> None:
        pass


def _loop_factory():
    """uvloop when it is installed, as ``apiarium serve`` runs; APIARIUM_TEST_LOOP=asyncio
    (or =uvloop, which then must be installed) chooses."""
    choice = os.environ.get("APIARIUM_TEST_LOOP", "")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


class InProcessGateway(_GatewayBase):
    """``apiarium.app.Gateway`` in this process, on its own event loop in a background thread.

    The same interface as the subprocess ``Gateway``, except what only a process has: no
    ``proc`` and no signals (``reload()`` is SIGHUP's reload, run on the loop, and returns
    whether it was accepted); ``stop()`` is the graceful stop SIGTERM starts, and returns
    None (there is no exit code).  ``log`` holds the records logged on the gateway's loop
    thread (the 'apiarium' logger at INFO, tornado's and asyncio's warnings and errors) and
    the access log, in the CLI's format.  A start that fails raises RuntimeError with the
    lines ``apiarium serve`` would print.  Each start gets a new loop and thread, and stop
    closes all of it: the server's sockets and connections, the aiohttp session, the
    databases, the loop (its leftover tasks cancelled) and the log handler."""

    def __init__(self, tmp: Path, models: dict, env: dict | None = None, **settings):
        if env is not None:
            raise ValueError("env= is for the subprocess gateway (the in-process one reads "
                             "this process's environment): use process=True")
        super().__init__(tmp, models, **settings)
        self.app = None                   # apiarium.app.Gateway while running
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._handler: _ThreadLog | None = None
        self._thread_error: BaseException | None = None

    @property
    def proc(self):
        raise AttributeError("an in-process gateway has no process: a test that signals or "
                             "waits for one needs @pytest.mark.subprocess_gateway(reason)")

    @property
    def running(self) -> bool:
        return self._thread is not None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> InProcessGateway:
        from apiarium.app import Gateway as App
        if self._thread is not None:
            raise RuntimeError("already running")
        self.log = []
        self.loop = _loop_factory()()
        self._thread = threading.Thread(target=self._run_loop, args=(self.loop,),
                                        name=f"apiarium-{self.dir.parent.name}", daemon=True)
        self._handler = _ThreadLog(self.log, self._thread)
        logging.getLogger().addHandler(self._handler)
        _hold_info_level()
        self._thread.start()
        app = App(self.config)
        try:
            self._call(self._start(app), timeout)
        except BaseException as exc:
            self._close_loop()
            printed = _as_printed(exc)
            if printed is None:
                raise
            self.log.extend(printed)
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.log)) from exc
        self.app = app
        return self

    async def _start(self, app) -> None:
        try:
            await app.start()
        except BaseException:
            await _close_partly_started(app)
            raise
        app.access_log.stream = _LineSink(self.log)
        host = app.services.settings.host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{app.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """The graceful stop (``apiarium.app.Gateway.stop``, as on SIGTERM), then the loop
        and its thread end.  Only SIGTERM and SIGINT mean that here."""
        if sig not in (signal.SIGTERM, signal.SIGINT):
            raise ValueError(f"{signal.Signals(sig).name} needs a process: "
                             "@pytest.mark.subprocess_gateway(reason)")
        if self._thread is None:
            return
        app, self.app = self.app, None
        try:
            if app is not None:
                self._call(app.stop(), timeout)
        finally:
            self._close_loop()

    def reload(self) -> bool:
        """What SIGHUP does: re-read both YAML files; False if the edit was rejected (the
        running configuration stays, and the reason is in the log)."""

        async def reload():
            return self.app.reload()
        return self._call(reload(), 10.0)

    # ------------------------------------------------------------------ the loop thread
    def _call(self, coro, timeout: float):
        """Run ``coro`` on the gateway's loop; its result, or its exception, here."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The thread: run the loop until ``_close_loop`` stops it; then cancel what is left
        on it (a handler still waiting for an upstream), end async generators and the
        default executor, and close it with its tornado IOLoop."""
        import tornado.ioloop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except BaseException as exc:                      # reported by _close_loop
            self._thread_error = exc
        finally:
            ioloop = tornado.ioloop.IOLoop.current(instance=False)   # the server's, if any
            asyncio.set_event_loop(None)
            if ioloop is not None:
                ioloop.close()                # forgets the asyncio loop, and closes it
            if not loop.is_closed():
                loop.close()

    def _close_loop(self) -> None:
        """Stop the loop, join its thread, take the log handler away."""
        loop, thread = self.loop, self._thread
        try:
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
                thread.join(30)
            if thread.is_alive():
                raise RuntimeError("the in-process gateway's loop did not stop")
            if self._thread_error is not None:
                raise RuntimeError("closing the gateway's loop failed") from self._thread_error
        finally:
            logging.getLogger().removeHandler(self._handler)
            _release_info_level()
            self.loop = self._thread = self._handler = None
            self._thread_error = None


def _as_printed(exc: BaseException) -> list[str] | None:
    """The lines ``apiarium serve`` prints when its start fails with ``exc`` (None: a failure
    it does not expect either)."""
    from apiarium.config import ConfigError
    from apiarium.keysecret import KeyStoreError
    if isinstance(exc, ConfigError):
        return [str(problem) for problem in exc.problems]
    if isinstance(exc, KeyStoreError):
        return [f"apiarium: {exc}"]
    if isinstance(exc, OSError):
        return [f"apiarium: cannot listen: {exc}"]
    return None


async def _close_partly_started(app) -> None:
    """What a start that failed midway had opened (a process that exits need not care):
    the app's own stop closes whatever it got to."""
    await app.stop(grace_s=0)


def request(url: str, method: str = "GET", body=None, headers: dict | None = None,
            ip: str = "127.0.0.1", timeout: float = 30.0):
    """One HTTP request from source address ``ip``: (status, headers dict, body bytes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                      source_address=(ip, 0))
    try:
        # the server may answer before the whole body was sent (a 413 on the headers
        # alone) and hang up: read that answer, as curl does
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                         body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def error_of(body: bytes) -> dict:
    """The OpenAI envelope's inner object, asserting the envelope's shape on the way."""
    data = json.loads(body)
    assert set(data) == {"error"}, data
    err = data["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and len(err["message"]) > 20, err
    return err


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def sigterm_ok(code: int | None) -> bool:
    return code == 0 or code == -signal.SIGTERM
