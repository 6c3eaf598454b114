"""supervisord's status read over SSH from its unix socket (XML-RPC on a direct-streamlocal
channel of the pooled connection), instead of running `supervisorctl status` (a Python program,
about 0.3 s of the host's CPU) on the host.

Given a real supervisord with programs in every state, the status read from its socket is byte for
byte what `supervisorctl -c CONF status` prints; discovery on web01 reads it that way and says so,
and the runbook's step that takes the read diagnoses exactly as when supervisorctl runs. Whenever
the socket way does not work (the socket closed to the login user, a path that does not exist,
an sshd that refuses streams, a hostile answer), discovery runs supervisorctl as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import xmlrpc.client
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bot.discovery import discover, probe
from bot.discovery.owners import SupervisorConf, parse_supervisor_files, parse_supervisor_status
from bot.discovery.probe import Prober
from bot.discovery.supervisor_rpc import REQUEST, read_status
from bot.executors import ExecContext
from bot.inventory import load_inventory
from bot.models import Host
from bot.params import resolve_params
from bot.runbooks import load_runbook
from bot.runner import NullListener, Runner
from tests.lab import SshServer, WebLab
from tests.lab.fixtures import start_host
from tests.lab.process import LabProcess, make_world_traversable, spawn, wait_until
from tests.lab.supervisor import Supervisor

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
LONG = "a_program_whose_name_is_over_thirty_characters"
STATES = {"runs": "RUNNING", "idle": "STOPPED", "once": "EXITED", "broken": "FATAL",
          "pair:member": "RUNNING", LONG: "RUNNING"}


@dataclass
class StatusLab:
    conf: Path
    socket: Path
    process: LabProcess

    def supervisorctl(self) -> tuple[str, int]:
        """What `supervisorctl -c CONF status` prints (stdout), and its exit status."""
        done = subprocess.run(["supervisorctl", "-c", str(self.conf), "status"],
                              capture_output=True, text=True, timeout=60, check=False)
        return done.stdout, done.returncode

    def parsed(self) -> SupervisorConf:
        return parse_supervisor_files(str(self.conf), {str(self.conf): self.conf.read_text()})


@pytest.fixture(scope="module")
def status_lab(lab_dir: Path) -> Iterator[StatusLab]:
    """A supervisord of its own with a program in each state, a group member and a long name;
    its socket 0777, so that the lab user may use it."""
    root = lab_dir / f"statuses-{os.getpid()}"
    make_world_traversable(root)
    conf = root / "supervisord.conf"
    conf.write_text(f"""\
[unix_http_server]
file=%(here)s/supervisor.sock
chmod=0777

[supervisord]
nodaemon=true
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
childlogdir=%(here)s

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%(here)s/supervisor.sock

[program:runs]
command=sleep 3600

[program:idle]
command=sleep 3600
autostart=false

[program:once]
command=true
startsecs=0
autorestart=false

[program:broken]
command={root}/no-such-program
startretries=0

[program:{LONG}]
command=sleep 3600

[program:member]
command=sleep 3600

