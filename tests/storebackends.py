"""The store's two backends for tests: a SQLite file and a fresh database on the lab's PostgreSQL.

`db_target` is parametrized over both, so every test that takes it runs against each; `raw_sql`
changes the database behind the store's back (what an attacker with write access does).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.adapters.sql import is_postgres_url, to_pyformat

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A factory of fresh, empty databases of the backend under test (path or URL)."""
    count = iter(range(1000))
    if request.param == "sqlite":
        return lambda: str(tmp_path / f"opsbot-{next(count)}.db")
    server = request.getfixturevalue("postgres_server")
    return lambda: str(server.create_database())


@pytest.fixture
def db_target(new_db: Callable[[], str]) -> str:
    return new_db()


def raw_sql(target: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement, committed, on a fresh connection of its own; its rows (if any)."""
    if is_postgres_url(target):
        with psycopg.connect(target, autocommit=True) as conn:
            cur = conn.execute(to_pyformat(sql), tuple(params))  # type: ignore[arg-type]
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
    conn = sqlite3.connect(target)
    try:
        rows = conn.execute(sql, tuple(params)).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()
