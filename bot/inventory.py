"""Ansible YAML inventory: groups, hosts, vars, children; a target is a host or a group."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import InventoryError
from bot.models import Host


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
        port = hvars.get("ansible_port", 22)
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise InventoryError(f"{source}: host {name}: ansible_port must be a number") from None
        key = hvars.get("ansible_ssh_private_key_file")
        hosts[name] = Host(
            name=name,
            address=str(hvars.get("ansible_host", name)),
            port=port,
            user=str(hvars["ansible_user"]) if hvars.get("ansible_user") else None,
            key_file=str(Path(str(key)).expanduser()) if key else None,
            vars=dict(hvars),
            groups=tuple(host_groups.get(name, ())),
        )
    groups = {g: tuple(n) for g, n in members.items() if g not in hosts}
    return Inventory(hosts=hosts, groups=groups)


def load_inventory(path: Path) -> Inventory:
    """An absent inventory is an empty one: alerts still open incidents that say so."""
    if not path.exists():
        return Inventory()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InventoryError(f"{path}{line}: not valid YAML") from None
    except OSError as exc:
        raise InventoryError(f"{path}: {exc.strerror}") from None
    return parse_inventory(data, str(path))
