"""`kill -HUP` makes a running opsbot read its runbooks and inventory again."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import aiohttp

from tests.lab import free_port

ROOT = Path(__file__).resolve().parents[2]
METRICS_TOKEN = "metrics-token-for-tests"  # /healthz shows what was loaded only with it


async def health(url: str) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as http:
        for _ in range(600):  # a loaded machine may take a while to import and start
            try:
                async with http.get(url, headers={"Authorization":
                                                  f"Bearer {METRICS_TOKEN}"}) as resp:
                    return await resp.json()  # type: ignore[no-any-return]
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise AssertionError("opsbot did not answer")


async def test_sighup_reloads_runbooks_and_inventory(tmp_path: Path) -> None:
    runbooks = tmp_path / "runbooks"
    (runbooks / "rules").mkdir(parents=True)
    shutil.copy(ROOT / "runbooks/nginx-502.yaml", runbooks)
    shutil.copy(ROOT / "runbooks/rules/http-502.yaml", runbooks / "rules")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("web:\n  hosts:\n    web01:\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env.update({"OPSBOT_LISTEN": f"127.0.0.1:{port}", "OPSBOT_DB": str(tmp_path / "o.db"),
                "OPSBOT_METRICS_TOKEN": METRICS_TOKEN,
                "OPSBOT_RUNBOOKS": str(runbooks), "OPSBOT_INVENTORY": str(inventory)})
    log = (tmp_path / "serve.log").open("w")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", env=env,
                                                stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        before = await health(url)
        assert (before["runbooks"], before["hosts"]) == (["nginx-502"], 1)
        shutil.copy(ROOT / "runbooks/systemd-502.yaml", runbooks)
        (runbooks / "broken.yaml").write_text("name: broken\nsteps: []\n")
        inventory.write_text("web:\n  hosts:\n    web01:\n    web02:\n")
        proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            after = await health(url)
            if after["hosts"] == 2:
                break
            await asyncio.sleep(0.1)
        assert after["runbooks"] == ["nginx-502", "systemd-502"] and after["hosts"] == 2
        assert any("broken.yaml:2" in e for e in after["runbook_errors"])
        inventory.write_text("web: [\n")  # a typo keeps what was loaded
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert (await health(url))["hosts"] == 2
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "reload failed, nothing changed" in text and "Traceback" not in text
