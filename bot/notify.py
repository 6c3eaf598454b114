"""Tell people: the incident's root message and its thread, through the outbox and a transport
(Slack or the terminal). Every step start and end also lands in the store and the audit log
here, so what the thread shows and what the audit log holds come from one place."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TextIO

from bot import render
from bot.metrics import Metrics
from bot.models import Approval, Incident, RenderedStep, StepResult
from bot.outbox import Delivered, Outbox, Outgoing
from bot.ports import Store
from bot.progress import Board, Presenter
from bot.redact import console_safe
from bot.render import Message
from bot.runner import HostReport

log = logging.getLogger("opsbot.notify")
# keys of messages that are never updated: unique across processes and restarts
_keys = (f"{time.time_ns():x}.{os.getpid()}.{n}" for n in itertools.count())


class ConsoleTransport:
    """Console mode: the thread, printed to the terminal (through the same outbox). A run's
    live checklist is shown live (rich) when the output is a terminal, else once, when the run
    finished."""

    def __init__(self, out: TextIO | None = None, *, detail_lines: int = 24) -> None:
        self.out = out or sys.stdout
        self.detail_lines = detail_lines
        self._shown: dict[tuple[int, str], tuple[str, str]] = {}  # what each key last showed
        self.live = self.out.isatty()
        self._lives: dict[tuple[int, str], Any] = {}

    def _print(self, incident: Incident, msg: Message) -> None:
        lines = [f"[{incident.ref}] {msg.text}"]
        detail = msg.detail.rstrip("\n").splitlines()
        if len(detail) > self.detail_lines:
            cut = len(detail) - self.detail_lines
            detail = detail[: self.detail_lines // 2] + [f"… {cut} lines …"] + \
                detail[-self.detail_lines // 2:]
        lines += [f"    | {line}" for line in detail]
        print(console_safe("\n".join(lines)), file=self.out, flush=True)

    def _progress(self, incident: Incident, key: str, msg: Message) -> None:
        finished = not msg.text.startswith(render.RUNNING)
        if not self.live:
            if finished:
                self._print(incident, msg)
            return
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        shown = Text(console_safe(f"[{incident.ref}] {msg.text}\n{msg.detail}"))
        live = self._lives.get((incident.id, key))
        if live is None:
            live = Live(shown, console=Console(file=self.out), auto_refresh=False,
                        transient=False)
            live.start()
            self._lives[(incident.id, key)] = live
        live.update(shown, refresh=True)
        if finished:
            live.stop()
            del self._lives[(incident.id, key)]

    async def deliver(self, item: Outgoing) -> Delivered:
        if item.upload is not None:
            filename, content, title = item.upload
            size = f"{len(content)} characters" if isinstance(content, str) else \
                f"{len(content)} bytes"
            self._print(item.incident, Message(
                text=f"📎 {title} ({filename}, {size}; `opsbot export "
                     f"{item.incident.ref}` has it all)"))
            return Delivered(None, None, updated=False)
        assert item.message is not None
        seen, now = (item.incident.id, item.key), (item.message.text, item.message.detail)
        updated = seen in self._shown
        if item.key.startswith("progress:"):
            self._progress(item.incident, item.key, item.message)
        elif self._shown.get(seen) != now:  # an update that changes nothing is not printed again
            self._print(item.incident, item.message)
        self._shown[seen] = now
        return Delivered(None, None, updated=updated)

    async def close(self) -> None:
        for live in self._lives.values():
            live.stop()
        self._lives.clear()


class Reporter:
    """High-level notifications; one per process, shared by every incident. Everything goes
    through the outbox: a message is in the store before anyone tries to send it."""

    def __init__(self, store: Store, outbox: Outbox, *,
                 approvers: frozenset[str] = frozenset(), metrics: Metrics | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.approvers = approvers
        self.metrics = metrics or outbox.metrics
        self._presenters: dict[int, Presenter] = {}
        self._rooted: set[int] = set()  # incidents whose root message this process enqueued
        # a batch's proposal as first told (verify step, how to approve, cause), by message
        self._proposals: dict[tuple[int, str], tuple[str, str, str]] = {}
        self._fixes: dict[tuple[int, str], dict[str, tuple[Approval, list[StepResult],
                                                            bool]]] = {}

    def presenter(self, incident_id: int) -> Presenter:
        """The incident's live messages, rendered behind the work (at most once a second)."""
        presenter = self._presenters.get(incident_id)
        if presenter is None:
            async def send(key: str, msg: Message) -> None:
                await self.post(incident_id, key, msg)

            presenter = self._presenters[incident_id] = Presenter(send)
        return presenter

    async def close(self) -> None:
        """What the presenters still hold goes to the outbox."""
        for presenter in self._presenters.values():
            await presenter.close()

    async def refresh_root(self, incident_id: int) -> Incident:
        """The root message shows the incident's current state: enqueued now the first time
        (its thread needs it first), after that at most once a second, in its latest state."""
        if incident_id in self._rooted:
            self.presenter(incident_id).later("root", lambda: self._root_now(incident_id))
            return await self.store.get_incident(incident_id)
        self._rooted.add(incident_id)
        return await self._root_now(incident_id)

    async def _root_now(self, incident_id: int) -> Incident:
        incident, approvals, confidence, alerts = await self.store.root_view(incident_id)
        msg = render.root_message(incident, approvals=approvals, confidence=confidence,
                                  alerts=alerts)
        await self.outbox.message(incident_id, "root", msg)
        return incident

    async def post(self, incident_id: int, key: str, msg: Message) -> None:
        await self.outbox.message(incident_id, key, msg)

    async def note(self, incident_id: int, text: str, key: str | None = None) -> None:
        await self.post(incident_id, key or f"note:{next(_keys)}",
                        render.note_message(text))

    async def upload(self, incident_id: int, filename: str, content: str | bytes,
                     title: str) -> None:
        await self.outbox.upload(incident_id, f"file:{next(_keys)}", filename, content,
                                 title)

    def recorder(self, incident_id: int, run_id: int | None, actor: str) -> RunRecorder:
        """Store and audit only: for a remediation, told afterwards in one message."""
        return RunRecorder(self, incident_id, run_id, actor)

    def live_recorder(self, incident_id: int, run_id: int, actor: str, title: str,
                      hosts: list[str]) -> RunRecorder:
        """Store and audit, and one live checklist message of hosts x steps for the run."""
        key = f"progress:{run_id}"
        board = self.presenter(incident_id).board(key, title, hosts)
        return RunRecorder(self, incident_id, run_id, actor, board=board, key=key)

    async def run_finished(self, recorder: RunRecorder) -> None:
        if recorder.key:
            await self.presenter(recorder.incident_id).finish(recorder.key)

    async def chains(self, incident_id: int, chains: Mapping[str, Any]) -> None:
        """Each discovered chain in the thread, before any check; hosts with the same chain
        (and notes) share one message."""
        alike: dict[str, list[str]] = {}
        for host, chain in chains.items():
            notes = "".join(f"\n• {n}" for n in chain.notes)
            alike.setdefault(f"{chain.text()}{notes}", []).append(host)
        for text, hosts in alike.items():
            who = hosts[0] if len(hosts) == 1 else \
                f"{len(hosts)} hosts ({', '.join(hosts[:20])}{' …' if len(hosts) > 20 else ''})"
            await self.note(incident_id, f"🔗 {who}: {text}", key=f"chain:{hosts[0]}")

    async def findings(self, incident: Incident, run_id: int, reports: Sequence[HostReport],
                       summaries: Mapping[str, str]) -> None:
        """Each distinct finding as its own message (hosts that share one, together), hosts
        that could not be diagnosed in one note, and every step's output as one file: all
        from what it is handed (the diagnosis is recorded by the run, not here)."""
        incident_id = incident.id
        errors: dict[str, list[str]] = {}
        for report in reports:
            if report.error:
                errors.setdefault(report.error, []).append(report.host.name)
        for error, hosts in errors.items():
            await self.note(incident_id, f"⚠️ {render.hosts_text(hosts, 30)}: {error}",
                            key=f"errors:{run_id}:{next(_keys)}")
        groups = render.group_findings([(r.host.name, r.causes, r.advice) for r in reports
                                        if r.results])
        for i, finding in enumerate(groups):
            await self.post(incident_id, f"finding:{run_id}:{i}",
                            render.finding_message(finding, summaries))
        outputs = steps_file(reports)
        if outputs:
            await self.upload(incident_id, f"{incident.ref}-run{run_id}-steps.txt", outputs,
                              f"{incident.ref}: output of every step ({len(reports)} host(s))")

    async def fix(self, approval: Approval, results: Sequence[StepResult],
                  verified: bool) -> None:
        """What an approved step did on its host; a batch's hosts share one message."""
        batch = await self.store.approval_batch(approval)
        first = batch[0] if batch else approval
        key = f"fix:{first.id}"
        board = self._fixes.setdefault((approval.incident_id, key), {})
        board[approval.host] = (approval, list(results), verified)
        total = len([a for a in batch if a.status == "approved"]) or 1

        async def show() -> None:
            entries = list(board.values())
            await self.post(approval.incident_id, key, render.fix_message(entries, total))

        self.presenter(approval.incident_id).later(key, show)

    async def approval(self, approval: Approval, *, verify: str = "",
                       how_to_approve: str = "") -> None:
        """The approval message of the approval's batch (the same step proposed in one run on
        several hosts: one message, one decision), rendered from the store when sent."""
        incident_id = approval.incident_id
        first = await self.store.batch_head(approval)
        key = f"approval:{first.id}"
        if verify or approval.cause:
            self._proposals.setdefault((incident_id, key), (verify, how_to_approve,
                                                            approval.cause or ""))

        async def show() -> None:
            rows = await self.store.approval_batch(first)
            verify, how, cause = self._proposals.get((incident_id, key), ("", "", ""))
            head = replace(rows[0] if rows else first, cause=cause)
            msg = render.approval_message(head, verify=verify, approvers=sorted(self.approvers),
                                          how_to_approve=how, batch=rows)
            await self.post(incident_id, key, msg)

        self.presenter(incident_id).later(key, show)


