"""The backend's dependencies in the lab: a real Redis (Debian's redis-server), and nothing else.

Redis runs as a lab process on a free 127.0.0.1 port with its own config, folder and log, and no
persistence (no RDB snapshots, no AOF), so stopping it loses nothing and starting it is instant:

    redis/redis.conf  redis/redis.log  redis/redis.pid  redis/redis.stdout
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from .process import (
    LabError,
    LabProcess,
    free_port,
    make_world_traversable,
    port_open,
    require_binary,
    spawn,
    tail,
    wait_until,
)

REDIS_INSTALL_HINT = "apt-get install redis-server"


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when host:port answers a RESP PING with +PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def render_redis_conf(folder: Path, port: int) -> str:
    return f"""\
# opsbot test lab: the docservice stand-in's Redis (no persistence)
bind 127.0.0.1
port {port}
protected-mode yes
daemonize no
supervised no
pidfile {folder / 'redis.pid'}
logfile {folder / 'redis.log'}
loglevel notice
dir {folder}
save ""
appendonly no
databases 1
"""


@dataclass
class RedisServer:
    folder: Path
    port: int
    conf: Path
    log_file: Path
    host: str = "127.0.0.1"
    _process: LabProcess | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port, as the backend and the runbook's dependencies step use it."""
        return f"{self.host}:{self.port}"

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def ping(self) -> bool:
        return redis_ping(self.host, self.port)

    def start(self) -> None:
        """Start redis-server (if it is not running) and wait until it answers PING."""
        if self.running() and self.ping():
            return
        if port_open(self.host, self.port):
            raise LabError(f"{self.address} is taken by another process; cannot start Redis")
        binary = require_binary("redis-server")
        self._process = spawn(
            "redis-server", [binary, str(self.conf)], self.folder / "redis.stdout",
            cwd=self.folder,
        )

        def ready() -> bool:
            assert self._process is not None
            self._process.check_alive()
            return self.ping()

        wait_until(ready, 15, f"redis-server on {self.address}",
                   on_timeout=lambda: f"\n{tail(self.log_file)}")

    def stop(self) -> None:
        """SIGTERM redis-server and wait until its port is closed."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        wait_until(lambda: not port_open(self.host, self.port), 10, f"{self.address} to close")


def start_redis(folder: Path) -> RedisServer:
    """Write redis.conf into folder and start redis-server on a free port."""
    try:
        require_binary("redis-server")
    except LabError:
        raise LabError(f"redis-server not found: {REDIS_INSTALL_HINT}") from None
    make_world_traversable(folder)
    port = free_port()
    conf = folder / "redis.conf"
    conf.write_text(render_redis_conf(folder, port))
    redis = RedisServer(folder=folder, port=port, conf=conf, log_file=folder / "redis.log")
    redis.start()
    return redis
