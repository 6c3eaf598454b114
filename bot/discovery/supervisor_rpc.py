"""`supervisorctl status` without supervisorctl: supervisord's XML-RPC over its unix socket.

`supervisorctl status` is a Python program (about 0.3 s of the host's CPU per call). Its answer
comes from two XML-RPC calls to supervisord (`supervisor.getVersion`, then
`supervisor.getAllProcessInfo`); here both go in one `system.multicall` request, and the answer
is rendered exactly as supervisorctl prints it (supervisor/supervisorctl.py `_show_statuses`,
supervisor/options.py `make_namespec`), with its exit status (3 when a program is stopped,
exited, fatal or unknown), so that what reads the text cannot tell the two apart.

Anything but a whole, well-formed answer is `Unreadable`: the caller then runs supervisorctl.
"""

from __future__ import annotations

import re
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.discovery.rawhttp import Unreadable as Unreadable  # its callers catch it here
from bot.discovery.rawhttp import answer

API_VERSION = "3.0"  # what supervisorctl expects (supervisor.rpcinterface.API_VERSION)
REPLY_LIMIT = 2**20  # bytes of an answer read at most (the executor stops reading there)
# supervisor.states.STOPPED_STATES: STOPPED, EXITED, FATAL, UNKNOWN
_STOPPED_STATES = {0, 100, 200, 1000}
_NOT_RUNNING = 3  # supervisor.states.LSBStatusExitStatuses.NOT_RUNNING
_DTD = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.I)


@dataclass(frozen=True)
class Status:
    text: str  # as `supervisorctl status` prints it
    exit_status: int  # as supervisorctl exits: 0, or 3 when a program is not running


def _request() -> bytes:
    calls = [{"methodName": "supervisor.getVersion", "params": []},
             {"methodName": "supervisor.getAllProcessInfo", "params": []}]
    body = xmlrpc.client.dumps((calls,), "system.multicall").encode()
    # HTTP/1.0: supervisord's server (medusa) closes the connection after its answer
    head = (f"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            f"Accept: text/xml\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


REQUEST = _request()


def _body(raw: bytes) -> bytes:
    fields, body = answer(raw)
    length = fields.get("content-length", "")
    if not length.isdigit() or int(length) != len(body):
        raise Unreadable("the answer's length is not its Content-Length")
    return body


def _calls(body: bytes) -> list[Any]:
    if _DTD.search(body):  # supervisord sends none; entities are refused, never expanded
        raise Unreadable("a DOCTYPE or ENTITY in the answer")
    try:
        (results,), _ = xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as fault:
        raise Unreadable(f"XML-RPC fault {fault.faultCode}: {fault.faultString}") from None
    except Exception as exc:  # expat's and the unmarshaller's errors, whatever they are
        raise Unreadable(f"not an XML-RPC answer ({exc.__class__.__name__})") from None
    if not isinstance(results, list) or len(results) != 2:
        raise Unreadable("not the two answers asked for")
    for result in results:  # supervisord's multicall: a value, or a fault's struct
        if isinstance(result, dict) and "faultCode" in result:
            raise Unreadable(f"XML-RPC fault {result.get('faultCode')}: "
                             f"{result.get('faultString')}")
    return results


def _info(item: Any) -> tuple[str, str, int, str]:
    """(namespec, statename, state, description) of one getAllProcessInfo struct."""
    if not isinstance(item, Mapping):
        raise Unreadable("a process info that is not a struct")
    group, name, statename, desc = (item.get(k) for k in
                                    ("group", "name", "statename", "description"))
    state = item.get("state")
    if not all(isinstance(v, str) for v in (group, name, statename, desc)) or \
            not isinstance(state, int) or isinstance(state, bool):
        raise Unreadable("a process info without its group, name, state or description")
    namespec = name if group == name else f"{group}:{name}"  # make_namespec
    return str(namespec), str(statename), state, str(desc)


def render(infos: Sequence[tuple[str, str, int, str]]) -> Status:
    """supervisorctl's `_show_statuses`: the name column as wide as the longest name (at least
    30) plus 3, the state in 10, then the description; one line each."""
    width = max([30, *(len(namespec) for namespec, _, _, _ in infos)]) + 3
    text = "".join(f"{namespec:<{width}}{statename:<10}{desc}\n"
                   for namespec, statename, _, desc in infos)
    stopped = any(state in _STOPPED_STATES for _, _, state, _ in infos)
    return Status(text, _NOT_RUNNING if stopped else 0)


def read_status(raw: bytes) -> Status:
    """The status supervisorctl would print, from the socket's raw HTTP answer to REQUEST."""
    if len(raw) > REPLY_LIMIT:
        raise Unreadable(f"an answer of more than {REPLY_LIMIT} bytes")
    version, infos = _calls(_body(raw))
    if version != API_VERSION:  # supervisorctl prints "Sorry, ..." instead: let it
        raise Unreadable(f"API version {str(version)[:20]!r}, not {API_VERSION}")
    if not isinstance(infos, list):
        raise Unreadable("getAllProcessInfo is not a list")
    return render([_info(item) for item in infos])
