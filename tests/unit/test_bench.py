"""The benchmark's argument parsing and report writing (not its timings: those go to bench/)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.procs import as_deployed, leave_cgroup, unit_cpu_weight, weighted
from bench.report import Figure, Report, Target, fmt
from bench.run import parse_args

BENCH = "Cold fan-out"


def test_arguments_are_bounded_and_named() -> None:
    args = parse_args(["--rounds", "3", "--only", "fanout,export"])
    assert args.rounds == 3 and args.only == ["fanout", "export"] and args.hosts == 50
    for bad in (["--rounds", "0"], ["--hosts", "500"], ["--only", "fanout,nonsense"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_report_gives_medians_spread_ratios_and_misses() -> None:
    report = Report()
    report.add(Figure(BENCH, "opsbot wall", "s", (1.0, 1.2, 3.0),
                      Target(limit_of="parallel-ssh wall"), ("parallel-ssh wall",)))
    report.add(Figure(BENCH, "parallel-ssh wall", "s", (0.8, 1.0, 0.9)))
    report.add(Figure(BENCH, "ingest", "/s", (500.0, 700.0), Target(1000, at_least=True)))
    report.note("Export", "failed: RuntimeError: no disk")
    text = report.markdown(["a machine"], "scripts/bench")
    assert "| opsbot wall | 1.200 s | 1.000 s–3.000 s | 3 | 1.33 × parallel-ssh wall |" in text
    assert "missed by 0.300 s (1.33 × the limit)" in text
    assert "ingest 600/s ❌ (missed: 600/s is 1.67 × short)" in text
    assert "- **Export**: not measured — failed: RuntimeError: no disk" in text
    assert "- a machine" in text


def test_a_figure_without_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="no samples"):
        Report().add(Figure(BENCH, "x", "s", ()))
    assert fmt(12.34, "s") == "12.3 s" and fmt(1500, "/s") == "1,500/s"


def test_a_rerun_keeps_the_other_benchmarks() -> None:
    first = Report(current="fanout")
    first.add(Figure(BENCH, "opsbot wall", "s", (1.0,), Target(limit_of="x", factor=0.75)))
    first.current = "export"
    first.add(Figure("Export", "json time", "s", (9.0,), Target(3.0)))
    first.note("Export", "slow")
    again = Report(current="export")
    again.add(Figure("Export", "json time", "s", (2.0,), Target(3.0)))
    again.keep(first.to_json(), ["export"])
    assert [(f.key, f.name, f.median) for f in again.figures] == [
        ("fanout", "opsbot wall", 1.0), ("export", "json time", 2.0)]
    assert again.figures[0].target == Target(limit_of="x", factor=0.75)
    assert "Export" not in again.notes


def test_the_unit_cpu_weight_is_read_from_the_shipped_unit(tmp_path: Path) -> None:
    assert unit_cpu_weight() == 400  # deploy/opsbot.service
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n# CPUWeight=7 in a comment\n")
    assert unit_cpu_weight(unit) == 100  # systemd's default


def test_a_weighted_child_runs_in_its_own_cpu_cgroup() -> None:
    with weighted(250, name=f"opsbot-test-{os.getpid()}") as (join, how):
        if join is None:
            pytest.skip(how)
        out = subprocess.run(["cat", "/proc/self/cgroup"], preexec_fn=join,
                             capture_output=True, text=True, check=True).stdout
        assert f"opsbot-test-{os.getpid()}" in out
        assert "CPUWeight=250" in how
        join()  # this process too, and back
        assert f"opsbot-test-{os.getpid()}" in Path("/proc/self/cgroup").read_text()
        leave_cgroup()
        assert f"opsbot-test-{os.getpid()}" not in Path("/proc/self/cgroup").read_text()
    assert not any(Path(root, f"opsbot-test-{os.getpid()}").exists()
                   for root in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup"))


def test_opsbot_is_benchmarked_as_the_unit_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_BENCH_WEIGHT", "0")
    with as_deployed() as (join, served):
        assert join is None and served == "opsbot a plain child process (OPSBOT_BENCH_WEIGHT=0)"
    monkeypatch.delenv("OPSBOT_BENCH_WEIGHT")
    with as_deployed() as (join, served):
        if join is None:
            pytest.skip(served)
        assert served.startswith("opsbot in a cpu cgroup of its own with CPUWeight=400")
        assert served.endswith(", as systemd runs deploy/opsbot.service")
