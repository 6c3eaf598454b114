"""`docker`: Docker Engine actions: ps, inspect, logs, exec, stats, networks, start/stop/restart.

Each host's engine is where its `opsbot_docker` variable says: `local`, a `unix://` or `tcp://`
URL, or `ssh` (the default): the host's /var/run/docker.sock through the host's pooled SSH
connection, forwarded to a unix socket in a private (0700) folder here (a TCP port would let any
local user drive the remote engine). The docker SDK blocks: its calls run in a small pool of their
own, bounded by the client's timeout and by the step's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from bot.executors.base import ExecContext, KindParams, StepKind
from bot.executors.capture import HEAD, TAIL, Capture
from bot.executors.sshlib import asyncssh
from bot.models import ExecOutput, Host
from bot.offload import import_off_loop, off_loop, started_pool
from bot.redact import redact

if TYPE_CHECKING:  # the docker SDK (and requests) load when a docker step first runs
    import docker

API_TIMEOUT = 60.0  # seconds one Engine API request may take (ends a thread the step gave up on)
SOCKET = "/var/run/docker.sock"
LOGS_CAP = 16 * 2**20  # bytes of `docker logs` read (of the `tail` lines asked for)
ONLY_FOR = {"all": {"ps"}, "filters": {"ps"}, "tail": {"logs"}, "since": {"logs"},
            "argv": {"exec"}, "network": {"network_inspect"}, "timeout_stop": {"stop", "restart"}}
DURATION = re.compile(r"^(?:\d+[smhd])+$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DockerParams(KindParams):
    action: Literal["ps", "inspect", "logs", "exec", "stats", "network_inspect",
                    "start", "stop", "restart"]
    container: str | None = Field(default=None, min_length=1)
    all: bool = True  # ps: stopped containers too
    filters: list[str] = []  # ps: like --filter, e.g. ["name={{ container }}", "status=exited"]
    tail: int | str = 200  # logs: lines, 1..10000, or a template such as "{{ log_lines }}"
    since: str | None = None  # logs: e.g. "15m", "2h"; applied to the `tail` lines read
    argv: list[str] = []  # exec: program, arguments; no shell; an element rendering "" is dropped
    network: str | None = None  # network_inspect: one network (default: all of them)
    timeout_stop: int | None = Field(default=None, ge=0, le=600)  # stop/restart: seconds

    @model_validator(mode="after")
    def _fits_action(self) -> DockerParams:
        if self.action not in ("ps", "network_inspect") and not self.container:
            raise ValueError(f"docker {self.action} needs `container`")
        if self.action == "exec" and not self.argv:
            raise ValueError("docker exec needs `argv`: a list, the program then its arguments")
        for name in sorted(self.model_fields_set & ONLY_FOR.keys()):
            if self.action not in ONLY_FOR[name]:
                raise ValueError(f"`{name}` is for docker {'/'.join(sorted(ONLY_FOR[name]))}, "
                                 f"not {self.action}")
        if any("=" not in f for f in self.filters):
            raise ValueError("each of `filters` reads KEY=VALUE, e.g. status=exited")
        _check_logs_window(self.tail, self.since)
        return self


def _check_logs_window(tail: int | str, since: str | None) -> None:
    """tail and since, once known (templates are checked again when rendered)."""
    if (isinstance(tail, int) or tail.isdigit()) and not 1 <= int(tail) <= 10000:
        raise ValueError(f"`tail` must be between 1 and 10000 lines, got {tail}")
    if since and "{" not in since and not DURATION.match(since):
        raise ValueError(f"`since` must be a duration such as 15m or 2h, got {since!r}")


class EngineError(Exception):
    """One line saying why an engine could not be used."""


def _why(exc: BaseException) -> str:
    text = str(exc)
    for needle, why in (("Connection refused", "connection refused"),
                        ("No such file or directory", "no such socket (is dockerd running?)"),
                        ("Permission denied", "permission denied (the user needs the docker "
                                              "group or access to the socket)"),
                        ("timed out", "timed out"), ("Connection aborted", "connection closed")):
        if needle.lower() in text.lower():
            return why
    return text.splitlines()[0][:200] if text else exc.__class__.__name__


def engine_address(host: Host) -> str:
    """Where the host's engine is, as messages name it."""
    spec = host.docker or ""
    if spec == "local":
        return os.environ.get("DOCKER_HOST") or f"unix://{SOCKET}"
    return f"{SOCKET} on {host.name} (through SSH)" if spec == "ssh" else spec


