"""Process plumbing shared by the lab pieces: spawn, wait, stop, reap.

Every long-lived lab process is started in its own session (so its whole process group can be
signalled), with a clean environment (no pyenv shims), and with its output in a log file in the lab
folder. Processes started from the main thread also get PR_SET_PDEATHSIG, so a pytest that is
killed outright does not leave servers behind; `reap_stale_labs()` cleans up after one that was.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAB_PREFIX = "opsbot-lab-"
INSTALL_HINT = (
    "run the install step of .ci/run (apt-get install openssh-server nginx supervisor prometheus "
    "prometheus-alertmanager prometheus-blackbox-exporter)"
)


class LabError(RuntimeError):
    """The lab could not be set up or did not reach the state asked for."""


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def require_binary(name: str, *fallbacks: str) -> str:
    """Absolute path of a system binary, looked up on the system PATH only."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    raise LabError(f"{name} not found on {SYSTEM_PATH}: {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET, ignoring any *_proxy environment; (0, error) without an answer."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        exc.close()
        return exc.code, body
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc)


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- processes -------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


_live: set[LabProcess] = set()
_live_lock = threading.Lock()


@dataclass(eq=False)
class LabProcess:
    """One long-lived lab process (leader of its own process group)."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def check_alive(self) -> None:
        if not self.running():
            raise LabError(
                f"{self.name} exited with status {self.popen.returncode}; "
                f"{self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal the process, wait, then SIGKILL its whole process group (no leftovers)."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        with _live_lock:
            _live.discard(self)


def spawn(name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> LabProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    in_main_thread = threading.current_thread() is threading.main_thread()
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=clean_env(),
            start_new_session=True,
            preexec_fn=_die_with_parent if in_main_thread else None,
        )
    process = LabProcess(name=name, argv=list(argv), log_path=log_path, popen=popen)
    with _live_lock:
        _live.add(process)
    return process


def stop_all() -> None:
    """Stop every lab process this interpreter started and has not stopped yet."""
    with _live_lock:
        processes = list(_live)
    for process in processes:
        process.stop()


def run(
    argv: Sequence[str], timeout: float = 30.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """A short command with a clean environment; stdout and stderr captured as text."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise LabError(f"{' '.join(argv)} exited {result.returncode}: {output}")
    return result


# --- lab folders ---------------------------------------------------------------------------------

def make_world_traversable(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)


def make_lab_dir(base: str = "/tmp") -> Path:
    """A fresh lab folder under /tmp, readable and traversable by the lab user."""
    root = Path(tempfile.mkdtemp(prefix=LAB_PREFIX, dir=base))
    root.chmod(0o755)
    (root / "owner.pid").write_text(f"{os.getpid()}\n")
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_labs(base: str = "/tmp") -> list[Path]:
    """Kill the processes of lab folders whose owning pytest is gone, and remove those folders."""
    reaped: list[Path] = []
    for root in Path(base).glob(LAB_PREFIX + "*"):
        owner_file = root / "owner.pid"
        try:
            owner = int(owner_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        marker = str(root).encode()
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                cmdline = (proc_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if marker not in cmdline:
                continue
            pid = int(proc_dir.name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped
