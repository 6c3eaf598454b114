"""Console mode (no Slack token), and what long or secret-bearing output looks like in Slack."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.botfixtures import ALERT_TOKEN, RunningBot, alert_payload, run_cli
from tests.lab import WebLab, free_port

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


async def test_console_mode_alert_approve_and_audit(
        tmp_path: Path, healthy_web: WebLab, inventory_file: Path,
        known_hosts_file: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env.update({"OPSBOT_LISTEN": f"127.0.0.1:{port}", "OPSBOT_DB": str(tmp_path / "o.db"),
                "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"),
                "OPSBOT_INVENTORY": str(inventory_file),
                "OPSBOT_KNOWN_HOSTS": str(known_hosts_file), "OPSBOT_ALERT_TOKEN": ALERT_TOKEN})
    out_path = tmp_path / "terminal.txt"
    with out_path.open("w") as out:
        serve = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve",
                                                     env=env, stdout=out, stderr=out)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        health = await resp.json()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            assert health["slack"] == "console"
            healthy_web.stop_backend()
            async with http.post(f"http://127.0.0.1:{port}/alerts/alertmanager",
                                 data=json.dumps(alert_payload()),
                                 headers={"Authorization": f"Bearer {ALERT_TOKEN}"}) as resp:
                assert resp.status == 200
        for _ in range(300):
            terminal = out_path.read_text()
            if "opsbot approve " in terminal:
                break
            await asyncio.sleep(0.1)
        assert "[INC-1] INC-1 · nginx answers 502 on web01" in terminal
        assert "[INC-1] ✅ supervisorctl_status on web01" in terminal or \
            "supervisorctl_status on web01" in terminal
        assert "likely cause upstream_down" in terminal
        assert "connect() failed (111: Connection refused)" in terminal
        token = re.search(r"opsbot approve (\S+)", terminal)[1]
        # what Slack shows, compactly: the cause's summary, its evidence, the advice
        finding = terminal[terminal.index("likely cause upstream_down"):]
        assert "evidence:" in finding and "    > " in finding
        assert len(terminal.splitlines()) < 80, terminal
        # approved in a second terminal: carried out by the serving bot, told in its output
        done = await run_cli(env, "approve", token)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Approved start_program on web01: handed to the serving opsbot" in done.stdout
        assert "start_program on web01: verified." in done.stdout
        assert healthy_web.proxy_status() == 200
        for _ in range(300):
            terminal = out_path.read_text()
            if "✅ start_program on web01: verified" in terminal:
                break
            await asyncio.sleep(0.1)
        assert "approved start_program on web01 from a terminal" in terminal
        assert "✅ start_program on web01: verified" in terminal
        incidents = json.loads((await run_cli(env, "incidents", "--json")).stdout)
        assert incidents[0]["phase"] == "verified" and incidents[0]["cause"] == "upstream_down"
        assert "chain intact" in (await run_cli(env, "audit", "verify")).stdout
    finally:
        serve.terminate()
        await asyncio.wait_for(serve.wait(), 30)
    assert serve.returncode == 0


@pytest.mark.bot_env(OPSBOT_RUNBOOKS=str(ROOT / "tests/data/runbooks"))
async def test_long_and_secret_output_is_bounded_and_redacted(running_bot: RunningBot) -> None:
    bot = running_bot
    await bot.post_alert(alert_payload(name="NoisyTest"))
    msg = await bot.wait(lambda: next((m for m in bot.thread() if "(`big_output`)" in m.plain()
                                       and "— *ok*" in m.plain()), None)
                         if bot.roots() else None)
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in msg.blocks)
    # the output itself is in the run's uploaded file: head and tail of it, bounded
    upload = await bot.wait(lambda: next((f for f in bot.slack.files
                                          if f.name.endswith("-steps.txt")), None))
    shown = upload.text
    assert "line 0 of noise" in shown and "the end" in shown and "cut" in shown
    assert len(shown) < 10_000
    step = bot.store().steps_of(1)[0]
    assert step.output_bytes > 300_000 and step.truncated == 1
    assert len(step.excerpt) <= 16_000
    everything = json.dumps(bot.slack.state()) + json.dumps(list(bot.store().audit_records()))
    everything += step.excerpt
    for secret in ("hunter2", "xoxb-1234567890", "s3cr3t-t0ken-value"):
        assert secret not in everything
    assert "password=[REDACTED]" in shown


async def test_terminal_run_asks_before_remediation(running_bot: RunningBot,
                                                    healthy_web: WebLab) -> None:
    """Without --yes, `opsbot run` asks on the terminal; `n` leaves the backend alone, `y` fixes
    it. `script` gives the command a real pseudo-terminal, as a person's shell would."""
    bot = running_bot
    healthy_web.stop_backend()
    command = f"{sys.executable} -m bot run nginx-502 web01"
    env = {**os.environ, **bot.env}
    for answer, fixed in (("n", False), ("y", True)):
        proc = await asyncio.create_subprocess_exec(
            "script", "-qfec", command, "/dev/null", env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(f"{answer}\n".encode()), 120)
        text = out.decode()
        assert "Approve start_program on web01?" in text and "[y/N]" in text, text
        assert (healthy_web.proxy_status() == 200) is fixed, text
    decisions = [(a.status, a.decided_by) for a in bot.store().approvals_of(1)]
    assert [d[0] for d in decisions] == ["rejected", "approved"]
    assert all(d[1].startswith("local:") for d in decisions)
