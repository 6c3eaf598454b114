"""Incident timelines for postmortems: Markdown, JSON, CSV. Streamed: events are read from the
store one at a time, so a 100,000-event incident never sits in memory whole."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii
from typing import Any

from bot.models import Incident
from bot.ports import Records
from bot.postmortem import markdown as postmortem
from bot.postmortem import parse_time

FORMATS = ("md", "json", "csv", "postmortem")
QUIET = {"message.posted", "message.updated"}  # in the JSON/CSV record, not the Markdown table
CSV_FIELDS = ("seq", "time", "actor", "event", "host", "step", "status", "command",
              "exit_status", "duration_s", "output_sha256", "summary")


BATCH = 2000  # events per chunk yielded: few generator hops and writes, memory still flat


_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # json.loads' own scanner


def parse_json(text: str) -> Any:
    """json.loads(text), a third cheaper for a stored detail (canonical JSON: nothing around
    the value); anything else goes through json.loads itself."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # raises json's own error
    return value if end == len(text) else json.loads(text)


def _js(value: Any) -> str:
    """json.dumps(value): a string through json's own C encoder, without dumps' overhead."""
    return encode_basestring_ascii(value) if type(value) is str else json.dumps(value)


def _events(store: Records, incident_id: int) -> Iterator[tuple[dict[str, Any], str]]:
    """Each event (seq, time, actor, event, detail parsed, hash), with its detail's stored
    JSON text."""
    for seq, ts, actor, action, detail, digest in store.audit_stream(incident_id):
        yield ({"seq": seq, "time": ts, "actor": actor, "event": action,
                "detail": parse_json(detail) if detail else {}, "hash": digest}, detail or "{}")


def _summary(ev: dict[str, Any]) -> str:
    d, action = ev["detail"], ev["event"]
    if action == "step.start":
        return f"{d.get('phase')} step {d.get('step')} on {d.get('host')}: $ {d.get('command')}"
    if action == "step.end":
        return (f"step {d.get('step')} on {d.get('host')}: {d.get('status')} (exit "
                f"{d.get('exit_status')}, {d.get('duration')}s)"
                + (f" — {d['error']}" if d.get("error") else ""))
    if action == "diagnosis":
        causes = d.get("causes") or []
        return (f"diagnosis on {d.get('host')}: " + ", ".join(
            f"{c['cause']}{' · ' + c['detail'] if c.get('detail') else ''} "
            f"({c['confidence']:.0%})" for c in causes[:3])) if causes \
            else f"diagnosis on {d.get('host')}: no known cause matched"
    if action.startswith("approval."):
        return f"{action.split('.', 1)[1]}: {d.get('step', '')} on {d.get('host', '')}" + \
            (f" — $ {d['command']}" if d.get("command") else "") + \
            (f" ({d['reason']})" if d.get("reason") else "")
    if action.startswith("incident."):
        keys = {k: v for k, v in d.items() if k in ("status", "phase", "cause", "title")}
        return f"{action.split('.', 1)[1]}: " + ", ".join(f"{k}={v}" for k, v in keys.items())
    if action.startswith("run."):
        return f"{action.split('.', 1)[1]}: run {d.get('run_id')} {d.get('runbook', '')} " \
               f"{d.get('target', '')} {d.get('status', '')}".strip()
    return ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict | list))[:300]


def _impact(store: Records, incident: Incident) -> tuple[str | None, str | None]:
    alerts = store.alerts_of(incident.id)
    starts = [a.starts_at for a in alerts if a.starts_at and parse_time(a.starts_at)]
    ends = [a.ends_at for a in alerts if a.status == "resolved"
            and a.ends_at and parse_time(a.ends_at)]
    return (min(starts) if starts else incident.opened_at,
            max(ends) if ends else incident.resolved_at)


