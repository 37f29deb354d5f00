"""apiarium/usagejournal.py with the usage ledger (apiarium/usage.py): what a process counted
survives its death at any moment, and is booked once.

A death is simulated in-process at each step of a flush and of a recovery: the step that
dies raises ``Killed`` (a ``BaseException``: nothing in the code catches it), the journal
lets go of its lock as the kernel would (``Journal.close()`` keeps its files) and the ledger
is dropped with its memory; then a new ledger opens on the same database.  The last tests
are the real thing: a gateway process killed with SIGKILL, then started again.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

import apiarium.usage as usage_module
from apiarium.catalog import Credits, ModelSpec, ProviderSpec
from apiarium.services.costs import CreditBook
from apiarium.storage import UsageRow, open_storage
from apiarium.usage import MASTER, Tally, UsageLedger, today
from apiarium.usagejournal import LOCK, SEGMENT, journal_folder, recover
from tests.conftest import openai_models
from tests.support import wait_for

PROVIDER = ProviderSpec(name="p", kind="openai", base_url="http://p.invalid/v1", api_key="k")
MODEL = ModelSpec("m", PROVIDER, "up-m", credits=Credits(request=0.5, per_1k_tokens=1.0))
LIMIT = 1000.0


class Killed(BaseException):
    """The process dies here."""


class Dies:
    """A usage repository whose next ``add`` dies ``before`` or ``after`` it commits, or
    (``refuse``) fails as a database that cannot be written does."""

    def __init__(self, real, when: str) -> None:
        self.real, self.when = real, when

    async def add(self, rows, journal: str = "", segment: int = 0) -> None:
        when, self.when = self.when, ""
        if when == "before":
            raise Killed
        if when == "refuse":
            raise sqlite3.OperationalError("database is locked")
        await self.real.add(rows, journal, segment)
        if when == "after":
            raise Killed

    def __getattr__(self, name: str):
        return getattr(self.real, name)


class Ledgers:
    """Ledgers on one database and journal folder, each on a storage of its own (all closed
    at the end); ``open(dying=…)`` gives one whose storage's next ``add`` dies."""

    def __init__(self, db: Path | str, folder: Path, monkeypatch) -> None:
        self.db, self.folder, self.storages, self._dying = db, folder, [], ""
        monkeypatch.setattr(usage_module, "open_storage", self._open_storage)

    async def _open_storage(self, database):
        storage = await open_storage(database)
        self.storages.append(storage)
        if self._dying:
            storage.usage, self._dying = Dies(storage.usage, self._dying), ""
        return storage

    async def open(self, dying: str = "") -> UsageLedger:
        self._dying = dying
        return await UsageLedger(self.db, self.folder).open()

    @staticmethod
    def die(ledger: UsageLedger) -> None:
        """What kill -9 leaves of a ledger: its journal's files, unlocked; nothing else."""
        ledger.journal.close()

    async def rows(self) -> dict[str, UsageRow]:
        """Today's stored totals, by key."""
        storage = await open_storage(self.db)
        try:
            return {r.key_hash: r for r in await storage.usage.day(today())}
        finally:
            await storage.close()

    def files(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir()) if self.folder.exists() else []

    def run(self, go) -> None:
        """``go()`` on a loop of its own, then every storage opened closed on that loop."""
        async def whole() -> None:
            try:
                await go()
            finally:
                for storage in self.storages:
                    await storage.close()
        asyncio.run(whole())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledgers(request, tmp_path, monkeypatch):
    """On SQLite, the journal where the gateway keeps it; on PostgreSQL (a database of its
    own, skipped without scripts/test-services), a folder of the test's."""
    if request.param == "sqlite":
        db: Path | str = tmp_path / "usage.sqlite3"
        folder = journal_folder(db)
    else:
        db, folder = request.getfixturevalue("postgres_url"), tmp_path / "usage-journal"
    return Ledgers(db, folder, monkeypatch)


def serve(ledger: UsageLedger, key: str | None, prompt: int, output: int, book=None):
    """One request as the services make it: hold (for a key), journal it ahead, book, let
    go.  The credits it cost."""
    hold = ledger.ahead((book or CreditBook(ledger)).reserve(key, 5.0, LIMIT), MODEL)
    try:
        return ledger.record(key, MODEL, Tally(requests=1, prompt_tokens=prompt,
                                               completion_tokens=output), hold=hold)
    finally:
        hold.release()


def cost(prompt: int, output: int) -> float:
    return 0.5 + (prompt + output) / 1000


# ---------------------------------------------------------------------- the journal's files

