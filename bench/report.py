"""Figures, their statistics against targets, and bench/REPORT.md.

A benchmark yields `Figure`s: one measured quantity for one tool, several samples. The report
gives each figure's median and spread, its ratio to the peers measured in the same run, whether
its target is met (and by how much it is missed), and one summary line per benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """`value <= limit` (or >= when `at_least`); `limit_of` names a peer figure whose median,
    times `factor`, is the limit (a target relative to a peer in the same run)."""

    limit: float | None = None
    at_least: bool = False
    limit_of: str | None = None
    factor: float = 1.0

    def text(self, unit: str) -> str:
        sign = "≥" if self.at_least else "≤"
        if self.limit_of:
            times = "" if self.factor == 1 else f"{self.factor:g} × "
            return f"{sign} {times}{self.limit_of}"
        return f"{sign} {fmt(self.limit or 0.0, unit)}"


@dataclass(frozen=True)
class Figure:
    bench: str  # the benchmark it belongs to, e.g. "Cold fan-out, 50 hosts"
    name: str  # e.g. "opsbot wall"
    unit: str  # "s", "ms", "MiB", "/s"
    samples: tuple[float, ...]
    target: Target | None = None
    peers: tuple[str, ...] = ()  # names of figures (same bench) to give ratios against
    note: str = ""
    key: str = ""  # the benchmark's name on the command line (fanout, warm, ...)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.samples), max(self.samples)


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # bench -> lines (profiling, errors)
    note_keys: dict[str, str] = field(default_factory=dict)  # bench -> its key
    current: str = ""  # the key of the benchmark running now

    def add(self, figure: Figure) -> None:
        if not figure.samples:
            raise ValueError(f"{figure.bench}: {figure.name}: no samples")
        self.figures.append(dataclasses.replace(figure, key=figure.key or self.current))

    def note(self, bench: str, line: str) -> None:
        self.notes.setdefault(bench, []).append(line)
        self.note_keys.setdefault(bench, self.current)

    def to_json(self) -> str:
        return json.dumps({"figures": [dataclasses.asdict(f) for f in self.figures],
                           "notes": self.notes, "note_keys": self.note_keys}, indent=1)

    def keep(self, text: str, rerun: list[str]) -> None:
        """Take over the figures and notes of an earlier report (its to_json) for every
        benchmark not in `rerun`: one benchmark run again, the others kept."""
        data = json.loads(text)
        kept = [f for f in data["figures"] if f.get("key") not in rerun]
        self.figures[:0] = [Figure(**{**f, "samples": tuple(f["samples"]),
                                      "peers": tuple(f["peers"]),
                                      "target": Target(**f["target"]) if f["target"] else None})
                            for f in kept]
        for bench, lines in data["notes"].items():
            key = data["note_keys"].get(bench, "")
            if key not in rerun and bench not in self.notes:
                self.notes[bench], self.note_keys[bench] = list(lines), key

    def find(self, bench: str, name: str) -> Figure | None:
        return next((f for f in self.figures if f.bench == bench and f.name == name), None)

    def verdict(self, fig: Figure) -> tuple[bool, str] | None:
        """(met, text) for a figure with a target; None without one (or a missing peer)."""
        t = fig.target
        if t is None:
            return None
        if t.limit_of:
            peer = self.find(fig.bench, t.limit_of)
            if peer is None:
                return None
            limit = peer.median * t.factor
        else:
            limit = t.limit or 0.0
        value = fig.median
        met = value >= limit if t.at_least else value <= limit
        if met:
            return True, "met"
        if t.at_least:
            return False, f"missed: {fmt(value, fig.unit)} is {limit / value:.2f} × short"
        return False, f"missed by {fmt(value - limit, fig.unit)} ({value / limit:.2f} × the limit)"

    def benches(self) -> list[str]:
        seen: list[str] = []
        for f in self.figures:
            if f.bench not in seen:
                seen.append(f.bench)
        for bench in self.notes:
            if bench not in seen:
                seen.append(bench)
        return seen

    def summary(self, bench: str) -> str:
        figs = [f for f in self.figures if f.bench == bench]
        if not figs:
            return f"**{bench}**: not measured — " + "; ".join(self.notes.get(bench, ["?"]))
        parts = []
        for f in figs:
            text = f"{f.name} {fmt(f.median, f.unit)}"
            v = self.verdict(f)
            if v is not None:
                text += " ✅" if v[0] else f" ❌ ({v[1]})"
            parts.append(text)
        return f"**{bench}**: " + "; ".join(parts)

    def markdown(self, machine: Sequence[str], command: str) -> str:
        lines = ["# opsbot against the tools people would use instead", "",
                 f"Generated by `{command}`. Every figure is the median of the samples shown "
                 "(min–max is the spread); ratios compare figures measured in the same run.", "",
                 "## Machine", "", *(f"- {m}" for m in machine), "", "## Summary", ""]
        lines += [f"- {self.summary(b)}" for b in self.benches()]
        for bench in self.benches():
            lines += ["", f"## {bench}", ""]
            figs = [f for f in self.figures if f.bench == bench]
            if figs:
                lines += ["| figure | median | min–max | n | ratios | target | verdict |",
                          "|---|---:|---:|---:|---|---|---|"]
                for f in figs:
                    lo, hi = f.spread
                    ratios = ", ".join(
                        f"{f.median / p.median:.2f} × {p.name}" for p in
                        (self.find(bench, name) for name in f.peers) if p and p.median > 0)
                    v = self.verdict(f)
                    lines.append(
                        f"| {f.name} | {fmt(f.median, f.unit)} | {fmt(lo, f.unit)}–"
                        f"{fmt(hi, f.unit)} | {len(f.samples)} | {ratios or '—'} | "
                        f"{f.target.text(f.unit) if f.target else '—'} | "
                        f"{(('✅ ' if v[0] else '❌ ') + v[1]) if v else '—'} |")
                for f in figs:
                    if f.note:
                        lines.append(f"\n{f.name}: {f.note}")
            for line in self.notes.get(bench, []):
                lines += ["", line]
        return "\n".join(lines) + "\n"


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:g} {unit}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_facts() -> list[str]:
    facts = [f"{platform.system()} {platform.release()} {platform.machine()}, "
             f"Python {platform.python_version()}"]
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "unknown CPU")
        facts.append(f"{os.cpu_count()} logical CPU(s): {cpu}")
        mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        facts.append(f"memory {int(mem) / 2**20:.1f} GiB")
        facts.append(f"load average at start: {load_average()}")
    except (OSError, StopIteration):
        pass
    for argv in (["ssh", "-V"], ["docker", "version", "--format", "Docker {{.Server.Version}}"]):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out = (done.stdout or done.stderr).strip().splitlines()
            if out:
                facts.append(out[0])
        except (OSError, subprocess.TimeoutExpired):
            pass
    return facts
