"""The 502 diagnosis engine against the shipped rules and the corpus of genuine evidence."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bench.diagnosis_report import case_slug, corpus_cases, diagnose_case, is_held_out, load_case
from bot.diagnosis import (
    HEALTHY_NOW,
    LABELS,
    MAX_QUOTES,
    EvidenceInvalid,
    _also_needed,
    _folded,
    _may_match,
    _needles,
    diagnose,
    load_evidence,
    load_rules,
)
from bot.errors import BotError, RunbookInvalid
from bot.logtime import Clock, line_time

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "runbooks" / "rules" / "http-502.yaml"
LAB = sorted((ROOT / "tests" / "data" / "evidence").glob("*.json"))
TRAIN = corpus_cases("train")  # lab captures + field cases not held out: rules are tuned on these
HELD_OUT = corpus_cases("held_out")  # never opened while tuning; only measured, never printed
FIELD_TARGET = 150  # field cases wanted in the corpus (issue 9)

# Genuine output of the healthy lab (nginx 1.22.1 -> supervisord program), no fault injected.
HEALTHY = {
    "healthcheck": "true\nHTTP 200\n",
    "proxy_check": "true\nHTTP 200\n",
    "supervisorctl_status": "ds:docservice                    RUNNING   pid 6153, uptime 0:00:01\n",
}
PARAMS = {"upstream_port": 18000, "upstream_host": "127.0.0.1", "program": "ds:docservice"}


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES_FILE)


# ---------------------------------------------------------------- the corpus

LAB_KEYS = {"label", "source", "params", "evidence"}
FIELD_KEYS = {"label", "source", "evidence", "source_url", "established_by"}
FIELD_OPTIONAL = {"params", "detail", "since", "stack", "relabelled"}


def malformed(path: Path) -> str | None:
    """What is wrong with a case file (without quoting it), or None."""
    case = load_case(path)
    field = path.parent.name in ("field", "unresolved")
    keys = set(case)
    if not (FIELD_KEYS <= keys <= FIELD_KEYS | FIELD_OPTIONAL if field
            else LAB_KEYS <= keys <= LAB_KEYS | {"since"}):
        return f"keys {sorted(keys)}"
    if case["label"] not in LABELS or not path.stem.startswith(case["label"] + "--"):
        return "label is not a contract label, or not the file name's prefix"
    if not (str(case["source"]).strip() and isinstance(case["evidence"], dict)
            and case["evidence"]):
        return "empty source or evidence"
    if field and not (str(case["source_url"]).startswith("https://")
                      and str(case["established_by"]).strip()):
        return "no source_url or established_by"
    if "relabelled" in case:  # a label audit's trace: {"from": the old label, "why": one sentence}
        relabelled = case["relabelled"]
        if not (isinstance(relabelled, dict) and set(relabelled) == {"from", "why"}
                and relabelled["from"] in LABELS and relabelled["from"] != case["label"]
                and isinstance(relabelled["why"], str) and relabelled["why"].strip()):
            return "relabelled is not {from: another contract label, why: a sentence}"
    return None


def test_split_is_frozen_and_new_cases_take_the_hash_third():
    import hashlib

    from bench.diagnosis_report import SPLIT

    # a case added after the freeze: the hash of its slug decides, whatever its label
    assert is_held_out("upstream_down--zz-new") == (
        int(hashlib.sha256(b"zz-new").hexdigest(), 16) % 3 == 0)
    assert is_held_out("upstream_down--zz-new") == is_held_out("unknown--zz-new")
    # a frozen case keeps its part when a label audit renames it
    slug, held = next(iter(SPLIT.items()))
    assert is_held_out(f"oom_killed--{slug}") is held is is_held_out(f"unknown--{slug}")
    assert len(SPLIT) >= 190 and sum(SPLIT.values()) == 62
    assert not set(TRAIN) & set(HELD_OUT)
    assert all(p.parent.name == "field" for p in HELD_OUT)
    assert set(LAB) <= set(TRAIN)
    field = [p for p in TRAIN + HELD_OUT if p.parent.name == "field"]
    if len(field) >= 30:  # a hash third, roughly
        assert 0.2 <= len(HELD_OUT) / len(field) <= 0.45


def test_corpus_covers_every_label_at_least_three_times():
    counts = Counter(load_case(path)["label"] for path in LAB)
    assert len(LAB) >= 45
    assert {label: counts[label] for label in LABELS if counts[label] < 3} == {}


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.stem)
def test_case_is_well_formed(path):
    assert malformed(path) is None


@pytest.mark.parametrize(("relabelled", "fault"), [
    ({"from": "upstream_down", "why": "a fatal start-up line: the backend's own fault"}, None),
    ({"from": "upstream_crashloop", "why": "same label"}, "relabelled"),
    ({"from": "down", "why": "not a contract label"}, "relabelled"),
    ({"from": "upstream_down", "why": " "}, "relabelled"),
    ({"from": "upstream_down"}, "relabelled"),
    ("upstream_down", "relabelled"),
])
def test_a_relabelled_case_names_its_old_label_and_why(tmp_path, relabelled, fault):
    (tmp_path / "field").mkdir()
    path = tmp_path / "field" / "upstream_crashloop--zz-case.json"
    path.write_text(json.dumps({
        "label": "upstream_crashloop", "relabelled": relabelled, "source": "a thread",
        "source_url": "https://example.org/1", "established_by": "the reporter's fix",
        "evidence": {"docker_logs": "x\n"}}), encoding="utf-8")
    problem = malformed(path)
    assert problem is None if fault is None else fault in str(problem)


def first_cause(rules, path: Path) -> str:
    """The cause ranked first for a corpus case, compared with the past incidents but itself."""
    causes = diagnose_case(rules, load_case(path), case_id=path.stem)
    return causes[0].cause if causes else "unknown"  # an empty list reads as unknown (CONTRACT)


@pytest.mark.parametrize("path", LAB, ids=lambda p: p.stem)
def test_top_cause_is_the_labelled_one(rules, path):
    case = load_case(path)
    causes = diagnose_case(rules, case, case_id=path.stem)
    assert causes, "no cause at all"
    assert causes[0].cause == case["label"], [(c.cause, c.confidence) for c in causes]


def test_field_training_cases_top1_at_least_86_percent(rules):
    """The field cases the rules were tuned on. Some stay ambiguous on their quoted evidence alone
    (the same 'No route to host' was a stale address in one thread and a dead container in
    another; a lone nginx 'Connection refused' line was a crash, a stop, a wrong port or a moved
    container); the misses are named here, the rate must hold. It was 90 % until the first
    session of 2026-11-30 (then 89 %: 5 of its last 14 blind training cases were a lone line or
    a `du` listing). In the second, 26 more blind cases entered the training part; after a rules
    round on them 6 stay misses: 4 lone refused lines (nginx, Traefik) to a container's address
    or a port whose cause the thread found elsewhere, Envoy's reset line for an OOM-killed pod,
    and a lone 'upstream timed out' whose cause was a WSL 1 bug (301/340, 88.5 %). In the third,
    63 more blind cases entered the training part (Java and Go backends mostly); after a rules
    round on them 14 stay misses, most without a line that names their cause: lone refused or
    reset lines, a 'Listening at' line of an image that moved its port, systemd exits (1/FAILURE,
    203/EXEC) whose cause was an owner or an SELinux label, compose's 'exited with code 137' for
    an OOM, a DNS timeout for a database left out of the compose file, an S3 signature error, and
    Tomcat's answer to plain HTTP on its TLS port, which the rules call tls_mismatch (as nginx's
    own) and its collector wrong_proxy_config (350/403, 86.8 %). Then 36 more (corpus-u, -v); after
    a second round 4 of them stay misses: a lone refused line (twice: a Puma that no longer
    loads, and an add-on whose open-file limit fell), a container that runs the wrong command
    and logs nothing wrong, and a load balancer's health check on a path that redirects
    (384/439, 87.5 %). Then 29 more (corpus-w, -x); after a third round 3 of them stay misses: a
    refused line to the port php-fpm was meant to listen on, nginx's broken pipe to a uWSGI app
    that a release broke, and uWSGI's 'no python application found' whose cause was a log
    file's mode (410/468, 87.6 %). In the fourth, 163 more blind cases (corpus-y, -z, -aa,
    -ab, -ac, -ad, -ae; two collectors searched cause first, one behind proxies other than
    nginx), 120 of them in the training part; after three rounds 34 of those stay misses, most
    again a lone refused or reset line (nginx, Apache, Envoy) or a line that names no cause (a
    du listing, a 403 from the app, an Apache timeout for a JVM's OOM, a HARAKIRI that was an
    OOM kill, a unit whose database was killed) (498/588, 84.7 %). In the fifth, 52 more (corpus-af,
    -ag: Python backends, Docker and proxies), 30 in the training part, and a rules round on
    both sides plus the past incidents' vote chosen by leave-one-collector-out; 6 of the 30 stay
    misses (a lone 'host not found in upstream' for a container that never started, twice; a
    uWSGI socket in systemd's PrivateTmp read as down; a socket name's letter case read as
    its permission error; a DB pool exhausted by threads read as a crash) (536/618, 86.7 %);
    a second round (helper rulesc) and 10 more (corpus-ah, -ai) in the training part: 550/628
    (87.6 %), the misses again mostly a lone proxy line or a label the evidence contradicts.
    In the sixth, a blind label audit of the 746 cases collected after the first audit (1
    relabelled), a guideline on TLS disagreement (4 relabelled), 64 more blind cases (corpus-aj,
    -ak, -al, -am, -an; 40 in the training part) and three rules rounds (proxy side, the
    backends' own words, the clients' words): 582/668 (87.1 %); 8 of the first 29 stay misses
    (a lone 'host not found' at boot, a stale registry address read as a stop, add-on ingress
    lines that name no cause, a JWT secret a newer image ignored, read as its EACCES). In the
    seventh, a rules round on the training misses that quote the backend (helper rules9) and 19
    more blind cases (corpus-ao, -ap: self-hosting installers and apps), 12 in the training
    part, of which 3 stay misses after a rule for s6-overlay's init refusing to run (a lone
    'upstream timed out', gunicorn's WORKER TIMEOUT after a clock change, a MongoDB too old read
    from its driver's null handle): 598/680 (87.9 %). In the eighth, two rules rounds on the
    training misses (helpers rules10, rules11: php-fpm's reset FastCGI connection, a MongoDB
    connect callback's null client, Apache's AH02454, `python -m` tracebacks, nginx lines a
    thread wrapped, Heroku's router codes, Prisma's P3009, workers killed by SIGILL/SIGFPE)
    and 18 more blind cases (corpus-aq, -ar; 12 in the training part, of which 1 stays a
    miss: a lone refusal that names no wrong port): 612/692 (88.4 %); with one shared start of
    a log message after its envelope (helper rules12) and one more blind case (corpus-as, a
    sidecar's lone 503 to a stale pod address, a miss): 612/693 (88.3 %)."""
    field = [p for p in TRAIN if p.parent.name == "field"]
    if not field:
        pytest.skip("no field cases yet")
    misses = [p.stem for p in field if first_cause(rules, p) != load_case(p)["label"]]
    assert 1 - len(misses) / len(field) >= 0.86, misses


def input_lines(evidence: dict) -> set[str]:
    """Every line a quote may be taken from: raw text, or JSON pretty-printed with indent=2."""
    lines: set[str] = set()
    for value in evidence.values():
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        lines.update(line.rstrip() for line in text.splitlines())
    return lines


def quoting_fault(rules, path: Path) -> str | None:
    """What is wrong with the causes of a case (without quoting the case), or None."""
    case = load_case(path)
    lines = input_lines(case["evidence"])
    causes = diagnose_case(rules, case, case_id=path.stem)
    for cause in causes:
        if not 0.0 <= cause.confidence <= 1.0:
            return f"{cause.cause}: confidence out of range"
        if len(cause.evidence) > MAX_QUOTES or len(set(cause.evidence)) != len(cause.evidence):
            return f"{cause.cause}: too many or repeated quotes"
        if not all(quote in lines for quote in (*cause.evidence, *cause.earlier)):
            return f"{cause.cause}: a quoted line is not a line of the input"
        if not cause.summary or not (cause.remediation or cause.detail == HEALTHY_NOW):
            return f"{cause.cause}: no summary or remediation"
    if [c.confidence for c in causes] != sorted((c.confidence for c in causes), reverse=True):
        return "causes are not ranked by confidence"
    return None


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.stem)
def test_quotes_are_verbatim_lines_of_the_input(rules, path):
    assert quoting_fault(rules, path) is None


