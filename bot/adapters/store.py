"""The store: one object owning the database (SQLite or PostgreSQL, through bot.adapters.sql).

State lives here, not in memory: open incidents, pending approvals and Slack message references
survive a restart. Writes run in explicit transactions that hold the database's one write lock
(`BEGIN IMMEDIATE` on SQLite, a transaction-level advisory lock on PostgreSQL), so several opsbot
processes on one database (replicas, a terminal `opsbot run`) keep the audit chain whole.
`AsyncStore` runs every call on one worker thread, off the event loop; its `lane()` is a second
connection and thread for the request path, so that an answer never queues behind a run's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from bot.adapters.sql import (
    LEASE,
    Conn,
    Database,
    WriteLock,
    add_column,
    create_index,
    create_table,
    db_errors,
    one_line,
    open_database,
    shown_target,
    store_errors,
)
from bot.audit import GENESIS, PRUNED, Mark, VerifyReport, record_hash, verify_chain
from bot.errors import NotFound, StoreError
from bot.models import (
    AlertRecord,
    Approval,
    ApprovalOutcome,
    ApprovalRequest,
    ApprovalStatus,
    Diagnosis,
    Incident,
    IncidentStatus,
    Notification,
    Opening,
    OutboxItem,
    PostedMessage,
    RenderedStep,
    StepResult,
    StepRun,
    WorkItem,
    canonical_json,
)
from bot.ports import OpeningRule
from bot.redact import redact, redact_value

P = ParamSpec("P")
T = TypeVar("T")
Row = dict[str, Any]

HANDOVER = "via terminal, for the serving opsbot"  # an approval waiting to be claimed
HANDED_OVER = "via terminal, run by the serving opsbot"


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"  # strftime: 5x


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class WebhookIn:
    """A webhook as received: recorded before it is answered."""

    source: str
    body: bytes
    remote: str
    rejected: str | None = None  # why it cannot be read as alerts (kept all the same)


@dataclass(frozen=True)
class StepStart:
    """A step about to run, as the store records it (Store.record_steps)."""

    run_id: int | None
    incident_id: int
    step: RenderedStep
    actor: str


@dataclass(frozen=True)
class StepEnd:
    """A step's result, for the step_runs row `step_run_id` (Store.record_steps)."""

    step_run_id: int
    incident_id: int
    result: StepResult
    actor: str


def owner_alive(pid: int | None) -> bool:
    """The process that owns a run or outbox row still runs (not this one: an earlier
    server in this process is gone by the time a new one looks)."""
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _m1(conn: Conn, db: Database) -> None:
    table = functools.partial(create_table, conn, db)
    table("webhooks", {"id": int, "received_at": str, "source": str, "remote": str, "body": str,
                       "outcome": str, "incident_id": int})
    table("incidents", {"id": int, "group_key": str, "status": str, "phase": str, "title": str,
                        "runbook": str, "hosts": str, "labels": str, "notes": str, "cause": str,
                        "opened_at": str, "resolved_at": str, "updated_at": str, "channel": str,
                        "thread_ts": str})
    create_index(conn, "incidents", ["group_key"])
    create_index(conn, "incidents", ["status"])
    table("alerts", {"id": int, "incident_id": int, "webhook_id": int, "fingerprint": str,
                     "name": str, "status": str, "labels": str, "annotations": str,
                     "starts_at": str, "ends_at": str, "received_at": str})
    create_index(conn, "alerts", ["incident_id"])
    table("runs", {"id": int, "incident_id": int, "runbook": str, "target": str,
                   "requested_by": str, "source": str, "params": str, "started_at": str,
                   "ended_at": str, "status": str})
    table("step_runs", {"id": int, "run_id": int, "incident_id": int, "step_id": str,
                        "phase": str, "kind": str, "host": str, "command": str, "action": str,
                        "status": str, "exit_status": int, "started_at": str, "duration": float,
                        "excerpt": str, "output_bytes": int, "digest": str, "truncated": int,
                        "error": str, "facts": str, "title": str})
    create_index(conn, "step_runs", ["incident_id"])
    table("diagnoses", {"id": int, "run_id": int, "incident_id": int, "host": str,
                        "causes": str, "created_at": str})
    table("approvals", {"id": int, "token": str, "incident_id": int, "run_id": int,
                        "runbook": str, "step_id": str, "host": str, "params": str,
                        "digest": str, "display": str, "status": str, "requested_by": str,
                        "requested_at": str, "expires_at": str, "decided_by": str,
                        "decided_at": str, "reason": str})
    create_index(conn, "approvals", ["token"], unique=True)
    table("messages", {"id": int, "incident_id": int, "kind": str, "ref": str, "channel": str,
                       "ts": str, "created_at": str})
    create_index(conn, "messages", ["incident_id", "kind", "ref"])
    table("audit", {"seq": int, "ts": str, "actor": str, "action": str, "incident_id": int,
                    "detail": str, "prev_hash": str, "hash": str}, pk="seq")
    create_index(conn, "audit", ["incident_id"])
    table("meta", {"key": str, "value": str}, pk="key")


def _m2(conn: Conn, db: Database) -> None:
    """Work from the store (every accepted webhook, command and click until done) and the
    Slack outbox; runs say which process runs them."""
    create_table(conn, db, "work", {"id": int, "kind": str, "webhook_id": int, "payload": str,
                                    "status": str, "created_at": str, "done_at": str,
                                    "outcome": str, "attempts": int})
    create_index(conn, "work", ["status"])
    create_table(conn, db, "outbox", {"id": int, "incident_id": int, "key": str, "kind": str,
                                      "content": str, "status": str, "version": int,
                                      "attempts": int, "maybe_sent": int, "owner": int,
                                      "created_at": str, "sent_at": str, "error": str})
    create_index(conn, "outbox", ["status", "owner"])
    create_index(conn, "outbox", ["incident_id", "key", "status"])
    add_column(conn, db, "runs", "owner", int)


def _m3(conn: Conn, db: Database) -> None:
    """Several processes on one database: who is alive (a lease renewed by a heartbeat) and
    which process took each piece of work."""
    create_table(conn, db, "replicas", {"id": int, "host": str, "pid": int, "started_at": str,
                                        "heartbeat": float})
    add_column(conn, db, "work", "owner", int)


def _m4(conn: Conn, db: Database) -> None:
    """When a pending approval was reminded of (once)."""
    add_column(conn, db, "approvals", "reminded_at", str)


MIGRATIONS: tuple[Callable[[Conn, Database], None], ...] = (_m1, _m2, _m3, _m4)

JSON_COLUMNS = {"hosts", "labels", "notes", "annotations", "params", "action", "facts",
                "causes", "detail", "payload", "content"}
UPSERT_META = ("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
               "SET value = excluded.value")
RUNNING_PHASES = ("investigating", "reopened", "diagnosing", "remediating")


def _decode(row: Row) -> Row:
    for key in JSON_COLUMNS & row.keys():
        if isinstance(row[key], str):
            try:
                row[key] = json.loads(row[key])
            except json.JSONDecodeError:
                pass
    return row


def redacted_json(value: Mapping[str, Any]) -> Any:
    """A step's action as stored: secrets in it masked (the run itself used the real values)."""
    text = redact(canonical_json(dict(value)))
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def incident_from_row(row: Row) -> Incident:
    row = _decode(dict(row))
    return Incident(
        id=row["id"], group_key=row["group_key"], status=IncidentStatus(row["status"]),
        title=row["title"] or "", opened_at=row["opened_at"], phase=row["phase"] or "",
        runbook=row["runbook"], hosts=tuple(row["hosts"] or ()),
        resolved_at=row["resolved_at"], channel=row["channel"], thread_ts=row["thread_ts"],
        cause=row["cause"], labels=row["labels"] or {}, notes=tuple(row["notes"] or ()),
    )


class AuditChain:
    """Audit records appended inside one write transaction: the chain's head is read once and
    written once (`close`), however many records a batch adds."""

    def __init__(self, store: Store, conn: Conn) -> None:
        self.store, self.conn = store, conn
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            anchor = store._mark(conn, "anchor")
            self.seq, self.hash = (anchor.seq, anchor.hash) if anchor else (0, GENESIS)
        else:
            self.seq, self.hash = last
        self.added = 0

    def add(self, action: str, actor: str, incident_id: int | None,
            detail: Mapping[str, Any]) -> int:
        seq = self.seq + 1
        rec = {"seq": seq, "ts": utcnow(), "actor": actor, "action": action,
               "incident_id": incident_id, "detail": canonical_json(redact_value(detail)),
               "prev_hash": self.hash}
        hash_ = rec["hash"] = record_hash(rec, self.store.audit_key)
        self.conn.execute("INSERT INTO audit (seq, ts, actor, action, incident_id, detail, "
                          "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          [rec[k] for k in ("seq", "ts", "actor", "action", "incident_id",
                                            "detail", "prev_hash", "hash")])
        self.seq, self.hash = seq, hash_
        self.added += 1
        return seq

    def close(self) -> None:
        if self.added:
            self.store._set_mark(self.conn, "head", self.seq, self.hash)
            self.added = 0


