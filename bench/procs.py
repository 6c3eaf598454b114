"""Timing whole processes: wall time and the CPU seconds of the process and its waited children."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float  # user + system seconds of the process (and the children it waited for)
    maxrss_mib: float
    returncode: int
    output: str


def timed(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
          timeout: float = 120.0, log: Path | None = None) -> Timed:
    """Run argv to its end (killed after `timeout`), measuring it with wait4()."""
    out_path = log or Path(f"/tmp/opsbot-bench-{os.getpid()}.out")
    with out_path.open("w+b") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                cwd=cwd, start_new_session=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, 9)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if log is None:
        out_path.unlink(missing_ok=True)
    return Timed(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                 proc.returncode, text)
