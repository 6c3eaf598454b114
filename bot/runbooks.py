"""Runbooks: YAML -> validated Runbook, at load time, with file:line errors.

A runbook has label matchers (Alertmanager syntax), typed parameters, diagnostic steps and
remediation steps (always behind approval, each with a verify step). Step kinds come from the one
table in `bot.executors`; each kind validates its own fields.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot import templates
from bot.errors import ParamInvalid, RunbookInvalid
from bot.executors import KINDS, KindParams
from bot.models import sha256_hex
from bot.params import NEVER_OPEN, ParamSpec, coerce_param
from bot.yamlload import SAFE_LOADER

CAUSES = ("upstream_down", "upstream_crashloop", "oom_killed", "upstream_timeout",
          "dns_or_network", "wrong_proxy_config", "tls_mismatch", "dependency_down",
          "disk_full", "permission_denied", "jwt_mismatch", "unknown")
CONTEXT_NAMES = {"host", "facts", "steps", "params", "incident"}  # besides parameters
ID = r"^[a-z][a-z0-9_]{0,62}$"


# -- YAML with line numbers -------------------------------------------------------------
class LineDict(dict[Any, Any]):
    line = 0
    key_lines: dict[Any, int]


class LineList(list[Any]):
    line = 0
    item_lines: list[int]


class _Loader(SAFE_LOADER):  # type: ignore[misc,valid-type]
    """libyaml's safe loader when PyYAML has it (bot.yamlload); the constructors below keep
    each node's line either way."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line, out.key_lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}",
                                       problem_mark=key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(n, deep=True) for n in node.value)
    out.line, out.item_lines = node.start_mark.line + 1, [n.start_mark.line + 1 for n in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RunbookInvalid(f"{path}:{line}: {exc.problem or 'invalid YAML'}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookInvalid(f"{path}:1: cannot read: {exc}") from None


def line_of(data: Any, loc: Iterable[Any]) -> int:
    line = getattr(data, "line", 1)
    for part in loc:
        if isinstance(data, LineDict) and part in data:
            line, data = data.key_lines.get(part, line), data[part]
        elif isinstance(data, LineList) and isinstance(part, int) and part < len(data):
            line, data = data.item_lines[part], data[part]
        else:
            break
    return line


# -- the schema -------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Model):
    exit_status: list[int] | int | None = None  # default: 0 (http: any status below 400)
    output: str | None = None  # a regex the output must match
    not_output: str | None = None  # a regex the output must not match


class StepSpec(BaseModel):
    """Common fields; everything else belongs to the kind's own parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str = Field(pattern=ID)
    kind: str
    title: str = ""
    timeout: float = Field(default=30, gt=0, le=3600)
    when: str | None = None
    capture: dict[str, str] = {}
    expect: Expect | None = None


class VerifySpec(StepSpec):
    id: str = Field(default="verify", pattern=ID)
    retries: int = Field(default=5, ge=0, le=60)
    interval: float = Field(default=2, ge=0, le=300)


class RemediationSpec(StepSpec):
    fixes: list[str] = []
    verify: dict[str, Any]


class OpenTo(_Model):
    """Which parameters alert labels and chat arguments may set (default: none)."""

    alerts: list[str] = []
    chat: list[str] = []


class RunbookSpec(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    title: str = ""
    description: str = ""
    match: list[str] = []
    params: dict[str, ParamSpec] = {}
    open_to: OpenTo = OpenTo()
    diagnosis: str | None = None  # rules file, relative to the runbook's folder
    steps: list[dict[str, Any]] = Field(min_length=1)
    remediation: list[dict[str, Any]] = []


# -- the validated runbook ----------------------------------------------------------------
@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def fits(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = _pattern(self.value).fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.label}{self.op}"{self.value}"'


@functools.lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"(.*)"|(\S*))\s*$')


def parse_matcher(text: str) -> Matcher:
    m = _MATCHER.match(text)
    if not m:
        raise ValueError(f'matcher {text!r} is not label="value", !=, =~ or !~')
    matcher = Matcher(m[1], m[2], m[3] if m[3] is not None else m[4])
    if matcher.op in ("=~", "!~"):
        re.compile(matcher.value)
    return matcher


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    params: KindParams
    title: str = ""
    timeout: float = 30
    when: str | None = None
    capture: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    expect: Expect | None = None
    fixes: tuple[str, ...] = ()
    verify: Step | None = None
    retries: int = 0
    interval: float = 0
    line: int = 0


@dataclass(frozen=True)
class Runbook:
    name: str
    title: str
    description: str
    source: Path
    matchers: tuple[Matcher, ...]
    params: Mapping[str, ParamSpec]
    steps: tuple[Step, ...]
    remediation: tuple[Step, ...]
    rules: Any = None  # bot.diagnosis.Rules, when the runbook names a rules file
    rules_file: Path | None = None  # ... and that file
    open_to_alerts: frozenset[str] = frozenset()  # parameters alert labels may set
    open_to_chat: frozenset[str] = frozenset()  # parameters chat arguments may set
    digest: str = ""  # sha256 of the runbook file as loaded (approvals are bound to it)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return bool(self.matchers) and all(m.fits(labels) for m in self.matchers)

    def remediation_step(self, step_id: str) -> Step | None:
        return next((s for s in self.remediation if s.id == step_id), None)


# -- loading ------------------------------------------------------------------------------
class _Errors:
    def __init__(self, path: Path, raw: Any) -> None:
        self.path, self.raw = path, raw
        self.lines: list[str] = []

    def add(self, loc: Iterable[Any], message: str) -> None:
        loc = list(loc)
        where = ".".join(str(p) for p in loc)
        self.lines.append(f"{self.path}:{line_of(self.raw, loc)}: "
                          f"{where + ': ' if where else ''}{message}")

    def pydantic(self, prefix: list[Any], exc: ValidationError) -> None:
        for err in exc.errors():
            loc = [*prefix, *err["loc"]]
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            self.add(loc, msg)


def _build_step(spec_cls: type[StepSpec], raw: Any, loc: list[Any], errs: _Errors,
                names: set[str]) -> Step | None:
    try:
        spec = spec_cls.model_validate(raw)
    except ValidationError as exc:
        errs.pydantic(loc, exc)
        return None
    kind = KINDS.get(spec.kind)
    if kind is None:
        errs.add([*loc, "kind"], f"unknown step kind {spec.kind!r} "
                                 f"(known: {', '.join(sorted(KINDS))})")
        return None
    common = set(spec_cls.model_fields)
    extra = {k: v for k, v in raw.items() if k not in common}
    try:
        params = kind.Params.model_validate(extra)
    except ValidationError as exc:
        for err in exc.errors():
            msg: str = err["msg"]
            if err["type"] == "extra_forbidden":
                import difflib

                fields = list(kind.Params.model_fields)
                near = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"its fields: {', '.join(fields)}"
                msg = f"unknown field for kind {spec.kind!r} ({hint})"
            errs.add([*loc, *err["loc"]], msg)
        return None
    ok = True
    for fld, text, shell in kind.templates_of(params):
        problem = templates.check_template(text, shell=shell)
        if problem is None:
            unknown = templates.template_names(text) - names - CONTEXT_NAMES
            if unknown:
                problem = f"template uses unknown parameter {sorted(unknown)[0]!r}"
        if problem:
            errs.add([*loc, fld.split("[")[0]], problem)
            ok = False
    if spec.when:
        problem = templates.check_condition(spec.when)
        if problem:
            errs.add([*loc, "when"], problem)
            ok = False
    captures: dict[str, re.Pattern[str]] = {}
    for name, pattern in spec.capture.items():
        try:
            captures[name] = re.compile(pattern, re.M)
        except re.error as exc:
            errs.add([*loc, "capture", name], f"bad regex: {exc}")
            ok = False
    for regex_field in ("output", "not_output"):
        wanted = getattr(spec.expect, regex_field, None) if spec.expect else None
        if wanted:
            try:
                re.compile(wanted)
            except re.error as exc:
                errs.add([*loc, "expect", regex_field], f"bad regex: {exc}")
                ok = False
    fixes: tuple[str, ...] = ()
    verify: Step | None = None
    retries, interval = 0, 0.0
    if isinstance(spec, RemediationSpec):
        for i, label in enumerate(spec.fixes):
            if label not in CAUSES:
                errs.add([*loc, "fixes", i], f"unknown cause {label!r}")
                ok = False
        fixes = tuple(spec.fixes)
        verify = _build_step(VerifySpec, spec.verify, [*loc, "verify"], errs, names)
        ok = ok and verify is not None
    if isinstance(spec, VerifySpec):
        retries, interval = spec.retries, spec.interval
    if not ok:
        return None
    return Step(id=spec.id, kind=spec.kind, params=params, title=spec.title,
                timeout=spec.timeout, when=spec.when, capture=captures, expect=spec.expect,
                fixes=fixes, verify=verify, retries=retries, interval=interval,
                line=line_of(errs.raw, loc))


def _check_ids(steps: list[tuple[list[Any], Step | None]], errs: _Errors) -> None:
    seen: set[str] = set()
    for loc, step in steps:
        if step is None:
            continue
        if step.id in seen:
            errs.add([*loc, "id"], f"duplicate step id {step.id!r}")
        seen.add(step.id)


def load_runbook(path: Path) -> Runbook:
    """Load and validate one runbook; raise RunbookInvalid whose lines are all the errors."""
    raw = load_yaml(path)
    errs = _Errors(path, raw)
    if not isinstance(raw, dict):
        raise RunbookInvalid(f"{path}:1: a runbook must be a YAML mapping")
    try:
        spec = RunbookSpec.model_validate(raw)
    except ValidationError as exc:
        errs.pydantic([], exc)
        raise RunbookInvalid("\n".join(errs.lines)) from None
    matchers = []
    for i, text in enumerate(spec.match):
        try:
            matchers.append(parse_matcher(text))
        except (ValueError, re.error) as exc:
            errs.add(["match", i], str(exc))
    for name, pspec in spec.params.items():
        if not re.match(r"^[a-z][a-z0-9_]*$", name) or name in CONTEXT_NAMES:
            errs.add(["params", name], "parameter names are lower_snake_case and not one of "
                                       + ", ".join(sorted(CONTEXT_NAMES)))
        if pspec.pattern:
            try:
                re.compile(pspec.pattern)
            except re.error as exc:
                errs.add(["params", name, "pattern"], f"bad regex: {exc}")
                continue
        if pspec.default is not None:
            try:
                coerce_param(name, pspec, pspec.default)
            except ParamInvalid as exc:
                errs.add(["params", name, "default"], str(exc))
    for source in ("alerts", "chat"):
        for i, name in enumerate(getattr(spec.open_to, source)):
            if name not in spec.params:
                errs.add(["open_to", source, i], f"{name!r} is not a parameter of this runbook")
            elif name in NEVER_OPEN:
                errs.add(["open_to", source, i], f"{name!r} can never be set by {source}: it "
                                                 "belongs in the inventory")
    names = set(spec.params)
    built: list[tuple[list[Any], Step | None]] = []
    for i, item in enumerate(spec.steps):
        built.append((["steps", i], _build_step(StepSpec, item, ["steps", i], errs, names)))
    for i, item in enumerate(spec.remediation):
        loc = ["remediation", i]
        built.append((loc, _build_step(RemediationSpec, item, loc, errs, names)))
    _check_ids(built, errs)
    rules = rules_path = None
    if spec.diagnosis:
        from bot.diagnosis import load_rules

        rules_path = (path.parent / spec.diagnosis)
        try:
            rules = load_rules(rules_path)
        except RunbookInvalid as exc:
            errs.lines.append(str(exc))
        except OSError:
            errs.add(["diagnosis"], f"rules file {rules_path} not found")
    if errs.lines:
        raise RunbookInvalid("\n".join(errs.lines))
    steps = tuple(s for loc, s in built if loc[0] == "steps" and s is not None)
    remediation = tuple(s for loc, s in built if loc[0] == "remediation" and s is not None)
    return Runbook(name=spec.name, title=spec.title or spec.name, description=spec.description,
                   source=path, matchers=tuple(matchers), params=spec.params, steps=steps,
                   remediation=remediation, rules=rules,
                   rules_file=rules_path if rules is not None else None,
                   open_to_alerts=frozenset(spec.open_to.alerts),
                   open_to_chat=frozenset(spec.open_to.chat),
                   digest=sha256_hex(path.read_bytes()))


def runbook_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))


@dataclass(frozen=True)
class Catalog:
    runbooks: Mapping[str, Runbook]
    errors: tuple[str, ...] = ()

    def get(self, name: str) -> Runbook:
        from bot.errors import NotFound

        if name not in self.runbooks:
            known = ", ".join(sorted(self.runbooks)) or "none loaded"
            raise NotFound(f"no runbook named {name!r} (known: {known})")
        return self.runbooks[name]

    def select(self, labels: Mapping[str, str]) -> Runbook | None:
        """The first runbook (in file order) whose matchers all fit the labels."""
        return next((rb for rb in self.runbooks.values() if rb.matches(labels)), None)

    def kinds(self) -> set[str]:
        """The step kinds the runbooks use (remediation and verification included)."""
        return {step.kind for step in self._steps()}

    def _steps(self) -> Iterator[Step]:
        for rb in self.runbooks.values():
            yield from rb.steps
            for step in rb.remediation:
                yield step
                if step.verify is not None:
                    yield step.verify

    def precompile(self) -> None:
        """Every step's templates and condition compiled now (bot.templates keeps them), so
        that runs only render: a server's first run compiled on its loop (the nginx-502
        runbook's 13 templates: 6 ms there, holding every answer meanwhile)."""
        for step in self._steps():
            kind = KINDS.get(step.kind)
            for _, text, shell in kind.templates_of(step.params) if kind else ():
                templates.precompile(text, shell=shell)
            if step.when:
                templates.precompile_condition(step.when)


def load_catalog(folder: Path) -> Catalog:
    """Every runbook in the folder; invalid ones are left out and their errors kept."""
    runbooks: dict[str, Runbook] = {}
    errors: list[str] = []
    if not folder.exists():
        return Catalog({}, (f"{folder}: runbook folder not found",))
    for path in runbook_files(folder):
        try:
            rb = load_runbook(path)
        except RunbookInvalid as exc:
            errors.extend(str(exc).splitlines())
            continue
        if rb.name in runbooks:
            errors.append(f"{path}:1: runbook name {rb.name!r} is already used by "
                          f"{runbooks[rb.name].source}")
            continue
        runbooks[rb.name] = rb
    return Catalog(runbooks, tuple(errors))
