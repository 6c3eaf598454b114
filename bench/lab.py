"""The benchmark lab: N real sshd hosts on loopback, their inventory, known_hosts and runbooks.

Reuses the test lab (tests/lab): each host is an OpenSSH server on its own 127.0.x.y:2222 for the
lab user, whose login shell is /bin/sh. Everything started here is stopped by `BenchLab.close()`.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.lab.fixtures import start_host
from tests.lab.process import make_lab_dir, reap_stale_labs, stop_all
from tests.lab.sshd import SshServer, client_key

FIRST_OCTET = 100  # hosts on 127.0.0.100 and up: clear of the test lab's .2/.3
ONE_COMMAND = "cat /proc/loadavg"
LOADAVG_RUNBOOK = {
    "name": "loadavg",
    "title": "One command on every host (benchmark)",
    "steps": [{"id": "loadavg", "title": "Load average", "kind": "ssh",
               "command": ONE_COMMAND}],
}


@dataclass
class BenchLab:
    root: Path
    hosts: list[SshServer]
    web: Any = None  # the web lab, once started
    big_container: str | None = None  # a container with a 200 MB log, once made
    _stoppers: list[Any] = field(default_factory=list)

    @property
    def key_file(self) -> Path:
        return self.hosts[0].key_file

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yaml"

    @property
    def runbooks(self) -> Path:
        return self.root / "runbooks"

    def write_files(self) -> None:
        """known_hosts, an Ansible YAML inventory (group `bench`), and a runbooks folder with
        only the one-command runbook (the whole diagnosis uses the project's runbooks/)."""
        self.known_hosts.write_text("".join(f"{h.known_hosts_line}\n" for h in self.hosts))
        hosts = {h.name: h.inventory_vars() for h in self.hosts}
        self.inventory.write_text(yaml.safe_dump(
            {"all": {"children": {"bench": {"hosts": hosts}}}}, sort_keys=False))
        self.runbooks.mkdir(exist_ok=True)
        (self.runbooks / "loadavg.yaml").write_text(yaml.safe_dump(LOADAVG_RUNBOOK,
                                                                   sort_keys=False))

    @property
    def web_inventory(self) -> Path:
        return self.root / "inventory-web.yaml"

    def start_web(self) -> Any:
        """The test lab's nginx -> supervisord backend -> Redis, and an inventory whose 50
        hosts all point at it (host variables as tests/lab/fixtures.py writes them)."""
        from tests.lab.web import start_web

        if self.web is not None:
            return self.web
        web = self.web = start_web(self.root / "web")
        self.on_close(web.stop)
        hosts = {h.name: {**h.inventory_vars(), **web.inventory_vars()} for h in self.hosts}
        self.web_inventory.write_text(yaml.safe_dump(
            {"all": {"children": {"bench": {"hosts": hosts}}}}, sort_keys=False))
        return web

    def pssh_hosts(self) -> list[tuple[str, int]]:
        return [(h.address, h.port) for h in self.hosts]

    def on_close(self, stopper: Any) -> None:
        self._stoppers.append(stopper)

    def close(self) -> None:
        for stopper in reversed(self._stoppers):
            try:
                stopper()
            except Exception as exc:  # keep stopping the rest
                print(f"bench: cleanup: {exc}")
        for host in self.hosts:
            host.stop()
        stop_all()
        shutil.rmtree(self.root, ignore_errors=True)


def start_lab(count: int = 50) -> BenchLab:
    """`count` sshd hosts (bench01..), started a few at a time; the lab files written."""
    if not 1 <= count <= 150:
        raise ValueError("between 1 and 150 hosts")
    reap_stale_labs()
    root = make_lab_dir()
    names = [(f"bench{i + 1:02d}", FIRST_OCTET + i) for i in range(count)]
    try:
        client_key(root)  # once, before the parallel starts share it
        with ThreadPoolExecutor(8) as pool:
            hosts = list(pool.map(lambda n: start_host(root, n[0], n[1]), names))
    except BaseException:
        stop_all()
        shutil.rmtree(root, ignore_errors=True)
        raise
    lab = BenchLab(root, hosts)
    lab.write_files()
    return lab


def log_runbooks(folder: Path, nginx_log: Path, container: str) -> None:
    """Runbooks that read the tail of a log: a file over SSH, and a container's (json-file)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nginx-log.yaml").write_text(yaml.safe_dump({
        "name": "nginx-log", "title": "The tail of nginx's error log (benchmark)",
        "steps": [{"id": "nginx_error_log", "title": "nginx error log (tail)", "kind": "ssh",
                   "command": f"tail -n 40 {nginx_log}"}]}, sort_keys=False))
    (folder / "container-log.yaml").write_text(yaml.safe_dump({
        "name": "container-log", "title": "The tail of a container's log (benchmark)",
        "steps": [{"id": "docker_logs", "title": "container log (tail)", "kind": "docker",
                   "action": "logs", "container": container, "tail": 40}]}, sort_keys=False))
