"""The incident loop: alert -> incident -> runbook run -> diagnosis -> approvals -> remediation.

Speaks Alert, Incident, Runbook and StepResult; how people are told is the Reporter's business,
and how the alert or command arrived is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.adapters.sql import db_errors
from bot.adapters.store import HANDOVER, AsyncStore, Notification, Row
from bot.alertqueue import AlertQueue
from bot.config import Settings
from bot.errors import BotError, InventoryError, NotFound, TemplateFailed
from bot.ingest import alert_host
from bot.inventory import Inventory
from bot.logtime import Clock
from bot.models import (
    IDLE_PHASES,
    AlertGroup,
    ExecOutput,
    Host,
    Incident,
    IncidentStatus,
    Phase,
    canonical_json,
    parse_incident_ref,
    sha256_hex,
)
from bot.notify import Reporter
from bot.params import ParamSpec, Source, coerce_param, resolve_for_host
from bot.redact import redact
from bot.runbooks import Catalog, Runbook
from bot.runner import HostReport, Proposal, Runner, render_context, render_step

if TYPE_CHECKING:  # discovery (and its nginx parser) loads when a run first needs it
    from bot.discovery import Chain

log = logging.getLogger("opsbot")


def _parse_time(text: str | None) -> datetime | None:
    """An alert's startsAt (RFC 3339), aware; None when absent or unreadable."""
    if not text or text.startswith("0001-"):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


HEARTBEAT_FRESH = 10.0  # a sign of life younger than this: a bot serves the database
DEFAULT_URL = "http://127.0.0.1/"  # discovery's URL when neither the alert nor the host names one

# An approver sees a pending approval and its proposal; it answers (approved?, who) or None
# to leave it pending for someone to click in the thread.
Approver = Callable[[Row, Proposal], Awaitable[tuple[bool, str] | None]]


async def ask_in_thread(approval: Row, proposal: Proposal) -> tuple[bool, str] | None:
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


@dataclass(frozen=True)
class AlertPlan:
    """A firing notification, ready to record, and what to run for it."""

    notification: Notification
    runbook: Runbook | None
    host: Host | None
    started_at: str


@dataclass(frozen=True)
class RunOutcome:
    incident: Incident
    reports: list[HostReport]
    pending: list[Row]
    run_id: int = 0
    chains: Mapping[str, Chain] = field(default_factory=dict)


