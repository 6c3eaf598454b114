"""The `opsbot` command. Entry points only: each sub-command calls into the package."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import errno
import gc
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot import logs
from bot.config import Settings, load_settings
from bot.errors import BotError, ConfigError, InventoryError
from bot.models import Approval

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
COMMAND_GEN0 = 20_000  # the collector's first threshold while a terminal command runs
RUN_CODES = ("exit status: 0 the diagnosis ran on every host and every approved fix verified; "
             "1 a fix failed or did not verify, or a host could not be reached; 2 usage or "
             "configuration error")
APPROVE_CODES = ("exit status: 0 the fix ran and its verify step passed; 1 it failed, did not "
                 "verify or did not run (already decided, unknown token, changed step); 2 usage "
                 "or configuration error")
REJECT_CODES = ("exit status: 0 the rejection was recorded; 1 it was not (already decided, "
                "unknown token); 2 usage or configuration error")


def local_user() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local:unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opsbot", description="ChatOps incident response: "
                                "alerts in, diagnosed incidents, approvals and an audit log out.")
    p.add_argument("--config", type=Path, help="TOML file with settings (environment wins; "
                   "default: $OPSBOT_CONFIG, else ./opsbot.toml when it exists)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object a line (for log shippers)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("serve", help="run the bot (HTTP server; Socket Mode with SLACK_APP_TOKEN)")

    rb = sub.add_parser("runbooks", help="list or validate runbooks")
    rb_sub = rb.add_subparsers(dest="action", required=True)
    rb_sub.add_parser("list", help="the loaded runbooks")
    show = rb_sub.add_parser("show", help="one runbook: parameters, defaults, who may set them "
                                          "and the opsbot_* host variables it reads")
    show.add_argument("name")
    val = rb_sub.add_parser("validate", help="validate runbook files (exit 1 on errors)")
    val.add_argument("path", nargs="?", type=Path, help="a file or folder (default: "
                                                         "OPSBOT_RUNBOOKS)")

    run = sub.add_parser("run", help="run a runbook on a host or group", epilog=RUN_CODES)
    run.add_argument("runbook")
    run.add_argument("target", help="inventory host or group")
    run.add_argument("--param", action="append", default=[], metavar="K=V")
    run.add_argument("--dry-run", action="store_true", help="show every rendered command, run "
                                                            "nothing")
    run.add_argument("--yes", action="store_true", help="approve remediation as the local user")
    run.add_argument("--json", action="store_true", help="machine-readable result on stdout")

    dis = sub.add_parser("discover", help="the chain behind a URL on a host: nginx server and "
                                          "location, upstream, who listens or should")
    dis.add_argument("target", help="inventory host or group")
    dis.add_argument("--url", help="the URL that fails (default: the host's opsbot_proxy_url)")
    dis.add_argument("--json", action="store_true", help="machine-readable result on stdout")

    an = sub.add_parser("analyze", help="diagnose from recorded step outputs")
    an.add_argument("runbook")
    an.add_argument("--evidence", required=True, type=Path)
    an.add_argument("--param", action="append", default=[], metavar="K=V")
    an.add_argument("--json", action="store_true")

    inc = sub.add_parser("incidents", help="list incidents")
    inc.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="an incident's timeline for a postmortem")
    ex.add_argument("incident", help="INC-n")
    ex.add_argument("--format", choices=("md", "json", "csv", "postmortem"), default="md")
    ex.add_argument("-o", "--output", type=Path)

    for verb, codes in (("approve", APPROVE_CODES), ("reject", REJECT_CODES)):
        ap = sub.add_parser(verb, help=f"{verb} a pending remediation (token from the thread)",
                            description=f"{verb.capitalize()} a pending remediation. While an "
                            "`opsbot serve` uses the same database, the serving bot carries "
                            "the decision out and reports in the incident's thread; this "
                            "command waits for the outcome. With no serving bot, the step "
                            "runs here, with this shell's settings.", epilog=codes)
        ap.add_argument("token")

    res = sub.add_parser("resolve", help="resolve an incident")
    res.add_argument("incident")

    au = sub.add_parser("audit", help="the audit log")
    au_sub = au.add_subparsers(dest="action", required=True)
    au_sub.add_parser("verify", help="check the hash chain (exit 1 naming the first bad record)")
    pr = au_sub.add_parser("prune", help="drop records older than a UTC time; the rest stays "
                                         "verifiable")
    pr.add_argument("--before", required=True, help="UTC ISO time, e.g. 2026-01-01T00:00:00Z")
    return p


def cmd_runbooks(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runbooks import load_catalog, load_runbook, runbook_files

    if args.action == "show":
        return _show_runbook(load_catalog(settings.runbooks).get(args.name))
    if args.action == "list":
        catalog = load_catalog(settings.runbooks)
        for rb in catalog.runbooks.values():
            match = " ".join(str(m) for m in rb.matchers) or "(manual only)"
            print(f"{rb.name:28} {rb.title}\n{'':28} match: {match}")
        for line in catalog.errors:
            print(line, file=sys.stderr)
        return EXIT_FAIL if catalog.errors else EXIT_OK
    path = args.path or settings.runbooks
    if not path.exists():
        print(f"{path}: no such file or folder", file=sys.stderr)
        return EXIT_FAIL
    errors, count = [], 0
    for file in runbook_files(path):
        try:
            load_runbook(file)
            count += 1
        except BotError as exc:
            errors.extend(str(exc).splitlines())
    for line in errors:
        print(line, file=sys.stderr)
    print(f"{count} runbook(s) valid, {len(errors)} error(s)")
    return EXIT_FAIL if errors else EXIT_OK


def _show_runbook(rb: Any) -> int:
    print(f"{rb.name}: {rb.title}\n  file: {rb.source}")
    if rb.description:
        print("  " + " ".join(rb.description.split()))
    print("  match: " + (" ".join(str(m) for m in rb.matchers) or "(manual runs only)"))
    print("  parameters (set per host as the inventory variable opsbot_<name>):")
    for name, spec in rb.params.items():
        default = "required" if spec.required else f"default {spec.default!r}"
        print(f"    {name:24} {spec.type:5} {default}"
              + (f" — {spec.description}" if spec.description else ""))
    print("  host variables read: "
          + ", ".join(["opsbot_docker", *(f"opsbot_{n}" for n in rb.params)]))
    for title, steps in (("diagnostic steps", rb.steps), ("remediation", rb.remediation)):
        print(f"  {title}: " + (", ".join(f"{s.id} ({s.kind})" for s in steps) or "none"))
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    from bot.diagnosis import diagnose, load_evidence
    from bot.params import parse_assignments, resolve_params
    from bot.runbooks import load_catalog

    catalog = load_catalog(settings.runbooks)
    rb = catalog.get(args.runbook)
    if rb.rules is None:
        raise BotError(f"runbook {rb.name} names no diagnosis rules")
    evidence = load_evidence(args.evidence)
    params = resolve_params(rb, parse_assignments(args.param))
    causes = diagnose(rb.rules, evidence, params)
    if args.json:
        print(json.dumps({"causes": [c.to_json() for c in causes]}, indent=2))
        return EXIT_OK
    if not causes:
        print("No known cause matches the evidence.")
    for i, c in enumerate(causes, 1):
        print(f"{i}. {c.cause} ({c.confidence:.0%}){' — ' + c.summary if c.summary else ''}")
        for line in c.evidence:
            print(f"     > {line}")
        if c.remediation:
            print(f"     remediation: {'; '.join(c.remediation)}")
    return EXIT_OK


def _prompt_approver(yes: bool, user: str) -> Any:
    async def approver(approval: Approval, proposal: Any) -> tuple[bool, str] | None:
        if yes:
            return True, user
        if not sys.stdin.isatty():
            print(f"(no terminal to ask: {approval.step_id} on {approval.host} waits for "
                  f"approval; `opsbot approve {approval.token}`)", file=sys.stderr)
            return None
        question = (f"\nApprove {approval.step_id} on {approval.host}?\n  $ "
                    f"{approval.display}\n  then verify: $ {proposal.verify.display}\n[y/N] ")
        answer = await asyncio.to_thread(input, question)
        return answer.strip().lower() in ("y", "yes"), user

    return approver


async def _with_runtime(settings: Settings, fn: Any, *, quiet: bool = False) -> int:
    # Start-up (asyncssh, pydantic and the runbook models, the runbooks, the inventory) makes
    # objects that live as long as the command: the cyclic collector, run about 150 times while
    # they were made, freed next to nothing (about 600 objects) and was 7% of a cold `opsbot
    # run`'s CPU. Then they are frozen: the command's own collections no longer walk them.
    # main() turns the collector off already before a runtime command's own imports.
    gc.disable()
    try:
        from bot.app import build

        rt = build(settings, out=sys.stderr if quiet else None, export_metrics=False)
    finally:
        gc.enable()
    gc.freeze()
    # The command's own young objects (the SSH handshakes' packets and buffers, the steps'
    # records) die young and mostly without cycles: the collector's first generation is let
    # grow larger before it is walked (about 70 collections of a cold 50-host `opsbot run`
    # down to a few).
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], COMMAND_GEN0), *thresholds[1:])
    try:
        return int(await fn(rt))
    finally:
        await rt.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()  # collectable again (in-process callers, e.g. tests, run many commands)


async def run_exit_status(rt: Any, outcome: Any) -> int:
    """0: the diagnosis ran on every host and every fix that ran verified; 1: otherwise (a fix
    failed or did not verify, or a host could not be reached)."""
    steps = [r for r in await rt.store.steps_of(outcome.incident.id, outcome.run_id)
             if r.phase in ("remediation", "verify")]
    fixes = [r for r in steps if r.phase == "remediation"]
    verified = [r for r in steps if r.phase == "verify" and r.status == "ok"]
    unreachable = any(r.error or (r.results and all(s.status == "error" for s in r.results))
                      for r in outcome.reports) or \
        any(not c.reachable for c in outcome.chains.values())
    return EXIT_FAIL if unreachable or len(verified) < len(fixes) else EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.params import parse_assignments

    user = local_user()
    params = parse_assignments(args.param)

    async def go(rt: Any) -> int:
        outcome = await rt.bot.runs.run_target(args.runbook, args.target, params, requested_by=user,
                                          source="terminal", dry_run=args.dry_run,
                                          approver=_prompt_approver(args.yes, user))
        if args.dry_run:
            if args.json:
                print(json.dumps({"plan": {h.name: lines for h, lines in outcome}}, indent=2))
            else:
                for host, lines in outcome:
                    print(f"# {host.name} ({host.address}:{host.port})")
                    print("\n".join(f"  {line}" for line in lines))
            return EXIT_OK
        await rt.bot.tasks.drain()
        incident = await rt.store.get_incident(outcome.incident.id)
        if args.json:
            print(json.dumps({
                "incident": incident.ref, "phase": incident.phase, "cause": incident.cause,
                "hosts": [{"host": r.host.name, "error": r.error,
                           "steps": [{"id": s.step.step_id, "status": str(s.status),
                                      "exit_status": s.exit_status, "command": s.step.display,
                                      "error": s.error,
                                      "duration": round(s.duration, 3), "sha256": s.digest}
                                     for s in r.results],
                           "causes": [c.to_json() for c in r.causes]}
                          for r in outcome.reports],
                "pending_approvals": [p.token for p in outcome.pending]}, indent=2))
        else:
            print(f"{incident.ref}: {incident.phase}"
                  + (f", likely cause {incident.cause}" if incident.cause else ""))
        return await run_exit_status(rt, outcome)

    return asyncio.run(_with_runtime(settings, go, quiet=args.json))


def cmd_discover(args: argparse.Namespace, settings: Settings) -> int:
    async def go(rt: Any) -> int:
        hosts = rt.bot.inventory.resolve(args.target)
        chains = await asyncio.gather(*(rt.bot.runs.discover(h, args.url) for h in hosts))
        if args.json:
            print(json.dumps([c.to_json() for c in chains] if len(chains) > 1
                             else chains[0].to_json(), indent=2))
        for chain in chains if not args.json else ():
            print(f"{chain.host}: {chain.text()}")
            owner = chain.owner
            if owner is not None:
                print(f"  owner: {owner.label}: {owner.how}")
                for log_file in (*owner.logs, owner.supervisor_log):
                    if log_file:
                        print(f"  log: {log_file}")
                if chain.dependencies():
                    print(f"  needs: {' '.join(chain.dependencies())}")
            for other in chain.candidates:
                print(f"  also configured: {other.label}: {other.how}")
            for note in chain.notes:
                print(f"  note: {note}")
        return EXIT_OK if all(c.reachable for c in chains) else EXIT_FAIL

    return asyncio.run(_with_runtime(settings, go, quiet=args.json))


def cmd_incidents(args: argparse.Namespace, settings: Settings) -> int:
    from bot.adapters.store import Store

    store = Store(settings.db, audit_key=settings.audit_key)
    incidents = store.list_incidents(limit=200)
    if args.json:
        print(json.dumps([{"ref": i.ref, "status": str(i.status), "phase": i.phase,
                           "title": i.title, "runbook": i.runbook, "hosts": list(i.hosts),
                           "cause": i.cause, "opened_at": i.opened_at,
                           "resolved_at": i.resolved_at} for i in incidents], indent=2))
        return EXIT_OK
    if not incidents:
        print("No incidents.")
    for i in incidents:
        print(f"{i.ref:8} {i.status:8} {i.phase:18} {i.cause or '-':20} {i.title}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from bot.adapters.store import Store
    from bot.export import export
    from bot.models import parse_incident_ref

    number = parse_incident_ref(args.incident)
    if number is None:
        raise BotError(f"{args.incident!r} is not an incident reference (like INC-42)")
    store = Store(settings.db, audit_key=settings.audit_key)
    chunks = export(store, number, args.format)
    if args.output:
        with args.output.open("w", encoding="utf-8") as fh:
            for chunk in chunks:
                fh.write(chunk)
    else:
        for chunk in chunks:
            sys.stdout.write(chunk)
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from bot.adapters.store import Store

    store = Store(settings.db, audit_key=settings.audit_key)
    if args.action == "prune":
        print(f"pruned {store.prune_audit(args.before)} record(s)")
        return EXIT_OK
    report = store.verify_audit()
    print(report.line(), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    async def go(rt: Any) -> int:
        ok = await rt.bot.approvals.approve_elsewhere(
            args.token, args.command == "approve", local_user(),
            say=lambda line: print(line, flush=True))
        return EXIT_OK if ok else EXIT_FAIL

    return asyncio.run(_with_runtime(settings, go))


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    async def go(rt: Any) -> int:
        incident = await rt.bot.incidents.incident(args.incident)
        incident = await rt.bot.incidents.resolve(incident.id, local_user(),
                                                  "resolved from the terminal")
        print(f"{incident.ref}: {incident.status}")
        return EXIT_OK

    return asyncio.run(_with_runtime(settings, go))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from bot.server import serve

    if not settings.alert_token:
        logging.getLogger("opsbot").warning(
            "OPSBOT_ALERT_TOKEN is not set: alert webhooks will be refused (401)")
    try:
        with logs.off_thread():  # log lines written on a thread: never on the loop's
            asyncio.run(serve(settings))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(f"cannot listen on {settings.listen_host}:{settings.listen_port}: "
                          "the address is in use (another opsbot, or Grafana on 3000?); "
                          "set OPSBOT_LISTEN") from None
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "runbooks": cmd_runbooks, "run": cmd_run, "analyze": cmd_analyze,
            "discover": cmd_discover,
            "incidents": cmd_incidents, "export": cmd_export, "audit": cmd_audit,
            "approve": cmd_decide, "reject": cmd_decide, "resolve": cmd_resolve}
RUNTIME_COMMANDS = ("run", "discover", "approve", "reject", "resolve")  # via _with_runtime


def _freeze_at_exit() -> None:
    """At the process's exit everything left is frozen, so that the interpreter's teardown
    does not walk it all with the cyclic collector only to free memory the exit frees anyway
    (0.11 s of a cold `opsbot run`'s 0.85 s of CPU). The store, files and connections are
    closed by then; what is only reachable through a cycle is not finalized."""
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    atexit.unregister(_freeze_at_exit)  # once, however often main() runs in one process
    atexit.register(_freeze_at_exit)
    args = _parser().parse_args(argv)
    logs.setup(verbose=args.verbose, fmt=args.log_format)
    config = args.config or (Path(os.environ["OPSBOT_CONFIG"]) if os.environ.get("OPSBOT_CONFIG")
                             else Path("opsbot.toml") if Path("opsbot.toml").is_file() else None)
    collecting = gc.isenabled()
    if args.command in RUNTIME_COMMANDS:  # start-up, imports included: see _with_runtime
        gc.disable()
    try:
        settings = load_settings(config_file=config, serving=args.command == "serve")
        return COMMANDS[args.command](args, settings)
    except (ConfigError, InventoryError) as exc:
        print(f"opsbot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BotError as exc:
        print(f"opsbot: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `opsbot export ... | head`: the reader left; say nothing more (as cat does)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL
    finally:
        if collecting:
            gc.enable()


if __name__ == "__main__":
    sys.exit(main())
