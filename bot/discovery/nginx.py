"""nginx's configuration, as `nginx -T` prints it, parsed with NGINX's own `crossplane`; then the
server and location that serve a URL, and where that location passes the request.

nginx -T prints every file it read after a `# configuration file PATH:` line. Each file is parsed
on its own (crossplane, `single=True`) and `include` is resolved against the dumped files, so
nothing is read from this machine's disk. Location choice follows nginx: an exact `=` match; else
the longest prefix, final if it is `^~`; else the first matching regex in order; else that
prefix. Variables in a `*_pass` are filled from `set` and `map` when their values are constants.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import crossplane

MARKER = re.compile(r"^# configuration file (.+):$", re.M)
PASSES = ("proxy_pass", "fastcgi_pass", "uwsgi_pass", "grpc_pass", "scgi_pass")
DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 80, "grpcs": 443, "uwsgi": 80, "suwsgi": 443}


class NginxConfigError(ValueError):
    """The dump cannot be read as nginx configuration."""


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    file: str
    line: int
    block: tuple[Directive, ...] | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def children(self, name: str) -> Iterator[Directive]:
        return (d for d in self.block or () if d.name == name)

    def first(self, name: str) -> Directive | None:
        return next(self.children(name), None)


@dataclass(frozen=True)
class Address:
    """Where nginx sends the request: TCP host:port or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Route:
    """The way one URL takes through nginx."""

    url: str
    server: Directive
    server_name: str
    listen: str
    location: Directive | None
    directive: Directive | None  # the *_pass that sends it on, or None (served by nginx)
    target: str = ""  # the *_pass argument, variables filled where known
    upstream: Directive | None = None  # the upstream {} block it names
    addresses: tuple[Address, ...] = ()
    error_log: str = ""
    upstream_path: str = ""  # the path the upstream receives (after rewrite and the pass URI)
    notes: tuple[str, ...] = ()

    @property
    def location_text(self) -> str:
        return "location " + " ".join(self.location.args) if self.location else "(no location)"


@dataclass(frozen=True)
class NginxConfig:
    main_file: str
    tree: tuple[Directive, ...]  # includes resolved
    files: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)

    def http(self) -> Directive | None:
        return next((d for d in self.tree if d.name == "http"), None)


# -- the dump -----------------------------------------------------------------------------
def split_dump(text: str) -> dict[str, str]:
    """File path -> its text, in the order nginx -T printed them."""
    marks = list(MARKER.finditer(text))
    files: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        files.setdefault(m.group(1), text[m.end() + 1:end])
    return files


def _convert(stmts: Sequence[Mapping[str, Any]], file: str) -> list[Directive]:
    out = []
    for s in stmts:
        block = s.get("block")
        out.append(Directive(str(s["directive"]), tuple(str(a) for a in s.get("args", ())), file,
                             int(s.get("line", 0)),
                             tuple(_convert(block, file)) if block is not None else None))
    return out


def _parse_one(path: str, text: str, local: str) -> tuple[list[Directive], list[str]]:
    with open(local, "w", encoding="utf-8") as fh:
        fh.write(text)
    payload = crossplane.parse(local, single=True, check_ctx=False, check_args=False)
    errors = [f"{path}:{e.get('line')}: {e.get('error')}" for e in payload.get("errors", ())]
    configs = payload.get("config") or [{}]
    return _convert(configs[0].get("parsed") or [], path), errors


def parse_dump(text: str) -> NginxConfig:
    """The configuration printed by `nginx -T` (includes resolved among the dumped files)."""
    files = split_dump(text)
    if not files:
        first = next((ln for ln in text.splitlines() if ln.strip()), "no output")
        raise NginxConfigError(f"nginx -T printed no configuration: {first[:200]}")
    parsed: dict[str, list[Directive]] = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="opsbot-nginx-") as folder:
        for i, (path, body) in enumerate(files.items()):
            parsed[path], errs = _parse_one(path, body, os.path.join(folder, f"{i}.conf"))
            errors += errs
    main = next(iter(files))
    prefix = posixpath.dirname(main)

    def expand(stmts: Sequence[Directive], seen: tuple[str, ...]) -> tuple[Directive, ...]:
        out: list[Directive] = []
        for d in stmts:
            if d.name == "include" and d.args:
                pattern = d.args[0] if d.args[0].startswith("/") else \
                    posixpath.join(prefix, d.args[0])
                for path in sorted(p for p in parsed if fnmatch.fnmatchcase(p, pattern)):
                    if path not in seen:
                        out.extend(expand(parsed[path], (*seen, path)))
                continue
            if d.block is not None:
                d = Directive(d.name, d.args, d.file, d.line, expand(d.block, seen))
            out.append(d)
        return tuple(out)

    return NginxConfig(main, expand(parsed[main], (main,)), tuple(files), tuple(errors))


