"""nginx in front of a docservice stand-in run by supervisord, with real "502" faults.

Layout of the lab folder (world-readable, so the lab user reads logs over ssh):

    nginx/nginx.conf  nginx/error.log  nginx/access.log  nginx/nginx.pid  nginx/temp/...
    supervisor/supervisord.conf  supervisor/supervisor.sock (0777)  supervisor/supervisord.log
    docservice/out.log  docservice/err.log  docservice/mode

nginx runs as root (workers as www-data) with `daemon off`, so its master is our child. The
nginx folder, its logs and its pid file belong to the lab user, so `nginx -t -c <conf>` works for
that user too: as a non-root user nginx -t opens the pid file read-write and the logs for
appending. With a root-owned pid file it fails (exit 1) with
`[emerg] open() "<lab>/nginx/nginx.pid" failed (13: Permission denied)`, and plain `nginx -t`
(/etc/nginx/nginx.conf) as the lab user fails the same way on "/run/nginx.pid". Run by the lab
user it also prints, on stderr, `[warn] ... the "user" directive makes sense only if the master
process runs with super-user privileges, ignored in <conf>:2` (harmless; not in error.log).
"""

from __future__ import annotations

import os
import pwd
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .process import (
    LabError,
    LabProcess,
    free_port,
    http_get,
    make_world_traversable,
    port_open,
    require_binary,
    run,
    spawn,
    tail,
    wait_until,
)
from .sshd import LAB_USER, ensure_lab_user

BACKEND_SCRIPT = Path(__file__).with_name("backend.py")
PROGRAM = "ds:docservice"
SYSTEM_PYTHON = "/usr/bin/python3"
PROXY_TIMEOUT_S = 2
SLOW_SECONDS = 6

_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _worker_user() -> str:
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return f"{user} {group}"
    return "root"


def render_nginx_conf(root: Path, nginx_port: int, upstream_port: int) -> str:
    nginx = root / "nginx"
    temp = "\n".join(
        f"    {kind}_temp_path {nginx / 'temp' / kind};" for kind in _TEMP_PATHS
    )
    return f"""\
# opsbot test lab: nginx in front of docservice (OnlyOffice Document Server stand-in)
user {_worker_user()};
worker_processes 1;
daemon off;
pid {nginx / 'nginx.pid'};
error_log {nginx / 'error.log'} error;

events {{
    worker_connections 256;
}}

http {{
    access_log {nginx / 'access.log'};
{temp}

    server {{
        listen 127.0.0.1:{nginx_port};
        server_name _;

        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_connect_timeout {PROXY_TIMEOUT_S}s;
            proxy_read_timeout {PROXY_TIMEOUT_S}s;
        }}
    }}
}}
"""


def render_supervisor_conf(root: Path, backend_port: int) -> str:
    sup = root / "supervisor"
    ds = root / "docservice"
    return f"""\
; opsbot test lab: supervisord running docservice as ds:docservice (like OnlyOffice)
[unix_http_server]
file={sup / 'supervisor.sock'}
chmod=0777

[supervisord]
nodaemon=true
user=root
logfile={sup / 'supervisord.log'}
pidfile={sup / 'supervisord.pid'}
childlogdir={sup}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sup / 'supervisor.sock'}

[program:docservice]
command={SYSTEM_PYTHON} {BACKEND_SCRIPT} --port {backend_port} --mode-file {ds / 'mode'}
    --slow-seconds {SLOW_SECONDS}
directory={ds}
autostart=true
autorestart=true
startsecs=1
startretries=3
stopsignal=TERM
stopwaitsecs=5
stdout_logfile={ds / 'out.log'}
stderr_logfile={ds / 'err.log'}
stdout_logfile_maxbytes=10MB
stderr_logfile_maxbytes=10MB
stdout_logfile_backups=0
stderr_logfile_backups=0
environment=PYTHONUNBUFFERED="1"

[group:ds]
programs=docservice
"""


