"""pytest fixtures of the lab's PostgreSQL: one real server per session, a fresh database per test.

`postgres_server` (session): the running server, stopped at the end. `postgres_url` (function): a
new empty database on it, as the `postgresql://` URL that OPSBOT_DB takes. Nothing is skipped: a
missing PostgreSQL fails the test with what to install.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fixtures import _timings
from .postgres import PostgresServer, start_postgres
from .process import LabError


@pytest.fixture(scope="session")
def postgres_server(lab_dir: Path) -> Iterator[PostgresServer]:
    started = time.monotonic()
    try:
        server = start_postgres(lab_dir / "postgres")
    except LabError as exc:
        pytest.fail(f"test lab could not start PostgreSQL: {exc}", pytrace=False)
    _timings[f"postgresql ({server.host}:{server.port})"] = time.monotonic() - started
    yield server
    # stores a test left open keep pools that would retry the stopped server, noisily
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()
