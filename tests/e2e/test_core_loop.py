"""Given a broken backend and an alert: what the channel shows and what the audit log holds."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.botfixtures import RunningBot, alert_payload, run_cli
from tests.lab import WebLab

pytestmark = pytest.mark.lab

DIAGNOSTIC_STEPS = ("healthcheck", "proxy_check", "listening_ports", "supervisorctl_status",
                    "nginx_error_log", "nginx_config_test", "memory", "kernel_log", "disk",
                    "app_logs")


async def opsbot(bot: RunningBot, *args: str, check: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = await run_cli({**bot.env, **(env or {})}, *args)
    if check:
        assert done.returncode == 0, done.stderr + done.stdout
    return done


def finished_steps(bot: RunningBot) -> list[str]:
    done = []
    for m in bot.thread():
        text = m.plain()
        for step in DIAGNOSTIC_STEPS:
            if f"(`{step}`)" in text and "running" not in text.split("\n")[0]:
                done.append(step)
    return done


async def test_stopped_backend_alert_gives_diagnosed_incident_then_cli_fix(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    healthy_web.stop_backend()
    status, body = await bot.post_alert(alert_payload())
    assert status == 200 and body["status"] == "accepted"

    # one incident; every diagnostic step in the thread; the cause with nginx's own line
    await bot.wait(lambda: any("Approve" in m.plain() for m in bot.thread())
                   if bot.roots() else False, timeout=30)
    assert len(bot.roots()) == 1
    thread = bot.thread_text()
    for step in DIAGNOSTIC_STEPS:
        assert f"(`{step}`) on `web01`" in thread
    assert sorted(set(finished_steps(bot))) == sorted(DIAGNOSTIC_STEPS)
    # what discovery read moments before (the same command) is not run a second time
    reused = {s.step_id: s.facts["read_by"] for s in bot.store().steps_of(1)
              if "read_by" in s.facts}
    assert reused == {
        "listening_ports": "discovery",
        "supervisorctl_status": (
            f"discovery (supervisord's socket {healthy_web.supervisor_socket}, XML-RPC)"),
        "nginx_config_test": (
            f"discovery (the test that `nginx -T -c {healthy_web.nginx_conf}` ran first)")}
    # the thread says so: supervisorctl did not run, its status came from supervisord's socket
    assert (f"read by discovery (supervisord's socket {healthy_web.supervisor_socket}, "
            "XML-RPC)") in thread
    assert "Likely cause on `web01`: *upstream_down*" in thread
    assert "connect() failed (111: Connection refused)" in thread
    approval = next(m for m in bot.thread() if "Proposed remediation" in m.plain())
    assert "[Approve](opsbot.approve)" in approval.plain()
    assert "[Reject](opsbot.reject)" in approval.plain()
    assert "supervisorctl -c" in approval.plain() and "start ds:docservice" in approval.plain()
    root = bot.roots()[0]
    await bot.wait(lambda: "upstream_down" in bot.roots()[0].plain())
    assert "INC-1" in root.plain()

    # a repeated notification of the same group starts no second run
    steps_before = len(bot.store().steps_of(1))
    status, _ = await bot.post_alert(alert_payload())
    assert status == 200
    await bot.wait(lambda: len(bot.store().alerts_of(1)) == 2)
    await asyncio.sleep(1)
    assert len(bot.store().steps_of(1)) == steps_before
    assert len(bot.store().list_incidents()) == 1 and len(bot.roots()) == 1

    # the terminal joins the open incident, restarts the backend, verifies a 200
    proc = await opsbot(bot, "run", "nginx-502", "web01", "--yes")
    assert "INC-1" in proc.stdout and "verified" in proc.stdout
    assert healthy_web.proxy_status() == 200
    await bot.wait(lambda: "verified" in bot.roots()[0].plain())
    # the fix's own message is debounced: it may land just after the root's update
    await bot.wait(lambda: "(`verify_proxy`) on `web01` — *ok*" in bot.thread_text(), timeout=10)
    assert "joining INC-1" in bot.thread_text()
    assert len(bot.roots()) == 1

    # the export reads as a postmortem of exactly that
    md = (await opsbot(bot, "export", "INC-1", "--format", "md")).stdout
    assert "NginxBadGateway" in md and "## Timeline (UTC)" in md
    for step in DIAGNOSTIC_STEPS:
        assert f"### `{step}` on web01" in md
    assert "supervisorctl -c" in md and "connect() failed (111: Connection refused)" in md
    assert "approved by local:" in md
    assert "### `start_program` on web01 — ok" in md or \
        "### `restart_program` on web01 — ok" in md
    assert "### `verify_proxy` on web01 — ok" in md
    # the postmortem draft names the chain that discovery traced, as the thread showed it
    draft = (await opsbot(bot, "export", "INC-1", "--format", "postmortem")).stdout
    chain = draft.split("## The chain\n\n")[1].split("\n## ")[0]
    assert chain.startswith("- web01: ") and "supervisord program ds:docservice" in chain
    assert chain.strip()[len("- "):] in bot.thread_text().replace("🔗 ", "")

    # the audit log holds every step, before and after, and its chain is intact
    actions = [r["action"] for r in bot.store().audit_records(1)]
    assert actions.count("step.start") == actions.count("step.end") >= 2 * len(DIAGNOSTIC_STEPS)
    assert "approval.approved" in actions and "incident.opened" in actions
    assert "audit log OK" in (await opsbot(bot, "audit", "verify")).stdout


async def test_resolved_alert_resolves_incident_and_cancels_approvals(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    await asyncio.to_thread(healthy_web.stop_backend)
    await bot.post_alert(alert_payload())
    await bot.wait(lambda: bot.roots() and any("Approve" in m.plain() for m in bot.thread()))
    # off the loop: the bot serves from this loop, and a heal under load can outlast its
    # 10 s keep-alive (the next post then met a connection closed under it)
    await asyncio.to_thread(healthy_web.heal)
    status, _ = await bot.post_alert(alert_payload("resolved"))
    assert status == 200
    await bot.wait(lambda: bot.store().get_incident(1).status == "resolved")
    await bot.wait(lambda: "resolved" in bot.roots()[0].plain())
    assert bot.store().approvals_of(1)[0].status == "cancelled"
    approval = next(m for m in bot.thread() if "Proposed remediation" in m.plain())
    await bot.wait(lambda: "cancelled" in approval.plain())
    assert "opsbot.approve" not in approval.plain()
    # firing again later reopens it in the same thread
    await asyncio.to_thread(healthy_web.stop_backend)
    await bot.post_alert(alert_payload())
    await bot.wait(lambda: "reopened" in bot.thread_text())
    assert len(bot.roots()) == 1 and bot.store().get_incident(1).status == "open"


async def test_label_injection_runs_nothing(running_bot: RunningBot, tmp_path: Path) -> None:
    bot = running_bot
    pwned = Path("/tmp/pwned")
    pwned.unlink(missing_ok=True)
    status, _ = await bot.post_alert(alert_payload(host="web01; touch /tmp/pwned"))
    assert status == 200
    await bot.wait(lambda: bot.roots() and "No inventory host matches" in bot.thread_text())
    assert bot.store().steps_of(1) == []
    # a label that fills a parameter is validated: invalid text is dropped, never run
    await bot.post_alert(alert_payload(group_key="g2", extra_labels={
        "program": "ds:docservice; touch /tmp/pwned", "upstream_port": "$(touch /tmp/pwned)"}))
    await bot.wait(lambda: len(bot.roots()) == 2
                   and "Ignored alert label" in bot.thread_text(bot.roots()[1]))
    await bot.wait(lambda: any(words in bot.thread_text(bot.roots()[1]) for words in
                               ("Likely cause", "no known cause", "answers now")))
    await asyncio.sleep(0.5)
    assert not pwned.exists()
    commands = [s.command for s in bot.store().steps_of(2)]
    assert commands and not any("pwned" in c for c in commands)


async def test_changed_host_key_refuses_and_runs_nothing(
        running_bot: RunningBot, lab_dir: Path, sshd_host) -> None:
    from tests.lab import wrong_known_hosts

    bot = running_bot
    bad = wrong_known_hosts(lab_dir / "wrong-keys", sshd_host)
    marker = Path("/tmp/opsbot-hostkey-marker")
    marker.unlink(missing_ok=True)
    runbook = lab_dir / "hostkey-runbooks"
    runbook.mkdir(exist_ok=True)
    (runbook / "touch.yaml").write_text(
        "name: touch\nsteps:\n  - id: touch\n    kind: ssh\n    command: touch "
        f"{marker}\n")
    env = {**bot.env, "OPSBOT_KNOWN_HOSTS": str(bad), "OPSBOT_RUNBOOKS": str(runbook),
           "SLACK_BOT_TOKEN": "", "OPSBOT_DB": str(lab_dir / "hostkey.db")}
    proc = await opsbot(bot, "run", "touch", "web01", "--json", env=env, check=False)
    assert proc.returncode == 1, proc.stderr  # the contract: a host could not be reached
    result = json.loads(proc.stdout)
    step = result["hosts"][0]["steps"][0]
    assert step["status"] == "error" and step["exit_status"] is None
    assert "host key of web01" in step["error"] and "nothing was run" in step["error"]
    assert not marker.exists()


async def test_bad_webhooks_get_one_line_and_are_kept(running_bot: RunningBot) -> None:
    bot = running_bot
    status, body = await bot.post_alert(None, token=None, raw=b"{}")
    assert status == 401 and "token" in body["error"]
    status, body = await bot.post_alert(None, token="wrong", raw=b"{}")
    assert status == 401
    status, body = await bot.post_alert(None, raw=b'{"alerts": [')
    assert status == 400 and body["error"].startswith("body is not valid JSON")
    status, body = await bot.post_alert({"version": "4", "status": "firing", "alerts": []})
    assert status == 400 and body["error"] == "alerts must be a non-empty list"
    status, body = await bot.post_alert(None, raw=b" " * (1024 * 1024 + 10))
    assert status == 413
    rows = list(bot.store().db.query("SELECT body, outcome FROM webhooks ORDER BY id"))
    assert [r["outcome"].split(":")[0] for r in rows] == ["rejected", "rejected"]
    assert rows[0]["body"] == '{"alerts": ['
    async with bot.session.get(f"{bot.url}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        assert "opsbot_webhooks_total 2" in await resp.text()
