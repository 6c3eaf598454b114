"""The nouns that flow through opsbot, frozen. Slack never appears here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              default=str)  # made once: json.dumps makes one per call


def canonical_json(value: Any) -> str:
    """One encoding for hashing: sorted keys, no spaces, UTF-8 kept."""
    return _CANONICAL.encode(value)


def sha256_hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Alert:
    """One alert of an Alertmanager notification. Labels are untrusted text."""

    fingerprint: str
    status: str  # "firing" | "resolved"
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str | None
    generator_url: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "alert")


@dataclass(frozen=True)
class AlertGroup:
    """One Alertmanager webhook notification: a group of alerts sharing a groupKey."""

    group_key: str
    status: str  # "firing" | "resolved"
    receiver: str
    alerts: tuple[Alert, ...]
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    common_annotations: Mapping[str, str]
    external_url: str = ""
    truncated: int = 0  # alerts Alertmanager left out (max_alerts)
    reason: str = ""  # notification_reason (Alertmanager >= 0.32), e.g. "repeat interval elapsed"

    @property
    def repeat(self) -> bool:
        """A re-send of an unchanged group after repeat_interval: nothing new happened."""
        return self.reason == "repeat interval elapsed"

    @property
    def firing(self) -> tuple[Alert, ...]:
        return tuple(a for a in self.alerts if a.status == "firing")


@dataclass(frozen=True)
class Host:
    """An inventory host (Ansible YAML inventory)."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()

    @property
    def docker(self) -> str | None:
        value = self.vars.get("opsbot_docker")
        return str(value) if value else None

    def opsbot_vars(self) -> dict[str, Any]:
        """Host variables under the `opsbot_` prefix, prefix removed (parameter overrides)."""
        return {k[len("opsbot_"):]: v for k, v in self.vars.items() if k.startswith("opsbot_")}


class Phase(StrEnum):
    DIAGNOSTIC = "diagnostic"
    REMEDIATION = "remediation"
    VERIFY = "verify"


@dataclass(frozen=True)
class RenderedStep:
    """A step with every template filled in, for one host: exactly what will run."""

    step_id: str
    kind: str
    phase: Phase
    host: str
    action: Mapping[str, Any]  # kind-specific: {"command": ...} or {"action": "inspect", ...}
    display: str  # the command exactly as run, or the API action with its parameters
    timeout: float
    title: str = ""

    def digest(self) -> str:
        """What an approval is bound to: host, kind and the rendered action."""
        return sha256_hex(canonical_json({"host": self.host, "kind": self.kind,
                                          "step": self.step_id, "action": dict(self.action)}))


class StepStatus(StrEnum):
    OK = "ok"  # ran, and met its expectation (exit 0 unless the step says otherwise)
    FAILED = "failed"  # ran, did not meet its expectation
    ERROR = "error"  # could not run (unreachable, host key, engine down, ...)
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # its `when` condition was false


@dataclass(frozen=True)
class ExecOutput:
    """What an executor returns: the raw, complete output and how it ended."""

    exit_status: int | None
    output: str
    error: str | None = None  # one line, when the step could not run or was cut short
    timed_out: bool = False
    data: Any = None  # structured result (e.g. docker inspect JSON), when there is one
    digest: str | None = None  # sha256 of everything printed, when `output` is head and tail
    total_bytes: int | None = None  # bytes printed in all, when `output` is head and tail
    capped: bool = False  # the command printed more than the cap and was stopped


@dataclass(frozen=True)
class Read:
    """A command discovery ran on the host: its output, when it began (UTC, ISO) and how long
    it took (a command read with others in one session: the session's time). `via`: how the
    output was read when the command itself did not run, e.g. "supervisord's socket
    /run/supervisor.sock, XML-RPC" for `supervisorctl status`; "" when the command ran. The
    runner gives it to the step that runs the same command (discovery ran it moments before)."""

    output: ExecOutput
    started_at: str
    duration: float
    via: str = ""

    @property
    def read_by(self) -> str:
        """What the step that takes this read records as its `read_by` fact."""
        return f"discovery ({self.via})" if self.via else "discovery"


