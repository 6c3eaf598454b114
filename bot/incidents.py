"""Incidents: an alert group's notifications open, join, reopen and resolve its incident; an
incident with nothing left to do closes by itself.

The rules live here; the store applies `opening` inside its transaction (so two replicas
receiving the same alerts still make one incident) and keeps what it decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.approvals import Approvals, ask_in_thread
from bot.errors import NotFound, StoreError
from bot.ingest import alert_host
from bot.models import (
    IDLE_PHASES,
    AlertGroup,
    Host,
    Incident,
    IncidentStatus,
    Notification,
    Opening,
    parse_incident_ref,
)
from bot.parts import Deps, Part
from bot.render import duration_text
from bot.runbooks import Runbook
from bot.runs import Runs

log = logging.getLogger("opsbot")

# A group that fires again less than this after its incident was resolved reopens that
# incident, in the same thread; later, it opens a new one (docs/configuration.md).
REOPEN_WINDOW = timedelta(hours=24)


def opening(latest: IncidentStatus | None, resolved_at: datetime | None,
            now: datetime) -> Opening:
    """How a firing notification meets its group's latest incident (None: there is none)."""
    if latest is IncidentStatus.OPEN:
        return Opening.JOINED
    if resolved_at is not None and now - resolved_at < REOPEN_WINDOW:
        return Opening.REOPENED
    return Opening.OPENED


@dataclass(frozen=True)
class AlertPlan:
    """A firing notification, ready to record, and what to run for it."""

    notification: Notification
    runbook: Runbook | None
    host: Host | None
    started_at: str


