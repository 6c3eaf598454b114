import re
from pathlib import Path

import pytest

from bot.errors import ParamInvalid, RunbookInvalid
from bot.inventory import parse_inventory
from bot.models import Phase
from bot.params import resolve_params
from bot.runbooks import load_catalog, load_runbook
from bot.runner import render_context, render_step

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
name: demo
match: ['alertname="Demo"', 'env!~"dev|test"']
params:
  program: {type: name, default: "ds:docservice"}
  port: {type: port, default: 8000}
  mode: {type: str, choices: [fast, slow], default: fast}
steps:
  - id: status
    kind: ssh
    command: supervisorctl status {{ program }}
    capture: {state: '(RUNNING|STOPPED)'}
  - id: check
    kind: ssh
    when: "facts.state == 'STOPPED'"
    command: curl -sS http://127.0.0.1:{{ port }}/
remediation:
  - id: start
    kind: ssh
    command: supervisorctl start {{ program }}
    fixes: [upstream_down]
    verify: {kind: ssh, command: 'true', retries: 1, interval: 0}
"""


def write(tmp_path: Path, text: str, name: str = "rb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_runbooks_are_valid() -> None:
    catalog = load_catalog(ROOT / "runbooks")
    assert not catalog.errors, catalog.errors
    assert "nginx-502" in catalog.runbooks
    rb = catalog.get("nginx-502")
    ids = [s.id for s in rb.steps]
    for needed in ("healthcheck", "proxy_check", "listening_ports", "supervisorctl_status",
                   "nginx_error_log", "nginx_config_test", "memory", "kernel_log", "disk",
                   "app_logs"):
        assert needed in ids
    assert all(s.verify is not None for s in rb.remediation)
    assert rb.rules is not None


def test_matchers_select_runbook(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL)
    catalog = load_catalog(tmp_path)
    assert catalog.select({"alertname": "Demo"}).name == "demo"
    assert catalog.select({"alertname": "Demo", "env": "dev"}) is None
    assert catalog.select({"alertname": "Other"}) is None


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    broken = MINIMAL.replace("    command: curl", "    comand: curl") \
                    .replace("kind: ssh\n    when", "kind: shh\n    when") \
                    .replace("fixes: [upstream_down]", "fixes: [upstream_dwn]")
    path = write(tmp_path, broken)
    with pytest.raises(RunbookInvalid) as err:
        load_runbook(path)
    lines = str(err.value).splitlines()
    assert any(line.startswith(f"{path}:13: steps.1.kind: unknown step kind 'shh'")
               for line in lines), lines
    assert any(f"{path}:20: remediation.0.fixes.0: unknown cause 'upstream_dwn'" in line
               for line in lines), lines


@pytest.mark.parametrize(("change", "message"), [
    (("command: supervisorctl status {{ program }}", "command: echo {{ progrm }}"),
     "unknown parameter 'progrm'"),
    (("command: supervisorctl status {{ program }}", "command: echo '{{ program }}'"),
     "do not quote"),
    (("command: supervisorctl status {{ program }}", "command: echo {{ program "),
     "template error"),
    (("timeout: 30", "timeout: 30"), None),
    (("port: {type: port, default: 8000}", "port: {type: port, default: 99999}"),
     "between 1 and 65535"),
    (("capture: {state: '(RUNNING|STOPPED)'}", "capture: {state: '(RUNNING'}"), "bad regex"),
    (("  - id: check\n", "  - id: status\n"), "duplicate step id 'status'"),
])
def test_typos_fail_at_load(tmp_path: Path, change: tuple[str, str], message: str | None) -> None:
    path = write(tmp_path, MINIMAL.replace(*change))
    if message is None:
        load_runbook(path)
        return
    with pytest.raises(RunbookInvalid, match=message):
        load_runbook(path)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("    kind: ssh\n    command: supervisorctl status",
                                           "    kind: ssh\n    kind: ssh\n    command: x"))
    with pytest.raises(RunbookInvalid, match=r"rb.yaml:\d+: duplicate key 'kind'"):
        load_runbook(path)


def test_params_layers_and_validation(tmp_path: Path) -> None:
    rb = load_runbook(write(tmp_path, MINIMAL))
    assert resolve_params(rb, {"port": 9000}, {"port": "9001"}) == \
        {"program": "ds:docservice", "port": 9001, "mode": "fast"}
    with pytest.raises(ParamInvalid, match="parameter port: must be a whole number"):
        resolve_params(rb, {"port": "80; rm -rf /"})
    with pytest.raises(ParamInvalid, match="must be one of fast, slow"):
        resolve_params(rb, {"mode": "medium"})
    with pytest.raises(ParamInvalid, match="unknown parameter 'prot'.*accepted: mode, port, "
                                           "program"):
        resolve_params(rb, {"prot": "1"})
    with pytest.raises(ParamInvalid, match="program"):
        resolve_params(rb, {"program": "web01; touch /tmp/pwned"})
    # unknown keys in earlier layers (host vars, alert labels) are ignored
    assert resolve_params(rb, {"severity": "critical"}, {})["port"] == 8000


def test_untrusted_text_is_shell_quoted_when_rendered(tmp_path: Path) -> None:
    rb = load_runbook(write(tmp_path, MINIMAL.replace("type: name", "type: str")))
    host = parse_inventory({"all": {"hosts": {"web01": {}}}}).hosts["web01"]
    params = resolve_params(rb, {"program": "x; touch /tmp/pwned $(id)"})
    step = render_step(rb.steps[0], Phase.DIAGNOSTIC, host, render_context(host, params, {}, {}))
    assert step.display == "supervisorctl status 'x; touch /tmp/pwned $(id)'"


def test_a_kind_is_imported_when_a_runbook_first_names_it(tmp_path: Path) -> None:
    """Runbooks of ssh steps only never import the other kinds (a cold run's CPU); a runbook
    naming one imports it, and an unknown kind still lists every kind there is."""
    import subprocess
    import sys

    path = write(tmp_path, MINIMAL)
    other = write(tmp_path, MINIMAL.replace("kind: ssh\n    when", "kind: http\n    when")
                  .replace("command: curl -sS http://127.0.0.1:{{ port }}/",
                           "url: http://127.0.0.1:{{ port }}/"), "http.yaml")
    bad = write(tmp_path, MINIMAL.replace("kind: ssh\n    when", "kind: shh\n    when"),
                "bad.yaml")
    code = (f"import sys\nfrom pathlib import Path\nfrom bot.errors import RunbookInvalid\n"
            f"from bot.runbooks import load_runbook\nload_runbook(Path({str(path)!r}))\n"
            "kinds = ('bot.executors.docker', 'bot.executors.http', 'bot.executors.local')\n"
            "print(sorted(k for k in kinds if k in sys.modules))\n"
            f"load_runbook(Path({str(other)!r}))\n"
            "print(sorted(k for k in kinds if k in sys.modules))\n"
            f"try:\n    load_runbook(Path({str(bad)!r}))\n"
            "except RunbookInvalid as exc:\n    print(str(exc).splitlines()[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.splitlines()
    assert out[:2] == ["[]", "['bot.executors.http']"], out
    assert out[2].endswith("unknown step kind 'shh' (known: docker, http, local, ssh)"), out


def test_libyaml_reads_every_runbook_as_pyyaml_does_lines_included(tmp_path: Path) -> None:
    """Runbooks are parsed by libyaml when PyYAML has it (a tenth of the CPU): the values and
    the line of every key and item are those PyYAML's own parser gives."""
    import yaml

    from bot import runbooks

    class PurePython(yaml.SafeLoader):
        pass

    PurePython.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                               runbooks._mapping)
    PurePython.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
                               runbooks._sequence)

    def lines(value: object) -> object:
        if isinstance(value, runbooks.LineDict):
            return (value.line, {k: (value.key_lines[k], lines(v)) for k, v in value.items()})
        if isinstance(value, runbooks.LineList):
            return (value.line, value.item_lines, [lines(v) for v in value])
        return value

    assert issubclass(runbooks._Loader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    paths = [*runbooks.runbook_files(ROOT / "runbooks"), write(tmp_path, MINIMAL)]
    for path in paths:
        fast = runbooks.load_yaml(path)
        slow = yaml.load(path.read_text(), Loader=PurePython)  # noqa: S506 (a safe loader)
        assert fast == slow and lines(fast) == lines(slow), path
    broken = write(tmp_path, MINIMAL.replace("  - id: check\n", "  - id: check\n  bad: [\n"),
                   "broken.yaml")
    with pytest.raises(RunbookInvalid, match=rf"^{re.escape(str(broken))}:\d+: "):
        load_runbook(broken)
