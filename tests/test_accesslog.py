"""The access log (apiarium/accesslog.py): lines gathered in memory, written in order by
``flush`` (and on their own past 64 KB), each in the shape of the other log lines
(``YYYY-mm-dd HH:MM:SS,mmm INFO <logger>: <message>``), and nothing written when nothing
was logged.  A broken stderr never raises."""
from __future__ import annotations

import io
import re
import sys
import time
from types import SimpleNamespace

import pytest

from apiarium import accesslog
from apiarium.accesslog import BATCH_BYTES, AccessLog

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO apiarium\.access: (.*)$")


class Recorder(io.StringIO):
    """A text stream that counts its write and flush calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


@pytest.fixture
def clock(monkeypatch):
    """Freeze the access log's clock at ``clock.now`` (seconds since the epoch)."""
    fake = SimpleNamespace(now=1_700_000_000.25)
    monkeypatch.setattr(accesslog, "time", SimpleNamespace(
        time=lambda: fake.now, strftime=time.strftime, localtime=time.localtime))
    return fake


def test_lines_wait_for_flush_and_come_out_in_order():
    out = Recorder()
    log = AccessLog(out)
    for i in range(5):
        log.write(f"GET /v1/models 200 {i}ms")
    assert out.getvalue() == "" and out.writes == 0      # buffered, not written per line
    log.flush()
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group(3) for line in lines] == [
        f"GET /v1/models 200 {i}ms" for i in range(5)]
    assert out.getvalue().endswith("\n")
    assert out.writes == 1 and out.flushes == 1          # one batch, flushed through


def test_a_record_is_formatted_like_the_other_log_lines(clock):
    out = io.StringIO()
    log = AccessLog(out)
    log.write('127.0.0.2 "POST /v1/chat/completions" 200 0.012s')
    log.flush()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert out.getvalue() == (f"{stamp},250 INFO apiarium.access: "
                              f'127.0.0.2 "POST /v1/chat/completions" 200 0.012s\n')


def test_milliseconds_are_zero_padded_and_the_stamp_follows_the_clock(clock):
    out = io.StringIO()
    log = AccessLog(out)
    clock.now = 1_700_000_000.03125      # values a float holds exactly: 31.25 ms
    log.write("a")
    clock.now = 1_700_000_001.5
    log.write("b")
    clock.now = 1_700_003_600.0                          # an hour later
    log.write("c")
    log.flush()
    got = [LINE.match(line).groups() for line in out.getvalue().splitlines()]
    when = [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s))
            for s in (1_700_000_000, 1_700_000_001, 1_700_003_600)]
    assert got == [(when[0], "031", "a"), (when[1], "500", "b"), (when[2], "000", "c")]


def test_the_logger_name_is_part_of_each_line():
    out = io.StringIO()
    log = AccessLog(out, name="apiarium.access.worker2")
    log.write("x")
    log.flush()
    assert " INFO apiarium.access.worker2: x\n" in out.getvalue()


def test_nothing_is_written_when_nothing_was_logged():
    out = Recorder()
    log = AccessLog(out)
    log.flush()
    log.flush()
    assert (out.writes, out.flushes, out.getvalue()) == (0, 0, "")
    log.write("once")
    log.flush()
    log.flush()                                          # the batch is not written twice
    assert out.writes == 1 and out.getvalue().count("once") == 1


def test_a_full_batch_is_written_without_waiting_for_flush():
    out = Recorder()
    log = AccessLog(out)
    message = "x" * 1000
    n = 0
    while out.writes == 0:
        log.write(f"{n:05d} {message}")
        n += 1
        assert n < 200, "64 KB gathered and still nothing written"
    written = out.getvalue()
    assert len(written) >= BATCH_BYTES
    assert len(written) < BATCH_BYTES + 1100             # written as soon as it passed 64 KB
    log.write("tail")
    assert "tail" not in out.getvalue()                  # a new batch starts empty
    log.flush()
    numbers = [LINE.match(line).group(3)[:5] for line in out.getvalue().splitlines()]
    assert numbers == [f"{i:05d}" for i in range(n)] + ["tail"]


def test_the_default_stream_is_stderr(capsys):
    log = AccessLog()
    log.write("to stderr")
    log.flush()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert LINE.match(captured.err.rstrip("\n")).group(3) == "to stderr"
    assert log.stream is sys.stderr


@pytest.mark.parametrize("failure", [OSError(32, "Broken pipe"), ValueError("closed file")])
def test_a_broken_stream_does_not_raise_and_drops_the_batch(failure):
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise failure

    log = AccessLog(Broken())
    log.write("lost")
    log.flush()                                          # no exception
    good = io.StringIO()
    log.stream = good
    log.write("next")
    log.flush()
    assert "lost" not in good.getvalue() and "next" in good.getvalue()


def test_a_closed_stream_does_not_raise():
    out = io.StringIO()
    log = AccessLog(out)
    out.close()
    log.write("after close")
    log.flush()
