"""Tried as a new user would: hosts whose program, container, ports and paths are not
OnlyOffice's, an inventory with connection variables only, and an alert that names the host and
the URL that failed. Each fault: the chain first in the thread, the cause with quoted evidence,
the fix proposed on the right target (and nothing on a target the host does not have), and a
verify that says what is true."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.botfixtures import (
    CHANNEL,
    BotProcess,
    RunningBot,
    alert_payload,
    bot_env,
    run_cli,
)
from tests.fakeslack import FakeSlack, Msg
from tests.lab import SshServer, free_port
from tests.lab.docker import DockerLab
from tests.lab.field import FieldLab

pytestmark = [pytest.mark.lab]


def connection_only(name: str, server: SshServer) -> dict[str, dict[str, object]]:
    return {name: {"ansible_host": server.address, "ansible_port": server.port,
                   "ansible_user": server.user,
                   "ansible_ssh_private_key_file": str(server.key_file)}}


@pytest.fixture
def field_inventory(tmp_path: Path, sshd_host: SshServer, docker_sshd: SshServer,
                    known_hosts_file: Path, docker_known_hosts: Path) -> tuple[Path, Path]:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        **connection_only("field01", sshd_host), **connection_only("dock01", docker_sshd)}}}))
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_file.read_text() + docker_known_hosts.read_text())
    return inventory, known


@pytest.fixture
async def field_bot(tmp_path: Path, field_inventory: tuple[Path, Path]
                    ) -> AsyncIterator[RunningBot]:
    slack = FakeSlack(channels=(CHANNEL,))
    port = free_port()
    env = bot_env(tmp_path / "opsbot.db", await slack.start(), *field_inventory, port)
    process = BotProcess(env)
    settings = await process.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield RunningBot(f"http://127.0.0.1:{port}", settings, slack, session, env, process)
    finally:  # a failed test's bot stops too (and its Slack pace is restored)
        await process.stop(flush=False)
        await slack.stop()


def alert(host: str, url: str) -> dict[str, object]:
    """What a blackbox probe alert carries: the host and the probed URL, no deployment label."""
    payload = alert_payload(host=host, group_key=f"{{}}:{{instance=\"{url}\"}}")
    for labels in (payload["commonLabels"], payload["alerts"][0]["labels"]):  # type: ignore[index]
        labels["instance"] = url  # type: ignore[index]
    return payload


async def diagnosed(bot: RunningBot, host: str, url: str) -> tuple[str, str, list[Msg]]:
    """Post the alert; (the chain message, the diagnosis, the proposals) once all are there."""
    status, _ = await bot.post_alert(alert(host, url))
    assert status == 200
    diagnosis = await bot.wait(lambda: next((m for m in bot.thread() if "🩺" in m.text), None)
                               if bot.roots() else None, timeout=90)
    # the proposals follow the diagnosis; the root message says when the run is over
    await bot.wait(lambda: any(state in bot.roots()[0].text
                               for state in ("awaiting approval", "open — diagnosed")))
    thread = bot.thread()
    chain = next(m.plain() for m in thread if "🔗" in m.text)
    assert thread.index(next(m for m in thread if "🔗" in m.text)) == 0, "the chain comes first"
    proposals = [m for m in thread if "[Approve](opsbot.approve)" in m.plain()]
    return chain, diagnosis.plain(), proposals


def cause_of(diagnosis: str) -> str:
    return diagnosis.split("*", 2)[1] if "Likely cause" in diagnosis else "none"


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[FieldLab], object]
    url: Callable[[FieldLab], str]
    chain_end: Callable[[FieldLab], str]
    cause: str
    step: str  # the remediation offered, on the program named in `target`
    target: str


FAULTS = [
    Fault("stopped program", FieldLab.stop_app, lambda f: f.url,
          lambda f: f"nothing listens on 127.0.0.1:{f.app_port} → supervisord program myapp "
                    "(STOPPED)", "upstream_down", "start_program", "start myapp"),
    Fault("crash loop without RabbitMQ/Redis/PostgreSQL", FieldLab.crashloop, lambda f: f.url,
          lambda f: "supervisord program myapp (", "upstream_crashloop",
          "restart_program", "restart myapp"),
    Fault("hung backend (504)", FieldLab.hang, lambda f: f.url,
          lambda f: "supervisord program myapp (RUNNING)", "upstream_timeout",
          "restart_program", "restart myapp"),
    Fault("full disk", FieldLab.disk_full, lambda f: f.url,
          lambda f: "supervisord program myapp (", "disk_full", "", ""),
    Fault("socket permission", FieldLab.socket_denied, lambda f: f.sock_url,
          lambda f: f"unix:{f.socket} listening (owner not visible to the SSH user) → "
                    "supervisord program sockapp (RUNNING)", "permission_denied", "", ""),
    Fault("wrong proxy port", FieldLab.wrong_port, lambda f: f.url,
          lambda f: "nothing is configured to listen there → but supervisord program myapp "
                    f"(RUNNING) listens on 127.0.0.1:{f.app_port}", "wrong_proxy_config",
          "reload_nginx", "nginx -t -c"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_fault_on_an_unlike_host(fault: Fault, field: FieldLab,
                                       field_bot: RunningBot) -> None:
    field.truncate_logs()
    await asyncio.to_thread(fault.inject, field)

    chain, diagnosis, proposals = await diagnosed(field_bot, "field01", fault.url(field))

    assert fault.chain_end(field) in chain.replace("&gt;", ">"), chain
    assert cause_of(diagnosis) == fault.cause, diagnosis
    assert "*Evidence*" in diagnosis
    offered = "\n".join(p.plain() for p in proposals)
    assert "ds:docservice" not in offered and "ds:docservice" not in diagnosis
    if fault.cause == "wrong_proxy_config":  # the program is fine: nothing to start
        assert "*start_program*" not in offered and "*restart_program*" not in offered
    if fault.step:
        assert f"*{fault.step}*" in offered and fault.target in offered, offered
        assert str(field.supervisor_conf) in offered or fault.step == "reload_nginx"


async def test_approved_start_acts_on_the_discovered_program_and_verifies(
        field: FieldLab, field_bot: RunningBot) -> None:
    field.truncate_logs()
    await asyncio.to_thread(field.stop_app)
    _, _, proposals = await diagnosed(field_bot, "field01", field.url)
    start = next(p for p in proposals if "*start_program*" in p.plain())

    await field_bot.click(start, "opsbot.approve", "U0BOB")

    await field_bot.wait(lambda: "verified" in field_bot.roots()[0].plain(), timeout=90)
    assert field.state() == "RUNNING" and field.status() == 200
    # the fix's own message is debounced: it may land just after the root's update
    await field_bot.wait(lambda: "(`verify_proxy`) on `field01` — *ok*"
                         in field_bot.thread_text(), timeout=10)
    assert f"supervisorctl -c {field.supervisor_conf} start myapp" in field_bot.thread_text()


async def test_opsbot_run_exits_0_only_when_the_fix_verified(
        field: FieldLab, field_inventory: tuple[Path, Path], tmp_path: Path) -> None:
    inventory, known = field_inventory
    env = {"OPSBOT_DB": str(tmp_path / "cli.db"), "OPSBOT_INVENTORY": str(inventory),
           "OPSBOT_KNOWN_HOSTS": str(known),
           "OPSBOT_RUNBOOKS": str(Path(__file__).resolve().parents[2] / "runbooks")}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))},
           **env}

    field.truncate_logs()
    await asyncio.to_thread(field.stop_app)
    fixed = await run_cli(env, "run", "nginx-502", "field01", "--param",
                          f"proxy_url={field.url}", "--yes", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert '"phase": "verified"' in fixed.stdout and field.state() == "RUNNING"

    field.truncate_logs()
    await asyncio.to_thread(field.crashloop)  # a restart cannot fix a broken configuration
    failed = await run_cli(env, "run", "nginx-502", "field01", "--param",
                           f"proxy_url={field.url}", "--yes", "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert '"phase": "remediation failed"' in failed.stdout or \
        '"phase": "verify failed"' in failed.stdout


async def test_stopped_container_with_a_name_of_its_own(
        field: FieldLab, field_bot: RunningBot, docker_lab: DockerLab) -> None:
    name = f"field-api-{os.getpid()}"
    field.truncate_logs()
    app = await asyncio.to_thread(docker_lab.stopped, name)
    await asyncio.to_thread(field.set_api_port, app.port)

    chain, diagnosis, proposals = await diagnosed(field_bot, "dock01", field.api_url)

    assert chain.endswith(f"nothing listens on 127.0.0.1:{app.port} → Docker container {name} "
                          "(exited (0))"), chain
    assert cause_of(diagnosis) == "upstream_down", diagnosis
    assert "running onlyoffice-docker-502 instead of nginx-502" in field_bot.thread_text()
    start = next(p for p in proposals if "*docker_start*" in p.plain())
    assert f"docker start {name}" in start.plain()

    await field_bot.click(start, "opsbot.approve", "U0BOB")

    await field_bot.wait(lambda: "verified" in field_bot.roots()[0].plain(), timeout=90)
    assert app.state()["Running"] and field.status(field.api_url) == 200
    # verified from the host with curl: the image has none (the fix's message is debounced)
    await field_bot.wait(lambda: "(`verify_healthcheck`) on `dock01` — *ok*"
                         in field_bot.thread_text(), timeout=10)


async def test_oom_killed_container(field: FieldLab, field_bot: RunningBot,
                                    docker_lab: DockerLab) -> None:
    name = f"field-oom-{os.getpid()}"
    field.truncate_logs()
    app = await asyncio.to_thread(docker_lab.oom_killed, name)
    await asyncio.to_thread(field.set_api_port, app.port)

    chain, diagnosis, proposals = await diagnosed(field_bot, "dock01", field.api_url)

    assert chain.endswith(f"Docker container {name} (exited (137, OOM-killed))"), chain
    assert cause_of(diagnosis) == "oom_killed", diagnosis
    assert any(f"docker restart -t 30 {name}" in p.plain() for p in proposals)