# -- listen and server_name -------------------------------------------------------------------
@dataclass(frozen=True)
class Listen:
    host: str  # "" for any address
    port: int
    default: bool
    text: str


def parse_listen(args: Sequence[str]) -> Listen | None:
    if not args or args[0].startswith("unix:"):
        return None
    spec = args[0]
    default = "default_server" in args[1:] or "default" in args[1:]
    host, port = "", 80
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?", spec)
    if m:
        host, port = m.group(1), int(m.group(2) or 80)
    elif spec.isdigit():
        port = int(spec)
    elif ":" in spec:
        host, _, p = spec.rpartition(":")
        port = int(p) if p.isdigit() else 80
    else:
        host = spec
    if host in ("*", "0.0.0.0", "::"):
        host = ""
    return Listen(host, port, default, " ".join(args))


def _server_names(server: Directive) -> list[str]:
    return [n for d in server.children("server_name") for n in d.args]


def _name_rank(names: Sequence[str], host: str) -> tuple[int, int] | None:
    """How well server_name fits the host, nginx's order: exact, *.x, x.*, regex."""
    host = host.lower().rstrip(".")
    best: tuple[int, int] | None = None
    for name in names:
        low = name.lower()
        rank: tuple[int, int] | None = None
        if low == host:
            rank = (4, 0)
        elif low.startswith("*.") and host.endswith(low[1:]) or \
                low.startswith(".") and (host == low[1:] or host.endswith(low)):
            rank = (3, len(low))
        elif low.endswith(".*") and host.startswith(low[:-1]):
            rank = (2, len(low))
        elif low.startswith("~"):
            try:
                if re.search(name[1:], host):
                    rank = (1, 0)
            except re.error:
                rank = None
        if rank and (best is None or rank > best):
            best = rank
    return best


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def find_server(config: NginxConfig, url: str) -> tuple[Directive, Listen] | None:
    """The server {} that answers the URL, as nginx picks it (address:port, then name)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
    http = config.http()
    if http is None:
        return None
    candidates: list[tuple[int, Directive, Listen]] = []
    for server in http.children("server"):
        listens = [parse_listen(d.args) for d in server.children("listen")] or \
            [Listen("", 80, False, "80")]
        for listen in listens:
            if listen is None or listen.port != port:
                continue
            if listen.host == "":
                fit = 1
            elif listen.host == host or listen.host == "localhost" and _is_local(host):
                fit = 2
            elif _is_local(listen.host) and _is_local(host):
                fit = 0  # 127.0.0.1 vs 127.0.0.2: another address, kept as a last resort
            elif host and not _is_address(host) and host != "localhost":
                fit = 1  # a name: the address it resolves to is the host's; server_name decides
            else:
                continue
            candidates.append((fit, server, listen))
            break
    if not candidates:
        return None
    top = max(c[0] for c in candidates)
    best = [(s, li) for fit, s, li in candidates if fit == top]
    named = [(_name_rank(_server_names(s), host), s, li) for s, li in best]
    hits = [n for n in named if n[0] is not None]
    if hits:
        rank = max(n[0] for n in hits if n[0] is not None)
        s, li = next((s, li) for r, s, li in hits if r == rank)
        return s, li
    default = next(((s, li) for s, li in best if li.default), None)
    return default or best[0]


def serves(found: Route, url: str, own_names: Sequence[str] = ()) -> bool:
    """Does nginx serve the URL's host by name on that server, rather than only as the default
    of its port? True for the host's own names and addresses (loopback, the listen address,
    `own_names`) and for a name that fits the server's server_name."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    listen = parse_listen(found.listen.split())
    if not host:
        return False
    if _is_local(host) or host in {n.lower() for n in own_names if n} or \
            listen is not None and listen.host and listen.host.lower() == host:
        return True
    if _is_address(host):
        return False  # another address: not this host's
    return _name_rank(_server_names(found.server), host) is not None


def connect_address(found: Route) -> str:
    """The address a probe on the host connects to for this server: the address it listens
    on, or loopback when it listens on all of them (or on a name)."""
    listen = parse_listen(found.listen.split())
    try:
        addr = ipaddress.ip_address(listen.host if listen else "")
    except ValueError:
        return "127.0.0.1"
    if addr.is_unspecified:
        return "127.0.0.1"
    return f"[{addr}]" if addr.version == 6 else str(addr)


# -- locations ----------------------------------------------------------------------------------
def _location_kind(args: Sequence[str]) -> tuple[str, str]:
    if not args:
        return "", ""
    if len(args) >= 2 and args[0] in ("=", "^~", "~", "~*"):
        return args[0], args[1]
    first = args[0]
    for mod in ("^~", "~*", "=", "~"):
        if first.startswith(mod) and len(first) > len(mod) and not first.startswith("@"):
            return mod, first[len(mod):]
    return "", first


