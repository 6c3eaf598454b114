"""The Docker part of the test lab: a running engine, a busybox image, and real container faults.

No registry is reachable, so the image is built with `docker import` from a rootfs holding the
static /bin/busybox and its applets. The "app" container stands in for onlyoffice/documentserver:
it reads its mode from a bind-mounted file on every start, so a fault is genuine (the kernel's OOM
killer, a real restart loop, a failing health check) and a restart after the mode file is set
back to `healthy` really heals it. It uses the host's network (no bridge traffic) and serves
GET /healthcheck -> `true` with busybox httpd on 127.0.0.1:PORT; it prints `password=hunter2`
when it starts (what the bot must redact).

dockerd is started detached when `docker info` fails (log: /tmp/dockerd.log) and left running:
other sessions share it. Every container and network made here carries the label
`opsbot-lab=<pid>`; `DockerLab.cleanup()` removes them, and `reap_stale_containers()` removes those
of a session that died.
"""

from __future__ import annotations

import grp
import io
import os
import secrets
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .process import (
    LabError,
    LabProcess,
    clean_env,
    free_port,
    make_world_traversable,
    port_open,
    require_binary,
    run,
    spawn,
    tail,
    wait_until,
)
from .web import render_nginx_conf

IMAGE = "opsbot-test/busybox:latest"
CONTAINER = "onlyoffice-documentserver"
LABEL = "opsbot-lab"
DOCKERD_LOG = Path("/tmp/dockerd.log")
APPLETS = ("sh", "wget", "httpd", "sleep", "cat", "echo", "head", "tail", "dd", "ls", "ps", "env",
           "true", "false", "mkdir", "rm", "grep", "kill", "id", "printf", "test", "[", "date",
           "free", "uname", "hostname", "nc", "wc", "timeout")
SECRET_LINE = "db password=hunter2"

# The stand-in's entry point. `oom` pipes 64 MiB into `tail`, which keeps it all in memory.
APP_SCRIPT = r"""
mode=$(cat /lab/mode 2>/dev/null || echo healthy)
echo "docservice starting (mode $mode), db password=hunter2"
case "$mode" in
  oom)
    echo "docservice: loading the document cache"
    head -c 64m /dev/zero | tail -n 1 >/dev/null
    ;;
  crash)
    echo "Error: docservice failed to start: cannot read /etc/onlyoffice/local.json" >&2
    exit 1
    ;;
  *)
    mkdir -p /tmp/www && echo true > /tmp/www/healthcheck
    httpd -f -p "127.0.0.1:$PORT" -h /tmp/www &
    trap 'kill $!; exit 0' TERM
    echo "docservice listening on 127.0.0.1:$PORT"
    wait
    ;;
esac
"""


# --- the engine and the image -------------------------------------------------------------

def engine_version() -> str | None:
    """The engine's version, or None when `docker info` fails."""
    try:
        result = run([require_binary("docker"), "info", "--format", "{{.ServerVersion}}"],
                     timeout=20)
    except subprocess.TimeoutExpired:
        return None
    version = result.stdout.strip()
    return version if result.returncode == 0 and version and "Error" not in version else None