class Opsbot:
    def __init__(self, settings: Settings, store: AsyncStore, catalog: Catalog,
                 inventory: Inventory, runner: Runner, reporter: Reporter, *,
                 requests: AsyncStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.requests = requests or store  # what an answer waits for goes first (lane)
        self.catalog = catalog
        self.inventory = inventory
        self.runner = runner
        self.reporter = reporter
        self.tasks: set[asyncio.Task[Any]] = set()
        self._group_locks: dict[str, asyncio.Lock] = {}
        self.live: Counter[int] = Counter()  # incidents with runs or fixes going on here
        self.accepting = True  # False once stopping: no new work is started
        self.intake_busy: Callable[[], bool] = lambda: False  # webhooks are being answered
        # answers a resumed slash command (its work payload, a line); set by the Slack adapter
        self.answer_resumed: Callable[[Mapping[str, Any], str], Awaitable[None]] | None = None
        self._alerts: AlertQueue | None = None

    # -- background work ------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], incident_id: int | None = None) -> None:
        """Run work after the HTTP answer went back; failures are logged and told."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            if t.cancelled() or t.exception() is None:
                return
            exc = t.exception()
            log.error("background work failed: %r", exc, exc_info=exc)
            if incident_id is not None:
                why = redact(str(exc) if isinstance(exc, BotError)
                             else f"internal error: {exc!r}")
                self.spawn(self.reporter.note(incident_id, f"⚠️ {why}"))

        task.add_done_callback(done)

    def hold(self, incident_id: int, coro: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
        """Count the incident as live from now (before the coroutine starts) until it ends."""
        self.live[incident_id] += 1

        async def held() -> Any:
            try:
                return await coro
            finally:
                self.live[incident_id] -= 1

        return held()

    async def drain(self, timeout: float | None = None) -> int:
        """Wait for background work; past `timeout`, cancel what is left (it is marked
        interrupted and resumed at the next start). Returns how many were cancelled."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while self.tasks:
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                pending = list(self.tasks)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return len(pending)
            await asyncio.wait(list(self.tasks), timeout=left)
        return 0

    # -- work from the store ----------------------------------------------------------------
    async def submit(self, kind: str, payload: dict[str, Any],
                     job: Callable[[], Awaitable[Any]], *,
                     seen: tuple[str, float] | None = None) -> bool:
        """A command or click: recorded before it is answered, done in the background, and
        done again at the next start if this process dies first. `seen`: the request's replay
        key, checked and remembered with the work row (one transaction); False, and nothing
        done, when it was seen already."""
        work_id = await self.requests.add_work(kind, payload, seen=seen)
        if work_id is None:
            return False

        async def tracked() -> None:
            try:
                await job()
            finally:
                await self.store.finish_work(work_id, "done")

        self.spawn(tracked())
        return True

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
                if row["kind"] == "alert":
                    body = await self.store.webhook_body(row["webhook_id"])
                    await self.handle_alert_group(parse_alertmanager(body), row["webhook_id"])
                elif row["kind"] == "click":
                    p = row["payload"]
                    answer = await self.check_origin(p["token"], p.get("channel", ""),
                                                     p.get("ts", ""), p["user"]) or \
                        await self.decide(p["token"], p["approve"], p["user"], via=p["via"],
                                          check_authority=True)
                    log.info("resumed click of %s: %s", p["user"], answer)
                    await self.store.finish_work(row["id"], answer)
                elif row["kind"] == "command":
                    await self._replay_command(row)
                else:
                    await self.store.finish_work(row["id"], "unknown kind", "failed")
            except BotError as exc:
                await self.store.finish_work(row["id"], str(exc), "failed")
        await self.recover_incidents()

    async def _replay_command(self, row: Row) -> None:
        from bot import commands

        p = row["payload"]
        answer = await commands.handle(self, p["text"], p["user"],
                                       operator=bool(p.get("operator")))

        async def say(text: str) -> None:
            if self.answer_resumed is not None:  # the user asked in Slack: answer them there
                await self.answer_resumed(p, text)
            else:
                log.info("resumed command of %s: %s", p["user"], text)

        if answer.later is not None:
            await answer.later(say)
        await self.store.finish_work(row["id"], answer.now)

    async def recover_incidents(self) -> int:
        """Open incidents in a running phase with no run going on: a diagnosis runs again; an
        interrupted remediation is never run again (it is said so, and needs a new approval,
        which the new diagnosis asks for). Returns how many were taken up."""
        count = 0
        for incident in await self.store.stuck_incidents():
            if self.live[incident.id] > 0 or await self.store.live_run_elsewhere(incident.id):
                continue
            count += 1
            steps = await self.store.interrupt_steps(incident.id, "opsbot")
            if incident.phase == "remediating":
                fixes = [s for s in steps if s["phase"] in ("remediation", "verify")]
                what = ", ".join(f"{s['step_id']} on {s['host']}" for s in fixes) or \
                    "the approved step"
                await self.store.update_incident(incident.id, "opsbot",
                                                 phase="remediation interrupted")
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
            self.spawn(self.hold(incident.id, self.run(
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
        the burst being answered). Its work row makes it survive a crash meanwhile."""
        if self._alerts is None:
            self._alerts = AlertQueue(self.handle_alert_batch, self.intake_busy, self.spawn)
        self._alerts.put(group, webhook_id)

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
                recorded = await self.store.ingest_many([p.notification for p in plans])
            except db_errors():
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
                self.spawn(run, incident.id)

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
        [(incident, how)] = await self.store.ingest_many([plan.notification])
        run = await self._tell(plan, incident, how)
        if run is not None:
            self.spawn(run, incident.id)
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
                    how: str) -> Coroutine[Any, Any, Any] | None:
        """The thread of a recorded notification; returns the run to start, if any."""
        if how == "joined":  # a repeated notification of an open group: no second run
            await self.reporter.refresh_root(incident.id)
            return None
        runbook, host = plan.runbook, plan.host
        if runbook and host:  # held before any await: a recovery sweep must not run it too
            run = self.hold(incident.id, self.run(incident, runbook, [host],
                                                  labels=plan.notification.labels,
                                                  requested_by="alertmanager", source="alert",
                                                  approver=ask_in_thread,
                                                  started_at=plan.started_at))
        else:
            run = None
        await self.reporter.refresh_root(incident.id)
        if how == "reopened":
            await self.reporter.note(incident.id, "🔁 The alert is firing again: incident "
                                                  "reopened, running the diagnosis again.")
        for note in plan.notification.notes:
            await self.reporter.note(incident.id, f"⚠️ {note}")
        if run is None:
            await self.reporter.note(incident.id, self.nothing_to_do(
                "no runbook fits this alert" if runbook is None else "its host is unknown"))
        return run

    async def _record_alerts(self, incident_id: int, webhook_id: int, group: AlertGroup) -> None:
        await self.store.record_alerts(incident_id, webhook_id, self._alert_rows(group))

    @staticmethod
    def _alert_rows(group: AlertGroup) -> list[dict[str, Any]]:
        return [{"fingerprint": a.fingerprint, "name": a.name, "status": a.status,
                 "labels": dict(a.labels), "annotations": dict(a.annotations),
                 "starts_at": a.starts_at, "ends_at": a.ends_at} for a in group.alerts]

    # -- discovery ------------------------------------------------------------------------
    async def discover(self, host: Host, url: str | None = None, *,
                       fallback: str | None = None) -> Chain:
        """The chain behind url on host (default: the host's opsbot_proxy_url). With fallback,
        url is an alert's (untrusted): traced only if nginx on the host serves it, else
        fallback is (bot.discovery.probe.Prober.discover)."""
        url = url or str(host.vars.get("opsbot_url") or host.vars.get("opsbot_proxy_url")
                         or DEFAULT_URL)
        url = coerce_param("url", ParamSpec(type="url"), url)
        if fallback is not None:
            fallback = coerce_param("url", ParamSpec(type="url"), fallback)
        sudo = coerce_param("sudo", ParamSpec(type="bool"),
                            host.vars.get("opsbot_sudo", False))
        ssh = self.runner.ctx.ssh

        async def run(command: str, timeout: float) -> ExecOutput:
            return await ssh.run(host, command, timeout)

        async def run_many(commands: Sequence[str], timeout: float) -> list[ExecOutput]:
            return await ssh.run_many(host, commands, timeout)

        from bot.discovery import discover

        return await discover(run, host.name, url, sudo=sudo,
                              nginx_conf=host.vars.get("opsbot_nginx_conf"), fallback=fallback,
                              own_names=(host.name, host.address), run_many=run_many)

    # -- runs -----------------------------------------------------------------------------
    def targets(self, runbook: Runbook, hosts: list[Host], labels: Mapping[str, str],
                explicit: Mapping[str, str],
                discovered: Mapping[str, Mapping[str, Any]] | None = None, *,
                source: str = "terminal") -> tuple[list[tuple[Host, dict[str, Any]]], list[str]]:
        """Parameters per host (bot.params.resolve_for_host): labels set only what the runbook
        opens to alerts and never beat the inventory; chat only what it opens to chat."""
        origin: Source = "chat" if source == "slack" else "alert" if source == "alert" \
            else "terminal"
        out, notes = [], []
        for host in hosts:
            resolved = resolve_for_host(runbook, host.opsbot_vars(), labels, explicit,
                                        source=origin,
                                        discovered=(discovered or {}).get(host.name))
            out.append((host, resolved.values))
            notes += [n if n.startswith("Ignored alert") else f"{host.name}: {n}"
                      for n in resolved.notes if n not in notes]
        return out, notes

    @staticmethod
    def alert_url(labels: Mapping[str, str]) -> str | None:
        """The alert's probe target (instance, target or url label): untrusted."""
        for key in ("instance", "target", "url"):
            value = labels.get(key, "")
            if value.startswith(("http://", "https://")):
                return value
        return None

    def own_url(self, runbook: Runbook, host: Host, explicit: Mapping[str, str]) -> str | None:
        """The runbook's URL parameter as the user, the host or the runbook set it."""
        for layer in (explicit, host.opsbot_vars()):
            for key in ("url", "proxy_url"):
                if layer.get(key):
                    return str(layer[key])
        spec = runbook.params.get("proxy_url")
        return str(spec.default) if spec is not None and spec.default else None

    async def trace(self, incident_id: int, runbook: Runbook, hosts: list[Host],
                    labels: Mapping[str, str], explicit: Mapping[str, str]) -> dict[str, Chain]:
        """Discovery on every host, before any check; each chain goes in the thread first."""
        async def one(host: Host) -> tuple[Host, Chain | None]:
            alert_url, own = self.alert_url(labels), self.own_url(runbook, host, explicit)
            url = alert_url or own
            if url is None:
                return host, None
            try:  # an alert's URL is traced only where nginx on the host serves it
                return host, await self.discover(
                    host, url, fallback=(own or DEFAULT_URL) if alert_url else None)
            except BotError as exc:
                await self.reporter.note(incident_id, f"⚠️ {host.name}: discovery: {exc}")
                return host, None

        chains = {host.name: chain for host, chain in
                  await asyncio.gather(*(one(h) for h in hosts)) if chain is not None}
        if chains:  # the postmortem's "The chain" reads this record
            await self.store.audit("discovery.traced", "opsbot", incident_id,
                                   chains={name: c.text() for name, c in chains.items()})
        await self.reporter.chains(incident_id, chains)
        return chains

    def backend_runbook(self, runbook: Runbook, labels: Mapping[str, str],
                        chains: Mapping[str, Chain]) -> Runbook:
        """An alert without a deployment label gets the runbook of the backend found behind
        its URL (the same matchers, with deployment= what discovery found)."""
        kinds = {c.owner.kind for c in chains.values() if c.owner is not None}
        if "deployment" in labels or len(kinds) != 1:
            return runbook
        return self.catalog.select({**labels, "deployment": kinds.pop()}) or runbook

    async def run_target(self, runbook_name: str, target: str, explicit: Mapping[str, str], *,
                         requested_by: str, source: str, approver: Approver,
                         dry_run: bool = False) -> RunOutcome | list[tuple[Host, list[str]]]:
        """A run asked for by a person (terminal or chat): join the target's open incident or
        open one, then run. With dry_run, only the rendered commands per host."""
        runbook = self.catalog.get(runbook_name)
        hosts = self.inventory.resolve(target)
        targets, _ = self.targets(runbook, hosts, {}, explicit, source=source)
        if dry_run:
            return [(host, self.plan(runbook, host, params)) for host, params in targets]
        incident = None
        for host in hosts:
            incident = await self.store.open_incident_for_host(host.name)
            if incident and incident.state == "mitigated":
                # its fault was fixed: what the host shows now is a new fault, a new incident
                await self.reporter.note(incident.id, f"▶️ {requested_by} runs {runbook.name} "
                                         f"on {target}: a new incident, as this one's fix "
                                         "was verified.")
                incident = None
                break
            if incident:
                break
        if incident is None:
            incident, _ = await self.store.open_or_join(
                f"run:{runbook.name}:{target}:{secrets.token_hex(8)}",
                title=f"{runbook.name} on {target} (manual run)", labels={},
                runbook=runbook.name, hosts=[h.name for h in hosts], notes=[],
                actor=requested_by)
            await self.reporter.refresh_root(incident.id)
        else:
            await self.reporter.note(incident.id, f"▶️ {requested_by} runs {runbook.name} on "
                                                  f"{target} ({source}), joining {incident.ref}.")
        return await self.run(incident, runbook, hosts, labels={}, explicit=explicit,
                              requested_by=requested_by, source=source, approver=approver)

    def plan(self, runbook: Runbook, host: Host, params: Mapping[str, Any]) -> list[str]:
        lines = []
        context = render_context(host, params, {}, {})
        for phase, steps in ((Phase.DIAGNOSTIC, runbook.steps),
                             (Phase.REMEDIATION, runbook.remediation)):
            for step in steps:
                try:
                    shown = render_step(step, phase, host, context).display
                except TemplateFailed as exc:
                    shown = f"(rendered at run time: {exc})"
                cond = f"  [when {step.when}]" if step.when else ""
                approval = "  [needs approval]" if phase is Phase.REMEDIATION else ""
                lines.append(f"{phase}/{step.id}: {shown}{cond}{approval}")
        return lines

    async def run(self, incident: Incident, runbook: Runbook, hosts: list[Host], *,
                  labels: Mapping[str, str], requested_by: str, source: str,
                  approver: Approver, explicit: Mapping[str, str] | None = None,
                  started_at: str | None = None) -> RunOutcome:
        """Trace, check, diagnose, propose. started_at: when the alert began firing (log
        lines older than that, less a margin, are shown as earlier); default: now."""
        self.live[incident.id] += 1
        try:
            return await self._run(incident, runbook, hosts, labels=labels,
                                   requested_by=requested_by, source=source, approver=approver,
                                   explicit=explicit, started_at=started_at)
        except Exception:
            await self.store.update_incident(incident.id, "opsbot", phase="diagnosis failed")
            await self.reporter.refresh_root(incident.id)
            raise
        finally:
            self.live[incident.id] -= 1

    async def _run(self, incident: Incident, runbook: Runbook, hosts: list[Host], *,
                   labels: Mapping[str, str], requested_by: str, source: str,
                   approver: Approver, explicit: Mapping[str, str] | None = None,
                   started_at: str | None = None) -> RunOutcome:
        explicit = explicit or {}
        chains = await self.trace(incident.id, runbook, hosts, labels, explicit)
        if source == "alert":
            chosen = self.backend_runbook(runbook, labels, chains)
            if chosen is not runbook:
                owner = next(c.owner for c in chains.values() if c.owner is not None)
                await self.reporter.note(incident.id, f"🧭 The backend is {owner.label}: "
                                         f"running {chosen.name} instead of {runbook.name}.")
                await self.store.update_incident(incident.id, "opsbot", runbook=chosen.name)
                runbook = chosen
        targets, notes = self.targets(runbook, hosts, labels, explicit,
                                      {name: c.params() for name, c in chains.items()},
                                      source=source)
        for note in notes:
            await self.reporter.note(incident.id, f"⚠️ {note}")
        await self.void_pending(incident.id, "superseded by a new run of the incident")
        run_id = await self.store.start_run(incident.id, runbook.name,
                                            ",".join(h.name for h in hosts), requested_by,
                                            source, {h.name: p for h, p in targets})
        await self.store.update_incident(incident.id, requested_by, phase="diagnosing",
                                         runbook=runbook.name)
        await self.reporter.refresh_root(incident.id)
        recorder = self.reporter.live_recorder(
            incident.id, run_id, requested_by, f"{runbook.name} on {len(hosts)} host(s)"
            if len(hosts) > 1 else f"{runbook.name} on {hosts[0].name}" if hosts else
            runbook.name, [h.name for h in hosts])
        began = _parse_time(started_at) or datetime.now(UTC)
        clocks = {name: Clock(since=began, utc_offset=c.utc_offset, booted_at=c.booted_at)
                  for name, c in chains.items()}
        clocks.update({h.name: Clock(since=began) for h in hosts if h.name not in clocks})
        found = {name: {"discovery": "\n".join([c.text(), *c.notes])}
                 for name, c in chains.items()}
        try:
            reports = await self.runner.diagnose(
                runbook, targets, recorder, since=clocks, found=found,
                reads={name: {cmd: (r.output, r.started_at, r.duration)
                              for cmd, r in c.reads.items()} for name, c in chains.items()})
        finally:
            await self.reporter.run_finished(recorder)
        summaries = getattr(runbook.rules, "summaries", {}) if runbook.rules else {}
        best = None
        for report in reports:
            if report.causes and (best is None or report.causes[0].confidence > best.confidence):
                best = report.causes[0]
        await self.reporter.findings(incident.id, run_id, reports, summaries)
        await self.store.update_incident(incident.id, "opsbot", phase="diagnosed",
                                         cause=best.cause if best else None)
        proposed = [(await self.propose(incident.id, run_id, runbook, proposal, requested_by,
                                        report.host), proposal)
                    for report in reports for proposal in report.proposals]
        pending: list[Row] = []
        for row, proposal in proposed:
            if (await self.store.get_approval(row["token"]))["status"] != "pending":
                continue  # decided with its batch (the same step on other hosts)
            decision = await approver(row, proposal)
            if decision is None:
                pending.append(row)
                continue
            approved, who = decision
            await self.decide(row["token"], approved, who, via=source, background=False)
        if pending:
            await self.store.update_incident(incident.id, "opsbot", phase="awaiting approval")
        elif not any(r.proposals for r in reports):
            await self.reporter.note(incident.id, self.nothing_to_do(
                "no remediation step fits what was found" if best else
                "no known cause matched the evidence"))
        await self.store.finish_run(run_id, incident.id,
                                    "awaiting approval" if pending else "done", requested_by)
        incident = await self.reporter.refresh_root(incident.id)
        return RunOutcome(incident, reports, pending, run_id, chains)

    def nothing_to_do(self, why: str) -> str:
        """The line an incident gets when opsbot has nothing (more) to run for it."""
        return (f"💤 Nothing for opsbot to run: {why}. This incident resolves with its alert, "
                f"or closes by itself after {_duration(self.settings.close_after)} without news "
                "(OPSBOT_CLOSE_AFTER); `resolve` closes it now.")

    # -- approvals ------------------------------------------------------------------------
    async def propose(self, incident_id: int, run_id: int, runbook: Runbook,
                      proposal: Proposal, requested_by: str, host: Host) -> Row:
        row = await self.store.create_approval(
            incident_id=incident_id, run_id=run_id, runbook=runbook.name,
            step_id=proposal.step.step_id, host=proposal.step.host,
            params=dict(proposal.params), digest=approval_digest(runbook, proposal, host),
            display=proposal.step.display, requested_by=requested_by,
            ttl=self.settings.approval_ttl)
        row["cause"] = proposal.cause
        await self.reporter.approval(row, verify=proposal.verify.display,
                                     how_to_approve=f"approve: opsbot approve {row['token']}")
        return row

    async def decide(self, token: str, approved: bool, user: str, *, via: str,
                     check_authority: bool = False, background: bool = True,
                     hand_over: bool = False) -> str:
        """Record a decision (first one wins) and run the step if approved (with hand_over:
        leave it to the serving bot, which claims it). Returns one line for the person who
        decided."""
        approval = await self.store.get_approval(token)
        if check_authority:
            if user not in self.settings.approvers:
                await self.store.audit("approval.refused", user, approval["incident_id"],
                                       approval_id=approval["id"], reason="not an approver")
                return "You are not allowed to approve or reject remediation (not in " \
                       "OPSBOT_APPROVERS). Nothing was run."
            if user == approval["requested_by"] and not self.settings.allow_self_approval:
                await self.store.audit("approval.refused", user, approval["incident_id"],
                                       approval_id=approval["id"], reason="two-person rule")
                return "You asked for this run, so someone else must approve its remediation " \
                       "(two-person rule). Nothing was run."
        status = "approved" if approved else "rejected"
        reason = HANDOVER if approved and hand_over else f"via {via}"
        if not await self.store.decide(token, status, user, reason):
            current = await self.store.get_approval(token)
            if current["status"] == "expired":  # found expired at this decision: say so
                await self.reporter.approval(current)
            return f"This was already {current['status']}" + \
                (f" by {current['decided_by']}" if current.get("decided_by") else "") + \
                "; nothing more was done."
        approval = await self.store.get_approval(token)
        decided = [approval]  # the same step on the batch's other hosts: decided with it
        for other in await self.store.approval_batch(approval, "pending"):
            if await self.store.decide(other["token"], status, user, reason):
                decided.append(await self.store.get_approval(other["token"]))
        if approved:  # from here on, a restart reports it interrupted and never re-runs it
            await self.store.update_incident(approval["incident_id"], user, phase="remediating")
        await self.reporter.approval(approval)
        where = approval["host"] if len(decided) == 1 else f"{len(decided)} hosts"
        if not approved:
            await self.store.update_incident(approval["incident_id"], user, phase="rejected")
            await self.reporter.refresh_root(approval["incident_id"])
            return f"Rejected {approval['step_id']} on {where}."
        if hand_over:
            return f"Approved {approval['step_id']} on {where}: handed to the serving opsbot."
        if background:
            self.spawn(self.hold(approval["incident_id"], self.execute_all(decided, user)),
                       approval["incident_id"])
        else:
            await self.execute_all(decided, user)
        return f"Approved {approval['step_id']} on {where}: running it now."

    async def execute_all(self, approvals: list[Row], actor: str) -> bool:
        """A decided batch: every host at once; the incident's phase says how all went."""
        outcomes = await asyncio.gather(*(self.execute(a, actor) for a in approvals))
        if len(approvals) > 1:
            ok = all(outcomes)
            await self.store.update_incident(approvals[0]["incident_id"], actor,
                                             phase="verified" if ok else "verify failed")
            await self.reporter.refresh_root(approvals[0]["incident_id"])
        return all(outcomes)

    async def execute(self, approval: Row, actor: str) -> bool:
        """Run an approved remediation step and its verify step, if it is still what was
        approved (same digest); True when the verify step passed. The outcome is audited
        (`approval.outcome`), whatever it is."""
        phase = "not run"
        try:
            phase = await self._execute_live(approval, actor)
        finally:
            await self.store.audit("approval.outcome", "opsbot", approval["incident_id"],
                                   approval_id=approval["id"], verified=phase == "verified",
                                   phase=phase)
        return phase == "verified"

    async def _execute_live(self, approval: Row, actor: str) -> str:
        incident_id = approval["incident_id"]
        self.live[incident_id] += 1
        try:
            return await self._execute(approval, actor)
        except Exception:
            await self.store.update_incident(incident_id, "opsbot", phase="remediation failed")
            await self.reporter.refresh_root(incident_id)
            raise
        finally:
            self.live[incident_id] -= 1

    async def _execute(self, approval: Row, actor: str) -> str:
        incident_id = approval["incident_id"]
        try:
            runbook = self.catalog.get(approval["runbook"])
            host = self.inventory.find(approval["host"])
            if host is None:
                raise InventoryError(f"host {approval['host']} is no longer in the inventory")
            proposal = self.runner.propose(runbook, approval["step_id"], host,
                                           approval["params"], cause="")
        except (BotError, KeyError) as exc:
            await self.store.update_incident(incident_id, "opsbot", phase="remediation not run")
            await self.reporter.note(incident_id, f"🚫 Not run: {exc}")
            return "not run"
        if approval_digest(runbook, proposal, host) != approval["digest"]:
            await self.reporter.note(incident_id, f"🚫 {approval['step_id']} on {host.name} was "
                                                  "not run: the step changed since it was "
                                                  "approved (its command, its verify step, the "
                                                  "host's address, user or Docker engine, or "
                                                  "the runbook file). Run the runbook again.")
            await self.store.audit("approval.void", "opsbot", incident_id,
                                   approval_id=approval["id"], reason="digest changed")
            await self.store.update_incident(incident_id, "opsbot", phase="remediation not run")
            await self.reporter.refresh_root(incident_id)
            return "not run"
        await self.store.update_incident(incident_id, actor, phase="remediating")
        await self.reporter.refresh_root(incident_id)
        recorder = self.reporter.recorder(incident_id, approval["run_id"], actor)
        result, verified = await self.runner.remediate(runbook, proposal, host, recorder)
        ok = verified is not None and verified.ok
        phase = "verified" if ok else "remediation failed" if verified is None else \
            "verify failed"
        await self.store.update_incident(incident_id, actor, phase=phase)
        await self.reporter.fix(approval, [result] + ([verified] if verified else []), ok)
        await self.reporter.refresh_root(incident_id)
        return phase

    async def carry_out_handovers(self) -> int:
        """Approvals decided in another process (`opsbot approve` in a second terminal) are
        carried out here, by the serving bot, and told in the incident's thread."""
        rows = await self.store.claim_handovers()
        batches: dict[tuple[int, int, str], list[Row]] = {}
        for row in rows:
            batches.setdefault((row["incident_id"], row["run_id"], row["step_id"]), []).append(row)
        for batch in batches.values():
            first = batch[0]
            where = first["host"] if len(batch) == 1 else f"{len(batch)} hosts"
            await self.reporter.note(first["incident_id"], f"▶️ {first['decided_by']} approved "
                                     f"{first['step_id']} on {where} from a terminal: "
                                     "running it now.")
            self.spawn(self.execute_all(batch, first["decided_by"]), first["incident_id"])
        return len(rows)

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
        line = await self.decide(token, approved, user, via="terminal", background=False,
                                 hand_over=serving)
        if not line.startswith(("Approved", "Rejected")) or not approved:
            say(line)
            return line.startswith("Rejected")
        if not serving:
            say(f"No opsbot serves {self.settings.db} (no sign of life for "
                f"{'ever' if age is None else _duration(round(age))}): it ran here, with this "
                "shell's settings.")
        else:
            say(line)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + claim_wait
            while (await self.store.get_approval(token))["reason"] == HANDOVER:
                if loop.time() > deadline:
                    mine = [await self.store.get_approval(a["token"]) for a in batch
                            if await self.store.take_back(a["token"])]
                    if mine:
                        say(f"The serving opsbot did not take it within {claim_wait:g} s: "
                            "running it here, with this shell's settings.")
                        await self.execute_all(mine, user)
                    break
                await asyncio.sleep(0.3)
            deadline = loop.time() + outcome_wait
            for row in batch:
                while await self.store.approval_outcome(row) is None:
                    if loop.time() > deadline:
                        say(f"No outcome after {_duration(outcome_wait)}; see "
                            f"INC-{approval['incident_id']}'s thread.")
                        return False
                    await asyncio.sleep(0.5)
        ok = True
        for row in batch:
            outcome = await self.store.approval_outcome(row)
            ok = ok and bool(outcome and outcome.get("verified"))
            say(f"{row['step_id']} on {row['host']}: "
                f"{outcome.get('phase') if outcome else 'not run'}.")
        return ok

    async def check_origin(self, token: str, channel: str, ts: str, user: str) -> str | None:
        """A click counts only on the approval's own message: None when (channel, ts) is
        where it was posted, else the refusal line (audited)."""
        approval = await self.store.get_approval(token)
        posted = await self.store.message(approval["incident_id"], "thread",
                                          f"approval:{approval['id']}")
        if posted is not None and (posted["channel"], posted["ts"]) == (channel, ts):
            return None
        await self.store.audit("approval.refused", user, approval["incident_id"],
                               approval_id=approval["id"], reason="clicked outside its message",
                               channel=channel, ts=ts)
        return "This approval belongs to another message; nothing was run."

    async def void_pending(self, incident_id: int, reason: str,
                           status: str = "void") -> None:
        for row in await self.store.approvals_of(incident_id, "pending"):
            if await self.store.decide(row["token"], status, "opsbot", reason):
                await self.reporter.approval(await self.store.get_approval(row["token"]))

    async def expire_approvals(self) -> int:
        rows = await self.store.expired_approvals()
        for row in rows:
            if await self.store.decide(row["token"], "expired", "opsbot", "not decided in time"):
                await self.reporter.approval(await self.store.get_approval(row["token"]))
                await self.reporter.refresh_root(row["incident_id"])
        return len(rows)

    # -- incidents ------------------------------------------------------------------------
    async def close_idle(self) -> int:
        """Incidents where opsbot has nothing left to do and nothing happened for
        OPSBOT_CLOSE_AFTER: a mitigated one is resolved, any other closed without action."""
        closed = 0
        for incident in await self.store.idle_incidents(self.settings.close_after):
            if incident.phase not in IDLE_PHASES or \
                    await self.store.approvals_of(incident.id, "pending"):
                continue
            after = _duration(self.settings.close_after)
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
        await self.void_pending(incident_id, f"cancelled: {why}", status="cancelled")
        await self.store.update_incident(incident_id, actor, status="resolved", phase=phase)
        word = "⚪ Closed" if phase == "closed" else "🟢 Resolved"
        await self.reporter.note(incident_id, f"{word}: {why}.")
        return await self.reporter.refresh_root(incident_id)

    async def incident(self, ref: str) -> Incident:
        number = parse_incident_ref(ref)
        if number is None:
            raise NotFound(f"{ref!r} is not an incident reference (like INC-42)")
        return await self.requests.get_incident(number)  # answers a command: the lane
