"""supervisord's status read from its socket: which socket a configuration names, how the answer
renders, and every answer that is not a whole status is refused (the caller then runs
supervisorctl). The byte-for-byte match with supervisorctl is in
tests/integration/test_supervisor_socket.py, against a real supervisord."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from bot.discovery.owners import parse_supervisor_files
from bot.discovery.supervisor_rpc import (
    REPLY_LIMIT,
    REQUEST,
    Unreadable,
    read_status,
    render,
)


def http(body: bytes, status: str = "200 OK", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (f"HTTP/1.0 {status}\r\nServer: Medusa/1.12\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {size}\r\n\r\n").encode() + body


def answer(*results: Any) -> bytes:
    return http(xmlrpc.client.dumps((list(results),), methodresponse=True).encode())


def info(name: str, state: int, statename: str, desc: str, group: str | None = None
         ) -> dict[str, Any]:
    return {"name": name, "group": group or name, "state": state, "statename": statename,
            "description": desc, "pid": 0}


def test_the_request_is_one_multicall_over_http_1_0() -> None:
    head, _, body = REQUEST.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /RPC2 HTTP/1.0\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    (calls,), method = xmlrpc.client.loads(body)
    assert method == "system.multicall"
    assert [c["methodName"] for c in calls] == ["supervisor.getVersion",
                                                 "supervisor.getAllProcessInfo"]


def test_a_status_renders_as_supervisorctl_prints_it() -> None:
    raw = answer("3.0", [info("web", 20, "RUNNING", "pid 12, uptime 0:00:05"),
                         info("docservice", 0, "STOPPED", "Not started", group="ds")])

    status = read_status(raw)

    assert status.text == ("web" + " " * 30 + "RUNNING   pid 12, uptime 0:00:05\n"
                           "ds:docservice" + " " * 20 + "STOPPED   Not started\n")
    assert status.exit_status == 3  # a program is not running, as supervisorctl exits


def test_a_long_name_widens_the_column_and_all_running_exits_0() -> None:
    name = "a_program_name_of_more_than_thirty_characters"
    status = render([(name, "RUNNING", 20, "pid 1, uptime 0:01:00"),
                     ("b", "BACKOFF", 30, "Exited too quickly")])

    assert status.text.splitlines() == [f"{name}   RUNNING   pid 1, uptime 0:01:00",
                                        f"b{' ' * (len(name) + 2)}BACKOFF   Exited too quickly"]
    assert status.exit_status == 0  # BACKOFF counts as running for supervisorctl's exit
    assert render([]).text == "" and render([]).exit_status == 0


@pytest.mark.parametrize(("raw", "why"), [
    (http(b"Unauthorized", "401 Unauthorized"), "HTTP answer"),
    (http(b"<html>oops</html>", "500 Internal Server Error"), "HTTP answer"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n", "no whole HTTP answer"),
    (b"", "no whole HTTP answer"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "HTTP answer"),
    (http(b"not xml at all"), "not an XML-RPC answer"),
    (http(b"<?xml version='1.0'?><methodResponse><params>"), "not an XML-RPC answer"),
    (answer("3.0", [])[:-5], "Content-Length"),  # cut short
    (http(b"x", length=5), "Content-Length"),
    (http(xmlrpc.client.dumps(xmlrpc.client.Fault(2, "UNKNOWN_METHOD"),
                              methodresponse=True).encode()), "fault 2"),
    (answer("3.0", {"faultCode": 6, "faultString": "SHUTDOWN_STATE"}), "fault 6"),
    (answer("2.0", []), "API version"),
    (answer("3.0"), "two answers"),
    (answer("3.0", "all"), "not a list"),
    (answer("3.0", ["web"]), "not a struct"),
    (answer("3.0", [{"name": "web", "group": "web", "statename": "RUNNING"}]), "without"),
    (answer("3.0", [info("web", True, "RUNNING", "")]), "without"),  # type: ignore[arg-type]
    (http(b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;'
          b'&a;&a;">]><methodResponse><params><param><value><string>&b;</string></value>'
          b"</param></params></methodResponse>"), "DOCTYPE"),
    (http(b"<!entity x SYSTEM 'file:///etc/passwd'>"), "DOCTYPE"),
    (answer("3.0", [info("x" * 64, 20, "RUNNING", "y" * REPLY_LIMIT)]), "more than"),
])
def test_anything_but_a_whole_status_is_unreadable(raw: bytes, why: str) -> None:
    with pytest.raises(Unreadable, match=why):
        read_status(raw)


def test_the_socket_is_the_one_supervisorctl_talks_to() -> None:
    main = "/etc/supervisor/supervisord.conf"
    conf = parse_supervisor_files(main, {
        main: "[unix_http_server]\nfile=/var/run/supervisor.sock\nchmod=0700\n\n"
              "[supervisorctl]\nserverurl=unix://%(here)s/../../run/./supervisor.sock\n\n"
              "[include]\nfiles = conf.d/*.conf\n",
        "/etc/supervisor/conf.d/app.conf": "[supervisorctl]\nserverurl=unix:///elsewhere.sock\n"
                                           "[program:app]\ncommand=/bin/app\n"})
    assert conf.socket == "/run/supervisor.sock" and not conf.auth
    assert [p.name for p in conf.programs] == ["app"]


@pytest.mark.parametrize(("text", "socket", "auth"), [
    ("[unix_http_server]\nfile=/run/s.sock\n", "", False),  # supervisorctl would fail: no section
    ("[supervisorctl]\n", "", False),  # http://localhost:9001, supervisorctl's default
    ("[inet_http_server]\nport=127.0.0.1:9001\n[supervisorctl]\nserverurl=http://127.0.0.1:9001\n",
     "", False),
    ("[supervisorctl]\nserverurl=unix://run/s.sock\n", "", False),  # relative: to the cwd
    ("[supervisorctl]\nserverurl=unix://%(ENV_RUN)s/s.sock\n", "", False),
    ("[unix_http_server]\nfile=/run/s.sock\nusername=admin\npassword=x\n"
     "[supervisorctl]\nserverurl=unix:///run/s.sock\n", "/run/s.sock", True),
    ("[supervisorctl]\nserverurl=unix:///run/s.sock\nusername=admin\n", "/run/s.sock", True),
])
def test_no_socket_or_a_login_leaves_it_to_supervisorctl(text: str, socket: str,
                                                          auth: bool) -> None:
    conf = parse_supervisor_files("/etc/supervisord.conf", {"/etc/supervisord.conf": text})
    assert (conf.socket, conf.auth) == (socket, auth)
