"""Hosts that misbehave, for real on loopback: a refused port, a port that accepts and never
speaks SSH, an sshd stopped with SIGSTOP (before and after the pool connected), a command that
hangs, 100 MB of output, a host key that changes in the middle of an incident. Each is one clear
failed step within its timeout; the other host goes on; the pool recovers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.executors import ExecContext
from bot.inventory import load_inventory
from bot.models import Host, StepStatus
from bot.runbooks import Runbook, load_runbook
from bot.runner import NullListener, Runner
from tests.lab import free_port
from tests.lab.sshd import SshServer, start_sshd

pytestmark = pytest.mark.lab
CONNECT_TIMEOUT = 2.0


def web01(inventory_file: Path) -> Host:
    return load_inventory(inventory_file).hosts["web01"]


def free_address() -> str:
    """A loopback address of 127.0.200-250.x whose port 2222 is free."""
    for third in range(200, 250):
        address = f"127.0.{third}.{os.getpid() % 200 + 20}"
        with socket.socket() as s:
            try:
                s.bind((address, 2222))
            except OSError:
                continue
            return address
    raise AssertionError("no free loopback address for a test sshd")


@pytest.fixture
def own_sshd(lab_dir: Path) -> Iterator[SshServer]:
    """An sshd of this test alone (it gets stopped, frozen and replaced)."""
    server = start_sshd(lab_dir / f"misbehaving-{os.getpid()}-{time.monotonic_ns()}",
                        address=free_address(), port=2222, name="web03")
    yield server
    signal_tree(server.process.pid, signal.SIGCONT)
    server.process.stop()


@pytest.fixture
def known_hosts(tmp_path: Path, known_hosts_file: Path, own_sshd: SshServer) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts_file.read_text() + own_sshd.known_hosts_line + "\n")
    return path


@pytest.fixture
async def ctx(known_hosts: Path) -> AsyncIterator[ExecContext]:
    context = ExecContext(known_hosts=known_hosts, connect_timeout=CONNECT_TIMEOUT)
    yield context
    await context.close()


def signal_tree(pid: int, sig: int) -> None:
    """Signal sshd and its per-connection children (the pooled connection is served by one)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            os.kill(current, sig)
        except ProcessLookupError:
            pass


def host_of(server: SshServer, inventory_file: Path) -> Host:
    return Host("web03", server.address, server.port, server.user, str(server.key_file))


def runbook(tmp_path: Path, *commands: str, timeout: float = 3) -> Runbook:
    steps = "".join(f"  - id: s{i}\n    kind: ssh\n    timeout: {timeout}\n    command: {c!r}\n"
                    for i, c in enumerate(commands))
    path = tmp_path / "rb.yaml"
    path.write_text(f"name: misbehaving\nsteps:\n{steps}")
    return load_runbook(path)


async def test_refused_and_silent_ports_fail_fast_while_the_other_host_goes_on(
        tmp_path: Path, ctx: ExecContext, inventory_file: Path) -> None:
    good = web01(inventory_file)
    refused = Host("refused", "127.0.0.1", free_port(), good.user, good.key_file)
    silent_socket = socket.socket()
    silent_socket.bind(("127.0.0.1", 0))
    silent_socket.listen(5)  # the kernel accepts; nobody ever says a word
    silent = Host("silent", "127.0.0.1", silent_socket.getsockname()[1], good.user,
                  good.key_file)
    rb = runbook(tmp_path, "echo one", "echo two")
    started = time.monotonic()
    reports = await Runner(ctx).diagnose(rb, [(good, {}), (refused, {}), (silent, {})],
                                         NullListener())
    elapsed = time.monotonic() - started
    silent_socket.close()
    ok, no, mute = reports
    assert [r.status for r in ok.results] == [StepStatus.OK, StepStatus.OK]
    assert all(r.status is StepStatus.ERROR for r in no.results + mute.results)
    assert no.results[0].error.startswith(f"cannot reach refused at 127.0.0.1:{refused.port}")
    assert "no SSH answer within 2s" in mute.results[0].error
    assert elapsed < 2 * (CONNECT_TIMEOUT + 1) + 3  # each step bounded by the connect timeout


async def test_sigstopped_sshd_times_out_others_go_on_and_the_pool_recovers(
        tmp_path: Path, ctx: ExecContext, own_sshd: SshServer, inventory_file: Path) -> None:
    frozen, good = host_of(own_sshd, inventory_file), web01(inventory_file)
    assert (await ctx.ssh.run(frozen, "echo warm", 5)).output == "warm\n"  # pooled now
    signal_tree(own_sshd.process.pid, signal.SIGSTOP)
    try:
        rb = runbook(tmp_path, "echo a", "echo b", timeout=2)
        started = time.monotonic()
        stuck, fine = await Runner(ctx).diagnose(rb, [(frozen, {}), (good, {})],
                                                 NullListener())
        elapsed = time.monotonic() - started
        assert [r.status for r in fine.results] == [StepStatus.OK, StepStatus.OK]
        first, second = stuck.results
        # on the pooled connection: the step's own timeout; then a new connection: the
        # connect timeout. Both one line, neither hangs the run.
        assert first.status is StepStatus.TIMEOUT and "stopped answering" in first.error
        assert second.status is StepStatus.ERROR and "no SSH answer" in second.error
        assert elapsed < 2 + 2 + CONNECT_TIMEOUT + 5
    finally:
        signal_tree(own_sshd.process.pid, signal.SIGCONT)
    out = await ctx.ssh.run(frozen, "echo back", 10)
    assert out.output == "back\n", out.error