def ensure_dockerd(timeout: float = 60) -> str:
    """A running engine on /var/run/docker.sock (started, detached, if needed); its version."""
    version = engine_version()
    if version:
        return version
    dockerd = require_binary("dockerd")
    with open(DOCKERD_LOG, "ab") as log:  # not a lab process: it outlives this session
        subprocess.Popen([dockerd], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    found: list[str] = []

    def ready() -> bool:
        found[:] = [engine_version() or ""]
        return bool(found[0])

    wait_until(ready, timeout, "dockerd to answer `docker info`", interval=0.5,
               on_timeout=lambda: f"; {DOCKERD_LOG}:\n{tail(DOCKERD_LOG)}")
    return found[0]


def _busybox_rootfs() -> bytes:
    """A tar of the rootfs: /bin/busybox (static), applet symlinks, /etc/passwd, /tmp."""
    busybox = Path(require_binary("busybox", "/bin/busybox"))
    if b"ld-linux" in busybox.read_bytes()[:8192]:
        raise LabError(f"{busybox} is dynamically linked: apt-get install busybox-static")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name: str, data: bytes = b"", mode: int = 0o644, kind: bytes = tarfile.REGTYPE,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname, info.size = mode, kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("proc", 0o555),
                             ("sys", 0o555), ("dev", 0o755), ("lab", 0o755)):
            add(folder, mode=mode, kind=tarfile.DIRTYPE)
        add("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in APPLETS:
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        add("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        add("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buffer.getvalue()


def ensure_busybox_image(tag: str = IMAGE) -> str:
    """Build `tag` from the static busybox with `docker import` unless it exists; its tag."""
    docker_bin = require_binary("docker")
    if run([docker_bin, "image", "inspect", tag], timeout=30).returncode == 0:
        return tag
    result = subprocess.run(
        [docker_bin, "import", "--change", 'CMD ["sh"]', "--change", "ENV PATH=/bin",
         "-", tag], input=_busybox_rootfs(), capture_output=True, timeout=120, env=clean_env())
    if result.returncode != 0:
        raise LabError(f"docker import {tag} failed: {result.stderr.decode(errors='replace')}")
    return tag


def reap_stale_containers() -> list[str]:
    """Remove the lab containers and networks of test sessions that are gone (their pid)."""
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=60)
    reaped: list[str] = []
    try:
        for kind in ("containers", "networks"):
            for found in getattr(client.api, kind)(filters={"label": LABEL}, **(
                    {"all": True} if kind == "containers" else {})):
                owner = (found.get("Labels") or {}).get(LABEL, "")
                if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    name = (found.get("Names") or ["/" + found.get("Name", "")])[0].lstrip("/")
                    if kind == "containers":
                        client.api.remove_container(found["Id"], force=True)
                    else:
                        client.api.remove_network(found["Id"])
                    reaped.append(name)
    finally:
        client.close()
    return reaped


# --- containers ---------------------------------------------------------------------------

@dataclass
class AppContainer:
    """The onlyoffice/documentserver stand-in."""

    name: str
    port: int
    mode_file: Path
    lab: DockerLab

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthcheck"

    def set_mode(self, mode: str) -> None:
        """healthy | oom | crash: read by the container on its next start."""
        self.mode_file.write_text(mode + "\n")

    def inspect(self) -> dict[str, Any]:
        return self.lab.client.api.inspect_container(self.name)

    def state(self) -> dict[str, Any]:
        return self.inspect()["State"]

    def ps_status(self) -> str:
        """The STATUS column of `docker ps -a` for this container."""
        found = self.lab.client.api.containers(all=True, filters={"name": f"^/{self.name}$"})
        return found[0]["Status"] if found else "(gone)"

    def wait(self, predicate: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = 30) -> dict[str, Any]:
        """Wait until predicate(inspect) holds; the inspect that satisfied it."""
        seen: list[dict[str, Any]] = [{}]

        def check() -> bool:
            seen[0] = self.inspect()
            return predicate(seen[0])

        wait_until(check, timeout, f"{self.name} {what}", interval=0.2,
                   on_timeout=lambda: f"; state: {seen[0].get('State')}")
        return seen[0]

    def stop(self) -> None:
        self.lab.client.api.stop(self.name, timeout=5)


class DockerLab:
    """Makes real container faults; `cleanup()` removes what it made."""

    def __init__(self, workdir: Path, image: str = IMAGE) -> None:
        make_world_traversable(workdir)
        self.workdir, self.image = workdir, image
        self.client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=60)
        self.label = {LABEL: str(os.getpid())}
        self.containers: list[str] = []
        self.networks: list[str] = []

    def unique(self, what: str) -> str:
        return f"{CONTAINER}-{what}-{secrets.token_hex(3)}"

    def app(self, mode: str = "healthy", *, name: str | None = None, memory: str = "16m",
            restart: str | None = None, health_cmd: str | None = None,
            network: str | None = None) -> AppContainer:
        """Start the stand-in in `mode` (not waiting for anything)."""
        name = name or self.unique(mode)
        folder = self.workdir / name
        make_world_traversable(folder)
        container = AppContainer(name, free_port(), folder / "mode", self)
        container.set_mode(mode)
        health = None
        if health_cmd:
            health = {"test": ["CMD-SHELL", health_cmd], "interval": 1_000_000_000,
                      "timeout": 2_000_000_000, "retries": 1, "start_period": 0}
        self.containers.append(name)
        self.client.containers.run(
            self.image, ["sh", "-c", APP_SCRIPT], name=name, detach=True, labels=self.label,
            environment={"PORT": str(container.port)}, network_mode=network or "host",
            mem_limit=memory, memswap_limit=memory,
            volumes={str(folder): {"bind": "/lab", "mode": "ro"}},
            restart_policy={"Name": restart or "no"}, healthcheck=health)
        return container

    def run_sh(self, script: str, name: str | None = None) -> str:
        """Any busybox shell script in a labelled container (host network); its name."""
        name = name or self.unique("sh")
        self.containers.append(name)
        self.client.containers.run(self.image, ["sh", "-c", script], name=name, detach=True,
                                   labels=self.label, network_mode="host")
        return name

    # the faults, each waited for until Docker reports it
    def healthy(self, name: str | None = None) -> AppContainer:
        """Up, serving /healthcheck -> true, its health check passing."""
        app = self.app("healthy", name=name or self.unique("healthy"), health_cmd=(
            "wget -q -O - http://127.0.0.1:$PORT/healthcheck"))
        app.wait(lambda i: (i["State"].get("Health") or {}).get("Status") == "healthy",
                 "to be healthy")
        return app

    def oom_killed(self, name: str | None = None) -> AppContainer:
        """Killed by the kernel's OOM killer (16 MiB limit): Exited (137), OOMKilled true."""
        app = self.app("oom", name=name or self.unique("oom"))
        app.wait(lambda i: i["State"]["Status"] == "exited", "to be OOM-killed")
        state = app.state()
        if not (state["OOMKilled"] and state["ExitCode"] == 137):
            raise LabError(f"{app.name} exited without the OOM killer: {state}")
        return app

    def crash_loop(self, name: str | None = None, restarts: int = 5) -> AppContainer:
        """Exits 1 at once, `--restart always`: Restarting (1) ..., RestartCount climbing.

        The Engine waits 0.1 s before the first restart and doubles that each time: after 5
        restarts (~3 s) it is Restarting for 3.2 s at a stretch, so `docker ps` reliably shows it.
        """
        app = self.app("crash", name=name or self.unique("crash"), restart="always")
        app.wait(lambda i: i["RestartCount"] >= restarts and i["State"]["Restarting"],
                 f"to restart {restarts} times", timeout=60)
        return app

    def unhealthy(self, name: str | None = None) -> AppContainer:
        """Running, but its health check (`exit 1`) fails: Up ... (unhealthy)."""
        app = self.app("healthy", name=name or self.unique("unhealthy"), health_cmd="exit 1")
        app.wait(lambda i: (i["State"].get("Health") or {}).get("Status") == "unhealthy",
                 "to be unhealthy")
        return app

    def stopped(self, name: str | None = None) -> AppContainer:
        """Stopped with `docker stop`: Exited (0)."""
        app = self.app("healthy", name=name or self.unique("stopped"))
        app.wait(lambda i: i["State"]["Running"], "to run")
        time.sleep(0.3)  # let sh install its TERM trap
        app.stop()
        app.wait(lambda i: i["State"]["Status"] == "exited", "to stop")
        return app

    def network(self, name: str | None = None) -> str:
        """A user-defined bridge network (never contacted: only its membership is looked at)."""
        name = name or f"opsbot-test-net-{secrets.token_hex(3)}"
        self.client.networks.create(name, driver="bridge", labels=self.label)
        self.networks.append(name)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.containers):
            try:
                self.client.api.remove_container(name, force=True)
            except docker.errors.NotFound:
                pass
        for name in self.networks:
            try:
                self.client.api.remove_network(name)
            except docker.errors.NotFound:
                pass
        self.containers.clear()
        self.networks.clear()
        self.client.close()