class Incidents(Part):
    def __init__(self, deps: Deps, runs: Runs, approvals: Approvals) -> None:
        super().__init__(deps)
        self.runs = runs
        self.approvals = approvals
        self._group_locks: dict[str, asyncio.Lock] = {}

    async def incident(self, ref: str) -> Incident:
        number = parse_incident_ref(ref)
        if number is None:
            raise NotFound(f"{ref!r} is not an incident reference (like INC-42)")
        return await self.requests.get_incident(number)  # answers a command: the lane

    async def handle_alert_batch(self, batch: Sequence[tuple[AlertGroup, int]]) -> None:
        """Answered webhooks in the order they came. Runs of new firing notifications are
        recorded together (one transaction, their messages in another); anything else (a
        resolution, a repeat) is handled alone, in its place."""
        firing: list[tuple[AlertGroup, int]] = []
        for group, webhook_id in batch:
            if group.status == "firing" and group.firing and not group.repeat:
                firing.append((group, webhook_id))
                continue
            await self._handle_firing(firing)
            firing = []
            await self.handle_alert_group(group, webhook_id)
        await self._handle_firing(firing)

    async def _handle_firing(self, batch: Sequence[tuple[AlertGroup, int]]) -> None:
        if not batch:
            return
        plans = [self._plan(group, webhook_id) for group, webhook_id in batch]
        async with contextlib.AsyncExitStack() as locks:  # each group's order, as one by one
            for key in sorted({group.group_key for group, _ in batch}):
                await locks.enter_async_context(self._group_locks.setdefault(key,
                                                                             asyncio.Lock()))
            try:
                recorded = await self.store.ingest_many([p.notification for p in plans],
                                                        rule=opening)
            except StoreError:
                if len(batch) == 1:
                    raise
                log.exception("recording %d notifications together failed; one by one now",
                              len(batch))
                for group, webhook_id in batch:
                    try:
                        await self._handle_alert_group(group, webhook_id)
                    except Exception:  # its work row stays: the next start tries it again
                        log.exception("webhook %d could not be processed", webhook_id)
                return
            runs = []
            async with self.reporter.outbox.together():
                for plan, (incident, how) in zip(plans, recorded, strict=True):
                    runs.append(await self._tell(plan, incident, how))
        for incident, run in zip((i for i, _ in recorded), runs, strict=True):
            if run is not None:
                self.tasks.spawn(run, incident.id)

    async def handle_alert_group(self, group: AlertGroup, webhook_id: int) -> Incident | None:
        """Notifications of one group are handled one at a time, in the order they came."""
        lock = self._group_locks.setdefault(group.group_key, asyncio.Lock())
        async with lock:
            return await self._handle_alert_group(group, webhook_id)

    async def _handle_alert_group(self, group: AlertGroup, webhook_id: int) -> Incident | None:
        if group.status == "resolved" or not group.firing:
            incident = await self.store.incident_for_group(group.group_key)
            if incident is None:
                await self.store.webhook_outcome(webhook_id, "resolved, no incident")
                return None
            await self._record_alerts(incident.id, webhook_id, group)
            if incident.status is IncidentStatus.OPEN:
                await self.resolve(incident.id, "alertmanager", "the alert resolved")
            await self.store.webhook_outcome(webhook_id, "resolved", incident.id)
            return incident

        if group.repeat:  # Alertmanager re-sent an unchanged group: start nothing
            incident = await self.store.incident_for_group(group.group_key)
            joined = incident is not None and incident.status is IncidentStatus.OPEN
            if incident is not None and joined:
                await self._record_alerts(incident.id, webhook_id, group)
            await self.store.webhook_outcome(webhook_id, "repeat, joined" if joined
                                             else "repeat, nothing started",
                                             incident.id if incident and joined else None)
            return incident if joined else None

        plan = self._plan(group, webhook_id)
        [(incident, how)] = await self.store.ingest_many([plan.notification], rule=opening)
        run = await self._tell(plan, incident, how)
        if run is not None:
            self.tasks.spawn(run, incident.id)
        return incident

    def _plan(self, group: AlertGroup, webhook_id: int) -> AlertPlan:
        """What a firing notification opens: title, runbook, host, notes (no I/O)."""
        first = group.firing[0]
        labels = {**group.common_labels, **first.labels}
        host_name = alert_host(first)
        host = self.inventory.find(host_name) if host_name else None
        runbook = self.catalog.select(labels)
        notes = []
        if host_name is None:
            notes.append("The alert names no host (no host or instance label).")
        elif host is None:
            notes.append(f"No inventory host matches {host_name!r} (checked host names and "
                         "ansible_host); nothing was run.")
        if runbook is None:
            notes.append("No runbook's matchers fit this alert's labels; nothing was run.")
        if group.truncated:
            notes.append(f"Alertmanager left {group.truncated} more alert(s) of this group out "
                         "of the notification (max_alerts); see Alertmanager for all of them.")
        title = first.annotations.get("summary") or \
            f"{first.name} on {host.name if host else host_name or 'unknown host'}"
        return AlertPlan(Notification(
            webhook_id, group.group_key, title=title[:200], labels=labels,
            runbook=runbook.name if runbook else None, hosts=(host.name,) if host else (),
            notes=tuple(notes), alerts=tuple(self._alert_rows(group)), actor="alertmanager",
            idle_phase=None if runbook and host else "not diagnosed"),
            runbook, host, first.starts_at)

    async def _tell(self, plan: AlertPlan, incident: Incident,
                    how: Opening) -> Coroutine[Any, Any, Any] | None:
        """The thread of a recorded notification; returns the run to start, if any."""
        if how is Opening.JOINED:  # a repeated notification of an open group: no second run
            await self.reporter.refresh_root(incident.id)
            return None
        runbook, host = plan.runbook, plan.host
        if runbook and host:  # held before any await: a recovery sweep must not run it too
            run = self.tasks.hold(incident.id, self.runs.run(incident, runbook, [host],
                                                  labels=plan.notification.labels,
                                                  requested_by="alertmanager", source="alert",
                                                  approver=ask_in_thread,
                                                  started_at=plan.started_at))
        else:
            run = None
        await self.reporter.refresh_root(incident.id)
        if how is Opening.REOPENED:
            await self.reporter.note(incident.id, "🔁 The alert is firing again: incident "
                                                  "reopened, running the diagnosis again.")
        for note in plan.notification.notes:
            await self.reporter.note(incident.id, f"⚠️ {note}")
        if run is None:
            await self.reporter.note(incident.id, self.runs.nothing_to_do(
                "no runbook fits this alert" if runbook is None else "its host is unknown"))
        return run

    async def _record_alerts(self, incident_id: int, webhook_id: int, group: AlertGroup) -> None:
        await self.store.record_alerts(incident_id, webhook_id, self._alert_rows(group))

    @staticmethod
    def _alert_rows(group: AlertGroup) -> list[dict[str, Any]]:
        return [{"fingerprint": a.fingerprint, "name": a.name, "status": a.status,
                 "labels": dict(a.labels), "annotations": dict(a.annotations),
                 "starts_at": a.starts_at, "ends_at": a.ends_at} for a in group.alerts]

    async def close_idle(self) -> int:
        """Incidents where opsbot has nothing left to do and nothing happened for
        OPSBOT_CLOSE_AFTER: a mitigated one is resolved, any other closed without action."""
        closed = 0
        for incident in await self.store.idle_incidents(self.settings.close_after):
            if incident.phase not in IDLE_PHASES or \
                    await self.store.approvals_of(incident.id, "pending"):
                continue
            after = duration_text(self.settings.close_after)
            if incident.state == "mitigated":
                await self.resolve(incident.id, "opsbot", f"the fix was verified and nothing "
                                   f"happened for {after} (OPSBOT_CLOSE_AFTER)")
            else:
                await self.resolve(incident.id, "opsbot", f"nothing to do and nothing happened "
                                   f"for {after} (OPSBOT_CLOSE_AFTER)", phase="closed")
            closed += 1
        return closed

    async def resolve(self, incident_id: int, actor: str, why: str,
                      phase: str = "resolved") -> Incident:
        """Resolve (or, with phase="closed", close without action) an open incident."""
        incident = await self.store.get_incident(incident_id)
        if incident.status is IncidentStatus.RESOLVED:
            return incident
        await self.approvals.void_pending(incident_id, f"cancelled: {why}", status="cancelled")
        await self.store.update_incident(incident_id, actor, status="resolved", phase=phase)
        word = "⚪ Closed" if phase == "closed" else "🟢 Resolved"
        await self.reporter.note(incident_id, f"{word}: {why}.")
        return await self.reporter.refresh_root(incident_id)