@dataclass
class _Engine:
    spec: str  # host.docker as configured
    conn: asyncssh.SSHClientConnection | None = None
    listener: asyncssh.SSHListener | None = None
    folder: str | None = None
    client: docker.DockerClient | None = None


class Engines:
    """One Docker client per host, made on first use; closed with the ExecContext."""

    def __init__(self, ctx: ExecContext) -> None:
        self.ctx = ctx
        self._pool: ThreadPoolExecutor | None = None  # its own: a hung engine ties up only these
        self._starting = asyncio.Lock()
        self._engines: dict[str, _Engine] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            async with self._starting:  # its threads started off the loop: the loop that
                if self._pool is None:  # started them waited for each one's turn on a core
                    self._pool = await off_loop(started_pool, 8, "opsbot-docker")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def get(self, host: Host) -> _Engine:
        spec = host.docker or "ssh"  # zero configuration: the host's own engine, through SSH
        async with self._locks.setdefault(host.name, asyncio.Lock()):
            try:
                conn = await self.ctx.ssh.connection(host) if spec == "ssh" else None
            except (OSError, asyncssh.Error) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
                raise EngineError(f"cannot reach {host.name} over SSH ({host.address}:"
                                  f"{host.port}) for its Docker Engine: {reason}") from None
            engine = self._engines.get(host.name)
            if engine and engine.spec == spec and engine.conn is conn:
                return engine
            if engine:  # the SSH connection was replaced, or the inventory changed
                await self._close(self._engines.pop(host.name))
            self._engines[host.name] = engine = await self._open(host, spec, conn)
            return engine

    async def _open(self, host: Host, spec: str, conn: asyncssh.SSHClientConnection | None
                    ) -> _Engine:
        if spec not in ("local", "ssh") and not spec.startswith(("unix://", "tcp://")):
            raise EngineError(f"{host.name}: opsbot_docker is {spec!r}; use local, ssh, "
                              "unix:///PATH or tcp://HOST:PORT")
        import docker.errors

        engine, where = _Engine(spec, conn), engine_address(host)
        try:
            if conn is not None:
                await self._check_socket(conn, host)
                engine.folder = tempfile.mkdtemp(prefix="opsbot-docker-")  # mode 0700
                engine.listener = await conn.forward_local_path(
                    f"{engine.folder}/docker.sock", SOCKET)
            url = f"unix://{engine.folder}/docker.sock" if conn is not None else where
            engine.client = await asyncio.wait_for(self.call(  # asks the engine's API version
                lambda: docker.DockerClient(base_url=url, timeout=API_TIMEOUT)),
                self.ctx.connect_timeout)
            return engine
        except BaseException as exc:
            await self._close(engine)
            if isinstance(exc, TimeoutError | docker.errors.DockerException | asyncssh.Error):
                raise EngineError(f"cannot reach the Docker Engine at {where}: {_why(exc)}") \
                    from None
            raise

    @staticmethod
    async def _check_socket(conn: asyncssh.SSHClientConnection, host: Host) -> None:
        """Open the socket once: a clear error here beats a forward that drops connections."""
        try:
            _, writer = await conn.open_unix_connection(SOCKET)
            writer.close()
            return
        except asyncssh.ChannelOpenError as exc:
            why = exc.reason  # sshd says only "open failed": ask the host
        with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
            probe = await conn.run(f"if [ ! -S {SOCKET} ]; then echo missing; "
                                   f"elif [ ! -w {SOCKET} ]; then echo denied; fi", timeout=5)
            why = {"missing": "no such socket (is dockerd running?)",
                   "denied": f"permission denied ({host.user or 'the SSH user'} needs the "
                             "docker group)"}.get(str(probe.stdout).strip(), why)
        raise EngineError(f"cannot reach the Docker Engine at {engine_address(host)}: {why}")

    async def _close(self, engine: _Engine) -> None:
        if engine.client is not None:
            await self.call(engine.client.close)
        if engine.listener is not None:
            engine.listener.close()
            await engine.listener.wait_closed()
        if engine.folder:
            await off_loop(shutil.rmtree, engine.folder, ignore_errors=True)

    async def close(self) -> None:
        while self._engines:
            await self._close(self._engines.popitem()[1])
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# -- the actions: blocking, run in the pool; `api` is a docker.APIClient ------------------------
def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n"
                   for r in rows)


