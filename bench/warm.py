"""Warm runs through one long-lived opsbot runtime (the server's pool), timed in-process.

    python bench/warm.py RUNBOOK TARGET ROUNDS     # settings from OPSBOT_* in the environment

Builds the runtime as `opsbot serve` does, runs RUNBOOK on TARGET once to open the pooled SSH
connections, then ROUNDS more times, each timed from the call to the end of its background work.
Prints JSON: the samples (wall, and opsbot's own CPU seconds), how many SSH connections were
opened, the most SSH sessions (a shell each on the host) one run asked for, the slowest steps,
and how the hosts fared.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


async def no_approver(row: Any, proposal: Any) -> None:
    return None  # remediation waits for a person: the benchmark never approves


async def warm(runbook: str, target: str, rounds: int) -> dict[str, Any]:
    from bot.app import build
    from bot.config import load_settings

    with open(os.devnull, "w") as sink:  # noqa: ASYNC230 (once, at start)
        rt = build(load_settings(), out=sink)
        try:
            async def once() -> Any:
                outcome = await rt.bot.runs.run_target(runbook, target, {}, requested_by="bench",
                                                  source="terminal", approver=no_approver)
                await rt.bot.tasks.drain()
                return outcome

            first = await once()
            samples, cpu, longest, sessions = [], [], [], []
            for _ in range(rounds):
                began, began_cpu = time.perf_counter(), time.process_time()
                opened = rt.ctx.ssh.sessions
                outcome = await once()
                samples.append(time.perf_counter() - began)
                cpu.append(time.process_time() - began_cpu)
                sessions.append(rt.ctx.ssh.sessions - opened)
                longest.append(max(s.duration for r in outcome.reports for s in r.results))
            errors = [f"{r.host.name}: {r.error or s.error}" for r in outcome.reports
                      for s in r.results if r.error or s.error]
            slowest: dict[str, float] = {}
            for r in outcome.reports:
                for s in r.results:
                    slowest[s.step.step_id] = max(slowest.get(s.step.step_id, 0.0), s.duration)
            top = dict(sorted(slowest.items(), key=lambda kv: -kv[1])[:5])
            return {"samples": samples, "cpu": cpu, "longest_step": longest, "slowest_steps": top,
                    "connects": rt.ctx.ssh.connects, "sessions": max(sessions),
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
