"""Runbook x hosts -> StepResults: order per host, hosts in parallel, timeouts, verify retries.

The runner knows nothing of incidents, Slack or the store: it tells a `StepListener` when a step
starts and ends, and returns results. A failing diagnostic step never stops the diagnosis.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from bot.errors import TemplateFailed
from bot.executors import KINDS, ExecContext, StepKind
from bot.models import (
    LIKE_PAST_INCIDENTS,
    Cause,
    ExecOutput,
    Host,
    Phase,
    Read,
    RenderedStep,
    StepResult,
    StepStatus,
    canonical_json,
    sha256_hex,
)
from bot.offload import off_loop, off_process
from bot.redact import OFF_LOOP, bound, redact
from bot.runbooks import Runbook, Step
from bot.templates import evaluate, template_names
from bot.turns import turn

EXCERPT_LIMIT = 16_000  # characters kept per step in the store
EVIDENCE_LIMIT = 512_000  # characters of a step's output the diagnosis reads


class StepListener(Protocol):
    async def step_started(self, step: RenderedStep) -> Any: ...

    async def step_finished(self, handle: Any, result: StepResult) -> None: ...

    async def host_finished(self, host: str) -> None: ...


class NullListener:
    async def step_started(self, step: RenderedStep) -> Any:
        return None

    async def step_finished(self, handle: Any, result: StepResult) -> None:
        return None

    async def host_finished(self, host: str) -> None:
        return None


@dataclass(frozen=True)
class Proposal:
    """A remediation step proposed for a host, rendered: what an approval is bound to."""

    step: RenderedStep
    verify: RenderedStep
    cause: str
    params: Mapping[str, Any]


@dataclass
class HostReport:
    host: Host
    params: Mapping[str, Any]
    results: list[StepResult] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    causes: list[Cause] = field(default_factory=list)
    proposals: list[Proposal] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    error: str | None = None  # the run could not start on this host (e.g. a template failed)


def _rules_unchanged(runbook: Runbook) -> bool:
    """The rules file still holds the rules the runbook was loaded with (a worker process
    reads the file; a file changed or broken since is not what this runbook runs)."""
    from bot.diagnosis import load_rules

    try:
        return runbook.rules_file is not None and load_rules(runbook.rules_file) is runbook.rules
    except Exception:  # noqa: BLE001 (unreadable now: the loaded rules it is, on a thread)
        return False


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def render_context(host: Host, params: Mapping[str, Any], facts: Mapping[str, str],
                   results: Mapping[str, StepResult],
                   evidence: Mapping[str, Any] | None = None) -> dict[str, Any]:
    outputs = {sid: v if isinstance(v, str) else canonical_json(v)
               for sid, v in (evidence or {}).items()}

    def listed(step_id: str, name: Any) -> bool:
        """Does the step's output name `name` as a word of its own (a program in supervisorctl
        status, a container in docker ps)?"""
        text, word = outputs.get(step_id, ""), str(name)
        return bool(word) and re.search(rf"(?<![\w.:/-]){re.escape(word)}(?![\w.:/-])",
                                        text) is not None

    return {
        **params,
        "params": dict(params),
        "host": {"name": host.name, "address": host.address, "port": host.port,
                 "user": host.user},
        "facts": dict(facts),
        "steps": {sid: {"status": str(r.status), "ok": r.ok, "exit_status": r.exit_status}
                  for sid, r in results.items()},
        "listed": listed,
    }


def render_step(step: Step, phase: Phase, host: Host, context: Mapping[str, Any]) -> RenderedStep:
    kind = KINDS[step.kind]
    action = kind.render(step.params, context)
    return RenderedStep(step_id=step.id, kind=step.kind, phase=phase, host=host.name,
                        action=action, display=redact(kind.display(action)),
                        timeout=step.timeout, title=step.title or step.id)


def judge(step: Step, kind: str, out: ExecOutput) -> StepStatus:
    if out.timed_out:
        return StepStatus.TIMEOUT
    if out.error is not None or out.exit_status is None:
        return StepStatus.ERROR
    expect = step.expect
    allowed = expect.exit_status if expect and expect.exit_status is not None else None
    if allowed is None:
        good = out.exit_status < 400 if kind == "http" else out.exit_status == 0
    else:
        good = out.exit_status in (allowed if isinstance(allowed, list) else [allowed])
    if good and expect and expect.output and not re.search(expect.output, out.output, re.M):
        good = False
    if good and expect and expect.not_output and re.search(expect.not_output, out.output, re.M):
        good = False
    return StepStatus.OK if good else StepStatus.FAILED


def make_result(step: Step, rendered: RenderedStep, out: ExecOutput, started_at: str,
                duration: float) -> tuple[StepResult, str]:
    """The stored result (redacted, bounded) and the redacted text the diagnosis reads."""
    full = out.output
    digest = out.digest or sha256_hex(full if out.data is None else full + canonical_json(out.data))
    clean = redact(full)
    excerpt, truncated = bound(clean, EXCERPT_LIMIT)
    truncated = truncated or out.total_bytes is not None and out.total_bytes > len(full)
    facts: dict[str, str] = {}
    for name, pattern in step.capture.items():
        m = pattern.search(clean)
        if m:
            facts[name] = m.group(1) if m.groups() else m.group(0)
    result = StepResult(step=rendered, status=judge(step, rendered.kind, out),
                        exit_status=out.exit_status, started_at=started_at,
                        duration=duration, output=excerpt,
                        output_bytes=out.total_bytes if out.total_bytes is not None
                        else len(full.encode("utf-8", "replace")), digest=digest,
                        truncated=truncated, error=redact(out.error) if out.error else None,
                        facts=facts)
    return result, clean[-EVIDENCE_LIMIT:]


_RETRY_OUTPUT = re.compile(r"HTTP (?:000|5\d\d)\b")
_CURL_TRANSIENT = {6, 7, 28, 35, 52, 55, 56}  # resolve, refused, timeout, TLS, empty, send, recv


def retryable(result: StepResult) -> bool:
    """Can a failed verify pass later? Refused, 5xx and timeouts can; a missing program (exit
    126/127), a missing container or a 4xx cannot."""
    if result.exit_status in (126, 127):
        return False
    if result.error and re.search(r"\bno (?:such|\w+ named)\b", result.error, re.I):
        return False
    if result.status in (StepStatus.TIMEOUT, StepStatus.ERROR):
        return True
    return bool(_RETRY_OUTPUT.search(result.output)) or result.exit_status in _CURL_TRANSIENT


@lru_cache(maxsize=1024)
def _reads_results(texts: tuple[str, ...]) -> bool:
    """Does a step's template read what earlier steps found (facts, steps, listed)?"""
    return any(template_names(t) & {"facts", "steps", "listed"} for t in texts)