def _ps(api: Any, a: Mapping[str, Any]) -> ExecOutput:
    """The columns of `docker ps -a` but COMMAND and CREATED; NAMES last, as there."""
    rows = [("CONTAINER ID", "IMAGE", "STATUS", "PORTS", "NAMES")]
    filters: dict[str, list[str]] = {}
    for key, _, value in (f.partition("=") for f in a["filters"]):
        filters.setdefault(key.strip(), []).append(value.strip())
    for c in api.containers(all=a["all"], filters=filters or None):
        ports = ", ".join(sorted({f"{p['IP']}:{p['PublicPort']}->{p['PrivatePort']}/{p['Type']}"
                                  if p.get("PublicPort") else f"{p['PrivatePort']}/{p['Type']}"
                                  for p in c.get("Ports") or []}))
        rows.append((c["Id"][:12], c["Image"], c["Status"], ports,
                     ",".join(n.lstrip("/") for n in c["Names"])))
    return ExecOutput(0, _table(rows))


def select_inspect(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What the diagnosis needs of `docker inspect`, in the Engine's own shape."""
    state, host_config = raw.get("State") or {}, raw.get("HostConfig") or {}
    settings = raw.get("NetworkSettings") or {}
    keep = ("Status", "Running", "Restarting", "OOMKilled", "Dead", "ExitCode", "Error",
            "StartedAt", "FinishedAt")
    selected = {k: state.get(k) for k in keep} | {"Error": redact(state.get("Error") or "")}
    if state.get("Health"):
        health = state["Health"]
        selected["Health"] = {
            "Status": health.get("Status"), "FailingStreak": health.get("FailingStreak"),
            "Log": [{"ExitCode": p.get("ExitCode"), "Output": redact(str(p.get("Output")))[-500:]}
                    for p in (health.get("Log") or [])[-3:]]}
    return {
        "Name": (raw.get("Name") or "").lstrip("/"),
        "State": selected,
        "RestartCount": raw.get("RestartCount"),
        "HostConfig": {k: host_config.get(k) for k in ("RestartPolicy", "Memory")},
        "NetworkSettings": {"Networks": {name: {"Aliases": (n or {}).get("Aliases")}
                                         for name, n in (settings.get("Networks") or {}).items()},
                            "Ports": settings.get("Ports")},
        "Config": {"Image": (raw.get("Config") or {}).get("Image")},
    }


def _inspect(api: Any, a: Mapping[str, Any]) -> ExecOutput:
    selected = select_inspect(api.inspect_container(a["container"]))
    return ExecOutput(0, json.dumps(selected, indent=2), data=selected)


def _logs(api: Any, a: Mapping[str, Any]) -> ExecOutput:
    try:
        _check_logs_window(str(a["tail"]), a.get("since"))
        tail = int(a["tail"])
    except ValueError as exc:
        raise EngineError(str(exc).replace("`", "")) from None
    capture = Capture(cap=LOGS_CAP)  # bytes, whatever the line count: lines can be huge
    stream = api.logs(a["container"], stdout=True, stderr=True, timestamps=True, tail=tail,
                      stream=True, follow=False)
    try:
        for chunk in stream:
            if not capture.feed(chunk):
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    lines = capture.text().splitlines(keepends=True)
    if a.get("since"):  # the Engine's own `since` reads the whole log file: filter what we read
        seconds = sum(int(n) * SECONDS[u] for n, u in re.findall(r"(\d+)([smhd])", a["since"]))
        cutoff, keep, kept = datetime.now(UTC) - timedelta(seconds=seconds), True, []
        for line in lines:
            stamp = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z ", line)
            if stamp:  # a line without a stamp goes with the line before it
                keep = datetime.fromisoformat(f"{stamp[1]}{(stamp[2] or '')[:7]}+00:00") >= cutoff
            if keep:
                kept.append(line)
        lines = kept
    if capture.total <= HEAD + TAIL and not capture.capped:  # nothing cut: the whole of it
        return ExecOutput(0, "".join(lines))
    return ExecOutput(0, "".join(lines), digest=capture.digest, total_bytes=capture.total,
                      capped=capture.capped)


def _exec(api: Any, a: Mapping[str, Any]) -> ExecOutput:
    """Not the SDK's exec_start: it reads the raw socket under the HTTP reader, losing output
    that came in one packet with the response headers (it does, through an SSH forward)."""
    import docker.errors

    argv = [arg for arg in a["argv"] if arg != ""]
    exec_id = api.exec_create(a["container"], argv, stdout=True, stderr=True)["Id"]
    with api.post(f"{api.base_url}/v{api.api_version}/exec/{exec_id}/start", stream=True,
                  json={"Detach": False, "Tty": False}, timeout=API_TIMEOUT) as res:
        if res.status_code >= 400:
            raise docker.errors.APIError(res.reason, res, explanation=res.text.strip())
        capture, pending = Capture(), b""  # 8-byte frame headers (stream, size), then data
        while block := res.raw.read(65536):
            pending += block
            while len(pending) >= 8:
                size = int.from_bytes(pending[4:8], "big")
                if len(pending) < 8 + size:
                    break
                more = capture.feed(pending[8:8 + size])
                pending = pending[8 + size:]
                if not more:
                    break
            if capture.capped:
                break
    for _ in range(100):  # the stream may end a moment before the Engine records the exit
        done = api.exec_inspect(exec_id)
        if not done.get("Running"):
            break
        time.sleep(0.05)
    if capture.capped:
        return ExecOutput(None, capture.text(), error=f"stopped: printed more than {capture.cap} "
                          "bytes (the output cap)", digest=capture.digest,
                          total_bytes=capture.total, capped=True)
    return ExecOutput(done.get("ExitCode"), capture.text(), digest=capture.digest,
                      total_bytes=capture.total)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}MiB" if n < 2**30 else f"{n / 2**30:.2f}GiB"


