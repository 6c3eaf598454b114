"""The lab's PostgreSQL is a real server: it answers SQL and keeps each test's database apart."""

from __future__ import annotations

import psycopg

from tests.lab.postgres import PostgresServer


def test_fresh_database_per_test_on_a_real_server(postgres_server: PostgresServer,
                                                  postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 150000
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        row = conn.execute("SELECT count(*) FROM t").fetchone()
        assert row == (1,)
    other = postgres_server.create_database()
    with psycopg.connect(other) as conn:
        exists = conn.execute("SELECT to_regclass('public.t')").fetchone()
        assert exists == (None,)