def find_location(block: Directive, uri: str) -> list[Directive]:
    """The location chain (outer to inner) nginx would use for the URI inside block."""
    exact: Directive | None = None
    prefix: tuple[int, Directive, str] | None = None
    regexes: list[tuple[Directive, re.Pattern[str]]] = []
    for loc in block.children("location"):
        mod, arg = _location_kind(loc.args)
        if arg.startswith("@"):
            continue
        if mod == "=":
            if uri == arg:
                exact = loc
        elif mod in ("~", "~*"):
            try:
                regexes.append((loc, re.compile(arg, re.I if mod == "~*" else 0)))
            except re.error:
                continue
        elif uri.startswith(arg) and (prefix is None or len(arg) > prefix[0]):
            prefix = (len(arg), loc, mod)
    if exact is not None:
        return [exact]
    if prefix is not None and prefix[2] == "^~":
        return [prefix[1], *find_location(prefix[1], uri)]
    if prefix is not None:
        inner = find_location(prefix[1], uri)
        if inner:
            return [prefix[1], *inner]
    for loc, pattern in regexes:
        if pattern.search(uri):
            return [loc, *find_location(loc, uri)]
    return [prefix[1]] if prefix is not None else []


# -- variables, upstreams, addresses ------------------------------------------------------------
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _request_vars(url: str, server_port: int) -> dict[str, str]:
    parts = urlsplit(url)
    uri = parts.path or "/"
    return {"host": (parts.hostname or "").lower(), "http_host": parts.netloc,
            "scheme": parts.scheme, "uri": uri, "document_uri": uri,
            "request_uri": uri + (f"?{parts.query}" if parts.query else ""),
            "args": parts.query, "server_port": str(server_port)}


def _map_value(block: Directive, source: str | None) -> str | None:
    default: str | None = None
    for d in block.block or ():
        if len(d.args) != 1 or d.name in ("hostnames", "volatile", "include"):
            continue
        key, value = d.name, d.args[0]
        if key == "default":
            default = value
        elif source is not None:
            if key.startswith("~"):
                try:
                    if re.search(key[1:], source, re.I if key.startswith("~*") else 0):
                        return value
                except re.error:
                    continue
            elif key == source:
                return value
    return default


