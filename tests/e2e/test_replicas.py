"""Two `opsbot serve` replicas on one real PostgreSQL, behind this test's own round-robin.

Given the lab's broken web01 and both Alertmanagers of an HA pair sending every notification to
both replicas: one incident per group, one diagnosis. `kill -9` of the replica running the
diagnosis: the other takes it over once the lease ran out and finishes it. A double click sent
to both replicas: one execution. Then, with OPSBOT_DB=postgresql://…, the fix, the export and
`opsbot audit verify` over the chain both replicas wrote, as a new user would try it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.adapters.store import Store
from tests.botfixtures import alert_payload, run_cli
from tests.e2e.test_reliability_kill import (
    Serve,
    approve_buttons,
    click,
    post_alert,
    serve_env,
    slack,  # noqa: F401  (the Slack stand-in fixture)
)
from tests.fakeslack import FakeSlack
from tests.lab import WebLab
from tests.lab.postgres import PostgresServer

pytestmark = pytest.mark.lab


async def start_pair(tmp_path: Path, fake: FakeSlack, url: str, inventory: Path,
                     known_hosts: Path, http: aiohttp.ClientSession) -> list[Serve]:
    replicas = []
    for name in ("a", "b"):
        env = serve_env(tmp_path, fake, inventory, known_hosts, OPSBOT_DB=url)
        replicas.append(Serve(env, tmp_path / f"serve-{name}.log"))
    await asyncio.gather(*(r.start(http) for r in replicas))
    return replicas


def count(store: Store, sql: str, params: tuple[Any, ...] = ()) -> int:
    row = store.db.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


async def test_two_replicas_one_incident_per_group_takeover_and_one_execution(
        tmp_path: Path, slack: FakeSlack, healthy_web: WebLab,  # noqa: F811
        inventory_file: Path, known_hosts_file: Path, postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    healthy_web.stop_backend()
    async with aiohttp.ClientSession() as http:
        a, b = await start_pair(tmp_path, slack, url, inventory_file, known_hosts_file, http)
        store = Store(url)
        # both Alertmanagers of the HA pair send every group to both replicas, at once
        groups = [alert_payload(name=f"Pair{i}", host=f"node{i}") for i in range(8)]
        sends = [post_alert(http, r.url, p) for p in [alert_payload(), *groups]
                 for r in (a, b, a, b)]
        answered = await asyncio.gather(*sends)
        assert all(w is not None for w in answered)
        await slack.wait_for(lambda s: count(store, "SELECT count(*) FROM work WHERE status = "
                                                    "'pending'") == 0, timeout=60)
        assert list(store.db.query("SELECT group_key, count(*) FROM incidents GROUP BY "
                                   "group_key HAVING count(*) > 1")) == []
        assert count(store, "SELECT count(*) FROM incidents") == 1 + len(groups)
        web01 = store.incident_for_group(alert_payload()["groupKey"])
        assert web01 is not None
        # its run starts once discovery has traced the chain (a run row only from then on)
        runs = "SELECT count(*) FROM runs WHERE incident_id = ?"
        await slack.wait_for(lambda s: count(store, runs, (web01.id,)) > 0, timeout=60)
        assert count(store, runs, (web01.id,)) == 1

        # kill -9 of the replica running the diagnosis: the other one finishes it
        owner_pid = None
        for _ in range(600):
            row = store.db.execute(
                "SELECT r.pid FROM runs JOIN replicas r ON r.id = runs.owner WHERE "
                "runs.incident_id = ? AND runs.status = 'running'", (web01.id,)).fetchone()
            if row is not None:
                owner_pid = int(row[0])
                break
            await asyncio.sleep(0.05)
        busy, other = (a, b) if a.proc and a.proc.pid == owner_pid else (b, a)
        assert busy.proc is not None and busy.proc.pid == owner_pid, "no run of INC found"
        await busy.kill9()
        buttons = await slack.wait_for(lambda s: approve_buttons(s), timeout=120)
        runs = list(store.db.query("SELECT source, status FROM runs WHERE incident_id = ? "
                                   "ORDER BY id", (web01.id,)))
        assert runs[0]["status"] == "interrupted" and runs[-1]["source"] == "resumed", runs
        assert count(store, "SELECT count(*) FROM runs WHERE incident_id = ? AND status = "
                            "'running'", (web01.id,)) == 0

        # the killed replica comes back; a double click reaches both replicas at once
        await busy.start(http)
        msg = buttons[-1]
        await asyncio.gather(click(http, a.url, slack, msg), click(http, b.url, slack, msg))
        await slack.wait_for(lambda s: count(store, "SELECT count(*) FROM incidents WHERE "
                                                    "id = ? AND status = 'resolved'",
                                             (web01.id,)) == 1
                             or healthy_web.proxy_status() == 200, timeout=120)
        await slack.wait_for(lambda s: count(store, "SELECT count(*) FROM step_runs WHERE "
                                                    "incident_id = ? AND phase = 'verify' AND "
                                                    "status != 'running'", (web01.id,)) >= 1,
                             timeout=120)
        fixes = list(store.db.query("SELECT step_id, count(*) AS n FROM step_runs WHERE "
                                    "incident_id = ? AND phase = 'remediation' GROUP BY step_id",
                                    (web01.id,)))
        assert fixes and all(f["n"] == 1 for f in fixes), fixes
        actions = [r["action"] for r in store.audit_records(web01.id)]
        assert actions.count("approval.approved") == 1
        assert healthy_web.proxy_status() == 200

        # as a new user would: export and audit verify against the shared database
        env = {**a.env}
        export = await run_cli(env, "export", web01.ref, "--format", "md")
        assert export.returncode == 0, export.stderr
        assert web01.ref in export.stdout and "approv" in export.stdout.lower()
        verify = await run_cli(env, "audit", "verify")
        assert verify.returncode == 0, verify.stderr
        assert "chain intact" in verify.stdout
        assert [await r.stop() for r in (a, b)] == [0, 0]
        store.close()


def test_concurrent_writers_keep_one_audit_chain(postgres_server: PostgresServer) -> None:
    """Four stores (as four replicas) appending at once: one chain, no fork, no gap, and
    `opsbot audit verify` says so."""
    url = postgres_server.create_database()
    stores = [Store(url, audit_key="k") for _ in range(4)]

    def write(store: Store, n: int) -> None:
        for i in range(50):
            store.audit("test.concurrent", f"writer{n}", None, i=i)

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [r["seq"] for r in stores[0].audit_records()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 200
    assert all(s.verify_audit().ok for s in stores)
    prevs = [r["prev_hash"] for r in stores[0].audit_records()]
    assert len(set(prevs)) == len(prevs)  # no two records claim the same predecessor
    for s in stores:
        s.close()
    verify = subprocess.run([sys.executable, "-m", "bot", "audit", "verify"], capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "OPSBOT_DB": url, "OPSBOT_AUDIT_KEY": "k"})
    assert verify.returncode == 0, verify.stderr
    assert "200 records" in verify.stdout, verify.stdout

