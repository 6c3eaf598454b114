"""Incident, step results, diagnosis and approvals -> messages: Block Kit and plain text.

Pure functions, within Slack's limits (50 blocks a message, 3,000 characters a section).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.logline import plain
from bot.models import (
    HEALTHY_NOW,
    Approval,
    Cause,
    Incident,
    IncidentStatus,
    RenderedStep,
    StepResult,
    StepStatus,
)

if TYPE_CHECKING:
    from bot.approvals import Decision

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
    """A code block of output for Slack: without terminal codes (a reader sees the colours'
    text, not their escapes; the store and the audit keep the output as printed)."""
    text = plain(text).replace("```", "ˋˋˋ")
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


STATE_ICON = {"open": "🔴", "diagnosing": "🔎", "awaiting approval": "🟡",
              "remediating": "🛠️", "mitigated": "🟠", "resolved": "🟢", "closed": "⚪"}
STATE_WORDS = {"closed": "closed without action"}


def root_message(incident: Incident, *, approvals: Sequence[Approval] = (),
                 confidence: float | None = None, alerts: int = 0,
                 closes_at: str | None = None) -> Message:
    """The incident's root message: its lifecycle state first, then what is known."""
    state = incident.state
    shown = STATE_WORDS.get(state, state)
    if state == "open" and incident.phase not in ("", "investigating", "open"):
        shown = f"open — {incident.phase}"
    elif state == "mitigated":
        shown = "mitigated (fix verified; resolves with the alert)"
    fields = [f"*Status*\n{shown}", f"*Runbook*\n{incident.runbook or '— none matched'}",
              f"*Hosts*\n{hosts_text(incident.hosts, 20) or '— none found'}",
              f"*Opened*\n{incident.opened_at}"]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": f"{STATE_ICON.get(state, '🔴')} "
                                            f"{incident_title(incident)}"[:150]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]},
    ]
    if incident.cause:
        conf = f" ({confidence:.0%})" if confidence is not None else ""
        blocks.append(_section(f"*Likely cause:* `{incident.cause}`{conf}"))
    decided = [a for a in approvals if not a.pending]
    lines = [approval_line(a) for a in decided[-8:]]
    if len(decided) > 8:
        lines.insert(0, f"… {len(decided) - 8} earlier decision(s)")
    if lines:
        blocks.append(_section("\n".join(lines)))
    notes = list(incident.notes)
    if incident.resolved_at and incident.status is IncidentStatus.RESOLVED:
        notes.append(f"{'Closed' if state == 'closed' else 'Resolved'} at {incident.resolved_at}")
    elif closes_at:
        notes.append(f"Closes by itself at {closes_at} if nothing happens")
    if alerts:
        notes.append(f"{alerts} alert notification(s) received")
    if notes:
        blocks.append(_context(*(_esc(n) for n in notes[-10:])))
    text = f"{_esc(incident_title(incident))} — {shown}"  # alert text: no <!here> in `text`
    if incident.cause:
        text += f" — likely cause: {incident.cause}"
    return Message(text=text, blocks=blocks)


def hosts_text(hosts: Sequence[str], limit: int) -> str:
    shown = ", ".join(f"`{h}`" for h in hosts[:limit])
    return shown + (f" and {len(hosts) - limit} more" if len(hosts) > limit else "")


def approval_line(a: Approval) -> str:
    decider = a.decided_by or "opsbot"
    who = f"<@{decider}>" if decider.startswith("U") else decider
    verb = {"approved": "✅ approved", "rejected": "❌ rejected", "expired": "⌛ expired",
            "void": "🚫 voided", "cancelled": "🚫 cancelled"}.get(a.status, a.status)
    by = f" by {who}" if a.status in ("approved", "rejected") else ""
    reason = f" ({a.reason})" if a.reason and a.status != "approved" else ""
    return f"`{a.step_id}` on {a.host}: {verb}{by} at {a.decided_at or ''}{reason}"


