"""The `opsbot` command as a user runs it (no services needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "tests/data/evidence/upstream_down--live-lab-stop-backend.json"


def opsbot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOT_", "SLACK_"))}
    base.update({"OPSBOT_DB": str(tmp_path / "opsbot.db"),
                 "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"),
                 "OPSBOT_INVENTORY": str(tmp_path / "inventory.yaml"), **env})
    return subprocess.run([sys.executable, "-m", "bot", *args], env=base, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_validate_reports_file_and_line(tmp_path: Path) -> None:
    ok = opsbot(tmp_path, "runbooks", "validate")
    assert ok.returncode == 0 and "runbook(s) valid, 0 error(s)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - id: a\n    kind: ssh\n    comand: uptime\n")
    out = opsbot(tmp_path, "runbooks", "validate", str(bad))
    assert out.returncode == 1
    assert f"{bad}:3: steps.0.command: Field required" in out.stderr
    assert f"{bad}:5: steps.0.comand: unknown field for kind 'ssh' (did you mean 'command'?)" \
        in out.stderr


def test_analyze_quotes_only_input_lines(tmp_path: Path) -> None:
    case = json.loads(CASE.read_text())
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps(case["evidence"]))
    params = [f"--param={k}={v}" for k, v in case.get("params", {}).items()]
    out = opsbot(tmp_path, "analyze", "nginx-502", "--evidence", str(evidence), "--json", *params)
    assert out.returncode == 0, out.stderr
    causes = json.loads(out.stdout)["causes"]
    assert causes[0]["cause"] == "upstream_down" and 0 < causes[0]["confidence"] <= 1
    lines = {line.rstrip() for text in case["evidence"].values() if isinstance(text, str)
             for line in text.splitlines()}
    assert causes[0]["evidence"] and set(causes[0]["evidence"]) <= lines
    assert "start_program" in causes[0]["remediation"]
    human = opsbot(tmp_path, "analyze", "nginx-502", "--evidence", str(evidence), *params)
    assert human.stdout.startswith("1. upstream_down")
    evidence.write_text("{not json")
    bad = opsbot(tmp_path, "analyze", "nginx-502", "--evidence", str(evidence))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_dry_run_shows_every_rendered_command_per_host(tmp_path: Path) -> None:
    (tmp_path / "inventory.yaml").write_text(
        "web:\n  hosts:\n    web01: {ansible_host: 10.9.9.1, opsbot_upstream_port: 8123}\n"
        "    web02: {ansible_host: 10.9.9.2}\n")
    out = opsbot(tmp_path, "run", "nginx-502", "web", "--dry-run", "--param", "log_lines=7")
    assert out.returncode == 0, out.stderr
    assert "# web01 (10.9.9.1:22)" in out.stdout and "# web02 (10.9.9.2:22)" in out.stdout
    assert "diagnostic/nginx_error_log: tail -n 7 /var/log/nginx/error.log" in out.stdout
    assert "remediation/start_program: supervisorctl -c /etc/supervisor/supervisord.conf " \
           "start ds:docservice  [when listed('supervisorctl_status', program)]  " \
           "[needs approval]" in out.stdout
    assert not (tmp_path / "opsbot.db").exists() or \
        "INC-" not in opsbot(tmp_path, "incidents").stdout
    typo = opsbot(tmp_path, "run", "nginx-502", "web01", "--param", "log_lines=many")
    assert typo.returncode == 1
    assert typo.stderr.strip() == "opsbot: parameter log_lines: must be a whole number, " \
                                  "got 'many'"


def test_audit_verify_fails_after_sqlite3_edits_a_row(tmp_path: Path) -> None:
    from bot.adapters.store import Store

    store = Store(tmp_path / "opsbot.db")
    store.open_or_join("g", title="t", labels={}, runbook=None, hosts=[], notes=[], actor="me")
    for i in range(3):
        store.audit("test", "me", 1, n=i)
    store.close()
    ok = opsbot(tmp_path, "audit", "verify")
    assert ok.returncode == 0 and "audit log OK: 4 records" in ok.stdout
    subprocess.run(["sqlite3", str(tmp_path / "opsbot.db"),
                    "UPDATE audit SET actor = 'mallory' WHERE seq = 3"], check=True)
    bad = opsbot(tmp_path, "audit", "verify")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "audit log ALTERED at record 3: content does not match its hash"


@pytest.mark.parametrize(("env", "line"), [
    ({"SLACK_BOT_TOKEN": "xoxb-1"}, "opsbot: OPSBOT_CHANNEL is required when SLACK_BOT_TOKEN "
                                    "is set"),
    ({"OPSBOT_LISTEN": "nowhere"}, "opsbot: OPSBOT_LISTEN must be host:port, got 'nowhere'"),
])
def test_bad_settings_stop_with_one_line(tmp_path: Path, env: dict[str, str], line: str) -> None:
    out = opsbot(tmp_path, "incidents", **env)
    assert out.returncode == 2 and out.stderr.strip() == line  # a configuration error


def test_incidents_and_export_of_unknown(tmp_path: Path) -> None:
    assert opsbot(tmp_path, "incidents", "--json").stdout.strip() == "[]"
    out = opsbot(tmp_path, "export", "INC-7", "--format", "csv")
    assert out.returncode == 1 and out.stderr.strip() == "opsbot: no incident INC-7"


def _first_case_per_label() -> list[Path]:
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests/data/evidence").glob("*.json")):
        seen.setdefault(json.loads(path.read_text())["label"], path)
    return list(seen.values())


@pytest.mark.parametrize("case_path", _first_case_per_label(), ids=lambda p: p.stem)
def test_analyze_names_each_label(tmp_path: Path, case_path: Path) -> None:
    from bot.runbooks import load_catalog

    case = json.loads(case_path.read_text())
    keys = set(case["evidence"])
    runbook = "onlyoffice-docker-502" if keys & {"docker_ps", "docker_inspect", "docker_logs"} \
        else "systemd-502" if "systemctl_status" in keys else "nginx-502"
    accepted = load_catalog(ROOT / "runbooks").get(runbook).params
    params = [f"--param={k}={v}" for k, v in (case.get("params") or {}).items() if k in accepted]
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps(case["evidence"]))
    out = opsbot(tmp_path, "analyze", runbook, "--evidence", str(evidence), "--json", *params)
    assert out.returncode == 0, out.stderr
    causes = json.loads(out.stdout)["causes"]
    assert causes and causes[0]["cause"] == case["label"], causes
    lines = set()
    for value in case["evidence"].values():
        text = value if isinstance(value, str) else json.dumps(value, indent=2,
                                                               ensure_ascii=False)
        lines.update(line.rstrip() for line in (text or "").splitlines())
    for cause in causes:
        assert set(cause["evidence"]) <= lines


def test_a_terminal_command_leaves_the_collector_as_it_found_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up runs without the cyclic collector and is then frozen (a cold run's CPU); the
    command itself runs with the collector on, and afterwards nothing stays frozen."""
    import asyncio
    import gc

    from bot import cli
    from bot.config import load_settings
    from bot.errors import InventoryError

    for key in [k for k in os.environ if k.startswith(("OPSBOT_", "SLACK_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OPSBOT_DB", str(tmp_path / "opsbot.db"))
    monkeypatch.setenv("OPSBOT_RUNBOOKS", str(ROOT / "runbooks"))
    monkeypatch.setenv("OPSBOT_INVENTORY", str(tmp_path / "inventory.yaml"))
    seen: list[tuple[bool, int, int]] = []
    before = gc.get_threshold()

    async def command(rt: object) -> int:
        seen.append((gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()[0]))
        return 0

    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert asyncio.run(cli._with_runtime(load_settings(), command, quiet=True)) == 0
    assert seen[0][0] and seen[0][1] > 0
    assert seen[0][2] == max(before[0], cli.COMMAND_GEN0)  # young objects walked less often
    assert gc.isenabled() and gc.get_freeze_count() == 0 and gc.get_threshold() == before
    (tmp_path / "inventory.yaml").write_text("all: [\n")  # the runtime cannot be built
    with pytest.raises(InventoryError):
        asyncio.run(cli._with_runtime(load_settings(), command, quiet=True))
    assert gc.isenabled() and gc.get_freeze_count() == 0 and len(seen) == 1


def test_the_process_exits_without_walking_its_objects(tmp_path: Path) -> None:
    """What is left when an `opsbot` process exits is frozen (the teardown's collection was
    0.11 s of a cold run's CPU), once however often main() ran; a command run in-process
    leaves the collector on and nothing frozen, and its output is all there."""
    code = ("import atexit, gc\n"
            "atexit.register(lambda: print('at exit:', gc.isenabled(), "
            "gc.get_freeze_count() > 0, flush=True))\n"
            "from bot import cli\n"
            "for _ in range(2):\n"
            "    assert cli.main(['runbooks', 'list']) == 0\n"
            "    print('after:', gc.isenabled(), gc.get_freeze_count(), flush=True)\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OPSBOT_", "SLACK_"))},
           "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"), "OPSBOT_DB": str(tmp_path / "o.db")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=env).stdout
    assert "nginx-502" in out
    assert out.count("after: True 0\n") == 2
    assert out.endswith("at exit: True True\n")


