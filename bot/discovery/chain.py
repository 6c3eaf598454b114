"""The chain behind a failing URL: what discovery found, as one line, as JSON, and as the runbook
parameters it implies (the layer between the runbook's defaults and the host's variables)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from bot.discovery.nginx import Address, Route, connect_address
from bot.models import Read

KINDS = ("supervisord", "systemd", "docker", "process")
# dependencies named in a command line or environment: scheme://host:port or --name host:port
_DEP_URL = re.compile(r"\b(redis|rediss|amqp|amqps|postgres|postgresql|mysql|mongodb|memcached)"
                      r"://(?:[^@\s/]*@)?([A-Za-z0-9.-]+)(?::(\d{1,5}))?")
_DEP_FLAG = re.compile(r"--?(redis|rabbitmq|amqp|postgres|postgresql|pg|mysql|mongo|memcached|db)"
                       r"[-_a-z]*[ =]([A-Za-z0-9.-]+):(\d{1,5})\b", re.I)
_DEP_NAMES = {"rediss": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq", "postgres": "postgresql",
              "pg": "postgresql", "db": "database", "mongo": "mongodb"}
_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671, "postgres": 5432,
                  "postgresql": 5432, "mysql": 3306, "mongodb": 27017, "memcached": 11211}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Owner:
    """The program, unit, container or process that holds an address (or is set up to)."""

    kind: str  # supervisord | systemd | docker | process
    name: str
    state: str  # RUNNING, STOPPED, FATAL, active, exited (0), ...
    how: str  # why it is the owner: "listens (pid 123)", "its command names port 8000"
    running: bool
    pid: int | None = None
    conf: str = ""  # supervisord's configuration file
    supervisor_log: str = ""
    logs: tuple[str, ...] = ()  # its own log files
    command: str = ""
    environment: str = ""

    @property
    def label(self) -> str:
        what = {"supervisord": "supervisord program", "systemd": "systemd unit",
                "docker": "Docker container", "process": "process"}[self.kind]
        return f"{what} {self.name} ({self.state})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "state": self.state, "how": self.how,
                "running": self.running, "pid": self.pid, "conf": self.conf or None,
                "supervisor_log": self.supervisor_log or None, "logs": list(self.logs),
                "command": self.command or None}


@dataclass(frozen=True)
class Chain:
    host: str
    url: str
    nginx_conf: str = ""
    route: Route | None = None
    address: Address | None = None
    listening: bool | None = None  # None: not known (no address)
    listener_pid: int | None = None
    listener_name: str = ""
    owner: Owner | None = None
    candidates: tuple[Owner, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    reachable: bool = True
    namesake: Owner | None = None  # nothing holds the address; this one is named like it
    namesake_address: Address | None = None  # ... and listens here
    utc_offset: timedelta | None = None  # the host's clock, to place its log lines in time
    booted_at: datetime | None = None
    # every command discovery ran, by command: a step of the run with the same command (a
    # read) takes its output instead of running it again (bot.runner)
    reads: Mapping[str, Read] = field(default_factory=dict, compare=False, repr=False)

    # -- how it reads ------------------------------------------------------------------------
    def links(self) -> list[str]:
        parts = urlsplit(self.url)
        where = parts.netloc or self.url
        if self.route is None:
            return [where, "no nginx server found for it"]
        out = [f"{where}" + (f" (server {self.route.server_name})"
                             if self.route.server_name not in ("_", "") else "")
               + f" {self.route.location_text}"]
        d = self.route.directive
        if d is None:
            out.append("served by nginx itself (no *_pass)")
            return out
        out.append(f"{d.name} {self.route.target or d.args[0]}")
        if self.route.upstream is not None:
            servers = ", ".join(str(a) for a in self.route.addresses) or "no servers"
            out.append(f"upstream {self.route.upstream.args[0]} ({servers})")
        if self.address is None:
            out.append("address not resolvable from the configuration")
            return out
        if self.listening:
            who = f"{self.listener_name} pid {self.listener_pid}" if self.listener_pid else \
                "owner not visible to the SSH user"
            out.append(f"{self.address} listening ({who})")
        else:
            out.append(f"nothing listens on {self.address}")
        if self.owner is not None:
            out.append(self.owner.label)
        elif not self.listening:
            out.append("nothing is configured to listen there")
            if self.namesake is not None:
                out.append(f"but {self.namesake.label} listens on {self.namesake_address}: "
                           "nginx points elsewhere")
        return out

    def text(self) -> str:
        return " → ".join(self.links())

    def to_json(self) -> dict[str, Any]:
        r = self.route
        return {
            "host": self.host, "url": self.url, "chain": self.text(),
            "nginx": None if r is None else {
                "conf": self.nginx_conf or None, "server": r.server.where,
                "server_name": r.server_name, "listen": r.listen,
                "location": " ".join(r.location.args) if r.location else None,
                "location_at": r.location.where if r.location else None,
                "pass": r.directive.name if r.directive else None, "target": r.target or None,
                "upstream": r.upstream.args[0] if r.upstream else None,
                "addresses": [str(a) for a in r.addresses], "error_log": r.error_log or None},
            "address": str(self.address) if self.address else None,
            "listening": self.listening,
            "listener": {"pid": self.listener_pid, "name": self.listener_name}
            if self.listener_pid else None,
            "owner": self.owner.to_json() if self.owner else None,
            "namesake": None if self.namesake is None else {
                **self.namesake.to_json(), "address": str(self.namesake_address)},
            "candidates": [c.to_json() for c in self.candidates],
            "dependencies": self.dependencies(),
            "params": self.params(),
            "notes": list(self.notes), "reachable": self.reachable,
        }

    # -- what it implies -----------------------------------------------------------------------
    def dependencies(self) -> list[str]:
        """name:host:port of what the owner's command or environment names."""
        if self.owner is None:
            return []
        text = f"{self.owner.command} {self.owner.environment}"
        found: list[str] = []
        for m in _DEP_URL.finditer(text):
            scheme = m.group(1).lower()
            port = m.group(3) or str(_DEFAULT_PORTS.get(scheme, 0))
            found.append(f"{_DEP_NAMES.get(scheme, scheme)}:{m.group(2)}:{port}")
        for m in _DEP_FLAG.finditer(text):
            name = m.group(1).lower()
            found.append(f"{_DEP_NAMES.get(name, name)}:{m.group(2)}:{m.group(3)}")
        return list(dict.fromkeys(found))

    def params(self) -> dict[str, Any]:
        """Runbook parameters this chain fills (a runbook takes those it declares)."""
        out: dict[str, Any] = {}
        r = self.route
        if r is not None and self.url.startswith(("http://", "https://")):  # nginx serves it
            out["proxy_url"] = self.url
            parts = urlsplit(self.url)
            name = parts.hostname or ""
            if name and name != "localhost" and not _is_ip(name):  # fetched on the host itself
                port = parts.port or (443 if parts.scheme == "https" else 80)
                out["proxy_resolve"] = f"{name}:{port}:{connect_address(r)}"
        if self.nginx_conf:
            out["nginx_conf"] = self.nginx_conf
        if r is not None and r.error_log.startswith("/"):
            out["nginx_error_log"] = r.error_log
        addr = self.address
        if addr is not None and r is not None and r.directive is not None:
            path = r.upstream_path or urlsplit(self.url).path or "/"
            scheme = "https" if r.target.startswith(("https://", "grpcs://")) else "http"
            if addr.unix:
                out["upstream_socket"] = addr.path
                out["health_url"] = f"http://localhost{path}"
            else:
                out["upstream_host"] = addr.host
                out["upstream_port"] = addr.port
                host = f"[{addr.host}]" if ":" in addr.host else addr.host
                out["health_url"] = f"{scheme}://{host}:{addr.port}{path}"
        o = self.owner or self.namesake
        where = self.namesake_address if self.owner is None else None
        if where is not None and r is not None:  # the backend is there, not where nginx points
            path = r.upstream_path or urlsplit(self.url).path or "/"
            out.pop("upstream_socket", None)
            out["upstream_host"], out["upstream_port"] = where.host, where.port
            out["health_url"] = f"http://{where.host}:{where.port}{path}"
        if o is not None:
            out["deployment"] = o.kind
            if o.kind == "supervisord":
                out["program"] = o.name
                if o.conf:
                    out["supervisor_conf"] = o.conf
                if o.supervisor_log:
                    out["supervisor_log"] = o.supervisor_log
            elif o.kind == "systemd":
                out["unit"] = o.name
            elif o.kind == "docker":
                out["container"] = o.name
            if o.logs:
                out["app_log"] = o.logs[0]
                if len(o.logs) > 1:
                    out["app_err_log"] = o.logs[1]
        if r is not None and r.directive is not None:  # traced: what it needs is what it names
            out["dependencies"] = " ".join(self.dependencies())
        return out
