"""Ingestion rate: Alertmanager payloads posted by 50 clients, each durable (its webhook, audit
and work rows committed, the WAL synced) before its 2xx answer.

    python bench/bench_ingest.py [--case distinct|one-group|batched|all] [--payloads 5000]
                                 [--clients 50] [--profile DIR]

Starts `opsbot serve` (console mode, the shipped runbooks, an empty inventory) as a child process
on loopback and posts from a second child process: the load generator, kept lean so that it
leaves the cores to the server (request bytes built before the clock starts, one keep-alive
connection per client, raw asyncio streams, no HTTP library). Both processes' CPU seconds are
measured (the client's through its own getrusage). Afterwards it waits until every payload is
processed and checks the store: every answered payload recorded, one incident per group, every
alert kept. `--profile DIR` attaches py-spy to the server (sampling only while it holds the
GIL) while the payloads are posted, and again while they are processed, and writes its
collapsed stacks and a summary of each there. `bench/run.py` (scripts/bench) calls `measure`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


@dataclass(frozen=True)
class Case:
    name: str  # the command-line name
    what: str  # as the report says it
    payloads: int
    alerts: int  # per payload
    distinct: bool  # one group per payload (else all of one group)

    @property
    def groups(self) -> int:
        return self.payloads if self.distinct else 1


CASES = {c.name: c for c in (
    Case("distinct", "single-alert payloads, distinct groups", 5000, 1, True),
    Case("one-group", "single-alert payloads, one group", 5000, 1, False),
    Case("batched", "alerts in 100-alert payloads", 500, 100, True),
)}


def payload(i: int, case: Case, name: str = "BenchIngest") -> bytes:
    group = f"g{i}" if case.distinct else "g0"
    alerts = [{"status": "firing",
               "labels": {"alertname": name, "group": group, "severity": "warning",
                          "instance": f"node{i * case.alerts + k}:9100"},
               "annotations": {}, "startsAt": "2026-11-29T03:00:00Z",
               "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://127.0.0.1:9090/graph",
               "fingerprint": f"{i * case.alerts + k:016x}"}  # as Alertmanager sends them
              for k in range(case.alerts)]
    return json.dumps({
        "receiver": "opsbot", "status": "firing", "version": "4",
        "groupKey": f'{{}}:{{group="{group}"}}', "groupLabels": {"group": group},
        "commonLabels": {"alertname": name, "group": group}, "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093", "alerts": alerts}).encode()


def request(port: int, token: str, body: bytes) -> bytes:
    return (f"POST /alerts/alertmanager HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the load generator (a process of its own) ------------------------------------------------
async def _post_all(port: int, requests: list[bytes], clients: int) -> dict[str, object]:
    queue = list(reversed(requests))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                req = queue.pop()
                t0 = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 600)
    seconds = time.perf_counter() - began
    latencies.sort()
    return {"seconds": seconds, "statuses": dict(statuses),
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3}


def client_main(port: int, case_name: str, payloads: int, clients: int, name: str) -> None:
    """The load generator's process: build every request, say "ready" (the parent starts the
    server's CPU clock), wait for "go" on stdin, post, print the result as JSON."""
    case = CASES[case_name]
    requests = [request(port, TOKEN, payload(i, case, name)) for i in range(payloads)]
    print("ready", flush=True)
    sys.stdin.readline()
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(_post_all(port, requests, clients))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime -
                                                                    before.ru_stime)
    print(json.dumps(result), flush=True)