# --- nginx on the host in front of the container, and SSH access to the engine ------------------

@dataclass
class FrontNginx:
    """nginx on the host proxying to the stand-in's port (the lab web's nginx config)."""

    proxy_url: str
    error_log: Path
    conf: Path
    process: LabProcess

    def stop(self) -> None:
        self.process.stop()


def start_front_nginx(workdir: Path, upstream_port: int) -> FrontNginx:
    nginx = require_binary("nginx", "/usr/sbin/nginx")
    for folder in (workdir, workdir / "nginx"):
        make_world_traversable(folder)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "nginx" / "temp" / kind).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx" / "nginx.conf"
    conf.write_text(render_nginx_conf(workdir, port, upstream_port))
    process = spawn(f"nginx :{port} -> :{upstream_port}", [nginx, "-c", str(conf)],
                    workdir / "nginx" / "nginx.stdout")

    def ready() -> bool:
        process.check_alive()
        return port_open("127.0.0.1", port)

    wait_until(ready, 15, f"nginx on 127.0.0.1:{port}")
    return FrontNginx(f"http://127.0.0.1:{port}/healthcheck", workdir / "nginx" / "error.log",
                      conf, process)


def grant_docker_socket(user: str) -> None:
    """Put `user` in the group owning /var/run/docker.sock (usermod -aG docker; idempotent).
    sshd reads the groups at login, so do this before the user's first SSH login."""
    try:
        group = grp.getgrnam("docker")
    except KeyError:
        raise LabError("no `docker` group: reinstall docker.io (it creates the group)") from None
    socket_stat = os.stat("/var/run/docker.sock")
    if socket_stat.st_gid != group.gr_gid or not socket_stat.st_mode & 0o020:
        raise LabError("/var/run/docker.sock is not group-writable by `docker`: start dockerd "
                       "with its default --group docker")
    if user not in group.gr_mem:
        run([require_binary("usermod"), "-aG", "docker", user], check=True)


def deny_docker_socket(user: str) -> None:
    """Make sure `user` is not in the docker group (the permission-denied case)."""
    try:
        members = grp.getgrnam("docker").gr_mem
    except KeyError:
        return
    if user in members:
        run([require_binary("gpasswd"), "-d", user, "docker"], check=True)