def test_a_terminal_command_imports_none_of_the_servers_libraries() -> None:
    """A cold `opsbot run` pays for every module it imports: what only a serving process, a
    PostgreSQL store, a docker/http step, a TOML config file or a typo's suggestion needs is
    imported when first used."""
    serving_only = ("multiprocessing", "psycopg", "docker", "aiohttp", "jinja2", "crossplane",
                    "prometheus_client", "slack_bolt", "slack_sdk", "tomllib", "difflib",
                    "importlib.metadata")  # pydantic's plugin search: bot/pydanticlib.py
    code = ("import sys\nimport bot.cli, bot.app, bot.params\n"
            f"print([m for m in {serving_only!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_pydantic_searches_no_plugins_unless_its_loader_was_there_first() -> None:
    """opsbot's models are built without pydantic's search of every installed package's entry
    points (bot/pydanticlib.py): they still validate. A process that imported pydantic's own
    plugin loader before opsbot keeps it."""
    code = ("import sys\n"
            "from bot.runbooks import load_runbook\n"
            "from bot.params import ParamSpec\n"
            "import bot.diagnosis\n"
            "print(ParamSpec(type='int', default=3).default, 'importlib.metadata' in sys.modules,"
            " sys.modules['pydantic.plugin._loader'].get_plugins())\n"
            "try:\n"
            "    ParamSpec(type='int', colour='red')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.splitlines() == ["3 False ()", "ValidationError"]
    first = ("import sys\n"
             "import pydantic.plugin._loader as loader\n"
             "import bot.runbooks\n"
             "print(sys.modules['pydantic.plugin._loader'] is loader)\n")
    out = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "True"
