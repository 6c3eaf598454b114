"""Measure the 502 diagnosis rules on the evidence corpus and write docs/diagnosis.md.

    python bench/diagnosis_report.py [--rules RULES.yaml] [--out docs/diagnosis.md] [--train-only]

Top-1: the labelled cause is ranked first. Top-3: it is among the first three causes returned.

The corpus is the lab captures (tests/data/evidence/*.json) and the field cases quoted from public
issue threads (tests/data/evidence/field/*.json). A fixed third of the field cases is held out
(`is_held_out`): rules are tuned on the rest (the training part) only, with --train-only. Held-out
cases are measured only as totals: this script never prints a held-out case's name or contents.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bot.diagnosis import (  # noqa: E402
    LABELS,
    Rules,
    current_lines,
    diagnose,
    load_rules,
)
from bot.models import Cause  # noqa: E402
from bot.similar import Incident, Library, dump, load_library, term_counts  # noqa: E402
from bot.yamlload import SAFE_LOADER  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "evidence"
FIELD = CORPUS / "field"
Part = Literal["train", "held_out", "all"]
LAB_STACK = "lab stand-in (nginx, supervisord/Docker)"


# ---------------------------------------------------------------- the split (the only one)


def _frozen_split() -> dict[str, bool]:
    """slug -> held out, from field/SPLIT.txt (the split frozen at 190 cases)."""
    split: dict[str, bool] = {}
    for line in (FIELD / "SPLIT.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            slug, part = line.split()
            split[slug] = part == "held_out"
    return split


SPLIT = _frozen_split()


def case_slug(stem: str) -> str:
    """A case's name without its label: `upstream_down--a-x` -> `a-x` (a relabel keeps it)."""
    return stem.split("--", 1)[-1]


def is_held_out(stem: str) -> bool:
    """A field case is held out as field/SPLIT.txt says; a case added after it was frozen is held
    out when the SHA-256 of its slug (the file name after `<label>--`) is 0 mod 3."""
    slug = case_slug(stem)
    if slug in SPLIT:
        return SPLIT[slug]
    return int(hashlib.sha256(slug.encode()).hexdigest(), 16) % 3 == 0


def corpus_cases(part: Part) -> list[Path]:
    """The case files of one part: 'train' = lab captures + field cases not held out;
    'held_out' = the held-out field cases; 'all' = both."""
    lab = sorted(CORPUS.glob("*.json"))
    field = sorted(FIELD.glob("*.json"))
    held = [p for p in field if is_held_out(p.stem)]
    train = lab + [p for p in field if not is_held_out(p.stem)]
    return {"train": train, "held_out": held, "all": train + held}[part]


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def case_since(case: dict[str, Any]) -> datetime | None:
    """The incident's start a case records (`since`, ISO 8601), if any."""
    raw = case.get("since")
    try:
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def diagnose_case(rules: Rules, case: dict[str, Any], *, case_id: str | None = None,
                  library: Library | None = None, leave_out: Iterable[str] = ()) -> list[Cause]:
    """Diagnose a corpus case. The past incidents compared with are `library`, else the rules'
    own; a training case is one of them: `case_id` (its file stem) leaves it out, so that it is
    compared with the others only, as if it were new; `leave_out` names more to leave out (the
    cases its collector gathered, to measure without their near-duplicates)."""
    if library is None and rules.similar is not None:
        library = load_library(Path(rules.similar))
    out = [case_id, *leave_out] if case_id is not None else list(leave_out)
    if library is not None and out:
        library = library.without(*out)
    return diagnose(rules, case["evidence"], case.get("params") or {}, since=case_since(case),
                    library=library)


# ---------------------------------------------------------------- past incidents (training only)

def incident_of(path: Path) -> Incident:
    """A training case as a past incident: the terms of its current lines and its cause."""
    case = load_case(path)
    source = case.get("source_url") or f"lab capture tests/data/evidence/{path.name}"
    return Incident(id=path.stem, cause=case["label"], source=str(source),
                    terms=term_counts(current_lines(case["evidence"], case_since(case))))


def write_library(rules_path: Path) -> Path | None:
    """Write the rules' past-incidents file (its `similar:`) from the training part only."""
    data = yaml.load(rules_path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)  # noqa: S506
    name = data.get("similar") if isinstance(data, dict) else None
    if not name:
        return None
    out = rules_path.parent / str(name)
    text = dump(incident_of(p) for p in corpus_cases("train"))
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")
    return out


# ---------------------------------------------------------------- measuring

STACKS: tuple[tuple[str, str], ...] = (  # first match of the case's text wins
    ("onlyoffice", r"(?i)onlyoffice|docservice|documentserver|converter|\bds:"),
    ("php-fpm", r"(?i)php-?fpm|php\d(?:\.\d)?-fpm|fastcgi"),
    ("uwsgi", r"(?i)uwsgi"),
    ("gunicorn", r"(?i)gunicorn"),
    ("unicorn/puma", r"(?i)\bunicorn|\bpuma\b|passenger"),
    ("java", r"(?i)\bjava\b|tomcat|spring|jetty|\.jar\b"),
    ("go", r"(?i)\bgolang\b|\bgo \d|panic: |goroutine "),
    ("node", r"(?i)\bnode(?:js|\.js)?\b|\bnpm\b|\bpm2\b|ECONN|EADDRINUSE"),
    ("python", r"(?i)python|django|flask|uvicorn|Traceback \(most recent"),
)


def stack_of(case: dict[str, Any]) -> str:
    """The backend's stack: the case's own `stack`, else guessed from its text."""
    if isinstance(case.get("stack"), str) and case["stack"]:
        return str(case["stack"])
    text = json.dumps(case.get("evidence"), ensure_ascii=False) + " " + str(case.get("source"))
    for name, pattern in STACKS:
        if re.search(pattern, text):
            return name
    if re.search(r"(?i)docker|container", text):
        return "docker (other)"
    return "other"


def collector(path: Path) -> str:
    """Who gathered a case: a field case's prefix (`<label>--<prefix>-<slug>`: one helper's
    batch, often several threads of one project); the lab captures are one collector."""
    return case_slug(path.stem).split("-", 1)[0] if path.parent == FIELD else "lab"


def measure(rules: Rules, paths: Iterable[Path], library: Library | None = None, *,
            grouped: bool = False) -> list[dict[str, Any]]:
    """Diagnose each case, each compared with the past incidents but itself; `grouped`: but any
    case of its collector (leave-one-collector-out: what a new thread would find)."""
    paths = list(paths)
    mates: dict[str, list[str]] = defaultdict(list)
    if grouped:
        for path in paths:
            mates[collector(path)].append(path.stem)
    rows = []
    for path in paths:
        case = load_case(path)
        causes = diagnose_case(rules, case, case_id=path.stem, library=library,
                               leave_out=mates[collector(path)])
        ranked = [c.cause for c in causes]
        rows.append({
            "case": path.stem, "label": case["label"], "ranked": ranked,
            "confidences": [round(c.confidence, 2) for c in causes],
            "top1": ranked[:1] == [case["label"]] or (not ranked and case["label"] == "unknown"),
            "top3": case["label"] in ranked[:3] or (not ranked and case["label"] == "unknown"),
            "origin": (kind := "field" if path.parent == FIELD else origin(case["source"])),
            "stack": LAB_STACK if kind == "lab" else stack_of(case),
            "steps": sorted(case["evidence"]),
            "proxy_only": proxy_only(case),
        })
    return rows


PROXY_STEPS = frozenset({"nginx_error_log", "proxy_check", "nginx_config_test"})
NGINX_LOG_LINE = re.compile(r"\[(?:emerg|alert|crit|error|warn|notice|info)\] \d+#\d+: ")


