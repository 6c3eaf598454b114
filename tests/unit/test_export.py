import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.adapters.store import Store, utcnow
from bot.audit import FIELDS, record_hash
from bot.export import _js, export_text, parse_json
from bot.models import Phase, RenderedStep, StepResult, StepStatus, canonical_json
from bot.postmortem import chart_png
from bot.redact import redact_value

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def incident(tmp_path: Path) -> Store:
    store = Store(tmp_path / "x.db")
    inc, _ = store.open_or_join("g", title="NginxBadGateway on web01", labels={"host": "web01"},
                                runbook="nginx-502", hosts=["web01"], notes=[], actor="am")
    store.record_alerts(inc.id, None, [{"fingerprint": "f", "name": "NginxBadGateway",
                                        "status": "firing", "labels": {"host": "web01"},
                                        "annotations": {}, "starts_at": "2026-11-22T03:00:00Z",
                                        "ends_at": None}])
    run = store.start_run(inc.id, "nginx-502", "web01", "alertmanager", "alert", {})
    step = RenderedStep("nginx_error_log", "ssh", Phase.DIAGNOSTIC, "web01",
                        {"command": "tail -n 40 /var/log/nginx/error.log"},
                        "tail -n 40 /var/log/nginx/error.log", 30, "nginx error log")
    sid = store.start_step(run, inc.id, step, "alertmanager")
    line = "connect() failed (111: Connection refused) while connecting to upstream"
    store.finish_step(sid, inc.id, StepResult(step, StepStatus.OK, 0, "2026-11-22T03:00:01Z",
                                              0.05, line, len(line), "ab" * 32), "alertmanager")
    store.record_diagnosis(run, inc.id, "web01", [{"cause": "upstream_down", "confidence": 0.9,
                                                   "evidence": [line], "remediation": []}])
    a = store.create_approval(incident_id=inc.id, run_id=run, runbook="nginx-502",
                              step_id="start_program", host="web01", params={}, digest="d",
                              display="supervisorctl start ds:docservice",
                              requested_by="alertmanager", ttl=60)
    store.decide(a.token, "approved", "U0ALICE")
    store.update_incident(inc.id, status="resolved", phase="resolved")
    return store


def test_markdown_reads_as_a_postmortem(incident: Store) -> None:
    md = export_text(incident, 1, "md")
    for heading in ("## Summary", "## Alerts", "## Timeline (UTC)", "## Steps", "## Root cause",
                    "## What was done", "## Open questions"):
        assert heading in md
    assert "Impact window (UTC): 2026-11-22T03:00:00Z →" in md
    assert "**upstream_down** (90%)" in md and "approved by U0ALICE" in md
    assert "$ tail -n 40 /var/log/nginx/error.log" in md


def test_json_and_csv(incident: Store) -> None:
    doc = json.loads(export_text(incident, 1, "json"))
    assert doc["schema"] == "opsbot.timeline/1" and doc["incident"]["ref"] == "INC-1"
    assert doc["steps"][0]["command"] == "tail -n 40 /var/log/nginx/error.log"
    assert doc["approvals"][0]["decided_by"] == "U0ALICE"
    assert [e["seq"] for e in doc["events"]] == sorted(e["seq"] for e in doc["events"])
    rows = list(csv.DictReader(io.StringIO(export_text(incident, 1, "csv"))))
    assert len(rows) == len(doc["events"])
    assert any(r["event"] == "step.end" and r["output_sha256"] == "ab" * 32 for r in rows)


