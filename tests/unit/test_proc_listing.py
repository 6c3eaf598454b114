"""Discovery's process list read from /proc by one grep (bot.discovery.probe.PROCS) is what
`ps -ww -eo pid=,ppid=,user=,args=` lists (bot.discovery.probe.PS), on this machine's real
processes, odd arguments included, but for empty arguments (Linux only)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.discovery.owners import parse_proc, parse_ps
from bot.discovery.probe import PROCS, PS

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def sh(command: str) -> tuple[int, str]:
    done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=60, check=False)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def squeezed(args: str) -> str:
    return re.sub("  +", " ", args)


def test_the_grep_lists_what_ps_lists() -> None:
    odd = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                            "two words", "", "new\nline", "tab\there", "spaced   out",
                            "(paren) x", ""])
    try:
        time.sleep(0.2)  # exec'd
        before = parse_ps(sh(PS)[1])
        status, listed = sh(PROCS)
        procs = parse_proc(listed)
        by_ps = parse_ps(sh(PS)[1])
    finally:
        odd.kill()
        odd.wait()
    assert status == 0
    assert by_ps[odd.pid].args == (
        f"{sys.executable} -c import time; time.sleep(60) two words  new line tab?here "
        "spaced   out (paren) x")
    assert procs[odd.pid].args == (  # the empty argument gone, the spaces inside one kept
        f"{sys.executable} -c import time; time.sleep(60) two words new line tab?here "
        "spaced   out (paren) x")
    # the processes that were the same before and after (others come, go, exec and rename)
    both = {p for p in set(procs) & set(by_ps) if before.get(p) == by_ps[p]}
    assert len(both) >= len(by_ps) // 2
    # ps shows an empty argument as one more space and the grep drops it; so runs of spaces
    # (an empty argument's, or ones inside an argument such as an indented script) are one
    assert {p: (procs[p].ppid, squeezed(procs[p].args)) for p in both} == \
        {p: (by_ps[p].ppid, squeezed(by_ps[p].args)) for p in both}
    assert procs[1].ppid == 0


def test_a_kernel_thread_and_a_zombie_read_as_ps_shows_them() -> None:
    zombie = subprocess.Popen(["true"])
    time.sleep(0.2)  # exited, not reaped: a zombie
    try:
        procs = parse_proc(sh(PROCS)[1])
        by_ps = parse_ps(sh(PS)[1])
    finally:
        zombie.wait()
    assert procs[zombie.pid].args == by_ps[zombie.pid].args == "[true] <defunct>"
    threads = [p for p in by_ps.values() if p.ppid == 2  # kthreadd's children, but workers
               and not p.args.startswith("[kworker/")]  # (renamed as they take work)
    assert all(procs[p.pid].args == p.args for p in threads if p.pid in procs)  # none in a
    # PID namespace of its own (a container)