def proxy_only(case: dict[str, Any]) -> bool:
    """Does the case show only the proxy's side: its steps are nginx's (error log, probe
    through it, `nginx -t`), and any other step holds nothing but nginx error-log lines (nginx's
    own container log)? Nothing of the backend, its manager or the host."""
    lines = current_lines(case["evidence"], case_since(case))
    return all(step in PROXY_STEPS or all(NGINX_LOG_LINE.search(line) for line in step_lines)
               for step, step_lines in lines.items())


def origin(source: str) -> str:
    """'lab' (captured here), 'quoted' (from a public issue or page) or 'mixed'."""
    if source.startswith(("Reproduced for real", "live lab:")):
        return "lab"
    lab = any(w in source for w in ("Reproduced for real", "run for real", "captured in the lab"))
    return "mixed" if lab else "quoted"


def rate(hits: int, n: int) -> str:
    return f"{hits}/{n} ({100 * hits / n:.0f}%)" if n else "-"


def summary_table(train: list[dict[str, Any]], held: list[dict[str, Any]] | None,
                  alone: tuple[list[dict[str, Any]], list[dict[str, Any]] | None] | None = None
                  ) -> str:
    """Top-1/top-3 of each part; with `alone` (the same parts diagnosed by the rules without
    past incidents) a second column pair says what the comparison adds."""
    def cells(rows: list[dict[str, Any]]) -> str:
        return (f"{rate(sum(r['top1'] for r in rows), len(rows))} "
                f"| {rate(sum(r['top3'] for r in rows), len(rows))}")

    def field(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["origin"] == "field"]

    extra = " rules alone: top-1 | rules alone: top-3 |" if alone else ""
    out = ["| part | cases | top-1 | top-3 |" + extra,
           "|---|---:|---:|---:|" + ("---:|---:|" if alone else "")]
    parts: list[tuple[str, list[dict[str, Any]] | None, list[dict[str, Any]] | None]] = [
        ("training: lab captures + field (not held out)", train, alone[0] if alone else None),
        ("of which field cases", field(train), field(alone[0]) if alone else None),
        ("**held-out field third**", held, alone[1] if alone else None)]
    for name, rows, rows_alone in parts:
        if rows is None:
            out.append(f"| {name} | not measured in this run | | |" + (" | |" if alone else ""))
            continue
        more = f" {cells(rows_alone)} |" if rows_alone is not None else ""
        out.append(f"| {name} | {len(rows)} | {cells(rows)} |{more}")
    return "\n".join(out)


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    out = ["| label | cases | top-1 | top-3 | runner-up seen most |", "|---|---:|---:|---:|---|"]
    for label in LABELS:
        group = by_label.get(label, [])
        seconds = Counter(r["ranked"][1] for r in group if len(r["ranked"]) > 1)
        runner = ", ".join(f"`{k}` ({v})" for k, v in seconds.most_common(2)) or "none"
        out.append(f"| `{label}` | {len(group)} | {rate(sum(r['top1'] for r in group), len(group))}"
                   f" | {rate(sum(r['top3'] for r in group), len(group))} | {runner} |")
    n = len(rows)
    out.append(f"| **all** | {n} | {rate(sum(r['top1'] for r in rows), n)} "
               f"| {rate(sum(r['top3'] for r in rows), n)} | |")
    return "\n".join(out)


def stack_table(train: list[dict[str, Any]], held: list[dict[str, Any]] | None) -> str:
    stacks = sorted({r["stack"] for r in train} | {r["stack"] for r in held or []})
    out = ["| stack | training cases | training top-1 | held-out cases | held-out top-1 |",
           "|---|---:|---:|---:|---:|"]
    for stack in stacks:
        t = [r for r in train if r["stack"] == stack]
        h = [r for r in held or [] if r["stack"] == stack]
        held_cells = (f"{len(h)} | {rate(sum(r['top1'] for r in h), len(h))}" if held is not None
                      else "- | -")
        out.append(f"| {stack} | {len(t)} | {rate(sum(r['top1'] for r in t), len(t))} "
                   f"| {held_cells} |")
    return "\n".join(out)


def breadth_table(train: list[dict[str, Any]], held: list[dict[str, Any]] | None) -> str:
    """Top-1 of the field cases by what their evidence shows: the proxy's side only, or more."""
    out = ["| evidence | training field cases | training top-1 | held-out cases | held-out top-1 |",
           "|---|---:|---:|---:|---:|"]
    for name, want in (("the proxy's side only (nginx's lines)", True),
                       ("the backend, its manager or the host too", False)):
        t = [r for r in train if r["origin"] == "field" and r["proxy_only"] is want]
        h = [r for r in held or [] if r["proxy_only"] is want]
        held_cells = (f"{len(h)} | {rate(sum(r['top1'] for r in h), len(h))}" if held is not None
                      else "- | -")
        out.append(f"| {name} | {len(t)} | {rate(sum(r['top1'] for r in t), len(t))} "
                   f"| {held_cells} |")
    return "\n".join(out)


