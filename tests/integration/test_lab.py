"""The test lab itself: real sshd, nginx, supervisord, Prometheus and Alertmanager.

Given a fault injected into the web lab, nginx answers what it answers in production, its error
log holds its genuine line, supervisorctl (run over ssh as the lab user) shows the program's
state, and Alertmanager posts a real webhook to a receiver.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.lab import (
    ALERT_NAME,
    LAB_USER,
    SshServer,
    WebLab,
    free_port,
    wrong_known_hosts,
)
from tests.lab.process import port_open, run

pytestmark = pytest.mark.lab

NGINX_LINE = re.compile(
    r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] \d+#\d+: \*\d+ (?P<message>.+?),"
    r" client: 127\.0\.0\.1, server: _, request: \"GET /healthcheck HTTP/1\.1\", upstream: "
    r"\"http://127\.0\.0\.1:(?P<port>\d+)/healthcheck\", host: \"127\.0\.0\.1:\d+\"$"
)


def remote_supervisorctl_status(host: SshServer, lab: WebLab) -> str:
    """`supervisorctl status` run the way the bot runs it: ssh as the lab user, host key pinned."""
    result = host.ssh(f"supervisorctl -c {shlex.quote(str(lab.supervisor_conf))} status")
    assert "ds:docservice" in result.stdout, result.stderr
    return result.stdout.strip()


# --- ssh ---------------------------------------------------------------------------------------

def test_ssh_login_with_pinned_host_key_runs_supervisorctl(
    sshd_host: SshServer, known_hosts_file, healthy_web: WebLab
) -> None:
    command = [
        "ssh", "-o", f"UserKnownHostsFile={known_hosts_file}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-i", str(sshd_host.key_file), "-p", str(sshd_host.port),
        f"{LAB_USER}@{sshd_host.address}", f"supervisorctl -c {healthy_web.supervisor_conf} status",
    ]
    result = run(command)

    assert result.returncode == 0, result.stderr
    assert re.match(r"^ds:docservice\s+RUNNING\s+pid \d+, uptime ", result.stdout), result.stdout


def test_ssh_runs_sh_as_the_lab_user_on_both_hosts(lab_hosts: dict[str, SshServer]) -> None:
    for name, host in lab_hosts.items():
        result = host.ssh("id -un; echo $SHELL; echo $PATH")
        assert result.returncode == 0, (name, result.stderr)
        user, shell, path = result.stdout.split()
        assert (user, shell) == (LAB_USER, "/bin/sh")
        assert "/usr/sbin" in path.split(":")


def test_changed_host_key_is_refused(lab_dir, sshd_host: SshServer) -> None:
    result = sshd_host.ssh("true", known_hosts=wrong_known_hosts(lab_dir, sshd_host))

    assert result.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_lab_user_reads_logs_tests_config_and_reaches_backend(
    sshd_host2: SshServer, healthy_web: WebLab
) -> None:
    lab = healthy_web
    script = "; ".join([
        f"tail -n 3 {lab.app_log} >/dev/null && echo app-log-ok",
        f"tail -n 3 {lab.nginx_error_log} >/dev/null && echo error-log-ok",
        f"nginx -t -c {lab.nginx_conf} 2>&1",
        f"curl -s -o /dev/null -w 'health=%{{http_code}}\\n' {lab.health_url}",
        f"curl -s -o /dev/null -w 'proxy=%{{http_code}}\\n' {lab.proxy_url}",
    ])

    result = sshd_host2.ssh(script)

    out = result.stdout
    assert "app-log-ok" in out and "error-log-ok" in out, out
    assert f"configuration file {lab.nginx_conf} test is successful" in out, out
    assert "health=200" in out and "proxy=200" in out, out


def test_backend_listens_on_127_0_0_1_only(healthy_web: WebLab) -> None:
    assert port_open("127.0.0.1", healthy_web.backend_port)
    assert not port_open("127.0.0.2", healthy_web.backend_port)
    assert not port_open("127.0.0.2", healthy_web.nginx_port)


def test_inventory_points_at_the_lab(inventory_file, lab_hosts, web_lab: WebLab) -> None:
    inventory = yaml.safe_load(inventory_file.read_text())
    hosts = inventory["all"]["children"]["web"]["hosts"]

    assert set(hosts) == {"web01", "web02"}
    for name, host_vars in hosts.items():
        server = lab_hosts[name]
        assert host_vars["ansible_host"] == server.address
        assert host_vars["ansible_port"] == server.port
        assert host_vars["ansible_user"] == LAB_USER
        assert host_vars["ansible_ssh_private_key_file"] == str(server.key_file)
        assert host_vars["opsbot_program"] == "ds:docservice"
        assert host_vars["opsbot_upstream_port"] == web_lab.backend_port
        assert host_vars["opsbot_proxy_url"] == web_lab.proxy_url
        assert host_vars["opsbot_health_url"] == web_lab.health_url
        for key in ("opsbot_supervisor_conf", "opsbot_nginx_error_log", "opsbot_nginx_conf",
                    "opsbot_app_log"):
            assert Path(host_vars[key]).is_file(), key
    assert lab_hosts["web01"].address.endswith(".2") and lab_hosts["web02"].address.endswith(".3")


# --- faults ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    method: str
    proxy_status: int
    error: str
    state: str
    status_detail: str


FAULTS = [
    Fault("stop_backend", 502,
          "connect() failed (111: Connection refused) while connecting to upstream",
          "STOPPED", ""),
    Fault("crashloop", 502,
          "connect() failed (111: Connection refused) while connecting to upstream",
          "FATAL", "Exited too quickly (process log may have details)"),
    Fault("slow_backend", 504,
          "upstream timed out (110: Connection timed out) while reading response header from "
          "upstream",
          "RUNNING", "pid "),
    Fault("wrong_port", 502,
          "connect() failed (111: Connection refused) while connecting to upstream",
          "RUNNING", "pid "),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.method for f in FAULTS])
def test_fault_is_real(fault: Fault, healthy_web: WebLab, sshd_host: SshServer) -> None:
    lab = healthy_web
    lines_before = len(lab.error_log_lines())

    getattr(lab, fault.method)()

    assert lab.proxy_status() == fault.proxy_status
    new_lines = lab.error_log_lines()[lines_before:]
    matching = [line for line in new_lines if fault.error in line]
    assert matching, new_lines
    parsed = NGINX_LINE.match(matching[-1])
    assert parsed, matching[-1]
    assert parsed["message"] == fault.error
    upstream = int(parsed["port"])
    if fault.method == "wrong_port":
        assert upstream == lab.upstream_port != lab.backend_port
    else:
        assert upstream == lab.backend_port

    status = remote_supervisorctl_status(sshd_host, lab)
    expected = rf"^ds:docservice\s+{fault.state}\s+{re.escape(fault.status_detail)}"
    assert re.match(expected, status), status
    if fault.method == "crashloop":
        assert "failed to start docservice" in lab.app_err_log.read_text()

    lab.heal()
    assert lab.proxy_status() == 200
    assert lab.program_state() == "RUNNING"


def test_nginx_config_test_passes_for_wrong_port(healthy_web: WebLab) -> None:
    healthy_web.wrong_port()

    output = healthy_web.nginx_test()

    assert "test is successful" in output
    assert f"proxy_pass http://127.0.0.1:{healthy_web.upstream_port};" in \
        healthy_web.nginx_conf.read_text()


# --- alerting ----------------------------------------------------------------------------------

class WebhookReceiver:
    """A tiny aiohttp server standing in for the bot's /alerts/alertmanager endpoint."""

    def __init__(self) -> None:
        self.received: list[tuple[str | None, dict]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/alerts/alertmanager"
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"status": "ok"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts/alertmanager", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, status: str, within: float = 30) -> tuple[str | None, dict]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for auth, payload in self.received:
                if payload.get("status") == status:
                    return auth, payload
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {status} webhook within {within}s; got {self.received}")


async def test_alertmanager_delivers_firing_then_resolved(
    healthy_web: WebLab, alerting_factory
) -> None:
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        alerting = await asyncio.to_thread(
            alerting_factory, receiver.url, "lab-token", healthy_web.proxy_url, "web01"
        )
        assert receiver.received == []

        await asyncio.to_thread(healthy_web.stop_backend)
        auth, firing = await receiver.wait_for("firing")

        assert auth == "Bearer lab-token"
        assert firing["version"] == "4"
        assert firing["groupLabels"] == {"alertname": ALERT_NAME, "host": "web01"}
        assert firing["groupKey"]
        [alert] = firing["alerts"]
        assert alert["labels"]["alertname"] == ALERT_NAME
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["host"] == "web01"
        assert alert["labels"]["instance"] == healthy_web.proxy_url
        assert "502" in alert["annotations"]["description"]
        assert alerting.alertmanager_alerts()

        await asyncio.to_thread(healthy_web.heal)
        auth, resolved = await receiver.wait_for("resolved")

        assert auth == "Bearer lab-token"
        assert resolved["groupKey"] == firing["groupKey"]
        assert resolved["alerts"][0]["status"] == "resolved"
    finally:
        await receiver.stop()
