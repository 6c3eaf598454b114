"""pytest fixtures of the Docker lab (load with `pytest_plugins = ["tests.lab.docker_fixtures"]`).

Session-scoped: docker_engine (the engine's version; dockerd started if needed), busybox_image
(its tag), docker_sshd (dock01: sshd on 127.0.0.4:2222 whose user opsbot-lab is in the docker
group), nodocker_sshd (dock02: sshd on 127.0.0.5:2222 for opsbot-lab-nodocker, not in it),
docker_known_hosts (pins both). Function-scoped: docker_lab (a DockerLab; the containers and
networks it made are removed after the test), front_nginx (start(upstream_port) -> FrontNginx,
stopped after the test). When 127.0.0.4:2222 is taken (another session), 127.0.1.4, ... is used:
read the addresses from the fixtures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .docker import (
    DockerLab,
    FrontNginx,
    deny_docker_socket,
    ensure_busybox_image,
    ensure_dockerd,
    grant_docker_socket,
    reap_stale_containers,
    start_front_nginx,
)
from .fixtures import _timings, start_host
from .process import LabError
from .sshd import LAB_USER, SshServer, ensure_lab_user

NODOCKER_USER = "opsbot-lab-nodocker"


def _fail(exc: Exception) -> None:
    pytest.fail(f"docker lab could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The local engine's version; dockerd is started (and left running) if it was not."""
    started = time.monotonic()
    try:
        version = ensure_dockerd()
        reap_stale_containers()
    except LabError as exc:
        _fail(exc)
    _timings[f"docker engine {version}"] = time.monotonic() - started
    return version


@pytest.fixture(scope="session")
def busybox_image(docker_engine: str) -> str:
    started = time.monotonic()
    try:
        tag = ensure_busybox_image()
    except LabError as exc:
        _fail(exc)
    _timings[f"image {tag}"] = time.monotonic() - started
    return tag


@pytest.fixture
def docker_lab(lab_dir: Path, busybox_image: str) -> Iterator[DockerLab]:
    lab = DockerLab(lab_dir / "docker", busybox_image)
    yield lab
    lab.cleanup()


@pytest.fixture(scope="session")
def docker_sshd(lab_dir: Path, docker_engine: str) -> Iterator[SshServer]:
    """dock01: the lab user may use /var/run/docker.sock (docker group) over SSH."""
    try:
        grant_docker_socket(ensure_lab_user(LAB_USER))
    except LabError as exc:
        _fail(exc)
    server = start_host(lab_dir, "dock01", 4, LAB_USER)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nodocker_sshd(lab_dir: Path, docker_engine: str) -> Iterator[SshServer]:
    """dock02: a user outside the docker group (socket permission denied)."""
    try:
        deny_docker_socket(ensure_lab_user(NODOCKER_USER))
    except LabError as exc:
        _fail(exc)
    server = start_host(lab_dir, "dock02", 5, NODOCKER_USER)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docker_known_hosts(lab_dir: Path, docker_sshd: SshServer, nodocker_sshd: SshServer) -> Path:
    path = lab_dir / "docker_known_hosts"
    path.write_text(f"{docker_sshd.known_hosts_line}\n{nodocker_sshd.known_hosts_line}\n")
    return path


@pytest.fixture
def front_nginx(lab_dir: Path) -> Iterator[Callable[[int], FrontNginx]]:
    started: list[FrontNginx] = []

    def start(upstream_port: int) -> FrontNginx:
        try:
            front = start_front_nginx(lab_dir / f"front-{len(started)}-{upstream_port}",
                                      upstream_port)
        except LabError as exc:
            _fail(exc)
        started.append(front)
        return front

    yield start
    for front in started:
        front.stop()