class Runner:
    def __init__(self, ctx: ExecContext, *, apart: bool = False) -> None:
        """`apart`: diagnose in worker processes (a serving process, whose event loop must not
        wait for the interpreter's lock); else on the offload threads (a one-shot command)."""
        self.ctx = ctx
        self.apart = apart
        self._kinds: dict[str, StepKind] = {}

    def kind(self, name: str) -> StepKind:
        """The executor of step kind `name`, made on first use (its module is imported then)."""
        kind = self._kinds.get(name)
        if kind is None:
            kind = self._kinds[name] = KINDS[name](self.ctx)
        return kind

    async def execute(self, step: Step, rendered: RenderedStep, host: Host,
                      listener: StepListener) -> tuple[StepResult, Any]:
        handle = await listener.step_started(rendered)
        started_at, t0 = _now_iso(), time.monotonic()
        try:
            async with asyncio.timeout(rendered.timeout + 15):  # a backstop: executors
                out = await self.kind(step.kind).run(rendered.action, host,  # time their own
                                                    rendered.timeout)
        except TimeoutError:
            out = ExecOutput(None, "", error=f"timed out after {rendered.timeout:g}s",
                             timed_out=True)
        except Exception as exc:  # an executor bug must not end the whole diagnosis
            out = ExecOutput(None, "", error=f"internal error in {step.kind} step: "
                                             f"{exc.__class__.__name__}: {exc}")
        return await self._finish(step, rendered, out, started_at, time.monotonic() - t0,
                                  handle, listener)

    async def _finish(self, step: Step, rendered: RenderedStep, out: ExecOutput,
                      started_at: str, duration: float, handle: Any,
                      listener: StepListener) -> tuple[StepResult, Any]:
        await turn()  # the hosts' results come in together: a few of them a turn of the loop
        if len(out.output) > OFF_LOOP:  # redacting and hashing a large output: off the loop
            result, clean = await asyncio.to_thread(make_result, step, rendered, out, started_at,
                                                    duration)
        else:
            result, clean = make_result(step, rendered, out, started_at, duration)
        await listener.step_finished(handle, result)
        return result, (out.data if out.data is not None else clean)

    def _together(self, steps: Sequence[Step], start: int) -> list[Step]:
        """The steps from `start` on that can run in one session of the host: of a kind that
        batches, with no condition, and reading nothing an earlier step found (facts, steps,
        listed). Fewer than two: none."""
        group: list[Step] = []
        for step in steps[start:]:
            kind = self.kind(step.kind)
            if not kind.batches or step.when or (group and step.kind != group[0].kind) or \
                    _reads_results(tuple(t for _, t, _ in kind.templates_of(step.params))):
                break
            group.append(step)
        return group if len(group) > 1 else []

    async def _run_together(self, group: Sequence[Step], host: Host, context: Mapping[str, Any],
                            report: HostReport, listener: StepListener,
                            reads: Mapping[str, Read]) -> list[tuple[Step, StepResult, Any]]:
        """A group of `_together` steps in one session (StepKind.run_batch): each one still
        started, timed, bounded, judged and recorded as a step of its own. A step whose
        command discovery ran on the host moments before (`reads`) takes that output."""
        todo: list[tuple[Step, RenderedStep]] = []
        for step in group:
            try:
                todo.append((step, render_step(step, Phase.DIAGNOSTIC, host, context)))
            except TemplateFailed as exc:
                report.error = f"step {step.id}: cannot render: {exc}"
        handles: dict[int, tuple[Any, str, float]] = {}
        results: dict[int, tuple[Step, StepResult, Any]] = {}
        for i, (step, rendered) in enumerate(todo):
            read = reads.get(str(rendered.action.get("command"))) if rendered.kind == "ssh" \
                else None
            if read is not None:
                handle = await listener.step_started(rendered)
                result, evidence = make_result(step, rendered, read.output, read.started_at,
                                               read.duration)
                result = replace(result, facts={**result.facts, "read_by": read.read_by})
                await listener.step_finished(handle, result)
                results[i] = (step, result, evidence)
        run = [i for i in range(len(todo)) if i not in results]

        async def started(j: int) -> None:
            handle = await listener.step_started(todo[run[j]][1])
            handles[run[j]] = (handle, _now_iso(), time.monotonic())

        async def finished(j: int, out: ExecOutput, duration: float) -> None:
            i = run[j]
            step, rendered = todo[i]
            result, evidence = await self._finish(step, rendered, out, handles[i][1], duration,
                                                  handles[i][0], listener)
            results[i] = (step, result, evidence)

        if run:
            kind = self.kind(todo[run[0]][0].kind)
            backstop = sum(todo[i][1].timeout for i in run) + 15  # executors time each one
            try:
                await asyncio.wait_for(kind.run_batch(
                    [(todo[i][1].action, todo[i][1].timeout) for i in run], host, started,
                    finished), backstop)
            except Exception as exc:  # a timeout of the backstop, or an executor bug
                why = f"timed out after {backstop:g}s" if isinstance(exc, TimeoutError) else \
                    f"internal error in {kind.name} step: {exc.__class__.__name__}: {exc}"
                for j, i in enumerate(run):
                    if i in results:
                        continue
                    if i not in handles:
                        await started(j)
                    out = ExecOutput(None, "", error=why, timed_out=isinstance(exc, TimeoutError))
                    await finished(j, out, time.monotonic() - handles[i][2])
        return [results[i] for i in sorted(results)]

    async def diagnose_host(self, runbook: Runbook, host: Host, params: Mapping[str, Any],
                            listener: StepListener, *, since: Any = None,
                            found: Mapping[str, Any] | None = None,
                            reads: Mapping[str, Read] | None = None) -> HostReport:
        """Run the checks, then rank causes. `since`: when the incident started (a datetime or
        a bot.logtime.Clock), so older log lines do not count; `found`: evidence gathered before
        the checks (discovery's chain); `reads`: commands discovery ran, by command."""
        report = HostReport(host=host, params=params)
        report.evidence.update(found or {})
        done: dict[str, StepResult] = {}
        facts: dict[str, str] = {}
        steps, k = runbook.steps, 0
        while k < len(steps):
            step, k = steps[k], k + 1
            await turn()  # rendering the next steps, host by host: a few a turn of the loop
            context = render_context(host, params, facts, done)
            group = self._together(steps, k - 1)
            if group:
                k += len(group) - 1
                for step, result, evidence in await self._run_together(
                        group, host, context, report, listener, reads or {}):
                    done[step.id] = result
                    facts.update(result.facts)
                    report.results.append(result)
                    if result.status is not StepStatus.ERROR:
                        report.evidence[step.id] = evidence
                continue
            if step.when:
                try:
                    wanted = evaluate(step.when, context)
                except TemplateFailed as exc:
                    wanted, report.error = False, f"step {step.id}: condition failed: {exc}"
                if not wanted:
                    continue
            try:
                rendered = render_step(step, Phase.DIAGNOSTIC, host, context)
            except TemplateFailed as exc:
                report.error = f"step {step.id}: cannot render: {exc}"
                continue
            result, evidence = await self.execute(step, rendered, host, listener)
            done[step.id] = result
            facts.update(result.facts)
            report.results.append(result)
            if result.status is not StepStatus.ERROR:
                report.evidence[step.id] = evidence
        # every rule's patterns over every step's lines: CPU work (10-60 ms a host), off the
        # loop; in a serving process out of its interpreter's lock too
        if runbook.rules is not None:
            from bot.diagnosis import diagnose, diagnose_file

            if self.apart and runbook.rules_file is not None and _rules_unchanged(runbook):
                report.causes = await off_process(diagnose_file, str(runbook.rules_file),
                                                  report.evidence, dict(params), since)
            else:
                report.causes = await off_loop(diagnose, runbook.rules, report.evidence, params,
                                               since)
        await turn()
        self._propose(runbook, report,
                      context=render_context(host, params, facts, done, report.evidence))
        await listener.host_finished(host.name)
        return report

    def _propose(self, runbook: Runbook, report: HostReport, context: Mapping[str, Any]) -> None:
        if not report.causes:
            return
        top = report.causes[0]
        if top.detail == LIKE_PAST_INCIDENTS:  # a lead to check: advice, no change proposed
            report.advice = list(top.remediation)
            return
        wanted = [r for r in top.remediation if runbook.remediation_step(r)]
        wanted += [s.id for s in runbook.remediation if top.cause in s.fixes and s.id not in wanted]
        report.advice = [r for r in top.remediation if not runbook.remediation_step(r)]
        for step_id in wanted:
            step = runbook.remediation_step(step_id)
            if step is not None and step.when:  # e.g. its target must exist on the host
                try:
                    offered = evaluate(step.when, context)
                except TemplateFailed as exc:
                    offered, report.error = False, f"step {step_id}: condition failed: {exc}"
                if not offered:
                    report.advice.append(f"{step_id} is not offered: its target is not on "
                                         f"{report.host.name} ({step.when})")
                    continue
            try:
                report.proposals.append(self.propose(runbook, step_id, report.host,
                                                     report.params, top.cause, context))
            except TemplateFailed as exc:
                report.advice.append(f"{step_id} could not be rendered: {exc}")

    def propose(self, runbook: Runbook, step_id: str, host: Host, params: Mapping[str, Any],
                cause: str, context: Mapping[str, Any] | None = None) -> Proposal:
        step = runbook.remediation_step(step_id)
        if step is None or step.verify is None:
            raise KeyError(step_id)
        context = context or render_context(host, params, {}, {})
        return Proposal(step=render_step(step, Phase.REMEDIATION, host, context),
                        verify=render_step(step.verify, Phase.VERIFY, host, context),
                        cause=cause, params=params)

    async def diagnose(self, runbook: Runbook,
                       targets: Sequence[tuple[Host, Mapping[str, Any]]],
                       listener: StepListener, *, since: Mapping[str, Any] | None = None,
                       found: Mapping[str, Mapping[str, Any]] | None = None,
                       reads: Mapping[str, Mapping[str, Read]] | None = None
                       ) -> list[HostReport]:
        """Every host at once; since, found and reads are per host name."""
        return list(await asyncio.gather(*(
            self.diagnose_host(runbook, host, params, listener,
                               since=(since or {}).get(host.name),
                               found=(found or {}).get(host.name),
                               reads=(reads or {}).get(host.name))
            for host, params in targets)))

    async def remediate(self, runbook: Runbook, proposal: Proposal, host: Host,
                        listener: StepListener) -> tuple[StepResult, StepResult | None]:
        """Run an approved remediation step, then its verify step (with retries)."""
        step = runbook.remediation_step(proposal.step.step_id)
        assert step is not None and step.verify is not None
        result, _ = await self.execute(step, proposal.step, host, listener)
        if result.status is not StepStatus.OK:
            return result, None
        return result, await self.verify(step.verify, proposal.verify, host, listener)

    async def verify(self, step: Step, rendered: RenderedStep, host: Host,
                     listener: StepListener) -> StepResult:
        attempts = step.retries + 1
        quiet = NullListener()
        handle = await listener.step_started(rendered)
        result: StepResult | None = None
        deadline = time.monotonic() + attempts * (step.interval + rendered.timeout)
        for attempt in range(1, attempts + 1):
            result, _ = await self.execute(step, rendered, host, quiet)
            if result.ok or attempt == attempts or not retryable(result) or \
                    time.monotonic() + step.interval > deadline:
                break
            await asyncio.sleep(step.interval)
        assert result is not None
        facts = {**result.facts, "attempts": f"{attempt}/{attempts}"}
        if not result.ok and attempt < attempts:
            facts["gave_up"] = "a failure that retrying cannot fix"
        result = StepResult(**{**result.__dict__, "facts": facts})
        await listener.step_finished(handle, result)
        return result
