"""Warm runs through one long-lived opsbot runtime (the server's pool), timed in-process.

    python bench/warm.py RUNBOOK TARGET ROUNDS     # settings from OPSBOT_* in the environment

Builds the runtime as `opsbot serve` does, runs RUNBOOK on TARGET once to open the pooled SSH
connections, then ROUNDS more times, each timed from the call to the end of its background work.
Prints JSON: the samples (wall, and opsbot's own CPU seconds), how many SSH connections were
opened, the most SSH sessions (a shell each on the host) one run opened and the most runs or
batches of commands it sent to sessions (kept sessions are reused: bot/executors/ssh.py), the
slowest steps,
and how the hosts fared. With OPSBOT_BENCH_SSHD_PIDS (the lab's sshd servers, comma-separated),
also the hosts' CPU seconds per run: every sshd process under those servers and every command
they ran (the sessions are reaped by their connection's sshd, which lives across the runs).
With OPSBOT_BENCH_FLOOR_COMMAND, after each round that command alone runs on every host through
asyncssh on the same pooled connections (no store, no runbook): the floor of the design here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def host_cpu(servers: set[int]) -> float:
    """CPU seconds (user + system, with reaped children) of the sshd servers `servers` and of
    every process under them, as /proc has them now."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    spent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        spent[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    total = 0
    for pid, ticks in spent.items():
        up, seen = pid, 0
        while up not in servers and up > 1 and seen < 64:
            up, seen = parent.get(up, 0), seen + 1
        if up in servers:
            total += ticks
    return total / tick


def own_cpu() -> float:
    """CPU seconds of this process's threads and of the processes it started (the diagnosis
    workers of a serving process: bot/offload.py)."""
    from bench.procs import cpu_and_waits

    return cpu_and_waits(os.getpid())[0]


def _profile(folder: str | None, runbook: str) -> subprocess.Popen[bytes] | None:
    """With OPSBOT_BENCH_PROFILE=DIR: py-spy (the tools' venv) samples this process and its
    diagnosis workers over the timed rounds, into DIR/warm-RUNBOOK.raw (folded stacks)."""
    if not folder:
        return None
    from bench.run import tools_bin

    Path(folder).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(tools_bin() / "py-spy"), "record", "--format", "raw", "-r", "200",
                             "--subprocesses", "-p", str(os.getpid()),
                             "-o", str(Path(folder) / f"warm-{runbook}.raw")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def no_approver(row: Any, proposal: Any) -> None:
    return None  # remediation waits for a person: the benchmark never approves


async def warm(runbook: str, target: str, rounds: int) -> dict[str, Any]:
    from bot.app import build
    from bot.config import load_settings

    with open(os.devnull, "w") as sink:  # noqa: ASYNC230 (once, at start)
        rt = build(load_settings(serving=True), out=sink)  # as `opsbot serve` (kept sessions)
        try:
            async def once() -> Any:
                outcome = await rt.bot.runs.run_target(runbook, target, {}, requested_by="bench",
                                                  source="terminal", approver=no_approver)
                await rt.bot.tasks.drain()
                return outcome

            first = await once()
            profiler = _profile(os.environ.get("OPSBOT_BENCH_PROFILE"), runbook)
            servers = {int(p) for p in os.environ.get("OPSBOT_BENCH_SSHD_PIDS", "").split(",")
                       if p.strip().isdigit()}
            samples, cpu, longest, sessions, hosts_cpu = [], [], [], [], []
            batches: list[int] = []
            floor_command = os.environ.get("OPSBOT_BENCH_FLOOR_COMMAND")
            floor: list[float] = []
            floor_cpu: list[float] = []
            for _ in range(rounds):
                on_hosts = host_cpu(servers) if servers else 0.0
                began, began_cpu = time.perf_counter(), own_cpu()
                opened, sent = rt.ctx.ssh.sessions, rt.ctx.ssh.batches
                outcome = await once()
                samples.append(time.perf_counter() - began)
                cpu.append(own_cpu() - began_cpu)
                if servers:
                    hosts_cpu.append(host_cpu(servers) - on_hosts)
                sessions.append(rt.ctx.ssh.sessions - opened)
                batches.append(rt.ctx.ssh.batches - sent)
                longest.append(max(s.duration for r in outcome.reports for s in r.results))
                if floor_command:
                    conns = [await rt.ctx.ssh.connection(h)
                             for h in rt.bot.runs.inventory.resolve(target)]
                    began, began_cpu = time.perf_counter(), time.process_time()
                    await asyncio.gather(*(c.run(floor_command, check=False) for c in conns))
                    floor.append(time.perf_counter() - began)
                    floor_cpu.append(time.process_time() - began_cpu)
            if profiler is not None:  # py-spy writes its profile when interrupted
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
            errors = [f"{r.host.name}: {r.error or s.error}" for r in outcome.reports
                      for s in r.results if r.error or s.error]
            slowest: dict[str, float] = {}
            for r in outcome.reports:
                for s in r.results:
                    slowest[s.step.step_id] = max(slowest.get(s.step.step_id, 0.0), s.duration)
            top = dict(sorted(slowest.items(), key=lambda kv: -kv[1])[:5])
            return {"samples": samples, "cpu": cpu, "hosts_cpu": hosts_cpu, "floor": floor,
                    "floor_cpu": floor_cpu,
                    "longest_step": longest, "slowest_steps": top,
                    "connects": rt.ctx.ssh.connects, "sessions": max(sessions),
                    "batches": max(batches),
                    "hosts": len(outcome.reports), "first": len(first.reports),
                    "steps": sum(len(r.results) for r in outcome.reports),
                    "causes": sorted({r.causes[0].cause for r in outcome.reports if r.causes}),
                    "errors": errors[:5]}
        finally:
            await rt.close()


def main() -> int:
    runbook, target, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if not 1 <= rounds <= 100:
        raise SystemExit("ROUNDS must be 1-100")
    print(json.dumps(asyncio.run(warm(runbook, target, rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
