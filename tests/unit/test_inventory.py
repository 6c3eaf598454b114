from pathlib import Path

import pytest
import yaml

from bot.errors import InventoryError
from bot.inventory import load_inventory, parse_inventory

INVENTORY = """
all:
  vars:
    ansible_user: ops
  children:
    web:
      vars: {opsbot_docker: ssh}
      hosts:
        web01: {ansible_host: 10.0.0.5, ansible_port: 2222, opsbot_upstream_port: 8001}
        web02:
    db:
      hosts:
        db01: {ansible_user: postgres, ansible_ssh_private_key_file: ~/.ssh/db}
"""


def test_groups_children_and_vars() -> None:
    inv = parse_inventory(yaml.safe_load(INVENTORY))
    web01 = inv.hosts["web01"]
    assert (web01.address, web01.port, web01.user, web01.docker) == ("10.0.0.5", 2222, "ops", "ssh")
    assert web01.opsbot_vars() == {"docker": "ssh", "upstream_port": 8001}
    assert inv.hosts["db01"].user == "postgres"
    assert inv.hosts["db01"].key_file.endswith("/.ssh/db")
    assert [h.name for h in inv.resolve("web")] == ["web01", "web02"]
    assert {h.name for h in inv.resolve("all")} == {"web01", "web02", "db01"}


def test_alert_host_matches_names_then_addresses() -> None:
    inv = parse_inventory(yaml.safe_load(INVENTORY))
    assert inv.find("web01").name == "web01"
    assert inv.find("10.0.0.5").name == "web01"
    assert inv.find("web01; touch /tmp/pwned") is None


def test_unknown_target_and_bad_file(tmp_path: Path) -> None:
    inv = parse_inventory(yaml.safe_load(INVENTORY))
    with pytest.raises(InventoryError, match="no host or group named 'nope'"):
        inv.resolve("nope")
    bad = tmp_path / "inv.yaml"
    bad.write_text("all:\n  hosts: [\n")
    with pytest.raises(InventoryError, match=r"inv.yaml:\d+: not valid YAML"):
        load_inventory(bad)
    bad.write_text("all:\n  host:\n    web01:\n")
    with pytest.raises(InventoryError, match="unknown key 'host'"):
        load_inventory(bad)
    assert load_inventory(tmp_path / "missing.yaml").hosts == {}
