"""A raw HTTP/1.x answer read from a unix socket on the host through the SSH connection
(supervisord's XML-RPC, Docker's Engine API): its header fields and body, or `Unreadable`."""

from __future__ import annotations


class Unreadable(ValueError):
    """The socket's answer is not what the command it stands for would print (why, in one
    line): the caller then runs the command."""


def answer(raw: bytes) -> tuple[dict[str, str], bytes]:
    """The header fields (names in lower case) and the body of a whole `200` answer."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise Unreadable("no whole HTTP answer")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/") or status[1] != "200":
        raise Unreadable(f"HTTP answer {lines[0][:80]!r}")
    return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}, body