def _read_by(result: StepResult) -> str:
    """" · read by discovery (...)" when the step took what discovery read moments before
    (its how, when the command itself did not run: e.g. supervisord's socket); else ""."""
    read_by = result.facts.get("read_by")
    return f" · read by {_esc(read_by)}" if read_by else ""


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
    read_by = _read_by(result)
    blocks = [_section(f"{head}{read_by}\n{command}")]
    if result.error:
        blocks.append(_section(f"*Why:* {_esc(result.error)}"))
    if result.output.strip():
        blocks.append(_section(_code(result.output.rstrip())))
    cut = " · cut to head and tail" if result.truncated or len(result.output) > CODE_LIMIT else ""
    blocks.append(_context(f"{step.phase} · output {_size(result.output_bytes)} · "
                           f"sha256 `{result.digest[:16]}…`{cut}"))
    text = f"{ICON[result.status]} {step.step_id} on {step.host}: {result.status} ({exit_txt}, " \
           f"{result.duration:.2f}s)"
    text += read_by
    if result.error:
        text += f" — {_esc(result.error)}"
    return Message(text=text, blocks=blocks, detail=result.output)


@dataclass(frozen=True)
class Finding:
    """What the diagnosis found on one or more hosts (hosts that share the same finding are
    told in one message): the ranked causes and advice of the first host."""

    hosts: tuple[str, ...]
    causes: tuple[Cause, ...]
    advice: tuple[str, ...] = ()
    differing: tuple[str, ...] = ()  # hosts whose quoted evidence differs from the first's


def group_findings(found: Sequence[tuple[str, Sequence[Cause], Sequence[str]]]) -> list[Finding]:
    """(host, causes, advice) per host -> one Finding per distinct (cause, summary, advice)."""
    groups: dict[tuple[Any, ...], list[tuple[str, Sequence[Cause], Sequence[str]]]] = {}
    for host, causes, advice in found:
        top = causes[0] if causes else None
        key = (top.cause, top.detail, top.summary, tuple(advice)) if top else ("",)
        groups.setdefault(key, []).append((host, causes, advice))
    out = []
    for members in groups.values():
        first_host, causes, advice = members[0]
        evidence = causes[0].evidence if causes else ()
        differing = tuple(h for h, c, _ in members[1:] if c and c[0].evidence != evidence)
        out.append(Finding(tuple(h for h, _, _ in members), tuple(causes), tuple(advice),
                           differing))
    return out


def finding_message(finding: Finding, summaries: Mapping[str, str] | None = None) -> Message:
    """A finding: cause and confidence, its summary, the evidence quoted, other candidates and
    advice; the console shows the same (in `detail`)."""
    hosts = finding.hosts
    where = f"`{hosts[0]}`" if len(hosts) == 1 else f"{len(hosts)} hosts"
    plain_where = hosts[0] if len(hosts) == 1 else f"{len(hosts)} hosts ({', '.join(hosts[:8])}" \
        + (" …)" if len(hosts) > 8 else ")")
    if not finding.causes:
        text = f"🩺 {plain_where}: no known cause matched the evidence"
        blocks = [_section(f"🩺 {where}: no known cause matched the evidence; see the steps' "
                           "output in the uploaded file.")]
        if len(hosts) > 1:
            blocks.append(_section(hosts_text(hosts, 200)))
        return Message(text=text, blocks=blocks,
                       detail="  look at the steps that were not ok (above)")
    top = finding.causes[0]
    summary = top.summary or (summaries or {}).get(top.cause, "")
    earlier = (_context("Earlier, before the incident (not counted):\n"
                        + _code("\n".join(top.earlier), 600)) if top.earlier else None)
    if top.detail == HEALTHY_NOW:
        verb = "answers" if len(hosts) == 1 else "answer"
        text = f"✅ {where} {verb} now: every probe got 2xx and no current error names a cause"
        blocks = [_section(f"{text}\n{_esc(summary)}" if summary else text)]
        if len(hosts) > 1:
            blocks.append(_section("*Hosts:* " + hosts_text(hosts, 200)))
        blocks += [earlier] if earlier else []
        return Message(text=f"✅ {plain_where}: {verb} now, nothing to fix", blocks=blocks,
                       detail="\n".join(f"  earlier > {line}" for line in top.earlier))
    head = f"🩺 Likely cause on {where}: *{top.cause}* ({top.confidence:.0%})"
    if top.detail:
        head += f" · `{top.detail}`"
    if summary:
        head += f"\n{_esc(summary)}"
    blocks = [_section(head)]
    if len(hosts) > 1:
        blocks.append(_section("*Hosts:* " + hosts_text(hosts, 200)))
    if top.evidence:
        quoted = "*Evidence*" + (f" (quoted from `{hosts[0]}`)" if len(hosts) > 1 else "")
        blocks.append(_section(f"{quoted}\n" + _code("\n".join(top.evidence))))
    if earlier:
        blocks.append(earlier)
    if finding.differing:
        blocks.append(_context(f"{len(finding.differing)} other host(s) quoted other lines "
                               f"({', '.join(finding.differing[:5])}"
                               f"{' …' if len(finding.differing) > 5 else ''}): see the "
                               "uploaded step outputs"))
    others = [f"`{c.cause}` ({c.confidence:.0%})" for c in finding.causes[1:4]]
    if others:
        blocks.append(_context("Other candidates: " + ", ".join(others)))
    if finding.advice:
        blocks.append(_section("*Advice*\n" + "\n".join(f"• {_esc(a)}" for a in finding.advice)))
    detail = [f"  {summary}"] if summary else []
    detail += ["  evidence:"] + [f"    > {line}" for line in top.evidence[:12]] \
        if top.evidence else []
    if len(top.evidence) > 12:
        detail.append(f"    … {len(top.evidence) - 12} more line(s)")
    if others:
        detail.append("  other candidates: " + ", ".join(
            f"{c.cause} ({c.confidence:.0%})" for c in finding.causes[1:4]))
    detail += ["  advice:"] + [f"    • {a}" for a in finding.advice] if finding.advice else []
    detail += [f"  earlier > {line}" for line in top.earlier]
    return Message(text=f"🩺 {plain_where}: likely cause {top.cause} ({top.confidence:.0%})",
                   blocks=blocks[:MAX_BLOCKS], detail="\n".join(detail))