def test_the_journal_lives_beside_a_sqlite_database_or_above_the_media_folder(tmp_path):
    assert journal_folder(tmp_path / "a.sqlite3") == tmp_path / "a.sqlite3.usage-journal"
    assert journal_folder(f"sqlite:{tmp_path}/b.db") == tmp_path / "b.db.usage-journal"
    url = "postgresql://u@db.internal/apiarium"
    assert journal_folder(url, tmp_path / "data" / "media") == tmp_path / "data" / "usage-journal"
    assert journal_folder(url) is None


def test_records_are_lines_appended_and_a_flush_rotates_and_deletes(ledgers):
    async def go():
        ledger = await ledgers.open()
        name = ledger.journal.name
        assert ledgers.files() == [f"{name}.1{SEGMENT}", f"{name}{LOCK}"]
        assert (ledgers.folder.stat().st_mode & 0o777) == 0o700
        segment = ledgers.folder / f"{name}.1{SEGMENT}"
        assert (segment.stat().st_mode & 0o777) == 0o600
        hold = ledger.ahead(CreditBook(ledger).reserve("k1", 5.0, LIMIT), MODEL)
        ledger.record("k1", MODEL, Tally(requests=1, prompt_tokens=100, completion_tokens=20),
                      hold=hold)
        hold.release()                                 # booked: nothing more to write
        failed = ledger.ahead(CreditBook(ledger).reserve("k1", 2.0, LIMIT), MODEL)
        failed.release()                               # let go without usage
        ledger.record(None, MODEL, Tally(requests=1))  # the master key: no hold, journaled
        lines = [json.loads(line) for line in segment.read_bytes().splitlines()]
        day = today()
        assert lines == [
            {"h": 1, "k": "k1", "d": day, "m": "m", "c": 5.0},
            {"s": 1, "k": "k1", "d": day, "u": [1, 100, 20, 0, 0, cost(100, 20)]},
            {"h": 2, "k": "k1", "d": day, "m": "m", "c": 2.0},
            {"r": 2},
            {"s": 0, "k": MASTER, "d": day, "u": [1, 0, 0, 0, 0, 0.5]}]
        assert await ledger.flush() == 2
        assert ledgers.files() == [f"{name}.2{SEGMENT}", f"{name}{LOCK}"]
        assert (ledgers.folder / f"{name}.2{SEGMENT}").read_bytes() == b""
        assert await ledger.flush() == 0               # nothing new: no new segment
        assert ledgers.files() == [f"{name}.2{SEGMENT}", f"{name}{LOCK}"]
        await ledger.close()
        assert ledgers.files() == []                   # a clean stop leaves nothing
        rows = await ledgers.rows()
        assert rows["k1"] == UsageRow("k1", day, 1, 100, 20, 0, 0, cost(100, 20))
        assert rows[MASTER].credits == 0.5
    ledgers.run(go)


def test_a_hold_still_open_is_carried_into_each_new_segment(ledgers):
    async def go():
        ledger = await ledgers.open()
        name = ledger.journal.name
        open_hold = ledger.ahead(CreditBook(ledger).reserve("k1", 7.0, LIMIT), MODEL)
        serve(ledger, "k2", 10, 10)
        await ledger.flush()
        carried = (ledgers.folder / f"{name}.2{SEGMENT}").read_bytes()
        assert [json.loads(line) for line in carried.splitlines()] == [
            {"h": 1, "k": "k1", "d": today(), "m": "m", "c": 7.0}]
        ledger.record("k1", MODEL, Tally(requests=1, prompt_tokens=3), hold=open_hold)
        open_hold.release()
        await ledger.close()
        rows = await ledgers.rows()
        assert rows["k1"].credits == pytest.approx(cost(3, 0)) and rows["k2"].requests == 1
    ledgers.run(go)


# ---------------------------------------------------------------------- death, and recovery

