"""PostgreSQL under the store (`OPSBOT_DB=postgresql://…`): a psycopg 3 connection pool.

Imported only when the store opens a postgresql:// URL (bot.adapters.sql.open_database), so
that a SQLite deployment never loads psycopg.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from bot.adapters.sql import (
    LEASE,
    WAKE_CHANNELS,
    Conn,
    Database,
    Result,
    WriteLock,
    db_errors,
    one_line,
    to_pyformat,
    translated,
)
from bot.errors import StoreError

log = logging.getLogger("opsbot.store")
LISTEN_RETRY = 2.0  # seconds before a lost listening connection is opened again
# pg_advisory_xact_lock key of the store's write lock ("opsb" as an int)
WRITE_LOCK_KEY = 0x6F707362


class _PgConn:
    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cur = self.raw.execute(to_pyformat(sql), tuple(params))
        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        columns = tuple(d.name for d in cur.description or ())
        return Result(rows, cur.rowcount, columns)


HEARTBEAT = 3.0  # seconds between heartbeats
NOW = "extract(epoch from clock_timestamp())"  # the database's clock: replicas' clocks may differ


class PostgresDatabase(Database):
    """A pool of psycopg 3 connections; writes serialized by a transaction-level advisory lock.

    Replicas: each process registers a row in `replicas` and renews its lease every HEARTBEAT
    seconds from a thread of its own; a process that dies (kill -9, a lost machine) stops
    renewing, and LEASE seconds later the others take over its work. Singleton jobs run in the
    process holding the job's session-level advisory lock on a connection of its own: when that
    process or its connection dies, the server frees the lock and another process takes it."""

    dialect = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, min_size: int = 0, max_size: int = 8,
                 timeout: float = 30.0) -> None:
        self.target = redact_url(url)
        psycopg.connect(url, connect_timeout=10).close()  # unreachable: one clear line, at once
        self.pool = psycopg_pool.ConnectionPool(
            url, min_size=min_size, max_size=max_size, timeout=timeout, open=False,
            kwargs={"autocommit": True, "connect_timeout": 10,
                    "application_name": "opsbot"})
        self.pool.open(wait=True, timeout=timeout)
        self._url = url
        self._local = threading.local()
        self.lock = WriteLock()
        self._replica: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._leader_conn: psycopg.Connection[Any] | None = None
        self._leading: set[str] = set()
        self._leader_lock = threading.Lock()

    def notify(self, conn: Conn, channel: str) -> None:
        """NOTIFY opsbot_<channel>, delivered when (and only if) the transaction commits;
        PostgreSQL folds repeats within one transaction into one."""
        conn.execute("SELECT pg_notify(?, '')", (f"opsbot_{channel}",))

    async def listen(self, wake: Callable[[str], None]) -> None:
        """LISTEN on a connection of its own (asynchronous, on the event loop). After each
        (re)connect every channel is woken once: what was notified while nobody listened is
        looked at too. A lost connection is opened again after LISTEN_RETRY seconds;
        meanwhile the pollers (the fallback) carry on."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=10,
                        application_name="opsbot-listen") as conn:
                    for channel in WAKE_CHANNELS:
                        await conn.execute(f"LISTEN opsbot_{channel}")
                    for channel in WAKE_CHANNELS:
                        wake(channel)
                    async for note in conn.notifies():
                        wake(note.channel.removeprefix("opsbot_"))
            except psycopg.Error as exc:
                log.warning("listening for other replicas' work failed (%s); polling meanwhile",
                            one_line(exc))
            await asyncio.sleep(LISTEN_RETRY)

    def register_replica(self, host: str, now: str) -> int:
        with self.tx() as conn:
            row = conn.execute(f"INSERT INTO replicas (host, pid, started_at, heartbeat) "
                               f"VALUES (?, ?, ?, {NOW}) RETURNING id",
                               (host, os.getpid(), now)).fetchone()
        assert row is not None
        self._replica = int(row[0])
        self._heartbeat = threading.Thread(target=self._beat, name="opsbot-heartbeat",
                                           daemon=True)
        self._heartbeat.start()
        return self._replica

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(StoreError, *db_errors(), psycopg_pool.PoolClosed):
                self.execute(f"UPDATE replicas SET heartbeat = {NOW} WHERE id = ?",
                             (self._replica,))

    def live_replicas(self) -> set[int]:
        rows = self.execute(f"SELECT id FROM replicas WHERE heartbeat > {NOW} - ?", (LEASE,))
        return {int(r[0]) for r in rows}

    def leader(self, job: str) -> bool:
        """This process holds `job`'s advisory lock (taken now if it is free)."""
        with self._leader_lock:
            try:
                if self._leader_conn is None or self._leader_conn.closed:
                    self._leading.clear()
                    self._leader_conn = psycopg.connect(self._url, autocommit=True,
                                                        connect_timeout=10)
                conn = self._leader_conn
                if job in self._leading:
                    conn.execute("SELECT 1")  # the lock lives as long as this connection
                    return True
                row = conn.execute("SELECT pg_try_advisory_lock(%s::int, hashtext(%s))",
                                   (WRITE_LOCK_KEY, job)).fetchone()
            except psycopg.Error:
                if self._leader_conn is not None:
                    self._leader_conn.close()
                self._leader_conn = None
                self._leading.clear()
                return False
            if row and row[0]:
                self._leading.add(job)
                return True
            return False

    def twin(self, *, urgent: bool = False) -> PostgresDatabase:
        """A small pool of its own (the server queues writers at the advisory lock)."""
        other = PostgresDatabase(self._url, max_size=2)
        other.urgent = urgent
        return other

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        current: _PgConn | None = getattr(self._local, "conn", None)
        if current is not None:  # nested: the outer transaction already holds the lock
            yield current
            return
        with translated(self.target), self.pool.connection() as raw, raw.transaction():
            conn = _PgConn(raw)
            conn.execute("SELECT pg_advisory_xact_lock(?::bigint)", (WRITE_LOCK_KEY,))
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        current: _PgConn | None = getattr(self._local, "conn", None)
        with translated(self.target):
            if current is not None:  # inside this thread's transaction: see its own writes
                return current.execute(sql, params)
            with self.pool.connection() as raw:
                return _PgConn(raw).execute(sql, params)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """A server-side cursor, read 2,000 rows at a time."""
        with translated(self.target), self.pool.connection() as raw, raw.transaction(), \
                raw.cursor(name="opsbot_stream") as cur:
            cur.itersize = 2000
            cur.execute(to_pyformat(sql), tuple(params))
            yield from cur

    def integrity_check(self) -> str:
        self.execute("SELECT count(*) FROM audit")
        return "ok"

    def close(self) -> None:
        """Stop renewing the lease and give it up at once, so that others need not wait."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=HEARTBEAT + 5)
            with contextlib.suppress(StoreError, *db_errors(), psycopg_pool.PoolClosed):
                self.execute("UPDATE replicas SET heartbeat = 0 WHERE id = ?", (self._replica,))
        with self._leader_lock:
            if self._leader_conn is not None:
                # released by the server before the connection goes: a session's advisory
                # locks are otherwise freed only when its backend notices the disconnect and
                # exits, later (the next replica's leader() would still find them held)
                with contextlib.suppress(psycopg.Error):
                    self._leader_conn.execute("SELECT pg_advisory_unlock_all()")
                self._leader_conn.close()
                self._leader_conn = None
        self.pool.close()


def redact_url(url: str) -> str:
    """The URL without its password (for messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    host, port, db = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}{':' + str(port) if port else ''}/{db}"