def test_held_out_cases_are_well_formed_and_quoted_verbatim(rules):
    """Over the held-out third too; a failure names the count, never a case."""
    bad = sum(malformed(p) is not None for p in HELD_OUT)
    misquoted = sum(quoting_fault(rules, p) is not None for p in HELD_OUT)
    assert (bad, misquoted) == (0, 0)


UNRESOLVED = sorted((ROOT / "tests" / "data" / "evidence" / "unresolved").glob("*.json"))


@pytest.mark.parametrize("path", UNRESOLVED, ids=lambda p: p.stem)
def test_unresolved_threads_are_read_without_fault(rules, path):
    """Threads that never established a cause are not scored, but they are real input: each is
    a well-formed case, and its causes quote only its own lines."""
    assert malformed(path) is None
    assert load_case(path)["label"] == "unknown"
    assert quoting_fault(rules, path) is None


def test_held_out_cases_never_appear_in_the_report(rules):
    """docs/diagnosis.md shows the held-out third as totals only: no name, no line of its own."""
    from bench.diagnosis_report import measure, render

    page = render(measure(rules, TRAIN), measure(rules, HELD_OUT), RULES_FILE)
    seen = set().union(*(input_lines(load_case(p)["evidence"]) for p in TRAIN))
    shown = sum(p.stem in page or any(line not in seen and line in page
                                      for line in input_lines(load_case(p)["evidence"])
                                      if len(line.strip()) > 40) for p in HELD_OUT)
    assert shown == 0  # a count, so that a failure prints nothing of them either


@pytest.mark.xfail(strict=True, reason="measured 2026-12-01 01:21 with the rules and the "
                   "past-incidents fallback as at that time, after 19 more blind field cases: "
                   "held-out top-1 278/345 (81%; the rules alone 245/345, 71%), below issue 9's "
                   "90%; see docs/diagnosis.md. Strict: when it reaches 90% this marker must go.")
def test_held_out_top1_is_at_least_90_percent(rules):
    """The acceptance figure of issue 9, measured once the field corpus is in."""
    field = [p for p in TRAIN + HELD_OUT if p.parent.name == "field"]
    if len(field) < FIELD_TARGET:
        pytest.skip(f"{len(field)} field cases of the {FIELD_TARGET} wanted")
    hits = sum(first_cause(rules, path) == load_case(path)["label"] for path in HELD_OUT)
    assert hits / len(HELD_OUT) >= 0.9, f"held-out top-1 {hits}/{len(HELD_OUT)}"


def test_remediation_names_steps_the_host_has(rules):
    docker = load_case(ROOT / "tests/data/evidence/upstream_timeout--docker-unhealthy-hung.json")
    supervised = load_case(ROOT / "tests/data/evidence/upstream_timeout--slow-backend.json")
    assert "docker_restart" in diagnose(rules, docker["evidence"], docker["params"])[0].remediation
    top = diagnose(rules, supervised["evidence"], supervised["params"])[0]
    assert "restart_program" in top.remediation and "docker_restart" not in top.remediation


# ---------------------------------------------------------------- behaviour


def test_refused_with_program_stopped_is_upstream_down_but_running_is_wrong_port(rules):
    stopped = load_case(ROOT / "tests/data/evidence/upstream_down--supervisor-stopped.json")
    running = load_case(ROOT / "tests/data/evidence"
                        / "wrong_proxy_config--wrong-port-program-running.json")
    down = diagnose(rules, stopped["evidence"], stopped["params"])
    assert down[0].cause == "upstream_down" and down[0].confidence > 0.9
    assert "start_program" in down[0].remediation
    assert any("STOPPED" in quote for quote in down[0].evidence)
    wrong = diagnose(rules, running["evidence"], running["params"])
    assert wrong[0].cause == "wrong_proxy_config"
    assert all(c.cause != "upstream_down" or c.confidence < 0.2 for c in wrong)


def test_unknown_when_a_502_has_no_explanation(rules):
    causes = diagnose(rules, {"proxy_check": "<html>\n</html>\n\nHTTP 502\n"})
    assert [c.cause for c in causes] == ["unknown"]
    assert causes[0].confidence <= 0.5
    assert causes[0].evidence == ("HTTP 502",)


def training_case(name: str) -> Path:
    """A lab capture or field training case by file name; a field case by its slug too (the part
    after `<label>--`), so that a label audit renaming it does not break the test."""
    slug = case_slug(name)
    path = next((p for p in TRAIN if p.stem == name), None) or \
        next(p for p in TRAIN if p.parent.name == "field" and case_slug(p.stem) == slug)
    assert path.parent.name != "field" or not is_held_out(path.stem), "training cases only"
    return path


def evidence_of(name: str) -> dict:
    """The evidence of a lab capture or a field training case, by file name."""
    return dict(load_case(training_case(name))["evidence"])


def line_of(name: str, step: str, words: str) -> str:
    """A verbatim line of a corpus case's step output."""
    return next(line for line in evidence_of(name)[step].splitlines() if words in line)


# ---------------------------------------------------------------- evidence of now


@pytest.mark.parametrize(("name", "step", "words", "when"), [
    ("upstream_down--supervisor-stopped", "nginx_error_log", "111: Connection refused",
     datetime(2026, 11, 22, 3, 4, 34)),                                         # nginx
    ("dependency_down--live-lab-dependency-down", "journal", "spawned",
     datetime(2026, 11, 22, 3, 44, 13, 290000)),                                # supervisord
    ("dependency_down--live-lab-dependency-down", "app_logs", "ECONNREFUSED",
     datetime(2026, 11, 22, 3, 44, 13, 340000)),                                # log4js
    ("dependency_down--docker-amqp-loop", "docker_logs", "TCPConnectWrap",
     datetime(2023, 7, 23, 5, 20, 33, 393944, tzinfo=UTC)),                     # docker -t
    ("dependency_down--postgres-failed-to-start", "docker_logs", "could not translate",
     datetime(2019, 7, 10, 22, 55, 54, tzinfo=UTC)),                            # PostgreSQL
    ("oom_killed--a-ddev-php-fpm-sigkill", "docker_logs", "SIGKILL",
     datetime(2020, 10, 16, 17, 3, 39)),                                        # php-fpm
    ("upstream_timeout--a-meinheld-gunicorn-worker-timeout", "docker_logs", "WORKER TIMEOUT",
     datetime(2019, 9, 22, 9, 26, 1, tzinfo=timezone(-timedelta(hours=4)))),    # gunicorn
    ("upstream_down--stopped-backend-earlier-oom-in-dmesg-T", "kernel_log", "Killed process",
     datetime(2026, 11, 29, 18, 40, 53)),                                       # dmesg -T
    ("wrong_proxy_config--a-enju-leaf-rails-too-big-header", "nginx_error_log", "too big",
     datetime(2023, 7, 9, 2, 39, 30)),                                          # compose prefix
])
def test_log_lines_carry_their_time(name, step, words, when):
    assert line_time(line_of(name, step, words)) == when


def test_journal_and_dmesg_times_need_the_clock():
    journal = line_of("upstream_crashloop--systemd-start-limit-hit", "systemctl_status",
                      "Scheduled restart job")  # "Jul 18 18:47:29 host systemd[1]: ..."
    assert line_time(journal) is None  # no year in the line
    clock = Clock(since=datetime(2026, 8, 1, tzinfo=UTC))
    assert line_time(journal, clock) == datetime(2026, 7, 18, 18, 47, 29)
    january = Clock(since=datetime(2027, 1, 2, tzinfo=UTC))  # July's line read in January
    assert line_time(journal, january) == datetime(2026, 7, 18, 18, 47, 29)
    dmesg = line_of("oom_killed--cgroup-kills-supervisord-too", "kernel_log", "Killed process")
    assert line_time(dmesg, clock) is None  # seconds since boot, boot time unknown
    booted = Clock(since=clock.since, booted_at=datetime(2026, 7, 31, 23, 0, tzinfo=UTC))
    assert line_time(dmesg, booted) == booted.booted_at + timedelta(seconds=1276.027618)


def test_a_zone_less_time_is_earlier_only_when_it_is_under_any_zone():
    since = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    clock = Clock(since=since, margin=timedelta(minutes=5))
    assert not clock.is_earlier(datetime(2026, 11, 22, 3, 0))  # could be UTC+9: 18:00 UTC
    assert clock.is_earlier(datetime(2026, 11, 21, 3, 0))  # a day before: earlier anywhere
    assert clock.is_earlier(datetime(2026, 11, 22, 11, 54, tzinfo=UTC))
    assert not clock.is_earlier(datetime(2026, 11, 22, 11, 56, tzinfo=UTC))  # within the margin
    tokyo = Clock(since=since, utc_offset=timedelta(hours=9))
    assert not tokyo.is_earlier(datetime(2026, 11, 22, 20, 59))  # 11:59 UTC
    assert tokyo.is_earlier(datetime(2026, 11, 22, 20, 50))  # 11:50 UTC
    naive = Clock(since=datetime(2026, 11, 22, 12, 0))  # both in the host's local time
    assert naive.is_earlier(datetime(2026, 11, 22, 11, 50))


def test_an_earlier_oom_kill_does_not_make_a_stopped_backend_oom_killed(rules):
    name = "upstream_down--stopped-backend-earlier-oom-in-dmesg-T"
    case = load_case(ROOT / "tests" / "data" / "evidence" / f"{name}.json")
    oom = line_of(name, "kernel_log", "Memory cgroup out of memory: Killed process")
    for since in (datetime.fromisoformat(case["since"]), None):
        causes = diagnose(rules, case["evidence"], case["params"], since=since)
        assert causes[0].cause == "upstream_down" and causes[0].confidence > 0.9
        assert "oom_killed" not in [c.cause for c in causes]
        assert (oom in causes[0].earlier) is (since is not None)
    # the same kill, current, of a backend that was not stopped by hand: oom_killed
    running = {"kernel_log": case["evidence"]["kernel_log"]}
    assert diagnose(rules, running, case["params"])[0].cause == "oom_killed"


