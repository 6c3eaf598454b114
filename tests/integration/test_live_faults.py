"""Every live "502" fault of the lab, diagnosed for real: the nginx-502 runbook run by the Runner
against web01 over SSH, then the diagnosis of what its steps printed.

Given a fault injected into the web lab (a stopped, crash-looping, hung or misaddressed backend,
its Redis down, its data disk full, its unix socket closed to nginx), the top cause is the fault's
label, each line quoted as evidence is a line the diagnosis read, and a fitting remediation is
offered; with the lab healthy no cause is named, not even when the logs still hold the errors of
faults that were healed. Before each fault the lab's logs are emptied (logrotate's copytruncate),
so each fault's evidence holds its own lines only.

OPSBOT_LAB_CAPTURE=DIR also saves each fault's evidence as a corpus case,
DIR/<label>--live-lab-<fault>.json (DIR=tests/data/evidence adds them to the corpus; then run
`python bench/diagnosis_report.py`). How long each fault took to inject and to diagnose is in the
"opsbot test lab timings" section of pytest's summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.executors import ExecContext
from bot.inventory import load_inventory
from bot.models import Host
from bot.params import resolve_params
from bot.runbooks import Runbook, load_runbook
from bot.runner import HostReport, NullListener, Runner
from tests.botfixtures import RunningBot, alert_payload
from tests.lab import WebLab
from tests.lab.fixtures import _timings
from tests.lab.process import run

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "runbooks" / "nginx-502.yaml"


@dataclass(frozen=True)
class LiveFault:
    method: str  # the WebLab method that injects it
    label: str  # the cause the diagnosis must rank first
    steps: tuple[str, ...]  # remediation steps, one of which must be proposed
    advice: str = ""  # a regex the advice must match (the fix a restart alone does not make)


FAULTS = [
    LiveFault("stop_backend", "upstream_down", ("start_program",)),
    LiveFault("crashloop", "upstream_crashloop", ("restart_program",), r"log"),
    LiveFault("slow_backend", "upstream_timeout", ("restart_program",)),
    LiveFault("wrong_port", "wrong_proxy_config", ("reload_nginx",), r"proxy_pass"),
    LiveFault("dependency_down", "dependency_down", ("restart_program",), r"dependency"),
    LiveFault("disk_full", "disk_full", ("restart_program",), r"Free space"),
    LiveFault("permission_denied", "permission_denied", ("restart_program",),
              r"owner or mode"),
]


@pytest.fixture(scope="module")
async def runner(known_hosts_file: Path) -> AsyncIterator[Runner]:
    """One Runner (and SSH connection pool) for the module; its ExecContext closed at the end."""
    ctx = ExecContext(known_hosts=known_hosts_file)
    yield Runner(ctx)
    await ctx.close()


@pytest.fixture(scope="module")
def runbook() -> Runbook:
    return load_runbook(RUNBOOK)


@pytest.fixture(scope="module")
def web01(inventory_file: Path) -> Host:
    return load_inventory(inventory_file).hosts["web01"]


async def diagnose(runner: Runner, runbook: Runbook, host: Host) -> HostReport:
    params = resolve_params(runbook, host.opsbot_vars())
    report = await runner.diagnose_host(runbook, host, params, NullListener())
    assert report.error is None, report.error
    return report


def evidence_lines(report: HostReport) -> set[str]:
    """Every line the diagnosis read, as it reads them (JSON pretty-printed, lines stripped)."""
    lines: set[str] = set()
    for value in report.evidence.values():
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        lines.update(line.rstrip() for line in text.splitlines())
    return lines


def ranked(report: HostReport) -> list[tuple[str, float]]:
    return [(c.cause, c.confidence) for c in report.causes]


def versions() -> str:
    def first_version(argv: list[str]) -> str:
        result = run(argv)
        match = re.search(r"(?:v=|/|^)(\d+\.\d+\.\d+)", result.stdout + result.stderr, re.M)
        return match.group(1) if match else "?"

    return (f"nginx {first_version(['nginx', '-v'])}, "
            f"supervisord {first_version(['supervisord', '-v'])}, "
            f"redis-server {first_version(['redis-server', '--version'])}")


def capture(folder: Path, fault: LiveFault, runbook: Runbook, report: HostReport) -> None:
    """Save the fault's genuine evidence as a corpus case in folder."""
    rule_params = runbook.rules.params if runbook.rules is not None else ()
    case = {
        "label": fault.label,
        "source": f"live lab: {fault.method} via opsbot nginx-502 runbook over SSH "
                  f"({versions()})",
        "params": {k: v for k, v in report.params.items() if k in rule_params},
        "evidence": report.evidence,
    }
    slug = fault.method.replace("_", "-")
    path = folder / f"{fault.label}--live-lab-{slug}.json"
    path.write_text(json.dumps(case, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@pytest.mark.parametrize("fault", FAULTS, ids=[f.method for f in FAULTS])
async def test_live_fault_is_diagnosed(fault: LiveFault, healthy_web: WebLab, runner: Runner,
                                       runbook: Runbook, web01: Host) -> None:
    healthy_web.truncate_logs()
    began = time.monotonic()
    await asyncio.to_thread(getattr(healthy_web, fault.method))
    injected = time.monotonic()

    report = await diagnose(runner, runbook, web01)
    _timings[f"fault {fault.method}: injected"] = injected - began
    _timings[f"fault {fault.method}: nginx-502 runbook over ssh + diagnosis"] = \
        time.monotonic() - injected
    if os.environ.get("OPSBOT_LAB_CAPTURE"):
        capture(Path(os.environ["OPSBOT_LAB_CAPTURE"]), fault, runbook, report)

    assert report.causes, "no cause at all"
    top = report.causes[0]
    assert top.cause == fault.label, ranked(report)
    assert top.evidence, "the top cause quotes no line"
    read = evidence_lines(report)
    assert [line for line in top.evidence if line not in read] == []
    proposed = [p.step.step_id for p in report.proposals]
    assert set(proposed) & set(fault.steps), (proposed, report.advice)
    assert all(p.cause == fault.label for p in report.proposals)
    if fault.advice:
        assert any(re.search(fault.advice, advice) for advice in report.advice), report.advice


def assert_healthy(report: HostReport) -> None:
    assert report.evidence["proxy_check"].rstrip().endswith("HTTP 200")
    assert re.search(r"^redis \S+ reachable$", report.evidence["dependencies"], re.M)
    assert [(c, p) for c, p in ranked(report) if p > 0.5] == []


async def test_healthy_lab_names_no_cause(healthy_web: WebLab, runner: Runner,
                                          runbook: Runbook, web01: Host) -> None:
    healthy_web.truncate_logs()

    report = await diagnose(runner, runbook, web01)

    assert_healthy(report)
    assert [(c.cause, c.detail) for c in report.causes] == [("unknown", "healthy_now")]
    assert report.proposals == []


async def test_healed_lab_names_no_cause_despite_old_errors(
        healthy_web: WebLab, runner: Runner, runbook: Runbook, web01: Host) -> None:
    await asyncio.to_thread(healthy_web.dependency_down, "FATAL")  # supervisord gives up
    await asyncio.to_thread(healthy_web.heal)
    for method in ("disk_full", "permission_denied"):
        await asyncio.to_thread(getattr(healthy_web, method))
        await asyncio.to_thread(healthy_web.heal)

    report = await diagnose(runner, runbook, web01)

    for old_error in ("gave up: docservice entered FATAL state", "connect ECONNREFUSED",
                      "No space left on device", "(13: Permission denied)"):
        assert old_error in "".join(report.evidence.values()), old_error
    assert_healthy(report)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.method for f in FAULTS])
