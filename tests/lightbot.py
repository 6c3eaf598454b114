"""A serving opsbot without the lab: the Slack stand-in, the shipped runbooks and an inventory
whose one host is never reached. For tests of what arrives at the bot's edge (payloads,
signatures, hostile input), where nothing needs to run on a host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.botfixtures import ROOT, RunningBot, serving_bot


@pytest.fixture(params=["thread", "process"])
async def light_bot(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningBot]:
    """`@pytest.mark.bot_env(...)` adds or changes settings, as for `running_bot`. Each test
    runs with either edge (OPSBOT_EDGE): the HTTP thread, and the process of its own."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 192.0.2.10\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    async with serving_bot(request, tmp_path, inventory, known_hosts,
                           OPSBOT_RUNBOOKS=str(ROOT / "runbooks"), OPSBOT_EDGE=request.param
                           ) as bot:
        yield bot
