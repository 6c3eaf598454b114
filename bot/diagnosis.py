"""Root-cause diagnosis: recorded step outputs -> ranked causes with quoted evidence.

The knowledge lives in a YAML rules file (runbooks/rules/*.yaml), not here. A rule names a cause,
and the signals for and against it: which step's output, which regex, how much it weighs. A
cause's confidence is the noisy-OR of the weights of its supporting signals that fired,
multiplied by (1 - weight) of every contradicting signal that fired:

    confidence = (1 - prod(1 - w_for)) * prod(1 - w_against)

so several weak signals that agree beat one strong signal that something else contradicts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.errors import BotError, RunbookInvalid
from bot.models import Cause

Label = Literal["upstream_down", "upstream_crashloop", "oom_killed", "upstream_timeout",
                "dns_or_network", "wrong_proxy_config", "tls_mismatch", "dependency_down",
                "disk_full", "permission_denied", "jwt_mismatch", "unknown"]
LABELS: tuple[str, ...] = get_args(Label)  # the contract's cause labels, in this order
DEFAULT_STEPS = ("start_program", "restart_program", "reload_nginx", "docker_start",
                 "docker_restart", "systemd_restart")
MAX_TEXT = 2_000_000  # characters of each step's output looked at: the most recent ones
MAX_LINE = 8_000  # longer lines are skipped: they are data, not log lines
MAX_QUOTES = 5
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
STEP_ID = re.compile(r"[a-z][a-z0-9_]*")
Lines = Mapping[str, list[str]]  # step id -> its output's lines
Params = Mapping[str, Any]


class EvidenceInvalid(BotError):
    """An evidence file for `opsbot analyze` is unreadable or not a JSON object."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    step: str | tuple[str, ...]  # the step id(s) whose output is searched
    pattern: str  # Python regex applied to each line; {param} is replaced by re.escape(value)
    absent: bool = False  # holds when the step was run but no line matches

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(PLACEHOLDER.sub("0", pattern))
        except re.error as exc:
            raise ValueError(f"bad regex '{pattern}': {exc}") from None
        return pattern

    @property
    def steps(self) -> tuple[str, ...]:
        return (self.step,) if isinstance(self.step, str) else self.step


class Signal(Condition):
    weight: float = Field(gt=0, le=1)
    role: Literal["for", "against"] = "for"
    also: tuple[Condition, ...] = ()  # further conditions that must all hold for it to fire
    contradicts: tuple[Label, ...] = ()  # when it fires, also counts against these causes
    suggests: tuple[str, ...] = ()  # remediation offered when this signal fires


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
                patterns = [signal.pattern, *(c.pattern for c in signal.also)]
                for name in PLACEHOLDER.findall(" ".join(patterns)):
                    if name not in self.params:
                        raise ValueError(f"causes.{label}.signals.{i}.pattern: unknown parameter "
                                         f"{{{name}}} (declare it under params:)")
        return self

    def _check_step(self, advice: str, where: str) -> None:
        if STEP_ID.fullmatch(advice) and advice not in self.steps:
            raise ValueError(f"{where}: unknown remediation step {advice!r} "
                             f"(known: {', '.join(self.steps)}; write advice as a sentence)")


# ---------------------------------------------------------------- loading


def load_rules(path: Path) -> Rules:
    """Read and validate a rules file; errors name the file and the YAML line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunbookInvalid(f"{path}:1: cannot read rules: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
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
    if isinstance(data.get("evidence"), dict):
        data = data["evidence"]
    return data


# ---------------------------------------------------------------- diagnosing


def diagnose(rules: Rules, evidence: Mapping[str, Any],
             params: Mapping[str, Any] | None = None) -> list[Cause]:
    """Rank the causes the evidence supports, most likely first. Never raises on odd input."""
    lines = _lines_by_step(evidence)
    params = _usable_params(params)
    fired: dict[str, list[tuple[Signal, str | None]]] = {label: [] for label in rules.causes}
    against: dict[str, list[float]] = {label: [] for label in rules.causes}
    for label, rule in rules.causes.items():
        for signal in rule.signals:
            hit = _fires(signal, lines, params)
            if hit is None:
                continue
            if signal.role == "against":
                against[label].append(signal.weight)
            else:
                fired[label].append((signal, hit or None))
            for other in signal.contradicts:
                if other in against:
                    against[other].append(signal.weight)

    scores: dict[str, float] = {}
    for label in rules.causes:
        support = 1.0 - _product(1.0 - s.weight for s, _ in fired[label])
        scores[label] = support * _product(1.0 - w for w in against[label])

    known = [(scores[label], rule) for label, rule in rules.causes.items() if label != "unknown"]
    best = max((score for score, _ in known), default=0.0)
    named = any(score >= (rule.threshold or rules.threshold) for score, rule in known)
    if "unknown" in scores:  # a 502 whose cause nothing here explains
        scores["unknown"] = 0.0 if named else scores["unknown"] * (1.0 - best)

    causes = [_cause(label, min(scores[label], rule.max_confidence), rule, fired[label], lines)
              for label, rule in rules.causes.items()
              if min(scores[label], rule.max_confidence) >= max(rules.report_floor, 1e-9)]
    causes.sort(key=lambda c: (-c.confidence, LABELS.index(c.cause)))
    return causes


def _fires(signal: Signal, lines: Lines, params: Params) -> str | None:
    """None if the signal does not fire; else the line it rests on ('' for an absence)."""
    hit = _holds(signal, lines, params)
    if hit is None or any(_holds(c, lines, params) is None for c in signal.also):
        return None
    return hit


def _holds(cond: Condition, lines: Lines, params: Params) -> str | None:
    present = [step for step in cond.steps if step in lines]
    if not present:
        return None
    if any(name not in params for name in PLACEHOLDER.findall(cond.pattern)):
        return None  # cannot be judged without the parameter
    regex = _compile(PLACEHOLDER.sub(lambda m: re.escape(params[m.group(1)]), cond.pattern))
    hit = next((line for step in present for line in reversed(lines[step]) if regex.search(line)),
               None)  # the most recent matching line
    if cond.absent:
        return "" if hit is None else None
    return hit


def _cause(label: str, score: float, rule: CauseRule,
           fired: list[tuple[Signal, str | None]], lines: Lines) -> Cause:
    quotes: list[str] = []
    remediation = [item if isinstance(item, str) else item.do for item in rule.remediation
                   if isinstance(item, str) or any(step in lines for step in item.when)]
    for signal, line in sorted(fired, key=lambda pair: -pair[0].weight):
        if line and line not in quotes and len(quotes) < MAX_QUOTES:
            quotes.append(line)
        remediation.extend(s for s in signal.suggests if s not in remediation)
    return Cause(cause=label, confidence=round(score, 4), evidence=tuple(quotes),
                 remediation=tuple(dict.fromkeys(remediation)), summary=rule.summary)


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


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _product(values: Any) -> float:
    result = 1.0
    for value in values:
        result *= value
    return result
