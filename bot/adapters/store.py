"""The store: one object owning the SQLite database (the only module importing sqlite_utils).

State lives here, not in memory: open incidents, pending approvals and Slack message references
survive a restart. Writes run in explicit transactions (`BEGIN IMMEDIATE`), so two opsbot
processes on one file (the server and a terminal `opsbot run`) keep the audit chain whole.
`AsyncStore` runs every call on one worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlite_utils

from bot.audit import GENESIS, PRUNED, Mark, VerifyReport, record_hash, verify_chain
from bot.errors import BotError, NotFound
from bot.models import Incident, IncidentStatus, StepResult, canonical_json
from bot.redact import redact, redact_value

P = ParamSpec("P")
T = TypeVar("T")
Row = dict[str, Any]

REOPEN_WINDOW = timedelta(hours=24)


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


class StoreError(BotError):
    """The database cannot be opened or written."""


def _m1(db: sqlite_utils.Database) -> None:
    db.table("webhooks").create({"id": int, "received_at": str, "source": str, "remote": str,
                                 "body": str, "outcome": str, "incident_id": int}, pk="id")
    db.table("incidents").create({"id": int, "group_key": str, "status": str, "phase": str,
                                  "title": str, "runbook": str, "hosts": str, "labels": str,
                                  "notes": str, "cause": str, "opened_at": str, "resolved_at": str,
                                  "updated_at": str, "channel": str, "thread_ts": str}, pk="id")
    db.table("incidents").create_index(["group_key"])
    db.table("incidents").create_index(["status"])
    db.table("alerts").create({"id": int, "incident_id": int, "webhook_id": int, "fingerprint": str,
                               "name": str, "status": str, "labels": str, "annotations": str,
                               "starts_at": str, "ends_at": str, "received_at": str}, pk="id")
    db.table("alerts").create_index(["incident_id"])
    db.table("runs").create({"id": int, "incident_id": int, "runbook": str, "target": str,
                             "requested_by": str, "source": str, "params": str, "started_at": str,
                             "ended_at": str, "status": str}, pk="id")
    db.table("step_runs").create({"id": int, "run_id": int, "incident_id": int, "step_id": str,
                                  "phase": str, "kind": str, "host": str, "command": str,
                                  "action": str, "status": str, "exit_status": int,
                                  "started_at": str, "duration": float, "excerpt": str,
                                  "output_bytes": int, "digest": str, "truncated": int,
                                  "error": str, "facts": str, "title": str}, pk="id")
    db.table("step_runs").create_index(["incident_id"])
    db.table("diagnoses").create({"id": int, "run_id": int, "incident_id": int, "host": str,
                                  "causes": str, "created_at": str}, pk="id")
    db.table("approvals").create({"id": int, "token": str, "incident_id": int, "run_id": int,
                                  "runbook": str, "step_id": str, "host": str, "params": str,
                                  "digest": str, "display": str, "status": str,
                                  "requested_by": str, "requested_at": str, "expires_at": str,
                                  "decided_by": str, "decided_at": str, "reason": str}, pk="id")
    db.table("approvals").create_index(["token"], unique=True)
    db.table("messages").create({"id": int, "incident_id": int, "kind": str, "ref": str,
                                 "channel": str, "ts": str, "created_at": str}, pk="id")
    db.table("messages").create_index(["incident_id", "kind", "ref"])
    db.table("audit").create({"seq": int, "ts": str, "actor": str, "action": str,
                              "incident_id": int, "detail": str, "prev_hash": str, "hash": str},
                             pk="seq")
    db.table("audit").create_index(["incident_id"])
    db.table("meta").create({"key": str, "value": str}, pk="key")


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (_m1,)

JSON_COLUMNS = {"hosts", "labels", "notes", "annotations", "params", "action", "facts",
                "causes", "detail"}


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


class Store:
    def __init__(self, path: Path | str, *, audit_key: str | None = None) -> None:
        self.path = str(path)
        self.audit_key = audit_key
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            self.db = sqlite_utils.Database(conn)
            if self.path != ":memory:":
                self.db.enable_wal()
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._seen_writes = 0  # first_use calls, to prune expired keys now and then

    # -- plumbing -------------------------------------------------------------------------
    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with the write lock at once (BEGIN IMMEDIATE)."""
        conn = self.db.conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT (disk full) may leave it open
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS migrations "
                         "(version INTEGER PRIMARY KEY, applied_at TEXT)")
            done = {r[0] for r in conn.execute("SELECT version FROM migrations")}
            for version, migration in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    migration(self.db)
                    conn.execute("INSERT INTO migrations VALUES (?, ?)", (version, utcnow()))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _insert(self, conn: sqlite3.Connection, table: str, row: Mapping[str, Any]) -> int:
        cols = list(row)
        values = [canonical_json(v) if isinstance(v, dict | list | tuple) else v
                  for v in row.values()]
        cur = conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) "
                           f"VALUES ({', '.join('?' for _ in cols)})", values)
        return int(cur.lastrowid or 0)

    def _update(self, conn: sqlite3.Connection, table: str, pk: int,
                fields: Mapping[str, Any]) -> None:
        if not fields:
            return
        values = [canonical_json(v) if isinstance(v, dict | list | tuple) else v
                  for v in fields.values()]
        conn.execute(f"UPDATE {table} SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                     [*values, pk])

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        rows = list(self.db.query(sql, params))
        return _decode(rows[0]) if rows else None

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return [_decode(r) for r in self.db.query(sql, params)]

    def writable(self) -> bool:
        try:
            with self.tx() as conn:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('healthcheck', ?)", (utcnow(),))
            return True
        except sqlite3.Error:
            return False

    # -- audit ----------------------------------------------------------------------------
    def _mark(self, conn: sqlite3.Connection, which: str) -> Mark | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"audit_{which}",)).fetchone()
        return Mark.from_meta(row[0] if row else None)

    def _set_mark(self, conn: sqlite3.Connection, which: str, seq: int, hash_: str) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                     (f"audit_{which}", Mark.sealed(which, seq, hash_, self.audit_key).to_meta()))

    def _audit(self, conn: sqlite3.Connection, action: str, actor: str,
               incident_id: int | None, detail: Mapping[str, Any]) -> int:
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            anchor = self._mark(conn, "anchor")
            seq, prev = (anchor.seq, anchor.hash) if anchor else (0, GENESIS)
        else:
            seq, prev = last
        rec = {"seq": seq + 1, "ts": utcnow(), "actor": actor, "action": action,
               "incident_id": incident_id, "detail": canonical_json(redact_value(detail)),
               "prev_hash": prev}
        rec["hash"] = hash_ = record_hash(rec, self.audit_key)
        self._insert(conn, "audit", rec)
        self._set_mark(conn, "head", seq + 1, hash_)
        return seq + 1

    def audit(self, action: str, actor: str, incident_id: int | None = None,
              **detail: Any) -> int:
        with self.tx() as conn:
            return self._audit(conn, action, actor, incident_id, detail)

    def audit_records(self, incident_id: int | None = None) -> Iterator[Row]:
        if incident_id is None:
            yield from self.db.query("SELECT * FROM audit ORDER BY seq")
        else:
            yield from self.db.query("SELECT * FROM audit WHERE incident_id = ? ORDER BY seq",
                                     (incident_id,))

    def verify_audit(self) -> VerifyReport:
        conn = self.db.conn
        return verify_chain(self.audit_records(), anchor=self._mark(conn, "anchor"),
                            head=self._mark(conn, "head"), key=self.audit_key)

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
    def record_webhook(self, source: str, body: bytes, remote: str) -> int:
        text = redact(body.decode("utf-8", "replace"))
        with self.tx() as conn:
            wid = self._insert(conn, "webhooks", {"received_at": utcnow(), "source": source,
                                                  "remote": remote, "body": text,
                                                  "outcome": "received"})
            self._audit(conn, "webhook.received", f"webhook:{source}", None,
                        {"webhook_id": wid, "remote": remote, "bytes": len(body)})
            return wid

    def webhook_outcome(self, webhook_id: int, outcome: str,
                        incident_id: int | None = None) -> None:
        with self.tx() as conn:
            self._update(conn, "webhooks", webhook_id,
                         {"outcome": outcome, "incident_id": incident_id})

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
        """Runs left `running` by a process that stopped: say so, once, at start-up."""
        rows = self._all("SELECT id, incident_id FROM runs WHERE status = 'running'")
        for row in rows:
            self.finish_run(row["id"], row["incident_id"], "interrupted", actor)
        return len(rows)

    def expired_approvals(self) -> list[Row]:
        return self._all("SELECT * FROM approvals WHERE status = 'pending' AND expires_at < ?",
                         (utcnow(),))

    def open_incident_for_host(self, host: str) -> Incident | None:
        for row in self._all("SELECT * FROM incidents WHERE status = 'open' ORDER BY id DESC"):
            if host in (row["hosts"] or ()):
                return incident_from_row(row)
        return None

    def open_or_join(self, group_key: str, *, title: str, labels: Mapping[str, str],
                     runbook: str | None, hosts: list[str], notes: list[str],
                     actor: str) -> tuple[Incident, str]:
        """Atomically find the group's incident or open one. Returns (incident, how) where
        how is "opened", "joined" (already open) or "reopened" (resolved within the window)."""
        title, labels, notes = redact(title), redact_value(dict(labels)), redact_value(notes)
        with self.tx() as conn:
            row = conn.execute("SELECT id, status, resolved_at FROM incidents WHERE group_key = ?"
                               " ORDER BY id DESC LIMIT 1", (group_key,)).fetchone()
            now = utcnow()
            if row and row[1] == IncidentStatus.OPEN:
                how, incident_id = "joined", row[0]
            elif row and row[2] and parse_ts(now) - parse_ts(row[2]) < REOPEN_WINDOW:
                how, incident_id = "reopened", row[0]
                self._update(conn, "incidents", incident_id,
                             {"status": "open", "phase": "reopened", "resolved_at": None,
                              "updated_at": now, "cause": None})
            else:
                how = "opened"
                incident_id = self._insert(conn, "incidents", {
                    "group_key": group_key, "status": "open", "phase": "investigating",
                    "title": title, "runbook": runbook, "hosts": hosts, "labels": dict(labels),
                    "notes": notes, "opened_at": now, "updated_at": now})
            self._audit(conn, f"incident.{how}", actor, incident_id,
                        {"group_key": group_key, "title": title, "runbook": runbook,
                         "hosts": hosts, "notes": notes})
        return self.get_incident(incident_id), how

    def update_incident(self, incident_id: int, actor: str = "opsbot", *, audit: bool = True,
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
                      alerts: list[Mapping[str, Any]]) -> None:
        with self.tx() as conn:
            for alert in alerts:
                self._insert(conn, "alerts", {"incident_id": incident_id,
                                              "webhook_id": webhook_id,
                                              "received_at": utcnow(), **redact_value(alert)})

    def alerts_of(self, incident_id: int) -> list[Row]:
        return self._all("SELECT * FROM alerts WHERE incident_id = ? ORDER BY id", (incident_id,))

    # -- runs and steps -------------------------------------------------------------------
    def start_run(self, incident_id: int, runbook: str, target: str, requested_by: str,
                  source: str, params: Mapping[str, Any]) -> int:
        shown = redacted_json(params)
        with self.tx() as conn:
            run_id = self._insert(conn, "runs", {
                "incident_id": incident_id, "runbook": runbook, "target": target,
                "requested_by": requested_by, "source": source, "params": shown,
                "started_at": utcnow(), "status": "running"})
            self._audit(conn, "run.started", requested_by, incident_id,
                        {"run_id": run_id, "runbook": runbook, "target": target,
                         "source": source, "params": shown})
            return run_id

    def finish_run(self, run_id: int, incident_id: int, status: str, actor: str) -> None:
        with self.tx() as conn:
            self._update(conn, "runs", run_id, {"status": status, "ended_at": utcnow()})
            self._audit(conn, "run.finished", actor, incident_id,
                        {"run_id": run_id, "status": status})

    def start_step(self, run_id: int | None, incident_id: int, step: Any, actor: str) -> int:
        action = redacted_json(step.action)
        with self.tx() as conn:
            self._audit(conn, "step.start", actor, incident_id,
                        {"run_id": run_id, "step": step.step_id, "phase": str(step.phase),
                         "kind": step.kind, "host": step.host, "command": step.display,
                         "action": action})
            return self._insert(conn, "step_runs", {
                "run_id": run_id, "incident_id": incident_id, "step_id": step.step_id,
                "phase": str(step.phase), "kind": step.kind, "host": step.host,
                "command": step.display, "action": action, "status": "running",
                "started_at": utcnow(), "title": step.title})

    def finish_step(self, step_run_id: int, incident_id: int, result: StepResult,
                    actor: str) -> None:
        with self.tx() as conn:
            self._update(conn, "step_runs", step_run_id, {
                "status": str(result.status), "exit_status": result.exit_status,
                "started_at": result.started_at, "duration": round(result.duration, 3),
                "excerpt": result.output, "output_bytes": result.output_bytes,
                "digest": result.digest, "truncated": int(result.truncated),
                "error": result.error, "facts": dict(result.facts)})
            self._audit(conn, "step.end", actor, incident_id, {
                "step_run_id": step_run_id, "step": result.step.step_id,
                "host": result.step.host, "status": str(result.status),
                "exit_status": result.exit_status, "duration": round(result.duration, 3),
                "output_sha256": result.digest, "output_bytes": result.output_bytes,
                "error": result.error})

    def steps_of(self, incident_id: int) -> list[Row]:
        return self._all("SELECT * FROM step_runs WHERE incident_id = ? ORDER BY id",
                         (incident_id,))

    def iter_steps(self, incident_id: int,
                   phases: tuple[str, ...] = ("diagnostic", "remediation", "verify")
                   ) -> Iterator[Row]:
        marks = ", ".join("?" for _ in phases)
        for row in self.db.query(f"SELECT * FROM step_runs WHERE incident_id = ? AND phase IN "
                                 f"({marks}) ORDER BY id", (incident_id, *phases)):
            yield _decode(row)

    def record_diagnosis(self, run_id: int, incident_id: int, host: str,
                         causes: list[dict[str, Any]]) -> None:
        with self.tx() as conn:
            self._insert(conn, "diagnoses", {"run_id": run_id, "incident_id": incident_id,
                                             "host": host, "causes": causes,
                                             "created_at": utcnow()})
            self._audit(conn, "diagnosis", "opsbot", incident_id,
                        {"run_id": run_id, "host": host, "causes": causes})

    def diagnoses_of(self, incident_id: int) -> list[Row]:
        return self._all("SELECT * FROM diagnoses WHERE incident_id = ? ORDER BY id",
                         (incident_id,))

    # -- approvals ------------------------------------------------------------------------
    def create_approval(self, *, incident_id: int, run_id: int, runbook: str, step_id: str,
                        host: str, params: Mapping[str, Any], digest: str, display: str,
                        requested_by: str, ttl: float) -> Row:
        token = secrets.token_urlsafe(18)
        now = datetime.now(UTC)
        row = {"token": token, "incident_id": incident_id, "run_id": run_id,
               "runbook": runbook, "step_id": step_id, "host": host, "params": dict(params),
               "digest": digest, "display": display, "status": "pending",
               "requested_by": requested_by, "requested_at": utcnow(),
               "expires_at": (now + timedelta(seconds=ttl)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
               + "Z"}
        with self.tx() as conn:
            row["id"] = self._insert(conn, "approvals", row)
            self._audit(conn, "approval.requested", requested_by, incident_id,
                        {"approval_id": row["id"], "step": step_id, "host": host,
                         "digest": digest, "command": display, "expires_at": row["expires_at"]})
        return row

    def get_approval(self, token: str) -> Row:
        row = self._one("SELECT * FROM approvals WHERE token = ?", (token,))
        if row is None:
            raise NotFound("no such approval")
        return row

    def approvals_of(self, incident_id: int, status: str | None = None) -> list[Row]:
        sql = "SELECT * FROM approvals WHERE incident_id = ?"
        params: tuple[Any, ...] = (incident_id,)
        if status:
            sql, params = sql + " AND status = ?", (incident_id, status)
        return self._all(sql + " ORDER BY id", params)

    def pending_approvals(self) -> list[Row]:
        return self._all("SELECT * FROM approvals WHERE status = 'pending' ORDER BY id")

    def decide(self, token: str, status: str, actor: str, reason: str = "") -> bool:
        """Move a pending approval to `status`; True only for the one caller that did it.
        Expiry is checked here, at the moment of the decision (a click, `opsbot approve`, after
        a restart), not only by the sweep: a pending approval past its time becomes `expired`
        and the decision loses."""
        with self.tx() as conn:
            now = utcnow()
            late = conn.execute("UPDATE approvals SET status = 'expired', decided_by = 'opsbot', "
                                "decided_at = ?, reason = 'not decided in time' WHERE token = ? "
                                "AND status = 'pending' AND expires_at < ?", (now, token, now))
            if late.rowcount == 1:
                row = conn.execute("SELECT id, incident_id, step_id, host, digest FROM approvals "
                                   "WHERE token = ?", (token,)).fetchone()
                self._audit(conn, "approval.expired", "opsbot", row[1],
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
            if row:
                self._audit(conn, f"approval.{status}" if won else "approval.ignored", actor,
                            row[1], {"approval_id": row[0], "step": row[2], "host": row[3],
                                     "digest": row[4], "reason": reason,
                                     **({} if won else {"wanted": status})})
            return won

    # -- slack messages -------------------------------------------------------------------
    def remember_message(self, incident_id: int, kind: str, ref: str, channel: str,
                         ts: str) -> None:
        with self.tx() as conn:
            self._insert(conn, "messages", {"incident_id": incident_id, "kind": kind,
                                            "ref": ref, "channel": channel, "ts": ts,
                                            "created_at": utcnow()})

    def message(self, incident_id: int, kind: str, ref: str) -> Row | None:
        return self._one("SELECT * FROM messages WHERE incident_id = ? AND kind = ? AND ref = ? "
                         "ORDER BY id DESC LIMIT 1", (incident_id, kind, ref))

    # -- signed requests seen ---------------------------------------------------------------
    def first_use(self, key: str, until: float) -> bool:
        """Remember `key` (a signed request's signature) until `until` (epoch seconds): True
        the first time, False while it is remembered (a replay). Kept in the database, so a
        restart, or another replica on the same database, still knows it."""
        now = datetime.now(UTC).timestamp()
        with self.tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"seen:{key}",)).fetchone()
            if row and float(row[0]) >= now:
                return False
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"seen:{key}", repr(until)))
            self._seen_writes += 1
            if self._seen_writes % 100 == 1:  # now and then, forget what expired
                conn.execute("DELETE FROM meta WHERE key >= 'seen:' AND key < 'seen;' "
                             "AND CAST(value AS REAL) < ?", (now,))
            return True

    def metrics(self) -> dict[str, int]:
        q = self.db.conn.execute
        return {
            "incidents_open": q("SELECT count(*) FROM incidents WHERE status='open'").fetchone()[0],
            "incidents_total": q("SELECT count(*) FROM incidents").fetchone()[0],
            "steps_total": q("SELECT count(*) FROM step_runs").fetchone()[0],
            "approvals_pending": q("SELECT count(*) FROM approvals WHERE status='pending'")
            .fetchone()[0],
            "audit_records": q("SELECT count(*) FROM audit").fetchone()[0],
            "webhooks_total": q("SELECT count(*) FROM webhooks").fetchone()[0],
        }

    def close(self) -> None:
        self.db.conn.close()


class AsyncStore:
    """The store's methods, awaited: each call runs on the store's own worker thread."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.sync, name)
        if not callable(fn):
            raise AttributeError(name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await self.call(fn, *args, **kwargs)

        return wrapper

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.sync.close()
