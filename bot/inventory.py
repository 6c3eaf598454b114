"""Ansible YAML inventory: groups, hosts, vars, children; a target is a host or a group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import InventoryError
from bot.models import Host
from bot.yamlload import SAFE_LOADER


@dataclass(frozen=True)
class Inventory:
    hosts: Mapping[str, Host] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group -> host names

    def resolve(self, target: str) -> list[Host]:
        """Hosts named by a host name, a group name, or an `ansible_host` address."""
        if target in self.hosts:
            return [self.hosts[target]]
        if target in self.groups:
            return [self.hosts[name] for name in self.groups[target]]
        found = self.find(target)
        if found:
            return [found]
        raise InventoryError(f"no host or group named {target!r} in the inventory")

    def find(self, name: str) -> Host | None:
        """Match an alert's host: inventory host names first, then `ansible_host` values."""
        if name in self.hosts:
            return self.hosts[name]
        for host in self.hosts.values():
            if host.address == name:
                return host
        return None


# Ansible's connection variables (and their older ssh_ spellings): any other `ansible_*` name is
# accepted as Ansible accepts it, unless it is one letter-swap away from one of these.
ANSIBLE_VARS = frozenset({
    "ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
    "ansible_ssh_host", "ansible_ssh_port", "ansible_ssh_user", "ansible_private_key_file",
    "ansible_connection", "ansible_password", "ansible_ssh_pass", "ansible_become",
    "ansible_become_user", "ansible_become_method", "ansible_become_password",
    "ansible_become_pass", "ansible_python_interpreter", "ansible_shell_type",
    "ansible_shell_executable", "ansible_ssh_common_args", "ansible_ssh_extra_args",
    "ansible_ssh_executable", "ansible_network_os", "ansible_timeout",
})


def _first(hvars: Mapping[str, Any], *names: str) -> Any:
    return next((hvars[n] for n in names if hvars.get(n) not in (None, "")), None)


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return close[0] if close else None


def _check_ansible_vars(source: str, host: str, hvars: Mapping[str, Any]) -> None:
    for key in hvars:
        if key.startswith("ansible_") and key not in ANSIBLE_VARS:
            guess = did_you_mean(key, ANSIBLE_VARS)
            if guess:
                raise InventoryError(f"{source}: host {host}: unknown variable {key!r} "
                                     f"(did you mean {guess!r}?)")


def unknown_opsbot_vars(inventory: Inventory, known: Iterable[str]) -> list[str]:
    """One warning per `opsbot_*` host variable that nothing reads (a typo, most often).
    `known` are the names without the prefix: every runbook parameter, plus `docker`; each
    parameter may also have an allow-list, `opsbot_allowed_<param>` (bot.params)."""
    known = set(known)
    names = {f"opsbot_{k}" for k in known} | {f"opsbot_allowed_{k}" for k in known} | \
        {"opsbot_docker"}
    warnings = []
    for host in inventory.hosts.values():
        for key in host.vars:
            if key.startswith("opsbot_") and key not in names:
                guess = did_you_mean(key, names)
                warnings.append(f"inventory: host {host.name}: {key} is read by no runbook"
                                + (f" (did you mean {guess}?)" if guess else ""))
    return warnings


def _as_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"{where} must be a mapping")
    return value


def parse_inventory(data: Any, source: str = "inventory") -> Inventory:
    root = _as_mapping(data, source)
    host_vars: dict[str, dict[str, Any]] = {}
    host_groups: dict[str, list[str]] = {}
    members: dict[str, list[str]] = {}

    def walk(name: str, body: Any, inherited: dict[str, Any], path: str) -> list[str]:
        body = _as_mapping(body, f"{source}: group {path}")
        unknown = set(body) - {"hosts", "vars", "children"}
        if unknown:
            raise InventoryError(f"{source}: group {path} has unknown key {sorted(unknown)[0]!r}"
                                 " (expected hosts, vars, children)")
        group_vars = {**inherited, **_as_mapping(body.get("vars"), f"{source}: {path}.vars")}
        names: list[str] = []
        for host, hvars in _as_mapping(body.get("hosts"), f"{source}: {path}.hosts").items():
            host = str(host)
            merged = {**group_vars, **host_vars.get(host, {}),
                      **_as_mapping(hvars, f"{source}: host {host}")}
            host_vars[host] = merged
            host_groups.setdefault(host, [])
            if name not in host_groups[host]:
                host_groups[host].append(name)
            names.append(host)
        for child, child_body in _as_mapping(body.get("children"),
                                             f"{source}: {path}.children").items():
            child_names = walk(str(child), child_body, group_vars, f"{path}.{child}")
            for host in child_names:
                if name not in host_groups[host]:
                    host_groups[host].append(name)
            names.extend(child_names)
        members.setdefault(name, [])
        members[name].extend(n for n in names if n not in members[name])
        return names

    for group, body in root.items():
        walk(str(group), body, {}, str(group))

    hosts: dict[str, Host] = {}
    for name, hvars in host_vars.items():
        _check_ansible_vars(source, name, hvars)
        port = _first(hvars, "ansible_port", "ansible_ssh_port") or 22
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise InventoryError(f"{source}: host {name}: ansible_port must be a number") from None
        key = _first(hvars, "ansible_ssh_private_key_file", "ansible_private_key_file")
        user = _first(hvars, "ansible_user", "ansible_ssh_user")
        hosts[name] = Host(
            name=name,
            address=str(_first(hvars, "ansible_host", "ansible_ssh_host") or name),
            port=port,
            user=str(user) if user else None,
            key_file=str(Path(str(key)).expanduser()) if key else None,
            vars=dict(hvars),
            groups=tuple(host_groups.get(name, ())),
        )
    groups = {g: tuple(n) for g, n in members.items() if g not in hosts}
    return Inventory(hosts=hosts, groups=groups)


def missing_inventory(path: Path) -> str | None:
    """One line for the log when the inventory file is absent (then it is empty: alerts still
    open incidents, which say that no host matched)."""
    if path.exists():
        return None
    where = f" (relative to {Path.cwd()})" if not path.is_absolute() else ""
    return f"inventory {path}{where} not found: 0 hosts (set OPSBOT_INVENTORY)"


def load_inventory(path: Path) -> Inventory:
    """An absent inventory is an empty one: alerts still open incidents that say so."""
    if not path.exists():
        return Inventory()
    try:
        data = yaml.load(path.read_text(), Loader=SAFE_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InventoryError(f"{path}{line}: not valid YAML") from None
    except OSError as exc:
        raise InventoryError(f"{path}: {exc.strerror}") from None
    return parse_inventory(data, str(path))