# -- one measurement ---------------------------------------------------------------------------
def _profile(pid: int, folder: Path, name: str = "server") -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", "--format",
                             "raw", "--gil", "--threads", "--output", str(folder / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(case: Case, port: int, server_pid: int, db: Path, *, payloads: int | None = None,
            clients: int = 50, name: str = "BenchIngest", profile: Path | None = None,
            settle: float = 600.0) -> dict[str, float]:
    """Post `case` to a running `opsbot serve` (pid `server_pid`, store `db`) from a separate
    client process; wait until all is processed; check the store. Figures of the posting."""
    count = payloads or case.payloads
    client = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--client",
                               str(port), "--case", case.name, "--payloads", str(count),
                               "--clients", str(clients), "--name", name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    assert client.stdin is not None and client.stdout is not None
    if client.stdout.readline().strip() != b"ready":
        raise RuntimeError("the load generator did not start")
    spy = _profile(server_pid, profile) if profile else None
    cpu0 = cpu_seconds(server_pid)
    client.stdin.write(b"go\n")
    client.stdin.flush()
    line = client.stdout.readline()
    cpu = cpu_seconds(server_pid) - cpu0
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    client.wait(60)
    if not line:
        raise RuntimeError(f"the load generator failed (exit {client.returncode})")
    result = json.loads(line)
    if set(result["statuses"]) != {"200"}:
        raise RuntimeError(f"answers other than 200: {result['statuses']}")
    seconds = float(result["seconds"])
    spy = _profile(server_pid, profile, "processing") if profile else None
    processed = _wait_processed(db, settle)
    total = cpu_seconds(server_pid) - cpu0
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    webhooks, incidents, alerts = _counts(db, name)
    if webhooks < count or incidents != (count if case.distinct else 1) or \
            alerts < count * case.alerts:
        raise RuntimeError(f"the store lost something: {webhooks} webhooks, {incidents} "
                           f"incidents, {alerts} alerts for {count} payloads")
    if profile is not None:
        summarize(profile / "server.txt", profile / "summary.txt")
        summarize(profile / "processing.txt", profile / "processing-summary.txt")
    return {"payloads": count, "clients": clients, "seconds": seconds,
            "payloads_per_s": count / seconds, "alerts_per_s": count * case.alerts / seconds,
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "server_cpu_s": cpu, "server_cpu_ms": cpu / count * 1e3,
            "server_cpu_total_ms": total / count * 1e3,
            "client_cpu_s": result["client_cpu_s"],
            "client_cpu_ms": result["client_cpu_s"] / count * 1e3,
            "processed_s": processed}


def _wait_processed(db: Path, limit: float) -> float:
    """Seconds until no accepted webhook waits to be processed."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit:
        with sqlite3.connect(db) as conn:
            if not conn.execute("SELECT count(*) FROM work WHERE status = 'pending'"
                                ).fetchone()[0]:
                return time.perf_counter() - began
        time.sleep(0.2)
    raise RuntimeError(f"webhooks still unprocessed after {limit:.0f} s")


def _counts(db: Path, name: str) -> tuple[int, int, int]:
    with sqlite3.connect(db) as conn:
        webhooks = conn.execute("SELECT count(*) FROM webhooks").fetchone()[0]
        incidents = conn.execute("SELECT count(*) FROM incidents WHERE title LIKE ?",
                                 (f"{name} %",)).fetchone()[0]
        alerts = conn.execute("SELECT count(*) FROM alerts WHERE name = ?",
                              (name,)).fetchone()[0]
    return int(webhooks), int(incidents), int(alerts)


def summarize(raw: Path, out: Path, top: int = 40) -> str:
    """py-spy's collapsed stacks -> the functions with the most samples, inclusive and self,
    for the whole process and per thread."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        for frame in set(frames[1:]):
            inclusive[_short(frame)] += count
        own[_short(frames[-1])] += count
    lines = [f"{total} samples"]
    lines += [f"{n * 100 / total:5.1f}%  {t}" for t, n in threads.most_common()]
    lines += ["", "inclusive:"]
    lines += [f"{n * 100 / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"{n * 100 / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def _short(frame: str) -> str:
    """`fn (path/to/module.py:12)` -> `fn (module.py)`: lines of one function counted together."""
    fn, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return f"{fn} ({'/'.join(parts[-2:])})" if parts else fn


def start_server(folder: Path, port: int) -> subprocess.Popen[bytes]:
    (folder / "inventory.yaml").write_text("all:\n  hosts: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env.update({"OPSBOT_LISTEN": f"127.0.0.1:{port}", "OPSBOT_DB": str(folder / "o.db"),
                "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"),
                "OPSBOT_INVENTORY": str(folder / "inventory.yaml"),
                "OPSBOT_ALERT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)})
    with (folder / "serve.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env=env, cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log)
    import urllib.request

    for _ in range(600):  # up to a minute on a busy machine
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"opsbot serve did not start: {(folder / 'serve.log').read_text()[-800:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="distinct", choices=[*CASES, "all"])
    parser.add_argument("--payloads", type=int, default=0, help="default: the case's")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--profile", type=Path, help="py-spy the server into this folder")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="BenchIngest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.case, args.payloads, args.clients, args.name)
        return
    from bench.procs import free_port

    for case in CASES.values() if args.case == "all" else [CASES[args.case]]:
        folder = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
        port = free_port()
        server = start_server(folder, port)
        try:
            r = measure(case, port, server.pid, folder / "o.db", payloads=args.payloads or None,
                        clients=args.clients,
                        profile=args.profile / case.name if args.profile else None)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            shutil.rmtree(folder, ignore_errors=True)
        print(f"{case.what}, {r['payloads']:.0f} payloads from {r['clients']:.0f} clients: "
              f"{r['payloads_per_s']:.0f} payloads/s, {r['alerts_per_s']:.0f} alerts/s, each "
              f"committed before its 200 (p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms); "
              f"server CPU {r['server_cpu_ms']:.2f} ms a payload, client CPU "
              f"{r['client_cpu_ms']:.2f} ms a payload; all processed "
              f"{r['processed_s']:.1f} s after the last answer, the server's CPU with the "
              f"processing {r['server_cpu_total_ms']:.2f} ms a payload "
              f"[{platform.python_implementation()} {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}]", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