def fill_variables(text: str, scopes: Sequence[Directive], http: Directive | None,
                   request: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace $vars by constants from set (innermost scope wins) and map; the rest stay."""
    sets: dict[str, str] = {}
    for scope in scopes:
        for d in scope.children("set"):
            if len(d.args) == 2 and d.args[0].startswith("$"):
                sets[d.args[0][1:]] = d.args[1]
    maps = {d.args[1][1:]: d for d in (http.children("map") if http else ())
            if len(d.args) == 2 and d.args[1].startswith("$")}
    unknown: list[str] = []

    def value(name: str, depth: int) -> str | None:
        if depth > 5:
            return None
        raw = sets.get(name)
        if raw is None and name in maps:
            src = maps[name].args[0]
            src_value = _fill(src, depth + 1) if "$" in src else src
            raw = _map_value(maps[name], None if src_value is None or "$" in src_value
                             else src_value)
        if raw is None:
            raw = request.get(name)
        if raw is None:
            return None
        return _fill(raw, depth + 1) if "$" in raw else raw

    def _fill(t: str, depth: int) -> str | None:
        out, missing = t, False
        for m in _VAR.finditer(t):
            name = m.group(1) or m.group(2)
            v = value(name, depth)
            if v is None:
                missing = True
                if depth == 0:
                    unknown.append(f"${name}")
                continue
            out = out.replace(m.group(0), v, 1)
        return None if missing and depth else out

    filled = _fill(text, 0) or text
    return filled, unknown


def parse_address(text: str, default_port: int) -> Address | None:
    """`127.0.0.1:8000`, `[::1]:8000`, `name`, `unix:/run/x.sock` -> Address."""
    if text.startswith("unix:"):
        path = text[5:]
        return Address(path=path) if path.startswith("/") else None
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?", text)
    if m:
        return Address(host=m.group(1), port=int(m.group(2) or default_port))
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return Address(host=host, port=int(port))
    return Address(host=text, port=default_port) if text and "$" not in text else None


def split_target(directive: str, target: str) -> tuple[str, str, int]:
    """(scheme, authority, default port) of a *_pass argument."""
    if directive == "proxy_pass" or "://" in target:
        scheme, _, rest = target.partition("://")
        if rest.startswith("unix:"):  # http://unix:/path/to.sock:/uri
            path = rest[5:]
            cut = path.find(":", 1)
            return scheme, "unix:" + (path[:cut] if cut > 0 else path), 0
        return scheme, rest.split("/", 1)[0], DEFAULT_PORTS.get(scheme, 80)
    return "", target, {"fastcgi_pass": 9000, "uwsgi_pass": 80, "scgi_pass": 80,
                        "grpc_pass": 80}.get(directive, 80)


def _rewrite(location: Directive | None, uri: str) -> str:
    """The URI after the location's `rewrite ... break|last` rules that match (PCRE -> re)."""
    for d in location.children("rewrite") if location else ():
        if len(d.args) < 2:
            continue
        try:
            m = re.search(d.args[0], uri)
        except re.error:
            continue
        if m is None:
            continue
        groups = (m.group(0), *m.groups())
        new = re.sub(r"\$(\d)", lambda g, gs=groups: (gs[int(g.group(1))] or "")  # type: ignore[misc]
                     if int(g.group(1)) < len(gs) else "", d.args[1])
        uri = new.split("?", 1)[0]
        if len(d.args) > 2 and d.args[2] in ("break", "last"):
            break
    return uri


def _pass_uri(directive: str, target: str) -> str | None:
    """The URI part of a proxy_pass target (None: the request URI goes as it is)."""
    if directive != "proxy_pass" or "://" not in target:
        return None
    rest = target.split("://", 1)[1]
    if rest.startswith("unix:"):
        cut = rest.find(":", 6)
        return rest[cut + 1:] if cut > 0 and rest[cut + 1:] else None
    return "/" + rest.split("/", 1)[1] if "/" in rest else None


def _upstream_servers(upstream: Directive, default_port: int) -> tuple[Address, ...]:
    out = []
    for d in upstream.children("server"):
        if not d.args or "down" in d.args[1:]:
            continue
        addr = parse_address(d.args[0], default_port if default_port else 80)
        if addr:
            out.append(addr)
    return tuple(out)


def _error_log(scopes: Sequence[Directive], config: NginxConfig) -> str:
    for scope in reversed(scopes):
        d = scope.first("error_log")
        if d and d.args:
            return d.args[0]
    top = next((d for d in config.tree if d.name == "error_log" and d.args), None)
    return top.args[0] if top else ""


def route(config: NginxConfig, url: str) -> Route | None:
    """The server, location and pass target that serve the URL; None: no server listens."""
    found = find_server(config, url)
    if found is None:
        return None
    server, listen = found
    parts = urlsplit(url)
    uri = parts.path or "/"
    chain = find_location(server, uri)
    location = chain[-1] if chain else None
    http = config.http()
    scopes = [s for s in (http, server, *chain) if s is not None]
    names = _server_names(server)
    notes: list[str] = []
    directive: Directive | None = None
    for scope in reversed([server, *chain]):
        directive = next((d for d in scope.block or () if d.name in PASSES and d.args), None)
        if directive is None:  # a pass inside `if` in the location
            for cond in scope.children("if"):
                directive = next((d for d in cond.block or () if d.name in PASSES and d.args),
                                 None)
                if directive:
                    notes.append(f"the {directive.name} is inside `if ({' '.join(cond.args)})`"
                                 f" ({cond.where})")
                    break
        if directive or scope is not server:
            break
    base = Route(url=url, server=server, server_name=names[0] if names else "_",
                 listen=listen.text, location=location, directive=directive,
                 error_log=_error_log(scopes, config))
    if directive is None:
        return Route(**{**base.__dict__, "notes": tuple(notes)})
    request = _request_vars(url, listen.port)
    target, unknown = fill_variables(directive.args[0], scopes, http, request)
    if unknown:
        notes.append(f"{directive.name} uses {', '.join(unknown)}, which the configuration "
                     "does not set to a constant")
    scheme, authority, default_port = split_target(directive.name, target)
    upstream = None
    addresses: tuple[Address, ...] = ()
    name = authority.rsplit(":", 1)[0] if not authority.startswith("[") else authority
    if http is not None and not authority.startswith("unix:"):
        upstream = next((u for u in http.children("upstream") if u.args and u.args[0] in
                         (authority, name)), None)
    if upstream is not None:
        addresses = _upstream_servers(upstream, 80)
        if not addresses:
            notes.append(f"upstream {upstream.args[0]} has no server that is not down")
    elif "$" not in authority:
        addr = parse_address(authority, default_port)
        addresses = (addr,) if addr else ()
    path = _rewrite(location, uri)
    replaced = _pass_uri(directive.name, target)
    if replaced is not None and location is not None and path == uri:
        mod, arg = _location_kind(location.args)
        if mod in ("", "^~", "=") and uri.startswith(arg):
            path = replaced + uri[len(arg):]
    return Route(**{**base.__dict__, "target": target, "upstream": upstream,
                    "addresses": addresses, "upstream_path": path, "notes": tuple(notes)})
