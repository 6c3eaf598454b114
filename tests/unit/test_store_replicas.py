"""Several replicas on one real PostgreSQL: leases, takeover, leaders, once-only decisions.

Each Store here stands for one replica (its own pool, its own lease and heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot import outbox as outbox_module
from bot import render
from bot.adapters.store import AsyncStore, Store
from bot.metrics import Metrics
from bot.notify import ConsoleTransport
from bot.outbox import Outbox, message_content
from tests.lab.postgres import PostgresServer


@pytest.fixture
def replicas(postgres_server: PostgresServer) -> Iterator[Callable[[], Store]]:
    url = postgres_server.create_database()
    opened: list[Store] = []

    def one() -> Store:
        opened.append(Store(url))
        return opened[-1]

    yield one
    for store in opened:
        store.close()


def at_once(*calls: Callable[[], object]) -> list[object]:
    """Run the calls in threads released together; their results in order."""
    results: list[object] = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def run(i: int) -> None:
        gate.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def open_group(store: Store, key: str) -> tuple[int, str]:
    incident, how = store.open_or_join(key, title="502", labels={}, runbook="nginx-502",
                                       hosts=["web01"], notes=[], actor="alertmanager")
    return incident.id, how


def test_both_alertmanagers_on_four_replicas_open_one_incident(
        replicas: Callable[[], Store]) -> None:
    stores = [replicas() for _ in range(4)]
    results = at_once(*(lambda s=s: open_group(s, "g") for s in stores for _ in range(2)))
    assert sorted(how for _, how in results) == ["joined"] * 7 + ["opened"]  # type: ignore[misc]
    assert {i for i, _ in results} == {1}  # type: ignore[misc]


def test_a_double_click_on_two_replicas_decides_once(replicas: Callable[[], Store]) -> None:
    a, b = replicas(), replicas()
    open_group(a, "g")
    token = a.create_approval(incident_id=1, run_id=1, runbook="r", step_id="s", host="h",
                              params={}, digest="d", display="c", requested_by="u",
                              ttl=60).token
    won = at_once(lambda: a.decide(token, "approved", "U1"),
                  lambda: b.decide(token, "approved", "U1"))
    assert sorted(won) == [False, True]  # type: ignore[type-var]
    actions = [r["action"] for r in a.audit_records()]
    assert actions.count("approval.approved") == 1 and actions.count("approval.ignored") == 1
    assert a.verify_audit().ok


def test_work_of_a_live_replica_stays_its_own_until_its_lease_is_gone(
        replicas: Callable[[], Store]) -> None:
    a, b, c = replicas(), replicas(), replicas()
    work = a.add_work("command", {"text": "diag web01"})
    up_to = b.last_work_id()
    assert b.pending_work(up_to) == []  # a is alive: its work is not taken
    assert a.pending_work(up_to) == []  # nor does a take its own
    a.close()  # a stops: its lease is given up at once
    taken = at_once(lambda: b.pending_work(up_to), lambda: c.pending_work(up_to))
    ids = [[row.id for row in rows] for rows in taken]  # type: ignore[attr-defined]
    assert sorted(ids) == [[], [work]]  # exactly one replica took it over
    claimed = b.db.execute("SELECT owner FROM work WHERE id = ?", (work,)).fetchone()
    assert claimed is not None and claimed[0] in (b.owner, c.owner)


def test_a_singleton_job_has_one_leader_and_passes_on_when_it_stops(
        replicas: Callable[[], Store]) -> None:
    a, b = replicas(), replicas()
    assert a.leader("outbox") and not b.leader("outbox")
    assert a.leader("outbox")  # still held
    assert b.leader("expiry") and not a.leader("expiry")  # each job has its own leader
    a.close()
    assert b.leader("outbox")


def test_runs_of_a_live_replica_are_not_interrupted_by_another(
        replicas: Callable[[], Store]) -> None:
    a, b = replicas(), replicas()
    incident, _ = open_group(a, "g")
    run = a.start_run(incident, "nginx-502", "web01", "alertmanager", "alert", {})
    assert b.interrupt_stale_runs("opsbot") == 0
    assert b.live_run_elsewhere(incident)
    a.close()
    assert not b.live_run_elsewhere(incident)
    assert b.interrupt_stale_runs("opsbot") == 1
    row = b.db.execute("SELECT status FROM runs WHERE id = ?", (run,)).fetchone()
    assert row == ("interrupted",)


async def test_a_notified_replica_sends_another_replicas_message_before_its_poll(
        postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica b writes a thread message; replica a sends the outbox (its leader). Without
    listening, a would find it at its next poll (ADOPT_EVERY, a minute here); woken by b's
    NOTIFY, it sends it at once. A decided approval wakes a too."""
    monkeypatch.setattr(outbox_module, "ADOPT_EVERY", 60.0)
    url = postgres_server.create_database()
    a, b = AsyncStore(Store(url)), Store(url)
    incident_id, _ = open_group(b, "g")
    shown = io.StringIO()
    outbox = Outbox(a, ConsoleTransport(shown), Metrics())
    woken: list[str] = []
    connected = asyncio.Event()

    def wake(channel: str) -> None:
        woken.append(channel)
        connected.set()
        if channel == "outbox":
            outbox.wake()

    async def shown_within(text: str, seconds: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            if text in shown.getvalue():
                return time.monotonic() - start
            await asyncio.sleep(0.02)
        return None

    def post(text: str) -> None:
        b.enqueue(incident_id, f"note:{text}", "message",
                  message_content(render.note_message(text)))

    outbox.start()
    listener: asyncio.Task[None] | None = None
    try:
        await asyncio.sleep(0.5)  # a's first look found nothing: it waits for its next poll
        post("written before a listens")
        assert await shown_within("written before a listens", 1.5) is None  # no poll yet
        listener = asyncio.create_task(a.listen(wake))
        await asyncio.wait_for(connected.wait(), 10)  # connecting wakes every channel once
        assert await shown_within("written before a listens", 5) is not None
        await asyncio.sleep(0.5)  # the sender looked again, found nothing: it waits now
        post("written while a listens")
        took = await shown_within("written while a listens", 5)
        assert took is not None and took < 2.0, took  # well before the 60 s poll
        woken.clear()
        token = b.create_approval(incident_id=incident_id, run_id=1, runbook="r", step_id="s",
                                  host="h", params={}, digest="d", display="c",
                                  requested_by="u", ttl=60).token
        assert b.decide(token, "approved", "U1")
        for _ in range(250):
            if "approvals" in woken:
                break
            await asyncio.sleep(0.02)
        assert "approvals" in woken
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        await outbox.stop(1.0)
        a.close()
        b.close()


async def test_on_sqlite_nothing_listens_and_the_pollers_stay(tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "opsbot.db"))
    woken: list[str] = []
    try:
        await asyncio.wait_for(store.listen(woken.append), 1)  # returns at once
        assert woken == []
    finally:
        store.close()


def test_a_pending_approval_is_reminded_of_once_by_the_reminders_leader(
        replicas: Callable[[], Store]) -> None:
    a, b = replicas(), replicas()
    incident_id, _ = open_group(a, "g")
    approval = a.create_approval(incident_id=incident_id, run_id=1, runbook="r", step_id="s",
                                 host="h", params={}, digest="d", display="c",
                                 requested_by="u", ttl=600)
    assert a.due_reminders(60) == []  # not waiting long enough yet
    time.sleep(0.05)
    assert [r.id for r in a.due_reminders(0.01)] == [approval.id]  # a leads `reminders`
    assert b.due_reminders(0.01) == []  # not the leader
    assert a.due_reminders(0.01) == []  # once only
    a.close()
    assert b.due_reminders(0.01) == []  # the new leader does not remind again
    assert [r["action"] for r in b.audit_records()].count("approval.reminded") == 1
