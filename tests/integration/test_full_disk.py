"""A full disk under the store: webhooks get a one-line 503 (Alertmanager retries), nothing is
half-written, and once there is room again the same notification is accepted."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bot.adapters.store import Store
from tests.botfixtures import ALERT_TOKEN, BotProcess, alert_payload
from tests.lab import free_port

pytestmark = pytest.mark.lab


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_refuses_cleanly_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    db = small_disk / "opsbot.db"
    filler = small_disk / "filler"
    port = free_port()
    env = {"OPSBOT_LISTEN": f"127.0.0.1:{port}", "OPSBOT_DB": str(db),
           "OPSBOT_RUNBOOKS": str(tmp_path / "no-runbooks"),
           "OPSBOT_INVENTORY": str(tmp_path / "none.yaml"), "OPSBOT_ALERT_TOKEN": ALERT_TOKEN}
    process = BotProcess(env)
    await process.start()
    # the disk fills up under the running bot
    await asyncio.to_thread(subprocess.run, ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"],
                            capture_output=True)
    url = f"http://127.0.0.1:{port}/alerts/alertmanager"
    headers = {"Authorization": f"Bearer {ALERT_TOKEN}"}
    body = json.dumps(alert_payload())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 503, answer
                assert answer["error"].startswith("the store cannot be written (")
                assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
            filler.unlink()
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
    finally:
        await process.stop()
    store = Store(db)
    assert [r["outcome"] for r in store.db.query("SELECT outcome FROM webhooks")] == ["opened"]
    assert store.verify_audit().ok