def test_a_death_before_any_flush_loses_nothing(ledgers, caplog):
    """Settled requests are booked as they were; a request in flight at its whole hold; one
    let go without usage, not at all; the master key's usage too."""
    async def go():
        ledger = await ledgers.open()
        spent = sum(serve(ledger, "k1", 100 * i, 10) for i in range(3))
        ledger.ahead(CreditBook(ledger).reserve("k2", 4.25, LIMIT), MODEL)   # in flight
        ledger.ahead(CreditBook(ledger).reserve("k3", 9.0, LIMIT), MODEL).release()
        ledger.record(None, MODEL, Tally(requests=1, completion_tokens=1000))
        ledgers.die(ledger)
        caplog.set_level("INFO", logger="apiarium")
        again = await ledgers.open()
        assert again.spent_today("k1").credits == pytest.approx(spent)
        assert again.spent_today("k1").requests == 3
        assert again.spent_today("k2").as_dict()["credits"] == 4.25
        assert again.spent_today("k2").requests == 1
        assert again.spent_today("k3").requests == 0
        assert again.spent_today(MASTER).credits == pytest.approx(1.5)
        rows = await ledgers.rows()                    # in the database, not just memory
        assert rows["k1"] == UsageRow("k1", today(), 3, 300, 30, 0, 0, pytest.approx(spent))
        assert set(rows) == {"k1", "k2", MASTER}
        assert ledgers.files() == [f"{again.journal.name}.1{SEGMENT}",
                                   f"{again.journal.name}{LOCK}"]
        await again.close()
    ledgers.run(go)
    assert ("usage journal: 5 records recovered from 1 stopped process(es): 4 settled, 1 "
            "requests in flight booked at their whole hold") in caplog.text


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_death_in_a_flush_before_or_after_its_commit_books_each_record_once(ledgers, when):
    async def go():
        ledger = await ledgers.open(dying=when)
        first = serve(ledger, "k1", 100, 10) + serve(ledger, "k1", 200, 20)
        in_flight = ledger.ahead(CreditBook(ledger).reserve("k2", 3.0, LIMIT), MODEL)
        with pytest.raises(Killed):
            await ledger.flush()
        later = serve(ledger, "k1", 50, 5)             # after the rotation: the next segment
        assert in_flight.ahead is not None
        ledgers.die(ledger)
        assert len(await ledgers.rows()) == (1 if when == "after" else 0)
        again = await ledgers.open()
        rows = await ledgers.rows()
        assert rows["k1"] == UsageRow("k1", today(), 3, 350, 35, 0, 0,
                                      pytest.approx(first + later))
        assert rows["k2"] == UsageRow("k2", today(), requests=1, credits=3.0)
        await again.close()
        assert await ledgers.rows() == rows            # and nothing more at a clean stop
    ledgers.run(go)


def test_a_death_after_a_whole_flush_books_only_what_came_after(ledgers):
    async def go():
        ledger = await ledgers.open()
        first = serve(ledger, "k1", 100, 10)
        hold = ledger.ahead(CreditBook(ledger).reserve("k2", 6.0, LIMIT), MODEL)
        await ledger.flush()                           # the hold was carried over
        later = serve(ledger, "k1", 10, 1)
        ledgers.die(ledger)
        await (await ledgers.open()).close()
        rows = await ledgers.rows()
        assert rows["k1"].requests == 2 and rows["k1"].credits == pytest.approx(first + later)
        assert rows["k2"] == UsageRow("k2", today(), requests=1, credits=6.0)
        assert hold.amount == 6.0                      # never let go: it died in flight
    ledgers.run(go)


def test_a_failed_flush_then_a_death_books_everything_once(ledgers):
    """The database refused a batch (kept in memory, its segment kept); the next flush
    commits it with a later mark; a death before that leaves both segments to book."""
    async def go():
        ledger = await ledgers.open(dying="refuse")
        spent = serve(ledger, "k1", 100, 10)
        with pytest.raises(sqlite3.OperationalError):
            await ledger.flush()
        spent += serve(ledger, "k1", 100, 10)
        ledgers.die(ledger)
        again = await ledgers.open()
        assert again.spent_today("k1").requests == 2
        assert again.spent_today("k1").credits == pytest.approx(spent)
        await again.close()
    ledgers.run(go)


def test_a_death_in_a_recovery_after_its_commit_is_finished_once_by_the_next(ledgers):
    async def go():
        ledger = await ledgers.open()
        spent = serve(ledger, "k1", 100, 10)
        ledger.ahead(CreditBook(ledger).reserve("k2", 2.0, LIMIT), MODEL)
        ledgers.die(ledger)
        dead = ledger.journal.name
        with pytest.raises(Killed):
            await ledgers.open(dying="after")          # booked, then died before deleting
        assert f"{dead}{LOCK}" in ledgers.files()
        rows = await ledgers.rows()
        assert rows["k1"].credits == pytest.approx(spent) and rows["k2"].credits == 2.0
        third = await ledgers.open()
        assert await ledgers.rows() == rows            # not booked twice
        assert not [f for f in ledgers.files() if f.startswith(dead)]
        await third.close()
    ledgers.run(go)


