"""known_hosts as the libssh2 client reads it: the same keys trusted as asyncssh trusts (which
the asyncssh pool uses), for plain, bracketed, wildcard, negated and hashed names; revoked keys
refused; an unreadable line makes the whole file unusable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncssh
import pytest

from bot.executors.knownhosts import KnownHosts, KnownHostsUnreadable


def new_key(tmp_path: Path, name: str) -> str:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    return {n: new_key(tmp_path, n) for n in ("a", "b", "c", "d", "e")}


def asyncssh_trusts(path: Path, host: str, address: str, port: int) -> set[bytes]:
    known = asyncssh.read_known_hosts(str(path))
    trusted = known.match(host, address, port)[0]
    return {k.public_data for k in trusted}


def ours(path: Path, host: str, address: str, port: int) -> set[bytes]:
    trusted = KnownHosts.read(path).trusted(host, port, address)
    return {blob for _, blob in trusted.keys if trusted.allows(blob)}


def test_the_same_keys_are_trusted_as_by_asyncssh(tmp_path: Path, keys: dict[str, str]) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(
        f"# a comment\n\n"
        f"web01,10.0.0.1 {keys['a']}\n"
        f"[web01]:2222 {keys['b']}\n"
        f"*.example.org,!db.example.org {keys['c']}\n"
        f"[10.0.0.?]:2200 {keys['d']}\n"
        f"hashed.example.net {keys['e']}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    assert "hashed.example.net" not in path.read_text()  # every name hashed but the patterns
    queries = [("web01", "10.0.0.1", 22), ("web01", "10.0.0.9", 22), ("web01", "10.0.0.9", 2222),
               ("other", "10.0.0.1", 22), ("other", "10.0.0.1", 2222),
               ("app.example.org", "192.0.2.1", 22), ("db.example.org", "192.0.2.1", 22),
               ("APP.Example.org", "192.0.2.1", 22), ("x", "10.0.0.7", 2200),
               ("x", "10.0.0.17", 2200), ("hashed.example.net", "192.0.2.2", 22),
               ("hashed.example.net", "192.0.2.2", 2222)]
    for host, address, port in queries:
        assert ours(path, host, address, port) == asyncssh_trusts(path, host, address, port), \
            (host, address, port)
    assert ours(path, "web01", "10.0.0.9", 2222) != ours(path, "web01", "10.0.0.9", 22)
    assert not ours(path, "other", "10.0.0.9", 2222)


def test_a_revoked_key_is_never_trusted(tmp_path: Path, keys: dict[str, str]) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"web01 {keys['a']}\nweb01 {keys['b']}\n@revoked web01 {keys['a']}\n")
    trusted = KnownHosts.read(path).trusted("web01", 22)
    blobs = {n: asyncssh.import_public_key(keys[n]).public_data for n in ("a", "b")}
    assert not trusted.allows(blobs["a"]) and trusted.allows(blobs["b"])
    assert trusted.algorithms == ("ssh-ed25519",)


def test_a_line_that_cannot_be_read_makes_the_file_unusable(tmp_path: Path,
                                                            keys: dict[str, str]) -> None:
    path = tmp_path / "known_hosts"
    for bad in ("web01 ssh-ed25519", "web01 ssh-ed25519 not*base64", f"@trusted web01 {keys['a']}"):
        path.write_text(f"web02 {keys['b']}\n{bad}\n")
        with pytest.raises(KnownHostsUnreadable, match=f"known_hosts file {path}, line 2: "):
            KnownHosts.read(path)
    with pytest.raises(KnownHostsUnreadable, match="no-such-file"):
        KnownHosts.read(tmp_path / "no-such-file")
