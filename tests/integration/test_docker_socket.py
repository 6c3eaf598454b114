"""Docker's containers read over SSH from Docker's socket (the Engine API on a direct-streamlocal
channel of the pooled connection), instead of starting the docker CLI (a Go program, about 20 ms
of the host's CPU a call, twice per discovery) on the host.

Given a real Docker Engine with a running and a stopped container, discovery reads the same
containers from the socket as from `docker ps -aq --no-trunc` and `docker inspect`, and says how
it read them; a login user the socket is closed to gets the CLI, and its note, as before.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.discovery import probe
from bot.discovery.probe import Prober
from bot.executors import ExecContext
from bot.models import Host
from tests.lab import SshServer
from tests.lab.docker import DockerLab

pytestmark = pytest.mark.lab


def host_of(server: SshServer) -> Host:
    return Host(server.name, server.address, server.port, server.user, str(server.key_file))


@pytest.fixture(scope="module")
async def ctx(docker_known_hosts: Path) -> AsyncIterator[ExecContext]:
    context = ExecContext(known_hosts=docker_known_hosts)
    yield context
    await context.close()


def prober(ctx: ExecContext, server: SshServer, *, socket: bool) -> Prober:
    host = host_of(server)
    calls = ctx.ssh.on(host)
    return Prober(calls.run, host.name, run_many=calls.run_many,
                  unix_request=calls.unix_request if socket else None)


async def test_the_socket_tells_the_containers_the_cli_tells(
        ctx: ExecContext, docker_lab: DockerLab, docker_sshd: SshServer) -> None:
    running = await asyncio.to_thread(docker_lab.app, "healthy",
                                      name=f"sock-up-{os.getpid()}")
    stopped = await asyncio.to_thread(docker_lab.app, "healthy",
                                      name=f"sock-down-{os.getpid()}")
    await asyncio.to_thread(stopped.stop)

    by_socket = prober(ctx, docker_sshd, socket=True)
    by_cli = prober(ctx, docker_sshd, socket=False)
    from_socket = await by_socket.containers()
    from_cli = await by_cli.containers()

    assert from_socket == from_cli  # every field but the raw JSON
    assert [c.raw for c in from_socket] == [c.raw for c in from_cli]
    names = {c.name: c.state_text for c in from_socket}
    assert names[running.name] == "running" and names[stopped.name].startswith("exited")
    ids = by_socket.reads[probe.DOCKER_IDS]
    assert ids.via == "Docker's socket /var/run/docker.sock, Engine API"
    assert ids.output.output == by_cli.reads[probe.DOCKER_IDS].output.output  # same order
    inspect = next(r for c, r in by_socket.reads.items() if c.startswith("docker inspect "))
    assert [c["Id"] for c in json.loads(inspect.output.output)] == ids.output.output.split()
    assert not by_socket.notes


async def test_a_socket_closed_to_the_login_user_gets_the_cli(
        ctx: ExecContext, nodocker_sshd: SshServer) -> None:
    by_socket = prober(ctx, nodocker_sshd, socket=True)
    by_cli = prober(ctx, nodocker_sshd, socket=False)

    assert await by_socket.containers() == await by_cli.containers() == []

    read = by_socket.reads[probe.DOCKER_IDS]
    assert read.via == "" and read.output.exit_status != 0  # the CLI ran, and was refused
    assert by_socket.notes == by_cli.notes
    assert "permission denied" in by_socket.notes[0].lower()
