"""A postmortem draft from an incident's record: what happened, when, why, who did what.

The draft is Markdown with a Mermaid timeline chart (`export --format postmortem`); `chart_png`
draws the same timeline as a PNG for Slack. Everything comes from the store: alerts, runs,
steps, diagnoses, approvals and the audit log, already redacted there.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.models import AlertRecord, Approval, Diagnosis, Incident, StepRun
from bot.ports import Records

_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")


def parse_time(text: str | None) -> datetime | None:
    """Alertmanager, store and audit times (RFC 3339, nanoseconds allowed); Alertmanager's
    zero time (`0001-01-01T00:00:00Z`, "not ended") and anything unreadable are None."""
    if not text:
        return None
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    frac = (m[3] or ".0")[1:7].ljust(6, "0")
    zone = m[4] or "Z"
    try:
        moment = datetime.fromisoformat(f"{m[1]}T{m[2]}.{frac}")
    except ValueError:
        return None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        moment -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    if moment.year < 1970:
        return None
    return moment.replace(tzinfo=UTC)


def _fmt(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def _span(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class Bar:
    """One bar of the timeline chart."""

    section: str
    label: str
    start: datetime
    end: datetime
    state: str  # "done" | "active" | "crit"


@dataclass(frozen=True)
class Facts:
    incident: Incident
    impact_start: datetime | None
    impact_end: datetime | None
    detected: datetime | None
    alerts: list[AlertRecord]
    steps: list[StepRun]
    diagnoses: list[Diagnosis]
    approvals: list[Approval]
    chain: list[str]


def gather(store: Records, incident: Incident) -> Facts:
    alerts = store.alerts_of(incident.id)
    starts = [t for a in alerts if (t := parse_time(a.starts_at))]
    ends = [t for a in alerts
            if a.status == "resolved" and (t := parse_time(a.ends_at))]
    opened = parse_time(incident.opened_at)
    chain: list[str] = []
    # only the discovery records, streamed: not the whole log (100,000 records) in memory
    for text in store.audit_details(incident.id, "discovery.traced"):
        detail = json.loads(text)
        if isinstance(detail, dict) and isinstance(detail.get("chains"), dict):
            chain.extend(line for host, text in detail["chains"].items()
                         if (line := f"{host}: {text}") not in chain)  # each run traces again
    return Facts(
        incident=incident,
        impact_start=min(starts) if starts else opened,
        impact_end=max(ends) if ends else parse_time(incident.resolved_at),
        detected=opened,
        alerts=alerts,
        steps=list(store.iter_steps(incident.id)),
        diagnoses=store.diagnoses_of(incident.id),
        approvals=store.approvals_of(incident.id),
        chain=chain,
    )


def bars(facts: Facts) -> list[Bar]:
    """The timeline: impact, each step (diagnosis, remediation, verify), each approval wait."""
    now = datetime.now(UTC)
    out: list[Bar] = []
    if facts.impact_start:
        end = facts.impact_end or now
        out.append(Bar("Impact", "alert firing" if facts.impact_end is None else "alert fired",
                       facts.impact_start, end, "crit" if facts.impact_end is None else "done"))
    for s in facts.steps:
        start = parse_time(s.started_at)
        if start is None:
            continue
        end = start + timedelta(seconds=max(float(s.duration or 0), 0.5))
        section = {"diagnostic": "Diagnosis", "remediation": "Remediation",
                   "verify": "Verify"}.get(s.phase, "Diagnosis")
        state = "done" if s.status in ("ok", "skipped") else "crit"
        out.append(Bar(section, f"{s.step_id} on {s.host}", start, end, state))
    for a in facts.approvals:
        start = parse_time(a.requested_at)
        if start is None:
            continue
        end = parse_time(a.decided_at) or now
        out.append(Bar("Approval", f"{a.step_id} {a.status}", start, end,
                       "done" if a.status == "approved" else "active"))
    return sorted(out, key=lambda b: (b.start, b.section))


def _mermaid_text(text: str) -> str:
    return re.sub(r"[:#;,\n]", " ", text)[:60]


def mermaid(chart: list[Bar]) -> Iterator[str]:
    yield "```mermaid\ngantt\n    title Incident timeline (UTC)\n"
    yield "    dateFormat YYYY-MM-DD HH:mm:ss\n    axisFormat %H:%M:%S\n"
    section = None
    for i, bar in enumerate(sorted(chart, key=lambda b: (b.section != "Impact", b.start))):
        if bar.section != section:
            section = bar.section
            yield f"    section {section}\n"
        end = max(bar.end, bar.start + timedelta(seconds=1))
        yield (f"    {_mermaid_text(bar.label)} :{bar.state}, t{i}, "
               f"{bar.start:%Y-%m-%d %H:%M:%S}, {end:%Y-%m-%d %H:%M:%S}\n")
    yield "```\n"


def _cause_lines(facts: Facts) -> Iterator[str]:
    if not facts.diagnoses:
        yield "No diagnosis was made.\n"
        return
    for d in facts.diagnoses:
        causes = d.causes
        if not causes:
            yield f"- {d.host}: no known cause matched the evidence.\n"
            continue
        top = causes[0]
        detail = f" ({top['detail']})" if top.get("detail") else ""
        yield f"- **{d.host}: {top['cause']}**{detail}, confidence {top['confidence']:.0%}\n"
        for line in top.get("evidence") or []:
            yield f"  > `{str(line).replace('`', 'ˋ')}`\n"
        others = ", ".join(f"{c['cause']} ({c['confidence']:.0%})" for c in causes[1:4])
        if others:
            yield f"  - other candidates considered: {others}\n"


def markdown(store: Records, incident: Incident) -> Iterator[str]:
    facts = gather(store, incident)
    yield f"# Postmortem draft: {incident.ref} · {incident.title}\n\n"
    yield ("*A draft written by opsbot from the incident's record. Fill in the parts marked "
           "TODO; the facts below are as recorded.*\n\n")
    duration = (facts.impact_end - facts.impact_start).total_seconds() \
        if facts.impact_start and facts.impact_end else None
    yield "## Summary\n\n"
    yield (f"- Service: {', '.join(incident.hosts) or 'unknown host'}"
           f" (runbook {incident.runbook or '—'})\n"
           f"- Root cause: {incident.cause or 'not determined'}\n"
           f"- Outcome: {incident.status}, {incident.phase}\n"
           f"- Impact window: {_fmt(facts.impact_start)} → "
           f"{_fmt(facts.impact_end) if facts.impact_end else 'still firing'}"
           + (f" ({_span(duration)})" if duration is not None else "") + "\n")
    yield "- Customer impact: TODO (who noticed, which requests failed)\n\n"
    yield "## Detection\n\n"
    if facts.alerts:
        first = min(facts.alerts, key=lambda a: a.received_at or "")
        yield (f"- Alert `{first.name}` started firing at "
               f"{_fmt(parse_time(first.starts_at))}; opsbot opened the incident at "
               f"{_fmt(facts.detected)}")
        if facts.impact_start and facts.detected:
            yield f" ({_span((facts.detected - facts.impact_start).total_seconds())} later)"
        yield ".\n"
        labels = first.labels or {}
        shown = ", ".join(f"{k}={v}" for k, v in labels.items() if k != "alertname")
        if shown:
            yield f"- Alert labels: {shown}\n"
    else:
        yield f"- No alert: a person started the run at {_fmt(facts.detected)}.\n"
    yield "\n## The chain\n\n"
    if facts.chain:
        for line in facts.chain:
            yield f"- {line}\n"
    else:
        yield "The serving chain was not recorded for this incident.\n"
    yield "\n## Root cause and evidence\n\n"
    yield from _cause_lines(facts)
    yield "\n## Actions\n\n"
    if facts.approvals:
        for a in facts.approvals:
            who = f" by {a.decided_by}" if a.decided_by else ""
            when = f" at {_fmt(parse_time(a.decided_at))}" if a.decided_at else ""
            yield (f"- `{a.step_id}` on {a.host} (asked by {a.requested_by}): "
                   f"{a.status}{who}{when}\n  `$ {a.display}`\n")
    else:
        yield "No remediation was proposed or run.\n"
    yield "\n## Verification\n\n"
    verifies = [s for s in facts.steps if s.phase in ("remediation", "verify")]
    if verifies:
        for s in verifies:
            yield (f"- {s.phase} `{s.step_id}` on {s.host}: **{s.status}** at "
                   f"{_fmt(parse_time(s.started_at))}"
                   + (f" — {s.error}" if s.error else "") + "\n")
    else:
        yield "Nothing was changed, so nothing was verified.\n"
    yield "\n## Timeline\n\n"
    chart = bars(facts)
    if chart:
        yield from mermaid(chart)
    else:
        yield "No timed events were recorded.\n"
    yield "\n## Follow-up\n\n"
    if incident.cause:
        yield f"- [ ] Why did `{incident.cause}` happen? What made it possible? (TODO: owner)\n"
    else:
        yield "- [ ] The cause was not determined: what evidence was missing? (TODO: owner)\n"
    yield "- [ ] Could the alert have fired earlier, or caught this before users did?\n"
    yield "- [ ] Did the runbook cover this case? What should it check or fix next time?\n"
    yield "- [ ] What prevents a repeat (owner, due date)?\n"


def chart_png(store: Records, incident: Incident) -> bytes:
    """The timeline as a PNG (Pillow; its built-in font), for uploading next to the draft."""
    from PIL import Image, ImageDraw

    chart = bars(gather(store, incident))
    width, row, left, top = 960, 22, 260, 40
    height = top + row * max(len(chart), 1) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"{incident.ref} timeline (UTC)", fill="black")
    if not chart:
        draw.text((10, top), "no timed events", fill="black")
    else:
        start = min(b.start for b in chart)
        end = max(b.end for b in chart)
        span = max((end - start).total_seconds(), 1.0)
        scale = (width - left - 20) / span
        colours = {"done": (76, 140, 220), "active": (240, 170, 60), "crit": (220, 70, 70)}
        for i, bar in enumerate(chart):
            y = top + i * row
            draw.text((10, y + 4), f"{bar.section}: {bar.label}"[:40], fill="black")
            x0 = left + (bar.start - start).total_seconds() * scale
            x1 = max(x0 + 2, left + (bar.end - start).total_seconds() * scale)
            draw.rectangle((x0, y + 3, x1, y + row - 3), fill=colours[bar.state])
        draw.text((left, height - 30), f"{start:%H:%M:%S}", fill="black")
        draw.text((width - 80, height - 30), f"{end:%H:%M:%S}", fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
