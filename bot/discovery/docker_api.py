"""`docker ps -aq --no-trunc` and `docker inspect` without the docker CLI: the Engine API over
Docker's unix socket.

The docker CLI is a Go program: each call costs the host about 20 ms of CPU (the runtime's
start-up) before it asks the daemon anything, and discovery asks twice (the ids, then inspect).
The same two answers come from the Engine API (`GET /containers/json?all=1`, the ids in the
CLI's order; `GET /containers/{id}/json`, the object `docker inspect` prints for it) on a stream
through the SSH connection: no process on the host.

Anything but a whole, well-formed answer is `Unreadable`: the caller then runs the CLI, which also
follows what this does not (DOCKER_HOST, a context, another socket).
"""

from __future__ import annotations

import json
import re
from typing import Any

from bot.discovery.rawhttp import Unreadable as Unreadable  # its callers catch it here
from bot.discovery.rawhttp import answer

SOCKET = "/var/run/docker.sock"  # the CLI's default (DOCKER_HOST unset, the default context)
REPLY_LIMIT = 2**20  # bytes of an answer read at most (the executor stops reading there)
_ID = re.compile(r"[0-9a-f]{64}")


def _get(path: str) -> bytes:
    # HTTP/1.0: the daemon closes the connection after its answer (no chunks, no keep-alive)
    return f"GET {path} HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n".encode()


LIST = _get("/containers/json?all=1")


def inspect_request(container_id: str) -> bytes:
    if not _ID.fullmatch(container_id):
        raise ValueError(f"not a container id: {container_id[:80]!r}")
    return _get(f"/containers/{container_id}/json")


def _dechunk(body: bytes) -> bytes:
    out, rest = bytearray(), body
    while True:
        size, sep, rest = rest.partition(b"\r\n")
        try:
            n = int(size.split(b";", 1)[0], 16)
        except ValueError:
            raise Unreadable("a malformed chunk") from None
        if not sep or n < 0 or len(rest) < n + 2:
            raise Unreadable("a chunk cut short")
        if n == 0:
            return bytes(out)
        out += rest[:n]
        rest = rest[n + 2:]


def _json(raw: bytes) -> Any:
    """The JSON body of the daemon's raw HTTP answer; Unreadable unless 200 and whole."""
    if len(raw) > REPLY_LIMIT:
        raise Unreadable(f"an answer of more than {REPLY_LIMIT} bytes")
    fields, body = answer(raw)
    if "chunked" in fields.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif fields.get("content-length", "").isdigit() and \
            int(fields["content-length"]) != len(body):
        raise Unreadable("the answer's length is not its Content-Length")
    try:
        return json.loads(body)
    except ValueError:
        raise Unreadable("not JSON") from None


def container_ids(raw: bytes) -> list[str]:
    """The ids `docker ps -aq --no-trunc` prints (newest first), from the answer to LIST."""
    listed = _json(raw)
    if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
        raise Unreadable("not a list of containers")
    ids = [str(c.get("Id", "")) for c in listed]
    if not all(_ID.fullmatch(i) for i in ids):
        raise Unreadable("a container without its id")
    return ids


def inspected(raw: bytes) -> dict[str, Any]:
    """One container as `docker inspect` prints it, from the answer to `inspect_request`."""
    found = _json(raw)
    if not isinstance(found, dict) or not _ID.fullmatch(str(found.get("Id", ""))):
        raise Unreadable("not a container")
    return found
