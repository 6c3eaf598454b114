"""Shell sessions kept open by the SSH pool, against real sshd: reused, isolated from one run to
the next, never reused after a timeout, the cap or stray output, bounded per connection."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.executors.ssh import MAX_IDLE, MAX_SESSIONS, SshPool
from bot.inventory import load_inventory
from bot.models import ExecOutput, Host

pytestmark = pytest.mark.lab


@pytest.fixture
def host(inventory_file: Path) -> Host:
    """The lab's web01."""
    return load_inventory(inventory_file).hosts["web01"]


@pytest.fixture
async def pool(known_hosts_file: Path) -> AsyncIterator[SshPool]:
    """A pool of the test's own, closed after it."""
    pool = SshPool(known_hosts_file)
    try:
        yield pool
    finally:
        await pool.close()


async def test_runs_share_one_kept_session_in_the_login_shell(
        pool: SshPool, host: Host) -> None:
    outs = [await pool.run(host, f"echo out {i}; echo err {i} >&2; exit {i}", 10)
            for i in range(6)]
    assert [(o.exit_status, o.output, o.error) for o in outs] == \
        [(i, f"out {i}\nerr {i}\n", None) for i in range(6)]
    many = await pool.run_many(host, ["echo a", "printf b; false", "echo c >&2"], 10)
    assert [(o.exit_status, o.output) for o in many] == [(0, "a\n"), (1, "b"), (0, "c\n")]
    # the session runs the login user's shell on stdin; the marker is not in its arguments
    shell = await pool.run(host, 'echo "$SHELL"; ps -o args= -p $$', 10)
    login = pwd.getpwnam(str(host.user)).pw_shell
    assert shell.output == f"{login}\n{login} -s\n", shell
    assert (pool.connects, pool.sessions, pool.batches) == (1, 1, 8)


async def test_what_a_run_changes_ends_with_it(pool: SshPool, host: Host) -> None:
    async def run(command: str) -> ExecOutput:
        return await pool.run(host, command, 10)

    home = (await run("pwd; echo $$")).output.split()
    pid = home[1]
    changes = {  # each changes what it can, and says its status
        "cd /tmp": 0, "export X=1; Y=2": 0, "ulimit -n 64": 0, "umask 077": 0,
        "exit 3": 3, "exec true": 0, "if then fi": 2, "set -e; false; echo not here": 1,
        "trap 'echo trapped' EXIT; alias ls=false": 0, "read line; echo \"[$line]\"": 0,
    }
    for command, status in changes.items():
        out = await run(command)
        assert out.exit_status == status, (command, out)
        assert "not here" not in out.output
    assert (await run("read line; echo \"[$line]\"")).output == "[]\n"  # stdin: EOF
    assert (await run("cat; echo stdin-closed")).output == "stdin-closed\n"
    after = await run('pwd; echo "${X-unset} ${Y-unset}"; ulimit -n; umask; false; '
                      'echo "still $$"')
    assert after.output.split("\n")[:2] == [home[0], "unset unset"], after
    assert after.output.split("\n")[2] != "64" and after.output.split("\n")[3] != "0077"
    assert after.output.endswith(f"still {pid}\n") and after.exit_status == 0
    assert pool.sessions == 1
    # a command that kills the shell itself: reported, and the next run gets a new one
    killed = await run("kill -9 $$")
    assert killed.exit_status is None and killed.error and "signal KILL" in killed.error
    again = await run("echo $$")
    assert again.exit_status == 0 and again.output.strip() != pid
    assert pool.sessions == 2


async def test_a_command_killed_by_a_signal_has_no_exit_status_without_kept_sessions(
        known_hosts_file: Path, host: Host) -> None:
    """A session of its own per run (reuse_sessions off): sshd reports the signal, and asyncssh
    then gives -1 as the exit status; that is no status, and the error names the signal."""
    pool = SshPool(known_hosts_file, reuse_sessions=False)
    try:
        killed = await pool.run(host, "kill -9 $$", 10)
        assert killed.exit_status is None and killed.error and "signal KILL" in killed.error, \
            killed
        assert (await pool.run(host, "exit 3", 10)).exit_status == 3
    finally:
        await pool.close()


