"""Discovery over SSH on a host laid out unlike OnlyOffice (tests/lab/field.py): given only the
host's connection variables and the URL that fails, the chain names nginx's server and location,
the upstream, who listens (or nobody), and the supervisord program or Docker container behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bot.discovery import Chain, discover
from bot.executors import ExecContext
from bot.models import ExecOutput, Host
from tests.lab import SshServer, free_port
from tests.lab.docker import DockerLab
from tests.lab.field import FieldLab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def host_of(server: SshServer) -> Host:
    return Host(server.name, server.address, server.port, server.user, str(server.key_file))


@pytest.fixture(scope="module")
async def ctx(known_hosts_file: Path, docker_known_hosts: Path, lab_dir: Path
              ) -> AsyncIterator[ExecContext]:
    both = lab_dir / "discovery_known_hosts"
    both.write_text(known_hosts_file.read_text() + docker_known_hosts.read_text())
    context = ExecContext(known_hosts=both)
    yield context
    await context.close()


async def chain_on(ctx: ExecContext, server: SshServer, url: str) -> Chain:
    host = host_of(server)

    async def run(command: str, timeout: float) -> ExecOutput:
        return await ctx.ssh.run(host, command, timeout)

    return await discover(run, host.name, url)


async def test_running_program_behind_an_upstream_block(field: FieldLab, ctx: ExecContext,
                                                        sshd_host: SshServer) -> None:
    chain = await chain_on(ctx, sshd_host, field.url)

    assert chain.text() == (
        f"localhost:{field.port} (server localhost) location / → proxy_pass http://myapp_pool"
        f" → upstream myapp_pool (127.0.0.1:{field.app_port}) → 127.0.0.1:{field.app_port} "
        f"listening (python3 pid {chain.listener_pid}) → supervisord program myapp (RUNNING)")
    assert chain.route is not None and chain.route.server.file == str(field.site_conf)
    assert chain.nginx_conf == str(field.nginx_conf)
    params = chain.params()
    assert params == {
        "proxy_url": field.url, "nginx_conf": str(field.nginx_conf),
        "nginx_error_log": str(field.error_log), "upstream_host": "127.0.0.1",
        "upstream_port": field.app_port,
        "health_url": f"http://127.0.0.1:{field.app_port}/healthcheck",
        "deployment": "supervisord", "program": "myapp",
        "supervisor_conf": str(field.supervisor_conf),
        "supervisor_log": str(field.root / "supervisor" / "supervisord.log"),
        "app_log": str(field.app_log), "app_err_log": str(field.root / "myapp" / "app.err"),
        "dependencies": ""}
    assert chain.owner is not None and chain.owner.pid == chain.listener_pid


async def test_stopped_program_is_who_should_listen(field: FieldLab, ctx: ExecContext,
                                                    sshd_host: SshServer) -> None:
    await asyncio.to_thread(field.stop_app)

    chain = await chain_on(ctx, sshd_host, field.url)

    assert chain.text().endswith(f"→ nothing listens on 127.0.0.1:{field.app_port} → "
                                 "supervisord program myapp (STOPPED)")
    assert chain.listening is False and chain.params()["program"] == "myapp"


async def test_crash_loop_names_the_program_fatal(field: FieldLab, ctx: ExecContext,
                                                  sshd_host: SshServer) -> None:
    await asyncio.to_thread(field.crashloop)

    chain = await chain_on(ctx, sshd_host, field.url)

    assert chain.text().endswith(f"nothing listens on 127.0.0.1:{field.app_port} → "
                                 f"supervisord program myapp ({field.state()})")
    assert field.state() in ("BACKOFF", "FATAL")
    assert chain.dependencies() == []  # nothing in its command or environment names one


async def test_unix_socket_upstream(field: FieldLab, ctx: ExecContext,
                                    sshd_host: SshServer) -> None:
    chain = await chain_on(ctx, sshd_host, field.sock_url)

    assert chain.text() == (
        f"localhost:{field.port} (server localhost) location /sock/ → proxy_pass "
        f"http://unix:{field.socket}:/ → unix:{field.socket} listening (owner not visible to "
        "the SSH user) → supervisord program sockapp (RUNNING)")
    params = chain.params()
    assert params["upstream_socket"] == str(field.socket)
    assert params["health_url"] == "http://localhost/healthcheck"  # the location's prefix cut


async def test_wrong_upstream_port_points_at_the_namesake(field: FieldLab, ctx: ExecContext,
                                                          sshd_host: SshServer) -> None:
    port = await asyncio.to_thread(field.wrong_port)

    chain = await chain_on(ctx, sshd_host, field.url)

    assert chain.text().endswith(
        f"upstream myapp_pool (127.0.0.1:{port}) → nothing listens on 127.0.0.1:{port} → "
        "nothing is configured to listen there → but supervisord program myapp (RUNNING) "
        f"listens on 127.0.0.1:{field.app_port}: nginx points elsewhere")
    assert chain.owner is None
    params = chain.params()
    assert (params["program"], params["upstream_port"]) == ("myapp", field.app_port)
    assert params["health_url"] == f"http://127.0.0.1:{field.app_port}/healthcheck"


async def test_a_url_no_server_listens_on(field: FieldLab, ctx: ExecContext,
                                          sshd_host: SshServer) -> None:
    chain = await chain_on(ctx, sshd_host, f"http://localhost:{field.app_port}/x")

    assert "no nginx server found" in chain.text()


async def test_docker_container_behind_a_variable(field: FieldLab, ctx: ExecContext,
                                                  docker_lab: DockerLab,
                                                  docker_sshd: SshServer) -> None:
    name = f"field-api-{os.getpid()}"
    app = await asyncio.to_thread(docker_lab.app, "healthy", name=name)
    await asyncio.to_thread(field.set_api_port, app.port)
    await asyncio.to_thread(field.wait_status, 200, field.api_url)

    running = await chain_on(ctx, docker_sshd, field.api_url)
    await asyncio.to_thread(app.stop)
    stopped = await chain_on(ctx, docker_sshd, field.api_url)

    assert running.text() == (
        f"localhost:{field.port} (server localhost) location ~ ^/api/ → proxy_pass "
        f"http://127.0.0.1:{app.port} → 127.0.0.1:{app.port} listening (owner not visible to "
        f"the SSH user) → Docker container {name} (running)")
    assert running.params()["health_url"] == f"http://127.0.0.1:{app.port}/healthcheck"
    assert stopped.text().endswith(f"nothing listens on 127.0.0.1:{app.port} → Docker container"
                                   f" {name} (exited (0))")
    assert stopped.params()["container"] == name
    assert stopped.params()["deployment"] == "docker"


@pytest.mark.parametrize("client", ["asyncssh", "libssh2"])  # OPSBOT_SSH_CLIENT
async def test_opsbot_discover_command(field: FieldLab, sshd_host: SshServer,
                                       known_hosts_file: Path, tmp_path: Path,
                                       client: str) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"edge01": {
        "ansible_host": sshd_host.address, "ansible_port": sshd_host.port,
        "ansible_user": sshd_host.user,
        "ansible_ssh_private_key_file": str(sshd_host.key_file)}}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env.update({"OPSBOT_DB": str(tmp_path / "o.db"), "OPSBOT_INVENTORY": str(inventory),
                "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"),
                "OPSBOT_KNOWN_HOSTS": str(known_hosts_file), "OPSBOT_SSH_CLIENT": client})

    async def opsbot(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "discover", *args, env=env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, text = await opsbot("edge01", "--url", field.url)
    assert code == 0, text
    assert text.startswith(f"edge01: localhost:{field.port} (server localhost) location / → ")
    assert "supervisord program myapp (RUNNING)" in text
    assert f"  log: {field.app_log}" in text

    code, out = await opsbot("edge01", "--url", field.sock_url, "--json")
    data = json.loads(out)
    assert code == 0
    assert data["owner"]["name"] == "sockapp" and data["nginx"]["pass"] == "proxy_pass"
    assert data["address"] == f"unix:{field.socket}"

    code, out = await opsbot("edge01", "--url", "file:///etc/passwd")
    assert code != 0 and out.count("\n") == 1 and "parameter url" in out


async def test_a_plain_process_the_ssh_user_started(field: FieldLab, ctx: ExecContext,
                                                    sshd_host: SshServer) -> None:
    port = free_port()
    user = pwd.getpwnam(sshd_host.user)  # its uid and gid: ss -p shows its pid to that user
    backend = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
        "/usr/bin/python3", str(ROOT / "tests/lab/backend.py"), "--port",
        str(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.to_thread(field.set_api_port, port)
        await asyncio.to_thread(field.wait_status, 200, field.api_url)

        chain = await chain_on(ctx, sshd_host, field.api_url)
    finally:
        backend.terminate()
        await backend.wait()

    assert chain.text().endswith(f"127.0.0.1:{port} listening (python3 pid {backend.pid}) → "
                                 "process python3 (running)")
    assert chain.params()["deployment"] == "process"
    assert chain.params()["health_url"] == f"http://127.0.0.1:{port}/healthcheck"  # rewritten