async def test_hung_command_and_100_mb_of_output_are_bounded(
        tmp_path: Path, ctx: ExecContext, inventory_file: Path) -> None:
    host = web01(inventory_file)
    started = time.monotonic()
    hung_rb = runbook(tmp_path, "echo before; sleep 600", timeout=2)
    (hung,) = await Runner(ctx).diagnose(hung_rb, [(host, {})], NullListener())
    assert hung.results[0].status is StepStatus.TIMEOUT
    assert hung.results[0].output.startswith("before")
    assert time.monotonic() - started < 2 + 5
    big_rb = runbook(tmp_path, "head -c 100000000 /dev/zero | tr '\\0' x; echo; echo done",
                     "echo after", timeout=120)
    started = time.monotonic()
    (report,) = await Runner(ctx).diagnose(big_rb, [(host, {})], NullListener())
    big, after = report.results
    assert time.monotonic() - started < 120
    assert big.truncated and len(big.output) <= 20_000  # the thread and the store get a bound
    assert big.output_bytes >= 1_000_000  # the size is said, whether or not capped on read
    assert after.status is StepStatus.OK and after.output == "after\n"


async def test_host_key_changing_mid_incident_is_refused_and_others_go_on(
        tmp_path: Path, ctx: ExecContext, own_sshd: SshServer, inventory_file: Path,
        lab_dir: Path) -> None:
    host, good = host_of(own_sshd, inventory_file), web01(inventory_file)
    assert (await ctx.ssh.run(host, "echo first", 5)).output == "first\n"
    # the machine is replaced: same address, a new host key (its connections go with it)
    signal_tree(own_sshd.process.pid, signal.SIGKILL)
    own_sshd.process.stop()
    for key in own_sshd.workdir.glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(own_sshd.workdir / "known_hosts", ignore_errors=True)
    replaced = start_sshd(own_sshd.workdir.parent, address=own_sshd.address, port=own_sshd.port,
                          name="web03")
    try:
        assert replaced.host_key_pub != own_sshd.host_key_pub
        rb = runbook(tmp_path, "touch /tmp/opsbot-must-not-run-$$", "echo b")
        swapped, fine = await Runner(ctx).diagnose(rb, [(host, {}), (good, {})], NullListener())
        assert [r.status for r in fine.results] == [StepStatus.OK, StepStatus.OK]
        for result in swapped.results:
            assert result.status is StepStatus.ERROR
            assert "host key of web03" in result.error and "nothing was run" in result.error
    finally:
        replaced.process.stop()


async def test_a_held_connection_is_not_closed_as_idle(
        ctx: ExecContext, inventory_file: Path) -> None:
    """What Docker over SSH relies on: while held, the idle timer cannot close the pooled
    connection (a `docker restart` can outlast OPSBOT_SSH_IDLE)."""
    from bot.executors.ssh import SshPool

    pool = SshPool(ctx.known_hosts, idle=0.2, connect_timeout=CONNECT_TIMEOUT)
    host = web01(inventory_file)
    await pool.run(host, "true", 5)
    async with pool.hold(host):
        conn = await pool.connection(host)
        await asyncio.sleep(0.6)  # three idle periods
        assert not conn.is_closed()
        done = await conn.run("echo still here", check=False)
        assert done.stdout == "still here\n"
    await asyncio.sleep(0.6)
    assert conn.is_closed()  # released: idle close works again
    await pool.close()


async def test_a_host_dying_mid_run_is_one_error_and_the_next_run_reconnects(
        ctx: ExecContext, own_sshd: SshServer, inventory_file: Path) -> None:
    host = host_of(own_sshd, inventory_file)
    assert (await ctx.ssh.run(host, "echo warm", 5)).output == "warm\n"  # a kept session now

    async def kill_soon() -> None:
        await asyncio.sleep(0.5)
        signal_tree(own_sshd.process.pid, signal.SIGKILL)  # sshd, its sessions, the command

    killing = asyncio.create_task(kill_soon())
    out = await ctx.ssh.run(host, "echo started; sleep 5", 10)
    await killing
    assert out.exit_status is None and out.output == "started\n"
    assert out.error and out.error.startswith("SSH connection to web03 lost while the command ran")
    assert out.error.endswith("not retried")
    own_sshd.process.stop()
    back = start_sshd(own_sshd.workdir.parent, address=own_sshd.address, port=own_sshd.port,
                      name="web03")  # the same host key
    try:
        again = await ctx.ssh.run(host, "echo back", 10)
        assert again.output == "back\n", again.error
        assert (ctx.ssh.connects, ctx.ssh.sessions) == (2, 2)
    finally:
        back.process.stop()
