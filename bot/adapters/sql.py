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

import functools
import logging
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bot.config import is_database_url
from bot.errors import StoreError

LEASE = 15.0  # seconds a replica counts as alive after its last heartbeat
# what a commit wakes in other processes (PostgreSQL NOTIFY on opsbot_<name>): rows waiting in
# the Slack outbox (sent by one replica, whichever wrote them), approvals decided (a terminal's
# decision handed over to the serving bots)
WAKE_CHANNELS = ("outbox", "approvals")
SQL_TYPES = {"sqlite": {int: "INTEGER", str: "TEXT", float: "FLOAT"},
             "postgresql": {int: "BIGINT", str: "TEXT", float: "DOUBLE PRECISION"}}


@contextmanager
def translated(target: str) -> Iterator[None]:
    """The database's own errors, as the store's: a StoreError of one line, naming the
    database without its password (the original is its __cause__, for the log)."""
    try:
        yield
    except db_errors() as exc:
        raise StoreError(f"the database {target} failed: {one_line(exc)}") from exc


def is_postgres_url(target: str) -> bool:
    return is_database_url(target)


def db_errors() -> tuple[type[Exception], ...]:
    """The database errors to catch: psycopg's once the PostgreSQL backend is loaded (it is
    imported only for a postgresql:// URL: importing it cost a cold `opsbot run` 0.2 s of CPU).
    Called in the `except` clause itself, so it is read when an error comes."""
    pg = sys.modules.get("psycopg")
    return (sqlite3.Error, pg.Error) if pg is not None else (sqlite3.Error,)


def store_errors() -> tuple[type[Exception], ...]:
    """StoreError and the engines' own errors: what a caller below the store may meet."""
    return (StoreError, *db_errors())


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


log = logging.getLogger(__name__)
CHECKPOINT_PAGES = 1000  # WAL pages that make a checkpoint due (SQLite's own default)
BUSY_TIMEOUT = 30.0  # seconds a write waits for another process's write lock
BUSY_POLL = 0.001  # seconds between an urgent connection's tries at it (SqliteDatabase._begin)


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

    def held_here(self) -> bool:
        """The calling thread holds it (inside a transaction, nested or not)."""
        return self._holder == threading.get_ident()

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

    def make_urgent(self) -> None:
        """This connection's writers go first in `lock`: an answer waits for them."""
        self.urgent = True

    def register_replica(self, host: str, now: str) -> int:
        raise NotImplementedError(f"{self.dialect} keeps no replicas")

    def live_replicas(self) -> set[int]:
        raise NotImplementedError(f"{self.dialect} keeps no replicas")

    def leader(self, job: str) -> bool:
        """One process of a file does everything: it is always the leader."""
        return True

    def notify(self, conn: Conn, channel: str) -> None:
        """Wake other processes once this transaction commits. A file's processes poll: on
        SQLite there is nothing to do."""

    async def listen(self, wake: Callable[[str], None]) -> None:
        """Until cancelled: wake(channel) each time another process notifies one of
        WAKE_CHANNELS. On SQLite there is nothing to listen to: it returns at once (the
        pollers stay the only way, as they always were)."""

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
        raw.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        if path != ":memory:":
            raw.execute("PRAGMA journal_mode = wal")
        raw.execute(f"PRAGMA synchronous = {'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
        self.wal: Path | None = None
        self.checkpoint_bytes = 0
        if path != ":memory:":  # checkpoints are run by `tx`, once the write lock is let go;
            # the WAL file is cut back when it starts over, so its size tells when one is due
            raw.execute("PRAGMA wal_autocheckpoint = 0")
            raw.execute("PRAGMA journal_size_limit = 0")
            self.wal = Path(f"{path}-wal")
            page = raw.execute("PRAGMA page_size").fetchone()[0]
            self.checkpoint_bytes = CHECKPOINT_PAGES * int(page)
        self.raw = raw
        self.conn = _SqliteConn(raw)
        self.lock = lock or WriteLock()

    def twin(self, *, urgent: bool = False) -> SqliteDatabase:
        if self.target == ":memory:":
            raise ValueError("an in-memory database has no second connection")
        other = SqliteDatabase(self.target, synchronous=self.synchronous, lock=self.lock)
        if urgent:
            other.make_urgent()
        return other

    def make_urgent(self) -> None:
        """Also: it never checkpoints the WAL (`checkpoint`): the process's other connections
        (the store's, which the serving process writes to every second) do."""
        super().make_urgent()

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """One write transaction, taken with the write lock at once (BEGIN IMMEDIATE); then,
        the lock let go, the WAL checkpointed when it is due (`checkpoint`)."""
        raw = self.raw
        self.lock.acquire(self.urgent)
        try:
            with translated(self.target):
                self._begin()
                try:
                    yield self.conn
                    raw.execute("COMMIT")
                except BaseException:
                    if raw.in_transaction:  # a failed COMMIT (disk full) may leave it open
                        raw.execute("ROLLBACK")
                    raise
        finally:
            self.lock.release()
        if not self.urgent and not self.lock.held_here():
            self.checkpoint()

    def _begin(self) -> None:
        """BEGIN IMMEDIATE. An urgent connection (an answer waits for it) tries for the file's
        write lock every BUSY_POLL while another process holds it: SQLite's own busy handler
        sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between its tries, and an answer waited up to
        that long after the other process (the edge's, or the core's) had let go."""
        raw = self.raw
        if not self.urgent:
            raw.execute("BEGIN IMMEDIATE")
            return
        deadline = time.monotonic() + BUSY_TIMEOUT
        raw.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(BUSY_POLL)
        finally:
            raw.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")

    def checkpoint(self) -> None:
        """Copy the WAL into the database once it holds CHECKPOINT_PAGES pages, outside the
        write lock. SQLite's own automatic checkpoint runs inside the COMMIT that finds the WAL
        that long: it copies the pages and syncs the database file (10-30 ms on an idle disk;
        248 ms in the ack bench's load) while the transaction still holds this process's write
        lock, and an answer to Slack (the request lane's first_use, 441 ms) waited for it. A
        PASSIVE checkpoint needs no write lock: writers go on meanwhile (SQLite's WAL)."""
        if self.wal is None:
            return
        try:
            due = self.wal.stat().st_size >= self.checkpoint_bytes
        except OSError:  # no WAL file (yet)
            return
        if due:
            try:
                self.raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the commit stands; the next one tries again
                log.warning("WAL checkpoint of %s failed: %s", self.target, exc)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with translated(self.target):
            return self.conn.execute(sql, params)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with translated(self.target):
            yield from self.raw.execute(sql, tuple(params))

    def integrity_check(self) -> str:
        row = self.execute("PRAGMA integrity_check").fetchone()
        return str(row[0]) if row else "no answer"

    def close(self) -> None:
        self.raw.close()


def open_database(target: str, *, synchronous: str = "FULL",
                  lock: WriteLock | None = None) -> Database:
    if is_postgres_url(target):
        from bot.adapters.postgres import PostgresDatabase

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
    if is_postgres_url(target):
        from bot.adapters.postgres import redact_url

        return redact_url(target)
    return target


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
