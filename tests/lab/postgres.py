"""A real PostgreSQL server for the tests (Debian's `postgresql` package), nothing mocked.

`initdb` as the `postgres` user into the lab folder, then the server in the foreground on a free
127.0.0.1 port with its socket in that folder too, so it never meets the machine's own cluster:

    postgres/data/  postgres/run/ (unix socket)  postgres/postgres.log

Authentication is `trust` for 127.0.0.1 only (a throw-away lab cluster). Each test asks for a
fresh database (`PostgresServer.create_database()`), so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

from .process import LabError, LabProcess, free_port, port_open, run, spawn, tail, wait_until

PG_INSTALL_HINT = "apt-get install postgresql (scripts/bootstrap.sh installs it for the tests)"
PG_USER = "postgres"


def pg_bindir() -> Path:
    """Folder of initdb/postgres: the newest /usr/lib/postgresql/N/bin."""
    base = Path("/usr/lib/postgresql")
    versions = sorted((p for p in base.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        raise LabError(f"PostgreSQL not found under {base}: {PG_INSTALL_HINT}")
    return versions[-1]


@dataclass
class PostgresServer:
    folder: Path
    port: int
    host: str = "127.0.0.1"
    _process: LabProcess | None = field(default=None, repr=False)

    @property
    def log_file(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{dbname}"

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def ready(self) -> bool:
        result = run([str(pg_bindir() / "pg_isready"), "-h", self.host, "-p", str(self.port),
                      "-U", PG_USER, "-q"], timeout=10)
        return result.returncode == 0

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        result = run([str(pg_bindir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                      "-d", self.url(dbname), "-c", sql], timeout=30, check=True)
        return result.stdout.strip()

    def create_database(self, prefix: str = "opsbot") -> str:
        """A new empty database; its postgresql:// URL."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        if self.running() and self.ready():
            return
        if port_open(self.host, self.port):
            raise LabError(f"{self.host}:{self.port} is taken; cannot start PostgreSQL")
        bindir = pg_bindir()
        self._process = spawn("postgres", [
            "runuser", "-u", PG_USER, "--", str(bindir / "postgres"),
            "-D", str(self.folder / "data"),
            "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.folder / 'run'}",
            "-c", "fsync=off", "-c", "max_connections=200",
        ], self.log_file, cwd=self.folder)

        def up() -> bool:
            assert self._process is not None
            self._process.check_alive()
            return self.ready()

        wait_until(up, 60, f"PostgreSQL on {self.host}:{self.port}", interval=0.2,
                   on_timeout=lambda: f"\n{tail(self.log_file)}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster): clients still connected (a test's stores)
        are disconnected, where the smart shutdown of SIGTERM (what runuser passes on) waited
        for them."""
        if self._process is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            self._process.stop(timeout=20)
            self._process = None


def start_postgres(folder: Path) -> PostgresServer:
    """initdb into folder (owned by the postgres user) and start the server on a free port."""
    bindir = pg_bindir()
    try:
        owner = pwd.getpwnam(PG_USER)
    except KeyError:
        raise LabError(f"no '{PG_USER}' user: {PG_INSTALL_HINT}") from None
    for sub in (folder, folder / "run"):
        sub.mkdir(parents=True, exist_ok=True)
        os.chown(sub, owner.pw_uid, owner.pw_gid)
    folder.chmod(0o755)
    run(["runuser", "-u", PG_USER, "--", str(bindir / "initdb"), "-D", str(folder / "data"),
         "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
        timeout=120, check=True)
    last: Exception | None = None
    for _ in range(5):  # another session may take the free port between looking and binding
        server = PostgresServer(folder=folder, port=free_port())
        try:
            server.start()
            return server
        except LabError as exc:
            last = exc
            server.stop()
    raise LabError(f"PostgreSQL did not start: {last}")