def test_errors_older_than_the_incident_raise_nothing_and_are_shown_as_earlier(rules):
    evidence = evidence_of("upstream_down--nginx-log-only")  # nginx: refused, 2026/11/22 03:04
    old = evidence["nginx_error_log"].splitlines()[-1]
    now = diagnose(rules, evidence, PARAMS, since=datetime(2026, 11, 22, 3, 5))
    assert now[0].cause == "upstream_down" and old in now[0].evidence
    later = diagnose(rules, evidence, PARAMS, since=datetime(2026, 11, 22, 9, 0))
    assert [c.cause for c in later] == ["unknown"] and later[0].evidence == ()
    assert old in later[0].earlier and later[0].to_json()["earlier"]
    healed = {**evidence, **HEALTHY}  # and the service answers now
    answer = diagnose(rules, healed, PARAMS, since=datetime(2026, 11, 22, 9, 0))
    assert [(c.cause, c.detail) for c in answer] == [("unknown", HEALTHY_NOW)]
    assert old in answer[0].earlier and answer[0].remediation == ()


def test_a_stack_trace_line_takes_the_time_of_the_line_above(rules):
    evidence = {"app_logs": evidence_of("tls_mismatch--b-converter-unable-to-verify-first-"
                                        "certificate")["app_logs"]}  # [2018-04-10 ...] + Error:
    current = diagnose(rules, evidence, since=datetime(2018, 4, 10, 14, 18))
    assert current[0].cause == "tls_mismatch"
    assert current[0].detail == "certificate_chain_untrusted"
    stale = diagnose(rules, evidence, since=datetime(2018, 4, 11))
    assert "tls_mismatch" not in [c.cause for c in stale]
    assert "Error: unable to verify the first certificate" in stale[0].earlier


# ---------------------------------------------------------------- misleading evidence


def test_refused_on_ipv6_localhost_is_the_address_not_a_down_backend(rules):
    causes = diagnose(rules, evidence_of("wrong_proxy_config--a-suse-rmt-ipv6-localhost"))
    assert (causes[0].cause, causes[0].detail) == ("wrong_proxy_config", "ipv6_localhost")
    assert "127.0.0.1" in causes[0].remediation[0]
    # the same [::1] refusal where nothing listens on the port at all: the backend is down
    snap = diagnose(rules, evidence_of("upstream_down--onlyoffice-snap-nothing-on-8000"),
                    {"upstream_port": 8000})
    assert snap[0].cause == "upstream_down"


def test_a_stale_upstream_address_is_not_a_down_backend(rules):
    moved = diagnose(rules, evidence_of("dns_or_network--a-vllm-bench-stale-upstream-ip"))
    assert (moved[0].cause, moved[0].detail) == ("dns_or_network", "stale_upstream_address")
    assert all(c.cause != "upstream_down" or c.confidence < 0.2 for c in moved)
    # refused on a container address with nothing else: a live host holds it (a stopped
    # container's address answers nothing: 113), so not a stopped backend; the stale address
    # is a candidate only (that case was a crash between restarts: the proxy cannot tell)
    alone = diagnose(rules, evidence_of("upstream_crashloop--a-flask-gunicorn-docker-wrong-dash"))
    assert (alone[0].cause, alone[0].detail) == ("dns_or_network", "stale_upstream_address")
    assert alone[0].confidence < rules.threshold
    assert all(c.cause != "upstream_down" or c.confidence < 0.3 for c in alone)
    # ... unless the backend's side says it is stopped (a lab capture's docker ps): then down
    stopped = {**evidence_of("upstream_crashloop--a-flask-gunicorn-docker-wrong-dash"),
               "docker_ps": evidence_of("upstream_down--docker-stopped-exit-137")["docker_ps"]}
    assert diagnose(rules, stopped)[0].cause == "upstream_down"


def test_an_unreachable_dependency_the_app_never_names_is_weak(rules):
    crashloop = evidence_of("upstream_crashloop--live-lab-crashloop")
    unused = evidence_of("dependency_down--probe-only-all-down")["dependencies"]
    causes = diagnose(rules, {**crashloop, "dependencies": unused}, PARAMS)
    assert causes[0].cause == "upstream_crashloop"
    assert {c.cause: c.confidence for c in causes}.get("dependency_down", 0) < 0.5
    assert any("local.json" in quote for quote in causes[0].evidence) or \
        any("FATAL" in quote for quote in causes[0].evidence)
    # the app's own complaint about the dependency outranks its crash loop
    named = diagnose(rules, evidence_of("dependency_down--live-lab-dependency-down"), PARAMS)
    assert named[0].cause == "dependency_down"
    # an empty dependency list is valid evidence: nothing unreachable, nothing raised
    empty = diagnose(rules, {**crashloop, "dependencies": ""}, PARAMS)
    assert empty[0].cause == "upstream_crashloop"
    assert "dependency_down" not in [c.cause for c in empty]


@pytest.mark.parametrize(("name", "label", "detail"), [
    ("wrong_proxy_config--a-enju-leaf-rails-too-big-header", "wrong_proxy_config",
     "proxy_buffers_too_small"),
    ("wrong_proxy_config--a-geonode-uwsgi-buffer-size", "wrong_proxy_config",
     "uwsgi_buffer_size_too_small"),
    ("upstream_crashloop--b-ynh-docservice-eaddrinuse-8000", "upstream_crashloop",
     "port_already_in_use"),
    ("disk_full--c-tmpfs-run-full-wordops", "disk_full", "tmpfs_full"),
    ("upstream_timeout--a-iocage-nextcloud-php-fpm-max-children", "upstream_timeout",
     "php_fpm_max_children"),
    ("oom_killed--a-ddev-php-fpm-sigkill", "oom_killed", "php_fpm_child_sigkill"),
    ("dependency_down--b-proxmox-lxc-amqp-403-access-refused", "dependency_down",
     "amqp_access_refused"),
])
def test_recurring_causes_outside_the_labels_carry_a_detail_and_advice(rules, name, label,
                                                                        detail):
    top = diagnose(rules, evidence_of(name))[0]
    assert (top.cause, top.detail) == (label, detail)
    assert top.remediation and (detail is None or top.to_json()["detail"] == detail)
    assert top.evidence


def test_healthy_is_an_answer_that_proposes_nothing(rules):
    from bot.render import Finding, finding_message

    causes = diagnose(rules, HEALTHY, PARAMS)
    assert [(c.cause, c.detail) for c in causes] == [("unknown", HEALTHY_NOW)]
    assert causes[0].remediation == () and causes[0].evidence == ("HTTP 200",)
    assert causes[0].to_json()["detail"] == HEALTHY_NOW
    shown = finding_message(Finding(("web01",), tuple(causes)))
    assert "answers now" in shown.text and "Likely cause" not in json.dumps(shown.blocks)
    # a real cause behind healthy probes is still named: the editor's JWT errors
    jwt = diagnose(rules, evidence_of("jwt_mismatch--healthy-proxy-jwt-missing"))
    assert jwt[0].cause == "jwt_mismatch"


def test_the_thread_shows_earlier_lines_apart(rules):
    from bot.render import Finding, finding_message

    evidence = evidence_of("upstream_down--nginx-log-only")
    old = evidence["nginx_error_log"].splitlines()[-1]
    stopped = evidence_of("upstream_down--supervisor-stopped")["supervisorctl_status"]
    causes = diagnose(rules, {**evidence, "supervisorctl_status": stopped}, PARAMS,
                      since=datetime(2026, 11, 22, 9, 0))
    assert causes[0].cause == "upstream_down" and old in causes[0].earlier
    shown = json.dumps(finding_message(Finding(("web01",), tuple(causes))).blocks)
    assert "Earlier, before the incident" in shown and old[:40] in shown


def test_parameters_are_escaped_and_signals_needing_a_missing_one_are_skipped(rules):
    evidence = {"supervisorctl_status": "dsXdocservice        STOPPED   Nov 22 03:04 AM\n"}
    named = diagnose(rules, evidence, {"program": "ds:docservice"})
    generic = {c.cause: c.confidence for c in named}
    assert generic.get("upstream_down", 0) < 0.5  # only the generic STOPPED signal fired
    ports = {"listening_ports": "LISTEN 0      5          127.0.0.1:180001     0.0.0.0:*\n"}
    assert diagnose(rules, ports, {}) == []  # the absent-listener signal needs upstream_port
    down = diagnose(rules, ports, {"upstream_port": 18000})
    assert down and down[0].cause == "upstream_down" and down[0].evidence == ()


def test_weak_agreeing_signals_beat_a_strong_contradicted_one(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "causes:\n"
        "  upstream_down:\n"
        "    summary: down\n"
        "    signals:\n"
        "      - {step: a, pattern: 'weak one', weight: 0.5}\n"
        "      - {step: a, pattern: 'weak two', weight: 0.5}\n"
        "      - {step: a, pattern: 'weak three', weight: 0.5}\n"
        "  oom_killed:\n"
        "    summary: oom\n"
        "    signals:\n"
        "      - {step: a, pattern: 'strong', weight: 0.95}\n"
        "      - {step: a, pattern: 'but running', role: against, weight: 0.8}\n"
        "  upstream_timeout:\n"
        "    summary: timeout\n"
        "    signals:\n"
        "      - {step: a, pattern: 'timed out', weight: 0.9, contradicts: [upstream_down]}\n",
        encoding="utf-8")
    rules = load_rules(path)
    text = "weak one\nweak two\nweak three\nstrong\nbut running\n"
    causes = diagnose(rules, {"a": text})
    assert [c.cause for c in causes] == ["upstream_down", "oom_killed"]
    assert causes[0].confidence == pytest.approx(1 - 0.5**3)
    assert causes[1].confidence == pytest.approx(0.95 * 0.2)
    assert causes[0].evidence == ("weak one", "weak two", "weak three")
    contradicted = diagnose(rules, {"a": text + "timed out\n"})
    assert [c.cause for c in contradicted] == ["upstream_timeout", "oom_killed"]
    # upstream_down fell to 0.875 * (1 - 0.9) = 0.0875, under the report floor (0.15)


def step_output(name: str, step: str) -> str:
    """One step's genuine output from a training case of the corpus (lab or field)."""
    return str(evidence_of(name)[step])


def test_a_fatal_start_up_line_is_a_crash_loop_unless_the_backend_was_stopped_by_hand(rules):
    # the labelling guideline: what fixes it is the error the backend exits with, not a start
    fatal = step_output("upstream_crashloop--c-missing-files-entrypoint-terriajs", "docker_logs")
    alone = diagnose(rules, {"docker_logs": fatal})
    assert alone[0].cause == "upstream_crashloop" and fatal.splitlines()[0] in alone[0].evidence
    restarting = step_output("upstream_crashloop--docker-restarting", "docker_ps")
    looping = diagnose(rules, {"docker_logs": fatal, "docker_ps": restarting})
    assert looping[0].cause == "upstream_crashloop" and looping[0].confidence >= 0.9
    # the backend's own fatal line outweighs nginx's refusal and an exited container
    refused = step_output("upstream_down--docker-stopped-exit-137", "nginx_error_log")
    exited = step_output("upstream_down--docker-stopped-exit-137", "docker_ps")
    crashed = diagnose(rules, {"docker_logs": fatal, "docker_ps": exited,
                               "nginx_error_log": refused})
    assert crashed[0].cause == "upstream_crashloop"
    assert {c.cause: c.confidence for c in crashed}.get("upstream_down", 0) < 0.5
    # stopped by hand since (supervisord STOPPED): the fatal line is history, start it
    stopped = step_output("upstream_down--supervisor-stopped", "supervisorctl_status")
    down = diagnose(rules, {"app_logs": fatal, "supervisorctl_status": stopped}, PARAMS)
    assert down[0].cause == "upstream_down"
    twice = diagnose(rules, {"docker_logs": fatal + "\n" + fatal})  # printed again: restarted
    assert twice[0].cause == "upstream_crashloop"


# Genuine start-up failures, each stack's own words. The Minecraft server's log4j line is a field
# training case's; the gunicorn unit's journal is from a public blog post (a Flask app under
# systemd, 2020-01-23); the php-fpm lines are quoted in public READMEs and notes.
GUNICORN_BOOT_FAILURE = """\
Jan 23 11:31:15 michal gunicorn[16263]:     self.reloader.add_extra_file(exc_val.filename)
Jan 23 11:31:15 michal gunicorn[16263]: AttributeError: 'NoneType' object has no attribute 'add_extra_file'
Jan 23 11:31:15 michal gunicorn[16263]: [2020-01-23 11:31:15 +0100] [16267] [INFO] Worker exiting (pid: 16267)
Jan 23 11:31:15 michal gunicorn[16263]: [2020-01-23 11:31:15 +0100] [16263] [INFO] Shutting down: Master
Jan 23 11:31:15 michal gunicorn[16263]: [2020-01-23 11:31:15 +0100] [16263] [INFO] Reason: Worker failed to boot.
Jan 23 11:31:15 michal systemd[1]: helloworld.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED
Jan 23 11:31:15 michal systemd[1]: helloworld.service: Failed with result 'exit-code'.
"""  # noqa: E501
PHP_FPM_POOL_USER = """\
[19-Jul-2019 13:27:35] ERROR: [pool www] please specify user and group other than root
[19-Jul-2019 13:27:35] ERROR: FPM initialization failed
"""
PHP_FPM_ERROR_LOG = """\
[27-Mar-2018 16:25:00] ERROR: failed to post process the configuration
[27-Mar-2018 16:25:00] ERROR: FPM initialization failed
"""


@pytest.mark.parametrize(("step", "output", "words"), [
    ("journal", GUNICORN_BOOT_FAILURE, "Worker failed to boot"),
    ("app_logs", PHP_FPM_POOL_USER, "FPM initialization failed"),
    ("docker_logs", PHP_FPM_ERROR_LOG, "] ERROR: "),
    ("docker_logs", step_output("upstream_crashloop--d-minecraft-java-unrecognized-option-restart-"
                                "loop", "docker_logs"), "FATAL"),
    # node-config's own error (the OnlyOffice services' config loader), alone
    ("docker_logs", step_output("upstream_crashloop--docker-restarting", "docker_logs"),
     "cannot be read"),
])
def test_each_stacks_fatal_start_up_lines_name_a_crash_loop(rules, step, output, words):
    refused = step_output("upstream_down--nginx-log-only", "nginx_error_log")
    causes = diagnose(rules, {step: output, "nginx_error_log": refused})
    assert causes[0].cause == "upstream_crashloop", [(c.cause, c.confidence) for c in causes]
    assert any(words in quote for quote in causes[0].evidence)


def test_a_python_traceback_is_a_crash_unless_it_is_a_requests_500(rules):
    # the lab's backend dying on a malformed local.json, its log alone, nginx refusing
    log = step_output("upstream_crashloop--supervisor-fatal", "app_logs")
    refused = step_output("upstream_down--nginx-log-only", "nginx_error_log")
    died = diagnose(rules, {"app_logs": log, "nginx_error_log": refused})
    assert died[0].cause == "upstream_crashloop"
    assert "Traceback (most recent call last):" in died[0].evidence
    # the same traceback under gunicorn's "Error handling request" (a line quoted in a public
    # project's README, gunicorn 19, 2019) is a running app's 500
    request = ("[2019-06-09 18:31:20 -0400] [16679] [ERROR] Error handling request /quote/zzzzzz\n"
               + log)
    answered = diagnose(rules, {"app_logs": request, "nginx_error_log": refused})
    assert answered[0].cause != "upstream_crashloop"


PYTHON_M_CTRL_C = (  # CPython 3.11.2 python3 -m sleeper, SIGINT while it sleeps, run here
    'Traceback (most recent call last):\n'
    '  File "<frozen runpy>", line 198, in _run_module_as_main\n'
    '  File "<frozen runpy>", line 88, in _run_code\n'
    '  File "/tmp/rules11/py/sleeper/__main__.py", line 9, in <module>\n'
    '    serve()\n'
    '  File "/tmp/rules11/py/sleeper/__main__.py", line 6, in serve\n'
    '    time.sleep(1)\n'
    'KeyboardInterrupt\n'
)
PYTHON_M_RAISED = (  # the same, python3 -m boom: a KeyError at import, run here
    'Traceback (most recent call last):\n'
    '  File "<frozen runpy>", line 198, in _run_module_as_main\n'
    '  File "<frozen runpy>", line 88, in _run_code\n'
    '  File "/tmp/rules11/py/boom/__main__.py", line 9, in <module>\n'
    '    main()\n'
    '  File "/tmp/rules11/py/boom/__main__.py", line 5, in main\n'
    '    port = int(os.environ["BOOM_PORT"])\n'
    '               ~~~~~~~~~~^^^^^^^^^^^^^\n'
    '  File "<frozen os>", line 679, in __getitem__\n'
    "KeyError: 'BOOM_PORT'\n"
)


def test_python_m_stopped_by_ctrl_c_is_no_crash(rules):
    # runpy's frame tops a traceback only when nothing caught the exception: a crash, unless the
    # exception is the KeyboardInterrupt of a Ctrl-C (someone stopped it)
    refused = step_output("upstream_down--nginx-log-only", "nginx_error_log")
    stopped = diagnose(rules, {"docker_logs": PYTHON_M_CTRL_C, "nginx_error_log": refused})
    assert stopped[0].cause == "upstream_down", [(c.cause, c.confidence) for c in stopped]
    died = diagnose(rules, {"docker_logs": PYTHON_M_RAISED, "nginx_error_log": refused})
    assert died[0].cause == "upstream_crashloop"


def test_a_full_unix_socket_backlog_is_a_busy_backend_not_a_down_one(rules):
    # nginx in front of php-fpm under a flood of xmlrpc.php requests (a public blog post, 2016)
    line = ('2016/01/21 19:09:17 [error] 3355#0: *355 connect() to unix:/var/run/php5-fpm.sock '
            'failed (11: Resource temporarily unavailable) while connecting to upstream, client: '
            '185.130.5.209, server: myserver.com, request: "POST /xmlrpc.php HTTP/1.0", upstream: '
            '"fastcgi://unix:/var/run/php5-fpm.sock:", host: "127.0.0.1"')
    causes = diagnose(rules, {"nginx_error_log": line + "\n"})
    assert (causes[0].cause, causes[0].detail) == ("upstream_timeout", "listen_backlog_full")
    assert causes[0].evidence == (line,)


@pytest.mark.parametrize(("name", "step", "label", "detail"), [
    # Bun's own loader error and its version line (a field case)
    ("upstream_crashloop--e-flashbang-bun-image-missing-module", "docker_logs",
     "upstream_crashloop", None),
    # the shell's strerror(ENOEXEC) is capitalised: "Exec format error"
    ("upstream_crashloop--b-community-ds-x2t-exec-format-freebsd", "app_logs",
     "upstream_crashloop", None),
    # Go's EACCES on a port under 1024 after chown dropped the capability
    ("permission_denied--f-mattermost-go-setcap-lost-bind-443-denied", "app_logs",
     "permission_denied", "privileged_port_denied"),
    # coreutils' mkdir refused inside the container: the permission, not the dependency
    ("permission_denied--b-docker-rabbitmq-mkdir-var-run-permission-denied", "app_logs",
     "permission_denied", None),
    # nginx dialing [::] where Docker has no IPv6 (musl's wording of EADDRNOTAVAIL)
    ("wrong_proxy_config--f-privatebin-fpm-ipv6-any-address-unavailable", "docker_logs",
     "wrong_proxy_config", "ipv6_unavailable"),
    # libpq >= 14: 'connection to server at "postgres" (ip), port 5432 failed'
    ("dependency_down--e-csvbase-app-before-postgres-listening", "docker_logs",
     "dependency_down", None),
    # a non-root nginx refused port 80: the permission, not its config
    ("permission_denied--e-frappe-docker-non-root-nginx-bind-80", "docker_logs",
     "permission_denied", "privileged_port_denied"),
    # Rails' own stale pid file check
    ("upstream_crashloop--e-wheel-puma-exiting-server-pid-exists", "docker_logs",
     "upstream_crashloop", "stale_pid_file"),
    # nginx printing strerror(111) as its libc names it
    ("upstream_down--f-cuckoo3-uwsgi-service-exited-restart", "nginx_error_log",
     "upstream_down", None),
    # nginx cannot parse the upstream address it was given
    ("wrong_proxy_config--f-geonode-jenkins-upstream-missing-port", "nginx_error_log",
     "wrong_proxy_config", "nginx_upstream_address_invalid"),
    # the shell's "Killed" and yarn's exit code 137 on a 1 GB host: the OOM killer
    ("oom_killed--e-stackedit-node-dev-server-killed-137", "app_logs", "oom_killed", None),
    # older systemd says "start request repeated too quickly" in lower case
    ("upstream_crashloop--e-thelounge-ynh-start-request-repeated", "journal",
     "upstream_crashloop", None),
    # php-fpm's master: "child N exited on signal 11 (SIGSEGV - core dumped)"
    ("upstream_crashloop--a-phalcon-opcache-segfault", "app_logs", "upstream_crashloop", None),
    # compose's "nginx-1 |" prefix: an nginx-only container dialing its own 127.0.0.1:9000
    ("wrong_proxy_config--f-vvveb-compose-nginx-fastcgi-to-own-loopback", "docker_logs",
     "wrong_proxy_config", "loopback_inside_container"),
    # nginx's line wrapped in the thread, its upstream on the third line: FastCGI refused on a
    # network address, php-fpm's default listen = 127.0.0.1:9000
    ("wrong_proxy_config--j-bitnami-php-fpm-7214-r20-listens-localhost-only", "nginx_error_log",
     "wrong_proxy_config", "backend_listens_on_loopback"),
    # Heroku's router: no web dyno runs (scaled to 0, no web process in the Procfile)
    ("upstream_down--ar-supplebox-heroku-h14-no-web-process-procfile-missing", "nginx_error_log",
     "upstream_down", None),
    # a timeout line wrapped after "while" in the thread still reads as a timeout
    ("upstream_timeout--f-mendix-java-runtime-proxy-read-timeout", "nginx_error_log",
     "upstream_timeout", None),
])
def test_program_wordings_of_each_cause(rules, name, step, label, detail):
    causes = diagnose(rules, evidence_of(name))
    assert (causes[0].cause, causes[0].detail) == (label, detail)
    lines = [line.rstrip() for line in step_output(name, step).splitlines()]
    assert all(quote in lines for quote in causes[0].evidence)


