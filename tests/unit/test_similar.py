"""Past incidents as the fallback when no rule names a cause (bot/similar.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.diagnosis_report import (
    case_since,
    collector,
    corpus_cases,
    diagnose_case,
    incident_of,
    load_case,
)
from bot.diagnosis import LIKENESS_DETAIL, current_lines, diagnose, load_rules
from bot.errors import RunbookInvalid
from bot.similar import NEIGHBOURS, Incident, Library, dump, load_library, words

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "runbooks" / "rules" / "http-502.yaml"
FIELD = ROOT / "tests" / "data" / "evidence" / "field"
# a thread whose evidence no rule reads (RabbitMQ hanging under a huge open-file limit), and the
# training incidents it resembles were dependency failures too
SILENT = FIELD / "dependency_down--g-eurooffice-rabbitmq-hangs-huge-nofile-limit.json"
LAB = ROOT / "tests" / "data" / "evidence"


def lab_line(name: str, step: str, needle: str) -> str:
    """A line a program printed in a lab capture."""
    text = load_case(LAB / name)["evidence"][step]
    return next(line for line in text.splitlines() if needle in line)


# nginx's refusal (captured in the lab) and an unrelated line (Python on a full disk)
REFUSED = lab_line("upstream_down--nginx-log-only.json", "nginx_error_log", "(111:")
ENOSPC = lab_line("disk_full--df-and-app-log-only.json", "app_logs", "Errno 28")


def incident(n: int, cause: str, terms: set[str]) -> Incident:
    return Incident(id=f"{cause}-{n}", cause=cause, source="the test",
                    terms=dict.fromkeys(terms, 1))


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
    assert 0.25 < first.confidence < rules.threshold  # a candidate, never a named cause
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
    """Past incidents speak only when the rules are silent: a lab capture whose cause the rules
    name gets the same answer with and without them, and none gets another first cause (the
    bare 502 of `unknown--proxy-502-only` stays `unknown` first, a likeness after it)."""
    named = 0
    for path in sorted((ROOT / "tests" / "data" / "evidence").glob("*.json"))[:40]:
        case = load_case(path)
        alone = diagnose_case(rules, case, library=Library(()))
        compared = diagnose_case(rules, case, case_id=path.stem)
        assert [c.cause for c in compared[:1]] == [c.cause for c in alone[:1]], path.stem
        if alone and alone[0].confidence >= rules.threshold:
            named += 1
            assert compared == alone, path.stem
    assert named >= 30


def test_nothing_alike_means_no_candidate(rules):
    """Output that shares no word with any past incident: the answer stays the rules' own."""
    evidence = {"app_logs": "Lorem ipsum dolor sit amet\n"}  # the classic filler, not a log
    assert load_library(Path(rules.similar)).nearest({"app_logs": ["Lorem ipsum"]}) is None
    assert diagnose(rules, evidence) == diagnose(rules, evidence, library=Library(()))


def test_the_neighbours_most_votes_are_offered_even_without_a_majority():
    """Neighbours that disagree still lead: the cause with the most votes is offered, its share
    saying how sure (abstaining was almost always wrong: the rules are rarely silent on an
    `unknown` incident). One copy of this line, and two incidents with half of its words each."""
    terms = sorted(words(REFUSED))
    half = len(terms) // 2
    library = Library((incident(1, "upstream_down", set(terms)),
                       incident(2, "wrong_proxy_config", set(terms[:half])),
                       incident(3, "upstream_crashloop", set(terms[half:]))))
    likeness = library.nearest({"nginx_error_log": [REFUSED]})
    assert likeness is not None and likeness.cause == "upstream_down"
    assert likeness.share < 0.5 and likeness.similarity == pytest.approx(1.0)
    assert likeness.quotes == (REFUSED,)  # verbatim


def test_a_thread_quoted_twice_does_not_outvote_the_wider_neighbourhood():
    """Two copies of one incident (a thread quoted twice) against many incidents that each share
    part of the words: the wider neighbourhood's cause wins, the copies are not the verdict."""
    terms = sorted(words(REFUSED))
    shared = set(terms[: len(terms) // 2])
    crowd = NEIGHBOURS - 2
    library = Library((incident(1, "wrong_proxy_config", set(terms)),
                       incident(2, "wrong_proxy_config", set(terms)),
                       *(incident(n, "upstream_crashloop", shared) for n in range(crowd)),
                       *(incident(n, "disk_full", words(ENOSPC)) for n in range(10))))
    likeness = library.nearest({"nginx_error_log": [REFUSED]})
    assert likeness is not None and likeness.cause == "upstream_crashloop"
    assert len(likeness.incidents) == crowd
    assert 0.1 < likeness.similarity < 0.3  # each of them is only fairly alike


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


def test_measured_by_collector_a_case_meets_no_incident_its_collector_gathered(rules):
    """Leave-one-collector-out (the report's grouped figure): the threads one collector gathered
    (often one project's) are left out with the case, so near-duplicates do not find each other."""
    mates = [p.stem for p in corpus_cases("train") if collector(p) == collector(SILENT)]
    assert SILENT.stem in mates and len(mates) > 1
    causes = diagnose_case(rules, load_case(SILENT), case_id=SILENT.stem, leave_out=mates)
    likeness = next(c for c in causes if c.detail == LIKENESS_DETAIL)
    library = load_library(Path(rules.similar))
    sources = {i.source for i in library.incidents if i.id in mates}
    assert not any(source in likeness.remediation[0] for source in sources)


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