def confusion_matrix(rows: list[dict[str, Any]]) -> str:
    """Labelled (rows) against ranked first (columns); 'none' = no cause returned."""
    firsts = [(r["label"], (r["ranked"] or ["none"])[0]) for r in rows]
    cols = [c for c in (*LABELS, "none") if any(f == c for _, f in firsts)]
    short = {label: label.replace("upstream_", "up_").replace("_", " ") for label in cols}
    out = ["| labelled \\ first | " + " | ".join(short[c] for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    counts = Counter(firsts)
    for label in LABELS:
        if any(lab == label for lab, _ in firsts):
            cells = [str(counts[(label, c)] or "") if c != label else f"**{counts[(label, c)]}**"
                     for c in cols]
            out.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def confusion(rows: list[dict[str, Any]]) -> str:
    misses = [r for r in rows if not r["top1"]]
    if not misses:
        lines = ["No top-1 confusions: every training case's labelled cause is ranked first.", ""]
    else:
        lines = ["| case | labelled | ranked first |", "|---|---|---|"]
        lines += [f"| {r['case']} | `{r['label']}` | `{(r['ranked'] or ['nothing'])[0]}` |"
                  for r in misses]
        lines.append("")
    close = sorted((r for r in rows if r["top1"] and len(r["confidences"]) > 1),
                   key=lambda r: r["confidences"][0] - r["confidences"][1])[:8]
    lines += ["Closest calls (smallest margin between the first and second cause):", "",
              "| case | first | second | margin |", "|---|---|---|---:|"]
    lines += [f"| {r['case']} | `{r['ranked'][0]}` {r['confidences'][0]} | `{r['ranked'][1]}` "
              f"{r['confidences'][1]} | {r['confidences'][0] - r['confidences'][1]:.2f} |"
              for r in close]
    return "\n".join(lines)


def case_table(rows: list[dict[str, Any]]) -> str:
    out = ["| case | origin | stack | steps | ranked (confidence) |", "|---|---|---|---|---|"]
    for r in rows:
        ranked = ", ".join(f"`{c}` {p}" for c, p in zip(r["ranked"][:3], r["confidences"][:3],
                                                         strict=False))
        mark = "" if r["top1"] else " **(miss)**"
        out.append(f"| {r['case']}{mark} | {r['origin']} | {r['stack']} | "
                   f"{', '.join(r['steps'])} | {ranked} |")
    return "\n".join(out)


def render(train: list[dict[str, Any]], held: list[dict[str, Any]] | None,
           rules_path: Path,
           alone: tuple[list[dict[str, Any]], list[dict[str, Any]] | None] | None = None,
           grouped: list[dict[str, Any]] | None = None) -> str:
    origins = Counter(r["origin"] for r in train)
    rel = rules_path.relative_to(ROOT) if rules_path.is_relative_to(ROOT) else rules_path
    held_matrix = (confusion_matrix(held) if held is not None
                   else "Not measured in this run (`--train-only`).")
    return TEMPLATE.format(
        rules=rel, n=len(train), lab=origins["lab"], quoted=origins["quoted"],
        mixed=origins["mixed"], field=origins["field"],
        held_n=len(held) if held is not None else len(corpus_cases("held_out")),
        summary=summary_table(train, held, alone), accuracy=accuracy_table(train),
        grouped=rate(sum(r["top1"] for r in grouped), len(grouped)) if grouped else "not measured",
        stacks=stack_table(train, held), breadth=breadth_table(train, held),
        matrix=confusion_matrix(train), held_matrix=held_matrix,
        confusion=confusion(train), cases=case_table(train),
        signal_fields=table(("field", "meaning"), SIGNAL_FIELDS),
        step_commands=table(("step", "command the runbook runs (as captured here)"),
                            STEP_COMMANDS))


SIGNAL_FIELDS = [
    ("`step`", "the evidence step id, or a list of them, whose output is searched"),
    ("`pattern`", "a Python regex applied to each line; `{upstream_port}`, `{upstream_host}`, "
                  "`{program}`, `{container}`, `{container_port}` are replaced by the runbook "
                  "parameter, escaped; a signal whose parameter is not given is skipped; "
                  "`{^}` is where a log message starts: the line's start or the end of a log "
                  "collector's envelope (docker compose's `web-1  | `, journald's `prog[123]: `, "
                  "`docker logs --timestamps`, s6-log's `T` and `t`, supervisord's, Heroku's, "
                  "the CRI file's; `MESSAGE_START` in bot/logline.py), not any colon"),
    ("`weight`", "0..1, how strongly the signal alone points at the cause"),
    ("`absent: true`", "fire when the step was run and **no** line matches "
                       "(e.g. nothing listens on the upstream port)"),
    ("`repeats: N`", "the signal (or an `also`/`unless` condition) holds only when the same "
                     "matched text is on at least N lines: a fatal line or a start banner "
                     "printed again and again means the backend was restarted"),
    ("`also`", "more `{step, pattern, absent}` conditions that must all hold too (something "
               "listens on the port *and* connecting to it is refused = bound to the wrong "
               "address)"),
    ("`role: against`", "when it fires it lowers this cause instead of raising it"),
    ("`contradicts: [labels]`", "when it fires it also lowers those causes "
                                "(OOMKilled true lowers `upstream_crashloop`)"),
    ("`suggests: [step ids]`", "remediation steps or advice offered when it fires "
                               "(STOPPED suggests `start_program`)"),
    ("`unless`", "`{step, pattern, absent}` conditions of which none may hold (refused on "
                 "`[::1]` is `ipv6_localhost` *unless* nothing listens on that port at all)"),
    ("`(?P<name>...)`", "a named group of the signal's own pattern fills `{name}` in its `also` "
                        "and `unless` conditions (the port or address the line names)"),
    ("`detail`", "a finer cause (`ipv6_localhost`); the strongest firing signal with one names "
                 "the cause's detail, and its `suggests` come first"),
    ("`source`", "where the pattern's wording was seen (a public thread or the program)"),
]

DEPS_PROBE = (
    "for dep in rabbitmq:127.0.0.1:5672 redis:127.0.0.1:6379 postgresql:127.0.0.1:5432; do "
    "name=${dep%%:*}; hp=${dep#*:}; "
    'if err=$(timeout 3 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:}" 2>&1); '
    'then echo "$name $hp reachable"; '
    'elif [ -z "$err" ]; then echo "$name $hp unreachable: timed out"; '
    'else echo "$name $hp unreachable: ${err##*: }"; fi; done')

STEP_COMMANDS = [
    ("`healthcheck`", "`curl -sS -m 5 -o - -w '\\nHTTP %{http_code}\\n' "
                      "http://127.0.0.1:PORT/healthcheck 2>&1` on the host: `true` + `HTTP 200`, "
                      "or `curl: (7) Failed to connect ... Couldn't connect to server` + "
                      "`HTTP 000`"),
    ("`proxy_check`", "the same through nginx: the error page and `HTTP 502`"),
    ("`nginx_error_log`, `nginx_config_test`", "`tail -n 20 error.log`, `nginx -t 2>&1`"),
    ("`supervisorctl_status`, `systemctl_status`", "`supervisorctl status`, "
                                                   "`systemctl status UNIT`"),
    ("`journal`", "the service manager's log: `journalctl -u UNIT`, "
                  "or the tail of `supervisord.log`"),
    ("`listening_ports`", "`ss -ltnp` (`netstat -ltnp` output works with the same patterns)"),
    ("`docker_ps`, `docker_inspect`, `docker_logs`", "`docker ps -a`, `docker inspect NAME` "
                                                     "(JSON), `docker logs --tail 20 NAME 2>&1`"),
    ("`app_logs`", "the backend's own log (OnlyOffice `docservice/out.log`)"),
    ("`memory`, `kernel_log`, `disk`", "`free -m`, `dmesg \\| tail`, `df -h`"),
    ("`dns`", "`nslookup UPSTREAM_HOST` (busybox nslookup in the captures; `getent hosts` "
              "output is read too): an answer that lacks the address nginx dials is a stale "
              "address"),
    ("`browser_console`", "the browser console's lines a reporter copied (Chrome's `Mixed "
                          "Content`, an editor's token error); no runbook collects it"),
    ("`dependencies`", "one line per dependency, `<name> <host:port> reachable` or "
                       "`<name> <host:port> unreachable: <reason>`, printed by `" + DEPS_PROBE
                       + "`"),
]


def table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


TEMPLATE = """# Diagnosing "nginx answers 502 Bad Gateway"

`bot/diagnosis.py` turns the recorded output of a runbook's diagnostic steps into ranked root
causes, each with the lines it rests on, quoted verbatim, and the remediation to offer. The
knowledge is data, in `{rules}`; this page is written by `python bench/diagnosis_report.py`
(do not edit it by hand; change the rules or the corpus and run the script again).

## API

```python
from bot.diagnosis import load_rules, load_evidence, diagnose
rules = load_rules(Path("runbooks/rules/http-502.yaml"))   # RunbookInvalid("file:line: what")
evidence = load_evidence("evidence.json")                  # EvidenceInvalid (a BotError), one line
causes = diagnose(rules, evidence, params={{"upstream_port": 8000, "program": "ds:docservice"}},
                  since=incident_start)                    # optional: a datetime, or a Clock
# -> [Cause(cause="upstream_down", confidence=0.98, evidence=(...), remediation=(...),
#           detail=None, earlier=(...)), ...]
```

`params` are the facts the rules may use: the runbook's parameters or what discovery found
(`upstream_port`, `upstream_host`, `program`, `container`, `container_port`).

**Evidence of now.** `since` is when the incident started (the alert's `startsAt`). A log line
whose own timestamp is older than `since` minus a margin (5 minutes) raises no cause; a line
without a timestamp (a stack trace's continuation) takes the time of the line above it. The
lines that would have fired a signal are carried, verbatim, as `earlier` on the first cause (and
in its `--json` as `"earlier"`), for the thread to show as history. Timestamps understood
(`bot/logtime.py`): nginx and Go (`2026/11/22 03:04:34`), supervisord and Python logging
(`2026-11-22 03:04:34,123`), Docker `--timestamps` (RFC 3339), journal `short-iso` and `short`
(`Nov 22 03:04:34`, year taken from `since`), `dmesg -T` / uWSGI / Apache
(`[Sun Nov 22 03:04:34 2026]`), log4js and gunicorn (`[2026-11-22T03:04:34.565]`,
`[2026-11-22 03:04:34 +0000]`), php-fpm (`[22-Nov-2026 03:04:34]`), Redis, and dmesg's seconds
since boot when the boot time is known. Times without a zone are the host's local time: pass
`since=Clock(since, utc_offset=..., booted_at=..., margin=...)` (`bot.logtime.Clock`) when the
host's UTC offset (`date +%z`) or boot time is known; without the offset, a zone-less time is
only called earlier when it is older under any zone (UTC-12..UTC+14).

**Healthy is an answer.** When every probe that ran (`healthcheck`, `proxy_check`) answered 2xx
and no cause reaches the threshold, the result is one cause `unknown` with `detail:
"healthy_now"`, the probes' status lines as evidence and no remediation: the service answers
now; nothing is proposed.

**Past incidents when the rules are silent.** When no rule names a cause (nothing but the bare
symptom, or nothing at all) and the probes do not answer, the evidence is compared with the past
incidents in `runbooks/rules/http-502.cases.json` (`similar:` in the rules file; `bot/similar.py`):
the training part of the corpus below, each case reduced to the words of its lines (lower case,
no times, numbers, ids or hashes; nginx's errno kept as `errno111`) and the cause its source
established. The 21 incidents closest by TF-IDF cosine vote for their causes, weighted by
closeness (an incident that shares only one word with the evidence does not vote: one word, say
`html` of a bare error page, is no likeness); when the closest is at least 0.1 alike, the cause
with the most votes is offered as a *candidate*: confidence 0.25 + 0.2 x its share of the votes
(under the threshold),
`detail: "like_past_incidents"`, the input lines that carry the likeness quoted verbatim, and
first in `remediation` an advice line naming the closest incidents (their public threads) to
compare with before acting; when nothing is that close, nothing is offered. A named cause is
never second-guessed, and the file holds no held-out case: it is written by this report from
the training part, and each training case is measured against the others only (leave-one-out),
as if it were new. The summary table gives the figures with and without it.

Leave-one-out flatters the comparison: a thread quoted twice, or sibling threads of one project,
find each other. The method was therefore chosen on the training part by leave-one-collector-out
too: each case compared only with the cases other collectors gathered (the file's
`<label>--<prefix>-` prefix; 32 groups, the lab captures one of them). With the rules alone,
547/663 are right. The first version (9 neighbours, a cause offered only when it held half of
the votes): 573/663 leave-one-out, 566/663 leave-one-collector-out. Now (21 neighbours, the most
votes): 578/663 and 577/663. On the 30 training cases added after that choice, the rules are
silent on 11, and the neighbours named 6 of them right against 4 before (the whole training part
at 693 cases: 585 -> 598 leave-one-collector-out). This run: {grouped} leave-one-collector-out.
Abstaining was what cost: when the rules are silent the cause is rarely `unknown` (6 of the 663
cases), and the neighbours' plurality was right about as often as not, where no answer is always
wrong. 21 neighbours rather than 9 (about the square root of the library's size) also made the
neighbours alone a better classifier of all 663 cases by collector (433 right against 415).
Tried with 21 neighbours and not kept, each within 2 cases of the above (the rules are silent on
only 55 training cases): binary or raw term counts, IDF + 1, word bigrams, status and exit codes
and df's full percentages as terms, terms tagged with their step (`docker_logs:permission`; the
neighbours alone: 413 right against 427 with 15 neighbours), squared or equal votes. Worse: a
per-label prior (-5), MIN_SIMILARITY 0.2 (-3, fewer answers) and letting the likeness overrule
the rules' own weak candidate (-4: with only nginx's `(111: Connection refused)` the threads
were a crash loop, a wrong address, a stopped backend or a stale address alike, and their words
do not tell them apart).

**Finer causes.** A cause may carry `detail` (in `--json` too): a recurring cause outside the
contract's twelve labels, filed under the nearest label or under `unknown` (e.g.
`proxy_buffers_too_small`, `uwsgi_buffer_size_too_small`, `http_to_uwsgi_socket`, `ipv6_localhost`,
`backend_listens_on_loopback`, `port_mismatch`, `socket_path_mismatch`,
`php_socket_version_mismatch`, `stale_upstream_address`, `inodes_exhausted`,
`certificate_chain_untrusted`, `privileged_port_denied`, `database_not_initialised`,
`database_schema_not_upgraded`, `listen_backlog_full`, `backend_listens_on_other_address`,
`backend_bound_to_container_hostname`, `dependency_name_unresolved`, `database_failed_to_start`,
`broker_failed_to_start`, `database_data_dir_ownership`, `selinux_denial`,
`container_memory_limit_reached`, `backend_rejects_proxied_request`,
`worker_connections_exhausted`, `database_refuses_client`, `puma_worker_timeout`,
`tomcat_threads_exhausted`, `http_to_non_http_port`, `http_to_fastcgi_port`,
`k8s_node_memory_pressure`, `conntrack_table_full`, `no_resolver_defined`,
`upstream_port_dropped`, `uwsgi_pass_to_http_socket`, `redis_cannot_persist`,
`data_dir_not_writable`, `forwarded_proto_not_passed`, `proxy_not_in_allowed_clients`,
`tls_protocol_version_mismatch`, `client_certificate_required`, `ownership_change_not_permitted`,
`plain_http_to_tls_port`, `app_free_space_threshold`,
`database_version_unsupported`,
`database_extension_missing`, `worker_oom_killed`, `jwt_signed_with_other_secret`,
`connection_pool_exhausted`, `sqlite_io_error`, `program_not_executable`,
`user_switch_not_permitted`,
`proxy_shares_no_network_with_backend`, `generated_upstream_marked_down` under their labels;
`run_user_mismatch`,
`php_fpm_pool_runs_as_root`, `required_setting_missing` under `upstream_crashloop`;
`ipv6_listener_without_ipv6` under `upstream_crashloop`;
`port_already_in_use`, `stale_unix_socket`,
`stale_pid_file`, `runtime_dir_missing`, `exec_failed`, `exit_config_error`,
`start_program_not_found`, `start_command_not_json`, `init_not_pid_1`,
`python_environment_broken`, `node_heap_exhausted`, `cpu_lacks_instructions`,
`shared_library_missing`, `bind_address_not_available`, `openssl3_legacy_algorithm`,
`image_platform_mismatch`, `failed_migration_blocks_start` under `upstream_crashloop`, where the
labelling guideline puts them; `too_many_open_files`, `inotify_watches_exhausted`,
`local_access_rules_block`, `vm_max_map_count_too_low`, `local_ports_exhausted` under
`unknown`), with its own advice first in `remediation`.

`evidence` maps a step id to the raw text the step printed, or to a JSON object or list (docker
inspect), which is rendered as `json.dumps(value, indent=2)` so that its lines can be quoted.
Unknown step ids are ignored and any subset may be present. Only the last 2 MB of each output is
read, lines over 8,000 characters are skipped, and nothing in the input makes `diagnose` raise.
Terminal codes (the colours of a program that thinks it writes to a terminal: a container with a
TTY, uvicorn `--use-colors`, .NET's console logger) are ignored when a rule matches a line and
kept when it is quoted (`bot/logline.py`).
An nginx error-log line that a thread wrapped (its `while ...` action or its `client:`,
`server:`, `request:`, `upstream:`, `host:` context pushed onto lines of their own) is matched as
one line and quoted as the lines it was written on.
Causes come most likely first; causes under `report_floor` (0.15) are left out; an empty list
means nothing matched. Leave a step that did not run (skipped, failed to connect) out of the
evidence, or pass `None`: an empty string is an output, and `absent: true` signals read it as
"nothing listens", "nothing matched". `load_evidence` also accepts a corpus case file and
returns its `evidence`.

## How the rules work

A rules file names, for each cause label, a one-line `summary`, its `remediation`, and its
`signals`. A signal is:

{signal_fields}

The confidence of a cause is a noisy-OR of its firing supporting signals, discounted by every
firing signal against it:

    confidence = (1 - prod(1 - w_for)) * prod(1 - w_against)

so three agreeing signals of 0.5 (0.875) beat one signal of 0.95 that a 0.8 signal contradicts
(0.19). `unknown` is special: its signals describe the symptom (HTTP 502 from the proxy, an
`[error] ... upstream` line), and it is reported only when no other cause reaches `threshold`
(0.5), with confidence `symptom * (1 - best other cause)`, capped at its `max_confidence` (0.45).

**The backend's own words first.** Each stack's fatal start-up lines, taken from the programs (Go
`panic:` / `goroutine N [running]:`, Rust `panicked at`, .NET `Unhandled exception.`, Node.js
`Error: Cannot find module`, `node:internal/...` throw sites and its closing `Node.js vN`, nodemon
`app crashed`, npm's failed lifecycle, the JVM's `Exception in thread "main"`, Spring Boot's
`APPLICATION FAILED TO START`, gunicorn's `Worker failed to boot`, uWSGI's `no python application
found`, php-fpm's `FPM initialization failed`, the dynamic loaders' missing libraries, a Python
traceback outside a request), name `upstream_crashloop` even when no restart is seen: what fixes it
is the error, not a start, and Docker restart policies and `Restart=` restart without saying so.
They contradict `upstream_down`, since nginx's refusal only says "down or crashing". Not when the
backend was stopped by hand since (supervisord `STOPPED`, systemd `inactive (dead)`), and a
specific cause with its own evidence (the app's error about a dependency, an OOM, a full disk,
EACCES, a certificate) contradicts the crash loop in turn; EACCES in the backend's own output (or
its own start-up check saying a directory is not writable) contradicts `upstream_down` too: it says
why the backend is not running (unless it was stopped by the operator since: supervisord `STOPPED`,
systemd `inactive (dead)`). Redis's `MISCONF` (writes refused after a failed background save) is
`disk_full` (`redis_cannot_persist`, the usual cause), not a dependency that is down, unless its
log names another (`Permission denied`). Memory is the root of what it ends: a worker SIGKILLed
under a master that lives on (uWSGI's `killed by signal 9`, gunicorn's `was sent SIGKILL! Perhaps
out of memory?`, php-fpm's, unicorn's), unless the app server's own timeout sent it (`WORKER
TIMEOUT`, `HARAKIRI`, ...), the kernel's OOM kill lines and the JVM's `OutOfMemoryError` are
`oom_killed` over nginx's timeout (a worker growing until the kernel kills it makes nginx give up
first: 504) and over a down backend; a systemd unit whose main process died of a SIGKILL that
systemd did not send (no stop timeout) is `oom_killed` too. EPERM when the backend changes the
owner or group of its files (`chown`, `chgrp`, rsync: `Operation not permitted`) and runc's `exec:
"/entrypoint.sh": permission denied` are `permission_denied`. A database that cannot serve the
backend (older than its framework supports: Django's `PostgreSQL 12 or later is required (found
11.22)`; lacking an extension: `extension "vector" is not available`; an image needing AVX) is
`dependency_down`. nginx's `host not found in upstream` together with the backend's own fatal
start-up line is the crash loop's: Docker's DNS answers only for running containers. A backend (or
the nginx, Unit or lighttpd inside its image) that cannot open its IPv6 listener (`socket()
[::]:8080 failed (97: Address family not supported by protocol)`) is a crash loop
(`ipv6_listener_without_ipv6`). EPERM is the OS refusing as EACCES is (Node.js's `EPERM: operation
not permitted, chmod`, CPython's `[Errno 1]`, Go's `chown X: operation not permitted`), and a full
disk has other words than strerror (PHP's `possibly out of free disk space`, MySQL's `Disk full (`,
`Errcode: 28`, InnoDB's `Operating system error number 28`, Windows' `There is not enough space on
the disk`). A `du -h` listing of gigabytes in the disk step makes `disk_full` a candidate (0.45),
not a finding: it says where the space went, not that the disk is full. A port held by another
process, a stale unix socket or pid file are crash loops with their own `detail`, and so are a
process's own limits and builds: V8's heap limit (`JavaScript heap out of memory`, whatever memory
the host has; only the host's or container's memory running out is `oom_killed`) and an instruction
the CPU lacks (the kernel's `trap invalid opcode`, SIGILL). A dependency's name that does not
resolve from the backend is `dns_or_network` (the network between them), and Node.js's `connect
ECONNREFUSED` to a port nginx does not dial is a refused dependency. Request-time errors (PHP fatal
errors, gunicorn's `Error handling request`, Flask's `Exception on /`) are not start-up lines: they
count only with a restart seen. A traceback whose outermost frame is runpy's
`_run_module_as_main` (`python -m app`) went up uncaught: read under any line prefix (s6-log's `T`
timestamp in s6-overlay images), unless it ends in a Ctrl-C's `KeyboardInterrupt`. An
entrypoint's or app's own refusal to start without a setting
(`SECRET_KEY is not defined. Aborting.`) is a crash loop (`required_setting_missing`). The app's own
database pool giving up on a free connection (psycopg_pool's `PoolTimeout: couldn't get a
connection after 30.00 sec`, SQLAlchemy's `QueuePool limit of size 5 overflow 10 reached,
connection timed out`, HikariCP's `Connection is not available, request timed out after`,
Npgsql's `The connection pool has been exhausted`) is `upstream_timeout`
(`connection_pool_exhausted`: requests queue for a connection until the proxy gives up), not the
crash its traceback looks like, unless the pool's own connect errors say the database is down
(`dependency_down`). SQLite's `disk I/O error`
(`SQLITE_IOERR`) is what a WAL database on a full filesystem says (it cannot grow its `-shm`
file), not `database or disk is full`: a `disk_full` candidate (`sqlite_io_error`; a failing disk
says it too), named with df's full filesystem, silent when df shows room. A proxy that says it
shares no network with the backend (caddy-docker-proxy's empty `IngressNetworksMap`, `Container is
not in same network as caddy`) is `dns_or_network` (`proxy_shares_no_network_with_backend`).
Words a program quotes back from a configuration line it cannot parse (php-fpm's `unknown entry
'# ... is not writable ...'`) are the file's, not a finding. An app's own free-space
threshold on a filesystem df does not show full (Jellyfin's 512 MiB for its log and temp
directories, a small tmpfs by design) is its own start-up check failing, a crash loop; with df's
full filesystem, or Jellyfin's 2 GiB for its data, `disk_full`. A start command the shell cannot
run (`exec: X: not found`; an exec form that is not JSON, run as a shell word list: `[gunicorn,:
not found`) and a systemd unit failed by one of its own control processes (`Control process
exited, code=exited status=1`, ExecStartPre/ExecStop) are crash loops, and so is an image whose
s6-overlay v3 init is not the container's PID 1 (`s6-overlay-suexec: fatal: can only run as pid
1`, under compose's `init: true` or a Home Assistant add-on's default init: `init_not_pid_1`).
The browser blocking the page's own host over `http://` (Chrome's `Mixed Content`, a Content
Security Policy that allows that host over `https://` only) is the proxy not passing the scheme
(`forwarded_proto_not_passed`). Outside the labels:
Elasticsearch's bootstrap check on the host's `vm.max_map_count` (`vm_max_map_count_too_low`, a
sysctl on the Docker host) and Go's `connect: cannot assign requested address` or nginx's `(99:
Cannot assign requested address) while connecting to upstream` to an IPv4 address
(`local_ports_exhausted`: the dialing host has no free local port, a proxy leaking connections).

**A refusal is read against what answers.** A lone `connect() failed (111: Connection refused)`
(or Go's `dial tcp ...: connect: connection refused`, Apache's `AH00957`, HAProxy's `SC--`, the
JavaScript dev servers' proxies' `ECONNREFUSED`: http-proxy-middleware, Create React App, Vite) only
says "nothing accepted there": a stopped backend, one bound elsewhere, a wrong port or a stale
address look the same from the proxy, and the rules leave it `upstream_down` at a candidate's
weight. The address says a little: refused by an address of a Docker network (the first /24 of
Docker's default pools: 172.17-30.0.x, 192.168.16N.x; not home routers' or cloud VPCs' ranges) is
no stopped container (a stopped container's address answers nothing: `113: No
route to host`), so a stale address is the candidate there (`stale_upstream_address`, under the
threshold; a container that lives and listens elsewhere looks the same); FastCGI refused on a
network address is php-fpm's own default `listen = 127.0.0.1:9000` (`backend_listens_on_loopback`,
a candidate); `no live upstreams` from an upstream named after the host asked for, with no connect
tried, is nginx-proxy's generated `server 127.0.0.1 down;` (`generated_upstream_marked_down`).
Refused by a container address in nginx-proxy's own log (forego's `nginx.1 |` prefix) is a port
mismatch (`port_mismatch`, a 0.5 candidate over the stale address): its docker-gen rewrites the
upstreams at every container start and stop, so the address is the container's current one.
A unix socket reads the same from nginx (`connect() to unix:PATH failed (2: No such file or
directory)`) and from Apache's mod_proxy (`(2)No such file or directory: AH02454: FCGI: attempt to
connect to Unix domain socket PATH (...) failed`): missing, it is a backend that is not running
(the socket is made at its start) over a wrong path in the proxy, unless it is named for a PHP
version (`php8.1-fpm.sock`: a PHP that does not run here, `php_socket_version_mismatch`); refused
(111), a socket file its backend left behind; EACCES (13), `permission_denied`.
Heroku's router names its reason in its own codes: H10 `App crashed` (and the dyno's R10 `Boot
timeout`, no bind to `$PORT`) is a crash loop, H14 `No web processes running` a backend not running
(scaled to 0, no web process in the Procfile), H12 `Request timeout` a timeout.
What the other steps show decides: `ss -ltnp` with the port bound on loopback or on one
other address (`backend_listens_on_loopback`, `backend_listens_on_other_address`), the upstream
name's DNS answer naming another address than the one dialed (`stale_upstream_address`), the probe
answering on the port, the backend's own banner naming another port, or the proxy's own reason
(HAProxy's `Layer7 wrong status, code: 404` is its health check's path, `Layer4 timeout` an address
that leads nowhere; php-fpm's `Connection disallowed` is its `listen.allowed_clients`). The same
holds for timeouts: `upstream timed out ... while SSL handshaking` with the port answering plain
HTTP is TLS spoken to a plain port, not a slow backend.

Remediation: a cause's `remediation` items come first (advice sentences, then step ids); an item
`{{do: restart_program, when: [supervisorctl_status]}}` is offered only when one of those steps was
run, so a Docker host is not offered supervisorctl. Step ids must be among `steps:`
(`start_program`, `restart_program`, `reload_nginx`, `docker_start`, `docker_restart`,
`systemd_restart`); anything that looks like an id and is not one is rejected at load time, as are
unknown fields, unknown cause labels, unknown `{{parameters}}` and regexes that do not compile.
Every error reads `file:line: path.in.file: what is wrong`.

## Labelling a case

A case's `label` is the root cause its source established, chosen by what fixes it, never by what
opsbot answers: decide it from the case's own text, its `established_by` quote, its `source` and,
when that is unclear, its public thread, without running the diagnosis or reading the rules.

- **The specific causes win** over the generic ones when the established cause is one of them:
  `oom_killed` (the host or container ran out of memory), `disk_full` (blocks or inodes),
  `permission_denied`, `dependency_down` (a database, queue, cache or other service the backend
  needs is down or refuses it), `jwt_mismatch`, `tls_mismatch` (the two sides of a connection
  disagree on TLS: `https://` to a plain HTTP port or plain `http://` to a TLS port, whichever
  side's setting is changed to fix it; a certificate or TLS version one side refuses),
  `dns_or_network`,
  `upstream_timeout`, `wrong_proxy_config` (nginx points at the wrong address, port, socket or
  protocol, or its buffers, headers or limits are the cause). A backend that dies because its
  database refuses it is `dependency_down`; one that cannot write its pid file on a full disk is
  `disk_full`.
- **`upstream_crashloop`**: the backend's own process fails at start or soon after because of
  itself (bad configuration, missing module or file, bad arguments, code error, image bug, its port
  already in use by something else, a stale pid or socket file of its own), so starting it again
  does not help: the fix is to change the backend. This holds whether or not restarts are visible
  in the evidence: a single fatal start-up error is a crash loop.
- **`upstream_down`**: the backend is simply not running or not listening and starting it is the
  fix (stopped by someone or by a deploy, never started, killed once, exited after an outside
  event), with no fault of its own established.
- **`unknown`**: the thread never established a cause, or the established cause is outside all the
  labels (an open-file limit, a request filter) and nothing in the evidence names it; a `detail`
  says which.

A case whose label is changed by an audit keeps its slug (the file name after `<label>--`: the
held-out split in `field/SPLIT.txt` is frozen by slug), is renamed with `git mv` to
`<new label>--<slug>.json`, and records `"relabelled": {{"from": "<old label>", "why": "<one
sentence citing this guideline and the established_by quote>"}}`; its evidence is never touched.

## How to add or change a rule

1. Reproduce the fault and save what each diagnostic step printed as a new case,
   `tests/data/evidence/<label>--<what>.json`: `{{"label", "source", "params", "evidence"}}` (and
   `since`, the incident's start, when the case is about time). The `source` says which program
   and version printed it, in which fault, or which issue it is quoted from. A case quoted from a
   public thread goes to `tests/data/evidence/field/<label>--<prefix>-<slug>.json` with its
   `source_url`, the verbatim quote that establishes the cause (`established_by`) and an optional
   `detail`. Never write log lines by hand.
2. Add or adjust signals in the rules file, looking only at the training part: prefer a specific
   pattern with a high weight plus a couple of weak corroborating ones, add `role: against` /
   `contradicts` / `unless` for the evidence that rules the cause out, and record in `source:`
   where the wording comes from.
3. Run `python -m pytest tests/unit/test_diagnosis.py -q -k "not held_out"` (every lab case's label
   first, at least 86 % of the field training cases, every quote a line of its input) and
   `python bench/diagnosis_report.py --train-only`. Measure the held-out third
   (`python bench/diagnosis_report.py`, which rewrites this page with both figures) only when the
   rules are done, and report the figure whatever it is: tuning on it makes it worthless.

## Evidence steps and their commands

{step_commands}

## Accuracy on the corpus

Training part: {n} cases. Lab captures in `tests/data/evidence/`: {lab} reproduced for real here
(nginx 1.22.1, supervisord 4.2.5, Docker 20.10.24, curl 7.88.1, iproute2 6.1.0, the kernel's
dmesg), {quoted} quoted from public issues and pages for what cannot run here (OnlyOffice's
Node.js services, systemd), {mixed} mixing both, as each case's `source` says; and {field} field
cases from `tests/data/evidence/field/` (verbatim logs of public issue threads, each with its
`source_url` and the quote that establishes its cause, `established_by`).

Held-out part: {held_n} field cases, a fixed third chosen by the hash of the file name
(`is_held_out` in `bench/diagnosis_report.py`, the only place the split is made; the tests use
it too). The rules were never tuned on them; their contents and names are never printed, only the
totals below. The held-out figure is taken after the rules are frozen; a rule changed after
looking at it must say so in its commit, and the figure is then no longer out-of-sample.
"rules alone" is the same measurement without the past incidents.

{summary}

### Per label (training part)

{accuracy}

### Per stack

The stack is the case's `stack` field, else guessed from its text (first match of OnlyOffice,
php-fpm, uwsgi, gunicorn, unicorn/puma, Java, Go, Node.js, Python; then Docker; else other); the
lab captures run a stand-in backend under supervisord or Docker behind nginx.

{stacks}

### By what the evidence shows

A case whose evidence is only the proxy's side (nginx's error log, the probe through it,
`nginx -t`; nothing from the backend, its process manager or the host) often names the symptom
and not the cause: a lone `connect() failed (111: Connection refused)` was, in the threads, a
stopped backend, a crashing one, a wrong port or address in nginx, or a stale container address.
In a real run opsbot reads the other side too (what listens, the program's state, its logs); the
corpus keeps what the threads quoted.

{breadth}

### Confusion between labels

Training part (rows: labelled cause; columns: the cause ranked first; `none`: no cause returned):

{matrix}

Held-out part (totals only):

{held_matrix}

### Training misses and close calls

{confusion}

## Genuine outputs that differ from what is commonly assumed

- **An upstream timeout is a 504, not a 502.** nginx answers `504 Gateway Time-out` for
  `upstream timed out (110: Connection timed out) while reading response header from upstream`;
  a hung backend still completes TCP handshakes (the kernel fills the listen backlog: `ss` shows
  `Recv-Q 2` on the LISTEN socket of a SIGSTOPped process), so nothing is "refused".
- **Exit code 137 is not an OOM by itself.** `docker stop` on a container whose PID 1 ignores
  SIGTERM gives `Exited (137)` with `"OOMKilled": false`; only `OOMKilled: true` (or the kernel's
  `Memory cgroup out of memory: Killed process`) says OOM. supervisord's `terminated by SIGKILL;
  not expected` is the same for `kill -9` and for the OOM killer.
- **The OOM killer can take the supervisor with it.** In a memory cgroup shared by supervisord and
  its program, the kernel killed the program and then supervisord itself; `supervisorctl status`
  then only prints `unix:///.../supervisor.sock refused connection`.
- **"Connection refused" in nginx does not mean the backend is down.** The same line appears
  when nginx points at the wrong port (program RUNNING on another), or when the backend binds
  `127.0.0.2` or `[::1]` instead of `127.0.0.1`, or loopback only while nginx dials the host's or
  a container's address: `ss -ltnp` then shows the port bound on that one address, and the rules
  read it against the address in nginx's line. A Docker container that restarts, or one
  published to the wrong container port, gives `recv() failed (104: Connection reset by peer)`
  instead: docker-proxy accepts the connection and then resets it.
- **supervisord hides the reason.** A program it cannot even exec (`couldn't exec ...: EACCES`,
  exit 127) ends as `FATAL Exited too quickly (process log may have details)`, exactly like a
  program that crashes; between retries the status reads `STARTING` or `BACKOFF` depending on the
  moment it is asked. The reason is only in the program's log.
- **`no live upstreams` needs two servers.** With a single server in an upstream block nginx
  ignores `max_fails`, so it never logs `no live upstreams`; it keeps logging `connect() failed`.
- **A backend that does not speak HTTP gives no 502 either**: nginx logs `upstream sent no valid
  HTTP/1.0 header` and relays the bytes as an HTTP/0.9 answer, which curl rejects
  (`curl: (1) Received HTTP/0.9 when not allowed`, `HTTP 000`).
- **nginx talks plain HTTP to a TLS port and gets a 400, not a 502**: the backend nginx answers
  `400 The plain HTTP request was sent to HTTPS port` and the proxy logs nothing.
- **HTTP sent to a database or AJP port fails three different ways**: PostgreSQL drops it
  (`invalid length of startup packet`; nginx: `upstream prematurely closed connection`), MariaDB
  greets first (nginx: `upstream sent no valid HTTP/1.0 header`; MariaDB: `Aborted connection ...
  user: 'unauthenticated'`), Tomcat's AJP connector reads `GE` as a packet signature (`Invalid
  message received with signature [18245]`). The server's line with nginx's names the wrong port.
- **HAProxy's 503 is not a verdict on the backend**: `backend 'be' has no server available!` and
  `SC--` follow its own health check, whose reason says why: `Layer7 wrong status, code: 404` (the
  check path is not served, while the backend answers 200 on `/`) or `Layer4 timeout` (no answer
  to the SYN: an address that leads nowhere).
- **TLS to a plain port is not always "wrong version number"**: a plain server that answers the
  ClientHello with a 400 gives `SSL_do_handshake() failed (... wrong version number)` (its own log
  shows the hello's bytes, `"\\x16\\x03\\x01..." 400`), but one that waits for the end of a request
  head (uWSGI's http-socket) gives `upstream timed out (110: ...) while SSL handshaking to
  upstream`, a 504 like a hung backend; the port answering plain HTTP (the probe) tells them apart.
- **`nginx -t` and DNS**: a `proxy_pass` host that does not resolve stops nginx from starting
  (`[emerg] host not found in upstream`), so the symptom is a refused proxy port, not a 502; with a
  `resolver` and a variable the same typo becomes a 502 at request time
  (`could not be resolved (3: Host not found)`); with a variable and no `resolver` directive
  nginx never asks DNS at all (`no resolver defined to resolve NAME`): its configuration lacks the
  directive (`wrong_proxy_config`), whatever the name.
- **`$host` has no port.** `proxy_pass http://$host` dials the client's host on port 80 while the
  client asked another one (`upstream: "http://127.0.0.1:80/", host: "127.0.0.1:28081"`);
  `$http_host` keeps the port.
- **`uwsgi_pass` to uWSGI's HTTP socket is a timeout, not a protocol error**: uWSGI's HTTP parser
  waits for the end of a request head that the uwsgi packet never has, nginx logs `upstream timed
  out (110: ...) while reading response header` (a 504) and, when nginx gives up, uWSGI logs
  `uwsgi_proto_http_parser() -> client closed connection` (a client that connects and closes
  without a byte is not logged).
- **A local policy refusal looks like a permission problem**: an `ip route add prohibit` makes
  connect() fail with `(13: Permission denied) while connecting to upstream`, logged at `[crit]`,
  as SELinux does.
- **Refused on `[::1]` is not a down backend.** nginx resolves `localhost` to `::1` first; a
  backend bound to `127.0.0.1` refuses it there and answers on IPv4. It is a down backend only
  when nothing listens on the port at all, or `127.0.0.1` refuses too (the rule's `unless`).
- **A container that moved keeps failing through nginx.** nginx resolves an upstream name once,
  at start: after `docker compose up` recreated the backend with a new address, nginx dials the
  old one (`113: No route to host`, or refused by whoever got it) while the backend runs. The
  upstream name's answer then names another address than the one nginx dials (`nslookup NAME`;
  reproduced here with `resolver ... valid=300s`): that, not a lone refusal, says the address is
  stale; refused on a container address alone may as well be a backend listening on its loopback
  or another port, or not started yet.
- **Inside a container, 127.0.0.1 is the container.** nginx in a container whose clients come
  from the bridge gateway (`client: 172.17.0.1`) and that dials `127.0.0.1:9000` reaches itself.
- **"No space left on device" with room on `df -h`** is inode exhaustion (`df -i`).
- **The kernel log is history.** `dmesg` keeps OOM kills of any process from any time (a `tail`
  in another test's container, minutes before): it does not explain a backend stopped by hand,
  and with the incident's start known it is shown as earlier, not counted.
- **An unreachable dependency the app never names is weak.** The default probe list may name
  services the backend does not use; the app's own connect error is what counts.
- **systemctl ellipsizes** long journal lines (`... connect ECONNRE>` in the quoted OnlyOffice
  status), so patterns must match a prefix.
- **A full filesystem still lets empty files be created**: with its error log on a full tmpfs,
  `nginx -t` succeeds; only writes fail (`OSError: [Errno 28] No space left on device`, busybox
  `dd: error writing ...: No space left on device`). (The disk rule also ignores `/dev/loop` and
  `/snap/` mounts, which read 100% on snap hosts by design.)
- **The errno, not its text.** nginx prints `strerror()` of the libc it was built with: musl
  says `(113: Host is unreachable)` and `(99: Address not available)` where glibc says `No route to
  host` and `Cannot assign requested address`, and a libc without the text prints `(111: Unknown
  error)` (the ONLYOFFICE Document Server image's nginx logs its timeouts as `(110: Unknown
  error)`). The rules read the number, in every nginx pattern.
- **Node.js 17+ dials `localhost` on `::1` first**: an app whose database or cache listens on
  IPv4 only gets `connect ECONNREFUSED ::1:PORT`; the dependency is up, the address is not.
- **A PHP client speaks libcurl's words**: `cURL error 7: Failed to connect`, `cURL error 28:
  Operation timed out`, `cURL error 35: ... wrong version number` (the ONLYOFFICE connectors'
  checks) are the curl tool's `curl: (7)`, `(28)`, `(35)`.
- **gunicorn says "Perhaps out of memory?" after every timeout kill**: since 20.1 a worker that
  missed `--timeout` is aborted, then killed, and the arbiter logs `Worker (pid:N) was sent
  SIGKILL! Perhaps out of memory?` after `[CRITICAL] WORKER TIMEOUT`; the aborted worker's
  traceback ends in `SystemExit: 1` in `handle_abort`. The timeout wins over both.
- **An OOM kill can look like a timeout**: a uWSGI or gunicorn worker whose request keeps growing
  in a 100 MiB memory cgroup is killed by the kernel after nginx's `proxy_read_timeout` struck:
  nginx logs `upstream timed out (110: ...)` and answers 504, while uWSGI says `DAMN ! worker 1
  (pid: N) died, killed by signal 9` (gunicorn: `was sent SIGKILL! Perhaps out of memory?`) and
  the kernel `Memory cgroup out of memory: Killed process N (uwsgi)`. Killed at once, the same
  worker gives nginx `upstream prematurely closed connection` and a 502.
- **Redis says MISCONF whatever stopped its save**: a full disk under its `dir` and a `dir` its
  user may not write give the client the same `MISCONF Redis is configured to save RDB
  snapshots, but it's currently unable to persist to disk` (Redis 7.0.15); only its own log names
  the cause (`Write error saving DB on disk(rdbSaveRio): No space left on device`, `Failed opening
  the temp RDB file ... for saving: Permission denied`).
- **A database killed under a Python client is a dependency, not a crash**: PyMySQL then raises
  `OperationalError: (2013, 'Lost connection to MySQL server during query')` inside a traceback
  that reads like the app's own crash.
- **A full unix-socket backlog fails at once**: nginx connecting to a php-fpm or uWSGI socket
  whose listen queue is full gets `(11: Resource temporarily unavailable)`, not a timeout: every
  worker is busy.
- **A FastCGI worker that dies on a request is a reset, not a refusal**: nginx keeps no FastCGI
  connection alive, so a php-fpm child that exits with the request unread (a segfault, a kill)
  gives `recv() failed (104: Connection reset by peer) while reading response header from
  upstream` with `upstream: "fastcgi://..."` (a stand-in FastCGI server that exits run here
  behind nginx 1.22.1). The rules make it a crash candidate (`php_worker_died_on_request`, as
  `upstream prematurely closed` from FastCGI); the php-fpm log decides: the master's `exited on
  signal`, or `Connection disallowed` (php-fpm's `listen.allowed_clients` without nginx's address
  resets nginx the same way).
- **"No space left on device" from a file watch** is the inotify limit
  (`fs.inotify.max_user_watches`), not the disk.
- **The diagnostic can fail too**: `dmesg: read kernel buffer failed: Operation not permitted`
  in the kernel log step says nothing about the backend.
- **A Kubernetes Service can take an app's port setting**: every pod gets
  `<SERVICE>_PORT=tcp://IP:PORT` for each Service of its namespace, so a Service named like the
  app's own variable prefix makes it listen on `tcp://10.108.13.33:80` (Node.js:
  `listen EACCES: permission denied tcp://...`, which reads like a permission problem) or refuse
  the option (`Invalid value for '--port': 'tcp://10.43.0.1:8000'`). `enableServiceLinks: false`.
- **An Alpine image's healthcheck tries localhost on `::1` only**: BusyBox `wget` prints
  `Connecting to localhost:8080 ([::1]:8080)` and gives up when the server listens on IPv4, and
  the container turns unhealthy while it serves (the proxy then drops it).
- **A program's own fatal lines are a catalogue, not a sample**: most of this session's new
  training cases that the rules got wrong quoted a start-up refusal in words no earlier thread
  had used. The rules now carry each app server's catalogue read in its source (php-fpm, uWSGI,
  gunicorn, Puma, unicorn, Passenger, Node.js, Django, Spring Boot, Tomcat, Keycloak, the
  database clients), each proven on a line the real program printed
  (tests/unit/test_rule_catalog.py).

## Per case

{cases}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, default=ROOT / "runbooks/rules/http-502.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/diagnosis.md")
    parser.add_argument("--train-only", action="store_true",
                        help="measure the training part only (while tuning rules: the held-out "
                             "third is looked at only at the end, and only as totals)")
    args = parser.parse_args()
    written = write_library(args.rules.resolve())  # from the training part only
    rules = load_rules(args.rules.resolve())
    train = measure(rules, corpus_cases("train"))
    held = None if args.train_only else measure(rules, corpus_cases("held_out"))
    alone = Library(())  # no past incidents: what the rules alone answer
    train_alone = measure(rules, corpus_cases("train"), alone)
    grouped = measure(rules, corpus_cases("train"), grouped=True)
    held_alone = None if args.train_only else measure(rules, corpus_cases("held_out"), alone)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(train, held, args.rules.resolve(), (train_alone, held_alone),
                               grouped), encoding="utf-8")
    if written is not None:
        print(f"wrote {written.relative_to(ROOT) if written.is_relative_to(ROOT) else written}")
    for name, rows in (("training", train), ("held-out", held), ("training, rules alone",
                       train_alone), ("held-out, rules alone", held_alone),
                       ("training, leave-one-collector-out", grouped)):
        if rows is not None:
            n = len(rows)
            print(f"{name}: {n} cases, top-1 {rate(sum(r['top1'] for r in rows), n)}, "
                  f"top-3 {rate(sum(r['top3'] for r in rows), n)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
