"""Approvals: a remediation step proposed, decided once (first decision wins), executed only
while it is still what was approved, voided or expired otherwise.

A decision returns a `Decision` (what happened, as data); the line a person reads is made at
the edge (bot.render.decision_text), in Slack's ephemeral answer or the terminal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from bot.adapters.store import HANDOVER
from bot.errors import BotError, InventoryError
from bot.models import (
    Approval,
    ApprovalRequest,
    ApprovalStatus,
    Host,
    canonical_json,
    sha256_hex,
)
from bot.parts import Part
from bot.render import decision_text, duration_text, reminder_text
from bot.runbooks import Runbook
from bot.runner import Proposal

HEARTBEAT_FRESH = 10.0  # a sign of life younger than this: a bot serves the database

# An approver sees a pending approval and its proposal; it answers (approved?, who) or None
# to leave it pending for someone to click in the thread.
Approver = Callable[[Approval, Proposal], Awaitable[tuple[bool, str] | None]]


async def ask_in_thread(approval: Approval, proposal: Proposal) -> tuple[bool, str] | None:
    return None


def approval_digest(runbook: Runbook, proposal: Proposal, host: Host) -> str:
    """What an approval is bound to: the rendered step and its verify step, where they connect
    (address, port, user, key, Docker engine) and the runbook file as loaded. Any change voids
    the approval."""
    return sha256_hex(canonical_json({
        "step": proposal.step.digest(), "verify": proposal.verify.digest(),
        "target": {"host": host.name, "address": host.address, "port": host.port,
                   "user": host.user, "key_file": host.key_file, "docker": host.docker},
        "runbook": {"name": runbook.name, "sha256": runbook.digest}}))


class Outcome(StrEnum):
    """What became of a decision."""

    RUNNING = "running"  # approved: the step runs now (here)
    HANDED_OVER = "handed over"  # approved: the serving opsbot runs it
    REJECTED = "rejected"
    ALREADY_DECIDED = "already decided"  # someone (or expiry) was first: nothing more done
    NOT_AN_APPROVER = "not an approver"  # not in OPSBOT_APPROVERS: refused
    TWO_PERSON_RULE = "two-person rule"  # the requester may not approve it: refused
    WRONG_MESSAGE = "wrong message"  # a click outside the approval's own message: refused

    @property
    def recorded(self) -> bool:
        """The decision was recorded (approved or rejected, by this caller)."""
        return self in (Outcome.RUNNING, Outcome.HANDED_OVER, Outcome.REJECTED)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    approval: Approval  # as it stands after the decision
    hosts: int = 1  # approvals decided together (the same step of one run on several hosts)


class Approvals(Part):
    async def propose(self, incident_id: int, run_id: int, runbook: Runbook,
                      proposals: Sequence[tuple[Proposal, Host]],
                      requested_by: str) -> list[Approval]:
        """A run's proposals (each for its host), recorded pending in one transaction (a
        50-host run's were 50, one after another, while nothing else ran), then shown."""
        if not proposals:
            return []
        created = await self.store.create_approvals(
            incident_id=incident_id, run_id=run_id, runbook=runbook.name,
            requested_by=requested_by, ttl=self.settings.approval_ttl, requests=[
                ApprovalRequest(step_id=p.step.step_id, host=p.step.host, params=dict(p.params),
                                digest=approval_digest(runbook, p, host),
                                display=p.step.display) for p, host in proposals])
        approvals = []
        for approval, (proposal, _) in zip(created, proposals, strict=True):
            approval = replace(approval, cause=proposal.cause)
            await self.reporter.approval(approval, verify=proposal.verify.display,
                                         how_to_approve=f"approve: opsbot approve "
                                                        f"{approval.token}")
            approvals.append(approval)
        return approvals

    async def decide(self, token: str, approved: bool, user: str, *, via: str,
                     check_authority: bool = False, background: bool = True,
                     hand_over: bool = False) -> Decision:
        """Record a decision (first one wins) and run the step if approved (with hand_over:
        leave it to the serving bot, which claims it)."""
        approval = await self.store.get_approval(token)
        if check_authority:
            if user not in self.settings.approvers:
                await self.store.audit("approval.refused", user, approval.incident_id,
                                       approval_id=approval.id, reason="not an approver")
                return Decision(Outcome.NOT_AN_APPROVER, approval)
            if user == approval.requested_by and not self.settings.allow_self_approval:
                await self.store.audit("approval.refused", user, approval.incident_id,
                                       approval_id=approval.id, reason="two-person rule")
                return Decision(Outcome.TWO_PERSON_RULE, approval)
        status = "approved" if approved else "rejected"
        reason = HANDOVER if approved and hand_over else f"via {via}"
        if not await self.store.decide(token, status, user, reason):
            current = await self.store.get_approval(token)
            if current.status is ApprovalStatus.EXPIRED:  # found expired now: say so
                await self.reporter.approval(current)
            return Decision(Outcome.ALREADY_DECIDED, current)
        approval = await self.store.get_approval(token)
        decided = [approval]  # the same step on the batch's other hosts: decided with it
        for other in await self.store.approval_batch(approval, "pending"):
            if await self.store.decide(other.token, status, user, reason):
                decided.append(await self.store.get_approval(other.token))
        if approved:  # from here on, a restart reports it interrupted and never re-runs it
            await self.store.update_incident(approval.incident_id, user, phase="remediating")
        await self.reporter.approval(approval)
        if not approved:
            await self.store.update_incident(approval.incident_id, user, phase="rejected")
            await self.reporter.refresh_root(approval.incident_id)
            return Decision(Outcome.REJECTED, approval, len(decided))
        if hand_over:
            return Decision(Outcome.HANDED_OVER, approval, len(decided))
        if background:
            self.tasks.spawn(self.tasks.hold(approval.incident_id,
                                             self.execute_all(decided, user)),
                             approval.incident_id)
        else:
            await self.execute_all(decided, user)
        return Decision(Outcome.RUNNING, approval, len(decided))

    async def check_origin(self, token: str, channel: str, ts: str,
                           user: str) -> Decision | None:
        """A click counts only on the approval's own message: None when (channel, ts) is
        where it was posted, else the refusal (audited)."""
        approval = await self.store.get_approval(token)
        posted = await self.store.message(approval.incident_id, "thread",
                                          f"approval:{approval.id}")
        if posted is not None and (posted.channel, posted.ts) == (channel, ts):
            return None
        await self.store.audit("approval.refused", user, approval.incident_id,
                               approval_id=approval.id, reason="clicked outside its message",
                               channel=channel, ts=ts)
        return Decision(Outcome.WRONG_MESSAGE, approval)

    # -- carrying it out ------------------------------------------------------------------
    async def execute_all(self, approvals: list[Approval], actor: str) -> bool:
        """A decided batch: every host at once; the incident's phase says how all went."""
        outcomes = await asyncio.gather(*(self.execute(a, actor) for a in approvals))
        if len(approvals) > 1:
            ok = all(outcomes)
            await self.store.update_incident(approvals[0].incident_id, actor,
                                             phase="verified" if ok else "verify failed")
            await self.reporter.refresh_root(approvals[0].incident_id)
        return all(outcomes)

    async def execute(self, approval: Approval, actor: str) -> bool:
        """Run an approved remediation step and its verify step, if it is still what was
        approved (same digest); True when the verify step passed. The outcome is audited
        (`approval.outcome`), whatever it is."""
        phase = "not run"
        try:
            phase = await self._execute_live(approval, actor)
        finally:
            await self.store.audit("approval.outcome", "opsbot", approval.incident_id,
                                   approval_id=approval.id, verified=phase == "verified",
                                   phase=phase)
        return phase == "verified"

    async def _execute_live(self, approval: Approval, actor: str) -> str:
        incident_id = approval.incident_id
        self.tasks.live[incident_id] += 1
        try:
            return await self._execute(approval, actor)
        except Exception:
            await self.store.update_incident(incident_id, "opsbot", phase="remediation failed")
            await self.reporter.refresh_root(incident_id)
            raise
        finally:
            self.tasks.live[incident_id] -= 1

    async def _execute(self, approval: Approval, actor: str) -> str:
        incident_id = approval.incident_id
        try:
            runbook = self.catalog.get(approval.runbook)
            host = self.inventory.find(approval.host)
            if host is None:
                raise InventoryError(f"host {approval.host} is no longer in the inventory")
            proposal = self.runner.propose(runbook, approval.step_id, host,
                                           approval.params, cause="")
        except (BotError, KeyError) as exc:
            await self.store.update_incident(incident_id, "opsbot", phase="remediation not run")
            await self.reporter.note(incident_id, f"🚫 Not run: {exc}")
            return "not run"
        if approval_digest(runbook, proposal, host) != approval.digest:
            await self.reporter.note(incident_id, f"🚫 {approval.step_id} on {host.name} was "
                                                  "not run: the step changed since it was "
                                                  "approved (its command, its verify step, the "
                                                  "host's address, user or Docker engine, or "
                                                  "the runbook file). Run the runbook again.")
            await self.store.audit("approval.void", "opsbot", incident_id,
                                   approval_id=approval.id, reason="digest changed")
            await self.store.update_incident(incident_id, "opsbot", phase="remediation not run")
            await self.reporter.refresh_root(incident_id)
            return "not run"
        await self.store.update_incident(incident_id, actor, phase="remediating")
        await self.reporter.refresh_root(incident_id)
        recorder = self.reporter.recorder(incident_id, approval.run_id, actor)
        result, verified = await self.runner.remediate(runbook, proposal, host, recorder)
        ok = verified is not None and verified.ok
        phase = "verified" if ok else "remediation failed" if verified is None else \
            "verify failed"
        await self.store.update_incident(incident_id, actor, phase=phase)
        await self.reporter.fix(approval, [result] + ([verified] if verified else []), ok)
        await self.reporter.refresh_root(incident_id)
        return phase

    # -- decided in another process (`opsbot approve` in a second terminal) -----------------
    async def carry_out_handovers(self) -> int:
        """Approvals decided in another process are carried out here, by the serving bot, and
        told in the incident's thread."""
        approvals = await self.store.claim_handovers()
        batches: dict[tuple[int, int, str], list[Approval]] = {}
        for approval in approvals:
            batches.setdefault(approval.batch_key, []).append(approval)
        for batch in batches.values():
            first = batch[0]
            where = first.host if len(batch) == 1 else f"{len(batch)} hosts"
            await self.reporter.note(first.incident_id, f"▶️ {first.decided_by} approved "
                                     f"{first.step_id} on {where} from a terminal: "
                                     "running it now.")
            self.tasks.spawn(self.execute_all(batch, first.decided_by or "opsbot"),
                             first.incident_id)
        return len(approvals)

    async def approve_elsewhere(self, token: str, approved: bool, user: str, *,
                                claim_wait: float = 15.0, outcome_wait: float = 3600.0,
                                say: Callable[[str], None] = print) -> bool:
        """`opsbot approve|reject TOKEN` in a terminal. While a bot serves this database, the
        decision is recorded here and the serving bot carries it out in its own process and
        thread; this waits for the outcome. With no serving bot (or none claims it in
        `claim_wait` seconds), the step runs here. True when the decision was recorded and,
        for an approval, the fix verified."""
        age = await self.store.serving_age()
        serving = age is not None and age < HEARTBEAT_FRESH
        approval = await self.store.get_approval(token)
        batch = await self.store.approval_batch(approval, "pending")
        decision = await self.decide(token, approved, user, via="terminal", background=False,
                                     hand_over=serving)
        if not decision.outcome.recorded or not approved:
            say(decision_text(decision))
            return decision.outcome is Outcome.REJECTED
        if not serving:
            say(f"No opsbot serves {self.settings.db} (no sign of life for "
                f"{'ever' if age is None else duration_text(round(age))}): it ran here, with "
                "this shell's settings.")
        else:
            say(decision_text(decision))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + claim_wait
            while (await self.store.get_approval(token)).reason == HANDOVER:
                if loop.time() > deadline:
                    mine = [await self.store.get_approval(a.token) for a in batch
                            if await self.store.take_back(a.token)]
                    if mine:
                        say(f"The serving opsbot did not take it within {claim_wait:g} s: "
                            "running it here, with this shell's settings.")
                        await self.execute_all(mine, user)
                    break
                await asyncio.sleep(0.3)
            deadline, told = loop.time() + outcome_wait, False
            for pending in batch:
                while await self.store.approval_outcome(pending) is None:
                    if loop.time() > deadline:
                        say(f"No outcome after {duration_text(outcome_wait)}; see "
                            f"INC-{approval.incident_id}'s thread.")
                        return False
                    age = await self.store.serving_age()
                    if not told and (age is None or age >= HEARTBEAT_FRESH):
                        told = True  # its restart marks the fix interrupted: that ends this
                        say(f"The serving opsbot stopped (no sign of life for "
                            f"{duration_text(round(age or 0))}): waiting for it to restart.")
                    await asyncio.sleep(0.5)
        ok = True
        for pending in batch:
            outcome = await self.store.approval_outcome(pending)
            ok = ok and bool(outcome and outcome.verified)
            say(f"{pending.step_id} on {pending.host}: "
                f"{outcome.phase if outcome else 'not run'}.")
        return ok

    # -- voided and expired ---------------------------------------------------------------
    async def void_pending(self, incident_id: int, reason: str,
                           status: str = "void") -> None:
        """Every pending approval of the incident, in one transaction; each batch's message
        (the same step on several hosts: one message) told once."""
        pending = await self.store.approvals_of(incident_id, "pending")
        if not pending:
            return
        won = await self.store.decide_many([a.token for a in pending], status, "opsbot", reason)
        told: set[tuple[int, int, str]] = set()
        for approval, decided in zip(pending, won, strict=True):
            if decided and approval.batch_key not in told:
                told.add(approval.batch_key)
                await self.reporter.approval(await self.store.get_approval(approval.token))

    async def remind(self) -> int:
        """Approvals pending for OPSBOT_REMIND_AFTER get one reminder in their thread (a batch,
        one for all its hosts); with replicas, the `reminders` leader sends them. Returns how
        many reminders were told."""
        batches: dict[tuple[int, int, str], list[Approval]] = {}
        for approval in await self.store.due_reminders(self.settings.remind_after):
            batches.setdefault(approval.batch_key, []).append(approval)
        for batch in batches.values():
            await self.reporter.note(batch[0].incident_id, reminder_text(batch),
                                     key=f"reminder:{batch[0].id}")
        return len(batches)

    async def expire(self) -> int:
        approvals = await self.store.expired_approvals()
        for approval in approvals:
            if await self.store.decide(approval.token, "expired", "opsbot",
                                       "not decided in time"):
                await self.reporter.approval(await self.store.get_approval(approval.token))
                await self.reporter.refresh_root(approval.incident_id)
        return len(approvals)