@dataclass(frozen=True)
class SocketReply:
    """What a host's unix socket answered to one request, read to its end (the peer closed), or
    why there is no whole answer: the stream refused (sshd's AllowStreamLocalForwarding, the
    socket's permissions, no such socket), a timeout, more than the limit, a lost connection."""

    data: bytes
    error: str | None = None


@dataclass(frozen=True)
class StepResult:
    step: RenderedStep
    status: StepStatus
    exit_status: int | None
    started_at: str  # UTC ISO 8601
    duration: float
    output: str  # redacted and bounded (head and tail kept, the cut said)
    output_bytes: int  # size of the complete output
    digest: str  # sha256 of the complete output
    truncated: bool = False
    error: str | None = None
    facts: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is StepStatus.OK


HEALTHY_NOW = "healthy_now"  # Cause.detail of the answer "the service answers now"
LIKE_PAST_INCIDENTS = "like_past_incidents"  # Cause.detail: no rule named it, past incidents did


@dataclass(frozen=True)
class Cause:
    """A ranked root-cause candidate with the lines it rests on."""

    cause: str
    confidence: float
    evidence: tuple[str, ...] = ()
    remediation: tuple[str, ...] = ()
    host: str | None = None
    summary: str = ""
    detail: str | None = None  # a finer cause, e.g. "proxy_buffers_too_small", "healthy_now"
    earlier: tuple[str, ...] = ()  # matching lines older than the incident: shown, not counted

    def to_json(self) -> JSON:
        out: JSON = {"cause": self.cause, "confidence": round(self.confidence, 3),
                     "evidence": list(self.evidence), "remediation": list(self.remediation)}
        if self.detail:
            out["detail"] = self.detail
        if self.earlier:
            out["earlier"] = list(self.earlier)
        return out


class IncidentStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class Opening(StrEnum):
    """How an alert group's firing notification meets the group's latest incident."""

    OPENED = "opened"  # a new incident
    JOINED = "joined"  # the open one
    REOPENED = "reopened"  # the resolved one, again (same thread)


@dataclass(frozen=True)
class Incident:
    id: int
    group_key: str
    status: IncidentStatus
    title: str
    opened_at: str
    phase: str = "investigating"
    runbook: str | None = None
    hosts: tuple[str, ...] = ()
    resolved_at: str | None = None
    channel: str | None = None
    thread_ts: str | None = None
    cause: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"INC-{self.id}"

    @property
    def state(self) -> str:
        """Where the incident is in its life: open -> diagnosing -> awaiting approval ->
        remediating -> mitigated -> resolved, or closed (without action). `phase` keeps the
        finer word (e.g. "verify failed", which is open again: a person has to look)."""
        if self.status is IncidentStatus.RESOLVED:
            return "closed" if self.phase == "closed" else "resolved"
        return LIFECYCLE.get(self.phase, "open")


# phase (the finer word stored with an open incident) -> its lifecycle state
LIFECYCLE = {"diagnosing": "diagnosing", "awaiting approval": "awaiting approval",
             "remediating": "remediating", "verified": "mitigated"}
# phases of an open incident in which opsbot has nothing left to do (waiting for the alert to
# resolve, or for a person); such an incident closes by itself after OPSBOT_CLOSE_AFTER
IDLE_PHASES = ("investigating", "reopened", "not diagnosed", "diagnosed", "rejected",
               "verified", "verify failed", "remediation failed", "diagnosis failed",
               "remediation interrupted", "remediation not run", "awaiting approval")


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"  # not decided in time
    VOID = "void"  # superseded by a new run, or its step changed
    CANCELLED = "cancelled"  # its incident was resolved


@dataclass(frozen=True)
class ApprovalRequest:
    """A remediation step proposed for a host, to be recorded pending a decision
    (Store.create_approvals: a run's proposals in one transaction)."""

    step_id: str
    host: str
    params: Mapping[str, Any]
    digest: str
    display: str