def _md_cell(text: Any) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def markdown(store: Records, incident: Incident) -> Iterator[str]:
    start, end = _impact(store, incident)
    diagnoses = store.diagnoses_of(incident.id)
    approvals = store.approvals_of(incident.id)
    yield f"# {incident.ref} · {incident.title}\n\n## Summary\n\n"
    state = str(incident.status) if incident.phase == str(incident.status) \
        else f"{incident.status} ({incident.phase})"
    yield (f"- Status: {state}\n- Runbook: {incident.runbook or '—'}"
           f"\n- Hosts: {', '.join(incident.hosts) or '—'}\n- Opened: {incident.opened_at}\n"
           f"- Resolved: {incident.resolved_at or '—'}\n"
           f"- Impact window (UTC): {start or '?'} → {end or 'ongoing'}\n"
           f"- Likely cause: {incident.cause or 'not determined'}\n")
    for note in incident.notes:
        yield f"- Note: {note}\n"
    alerts = store.alerts_of(incident.id)
    yield "\n## Alerts\n\n"
    if alerts:
        yield ("| received (UTC) | alert | status | started | ended | labels |\n"
               "|---|---|---|---|---|---|\n")
        for a in alerts:
            labels = ", ".join(f"{k}={v}" for k, v in (a.labels or {}).items())
            ended = a.ends_at if parse_time(a.ends_at) else ""
            yield (f"| {a.received_at} | {_md_cell(a.name)} | {a.status} | "
                   f"{a.starts_at or ''} | {ended} | {_md_cell(labels)} |\n")
    else:
        yield "No alert (a run asked for by a person).\n"
    yield "\n## Timeline (UTC)\n\n| time | actor | event | what |\n|---|---|---|---|\n"
    rows: list[str] = []
    for ev, _ in _events(store, incident.id):
        if ev["event"] in QUIET:
            continue
        rows.append(f"| {ev['time']} | {_md_cell(ev['actor'])} | {ev['event']} | "
                    f"{_md_cell(_summary(ev))} |\n")
        if len(rows) >= BATCH:
            yield "".join(rows)
            rows.clear()
    yield "".join(rows)
    yield "\n## Steps\n"
    for s in store.iter_steps(incident.id):
        exit_txt = s.exit_status if s.exit_status is not None else "—"
        yield (f"\n### `{s.step_id}` on {s.host} — {s.status} ({s.phase}, exit "
               f"{exit_txt}, {s.duration or 0:.2f}s, {s.started_at})\n\n")
        yield f"```\n$ {s.command}\n```\n\n"
        if s.error:
            yield f"Why: {s.error}\n\n"
        excerpt = (s.excerpt or "").rstrip().replace("```", "ˋˋˋ")
        if excerpt:
            yield f"```\n{excerpt}\n```\n\n"
        yield f"Output: {s.output_bytes or 0} bytes, sha256 `{s.digest}`\n"
    yield "\n## Root cause\n\n"
    if diagnoses:
        for d in diagnoses:
            causes = d.causes
            if not causes:
                yield f"- {d.host}: no known cause matched the evidence\n"
                continue
            top = causes[0]
            detail = f" · `{top['detail']}`" if top.get("detail") else ""
            yield f"- {d.host}: **{top['cause']}** ({top['confidence']:.0%}){detail}\n"
            for line in top["evidence"]:
                yield f"  > `{_md_cell(line)}`\n"
            others = ", ".join(f"{c['cause']} ({c['confidence']:.0%})" for c in causes[1:4])
            if others:
                yield f"  - other candidates: {others}\n"
    else:
        yield "No diagnosis was made.\n"
    yield "\n## What was done\n\n"
    if approvals:
        for approval in approvals:
            who = f" by {approval.decided_by}" if approval.decided_by else ""
            yield (f"- `{approval.step_id}` on {approval.host}: {approval.status}{who} at "
                   f"{approval.decided_at or '—'} — `$ {approval.display}`\n")
        for s in store.iter_steps(incident.id, phases=("remediation", "verify")):
            yield (f"- {s.phase} `{s.step_id}` on {s.host}: {s.status} at "
                   f"{s.started_at}\n")
    else:
        yield "No remediation was proposed.\n"
    yield "\n## Open questions\n\n"
    if incident.cause:
        yield f"- Why did `{incident.cause}` happen, and what would have caught it earlier?\n"
    else:
        yield "- What was the cause? The evidence above did not match a known one.\n"
    yield "- Does the alert fire early enough, and does the runbook cover this case?\n"
    yield "- What follow-up work prevents a repeat (owner, due date)?\n"


