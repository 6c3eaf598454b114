"""Incident, step results, diagnosis and approvals -> messages: Block Kit and plain text.

Pure functions, within Slack's limits (50 blocks a message, 3,000 characters a section).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.models import (
    HEALTHY_NOW,
    Cause,
    Incident,
    IncidentStatus,
    RenderedStep,
    StepResult,
    StepStatus,
)

SECTION_LIMIT = 3000
CODE_LIMIT = 2600  # room for the fences and a note inside one section
MAX_BLOCKS = 50
APPROVE, REJECT = "opsbot.approve", "opsbot.reject"

ICON = {StepStatus.OK: "✅", StepStatus.FAILED: "❌", StepStatus.ERROR: "⚠️",
        StepStatus.TIMEOUT: "⏱️", StepStatus.SKIPPED: "⏭️"}


@dataclass(frozen=True)
class Message:
    text: str  # fallback text (notifications, console)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""  # extra lines shown on the console under `text`


def _esc(text: str) -> str:
    """Slack mrkdwn escaping of &, <, >."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str, limit: int = CODE_LIMIT) -> str:
    text = text.replace("```", "ˋˋˋ")
    if len(text) > limit:
        keep = limit - 40
        head, tail = text[: keep // 3], text[-(keep - keep // 3):]
        text = f"{head}\n… [cut: see the audit log / export] …\n{tail}"
    return f"```{_esc(text) or ' '}```"


def _section(text: str) -> dict[str, Any]:
    if len(text) > SECTION_LIMIT:
        text = text[: SECTION_LIMIT - 2] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context",
            "elements": [{"type": "mrkdwn", "text": t[:SECTION_LIMIT]} for t in texts if t][:10]}


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def incident_title(incident: Incident) -> str:
    return f"{incident.ref} · {incident.title}"


def root_message(incident: Incident, *, approvals: Sequence[Mapping[str, Any]] = (),
                 confidence: float | None = None, alerts: int = 0) -> Message:
    resolved = incident.status is IncidentStatus.RESOLVED
    icon = "🟢" if resolved else "🟠" if incident.phase in ("verified", "mitigated") else "🔴"
    state = "resolved" if resolved else incident.phase
    fields = [f"*Status*\n{state}", f"*Runbook*\n{incident.runbook or '— none matched'}",
              f"*Hosts*\n{', '.join(incident.hosts) or '— none found'}",
              f"*Opened*\n{incident.opened_at}"]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": f"{icon} {incident_title(incident)}"[:150]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if incident.cause:
        conf = f" ({confidence:.0%})" if confidence is not None else ""
        blocks.append(_section(f"*Likely cause:* `{incident.cause}`{conf}"))
    decided = [a for a in approvals if a.get("status") not in (None, "pending")]
    lines = [approval_line(a) for a in decided[-8:]]
    if lines:
        blocks.append(_section("\n".join(lines)))
    notes = list(incident.notes)
    if resolved and incident.resolved_at:
        notes.append(f"Resolved at {incident.resolved_at}")
    if alerts:
        notes.append(f"{alerts} alert notification(s) received")
    if notes:
        blocks.append(_context(*(_esc(n) for n in notes[-10:])))
    text = f"{_esc(incident_title(incident))} — {state}"  # alert text: no <!here> in `text`
    if incident.cause:
        text += f" — likely cause: {incident.cause}"
    return Message(text=text, blocks=blocks)


def approval_line(a: Mapping[str, Any]) -> str:
    decider = a.get("decided_by") or "opsbot"
    who = f"<@{decider}>" if decider.startswith("U") else decider
    verb = {"approved": "✅ approved", "rejected": "❌ rejected", "expired": "⌛ expired",
            "void": "🚫 voided", "cancelled": "🚫 cancelled"}.get(a["status"], a["status"])
    by = f" by {who}" if a["status"] in ("approved", "rejected") else ""
    reason = f" ({a['reason']})" if a.get("reason") and a["status"] != "approved" else ""
    return f"`{a['step_id']}` on {a['host']}: {verb}{by} at {a.get('decided_at') or ''}{reason}"


