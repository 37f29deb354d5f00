"""apiarium.resp, the pipelined Redis client of the shared limiter: the RESP replies it
reads (whole or cut anywhere), commands issued at once sharing one connection and coming
back in order, EVALSHA on a server that forgot the script, AUTH and SELECT from the URL,
and the timeouts: a server that accepts and never answers, or a port nobody listens on."""
from __future__ import annotations

import asyncio
import shutil
import socket
import time

import pytest

from apiarium.resp import ReplyError, RespClient, Script, Unreachable, pack, parse
from tests.test_limits_redis import REDIS_URL, OwnRedis, needs_redis, refused_port

REPLY = b"*4\r\n:1\r\n$3\r\nabc\r\n$-1\r\n*2\r\n+OK\r\n-ERR bad\r\n"


def test_replies_are_parsed_whole_and_never_from_a_part():
    reply, end = parse(bytearray(REPLY), 0)
    assert end == len(REPLY)
    assert reply[:3] == [1, b"abc", None] and reply[3][0] == b"OK"
    assert isinstance(reply[3][1], ReplyError) and str(reply[3][1]) == "ERR bad"
    for cut in range(len(REPLY)):                       # any prefix: not yet a reply
        assert parse(bytearray(REPLY[:cut]), 0) is None
    assert pack((b"EVALSHA", "x", 2, 1.5)) == \
        b"*4\r\n$7\r\nEVALSHA\r\n$1\r\nx\r\n$1\r\n2\r\n$3\r\n1.5\r\n"
    with pytest.raises(Unreachable):
        parse(bytearray(b"?what\r\n"), 0)


@needs_redis
def test_commands_at_once_share_the_connection_and_keep_their_order():
    async def go():
        client = RespClient(REDIS_URL, 1.0)
        key = f"resp-test-{time.time_ns()}"
        answers = await asyncio.gather(*(client.call(b"INCR", key) for _ in range(200)))
        assert answers == list(range(1, 201))            # each got its own reply
        assert await client.call(b"DEL", key) == 1
        with pytest.raises(ReplyError):
            await client.call(b"NOSUCHCOMMAND")
        assert await client.call(b"PING") == b"PONG"    # an error reply spoils nothing
        client.close()
    asyncio.run(go())


@needs_redis
def test_a_script_the_server_forgot_is_loaded_again():
    async def go():
        client = RespClient(REDIS_URL, 1.0)
        script = Script("return {KEYS[1], ARGV[1] + 1}")
        await client.call(b"SCRIPT", b"FLUSH")
        assert await client.evalsha(script, ["k"], [41]) == [b"k", 42]
        assert await client.evalsha(script, ["k"], [1]) == [b"k", 2]
        client.close()
    asyncio.run(go())


def test_a_server_that_never_answers_times_out_every_waiting_call():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        async def go():
            client = RespClient(f"redis://127.0.0.1:{port}/0", 0.2)
            started = time.monotonic()
            results = await asyncio.gather(*(client.call(b"PING") for _ in range(5)),
                                           return_exceptions=True)
            assert all(isinstance(r, Unreachable) for r in results), results
            assert 0.15 < time.monotonic() - started < 1.0
            assert "did not answer within 0.2 s" in str(results[0])
            client.close()
        asyncio.run(go())


def test_a_server_that_speaks_no_resp_fails_the_call_and_drops_the_connection():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        async def go():
            client = RespClient(f"redis://127.0.0.1:{port}/0", 2.0)
            call = asyncio.ensure_future(client.call(b"PING"))
            loop = asyncio.get_running_loop()
            peer, _ = await loop.sock_accept(listener)
            assert await loop.sock_recv(peer, 100) == b"*1\r\n$4\r\nPING\r\n"
            await loop.sock_sendall(peer, b":not-a-number\r\n")
            with pytest.raises(Unreachable) as exc:
                await call
            assert "bad reply" in str(exc.value)
            peer.close()
            client.close()
        listener.setblocking(False)
        asyncio.run(go())


def test_nobody_listening_is_unreachable_at_once():
    async def go(port: int):
        client = RespClient(f"redis://127.0.0.1:{port}/0", 0.25)
        started = time.monotonic()
        with pytest.raises(Unreachable) as exc:
            await client.call(b"PING")
        assert time.monotonic() - started < 0.5 and "cannot connect" in str(exc.value)
    with refused_port() as port:
        asyncio.run(go(port))


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_password_and_database_come_from_the_url(tmp_path):
    server = OwnRedis(tmp_path)
    server.start("--requirepass", "s3cret-pass")
    try:
        async def go():
            good = RespClient(f"redis://:s3cret-pass@127.0.0.1:{server.port}/3", 1.0)
            await good.call(b"SET", b"where", b"db3")
            assert await good.call(b"GET", b"where") == b"db3"
            good.close()
            other = RespClient(f"redis://:s3cret-pass@127.0.0.1:{server.port}/0", 1.0)
            assert await other.call(b"GET", b"where") is None       # another database
            other.close()
            wrong = RespClient(f"redis://:wrong-pass@127.0.0.1:{server.port}/0", 1.0)
            with pytest.raises(Unreachable) as exc:
                await wrong.call(b"PING")
            assert "WRONGPASS" in str(exc.value) and "wrong-pass" not in str(exc.value)
        asyncio.run(go())
    finally:
        server.kill()