async def test_timeout_and_cap_stop_the_session_and_the_next_run_gets_a_new_one(
        pool: SshPool, host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.executors import capture

    monkeypatch.setattr(capture.Capture.__init__, "__kwdefaults__",
                        {"cap": 2**20, "head": 4096, "tail": 4096})
    mark = f"/tmp/opsbot-sessions-{os.getpid()}-{time.monotonic_ns()}"
    first = await pool.run(host, "echo $$", 10)
    hung = await pool.run(host, f"echo before; sleep 3; touch {mark}", 1)
    assert hung.timed_out and hung.output == "before\n" and hung.exit_status is None
    assert pool.sessions == 1  # the idle session took it, and was stopped
    after = await pool.run(host, "echo $$", 10)
    assert after.exit_status == 0 and after.output != first.output and pool.sessions == 2
    flood = await pool.run(host, "yes", 10)
    assert flood.capped and flood.error and "output cap" in flood.error
    assert (await pool.run(host, "echo fine", 10)).output == "fine\n"
    assert pool.sessions == 3
    await asyncio.sleep(3)
    gone = await pool.run(host, f"test -e {mark} && echo ran-on || echo stopped", 10)
    assert gone.output == "stopped\n"  # the timed-out command was stopped with its session


async def test_a_session_that_prints_or_dies_while_idle_is_not_reused(
        pool: SshPool, host: Host) -> None:
    # a process left behind that prints after its run ended
    left = await pool.run(host, "(sleep 0.3; echo stray) & echo $$", 10)
    assert left.exit_status == 0 and left.output.strip().isdigit()
    await asyncio.sleep(1)
    clean = await pool.run(host, "echo $$", 10)
    assert clean.output != left.output and "stray" not in clean.output
    assert pool.sessions == 2
    # the shell dies while idle: nothing was written to it, so a new one runs the command
    os.kill(int(clean.output), signal.SIGKILL)
    await asyncio.sleep(0.5)
    fresh = await pool.run(host, "echo $$", 10)
    assert fresh.exit_status == 0 and fresh.output != clean.output and pool.sessions == 3


async def test_concurrent_runs_stay_within_the_sessions_bound(
        host: Host, known_hosts_file: Path) -> None:
    pool = SshPool(known_hosts_file)
    most = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, *(e.open for e in pool._entries.values()), 0)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        outs = await asyncio.gather(*(pool.run(host, f"sleep 0.5; echo {i} $$", 10)
                                      for i in range(10)))
        stop.set()
        await watcher
        assert [o.output.split()[0] for o in outs] == [str(i) for i in range(10)]
        assert all(o.exit_status == 0 for o in outs)
        shells = {o.output.split()[1] for o in outs}
        assert len(shells) == MAX_SESSIONS == pool.sessions and most == MAX_SESSIONS
        (entry,) = pool._entries.values()
        assert len(entry.idle) == MAX_IDLE == entry.open
        again = await asyncio.gather(*(pool.run(host, "echo $$", 10) for _ in range(MAX_IDLE)))
        assert {o.output.strip() for o in again} <= shells and pool.sessions == MAX_SESSIONS
    finally:
        stop.set()
        await pool.close()
    (entry,) = pool._entries.values()
    assert entry.idle == [] and entry.open == 0


async def test_the_opt_out_opens_a_session_per_run(host: Host, known_hosts_file: Path) -> None:
    from bot.executors import ExecContext

    ctx = ExecContext(known_hosts=known_hosts_file, ssh_reuse_sessions=False)
    try:
        pids = [await ctx.ssh.run(host, "echo $$; echo err >&2", 10) for _ in range(3)]
        assert len({p.output for p in pids}) == 3 and all(p.output.endswith("\nerr\n")
                                                          for p in pids)
        many = await ctx.ssh.run_many(host, ["echo a", "exit 4"], 10)
        assert [(o.exit_status, o.output) for o in many] == [(0, "a\n"), (4, "")]
        assert ctx.ssh.sessions == 4 and ctx.ssh._entries and \
            all(e.idle == [] and e.open == 0 for e in ctx.ssh._entries.values())
    finally:
        await ctx.close()


async def test_a_cancelled_run_leaves_no_session_and_no_slot_behind(
        pool: SshPool, host: Host) -> None:
    first = await pool.run(host, "echo $$", 10)
    with pytest.raises(TimeoutError):  # e.g. the runner's backstop
        await asyncio.wait_for(pool.run(host, "sleep 2; echo late", 30), 0.5)
    (entry,) = pool._entries.values()
    assert entry.open == 0 and entry.idle == []
    after = await pool.run(host, "sleep 2.5; echo $$", 10)
    assert after.output != first.output and "late" not in after.output
    # cancelled while waiting for a slot: the others go on, the slots add up
    busy = [asyncio.create_task(pool.run(host, "sleep 1; echo busy", 10))
            for _ in range(MAX_SESSIONS)]
    await asyncio.sleep(0.3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.run(host, "echo waiting", 10), 0.2)
    assert [(await b).output for b in busy] == ["busy\n"] * MAX_SESSIONS
    assert (await pool.run(host, "echo fine", 10)).output == "fine\n"
    assert (entry.open, len(entry.idle), entry.waiters) == (MAX_IDLE, MAX_IDLE, [])


async def test_a_host_allowing_few_sessions_gets_fewer_not_a_new_connection(
        lab_dir: Path) -> None:
    """A hardened sshd (`MaxSessions 2`) refuses a third session on the connection: the pool
    keeps at most what the host allows (runs wait for a session) instead of taking the refusal
    for a dead connection and opening another."""
    from tests.lab.fixtures import start_host

    server = start_host(lab_dir, "fewsessions", 8, max_sessions=2)
    known = lab_dir / f"fewsessions-known-hosts-{os.getpid()}"
    known.write_text(server.known_hosts_line + "\n")
    host = Host(server.name, server.address, server.port, server.user, str(server.key_file))
    pool = SshPool(known)
    try:
        outs = await asyncio.gather(*(pool.run(host, f"sleep 0.3; echo {i}", 20)
                                      for i in range(6)))
        assert [(o.exit_status, o.output, o.error) for o in outs] == \
            [(0, f"{i}\n", None) for i in range(6)]
        (entry,) = pool._entries.values()
        assert pool.connects == 1 and entry.limit == 2 and pool.sessions == 2
        again = await asyncio.gather(*(pool.run(host, "echo again", 20) for _ in range(4)))
        assert all(o.output == "again\n" for o in again) and pool.connects == 1
        assert pool.sessions == 2
    finally:
        await pool.close()
        server.stop()