def step_message(step: RenderedStep, result: StepResult | None) -> Message:
    where = f"*{_esc(step.title)}* (`{step.step_id}`) on `{step.host}`"
    command = _code(f"$ {step.display}", 800)
    if result is None:
        return Message(text=f"⏳ {step.step_id} on {step.host}: running",
                       blocks=[_section(f"⏳ {where} — running\n{command}")],
                       detail=f"$ {step.display}")
    exit_txt = f"exit {result.exit_status}" if result.exit_status is not None else "no exit status"
    head = (f"{ICON[result.status]} {where} — *{result.status}* · {exit_txt} · "
            f"{result.duration:.2f}s")
    if result.facts.get("attempts"):
        head += f" · attempt {result.facts['attempts']}"
    blocks = [_section(f"{head}\n{command}")]
    if result.error:
        blocks.append(_section(f"*Why:* {_esc(result.error)}"))
    if result.output.strip():
        blocks.append(_section(_code(result.output.rstrip())))
    cut = " · cut to head and tail" if result.truncated or len(result.output) > CODE_LIMIT else ""
    blocks.append(_context(f"{step.phase} · output {_size(result.output_bytes)} · "
                           f"sha256 `{result.digest[:16]}…`{cut}"))
    text = f"{ICON[result.status]} {step.step_id} on {step.host}: {result.status} ({exit_txt}, " \
           f"{result.duration:.2f}s)"
    if result.error:
        text += f" — {_esc(result.error)}"
    return Message(text=text, blocks=blocks, detail=result.output)


def diagnosis_message(host: str, causes: Sequence[Cause], advice: Sequence[str],
                      summaries: Mapping[str, str] | None = None) -> Message:
    if not causes:
        text = f"🩺 {host}: no known cause matched the evidence"
        return Message(text=text, blocks=[_section(text + "; see the step outputs above.")])
    top = causes[0]
    summary = top.summary or (summaries or {}).get(top.cause, "")
    earlier = (_context("Earlier, before the incident (not counted):\n"
                        + _code("\n".join(top.earlier), 600)) if top.earlier else None)
    if top.detail == HEALTHY_NOW:
        text = f"✅ `{host}` answers now: every probe got 2xx and no current error names a cause"
        blocks = [_section(f"{text}\n{_esc(summary)}" if summary else text)]
        blocks += [earlier] if earlier else []
        return Message(text=f"✅ {host}: answers now, nothing to fix", blocks=blocks,
                       detail="\n".join(f"  earlier > {line}" for line in top.earlier))
    head = f"🩺 Likely cause on `{host}`: *{top.cause}* ({top.confidence:.0%})"
    if top.detail:
        head += f" · `{top.detail}`"
    if summary:
        head += f"\n{_esc(summary)}"
    blocks = [_section(head)]
    if top.evidence:
        blocks.append(_section("*Evidence*\n" + _code("\n".join(top.evidence))))
    if earlier:
        blocks.append(earlier)
    others = [f"`{c.cause}` ({c.confidence:.0%})" for c in causes[1:4]]
    if others:
        blocks.append(_context("Other candidates: " + ", ".join(others)))
    if advice:
        blocks.append(_section("*Advice*\n" + "\n".join(f"• {_esc(a)}" for a in advice)))
    detail = "\n".join(f"  > {line}" for line in top.evidence)
    return Message(text=f"🩺 {host}: likely cause {top.cause} ({top.confidence:.0%})",
                   blocks=blocks, detail=detail)


def approval_message(a: Mapping[str, Any], *, verify: str = "", approvers: Sequence[str] = (),
                     how_to_approve: str = "") -> Message:
    """The remediation proposal; with buttons while pending, the decision after."""
    pending = a["status"] == "pending"
    head = (f"🛠️ Proposed remediation on `{a['host']}`: *{a['step_id']}*"
            f"{' for `' + a['cause'] + '`' if a.get('cause') else ''}")
    blocks = [_section(f"{head}\nWill run exactly:\n{_code('$ ' + a['display'], 1200)}")]
    if verify:
        blocks.append(_section(f"Then verifies with:\n{_code('$ ' + verify, 800)}"))
    if pending:
        who = ", ".join(f"<@{u}>" for u in approvers) or "nobody (OPSBOT_APPROVERS is empty)"
        blocks.append(_context(f"Approvers: {who}", f"Expires {a['expires_at']}",
                               f"digest `{a['digest'][:12]}`"))
        blocks.append({"type": "actions", "block_id": f"opsbot_approval_{a['id']}", "elements": [
            {"type": "button", "action_id": APPROVE, "style": "primary", "value": a["token"],
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": REJECT, "style": "danger", "value": a["token"],
             "text": {"type": "plain_text", "text": "Reject"}},
        ]})
        text = f"🛠️ Approval needed: {a['step_id']} on {a['host']}"
    else:
        line = approval_line(a)
        blocks.append(_section(line))
        text = f"🛠️ {a['step_id']} on {a['host']}: {a['status']}"
    return Message(text=text, blocks=blocks,
                   detail=f"  $ {a['display']}" + (f"\n  {how_to_approve}" if pending and
                                                   how_to_approve else ""))


def note_message(text: str) -> Message:
    return Message(text=text, blocks=[_section(_esc(text))])
