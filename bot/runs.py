"""Runs: a runbook on hosts for an incident — trace the chain, check, diagnose, propose.

A run asked for by a person joins the target's open incident (or opens one); a run started by
an alert comes from bot.incidents. Proposals go to bot.approvals.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.approvals import Approvals, Approver
from bot.errors import BotError, TemplateFailed
from bot.logtime import Clock
from bot.models import Approval, Host, Incident, Phase
from bot.offload import import_off_loop
from bot.params import ParamSpec, Source, coerce_param, resolve_for_host
from bot.parts import Deps, Part
from bot.render import duration_text
from bot.runbooks import Runbook
from bot.runner import HostReport, render_context, render_step
from bot.turns import then_turn

if TYPE_CHECKING:  # discovery (and its nginx parser) loads when a run first needs it
    from bot.discovery import Chain

DEFAULT_URL = "http://127.0.0.1/"  # discovery's URL when neither the alert nor the host names one


def _parse_time(text: str | None) -> datetime | None:
    """An alert's startsAt (RFC 3339), aware; None when absent or unreadable."""
    if not text or text.startswith("0001-"):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RunOutcome:
    incident: Incident
    reports: list[HostReport]
    pending: list[Approval]
    run_id: int = 0
    chains: Mapping[str, Chain] = field(default_factory=dict)


class Runs(Part):
    def __init__(self, deps: Deps, approvals: Approvals) -> None:
        super().__init__(deps)
        self.approvals = approvals

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
        calls = self.runner.ctx.ssh_commands.on(host)
        await import_off_loop("bot.discovery")  # its first import (crossplane): off the loop
        from bot.discovery import discover

        # each read, then a turn: the hosts' answers come in together, and reading them (a
        # few hosts a turn of the loop) is discovery's work on the loop (bot.turns)
        return await discover(then_turn(calls.run), host.name, url, sudo=sudo,
                              nginx_conf=host.vars.get("opsbot_nginx_conf"), fallback=fallback,
                              own_names=(host.name, host.address),
                              run_many=then_turn(calls.run_many),
                              unix_request=then_turn(calls.unix_request))

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
        self.tasks.live[incident.id] += 1
        try:
            return await self._run(incident, runbook, hosts, labels=labels,
                                   requested_by=requested_by, source=source, approver=approver,
                                   explicit=explicit, started_at=started_at)
        except Exception:
            await self.store.update_incident(incident.id, "opsbot", phase="diagnosis failed")
            await self.reporter.refresh_root(incident.id)
            raise
        finally:
            self.tasks.live[incident.id] -= 1

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
        await self.approvals.void_pending(incident.id, "superseded by a new run of the incident")
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
                reads={name: c.reads for name, c in chains.items()})
        finally:
            await self.reporter.run_finished(recorder)
        summaries = getattr(runbook.rules, "summaries", {}) if runbook.rules else {}
        best = None
        for report in reports:
            if report.causes and (best is None or report.causes[0].confidence > best.confidence):
                best = report.causes[0]
        await self.store.record_diagnoses(run_id, incident.id, {
            report.host.name: [c.to_json() for c in report.causes] for report in reports})
        await self.reporter.findings(incident, run_id, reports, summaries)
        await self.store.update_incident(incident.id, "opsbot", phase="diagnosed",
                                         cause=best.cause if best else None)
        wanted = [(proposal, report.host) for report in reports for proposal in report.proposals]
        approvals = await self.approvals.propose(incident.id, run_id, runbook, wanted,
                                                 requested_by)
        pending: list[Approval] = []
        for approval, (proposal, _) in zip(approvals, wanted, strict=True):
            if not (await self.store.get_approval(approval.token)).pending:
                continue  # decided with its batch (the same step on other hosts)
            decision = await approver(approval, proposal)
            if decision is None:
                pending.append(approval)
                continue
            approved, who = decision
            await self.approvals.decide(approval.token, approved, who, via=source,
                                         background=False)
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
                f"or closes by itself after {duration_text(self.settings.close_after)} without "
                "news (OPSBOT_CLOSE_AFTER); `resolve` closes it now.")
