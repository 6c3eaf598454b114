"""The SQL under the store: one connection API over SQLite and PostgreSQL (the small dialect layer).

The store writes its SQL once, with `?` placeholders and SQL both engines accept (`RETURNING`,
`ON CONFLICT … DO UPDATE`, `CASE`). What differs lives here:

- opening: a file (WAL, busy timeout) or a `postgresql://` URL (a psycopg 3 connection pool);
- write transactions: SQLite's `BEGIN IMMEDIATE` takes the one write lock of the file; on
  PostgreSQL every write transaction first takes a transaction-level advisory lock
  (`pg_advisory_xact_lock`), so writers from several replicas queue exactly as on SQLite and the
  audit chain never forks; the lock goes with the commit or rollback, or with a dead connection;
- placeholders (`?` -> `%s`) and the column types of migrations.

Results are read before the connection goes back (`Result`), so no cursor outlives its connection.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import psycopg_pool

from bot.config import is_database_url

DB_ERRORS: tuple[type[sqlite3.Error], type[psycopg.Error]] = (sqlite3.Error, psycopg.Error)

# pg_advisory_xact_lock key of the store's write lock ("opsb" as an int)
WRITE_LOCK_KEY = 0x6F707362
SQL_TYPES = {"sqlite": {int: "INTEGER", str: "TEXT", float: "FLOAT"},
             "postgresql": {int: "BIGINT", str: "TEXT", float: "DOUBLE PRECISION"}}


def is_postgres_url(target: str) -> bool:
    return is_database_url(target)


@dataclass
class Result:
    """What a statement returned, read whole."""

    rows: list[tuple[Any, ...]]
    rowcount: int
    columns: tuple[str, ...]

    def fetchone(self) -> Any:  # a row tuple, or None
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class Conn(Protocol):
    """One connection inside a transaction (or in autocommit for reads)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...