@dataclass
class WebLab:
    root: Path
    nginx_port: int
    backend_port: int
    nginx_conf: Path
    nginx_error_log: Path
    nginx_access_log: Path
    supervisor_conf: Path
    supervisor_socket: Path
    program: str
    app_log: Path
    app_err_log: Path
    mode_file: Path
    health_url: str
    proxy_url: str
    upstream_port: int  # the port nginx's proxy_pass points at right now
    _nginx: LabProcess | None = field(default=None, repr=False)
    _supervisord: LabProcess | None = field(default=None, repr=False)

    # --- observation ------------------------------------------------------------------------

    def proxy_status(self, timeout: float = 10.0) -> int:
        """HTTP status nginx answers for proxy_url (0: no HTTP answer at all)."""
        return http_get(self.proxy_url, timeout)[0]

    def health_status(self, timeout: float = 3.0) -> int:
        """HTTP status of the backend's own health URL (0: nothing answered)."""
        return http_get(self.health_url, timeout)[0]

    def supervisorctl(self, *args: str) -> str:
        """Output (stdout + stderr) of `supervisorctl -c <conf> ARGS`; never raises on exit code."""
        result = run(
            [require_binary("supervisorctl"), "-c", str(self.supervisor_conf), *args], timeout=60
        )
        return (result.stdout + result.stderr).strip()

    def program_status(self) -> str:
        """The `supervisorctl status ds:docservice` line."""
        return self.supervisorctl("status", self.program)

    def program_state(self) -> str:
        """RUNNING, STOPPED, STARTING, BACKOFF, FATAL, EXITED, ... (second column of status)."""
        fields = self.program_status().split()
        return fields[1] if len(fields) > 1 and fields[0] == self.program else "UNKNOWN"

    def error_log_lines(self) -> list[str]:
        try:
            return self.nginx_error_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def last_error_line(self, contains: str = "") -> str | None:
        """The newest nginx error-log line containing `contains` (None if there is none)."""
        for line in reversed(self.error_log_lines()):
            if contains in line:
                return line
        return None

    def nginx_test(self) -> str:
        """Output of `nginx -t -c <conf>` (as root)."""
        result = run([require_binary("nginx"), "-t", "-c", str(self.nginx_conf)])
        return (result.stdout + result.stderr).strip()

    # --- faults ------------------------------------------------------------------------------

    def heal(self) -> None:
        """Normal mode, proxy_pass to the backend, program RUNNING, nginx answers 200."""
        self._point_proxy_at(self.backend_port)
        if self._mode() != "normal" or self.program_state() != "RUNNING":
            self._restart_program("normal")
        self._wait_backend_up()
        self._wait_proxy(lambda status: status == 200, "200 through nginx")

    def stop_backend(self) -> None:
        """`supervisorctl stop`: nginx 502, connect() failed (111: Connection refused)."""
        self._point_proxy_at(self.backend_port)
        self._set_mode("normal")
        self.supervisorctl("stop", self.program)
        self._wait_state({"STOPPED"})
        self._wait_port_closed()
        self._wait_proxy(lambda status: status == 502, "502 through nginx")

    def crashloop(self, until: str = "FATAL") -> None:
        """Crash mode: BACKOFF then FATAL "Exited too quickly"; nginx 502 connection refused.

        `until` is the state to wait for: "FATAL" (stable, ~8 s) or "BACKOFF" (first failure).
        """
        self._point_proxy_at(self.backend_port)
        self._set_mode("crash")
        self.supervisorctl("stop", self.program)
        self._wait_port_closed()
        # `start` returns once the first attempt failed ("ERROR (spawn error)"); supervisord
        # keeps retrying in the background until FATAL.
        self.supervisorctl("start", self.program)
        self._wait_state({until} if until == "FATAL" else {"BACKOFF", "FATAL"}, timeout=30)
        self._wait_proxy(lambda status: status == 502, "502 through nginx")

    def slow_backend(self) -> None:
        """Backend sleeps past proxy_read_timeout: nginx 504, upstream timed out (110)."""
        self._point_proxy_at(self.backend_port)
        if self._mode() != "slow" or self.program_state() != "RUNNING":
            self._restart_program("slow")
        wait_until(lambda: port_open("127.0.0.1", self.backend_port), 15, "backend port open")
        self._wait_proxy(lambda status: status == 504, "504 through nginx", timeout=30)

    def wrong_port(self) -> None:
        """proxy_pass to a port where nothing listens (+ reload); program still RUNNING; 502."""
        if self._mode() != "normal" or self.program_state() != "RUNNING":
            self._restart_program("normal")
        self._wait_backend_up()
        port = free_port()
        while port == self.backend_port:
            port = free_port()
        self._point_proxy_at(port)
        self._wait_proxy(lambda status: status == 502, "502 through nginx")

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop nginx and supervisord (which stops docservice); leaves no process behind."""
        if self._nginx is not None:
            self._nginx.stop()
        if self._supervisord is not None:
            self._supervisord.stop(timeout=15)
        wait_until(
            lambda: not port_open("127.0.0.1", self.backend_port), 10, "docservice to exit"
        )

    # --- internals ----------------------------------------------------------------------------

    def _mode(self) -> str:
        try:
            return self.mode_file.read_text().strip() or "normal"
        except FileNotFoundError:
            return "normal"

    def _set_mode(self, mode: str) -> None:
        self.mode_file.write_text(mode + "\n")

    def _restart_program(self, mode: str) -> None:
        self._set_mode(mode)
        self.supervisorctl("stop", self.program)
        self._wait_port_closed()
        self.supervisorctl("start", self.program)
        self._wait_state({"RUNNING"}, timeout=20)

    def _wait_state(self, states: set[str], timeout: float = 20) -> None:
        wait_until(
            lambda: self.program_state() in states,
            timeout,
            f"{self.program} to be {'/'.join(sorted(states))}",
            interval=0.2,
            on_timeout=lambda: f"; status: {self.program_status()}\n{tail(self.app_err_log)}",
        )

    def _wait_port_closed(self) -> None:
        wait_until(
            lambda: not port_open("127.0.0.1", self.backend_port),
            15,
            f"port {self.backend_port} to close",
        )

    def _wait_backend_up(self) -> None:
        wait_until(
            lambda: self.health_status() == 200,
            20,
            f"{self.health_url} to answer 200",
            on_timeout=lambda: f"; status: {self.program_status()}\n{tail(self.app_err_log)}",
        )

    def _wait_proxy(self, ok, what: str, timeout: float = 20) -> None:
        seen: list[int] = []

        def check() -> bool:
            status = self.proxy_status()
            seen.append(status)
            return ok(status)

        wait_until(
            check, timeout, what, interval=0.1,
            on_timeout=lambda: f"; statuses seen: {seen[-5:]}\n{tail(self.nginx_error_log, 5)}",
        )

    def _point_proxy_at(self, port: int) -> None:
        if port == self.upstream_port:
            return
        text = self.nginx_conf.read_text()
        text, count = re.subn(
            r"proxy_pass http://127\.0\.0\.1:\d+;", f"proxy_pass http://127.0.0.1:{port};", text
        )
        if count != 1:
            raise LabError(f"no proxy_pass line to rewrite in {self.nginx_conf}")
        self.nginx_conf.write_text(text)
        run([require_binary("nginx"), "-c", str(self.nginx_conf), "-s", "reload"], check=True)
        self.upstream_port = port
        # the reload is asynchronous: wait until a new worker serves the new upstream
        time.sleep(0.2)


def start_web(workdir: Path) -> WebLab:
    """Write the configs, start supervisord (docservice) and nginx; return once all is healthy."""
    nginx_bin = require_binary("nginx", "/usr/sbin/nginx")
    supervisord_bin = require_binary("supervisord")
    require_binary("supervisorctl")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise LabError(f"{SYSTEM_PYTHON} not found: apt-get install python3")
    lab_user = pwd.getpwnam(ensure_lab_user(LAB_USER))

    root = workdir
    for folder in (root, root / "nginx", root / "supervisor", root / "docservice"):
        make_world_traversable(folder)
    for kind in _TEMP_PATHS:
        (root / "nginx" / "temp" / kind).mkdir(parents=True, exist_ok=True)

    nginx_port = free_port()
    backend_port = free_port()
    while backend_port == nginx_port:
        backend_port = free_port()
    nginx_conf = root / "nginx" / "nginx.conf"
    nginx_conf.write_text(render_nginx_conf(root, nginx_port, backend_port))
    supervisor_conf = root / "supervisor" / "supervisord.conf"
    supervisor_conf.write_text(render_supervisor_conf(root, backend_port))
    mode_file = root / "docservice" / "mode"
    mode_file.write_text("normal\n")

    # let the lab user run `nginx -t -c nginx.conf` (it opens these files for writing)
    for path in ("error.log", "access.log", "nginx.pid"):
        (root / "nginx" / path).touch()
    for path in [root / "nginx", *(root / "nginx").iterdir()]:
        if path.name != "temp":
            os.chown(path, lab_user.pw_uid, lab_user.pw_gid)
    for path in (root / "docservice").iterdir():
        path.chmod(0o644)

    lab = WebLab(
        root=root,
        nginx_port=nginx_port,
        backend_port=backend_port,
        nginx_conf=nginx_conf,
        nginx_error_log=root / "nginx" / "error.log",
        nginx_access_log=root / "nginx" / "access.log",
        supervisor_conf=supervisor_conf,
        supervisor_socket=root / "supervisor" / "supervisor.sock",
        program=PROGRAM,
        app_log=root / "docservice" / "out.log",
        app_err_log=root / "docservice" / "err.log",
        mode_file=mode_file,
        health_url=f"http://127.0.0.1:{backend_port}/healthcheck",
        proxy_url=f"http://127.0.0.1:{nginx_port}/healthcheck",
        upstream_port=backend_port,
    )
    try:
        lab._supervisord = spawn(
            "supervisord",
            [supervisord_bin, "-n", "-c", str(supervisor_conf)],
            root / "supervisor" / "supervisord.stdout",
        )
        test = run([nginx_bin, "-t", "-c", str(nginx_conf)])
        if test.returncode != 0:
            raise LabError(f"nginx -t -c {nginx_conf} failed:\n{test.stderr}")
        lab._nginx = spawn(
            "nginx", [nginx_bin, "-c", str(nginx_conf)], root / "nginx" / "nginx.stdout"
        )

        def backend_up() -> bool:
            lab._supervisord.check_alive()
            return lab.health_status() == 200

        wait_until(
            backend_up, 20, f"docservice on {lab.health_url}",
            on_timeout=lambda: f"\n{tail(lab.app_err_log)}\n{lab._supervisord.log_tail()}",
        )

        def proxy_up() -> bool:
            lab._nginx.check_alive()
            return lab.proxy_status() == 200

        wait_until(
            proxy_up, 20, f"nginx on {lab.proxy_url}",
            on_timeout=lambda: f"\n{lab._nginx.log_tail()}\n{tail(lab.nginx_error_log)}",
        )
        lab._wait_state({"RUNNING"})
        # the socket must be usable by the lab user (supervisorctl over ssh)
        wait_until(lab.supervisor_socket.exists, 10, "supervisor socket")
    except BaseException:
        lab.stop()
        raise
    return lab
