"""Run the real gateway (``python -m apiarium serve``) on a loopback port, and talk to it
the way users do: the openai SDK, curl, plain HTTP, from chosen source addresses."""
from __future__ import annotations

import http.client
import json
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

MASTER_KEY = "master-test-key-0123456789"
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


class Gateway:
    """One gateway process on its own config folder under ``tmp``."""

    def __init__(self, tmp: Path, models: dict, env: dict | None = None, **settings):
        self.dir = tmp / "config"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "apiarium.yaml"
        self.models_path = self.dir / "models.yaml"
        self.config.write_text(yaml.safe_dump(settings_yaml(tmp, **settings), sort_keys=False))
        self.write_models(models)
        self.env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self.url = ""

    def write_models(self, models: dict) -> None:
        self.models_path.write_text(yaml.safe_dump(models, sort_keys=False))

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> "Gateway":
        self.log = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apiarium", "serve", "--config", str(self.config)],
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

    def restart(self) -> "Gateway":
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


def request(url: str, method: str = "GET", body=None, headers: dict | None = None,
            ip: str = "127.0.0.1", timeout: float = 30.0):
    """One HTTP request from source address ``ip``: (status, headers dict, body bytes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                      source_address=(ip, 0))
    try:
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