def approval_from_row(row: Row) -> Approval:
    row = _decode(dict(row))
    return Approval(
        id=row["id"], token=row["token"], incident_id=row["incident_id"], run_id=row["run_id"],
        runbook=row["runbook"], step_id=row["step_id"], host=row["host"],
        params=row["params"] or {}, digest=row["digest"], display=row["display"],
        status=ApprovalStatus(row["status"]), requested_by=row["requested_by"],
        requested_at=row["requested_at"], expires_at=row["expires_at"],
        decided_by=row["decided_by"], decided_at=row["decided_at"], reason=row["reason"])


def step_run_from_row(row: Row) -> StepRun:
    row = _decode(dict(row))
    return StepRun(
        id=row["id"], run_id=row["run_id"], incident_id=row["incident_id"],
        step_id=row["step_id"], phase=row["phase"], kind=row["kind"], host=row["host"],
        command=row["command"], action=row["action"], status=row["status"],
        started_at=row["started_at"], exit_status=row["exit_status"], duration=row["duration"],
        excerpt=row["excerpt"], output_bytes=row["output_bytes"], digest=row["digest"],
        truncated=bool(row["truncated"]), error=row["error"],
        facts=row["facts"] if isinstance(row["facts"], dict) else {}, title=row["title"] or "")


def diagnosis_from_row(row: Row) -> Diagnosis:
    row = _decode(dict(row))
    return Diagnosis(id=row["id"], run_id=row["run_id"], incident_id=row["incident_id"],
                     host=row["host"], causes=tuple(row["causes"] or ()),
                     created_at=row["created_at"])


def alert_from_row(row: Row) -> AlertRecord:
    row = _decode(dict(row))
    return AlertRecord(
        id=row["id"], incident_id=row["incident_id"], webhook_id=row["webhook_id"],
        fingerprint=row["fingerprint"], name=row["name"], status=row["status"],
        labels=row["labels"] or {}, annotations=row["annotations"] or {},
        starts_at=row["starts_at"], ends_at=row["ends_at"], received_at=row["received_at"])


def outbox_from_row(row: Row) -> OutboxItem:
    row = _decode(dict(row))
    return OutboxItem(id=row["id"], incident_id=row["incident_id"], key=row["key"],
                      kind=row["kind"], content=row["content"], version=row["version"],
                      maybe_sent=bool(row["maybe_sent"]))


def work_from_row(row: Row) -> WorkItem:
    row = _decode(dict(row))
    return WorkItem(id=row["id"], kind=row["kind"], webhook_id=row["webhook_id"],
                    payload=row["payload"] if isinstance(row["payload"], dict) else {},
                    attempts=row["attempts"] or 0)


