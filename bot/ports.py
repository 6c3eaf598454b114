"""The typed interfaces the core depends on: the store, as `typing.Protocol`s.

The core (service, incidents, approvals, runs, notify, outbox, commands) speaks `Store`: every
call awaited, every row a frozen model of bot.models, never a `dict` row. Reports (export,
postmortem, the CLI's read-only commands) read through `Records`, synchronously, on the thread
that streams them. bot.adapters.store implements both, on SQLite or PostgreSQL (one class,
through bot.adapters.sql's dialect layer); another backend is one new module that satisfies
these, not edits across the core. Store failures arrive as bot.errors.StoreError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar

from bot.audit import VerifyReport
from bot.models import (
    AlertRecord,
    Approval,
    ApprovalOutcome,
    ApprovalRequest,
    Diagnosis,
    Incident,
    IncidentStatus,
    Notification,
    Opening,
    OutboxItem,
    PostedMessage,
    RenderedStep,
    StepResult,
    StepRun,
    WorkItem,
)

P = ParamSpec("P")
T = TypeVar("T")
AuditRow = tuple[int, str, str, str, str, str]  # seq, ts, actor, action, detail JSON, hash
# the group's latest incident (its status, when it was resolved; None: there is none) and now
# -> how a firing notification meets it (bot.incidents.opening): applied inside the store's
# transaction, so that two replicas never open the same group twice
OpeningRule = Callable[[IncidentStatus | None, datetime | None, datetime], Opening]


class Records(Protocol):
    """What a report reads: an incident and everything recorded about it, in order."""

    def get_incident(self, incident_id: int) -> Incident: ...

    def list_incidents(self, status: str | None = None, limit: int = 50) -> list[Incident]: ...

    def alerts_of(self, incident_id: int) -> list[AlertRecord]: ...

    def diagnoses_of(self, incident_id: int) -> list[Diagnosis]: ...

    def approvals_of(self, incident_id: int, status: str | None = None) -> list[Approval]: ...

    def steps_of(self, incident_id: int, run_id: int | None = None) -> list[StepRun]: ...

    def iter_steps(self, incident_id: int,
                   phases: tuple[str, ...] = ("diagnostic", "remediation", "verify")
                   ) -> Iterator[StepRun]: ...

    def audit_records(self, incident_id: int | None = None
                      ) -> Iterator[Mapping[str, Any]]: ...

    def audit_stream(self, incident_id: int) -> Iterator[AuditRow]: ...

    def audit_details(self, incident_id: int, action: str) -> Iterator[str]: ...

    def verify_audit(self) -> VerifyReport: ...

    def prune_audit(self, before: str) -> int: ...


class Store(Protocol):
    """The store as the core sees it: awaited calls, run off the event loop."""

    @property
    def sync(self) -> Records: ...

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    # -- audit and work -------------------------------------------------------------------
    async def audit(self, /, action: str, actor: str, incident_id: int | None = None,
                    **detail: Any) -> int: ...

    async def add_work(self, kind: str, payload: Mapping[str, Any], *,
                       seen: tuple[str, float] | None = None) -> int | None: ...

    async def finish_work(self, work_id: int, outcome: str, status: str = "done") -> None: ...

    async def last_work_id(self) -> int: ...

    async def pending_work(self, up_to: int) -> list[WorkItem]: ...

    async def webhook_body(self, webhook_id: int) -> bytes: ...

    async def webhook_outcome(self, webhook_id: int, outcome: str,
                              incident_id: int | None = None) -> None: ...

    # -- incidents ------------------------------------------------------------------------
    async def get_incident(self, incident_id: int) -> Incident: ...

    async def list_incidents(self, status: str | None = None,
                             limit: int = 50) -> list[Incident]: ...

    async def incident_for_group(self, group_key: str) -> Incident | None: ...

    async def open_incident_for_host(self, host: str) -> Incident | None: ...

    async def open_or_join(self, group_key: str, *, title: str, labels: Mapping[str, str],
                           runbook: str | None, hosts: list[str], notes: list[str],
                           actor: str, rule: OpeningRule | None = None
                           ) -> tuple[Incident, Opening]: ...

    async def ingest_alerts(self, webhook_id: int, group_key: str, *, title: str,
                            labels: Mapping[str, str], runbook: str | None, hosts: list[str],
                            notes: list[str], alerts: Sequence[Mapping[str, Any]], actor: str,
                            idle_phase: str | None = None, rule: OpeningRule | None = None
                            ) -> tuple[Incident, Opening]: ...

    async def ingest_many(self, batch: Sequence[Notification], *,
                          rule: OpeningRule | None = None
                          ) -> list[tuple[Incident, Opening]]: ...

    async def update_incident(self, /, incident_id: int, actor: str = "opsbot", *,
                              audit: bool = True, **fields: Any) -> Incident: ...

    async def record_alerts(self, incident_id: int, webhook_id: int | None,
                            alerts: Sequence[Mapping[str, Any]]) -> None: ...

    async def stuck_incidents(self) -> list[Incident]: ...

    async def idle_incidents(self, seconds: float) -> list[Incident]: ...

    async def root_view(self, incident_id: int
                        ) -> tuple[Incident, list[Approval], float | None, int]: ...

    # -- runs and steps -------------------------------------------------------------------
    async def start_run(self, incident_id: int, runbook: str, target: str, requested_by: str,
                        source: str, params: Mapping[str, Any]) -> int: ...

    async def finish_run(self, run_id: int, incident_id: int, status: str,
                         actor: str) -> None: ...

    async def interrupt_stale_runs(self, actor: str) -> int: ...

    async def live_run_elsewhere(self, incident_id: int) -> bool: ...

    async def interrupt_steps(self, incident_id: int, actor: str) -> list[StepRun]: ...

    async def start_step(self, run_id: int | None, incident_id: int, step: RenderedStep,
                         actor: str) -> int: ...

    async def finish_step(self, step_run_id: int, incident_id: int, result: StepResult,
                          actor: str) -> None: ...

    async def steps_of(self, incident_id: int, run_id: int | None = None) -> list[StepRun]: ...

    async def record_diagnosis(self, run_id: int, incident_id: int, host: str,
                               causes: list[dict[str, Any]]) -> None: ...

    async def record_diagnoses(self, run_id: int, incident_id: int,
                               causes: Mapping[str, list[dict[str, Any]]]) -> None: ...

    # -- approvals ------------------------------------------------------------------------
    async def create_approvals(self, *, incident_id: int, run_id: int, runbook: str,
                               requested_by: str, ttl: float,
                               requests: Sequence[ApprovalRequest]) -> list[Approval]: ...

    async def get_approval(self, token: str) -> Approval: ...

    async def approvals_of(self, incident_id: int,
                           status: str | None = None) -> list[Approval]: ...

    async def approval_batch(self, approval: Approval,
                             status: str | None = None) -> list[Approval]: ...

    async def batch_head(self, approval: Approval) -> Approval: ...

    async def expired_approvals(self) -> list[Approval]: ...

    async def due_reminders(self, seconds: float) -> list[Approval]: ...

    async def decide(self, token: str, status: str, actor: str, reason: str = "") -> bool: ...

    async def decide_many(self, tokens: Sequence[str], status: str, actor: str,
                          reason: str = "") -> list[bool]: ...

    async def serving_age(self) -> float | None: ...

    async def claim_handovers(self) -> list[Approval]: ...

    async def take_back(self, token: str) -> bool: ...

    async def approval_outcome(self, approval: Approval) -> ApprovalOutcome | None: ...

    # -- Slack messages and the outbox ----------------------------------------------------
    async def message(self, incident_id: int, kind: str, ref: str) -> PostedMessage | None: ...

    async def enqueue(self, incident_id: int, key: str, kind: str,
                      content: Mapping[str, Any]) -> int: ...

    async def enqueue_many(self, items: Sequence[tuple[int, str, str, Mapping[str, Any]]]
                           ) -> list[int]: ...

    async def outbox_pending(self, limit: int = 100) -> list[OutboxItem]: ...

    async def adopt_outbox(self) -> int: ...

    async def outbox_sent(self, row: OutboxItem, channel: str | None, ts: str | None,
                          updated: bool, audit: Mapping[str, Any]) -> None: ...

    async def outbox_target(self, row: OutboxItem) -> tuple[Incident, str | None]: ...

    async def outbox_retry(self, row_id: int, error: str, maybe_sent: bool) -> None: ...

    async def outbox_failed(self, row: OutboxItem, error: str) -> None: ...

    # -- waking ---------------------------------------------------------------------------
    async def listen(self, wake: Callable[[str], None]) -> None: ...
