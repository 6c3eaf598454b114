"""The store, on both backends (a SQLite file, a database on the lab's real PostgreSQL)."""

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.adapters.sql import is_postgres_url
from bot.adapters.store import STEP_BATCH, AsyncStore, Store, WebhookIn
from bot.audit import verify_chain
from bot.errors import StoreError
from bot.incidents import REOPEN_WINDOW, opening
from bot.models import (
    Approval,
    ApprovalRequest,
    Notification,
    Phase,
    RenderedStep,
    StepResult,
    StepStatus,
)
from tests.storebackends import raw_sql


@pytest.fixture
def store(db_target: str) -> Iterator[Store]:
    opened = Store(db_target)
    yield opened
    opened.close()


def open_(store: Store, key: str = "g1") -> tuple[int, str]:
    inc, how = store.open_or_join(key, title="502 on web01", labels={"host": "web01"},
                                  runbook="nginx-502", hosts=["web01"], notes=[], actor="test",
                                  rule=opening)
    return inc.id, how


def test_one_group_one_incident_and_reopen(store: Store) -> None:
    assert open_(store) == (1, "opened")
    assert open_(store) == (1, "joined")
    store.update_incident(1, status="resolved", phase="resolved")
    assert open_(store) == (1, "reopened")
    assert store.get_incident(1).status == "open"
    assert open_(store, "g2") == (2, "opened")


