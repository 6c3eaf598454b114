"""Tell people: the incident's root message and its thread, through a transport (Slack or the
terminal). Every step start and end also lands in the store and the audit log here, so what the
thread shows and what the audit log holds come from one place."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

from bot import render
from bot.adapters.store import AsyncStore
from bot.models import Incident, RenderedStep, StepResult, canonical_json, sha256_hex
from bot.redact import console_safe
from bot.render import Message
from bot.runner import HostReport

log = logging.getLogger("opsbot.notify")


class Transport(Protocol):
    async def root(self, incident: Incident, msg: Message) -> tuple[str, str] | None:
        """Post or update the root message; return (channel, ts) when newly posted."""

    async def post(self, incident: Incident, key: str, msg: Message,
                   existing: str | None) -> str | None:
        """Post into the thread, or update the message `existing` (its ts); return the ts."""

    async def upload(self, incident: Incident, filename: str, content: str,
                     title: str) -> None: ...

    async def close(self) -> None: ...


class ConsoleTransport:
    """Console mode: the thread, printed to the terminal."""

    def __init__(self, out: TextIO | None = None, *, detail_lines: int = 12) -> None:
        self.out = out or sys.stdout
        self.detail_lines = detail_lines

    def _print(self, incident: Incident, msg: Message) -> None:
        lines = [f"[{incident.ref}] {msg.text}"]
        detail = msg.detail.rstrip("\n").splitlines()
        if len(detail) > self.detail_lines:
            cut = len(detail) - self.detail_lines
            detail = detail[: self.detail_lines // 2] + [f"… {cut} lines …"] + \
                detail[-self.detail_lines // 2:]
        lines += [f"    | {line}" for line in detail]
        print(console_safe("\n".join(lines)), file=self.out, flush=True)

    async def root(self, incident: Incident, msg: Message) -> tuple[str, str] | None:
        self._print(incident, msg)
        return None

    async def post(self, incident: Incident, key: str, msg: Message,
                   existing: str | None) -> str | None:
        self._print(incident, msg)
        return None

    async def upload(self, incident: Incident, filename: str, content: str, title: str) -> None:
        self._print(incident, Message(text=f"📎 {title} ({filename}, {len(content)} characters)"))

    async def close(self) -> None:
        return None


class Reporter:
    """High-level notifications; one per process, shared by every incident."""

    def __init__(self, store: AsyncStore, transport: Transport, *,
                 approvers: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.transport = transport
        self.approvers = approvers
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, incident_id: int) -> asyncio.Lock:
        return self._locks.setdefault(incident_id, asyncio.Lock())

    async def _audit_message(self, incident: Incident, key: str, msg: Message,
                             ts: str | None, updated: bool) -> None:
        await self.store.audit("message.updated" if updated else "message.posted", "opsbot",
                               incident.id, key=key, ts=ts, text=msg.text[:300],
                               sha256=sha256_hex(canonical_json([msg.text, msg.blocks])))

    async def refresh_root(self, incident_id: int) -> Incident:
        async with self._lock(incident_id):
            incident = await self.store.get_incident(incident_id)
            approvals = await self.store.approvals_of(incident_id)
            diagnoses = await self.store.diagnoses_of(incident_id)
            confidence = None
            for d in reversed(diagnoses):
                if d["causes"] and d["causes"][0]["cause"] == incident.cause:
                    confidence = d["causes"][0]["confidence"]
                    break
            alerts = len(await self.store.alerts_of(incident_id))
            msg = render.root_message(incident, approvals=approvals, confidence=confidence,
                                      alerts=alerts)
            try:
                posted = await self.transport.root(incident, msg)
            except Exception as exc:  # never let chat trouble stop the incident
                log.warning("%s: root message failed: %s", incident.ref, exc)
                await self.store.audit("message.failed", "opsbot", incident.id, key="root",
                                       error=str(exc)[:300])
                return incident
            if posted:
                incident = await self.store.update_incident(incident.id, audit=False,
                                                            channel=posted[0],
                                                            thread_ts=posted[1])
            await self._audit_message(incident, "root", msg, incident.thread_ts,
                                      updated=not posted)
            return incident

    async def post(self, incident_id: int, key: str, msg: Message) -> None:
        async with self._lock(incident_id):
            incident = await self.store.get_incident(incident_id)
            known = await self.store.message(incident_id, "thread", key)
            existing = known["ts"] if known else None
            try:
                ts = await self.transport.post(incident, key, msg, existing)
            except Exception as exc:
                log.warning("%s: message %s failed: %s", incident.ref, key, exc)
                await self.store.audit("message.failed", "opsbot", incident.id, key=key,
                                       error=str(exc)[:300])
                return
            if ts and not existing and incident.channel:
                await self.store.remember_message(incident_id, "thread", key, incident.channel, ts)
            await self._audit_message(incident, key, msg, ts or existing,
                                      updated=existing is not None)

    async def note(self, incident_id: int, text: str, key: str | None = None) -> None:
        await self.post(incident_id, key or f"note:{secrets.token_hex(6)}",
                        render.note_message(text))

    async def upload(self, incident_id: int, filename: str, content: str, title: str) -> None:
        incident = await self.store.get_incident(incident_id)
        await self.transport.upload(incident, filename, content, title)
        await self.store.audit("file.uploaded", "opsbot", incident_id, filename=filename,
                               sha256=sha256_hex(content), characters=len(content))

    def recorder(self, incident_id: int, run_id: int | None, actor: str) -> RunRecorder:
        return RunRecorder(self, incident_id, run_id, actor)

    async def diagnosis(self, incident_id: int, run_id: int, report: HostReport,
                        summaries: Mapping[str, str]) -> None:
        await self.store.record_diagnosis(run_id, incident_id, report.host.name,
                                          [c.to_json() for c in report.causes])
        msg = render.diagnosis_message(report.host.name, report.causes, report.advice, summaries)
        await self.post(incident_id, f"diagnosis:{run_id}:{report.host.name}", msg)

    async def approval(self, approval: Mapping[str, Any], *, verify: str = "",
                       how_to_approve: str = "") -> None:
        msg = render.approval_message(approval, verify=verify, approvers=sorted(self.approvers),
                                      how_to_approve=how_to_approve)
        await self.post(approval["incident_id"], f"approval:{approval['id']}", msg)


class RunRecorder:
    """The runner's StepListener: store + audit + thread, for one run."""

    def __init__(self, reporter: Reporter, incident_id: int, run_id: int | None,
                 actor: str) -> None:
        self.reporter, self.incident_id, self.run_id, self.actor = \
            reporter, incident_id, run_id, actor

    async def step_started(self, step: RenderedStep) -> int:
        step_run_id = await self.reporter.store.start_step(self.run_id, self.incident_id, step,
                                                           self.actor)
        await self.reporter.post(self.incident_id, f"step:{step_run_id}",
                                 render.step_message(step, None))
        return int(step_run_id)

    async def step_finished(self, handle: int, result: StepResult) -> None:
        await self.reporter.store.finish_step(handle, self.incident_id, result, self.actor)
        await self.reporter.post(self.incident_id, f"step:{handle}",
                                 render.step_message(result.step, result))
