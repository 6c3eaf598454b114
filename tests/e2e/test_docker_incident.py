"""An OOM-killed onlyoffice-documentserver container on a host whose engine is reached through
SSH: the alert, the thread, the approval click, the running container, the export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.botfixtures import CHANNEL, BotProcess, RunningBot, alert_payload, bot_env
from tests.fakeslack import FakeSlack
from tests.lab import SshServer, free_port
from tests.lab.docker import DockerLab

pytestmark = [pytest.mark.lab, pytest.mark.docker]


async def test_oom_killed_container_is_diagnosed_and_restarted_after_approval(
        tmp_path: Path, docker_lab: DockerLab, docker_sshd: SshServer,
        docker_known_hosts: Path, front_nginx: Any) -> None:
    app = docker_lab.oom_killed(name="onlyoffice-documentserver")
    front = front_nginx(app.port)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"docker": {"hosts": {"dock01": {
        "ansible_host": docker_sshd.address, "ansible_port": docker_sshd.port,
        "ansible_user": docker_sshd.user,
        "ansible_ssh_private_key_file": str(docker_sshd.key_file),
        "opsbot_docker": "ssh", "opsbot_container": app.name, "opsbot_health_port": app.port,
        "opsbot_container_port": app.port, "opsbot_upstream_port": app.port,
        "opsbot_http_client": "wget", "opsbot_proxy_url": front.proxy_url,
        "opsbot_nginx_error_log": str(front.error_log)}}}}}}))
    slack = FakeSlack(channels=(CHANNEL,))
    port = free_port()
    env = bot_env(tmp_path / "opsbot.db", await slack.start(), inventory, docker_known_hosts,
                  port)
    process = BotProcess(env)
    settings = await process.start()
    try:
        async with aiohttp.ClientSession() as session:
            bot = RunningBot(f"http://127.0.0.1:{port}", settings, slack, session, env, process)
            status, _ = await bot.post_alert(alert_payload(
                host="dock01", extra_labels={"deployment": "docker"}))
            assert status == 200
            approval = await bot.wait(lambda: next(
                (m for m in bot.thread() if "[Approve](opsbot.approve)" in m.plain()), None)
                if bot.roots() else None, timeout=45)
            thread = bot.thread_text()
            assert "Likely cause on `dock01`: *oom_killed*" in thread
            assert '"OOMKilled": true' in thread  # the inspect evidence, quoted
            assert "docker_restart" in approval.plain()
            assert "docker restart -t 30 onlyoffice-documentserver" in approval.plain()
            assert bot.store().get_incident(1).runbook == "onlyoffice-docker-502"

            app.set_mode("healthy")  # what ate the memory is gone: a restart will hold
            await bot.click(approval, "opsbot.approve", "U0BOB")
            await bot.wait(lambda: "verified" in bot.roots()[0].plain(), timeout=120)
            assert app.state()["Running"]
            # the fix's own message is debounced: it may land just after the root's update
            await bot.wait(lambda: "(`verify_healthcheck`) on `dock01` — *ok*"
                           in bot.thread_text(), timeout=10)

            from bot.export import export_text

            md = export_text(bot.store(), 1, "md")
            for action in ("docker ps -a", "docker inspect onlyoffice-documentserver",
                           "docker logs --timestamps --tail 200 --since 1h "
                           "onlyoffice-documentserver",
                           "docker restart -t 30 onlyoffice-documentserver"):
                assert f"$ {action}" in md, action
            assert "### `docker_restart` on dock01 — ok (remediation" in md
            assert "approved by U0BOB" in md
    finally:
        await process.stop(flush=False)
        await slack.stop()