def _stats(api: Any, a: Mapping[str, Any]) -> ExecOutput:
    stats = api.stats(a["container"], stream=False)
    memory = stats.get("memory_stats") or {}
    if "usage" not in memory:
        return ExecOutput(1, f"{a['container']} is not running: no stats\n")
    detail = memory.get("stats") or {}  # like docker stats: the page cache does not count
    used = memory["usage"] - detail.get("total_inactive_file", detail.get("inactive_file", 0))
    limit = memory.get("limit") or 0
    return ExecOutput(0, _table([
        ("CONTAINER", "MEM USAGE / LIMIT", "MEM %", "PIDS"),
        (a["container"], f"{_mib(used)} / {_mib(limit)}",
         f"{used / limit * 100 if limit else 0:.2f}%",
         str((stats.get("pids_stats") or {}).get("current", "-")))]))


def _network_inspect(api: Any, a: Mapping[str, Any]) -> ExecOutput:
    names = [a["network"]] if a.get("network") else sorted(n["Name"] for n in api.networks())
    if a.get("container") and not a.get("network"):  # the networks of that container
        names = sorted(api.inspect_container(a["container"])["NetworkSettings"]["Networks"] or {})
    rows = [("NETWORK", "DRIVER", "CONTAINERS")]
    for name in names:
        net = api.inspect_network(name)
        members = sorted(c.get("Name", "?") for c in (net.get("Containers") or {}).values())
        rows.append((name, str(net.get("Driver")), ", ".join(members) or "-"))
    return ExecOutput(0, _table(rows))