def test_enospc_from_a_file_watch_is_the_inotify_limit_not_the_disk(rules):
    # ingress-nginx's template watch, with room and inodes to spare (a thread that never closed
    # on a cause, now under unresolved/: its lines are genuine, its label is not scored)
    path = ROOT / "tests/data/evidence/unresolved/unknown--f-ingress-nginx-enospc-with-free-space-and-inodes.json"  # noqa: E501
    assert not is_held_out(path.stem)
    causes = diagnose(rules, load_case(path)["evidence"])
    assert (causes[0].cause, causes[0].detail) == ("unknown", "inotify_watches_exhausted")
    assert "disk_full" not in [c.cause for c in causes[:1]]


def test_where_the_backend_says_it_listens_against_where_nginx_dials(rules):
    # gunicorn 20.1's default bind, as a public tutorial printed it (2022-01-30)
    gunicorn = ("[2022-01-30 19:30:11 +0100] [93015] [INFO] Listening at: http://127.0.0.1:8000 "
                "(93015)\n")
    # nginx in another container dialing the backend container's address on that port
    to_container = step_output("upstream_crashloop--a-flask-gunicorn-docker-wrong-dash",
                               "nginx_error_log")
    loopback = diagnose(rules, {"docker_logs": gunicorn, "nginx_error_log": to_container})
    assert (loopback[0].cause, loopback[0].detail) == ("wrong_proxy_config",
                                                       "backend_listens_on_loopback")
    assert "0.0.0.0" in loopback[0].remediation[0]
    # nginx dialing loopback, but another port (the lab's 18000): the ports disagree
    lab = step_output("upstream_down--nginx-log-only", "nginx_error_log")
    ports = diagnose(rules, {"app_logs": gunicorn, "nginx_error_log": lab})
    assert (ports[0].cause, ports[0].detail) == ("wrong_proxy_config", "port_mismatch")
    # and no banner at all: the refusal alone stays a down backend
    assert diagnose(rules, {"nginx_error_log": lab})[0].cause == "upstream_down"
    # Puma's socket (a field case) and nginx dialing another socket (another field case)
    puma = line_of("upstream_crashloop--a-puppet-gitlab-puma-stale-socket", "app_logs",
                   "Listening on unix://")
    other = step_output("upstream_down--b-communityserver-fastcgi-socket3-missing",
                        "nginx_error_log")
    path = diagnose(rules, {"app_logs": puma, "nginx_error_log": other})
    assert (path[0].cause, path[0].detail) == ("wrong_proxy_config", "socket_path_mismatch")


@pytest.mark.parametrize(("line", "detail"), [
    # Rails against PostgreSQL without its role (a public project's notes, libpq 14 wording)
    ('ActiveRecord::NoDatabaseError (connection to server at "localhost" (::1), port 5432 failed: '
     'FATAL:  role "postgres" does not exist):', "database_not_initialised"),
    # ioredis against a Redis with requirepass (a public VPS log excerpt)
    ("[ioredis] Unhandled error event: ReplyError: NOAUTH Authentication required.", None),
])
def test_a_dependency_that_answers_but_refuses_is_dependency_down(rules, line, detail):
    refused = step_output("upstream_down--nginx-log-only", "nginx_error_log")
    causes = diagnose(rules, {"app_logs": line + "\n", "nginx_error_log": refused})
    assert (causes[0].cause, causes[0].detail) == ("dependency_down", detail)
    assert line in causes[0].evidence


def test_kubernetes_says_oom_in_its_own_words(rules):
    # kubectl describe pod of a memory-leak demo (a public Kubernetes walkthrough, 2019)
    describe = """\
        State:          Running
        Started:      Tue, 07 Jul 2019 12:54:41 -0700
        Last State:     Terminated
        Reason:       OOMKilled
        Exit Code:    137
        Started:      Fri, 07 Jul 2019 12:54:30 -0700
        Finished:     Fri, 07 Jul 2019 12:54:33 -0700
        Ready:          False
        Restart Count:  5
"""
    causes = diagnose(rules, {"docker_ps": describe})
    assert causes[0].cause == "oom_killed"
    assert "        Reason:       OOMKilled" in causes[0].evidence


