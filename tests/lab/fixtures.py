"""pytest fixtures of the real test lab (load with `pytest_plugins = ["tests.lab.fixtures"]`).

Session-scoped: lab_dir, sshd_host (web01, 127.0.0.2:2222), sshd_host2 (web02, 127.0.0.3:2222),
lab_hosts, web_lab, known_hosts_file, inventory_file. Function-scoped: healthy_web (heal() before
and after the test), alerting_factory / start_alerting (start an Alerting stack, stopped after
the test). Nothing is skipped: a missing server program fails the test with what to install.

OPSBOT_LAB_SSH_PORT changes the ssh port (default 2222); when 127.0.0.2:2222 is taken (another
session's lab), web01 moves to 127.0.1.2, 127.0.2.2, ... (web02 likewise from 127.0.0.3): use the
fixtures' attributes, not literal addresses. OPSBOT_LAB_KEEP=1 keeps the lab folder afterwards.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from .alerting import Alerting
from .alerting import start_alerting as _start_alerting
from .process import LabError, make_lab_dir, port_open, reap_stale_labs, stop_all
from .sshd import LAB_USER, SSH_PORT, SshServer, start_sshd
from .web import WebLab, start_web, unmount_stale_labs

_timings: dict[str, float] = {}


def _lab_failure(exc: Exception) -> None:
    pytest.fail(f"test lab could not start: {exc}", pytrace=False)


def _ssh_port() -> int:
    return int(os.environ.get("OPSBOT_LAB_SSH_PORT", SSH_PORT))


def start_host(lab_dir: Path, name: str, last_octet: int, user: str = LAB_USER, *,
               stream_local: bool = True, max_sessions: int = 100) -> SshServer:
    """sshd for test host `name` on 127.0.0.<last_octet> (or the next free 127.0.x.<octet>);
    stream_local=False: its sshd refuses streams to unix sockets; max_sessions: its
    MaxSessions."""
    port = _ssh_port()
    started = time.monotonic()
    last_error: Exception | None = None
    for second_octet in range(0, 40):
        address = f"127.0.{second_octet}.{last_octet}"
        if port_open(address, port):
            continue
        try:
            server = start_sshd(lab_dir, address=address, port=port, user=user, name=name,
                                stream_local=stream_local, max_sessions=max_sessions)
        except LabError as exc:  # lost a race for the address, or sshd is missing / broken
            last_error = exc
            if "not found" in str(exc):
                break
            continue
        _timings[f"sshd {name} ({address}:{port}, {user})"] = time.monotonic() - started
        return server
    _lab_failure(last_error or LabError(f"no free 127.0.x.{last_octet}:{port} for sshd"))
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def lab_dir() -> Iterator[Path]:
    """A fresh folder /tmp/opsbot-lab-XXXX (0755), removed at the end of the session."""
    if os.geteuid() != 0:
        pytest.fail("the test lab must run as root (it starts sshd, nginx, supervisord)",
                    pytrace=False)
    unmount_stale_labs()
    reap_stale_labs()
    root = make_lab_dir()
    yield root
    stop_all()
    if not os.environ.get("OPSBOT_LAB_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_host(lab_dir: Path) -> Iterator[SshServer]:
    """Test host web01: a real sshd on 127.0.0.2:2222 for user opsbot-lab."""
    server = start_host(lab_dir, "web01", 2)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd_host2(lab_dir: Path) -> Iterator[SshServer]:
    """Test host web02: a second sshd on 127.0.0.3:2222 (same machine, same web lab)."""
    server = start_host(lab_dir, "web02", 3)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def lab_hosts(sshd_host: SshServer, sshd_host2: SshServer) -> dict[str, SshServer]:
    return {sshd_host.name: sshd_host, sshd_host2.name: sshd_host2}


@pytest.fixture(scope="session")
def web_lab(lab_dir: Path) -> Iterator[WebLab]:
    """nginx -> docservice (ds:docservice under supervisord) -> Redis, healthy at start."""
    started = time.monotonic()
    try:
        lab = start_web(lab_dir / "web")
    except LabError as exc:
        _lab_failure(exc)
    _timings["web lab (redis + supervisord + docservice + nginx)"] = time.monotonic() - started
    yield lab
    lab.stop()


@pytest.fixture
def healthy_web(web_lab: WebLab) -> Iterator[WebLab]:
    """The web lab healed before the test (and again after it, for the next test)."""
    web_lab.heal()
    yield web_lab
    web_lab.heal()


@pytest.fixture(scope="session")
def known_hosts_file(lab_dir: Path, lab_hosts: dict[str, SshServer]) -> Path:
    """known_hosts pinning the host keys of web01 and web02 (`[address]:port ssh-ed25519 ...`)."""
    path = lab_dir / "known_hosts"
    path.write_text("".join(f"{s.known_hosts_line}\n" for s in lab_hosts.values()))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="session")
def inventory_file(
    lab_dir: Path, lab_hosts: dict[str, SshServer], web_lab: WebLab
) -> Path:
    """Ansible YAML inventory: group `web` = web01 + web02, with the lab's real paths, its
    supervisord log and its Redis as the one dependency (`redis:127.0.0.1:<port>`)."""
    hosts = {name: {**server.inventory_vars(), **web_lab.inventory_vars()}
             for name, server in lab_hosts.items()}
    path = lab_dir / "inventory.yaml"
    path.write_text(
        yaml.safe_dump({"all": {"children": {"web": {"hosts": hosts}}}}, sort_keys=False)
    )
    path.chmod(0o644)
    return path


AlertingFactory = Callable[..., Alerting]


@pytest.fixture
def alerting_factory(request: pytest.FixtureRequest, lab_dir: Path) -> Iterator[AlertingFactory]:
    """start(webhook_url, bearer_token, probe_url=None, host_label="web01", scrape_interval="1s").

    Starts blackbox exporter + Prometheus + Alertmanager posting to webhook_url; probe_url
    defaults to the web lab's proxy_url. Everything started is stopped after the test.
    """
    started: list[Alerting] = []

    def start(
        webhook_url: str,
        bearer_token: str,
        probe_url: str | None = None,
        host_label: str = "web01",
        scrape_interval: str = "1s",
    ) -> Alerting:
        if probe_url is None:
            probe_url = request.getfixturevalue("web_lab").proxy_url
        workdir = lab_dir / f"alerting-{len(list(lab_dir.glob('alerting-*'))) + 1}"
        began = time.monotonic()
        try:
            alerting = _start_alerting(
                workdir, probe_url, webhook_url, bearer_token,
                host_label=host_label, scrape_interval=scrape_interval,
            )
        except LabError as exc:
            _lab_failure(exc)
        _timings.setdefault("alerting (blackbox + Prometheus + Alertmanager)",
                            time.monotonic() - began)
        started.append(alerting)
        return alerting

    yield start
    for alerting in started:
        alerting.stop()


@pytest.fixture(name="start_alerting")
def start_alerting_fixture(alerting_factory: AlertingFactory) -> AlertingFactory:
    """The same factory as alerting_factory, under the name of the function it wraps."""
    return alerting_factory


def pytest_terminal_summary(terminalreporter) -> None:
    if _timings:
        terminalreporter.write_sep("-", "opsbot test lab timings")
        for what, seconds in _timings.items():
            terminalreporter.write_line(f"{what}: {seconds:.2f}s")