@dataclass(frozen=True)
class Approval:
    """A remediation step waiting for (or after) a person's decision, bound to `digest`."""

    id: int
    token: str
    incident_id: int
    run_id: int
    runbook: str
    step_id: str
    host: str
    params: Mapping[str, Any]
    digest: str
    display: str  # the command exactly as it will run
    status: ApprovalStatus
    requested_by: str
    requested_at: str
    expires_at: str
    decided_by: str | None = None
    decided_at: str | None = None
    reason: str | None = None
    cause: str = ""  # the diagnosis it answers, as told when proposed (not stored)

    @property
    def pending(self) -> bool:
        return self.status is ApprovalStatus.PENDING

    @property
    def batch_key(self) -> tuple[int, int, str]:
        """Approvals with the same key are one batch: one step, one run, several hosts."""
        return (self.incident_id, self.run_id, self.step_id)


@dataclass(frozen=True)
class ApprovalOutcome:
    """What an approved step did once carried out (its `approval.outcome` audit record)."""

    phase: str  # "verified", "verify failed", "remediation failed", "not run", ...
    verified: bool


@dataclass(frozen=True)
class StepRun:
    """A step as stored: what ran where, how it ended and the stored excerpt of its output."""

    id: int
    run_id: int | None
    incident_id: int
    step_id: str
    phase: str
    kind: str
    host: str
    command: str
    action: Any
    status: str
    started_at: str | None = None
    exit_status: int | None = None
    duration: float | None = None
    excerpt: str | None = None
    output_bytes: int | None = None
    digest: str | None = None
    truncated: bool = False
    error: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    title: str = ""


@dataclass(frozen=True)
class Diagnosis:
    """One host's ranked causes (Cause.to_json each) from one run."""

    id: int
    run_id: int
    incident_id: int
    host: str
    causes: tuple[Mapping[str, Any], ...]
    created_at: str


@dataclass(frozen=True)
class AlertRecord:
    """An alert as received for an incident (labels and annotations redacted)."""

    id: int
    incident_id: int
    webhook_id: int | None
    fingerprint: str
    name: str
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str | None
    ends_at: str | None
    received_at: str


@dataclass(frozen=True)
class Notification:
    """A firing notification as the store records it: its group's incident, its alerts, and
    its webhook marked done (`ingest_many`)."""

    webhook_id: int
    group_key: str
    title: str
    labels: Mapping[str, str]
    runbook: str | None
    hosts: tuple[str, ...]
    notes: tuple[str, ...]
    alerts: tuple[Mapping[str, Any], ...]
    actor: str
    idle_phase: str | None = None  # the phase of a new incident when nothing will run


@dataclass(frozen=True)
class PostedMessage:
    """Where a thread message of an incident was posted (to update it, to check a click)."""

    incident_id: int
    kind: str
    ref: str
    channel: str | None
    ts: str | None


@dataclass(frozen=True)
class WorkItem:
    """Accepted work not done yet: a webhook ("alert"), a chat "command" or a "click"."""

    id: int
    kind: str
    webhook_id: int | None
    payload: Mapping[str, Any]
    attempts: int


@dataclass(frozen=True)
class OutboxItem:
    """A message (or file) waiting to go to Slack; `version` changes when its content does."""

    id: int
    incident_id: int
    key: str
    kind: str  # "message" | "upload"
    content: Mapping[str, Any]
    version: int
    maybe_sent: bool


MAX_INCIDENT_DIGITS = 18  # beyond what SQLite's INTEGER holds, no incident can exist


def parse_incident_ref(text: str) -> int | None:
    """`INC-42`, `inc-42` or `42` -> 42; anything else (`INC-²`, 30 digits) -> None."""
    text = text.strip().upper()
    if text.startswith("INC-"):
        text = text[4:]
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_INCIDENT_DIGITS:
        return None
    return int(text)
