"""Ingestion rate: single-alert Alertmanager payloads of distinct groups, each durable (its
webhook, audit and work rows committed to SQLite, fsync'd by WAL) before its 2xx answer.

    python bench/bench_ingest.py [--payloads 5000] [--clients 50]

Starts `opsbot serve` (console mode, the shipped runbooks, an empty inventory) as a child process
on loopback, posts the payloads from concurrent clients, and prints one line for
docs/reliability.md. Afterwards it checks that every answered payload is in the store and that
one incident was opened per group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def payload(i: int) -> bytes:
    labels = {"alertname": f"Bench{i % 50}", "host": f"node{i}", "severity": "critical",
              "instance": f"node{i}:9100"}
    return json.dumps({
        "receiver": "opsbot", "status": "firing", "version": "4",
        "groupKey": f'{{}}:{{alertname="Bench{i % 50}", host="node{i}"}}',
        "groupLabels": {"alertname": labels["alertname"], "host": labels["host"]},
        "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{"status": "firing", "labels": labels, "annotations": {},
                    "startsAt": "2026-11-22T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}],
    }).encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(payloads: int, clients: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
    port = free_port()
    (folder / "inventory.yaml").write_text("all:\n  hosts: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env.update({"OPSBOT_LISTEN": f"127.0.0.1:{port}", "OPSBOT_DB": str(folder / "o.db"),
                "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"),
                "OPSBOT_INVENTORY": str(folder / "inventory.yaml"),
                "OPSBOT_ALERT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)})
    with (folder / "serve.log").open("w") as log:
        profile = os.environ.get("BENCH_PROFILE")  # a file: profile the server into it
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        proc = await asyncio.create_subprocess_exec(sys.executable, *prof, "-m", "bot", "serve",
                                                    env=env, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=log)
    url = f"http://127.0.0.1:{port}"
    bodies = [payload(i) for i in range(payloads)]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
            for _ in range(600):  # up to a minute on a busy machine
                try:
                    async with http.get(f"{url}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            queue = list(reversed(bodies))

            async def client() -> None:
                while queue:
                    body = queue.pop()
                    t0 = time.perf_counter()
                    async with http.post(f"{url}/alerts/alertmanager", data=body,
                                         headers=headers) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status
                    latencies.append(time.perf_counter() - t0)

            started, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
            await asyncio.gather(*(client() for _ in range(clients)))
            elapsed, cpu = time.perf_counter() - started, cpu_seconds(proc.pid) - cpu0
            # processing goes on after the answers: wait for it, then check the store
            for _ in range(600):
                db = sqlite3.connect(folder / "o.db")
                left = db.execute("SELECT count(*) FROM work WHERE status = 'pending'"
                                  ).fetchone()[0]
                db.close()
                if not left:
                    break
                await asyncio.sleep(0.5)
            processed = time.perf_counter() - started
    finally:
        proc.send_signal(2)
        await proc.wait()
    db = sqlite3.connect(folder / "o.db")
    webhooks = db.execute("SELECT count(*) FROM webhooks").fetchone()[0]
    incidents = db.execute("SELECT count(*) FROM incidents").fetchone()[0]
    assert webhooks == payloads, (webhooks, payloads)
    assert incidents == payloads, (incidents, payloads)
    latencies.sort()
    return {"payloads": payloads, "clients": clients, "seconds": elapsed,
            "per_second": payloads / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
            "all_processed_s": processed, "server_cpu_ms": cpu / payloads * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    r = asyncio.run(run(args.payloads, args.clients))
    print(f"{r['payloads']} single-alert payloads of distinct groups from {r['clients']} "
          f"clients: {r['per_second']:.0f} payloads/s durable before the answer "
          f"(p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; server CPU "
          f"{r['server_cpu_ms']:.2f} ms a payload); all {r['payloads']} "
          f"incidents opened {r['all_processed_s']:.1f} s after the first post "
          f"[{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}]")


if __name__ == "__main__":
    main()
