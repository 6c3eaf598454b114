"""Measure the 502 diagnosis rules on the evidence corpus and write docs/diagnosis.md.

    python bench/diagnosis_report.py [--rules RULES.yaml] [--out docs/diagnosis.md]

Top-1: the labelled cause is ranked first. Top-3: it is among the first three causes returned.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.diagnosis import LABELS, diagnose, load_rules  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "evidence"


def measure(rules_path: Path) -> list[dict]:
    rules = load_rules(rules_path)
    rows = []
    for path in sorted(CORPUS.glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        causes = diagnose(rules, case["evidence"], case.get("params") or {})
        ranked = [c.cause for c in causes]
        rows.append({
            "case": path.stem, "label": case["label"], "ranked": ranked,
            "confidences": [round(c.confidence, 2) for c in causes],
            "top1": ranked[:1] == [case["label"]], "top3": case["label"] in ranked[:3],
            "origin": origin(case["source"]),
            "steps": sorted(case["evidence"]),
        })
    return rows


def origin(source: str) -> str:
    """'lab' (captured here), 'quoted' (from a public issue or page) or 'mixed'."""
    if source.startswith(("Reproduced for real", "live lab:")):
        return "lab"
    lab = any(w in source for w in ("Reproduced for real", "run for real", "captured in the lab"))
    return "mixed" if lab else "quoted"


def accuracy_table(rows: list[dict]) -> str:
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    out = ["| label | cases | top-1 | top-3 | runner-up seen most |", "|---|---:|---:|---:|---|"]
    for label in LABELS:
        group = by_label.get(label, [])
        if not group:
            out.append(f"| `{label}` | 0 | - | - | - |")
            continue
        t1 = sum(r["top1"] for r in group)
        t3 = sum(r["top3"] for r in group)
        seconds = Counter(r["ranked"][1] for r in group if len(r["ranked"]) > 1)
        runner = ", ".join(f"`{k}` ({v})" for k, v in seconds.most_common(2)) or "none"
        out.append(f"| `{label}` | {len(group)} | {t1}/{len(group)} ({100 * t1 / len(group):.0f}%) "
                   f"| {t3}/{len(group)} ({100 * t3 / len(group):.0f}%) | {runner} |")
    n = len(rows)
    t1 = sum(r["top1"] for r in rows)
    t3 = sum(r["top3"] for r in rows)
    out.append(f"| **all** | {n} | {t1}/{n} ({100 * t1 / n:.0f}%) "
               f"| {t3}/{n} ({100 * t3 / n:.0f}%) | |")
    return "\n".join(out)


def confusion(rows: list[dict]) -> str:
    misses = [r for r in rows if not r["top1"]]
    if not misses:
        lines = ["No top-1 confusions: every case's labelled cause is ranked first.", ""]
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


def case_table(rows: list[dict]) -> str:
    out = ["| case | origin | steps | ranked (confidence) |", "|---|---|---|---|"]
    for r in rows:
        ranked = ", ".join(f"`{c}` {p}" for c, p in zip(r["ranked"][:3], r["confidences"][:3],
                                                         strict=False))
        mark = "" if r["top1"] else " **(miss)**"
        out.append(f"| {r['case']}{mark} | {r['origin']} | "
                   f"{', '.join(r['steps'])} | {ranked} |")
    return "\n".join(out)


def render(rows: list[dict], rules_path: Path) -> str:
    origins = Counter(r["origin"] for r in rows)
    rel = rules_path.relative_to(ROOT) if rules_path.is_relative_to(ROOT) else rules_path
    return TEMPLATE.format(
        rules=rel, n=len(rows), lab=origins["lab"], quoted=origins["quoted"],
        mixed=origins["mixed"],
        accuracy=accuracy_table(rows), confusion=confusion(rows), cases=case_table(rows),
        signal_fields=table(("field", "meaning"), SIGNAL_FIELDS),
        step_commands=table(("step", "command the runbook runs (as captured here)"),
                            STEP_COMMANDS))


SIGNAL_FIELDS = [
    ("`step`", "the evidence step id, or a list of them, whose output is searched"),
    ("`pattern`", "a Python regex applied to each line; `{upstream_port}`, `{upstream_host}`, "
                  "`{program}`, `{container}`, `{container_port}` are replaced by the runbook "
                  "parameter, escaped; a signal whose parameter is not given is skipped"),
    ("`weight`", "0..1, how strongly the signal alone points at the cause"),
    ("`absent: true`", "fire when the step was run and **no** line matches "
                       "(e.g. nothing listens on the upstream port)"),
    ("`also`", "more `{step, pattern, absent}` conditions that must all hold too (something "
               "listens on the port *and* connecting to it is refused = bound to the wrong "
               "address)"),
    ("`role: against`", "when it fires it lowers this cause instead of raising it"),
    ("`contradicts: [labels]`", "when it fires it also lowers those causes "
                                "(OOMKilled true lowers `upstream_crashloop`)"),
    ("`suggests: [step ids]`", "remediation steps offered when it fires "
                               "(STOPPED suggests `start_program`)"),
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
    ("`dns`", "`nslookup UPSTREAM_HOST` (busybox nslookup in the captures)"),
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
causes = diagnose(rules, evidence, params={{"upstream_port": 8000, "program": "ds:docservice"}})
# -> [Cause(cause="upstream_down", confidence=0.98, evidence=(...), remediation=(...)), ...]
```

`evidence` maps a step id to the raw text the step printed, or to a JSON object or list (docker
inspect), which is rendered as `json.dumps(value, indent=2)` so that its lines can be quoted.
Unknown step ids are ignored and any subset may be present. Only the last 2 MB of each output is
read, lines over 8,000 characters are skipped, and nothing in the input makes `diagnose` raise.
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

Remediation: a cause's `remediation` items come first (advice sentences, then step ids); an item
`{{do: restart_program, when: [supervisorctl_status]}}` is offered only when one of those steps was
run, so a Docker host is not offered supervisorctl. Step ids must be among `steps:`
(`start_program`, `restart_program`, `reload_nginx`, `docker_start`, `docker_restart`,
`systemd_restart`); anything that looks like an id and is not one is rejected at load time, as are
unknown fields, unknown cause labels, unknown `{{parameters}}` and regexes that do not compile.
Every error reads `file:line: path.in.file: what is wrong`.

## How to add or change a rule

1. Reproduce the fault and save what each diagnostic step printed as a new case,
   `tests/data/evidence/<label>--<what>.json`: `{{"label", "source", "params", "evidence"}}`. The
   `source` says which program and version printed it, in which fault, or which issue it is
   quoted from. Never write log lines by hand.
2. Add or adjust signals in the rules file: prefer a specific pattern with a high weight plus a
   couple of weak corroborating ones, and add `role: against` / `contradicts` for the evidence that
   rules the cause out.
3. Run `python -m pytest tests/unit/test_diagnosis.py -q` (every case's label must come first, every
   quote must be a line of its input) and `python bench/diagnosis_report.py` to update this page.

## Evidence steps and their commands

{step_commands}

## Accuracy on the corpus

{n} cases in `tests/data/evidence/`: {lab} reproduced for real here (nginx 1.22.1, supervisord
4.2.5, Docker 20.10.24, curl 7.88.1, iproute2 6.1.0, the kernel's dmesg), {quoted} quoted from
public issues and pages (OnlyOffice DocumentServer, Docker-DocumentServer, snap-documentserver,
systemd, NetBox, Mycodo, ...) for what cannot run here (OnlyOffice's Node.js services, systemd),
and {mixed} mixing both, as each case's `source` says.

{accuracy}

These numbers are in-sample: the rules were written while looking at these cases, so they say the
rules fit genuine output, not how they generalise. The only out-of-sample measurement so far: a
blind batch of three faults reproduced after the rules were written
(`wrong_proxy_config--unix-socket-path-missing`, `wrong_proxy_config--backend-not-speaking-http`,
`upstream_down--program-stopped-and-nginx-t-fails`) scored 3/3 top-1 before any rule changed
(one specific signal was added afterwards). New cases, captured from new incidents, are the
honest test; add them, and measure, before changing weights.

### Confusions

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
  `127.0.0.2` or `[::1]` instead of `127.0.0.1`. A Docker container that restarts, or one
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
- **`nginx -t` and DNS**: a `proxy_pass` host that does not resolve stops nginx from starting
  (`[emerg] host not found in upstream`), so the symptom is a refused proxy port, not a 502; with a
  `resolver` and a variable the same typo becomes a 502 at request time
  (`could not be resolved (3: Host not found)`).
- **A local policy refusal looks like a permission problem**: an `ip route add prohibit` makes
  connect() fail with `(13: Permission denied) while connecting to upstream`, logged at `[crit]`,
  as SELinux does.
- **systemctl ellipsizes** long journal lines (`... connect ECONNRE>` in the quoted OnlyOffice
  status), so patterns must match a prefix.
- **A full filesystem still lets empty files be created**: with its error log on a full tmpfs,
  `nginx -t` succeeds; only writes fail (`OSError: [Errno 28] No space left on device`, busybox
  `dd: error writing ...: No space left on device`). (The disk rule also ignores `/dev/loop` and
  `/snap/` mounts, which read 100% on snap hosts by design.)

## Per case

{cases}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, default=ROOT / "runbooks/rules/http-502.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/diagnosis.md")
    args = parser.parse_args()
    rows = measure(args.rules.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, args.rules.resolve()), encoding="utf-8")
    top1 = sum(r["top1"] for r in rows)
    top3 = sum(r["top3"] for r in rows)
    print(f"{len(rows)} cases: top-1 {top1}/{len(rows)}, top-3 {top3}/{len(rows)}; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
