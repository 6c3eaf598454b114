"""The incident loop, wired: alert -> incident -> runbook run -> diagnosis -> approvals ->
remediation. The flow's parts are small modules: bot.incidents (open, join, reopen, resolve),
bot.runs (trace, check, diagnose, propose), bot.approvals (decide, execute, void, expire);
this one takes work in (webhooks, commands, clicks) and resumes what an earlier process left.

Speaks Alert, Incident, Runbook and StepResult; how people are told is the Reporter's business,
and how the alert or command arrived is the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bot.alertqueue import AlertQueue
from bot.approvals import Approvals, ask_in_thread
from bot.config import Settings
from bot.errors import BotError
from bot.incidents import Incidents
from bot.inventory import Inventory
from bot.models import AlertGroup, WorkItem
from bot.notify import Reporter
from bot.parts import Deps, Part
from bot.ports import Store
from bot.render import decision_text
from bot.runbooks import Catalog
from bot.runner import Runner
from bot.runs import Runs
from bot.tasks import Tasks

log = logging.getLogger("opsbot")


class Opsbot(Part):
    def __init__(self, settings: Settings, store: Store, catalog: Catalog,
                 inventory: Inventory, runner: Runner, reporter: Reporter, *,
                 requests: Store | None = None) -> None:
        super().__init__(Deps(settings, store, requests or store, catalog, inventory, runner,
                              reporter, Tasks(reporter.note)))
        self.approvals = Approvals(self.deps)
        self.runs = Runs(self.deps, self.approvals)
        self.incidents = Incidents(self.deps, self.runs, self.approvals)
        self.accepting = True  # False once stopping: no new work is started
        self.intake_busy: Callable[[], bool] = lambda: False  # webhooks are being answered
        # answers a resumed slash command (its work payload, a line); set by the Slack adapter
        self.answer_resumed: Callable[[Mapping[str, Any], str], Awaitable[None]] | None = None
        # whether a Slack user is one of OPSBOT_OPERATORS; set by the Slack adapter, for
        # commands recorded without knowing it (the edge process, while the core was away)
        self.is_operator: Callable[[str], Awaitable[bool]] | None = None
        # what a click does (its work row's payload -> the job), answering the one who clicked
        # through its response_url; set by the Slack adapter
        self.click_job: Callable[[Mapping[str, Any]], Callable[[], Awaitable[None]]] | None \
            = None
        self._alerts: AlertQueue | None = None

    # -- work from the store ----------------------------------------------------------------
    async def submit(self, kind: str, payload: dict[str, Any],
                     job: Callable[[], Awaitable[Any]], *,
                     seen: tuple[str, float] | None = None) -> bool:
        """A command or click: recorded before it is answered (through the request lane, from
        the caller's loop), done in the background on the bot's loop, and done again at the
        next start if this process dies first. `seen`: the request's replay
        key, checked and remembered with the work row (one transaction); False, and nothing
        done, when it was seen already."""
        work_id = await self.requests.add_work(kind, payload, seen=seen)
        if work_id is None:
            return False
        self.run_work(work_id, job)
        return True

    def run_work(self, work_id: int, job: Callable[[], Awaitable[Any]]) -> None:
        """`job` in the background on the bot's loop, then its work row is done."""
        async def tracked() -> None:
            try:
                await job()
            finally:
                await self.store.finish_work(work_id, "done")

        self.tasks.spawn(tracked())

    async def resume(self, up_to: int) -> None:
        """At start-up: finish what earlier processes accepted but did not do (work rows up to
        `up_to`, taken before this one accepts anything), and make sure no open incident stays
        in a running phase without a run."""
        interrupted = await self.store.interrupt_stale_runs("opsbot")
        if interrupted:
            log.warning("%d run(s) were left unfinished by an earlier process", interrupted)
        from bot.ingest import parse_alertmanager

        work = await self.store.pending_work(up_to)
        if work:
            log.warning("resuming %d accepted webhook(s), command(s) and click(s)", len(work))
        for row in work:
            try:
                if row.kind == "alert" and row.webhook_id is not None:
                    body = await self.store.webhook_body(row.webhook_id)
                    await self.incidents.handle_alert_group(parse_alertmanager(body),
                                                             row.webhook_id)
                elif row.kind == "click" and self.click_job is not None and \
                        row.payload.get("response_url"):  # told to the one who clicked
                    await self.click_job(row.payload)()
                    await self.store.finish_work(row.id, "done")
                elif row.kind == "click":
                    p = row.payload
                    decision = await self.approvals.check_origin(
                        p["token"], p.get("channel", ""), p.get("ts", ""), p["user"]) or \
                        await self.approvals.decide(p["token"], p["approve"], p["user"],
                                                    via=p["via"], check_authority=True)
                    answer = decision_text(decision)
                    log.info("resumed click of %s: %s", p["user"], answer)
                    await self.store.finish_work(row.id, answer)
                elif row.kind == "command":
                    await self.replay_command(row)
                else:
                    await self.store.finish_work(row.id, "unknown kind", "failed")
            except BotError as exc:
                await self.store.finish_work(row.id, str(exc), "failed")
        await self.recover_incidents()

    async def replay_command(self, row: WorkItem) -> None:
        """A slash command from its work row (an earlier process's, or one the edge process
        recorded while this one could not be reached), answered where it was asked."""
        from bot import commands

        p = row.payload
        operator = p.get("operator")
        if operator is None:
            operator = self.is_operator is not None and await self.is_operator(p["user"])
        answer = await commands.handle(self, p["text"], p["user"], operator=bool(operator))

        async def say(text: str) -> None:
            if self.answer_resumed is not None:  # the user asked in Slack: answer them there
                await self.answer_resumed(p, text)
            else:
                log.info("resumed command of %s: %s", p["user"], text)

        if not p.get("answered", True):  # recorded by the edge process, with no answer yet
            await say(answer.now)
        if answer.later is not None:
            await answer.later(say)
        await self.store.finish_work(row.id, answer.now)

    async def recover_incidents(self) -> int:
        """Open incidents in a running phase with no run going on: a diagnosis runs again; an
        interrupted remediation is never run again (it is said so, and needs a new approval,
        which the new diagnosis asks for). Returns how many were taken up."""
        count = 0
        for incident in await self.store.stuck_incidents():
            if self.tasks.live[incident.id] > 0 or await self.store.live_run_elsewhere(incident.id):
                continue
            count += 1
            steps = await self.store.interrupt_steps(incident.id, "opsbot")
            if incident.phase == "remediating":
                fixes = [s for s in steps if s.phase in ("remediation", "verify")]
                what = ", ".join(f"{s.step_id} on {s.host}" for s in fixes) or \
                    "the approved step"
                await self.store.update_incident(incident.id, "opsbot",
                                                 phase="remediation interrupted")
                for row in await self.store.approvals_of(incident.id, "approved"):
                    if await self.store.approval_outcome(row) is None:  # `opsbot approve` waits
                        await self.store.audit("approval.outcome", "opsbot", incident.id,
                                               approval_id=row.id, verified=False,
                                               phase="interrupted")
                await self.reporter.note(incident.id, f"⚠️ opsbot stopped during the "
                                         f"remediation ({what}). It is not run again: whether "
                                         "it took effect is unknown. The diagnosis runs again; "
                                         "a fix needs a new approval.")
            else:
                await self.reporter.note(incident.id, "🔁 opsbot restarted before the diagnosis "
                                         "finished: running it again.")
            runbook = self.catalog.runbooks.get(incident.runbook or "")
            hosts = [h for h in (self.inventory.find(n) for n in incident.hosts) if h]
            if runbook is None or not hosts:
                await self.store.update_incident(incident.id, "opsbot", phase="not diagnosed")
                await self.reporter.note(incident.id, "⚠️ The runbook or its hosts are no "
                                                      "longer loaded; nothing was run.")
                await self.reporter.refresh_root(incident.id)
                continue
            self.tasks.spawn(self.tasks.hold(incident.id, self.runs.run(
                incident, runbook, hosts, labels=incident.labels, requested_by="opsbot",
                source="resumed", approver=ask_in_thread)), incident.id)
        return count

    # -- alerts ---------------------------------------------------------------------------
    @property
    def alert_batches(self) -> int:
        """Batches of answered webhooks processed so far."""
        return self._alerts.batches if self._alerts is not None else 0

    @property
    def alerts_queued(self) -> int:
        """Answered webhooks waiting to be processed."""
        return len(self._alerts) if self._alerts is not None else 0

    def accept_alert(self, group: AlertGroup, webhook_id: int) -> None:
        """An answered webhook, processed in the background (bot.alertqueue: in batches, after
        the burst being answered). Its work row makes it survive a crash meanwhile. From any
        thread (the HTTP server's): the queue lives on the bot's loop."""
        self.tasks.soon(self._queue_alert, group, webhook_id)

    def _queue_alert(self, group: AlertGroup, webhook_id: int) -> None:
        if self._alerts is None:
            self._alerts = AlertQueue(self.incidents.handle_alert_batch, self.intake_busy,
                                      self.tasks.spawn)
        self._alerts.put(group, webhook_id)
