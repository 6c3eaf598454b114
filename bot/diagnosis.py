"""Root-cause diagnosis: recorded step outputs -> ranked causes with quoted evidence.

The knowledge lives in a YAML rules file (runbooks/rules/*.yaml), not here. A rule names a cause,
and the signals for and against it: which step's output, which regex, how much it weighs. A
cause's confidence is the noisy-OR of the weights of its supporting signals that fired,
multiplied by (1 - weight) of every contradicting signal that fired:

    confidence = (1 - prod(1 - w_for)) * prod(1 - w_against)

so several weak signals that agree beat one strong signal that something else contradicts.

Evidence of now: given when the incident started (`since`), log lines whose own timestamp
(bot/logtime.py) is older than that, less a margin, raise nothing; the lines that would have
fired a signal are carried as `earlier` on the first cause, to be shown as history. A healthy
answer is an answer: when every probe that ran got 2xx and no cause is named, the result is one
`unknown` cause with detail `healthy_now`, no remediation, and the probe lines as evidence.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from itertools import islice
from pathlib import Path
from re import _constants as _sre  # type: ignore[attr-defined]
from re import _parser as _sre_parser  # type: ignore[attr-defined]
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot import pydanticlib  # noqa: F401 (first: pydantic without its plugin search)
from bot.errors import BotError, RunbookInvalid
from bot.filecache import PerVersion
from bot.logline import MESSAGE_START, MESSAGE_START_TOKEN, plain
from bot.logtime import Clock, line_time
from bot.models import HEALTHY_NOW, LIKE_PAST_INCIDENTS, Cause
from bot.similar import Library, Likeness, load_library
from bot.yamlload import SAFE_LOADER

Label = Literal["upstream_down", "upstream_crashloop", "oom_killed", "upstream_timeout",
                "dns_or_network", "wrong_proxy_config", "tls_mismatch", "dependency_down",
                "disk_full", "permission_denied", "jwt_mismatch", "unknown"]
LABELS: tuple[str, ...] = get_args(Label)  # the contract's cause labels, in this order
DEFAULT_STEPS = ("start_program", "restart_program", "reload_nginx", "docker_start",
                 "docker_restart", "systemd_restart")
MAX_TEXT = 2_000_000  # characters of each step's output looked at: the most recent ones
MAX_LINE = 8_000  # longer lines are skipped: they are data, not log lines
MAX_QUOTES = 5
MAX_EARLIER = 5
MAX_TRIES = 50  # most recent matching lines a signal with `also` conditions tries
MAX_SCAN = 5000  # most recent matching lines a `repeats` condition counts
PROBES = ("healthcheck", "proxy_check")  # the steps that fetch the service over HTTP
PROBE_STATUS = re.compile(r"^HTTP (\d{3})$")
HEALTHY_SUMMARY = ("The service answers now (every probe got 2xx) and no current log line names a "
                   "cause; the failure the alert saw may have been brief.")
# a candidate from past incidents (bot/similar.py): under the threshold, its confidence rising
# with the neighbours' agreement, above the bare symptom's
LIKENESS_BASE, LIKENESS_SPAN = 0.25, 0.2
LIKENESS_DETAIL = LIKE_PAST_INCIDENTS
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
STEP_ID = re.compile(r"[a-z][a-z0-9_]*")
Lines = Mapping[str, list[str]]  # step id -> its output's lines
log = logging.getLogger(__name__)
Params = Mapping[str, Any]


class EvidenceInvalid(BotError):
    """An evidence file for `opsbot analyze` is unreadable or not a JSON object."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    step: str | tuple[str, ...]  # the step id(s) whose output is searched
    pattern: str  # Python regex applied to each line; {param} is replaced by re.escape(value)
    absent: bool = False  # holds when the step was run but no line matches
    # holds only when the same matched text is on at least this many lines (a fatal line or a
    # start banner printed again and again: the process was restarted)
    repeats: int = Field(default=1, ge=1, le=100)

    @field_validator("step", mode="before")
    @classmethod
    def _flat(cls, step: Any) -> Any:
        """A list may nest lists (a YAML alias of a shared step list): flatten it."""
        if isinstance(step, list | tuple):
            return tuple(s for part in step for s in (part if isinstance(part, list | tuple)
                                                      else (part,)))
        return step

    @field_validator("pattern", mode="before")
    @classmethod
    def _message_start(cls, pattern: Any) -> Any:
        """`{^}`: where a log message starts, after any collector's envelope (bot/logline.py)."""
        if isinstance(pattern, str):
            return pattern.replace(MESSAGE_START_TOKEN, MESSAGE_START)
        return pattern

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:  # compiled as the diagnosis compiles it (kept by `_compile`: once per process)
            _compile(PLACEHOLDER.sub("0", pattern), re.MULTILINE)
        except re.error as exc:
            raise ValueError(f"bad regex '{pattern}': {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _repeats_needs_lines(self) -> Condition:
        if self.absent and self.repeats > 1:
            raise ValueError("repeats: an absence cannot repeat")
        return self

    @property
    def steps(self) -> tuple[str, ...]:
        return (self.step,) if isinstance(self.step, str) else self.step


class Signal(Condition):
    weight: float = Field(gt=0, le=1)
    role: Literal["for", "against"] = "for"
    also: tuple[Condition, ...] = ()  # further conditions that must all hold for it to fire
    unless: tuple[Condition, ...] = ()  # conditions of which none may hold for it to fire
    contradicts: tuple[Label, ...] = ()  # when it fires, also counts against these causes
    suggests: tuple[str, ...] = ()  # remediation offered when this signal fires
    detail: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*$")  # a finer cause
    source: str | None = None  # where the pattern's wording comes from (a URL or a program)


class Remedy(_Strict):
    do: str  # a remediation step id (or advice)
    when: tuple[str, ...] = Field(min_length=1)  # offered only if one of these steps was run


class CauseRule(_Strict):
    summary: str = Field(min_length=1)
    remediation: tuple[str | Remedy, ...] = ()  # advice first, then step ids
    signals: tuple[Signal, ...] = Field(min_length=1)
    threshold: float | None = Field(default=None, gt=0, le=1)
    max_confidence: float = Field(default=1.0, gt=0, le=1)


class Rules(_Strict):
    version: Literal[1] = 1
    symptom: str = ""
    params: tuple[str, ...] = ()  # placeholders the patterns may use
    steps: tuple[str, ...] = DEFAULT_STEPS  # remediation step ids the runbooks define
    threshold: float = Field(default=0.5, gt=0, le=1)  # a cause below it is only a candidate
    report_floor: float = Field(default=0.15, ge=0, le=1)  # candidates below it are not shown
    # past incidents (a file beside the rules, written by bench/diagnosis_report.py): when no
    # rule names a cause, the closest ones' shared cause is offered as a candidate
    similar: str | None = None
    causes: dict[Label, CauseRule]

    @model_validator(mode="after")
    def _references(self) -> Rules:
        for label, rule in self.causes.items():
            for j, item in enumerate(rule.remediation):
                self._check_step(item if isinstance(item, str) else item.do,
                                 f"causes.{label}.remediation.{j}")
            for i, signal in enumerate(rule.signals):
                for j, advice in enumerate(signal.suggests):
                    self._check_step(advice, f"causes.{label}.signals.{i}.suggests.{j}")
                groups = set(_compile(PLACEHOLDER.sub("0", signal.pattern),
                                      re.MULTILINE).groupindex)
                for name in PLACEHOLDER.findall(signal.pattern):
                    if name not in self.params:
                        raise ValueError(f"causes.{label}.signals.{i}.pattern: unknown parameter "
                                         f"{{{name}}} (declare it under params:)")
                conditions = (*signal.also, *signal.unless)
                for name in PLACEHOLDER.findall(" ".join(c.pattern for c in conditions)):
                    if name not in self.params and name not in groups:
                        raise ValueError(f"causes.{label}.signals.{i}.also: unknown parameter "
                                         f"{{{name}}} (declare it under params: or name a group "
                                         f"(?P<{name}>...) of the signal's pattern)")
        return self

    def _check_step(self, advice: str, where: str) -> None:
        if STEP_ID.fullmatch(advice) and advice not in self.steps:
            raise ValueError(f"{where}: unknown remediation step {advice!r} "
                             f"(known: {', '.join(self.steps)}; write advice as a sentence)")


# ---------------------------------------------------------------- loading


def load_rules(path: Path) -> Rules:
    """Read and validate a rules file (once per version of the file, however many runbooks
    name it); errors name the file and the YAML line."""
    path = Path(path)
    try:
        return _loaded.get(path)
    except OSError as exc:
        raise RunbookInvalid(f"{path}:1: cannot read rules: {exc.strerror or exc}") from None


def _read_rules(name: str) -> Rules:
    path = Path(name)
    text = path.read_text(encoding="utf-8")
    rules = _load_rules(path, text)
    if rules.similar is not None:  # read now: a broken file is an error at load time
        where = path.parent / rules.similar
        line = next((n for n, row in enumerate(text.splitlines(), 1)
                     if row.startswith("similar:")), 1)
        if not where.exists():  # e.g. the rules copied alone: they work, without the fallback
            log.warning("%s:%d: similar: %s not found: no past incidents to compare with",
                        path, line, where)
            rules = rules.model_copy(update={"similar": None})
        else:
            try:
                load_library(where)
            except RunbookInvalid as exc:
                raise RunbookInvalid(f"{path}:{line}: similar: {exc}") from None
            rules = rules.model_copy(update={"similar": str(where)})
    return rules


_loaded = PerVersion(_read_rules)  # however many runbooks name a rules file


def _load_rules(path: Path, text: str) -> Rules:
    try:
        root = yaml.compose(text, Loader=SAFE_LOADER)
        data = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise RunbookInvalid(f"{path}:{line}: YAML syntax error: "
                             f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise RunbookInvalid(f"{path}:1: a rules file is a mapping with a causes: section")
    duplicate = _duplicate_key(root)
    if duplicate is not None:
        raise RunbookInvalid(f"{path}:{duplicate.start_mark.line + 1}: duplicate key "
                             f"{duplicate.value!r} (the later one would silently win)")
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # typos first
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}"
        elif err["type"] == "literal_error" and "[key]" in loc:
            bad = loc[loc.index("[key]") - 1]
            message = f"unknown cause label {bad!r}; known: {', '.join(LABELS)}"
        if loc == () and message.startswith("causes."):  # cross-reference errors carry their path
            where, _, message = message.partition(": ")
            loc = tuple(int(p) if p.isdigit() else p for p in where.split("."))
        dotted = ".".join(str(p) for p in loc if p != "[key]")
        line = _line_of(root, loc)
        raise RunbookInvalid(f"{path}:{line}: {dotted + ': ' if dotted else ''}{message}") from None


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """1-based line of the YAML node a pydantic error location points at (or its nearest parent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                return line
            line, node = pair[0].start_mark.line + 1, pair[1]  # the key's line: "field: value"
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _duplicate_key(node: yaml.Node | None) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                return key
            seen.add(key.value if isinstance(key, yaml.ScalarNode) else "")
            found = _duplicate_key(value)
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        return next((d for d in map(_duplicate_key, node.value) if d is not None), None)
    return None


def load_evidence(path: Path | str) -> dict[str, Any]:
    """Evidence for `opsbot analyze`: a JSON object {step id: output}. A corpus case file
    ({"label": ..., "evidence": {...}}) is accepted too: its evidence object is returned."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EvidenceInvalid(f"{path}: cannot read evidence: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise EvidenceInvalid(f"{path}: evidence is not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EvidenceInvalid(f"{path}:{exc.lineno}: evidence is not valid JSON: {exc.msg} "
                              f"(column {exc.colno})") from None
    if not isinstance(data, dict):
        raise EvidenceInvalid(f"{path}: evidence must be a JSON object of step id -> output, "
                              f"not a {type(data).__name__}")
    evidence: dict[str, Any] = data["evidence"] if isinstance(data.get("evidence"), dict) \
        else data
    return evidence


# ---------------------------------------------------------------- diagnosing


def diagnose(rules: Rules, evidence: Mapping[str, Any],
             params: Mapping[str, Any] | None = None,
             since: datetime | Clock | None = None, *,
             library: Library | None = None) -> list[Cause]:
    """Rank the causes the evidence supports, most likely first. Never raises on odd input.

    `params` are the runbook's (or discovery's) facts: upstream_port, program, container, ...
    `since` is when the incident started (a datetime, or a Clock that also knows the host's UTC
    offset, its boot time and the margin): older log lines are shown as `earlier`, not counted.
    `library`: the past incidents to compare with when no rule names a cause (default: the
    rules' own `similar` file, if any).
    """
    current, earlier_lines = _split_by_time(_lines_by_step(evidence), _clock(since))
    lines, stale = StepLines(current), StepLines(earlier_lines)
    params = _usable_params(params)
    fired: dict[str, list[tuple[Signal, str | None]]] = {label: [] for label in rules.causes}
    against: dict[str, list[float]] = {label: [] for label in rules.causes}
    earlier: list[str] = []
    for label, signal, first_only in _plan(rules):
        if stale and signal.role == "for" and not signal.absent:
            old = _holds(signal, stale, params)
            if old:
                earlier.extend(part for part in _quoted(old) if part not in earlier)
        hit = lines.first_hit(signal.steps, signal.pattern) if first_only else \
            _fires(signal, lines, params)
        if hit is None:
            continue
        if signal.role == "against":
            against[label].append(signal.weight)
        else:
            fired[label].append((signal, hit or None))
        for other in signal.contradicts:
            if other in against:
                against[other].append(signal.weight)

    def score(label: str, signals: list[tuple[Signal, str | None]]) -> float:
        support = 1.0 - _product(1.0 - s.weight for s, _ in signals)
        return support * _product(1.0 - w for w in against[label])

    scores: dict[str, float] = {
        label: min(score(label, fired[label]), rule.max_confidence)
        for label, rule in rules.causes.items() if label != "unknown"}
    best = max(scores.values(), default=0.0)
    named = any(scores[label] >= (rule.threshold or rules.threshold)
                for label, rule in rules.causes.items() if label != "unknown")
    specific = 0.0
    if "unknown" in rules.causes:
        # `unknown` signals with a `detail` name a cause outside the labels (port in use, ...):
        # scored like any cause. The others describe the bare symptom (a 502): reported, capped,
        # only when no cause is named, and the less the better the best other cause fits.
        rule = rules.causes["unknown"]
        specific = score("unknown", [pair for pair in fired["unknown"] if pair[0].detail])
        named = named or specific >= (rule.threshold or rules.threshold)
    healthy = _probes_answer(lines)
    # no rule says anything but the symptom: what did the closest past incidents have?
    likeness = None if named or healthy or best >= rules.report_floor else \
        _nearest(rules, lines, library)
    if likeness is not None:
        best = LIKENESS_BASE + LIKENESS_SPAN * likeness.share
    if "unknown" in rules.causes:
        rule = rules.causes["unknown"]
        symptom = 0.0 if named else min(score("unknown", fired["unknown"]) * (1.0 - best),
                                        rule.max_confidence)
        scores["unknown"] = max(specific, symptom)
    if healthy and not named:
        unknown = rules.causes.get("unknown")
        return [Cause(cause="unknown", confidence=unknown.max_confidence if unknown else 0.45,
                      evidence=tuple(dict.fromkeys(healthy)), remediation=(),
                      summary=HEALTHY_SUMMARY, detail=HEALTHY_NOW,
                      earlier=tuple(earlier[:MAX_EARLIER]))]

    causes = [_cause(label, scores[label], rule, fired[label], lines)
              for label, rule in rules.causes.items()
              if scores[label] >= max(rules.report_floor, 1e-9)]
    if likeness is not None:
        causes.append(_like(likeness, best, rules.causes[likeness.cause]))  # type: ignore[index]
    causes.sort(key=lambda c: (-c.confidence, LABELS.index(c.cause)))
    if earlier:
        if not causes and "unknown" in rules.causes:  # only history: say so, name nothing
            rule = rules.causes["unknown"]
            causes = [Cause(cause="unknown", confidence=rules.report_floor,
                            remediation=tuple(r for r in rule.remediation if isinstance(r, str)),
                            summary=rule.summary)]
        if causes:
            causes[0] = replace(causes[0], earlier=tuple(earlier[:MAX_EARLIER]))
    return causes


def diagnose_file(rules_file: str, evidence: Mapping[str, Any],
                  params: Mapping[str, Any] | None = None,
                  since: datetime | Clock | None = None) -> list[Cause]:
    """`diagnose` with the rules read from their file: what a worker process runs (the file
    is read once per version of it in each process)."""
    return diagnose(load_rules(Path(rules_file)), evidence, params, since)


def current_lines(evidence: Mapping[str, Any],
                  since: datetime | Clock | None = None) -> dict[str, list[str]]:
    """The lines of each step as `diagnose` reads them, less those older than the incident."""
    return _split_by_time(_lines_by_step(evidence), _clock(since))[0]


def _clock(since: datetime | Clock | None) -> Clock | None:
    return Clock(since) if isinstance(since, datetime) else \
        since if isinstance(since, Clock) else None  # anything else: the time is unknown


def _nearest(rules: Rules, lines: Lines, library: Library | None) -> Likeness | None:
    """The cause the closest past incidents share, when it is a cause of these rules."""
    if library is None:
        if rules.similar is None:
            return None
        try:
            library = load_library(Path(rules.similar))
        except RunbookInvalid:  # checked at load time; gone since: no comparison
            return None
    likeness = library.nearest(lines)
    if likeness is None or likeness.cause == "unknown" or likeness.cause not in rules.causes:
        return None
    return likeness


def _like(likeness: Likeness, confidence: float, rule: CauseRule) -> Cause:
    """A candidate cause from past incidents: their cause, the lines that look like theirs."""
    seen = ", ".join(dict.fromkeys(i.source for i in likeness.incidents[:3]))
    advice = (f"No rule names the cause; the past incidents closest to this output were "
              f"{likeness.cause} ({seen}): compare with them before acting.")
    # advice only: a likeness is a lead to check, not grounds to propose a change
    remediation = [advice] + [item for item in rule.remediation
                              if isinstance(item, str) and not STEP_ID.fullmatch(item)]
    return Cause(cause=likeness.cause, confidence=round(confidence, 4), evidence=likeness.quotes,
                 remediation=tuple(dict.fromkeys(remediation)), summary=rule.summary,
                 detail=LIKENESS_DETAIL)


def _probes_answer(lines: Lines) -> list[str]:
    """The probes' status lines when every probe that ran got 2xx; else []."""
    found: list[str] = []
    for step in PROBES:
        if step not in lines:
            continue
        status = next((line for line in reversed(lines[step]) if PROBE_STATUS.match(line)), None)
        if status is None or not status.startswith("HTTP 2"):
            return []
        found.append(status)
    return found


def _split_by_time(lines: dict[str, list[str]], clock: Clock | None
                   ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(current, earlier) lines of each step. A line without a time of its own (a stack trace's
    continuation) has the time of the line before it; lines before any time are current."""
    if clock is None:
        return lines, {}
    current: dict[str, list[str]] = {}
    earlier: dict[str, list[str]] = {}
    for step, step_lines in lines.items():
        now, old = current.setdefault(step, []), earlier.setdefault(step, [])
        stale = False
        for line in step_lines:
            when = line_time(plain(line), clock)
            if when is not None:
                try:
                    stale = clock.is_earlier(when)
                except (TypeError, OverflowError):  # a time that cannot be compared: current
                    stale = False
            (old if stale else now).append(line)
    return current, {step: old for step, old in earlier.items() if old}


def _fires(signal: Signal, lines: StepLines, params: Params) -> str | None:
    """None if the signal does not fire; else the line it rests on ('' for an absence).
    The named groups of the line's match fill {placeholders} of the `also` conditions, so that
    a condition can name what the line names (the address nginx dialed, its port)."""
    if not (signal.also or signal.unless) and _plain_condition(signal):
        return _first_hit(signal, lines)
    for hit, groups in islice(_matches(signal, lines, params), MAX_TRIES):
        scope = {**params, **groups}
        if all(next(_matches(c, lines, scope), None) is not None for c in signal.also) and \
                not any(next(_matches(c, lines, scope), None) is not None for c in signal.unless):
            return hit
    return None


def _holds(cond: Condition, lines: StepLines, params: Params) -> str | None:
    if _plain_condition(cond):
        return _first_hit(cond, lines)
    return next((hit for hit, _ in _matches(cond, lines, params)), None)


def _plain_condition(cond: Condition) -> bool:
    """A condition whose first match is its steps' first hit: most of the rules' (no
    placeholder, no absence, no repeat count), judged without `_matches`'s generators."""
    return not cond.absent and cond.repeats == 1 and not _placeholders(cond.pattern)


_plans: dict[int, tuple[Rules, tuple[tuple[str, Signal, bool], ...]]] = {}


def _plan(rules: Rules) -> tuple[tuple[str, Signal, bool], ...]:
    """Every (label, signal, first_only) of the rules, in order; `first_only` when its first
    hit is all it needs (`_fires` would take `_first_hit`): judged once per rules object, not
    once per signal and host (~520 signals a diagnosis)."""
    kept = _plans.get(id(rules))
    if kept is None or kept[0] is not rules:
        if len(_plans) >= 8:  # a few versions of a few files in a process
            _plans.clear()
        kept = _plans[id(rules)] = (rules, tuple(
            (label, signal, not (signal.also or signal.unless) and _plain_condition(signal))
            for label, rule in rules.causes.items() for signal in rule.signals))
    return kept[1]


def _first_hit(cond: Condition, lines: StepLines) -> str | None:
    """The most recent line of the first of the condition's steps that has one it matches."""
    return lines.first_hit(cond.steps, cond.pattern)


def _matches(cond: Condition, lines: StepLines,
             params: Params) -> Iterator[tuple[str, dict[str, str]]]:
    """The lines that satisfy a condition, most recent first, with their named groups; for an
    absence, one ('', {}) when the step ran and no line matches."""
    present = [step for step in cond.steps if step in lines]
    if not present:
        return
    pattern = cond.pattern
    names = _placeholders(pattern)
    if names:
        if any(name not in params for name in names):
            return  # cannot be judged without the parameter
        pattern = PLACEHOLDER.sub(lambda m: re.escape(params[m.group(1)]), pattern)
    # each (pattern, step) is scanned once per diagnosis (StepLines keeps what it found)
    found: Iterator[tuple[str, re.Match[str]]] = (
        hit for step in present for hit in lines.hits(step, pattern))
    if cond.absent:
        if next(found, None) is None:
            yield "", {}
        return
    if cond.repeats > 1:  # only the lines whose matched text recurs often enough
        hits = list(islice(found, MAX_SCAN))
        counts = Counter(match.group(0) for _, match in hits)
        found = ((line, match) for line, match in hits if counts[match.group(0)] >= cond.repeats)
    for line, match in found:
        yield line, {k: v for k, v in match.groupdict().items() if v is not None}


def _cause(label: str, score: float, rule: CauseRule,
           fired: list[tuple[Signal, str | None]], lines: Lines) -> Cause:
    quotes: list[str] = []
    ranked = sorted(fired, key=lambda pair: -pair[0].weight)
    finer = next((signal for signal, _ in ranked if signal.detail), None)
    remediation = list(finer.suggests) if finer else []
    remediation += [item if isinstance(item, str) else item.do for item in rule.remediation
                    if isinstance(item, str) or any(step in lines for step in item.when)]
    for signal, line in ranked:
        for part in _quoted(line) if line else ():
            if part not in quotes and len(quotes) < MAX_QUOTES:
                quotes.append(part)
        remediation.extend(s for s in signal.suggests if s not in remediation)
    return Cause(cause=label, confidence=round(score, 4), evidence=tuple(quotes),
                 remediation=tuple(dict.fromkeys(remediation)), summary=rule.summary,
                 detail=finer.detail if finer else None)


def _usable_params(params: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(params, Mapping):
        for key, value in params.items():
            try:
                text = "" if value is None else str(value)
            except Exception:  # a parameter that cannot be shown is not given
                text = ""
            if text:
                out[str(key)] = text
    return out


def _lines_by_step(evidence: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        items = list(evidence.items())
    except Exception:  # not a mapping: no evidence
        return out
    for step, value in items:
        try:
            text = _as_text(value)
        except Exception:  # an output that cannot be read is not evidence
            text = None
        if text is None or not isinstance(step, str):
            continue
        if len(text) > MAX_TEXT:  # keep the most recent output, from a line boundary
            text = text[-MAX_TEXT:]
            text = text[text.find("\n") + 1:] if "\n" in text else ""
        out[step] = [line.rstrip() for line in text.splitlines() if len(line) <= MAX_LINE]
    return out


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value[-MAX_TEXT * 4:]).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return str(value)


@lru_cache(maxsize=2048)
def _compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _may_match(needles: tuple[str, ...], text: str) -> bool:
    """False when `text` holds none of the texts every match needs (one of `needles`)."""
    if not needles:
        return True
    for needle in needles:
        if needle in text:
            return True
    return False


@lru_cache(maxsize=2048)
def _placeholders(pattern: str) -> tuple[str, ...]:
    return tuple(PLACEHOLDER.findall(pattern))


@lru_cache(maxsize=2048)
def _needles(pattern: str) -> tuple[str, ...]:
    """Texts one of which every match of `pattern` contains, read from the parsed regex: its
    longest run of plain characters, or an alternation's runs (one per branch); () when none
    is sure (case-insensitive parts, classes, optional parts count for nothing). A text that
    holds none of them is not searched: the rules' ~400 regexes per host were most of the
    diagnosis's CPU, and a substring test costs a fraction of a regex scan."""
    try:
        parsed = _sre_parser.parse(pattern)
    except Exception:  # the regex module's own parser: anything odd means no shortcut
        return ()
    if parsed.state.flags & re.IGNORECASE:
        return ()
    return _required(list(parsed))


@lru_cache(maxsize=2048)
def _also_needed(pattern: str) -> tuple[tuple[str, ...], ...]:
    """Further texts every match of `pattern` needs besides `_needles`' (one of each tuple):
    every required run the parsed regex has, not only the longest, the most selective first
    (at most 3). A text that holds `_needles` but misses one of these is not searched either:
    e.g. a Docker Compose `nginx.1 | ...` prefix rules out a plain nginx error log, whose
    longest required text (`) while connecting to upstream`) it does hold."""
    try:
        parsed = _sre_parser.parse(pattern)
    except Exception:
        return ()
    if parsed.state.flags & re.IGNORECASE:
        return ()
    best = _needles(pattern)
    found = [g for g in dict.fromkeys(_every_required(list(parsed))) if g != best and all(g)]
    found.sort(key=lambda g: -min(map(len, g)))
    return tuple(found[:3])


def _every_required(items: list[tuple[Any, Any]]) -> list[tuple[str, ...]]:
    """Every tuple of texts one of which each match of the parsed regex `items` contains (as
    `_required` finds them; it keeps only the longest)."""
    out: list[tuple[str, ...]] = []
    run: list[str] = []
    for op, av in items:
        if op is _sre.LITERAL:
            run.append(chr(av))
            continue
        if run:
            out.append(("".join(run),))
        run = []
        if op is _sre.SUBPATTERN:
            _, add_flags, _, inner = av
            if not add_flags & re.IGNORECASE:
                out.extend(_every_required(list(inner)))
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            low, _, inner = av
            if low >= 1:
                out.extend(_every_required(list(inner)))
        elif op is _sre.ATOMIC_GROUP:
            out.extend(_every_required(list(av)))
        elif op is _sre.BRANCH:
            branches = [_required(list(b)) for b in av[1]]
            if all(branches):
                out.append(tuple(dict.fromkeys(n for b in branches for n in b)))
    if run:
        out.append(("".join(run),))
    return out


@lru_cache(maxsize=2048)
def _folded(pattern: str) -> tuple[str, ...]:
    """As `_needles`, in lower case and case-insensitive parts included: texts one of which
    the lower-cased text of every match contains. Only ASCII ones, and only for an ASCII text
    (`StepLines.lowered`): there a case-insensitive match of an ASCII text is one in lower
    case, as the regex module folds it. For the regexes with a case-insensitive branch, which
    `_needles` cannot rule out, and which cost the most to scan."""
    try:
        parsed = _sre_parser.parse(pattern)
    except Exception:
        return ()
    return _required(list(parsed), fold=True)


def _required(items: list[tuple[Any, Any]], fold: bool = False) -> tuple[str, ...]:
    best: tuple[str, ...] = ()

    def consider(found: tuple[str, ...]) -> None:
        nonlocal best
        if found and all(found) and (not best or min(map(len, found)) > min(map(len, best))):
            best = found

    run: list[str] = []
    for op, av in items:
        if op is _sre.LITERAL and (not fold or av < 128):
            run.append(chr(av).lower() if fold else chr(av))
            continue
        consider(("".join(run),) if run else ())
        run = []
        if op is _sre.SUBPATTERN:
            _, add_flags, _, inner = av
            if fold or not add_flags & re.IGNORECASE:
                consider(_required(list(inner), fold))
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            low, _, inner = av
            if low >= 1:
                consider(_required(list(inner), fold))
        elif op is _sre.ATOMIC_GROUP:
            consider(_required(list(av), fold))
        elif op is _sre.BRANCH:
            branches = [_required(list(b), fold) for b in av[1]]
            if all(branches):
                consider(tuple(dict.fromkeys(n for b in branches for n in b)))
    consider(("".join(run),) if run else ())
    return best


# nginx's error-log entry ([level] pid#tid: ...) and the parts of it a thread may push onto
# lines of their own: the action (", while connecting to upstream") and the request's context
# (ngx_http_log_error_handler: ", client: ", ", server: ", ", request: ", ", upstream: ", ...)
NGINX_ENTRY = re.compile(r"\[(?:emerg|alert|crit|error|warn|notice|info)\] ")
NGINX_CONTINUED = re.compile(
    r"\s*(?:, ?)?(?:while [a-z]|(?:client|server|request|subrequest|upstream|host|referrer): )")


def _rejoined(lines: list[str], bare: list[str]) -> tuple[list[str], list[str]]:
    """(quotes, texts) of a step's lines, an nginx error-log line wrapped over several (its
    action or context pushed onto the next line, as threads quote it) joined into one: its text
    with a blank at each break, its quote the lines as read with a newline between them. The
    same lists when nothing is wrapped (most outputs)."""
    if not any(NGINX_CONTINUED.match(text) for text in bare[1:]):
        return lines, bare
    quotes: list[str] = []
    texts: list[str] = []
    for line, text in zip(lines, bare, strict=True):
        if texts and NGINX_CONTINUED.match(text) and NGINX_ENTRY.search(texts[-1]):
            quotes[-1] += "\n" + line
            texts[-1] = texts[-1].rstrip() + " " + text.strip()
        else:
            quotes.append(line)
            texts.append(text)
    return quotes, texts


def _quoted(hit: str) -> list[str]:
    """The lines a hit quotes, as read: one, or the lines of an nginx line a thread wrapped."""
    return hit.split("\n")


class StepLines(dict[str, list[str]]):
    """The lines of each step, and each step's text joined once: a regex that finds nothing in
    the whole text finds nothing in any line, so most signals cost one scan, not one per line.
    The matching lines of a (pattern, step) are kept: the rules reuse a pattern in many signals
    and conditions (the fatal start-up lines, the restart evidence, the proxy's answer).
    A hit is the line as read; an nginx line that a thread wrapped is matched whole and its hit
    is its lines joined by newlines (`_quoted` gives them back one by one)."""

    def __init__(self, lines: Mapping[str, list[str]]) -> None:
        super().__init__(lines)
        # what is matched: each step's lines without terminal codes, an nginx line wrapped in a
        # thread joined again (`_rejoined`); what is quoted: the lines as read, a rejoined one
        # as its lines with a newline between them (`_quoted` splits them)
        self._quotes: dict[str, list[str]] = {}
        self._plain: dict[str, list[str]] = {}
        for step, step_lines in lines.items():
            self._quotes[step], self._plain[step] = _rejoined(
                step_lines, [plain(line) for line in step_lines])
        self._texts: dict[str, str] = {}
        self._lowered: dict[str, str | None] = {}
        self._hits: dict[tuple[str, str], _Hits] = {}

    def text(self, step: str) -> str:
        """The step's lines without terminal codes, joined."""
        if step not in self._texts:
            self._texts[step] = "\n".join(self._plain[step])
        return self._texts[step]

    def lowered(self, step: str) -> str | None:
        """The step's text in lower case, when it is ASCII (else None: see `_folded`)."""
        if step not in self._lowered:
            text = self.text(step)
            self._lowered[step] = text.lower() if text.isascii() else None
        return self._lowered[step]

    def _may_match(self, step: str, pattern: str, needles: tuple[str, ...]) -> bool:
        """False when the step's text holds none of the texts every match needs."""
        if needles:
            return _may_match(needles, self.text(step))
        folded = _folded(pattern)
        if not folded:
            return True
        lowered = self.lowered(step)
        return lowered is None or _may_match(folded, lowered)

    def first_hit(self, steps: tuple[str, ...], pattern: str) -> str | None:
        """The most recent matching line of the first of the steps that has one (`hits`,
        inline: the rules' plain signals ask it directly, ~500 a diagnosis)."""
        hits = self._hits
        for step in steps:
            if step in self:
                found = hits.get((pattern, step))
                if found is None:
                    found = hits[(pattern, step)] = self._scan(step, pattern)
                if found.any():
                    return found.first
        return None

    def hits(self, step: str, pattern: str) -> _Hits:
        """The lines of a step that the pattern matches, most recent first, with their match
        (the MAX_SCAN most recent: as many as any signal or condition looks at)."""
        key = (pattern, step)
        found = self._hits.get(key)
        if found is None:
            found = self._hits[key] = self._scan(step, pattern)
        return found

    def _scan(self, step: str, pattern: str) -> _Hits:
        needles = _needles(pattern)  # a text without them cannot match: no scan
        if needles:  # the common case, inline: ~1,000 (pattern, step) pairs a diagnosis
            text = self._texts.get(step)
            if text is None:
                text = self.text(step)
            for needle in needles:
                if needle in text:
                    break
            else:
                return _NONE
            for group in _also_needed(pattern):
                if not _may_match(group, text):
                    return _NONE
        elif not self._may_match(step, pattern, needles):
            return _NONE
        # one compiled pattern for the text and its lines: a line holds no newline, so ^
        # and $ match in it as without MULTILINE
        regex = _compile(pattern, re.MULTILINE)
        if not regex.search(self.text(step)):
            return _NONE
        pairs = zip(reversed(self._quotes[step]), reversed(self._plain[step]), strict=True)
        return _Hits(islice(((line, match) for line, bare in pairs
                             if _may_match(needles, bare)
                             and (match := regex.search(bare))), MAX_SCAN))


class _Hits:
    """The matching lines of a (pattern, step), most recent first, each searched for when it
    is first asked for: most signals want only the most recent line (`first`), and a line's
    regex search is most of the cost of a pattern that matches (~40 lines of a log)."""

    __slots__ = ("_found", "_rest")

    def __init__(self, rest: Iterator[tuple[str, re.Match[str]]] | None) -> None:
        self._found: list[tuple[str, re.Match[str]]] = []
        self._rest = rest

    def _more(self) -> bool:
        if self._rest is not None:
            nxt = next(self._rest, None)
            if nxt is not None:
                self._found.append(nxt)
                return True
            self._rest = None
        return False

    def any(self) -> bool:
        return bool(self._found) or self._more()

    @property
    def first(self) -> str:
        """The most recent matching line (after `any()` said there is one)."""
        return self._found[0][0]

    def __iter__(self) -> Iterator[tuple[str, re.Match[str]]]:
        i = 0
        while i < len(self._found) or self._more():
            yield self._found[i]
            i += 1


_NONE = _Hits(None)


def _product(values: Any) -> float:
    result = 1.0
    for value in values:
        result *= value
    return result