def test_a_group_resolved_longer_than_the_window_ago_opens_a_new_incident(store: Store) -> None:
    assert open_(store) == (1, "opened")
    long_ago = (datetime.now(UTC) - REOPEN_WINDOW - timedelta(minutes=1)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    store.update_incident(1, status="resolved", phase="resolved", resolved_at=long_ago)
    assert open_(store) == (2, "opened")
    assert store.get_incident(1).status == "resolved"
    # without the rule (a store used alone), a resolved incident is never reopened
    store.update_incident(2, status="resolved", phase="resolved")
    inc, how = store.open_or_join("g1", title="t", labels={}, runbook=None, hosts=[], notes=[],
                                  actor="test")
    assert (inc.id, how) == (3, "opened")


def test_state_survives_a_restart(db_target: str) -> None:
    first = Store(db_target)
    open_(first)
    first.create_approval(incident_id=1, run_id=1, runbook="nginx-502", step_id="start",
                          host="web01", params={}, digest="d", display="x",
                          requested_by="alertmanager", ttl=60)
    first.close()
    again = Store(db_target)
    assert again.open_incident_for_host("web01").ref == "INC-1"
    assert len(again.pending_approvals()) == 1


def test_first_decision_wins(store: Store) -> None:
    open_(store)
    row = store.create_approval(incident_id=1, run_id=1, runbook="r", step_id="s", host="h",
                                params={}, digest="d", display="c", requested_by="u", ttl=60)
    assert store.decide(row.token, "approved", "U1") is True
    assert store.decide(row.token, "rejected", "U2") is False
    assert store.get_approval(row.token).decided_by == "U1"


def test_batch_head_is_the_batch_first_approval(store: Store) -> None:
    open_(store)

    def propose(step: str, host: str, run_id: int = 1) -> Approval:
        return store.create_approval(incident_id=1, run_id=run_id, runbook="r", step_id=step,
                                     host=host, params={}, digest="d", display="c",
                                     requested_by="u", ttl=60)

    other_run = propose("s", "web01", run_id=2)
    first, other_step = propose("s", "web01"), propose("t", "web01")
    later = [propose("s", f"web0{i}") for i in (2, 3)]
    assert store.decide(first.token, "rejected", "U1")  # decided or not, it heads its batch
    for row in (first, *later):
        assert store.batch_head(row).id == first.id
        assert store.batch_head(row).id == store.approval_batch(row)[0].id
    assert store.batch_head(other_step).id == other_step.id
    assert store.batch_head(other_run).id == other_run.id


def test_a_runs_proposals_are_recorded_together_as_one_by_one(store: Store) -> None:
    """create_approvals (a run's proposals, one transaction) records what create_approval
    does for each: the rows and their audit records, in order, on an unbroken chain."""
    open_(store)
    requests = [ApprovalRequest(step_id="start", host=f"web0{i}", params={"program": "app"},
                                digest=f"d{i}", display=f"start app on web0{i}")
                for i in (1, 2, 3)]
    made = store.create_approvals(incident_id=1, run_id=1, runbook="r", requested_by="u",
                                  ttl=60, requests=requests)
    single = store.create_approval(incident_id=1, run_id=2, runbook="r", step_id="start",
                                   host="web04", params={}, digest="d4", display="start",
                                   requested_by="u", ttl=60)
    assert [(a.host, a.digest, a.display, a.pending) for a in made] == \
        [(r.host, r.digest, r.display, True) for r in requests]
    assert len({a.token for a in (*made, single)}) == 4
    assert [store.get_approval(a.token) for a in made] == made
    assert store.batch_head(made[2]).id == made[0].id
    records = [dict(r) for r in store.audit_records(1)
               if r["action"] == "approval.requested"]
    assert [json.loads(r["detail"])["approval_id"] for r in records] == \
        [a.id for a in (*made, single)]
    assert [json.loads(r["detail"])["host"] for r in records] == \
        ["web01", "web02", "web03", "web04"]
    assert store.verify_audit().ok
    assert store.create_approvals(incident_id=1, run_id=3, runbook="r", requested_by="u",
                                  ttl=60, requests=[]) == []


def _audit_db(path: str) -> tuple[Store, str]:
    store = Store(path)
    open_(store)
    for i in range(5):
        store.audit("test.event", "tester", 1, n=i)
    assert store.verify_audit().ok
    return store, path


@pytest.mark.parametrize("tamper", [
    "UPDATE audit SET detail = '{\"n\":99}' WHERE seq = 3",
    "DELETE FROM audit WHERE seq = 3",
    "UPDATE audit SET seq = seq + 100 WHERE seq = 3",
    "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
    "INSERT INTO audit (seq, ts, actor, action, incident_id, detail, prev_hash, hash) "
    "SELECT 100, ts, actor, action, incident_id, detail, hash, hash FROM audit WHERE seq = 6",
])
def test_any_tampering_is_detected(db_target: str, tamper: str) -> None:
    store, path = _audit_db(db_target)
    raw_sql(path, tamper)
    report = store.verify_audit()
    assert not report.ok and report.bad_seq is not None
    assert "ALTERED at record" in report.line()


def test_swapping_two_records_is_detected(db_target: str) -> None:
    store, path = _audit_db(db_target)
    a, b = (raw_sql(path, "SELECT ts, actor, action, incident_id, detail FROM audit WHERE seq=?",
                    (s,))[0] for s in (3, 4))
    for seq, row in ((3, b), (4, a)):
        raw_sql(path, "UPDATE audit SET ts=?, actor=?, action=?, incident_id=?, detail=? "
                "WHERE seq=?", (*row, seq))
    assert not store.verify_audit().ok


def test_prune_keeps_the_rest_verifiable(db_target: str) -> None:
    store, _ = _audit_db(db_target)
    last_ts = list(store.audit_records())[-1]["ts"]
    store.audit("later", "tester", 1)
    assert store.prune_audit(last_ts + "Z") > 0
    assert store.verify_audit().ok
    store.audit("after.prune", "tester", 1)
    assert store.verify_audit().ok


def test_keyed_chain_needs_the_key(db_target: str) -> None:
    keyed = Store(db_target, audit_key="s3cret")
    keyed.audit("x", "y")
    assert keyed.verify_audit().ok
    assert not Store(db_target, audit_key="wrong").verify_audit().ok


def _truncate_newest(path: str, keep_through: int) -> None:
    """What an attacker with write access does: drop the newest records, move the head back."""
    seq, hash_ = raw_sql(path, "SELECT seq, hash FROM audit WHERE seq = ?", (keep_through,))[0]
    raw_sql(path, "DELETE FROM audit WHERE seq > ?", (keep_through,))
    raw_sql(path, "UPDATE meta SET value = ? WHERE key = 'audit_head'",
            (json.dumps([seq, hash_]),))


def _truncate_oldest(path: str, drop_through: int) -> None:
    """Drop the oldest records and move the anchor forward, as if they had been pruned."""
    seq, hash_ = raw_sql(path, "SELECT seq, hash FROM audit WHERE seq = ?", (drop_through,))[0]
    raw_sql(path, "DELETE FROM audit WHERE seq <= ?", (drop_through,))
    raw_sql(path, "INSERT INTO meta VALUES ('audit_anchor', ?) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value", (json.dumps([seq, hash_]),))


def _keyed_db(path: str, key: str | None = "k3y") -> tuple[Store, str]:
    store = Store(path, audit_key=key)
    open_(store)
    for i in range(6):
        store.audit("test.event", "tester", 1, n=i)
    assert store.verify_audit().ok
    return store, path


def test_keyed_truncation_of_the_newest_records_fails_verify(db_target: str) -> None:
    store, path = _keyed_db(db_target)
    _truncate_newest(path, 4)
    report = store.verify_audit()
    assert not report.ok
    assert "head (the newest record) is not authenticated" in report.line()


def test_keyed_truncation_of_the_oldest_records_fails_verify(db_target: str) -> None:
    store, path = _keyed_db(db_target)
    _truncate_oldest(path, 3)
    report = store.verify_audit()
    assert not report.ok and "anchor" in report.reason


def test_unkeyed_oldest_truncation_fails_but_newest_cannot_be_proven(db_target: str) -> None:
    store, path = _keyed_db(db_target, key=None)
    _truncate_newest(path, 4)
    report = store.verify_audit()
    # honest: without a key a consistent rewrite of the head cannot be told apart
    assert report.ok and "cannot prove" in report.line() and "OPSBOT_AUDIT_KEY" in report.line()
    _truncate_oldest(path, 2)
    assert not store.verify_audit().ok  # no keyed-or-not audit.pruned record vouches for it


def test_keyed_prune_leaves_a_keyed_record_and_still_verifies(db_target: str) -> None:
    store, path = _keyed_db(db_target)
    last_ts = list(store.audit_records())[3]["ts"]
    # records written in the same millisecond as the 4th go with it
    through = max(r["seq"] for r in store.audit_records() if r["ts"] <= last_ts)
    assert store.prune_audit(last_ts + "Z") == through
    store.audit("after.prune", "tester", 1)
    report = store.verify_audit()
    assert report.ok and report.keyed and "authenticated" in report.line()
    pruned = [r for r in store.audit_records() if r["action"] == "audit.pruned"]
    assert len(pruned) == 1 and json.loads(pruned[0]["detail"])["through_seq"] == through
    assert not Store(path, audit_key="other").verify_audit().ok
    _truncate_newest(path, pruned[0]["seq"])  # cut the record after the prune
    assert not store.verify_audit().ok


@pytest.mark.parametrize("key", ["k3y", None])
def test_records_appended_after_the_head_was_read_verify(db_target: str,
                                                         key: str | None) -> None:
    """`opsbot audit verify` of a serving bot's database: the head is read, then the records,
    and the bot appended meanwhile. The newer records are checked like the others; a record
    at the head's seq with another hash still fails."""
    store, path = _keyed_db(db_target, key)
    head = store._mark(store.db, "head")
    assert head is not None
    store.audit("test.event", "tester", 1, n="after")
    report = verify_chain(store.audit_records(), anchor=None, head=head, key=key)
    assert report.ok and report.checked == head.seq + 1, report
    raw_sql(path, "UPDATE audit SET hash = ? WHERE seq = ?", ("0" * 64, head.seq))
    assert not verify_chain(store.audit_records(), anchor=None, head=head, key=key).ok


def test_keyed_head_deleted_outright_fails_verify(db_target: str) -> None:
    store, path = _keyed_db(db_target)
    raw_sql(path, "DELETE FROM audit WHERE seq > 5")
    raw_sql(path, "DELETE FROM meta WHERE key = 'audit_head'")
    assert "head (the newest record) is missing" in store.verify_audit().reason


def test_an_unreachable_database_is_one_line_without_its_password() -> None:
    from bot.adapters.store import StoreError
    from bot.config import load_settings
    from tests.lab import free_port

    url = f"postgresql://opsbot:s3cretpw@127.0.0.1:{free_port()}/opsbot"
    assert load_settings({"OPSBOT_DB": url}).db == url  # a URL, not a file path
    with pytest.raises(StoreError) as failed:
        Store(url)
    line = str(failed.value)
    assert "\n" not in line and "s3cretpw" not in line
    assert line.startswith("cannot open the database postgresql://opsbot@127.0.0.1:")


def test_a_twin_writes_the_same_store_from_another_thread(store: Store) -> None:
    """The request path's lane: a connection of its own, the same owner, one audit chain."""
    import threading

    twin = store.twin(urgent=True)
    try:
        def write(s: Store, who: str) -> None:
            for i in range(30):
                s.audit("step.finished", who, None, n=i)

        threads = [threading.Thread(target=write, args=(s, who))
                   for s, who in ((store, "run"), (twin, "ack"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        twin.add_work("click", {"token": "t"})
        assert twin.owner == store.owner
        assert [r["kind"] for r in store.db.query("SELECT kind FROM work")] == ["click"]
        assert store.verify_audit().ok
        assert sum(1 for _ in store.audit_records()) == 60
    finally:
        twin.db.close()


def test_an_answers_commit_never_checkpoints_the_wal(tmp_path) -> None:
    """The request lane's commits leave the WAL to the store's connection: a commit that
    checkpoints copies the WAL into the database file and syncs it, and an ack waited."""
    from pathlib import Path

    store = Store(tmp_path / "o.db")
    lane = store.twin(urgent=True)
    try:
        main = Path(store.path)
        before = main.stat().st_size
        for i in range(400):  # well over the 1000 pages (4 MiB) of an automatic checkpoint
            lane.add_work("click", {"token": f"t{i}", "pad": "x" * 20000})
        assert main.stat().st_size == before  # all still in the WAL: no checkpoint ran
        store.heartbeat()  # the serving process's next write of its own checkpoints
        assert main.stat().st_size > before + 4_000_000
    finally:
        lane.db.close()
        store.close()


def test_the_stores_checkpoint_runs_once_the_write_lock_is_let_go(tmp_path) -> None:
    """SQLite's own checkpoint runs inside the COMMIT that finds the WAL long, while the
    transaction still holds the process's write lock: an answer's lane waited for the copy and
    the database file's sync. The store's connection checkpoints after letting go of the lock,
    and the WAL stays bounded."""
    from pathlib import Path

    store = Store(tmp_path / "o.db")
    lane = store.twin(urgent=True)
    checkpoints: list[bool] = []  # each checkpoint: was the write lock held meanwhile?

    def traced(sql: str) -> None:
        if "wal_checkpoint" in sql:
            checkpoints.append(store.db.lock._holder is not None)

    store.db.raw.set_trace_callback(traced)
    lane.db.raw.set_trace_callback(traced)
    try:
        wal = Path(f"{store.path}-wal")
        for i in range(600):  # about three times the WAL an automatic checkpoint waits for
            if i % 4:
                lane.add_work("click", {"token": f"t{i}", "pad": "x" * 20000})
            else:
                store.heartbeat()
        assert checkpoints and not any(checkpoints)
        assert wal.stat().st_size < 2 * 1000 * 4096  # started over after each checkpoint
    finally:
        lane.db.close()
        store.close()


def test_urgent_writers_take_the_write_lock_before_waiting_ones() -> None:
    """A writer letting go hands the lock on: urgent waiters first, then the others in order;
    the one letting go cannot take it back before them."""
    import threading
    import time

    from bot.adapters.sql import WriteLock

    lock, order = WriteLock(), []
    lock.acquire()

    def writer(name: str, urgent: bool) -> None:
        lock.acquire(urgent)
        order.append(name)
        lock.release()

    def waiting() -> int:
        return sum(len(q) for q in lock._waiting)

    threads = []
    for name, urgent in (("run-1", False), ("run-2", False), ("ack", True)):
        threads.append(threading.Thread(target=writer, args=(name, urgent)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while waiting() < len(threads) and time.monotonic() < deadline:
            time.sleep(0.001)
    assert waiting() == 3
    lock.release()
    lock.acquire()  # the releasing thread queues behind the others
    order.append("first holder again")
    lock.release()
    for t in threads:
        t.join(10)
    assert order == ["ack", "run-1", "run-2", "first holder again"]


def _notification(webhook_id: int, group: str, alert: str) -> Notification:
    return Notification(webhook_id, group, title=f"{alert} on web01", labels={"host": "web01"},
                        runbook=None, hosts=(), notes=("no runbook",),
                        alerts=({"fingerprint": alert, "name": alert, "status": "firing",
                                 "labels": {"alertname": alert}, "annotations": {},
                                 "starts_at": "", "ends_at": None},),
                        actor="alertmanager", idle_phase="not diagnosed")


def test_a_batch_of_webhooks_is_one_transaction_with_an_unbroken_audit_chain(
        store: Store) -> None:
    store.audit("before", "tester")
    ids = store.record_webhooks([WebhookIn("alertmanager", b'{"n": %d}' % i, "127.0.0.1")
                                 for i in range(30)] +
                                [WebhookIn("alertmanager", b"[", "127.0.0.1", rejected="bad")])
    assert ids == sorted(ids) and len(set(ids)) == 31
    rows = store.db.query("SELECT id, outcome FROM webhooks ORDER BY id")
    assert [r["outcome"] for r in rows] == ["received"] * 30 + ["rejected: bad"]
    assert store.db.execute("SELECT count(*) FROM work WHERE status = 'pending'"
                            ).fetchone()[0] == 30
    audit = [r for r in store.audit_records() if r["action"] == "webhook.received"]
    assert [json.loads(r["detail"])["webhook_id"] for r in audit] == ids
    store.audit("after", "tester")
    report = store.verify_audit()
    assert report.ok and report.checked == 33


def test_notifications_of_many_groups_are_recorded_together_in_order(store: Store) -> None:
    ids = store.record_webhooks([WebhookIn("alertmanager", b"{}", "") for _ in range(4)])
    done = store.ingest_many([_notification(ids[0], "g1", "A"), _notification(ids[1], "g2", "B"),
                              _notification(ids[2], "g1", "C"),  # the same group again
                              _notification(ids[3], "g3", "D")])
    assert [(inc.group_key, how) for inc, how in done] == [
        ("g1", "opened"), ("g2", "opened"), ("g1", "joined"), ("g3", "opened")]
    assert done[0][0].id == done[2][0].id and done[0][0].phase == "not diagnosed"
    assert [r.name for r in store.alerts_of(done[0][0].id)] == ["A", "C"]
    assert store.db.execute("SELECT count(*) FROM work WHERE status = 'pending'"
                            ).fetchone()[0] == 0
    assert [r["outcome"] for r in store.db.query("SELECT outcome FROM webhooks ORDER BY id")] \
        == ["opened", "opened", "joined", "opened"]
    assert [r["action"] for r in store.audit_records()][-3:] == ["incident.opened"] * 3
    assert store.verify_audit().ok


def refuse_alerts_named(target: str, name: str) -> None:
    """A trigger that makes the database refuse one alert row (as a broken disk would)."""
    if is_postgres_url(target):
        raw_sql(target, "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                        "'refused'; END $$ LANGUAGE plpgsql")
        raw_sql(target, f"CREATE TRIGGER refuse BEFORE INSERT ON alerts FOR EACH ROW WHEN "
                        f"(NEW.name = '{name}') EXECUTE FUNCTION refuse()")
    else:
        raw_sql(target, f"CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.name = "
                        f"'{name}' BEGIN SELECT RAISE(ABORT, 'refused'); END")


def test_a_batch_the_database_refuses_leaves_nothing_of_it(store: Store, db_target: str) -> None:
    ids = store.record_webhooks([WebhookIn("alertmanager", b"{}", "") for _ in range(3)])
    before = store.verify_audit().checked
    refuse_alerts_named(db_target, "C")
    with pytest.raises(StoreError):  # the database's own error, translated by the store
        store.ingest_many([_notification(ids[0], "g1", "A"), _notification(ids[1], "g2", "B"),
                           _notification(ids[2], "g3", "C")])
    assert store.db.execute("SELECT count(*) FROM incidents").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM work WHERE status = 'pending'"
                            ).fetchone()[0] == 3
    report = store.verify_audit()
    assert report.ok and report.checked == before
    done = store.ingest_many([_notification(ids[0], "g1", "A")])  # the others go on alone
    assert done[0][1] == "opened" and store.verify_audit().ok


def test_a_click_and_its_replay_check_are_one_transaction(store: Store) -> None:
    """The work row of a click and the remembered signature go together: a replay adds none."""
    import time

    until = time.time() + 60
    first = store.add_work("click", {"token": "t"}, seen=("slack:v0=abc", until))
    assert first is not None
    assert store.add_work("click", {"token": "t"}, seen=("slack:v0=abc", until)) is None
    assert not store.first_use("slack:v0=abc", until)  # the same key as a command's check
    assert [r["id"] for r in store.db.query("SELECT id FROM work")] == [first]


def test_a_finished_command_forgets_its_response_url(store: Store) -> None:
    """A response_url lets anyone answer the user for 30 minutes: the work row keeps it only
    until the command is answered (a click's row, which has none, is left as it was)."""
    url = "https://hooks.slack.com/commands/T0/1/secret"
    command = store.add_work("command", {"text": "run nginx-502 web01", "user": "U0ALICE",
                                         "response_url": url, "channel": "C0"})
    click = store.add_work("click", {"token": "t", "approve": True})
    assert command is not None and click is not None
    assert url in str(store.db.query("SELECT payload FROM work WHERE id = ?", (command,)))
    store.finish_work(command, "done")
    store.finish_work(click, "done")
    rows = {r["id"]: r for r in store.db.query("SELECT id, status, payload FROM work")}
    assert url not in str(rows[command]) and rows[command]["status"] == "done"
    payloads = {k: v if isinstance(v, dict) else json.loads(v)
                for k, v in ((i, r["payload"]) for i, r in rows.items())}
    assert payloads[command] == {"text": "run nginx-502 web01", "user": "U0ALICE", "channel": "C0"}
    assert payloads[click] == {"approve": True, "token": "t"}


def _step(host: str, step_id: str = "loadavg") -> RenderedStep:
    return RenderedStep(step_id, "ssh", Phase.DIAGNOSTIC, host, {"command": "cat /proc/loadavg"},
                        "cat /proc/loadavg", 10, "Load average")


async def test_steps_of_many_hosts_are_recorded_in_few_transactions(db_target: str) -> None:
    """50 hosts start a step at once: their records share one transaction, each caller gets
    its own row, and every start and end is in the audit chain, in order."""
    store = AsyncStore(Store(db_target))
    try:
        inc_id, _ = open_(store.sync)
        run = await store.start_run(inc_id, "loadavg", "bench", "tester", "terminal", {})
        hosts = [f"web{i:02d}" for i in range(50)]
        ids = await asyncio.gather(*(store.start_step(run, inc_id, _step(h), "tester")
                                     for h in hosts))
        assert len(set(ids)) == 50 and store._steps.batches == 1
        await asyncio.gather(*(store.finish_step(sid, inc_id, StepResult(
            _step(h), StepStatus.OK, 0, "2026-11-30T00:00:00Z", 0.01, h, len(h), "ab" * 32),
            "tester") for sid, h in zip(ids, hosts, strict=True)))
        assert store._steps.batches == 2
        rows = {r.id: r for r in store.sync.steps_of(inc_id)}
        assert [(rows[sid].host, rows[sid].status, rows[sid].excerpt) for sid in ids] == \
            [(h, "ok", h) for h in hosts]
        audit = [(r["action"], json.loads(r["detail"])) for r in store.sync.audit_records()
                 if r["action"].startswith("step.")]
        assert [d["host"] for a, d in audit if a == "step.start"] == hosts
        assert [d["step_run_id"] for a, d in audit if a == "step.end"] == ids
        assert store.sync.verify_audit().ok
        # more at once: transactions of STEP_BATCH records at most (the lane's wait for the
        # write lock is bounded by one of them)
        more = [f"app{i:03d}" for i in range(3 * STEP_BATCH + 8)]
        await asyncio.gather(*(store.start_step(run, inc_id, _step(h), "tester") for h in more))
        assert store._steps.batches == 2 + 4
    finally:
        store.close()


async def test_steps_of_one_run_leaves_out_the_incidents_earlier_runs(db_target: str) -> None:
    """An incident run again and again holds every run's steps; asked for one run, the store
    gives only that run's, in order."""
    store = AsyncStore(Store(db_target))
    try:
        inc_id, _ = open_(store.sync)
        runs = [await store.start_run(inc_id, "loadavg", "bench", "tester", "terminal", {})
                for _ in range(3)]
        for run in runs:
            for h in ("web01", "web02"):
                await store.start_step(run, inc_id, _step(h), "tester")
        await store.start_step(None, inc_id, _step("web03"), "tester")
        assert len(await store.steps_of(inc_id)) == 7
        second = await store.steps_of(inc_id, runs[1])
        assert [(r.run_id, r.host) for r in second] == [(runs[1], "web01"), (runs[1], "web02")]
        assert await store.steps_of(inc_id, runs[2] + 100) == []
    finally:
        store.close()


async def test_a_step_record_the_database_refuses_fails_only_its_own_caller(
        db_target: str) -> None:
    store = AsyncStore(Store(db_target))
    try:
        inc_id, _ = open_(store.sync)
        if is_postgres_url(db_target):
            raw_sql(db_target, "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE "
                               "EXCEPTION 'refused'; END $$ LANGUAGE plpgsql")
            raw_sql(db_target, "CREATE TRIGGER refuse BEFORE INSERT ON step_runs FOR EACH ROW "
                               "WHEN (NEW.host = 'bad') EXECUTE FUNCTION refuse()")
        else:
            raw_sql(db_target, "CREATE TRIGGER refuse BEFORE INSERT ON step_runs WHEN "
                               "NEW.host = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END")
        done = await asyncio.gather(*(store.start_step(None, inc_id, _step(h), "tester")
                                      for h in ("web01", "bad", "web02")),
                                    return_exceptions=True)
        assert isinstance(done[1], StoreError)
        assert [r.host for r in store.sync.steps_of(inc_id)] == ["web01", "web02"]
        audit = [json.loads(r["detail"])["host"] for r in store.sync.audit_records()
                 if r["action"] == "step.start"]
        assert audit == ["web01", "web02"] and store.sync.verify_audit().ok
    finally:
        store.close()


def test_a_runs_diagnoses_and_interrupted_steps_are_one_audit_record_each(store: Store) -> None:
    """Many hosts' records written in one transaction: one audit record per host, in order,
    and the chain (with its sealed head) verifies."""
    inc_id, _ = open_(store)
    cause = [{"cause": "upstream_down", "confidence": 0.6, "evidence": [], "remediation": []}]
    store.record_diagnoses(1, inc_id, {"web01": cause, "web02": [], "web03": []})
    running = [store.start_step(1, inc_id, _step(h), "tester") for h in ("web01", "web02")]
    assert [s.id for s in store.interrupt_steps(inc_id, "opsbot")] == running
    records = [(r["action"], json.loads(r["detail"])) for r in store.audit_records()]
    assert [d["host"] for a, d in records if a == "diagnosis"] == ["web01", "web02", "web03"]
    assert [(d["step_run_id"], d["status"]) for a, d in records if a == "step.end"] == \
        [(running[0], "interrupted"), (running[1], "interrupted")]
    assert store.verify_audit().ok
    store.audit("after", "tester")  # the head was sealed where the batch ended
    assert store.verify_audit().ok


def test_the_root_message_reads_the_newest_diagnosis_of_the_cause(store: Store) -> None:
    """An incident run again and again keeps every diagnosis: the confidence shown is the
    newest one whose likeliest cause is the incident's, however far back it is."""
    inc_id, _ = open_(store)
    cause = [{"cause": "upstream_down", "confidence": 0.6, "evidence": [], "remediation": []}]
    store.record_diagnoses(1, inc_id, {"web01": cause})
    store.record_diagnoses(2, inc_id, {f"web{i:03d}": [] for i in range(250)})
    assert store.cause_confidence(inc_id, "upstream_down") == 0.6
    assert store.cause_confidence(inc_id, "disk_full") is None
    assert store.cause_confidence(inc_id, None) is None
    store.record_diagnoses(3, inc_id, {"web01": [{**cause[0], "confidence": 0.9}]})
    store.update_incident(inc_id, cause="upstream_down")
    _, _, confidence, _ = store.root_view(inc_id)
    assert confidence == 0.9


def test_an_urgent_write_waits_for_another_process_holding_the_write_lock(tmp_path) -> None:
    """The edge process and the core write one SQLite file, each with its own in-process lock:
    an urgent connection (an answer waits for it) that finds the file's write lock taken tries
    again until it is free, then writes; it is neither refused nor lost."""
    import sqlite3
    import threading

    from bot.adapters.sql import SqliteDatabase

    path = str(tmp_path / "two.db")
    answering = SqliteDatabase(path)
    answering.make_urgent()
    answering.execute("CREATE TABLE t (x INTEGER)")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's transaction, in progress
    other.execute("INSERT INTO t VALUES (1)")
    wrote = threading.Event()

    def write() -> None:
        with answering.tx() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
        wrote.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not wrote.wait(0.3)  # it waits while the other holds the lock
    other.execute("COMMIT")
    writer.join(30)
    assert wrote.is_set()
    assert [r[0] for r in answering.execute("SELECT x FROM t ORDER BY x").fetchall()] == [1, 2]
    other.close()
    answering.close()
