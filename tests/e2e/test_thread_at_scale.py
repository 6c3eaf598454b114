"""Fifty hosts against a Slack stand-in that enforces Slack's rate limits: the diagnosis runs at
the speed of the hosts, and the thread tells it in a handful of calls, none refused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bot.adapters.store import Store, parse_ts
from tests.botfixtures import CHANNEL, bot_env
from tests.fakeslack import FakeSlack
from tests.lab import WebLab, free_port
from tests.lab.fixtures import start_host
from tests.lab.sshd import SshServer

pytestmark = pytest.mark.lab
HOSTS = 50
MAX_CALLS = 40


@pytest.fixture(scope="module")
def fleet(lab_dir: Path, web_lab: WebLab) -> Iterator[tuple[Path, Path, list[str]]]:
    """50 real sshd (127.0.x.10-59:2222) in front of the one web lab: inventory group `fleet`
    and the known_hosts pinning every host key."""
    servers: list[SshServer] = []
    try:
        for i in range(HOSTS):
            servers.append(start_host(lab_dir, f"fleet{i + 1:02d}", 10 + i))
        known = lab_dir / "fleet_known_hosts"
        known.write_text("".join(f"{s.known_hosts_line}\n" for s in servers))
        known.chmod(0o644)
        hosts = {s.name: {**s.inventory_vars(), **web_lab.inventory_vars()} for s in servers}
        inventory = lab_dir / "fleet.yaml"
        inventory.write_text(yaml.safe_dump({"all": {"children": {"fleet": {"hosts": hosts}}}}))
        inventory.chmod(0o644)
        yield inventory, known, [s.name for s in servers]
    finally:
        for server in servers:
            server.stop()


async def test_fifty_hosts_thread_in_few_calls_none_refused(
        tmp_path: Path, healthy_web: WebLab, fleet: tuple[Path, Path, list[str]]) -> None:
    inventory, known_hosts, names = fleet
    slack = FakeSlack(channels=(CHANNEL,))
    slack.enforce_rate_limits()
    url = await slack.start()
    try:
        env = bot_env(tmp_path / "opsbot.db", url, inventory, known_hosts, free_port())
        healthy_web.permission_denied()
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", "nginx-502", "fleet", env={**os.environ, **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 600)
        done = subprocess.CompletedProcess("run", proc.returncode or 0, out.decode(),
                                           err.decode())
        took = time.monotonic() - began
        assert done.returncode in (0, 1), done.stderr
        roots = slack.messages(CHANNEL)
        assert len(roots) == 1 and "INC-1" in roots[0].plain()
        thread = slack.thread(CHANNEL, roots[0].ts)
        findings = [m for m in thread if "Likely cause" in m.plain()
                    or "no known cause" in m.plain()]
        shown = "\n".join(m.plain() for m in findings)
        missing = [n for n in names if f"`{n}`" not in shown]
        assert not missing, f"hosts without a finding in the thread: {missing}\n{shown}"
        assert "permission_denied" in shown and "(13: Permission denied)" in shown
        progress = next(m for m in thread if "nginx-502 on 50 host(s)" in m.plain())
        assert "finished" in progress.text and "50/50 host(s) done" in progress.text
        methods = [m for m, _ in slack.calls]
        report = (f"{len(methods)} calls in {took:.1f}s: "
                  f"{ {m: methods.count(m) for m in set(methods)} }\n"
                  + "\n".join(m.text[:120] for m in thread))
        print(report)
        assert slack.rate_limited == [], report
        assert len(methods) <= MAX_CALLS, report
        # from the run's start (the incident opened, discovery not yet begun) to every
        # finding in the thread: discovery included
        records = list(Store(env["OPSBOT_DB"]).audit_records(1))
        started = next(parse_ts(r["ts"]) for r in records if r["action"] == "run.started")
        shown_at = max(parse_ts(r["ts"]) for r in records if r["action"] == "message.posted"
                       and json.loads(r["detail"])["key"].startswith("finding:"))
        opened = next(parse_ts(r["ts"]) for r in records if r["action"] == "incident.opened")
        print(f"discovery {(started - opened).total_seconds():.1f}s, diagnosis to findings "
              f"{(shown_at - started).total_seconds():.1f}s")
        assert (shown_at - opened).total_seconds() < 60, report
        # every step's output is in the uploaded file, for every host
        steps = next(f for f in slack.files if f.name.endswith("-steps.txt"))
        assert all(f"### {n} · nginx_error_log" in steps.text for n in names)
        assert len(re.findall(r"^### ", steps.text, re.M)) >= HOSTS * 10
    finally:
        await slack.stop()
