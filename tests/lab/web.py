"""nginx in front of a docservice stand-in run by supervisord, with real "502" faults.

Layout of the lab folder (world-readable, so the lab user reads logs over ssh):

    nginx/nginx.conf  nginx/error.log  nginx/access.log  nginx/nginx.pid  nginx/temp/...
    supervisor/supervisord.conf  supervisor/supervisor.sock (0777)  supervisor/supervisord.log
    docservice/out.log  docservice/err.log  docservice/mode  docservice/docservice.sock (0666)
    docservice/data/      a 1 MiB tmpfs: the backend writes its state file there at start-up
    redis/redis.conf  redis/redis.log    the backend's Redis (see deps.py)

The backend (backend.py) needs its Redis and a writable data dir at start-up, and listens on TCP
and on a unix socket; nginx proxies over TCP, except in the permission_denied fault. Faults:
stop_backend, crashloop, slow_backend, wrong_port, dependency_down (Redis stopped), disk_full
(the data tmpfs filled) and permission_denied (proxy_pass to the unix socket, made 0600); heal()
undoes any of them.

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

import contextlib
import os
import pwd
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .deps import RedisServer, start_redis
from .process import (
    LAB_PREFIX,
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
from .supervisor import START_POLICY, Supervisor

BACKEND_SCRIPT = Path(__file__).with_name("backend.py")
PROGRAM = "ds:docservice"
SYSTEM_PYTHON = "/usr/bin/python3"
PROXY_TIMEOUT_S = 2
SLOW_SECONDS = 6
DATA_DIR_SIZE = "1m"  # the backend's data tmpfs; disk_full() fills it
FILLER = "fill"  # the file disk_full() writes into the data dir until ENOSPC

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


def render_supervisor_conf(root: Path, backend_port: int, redis_address: str) -> str:
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
    --slow-seconds {SLOW_SECONDS} --redis {redis_address} --data-dir {ds / 'data'}
    --unix-socket {ds / 'docservice.sock'}
directory={ds}
autostart=true
autorestart=true
{START_POLICY}
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
    upstream_port: int  # the TCP port nginx's proxy_pass points at right now (0: unix socket)
    supervisor_log: Path  # supervisord's own log (spawned, exited, gave up)
    data_dir: Path  # a small tmpfs the backend writes to at start-up
    unix_socket: Path  # the backend listens here too
    redis: RedisServer  # the backend's dependency
    proxy_pass: str = ""  # nginx's proxy_pass target right now
    _nginx: LabProcess | None = field(default=None, repr=False)
    _supervisord: LabProcess | None = field(default=None, repr=False)

    def inventory_vars(self) -> dict[str, str | int]:
        """The lab's real paths as a host's inventory variables, its supervisord log, and its
        Redis as the one dependency (`redis:127.0.0.1:<port>`)."""
        return {
            "opsbot_supervisor_conf": str(self.supervisor_conf),
            "opsbot_nginx_error_log": str(self.nginx_error_log),
            "opsbot_nginx_conf": str(self.nginx_conf),
            "opsbot_health_url": self.health_url,
            "opsbot_proxy_url": self.proxy_url,
            "opsbot_upstream_port": self.backend_port,
            "opsbot_program": self.program,
            "opsbot_app_log": str(self.app_log),
            "opsbot_supervisor_log": str(self.supervisor_log),
            "opsbot_dependencies": f"redis:{self.redis.address}",
        }

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
        return self.supervisor.state(self.program)

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.supervisor_socket)

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

    def truncate_logs(self) -> None:
        """Empty nginx's error log, supervisord's log and the program's logs (what logrotate's
        copytruncate does; every writer appends), so what they show next is only what follows."""
        for path in (self.nginx_error_log, self.supervisor_log, self.app_log, self.app_err_log):
            with contextlib.suppress(FileNotFoundError):
                os.truncate(path, 0)

    def nginx_test(self) -> str:
        """Output of `nginx -t -c <conf>` (as root)."""
        result = run([require_binary("nginx"), "-t", "-c", str(self.nginx_conf)])
        return (result.stdout + result.stderr).strip()

    # --- faults ------------------------------------------------------------------------------

    def heal(self) -> None:
        """Redis up, data dir freed, normal mode, proxy_pass to the backend over TCP, unix
        socket 0666, program RUNNING, nginx answers 200."""
        self.redis.start()
        (self.data_dir / FILLER).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.unix_socket.chmod(0o666)
        self._point_proxy_at(self.backend_port)
        if self._mode() != "normal" or self.program_state() != "RUNNING":
            self._restart_program("normal")
        self._wait_backend_up()
        self._wait_proxy(lambda status: status == 200, "200 through nginx")

    def stop_backend(self) -> None:
        """`supervisorctl stop`: nginx 502, connect() failed (111: Connection refused)."""
        self._point_proxy_at(self.backend_port)
        self._set_mode("normal")
        self.supervisor.stop(self.program)
        self._wait_state({"STOPPED"})
        self._wait_port_closed()
        self._wait_proxy(lambda status: status == 502, "502 through nginx")

    def crashloop(self, until: str = "FATAL") -> None:
        """Crash mode: BACKOFF then FATAL "Exited too quickly"; nginx 502 connection refused.

        `until` is the state to wait for: "FATAL" (stable, ~4 s) or "BACKOFF" (first failure).
        """
        self._point_proxy_at(self.backend_port)
        self._set_mode("crash")
        self._start_failing_program(until)

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

    def dependency_down(self, until: str = "BACKOFF") -> None:
        """Redis stopped, then the program restarted: it exits at start-up with
        `Error: connect ECONNREFUSED 127.0.0.1:<redis port>`; BACKOFF, then FATAL; nginx 502.

        `until`: "BACKOFF" (the first failed start, ~1 s) or "FATAL" (~4 s).
        """
        self._point_proxy_at(self.backend_port)
        self._set_mode("normal")
        self.redis.stop()
        self._start_failing_program(until)

    def disk_full(self, until: str = "BACKOFF") -> None:
        """The data tmpfs filled to 100%, then the program restarted: it exits at start-up with
        `[Errno 28] No space left on device: '<data dir>/docservice.state.tmp'`; nginx 502.

        `until`: "BACKOFF" (the first failed start, ~1 s) or "FATAL" (~4 s).
        """
        self._point_proxy_at(self.backend_port)
        self._set_mode("normal")
        self.supervisor.stop(self.program)
        self._wait_port_closed()
        self._fill_data_dir()
        self._start_failing_program(until)

    def permission_denied(self) -> None:
        """proxy_pass to the backend's unix socket (+ reload), the socket made 0600 root: nginx's
        workers get `(13: Permission denied) while connecting to upstream`; program RUNNING; 502.
        """
        if self._mode() != "normal" or self.program_state() != "RUNNING":
            self._restart_program("normal")
        self._wait_backend_up()
        wait_until(self.unix_socket.exists, 10, f"{self.unix_socket} to exist")
        self.unix_socket.chmod(0o600)
        self._set_proxy_pass(f"http://unix:{self.unix_socket}:", 0)
        self._wait_proxy(lambda status: status == 502, "502 through nginx")

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop nginx, supervisord (which stops docservice) and Redis; unmount the data tmpfs.

        Leaves no process and no mount behind."""
        if self._nginx is not None:
            self._nginx.stop()
        if self._supervisord is not None:
            self._supervisord.stop(timeout=15)
        self.redis.stop()
        unmount(self.data_dir)
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

    def _start_failing_program(self, until: str) -> None:
        """(Re)start the program, which is bound to fail at start-up; wait for `until`."""
        self.supervisor.stop(self.program)
        self._wait_port_closed()
        # `start` returns once the first attempt failed ("ERROR (spawn error)"); supervisord
        # keeps retrying in the background until FATAL.
        self.supervisor.start(self.program)
        self._wait_state({until} if until == "FATAL" else {"BACKOFF", "FATAL"}, timeout=60)
        self._wait_proxy(lambda status: status == 502, "502 through nginx")

    def _fill_data_dir(self) -> None:
        """Write the filler into the data tmpfs until the kernel says ENOSPC (df: 100%)."""
        fd = os.open(self.data_dir / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (b"\0" * 65536, b"\0" * 4096):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, chunk)
        finally:
            os.close(fd)
        free = os.statvfs(self.data_dir).f_bavail
        if free:
            raise LabError(f"{self.data_dir} still has {free} free blocks after filling it")

    def _restart_program(self, mode: str) -> None:
        self._set_mode(mode)
        self.supervisor.stop(self.program)
        self._wait_port_closed()
        self.supervisor.start(self.program)
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
        self._set_proxy_pass(f"http://127.0.0.1:{port}", port)

    def _set_proxy_pass(self, target: str, port: int) -> None:
        """Rewrite the proxy_pass line to `target` and reload nginx (port: 0 for a unix socket)."""
        if target == self.proxy_pass:
            return
        text = self.nginx_conf.read_text()
        text, count = re.subn(r"proxy_pass \S+;", f"proxy_pass {target};", text)
        if count != 1:
            raise LabError(f"no proxy_pass line to rewrite in {self.nginx_conf}")
        self.nginx_conf.write_text(text)
        run([require_binary("nginx"), "-c", str(self.nginx_conf), "-s", "reload"], check=True)
        self.upstream_port = port
        self.proxy_pass = target
        # the reload is asynchronous: wait until a new worker serves the new upstream
        time.sleep(0.2)


