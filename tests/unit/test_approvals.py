"""Approvals: expiry at the moment of decision; what an approval is bound to."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from bot.adapters.store import Store
from bot.approvals import approval_digest
from bot.executors import ExecContext
from bot.models import Host
from bot.params import resolve_params
from bot.runbooks import load_runbook
from bot.runner import Runner
from tests.unit.test_cli import opsbot

ROOT = Path(__file__).resolve().parents[2]


def _pending(store: Store, ttl: float) -> str:
    store.open_or_join("g", title="t", labels={}, runbook="nginx-502", hosts=["web01"], notes=[],
                       actor="test")
    row = store.create_approval(incident_id=1, run_id=1, runbook="nginx-502",
                                step_id="start_program", host="web01", params={}, digest="d",
                                display="supervisorctl start", requested_by="alertmanager",
                                ttl=ttl)
    return row.token


def test_an_expired_approval_loses_at_the_click_before_any_sweep(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    token = _pending(store, ttl=-1)
    assert store.decide(token, "approved", "U0BOB") is False
    row = store.get_approval(token)
    assert row.status == "expired" and row.decided_by == "opsbot"
    actions = [r["action"] for r in store.audit_records()]
    assert actions[-2:] == ["approval.expired", "approval.ignored"]
    fresh = Store(tmp_path / "b.db")
    assert fresh.decide(_pending(fresh, ttl=600), "approved", "U0BOB") is True


def test_opsbot_approve_after_expiry_runs_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    token = _pending(store, ttl=-1)
    store.close()
    done = opsbot(tmp_path, "approve", token)
    assert done.returncode == 1, done.stderr  # 1: the fix did not run (`opsbot approve -h`)
    assert "already expired" in done.stdout
    assert Store(tmp_path / "opsbot.db").get_approval(token).status == "expired"


def test_the_digest_covers_verify_target_and_runbook_file(tmp_path: Path) -> None:
    path = tmp_path / "nginx-502.yaml"
    shutil.copy(ROOT / "runbooks/nginx-502.yaml", path)
    (tmp_path / "rules").mkdir()
    shutil.copy(ROOT / "runbooks/rules/http-502.yaml", tmp_path / "rules/http-502.yaml")
    runbook = load_runbook(path)
    runner = Runner(ExecContext(known_hosts=tmp_path / "known_hosts"))
    host = Host("web01", "10.0.0.5", 22, "ops", vars={"opsbot_docker": "ssh"})
    params = resolve_params(runbook, {})

    def digest(rb=runbook, h=host, p=params) -> str:  # type: ignore[no-untyped-def]
        return approval_digest(rb, runner.propose(rb, "start_program", h, p, "x"), h)

    base = digest()
    assert digest() == base
    for moved in (dataclasses.replace(host, address="10.0.0.6"),
                  dataclasses.replace(host, port=2222), dataclasses.replace(host, user="root"),
                  dataclasses.replace(host, vars={"opsbot_docker": "tcp://10.0.0.9:2375"})):
        assert digest(h=moved) != base
    assert digest(p={**params, "http_timeout": 9}) != base  # only the verify step reads it
    path.write_text(path.read_text() + "\n# edited\n")
    assert digest(rb=load_runbook(path)) != base


def test_a_new_run_voids_the_pending_approvals_of_every_host_at_once(tmp_path: Path) -> None:
    """decide_many: one transaction for a run's approvals on many hosts; each is decided as
    `decide` would (an expired one stays expired), and audited in order."""
    store = Store(tmp_path / "a.db")
    tokens = [_pending(store, ttl=600) for _ in range(3)] + [_pending(store, ttl=-1)]
    store.decide(tokens[1], "approved", "U0BOB")
    before = store.verify_audit().checked
    won = store.decide_many(tokens, "void", "opsbot", "superseded by a new run of the incident")
    assert won == [True, False, True, False]
    assert [store.get_approval(t).status for t in tokens] == ["void", "approved", "void",
                                                              "expired"]
    actions = [r["action"] for r in store.audit_records()][before:]
    assert actions == ["approval.void", "approval.ignored", "approval.void", "approval.expired",
                       "approval.ignored"]
    assert store.verify_audit().ok


def test_a_token_never_begins_with_a_dash(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`opsbot approve TOKEN` reads a token that begins with '-' as an option and exits 2 (1 in
    64 of URL-safe tokens did): such a draw is drawn again."""
    from bot.adapters import store as module

    draws = iter(["-Ab3xYz0qW8rT5uV2sLp9kDm", "Ab3xYz0qW8rT5uV2sLp9kDm-"])
    monkeypatch.setattr(module.secrets, "token_urlsafe", lambda n: next(draws))
    token = _pending(Store(tmp_path / "a.db"), ttl=600)
    assert token == "Ab3xYz0qW8rT5uV2sLp9kDm-"
    from bot.cli import _parser

    assert _parser().parse_args(["approve", token]).token == token
    with pytest.raises(SystemExit):  # why: the first draw is no token to the command line
        _parser().parse_args(["approve", "-Ab3xYz0qW8rT5uV2sLp9kDm"])