def test_a_live_process_journal_is_never_replayed_by_another(ledgers):
    async def go():
        first = await ledgers.open()
        serve(first, "k1", 100, 10)
        hold = first.ahead(CreditBook(first).reserve("k1", 1.0, LIMIT), MODEL)
        second = await ledgers.open()                  # a worker starting beside it
        assert await ledgers.rows() == {}
        assert f"{first.journal.name}{LOCK}" in ledgers.files()
        found = await recover(ledgers.storages[0].usage, ledgers.folder)   # nor by anyone
        assert found.journals == 0
        hold.release()
        await first.close()
        await second.close()
        assert (await ledgers.rows())["k1"].requests == 1
        assert ledgers.files() == []
    ledgers.run(go)


def test_a_torn_line_is_skipped_and_counted(ledgers):
    async def go():
        ledger = await ledgers.open()
        spent = serve(ledger, "k1", 100, 10)
        name = ledger.journal.name
        ledgers.die(ledger)
        with (ledgers.folder / f"{name}.1{SEGMENT}").open("ab") as f:
            f.write(b'{"s": 0, "k": "k1", "d": "20')      # a write cut short by a full disk
        storage = await open_storage(ledgers.db)
        try:
            found = await recover(storage.usage, ledgers.folder)
        finally:
            await storage.close()
        assert (found.journals, found.settled, found.held, found.unreadable) == (1, 1, 0, 1)
        assert "1 unreadable lines skipped" in str(found)
        assert (await ledgers.rows())["k1"].credits == pytest.approx(spent)
        assert ledgers.files() == []
    ledgers.run(go)


# ---------------------------------------------------------------------- history (the usage API)

class Gated:
    """A usage repository whose next ``add`` waits for ``go`` (a flush held mid-write)."""

    def __init__(self, real) -> None:
        self.real, self.entered, self.go = real, asyncio.Event(), asyncio.Event()

    async def add(self, rows, journal: str = "", segment: int = 0) -> None:
        self.entered.set()
        await self.go.wait()
        await self.real.add(rows, journal, segment)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_history_counts_each_request_once_before_during_and_after_a_flush(ledgers):
    """``history`` (GET /v1/keys/me/usage): stored rows plus what is pending, never a batch
    twice nor not at all, even while a flush is writing it; other keys and days apart."""
    async def go():
        ledger = await ledgers.open()
        day = today()
        spent = serve(ledger, "k1", 100, 10) + serve(ledger, "k1", 200, 20)
        serve(ledger, "k2", 1, 1)
        serve(ledger, None, 5, 5)                      # the master key's, filed as MASTER

        def totals(found: dict[str, Tally]) -> tuple:
            t = found[day]
            return t.requests, t.prompt_tokens, t.completion_tokens, round(t.credits, 6)
        want = (2, 300, 30, round(spent, 6))
        assert totals(await ledger.history("k1", day, day)) == want        # all pending
        await ledger.flush()
        assert totals(await ledger.history("k1", day, day)) == want        # all stored
        spent += serve(ledger, "k1", 10, 1)
        want = (3, 310, 31, round(spent, 6))
        assert totals(await ledger.history("k1", day, day)) == want        # both

        gate = Gated(ledger._storage.usage)
        ledger._storage.usage = gate
        flushing = asyncio.create_task(ledger.flush())
        await gate.entered.wait()                      # the batch is neither here nor there
        reading = asyncio.create_task(ledger.history("k1", day, day))
        spent += serve(ledger, "k1", 1, 1)             # counted during the flush
        await asyncio.sleep(0)
        assert not reading.done()                      # it waits for the write
        gate.go.set()
        await flushing
        assert totals(await reading) == (4, 311, 32, round(spent, 6))

        assert (await ledger.history(None, day, day))[day].requests == 1
        assert (await ledger.history("k2", day, day))[day].requests == 1
        assert await ledger.history("k3", day, day) == {}
        await gate.real.add([UsageRow("k1", "2000-01-02", 7, 70, 7, 1, 8, 2.5),
                             UsageRow("k1", "2000-01-05", requests=1)])
        old = await ledger.history("k1", "2000-01-01", "2000-01-04")
        assert list(old) == ["2000-01-02"]
        assert Tally(7, 70, 7, 1, 8, 2.5) == old["2000-01-02"]
        await ledger.close()
    ledgers.run(go)


def test_history_after_a_death_counts_what_the_journal_recovered_once(ledgers):
    async def go():
        ledger = await ledgers.open()
        spent = serve(ledger, "k1", 100, 10)
        await ledger.flush()
        spent += serve(ledger, "k1", 50, 5)            # in the journal alone
        ledgers.die(ledger)
        again = await ledgers.open()
        found = await again.history("k1", today(), today())
        assert found[today()].requests == 2
        assert found[today()].credits == pytest.approx(spent)
        await again.close()
    ledgers.run(go)


