import csv
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from bot.adapters.store import Store
from bot.export import _js, export, export_text, parse_json
from bot.models import Phase, RenderedStep, StepResult, StepStatus
from bot.postmortem import chart_png

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


def test_hundred_thousand_events_stream_in_bounded_memory(incident: Store,
                                                          tmp_path: Path) -> None:
    with incident.tx() as conn:
        for i in range(100_000):
            incident._audit(conn, "step.end", "opsbot", 1, {
                "step": f"s{i % 10}", "host": "web01", "status": "ok", "exit_status": 0,
                "duration": 0.01, "output_sha256": f"{i:064x}", "note": "x" * 100})
    for fmt in ("md", "json", "csv"):
        out = tmp_path / f"big.{fmt}"
        tracemalloc.start()
        with out.open("w") as fh:
            for chunk in export(incident, 1, fmt):
                fh.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        with out.open() as fh:
            assert sum(1 for _ in fh) > 100_000
        assert peak < 16 * 1024 * 1024, f"{fmt}: peak {peak / 1e6:.1f} MB"
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
