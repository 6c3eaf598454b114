"""The Engine API's answers read as the docker CLI would print them (bot.discovery.docker_api)."""

from __future__ import annotations

import json

import pytest

from bot.discovery import docker_api
from bot.discovery.owners import containers_of, parse_docker_inspect

A, B = "a" * 64, "b" * 64


def answer(body: bytes, head: str = "HTTP/1.0 200 OK\r\nContent-Type: application/json") -> bytes:
    return f"{head}\r\n\r\n".encode() + body


def test_ids_in_the_engines_order() -> None:
    listed = json.dumps([{"Id": B, "Names": ["/new"]}, {"Id": A, "Names": ["/old"]}]).encode()
    assert docker_api.container_ids(answer(listed)) == [B, A]
    assert docker_api.container_ids(answer(b"[]")) == []


def test_a_chunked_answer_is_read_whole() -> None:
    body = json.dumps({"Id": A, "Name": "/web"}).encode()
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:])
    got = docker_api.inspected(answer(chunked, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"))
    assert got == {"Id": A, "Name": "/web"}


def test_the_inspected_object_parses_as_the_clis_array() -> None:
    one = {"Id": A, "Name": "/web", "State": {"Status": "exited", "ExitCode": 137,
                                               "OOMKilled": True}, "Config": {"Image": "x"}}
    assert containers_of([one]) == parse_docker_inspect(json.dumps([one], indent=4))


@pytest.mark.parametrize(("raw", "why"), [
    (b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container\"}", "HTTP answer"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\n[]", "Content-Length"),
    (b"HTTP/1.0 200 OK\r\n\r\nnot json", "not JSON"),
    (b"HTTP/1.0 200 OK\r\n", "no whole HTTP answer"),
    (answer(b'[{"Names": ["/x"]}]'), "without its id"),
    (answer(b'{"Id": "../x"}'), "not a list"),
])
def test_anything_else_is_unreadable(raw: bytes, why: str) -> None:
    with pytest.raises(docker_api.Unreadable, match=why):
        docker_api.container_ids(raw)


def test_an_id_is_checked_before_it_goes_in_a_request() -> None:
    assert docker_api.inspect_request(A).startswith(f"GET /containers/{A}/json HTTP/1.0".encode())
    with pytest.raises(ValueError):
        docker_api.inspect_request("../../info")
