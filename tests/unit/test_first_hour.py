"""What a new user meets in the first hour: typos named, one-line start-up errors, a shared
config file, runbook parameters listed, exports that behave in a pipe, a postmortem draft."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from bot.config import load_settings
from bot.errors import InventoryError
from bot.inventory import parse_inventory, unknown_opsbot_vars
from bot.postmortem import parse_time
from tests.unit.test_cli import opsbot


def test_inventory_typo_of_a_connection_variable_is_named() -> None:
    data = {"web": {"hosts": {"web01": {"ansible_hots": "10.0.0.5"}}}}
    with pytest.raises(InventoryError, match=r"web01: unknown variable 'ansible_hots' "
                                             r"\(did you mean 'ansible_host'\?\)"):
        parse_inventory(data, "inv.yaml")


def test_other_ansible_variables_and_old_spellings_are_accepted() -> None:
    inv = parse_inventory({"web": {"hosts": {"web01": {
        "ansible_ssh_host": "10.0.0.5", "ansible_ssh_port": 2200, "ansible_ssh_user": "ops",
        "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": True}}}})
    host = inv.hosts["web01"]
    assert (host.address, host.port, host.user) == ("10.0.0.5", 2200, "ops")


def test_unknown_opsbot_variable_is_warned_with_a_guess() -> None:
    inv = parse_inventory({"web": {"hosts": {"web01": {"opsbot_upstrem_port": 9000,
                                                       "opsbot_docker": "ssh"}}}})
    warnings = unknown_opsbot_vars(inv, {"upstream_port", "program"})
    assert warnings == ["inventory: host web01: opsbot_upstrem_port is read by no runbook "
                        "(did you mean opsbot_upstream_port?)"]


def test_relative_paths_in_the_config_file_are_relative_to_it(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "opsbot.toml"
    conf.parent.mkdir()
    conf.write_text('inventory = "inventory.yaml"\ndb = "/var/lib/opsbot.db"\n')
    settings = load_settings({}, conf)
    assert settings.inventory == conf.parent / "inventory.yaml"
    assert settings.db == Path("/var/lib/opsbot.db")
    env = load_settings({"OPSBOT_INVENTORY": "other.yaml"}, conf)
    assert env.inventory == Path("other.yaml")  # the environment wins, as given


def test_runbooks_show_lists_parameters_and_host_variables(tmp_path: Path) -> None:
    out = opsbot(tmp_path, "runbooks", "show", "nginx-502")
    assert out.returncode == 0, out.stderr
    assert "parameters" in out.stdout and "opsbot_docker" in out.stdout
    assert "upstream_port" in out.stdout and "opsbot_upstream_port" in out.stdout
    missing = opsbot(tmp_path, "runbooks", "show", "nope")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


def test_a_setting_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = opsbot(tmp_path, "incidents", OPSBOT_LISTEN="nowhere")
    assert out.returncode == 2
    assert out.stderr == "opsbot: OPSBOT_LISTEN must be host:port, got 'nowhere'\n"


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = opsbot(tmp_path, "serve", OPSBOT_LISTEN=f"127.0.0.1:{port}")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"opsbot: cannot listen on 127.0.0.1:{port}: the address is in use")
    assert "Traceback" not in out.stderr
    assert "OPSBOT_ALERT_TOKEN is not set" in out.stderr
    assert "not found: 0 hosts" in out.stderr  # the named inventory does not exist


def test_alertmanager_zero_time_is_not_an_end() -> None:
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("2026-11-22T03:00:00.123456789Z") is not None
    t = parse_time("2026-11-22T05:00:00+02:00")
    assert t is not None and t.hour == 3


def test_inventory_in_a_yaml_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"a": {"ansible_host": "127.0.0.9"}}}}))
    out = opsbot(tmp_path, "run", "nginx-502", "a", "--dry-run", OPSBOT_INVENTORY=str(path))
    assert out.returncode == 0, out.stderr
    out = opsbot(tmp_path, "run", "nginx-502", "nope", "--dry-run", OPSBOT_INVENTORY=str(path))
    assert out.returncode == 2 and "no host or group named 'nope'" in out.stderr


async def test_console_prints_an_update_only_when_it_shows_something_new() -> None:
    import io

    from bot.models import Incident, IncidentStatus
    from bot.notify import ConsoleTransport
    from bot.outbox import Outgoing
    from bot.render import Message

    out = io.StringIO()
    console = ConsoleTransport(out)
    incident = Incident(1, "g", IncidentStatus.OPEN, "502", "2026-11-29T00:00:00Z")
    texts = ["INC-1 · 502 — diagnosing", "INC-1 · 502 — mitigated", "INC-1 · 502 — mitigated"]
    updated = [(await console.deliver(Outgoing(n, incident, "root", Message(text)))).updated
               for n, text in enumerate(texts)]
    assert updated == [False, True, True]
    assert out.getvalue().splitlines() == ["[INC-1] INC-1 · 502 — diagnosing",
                                           "[INC-1] INC-1 · 502 — mitigated"]
