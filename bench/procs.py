"""Timing whole processes: wall time and the CPU seconds of the process and its waited children."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
          timeout: float = 120.0, log: Path | None = None,
          preexec_fn: Callable[[], None] | None = None) -> Timed:
    """Run argv to its end (killed after `timeout`), measuring it with wait4(); `preexec_fn`
    runs in the child before it starts argv (e.g. `weighted`'s join)."""
    out_path = log or Path(f"/tmp/opsbot-bench-{os.getpid()}.out")
    with out_path.open("w+b") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                cwd=cwd, start_new_session=True, preexec_fn=preexec_fn)
        deadline = start + timeout
        peak = 0  # KiB: the process's own high-water RSS, read while it runs
        while True:
            peak = max(peak, _high_water_kib(proc.pid))
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
    return Timed(wall, usage.ru_utime + usage.ru_stime, (peak or usage.ru_maxrss) / 1024,
                 proc.returncode, text)


def _high_water_kib(pid: int) -> int:
    """VmHWM of a running process. Not wait4's ru_maxrss: that keeps the high-water mark of
    the memory the child was forked from, so a child of a 60 MiB benchmark process never
    reported less than 60 MiB (every export format showed the same peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_and_waits(pid: int) -> tuple[float, float]:
    """Seconds a process's threads, and those of the processes it started (opsbot serve's
    diagnosis workers), have run on a CPU, and have waited, runnable, for one (the kernel's
    schedstat): on a shared machine the second says how much of a wall time was the
    machine's load, not the process's own work."""
    ran = waited = 0
    for proc in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            for task in Path(f"/proc/{proc}/task").iterdir():
                try:
                    fields = (task / "schedstat").read_text().split()
                except OSError:  # a thread that ended meanwhile
                    continue
                ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran / 1e9, waited / 1e9


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, theirs, ...), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2:].split()[1])  # the field after the state
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(env: Mapping[str, str], log: Path, port: int, timeout: float = 60) -> Iterator[int]:
    """`opsbot serve` as a child process until the block ends (SIGTERM, then SIGKILL); its pid
    once /healthz answers."""
    import sys
    import urllib.request

    root = Path(__file__).resolve().parents[1]
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env=dict(env), cwd=root,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"opsbot serve exited {proc.returncode}: "
                                   f"{log.read_text()[-800:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("opsbot serve did not answer /healthz") from None
                time.sleep(0.1)
        yield proc.pid
    finally:
        stop(proc, grace=30)


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, `grace` seconds to finish, then SIGKILL to its whole session."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller (v2: /sys/fs/cgroup)


@contextlib.contextmanager
def one_neighbour(pids: Sequence[int], name: str = "opsbot-bench-hosts") -> Iterator[str]:
    """Run `pids` (and every process they start from now on) as one CPU neighbour: one cpu
    cgroup with the default weight, instead of one scheduling group per SSH session.

    The simulated hosts run on the same cores as opsbot. sshd makes every session a session of
    its own (setsid), and under the kernel's autogroup scheduling each session weighs as much as
    opsbot's whole process: with 50 sessions running, opsbot gets about 1/50 of the machine. On
    a real deployment the hosts are other machines. Yields what was done (for the report), and
    moves the processes back to the root group at the end."""
    groups = [(CPU_CGROUP / name, CPU_CGROUP),
              (Path("/sys/fs/cgroup") / name, Path("/sys/fs/cgroup"))]
    for group, root in groups:
        if not (root / "cgroup.procs").exists():
            continue
        try:
            group.mkdir(exist_ok=True)
            moved = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, OSError):
                    (group / "cgroup.procs").write_text(str(pid))
                    moved.append(pid)
        except OSError as exc:
            yield f"not grouped ({exc.strerror or exc}): every session weighs as much as opsbot"
            return
        try:
            yield (f"the simulated hosts' processes ({len(moved)} started, and all they start) "
                   f"share one cpu cgroup of the default weight, as one neighbour")
        finally:
            for pid in pids:  # back to the root group; the sessions that ended are gone
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(str(pid))
            for task in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(task)
            with contextlib.suppress(OSError):
                group.rmdir()
        return
    yield "not grouped (no cpu cgroup here): every session weighs as much as opsbot"


UNIT = Path(__file__).resolve().parents[1] / "deploy" / "opsbot.service"
DEFAULT_WEIGHT = 100  # systemd's CPUWeight of a unit that sets none (cgroup v2's cpu.weight)


def unit_cpu_weight(unit: Path = UNIT) -> int:
    """The CPUWeight= the shipped systemd unit gives opsbot (systemd's default if none)."""
    for line in unit.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "CPUWeight" and value.strip().isdigit():
            return int(value.strip())
    return DEFAULT_WEIGHT


@contextlib.contextmanager
def weighted(weight: int, name: str = "opsbot-bench-opsbot"
             ) -> Iterator[tuple[Callable[[], None] | None, str]]:
    """A cpu cgroup of `weight` (systemd's CPUWeight scale: 100 = a unit's default) for a
    process about to start, as systemd runs the shipped unit: yields (preexec_fn that joins
    it, what was done). Under systemd a service is a cgroup of its own with its CPUWeight;
    started by hand here it would be one autogroup (session) among the lab's, whatever the
    unit says. cgroup v1: cpu.shares = 1024 x weight / 100; v2: cpu.weight = weight."""
    for group, knob, value in ((CPU_CGROUP / name, "cpu.shares", 1024 * weight // 100),
                               (Path("/sys/fs/cgroup") / name, "cpu.weight", weight)):
        if not (group.parent / "cgroup.procs").exists():
            continue
        try:
            group.mkdir(exist_ok=True)
            (group / knob).write_text(str(value))
        except OSError as exc:
            yield None, f"not weighted ({exc.strerror or exc})"
            return
        procs = group / "cgroup.procs"
        try:
            yield functools.partial(_join, procs), (
                f"in a cpu cgroup of its own with CPUWeight={weight} ({knob} {value})")
        finally:
            for task in procs.read_text().split():  # leftovers back to the root group
                with contextlib.suppress(OSError):
                    (group.parent / "cgroup.procs").write_text(task)
            with contextlib.suppress(OSError):
                group.rmdir()
        return
    yield None, "not weighted (no cpu cgroup here)"


@contextlib.contextmanager
def as_deployed() -> Iterator[tuple[Callable[[], None] | None, str]]:
    """opsbot's cpu cgroup as systemd gives it under deploy/opsbot.service (the unit's
    CPUWeight; OPSBOT_BENCH_WEIGHT=N another, 0 none, for A/B): yields (preexec_fn that joins
    it, or None; what was done, for the report)."""
    weight = int(os.environ.get("OPSBOT_BENCH_WEIGHT", unit_cpu_weight()))
    if not weight:
        yield None, "opsbot a plain child process (OPSBOT_BENCH_WEIGHT=0)"
        return
    with weighted(weight) as (join, how):
        yield join, f"opsbot {how}" + (", as systemd runs deploy/opsbot.service" if join else "")


def leave_cgroup() -> None:
    """Move the calling process back to the root cpu group (after `weighted`'s join)."""
    for root in (CPU_CGROUP, Path("/sys/fs/cgroup")):
        with contextlib.suppress(OSError):
            (root / "cgroup.procs").write_text(str(os.getpid()))
            return


def _join(procs: Path) -> None:
    """Move the calling process into the cgroup of `procs` (run between fork and exec)."""
    procs.write_text(str(os.getpid()))


def pids_of(*names: str) -> list[int]:
    """The pids of running processes with these exact names (pgrep -x)."""
    found: list[int] = []
    for name in names:
        out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
        found += [int(pid) for pid in out.stdout.split()]
    return found
