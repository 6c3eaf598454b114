"""A cold `opsbot run` against real sshd, as a process of its own: what it imports, and that
what it prints is whole although the process exits without the collector's last walk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.lab.sshd import SshServer

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
# what only a serving process, a PostgreSQL store, a docker/http step, a TOML config, a typo's
# suggestion or a runbook with diagnosis rules needs, and pydantic's search for plugins: a
# cold one-command run pays for none
NOT_FOR_A_COLD_RUN = ("multiprocessing", "psycopg", "docker", "aiohttp", "jinja2", "crossplane",
                      "prometheus_client", "slack_bolt", "slack_sdk", "tomllib", "difflib",
                      "bot.diagnosis", "bot.discovery", "bot.server", "bot.adapters.slack",
                      "importlib.metadata")


def test_a_cold_run_on_real_hosts_imports_none_of_the_servers_libraries(
        tmp_path: Path, lab_hosts: dict[str, SshServer], known_hosts_file: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"web": {"hosts": {
        name: server.inventory_vars() for name, server in lab_hosts.items()}}}}}))
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "loadavg.yaml").write_text(yaml.safe_dump({
        "name": "loadavg", "title": "One command on every host",
        "steps": [{"id": "loadavg", "title": "Load average", "kind": "ssh",
                   "command": "cat /proc/loadavg"}]}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OPSBOT_", "SLACK_"))},
           "OPSBOT_DB": str(tmp_path / "opsbot.db"), "OPSBOT_RUNBOOKS": str(runbooks),
           "OPSBOT_INVENTORY": str(inventory), "OPSBOT_KNOWN_HOSTS": str(known_hosts_file)}
    code = ("import atexit, runpy, sys\n"  # registered first, so it runs last: after main()'s
            "atexit.register(lambda: print('imported:', sorted(m for m in "
            f"{NOT_FOR_A_COLD_RUN!r} if m in sys.modules), file=sys.stderr))\n"
            "sys.argv = ['opsbot', 'run', 'loadavg', 'web', '--json']\n"
            "runpy.run_module('bot', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert sorted(h["host"] for h in result["hosts"]) == sorted(lab_hosts)
    for host in result["hosts"]:
        [step] = host["steps"]
        assert step["status"] == "ok" and step["exit_status"] == 0, host
    assert done.stderr.splitlines()[-1] == "imported: []"