def as_json(store: Records, incident: Incident) -> Iterator[str]:
    start, end = _impact(store, incident)
    head = {"schema": "opsbot.timeline/1", "incident": {
        "ref": incident.ref, "id": incident.id, "title": incident.title,
        "status": str(incident.status), "phase": incident.phase, "runbook": incident.runbook,
        "hosts": list(incident.hosts), "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at, "cause": incident.cause,
        "impact": {"start": start, "end": end}, "notes": list(incident.notes)},
        "alerts": [{"name": a.name, "status": a.status, "labels": dict(a.labels),
                    "annotations": dict(a.annotations), "starts_at": a.starts_at,
                    "ends_at": a.ends_at, "received_at": a.received_at}
                   for a in store.alerts_of(incident.id)],
        "diagnoses": [{"host": d.host, "at": d.created_at, "causes": list(d.causes)}
                      for d in store.diagnoses_of(incident.id)],
        "approvals": [{"step_id": a.step_id, "host": a.host, "display": a.display,
                       "digest": a.digest, "status": str(a.status),
                       "requested_by": a.requested_by, "requested_at": a.requested_at,
                       "decided_by": a.decided_by, "decided_at": a.decided_at,
                       "reason": a.reason}
                      for a in store.approvals_of(incident.id)]}
    text = json.dumps(head, indent=1)
    yield text[:-2] + ',\n "steps": ['
    first = True
    for s in store.iter_steps(incident.id):
        item = {"id": s.id, "step_id": s.step_id, "phase": s.phase, "kind": s.kind,
                "host": s.host, "command": s.command, "action": s.action, "status": s.status,
                "exit_status": s.exit_status, "started_at": s.started_at,
                "duration": s.duration, "excerpt": s.excerpt, "output_bytes": s.output_bytes,
                "digest": s.digest, "error": s.error}
        yield ("\n  " if first else ",\n  ") + json.dumps(item)
        first = False
    yield '\n ],\n "events": ['
    sep, out, js = "\n  ", [], _js
    for ev, detail in _events(store, incident.id):
        # the stored detail is canonical JSON already: written as it is, not encoded again
        out.append(f'{sep}{{"seq": {ev["seq"]}, "time": {js(ev["time"])}, "actor": '
                   f'{js(ev["actor"])}, "event": {js(ev["event"])}, "detail": {detail}, '
                   f'"hash": {js(ev["hash"])}, "summary": {js(_summary(ev))}}}')
        sep = ",\n  "
        if len(out) >= BATCH:
            yield "".join(out)
            out.clear()
    yield "".join(out) + "\n ]\n}\n"


def as_csv(store: Records, incident: Incident) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_FIELDS)
    rows: list[tuple[Any, ...]] = []
    for ev, _ in _events(store, incident.id):
        d = ev["detail"]
        get = d.get
        rows.append((ev["seq"], ev["time"], ev["actor"], ev["event"], get("host", ""),
                     get("step", ""), get("status", ""), get("command", ""),
                     get("exit_status", ""), get("duration", ""), get("output_sha256", ""),
                     _summary(ev)))
        if len(rows) >= BATCH:
            writer.writerows(rows)
            rows.clear()
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    writer.writerows(rows)
    yield buf.getvalue()


def export(store: Records, incident_id: int, fmt: str) -> Iterator[str]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    incident = store.get_incident(incident_id)
    return {"md": markdown, "json": as_json, "csv": as_csv,
            "postmortem": postmortem}[fmt](store, incident)


def export_text(store: Records, incident_id: int, fmt: str) -> str:
    return "".join(export(store, incident_id, fmt))
