"""A decision is data (bot.approvals.Decision); the line a person reads is made at the edge."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest

from bot.approvals import Decision, Outcome
from bot.models import Approval, ApprovalStatus
from bot.render import decision_text

PENDING = Approval(id=1, token="t", incident_id=7, run_id=3, runbook="nginx-502",
                   step_id="start_program", host="web01", params={}, digest="d",
                   display="supervisorctl start app", status=ApprovalStatus.PENDING,
                   requested_by="alertmanager", requested_at="2026-11-29T21:00:00.000Z",
                   expires_at="2026-11-29T21:30:00.000Z")


def test_each_outcome_reads_as_one_line() -> None:
    approved = replace(PENDING, status=ApprovalStatus.APPROVED, decided_by="U0ALICE")
    assert decision_text(Decision(Outcome.RUNNING, approved)) == \
        "Approved start_program on web01: running it now."
    assert decision_text(Decision(Outcome.RUNNING, approved, hosts=3)) == \
        "Approved start_program on 3 hosts: running it now."
    assert decision_text(Decision(Outcome.HANDED_OVER, approved)).endswith(
        "handed to the serving opsbot.")
    assert decision_text(Decision(Outcome.REJECTED, PENDING)) == "Rejected start_program on web01."
    assert decision_text(Decision(Outcome.ALREADY_DECIDED, approved)) == \
        "This was already approved by U0ALICE; nothing more was done."
    expired = replace(PENDING, status=ApprovalStatus.EXPIRED)
    assert decision_text(Decision(Outcome.ALREADY_DECIDED, expired)) == \
        "This was already expired; nothing more was done."
    for refused in (Outcome.NOT_AN_APPROVER, Outcome.TWO_PERSON_RULE, Outcome.WRONG_MESSAGE):
        assert "nothing was run" in decision_text(Decision(refused, PENDING)).lower()
        assert not refused.recorded


def test_only_a_recorded_decision_counts_as_one() -> None:
    assert {o for o in Outcome if o.recorded} == \
        {Outcome.RUNNING, Outcome.HANDED_OVER, Outcome.REJECTED}


def test_approvals_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        PENDING.status = ApprovalStatus.APPROVED  # type: ignore[misc]
    assert replace(PENDING, cause="upstream_down").cause == "upstream_down"
    assert PENDING.cause == ""
