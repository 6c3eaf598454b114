"""The runbook's `nginx -t` check takes the test that discovery's `nginx -T` ran first (nginx
tests the configuration as `-t` does, then prints it): one nginx parse on the host, not two.

On web01 (the lab's real nginx), the read is what `nginx -t` itself prints, but for the time
and pid in nginx's log lines, with the same exit status, passing or failing; the step that takes
it says so, and diagnoses as the step that ran.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.discovery import discover, probe
from bot.discovery.probe import Prober, Run, RunMany, UnixRequest
from bot.executors import ExecContext
from bot.inventory import load_inventory
from bot.models import Host, StepResult
from bot.params import resolve_params
from bot.runbooks import load_runbook
from bot.runner import HostReport, NullListener, Runner
from tests.lab import WebLab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: ", re.M)


def same(text: str) -> str:
    """nginx's log lines without their time and pid (two runs of nginx differ there only)."""
    return _STAMP.sub(r"\1 ", text)


@pytest.fixture(scope="module")
async def ctx(known_hosts_file: Path) -> AsyncIterator[ExecContext]:
    context = ExecContext(known_hosts=known_hosts_file)
    yield context
    await context.close()


def runs(ctx: ExecContext, host: Host) -> tuple[Run, RunMany, UnixRequest]:
    calls = ctx.ssh.on(host)
    return calls.run, calls.run_many, calls.unix_request


async def test_the_check_takes_the_test_of_discoverys_dump(
        ctx: ExecContext, healthy_web: WebLab, inventory_file: Path) -> None:
    host = load_inventory(inventory_file).hosts["web01"]
    run, run_many, unix_request = runs(ctx, host)
    conf = str(healthy_web.nginx_conf)
    chain = await discover(run, host.name, healthy_web.proxy_url, nginx_conf=conf,
                           run_many=run_many, unix_request=unix_request)
    read = chain.reads[f"nginx -t -c {conf}"]
    itself = await ctx.ssh.run(host, f"nginx -t -c {conf}", 20)

    assert read.via == f"the test that `nginx -T -c {conf}` ran first"
    assert (read.output.exit_status, same(read.output.output)) == \
        (itself.exit_status, same(itself.output))
    assert "test is successful" in read.output.output and "# configuration" not in \
        read.output.output

    runbook = load_runbook(ROOT / "runbooks" / "nginx-502.yaml")
    params = resolve_params(runbook, host.opsbot_vars())
    runner = Runner(ctx)
    taken = await runner.diagnose_host(runbook, host, params, NullListener(), reads=chain.reads)
    ran = await runner.diagnose_host(runbook, host, params, NullListener())

    def step(report: HostReport) -> StepResult:
        return next(r for r in report.results if r.step.step_id == "nginx_config_test")

    took, did = step(taken), step(ran)
    assert took.facts == {"read_by": f"discovery ({read.via})"}
    assert (took.status, took.exit_status, same(took.output)) == \
        (did.status, did.exit_status, same(did.output))
    assert [c.cause for c in taken.causes] == [c.cause for c in ran.causes]


async def test_a_failing_test_is_read_whole(ctx: ExecContext, healthy_web: WebLab,
                                            inventory_file: Path) -> None:
    host = load_inventory(inventory_file).hosts["web01"]
    run, run_many, _ = runs(ctx, host)
    missing = f"{healthy_web.nginx_conf.parent}/no-such.conf"
    prober = Prober(run, host.name, run_many=run_many)

    _, config = await prober.nginx_config({}, healthy_web.proxy_url, missing)
    read = prober.reads[f"nginx -t -c {missing}"]
    itself = await ctx.ssh.run(host, f"nginx -t -c {missing}", 20)

    assert config is None
    assert read.output.exit_status == itself.exit_status == 1
    assert same(read.output.output) == same(itself.output)
    assert "test failed" in read.output.output


async def test_hosts_sharing_a_configuration_parse_it_once(
        ctx: ExecContext, healthy_web: WebLab, inventory_file: Path) -> None:
    """nginx run by the login user warns with the time and its pid before the dump: the
    dumps of web01 and web02 (one nginx) differ, the configuration parsed is one."""
    conf = str(healthy_web.nginx_conf)
    before = probe._config_of.cache_info()
    chains = []
    for name in ("web01", "web02"):
        host = load_inventory(inventory_file).hosts[name]
        run, run_many, unix_request = runs(ctx, host)
        chains.append(await discover(run, host.name, healthy_web.proxy_url, nginx_conf=conf,
                                     run_many=run_many, unix_request=unix_request))
    after = probe._config_of.cache_info()

    dumps = [c.reads[f"nginx -T -c {conf}"].output.output for c in chains]
    assert dumps[0] != dumps[1] and same(dumps[0]) == same(dumps[1])
    assert after.misses - before.misses <= 1 and after.hits > before.hits
    assert chains[0].route == chains[1].route and chains[0].route is not None
    assert chains[0].params() == chains[1].params()