[group:pair]
programs=member
""")
    conf.chmod(0o644)
    lab = StatusLab(conf, root / "supervisor.sock",
                    spawn("supervisord (statuses)", ["supervisord", "-n", "-c", str(conf)],
                          root / "stdout.log"))
    try:
        wait_until(lab.socket.exists, 15, "the supervisord socket")
        supervisor = Supervisor(lab.socket)
        wait_until(lambda: all(supervisor.state(n) == s for n, s in STATES.items()), 20,
                   "every program in its state", interval=0.2)
        yield lab
    finally:
        lab.process.stop(timeout=15)


@pytest.fixture(scope="module")
def no_streams_host(lab_dir: Path) -> Iterator[SshServer]:
    """An sshd with `AllowStreamLocalForwarding no`."""
    server = start_host(lab_dir, "nostreams", 7, stream_local=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def ctx(known_hosts_file: Path, no_streams_host: SshServer, lab_dir: Path
              ) -> AsyncIterator[ExecContext]:
    known = lab_dir / f"socket-known-hosts-{os.getpid()}"
    known.write_text(known_hosts_file.read_text() + no_streams_host.known_hosts_line + "\n")
    context = ExecContext(known_hosts=known)
    yield context
    await context.close()


def host_of(server: SshServer) -> Host:
    return Host(server.name, server.address, server.port, server.user, str(server.key_file))


def prober(ctx: ExecContext, server: SshServer) -> Prober:
    calls = ctx.ssh.on(host_of(server))
    return Prober(calls.run, server.name, unix_request=calls.unix_request)


def command(conf: SupervisorConf) -> str:
    return f"supervisorctl -c {shlex.quote(conf.path)} status"


def states(text: str) -> dict[str, str]:
    return {name: s.state for name, s in parse_supervisor_status(text).items()}


async def test_the_socket_status_is_byte_for_byte_supervisorctls(
        ctx: ExecContext, sshd_host: SshServer, status_lab: StatusLab) -> None:
    host = host_of(sshd_host)
    for _ in range(5):  # a RUNNING line's uptime may tick between the two reads
        reply = await ctx.ssh.unix_request(host, str(status_lab.socket), REQUEST, 10)
        printed, code = await asyncio.to_thread(status_lab.supervisorctl)
        assert reply.error is None
        status = read_status(reply.data)
        if status.text == printed:
            break
    assert status.text == printed
    assert status.exit_status == code == 3  # some are stopped, exited or fatal
    assert states(status.text) == STATES
    assert f"{LONG}   RUNNING   pid " in status.text  # the column as wide as the longest name
    assert "broken" + " " * (len(LONG) - 3) + "FATAL     can't find command" in status.text


async def test_discovery_reads_the_status_from_the_socket(
        ctx: ExecContext, sshd_host: SshServer, status_lab: StatusLab) -> None:
    conf = status_lab.parsed()
    assert conf.socket == str(status_lab.socket)
    reader = prober(ctx, sshd_host)
    batches, streams = ctx.ssh.batches, ctx.ssh.streams

    found = await reader.statuses(conf)

    assert {n: s.state for n, s in found.items()} == STATES
    read = reader.reads[command(conf)]
    assert read.via == f"supervisord's socket {status_lab.socket}, XML-RPC"
    assert read.read_by == f"discovery (supervisord's socket {status_lab.socket}, XML-RPC)"
    assert read.output.exit_status == 3
    assert (ctx.ssh.batches, ctx.ssh.streams) == (batches, streams + 1)  # no command ran
    assert reader.notes == []


async def fallback(ctx: ExecContext, server: SshServer, conf: SupervisorConf,
                   why: str) -> tuple[Prober, probe.Read]:
    """The status of conf as discovery reads it, after its socket failed (`why`): the one
    supervisorctl printed on the host (over ssh, as the login user)."""
    reader = prober(ctx, server)
    batches, streams = ctx.ssh.batches, ctx.ssh.streams
    found = await reader.statuses(conf)
    read = reader.reads[command(conf)]
    assert why in reader.socket_misses[conf.path]
    assert read.via == "" and read.read_by == "discovery"
    assert ctx.ssh.streams == streams + 1  # the socket was tried
    assert ctx.ssh.batches == batches + 1  # then supervisorctl ran (a kept session may take it)
    printed = await asyncio.to_thread(server.ssh, command(conf))
    assert states(read.output.output) == states(printed.stdout + printed.stderr)
    assert {n: s.state for n, s in found.items()} == states(printed.stdout)
    return reader, read


async def test_an_sshd_that_refuses_streams_gets_supervisorctl(
        ctx: ExecContext, no_streams_host: SshServer, status_lab: StatusLab) -> None:
    reader, read = await fallback(ctx, no_streams_host, status_lab.parsed(),
                                  f"nostreams refused a stream to {status_lab.socket}: ")

    assert states(read.output.output) == STATES and read.output.exit_status == 3
    assert reader.notes == []  # supervisorctl answered: nothing to say


async def test_a_socket_closed_to_the_login_user_gets_supervisorctl(
        ctx: ExecContext, sshd_host: SshServer, status_lab: StatusLab) -> None:
    status_lab.socket.chmod(0o700)  # root's alone
    try:
        reader, read = await fallback(ctx, sshd_host, status_lab.parsed(),
                                      f"web01 refused a stream to {status_lab.socket}: ")
    finally:
        status_lab.socket.chmod(0o777)

    assert "Permission denied" in read.output.output  # what supervisorctl says, as before
    assert len(reader.notes) == 1 and "its socket: " in reader.notes[0]
    assert "refused a stream to" in reader.notes[0]


async def test_a_socket_that_does_not_exist_gets_supervisorctl(
        ctx: ExecContext, sshd_host: SshServer, status_lab: StatusLab, tmp_path: Path) -> None:
    folder = status_lab.conf.parent / "elsewhere"
    make_world_traversable(folder)
    conf = folder / "supervisord.conf"
    conf.write_text(status_lab.conf.read_text().replace(
        "serverurl=unix://%(here)s/supervisor.sock", f"serverurl=unix://{status_lab.socket}"))
    conf.chmod(0o644)
    parsed = parse_supervisor_files(str(conf), {str(conf): conf.read_text()})
    assert parsed.socket == str(status_lab.socket)
    gone = replace(parsed, socket=str(folder / "supervisor.sock"))  # as the [unix_http_server]

    reader, read = await fallback(ctx, sshd_host, gone, f"refused a stream to {gone.socket}")

    assert states(read.output.output) == STATES and reader.notes == []


def http(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


# what a socket answers -> why discovery does not take it
HOSTILE: dict[str, tuple[bytes | None, str]] = {
    "http error": (http(b"oops", "500 Internal Server Error"), "HTTP answer 'HTTP/1.0 500"),
    "not xml": (http(b"not a xml"), "not an XML-RPC answer"),
    "fault": (http(xmlrpc.client.dumps(xmlrpc.client.Fault(6, "SHUTDOWN_STATE"),
                                       methodresponse=True).encode()),
              "XML-RPC fault 6: SHUTDOWN_STATE"),
    "entities": (http(b"<?xml version='1.0'?><!DOCTYPE l [<!ENTITY a 'aaaa'>]><methodResponse>"
                      b"<params><param><value>&a;</value></param></params></methodResponse>"),
                 "a DOCTYPE or ENTITY"),
    "oversize": (http(b"<" * 3_000_000), "answered more than 1048576 bytes"),
    "cut short": (http(b"<?xml version='1.0'?>")[:-3], "not its Content-Length"),
    "closes at once": (b"", "no whole HTTP answer"),
    "silence": (None, "did not answer within 1s"),  # never answers
}


Serve = Callable[[bytes | None], Awaitable[Path]]


@pytest.fixture
async def hostile_socket(status_lab: StatusLab) -> AsyncIterator[Serve]:
    """A unix socket (0777) that answers whatever it is given to every request."""
    servers: list[asyncio.Server] = []

    async def serve(answer: bytes | None) -> Path:
        path = status_lab.conf.parent / f"hostile-{len(servers)}.sock"
        path.unlink(missing_ok=True)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            if answer is None:
                await asyncio.sleep(30)
            else:
                writer.write(answer)
                with contextlib.suppress(OSError):
                    await writer.drain()
            writer.close()

        servers.append(await asyncio.start_unix_server(handle, str(path)))
        path.chmod(0o777)
        return path

    yield serve
    for server in servers:
        server.close()


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_a_hostile_answer_gets_supervisorctl(
        ctx: ExecContext, sshd_host: SshServer, status_lab: StatusLab, kind: str,
        hostile_socket: Serve,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "SOCKET_TIMEOUT", 1.0)
    answer, why = HOSTILE[kind]
    path = await hostile_socket(answer)
    conf = replace(status_lab.parsed(), socket=str(path))

    reader, read = await fallback(ctx, sshd_host, conf, why)

    assert states(read.output.output) == STATES and reader.notes == []


async def test_the_runbook_step_takes_the_socket_read_and_diagnoses_the_same(
        ctx: ExecContext, healthy_web: WebLab, inventory_file: Path) -> None:
    """Discovery on web01 (a stopped backend) reads supervisord's status from its socket; the
    runbook's supervisorctl_status step takes that read, says how it was read, and the step
    and the diagnosis are those of the run where supervisorctl itself ran."""
    await asyncio.to_thread(healthy_web.stop_backend)
    host = load_inventory(inventory_file).hosts["web01"]
    calls = ctx.ssh.on(host)
    chain = await discover(calls.run, host.name, healthy_web.proxy_url,
                           unix_request=calls.unix_request)
    assert chain.owner is not None and chain.owner.label == \
        "supervisord program ds:docservice (STOPPED)"
    status_command = f"supervisorctl -c {healthy_web.supervisor_conf} status"
    via = f"supervisord's socket {healthy_web.supervisor_socket}, XML-RPC"
    assert chain.reads[status_command].via == via

    runbook = load_runbook(ROOT / "runbooks" / "nginx-502.yaml")
    params = resolve_params(runbook, host.opsbot_vars())
    runner = Runner(ctx)
    taken = await runner.diagnose_host(runbook, host, params, NullListener(),
                                       reads=chain.reads)
    ran = await runner.diagnose_host(runbook, host, params, NullListener())

    def step(report: object, step_id: str) -> object:
        return next(r for r in report.results if r.step.step_id == step_id)  # type: ignore

    read_step, run_step = step(taken, "supervisorctl_status"), step(ran, "supervisorctl_status")
    assert read_step.facts == {"program_state": "STOPPED", "read_by": f"discovery ({via})"}
    assert run_step.facts == {"program_state": "STOPPED"}
    assert (read_step.status, read_step.exit_status, read_step.output) == \
        (run_step.status, run_step.exit_status, run_step.output)  # STOPPED: no uptime ticks
    assert read_step.exit_status == 3
    assert [(c.cause, c.confidence) for c in taken.causes] == \
        [(c.cause, c.confidence) for c in ran.causes]
    assert taken.causes[0].cause == "upstream_down"
