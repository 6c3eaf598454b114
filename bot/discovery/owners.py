"""Who holds an address, or who is configured to: the text of `ss`, `ps`, supervisord's
configuration and status, /proc/PID/cgroup and `docker inspect`, read into small facts.

Pure functions of command output; bot.discovery.probe runs the commands.
"""

from __future__ import annotations

import configparser
import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from bot.discovery.nginx import Address


# -- ss -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listener:
    local: str  # 127.0.0.1:8000, [::1]:8000, *:80, or a socket path
    host: str
    port: int
    path: str
    processes: tuple[tuple[str, int], ...]  # (name, pid), empty when not visible to the user

    def serves(self, addr: Address) -> bool:
        if addr.unix:
            return self.path == addr.path
        if self.port != addr.port or self.path:
            return False
        if self.host in ("*", "0.0.0.0", "::", "") or self.host == addr.host:
            return True
        return addr.host == "localhost" and self.host in ("127.0.0.1", "::1")


_USERS = re.compile(r'\("([^"]*)",pid=(\d+),fd=\d+\)')


def parse_ss(text: str) -> list[Listener]:
    """`ss -ltnp` and `ss -lxnp` lines, headers or not (either, or both concatenated)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or "LISTEN" not in fields:
            continue
        procs = tuple((m.group(1), int(m.group(2))) for m in _USERS.finditer(line))
        at = fields.index("LISTEN")
        if fields[0].startswith("u_"):  # unix: Netid State Recv-Q Send-Q Path Inode Peer ...
            if len(fields) > at + 3:
                path = fields[at + 3]
                out.append(Listener(path, "", 0, path, procs))
            continue
        if len(fields) <= at + 3:
            continue
        local = fields[at + 3]
        host, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        host = host.strip("[]")
        host = host.split("%", 1)[0]  # 127.0.0.1%lo
        out.append(Listener(local, host, int(port), "", procs))
    return out


# -- ps -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    user: str  # "" when read from /proc (parse_proc)
    args: str

    @property
    def name(self) -> str:
        first = self.args.split(" ", 1)[0]
        return posixpath.basename(first.rstrip(":"))


def parse_ps(text: str) -> dict[int, Proc]:
    """`ps -eo pid=,ppid=,user=,args=`."""
    procs = {}
    for line in text.splitlines():
        fields = line.split(None, 3)
        if len(fields) >= 3 and fields[0].isdigit() and fields[1].isdigit():
            procs[int(fields[0])] = Proc(int(fields[0]), int(fields[1]), fields[2],
                                         fields[3] if len(fields) > 3 else "")
    return procs


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# the grep's records, each after a NUL (or first): a process's `PID/stat:` and its stat line;
# a run of one process's `PID/cmdline:` records, its arguments, as one match (the grep's own
# arguments are two a process: most records, taken here in C rather than one by one)
_STAT = re.compile(r"\0([^\0/:]*)/stat:([^\0]*)")
_CMDLINE = re.compile(r"\0([^\0/:]*)/cmdline:([^\0]*(?:\0\1/cmdline:[^\0]*)*)")


def parse_proc(text: str) -> dict[int, Proc]:
    """probe.PROCS in /proc: NUL-terminated records, each `PID/stat:` and the stat line from its
    `(comm)` on (the whole line, or up to the parent's pid: the fields read here), or
    `PID/cmdline:` and one argument that is not empty (no
    argument holds a NUL, so none can forge a record; a process that set its title pads its
    arguments with NULs, thousands of empty ones). Read as `parse_ps` reads `ps -eo pid,ppid,
    user,args`: the arguments joined by blanks (empty ones dropped, a newline as a blank, other
    control characters as `?`, as ps shows them; other characters as they are, where ps in
    the C locale shows `?`), `[comm]` for a process without any (a kernel thread;
    `[comm] <defunct>` for a zombie); the user is not read ("")."""
    text = "\0" + text
    stats: dict[int, tuple[int, str, str]] = {}
    for number, value in _STAT.findall(text):
        if not number.isdigit():
            continue
        open_, close = value.find("("), value.rfind(")")
        rest = value[close + 1:].split(None, 2)
        if open_ < 0 or close < open_ or len(rest) < 2 or not rest[1].isdigit():
            continue
        stats[int(number)] = (int(rest[1]), value[open_ + 1:close], rest[0])
    args: dict[str, list[str]] = {}
    for number, values in _CMDLINE.findall(text):
        args.setdefault(number, []).extend(values.split(f"\0{number}/cmdline:"))
    procs = {}
    for pid, (ppid, comm, state) in stats.items():
        words = args.get(str(pid), [])
        while words and not words[-1]:
            words.pop()
        line = " ".join(words) if words else \
            f"[{comm}]" + (" <defunct>" if state == "Z" else "")
        if not line.isprintable():  # printable: no control character to show otherwise
            line = _CONTROL.sub("?", line.replace("\n", " "))
        procs[pid] = Proc(pid, ppid, "", line)
    return procs


def ancestors(procs: Mapping[int, Proc], pid: int) -> list[Proc]:
    """The process and its parents, up to (not including) pid 1."""
    out: list[Proc] = []
    while pid in procs and pid > 1 and len(out) < 64:
        out.append(procs[pid])
        pid = procs[pid].ppid
    return out


@lru_cache(maxsize=512)
def _options(args: str, wanted: tuple[str, ...]) -> Mapping[str, str]:
    """The values of the `wanted` options in a command line (read once per distinct line: the
    same masters' lines come back on every host and every run)."""
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        for opt in wanted:
            if word == opt and i + 1 < len(words):
                found[opt] = words[i + 1]
            elif word.startswith(opt + "=") and opt.startswith("--"):
                found[opt] = word.split("=", 1)[1]
    return found


@dataclass(frozen=True)
class NginxMaster:
    pid: int
    binary: str
    conf: str  # "" when nginx runs with its compiled-in default
    prefix: str = ""


def nginx_masters(procs: Mapping[int, Proc]) -> list[NginxMaster]:
    out, seen = [], set()
    for p in sorted(procs.values(), key=lambda p: p.pid):
        if not p.args.startswith("nginx: master process"):
            continue
        rest = p.args[len("nginx: master process"):].strip()
        binary = rest.split(" ", 1)[0] if rest else "nginx"
        opts = _options(rest, ("-c", "-p"))
        key = (binary, opts.get("-c", ""), opts.get("-p", ""))
        if key not in seen:
            seen.add(key)
            out.append(NginxMaster(p.pid, binary if binary.startswith("/") else "nginx",
                                   opts.get("-c", ""), opts.get("-p", "")))
    return out


def supervisord_confs(procs: Mapping[int, Proc]) -> dict[int, str]:
    """supervisord pid -> its configuration file (as given with -c/--configuration)."""
    out = {}
    for p in procs.values():
        if "supervisord" not in p.args:  # most processes: no split, no basename
            continue
        words = p.args.split(None, 2)
        if not any(posixpath.basename(w) == "supervisord" for w in words[:2]):
            continue
        opts = _options(p.args, ("-c", "--configuration"))
        conf = opts.get("-c") or opts.get("--configuration") or ""
        out[p.pid] = conf
    return out


# -- supervisord ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Program:
    name: str  # as supervisorctl names it: group:name, or name
    command: str
    environment: str = ""
    stdout_log: str = ""
    stderr_log: str = ""
    user: str = ""
    directory: str = ""
    section: str = ""  # the file the [program:x] section is in


@dataclass(frozen=True)
class SupervisorConf:
    path: str
    programs: tuple[Program, ...]
    logfile: str = ""
    includes: tuple[str, ...] = ()  # glob patterns of [include] files=, made absolute
    # the unix socket `supervisorctl -c path` talks to ([supervisorctl] serverurl=unix://...,
    # of the main file: supervisorctl reads no include); "" when it talks HTTP or cannot run
    socket: str = ""
    auth: bool = False  # a username is set on either side: supervisorctl would log in


def _ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";", "#"),
                                          interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def parse_supervisor_files(main: str, files: Mapping[str, str]) -> SupervisorConf:
    """Files: path -> text; `main` first, then what its [include] pulled in."""
    here = posixpath.dirname(main)
    groups: dict[str, str] = {}
    raw_programs: list[tuple[str, dict[str, str], str]] = []
    logfile, includes, serverurl, auth = "", [], "", False
    for path, text in files.items():
        try:
            ini = _ini(text)
        except configparser.Error:
            continue
        folder = posixpath.dirname(path)
        for section in ini.sections():
            values = {k: " ".join(v.split()).replace("%(here)s", folder)
                      for k, v in ini.items(section)}
            if section == "supervisord":
                logfile = values.get("logfile", logfile)
            elif section == "include" and path == main:
                includes = [f if f.startswith("/") else posixpath.join(here, f)
                            for f in values.get("files", "").split()]
            elif section == "supervisorctl" and path == main:
                serverurl = values.get("serverurl", "")
                auth = auth or bool(values.get("username"))
            elif section == "unix_http_server":
                auth = auth or bool(values.get("username"))
            elif section.startswith("group:"):
                for prog in values.get("programs", "").split(","):
                    if prog.strip():
                        groups[prog.strip()] = section[len("group:"):]
            elif section.startswith(("program:", "fcgi-program:")):
                raw_programs.append((section.split(":", 1)[1], values, path))
    programs = []
    for name, values, path in raw_programs:
        full = f"{groups[name]}:{name}" if name in groups else name
        programs.append(Program(
            name=full, command=values.get("command", ""),
            environment=values.get("environment", ""),
            stdout_log=_logfile(values.get("stdout_logfile", "")),
            stderr_log=_logfile(values.get("stderr_logfile", "")),
            user=values.get("user", ""), directory=values.get("directory", ""), section=path))
    return SupervisorConf(main, tuple(programs), logfile, tuple(includes),
                          _unix_socket(serverurl), auth)


def _unix_socket(serverurl: str) -> str:
    """The path of a `unix://` serverurl as supervisorctl resolves it; "" for anything else
    (http://, an unresolved %(ENV_x)s, a relative path)."""
    path = serverurl.removeprefix("unix://") if serverurl.startswith("unix://") else ""
    if not path.startswith("/") or "%(" in path:
        return ""
    return posixpath.normpath(path)


def _logfile(value: str) -> str:
    return value if value.startswith("/") else ""


@dataclass(frozen=True)
class ProgramStatus:
    name: str
    state: str
    pid: int | None
    line: str


_STATE = re.compile(r"^(\S+)\s+(RUNNING|STOPPED|STARTING|BACKOFF|STOPPING|EXITED|FATAL|UNKNOWN)"
                    r"\b\s*(.*)$")


def parse_supervisor_status(text: str) -> dict[str, ProgramStatus]:
    out = {}
    for line in text.splitlines():
        m = _STATE.match(line.strip())
        if m:
            pid = re.search(r"\bpid (\d+)", m.group(3))
            out[m.group(1)] = ProgramStatus(m.group(1), m.group(2),
                                            int(pid.group(1)) if pid else None, line.strip())
    return out


# -- systemd and Docker by cgroup ---------------------------------------------------------------
_CONTAINER_ID = re.compile(r"(?:docker-|/docker/|libpod-)([0-9a-f]{64})")


def parse_cgroup(text: str) -> tuple[str, str]:
    """(systemd unit, container id) of a process from /proc/PID/cgroup; "" when none."""
    unit = container = ""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        m = _CONTAINER_ID.search(path)
        if m:
            container = m.group(1)
        for part in path.split("/"):
            if part.endswith(".service") and not unit:
                unit = part
    return unit, container


# -- Docker ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    status: str  # running, exited, restarting, created, paused, dead
    exit_code: int
    oom_killed: bool
    restarting: bool
    network_mode: str
    published: tuple[tuple[str, int, str], ...]  # (host ip, host port, container port/proto)
    env: tuple[str, ...]
    command: tuple[str, ...]
    mounts: tuple[tuple[str, str], ...]  # (source on the host, destination)
    restart_count: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def state_text(self) -> str:
        if self.status == "exited":
            return f"exited ({self.exit_code}{', OOM-killed' if self.oom_killed else ''})"
        if self.status == "restarting" or self.restarting:
            return f"restarting (restarts: {self.restart_count})"
        return self.status


def parse_docker_inspect(text: str) -> list[Container]:
    try:
        data = json.loads(text)
    except ValueError:
        return []
    return containers_of(data)


def containers_of(data: Any) -> list[Container]:
    """The containers of `docker inspect`'s JSON array, parsed."""
    out = []
    for c in data if isinstance(data, list) else []:
        state, host_config = c.get("State") or {}, c.get("HostConfig") or {}
        config = c.get("Config") or {}
        published = []
        ports = ((c.get("NetworkSettings") or {}).get("Ports") or {}) | \
            (host_config.get("PortBindings") or {})
        for container_port, bindings in ports.items():
            for b in bindings or []:
                if str(b.get("HostPort", "")).isdigit():
                    published.append((b.get("HostIp") or "", int(b["HostPort"]), container_port))
        out.append(Container(
            id=str(c.get("Id", "")), name=str(c.get("Name", "")).lstrip("/"),
            image=str(config.get("Image", "")), status=str(state.get("Status", "")),
            exit_code=int(state.get("ExitCode") or 0), oom_killed=bool(state.get("OOMKilled")),
            restarting=bool(state.get("Restarting")),
            network_mode=str(host_config.get("NetworkMode", "")),
            published=tuple(sorted(set(published))), env=tuple(config.get("Env") or ()),
            command=tuple([*(config.get("Entrypoint") or ()), *(config.get("Cmd") or ())]),
            mounts=tuple((str(m.get("Source", "")), str(m.get("Destination", "")))
                         for m in c.get("Mounts") or ()),
            restart_count=int(c.get("RestartCount") or 0), raw=c))
    return out


# -- "configured to hold this address" ------------------------------------------------------------
def mentions(text: str, addr: Address) -> bool:
    """Does a command line or environment name this port or socket path?"""
    if addr.unix:
        return addr.path in text
    return re.search(rf"(?<![0-9.]){addr.port}(?![0-9])", text) is not None


def container_holds(c: Container, addr: Address) -> str:
    """Why the container holds (or would hold) addr; "" when it does not."""
    if addr.unix:
        for source, dest in c.mounts:
            if addr.path == source or addr.path.startswith(source.rstrip("/") + "/"):
                return f"mounts {source} (at {dest})"
        return ""
    for ip, port, inside in c.published:
        if port == addr.port and (ip in ("", "0.0.0.0", "::") or ip == addr.host
                                  or addr.host in ("localhost", "127.0.0.1")):
            return f"publishes {ip or '0.0.0.0'}:{port}->{inside}"
    if c.network_mode == "host":
        text = " ".join([*c.env, *c.command])
        if mentions(text, addr):
            return f"host network, its command or environment names port {addr.port}"
    return ""
