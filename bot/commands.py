"""The slash command's sub-commands, parsed and answered. Slack-free: the adapter passes the
text and the user, and gets back what to say now (`ack`) and later (`respond`). What the answer
now reads or writes goes through the store's request lane (`bot.requests`): never behind a
running diagnosis's writes. The answer is made on the HTTP server's own loop (bot.edge): what
needs the bot's loop (its outbox, its tasks) goes there through `bot.tasks`."""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import BotError
from bot.models import IncidentStatus

if TYPE_CHECKING:  # the edge process answers `help` with this module, and never runs
    from bot.service import Opsbot

Respond = Callable[[str], Awaitable[None]]

HELP = """*opsbot* — incident response in this channel
• `help` — this text
• `runbooks` — the runbooks and their parameters
• `run <runbook> <host|group> [key=value ...]` — run a runbook (remediation waits for approval)
• `run <runbook> <host|group> --plan [key=value ...]` — show every rendered step, run nothing
• `diag <host>` — run the runbook that fits the host's open incident, or the first one
• `incidents` — open and recent incidents
• `status <INC-n>` — an incident's state, cause and approvals
• `timeline <INC-n> [md|json|csv|postmortem]` — the timeline, or a postmortem draft and chart
• `resolve <INC-n>` — close an incident (cancels pending approvals)"""


@dataclass(frozen=True)
class Answer:
    now: str  # said at once (within Slack's 3 seconds), to the user only
    later: Callable[[Respond], Awaitable[None]] | None = None  # work that continues after


# what only OPSBOT_OPERATORS may do; everything else answers anyone
OPERATOR_VERBS = frozenset({"run", "diag", "resolve", "timeline"})
MAX_WORDS = 64


