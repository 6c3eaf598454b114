"""scripts/bootstrap.sh starts dockerd as a daemon of its own: a lock the caller holds (as
`flock LOCK scripts/bench` does) or a pipe a CI runner reads is not held open by it for as long
as dockerd runs. A dockerd started by `scripts/bench` under flock once kept the benchmarks'
lock taken after the run had ended."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="start_daemon runs as root (sudo otherwise)")
def test_a_daemon_keeps_none_of_its_starters_descriptors(tmp_path: Path) -> None:
    lock, log = tmp_path / "lock", tmp_path / "daemon.log"
    script = (f'source "{ROOT}/scripts/bootstrap.sh"; exec 9>"{lock}"; '
              f'start_daemon "{log}" sleep 60')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          check=True)
    pid = int(done.stdout.split()[-1])
    try:
        fds = {int(fd.name): os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        assert set(fds) == {0, 1, 2}, fds
        assert fds[0] == "/dev/null" and fds[1] == fds[2] == str(log)
        assert str(lock) not in fds.values()
        assert os.getsid(pid) == pid  # a session of its own: no terminal, no caller's signals
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists() or \
                    Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z":
                break
            time.sleep(0.05)
