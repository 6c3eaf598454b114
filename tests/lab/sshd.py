"""A real OpenSSH server per test host, on its own loopback address, for the lab user.

Each server has its own config, ed25519 host key, authorized_keys and log in the lab folder. The
lab user logs in with /bin/sh (root's shell start-up runs pyenv, which is slow). sshd runs with
`UsePAM no`, which refuses an account whose password field is a locked `!`: the lab user's is `*`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .process import (
    LabError,
    LabProcess,
    make_world_traversable,
    port_open,
    require_binary,
    run,
    spawn,
    tail,
    wait_until,
)

LAB_USER = "opsbot-lab"
SSH_PORT = 2222
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _shadow_password(name: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name and len(fields) > 1:
                return fields[1]
    return None


def ensure_lab_user(name: str = LAB_USER) -> str:
    """Create the lab user if missing (home, /bin/sh, password `*`); idempotent. Needs root."""
    if os.geteuid() != 0:
        raise LabError("the test lab needs root (it creates a user and runs sshd, nginx, ...)")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = run([require_binary("useradd"), "-m", "-s", "/bin/sh", "-p", "*", name])
        if result.returncode not in (0, 9):  # 9: created meanwhile by a concurrent session
            raise LabError(f"useradd {name} failed: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    if entry.pw_shell != "/bin/sh":
        run([require_binary("usermod"), "-s", "/bin/sh", name], check=True)
    if _shadow_password(name) != "*":
        run([require_binary("usermod"), "-p", "*", name], check=True)
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return name


def _keygen(path: Path, comment: str) -> str:
    """Generate an ed25519 key pair at path (if missing); return the public key 'type base64'."""
    if not path.exists():
        run(
            [require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment,
             "-f", str(path)],
            check=True,
        )
    kind, blob = path.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def client_key(workdir: Path) -> Path:
    """The lab's client private key (one per lab folder, shared by all test hosts)."""
    folder = workdir / "client"
    make_world_traversable(folder)
    key = folder / "id_ed25519"
    _keygen(key, "opsbot-lab-client")
    return key


def host_pattern(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


@dataclass
class SshServer:
    name: str
    address: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    host_key_pub: str
    workdir: Path
    config: Path
    log_file: Path
    process: LabProcess = field(repr=False)

    @property
    def known_hosts_line(self) -> str:
        return f"{host_pattern(self.address, self.port)} {self.host_key_pub}"

    def inventory_vars(self) -> dict[str, str | int]:
        """This host's login as an Ansible inventory names it."""
        return {"ansible_host": self.address, "ansible_port": self.port,
                "ansible_user": self.user, "ansible_ssh_private_key_file": str(self.key_file)}

    def ssh_argv(self, command: str, known_hosts: Path | None = None) -> list[str]:
        """An `ssh` command line that logs in with the client key and verifies the host key."""
        return [
            "ssh", "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10",
            "-i", str(self.key_file),
            "-p", str(self.port),
            f"{self.user}@{self.address}",
            command,
        ]

    def ssh(self, command: str, timeout: float = 30.0, known_hosts: Path | None = None):
        """Run one command on this host through the system ssh client (CompletedProcess)."""
        return run(self.ssh_argv(command, known_hosts), timeout=timeout)

    def stop(self) -> None:
        self.process.stop()


def _read_banner(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1) as sock:
            sock.settimeout(2)
            return sock.recv(256).startswith(b"SSH-2.0-")
    except OSError:
        return False


def start_sshd(
    workdir: Path,
    address: str = "127.0.0.2",
    port: int = SSH_PORT,
    user: str = LAB_USER,
    name: str | None = None,
    stream_local: bool = True,
    max_sessions: int = 100,
) -> SshServer:
    """Start sshd on address:port for `user`; return once it has sent its SSH banner.
    stream_local=False: `AllowStreamLocalForwarding no` (streams to unix sockets refused);
    max_sessions: its `MaxSessions` (sessions at once on one connection)."""
    sshd = require_binary("sshd", "/usr/sbin/sshd")
    ensure_lab_user(user)
    if port_open(address, port):
        raise LabError(
            f"{address}:{port} is already in use (a stale lab? see `ss -ltnp`); "
            "set OPSBOT_LAB_SSH_PORT to use another port"
        )
    make_world_traversable(workdir)
    folder = workdir / f"sshd-{address}-{port}"
    make_world_traversable(folder)
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    host_key = folder / "ssh_host_ed25519_key"
    host_key_pub = _keygen(host_key, f"opsbot-lab-host-{address}")
    key_file = client_key(workdir)
    authorized_keys = folder / "authorized_keys"
    authorized_keys.write_text(key_file.with_suffix(".pub").read_text())
    authorized_keys.chmod(0o644)
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"{host_pattern(address, port)} {host_key_pub}\n")

    config = folder / "sshd_config"
    config.write_text(
        "\n".join([
            f"ListenAddress {address}:{port}",
            f"HostKey {host_key}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            f"AllowUsers {user}",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",
            f"AllowStreamLocalForwarding {'yes' if stream_local else 'no'}",
            "MaxStartups 100:30:200",
            f"MaxSessions {max_sessions}",
            "LoginGraceTime 30",
            "LogLevel VERBOSE",
            # non-root users get /usr/bin:/bin only; the runbooks call nginx (in /usr/sbin)
            f"SetEnv PATH={SESSION_PATH}",
            "Subsystem sftp internal-sftp",
            "",
        ])
    )
    log_file = folder / "sshd.log"
    process = spawn(
        f"sshd {address}:{port}", [sshd, "-D", "-f", str(config), "-E", str(log_file)],
        folder / "sshd.stdout",
    )

    def ready() -> bool:
        process.check_alive()
        return _read_banner(address, port)

    try:
        wait_until(ready, 15, f"sshd on {address}:{port}")
    except LabError as exc:
        process.stop()
        raise LabError(f"{exc}\n{log_file}:\n{tail(log_file)}") from None
    return SshServer(
        name=name or f"{address}:{port}",
        address=address,
        port=port,
        user=user,
        key_file=key_file,
        known_hosts=known_hosts,
        host_key_pub=host_key_pub,
        workdir=folder,
        config=config,
        log_file=log_file,
        process=process,
    )


def wrong_known_hosts(workdir: Path, server: SshServer) -> Path:
    """A known_hosts file that pins a different (fresh) host key for server's host:port."""
    folder = workdir / f"wrong-hostkey-{server.address}-{server.port}"
    make_world_traversable(folder)
    other = _keygen(folder / "ssh_host_ed25519_key", f"not-{server.name}")
    path = folder / "known_hosts"
    path.write_text(f"{host_pattern(server.address, server.port)} {other}\n")
    return path