class Store:
    def __init__(self, path: Path | str, *, audit_key: str | None = None,
                 synchronous: str = "FULL", lock: WriteLock | None = None) -> None:
        """`synchronous`: FULL syncs the WAL at every commit; NORMAL (for the server's
        processing) leaves that to the next FULL commit or checkpoint: it survives the
        process being killed, and WAL order keeps what survives a power loss a whole prefix.
        `lock`: shared by connections of one process, so they hand the write lock over
        instead of polling for it."""
        self.path = str(path)
        self.audit_key = audit_key
        try:
            self.db = open_database(self.path, synchronous=synchronous, lock=lock)
        except db_errors() as exc:
            raise StoreError(f"cannot open the database {shown_target(self.path)}: "
                             f"{one_line(exc)}") from None
        try:
            self._migrate()
            # who owns this process's runs, work and messages: its pid on one machine's file,
            # a replica id with a lease (renewed by a heartbeat) on a shared server
            self.owner = os.getpid() if self.db.dialect == "sqlite" else \
                self.db.register_replica(socket.gethostname(), utcnow())
        except store_errors() as exc:
            self.db.close()
            why = one_line(exc.__cause__ or exc)
            raise StoreError(f"cannot open the database {self.db.target}: {why}") from None
        self._lock = self.db.lock
        self._seen_writes = 0  # first_use calls, to prune expired keys now and then

    # -- plumbing -------------------------------------------------------------------------
    def twin(self, *, urgent: bool = False) -> Store:
        """This store on a connection of its own (the same owner and write lock), for a thread
        of its own; `urgent`: its writes take the write lock before other threads' waiting
        writes (the request path: an answer to Slack waits for them)."""
        other = copy.copy(self)
        other.db = self.db.twin(urgent=urgent)
        other._seen_writes = 0
        return other

    def tx(self) -> AbstractContextManager[Conn]:
        """One write transaction, holding the database's write lock from its start."""
        return self.db.tx()

    def _migrate(self) -> None:
        """Numbered migrations, each applied once, under the write lock (replicas starting
        together migrate once)."""
        with self.db.tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS migrations "
                         "(version INTEGER PRIMARY KEY, applied_at TEXT)")
            done = {r[0] for r in conn.execute("SELECT version FROM migrations")}
            for version, migration in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    migration(conn, self.db)
                    conn.execute("INSERT INTO migrations VALUES (?, ?)", (version, utcnow()))

    def _insert(self, conn: Conn, table: str, row: Mapping[str, Any]) -> int:
        cols = list(row)
        values = [canonical_json(v) if isinstance(v, dict | list | tuple) else v
                  for v in row.values()]
        key = "seq" if table == "audit" else "id"
        cur = conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) "
                           f"VALUES ({', '.join('?' for _ in cols)}) RETURNING {key}", values)
        made = cur.fetchone()
        return int(made[0]) if made else 0

    def _update(self, conn: Conn, table: str, pk: int,
                fields: Mapping[str, Any]) -> None:
        if not fields:
            return
        values = [canonical_json(v) if isinstance(v, dict | list | tuple) else v
                  for v in fields.values()]
        conn.execute(f"UPDATE {table} SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                     [*values, pk])

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        rows = self.db.query(sql, params)
        return _decode(rows[0]) if rows else None

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return [_decode(r) for r in self.db.query(sql, params)]

    @property
    def shared(self) -> bool:
        """Several replicas may use this database (PostgreSQL)."""
        return self.db.dialect == "postgresql"

    def _alive(self, owner: int | None) -> bool:
        """The process that owns a row still runs (never this one: see owner_alive)."""
        if not self.shared:
            return owner_alive(owner)
        return bool(owner) and owner != self.owner and owner in self.db.live_replicas()

    def _gone(self, owner: int | None) -> bool:
        """Its rows may be taken over: the owner stopped (on SQLite this process's own pid
        counts as stopped, an earlier server in it is gone; a replica never takes its own)."""
        if not self.shared:
            return not owner_alive(owner)
        return owner != self.owner and not self._alive(owner)

    def leader(self, job: str) -> bool:
        """This process runs the singleton `job` (expiry sweep, outbox sending, takeover):
        always on SQLite; on PostgreSQL while it holds the job's advisory lock."""
        return self.db.leader(job)

    def writable(self) -> bool:
        try:
            with self.tx() as conn:
                conn.execute(UPSERT_META, ('healthcheck', utcnow()))
            return True
        except store_errors():
            return False

    # -- audit ----------------------------------------------------------------------------
    def _mark(self, conn: Conn, which: str) -> Mark | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"audit_{which}",)).fetchone()
        return Mark.from_meta(row[0] if row else None)

    def _set_mark(self, conn: Conn, which: str, seq: int, hash_: str) -> None:
        conn.execute(UPSERT_META,
                     (f"audit_{which}", Mark.sealed(which, seq, hash_, self.audit_key).to_meta()))

    def _audit(self, conn: Conn, action: str, actor: str,
               incident_id: int | None, detail: Mapping[str, Any]) -> int:
        chain = AuditChain(self, conn)
        seq = chain.add(action, actor, incident_id, detail)
        chain.close()
        return seq

    def audit(self, /, action: str, actor: str, incident_id: int | None = None,
              **detail: Any) -> int:
        with self.tx() as conn:
            return self._audit(conn, action, actor, incident_id, detail)

    def audit_records(self, incident_id: int | None = None) -> Iterator[Row]:
        if incident_id is None:
            yield from self.db.query("SELECT * FROM audit ORDER BY seq")
        else:
            yield from self.db.query("SELECT * FROM audit WHERE incident_id = ? ORDER BY seq",
                                     (incident_id,))

    def audit_stream(self, incident_id: int) -> Iterator[tuple[int, str, str, str, str, str]]:
        """(seq, ts, actor, action, detail JSON text, hash) of an incident's records, in order,
        as plain tuples read as they stream (exports of a long audit log)."""
        yield from self.db.stream(
            "SELECT seq, ts, actor, action, detail, hash FROM audit WHERE incident_id = ? "
            "ORDER BY seq", (incident_id,))

    def audit_details(self, incident_id: int, action: str) -> Iterator[str]:
        """The detail (JSON text) of an incident's records of one action, in order, streamed:
        never the whole log in memory."""
        for (text,) in self.db.stream("SELECT detail FROM audit WHERE incident_id = ? AND "
                                      "action = ? ORDER BY seq", (incident_id, action)):
            yield text or "{}"

    def verify_audit(self) -> VerifyReport:
        return verify_chain(self.audit_records(), anchor=self._mark(self.db, "anchor"),
                            head=self._mark(self.db, "head"), key=self.audit_key)

    def prune_audit(self, before: str) -> int:
        """Drop records older than `before` (UTC ISO). The anchor (the last record dropped) is
        sealed with the key, and a keyed `audit.pruned` record at the head vouches for it."""
        with self.tx() as conn:
            last = conn.execute("SELECT seq, hash FROM audit WHERE ts < ? ORDER BY seq DESC "
                                "LIMIT 1", (before,)).fetchone()
            if last is None:
                return 0
            count = conn.execute("DELETE FROM audit WHERE seq <= ?", (last[0],)).rowcount
            self._set_mark(conn, "anchor", last[0], last[1])
            self._audit(conn, PRUNED, "opsbot", None,
                        {"records": count, "through_seq": last[0], "anchor_hash": last[1],
                         "before": before})
            return int(count)

    # -- webhooks and alerts --------------------------------------------------------------
    def record_webhooks(self, batch: Sequence[WebhookIn]) -> list[int]:
        """Several webhooks in one transaction (a group commit): each row, its audit record and,
        for an accepted one, its work row. Nothing is answered before this returns."""
        ids = []
        with self.tx() as conn:
            chain = AuditChain(self, conn)
            for item in batch:
                now = utcnow()
                wid = self._insert(conn, "webhooks", {
                    "received_at": now, "source": item.source, "remote": item.remote,
                    "body": redact(item.body.decode("utf-8", "replace")),
                    "outcome": f"rejected: {item.rejected}" if item.rejected else "received"})
                chain.add("webhook.received", f"webhook:{item.source}", None,
                          {"webhook_id": wid, "remote": item.remote, "bytes": len(item.body)})
                if not item.rejected:
                    conn.execute("INSERT INTO work (kind, webhook_id, status, created_at, "
                                 "attempts, owner) VALUES ('alert', ?, 'pending', ?, 0, ?)",
                                 (wid, now, self.owner))
                ids.append(wid)
            chain.close()
        return ids

    def webhook_outcome(self, webhook_id: int, outcome: str,
                        incident_id: int | None = None) -> None:
        with self.tx() as conn:
            self._webhook_done(conn, webhook_id, outcome, incident_id)

    def _webhook_done(self, conn: Conn, webhook_id: int, outcome: str,
                      incident_id: int | None) -> None:
        self._update(conn, "webhooks", webhook_id, {"outcome": outcome, "incident_id": incident_id})
        conn.execute("UPDATE work SET status = 'done', done_at = ?, outcome = ? "
                     "WHERE webhook_id = ? AND status = 'pending'", (utcnow(), outcome, webhook_id))

    def webhook_body(self, webhook_id: int) -> bytes:
        row = self.db.execute("SELECT body FROM webhooks WHERE id = ?",
                                   (webhook_id,)).fetchone()
        if row is None:
            raise NotFound(f"no webhook {webhook_id}")
        return str(row[0]).encode("utf-8")

    # -- work: what was accepted and is not done yet ---------------------------------------
    def add_work(self, kind: str, payload: Mapping[str, Any], *,
                 seen: tuple[str, float] | None = None) -> int | None:
        """The work row of an accepted command or click. `seen`: the replay key of the request
        that brought it (see first_use), remembered in the same transaction; None, and nothing
        added, when that key is remembered already (a replay)."""
        with self.tx() as conn:
            if seen is not None and not self._first_use(conn, *seen):
                return None
            return self._insert(conn, "work", {"kind": kind, "payload": dict(payload),
                                               "status": "pending", "created_at": utcnow(),
                                               "attempts": 0, "owner": self.owner})

    def finish_work(self, work_id: int, outcome: str, status: str = "done") -> None:
        """The work row is done. A command's `response_url` (a secret: it lets anyone answer
        the user for 30 minutes) is only needed until then, so the finished row forgets it."""
        with self.tx() as conn:
            conn.execute("UPDATE work SET status = ?, done_at = ?, outcome = ? WHERE id = ?",
                         (status, utcnow(), outcome[:500], work_id))
            row = conn.execute("SELECT payload FROM work WHERE id = ?", (work_id,)).fetchone()
            payload = _decode({"payload": row[0]})["payload"] if row else None
            if isinstance(payload, dict) and "response_url" in payload:
                self._update(conn, "work", work_id, {"payload": {
                    k: v for k, v in payload.items() if k != "response_url"}})

    def last_work_id(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(id), 0) FROM work").fetchone()[0])

    def pending_work(self, up_to: int) -> list[WorkItem]:
        """Unfinished work up to id `up_to` whose process is gone (an earlier process, or a
        replica that died), oldest first, claimed for this one (on PostgreSQL with `FOR UPDATE
        SKIP LOCKED`: two replicas taking over never take the same row); each try is counted,
        and a row that failed three starts is given up."""
        with self.tx() as conn:
            rows = conn.execute("SELECT id, owner, attempts FROM work WHERE status = 'pending' "
                                "AND id <= ? ORDER BY id" + self.db.skip_locked,
                                (up_to,)).fetchall()
            taken = [(wid, tries) for wid, owner, tries in rows if self._gone(owner)]
            for wid, tries in taken:
                if (tries or 0) >= 3:
                    conn.execute("UPDATE work SET status = 'failed', done_at = ?, outcome = "
                                 "'gave up after 3 tries' WHERE id = ?", (utcnow(), wid))
                else:
                    conn.execute("UPDATE work SET attempts = attempts + 1, owner = ? "
                                 "WHERE id = ?", (self.owner, wid))
        ids = [wid for wid, tries in taken if (tries or 0) < 3]
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        return [work_from_row(r) for r in self.db.query(
            f"SELECT * FROM work WHERE id IN ({marks}) ORDER BY id", tuple(ids))]

    def work_item(self, work_id: int) -> WorkItem | None:
        """One work row still pending (handed over by the edge process), or None."""
        rows = self.db.query("SELECT * FROM work WHERE id = ? AND status = 'pending'",
                             (work_id,))
        return work_from_row(rows[0]) if rows else None

    # -- incidents ------------------------------------------------------------------------
    def get_incident(self, incident_id: int) -> Incident:
        row = self._one("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if row is None:
            raise NotFound(f"no incident INC-{incident_id}")
        return incident_from_row(row)

    def list_incidents(self, status: str | None = None, limit: int = 50) -> list[Incident]:
        sql = "SELECT * FROM incidents"
        params: tuple[Any, ...] = ()
        if status:
            sql, params = sql + " WHERE status = ?", (status,)
        return [incident_from_row(r) for r in self._all(sql + " ORDER BY id DESC LIMIT ?",
                                                        (*params, limit))]

    def incident_for_group(self, group_key: str) -> Incident | None:
        row = self._one("SELECT * FROM incidents WHERE group_key = ? ORDER BY id DESC LIMIT 1",
                        (group_key,))
        return incident_from_row(row) if row else None

    def interrupt_stale_runs(self, actor: str) -> int:
        """Runs left `running` by a process that is gone (or by an earlier server in this
        process): marked interrupted, once. A run of a live `opsbot run` is left alone."""
        rows = self._all("SELECT id, incident_id, owner FROM runs WHERE status = 'running'")
        stale = [r for r in rows if self._gone(r["owner"])]
        for row in stale:
            self.finish_run(row["id"], row["incident_id"], "interrupted", actor)
        return len(stale)

    def live_run_elsewhere(self, incident_id: int) -> bool:
        """A run of this incident is going on in another live process."""
        rows = self._all("SELECT owner FROM runs WHERE incident_id = ? AND status = 'running'",
                         (incident_id,))
        return any(self._alive(r["owner"]) for r in rows)

    def stuck_incidents(self) -> list[Incident]:
        """Open incidents in a running phase (a live run must exist for each), or whose last
        run was interrupted (e.g. between its diagnosis and its proposals)."""
        marks = ", ".join("?" for _ in RUNNING_PHASES)
        rows = self._all(
            f"SELECT * FROM incidents i WHERE status = 'open' AND (phase IN ({marks}) OR "
            "(SELECT status FROM runs r WHERE r.incident_id = i.id ORDER BY r.id DESC LIMIT 1)"
            " = 'interrupted') ORDER BY id", RUNNING_PHASES)
        if self.shared:  # with replicas, only those unchanged for a lease: a live replica
            quiet = (datetime.now(UTC) - timedelta(seconds=LEASE)).strftime(  # may be about
                "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"                            # to start a run
            rows = [r for r in rows if (r["updated_at"] or "") < quiet]
        return [incident_from_row(r) for r in rows]

    def interrupt_steps(self, incident_id: int, actor: str) -> list[StepRun]:
        """Steps of the incident left `running`: marked interrupted (with their audit record);
        returns them."""
        with self.tx() as conn:
            steps = [step_run_from_row(r) for r in conn.execute(
                "SELECT * FROM step_runs WHERE incident_id = ? AND status = 'running' ORDER BY id",
                (incident_id,)).dicts()]
            chain = AuditChain(self, conn)
            for step in steps:
                self._update(conn, "step_runs", step.id, {
                    "status": "interrupted", "error": "opsbot stopped while it ran"})
                chain.add("step.end", actor, incident_id, {
                    "step_run_id": step.id, "step": step.step_id, "host": step.host,
                    "status": "interrupted", "error": "opsbot stopped while it ran"})
            chain.close()
        return steps

    def expired_approvals(self) -> list[Approval]:
        """Pending approvals past their time; with replicas, only for the `expiry` leader."""
        if not self.leader("expiry"):
            return []
        return self._approvals("SELECT * FROM approvals WHERE status = 'pending' AND "
                               "expires_at < ?", (utcnow(),))

    def due_reminders(self, seconds: float) -> list[Approval]:
        """Pending approvals, not expired, proposed more than `seconds` ago and never reminded
        of: marked reminded (audited) and returned, each once; with replicas, only for the
        `reminders` leader."""
        if not self.leader("reminders"):
            return []
        now = datetime.now(UTC)
        before = (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        with self.tx() as conn:
            rows = conn.execute("UPDATE approvals SET reminded_at = ? WHERE status = 'pending' "
                                "AND reminded_at IS NULL AND requested_at < ? AND "
                                "expires_at > ? RETURNING *",
                                (utcnow(), before, utcnow())).dicts()
            due = sorted((approval_from_row(r) for r in rows), key=lambda a: a.id)
            for approval in due:
                self._audit(conn, "approval.reminded", "opsbot", approval.incident_id,
                            {"approval_id": approval.id, "step": approval.step_id,
                             "host": approval.host, "waiting_since": approval.requested_at})
        return due

    def idle_incidents(self, seconds: float) -> list[Incident]:
        """Open incidents not updated for `seconds`."""
        before = (datetime.now(UTC) - timedelta(seconds=seconds)).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return [incident_from_row(r) for r in self._all(
            "SELECT * FROM incidents WHERE status = 'open' AND updated_at < ? ORDER BY id",
            (before,))]

    def open_incident_for_host(self, host: str) -> Incident | None:
        for row in self._all("SELECT * FROM incidents WHERE status = 'open' ORDER BY id DESC"):
            if host in (row["hosts"] or ()):
                return incident_from_row(row)
        return None

    def open_or_join(self, group_key: str, *, title: str, labels: Mapping[str, str],
                     runbook: str | None, hosts: list[str], notes: list[str],
                     actor: str, rule: OpeningRule | None = None) -> tuple[Incident, Opening]:
        """Atomically find the group's incident or open one: `rule` (bot.incidents.opening)
        says whether its latest incident is joined, reopened or followed by a new one; without
        one, an open incident is joined, else a new one opened."""
        with self.tx() as conn:
            incident_id, how = self._open_or_join(conn, group_key, title=title, labels=labels,
                                                  runbook=runbook, hosts=hosts, notes=notes,
                                                  actor=actor, rule=rule)
        return self.get_incident(incident_id), how

    def ingest_alerts(self, webhook_id: int, group_key: str, *, title: str,
                      labels: Mapping[str, str], runbook: str | None, hosts: list[str],
                      notes: list[str], alerts: Sequence[Mapping[str, Any]],
                      actor: str, idle_phase: str | None = None,
                      rule: OpeningRule | None = None) -> tuple[Incident, Opening]:
        """One firing notification, in one transaction (see ingest_many)."""
        return self.ingest_many([Notification(
            webhook_id, group_key, title=title, labels=dict(labels), runbook=runbook,
            hosts=tuple(hosts), notes=tuple(notes), alerts=tuple(alerts), actor=actor,
            idle_phase=idle_phase)], rule=rule)[0]

    def ingest_many(self, batch: Sequence[Notification], *, rule: OpeningRule | None = None
                    ) -> list[tuple[Incident, Opening]]:
        """Firing notifications, in order, in one transaction: for each, its group's incident
        (opened, joined or reopened, as `rule` says: see open_or_join; put in `idle_phase` when
        new and nothing will run), its alerts, and its webhook and work rows marked done. A
        group twice in one batch: the second joins what the first opened."""
        done: list[tuple[int, Opening]] = []
        with self.tx() as conn:
            chain = AuditChain(self, conn)
            for n in batch:
                incident_id, how = self._open_or_join(
                    conn, n.group_key, title=n.title, labels=n.labels, runbook=n.runbook,
                    hosts=list(n.hosts), notes=list(n.notes), actor=n.actor, chain=chain,
                    rule=rule)
                if n.idle_phase and how != "joined":
                    self._update(conn, "incidents", incident_id, {"phase": n.idle_phase})
                self._insert_alerts(conn, incident_id, n.webhook_id, n.alerts)
                self._webhook_done(conn, n.webhook_id, how, incident_id)
                done.append((incident_id, how))
            chain.close()
        incidents = self.incidents_by_id({i for i, _ in done})
        return [(incidents[i], how) for i, how in done]

    def incidents_by_id(self, ids: Iterable[int]) -> dict[int, Incident]:
        wanted = sorted(set(ids))
        found: dict[int, Incident] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            marks = ", ".join("?" for _ in part)
            for row in self._all(f"SELECT * FROM incidents WHERE id IN ({marks})", tuple(part)):
                found[row["id"]] = incident_from_row(row)
        return found

    def _open_or_join(self, conn: Conn, group_key: str, *, title: str,
                      labels: Mapping[str, str], runbook: str | None, hosts: list[str],
                      notes: list[str], actor: str,
                      chain: AuditChain | None = None,
                      rule: OpeningRule | None = None) -> tuple[int, Opening]:
        title, labels, notes = redact(title), redact_value(dict(labels)), redact_value(notes)
        row = conn.execute("SELECT id, status, resolved_at FROM incidents WHERE group_key = ?"
                           " ORDER BY id DESC LIMIT 1", (group_key,)).fetchone()
        now = utcnow()
        latest = IncidentStatus(row[1]) if row else None
        if rule is not None:
            how = rule(latest, parse_ts(row[2]) if row and row[2] else None, parse_ts(now))
        else:
            how = Opening.JOINED if latest is IncidentStatus.OPEN else Opening.OPENED
        if row and how is Opening.JOINED:
            return row[0], how
        if row and how is Opening.REOPENED:
            incident_id = row[0]
            self._update(conn, "incidents", incident_id,
                         {"status": "open", "phase": "reopened", "resolved_at": None,
                          "updated_at": now, "cause": None})
        else:
            how = Opening.OPENED
            incident_id = self._insert(conn, "incidents", {
                "group_key": group_key, "status": "open", "phase": "investigating",
                "title": title, "runbook": runbook, "hosts": hosts, "labels": dict(labels),
                "notes": notes, "opened_at": now, "updated_at": now})
        detail = {"group_key": group_key, "title": title, "runbook": runbook, "hosts": hosts,
                  "notes": notes}
        if chain is None:
            self._audit(conn, f"incident.{how}", actor, incident_id, detail)
        else:
            chain.add(f"incident.{how}", actor, incident_id, detail)
        return incident_id, how

    def update_incident(self, /, incident_id: int, actor: str = "opsbot", *, audit: bool = True,
                        **fields: Any) -> Incident:
        fields = {k: redact_value(v) for k, v in fields.items()}
        fields["updated_at"] = utcnow()
        if fields.get("status") == IncidentStatus.RESOLVED:
            fields.setdefault("resolved_at", fields["updated_at"])
        with self.tx() as conn:
            self._update(conn, "incidents", incident_id, fields)
            if audit:
                self._audit(conn, "incident.updated", actor, incident_id,
                            {k: v for k, v in fields.items() if k != "updated_at"})
        return self.get_incident(incident_id)

    def record_alerts(self, incident_id: int, webhook_id: int | None,
                      alerts: Sequence[Mapping[str, Any]]) -> None:
        with self.tx() as conn:
            self._insert_alerts(conn, incident_id, webhook_id, alerts)

    def _insert_alerts(self, conn: Conn, incident_id: int, webhook_id: int | None,
                       alerts: Sequence[Mapping[str, Any]]) -> None:
        now = utcnow()
        for alert in alerts:
            self._insert(conn, "alerts", {"incident_id": incident_id, "webhook_id": webhook_id,
                                          "received_at": now, **redact_value(alert)})

    def root_view(self, incident_id: int
                  ) -> tuple[Incident, list[Approval], float | None, int]:
        """What the root message shows, in one call: incident, approvals, the confidence of
        its cause (bot.notify) and how many alerts it has."""
        incident = self.get_incident(incident_id)
        return (incident, self.approvals_of(incident_id),
                self.cause_confidence(incident_id, incident.cause),
                self.alert_count(incident_id))

    def cause_confidence(self, incident_id: int, cause: str | None) -> float | None:
        """The confidence of the newest diagnosis whose likeliest cause is `cause`. Read
        newest first, a page at a time: an incident run again and again keeps every run's
        diagnoses, and the root message needs only the latest."""
        if cause is None:
            return None
        before = None
        while True:
            rows = self.db.execute(
                "SELECT id, causes FROM diagnoses WHERE incident_id = ?"
                + ("" if before is None else " AND id < ?") + " ORDER BY id DESC LIMIT 100",
                (incident_id,) if before is None else (incident_id, before)).rows
            for _, found in rows:
                causes = json.loads(found) if isinstance(found, str) else found
                if causes and causes[0]["cause"] == cause:
                    return float(causes[0]["confidence"])
            if len(rows) < 100:
                return None
            before = rows[-1][0]

    def alert_count(self, incident_id: int) -> int:
        return int(self.db.execute("SELECT count(*) FROM alerts WHERE incident_id = ?",
                                        (incident_id,)).fetchone()[0])

    def alerts_of(self, incident_id: int) -> list[AlertRecord]:
        return [alert_from_row(r) for r in self.db.query(
            "SELECT * FROM alerts WHERE incident_id = ? ORDER BY id", (incident_id,))]

    # -- runs and steps -------------------------------------------------------------------
    def start_run(self, incident_id: int, runbook: str, target: str, requested_by: str,
                  source: str, params: Mapping[str, Any]) -> int:
        shown = redacted_json(params)
        with self.tx() as conn:
            run_id = self._insert(conn, "runs", {
                "incident_id": incident_id, "runbook": runbook, "target": target,
                "requested_by": requested_by, "source": source, "params": shown,
                "started_at": utcnow(), "status": "running", "owner": self.owner})
            self._audit(conn, "run.started", requested_by, incident_id,
                        {"run_id": run_id, "runbook": runbook, "target": target,
                         "source": source, "params": shown})
            return run_id

    def finish_run(self, run_id: int, incident_id: int, status: str, actor: str) -> None:
        with self.tx() as conn:
            self._update(conn, "runs", run_id, {"status": status, "ended_at": utcnow()})
            self._audit(conn, "run.finished", actor, incident_id,
                        {"run_id": run_id, "status": status})

    def start_step(self, run_id: int | None, incident_id: int, step: RenderedStep,
                   actor: str) -> int:
        return self.record_steps([StepStart(run_id, incident_id, step, actor)])[0]

    def finish_step(self, step_run_id: int, incident_id: int, result: StepResult,
                    actor: str) -> None:
        self.record_steps([StepEnd(step_run_id, incident_id, result, actor)])

    def record_steps(self, records: Sequence[StepStart | StepEnd]) -> list[int]:
        """Steps started and finished, in order, in one transaction (the audit chain's head
        read and written once): the step_runs id of each."""
        ids: list[int] = []
        with self.tx() as conn:
            chain = AuditChain(self, conn)
            for rec in records:
                ids.append(self._start_step(conn, chain, rec) if isinstance(rec, StepStart)
                           else self._finish_step(conn, chain, rec))
            chain.close()
        return ids

    def _start_step(self, conn: Conn, chain: AuditChain, rec: StepStart) -> int:
        step = rec.step
        action = redacted_json(step.action)
        chain.add("step.start", rec.actor, rec.incident_id,
                  {"run_id": rec.run_id, "step": step.step_id, "phase": str(step.phase),
                   "kind": step.kind, "host": step.host, "command": step.display,
                   "action": action})
        return self._insert(conn, "step_runs", {
            "run_id": rec.run_id, "incident_id": rec.incident_id, "step_id": step.step_id,
            "phase": str(step.phase), "kind": step.kind, "host": step.host,
            "command": step.display, "action": action, "status": "running",
            "started_at": utcnow(), "title": step.title})

    def _finish_step(self, conn: Conn, chain: AuditChain, rec: StepEnd) -> int:
        result = rec.result
        self._update(conn, "step_runs", rec.step_run_id, {
            "status": str(result.status), "exit_status": result.exit_status,
            "started_at": result.started_at, "duration": round(result.duration, 3),
            "excerpt": result.output, "output_bytes": result.output_bytes,
            "digest": result.digest, "truncated": int(result.truncated),
            "error": result.error, "facts": dict(result.facts)})
        chain.add("step.end", rec.actor, rec.incident_id, {
            "step_run_id": rec.step_run_id, "step": result.step.step_id,
            "host": result.step.host, "status": str(result.status),
            "exit_status": result.exit_status, "duration": round(result.duration, 3),
            "output_sha256": result.digest, "output_bytes": result.output_bytes,
            "error": result.error})
        return rec.step_run_id

    def steps_of(self, incident_id: int, run_id: int | None = None) -> list[StepRun]:
        """The incident's steps, or only those of its run `run_id` (an incident run again
        and again holds every earlier run's steps)."""
        if run_id is None:
            return [step_run_from_row(r) for r in self.db.query(
                "SELECT * FROM step_runs WHERE incident_id = ? ORDER BY id", (incident_id,))]
        return [step_run_from_row(r) for r in self.db.query(
            "SELECT * FROM step_runs WHERE incident_id = ? AND run_id = ? ORDER BY id",
            (incident_id, run_id))]

    def iter_steps(self, incident_id: int,
                   phases: tuple[str, ...] = ("diagnostic", "remediation", "verify")
                   ) -> Iterator[StepRun]:
        marks = ", ".join("?" for _ in phases)
        for row in self.db.query(f"SELECT * FROM step_runs WHERE incident_id = ? AND phase IN "
                                 f"({marks}) ORDER BY id", (incident_id, *phases)):
            yield step_run_from_row(row)

    def record_diagnosis(self, run_id: int, incident_id: int, host: str,
                         causes: list[dict[str, Any]]) -> None:
        self.record_diagnoses(run_id, incident_id, {host: causes})

    def record_diagnoses(self, run_id: int, incident_id: int,
                         causes: Mapping[str, list[dict[str, Any]]]) -> None:
        """Every host's ranked causes of a run, in one transaction (one record each)."""
        with self.tx() as conn:
            chain = AuditChain(self, conn)  # the chain's head read and sealed once, not per host
            for host, found in causes.items():
                self._insert(conn, "diagnoses", {"run_id": run_id, "incident_id": incident_id,
                                                 "host": host, "causes": found,
                                                 "created_at": utcnow()})
                chain.add("diagnosis", "opsbot", incident_id,
                          {"run_id": run_id, "host": host, "causes": found})
            chain.close()

    def diagnoses_of(self, incident_id: int) -> list[Diagnosis]:
        return [diagnosis_from_row(r) for r in self.db.query(
            "SELECT * FROM diagnoses WHERE incident_id = ? ORDER BY id", (incident_id,))]

    # -- approvals ------------------------------------------------------------------------
    def create_approval(self, *, incident_id: int, run_id: int, runbook: str, step_id: str,
                        host: str, params: Mapping[str, Any], digest: str, display: str,
                        requested_by: str, ttl: float) -> Approval:
        return self.create_approvals(
            incident_id=incident_id, run_id=run_id, runbook=runbook, requested_by=requested_by,
            ttl=ttl, requests=[ApprovalRequest(step_id, host, params, digest, display)])[0]

    def create_approvals(self, *, incident_id: int, run_id: int, runbook: str,
                         requested_by: str, ttl: float,
                         requests: Sequence[ApprovalRequest]) -> list[Approval]:
        """The proposals of a run, pending, in one transaction (each audited, in order)."""
        rows: list[dict[str, Any]] = []
        with self.tx() as conn:
            chain = AuditChain(self, conn)
            for req in requests:
                token = secrets.token_urlsafe(18)
                while token.startswith("-"):  # `opsbot approve -x...` would read it as an option
                    token = secrets.token_urlsafe(18)
                now = datetime.now(UTC)
                row = {"token": token, "incident_id": incident_id, "run_id": run_id,
                       "runbook": runbook, "step_id": req.step_id, "host": req.host,
                       "params": dict(req.params), "digest": req.digest, "display": req.display,
                       "status": "pending", "requested_by": requested_by,
                       "requested_at": utcnow(),
                       "expires_at": (now + timedelta(seconds=ttl)).strftime(
                           "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
                row["id"] = self._insert(conn, "approvals", row)
                chain.add("approval.requested", requested_by, incident_id,
                          {"approval_id": row["id"], "step": req.step_id, "host": req.host,
                           "digest": req.digest, "command": req.display,
                           "expires_at": row["expires_at"]})
                rows.append(row)
            chain.close()
        return [approval_from_row({**row, "decided_by": None, "decided_at": None,
                                   "reason": None}) for row in rows]

    def _approvals(self, sql: str, params: tuple[Any, ...] = ()) -> list[Approval]:
        return [approval_from_row(r) for r in self.db.query(sql, params)]

    def get_approval(self, token: str) -> Approval:
        rows = self._approvals("SELECT * FROM approvals WHERE token = ?", (token,))
        if not rows:
            raise NotFound("no such approval")
        return rows[0]

    def approvals_of(self, incident_id: int, status: str | None = None) -> list[Approval]:
        sql = "SELECT * FROM approvals WHERE incident_id = ?"
        params: tuple[Any, ...] = (incident_id,)
        if status:
            sql, params = sql + " AND status = ?", (incident_id, status)
        return self._approvals(sql + " ORDER BY id", params)

    def approval_batch(self, approval: Approval, status: str | None = None) -> list[Approval]:
        """The approvals decided together with this one: the same step proposed in the same
        run, on every host where it was (oldest first; its first is the batch's message)."""
        sql = "SELECT * FROM approvals WHERE incident_id = ? AND run_id = ? AND step_id = ?"
        params: tuple[Any, ...] = approval.batch_key
        if status:
            sql, params = sql + " AND status = ?", (*params, status)
        return self._approvals(sql + " ORDER BY id", params)

    def batch_head(self, approval: Approval) -> Approval:
        """The first (oldest) approval of this one's batch: the batch's message. One row,
        not the batch (a run proposing a step on 50 hosts asks this 50 times)."""
        rows = self._approvals("SELECT * FROM approvals WHERE incident_id = ? AND run_id = ? "
                               "AND step_id = ? ORDER BY id LIMIT 1", approval.batch_key)
        return rows[0] if rows else approval

    def pending_approvals(self) -> list[Approval]:
        return self._approvals("SELECT * FROM approvals WHERE status = 'pending' ORDER BY id")

    def decide(self, token: str, status: str, actor: str, reason: str = "") -> bool:
        """Move a pending approval to `status`; True only for the one caller that did it.
        Expiry is checked here, at the moment of the decision (a click, `opsbot approve`, after
        a restart), not only by the sweep: a pending approval past its time becomes `expired`
        and the decision loses."""
        return self.decide_many([token], status, actor, reason)[0]

    def decide_many(self, tokens: Sequence[str], status: str, actor: str,
                    reason: str = "") -> list[bool]:
        """`decide` for each token, in order, in one transaction (voiding a run's pending
        approvals on 50 hosts: one transaction, not 50)."""
        with self.tx() as conn:
            chain = AuditChain(self, conn)
            won = [self._decide(conn, chain, token, status, actor, reason) for token in tokens]
            chain.close()
            return won

    def _decide(self, conn: Conn, chain: AuditChain, token: str, status: str, actor: str,
                reason: str) -> bool:
        now = utcnow()
        late = conn.execute("UPDATE approvals SET status = 'expired', decided_by = 'opsbot', "
                            "decided_at = ?, reason = 'not decided in time' WHERE token = ? "
                            "AND status = 'pending' AND expires_at < ?", (now, token, now))
        if late.rowcount == 1:
            row = conn.execute("SELECT id, incident_id, step_id, host, digest FROM approvals "
                               "WHERE token = ?", (token,)).fetchone()
            chain.add("approval.expired", "opsbot", row[1],
                      {"approval_id": row[0], "step": row[2], "host": row[3],
                       "digest": row[4], "reason": "not decided in time",
                       "at_decision_by": actor})
            if status == "expired":
                return True
        cur = conn.execute("UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?,"
                           " reason = ? WHERE token = ? AND status = 'pending'",
                           (status, actor, utcnow(), reason, token))
        row = conn.execute("SELECT id, incident_id, step_id, host, digest FROM approvals "
                           "WHERE token = ?", (token,)).fetchone()
        won = cur.rowcount == 1
        if won:
            self.db.notify(conn, "approvals")
        if row:
            chain.add(f"approval.{status}" if won else "approval.ignored", actor, row[1],
                      {"approval_id": row[0], "step": row[2], "host": row[3],
                       "digest": row[4], "reason": reason,
                       **({} if won else {"wanted": status})})
        return won

    # -- approvals decided in another process (`opsbot approve` while a bot serves) --------
    def heartbeat(self) -> None:
        """The serving bot says it is alive (every few seconds)."""
        with self.tx() as conn:
            conn.execute(UPSERT_META, ("serving", utcnow()))

    def serving_age(self) -> float | None:
        """Seconds since a serving bot last said it is alive; None if none ever did."""
        row = self._one("SELECT value FROM meta WHERE key = 'serving'")
        if row is None:
            return None
        return (datetime.now(UTC) - parse_ts(row["value"])).total_seconds()

    def claim_handovers(self) -> list[Approval]:
        """Approvals recorded by another process for the serving bot to carry out: each is
        claimed once (several replicas may look)."""
        claimed = []
        with self.tx() as conn:
            rows = conn.execute("SELECT token FROM approvals WHERE status = 'approved' AND "
                                "reason = ?", (HANDOVER,)).fetchall()
            for (token,) in rows:
                cur = conn.execute("UPDATE approvals SET reason = ? WHERE token = ? AND "
                                   "reason = ?", (HANDED_OVER, token, HANDOVER))
                if cur.rowcount == 1:
                    claimed.append(token)
        return [self.get_approval(t) for t in claimed]

    def take_back(self, token: str) -> bool:
        """The deciding process runs the step itself after all (no bot claimed it)."""
        with self.tx() as conn:
            cur = conn.execute("UPDATE approvals SET reason = ? WHERE token = ? AND reason = ?",
                               (HANDED_OVER.replace("serving opsbot", "deciding shell"), token,
                                HANDOVER))
            return cur.rowcount == 1

    def approval_outcome(self, approval: Approval) -> ApprovalOutcome | None:
        """The outcome record of an approved step once it was carried out."""
        for row in self.db.query("SELECT * FROM audit WHERE incident_id = ? AND action = "
                                 "'approval.outcome' ORDER BY seq DESC",
                                 (approval.incident_id,)):
            detail = json.loads(row["detail"])
            if detail.get("approval_id") == approval.id:
                return ApprovalOutcome(phase=str(detail.get("phase") or "not run"),
                                       verified=bool(detail.get("verified")))
        return None

    # -- slack messages -------------------------------------------------------------------
    def message(self, incident_id: int, kind: str, ref: str) -> PostedMessage | None:
        row = self._one("SELECT * FROM messages WHERE incident_id = ? AND kind = ? AND ref = ? "
                        "ORDER BY id DESC LIMIT 1", (incident_id, kind, ref))
        return None if row is None else PostedMessage(
            incident_id=row["incident_id"], kind=row["kind"], ref=row["ref"],
            channel=row["channel"], ts=row["ts"])

    # -- signed requests seen ---------------------------------------------------------------
    def first_use(self, key: str, until: float) -> bool:
        """Remember `key` (a signed request's signature) until `until` (epoch seconds): True
        the first time, False while it is remembered (a replay). Kept in the database, so a
        restart, or another replica on the same database, still knows it."""
        with self.tx() as conn:
            return self._first_use(conn, key, until)

    def _first_use(self, conn: Conn, key: str, until: float) -> bool:
        now = datetime.now(UTC).timestamp()
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"seen:{key}",)).fetchone()
        if row and float(row[0]) >= now:
            return False
        conn.execute(UPSERT_META, (f"seen:{key}", repr(until)))
        self._seen_writes += 1
        if self._seen_writes % 100 == 1:  # now and then, forget what expired
            conn.execute("DELETE FROM meta WHERE key >= 'seen:' AND key < 'seen;' "
                         "AND CAST(value AS DOUBLE PRECISION) < ?", (now,))
        return True

    # -- the Slack outbox -------------------------------------------------------------------
    def enqueue(self, incident_id: int, key: str, kind: str, content: Mapping[str, Any]) -> int:
        """A message (or file) to send. A message whose earlier version is still waiting is
        replaced in place: it keeps its place in the thread and only the latest state goes."""
        with self.tx() as conn:
            return self._enqueue(conn, incident_id, key, kind, content)

    def enqueue_many(self, items: Sequence[tuple[int, str, str, Mapping[str, Any]]]
                     ) -> list[int]:
        """Several (incident_id, key, kind, content), in order, in one transaction."""
        with self.tx() as conn:
            return [self._enqueue(conn, *item) for item in items]

    def _enqueue(self, conn: Conn, incident_id: int, key: str, kind: str,
                 content: Mapping[str, Any]) -> int:
        if kind == "message":
            row = conn.execute("SELECT id FROM outbox WHERE incident_id = ? AND key = ? AND "
                               "status = 'pending' AND kind = 'message' ORDER BY id DESC "
                               "LIMIT 1", (incident_id, key)).fetchone()
            if row is not None:
                conn.execute("UPDATE outbox SET content = ?, version = version + 1 "
                             "WHERE id = ?", (canonical_json(dict(content)), row[0]))
                self.db.notify(conn, "outbox")
                return int(row[0])
        self.db.notify(conn, "outbox")
        return self._insert(conn, "outbox", {
            "incident_id": incident_id, "key": key, "kind": kind, "content": dict(content),
            "status": "pending", "version": 1, "attempts": 0, "maybe_sent": 0,
            "owner": self.owner, "created_at": utcnow()})

    def outbox_pending(self, limit: int = 100) -> list[OutboxItem]:
        """This process's waiting rows, oldest first (one sender keeps every thread's order).
        With replicas, one of them (the `outbox` leader) sends every replica's rows."""
        if self.shared:
            if not self.leader("outbox"):
                return []
            return [outbox_from_row(r) for r in self.db.query(
                "SELECT * FROM outbox WHERE status = 'pending' ORDER BY id LIMIT ?", (limit,))]
        return [outbox_from_row(r) for r in self.db.query(
            "SELECT * FROM outbox WHERE status = 'pending' AND owner = ? ORDER BY id LIMIT ?",
            (self.owner, limit))]

    def adopt_outbox(self) -> int:
        """Rows left by processes that are gone (a killed server, a finished `opsbot run`).
        With replicas there is nothing to adopt: the outbox leader sends every row."""
        if self.shared:
            return 0
        owners = [r[0] for r in self.db.execute(
            "SELECT DISTINCT owner FROM outbox WHERE status = 'pending'")]
        dead = [o for o in owners if o != self.owner and not owner_alive(o)]
        if not dead:
            return 0
        with self.tx() as conn:
            marks = ", ".join("?" for _ in dead)
            return int(conn.execute(f"UPDATE outbox SET owner = ? WHERE status = 'pending' AND "
                                    f"owner IN ({marks})", (self.owner, *dead)).rowcount)

    def outbox_sent(self, row: OutboxItem, channel: str | None, ts: str | None,
                    updated: bool, audit: Mapping[str, Any]) -> None:
        """Slack took it: remember where the message is, and audit it, in one transaction.
        A row whose content changed meanwhile stays pending (its latest state goes next)."""
        incident_id, key = row.incident_id, row.key
        with self.tx() as conn:
            conn.execute("UPDATE outbox SET status = 'sent', sent_at = ?, error = NULL "
                         "WHERE id = ? AND version = ?", (utcnow(), row.id, row.version))
            if ts and not updated:
                if key == "root":
                    conn.execute("UPDATE incidents SET channel = ?, thread_ts = ? WHERE id = ?",
                                 (channel, ts, incident_id))
                elif row.kind == "message":
                    self._insert(conn, "messages", {"incident_id": incident_id,
                                                    "kind": "thread", "ref": key,
                                                    "channel": channel, "ts": ts,
                                                    "created_at": utcnow()})
            action = "file.uploaded" if row.kind == "upload" else \
                "message.updated" if updated else "message.posted"
            self._audit(conn, action, "opsbot", incident_id, dict(audit))

    def outbox_target(self, row: OutboxItem) -> tuple[Incident, str | None]:
        """The row's incident, and the ts of its message when it was posted before."""
        incident = self.get_incident(row.incident_id)
        if row.key == "root":
            return incident, incident.thread_ts
        known = self.message(incident.id, "thread", row.key) if row.kind == "message" else None
        return incident, known.ts if known else None

    def outbox_retry(self, row_id: int, error: str, maybe_sent: bool) -> None:
        with self.tx() as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, error = ?, "
                         "maybe_sent = CASE WHEN ? = 1 THEN 1 ELSE maybe_sent END WHERE id = ?",
                         (error[:300], int(maybe_sent), row_id))

    def outbox_failed(self, row: OutboxItem, error: str) -> None:
        """Slack will never take it (e.g. the channel is gone): said once in the audit log."""
        with self.tx() as conn:
            conn.execute("UPDATE outbox SET status = 'failed', error = ? WHERE id = ?",
                         (error[:300], row.id))
            self._audit(conn, "message.failed", "opsbot", row.incident_id,
                        {"key": row.key, "error": error[:300]})

    # -- what /metrics shows ---------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        q = self.db.execute

        def oldest(sql: str) -> float:
            row = q(sql).fetchone()
            if not row or not row[0]:
                return 0.0
            return max(0.0, (datetime.now(UTC) - parse_ts(row[0])).total_seconds())

        return {
            "incidents_open": q("SELECT count(*) FROM incidents WHERE status='open'").fetchone()[0],
            "incidents_total": q("SELECT count(*) FROM incidents").fetchone()[0],
            "incidents_by_phase": dict(q("SELECT CASE WHEN status = 'resolved' THEN 'resolved' "
                                         "ELSE phase END, count(*) FROM incidents GROUP BY 1")
                                       .fetchall()),
            "steps_by_kind_status": [tuple(r) for r in q(
                "SELECT kind, status, count(*) FROM step_runs GROUP BY kind, status")],
            "steps_total": q("SELECT count(*) FROM step_runs").fetchone()[0],
            "approvals_pending": q("SELECT count(*) FROM approvals WHERE status='pending'")
            .fetchone()[0],
            "audit_records": q("SELECT count(*) FROM audit").fetchone()[0],
            "webhooks_total": q("SELECT count(*) FROM webhooks").fetchone()[0],
            "alerts_total": q("SELECT count(*) FROM alerts").fetchone()[0],
            "work_pending": q("SELECT count(*) FROM work WHERE status='pending'").fetchone()[0],
            "oldest_work_seconds": oldest("SELECT min(created_at) FROM work "
                                          "WHERE status='pending'"),
            "outbox_depth": q("SELECT count(*) FROM outbox WHERE status='pending'").fetchone()[0],
            "oldest_outbox_seconds": oldest("SELECT min(created_at) FROM outbox "
                                            "WHERE status='pending'"),
            "outbox_failed": q("SELECT count(*) FROM outbox WHERE status='failed'").fetchone()[0],
        }

    def integrity_check(self) -> str:
        return self.db.integrity_check()

    def close(self) -> None:
        self.db.close()


class _Threaded(Generic[P, T]):
    """A Store method as an AsyncStore attribute: awaited, run on the store's worker thread,
    with the method's own signature and result type (what `__getattr__` forwarding lost)."""

    def __init__(self, fn: Callable[Concatenate[Store, P], T]) -> None:
        self.fn = fn

    def __get__(self, store: AsyncStore,
                owner: object = None) -> Callable[P, Coroutine[Any, Any, T]]:
        fn = self.fn

        async def threaded(*args: P.args, **kwargs: P.kwargs) -> T:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(store._pool,
                                              lambda: fn(store.sync, *args, **kwargs))

        return threaded


class AsyncStore:
    """The store's methods, awaited: each call runs on the store's own worker thread."""

    leader = _Threaded(Store.leader)
    writable = _Threaded(Store.writable)
    audit = _Threaded(Store.audit)
    audit_records = _Threaded(Store.audit_records)
    verify_audit = _Threaded(Store.verify_audit)
    prune_audit = _Threaded(Store.prune_audit)
    record_webhooks = _Threaded(Store.record_webhooks)
    webhook_outcome = _Threaded(Store.webhook_outcome)
    webhook_body = _Threaded(Store.webhook_body)
    add_work = _Threaded(Store.add_work)
    finish_work = _Threaded(Store.finish_work)
    last_work_id = _Threaded(Store.last_work_id)
    pending_work = _Threaded(Store.pending_work)
    work_item = _Threaded(Store.work_item)
    get_incident = _Threaded(Store.get_incident)
    list_incidents = _Threaded(Store.list_incidents)
    incident_for_group = _Threaded(Store.incident_for_group)
    interrupt_stale_runs = _Threaded(Store.interrupt_stale_runs)
    live_run_elsewhere = _Threaded(Store.live_run_elsewhere)
    stuck_incidents = _Threaded(Store.stuck_incidents)
    interrupt_steps = _Threaded(Store.interrupt_steps)
    expired_approvals = _Threaded(Store.expired_approvals)
    due_reminders = _Threaded(Store.due_reminders)
    idle_incidents = _Threaded(Store.idle_incidents)
    open_incident_for_host = _Threaded(Store.open_incident_for_host)
    open_or_join = _Threaded(Store.open_or_join)
    ingest_alerts = _Threaded(Store.ingest_alerts)
    ingest_many = _Threaded(Store.ingest_many)
    update_incident = _Threaded(Store.update_incident)
    record_alerts = _Threaded(Store.record_alerts)
    root_view = _Threaded(Store.root_view)
    alert_count = _Threaded(Store.alert_count)
    alerts_of = _Threaded(Store.alerts_of)
    start_run = _Threaded(Store.start_run)
    finish_run = _Threaded(Store.finish_run)
    steps_of = _Threaded(Store.steps_of)
    iter_steps = _Threaded(Store.iter_steps)
    record_diagnosis = _Threaded(Store.record_diagnosis)
    record_diagnoses = _Threaded(Store.record_diagnoses)
    diagnoses_of = _Threaded(Store.diagnoses_of)
    create_approvals = _Threaded(Store.create_approvals)
    get_approval = _Threaded(Store.get_approval)
    approvals_of = _Threaded(Store.approvals_of)
    approval_batch = _Threaded(Store.approval_batch)
    batch_head = _Threaded(Store.batch_head)
    pending_approvals = _Threaded(Store.pending_approvals)
    decide = _Threaded(Store.decide)
    decide_many = _Threaded(Store.decide_many)
    heartbeat = _Threaded(Store.heartbeat)
    serving_age = _Threaded(Store.serving_age)
    claim_handovers = _Threaded(Store.claim_handovers)
    take_back = _Threaded(Store.take_back)
    approval_outcome = _Threaded(Store.approval_outcome)
    message = _Threaded(Store.message)
    first_use = _Threaded(Store.first_use)
    enqueue = _Threaded(Store.enqueue)
    enqueue_many = _Threaded(Store.enqueue_many)
    outbox_pending = _Threaded(Store.outbox_pending)
    adopt_outbox = _Threaded(Store.adopt_outbox)
    outbox_sent = _Threaded(Store.outbox_sent)
    outbox_target = _Threaded(Store.outbox_target)
    outbox_retry = _Threaded(Store.outbox_retry)
    outbox_failed = _Threaded(Store.outbox_failed)
    metrics = _Threaded(Store.metrics)
    integrity_check = _Threaded(Store.integrity_check)

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._steps = GroupCommit(self, Store.record_steps, limit=STEP_BATCH)

    async def start_step(self, run_id: int | None, incident_id: int, step: RenderedStep,
                         actor: str) -> int:
        """Recorded (and audited) before the step runs; the steps that start or end while a
        transaction is being written share the next one (GroupCommit): a 50-host run's step
        records cost a few transactions, not one per step."""
        return await self._steps(StepStart(run_id, incident_id, step, actor))

    async def finish_step(self, step_run_id: int, incident_id: int, result: StepResult,
                          actor: str) -> None:
        await self._steps(StepEnd(step_run_id, incident_id, result, actor))

    def start_thread(self) -> None:
        """Its worker thread started now (at start-up; see bot.offload.prestart)."""
        from bot.offload import prestart

        prestart(self._pool, 1)

    def lane(self) -> AsyncStore:
        """The store on a connection and worker thread of their own, whose writes take the
        write lock first: the request path's (a signed request's replay check, the work row of
        an accepted command or click), so that an answer to Slack never queues behind a running
        diagnosis's writes. An in-memory database has one connection: the lane is the store."""
        if self.sync.path == ":memory:":
            return self
        return AsyncStore(self.sync.twin(urgent=True))

    async def listen(self, wake: Callable[[str], None]) -> None:
        """Until cancelled, wake(channel) when another process commits work for it (outbox
        rows, decided approvals): PostgreSQL's LISTEN/NOTIFY; on SQLite it returns at once."""
        await self.sync.db.listen(wake)

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.sync.close()


Item = TypeVar("Item")


# steps' records in one transaction at most: the request lane waits for the write lock while
# a run's transaction holds it (the lock goes to it first at each release), so this bounds an
# answer's wait to one batch (a 500-item batch held it 190 ms in the ack bench's load)
STEP_BATCH = 64


class GroupCommit(Generic[Item, T]):
    """Group commit: the calls that arrive while a transaction is being written wait together
    for the next one, written by `write(store, items)` (one result per item, in order) in one
    transaction on the store's thread. A batch the store refuses is written again one item per
    transaction, so that an item the store cannot keep is the only one whose caller hears the
    error (and it is never written afterwards). Each caller is answered once its item is
    committed."""

    def __init__(self, store: AsyncStore, write: Callable[[Store, list[Item]], list[T]], *,
                 limit: int = 500) -> None:
        self.store, self.write, self.limit = store, write, limit
        self.waiting: list[tuple[Item, asyncio.Future[T]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written

    async def __call__(self, item: Item) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[:self.limit], self.waiting[self.limit:]
            try:
                await self._commit(batch)
            except Exception:  # an item the store refuses: the others each on their own
                if len(batch) == 1:
                    continue  # its caller heard it
                for one in batch:
                    with contextlib.suppress(Exception):  # that caller hears it
                        await self._commit([one])

    async def _commit(self, batch: list[tuple[Item, asyncio.Future[T]]]) -> None:
        """One transaction for the batch; each caller gets its item's result, or, when the
        transaction fails, the error (nothing of the batch was written)."""
        try:
            results = await self.store.call(self.write, self.store.sync,
                                            [item for item, _ in batch])
        except BaseException as exc:
            if len(batch) == 1 or not isinstance(exc, Exception):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception)
                                             else StoreError("stopped"))
            raise
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


class WebhookIntake:
    """Webhooks recorded by group commit: requests that arrive while a transaction is being
    written wait together for the next one, so a storm costs one fsync per batch, not one per
    payload. A batch the store refuses is written again one webhook per transaction, so that a
    webhook the store cannot keep is the only one answered 503. It has its own connection and
    thread, so a queue of other store work never delays an answer to Alertmanager; each caller
    is answered only once its row is on disk."""

    def __init__(self, store: Store) -> None:
        """A connection of its own to `store`'s database (on SQLite syncing every commit:
        FULL), sharing its write lock, whose writes go first there (an answer waits for
        them)."""
        if store.shared:
            own = store.twin(urgent=True)
        else:
            own = Store(store.path, audit_key=store.audit_key, synchronous="FULL",
                        lock=store._lock)
            own.db.make_urgent()
        self.store = AsyncStore(own)
        self._group = GroupCommit(self.store, Store.record_webhooks, limit=500)
        self.received = 0  # webhooks recorded (or being recorded) by this intake
        self._looked = 0  # `received` at the last look of `busy`
        self._quiet = 0  # looks in a row that found no new webhook

    def busy(self) -> bool:
        """A burst is going on: webhooks wait to be written, or some came since the last look
        or the one before. Counted, not timed: after the whole process waited for a core, the
        first look finds nothing new although requests are queued on its sockets. Meant for
        one caller that looks every few milliseconds (bot.alertqueue)."""
        new, self._looked = self.received != self._looked, self.received
        self._quiet = 0 if new else self._quiet + 1
        return bool(self._group.waiting) or self._quiet < 2

    @property
    def batches(self) -> int:
        return self._group.batches

    async def record(self, item: WebhookIn) -> int:
        self.received += 1
        return await self._group(item)

    def close(self) -> None:
        self.store.close()