def fix_message(entries: Sequence[tuple[Approval, Sequence[StepResult], bool]],
                total: int = 1) -> Message:
    """What approved remediation did: per host its step, then its verify step. One host: each
    step with an excerpt of its output; several: one line per host (failures with why)."""
    first = entries[0][0]
    good = sum(1 for _, _, ok in entries if ok)
    if len(entries) == 1 and total <= 1:
        approval, results, verified = entries[0]
        blocks: list[dict[str, Any]] = []
        for r in results:
            blocks += step_message(r.step, r).blocks
        outcome = "verified" if verified else "not verified" if len(results) > 1 else "failed"
        head = f"{'✅' if verified else '❌'} {approval.step_id} on {approval.host}: " \
            f"{outcome}"
        blocks.insert(0, _section(f"*{_esc(head)}*"))
        detail = "\n".join(step_message(r.step, r).text for r in results)
        return Message(text=head, blocks=blocks[:MAX_BLOCKS], detail=detail)
    waiting = max(0, total - len(entries))
    icon = RUNNING if waiting else "✅" if good == len(entries) else "❌"
    head = f"{icon} {first.step_id} on {total} hosts: {good} verified, " \
        f"{len(entries) - good} not" + (f", {waiting} running" if waiting else "")
    lines = []
    for approval, results, verified in entries:
        steps = " · ".join(f"{r.step.step_id} {ICON[r.status]}"
                           + (f" ({r.facts['attempts']})" if r.facts.get("attempts") else "")
                           for r in results)
        why = "" if verified else " — " + _esc(next(
            (r.error or f"{r.status}, exit {r.exit_status}" for r in results if not r.ok), ""))
        lines.append(f"{'✅' if verified else '❌'} `{approval.host}`: {steps}{why[:300]}")
    blocks = [_section(f"*{_esc(head)}*")] + _sections(lines, MAX_BLOCKS - 1)
    return Message(text=head, blocks=blocks,
                   detail="\n".join(line.replace("`", "") for line in lines))