async def test_live_fault_is_named_in_the_thread(fault: LiveFault, healthy_web: WebLab,
                                                 running_bot: RunningBot) -> None:
    """The same faults through the whole bot: an alert, then what the incident's thread shows."""
    bot = running_bot
    healthy_web.truncate_logs()
    await asyncio.to_thread(getattr(healthy_web, fault.method))
    await bot.post_alert(alert_payload())
    diagnosis = await bot.wait(lambda: next((m for m in bot.thread() if "🩺" in m.text), None)
                               if bot.roots() else None, timeout=60)
    shown = diagnosis.plain()
    assert f"Likely cause on `web01`: *{fault.label}*" in shown
    assert "*Evidence*" in shown
    # the steps' outputs are in the run's file, uploaded to the thread (one per run)
    upload = await bot.wait(lambda: next((f for f in bot.slack.files
                                          if f.name.endswith("-steps.txt") and f.uploaded), None))
    steps_text = "\n".join(m.plain() for m in bot.thread() if "(`" in m.plain()) + "\n" + \
        upload.text
    evidence = shown.split("*Evidence*", 1)[1].split("```")[1]
    for line in evidence.strip().splitlines():
        assert line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") \
            in steps_text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    await bot.wait(lambda: any("Proposed remediation" in m.plain() for m in bot.thread()))
    proposed = [m.plain() for m in bot.thread() if "Proposed remediation" in m.plain()]
    assert any(f"*{step}*" in p for p in proposed for step in fault.steps), proposed
    if fault.advice:
        assert re.search(fault.advice, shown), shown