def append_step_ends(store: Store, db: Path, count: int) -> None:
    """`count` step.end records on the audit chain, each exactly as AuditChain.add writes it
    (canonical detail, chained hash; redaction leaves these details as they are), inserted with
    one executemany: building the log is not what is tested (verify_audit checks the chain)."""
    with store.tx() as conn:
        seq, prev = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").rows[0]
    ts = utcnow()
    rows = []
    for i in range(count):
        detail = {"step": f"s{i % 10}", "host": "web01", "status": "ok", "exit_status": 0,
                  "duration": 0.01, "output_sha256": f"{i:064x}", "note": "x" * 100}
        if i in (0, count - 1):
            assert redact_value(detail) == detail
        seq += 1
        rec = {"seq": seq, "ts": ts, "actor": "opsbot", "action": "step.end", "incident_id": 1,
               "detail": canonical_json(detail), "prev_hash": prev}
        prev = record_hash(rec)
        rows.append((*(rec[f] for f in FIELDS), prev))
    raw = sqlite3.connect(db)
    with raw:
        raw.executemany("INSERT INTO audit (seq, ts, actor, action, incident_id, detail, "
                        "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    raw.close()
    with store.tx() as conn:
        store._set_mark(conn, "head", seq, prev)


# `python -m bot ARGS` that prints its peak RSS last (VmHWM: its own, unlike ru_maxrss, which
# keeps the RSS of the forked parent it was exec'd from)
PEAK_RSS = ("import runpy, sys\n"
            "try:\n"
            "    runpy.run_module('bot', run_name='__main__', alter_sys=True)\n"
            "finally:\n"
            "    print(next(x for x in open('/proc/self/status') if x.startswith('VmHWM:')),\n"
            "          file=sys.stderr)\n")


def peak_rss_of_export(db: Path, fmt: str, out: Path) -> float:
    """`opsbot export INC-1 --format fmt > out` in a child process: its peak RSS in MB."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPSBOT_")},
           "OPSBOT_DB": str(db)}
    with out.open("w") as fh:
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, "export", "INC-1", "--format", fmt],
                              stdout=fh, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    kilobytes = done.stderr.split("VmHWM:")[1].split()[0]
    return int(kilobytes) / 1024


def test_hundred_thousand_events_stream_in_bounded_memory(incident: Store,
                                                          tmp_path: Path) -> None:
    """The real CLI's peak memory exporting 100,000 events stays within 16 MB of its peak for
    the same incident with a handful (the JSON export alone is ~50 MB: held in memory, it would
    show)."""
    db = tmp_path / "x.db"  # the fixture's store
    small = {fmt: peak_rss_of_export(db, fmt, tmp_path / f"small.{fmt}")
             for fmt in ("md", "json", "csv")}
    append_step_ends(incident, db, 100_000)
    for fmt in ("md", "json", "csv"):
        out = tmp_path / f"big.{fmt}"
        peak = peak_rss_of_export(db, fmt, out)
        with out.open() as fh:
            assert sum(1 for _ in fh) > 100_000
        assert peak - small[fmt] < 16, f"{fmt}: peak {peak:.1f} MB, {small[fmt]:.1f} MB for a " \
            "small incident"
    assert incident.verify_audit().ok


def test_export_into_a_closed_pipe_says_nothing(incident: Store, tmp_path: Path) -> None:
    db = tmp_path / "x.db"  # the fixture's store
    env = {"OPSBOT_DB": str(db)}
    cmd = f"{sys.executable} -m bot export INC-1 --format json | head -c 10"
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60,
                         env={**{k: v for k, v in os.environ.items()
                                 if not k.startswith("OPSBOT_")}, **env}, cwd=ROOT)
    assert out.stdout.startswith("{")
    assert out.stderr == ""


def test_postmortem_draft_has_every_part(incident: Store) -> None:
    store = incident
    md = export_text(store, 1, "postmortem")
    for part in ("# Postmortem draft: INC-1", "## Summary", "## Detection", "## The chain",
                 "## Root cause and evidence", "## Actions", "## Verification", "## Timeline",
                 "## Follow-up"):
        assert part in md, part
    assert "**web01: upstream_down**" in md
    assert "> `connect() failed (111: Connection refused)" in md
    assert "approved by U0ALICE" in md
    assert "```mermaid\ngantt" in md and "section Diagnosis" in md
    assert "nginx_error_log on web01 :done" in md
    png = chart_png(store, store.get_incident(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 500


def test_postmortem_names_each_traced_chain_once(incident: Store) -> None:
    store = incident
    chain = "nginx :80 → upstream 127.0.0.1:8080 → docservice (supervisord)"
    for _ in range(2):  # each run traces again
        store.audit("discovery.traced", "opsbot", 1, chains={"web01": chain})
    store.audit("step.end", "opsbot", 1, step="x", host="web01", status="ok")
    md = export_text(store, 1, "postmortem")
    part = md.split("## The chain\n\n", 1)[1].split("\n## ", 1)[0]
    assert part.count(f"web01: {chain}") == 1


@pytest.mark.parametrize("text", ['{"a": 1, "b": [0.1, -0.0, 1e300, "x\\u00e9"]}',
                                  '{"n": 123456789012345678901234567890}', '{"v": NaN}',
                                  '[18446744073709551616, -9223372036854775809, 1e400]',
                                  '{"h": "0000000000000000000000000000000001", "n": 5}',
                                  '{"s": "\\ud800"}', '{"k": 1, "k": 2}', '[]'])
def test_event_details_parse_as_json_parses_them(text: str) -> None:
    assert repr(parse_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize("value", ["plain", "quote \" back\\slash \n tab\t é ✅ \ud800", None, 7])
def test_event_fields_encode_as_json_encodes_them(value: object) -> None:
    assert _js(value) == json.dumps(value)
