"""Past incidents as the fallback when no rule names a cause (bot/similar.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.diagnosis_report import (
    case_since,
    corpus_cases,
    diagnose_case,
    incident_of,
    load_case,
)
from bot.diagnosis import LIKENESS_DETAIL, current_lines, diagnose, load_rules
from bot.errors import RunbookInvalid
from bot.similar import Library, dump, load_library, words

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "runbooks" / "rules" / "http-502.yaml"
FIELD = ROOT / "tests" / "data" / "evidence" / "field"
# a thread whose evidence no rule reads (RabbitMQ hanging under a huge open-file limit), and the
# training incidents it resembles were dependency failures too
SILENT = FIELD / "dependency_down--g-eurooffice-rabbitmq-hangs-huge-nofile-limit.json"


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES_FILE)


def test_the_library_is_the_training_part_as_written_and_never_a_held_out_case(rules):
    """The shipped file is what bench/diagnosis_report.py writes from the training part now:
    every training case, no held-out one (a stale file fails here: run the report)."""
    library = load_library(Path(rules.similar))
    ids = {incident.id for incident in library.incidents}
    assert ids.isdisjoint(p.stem for p in corpus_cases("held_out"))
    assert ids == {p.stem for p in corpus_cases("train")}
    expected = dump(incident_of(p) for p in corpus_cases("train"))
    assert Path(rules.similar).read_text(encoding="utf-8") == expected


def test_when_no_rule_names_a_cause_the_closest_past_incidents_offer_theirs(rules):
    case = load_case(SILENT)
    alone = diagnose_case(rules, case, library=Library(()))
    assert alone == []  # the rules alone name nothing
    causes = diagnose_case(rules, case, case_id=SILENT.stem)  # compared with the others only
    first = causes[0]
    assert (first.cause, first.detail) == ("dependency_down", LIKENESS_DETAIL)
    assert 0.35 <= first.confidence < rules.threshold  # a candidate, never a named cause
    lines = {line for step in current_lines(case["evidence"], case_since(case)).values()
             for line in step}
    assert first.evidence and set(first.evidence) <= lines  # verbatim lines of the input
    assert first.remediation[0].startswith("No rule names the cause") and \
        "https://" in first.remediation[0]  # the past incidents, to compare with


def test_a_case_is_never_its_own_neighbour(rules):
    """A training case measured with itself in the library would find itself at similarity 1."""
    library = load_library(Path(rules.similar))
    case = load_case(SILENT)
    lines = current_lines(case["evidence"], case_since(case))
    with_itself = library.nearest(lines)
    without = library.without(SILENT.stem).nearest(lines)
    assert with_itself is not None and with_itself.incidents[0].id == SILENT.stem
    assert with_itself.similarity == pytest.approx(1.0)
    assert without is not None and SILENT.stem not in {i.id for i in without.incidents}
    assert without.similarity < 0.9


def test_a_named_cause_is_never_second_guessed(rules):
    """Past incidents speak only when the rules are silent: every lab capture's answer is the
    same with and without them."""
    for path in sorted((ROOT / "tests" / "data" / "evidence").glob("*.json"))[:40]:
        case = load_case(path)
        assert diagnose_case(rules, case, case_id=path.stem) == \
            diagnose_case(rules, case, library=Library(())), path.stem


def test_nothing_alike_means_no_candidate(rules):
    """Output that shares no word with any past incident: the answer stays the rules' own."""
    evidence = {"app_logs": "Lorem ipsum dolor sit amet\n"}  # the classic filler, not a log
    assert load_library(Path(rules.similar)).nearest({"app_logs": ["Lorem ipsum"]}) is None
    assert diagnose(rules, evidence) == diagnose(rules, evidence, library=Library(()))


def test_words_are_the_kind_of_failure_not_the_instance():
    """Times, pids, ports and addresses are left out: they name one incident, not a kind."""
    case = load_case(ROOT / "tests" / "data" / "evidence" / "upstream_down--nginx-log-only.json")
    line = next(line for line in case["evidence"]["nginx_error_log"].splitlines()
                if "(111: Connection refused)" in line)  # nginx's own line, captured in the lab
    assert {"connect", "failed", "errno111", "connection", "refused", "upstream"} <= words(line)
    assert not {w for w in words(line) if any(ch.isdigit() for ch in w) and w != "errno111"}


def test_a_broken_library_file_is_an_error_at_load_time_and_a_missing_one_a_warning(
        tmp_path, caplog):
    """Rules copied without their past incidents still work (without the fallback, said in
    one log line); a file that is there but is not a library is an error naming the line."""
    rules = tmp_path / "r.yaml"
    rules.write_text(RULES_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    loaded = load_rules(rules)
    assert loaded.similar is None and loaded.causes
    warned = [r.getMessage() for r in caplog.records if "similar:" in r.getMessage()]
    assert len(warned) == 1 and "r.yaml:" in warned[0] and "not found" in warned[0]
    (tmp_path / "http-502.cases.json").write_text('{"incidents": [{"id": 1}]}', encoding="utf-8")
    again = tmp_path / "r2.yaml"  # (a rules file is read once per version of it)
    again.write_text(RULES_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(RunbookInvalid, match=r"r2\.yaml:\d+: similar: .*not a past-incidents"):
        load_rules(again)


async def test_a_likeness_is_a_lead_to_check_never_a_proposed_change(rules, tmp_path):
    """The runner offers the candidate's advice (the past incidents to compare with) and
    proposes no remediation step on a likeness alone."""
    from bot.executors import ExecContext
    from bot.models import Host
    from bot.runbooks import load_runbook
    from bot.runner import HostReport, Runner

    runbook = load_runbook(ROOT / "runbooks" / "nginx-502.yaml")
    causes = diagnose_case(rules, load_case(SILENT), case_id=SILENT.stem)
    assert causes[0].detail == LIKENESS_DETAIL
    ctx = ExecContext(known_hosts=tmp_path / "known_hosts")
    try:
        report = HostReport(host=Host(name="web01", address="127.0.0.1"), params={},
                            causes=causes)
        Runner(ctx)._propose(runbook, report, context={})
    finally:
        await ctx.close()
    assert report.proposals == []
    assert report.advice and report.advice[0].startswith("No rule names the cause")
