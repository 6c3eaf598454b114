"""Parameter provenance: who may set what, and labels that try to change what runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.errors import ParamInvalid, RunbookInvalid
from bot.models import Host, Phase
from bot.params import resolve_for_host
from bot.runbooks import Runbook, load_catalog, load_runbook
from bot.runner import render_context, render_step

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = {"sudo": "true", "nginx_error_log": "/etc/shadow", "container": "x",
           "health_url": "http://evil", "unit": "sshd.service", "program": "evil:prog",
           "log_lines": "2000", "proxy_url": "http://evil/x", "app_log": "/root/.ssh/id_rsa"}
HOST = Host(name="web01", address="10.0.0.5", user="ops", vars={"opsbot_docker": "ssh"})


def rendered(runbook: Runbook, host: Host, params: dict[str, Any]) -> list[str]:
    context = render_context(host, params, {}, {})
    out = []
    for phase, steps in ((Phase.DIAGNOSTIC, runbook.steps),
                         (Phase.REMEDIATION, runbook.remediation)):
        for step in steps:
            out.append(render_step(step, phase, host, context).display)
            if step.verify is not None:
                out.append(render_step(step.verify, Phase.VERIFY, host, context).display)
    return out


@pytest.mark.parametrize("name", ["nginx-502", "onlyoffice-docker-502", "systemd-502"])
def test_hostile_alert_labels_change_no_rendered_command(name: str) -> None:
    runbook = load_catalog(ROOT / "runbooks").get(name)
    plain = resolve_for_host(runbook, HOST.opsbot_vars(), {}, {}, source="alert")
    hostile = resolve_for_host(runbook, HOST.opsbot_vars(), HOSTILE, {}, source="alert")
    assert hostile.values == plain.values
    commands = rendered(runbook, HOST, hostile.values)
    assert commands == rendered(runbook, HOST, plain.values)
    assert not any(bad in " ".join(commands) for bad in ("/etc/shadow", "evil", "id_rsa"))
    assert any("does not open it to alerts" in note for note in hostile.notes)


def _opened(tmp_path: Path, open_to: str) -> Runbook:
    path = tmp_path / "rb.yaml"
    path.write_text(f"""name: rb
open_to: {open_to}
params:
  nginx_error_log: {{type: path, default: /var/log/nginx/error.log}}
  container: {{type: name, default: app}}
  log_lines: {{type: int, default: 40, min: 1, max: 500}}
  sudo: {{type: bool, default: false}}
steps:
  - id: tail
    kind: ssh
    command: >-
      {{% if sudo %}}sudo -n {{% endif %}}tail -n {{{{ log_lines }}}} {{{{ nginx_error_log }}}}
  - id: logs
    kind: docker
    action: logs
    container: "{{{{ container }}}}"
""")
    return load_runbook(path)


def test_an_opened_path_or_name_takes_only_what_the_host_has(tmp_path: Path) -> None:
    runbook = _opened(tmp_path, "{alerts: [nginx_error_log, container, log_lines]}")
    host_vars = {"allowed_nginx_error_log": ["/srv/nginx/error.log"], "container": "web"}
    got = resolve_for_host(runbook, host_vars, {"nginx_error_log": "/etc/shadow",
                                                "container": "x", "log_lines": "100"},
                           {}, source="alert")
    assert got.values["nginx_error_log"] == "/var/log/nginx/error.log"
    assert got.values["container"] == "web" and got.values["log_lines"] == 100
    assert any("/etc/shadow" in n and "not among the values the host allows" in n
               for n in got.notes)
    allowed = resolve_for_host(runbook, host_vars, {"nginx_error_log": "/srv/nginx/error.log"},
                               {}, source="alert")
    assert allowed.values["nginx_error_log"] == "/srv/nginx/error.log"
    found = resolve_for_host(runbook, {}, {"container": "db"}, {}, source="alert",
                             discovered={"container": "db"})
    assert found.values["container"] == "db"  # discovered on the host: allowed


def test_the_inventory_beats_alert_labels(tmp_path: Path) -> None:
    runbook = _opened(tmp_path, "{alerts: [log_lines]}")
    got = resolve_for_host(runbook, {"log_lines": 10}, {"log_lines": "400"}, {}, source="alert")
    assert got.values["log_lines"] == 10


def test_chat_sets_only_what_the_runbook_opens_to_it(tmp_path: Path) -> None:
    runbook = _opened(tmp_path, "{chat: [log_lines, container]}")
    assert resolve_for_host(runbook, {}, {}, {"log_lines": "7"},
                            source="chat").values["log_lines"] == 7
    with pytest.raises(ParamInvalid, match="cannot be set from chat"):
        resolve_for_host(runbook, {}, {}, {"nginx_error_log": "/etc/shadow"}, source="chat")
    with pytest.raises(ParamInvalid, match="not among the values the host allows"):
        resolve_for_host(runbook, {"container": "web"}, {}, {"container": "other"},
                         source="chat")
    # the terminal (someone on the bot's machine) may set any parameter
    assert resolve_for_host(runbook, {}, {}, {"nginx_error_log": "/tmp/e.log"},
                            source="terminal").values["nginx_error_log"] == "/tmp/e.log"


def test_sudo_can_never_be_opened(tmp_path: Path) -> None:
    with pytest.raises(RunbookInvalid, match=r"rb.yaml:2: open_to.alerts.0: 'sudo' can never"):
        _opened(tmp_path, "{alerts: [sudo]}")
    with pytest.raises(RunbookInvalid, match="'nope' is not a parameter"):
        _opened(tmp_path, "{chat: [nope]}")


def test_an_allow_list_in_the_inventory_is_a_known_variable() -> None:
    from bot.inventory import Inventory, unknown_opsbot_vars

    host = Host("web01", "10.0.0.5", vars={"opsbot_allowed_container": ["web", "db"],
                                           "opsbot_allowed_contaner": ["x"]})
    warnings = unknown_opsbot_vars(Inventory({"web01": host}), ["container"])
    assert warnings == ["inventory: host web01: opsbot_allowed_contaner is read by no runbook "
                        "(did you mean opsbot_allowed_container?)"]


def test_an_error_quoting_a_value_redacts_it_before_cutting(tmp_path: Path) -> None:
    runbook = _opened(tmp_path, "{chat: [log_lines]}")
    with pytest.raises(ParamInvalid) as caught:
        resolve_for_host(runbook, {}, {}, {"log_lines": "x" * 50 + " password=hunter22"},
                         source="chat")
    assert "hunter22" not in str(caught.value) and "hunt" not in str(caught.value)