def instant(text: str) -> str | None:
    """The answer of a command that needs nothing but its text (`help`, an empty command,
    text that cannot be read), or None."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        return f"Could not read that: {exc}. Try `help`."
    if not words or words[0] == "help":
        return HELP
    return None


async def handle(bot: Opsbot, text: str, user: str, *, operator: bool) -> Answer:
    """`operator`: whether `user` is one of OPSBOT_OPERATORS (the adapter knows usergroups)."""
    now = instant(text)
    if now is not None:
        return Answer(now)
    words = shlex.split(text)
    if len(words) > MAX_WORDS:
        return Answer(f"That is {len(words)} words; a command has at most {MAX_WORDS}. "
                      "Try `help`.")
    verb, args = words[0].lower(), words[1:]
    try:
        handler = HANDLERS.get(verb)
        if handler is None:
            return Answer(f"Unknown command {verb[:40]!r}. Accepted: {', '.join(HANDLERS)}. "
                          "Try `help`.")
        if verb in OPERATOR_VERBS and not operator:
            await bot.requests.audit("command.refused", user, None, command=verb,
                                  reason="not an operator")
            return Answer(f"Only operators may `{verb}` (OPSBOT_OPERATORS); nothing was done.")
        return await handler(bot, args, user)
    except BotError as exc:
        return Answer(str(exc).splitlines()[0])


async def _runbooks(bot: Opsbot, args: list[str], user: str) -> Answer:
    lines = []
    for rb in bot.catalog.runbooks.values():
        params = ", ".join(f"{n}={s.default}" if s.default is not None else n
                           for n, s in rb.params.items())
        lines.append(f"• *{rb.name}* — {rb.title}\n   params: {params or 'none'}")
    return Answer("\n".join(lines) or "No runbooks are loaded.")


async def _run(bot: Opsbot, args: list[str], user: str) -> Answer:
    plan = "--plan" in args
    args = [a for a in args if a != "--plan"]
    if len(args) < 2:
        return Answer("Usage: `run <runbook> <host|group> [--plan] [key=value ...]`")
    from bot.approvals import ask_in_thread
    from bot.params import parse_assignments  # pydantic: not in the edge process

    runbook, target, params = args[0], args[1], parse_assignments(args[2:])
    if plan:
        plans = await bot.runs.run_target(runbook, target, params, requested_by=user,
                                     source="slack", approver=ask_in_thread, dry_run=True)
        assert isinstance(plans, list)
        text = "\n".join(f"*{host.name}*\n```" + "\n".join(lines) + "```" for host, lines in plans)
        return Answer(f"Plan for {runbook} on {target} (nothing was run):\n{text}")
    # validate now, so a typo is answered at once
    rb = bot.catalog.get(runbook)
    hosts = bot.inventory.resolve(target)
    bot.runs.targets(rb, hosts, {}, params)

    async def later(respond: Respond) -> None:
        outcome = await bot.runs.run_target(runbook, target, params, requested_by=user,
                                       source="slack", approver=ask_in_thread)
        assert not isinstance(outcome, list)
        await respond(f"{runbook} on {target}: done, see {outcome.incident.ref}'s thread.")

    return Answer(f"Running {runbook} on {target}…", later)


async def _diag(bot: Opsbot, args: list[str], user: str) -> Answer:
    if len(args) != 1:
        return Answer("Usage: `diag <host>`")
    hosts = bot.inventory.resolve(args[0])
    incident = await bot.requests.open_incident_for_host(hosts[0].name)
    name = incident.runbook if incident and incident.runbook else None
    if name is None:
        if not bot.catalog.runbooks:
            return Answer("No runbooks are loaded.")
        name = next(iter(bot.catalog.runbooks))
    return await _run(bot, [name, args[0]], user)


async def _incidents(bot: Opsbot, args: list[str], user: str) -> Answer:
    rows = await bot.requests.list_incidents(limit=20)
    if not rows:
        return Answer("No incidents.")
    lines = [f"• *{i.ref}* {i.status}{' · ' + i.phase if i.status is IncidentStatus.OPEN else ''}"
             f" · {i.title}{' · cause `' + i.cause + '`' if i.cause else ''}" for i in rows]
    return Answer("\n".join(lines))


async def _status(bot: Opsbot, args: list[str], user: str) -> Answer:
    if len(args) != 1:
        return Answer("Usage: `status <INC-n>`")
    incident = await bot.incidents.incident(args[0])
    approvals = await bot.requests.approvals_of(incident.id)
    lines = [f"*{incident.ref}* {incident.title}", f"status: {incident.status} · "
             f"phase: {incident.phase}", f"runbook: {incident.runbook or '—'} · hosts: "
             f"{', '.join(incident.hosts) or '—'}", f"cause: {incident.cause or 'not known yet'}"]
    lines += [f"approval {a.step_id} on {a.host}: {a.status}"
              + (f" by {a.decided_by}" if a.decided_by else "") for a in approvals]
    return Answer("\n".join(lines))


async def _timeline(bot: Opsbot, args: list[str], user: str) -> Answer:
    if len(args) not in (1, 2) or \
            (len(args) == 2 and args[1] not in ("md", "json", "csv", "postmortem")):
        return Answer("Usage: `timeline <INC-n> [md|json|csv|postmortem]`")
    incident = await bot.incidents.incident(args[0])
    fmt = args[1] if len(args) == 2 else "md"

    async def later(respond: Respond) -> None:
        from bot.export import export_text

        content = await bot.store.call(export_text, bot.store.sync, incident.id, fmt)
        name = f"{incident.ref}-postmortem.md" if fmt == "postmortem" else \
            f"{incident.ref}-timeline.{fmt}"
        await bot.reporter.upload(incident.id, name, content, f"{incident.ref} {fmt}"
                                  if fmt == "postmortem" else f"{incident.ref} timeline ({fmt})")
        if fmt == "postmortem":  # the draft's timeline chart, as an image next to it
            from bot.postmortem import chart_png

            png = await bot.store.call(chart_png, bot.store.sync, incident)
            await bot.reporter.upload(incident.id, f"{incident.ref}-timeline.png", png,
                                      f"{incident.ref} timeline chart")
        await respond(f"Timeline of {incident.ref} uploaded to its thread.")

    return Answer(f"Exporting {incident.ref} as {fmt}…", later)


async def _resolve(bot: Opsbot, args: list[str], user: str) -> Answer:
    if len(args) != 1:
        return Answer("Usage: `resolve <INC-n>`")
    incident = await bot.incidents.incident(args[0])
    if incident.status is IncidentStatus.RESOLVED:
        return Answer(f"{incident.ref} is already resolved.")
    await bot.tasks.call(bot.incidents.resolve(incident.id, user, f"resolved by <@{user}>"))
    return Answer(f"{incident.ref} resolved.")


HANDLERS: dict[str, Callable[[Opsbot, list[str], str], Awaitable[Answer]]] = {
    "help": lambda bot, args, user: _help(),
    "runbooks": _runbooks,
    "run": _run,
    "diag": _diag,
    "incidents": _incidents,
    "status": _status,
    "timeline": _timeline,
    "resolve": _resolve,
}


async def _help() -> Answer:
    return Answer(HELP)