def approval_message(a: Approval, *, verify: str = "", approvers: Sequence[str] = (),
                     how_to_approve: str = "",
                     batch: Sequence[Approval] = ()) -> Message:
    """The remediation proposal; with buttons while pending, the decision after. `batch`: the
    same step proposed on several hosts in one run, decided together (a is its first)."""
    hosts = [b.host for b in batch] or [a.host]
    pending = a.status == "pending"
    where = f"`{hosts[0]}`" if len(hosts) == 1 else f"{len(hosts)} hosts"
    plain_where = hosts[0] if len(hosts) == 1 else f"{len(hosts)} hosts"
    head = (f"🛠️ Proposed remediation on {where}: *{a.step_id}*"
            f"{' for `' + a.cause + '`' if a.cause else ''}")
    exactly = "Will run exactly" if len(hosts) == 1 else \
        f"Will run on each host, exactly (as on `{hosts[0]}`)"
    blocks = [_section(f"{head}\n{exactly}:\n{_code('$ ' + a.display, 1200)}")]
    if len(hosts) > 1:
        blocks.append(_section("*Hosts:* " + hosts_text(hosts, 200)))
    if verify:
        blocks.append(_section(f"Then verifies with:\n{_code('$ ' + verify, 800)}"))
    if pending:
        who = ", ".join(f"<@{u}>" for u in approvers) or "nobody (OPSBOT_APPROVERS is empty)"
        blocks.append(_context(f"Approvers: {who}", f"Expires {a.expires_at}",
                               f"digest `{a.digest[:12]}`"))
        blocks.append({"type": "actions", "block_id": f"opsbot_approval_{a.id}", "elements": [
            {"type": "button", "action_id": APPROVE, "style": "primary", "value": a.token,
             "text": {"type": "plain_text", "text": "Approve" if len(hosts) == 1 else
                      f"Approve on {len(hosts)} hosts"}},
            {"type": "button", "action_id": REJECT, "style": "danger", "value": a.token,
             "text": {"type": "plain_text", "text": "Reject"}},
        ]})
        text = f"🛠️ Approval needed: {a.step_id} on {plain_where}"
    else:
        blocks.append(_section(approval_line(a)))
        others = [b for b in batch[1:] if b.status != a.status]
        if others:
            blocks.append(_context(", ".join(f"{b.host}: {b.status}" for b in others)))
        text = f"🛠️ {a.step_id} on {plain_where}: {a.status}"
    return Message(text=text, blocks=blocks[:MAX_BLOCKS],
                   detail=f"  $ {a.display}" + (f"\n  on: {', '.join(hosts)}"
                                                   if len(hosts) > 1 else "")
                   + (f"\n  {how_to_approve}" if pending and how_to_approve else ""))


def note_message(text: str) -> Message:
    return Message(text=text, blocks=[_section(_esc(text))])


# -- live progress: hosts x steps as one message ---------------------------------------------
RUNNING = "⏳"
DETAILED_LINES = 40  # up to this many host x step lines, one line per step; beyond, a grid
TEXT_LIMIT = 40_000  # Slack's limit of a message's text


@dataclass(frozen=True)
class Cell:
    """One step on one host as the progress message shows it: None result = running."""

    step_id: str
    title: str
    result: StepResult | None = None


def _glyph(cell: Cell) -> str:
    return RUNNING if cell.result is None else ICON[cell.result.status]


def _step_line(host: str, cell: Cell) -> str:
    where = f"*{_esc(cell.title)}* (`{cell.step_id}`) on `{host}`"
    r = cell.result
    if r is None:
        return f"{RUNNING} {where} — running"
    exit_txt = f"exit {r.exit_status}" if r.exit_status is not None else "no exit status"
    line = f"{ICON[r.status]} {where} — *{r.status}* · {exit_txt} · {r.duration:.2f}s" \
        + _read_by(r)
    if r.error:
        line += f" · {_esc(r.error[:200])}"
    return line


def _host_line(host: str, cells: Sequence[Cell], done: bool) -> str:
    finished = [c for c in cells if c.result is not None]
    bad = [c.step_id for c in finished if c.result is not None and not c.result.ok]
    glyphs = "".join(_glyph(c) for c in cells)
    state = "done" if done else f"{len(finished)}/{len(cells)}"
    line = f"`{host}` {glyphs} {state}"
    if bad:
        line += " · not ok: " + ", ".join(bad[:6]) + (" …" if len(bad) > 6 else "")
    return line


def _sections(lines: Sequence[str], room: int) -> list[dict[str, Any]]:
    """Lines packed into at most `room` sections of at most SECTION_LIMIT characters."""
    blocks: list[dict[str, Any]] = []
    chunk: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        line = line[:SECTION_LIMIT - 40]
        if chunk and size + len(line) + 1 > SECTION_LIMIT - 40:
            if len(blocks) == room - 1:
                chunk.append(f"… and {len(lines) - i} more line(s)")
                break
            blocks.append(_section("\n".join(chunk)))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append(_section("\n".join(chunk)))
    return blocks