@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (and a literal `%` doubled), outside quoted text."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class WriteLock:
    """This process's turn at the database's write lock (re-entrant). Writers wait in order,
    `urgent` ones (the request path: an ack waits for them) before the others, and a writer
    letting go hands the turn to the next one: a busy thread writing a run's steps cannot take
    it back before a waiting one had it."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._holder: int | None = None
        self._depth = 0
        self._waiting: tuple[deque[int], deque[int]] = (deque(), deque())  # urgent, others

    def acquire(self, urgent: bool = False) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._holder == me:
                self._depth += 1
                return
            if self._holder is None and not any(self._waiting):
                self._holder, self._depth = me, 1
                return
            self._waiting[0 if urgent else 1].append(me)
            while self._holder != me:
                self._cond.wait()
            self._depth = 1

    def release(self) -> None:
        with self._cond:
            if self._holder != threading.get_ident():
                raise RuntimeError("WriteLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth:
                return
            urgent, others = self._waiting
            self._holder = urgent.popleft() if urgent else others.popleft() if others else None
            if self._holder is not None:
                self._cond.notify_all()

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Database:
    """A database the store owns: `tx()` for writes, `execute()`/`query()` for reads."""

    dialect: str
    target: str
    lock: WriteLock  # this process's writers queue here before the database's own lock
    urgent = False  # this connection's writers go first in `lock` (the request path's)
    skip_locked = ""  # what a claiming SELECT ends with

    def twin(self, *, urgent: bool = False) -> Database:
        """The same database on a connection (pool) of its own, sharing this process's write
        lock: for another thread (`urgent`: writes an answer waits for)."""
        raise NotImplementedError

    def register_replica(self, host: str, now: str) -> int:
        raise NotImplementedError(f"{self.dialect} keeps no replicas")

    def live_replicas(self) -> set[int]:
        raise NotImplementedError(f"{self.dialect} keeps no replicas")

    def leader(self, job: str) -> bool:
        """One process of a file does everything: it is always the leader."""
        return True

    def tx(self) -> AbstractContextManager[Conn]:
        """One write transaction holding the database's write lock from its start."""
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.execute(sql, params).dicts()

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows as they are read, never all at once (exports of a long audit log)."""
        raise NotImplementedError

    def integrity_check(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- schema -----------------------------------------------------------------------------
    def column(self, name: str, kind: type, *, pk: bool = False, auto: bool = False) -> str:
        if pk and auto:
            if self.dialect == "postgresql":
                return f"{name} BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
            return f"[{name}] INTEGER PRIMARY KEY"
        quoted = name if self.dialect == "postgresql" else f"[{name}]"
        return f"{quoted} {SQL_TYPES[self.dialect][kind]}{' PRIMARY KEY' if pk else ''}"


class _SqliteConn:
    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cur = self.raw.execute(sql, tuple(params))
        rows = [tuple(r) for r in cur.fetchall()]
        columns = tuple(d[0] for d in cur.description or ())
        return Result(rows, cur.rowcount, columns)


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "FULL",
                 lock: WriteLock | None = None) -> None:
        self.target = path
        self.synchronous = synchronous
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        raw = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        raw.execute("PRAGMA busy_timeout = 30000")
        if path != ":memory:":
            raw.execute("PRAGMA journal_mode = wal")
        raw.execute(f"PRAGMA synchronous = {'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
        self.raw = raw
        self.conn = _SqliteConn(raw)
        self.lock = lock or WriteLock()

    def twin(self, *, urgent: bool = False) -> SqliteDatabase:
        if self.target == ":memory:":
            raise ValueError("an in-memory database has no second connection")
        other = SqliteDatabase(self.target, synchronous=self.synchronous, lock=self.lock)
        other.urgent = urgent
        return other

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """One write transaction, taken with the write lock at once (BEGIN IMMEDIATE)."""
        raw = self.raw
        self.lock.acquire(self.urgent)
        try:
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:  # a failed COMMIT (disk full) may leave it open
                    raw.execute("ROLLBACK")
                raise
        finally:
            self.lock.release()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self.conn.execute(sql, params)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self.raw.execute(sql, tuple(params))

    def integrity_check(self) -> str:
        row = self.execute("PRAGMA integrity_check").fetchone()
        return str(row[0]) if row else "no answer"

    def close(self) -> None:
        self.raw.close()


class _PgConn:
    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cur = self.raw.execute(to_pyformat(sql), tuple(params))
        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        columns = tuple(d.name for d in cur.description or ())
        return Result(rows, cur.rowcount, columns)


LEASE = 15.0  # seconds a replica counts as alive after its last heartbeat
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
            with contextlib.suppress(*DB_ERRORS, psycopg_pool.PoolClosed):
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
        with self.pool.connection() as raw, raw.transaction():
            conn = _PgConn(raw)
            conn.execute("SELECT pg_advisory_xact_lock(?::bigint)", (WRITE_LOCK_KEY,))
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        current: _PgConn | None = getattr(self._local, "conn", None)
        if current is not None:  # inside this thread's transaction: see its own writes
            return current.execute(sql, params)
        with self.pool.connection() as raw:
            return _PgConn(raw).execute(sql, params)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """A server-side cursor, read 2,000 rows at a time."""
        with self.pool.connection() as raw, raw.transaction(), \
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
            with contextlib.suppress(*DB_ERRORS, psycopg_pool.PoolClosed):
                self.execute("UPDATE replicas SET heartbeat = 0 WHERE id = ?", (self._replica,))
        with self._leader_lock:
            if self._leader_conn is not None:
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


def open_database(target: str, *, synchronous: str = "FULL",
                  lock: WriteLock | None = None) -> Database:
    if is_postgres_url(target):
        return PostgresDatabase(target)
    return SqliteDatabase(target, synchronous=synchronous, lock=lock)


def create_table(conn: Conn, db: Database, name: str, columns: Mapping[str, type],
                 pk: str = "id") -> None:
    cols = ", ".join(db.column(col, kind, pk=col == pk, auto=col == pk == "id")
                     for col, kind in columns.items())
    conn.execute(f"CREATE TABLE {name} ({cols})")


def create_index(conn: Conn, name: str, columns: Sequence[str], *, unique: bool = False) -> None:
    conn.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX idx_{name}_{'_'.join(columns)} "
                 f"ON {name} ({', '.join(columns)})")


def add_column(conn: Conn, db: Database, table: str, name: str, kind: type) -> None:
    conn.execute(f"ALTER TABLE {table} ADD COLUMN {db.column(name, kind)}")


def shown_target(target: str) -> str:
    """A database as named in messages: the path, or the URL without its password."""
    return redact_url(target) if is_postgres_url(target) else target


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