def mount_tmpfs(path: Path, size: str) -> None:
    """Mount a fresh tmpfs of `size` at path (0755, nosuid, nodev, noexec)."""
    path.mkdir(parents=True, exist_ok=True)
    run([require_binary("mount"), "-t", "tmpfs", "-o",
         f"size={size},mode=0755,nosuid,nodev,noexec", "tmpfs", str(path)], check=True)


def unmount(path: Path) -> None:
    """Unmount path if something is mounted there (lazily, so a busy mount goes too)."""
    if os.path.ismount(path):
        run([require_binary("umount"), "-l", str(path)], check=True)


def unmount_stale_labs(base: str = "/tmp") -> list[Path]:
    """Unmount what a lab whose owning pytest is gone left mounted (before its folder goes)."""
    unmounted: list[Path] = []
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return unmounted
    prefix = f"{base.rstrip('/')}/{LAB_PREFIX}"
    for line in mounts:
        fields = line.split()
        if len(fields) < 2 or not fields[1].startswith(prefix):
            continue
        mount_point = Path(fields[1].replace("\\040", " "))
        root = Path(base) / mount_point.relative_to(base).parts[0]
        try:
            owner = int((root / "owner.pid").read_text().strip())
            os.kill(owner, 0)
            continue  # its pytest still runs
        except (OSError, ValueError):
            pass
        with contextlib.suppress(LabError):
            unmount(mount_point)
            unmounted.append(mount_point)
    return unmounted


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
    data_dir = root / "docservice" / "data"
    for kind in _TEMP_PATHS:
        (root / "nginx" / "temp" / kind).mkdir(parents=True, exist_ok=True)

    nginx_port = free_port()
    backend_port = free_port()
    while backend_port == nginx_port:
        backend_port = free_port()
    nginx_conf = root / "nginx" / "nginx.conf"
    nginx_conf.write_text(render_nginx_conf(root, nginx_port, backend_port))
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

    redis = start_redis(root / "redis")
    supervisor_conf = root / "supervisor" / "supervisord.conf"
    supervisor_conf.write_text(render_supervisor_conf(root, backend_port, redis.address))
    try:
        mount_tmpfs(data_dir, DATA_DIR_SIZE)
    except LabError as exc:
        redis.stop()
        raise LabError(f"cannot mount the backend's data tmpfs (needs root): {exc}") from None

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
        supervisor_log=root / "supervisor" / "supervisord.log",
        data_dir=data_dir,
        unix_socket=root / "docservice" / "docservice.sock",
        redis=redis,
        proxy_pass=f"http://127.0.0.1:{backend_port}",
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