def progress_message(title: str, rows: Sequence[tuple[str, Sequence[Cell], bool]],
                     finished: bool) -> Message:
    """The run's live checklist. rows: (host, its steps so far, host done?). Few lines: one
    per step; many hosts: one line per host (one glyph per step), identical hosts grouped
    when even that is too long. Always within 50 blocks and 40,000 characters."""
    cells = [c for _, row, _ in rows for c in row]
    done_steps = sum(1 for c in cells if c.result is not None)
    done_hosts = sum(1 for _, _, d in rows if d)
    bad = sum(1 for c in cells if c.result is not None and not c.result.ok)
    counts = f"{done_hosts}/{len(rows)} host(s) done, {done_steps} step(s) finished" + \
        (f", {bad} not ok" if bad else "")
    head = f"{'🧾' if finished else RUNNING} {title}: {'finished' if finished else 'in progress'}"
    text = f"{head} — {counts}"
    if len(cells) <= DETAILED_LINES and len(rows) <= 3:
        lines = [_step_line(host, c) for host, row, _ in rows for c in row]
    else:
        lines = [_host_line(host, row, d) for host, row, d in rows]
        if sum(len(line) for line in lines) > 20_000:  # hundreds of hosts: group alike
            alike: dict[str, list[str]] = {}
            for (host, _, _), line in zip(rows, lines, strict=True):
                alike.setdefault(line.split(" ", 1)[1], []).append(host)
            lines = [f"{len(hs)} host(s) {shape} — {hosts_text(hs, 5)}"
                     for shape, hs in alike.items()]
    blocks = [_section(f"*{_esc(head)}*\n{counts}")]
    steps = list(dict.fromkeys(c.step_id for c in cells))
    blocks += _sections(lines, MAX_BLOCKS - 3)
    if steps and not (len(cells) <= DETAILED_LINES and len(rows) <= 3):
        blocks.append(_context(("Steps, in order: " + " · ".join(steps))[:SECTION_LIMIT]))
    if len(cells) <= DETAILED_LINES and len(rows) <= 3:
        detail = "\n".join(_plain_step_line(host, c) for host, row, _ in rows for c in row)
    else:
        detail = "\n".join(_plain_host_line(host, row, d) for host, row, d in rows)
    return Message(text=text[:TEXT_LIMIT], blocks=blocks[:MAX_BLOCKS], detail=detail)


def _plain_step_line(host: str, cell: Cell) -> str:
    r = cell.result
    if r is None:
        return f"{RUNNING} {cell.step_id} on {host}: running"
    exit_txt = f"exit {r.exit_status}" if r.exit_status is not None else "no exit status"
    return f"{ICON[r.status]} {cell.step_id} on {host}: {r.status} ({exit_txt}, " \
        f"{r.duration:.2f}s)" + (f" — {r.error}" if r.error else "")


def _plain_host_line(host: str, cells: Sequence[Cell], done: bool) -> str:
    """The console's line of a host: glyphs, and the steps that were not ok."""
    bad = [f"{c.step_id} ({c.result.status})" for c in cells
           if c.result is not None and not c.result.ok]
    line = f"{host:16} {''.join(_glyph(c) for c in cells)} " + \
        ("done" if done else f"{sum(1 for c in cells if c.result)}/{len(cells)}")
    return line + (f" · not ok: {', '.join(bad)}" if bad else "")


def duration_text(seconds: float) -> str:
    """3600 -> "1 h", 90 -> "1.5 min", 5 -> "5 s"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def decision_text(decision: Decision) -> str:
    """The one line the person who decided reads (Slack's ephemeral answer, the terminal)."""
    from bot.approvals import Outcome

    a, outcome = decision.approval, decision.outcome
    where = a.host if decision.hosts == 1 else f"{decision.hosts} hosts"
    if outcome is Outcome.RUNNING:
        return f"Approved {a.step_id} on {where}: running it now."
    if outcome is Outcome.HANDED_OVER:
        return f"Approved {a.step_id} on {where}: handed to the serving opsbot."
    if outcome is Outcome.REJECTED:
        return f"Rejected {a.step_id} on {where}."
    if outcome is Outcome.NOT_AN_APPROVER:
        return "You are not allowed to approve or reject remediation (not in " \
               "OPSBOT_APPROVERS). Nothing was run."
    if outcome is Outcome.TWO_PERSON_RULE:
        return "You asked for this run, so someone else must approve its remediation " \
               "(two-person rule). Nothing was run."
    if outcome is Outcome.WRONG_MESSAGE:
        return "This approval belongs to another message; nothing was run."
    return f"This was already {a.status}" + (f" by {a.decided_by}" if a.decided_by else "") + \
        "; nothing more was done."


def reminder_text(batch: Sequence[Approval]) -> str:
    """The one reminder of a pending approval (a batch: the same step on several hosts)."""
    first = batch[0]
    where = first.host if len(batch) == 1 else f"{len(batch)} hosts"
    return (f"⏰ Still waiting for approval: {first.step_id} on {where}, proposed at "
            f"{first.requested_at}; it expires at {first.expires_at} (the buttons are on the "
            "proposal above).")