STEP_EXCERPT = 6000  # characters of each step's output in the uploaded file
FILE_LIMIT = 4_000_000  # characters of the uploaded file of a run's step outputs


def steps_file(reports: Sequence[HostReport]) -> str:
    """Every step of every host: command, status and (the stored excerpt of) its output."""
    parts: list[str] = []
    size = 0
    for report in reports:
        for r in report.results:
            exit_txt = f"exit {r.exit_status}" if r.exit_status is not None else "no exit status"
            out = r.output.rstrip()
            if len(out) > STEP_EXCERPT:
                out = out[:STEP_EXCERPT // 3] + "\n… [cut: the audit log / export has more] …\n" \
                    + out[-(STEP_EXCERPT - STEP_EXCERPT // 3):]
            part = (f"### {report.host.name} · {r.step.step_id} — {r.status} ({exit_txt}, "
                    f"{r.duration:.2f}s){' — ' + r.error if r.error else ''}\n"
                    f"$ {r.step.display}\n{out}\n\n")
            if size + len(part) > FILE_LIMIT:
                parts.append("… [more steps: see `opsbot export`]\n")
                return "".join(parts)
            parts.append(part)
            size += len(part)
    return "".join(parts)


class RunRecorder:
    """The runner's StepListener: store + audit, and the run's live checklist when it has one."""

    def __init__(self, reporter: Reporter, incident_id: int, run_id: int | None,
                 actor: str, *, board: Board | None = None, key: str | None = None) -> None:
        self.reporter, self.incident_id, self.run_id, self.actor = \
            reporter, incident_id, run_id, actor
        self.board, self.key = board, key

    def _changed(self) -> None:
        if self.key:
            self.reporter.presenter(self.incident_id).changed(self.key)

    async def step_started(self, step: RenderedStep) -> int:
        if self.board is not None:
            self.board.started(step)
            self._changed()
        step_run_id = await self.reporter.store.start_step(self.run_id, self.incident_id, step,
                                                           self.actor)
        return int(step_run_id)

    async def step_finished(self, handle: int, result: StepResult) -> None:
        if self.board is not None:
            self.board.finished_step(result)
            self._changed()
        await self.reporter.store.finish_step(handle, self.incident_id, result, self.actor)
        self.reporter.metrics.step_seconds.labels(kind=result.step.kind,
                                                  status=str(result.status)).observe(
                                                      result.duration)

    async def host_finished(self, host: str) -> None:
        if self.board is not None:
            self.board.host_done(host)
            self._changed()