# ---------------------------------------------------------------------- a real kill -9

@pytest.mark.subprocess_gateway("kills the gateway with SIGKILL and starts it again")
def test_kill_9_right_after_the_answers_loses_no_usage(make_gateway, fake_openai, tmp_path):
    gw = make_gateway(openai_models(fake_openai), rate_limit={"rpm": 100})
    ip = "127.0.3.1"
    key = gw.key_for(ip)
    db = tmp_path / "gw0" / "data" / "apiarium.sqlite3"
    # the gateway's flushes cannot commit while this holds the write lock: what survives the
    # kill is in the journal alone
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    client = gw.sdk(key, ip=ip)
    for i in range(5):
        answer = client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "count " * (i + 1)}])
        assert answer.usage.prompt_tokens == i + 1
    before = json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]
    assert before["requests"] == 5 and before["credits"] > 0
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
    assert lock.execute("SELECT count(*) FROM usage").fetchone()[0] == 0
    lock.execute("ROLLBACK")
    lock.close()
    gw.start()
    assert any("usage journal: 5 records recovered" in line for line in gw.log), gw.log
    after = json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]
    stored = ("requests", "prompt_tokens", "completion_tokens", "credits")
    assert {k: after[k] for k in stored} == {k: before[k] for k in stored}


@pytest.mark.subprocess_gateway("kills the gateway with SIGKILL mid-request")
def test_kill_9_with_a_request_in_flight_books_its_whole_hold(make_gateway, fake_openai):
    models = openai_models(fake_openai, providers={"slow": {
        "kind": "openai", "base_url": fake_openai.base_url, "api_key": fake_openai.api_key,
        "timeout_s": 60}}, models={"slow-model": {
            "provider": "slow", "upstream": "gpt-5",
            "credits": {"request": 1, "per_1k_tokens": 2}}})
    gw = make_gateway(models)
    ip = "127.0.3.2"
    key = gw.key_for(ip)
    fake_openai.hang_next(20, path_contains="/chat/completions")
    body = json.dumps({"model": "slow-model", "max_tokens": 300,
                       "messages": [{"role": "user", "content": "a slow one " * 50}]},
                      separators=(",", ":")).encode()
    hold = 1 + 2 * (len(body) // 4 + 300) / 1000      # the request's credits, and its tokens

    def send():
        with contextlib.suppress(OSError):             # the gateway dies under it
            gw.post("/v1/chat/completions", body, key=key, ip=ip)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert wait_for(lambda: len(fake_openai.requests) == 1, timeout=10)
    assert json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]["requests"] == 0
    gw.stop(signal.SIGKILL)
    sender.join(10)
    gw.start()
    assert any("1 requests in flight booked at their whole hold" in line for line in gw.log)
    usage = json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]
    assert usage["requests"] == 1
    assert usage["credits"] == pytest.approx(hold, abs=1e-4)


@pytest.mark.subprocess_gateway("kills one worker with SIGKILL; the supervisor replaces it")
def test_a_killed_workers_journal_is_booked_by_its_replacement(make_gateway, fake_openai,
                                                                tmp_path):
    gw = make_gateway(openai_models(fake_openai), server={"workers": 2},
                      rate_limit={"rpm": 100, "per_process": True})
    ip = "127.0.3.3"
    key = gw.key_for(ip)
    lock = sqlite3.connect(tmp_path / "gw0" / "data" / "apiarium.sqlite3", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")                   # as above: no flush can commit
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30, source_address=(ip, 0))
    try:
        for _ in range(3):                             # one keep-alive connection: one worker
            conn.request("POST", "/v1/chat/completions", body=json.dumps(
                {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}),
                headers={"Authorization": f"Bearer {key}",
                         "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        conn.request("GET", "/health")
        victim = json.loads(conn.getresponse().read())["workers"]["pid"]
    finally:
        conn.close()
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: any(f"(pid {victim}) was killed" in ln for ln in gw.log), timeout=10)
    assert lock.execute("SELECT count(*) FROM usage").fetchone()[0] == 0
    lock.execute("ROLLBACK")
    lock.close()
    assert wait_for(lambda: any("usage journal: 3 records recovered from 1 stopped" in ln
                                for ln in gw.log), timeout=20), gw.log
    with contextlib.closing(sqlite3.connect(tmp_path / "gw0" / "data" / "apiarium.sqlite3")) as db:
        assert db.execute("SELECT requests FROM usage").fetchall() == [(3,)]
