"""The command line: ``apiarium serve | check-config | migrate | keys …`` (also ``python -m
apiarium``)."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

import orjson

from . import hosts
from .config import ConfigError, Settings, config_path, load_config
from .config_limits import memory_workers

if TYPE_CHECKING:                 # imported where used: check-config stays light
    from .services.keys import KeyService
    from .storage import KeyRecord, Storage



def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="apiarium.yaml (default: $APIARIUM_CONFIG, then config/apiarium.yaml)")
    p = argparse.ArgumentParser(prog="apiarium", parents=[common],
                                description="A self-hosted, OpenAI-compatible AI gateway.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway in the foreground")
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port; 0 = any)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="N worker processes sharing the port, under a supervisor "
                            "(default: server.workers, 1: no supervisor)")
    serve.add_argument("--demo", action="store_true",
                       help="answer for every model whose provider has no key with the demo "
                            "provider (made-up answers, no network, no key needed); kept "
                            "across reloads")

    sub.add_parser("check-config", parents=[common], help="validate both YAML files")
    sub.add_parser("migrate", parents=[common],
                   help="create or upgrade the database's schema (the server does it at start)")

    keys = sub.add_parser("keys", parents=[common], help="administer API keys")
    ks = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = ks.add_parser("list", parents=[common],
                       help="every key: prefix, IP, created, last used, rpm, status")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    show = ks.add_parser("show", parents=[common], help="the keys of an IP, a key or a key prefix")
    show.add_argument("target", metavar="IP|KEY")
    revoke = ks.add_parser("revoke", parents=[common], help="revoke a key (its IP gets a new one)")
    revoke.add_argument("key", metavar="KEY|PREFIX")
    rotate = ks.add_parser("rotate", parents=[common], help="give an IP a new key now")
    rotate.add_argument("ip", metavar="IP")
    rpm = ks.add_parser("set-rpm", parents=[common], help="a key's own requests per minute")
    rpm.add_argument("key", metavar="KEY|PREFIX")
    rpm.add_argument("rpm", metavar="N|default", help="a number, or 'default' for the config's")
    block = ks.add_parser("block", parents=[common],
                          help="refuse an IP or CIDR (403); without one, list the blocks")
    block.add_argument("target", metavar="IP|CIDR", nargs="?")
    block.add_argument("--note", default="", help="why (shown by `keys block`)")
    unblock = ks.add_parser("unblock", parents=[common], help="lift a block")
    unblock.add_argument("target", metavar="IP|CIDR")
    return p


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    from .workers import serve_one, serve_workers
    _setup_logging()
    path = config_path(getattr(args, "config", None))
    if args.workers is not None and not 1 <= args.workers <= 256:
        print("apiarium: --workers must be from 1 to 256", file=sys.stderr)
        return 2
    if args.workers == 1:
        return serve_one(path, args.host, args.port, demo=args.demo)
    try:
        settings = load_config(path).settings
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    count = settings.workers if args.workers is None else args.workers
    if count == 1:
        return serve_one(path, args.host, args.port, demo=args.demo)
    why = memory_workers(count, settings.limiter_backend, settings.limiter_per_process)
    if why:                              # server.workers is checked with the file
        print(f"apiarium: --workers {count} ({path}): {why}", file=sys.stderr)
        return 1
    return serve_workers(path, settings, args.host, args.port, count, args.demo)


def _check(args: argparse.Namespace) -> int:
    path = config_path(getattr(args, "config", None))
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    print(f"{path}: ok ({len(config.catalog)} models, "
          f"{len(config.catalog.providers)} providers)")
    s = config.settings
    rebinding = hosts.rebinding_warning(s.host, s.allowed_hosts)
    if rebinding:
        print(f"{path}: warning: {rebinding}")
    return 0


def _when(ts: int | None) -> str:
    # the operator's local time, on purpose: this is read at the operator's terminal
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"  # noqa: DTZ006


def _settings(args: argparse.Namespace) -> Settings | None:
    try:
        return load_config(config_path(getattr(args, "config", None))).settings
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _migrate(args: argparse.Namespace) -> int:
    """Do to the configured database what the server's start does: create or upgrade its
    schema.  A SQLite database is opened with its key secret, as the server does (an old
    one's keys are rehashed with it, and the secret checked against the one the database
    was first used with, or recorded as it).  PostgreSQL's needs none: its secret file,
    which every host must share, is not created here, only checked (and recorded) if this
    host has it."""
    from .keysecret import KeyStoreError, check_recorded, load_secret
    from .services.keys import KeyService
    from .storage import StorageError, database_url, describe, open_storage
    settings = _settings(args)
    if settings is None:
        return 1

    async def main() -> int:
        postgres = database_url(settings.database) is not None
        try:
            if not postgres:
                keys = await KeyService(settings.database, settings.secret_file).open()
                storage: Storage = keys.storage
                close = keys.close
            else:
                storage = await open_storage(settings.database)
                close = storage.close
            try:
                found, version = storage.found_version, await storage.schema_version()
                if postgres and settings.secret_file.is_file():
                    await check_recorded(load_secret(settings.secret_file),
                                         storage.claim_secret, settings.secret_file,
                                         describe(settings.database))
            finally:
                await close()
        except (KeyStoreError, StorageError) as exc:
            print(f"apiarium: {exc}", file=sys.stderr)
            return 1
        done = "up to date" if found == version else f"was {found}: migrated"
        print(f"{describe(settings.database)}: schema version {version} ({done})")
        return 0
    return asyncio.run(main())


def _keys(args: argparse.Namespace) -> int:
    from .keysecret import KeyStoreError
    from .services.keys import KeyService
    from .storage import StorageError
    settings = _settings(args)
    if settings is None:
        return 1

    async def main() -> int:
        try:
            store = await KeyService(settings.database, settings.secret_file).open()
        except (KeyStoreError, StorageError) as exc:
            print(f"apiarium: {exc}", file=sys.stderr)
            return 1
        try:
            return await _key_action(store, args, settings.rpm)
        finally:
            await store.close()
    return asyncio.run(main())


def _row(rec: KeyRecord, default_rpm: int) -> dict[str, object]:
    return {"key_prefix": rec.key_prefix, "ip": rec.ip, "created": rec.created,
            "last_used": rec.last_used, "rpm": rec.rpm or default_rpm,
            "rpm_is_default": rec.rpm is None, "status": rec.status}


def _print_rows(recs: Iterable[KeyRecord], default_rpm: int, as_json: bool = False) -> None:
    if as_json:
        for rec in recs:
            print(orjson.dumps(_row(rec, default_rpm)).decode())
        return
    print(f"{'KEY':<12} {'IP':<40} {'CREATED':<16} {'LAST USED':<16} {'RPM':>6}  STATUS")
    starred = False
    for rec in recs:
        rpm = f"{rec.rpm}" if rec.rpm else f"{default_rpm}*"
        starred = starred or not rec.rpm
        print(f"{rec.key_prefix + '…':<12} {rec.ip:<40} {_when(rec.created):<16} "
              f"{_when(rec.last_used):<16} {rpm:>6}  {rec.status}")
    if starred:
        print(f"* the configured default, rate_limit.rpm ({default_rpm}): the key has no rpm "
              f"of its own (apiarium keys set-rpm KEY N gives it one)")


async def _one_active(store: KeyService, target: str) -> KeyRecord | None:
    recs = [r for r in await store.find(target) if r.status == "active"]
    if not recs:
        print(f"apiarium: no active key matches {target!r}", file=sys.stderr)
        return None
    if len(recs) > 1:
        print(f"apiarium: {len(recs)} active keys match {target!r}; give the whole key",
              file=sys.stderr)
        return None
    return recs[0]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


async def _blocks_covering(store: KeyService,
                           ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    from .netguard import parse_network
    return [cidr for cidr, _, _ in await store.blocks()
            if parse_network(cidr).version == ip.version and ip in parse_network(cidr)]


async def _show(store: KeyService, target: str, default_rpm: int) -> int:
    recs = await store.find(target)
    ip = _address(target)
    covering = await _blocks_covering(store, ip) if ip is not None else []
    if not recs and not covering:
        print(f"apiarium: no key matches {target!r}", file=sys.stderr)
        return 1
    if recs:
        _print_rows(recs, default_rpm)
    else:
        print(f"{ip}: no key")
    for cidr in covering:
        print(f"{ip} is blocked by {cidr} (apiarium keys unblock {cidr})")
    return 0


async def _block(store: KeyService, args: argparse.Namespace) -> int:
    from .netguard import parse_network
    if args.action == "block" and args.target is None:
        rows = await store.blocks()
        print(f"{'BLOCKED':<44} {'SINCE':<16} NOTE")
        for cidr, created, note in rows:
            print(f"{cidr:<44} {_when(created):<16} {note}")
        return 0
    try:
        net = parse_network(args.target)
    except ValueError:
        print(f"apiarium: {args.target!r} is not an IP address or CIDR", file=sys.stderr)
        return 2
    if args.action == "block":
        added = await store.block(str(net), args.note)
        print(f"blocked {net}; the running server refuses it within a few seconds (403)"
              if added else f"{net} was already blocked")
        return 0
    if await store.unblock(str(net)):
        print(f"unblocked {net}; the running server accepts it again within a few seconds")
        return 0
    print(f"apiarium: {net} is not blocked (apiarium keys block lists the blocks)",
          file=sys.stderr)
    return 1


async def _key_action(store: KeyService, args: argparse.Namespace, default_rpm: int) -> int:
    if args.action == "list":
        recs = await store.all_records() if args.all else \
            await store.all_records("active")
        _print_rows(recs, default_rpm, args.json)
        return 0
    if args.action == "show":
        return await _show(store, args.target, default_rpm)
    if args.action in ("block", "unblock"):
        return await _block(store, args)
    if args.action == "rotate":
        ip = _address(args.ip)
        if ip is None:
            print(f"apiarium: {args.ip!r} is not an IP address", file=sys.stderr)
            return 2
        key, rotated = await store.rotate(str(ip))
        print(f"{rotated.ip}: new key {key}")
        return 0
    rec = await _one_active(store, args.key)
    if rec is None:
        return 1
    if args.action == "revoke":
        await store.revoke(rec)
        print(f"revoked {rec.key_prefix}… ({rec.ip}); the running server drops it within "
              f"a few seconds")
        return 0
    if args.action == "set-rpm":
        value = None if args.rpm == "default" else int(args.rpm) if args.rpm.isdigit() else -1
        if value is not None and value < 1:
            print("apiarium: N must be a whole number of at least 1, or 'default'",
                  file=sys.stderr)
            return 2
        await store.set_rpm(rec, value)
        print(f"{rec.key_prefix}…: {value or f'default ({default_rpm})'} requests per minute")
        return 0
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check(args)
    if args.command == "migrate":
        return _migrate(args)
    return _keys(args)


if __name__ == "__main__":
    raise SystemExit(main())
