"""Tell people: the incident's root message and its thread, through the outbox and a transport
(Slack or the terminal). Every step start and end also lands in the store and the audit log
here, so what the thread shows and what the audit log holds come from one place."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from bot import render
from bot.adapters.store import AsyncStore
from bot.metrics import Metrics
from bot.models import Incident, RenderedStep, StepResult
from bot.outbox import Delivered, Outbox, Outgoing
from bot.redact import console_safe
from bot.render import Message
from bot.runner import HostReport

log = logging.getLogger("opsbot.notify")
# keys of messages that are never updated: unique across processes and restarts
_keys = (f"{time.time_ns():x}.{os.getpid()}.{n}" for n in itertools.count())


class ConsoleTransport:
    """Console mode: the thread, printed to the terminal (through the same outbox)."""

    def __init__(self, out: TextIO | None = None, *, detail_lines: int = 12) -> None:
        self.out = out or sys.stdout
        self.detail_lines = detail_lines
        self._shown: set[tuple[int, str]] = set()

    def _print(self, incident: Incident, msg: Message) -> None:
        lines = [f"[{incident.ref}] {msg.text}"]
        detail = msg.detail.rstrip("\n").splitlines()
        if len(detail) > self.detail_lines:
            cut = len(detail) - self.detail_lines
            detail = detail[: self.detail_lines // 2] + [f"… {cut} lines …"] + \
                detail[-self.detail_lines // 2:]
        lines += [f"    | {line}" for line in detail]
        print(console_safe("\n".join(lines)), file=self.out, flush=True)

    async def deliver(self, item: Outgoing) -> Delivered:
        if item.upload is not None:
            filename, content, title = item.upload
            self._print(item.incident, Message(text=f"📎 {title} ({filename}, {len(content)} "
                                                    "characters)"))
            return Delivered(None, None, updated=False)
        assert item.message is not None
        self._print(item.incident, item.message)
        seen = (item.incident.id, item.key)
        updated = seen in self._shown
        self._shown.add(seen)
        return Delivered(None, None, updated=updated)

    async def close(self) -> None:
        return None


class Reporter:
    """High-level notifications; one per process, shared by every incident. Everything goes
    through the outbox: a message is in the store before anyone tries to send it."""

    def __init__(self, store: AsyncStore, outbox: Outbox, *,
                 approvers: frozenset[str] = frozenset(), metrics: Metrics | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.approvers = approvers
        self.metrics = metrics or outbox.metrics

    async def refresh_root(self, incident_id: int) -> Incident:
        incident, approvals, diagnoses, alerts = await self.store.root_view(incident_id)
        confidence = None
        for d in reversed(diagnoses):
            if d["causes"] and d["causes"][0]["cause"] == incident.cause:
                confidence = d["causes"][0]["confidence"]
                break
        msg = render.root_message(incident, approvals=approvals, confidence=confidence,
                                  alerts=alerts)
        await self.outbox.message(incident_id, "root", msg)
        return incident

    async def post(self, incident_id: int, key: str, msg: Message) -> None:
        await self.outbox.message(incident_id, key, msg)

    async def note(self, incident_id: int, text: str, key: str | None = None) -> None:
        await self.post(incident_id, key or f"note:{next(_keys)}",
                        render.note_message(text))

    async def upload(self, incident_id: int, filename: str, content: str, title: str) -> None:
        await self.outbox.upload(incident_id, f"file:{next(_keys)}", filename, content,
                                 title)

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
        self.reporter.metrics.step_seconds.labels(kind=result.step.kind,
                                                  status=str(result.status)).observe(
                                                      result.duration)
        await self.reporter.post(self.incident_id, f"step:{handle}",
                                 render.step_message(result.step, result))
