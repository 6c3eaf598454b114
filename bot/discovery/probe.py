"""Run discovery on a host: the fixed commands, over whatever runs commands there (SSH).

Every command is a fixed string or built with shlex.quote from a value checked first (a path, a
pid, a container id); nothing read from the host or an alert is pasted into a shell unquoted.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from bot.discovery import docker_api, supervisor_rpc
from bot.discovery.chain import Chain, Owner
from bot.discovery.nginx import (
    MARKER,
    Address,
    NginxConfig,
    NginxConfigError,
    Route,
    parse_dump,
    route,
    serves,
)
from bot.discovery.owners import (
    Container,
    Listener,
    Proc,
    Program,
    ProgramStatus,
    SupervisorConf,
    ancestors,
    container_holds,
    containers_of,
    mentions,
    nginx_masters,
    parse_cgroup,
    parse_docker_inspect,
    parse_proc,
    parse_ps,
    parse_ss,
    parse_supervisor_files,
    parse_supervisor_status,
    supervisord_confs,
)
from bot.executors.capture import HEAD, TAIL
from bot.models import ExecOutput, Read, SocketReply
from bot.offload import off_loop, off_loop_shared

# run(command, timeout) -> its output; never raises for a failure on the host
Run = Callable[[str, float], Awaitable[ExecOutput]]
# run_many(commands, timeout) -> their outputs, the commands run in one session of the host
RunMany = Callable[[Sequence[str], float], Awaitable[list[ExecOutput]]]
# unix_request(path, request, timeout) -> the answer of a unix socket on the host, read through
# the connection (no process started); never raises for a failure on the host
UnixRequest = Callable[[str, bytes, float], Awaitable[SocketReply]]

# every process: of its stat line only the fields discovery reads, `(comm) state ppid` (-o: the
# rest, some 250 bytes a process, stays on the host; the last `) X N` is where comm ends, as
# owners.parse_proc reads it; the C locale: a comm of any bytes matches), then its (non-empty)
# arguments (owners.parse_proc). ps reads four files of each process (stat, status, cmdline and
# environ), this two. grep's status 2 is a process that ended meanwhile. PS when this lists none
# (a grep without -z or -o). POSIX sh; GNU grep and busybox's.
PROCS = ("cd /proc && { LC_ALL=C grep -aHsoz '(.*) . [0-9][0-9]*' [0-9]*/stat; s=$?; "
         "grep -aHsz . [0-9]*/cmdline; [ $? -le 2 ] && [ $s -le 2 ]; }")
PS = "ps -ww -eo pid=,ppid=,user=,args="
# one process: the epoch and the UTC offset from one `date`, the uptime read by the shell
CLOCK = "date +'%s %z'; read -r up rest </proc/uptime; echo \"$up\""
# TCP as the runbooks' `listening_ports` check asks it (the check then takes discovery's read)
SS_TCP = "ss -ltnp"
# unix sockets without their processes: `-p` reads the file descriptors of every process on the
# host (as costly as the TCP read itself); asked only for a socket that the chain finds held.
# Read only when nginx proxies to a unix socket (a TCP address is never a unix socket's)
SS_UNIX = "ss -lxnH"
SS_UNIX_OWNERS = "ss -lxnpH"
DOCKER_IDS = "docker ps -aq --no-trunc"
SYSTEMD = "test -d /run/systemd/system && echo systemd"
SOCKET_TIMEOUT = 5.0  # supervisord answers in milliseconds; past this, supervisorctl is asked
DEFAULT_SUPERVISOR_CONFS = ("/etc/supervisor/supervisord.conf", "/etc/supervisord.conf")
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system",
             "/usr/lib/systemd/system")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+@/-]{0,1000}$")
_SAFE_GLOB = re.compile(r"^/[A-Za-z0-9_.+@/*?\[\]-]{0,1000}$")
_FILE_MARK = re.compile(r"^# ---- opsbot file (/.+)$", re.M)
_COMMON = {"http", "https", "grpc", "unix", "pool", "backend", "backends", "upstream", "server",
           "localhost", "www", "com", "org", "net", "app", "api", "web", "sock", "socket"}
_RUNNING = {"RUNNING", "STARTING", "active", "running", "activating", "reloading"}


def _path(value: str) -> str | None:
    return value if _SAFE_PATH.match(value) and "/../" not in f"{value}/" else None


def _cat(path: str) -> str:
    """A file's text, read by `cat` only where it is a file: one of the default supervisord
    confs read on every host is missing on most (Debian's is /etc/supervisor/supervisord.conf,
    Red Hat's /etc/supervisord.conf), and a `cat` that fails is a process (about a millisecond
    of the host's CPU) all the same. Exit status 1 then too, with no message."""
    quoted = shlex.quote(path)
    return f"[ -f {quoted} ] && cat -- {quoted}"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _configuration(dump: str) -> str:
    """The files of an `nginx -T` dump, without the test's messages before them: run as a user
    other than root, nginx warns there with the time and its pid, so no two hosts' dumps of one
    configuration are the same text (the parse reads only the files)."""
    first = MARKER.search(dump)
    return dump[first.start():] if first else dump


@lru_cache(maxsize=32)
def _config_of(dump: str) -> NginxConfig:
    """`nginx -T` read once per distinct dump: the hosts of a fleet often share one
    configuration, and a changed configuration is a new dump (its text is the key)."""
    return parse_dump(dump)


@lru_cache(maxsize=64)
def _supervisor_of(main: str, files: tuple[tuple[str, str], ...]) -> SupervisorConf:
    """supervisord's files read once per distinct text (as `_config_of`)."""
    return parse_supervisor_files(main, dict(files))


def host_clock(text: str) -> dict[str, Any]:
    """utc_offset and booted_at from `CLOCK`: the epoch, the UTC offset (+hhmm) and the
    seconds since boot, separated by blanks."""
    lines = text.split()
    if len(lines) < 2 or not lines[0].isdigit():
        return {}
    out: dict[str, Any] = {}
    m = re.fullmatch(r"([+-])(\d\d)(\d\d)", lines[1])
    if m:
        sign = -1 if m.group(1) == "-" else 1
        out["utc_offset"] = sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    try:
        out["booted_at"] = datetime.fromtimestamp(int(lines[0]) - float(lines[2]), UTC)
    except (IndexError, ValueError):  # no /proc/uptime
        pass
    return out


class Prober:
    """One discovery on one host: caches what it read, so each command runs once. With
    `run_many`, the commands known to be needed next are read together, in one session (one
    sshd session and shell on the host instead of one per command)."""

    def __init__(self, run: Run, host: str, *, sudo: bool = False, timeout: float = 20,
                 run_many: RunMany | None = None, unix_request: UnixRequest | None = None
                 ) -> None:
        self._run, self._run_many, self.host, self.timeout = run, run_many, host, timeout
        self._unix_request = unix_request
        # supervisord conf -> why its socket gave no status ("": it did, or it has none)
        self.socket_misses: dict[str, str] = {}
        self._read: dict[str, Read] = {}
        self.sudo = "sudo -n " if sudo else ""
        self.notes: list[str] = []
        self._supervisor: list[SupervisorConf] | None = None
        self._statuses: dict[str, dict[str, ProgramStatus]] = {}
        self._containers: list[Container] | None = None
        # Docker's socket asked: (began, t0, ids), or () when it gave no whole answer
        self._listed: tuple[str, float, list[str]] | tuple[()] | None = None
        self._ride: list[str] = []  # commands read with the next `prefetch`

    @property
    def reads(self) -> Mapping[str, Read]:
        """What was read so far, by command (a status read from a socket under its command)."""
        return self._read

    async def sh(self, command: str) -> ExecOutput:
        if command not in self._read:
            began, t0 = _now_iso(), time.monotonic()
            out = await self._run(command, self.timeout)
            self._read[command] = Read(out, began, time.monotonic() - t0)
        return self._read[command].output

    async def prefetch(self, commands: Sequence[str]) -> None:
        """Read these commands' outputs now, in one session, for `sh` to answer from."""
        todo = [c for c in dict.fromkeys([*commands, *self._ride]) if c not in self._read]
        self._ride.clear()
        if len(todo) < 2 or self._run_many is None:
            return
        began, t0 = _now_iso(), time.monotonic()
        outs = await self._run_many(todo, self.timeout)
        took = time.monotonic() - t0
        self._read.update((c, Read(out, began, took)) for c, out in zip(todo, outs, strict=True))

    def _nginx_dump(self, binary: str, path: str, prefix: str) -> str:
        argv = [binary if _path(binary) else "nginx", "-T"]
        if path and _path(path):
            argv += ["-c", path]
        if prefix and _path(prefix.rstrip("/") or "/"):
            argv += ["-p", prefix]
        return self.sudo + shlex.join(argv)

    # -- nginx --------------------------------------------------------------------------------
    async def nginx_config(self, procs: Mapping[int, Proc], url: str,
                           conf: str | None) -> tuple[str, NginxConfig | None]:
        """The configuration of the nginx whose servers listen on the URL's port."""
        tried: list[tuple[str, str, str]] = []
        if conf:
            tried.append(("nginx", conf, ""))
        for m in nginx_masters(procs):
            tried.append((m.binary, m.conf, m.prefix))
        if not tried:
            tried.append(("nginx", "", ""))
        first_error = ""
        fallback: tuple[str, NginxConfig] | None = None
        commands = [self._nginx_dump(*t) for t in dict.fromkeys(tried)]
        for i, command in enumerate(commands):
            if command not in self._read:  # the rest at once
                await self.prefetch(commands[i:])
            out = await self.sh(command)
            self._test_read(command)
            try:
                config = await off_loop_shared(_config_of, _configuration(out.output))
            except NginxConfigError as exc:
                first_error = first_error or f"{command.removeprefix(self.sudo)}: {exc}"
                continue
            if route(config, url) is not None:
                return config.main_file, config
            fallback = fallback or (config.main_file, config)
        if first_error:
            self.notes.append(first_error)
        if fallback:
            return fallback[0], fallback[1]
        return "", None

    def _test_read(self, dump: str) -> None:
        """`nginx -t` with the dump's arguments, read from the dump: `nginx -T` tests the
        configuration as `-t` does (the same messages on stderr, the same exit status), then
        prints it on stdout, after them. So a runbook's `nginx -t` check takes this read and no
        second nginx parses the configuration on the host."""
        read = self._read.get(dump)
        if read is None or read.via or read.output.error is not None or \
                read.output.exit_status is None:
            return
        text = read.output.output
        if read.output.exit_status == 0:  # the test passed: the configuration follows
            cut = text.find("\n# configuration file ")
            if cut < 0:
                return
            text = text[:cut + 1]
        self._read.setdefault(dump.replace(" -T", " -t", 1), Read(
            ExecOutput(read.output.exit_status, text), read.started_at, read.duration,
            via=f"the test that `{dump.removeprefix(self.sudo)}` ran first"))

    # -- supervisord ----------------------------------------------------------------------------
    async def supervisor(self, procs: Mapping[int, Proc]) -> list[SupervisorConf]:
        """The configuration of every supervisord running (and of the default paths)."""
        if self._supervisor is None:
            confs = [c for c in (await off_loop(supervisord_confs, procs)).values() if c]
            confs += [c for c in DEFAULT_SUPERVISOR_CONFS if c not in confs]
            confs = [c for c in dict.fromkeys(confs) if _path(c)]
            await self.prefetch([_cat(c) for c in confs])
            mains = {c: await self._read_main(c) for c in confs}
            await self.prefetch([self._includes(m) for m in mains.values() if m and m.includes])
            read = [await self._read_supervisor(m) for m in mains.values() if m is not None]
            self._supervisor = read
        return self._supervisor

    async def _read_main(self, conf: str) -> SupervisorConf | None:
        read = await self.sh(_cat(conf))
        if read.exit_status != 0:
            return None
        return await off_loop_shared(_supervisor_of, conf, ((conf, read.output),))

    @staticmethod
    def _includes(parsed: SupervisorConf) -> str:
        globs = [g for g in parsed.includes if _SAFE_GLOB.match(g)]
        return ("for f in " + " ".join(globs) + "; do [ -f \"$f\" ] && "
                "printf '# ---- opsbot file %s\\n' \"$f\" && cat -- \"$f\"; done; true")

    async def _read_supervisor(self, parsed: SupervisorConf) -> SupervisorConf:
        conf = parsed.path
        globs = [g for g in parsed.includes if _SAFE_GLOB.match(g)]
        if not globs:
            return parsed
        read = await self.sh(_cat(conf))
        more = await self.sh(self._includes(parsed))
        files = {conf: read.output}
        marks = list(_FILE_MARK.finditer(more.output))
        for i, m in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(more.output)
            files[m.group(1)] = more.output[m.end() + 1:end]
        return await off_loop_shared(_supervisor_of, conf, tuple(files.items()))

    def _status_command(self, conf: SupervisorConf) -> str:
        return f"{self.sudo}supervisorctl -c {shlex.quote(conf.path)} status"

    async def socket_statuses(self, confs: Sequence[SupervisorConf]) -> None:
        """Read `supervisorctl status` of these supervisords from their unix sockets (XML-RPC
        through the SSH connection: no process on the host), as if the command had run; a
        socket that gives no whole status leaves its command to run (`sh`, `prefetch`)."""
        todo = [c for c in confs if c.path not in self.socket_misses
                and self._status_command(c) not in self._read]
        if self._unix_request is None or not todo:
            return
        for conf, why in zip(todo, await asyncio.gather(*(self._socket_status(c) for c in todo)),
                             strict=True):
            self.socket_misses[conf.path] = why

    async def _socket_status(self, conf: SupervisorConf) -> str:
        """Why conf's socket gave no status; "" when it did (read as the command's output),
        or when it has none to try."""
        path = _path(conf.socket)
        if path is None or self._unix_request is None:
            return ""  # none to try
        if conf.auth:  # supervisorctl logs in with the file's credentials: never sent here
            return "the socket asks for a username"
        began, t0 = _now_iso(), time.monotonic()
        reply = await self._unix_request(path, supervisor_rpc.REQUEST, SOCKET_TIMEOUT)
        if reply.error is not None:
            return reply.error[:200]
        try:
            status = await off_loop(supervisor_rpc.read_status, reply.data)
        except supervisor_rpc.Unreadable as exc:
            return f"{path}: {str(exc)[:200]}"
        self._read[self._status_command(conf)] = Read(
            ExecOutput(status.exit_status, status.text), began, time.monotonic() - t0,
            via=f"supervisord's socket {path}, XML-RPC")
        return ""

    async def statuses(self, conf: SupervisorConf) -> dict[str, ProgramStatus]:
        """`supervisorctl status` of one supervisord (asked once: each call starts Python),
        read from its socket when it answers there (`socket_statuses`)."""
        if conf.path not in self._statuses:
            await self.socket_statuses([conf])
            status = await self.sh(self._status_command(conf))
            parsed = parse_supervisor_status(status.output)
            if not parsed and conf.programs:
                line = (status.output.strip().splitlines() or [status.error or "no output"])[0]
                socket = self.socket_misses.get(conf.path, "")
                self.notes.append(f"supervisorctl -c {conf.path} status: {line[:200]}"
                                  + (f" (its socket: {socket})" if socket else ""))
            self._statuses[conf.path] = parsed
        return self._statuses[conf.path]

    async def programs(self, procs: Mapping[int, Proc], wanted: Callable[[Program], bool],
                       how: str) -> list[Owner]:
        """Owners of the supervisord programs `wanted` picks, with their states."""
        picked = [(c, p) for c in await self.supervisor(procs) for p in c.programs if wanted(p)]
        confs = {c.path: c for c, _ in picked}
        await self.socket_statuses(list(confs.values()))
        await self.prefetch([self._status_command(c) for c in confs.values()])
        states = {path: await self.statuses(c) for path, c in confs.items()}
        return [self.program_owner(c, p, states[c.path].get(p.name), how) for c, p in picked]

    @staticmethod
    def program_owner(conf: SupervisorConf, prog: Program, status: ProgramStatus | None,
                      how: str) -> Owner:
        state = status.state if status else "UNKNOWN"
        return Owner(kind="supervisord", name=prog.name, state=state, how=how,
                     running=state in _RUNNING, pid=status.pid if status else None,
                     conf=conf.path, supervisor_log=conf.logfile if conf.logfile.startswith("/")
                     else "", logs=tuple(p for p in (prog.stdout_log, prog.stderr_log) if p),
                     command=prog.command, environment=prog.environment)

    # -- Docker ------------------------------------------------------------------------------
    async def containers(self) -> list[Container]:
        if self._containers is None:
            self._containers = await self._read_containers()
        return self._containers

    async def _read_containers(self) -> list[Container]:
        if self._listed is None and self.sudo + DOCKER_IDS not in self._read:
            self._listed = await self._list_containers()
        if self._listed:
            found = await self._inspect_containers(*self._listed)
            if found is not None:
                return found
        ids = await self.sh(self.sudo + DOCKER_IDS)
        if ids.exit_status != 0:
            if ids.exit_status not in (127,) and "not found" not in ids.output:
                line = (ids.output.strip().splitlines() or [ids.error or ""])[0]
                self.notes.append(f"docker ps: {line[:200]}")
            return []
        listed = [i for i in ids.output.split() if re.fullmatch(r"[0-9a-f]{12,64}", i)]
        if not listed:
            return []
        out = await self.sh(self.sudo + "docker inspect " + " ".join(listed[:500]))
        return parse_docker_inspect(out.output)

    async def _list_containers(self) -> tuple[str, float, list[str]] | tuple[()]:
        """(when it began, its monotonic start, the ids) as `docker ps -aq --no-trunc` would
        list them, from Docker's socket through the connection (docker_api: no docker CLI, a
        Go program, started on the host); () when the socket gives no whole answer."""
        if self._unix_request is None:
            return ()
        began, t0 = _now_iso(), time.monotonic()
        reply = await self._unix_request(docker_api.SOCKET, docker_api.LIST, SOCKET_TIMEOUT)
        if reply.error is not None:
            return ()
        try:
            return began, t0, docker_api.container_ids(reply.data)[:500]
        except docker_api.Unreadable:
            return ()

    async def _inspect_containers(self, began: str, t0: float,
                                  ids: list[str]) -> list[Container] | None:
        """The listed containers as `docker inspect` tells them, from the socket, recorded
        as the two commands' reads; None when an answer is not whole (e.g. a container
        removed meanwhile: the CLI asks again)."""
        assert self._unix_request is not None
        request, gate = self._unix_request, asyncio.Semaphore(8)  # streams at once

        async def inspect(container_id: str) -> dict[str, Any]:
            async with gate:
                one = await request(docker_api.SOCKET, docker_api.inspect_request(container_id),
                                    SOCKET_TIMEOUT)
            if one.error is not None:
                raise docker_api.Unreadable(one.error)
            return await off_loop(docker_api.inspected, one.data)

        try:
            found = list(await asyncio.gather(*(inspect(i) for i in ids)))
        except docker_api.Unreadable:
            return None
        via, took = f"Docker's socket {docker_api.SOCKET}, Engine API", time.monotonic() - t0
        self._read[self.sudo + DOCKER_IDS] = Read(
            ExecOutput(0, "".join(f"{i}\n" for i in ids)), began, took, via=via)
        if ids:
            self._read[self.sudo + "docker inspect " + " ".join(ids)] = Read(
                ExecOutput(0, json.dumps(found, indent=4) + "\n"), began, took, via=via)
        return containers_of(found)

    @staticmethod
    def container_owner(c: Container, how: str) -> Owner:
        return Owner(kind="docker", name=c.name, state=c.state_text, how=how,
                     running=c.status == "running" and not c.restarting,
                     command=" ".join(c.command), environment=" ".join(c.env))

    # -- systemd -----------------------------------------------------------------------------
    async def systemd_units(self, addr: Address) -> list[Owner]:
        probe = await self.sh(SYSTEMD)
        if "systemd" not in probe.output:
            return []
        needle = re.escape(addr.path) if addr.unix else \
            rf"(^|[^0-9.]){addr.port}([^0-9]|$)"
        globs = " ".join(f"{d}/*.service" for d in UNIT_DIRS)
        grep = await self.sh(f"grep -lsE -- {shlex.quote(needle)} {globs}; true")
        units = [line.rsplit("/", 1)[1] for line in grep.output.split()
                 if re.fullmatch(r"/[\w./@-]+\.service", line)]
        return [await self.unit_owner(u, f"its unit file names {addr}") for u in
                dict.fromkeys(units)]

    async def unit_owner(self, unit: str, how: str, pid: int | None = None) -> Owner:
        show = await self.sh("systemctl show -p ActiveState -p SubState -p MainPID -- "
                             + shlex.quote(unit))
        props = dict(line.split("=", 1) for line in show.output.splitlines() if "=" in line)
        state = props.get("ActiveState", "unknown")
        sub = props.get("SubState", "")
        main = props.get("MainPID", "0")
        return Owner(kind="systemd", name=unit, state=f"{state}" + (f"/{sub}" if sub else ""),
                     how=how, running=state in _RUNNING,
                     pid=pid or (int(main) if main.isdigit() and main != "0" else None),
                     logs=())

    # -- the whole chain ----------------------------------------------------------------------
    async def discover(self, url: str, *, nginx_conf: str | None = None,
                       fallback: str | None = None, own_names: Sequence[str] = ()) -> Chain:
        """fallback: url came from an alert (untrusted); it is traced only when nginx on the host
        serves it (serves()); otherwise fallback (the runbook's or the inventory's URL) is."""
        chain = Chain(host=self.host, url=url)
        # what every discovery reads, in one session
        first = [PROCS, CLOCK, SS_TCP, SYSTEMD] + (
            [self._nginx_dump("nginx", nginx_conf, "")] if nginx_conf else [])
        if self._unix_request is None:
            await self.prefetch([*first, self.sudo + DOCKER_IDS])
        else:  # the containers from Docker's socket meanwhile; else the CLI, with the next
            self._listed, _ = await asyncio.gather(self._list_containers(), self.prefetch(first))
            if not self._listed:
                self._ride.append(self.sudo + DOCKER_IDS)
        listed = await self.sh(PROCS)
        whole = (listed.total_bytes or 0) <= HEAD + TAIL  # else its middle was cut
        procs = await off_loop(parse_proc, listed.output) \
            if listed.error is None and listed.exit_status == 0 and whole else {}
        if not procs:  # no grep -z, no /proc to read, thousands of processes, or no answer
            ps = await self.sh(PS) if listed.error is None else listed
            if ps.error is not None or ps.exit_status != 0:
                why = ps.error or (ps.output.strip().splitlines() or ["no output"])[0]
                return replace(chain, notes=(f"discovery could not run on {self.host}: {why}",),
                               reachable=ps.error is None)
            procs = await off_loop(parse_ps, ps.output)  # every process of the host
        chain = replace(chain, **host_clock((await self.sh(CLOCK)).output))
        conf_path, config = await self.nginx_config(procs, url, nginx_conf)
        if config is None:
            if fallback is not None and fallback != url:  # an alert's URL is not traced blind
                self.notes.append(f"the alert's URL {url} could not be checked against nginx's "
                                  f"configuration on {self.host}: {fallback} is used instead")
                chain = replace(chain, url=fallback)
            return replace(chain, notes=(*self.notes, "no nginx configuration could be read "
                                                      "(nginx -T)"))
        found = route(config, url)
        if fallback is not None and fallback != url and \
                (found is None or not serves(found, url, own_names)):
            parts = urlsplit(url)
            why = f"no server of {conf_path} " + (
                f"listens on port {parts.port or (443 if parts.scheme == 'https' else 80)}"
                if found is None else f"is named {parts.hostname}")
            self.notes.append(f"the alert's URL {url} is not served by nginx on {self.host} "
                              f"({why}): traced {fallback} instead")
            url = fallback
            chain = replace(chain, url=url)
            found = route(config, url)
            if found is None:
                conf_path, other = await self.nginx_config(procs, url, nginx_conf)
                if other is not None:
                    config, found = other, route(other, url)
        chain = replace(chain, nginx_conf=conf_path, route=found)
        if found is None:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            return replace(chain, notes=(*self.notes, f"no server in {conf_path} listens on "
                                                      f"port {port}"))
        self.notes.extend(found.notes)
        if not found.addresses:
            return replace(chain, notes=tuple(self.notes))
        sockets = (await self.sh(SS_TCP)).output
        if any(a.unix for a in found.addresses):
            sockets = f"{sockets}\n{(await self.sh(SS_UNIX)).output}"
        listeners = await off_loop(parse_ss, sockets)
        # the first address nothing serves (an upstream with one dead server fails there)
        served = [(a, next((li for li in listeners if li.serves(a)), None))
                  for a in found.addresses]
        addr, held = next(((a, h) for a, h in served if h is None), served[0])
        if held is not None and addr.unix:  # whose socket: the one read with processes
            owners = await off_loop(parse_ss, (await self.sh(SS_UNIX_OWNERS)).output)
            held = next((li for li in owners if li.serves(addr)), held)
        chain = replace(chain, address=addr, listening=held is not None)
        pid = min((p for _, p in held.processes), default=None) if held else None
        owner: Owner | None = None
        if held is not None and pid is not None:
            name = next(n for n, p in held.processes if p == pid)
            chain = replace(chain, listener_pid=pid, listener_name=name)
            owner = await self.owner_of_pid(procs, pid, addr)
        candidates = await self.configured(procs, addr)
        if owner is None and candidates:
            if held is not None:  # something listens, owner hidden: the running candidate
                owner = next((c for c in candidates if c.running), candidates[0])
            else:  # nothing listens: the candidate that is not running explains it
                owner = next((c for c in candidates if not c.running), candidates[0])
        rest = tuple(c for c in candidates if owner is None or
                     (c.kind, c.name) != (owner.kind, owner.name))
        chain = replace(chain, owner=owner, candidates=rest)
        if owner is None and held is None:  # nginx may point at the wrong place: whose is it?
            chain = replace(chain, **await self.namesake(procs, found, listeners, conf_path))
        return replace(chain, notes=tuple(self.notes))

    async def namesake(self, procs: Mapping[int, Proc], found: Route,
                       listeners: Sequence[Listener], nginx_conf: str) -> dict[str, Any]:
        """The one running program or container named like the upstream (myapp_pool ->
        myapp), and the address it listens on: where nginx was probably meant to point."""
        words = {w for text in (found.upstream.args[0] if found.upstream else "",
                                found.target, found.server_name)
                 for w in re.split(r"[^a-z0-9]+", text.lower()) if len(w) >= 3} - _COMMON
        if not words:
            return {}
        owners = await self.programs(
            procs, lambda p: bool(set(re.split(r"[^a-z0-9]+", p.name.lower())) & words),
            "named like the upstream")
        for c in await self.containers():
            if set(re.split(r"[^a-z0-9]+", c.name.lower())) & words:
                owners.append(self.container_owner(c, "named like the upstream"))
        running = [o for o in owners if o.running]
        if len(running) > 1:  # several supervisords: the one set up beside this nginx
            near = {o: len(posixpath.commonpath([o.conf, nginx_conf]))
                    if o.conf.startswith("/") and nginx_conf.startswith("/") else 0
                    for o in running}
            running = [o for o in running if near[o] == max(near.values())]
        if len(running) != 1:
            return {}
        owner = running[0]
        text = f"{owner.command} {owner.environment}"
        for li in listeners:
            if li.port and (li.processes and owner.pid in {p for _, p in li.processes}
                            or mentions(text, Address(li.host, li.port))):
                host = "127.0.0.1" if li.host in ("*", "0.0.0.0", "") else li.host
                return {"namesake": replace(owner, how=f"{owner.how}; listens on "
                                            f"{host}:{li.port}"),
                        "namesake_address": Address(host, li.port)}
        return {}

    async def owner_of_pid(self, procs: Mapping[int, Proc], pid: int,
                           addr: Address) -> Owner | None:
        line = ancestors(procs, pid)
        how = f"listens on {addr} (pid {pid})"
        if any(posixpath.basename(w) == "supervisord" for p in line[1:]
               for w in p.args.split(" ", 2)[:2]):
            pids = {p.pid for p in line}
            mine = {c for pid_, c in (await off_loop(supervisord_confs, procs)).items()
                    if pid_ in pids}
            for conf in await self.supervisor(procs):
                if conf.path not in mine and not ("" in mine and conf.path in
                                                  DEFAULT_SUPERVISOR_CONFS):
                    continue
                statuses = await self.statuses(conf)
                for prog in conf.programs:
                    status = statuses.get(prog.name)
                    if status and status.pid in pids:
                        return self.program_owner(conf, prog, status, how)
        if line and line[0].name == "docker-proxy" or \
                any(p.name == "containerd-shim" or "containerd-shim" in p.args for p in line):
            for c in await self.containers():
                why = container_holds(c, addr)
                if why:
                    return self.container_owner(c, f"{how}; {why}")
        cgroup = await self.sh(f"cat /proc/{int(pid)}/cgroup")
        unit, container_id = parse_cgroup(cgroup.output)
        if container_id:
            for c in await self.containers():
                if c.id == container_id:
                    return self.container_owner(c, how)
        if unit and not unit.startswith(("session-", "user@", "ssh")):
            return await self.unit_owner(unit, how, pid)
        proc = procs.get(pid)
        if proc is None:
            return None
        return Owner(kind="process", name=proc.name, state="running", how=how, running=True,
                     pid=pid, command=proc.args)

    async def configured(self, procs: Mapping[int, Proc], addr: Address) -> list[Owner]:
        """Programs, units and containers set up to hold addr (running or not)."""
        out = await self.programs(
            procs, lambda p: mentions(f"{p.command} {p.environment}", addr),
            f"its command or environment names {addr}")
        out += await self.systemd_units(addr)
        for c in await self.containers():
            why = container_holds(c, addr)
            if why:
                out.append(self.container_owner(c, why))
        return out


async def discover(run: Run, host: str, url: str, *, sudo: bool = False,
                   nginx_conf: str | None = None, fallback: str | None = None,
                   own_names: Sequence[str] = (), run_many: RunMany | None = None,
                   unix_request: UnixRequest | None = None) -> Chain:
    """The chain behind url on host: nginx server and location, upstream, who holds it.
    With fallback, url is an alert's: traced only if nginx on the host serves it by name (or
    it names the host itself: own_names, loopback), else fallback is. With unix_request,
    supervisord's status is read from its socket where it can be (no supervisorctl run)."""
    prober = Prober(run, host, sudo=sudo, run_many=run_many, unix_request=unix_request)
    chain = await prober.discover(url, nginx_conf=nginx_conf, fallback=fallback,
                                  own_names=own_names)
    return replace(chain, reads=dict(prober.reads))