@pytest.mark.parametrize(("step", "text", "label", "detail"), [
    # php-fpm's pool manager (a public FAQ, 2012; the wording of sapi/fpm fpm_process_ctl.c)
    ("app_logs", "[26-Jul-2012 09:49:59] WARNING: [pool www] seems busy (you may need to increase "
     "pm.start_servers, or pm.min/max_spare_servers), spawning 32 children, there are 8 idle, and "
     "58 total children", "upstream_timeout", "php_fpm_pool_busy"),
    # php-fpm's slowlog notice (a public PHP course's log, 2022)
    ("app_logs", "[11-Jul-2022 05:34:02] WARNING: [pool www] child 155, script "
     "'/var/www/html/public/error_handling/slowlog.php' (request: \"GET "
     "/error_handling/slowlog.php\") executing too slow (1.176006 sec), logging",
     "upstream_timeout", "php_fpm_slow_requests"),
    # systemd's core dump of a service (a public issue's journal, xmrig, 2020)
    ("journal", "Aug 22 19:13:32 WorkStation systemd[1]: xmrig@xmrig.service: Main process "
     "exited, code=dumped, status=11/SEGV", "upstream_crashloop", None),
    # uWSGI reading "GET " as its own header: nginx proxy_passes HTTP to a uwsgi socket
    # (quoted in many public notes; 21573 = 0x5445, the "ET" of "GET " little-endian)
    ("app_logs", "invalid request block size: 21573 (max 4096)...skip", "wrong_proxy_config",
     "http_to_uwsgi_socket"),
    # Apache httpd's mod_proxy in front instead of nginx (public notes, 2017 and 2021)
    ("nginx_error_log", "[Tue Mar 28 11:12:30.125717 2017] [proxy:error] [pid 15:tid "
     "140521397745408] (111)Connection refused: AH00957: HTTP: attempt to connect to "
     "127.0.0.1:1337 (localhost) failed", "upstream_down", None),
    ("nginx_error_log", "[Thu Mar 25 18:53:07.457268 2021] [proxy_fcgi:error] [pid 13295] "
     "(70007)The timeout specified has expired: [client ::1:54684] AH01075: Error dispatching "
     "request to : (polling)", "upstream_timeout", None),
    # ASP.NET Core host failing to bind (quoted in a public project's test data)
    ("docker_logs", "[backend] Unhandled exception. System.AggregateException: One or more host "
     "shutdown operations failed. (Failed to bind to address http://127.0.0.1:35005: address "
     "already in use.)", "upstream_crashloop", "port_already_in_use"),
    # a dependency's service name that does not resolve from the backend: the compose network,
    # not the database (https://github.com/wger-project/docker/issues/91)
    ("docker_logs", 'psycopg2.OperationalError: could not translate host name "db" to address',
     "dns_or_network", "dependency_name_unresolved"),
    # Node.js refused on ::1 for "localhost" on a non-default PostgreSQL port
    # (https://github.com/nearform/the-fastify-workshop/issues/905)
    ("app_logs", "          Error: connect ECONNREFUSED ::1:5433", "dependency_down",
     "ipv6_localhost"),
    # the Document Server's own schema check after an upgrade
    # (https://github.com/ONLYOFFICE/DocumentServer/issues/1911)
    ("app_logs", '[ERROR] [localhost] [docId] [userId] nodeJS - DB table "task_result" does not '
     'contain tenant column, columns info: [{"column_name":"id"},{"column_name":"status"},'
     '{"column_name":"status_info"},{"column_name":"created_at"},{"column_name":"last_open_date"},'
     '{"column_name":"user_index"},{"column_name":"change_id"},{"column_name":"callback"},'
     '{"column_name":"baseurl"},{"column_name":"password"},{"column_name":"additional"}]',
     "dependency_down", "database_schema_not_upgraded"),
    # V8's own heap limit: the app's fault, not the host's memory
    # (https://github.com/alkem-io/server/issues/5563)
    ("app_logs", "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of "
     "memory", "upstream_crashloop", "node_heap_exhausted"),
    # SIGILL in a prebuilt native module on a CPU without SSE4.2
    # (https://github.com/bluesky-social/pds/issues/158)
    ("kernel_log", "kernel: traps: node[23207] trap invalid opcode ip:7f22afe5cec3 sp:7ffc11f4e2e0 "
     "error:0 in libvips-cpp.so.42[7f22af6a4000+a69000]", "upstream_crashloop",
     "cpu_lacks_instructions"),
    # php-fpm finds its unix socket answered by another master
    # (https://github.com/richarvey/nginx-php-fpm/issues/60)
    ("app_logs", "[18-Aug-2016 17:38:44] ERROR: An another FPM instance seems to already listen on "
     "/var/run/php-fpm.sock", "upstream_crashloop", "port_already_in_use"),
    # musl's strerror(EADDRINUSE) in an Alpine image's php-fpm
    # (https://github.com/alexjustesen/speedtest-tracker/issues/1787)
    ("docker_logs", "[12-Nov-2024 10:08:57] ERROR: unable to bind listening socket for address "
     "'127.0.0.1:9000': Address in use (98)", "upstream_crashloop", "port_already_in_use"),
    # php-fpm rejects a directive it does not know (https://github.com/voxpupuli/puppet-php/issues/100)
    ("app_logs", "[19-Jul-2015 22:56:44] ERROR: [/etc/php5/fpm/php-fpm.conf:118] unknown entry "
     "'systemd_interval'", "upstream_crashloop", None),
    # php-fpm's pid file directory gone after a reboot (https://github.com/maicong/LNMP/issues/24)
    ("app_logs", "[12-Apr-2018 16:11:26] ERROR: Unable to create the PID file "
     "(/run/php-fpm/php-fpm-index.pid).: No such file or directory (2)", "upstream_crashloop",
     "runtime_dir_missing"),
    # nginx on musl names EMFILE its own way (https://github.com/hypothesis/h/pull/6770)
    ("nginx_error_log", "2021/07/08 12:43:00 [crit] 15#15: accept4() failed (24: No file "
     "descriptors available)", "unknown", "too_many_open_files"),
    # Next.js standalone bound to Docker's container-ID HOSTNAME
    # (https://github.com/crawlseo/crawlseo/pull/10)
    ("docker_logs", "- Local:         http://b11e77089501:3000", "wrong_proxy_config",
     "backend_bound_to_container_hostname"),
    # the Document Server image's start script with an empty host and port from its config
    # (https://github.com/ONLYOFFICE/Docker-DocumentServer/issues/503)
    ("docker_logs", "Waiting for connection to the  host on port", "upstream_crashloop",
     "image_config_unreadable"),
    # an old libpq against PostgreSQL's scram-sha-256 (AUTH_REQ_SASL = 10)
    # (https://github.com/ONLYOFFICE/DocumentServer/issues/1537)
    ("app_logs", "psql: authentication method 10 not supported", "dependency_down",
     "postgres_auth_method_unsupported"),
    # the Nextcloud connector's check of a Document Server that wants a JWT
    # (https://github.com/ONLYOFFICE/onlyoffice-nextcloud/issues/747)
    ("healthcheck", "Error occurred in the document service: Invalid token", "jwt_mismatch", None),
    # the Nextcloud connector (PHP's cURL) speaking https to the Document Server's plain port 80
    # (https://github.com/ONLYOFFICE/onlyoffice-nextcloud/issues/938)
    ("healthcheck", "An error occurred while trying to connect (cURL error 35: error:0A00010B:SSL "
     "routines::wrong version number (see https://curl.haxx.se/libcurl/c/libcurl-errors.html ) "
     "for https://192.168.1.247:80/healthcheck)", "tls_mismatch", "https_to_plain_port"),
    # Python 2's EACCES is an IOError (https://github.com/lucyparsons/OpenOversight/issues/299)
    ("app_logs", "IOError: [Errno 13] Permission denied: '/tmp/openoversight.log'",
     "permission_denied", None),
    # nginx names the socket of another PHP version than the image runs
    # (https://github.com/passbolt/passbolt_docker/issues/245)
    ("nginx_error_log", "connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file or "
     "directory) while connecting to upstream", "wrong_proxy_config",
     "php_socket_version_mismatch"),
    # a socket without a version missing in nginx's container log: php-fpm never started
    # (https://github.com/whatwedo/docker-base-images/issues/38)
    ("docker_logs", "2020/02/20 16:45:08 [crit] 551#551: *1 connect() to "
     "unix:/var/run/php-fpm.sock failed (2: No such file or directory) while connecting to "
     "upstream, client: 172.17.0.1, "
     "server: , request: \"GET / HTTP/1.1\", upstream: \"fastcgi://unix:/var/run/php-fpm.sock:\", "
     "host: \"localhost:5000\"", "upstream_down", None),
    # the dynamic loaders: glibc's (https://github.com/tianon/docker-brew-ubuntu-core/issues/39)
    # and musl's, in a container that exits at once (https://github.com/lkwg82/h2o.docker/issues/1)
    ("docker_logs", "openconnect: error while loading shared libraries: libopenconnect.so.5: "
     "cannot open shared object file: No such file or directory", "upstream_crashloop",
     "shared_library_missing"),
    ("docker_logs", "Error loading shared library libstdc++.so.6: No such file or directory "
     "(needed by /usr/local/bin/h2o)", "upstream_crashloop", "shared_library_missing"),
    # told to listen on an address the container does not have: Node.js
    # (https://github.com/wg-easy/wg-easy/issues/812) and Go
    # (https://github.com/compassvpn/agent/pull/117, a restart loop)
    ("docker_logs", "Error: listen EADDRNOTAVAIL: address not available 192.168.1.230:51821",
     "upstream_crashloop", "bind_address_not_available"),
    ("journal", "listen tcp 172.17.0.1:9100: bind: cannot assign requested address",
     "upstream_crashloop", "bind_address_not_available"),
    # libcurl's errors read the same from PHP (cURL error N) as from the curl tool: the ONLYOFFICE
    # connector's check refused (https://github.com/ONLYOFFICE/onlyoffice-nextcloud/issues/334),
    # timed out with older libcurl's wording (.../issues/160), unresolved (.../issues/231)
    ("healthcheck", "Error when trying to connect (cURL error 7: Failed to connect to "
     "next.myserver.de port 443: Connection refused (see "
     "https://curl.haxx.se/libcurl/c/libcurl-errors.html))\u2716", "upstream_down", None),
    ("healthcheck", "Error when trying to connect (cURL error 28: Operation timed out after 60001 "
     "milliseconds with 0 out of 0 bytes received (see "
     "http://curl.haxx.se/libcurl/c/libcurl-errors.html))", "upstream_timeout", None),
    ("app_logs", "Request converted file on check error: cURL error 6: Could not resolve host: "
     "https,%20https,%20https,%20https,%20https (see "
     "http://curl.haxx.se/libcurl/c/libcurl-errors.html)", "dns_or_network", None),
    # php-fpm exits with EX_CONFIG under systemd, older systemd without the code's name
    # (https://github.com/magenx/Magento-Automated-Server-Configuration-from-MagenX/issues/154)
    ("journal", "Feb 15 18:41:18 server.timestorybag.com systemd[1]: php-fpm.service: main process "
     "exited, code=exited, status=78/n/a", "upstream_crashloop", "exit_config_error"),
    # the Document Server image's nginx names ETIMEDOUT "Unknown error": the number counts
    # (https://github.com/ONLYOFFICE/Docker-DocumentServer/issues/659)
    ("nginx_error_log", "2023/10/05 11:19:29 [error] 6399#6399: *647 upstream timed out (110: "
     "Unknown error) while reading response header from upstream, client: 172.17.0.1, server: , "
     "request: \"POST /ConvertService.ashx HTTP/1.1\", upstream: "
     "\"http://127.0.0.1:8000/ConvertService.ashx\", host: \"localhost:88\"", "upstream_timeout",
     None),
    # PHP clients of a proxy that timed out (https://github.com/ONLYOFFICE/onlyoffice-nextcloud/issues/45)
    ("app_logs", "file_get_contents(https://onlyoffice.mydomin.com/ConvertService.ashx): failed to "
     "open stream: HTTP request failed! HTTP/1.1 504 Gateway Time-out  at "
     "/var/www/nextcloud/apps/onlyoffice/lib/documentservice.php#381", "upstream_timeout", None),
    # Amazon ECS's stop reason for a task container killed at its memory limit
    # (https://github.com/kortix-ai/suna/pull/6705)
    ("docker_ps", "exit 137  OutOfMemoryError: container killed due to memory usage  19:51:01",
     "oom_killed", None),
    # a container's memory at its limit, as docker stats reports it
    # (https://github.com/stefanko-ch/Nexus-Stack/issues/546)
    ("memory", "budibase   CPU 172.95%   MEM 1023MiB / 1GiB  (99.94%)", "oom_killed",
     "container_memory_limit_reached"),
    # an app printing libcurl's curl_error() after its own prefix
    # (https://github.com/elementor/wp2static/issues/326)
    ("app_logs", "cURL error:Could not resolve host", "dns_or_network", None),
    # the ONLYOFFICE editor's token error, as the browser shows it
    # (https://github.com/mickael-kerjean/filestash/issues/516)
    ("browser_console", "The document security token is not correctly formed.", "jwt_mismatch",
     None),
    # PostgreSQL's postmaster finds no address to listen on
    # (https://github.com/jwetzell/docker-guacamole/issues/7)
    ("docker_logs", "FATAL:  could not create any TCP/IP sockets", "dependency_down",
     "database_failed_to_start"),
    # CPython cannot start: its virtualenv's base interpreter is gone
    # (https://github.com/YunoHost-Apps/funkwhale_ynh/issues/114)
    ("journal", "jui 30 11:33:30 funkwhale-server[1435]: Fatal Python error: Py_Initialize: Unable "
     "to get the locale encoding", "upstream_crashloop", "python_environment_broken"),
    # phpredis cannot reach the Redis socket Nextcloud is configured with
    # (https://github.com/Wonderfall/dockerfiles/issues/146)
    ("app_logs", "Redis::connect(): connect() failed: No such file or directory at "
     "/nextcloud/lib/private/RedisFactory.php#61", "dependency_down", None),
    # django-health-check's disk check (https://github.com/cvat-ai/cvat/issues/5685)
    ("app_logs", "health_check.exceptions.ServiceWarning: warning: 88c9187d2d8a 90.7% disk usage "
     "exceeds 90%", "disk_full", None),
    # PostgreSQL refuses a data directory it does not own
    # (https://github.com/Nico640/docker-unms/issues/28)
    ("docker_logs", 'FATAL:  data directory "/config/postgres" has wrong ownership,',
     "permission_denied", "database_data_dir_ownership"),
    # net-tools netstat writes IPv6 without brackets: a backend on ::1 only
    # (https://github.com/firecrawl/firecrawl-mcp-server/issues/251)
    ("listening_ports", "tcp        0      0 ::1:3000                :::*                    "
     "LISTEN      3/node", "wrong_proxy_config", "ipv6_localhost"),
    # SELinux denies the backend's own connect to its database's port
    # (https://github.com/ansible-community/ara/issues/86)
    ("audit_log", "type=AVC msg=audit(1572463010.990:105990): avc:  denied  { name_connect } for  "
     "pid=6039 comm=\"gunicorn\" dest=3306 scontext=system_u:system_r:init_t:s0 "
     "tcontext=system_u:object_r:mysqld_port_t:s0 tclass=tcp_socket permissive=0",
     "permission_denied", "selinux_denial"),
    # Rails cannot write its log file (https://github.com/mlibrary/heliotrope/issues/73)
    ("app_logs", "Rails Error: Unable to access log file. Please ensure that "
     "/opt/heliotrope/releases/20160315192027/log/production.log exists and is writable (ie, make "
     "it writable for user and group: chmod 0664 "
     "/opt/heliotrope/releases/20160315192027/log/production.log). The log level has been raised "
     "to WARN and the output directed to STDERR until the problem is fixed.",
     "permission_denied", None),
    # uvicorn cannot parse what nginx forwards (two Host headers)
    # (https://github.com/rotki/rotki/pull/12544)
    ("app_logs", "Invalid HTTP request received.", "wrong_proxy_config",
     "backend_rejects_proxied_request"),
    # JRuby's Puma fails binding its unix socket over a file left by the last run
    # (https://github.com/puma/puma/issues/475)
    ("app_logs", "add_unix_listener at /usr/local/rvm/gems/jruby-1.7.4@tk/gems/puma-2.7.1-java/lib/"
     "puma/binder.rb:261", "upstream_crashloop", "stale_unix_socket"),
    # a Rails app's Redis refused, in Ruby's own words (its "Caused by:" line)
    # (https://github.com/southbridgeio/redmine_2fa/issues/75)
    ("app_logs", "Errno::ECONNREFUSED: Connection refused - connect(2) for 127.0.0.1:6379",
     "dependency_down", None),
    # nginx out of its own connections (https://github.com/medic/cht-core/issues/2076)
    ("nginx_error_log", "2016/03/14 00:35:26 [alert] 25909#0: *164106 1024 worker_connections are "
     "not enough while connecting to upstream, client: 41.210.155.91, server: _, request: \"GET "
     "/medic/ HTTP/1.1\", upstream: \"http://127.0.0.1:280/medic/\", host: "
     "\"lg.app.medicmobile.org\", referrer: "
     "\"https://lg.app.medicmobile.org/medic/_design/medic/_rewrite/\"", "wrong_proxy_config",
     "worker_connections_exhausted"),
    # the dependencies' own start failures: Redis cannot listen
    # (https://github.com/redis-windows/redis-windows/issues/45; before Redis 5.0 "Creating Server
    # TCP listening socket", https://github.com/nodezoo/nodezoo-workshop/issues/34) and RabbitMQ
    # fails to boot (https://github.com/rabbitmq/rabbitmq-server/issues/3789)
    ("docker_logs", "1988:M 05 May 2025 11:23:04.085 # Failed listening on port 6379 (tcp), "
     "aborting.", "dependency_down", "database_failed_to_start"),
    ("app_logs", "Creating Server TCP listening socket *:6379: bind: Address already in use",
     "dependency_down", "database_failed_to_start"),
    ("app_logs", "2021-11-23 04:37:54.238 [error] <0.271.0> BOOT FAILED", "dependency_down",
     "broker_failed_to_start"),
])
def test_app_server_lines_from_public_logs(rules, step, text, label, detail):
    causes = diagnose(rules, {step: text + "\n"})
    assert (causes[0].cause, causes[0].detail) == (label, detail)
    assert causes[0].evidence == (text,)


