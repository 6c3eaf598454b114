"""supervisord's own XML-RPC API over its unix socket: what `supervisorctl status|start|stop`
does, without starting a Python interpreter (supervisorctl) for each call; the lab polls a
program's state many times per fault."""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from pathlib import Path
from typing import Any

# How the lab's faulty backends are started: a start that exits within 2 s failed (the crash
# mode exits ~0.1 s after its spawn on a machine with a load of 10; startsecs=1 was once too
# short on a heavily loaded machine: the crash mode ran past it, counted as started, and was
# restarted without end); every start that succeeds waits startsecs before it is RUNNING, so
# it is kept short.
START_POLICY = "startsecs=2\nstartretries=2"

# supervisor.xmlrpc.Faults: answers that supervisorctl prints and goes on from
SPAWN_ERROR, ABNORMAL_TERMINATION, ALREADY_STARTED, NOT_RUNNING = 50, 40, 60, 70


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self.socket_path, self.timeout = path, timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self.socket_path, self.timeout)


class Supervisor:
    """One supervisord, reached at its unix socket (`[unix_http_server] file=`)."""

    def __init__(self, socket_path: Path, timeout: float = 60.0) -> None:
        self.socket_path, self.timeout = str(socket_path), timeout

    def _call(self, method: str, *args: Any) -> Any:
        transport = _UnixTransport(self.socket_path, self.timeout)
        with xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport) as proxy:
            return getattr(proxy.supervisor, method)(*args)

    def state(self, program: str) -> str:
        """RUNNING, STOPPED, STARTING, BACKOFF, FATAL, EXITED, ... (UNKNOWN: no answer)."""
        try:
            return str(self._call("getProcessInfo", program)["statename"])
        except (OSError, xmlrpc.client.Error):
            return "UNKNOWN"

    def start(self, program: str) -> None:
        """`supervisorctl start`: returns once the program is RUNNING (startsecs passed) or its
        first start failed (it exited before startsecs: supervisord goes on retrying)."""
        self._ignoring((ALREADY_STARTED, SPAWN_ERROR, ABNORMAL_TERMINATION), "startProcess",
                       program, True)

    def stop(self, program: str) -> None:
        """`supervisorctl stop`: returns once the program is stopped."""
        self._ignoring((NOT_RUNNING,), "stopProcess", program, True)

    def _ignoring(self, codes: tuple[int, ...], method: str, *args: Any) -> None:
        try:
            self._call(method, *args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode not in codes:
                raise