def _lifecycle(api: Any, a: Mapping[str, Any]) -> ExecOutput:
    action, name, started = a["action"], a["container"], time.monotonic()
    if action == "start":
        api.start(name)
    else:
        getattr(api, action)(name, timeout=a.get("timeout_stop") or 10)
    state = select_inspect(api.inspect_container(name))["State"]
    health = f", health {state['Health']['Status']}" if state.get("Health") else ""
    done = {"start": "started", "stop": "stopped", "restart": "restarted"}[action]
    return ExecOutput(0, f"{done} {name} in {time.monotonic() - started:.1f}s\nstate: "
                         f"{state['Status']}, exit code {state['ExitCode']}{health}, started "
                         f"{state['StartedAt']}\n")


ACTIONS: dict[str, Callable[[Any, Mapping[str, Any]], ExecOutput]] = {
    "ps": _ps, "inspect": _inspect, "logs": _logs, "exec": _exec, "stats": _stats,
    "network_inspect": _network_inspect, "start": _lifecycle, "stop": _lifecycle,
    "restart": _lifecycle}


class DockerStep(StepKind):
    name = "docker"
    Params = DockerParams
    first_use_imports = ("docker.errors", "requests.exceptions")

    def __init__(self, ctx: ExecContext) -> None:
        super().__init__(ctx)
        self.engines = Engines(ctx)
        ctx.on_close(self.engines.close)

    @classmethod
    def display(cls, action: Mapping[str, Any]) -> str:
        verb, name = action["action"], shlex.quote(str(action.get("container") or ""))
        if verb == "ps":
            return shlex.join(["docker", "ps", *(["-a"] if action["all"] else []),
                               *(f"--filter={f}" for f in action["filters"])])
        if verb == "logs":
            since = f" --since {shlex.quote(action['since'])}" if action.get("since") else ""
            return f"docker logs --timestamps --tail {action['tail']}{since} {name}"
        if verb == "exec":
            return f"docker exec {name} {shlex.join(a for a in action['argv'] if a != '')}"
        if verb == "stats":
            return f"docker stats --no-stream {name}"
        if verb == "network_inspect":
            if action.get("network"):
                return f"docker network inspect {shlex.quote(action['network'])}"
            return "docker network ls" + (f" (networks of {name})" if action.get("container")
                                          else "")
        stop = f"-t {action['timeout_stop']} " if action.get("timeout_stop") is not None else ""
        return f"docker {verb} {stop}{name}"

    def _held(self, host: Host) -> contextlib.AbstractAsyncContextManager[None]:
        """Docker over SSH: the pooled connection is held for the whole call, so its idle
        timer cannot close it in the middle of a `docker restart`."""
        return self.ctx.ssh.hold(host) if host.docker == "ssh" else contextlib.nullcontext()

    async def run(self, action: Mapping[str, Any], host: Host,
                  timeout: float) -> ExecOutput:  # noqa: ASYNC109 (the StepKind interface)
        # the first docker step: the SDK's import (requests, urllib3) held the loop
        for module in self.first_use_imports:
            await import_off_loop(module)
        import docker.errors
        import requests.exceptions

        where, verb, container = engine_address(host), action["action"], action.get("container")
        try:
            async with asyncio.timeout(timeout), self._held(host):
                engine = await self.engines.get(host)
                api = engine.client.api  # type: ignore[union-attr]
                output: ExecOutput = await self.engines.call(ACTIONS[verb], api, action)
                return output
        except TimeoutError:
            return ExecOutput(None, "", error=f"timed out after {timeout:g}s waiting for "
                                              f"{where} ({host.name})", timed_out=True)
        except EngineError as exc:
            return ExecOutput(None, "", error=str(exc))
        except docker.errors.NotFound as exc:
            what = f"container named {container}"
            if verb == "network_inspect" and "container" not in str(exc).lower():
                what = f"network named {action.get('network')}"
            return ExecOutput(None, "", error=f"no {what} on {host.name}")
        except docker.errors.APIError as exc:
            reason = (exc.explanation or str(exc)).splitlines()[0]
            if exc.status_code == 409 and "not running" in reason:
                reason = f"{container} is not running (docker exec needs it running)"
            return ExecOutput(None, "", error=f"the Docker Engine of {host.name} refused "
                                              f"{verb}: {reason}")
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                asyncssh.Error, OSError) as exc:
            return ExecOutput(None, "", error=f"cannot reach the Docker Engine at {where}: "
                                              f"{_why(exc)}")