def test_a_node_connect_error_to_another_service_is_a_dependency(rules):
    # a Node.js app's own outbound connection refused, on a port no rule knows (a Next.js app
    # proxying to its API, https://github.com/vercel/next.js/issues/24391): what it needs is down
    line = ("Error occurred proxying http://127.0.0.1:8888/somepath Error: connect ECONNREFUSED "
            "127.0.0.1:8888")
    causes = diagnose(rules, {"app_logs": line + "\n"})
    assert (causes[0].cause, causes[0].detail) == ("dependency_down", None)
    assert causes[0].evidence == (line,)
    # on ::1 for "localhost": the Node.js >= 17 address order (https://github.com/adonisjs/core/issues/4253)
    causes = diagnose(rules, {"app_logs": "Error: connect ECONNREFUSED ::1:3306\n"})
    assert (causes[0].cause, causes[0].detail) == ("dependency_down", "ipv6_localhost")
    assert "127.0.0.1" in causes[0].remediation[0]


def test_refused_on_one_address_answered_on_another_is_where_the_backend_listens(rules):
    # wget inside the container: 127.0.0.1 refuses, localhost answers on ::1
    # (https://github.com/overleaf/overleaf/issues/1146)
    name = "wrong_proxy_config--g-overleaf-node-web-on-ipv6-loopback-nginx-127"
    assert not is_held_out(name)
    causes = diagnose(rules, evidence_of(name))
    assert (causes[0].cause, causes[0].detail) == ("wrong_proxy_config",
                                                   "backend_listens_on_other_address")
    assert "Connecting to 127.0.0.1:3000... failed: Connection refused." in causes[0].evidence
    # refused alone, nothing answering elsewhere: no address mismatch
    refused = "\n".join(line for line in step_output(name, "healthcheck").splitlines()
                        if "localhost" not in line and "connected" not in line)
    alone = diagnose(rules, {"healthcheck": refused})
    assert all(c.detail != "backend_listens_on_other_address" for c in alone)


def test_the_document_server_images_own_nginx_dials_its_own_loopback(rules):
    # the ONLYOFFICE image runs nginx and docservice together: 127.0.0.1:8000 from the bridge
    # gateway's client is right there (https://github.com/Euro-Office/DocumentServer/issues/360)
    name = "upstream_crashloop--g-eurooffice-docservice-sigill-libvips-no-sse42"
    assert not is_held_out(name)
    causes = diagnose(rules, {"nginx_error_log": step_output(name, "nginx_error_log")})
    assert all(c.detail != "loopback_inside_container" for c in causes)
    # an nginx container dialing its own 127.0.0.1:9000 for php-fpm still is
    other = "wrong_proxy_config--a-docker-webserver-fastcgi-pass-localhost"
    assert diagnose(rules, evidence_of(other))[0].detail == "loopback_inside_container"


def test_indented_df_output_and_a_socket_missing_in_docker_logs(rules):
    # df pasted indented in a thread (https://github.com/Unitech/pm2/issues/2799)
    df = ("    Filesystem      Size  Used Avail Use% Mounted on\n"
          "    /dev/root        23G   23G   43M 100% /\n")
    causes = diagnose(rules, {"disk": df})
    assert causes[0].cause == "disk_full"
    assert causes[0].evidence == ("    /dev/root        23G   23G   43M 100% /",)
    # nginx in a container logs the missing socket to docker logs
    # (https://github.com/richarvey/nginx-php-fpm: the old config's socket path)
    line = line_of("wrong_proxy_config--a-richarvey-old-config-socket-path", "nginx_error_log",
                   "connect() to unix:")
    assert diagnose(rules, {"docker_logs": line})[0].cause == "wrong_proxy_config"


def test_a_premature_close_then_refused_is_a_backend_that_died_not_a_keepalive_race(rules):
    # the backend crashed mid-request, then refused (https://github.com/untoldone/bloomapi/issues/37)
    name = "upstream_down--a-bloomapi-backend-crash"
    assert not is_held_out(name)
    causes = diagnose(rules, evidence_of(name))
    assert causes[0].cause == "upstream_down"
    assert all(c.detail != "upstream_keepalive_race" for c in causes)
    # the premature close alone is still the keepalive race (a Jetty thread's nginx line)
    jetty = "wrong_proxy_config--a-jetty-upstream-keepalive-race"
    assert diagnose(rules, evidence_of(jetty))[0].detail == "upstream_keepalive_race"


def test_nginx_lines_in_a_containers_log_are_the_symptom_too(rules):
    # nginx's reset line from a uWSGI socket, logged by its container
    # (wrong_proxy_config--a-gatekeeper-pm-uwsgi-buffer-size): with nothing else, the answer is
    # "unknown", not a guess from the weak reset signal
    line = line_of("wrong_proxy_config--a-gatekeeper-pm-uwsgi-buffer-size", "docker_logs",
                   "recv() failed (104:")
    causes = diagnose(rules, {"docker_logs": line + "\n"})
    assert causes[0].cause == "unknown"
    assert causes[0].evidence == (line,)


# nginx 1.22.1 run here: fastcgi_pass to the host's own address, nothing listening on the port
FASTCGI_REFUSED = (
    '2026/12/01 00:55:11 [error] 10399#10399: *1 connect() failed (111: Connection refused) while '
    'connecting to upstream, client: 127.0.0.1, server: app.lab.test, request: "GET /index.php '
    'HTTP/1.1", upstream: "fastcgi://192.0.2.2:19882", host: "127.0.0.1:19881"')


def test_an_nginx_line_a_thread_wrapped_is_read_whole_and_quoted_as_written(rules):
    whole = diagnose(rules, {"nginx_error_log": FASTCGI_REFUSED + "\n"})
    assert (whole[0].cause, whole[0].detail) == ("wrong_proxy_config",
                                                 "backend_listens_on_loopback")
    # as threads quote it: the context pushed onto lines of their own (trailing blanks kept)
    head, _, rest = FASTCGI_REFUSED.partition(" client: ")
    context, _, tail = rest.partition(" upstream: ")
    wrapped = [head + " ", "client: " + context, "  upstream: " + tail]
    causes = diagnose(rules, {"nginx_error_log": "\n".join(wrapped) + "\n"})
    assert (causes[0].cause, causes[0].detail, causes[0].confidence) == \
        (whole[0].cause, whole[0].detail, whole[0].confidence)
    assert causes[0].evidence == tuple(line.rstrip() for line in wrapped)
    # its first line alone is the bare refusal; the context is not joined to another line
    alone = diagnose(rules, {"nginx_error_log": wrapped[0] + "\n",
                             "docker_logs": "\n".join(wrapped[1:]) + "\n"})
    assert alone[0].cause == "upstream_down"
    assert alone[0].evidence == (wrapped[0].rstrip(),)


def test_a_fastcgi_reset_is_a_php_worker_that_died_and_the_php_fpm_log_says_how(rules):
    # nginx keeps no FastCGI connection alive: reset before the response header, a php-fpm child
    # died on the request (https://github.com/ddev/ddev/issues/2542, logged by nginx's container).
    # Alone, a candidate under the threshold; the master's "exited on signal 9 (SIGKILL)" next to
    # it names the memory (the case's label)
    name = "oom_killed--a-ddev-php-fpm-sigkill"
    line = line_of(name, "docker_logs", "recv() failed (104:")
    alone = diagnose(rules, {"docker_logs": line + "\n"})
    assert (alone[0].cause, alone[0].detail) == ("upstream_crashloop", "php_worker_died_on_request")
    assert alone[0].confidence < rules.threshold and alone[0].evidence == (line,)
    assert diagnose(rules, evidence_of(name))[0].cause == "oom_killed"


def test_a_port_taken_by_another_process_is_a_crash_loop_with_its_detail(rules):
    causes = diagnose(rules, evidence_of("upstream_crashloop--b-ynh-docservice-eaddrinuse-8000"))
    assert (causes[0].cause, causes[0].detail) == ("upstream_crashloop", "port_already_in_use")
    assert "ss -ltnp" in causes[0].remediation[0]


def test_repeats_counts_lines_with_the_same_matched_text(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "causes:\n"
        "  upstream_crashloop:\n"
        "    summary: loop\n"
        "    signals:\n"
        "      - {step: a, pattern: 'died: \\w+', repeats: 3, weight: 0.9}\n",
        encoding="utf-8")
    rules = load_rules(path)
    assert diagnose(rules, {"a": "died: x\ndied: y\ndied: x\n"}) == []  # x twice, y once
    causes = diagnose(rules, {"a": "died: x\ndied: y\ndied: x\nok\ndied: x\n"})
    assert [c.cause for c in causes] == ["upstream_crashloop"]
    assert causes[0].evidence == ("died: x",)


@pytest.mark.parametrize("evidence", [
    {},
    {"nginx_error_log": None, "proxy_check": None},
    {"nginx_error_log": 502, "healthcheck": 3.5, "docker_inspect": True},
    {"docker_inspect": {"State": {"OOMKilled": True}}, "docker_ps": ["not", {"a": object()}]},
    {"kernel_log": b"\xff\xfe Out of memory: Killed process 1 (x)\n"},
    {7: "numbers as keys", "unknown_step": "HTTP 502"},
    {"nginx_error_log": "x" * 20_000 + "\n" + "\x00\udcff\n"},
])
def test_odd_input_does_not_crash(rules, evidence):
    causes = diagnose(rules, evidence, {"upstream_port": None, "program": object()})
    assert isinstance(causes, list)
    for since in ("2026-11-22", 0, datetime(1, 1, 1), datetime(9999, 12, 31, tzinfo=UTC),
                  Clock(since=datetime(2026, 11, 22), booted_at=datetime(2026, 1, 1, tzinfo=UTC))):
        assert isinstance(diagnose(rules, evidence, {}, since=since), list)  # type: ignore[arg-type]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_values_that_cannot_be_read_are_skipped(rules):
    causes = diagnose(rules, {"proxy_check": Unprintable(), "nginx_error_log": "HTTP 502"},
                      {"program": Unprintable()})
    assert causes == []


@pytest.mark.parametrize("evidence", [None, "HTTP 502", ["HTTP 502"], 42])
def test_evidence_that_is_not_a_mapping_yields_nothing(rules, evidence):
    assert diagnose(rules, evidence, ["not", "a", "mapping"]) == []


def test_huge_output_is_bounded(rules):
    line = ('2026/11/22 03:04:34 [error] 6152#6152: *3 connect() failed (111: Connection refused) '
            'while connecting to upstream, client: 127.0.0.1, server: docs.lab.test\n')
    huge = "noise line that matches nothing in particular\n" * 230_000 + line  # ~10 MB
    assert len(huge) > 10_000_000
    started = time.monotonic()
    causes = diagnose(rules, {"nginx_error_log": huge, "app_logs": "y" * 10_000_000}, PARAMS)
    assert time.monotonic() - started < 10
    assert causes[0].cause == "upstream_down"
    assert causes[0].evidence == (line.rstrip(),)


