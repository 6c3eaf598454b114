"""`ssh` steps over libssh2 (OPSBOT_SSH_CLIENT=libssh2) against real sshd: the host key refused
when unknown, changed, revoked or unpinned; timeouts, the output cap, exit status and signals,
an unreachable host, a refused login; one connection per host; the event loop never blocked."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from ssh2.error_codes import LIBSSH2_ERROR_EAGAIN
from ssh2.session import Session

from bot.executors import libssh2
from bot.executors.libssh2 import Libssh2Client
from bot.models import ExecOutput, Host
from tests.lab.fixtures import start_host
from tests.lab.process import make_world_traversable
from tests.lab.sshd import SshServer

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def as_host(server: SshServer, **changes: object) -> Host:
    host = Host(server.name, server.address, server.port, server.user, str(server.key_file))
    return Host(**{**host.__dict__, **changes})  # type: ignore[arg-type]


@pytest.fixture
async def client(known_hosts_file: Path) -> AsyncIterator[Libssh2Client]:
    client = Libssh2Client(known_hosts_file, connect_timeout=3)
    try:
        yield client
    finally:
        await client.close()


async def test_exit_status_stderr_and_one_connection_per_host(
        client: Libssh2Client, sshd_host: SshServer, sshd_host2: SshServer) -> None:
    web01, web02 = as_host(sshd_host), as_host(sshd_host2)
    outs = await asyncio.gather(*(client.run(h, f"echo out {i}; echo err {i} >&2; exit {i}", 10)
                                  for i, h in enumerate([web01, web02, web01, web02])))
    assert [(o.exit_status, o.output, o.error) for o in outs] == [
        (i, f"out {i}\nerr {i}\n", None) for i in range(4)]
    assert client.connects == 2 and client.sessions == 4  # a session each
    out = await client.run(web01, "command -v nginx; id -un", 10)  # PATH has /usr/sbin
    assert out.output.split() == ["/usr/sbin/nginx", sshd_host.user], out
    out = await client.run(web01, "sh -c 'kill -TERM $$'", 10)  # a signal: 128 + n, from $?
    assert (out.exit_status, out.error) == (143, None)
    out = await client.run(web01, "echo before; kill -KILL $$", 10)  # the whole session killed
    assert out.exit_status is None and out.output == "before\n" and out.error == (
        "the session on web01 ended before the command told its exit status (killed by a "
        "signal, or the connection lost); it was not retried")
    assert (await client.run(web01, "exit 0", 10)).exit_status == 0
    assert client.connects == 2


async def test_a_batch_tells_each_command_as_it_ends(
        client: Libssh2Client, sshd_host: SshServer) -> None:
    seen: list[str] = []
    outs: dict[int, ExecOutput] = {}

    async def started(i: int) -> None:
        seen.append(f"start {i}")

    async def finished(i: int, out: ExecOutput, seconds: float) -> None:
        seen.append(f"end {i}")
        outs[i] = out

    await client.run_batch(as_host(sshd_host), [("echo a", 10), ("sleep 5", 1), ("echo c", 10)],
                           started, finished)
    assert seen == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
    assert outs[0].output == "a\n" and outs[2].output == "c\n" and outs[2].exit_status == 0
    assert outs[1].timed_out and outs[1].error == "timed out after 1s"


async def test_a_command_past_its_timeout_is_stopped_and_keeps_its_output(
        client: Libssh2Client, sshd_host: SshServer) -> None:
    marker = f"/tmp/opsbot-l2-timeout-{time.monotonic_ns()}"
    started = time.monotonic()
    out = await client.run(as_host(sshd_host), f"echo partial; sleep 3; touch {marker}", 1)
    assert time.monotonic() - started < 2.5
    assert out.timed_out and out.output == "partial\n" and out.exit_status is None
    await asyncio.sleep(3)
    assert not Path(marker).exists()  # killed, not left running


async def test_a_flood_of_output_is_capped_and_the_command_stopped(
        client: Libssh2Client, sshd_host: SshServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.executors import capture

    monkeypatch.setattr(capture.Capture.__init__, "__kwdefaults__",
                        {"cap": 3 * 2**20, "head": 4096, "tail": 4096})
    marker = f"/tmp/opsbot-l2-cap-{time.monotonic_ns()}"
    out = await client.run(as_host(sshd_host), "seq 1 100000000 | awk '{printf \"%07d\\n\", $1}'"
                           f"; touch {marker}", 60)
    assert out.capped and out.total_bytes == 3 * 2**20 and out.exit_status is None
    assert out.error == f"stopped: printed more than {3 * 2**20} bytes (the output cap)"
    assert out.output.startswith("0000001\n") and "bytes cut" in out.output
    expected = b"".join(b"%07d\n" % i for i in range(1, 3 * 2**20 // 8 + 2))[:3 * 2**20]
    assert out.digest == hashlib.sha256(expected).hexdigest()
    await asyncio.sleep(1)
    assert not Path(marker).exists()
    assert (await client.run(as_host(sshd_host), "echo next", 10)).output == "next\n"


async def test_unknown_changed_revoked_or_unpinned_host_keys_are_refused(
        tmp_path: Path, sshd_host: SshServer, sshd_host2: SshServer) -> None:
    web01 = as_host(sshd_host)
    own_key = sshd_host.host_key_pub
    other_key = sshd_host2.host_key_pub
    files = {
        "changed": f"[{web01.address}]:{web01.port} {other_key}\n",
        "unknown": f"{sshd_host2.known_hosts_line}\n",
        "other host": f"[web01.example.org]:{web01.port},!{web01.address} {own_key}\n",
        "revoked": f"{sshd_host.known_hosts_line}\n@revoked * {own_key}\n",
        "unreadable": f"{sshd_host.known_hosts_line}\nnot a known_hosts line\n",
        "missing": None,
    }
    for why, text in files.items():
        path = tmp_path / why.replace(" ", "-")
        if text is not None:
            path.write_text(text)
        marker = f"/tmp/opsbot-l2-ran-{time.monotonic_ns()}"
        client = Libssh2Client(path, connect_timeout=3)
        out = await client.run(web01, f"touch {marker}", 10)
        await client.close()
        assert out.exit_status is None and out.error, why
        assert out.error.startswith(f"host key of web01 ({web01.address}:{web01.port}) not "
                                    f"verified against {path}: "), (why, out.error)
        assert out.error.endswith("; nothing was run") and "\n" not in out.error
        assert not Path(marker).exists(), why
    hashed = tmp_path / "hashed"  # OpenSSH's hashed names (ssh-keygen -H) are matched
    hashed.write_text(f"{sshd_host.known_hosts_line}\n")
    await asyncio.to_thread(subprocess.run, ["ssh-keygen", "-q", "-H", "-f", str(hashed)],
                            check=True, capture_output=True)
    assert web01.address not in hashed.read_text()
    client = Libssh2Client(hashed, connect_timeout=3)
    assert (await client.run(web01, "echo trusted", 10)).output == "trusted\n"
    await client.close()


async def test_an_unreachable_host_or_a_refused_login_is_told_and_the_others_run(
        client: Libssh2Client, sshd_host: SshServer) -> None:
    web01 = as_host(sshd_host)
    ghost = as_host(sshd_host, name="ghost", address="127.0.0.9")
    stranger = as_host(sshd_host, user="nobody-here")
    started = time.monotonic()
    outs = await asyncio.gather(client.run(ghost, "true", 10), client.run(web01, "echo up", 10),
                                client.run(stranger, "true", 10))
    assert time.monotonic() - started < 5
    assert outs[0].error and outs[0].error.startswith("cannot reach ghost at 127.0.0.9:")
    assert outs[1].output == "up\n" and outs[1].exit_status == 0
    assert outs[2].error == (f"SSH login to nobody-here@{web01.address}:{web01.port} was "
                             "refused (check ansible_user and the key)")


async def test_a_silent_host_times_out_within_the_connect_timeout(
        tmp_path: Path, sshd_host: SshServer) -> None:
    silent = socket.socket()  # accepts TCP, never says a word of SSH
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {sshd_host.host_key_pub}\n")
    client = Libssh2Client(known, connect_timeout=1)
    ticks = 0

    async def ticker() -> None:  # the loop keeps running while libssh2 waits
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    beat = asyncio.create_task(ticker())
    try:
        out = await client.run(as_host(sshd_host, name="mute", address="127.0.0.1", port=port),
                               "true", 10)
    finally:
        beat.cancel()
        silent.close()
        await client.close()
    assert out.error == f"cannot reach mute at 127.0.0.1:{port}: no SSH answer within 1s"
    assert ticks >= 10  # 20 on an idle machine (13 seen at load 20); a blocked loop gives 0-1


def test_opsbot_run_over_libssh2_never_imports_asyncssh(
        tmp_path: Path, known_hosts_file: Path, sshd_host: SshServer) -> None:
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks/uptime.yaml").write_text(yaml.safe_dump({
        "name": "uptime", "title": "Uptime", "steps": [
            {"id": "up", "title": "Up", "kind": "ssh", "command": "echo up; exit 4"}]}))
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(
        {"all": {"hosts": {"web01": sshd_host.inventory_vars()}}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OPSBOT_", "SLACK_"))},
           "OPSBOT_RUNBOOKS": str(tmp_path / "runbooks"),
           "OPSBOT_INVENTORY": str(tmp_path / "inventory.yaml"),
           "OPSBOT_KNOWN_HOSTS": str(known_hosts_file), "OPSBOT_DB": str(tmp_path / "db"),
           "OPSBOT_SSH_CLIENT": "libssh2", "PYTHONPATH": str(ROOT)}
    code = ("import sys; from bot.cli import main\n"
            "status = main(['run', 'uptime', 'web01', '--json'])\n"
            "print('asyncssh' in sys.modules, status, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.stderr.splitlines()[-1] == "False 0", done.stderr[-2000:]
    report = json.loads(done.stdout)
    step = report["hosts"][0]["steps"][0]
    assert (step["exit_status"], step["error"]) == (4, None), report


async def test_output_that_comes_with_the_session_end_is_never_lost(
        client: Libssh2Client, sshd_host: SshServer, sshd_host2: SshServer) -> None:
    # a short command's output, its status and the session's end often arrive in one read
    hosts = [as_host(sshd_host), as_host(sshd_host2)]
    outs = await asyncio.gather(*(client.run(hosts[i % 2], f"echo {i}; exit {i % 7}", 10)
                                  for i in range(60)))
    assert [(o.output, o.exit_status, o.error) for o in outs] == [
        (f"{i}\n", i % 7, None) for i in range(60)]


@pytest.fixture(scope="module")
def no_streams(lab_dir: Path) -> Iterator[SshServer]:
    """An sshd with `AllowStreamLocalForwarding no`."""
    server = start_host(lab_dir, "nostreams", 8, stream_local=False)
    yield server
    server.stop()


@pytest.fixture
def answering_socket(lab_dir: Path) -> Iterator[Path]:
    """A unix socket on the host that answers `pong: <request>` (then 2 MB more after
    `flood`), then closes; open to the lab user."""
    folder = lab_dir / f"sock-{time.monotonic_ns()}"
    make_world_traversable(folder)
    path = folder / "answer.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    path.chmod(0o777)
    server.listen()

    def answer(peer: socket.socket) -> None:
        with peer, contextlib.suppress(OSError):  # a reader that stopped early
            request = peer.recv(1024)
            peer.sendall(b"pong: " + request + (b"x" * 2**21 if b"flood" in request else b""))

    def serve() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=answer, args=(peer,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield path
    server.close()


async def test_a_unix_socket_on_the_host_answers_through_the_connection(
        client: Libssh2Client, sshd_host: SshServer, answering_socket: Path,
        no_streams: SshServer, tmp_path: Path) -> None:
    web01 = as_host(sshd_host)
    reply = await client.unix_request(web01, str(answering_socket), b"ping", 10)
    assert (reply.data, reply.error) == (b"pong: ping", None)
    reply = await client.unix_request(web01, str(answering_socket), b"flood", 10, limit=1000)
    assert len(reply.data) == 1000 and reply.error == f"{answering_socket} answered more than " \
        "1000 bytes"
    reply = await client.unix_request(web01, "/nonexistent/x.sock", b"ping", 10)
    assert reply.data == b"" and reply.error and reply.error.startswith(
        "web01 refused a stream to /nonexistent/x.sock: ")
    assert client.connects == 1 and client.streams == 3
    assert (await client.run(web01, "echo still", 10)).output == "still\n"  # same connection
    known = tmp_path / "known_hosts"
    known.write_text(f"{no_streams.known_hosts_line}\n")
    refusing = Libssh2Client(known, connect_timeout=3)
    reply = await refusing.unix_request(as_host(no_streams), str(answering_socket), b"ping", 10)
    await refusing.close()
    assert reply.error and reply.error.startswith(
        f"nostreams refused a stream to {answering_socket}: ")
    calls = client.on(web01)  # what discovery is given
    assert (await calls.run_many(["echo a", "exit 3"], 10))[1].exit_status == 3
    reply = await calls.unix_request(str(answering_socket), b"x", 10)
    assert reply.data == b"pong: x", reply


async def test_a_cancelled_run_leaves_the_next_one_a_sound_connection(
        client: Libssh2Client, sshd_host: SshServer) -> None:
    web01 = as_host(sshd_host)
    assert (await client.run(web01, "echo first", 10)).output == "first\n"
    with pytest.raises(TimeoutError):  # as the runner's backstop cancels a step
        await asyncio.wait_for(client.run(web01, "sleep 5", 10), 0.5)
    out = await client.run(web01, "echo next", 10)
    assert (out.output, out.exit_status) == ("next\n", 0)
    assert client.connects == 2  # the cancelled one's connection was not trusted again


class _HeldUpChannel:
    """A session (channel) whose reader is held up once, right after a read found nothing
    yet, as a busy machine preempts a process: meanwhile the host's output and the session's
    end arrive. Everything else is the real libssh2 channel."""

    def __init__(self, channel: object) -> None:
        self._channel, self._held = channel, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._channel, name)

    def read(self, size: int = 1024) -> tuple[int, bytes]:
        size_read, data = self._channel.read(size)  # type: ignore[attr-defined]
        if size_read == LIBSSH2_ERROR_EAGAIN and not self._held:
            self._held = True
            time.sleep(0.3)
        return size_read, data


class _HeldUpSession(Session):
    def open_session(self) -> object:
        channel = super().open_session()
        return channel if isinstance(channel, int) else _HeldUpChannel(channel)

    def direct_streamlocal_ex(self, *args: object) -> object:
        channel = super().direct_streamlocal_ex(*args)
        return channel if isinstance(channel, int) else _HeldUpChannel(channel)


async def test_output_taken_in_while_the_reader_was_held_up_is_read_at_once(
        client: Libssh2Client, sshd_host: SshServer, answering_socket: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # libssh2 takes every packet that came into its own buffer on any read: whatever arrived
    # while the reader was held up is there, the socket quiet; nothing may wait on the socket
    # for it (that run would wait until its timeout: it once cost a test 30 s)
    monkeypatch.setattr(libssh2, "Session", _HeldUpSession)
    web01 = as_host(sshd_host)
    started = time.monotonic()
    out = await client.run(web01, "echo held; exit 3", 5)
    assert (out.output, out.exit_status, out.error) == ("held\n", 3, None)
    reply = await client.unix_request(web01, str(answering_socket), b"held", 5)
    assert (reply.data, reply.error) == (b"pong: held", None)
    assert time.monotonic() - started < 3


async def test_without_a_key_file_the_users_own_keys_are_tried(
        client: Libssh2Client, sshd_host: SshServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # as asyncssh does by default: ~/.ssh/id_ed25519, id_ecdsa, id_rsa, each that exists
    web01 = as_host(sshd_host, key_file=None)
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    out = await client.run(web01, "true", 10)
    assert out.error == (f"SSH login to {web01.user}@{web01.address}:{web01.port} was refused "
                         "(check ansible_user and the key)")
    own = tmp_path / "home/.ssh"
    own.mkdir(parents=True)
    await asyncio.to_thread(subprocess.run, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                                             "-f", str(own / "id_ed25519")], check=True)
    (own / "id_ecdsa").write_bytes(sshd_host.key_file.read_bytes())  # the one the host knows
    (own / "id_ecdsa").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    client = Libssh2Client(client.known_hosts, connect_timeout=3)
    try:
        out = await client.run(web01, "echo mine", 10)
    finally:
        await client.close()
    assert (out.output, out.exit_status) == ("mine\n", 0), out