# ---------------------------------------------------------------- rule validation


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD_CAUSE = ("causes:\n"
              "  upstream_down:\n"
              "    summary: down\n"
              "    remediation: [start_program]\n"
              "    signals:\n"
              "      - {step: healthcheck, pattern: 'curl: \\(7\\)', weight: 0.5}\n")


def test_shipped_rules_cover_every_label(rules):
    assert set(rules.causes) == set(LABELS)


def test_minimal_rules_load(tmp_path):
    assert set(load_rules(write(tmp_path, GOOD_CAUSE)).causes) == {"upstream_down"}


@pytest.mark.parametrize(("text", "line", "words"), [
    (GOOD_CAUSE.replace("    summary: down\n", "    summary: down\n    sumary: typo\n"),
     4, "unknown field 'sumary'"),
    (GOOD_CAUSE + "      - step: healthcheck\n"
                  "        pattern: 'HTTP (5\\d\\d'\n        weight: 0.3\n",
     8, "bad regex"),
    (GOOD_CAUSE + "  upstream_gone:\n    summary: x\n"
                  "    signals: [{step: a, pattern: b, weight: 0.1}]\n",
     7, "unknown cause label 'upstream_gone'"),
    (GOOD_CAUSE.replace("[start_program]", "[start_programme]"),
     4, "unknown remediation step 'start_programme'"),
    (GOOD_CAUSE.replace("'curl: \\(7\\)'", "':{upstream_prot}\\b'"),
     6, "unknown parameter {upstream_prot}"),
    (GOOD_CAUSE.replace("weight: 0.5", "weight: 1.5"), 6, "less than or equal to 1"),
    (GOOD_CAUSE.replace("      - {step: healthcheck", "      - {stepp: healthcheck"),
     6, "unknown field 'stepp'"),
    (GOOD_CAUSE.replace("    summary: down\n", ""), 2, "summary: Field required"),
    (GOOD_CAUSE + "      - step: a\n        pattern: b\n        weight: 0.2\n        also:\n"
     "          - {step: c, patern: d}\n", 11, "also.0.patern: unknown field"),
    ("causes:\n  upstream_down: {summary: [unclosed\n", 3, "YAML syntax error"),
    (GOOD_CAUSE + "  upstream_down:\n    summary: again\n", 7, "duplicate key 'upstream_down'"),
    ("- just\n- a list\n", 1, "mapping"),
    (GOOD_CAUSE + "      - {step: a, pattern: b, weight: 0.2, absent: true, repeats: 2}\n",
     7, "an absence cannot repeat"),
])
def test_rule_errors_name_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(RunbookInvalid) as caught:
        load_rules(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message
    assert "\n" not in message


def test_missing_rules_file_is_a_runbook_error(tmp_path):
    with pytest.raises(RunbookInvalid, match=r"nope\.yaml:1: cannot read rules"):
        load_rules(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- evidence files


def test_load_evidence_reads_an_object_and_unwraps_a_corpus_case(tmp_path):
    plain = tmp_path / "e.json"
    plain.write_text('{"proxy_check": "HTTP 502\\n"}', encoding="utf-8")
    assert load_evidence(plain) == {"proxy_check": "HTTP 502\n"}
    case = LAB[0]
    assert load_evidence(case) == load_case(case)["evidence"]


@pytest.mark.parametrize(("text", "words"), [
    ('{"proxy_check": "HTTP 502"', "not valid JSON"),
    ('["HTTP 502"]', "must be a JSON object"),
    ("", "not valid JSON"),
])
def test_bad_evidence_is_one_clear_line(tmp_path, text, words):
    path = tmp_path / "e.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EvidenceInvalid) as caught:
        load_evidence(path)
    assert isinstance(caught.value, BotError)
    assert str(caught.value).startswith(str(path)) and words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_evidence_file(tmp_path):
    with pytest.raises(EvidenceInvalid, match="cannot read evidence"):
        load_evidence(tmp_path / "missing.json")


@pytest.mark.parametrize(("pattern", "needles"), [
    ("upstream prematurely closed connection", ("upstream prematurely closed connection",)),
    (r"\(111: [^)]*\) while connecting to.*upstream", (") while connecting to",)),
    (r"Starting gunicorn [\d.]+|\*\*\* Starting uWSGI", ("Starting gunicorn ",
                                                        "*** Starting uWSGI")),
    (r"^Mem:\s+\d{1,3}\s", ("Mem:",)),
    (r"a(?:bc)?d|(?:xyz){0,3}", ()),  # a branch that needs nothing: no shortcut
    (r"(?i:No space left on)|\bENOSPC\b", ()),  # case-insensitive: no shortcut
    (r"(?i)enospc", ()),
    (r"(?:refused){2,}", ("refused",)),
])
def test_a_regex_is_searched_only_in_text_holding_what_every_match_needs(pattern, needles):
    assert _needles(pattern) == needles


def shortcut_faults(rules, monkeypatch, paths, shortcut, lets_through):
    """(cases diagnosed otherwise with `shortcut` of bot.diagnosis off, case count, lines a
    rule's regex matches that `lets_through(pattern, line)` rules out)."""
    cases = [load_case(p) for p in paths]
    fast = [diagnose_case(rules, case) for case in cases]
    patterns = {c.pattern for cause in rules.causes.values() for s in cause.signals
                for c in (s, *s.also, *s.unless) if "{" not in c.pattern}
    missed = 0
    for case in cases:
        for text in case["evidence"].values():
            for line in (text if isinstance(text, str) else json.dumps(text)).splitlines():
                missed += sum(1 for p in patterns if re.search(p, line)
                              and not lets_through(p, line))
    monkeypatch.setattr(f"bot.diagnosis.{shortcut}", lambda pattern: ())
    slow = [diagnose_case(rules, case) for case in cases]
    differ = sum(1 for a, b in zip(fast, slow, strict=True) if a != b)
    return differ, len(cases), missed


def test_the_search_shortcut_changes_no_diagnosis(rules, monkeypatch):
    """Every case of the corpus is diagnosed the same with and without the substring test that
    rules texts out before a regex scan; and on every line a rule's regex matches, the test
    lets it through (held-out cases are compared, never printed)."""
    differ, cases, missed = shortcut_faults(
        rules, monkeypatch, [*TRAIN, *HELD_OUT, *UNRESOLVED], "_needles",
        lambda p, line: _may_match(_needles(p), line))
    assert (differ, missed) == (0, 0), f"{differ} of {cases} cases differ"


@pytest.mark.parametrize(("pattern", "also"), [
    (r"(?:^|\s)nginx\.1\s+\|\s.*\((?:111|61): [^)]*\) while connecting to upstream",
     (("nginx.1",), ("111", "61"), (": ",))),  # besides the longest, `) while connecting to
    # upstream`; the most selective first
    (r"upstream prematurely closed connection", ()),  # one run: nothing more
    (r"Starting gunicorn [\d.]+|\*\*\* Starting uWSGI", ()),
    (r"(?i)enospc (?:bad|worse)", ()),  # case-insensitive: no shortcut
    (r"abc(?i:defgh)xy", (("xy",),)),  # the case-insensitive part counts for nothing
    (r"abcd(?:ef)?gh", (("gh",),)),  # optional: not needed
])
def test_a_regex_is_searched_only_in_text_holding_every_run_it_needs(pattern, also):
    assert _also_needed(pattern) == also


def test_the_every_run_shortcut_changes_no_diagnosis(rules, monkeypatch):
    """The training and unresolved cases are diagnosed the same with and without the test of
    the further texts a regex needs; and on every line a rule's regex matches, each of them is
    there."""
    differ, cases, missed = shortcut_faults(
        rules, monkeypatch, [*TRAIN, *UNRESOLVED], "_also_needed",
        lambda p, line: all(_may_match(group, line) for group in _also_needed(p)))
    assert (differ, missed) == (0, 0), f"{differ} of {cases} cases differ"


@pytest.mark.parametrize(("pattern", "folded"), [
    (r"(?i:No space left on)|\bENOSPC\b", ("no space left on", "enospc")),
    (r"(?i)Too Many", ("too many",)),
    (r"(?i:inotify\w*|watch(?:ing|er)?\b).*(?i:no space left on device)",
     ("no space left on device",)),
    (r"(?i:caf\u00e9 ok)", ("caf",)),  # only ASCII: the regex module folds more than lower()
    (r"a(?:bc)?d|(?i:xyz){0,3}", ()),
])
def test_a_case_insensitive_regex_is_searched_only_in_text_holding_it_in_lower_case(
        pattern, folded):
    assert _folded(pattern) == folded


def test_the_case_insensitive_shortcut_changes_no_diagnosis(rules, monkeypatch):
    """The training and unresolved cases are diagnosed the same with and without the lower-case
    substring test of the regexes with a case-insensitive branch; and on every ASCII line a
    rule's regex matches, that test lets the line through."""
    differ, cases, missed = shortcut_faults(
        rules, monkeypatch, [*TRAIN, *UNRESOLVED], "_folded",
        lambda p, line: (not line.isascii() or not _folded(p)
                         or _may_match(_folded(p), line.lower())))
    assert (differ, missed) == (0, 0), f"{differ} of {cases} cases differ"


def test_a_database_that_cannot_listen_is_a_dependency_not_the_backends_crash_loop(rules):
    # PostgreSQL under systemd, its port taken (a public troubleshooting note quoting the journal,
    # https://github.com/Fzwsk/SysAdm-Doc, PostgreSQL/postgre-Troubleshooting): the database's own
    # start failure is what the backend lacks, whatever made it fail
    prefix = "Jan 30 21:40:32 brj2prdsmlmst.solusi247.com pg_ctl[3590]: "
    journal = "".join(prefix + line + "\n" for line in (
        "LOG:  could not bind IPv6 socket: Address already in use",
        'WARNING:  could not create listen socket for "*"',
        "FATAL:  could not create any TCP/IP sockets"))
    journal += prefix.replace(":32 ", ":33 ") + "pg_ctl: could not start server\n"
    causes = diagnose(rules, {"journal": journal})
    assert (causes[0].cause, causes[0].detail) == ("dependency_down", "database_failed_to_start")
    assert causes[0].evidence[0].endswith("pg_ctl: could not start server")


def test_proxy_only_tells_the_proxys_side_from_the_backends():
    """The report's breadth table: nginx's lines (its own steps, or its container's log holding
    only error-log lines) are the proxy's side; one line of anything else is not."""
    from bench.diagnosis_report import proxy_only

    nginx = next(p for p in TRAIN if p.stem == "upstream_down--nginx-log-only")
    line = load_case(nginx)["evidence"]["nginx_error_log"].splitlines()[0]
    assert proxy_only({"evidence": {"nginx_error_log": line, "proxy_check": "HTTP 502\n"}})
    assert proxy_only({"evidence": {"docker_logs": f"nginx_1  | {line}\n"}})
    assert not proxy_only({"evidence": {"docker_logs": f"nginx_1  | {line}\n"
                                                       "app_1  | Worker failed to boot.\n"}})
    assert not proxy_only({"evidence": {"nginx_error_log": line,
                                        "supervisorctl_status": "app  STOPPED  Nov 22 03:04 AM\n"}})
