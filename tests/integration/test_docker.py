"""The `docker` step kind against a real Docker Engine, locally and through SSH forwarding.

Given a container the kernel OOM-killed, one stuck in a restart loop, an unhealthy one and a stopped
one, the bot reads them the way `docker ps -a` / `docker inspect` show them; the Dockerised 502
runbook diagnoses a real OOM kill behind a real nginx, and its approved restart heals it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker as docker_sdk
import pytest

from bot.errors import RunbookInvalid
from bot.executors.base import ExecContext
from bot.executors.docker import DockerParams, DockerStep
from bot.models import ExecOutput, Host, Phase, StepResult, StepStatus
from bot.params import resolve_params
from bot.runbooks import Runbook, Step, load_runbook
from bot.runner import NullListener, Runner, render_context, render_step
from tests.lab.docker import IMAGE, AppContainer, DockerLab
from tests.lab.process import free_port, http_get
from tests.lab.sshd import SshServer

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "runbooks" / "onlyoffice-docker-502.yaml"
LOCAL = Host("local", "127.0.0.1", vars={"opsbot_docker": "local"})


def ssh_host(server: SshServer, docker: str = "ssh") -> Host:
    return Host(server.name, server.address, server.port, server.user, str(server.key_file),
                vars={"opsbot_docker": docker})


def as_step(step_id: str = "step", **fields: Any) -> Step:
    return Step(id=step_id, kind="docker", params=DockerParams.model_validate(fields))


async def docker(step: DockerStep, host: Host, timeout: float = 30, **fields: Any) -> ExecOutput:
    """Validate the fields as a runbook load would, render them, run them on host."""
    action = DockerStep.render(DockerParams.model_validate(fields), {})
    return await step.run(action, host, timeout)


async def execute(runner: Runner, host: Host, timeout: float = 30, **fields: Any) -> StepResult:
    """Through the runner, as a runbook step: redacted, bounded, judged."""
    step = as_step(**fields)
    rendered = replace(render_step(step, Phase.DIAGNOSTIC, host, {}), timeout=timeout)
    result, _ = await runner.execute(step, rendered, host, NullListener())
    return result


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="class")
def zoo(lab_dir: Path, busybox_image: str) -> Iterator[dict[str, AppContainer]]:
    """One container per fault, made once for TestEachAction and removed after it."""
    lab = DockerLab(lab_dir / "docker-zoo", busybox_image)
    try:
        yield {"healthy": lab.healthy(), "oom": lab.oom_killed(), "crash": lab.crash_loop(),
               "unhealthy": lab.unhealthy(), "stopped": lab.stopped()}
    finally:
        lab.cleanup()


@pytest.fixture
async def ctx(docker_known_hosts: Path) -> AsyncIterator[ExecContext]:
    context = ExecContext(known_hosts=docker_known_hosts, connect_timeout=5)
    yield context
    await context.close()


@pytest.fixture
def step(ctx: ExecContext) -> DockerStep:
    return DockerStep(ctx)


@pytest.fixture
def runner(ctx: ExecContext) -> Runner:
    return Runner(ctx)


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest, docker_engine: str) -> Host:
    """The same engine, reached as `local` and through dock01's SSH connection."""
    return LOCAL if request.param == "local" else ssh_host(request.getfixturevalue("docker_sshd"))


# --- each action ----------------------------------------------------------------------------

class TestEachAction:
    """Each action on the same engine, as `local` and through SSH; the faults are made once
    for the class (and removed after it, before the runbook runs).
    """

    async def test_ps_shows_each_fault_as_docker_ps_does(
            self, step: DockerStep, host: Host, zoo: dict[str, AppContainer]) -> None:
        out = await docker(step, host, action="ps", filters=["label=opsbot-lab"])

        assert out.exit_status == 0 and out.error is None
        lines = out.output.splitlines()
        assert re.match(r"^CONTAINER ID\s+IMAGE\s+STATUS\s+PORTS\s+NAMES$", lines[0])
        status = {fault: next(line for line in lines if line.endswith(app.name))
                  for fault, app in zoo.items()}
        expected = {
            "oom": r"Exited \(137\) (?:Less than a second|\d+ seconds?|About a minute) ago",
            "crash": r"Restarting \(1\) (?:Less than a second|\d+ seconds?) ago",
            "unhealthy": r"Up (?:Less than a second|\d+ seconds?|About a minute) \(unhealthy\)",
            "healthy": r"Up (?:Less than a second|\d+ seconds?|About a minute) \(healthy\)",
            "stopped": r"Exited \(0\) (?:Less than a second|\d+ seconds?|About a minute) ago",
        }
        for fault, pattern in expected.items():
            assert re.search(rf"^[0-9a-f]{{12}}\s+{re.escape(IMAGE)}\s+{pattern}\s+"
                             rf"{re.escape(zoo[fault].name)}$", status[fault]), status[fault]


    async def test_inspect_keeps_what_the_diagnosis_needs(
            self, step: DockerStep, host: Host, zoo: dict[str, AppContainer]) -> None:
        oom = await docker(step, host, action="inspect", container=zoo["oom"].name)
        unhealthy = await docker(step, host, action="inspect", container=zoo["unhealthy"].name)
        crash = await docker(step, host, action="inspect", container=zoo["crash"].name)

        assert json.loads(oom.output) == oom.data
        assert oom.data["Name"] == zoo["oom"].name
        state = oom.data["State"]
        assert {k: state[k] for k in ("Status", "Running", "OOMKilled", "ExitCode")} == \
            {"Status": "exited", "Running": False, "OOMKilled": True, "ExitCode": 137}
        assert oom.data["HostConfig"] == {"RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
                                          "Memory": 16 * 2**20}
        assert oom.data["Config"] == {"Image": IMAGE}
        assert list(oom.data["NetworkSettings"]["Networks"]) == ["host"]
        health = unhealthy.data["State"]["Health"]
        assert health["Status"] == "unhealthy" and health["FailingStreak"] >= 1
        assert health["Log"][-1]["ExitCode"] == 1
        assert crash.data["RestartCount"] >= 2
        assert crash.data["HostConfig"]["RestartPolicy"]["Name"] == "always"


    async def test_logs_reads_the_tail_and_drops_lines_older_than_since(
            self, step: DockerStep, host: Host, zoo: dict[str, AppContainer]) -> None:
        crash = zoo["crash"].name
        last_two = await docker(step, host, action="logs", container=crash, tail=2)
        recent = await docker(step, host, action="logs", container=crash, tail="200", since="1h")
        stopped = zoo["stopped"]
        finished = datetime.fromisoformat(stopped.state()["FinishedAt"][:26] + "+00:00")
        age = (datetime.now(UTC) - finished).total_seconds()
        await asyncio.sleep(max(0.0, 2.5 - age))  # its last line is older than 2s now
        none_recent = await docker(step, host, action="logs", container=stopped.name, since="2s")
        all_of_it = await docker(step, host, action="logs", container=stopped.name, since="1d")

        assert len(last_two.output.splitlines()) == 2
        assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ", line)
                   for line in recent.output.splitlines())
        assert "Error: docservice failed to start" in recent.output
        assert none_recent.exit_status == 0 and none_recent.output == ""
        assert "docservice listening on 127.0.0.1:" in all_of_it.output


    async def test_logs_in_a_step_result_are_redacted_and_bounded(
            self, runner: Runner, host: Host, docker_lab: DockerLab) -> None:
        name = docker_lab.run_sh('i=0; while [ $i -lt 3000 ]; do echo "line $i token=s3cr3t-$i";'
                                 ' i=$((i+1)); done; echo "db password=hunter2"; sleep 600')
        deadline = time.monotonic() + 20
        while b"hunter2" not in docker_lab.client.api.logs(name, tail=1):
            assert time.monotonic() < deadline, "the container did not print its lines"
            await asyncio.sleep(0.1)

        result = await execute(runner, host, action="logs", container=name, tail=5000)

        assert result.status is StepStatus.OK
        assert "hunter2" not in result.output and "s3cr3t" not in result.output
        assert "db password=[REDACTED]" in result.output
        assert result.truncated and len(result.output) < 16_500 and result.output_bytes > 100_000
        assert "characters cut]" in result.output

    async def test_logs_are_capped_in_bytes_and_redacted_before_the_cut(
            self, runner: Runner, host: Host, docker_lab: DockerLab,
            monkeypatch: pytest.MonkeyPatch) -> None:
        from bot.executors import docker as docker_kind

        monkeypatch.setattr(docker_kind, "LOGS_CAP", 64 * 1024)
        name = docker_lab.run_sh('i=0; while [ $i -lt 4000 ]; do echo "line $i password=pw$i";'
                                 ' i=$((i+1)); done; sleep 600')
        deadline = time.monotonic() + 20
        while b"line 3999" not in docker_lab.client.api.logs(name, tail=1):
            assert time.monotonic() < deadline, "the container did not print its lines"
            await asyncio.sleep(0.1)

        result = await execute(runner, host, action="logs", container=name, tail=10000)

        assert result.output_bytes == 64 * 1024 and "the output cap" in result.output
        assert "password=pw" not in result.output and "password=[REDACTED]" in result.output
        assert "line 3999" not in result.output  # what came after the cap was never read


    async def test_exec_runs_an_argv_without_a_shell(
            self, step: DockerStep, host: Host, zoo: dict[str, AppContainer]) -> None:
        app = zoo["healthy"]
        health = await docker(step, host, action="exec", container=app.name,
                              argv=["wget", "-q", "", "-O", "-", app.health_url])
        status = await docker(step, host, action="exec", container=app.name,
                              argv=["sh", "-c", "echo out; echo err >&2; exit 3"])
        literal = await docker(step, host, action="exec", container=app.name,
                               argv=["echo", "$(id) ; rm -rf / | `x`"])
        missing = await docker(step, host, action="exec", container=app.name, argv=["curl", "-V"])
        stopped = await docker(step, host, action="exec", container=zoo["stopped"].name,
                               argv=["true"])

        assert (health.exit_status, health.output) == (0, "true\n")
        assert status.exit_status == 3 and "out\n" in status.output and "err\n" in status.output
        assert (literal.exit_status, literal.output) == (0, "$(id) ; rm -rf / | `x`\n")
        assert missing.exit_status in (126, 127) and "curl" in missing.output
        assert stopped.exit_status is None
        assert stopped.error == (f"the Docker Engine of {host.name} refused exec: "
                                 f"{zoo['stopped'].name} is not running (docker exec needs it "
                                 "running)")


    async def test_stats_reads_memory_against_the_limit(
            self, step: DockerStep, host: Host, zoo: dict[str, AppContainer]) -> None:
        running = await docker(step, host, action="stats", container=zoo["healthy"].name)
        stopped = await docker(step, host, action="stats", container=zoo["stopped"].name)

        header, row = running.output.splitlines()
        assert re.match(r"^CONTAINER\s+MEM USAGE / LIMIT\s+MEM %\s+PIDS$", header)
        assert re.match(rf"^{zoo['healthy'].name}\s+\d+\.\dMiB / 16\.0MiB\s+\d+\.\d\d%\s+[1-9]\d*$",
                        row), row
        assert stopped.exit_status == 1
        assert stopped.output == f"{zoo['stopped'].name} is not running: no stats\n"


    async def test_network_inspect_shows_who_shares_a_network(
            self, step: DockerStep, host: Host, docker_lab: DockerLab) -> None:
        net = docker_lab.network()
        app = docker_lab.app("healthy", network=net)
        proxy = docker_lab.app("healthy", network=net, name=docker_lab.unique("nginx"))

        listing = await docker(step, host, action="network_inspect")
        mine = await docker(step, host, action="network_inspect", container=app.name)
        one = await docker(step, host, action="network_inspect", network=net)
        missing = await docker(step, host, action="network_inspect", network="no-such-net")

        members = ", ".join(sorted([app.name, proxy.name]))
        assert re.search(rf"(?m)^{net}\s+bridge\s+{re.escape(members)}$", listing.output)
        assert re.search(r"(?m)^host\s+host\s+", listing.output)
        assert mine.output.splitlines()[1:] == [f"{net}   bridge   {members}"]
        assert one.output.splitlines()[1].split() == [net, "bridge", *members.split()]
        assert missing.error == f"no network named no-such-net on {host.name}"


    async def test_start_stop_restart_say_what_happened(
            self, step: DockerStep, host: Host, docker_lab: DockerLab) -> None:
        app = docker_lab.stopped()

        started = await docker(step, host, action="start", container=app.name)
        first_start = app.state()["StartedAt"]
        restarted = await docker(step, host, action="restart", container=app.name, timeout_stop=5)
        stopped = await docker(step, host, action="stop", container=app.name, timeout_stop=5)

        assert started.exit_status == 0
        assert re.match(rf"^started {app.name} in \d+\.\ds\nstate: running, exit code 0, started ",
                        started.output), started.output
        assert restarted.exit_status == 0
        assert restarted.output.startswith(f"restarted {app.name} in ")
        assert "state: running" in restarted.output
        assert first_start not in restarted.output
        assert stopped.exit_status == 0 and stopped.output.startswith(f"stopped {app.name} in ")
        assert "state: exited, exit code 0" in stopped.output
        assert app.state()["Status"] == "exited"

    async def test_a_command_that_runs_too_long_times_out(
            self, runner: Runner, host: Host, zoo: dict[str, AppContainer]) -> None:
        began = time.monotonic()
        result = await execute(runner, host, timeout=1.5, action="exec",
                               container=zoo["healthy"].name, argv=["sleep", "20"])

        assert time.monotonic() - began < 3
        assert result.status is StepStatus.TIMEOUT
        assert result.error.startswith("timed out after 1.5s waiting for ")


# --- failures: one clear line, never a hang --------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"action": "inspect"}, {"action": "logs"}, {"action": "stats"}, {"action": "start"},
    {"action": "restart"}, {"action": "exec", "argv": ["true"]}])
async def test_a_missing_container_is_named(step: DockerStep, host: Host, fields: dict) -> None:
    out = await docker(step, host, container="no-such-container", **fields)

    assert (out.exit_status, out.output) == (None, "")
    assert out.error == f"no container named no-such-container on {host.name}"


async def test_an_engine_that_is_down_fails_fast_with_a_clear_error(
        runner: Runner, docker_engine: str) -> None:
    port = free_port()
    cases = {
        "unix:///tmp/nonexistent.sock":
            "cannot reach the Docker Engine at unix:///tmp/nonexistent.sock: no such socket "
            "(is dockerd running?)",
        f"tcp://127.0.0.1:{port}":
            f"cannot reach the Docker Engine at tcp://127.0.0.1:{port}: connection refused",
        "ssh://somewhere":
            "down: opsbot_docker is 'ssh://somewhere'; use local, ssh, unix:///PATH or "
            "tcp://HOST:PORT",
    }
    for url, error in cases.items():
        began = time.monotonic()
        result = await execute(runner, Host("down", "127.0.0.1", vars={"opsbot_docker": url}),
                               action="ps")
        assert time.monotonic() - began < 3
        assert (result.status, result.error) == (StepStatus.ERROR, error)


async def test_a_host_without_opsbot_docker_uses_its_engine_through_ssh(
        step: DockerStep, docker_sshd: SshServer) -> None:
    plain = ssh_host(docker_sshd)
    plain = Host(plain.name, plain.address, plain.port, plain.user, plain.key_file)

    out = await docker(step, plain, action="ps")

    assert out.error is None and out.output.startswith("CONTAINER ID")


async def test_an_ssh_user_outside_the_docker_group_is_told_so(
        step: DockerStep, nodocker_sshd: SshServer) -> None:
    out = await docker(step, ssh_host(nodocker_sshd), action="ps")

    assert out.error == (f"cannot reach the Docker Engine at /var/run/docker.sock on "
                         f"{nodocker_sshd.name} (through SSH): permission denied "
                         f"(opsbot-lab-nodocker needs the docker group)")


async def test_an_engine_that_never_answers_times_out(runner: Runner) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        began = time.monotonic()
        result = await execute(runner, Host("hung", "127.0.0.1", vars={
            "opsbot_docker": f"tcp://127.0.0.1:{port}"}), timeout=1.5, action="ps")
        elapsed = time.monotonic() - began
    finally:
        release.set()
        server.close()
        await server.wait_closed()

    assert elapsed < 3
    assert result.status is StepStatus.TIMEOUT
    assert result.error == f"timed out after 1.5s waiting for tcp://127.0.0.1:{port} (hung)"


# --- the engine behind SSH: one forward per connection, closed with the context ---------------

async def test_the_ssh_forward_follows_the_pooled_connection(
        ctx: ExecContext, step: DockerStep, docker_sshd: SshServer) -> None:
    dock01 = ssh_host(docker_sshd)
    assert (await docker(step, dock01, action="ps")).exit_status == 0
    first = step.engines._engines[dock01.name]
    assert first.conn is await ctx.ssh.connection(dock01)
    assert Path(first.folder).stat().st_mode & 0o077 == 0  # the forwarded socket is private

    first.conn.close()  # the pool replaces a connection that died
    await first.conn.wait_closed()
    again = await docker(step, dock01, action="ps")
    second = step.engines._engines[dock01.name]

    assert again.exit_status == 0
    assert second.conn is not first.conn and not Path(first.folder).exists()
    assert ctx.ssh.connects == 2
    await ctx.close()
    assert not step.engines._engines and not Path(second.folder).exists()


# --- the runbook -------------------------------------------------------------------------------

def test_the_runbook_validates_and_reads_like_docker_commands() -> None:
    runbook = load_runbook(RUNBOOK)
    params = resolve_params(runbook, {})
    context = render_context(LOCAL, params, {}, {})
    shown = {s.id: render_step(s, Phase.DIAGNOSTIC, LOCAL, context).display
             for s in [*runbook.steps, *runbook.remediation]}

    assert [s.id for s in runbook.steps] == [
        "docker_ps", "docker_inspect", "docker_logs", "healthcheck", "proxy_check",
        "nginx_error_log", "docker_network", "docker_stats", "memory", "kernel_log", "disk"]
    assert shown["docker_ps"] == "docker ps -a"
    assert shown["docker_logs"] == \
        "docker logs --timestamps --tail 200 --since 1h onlyoffice-documentserver"
    # probes run on the host with curl, never with a tool inside the image (issue 8 item 5)
    assert shown["healthcheck"] == ("curl -sS -m 5 -o - -w '\\nHTTP %{http_code}\\n' "
                                    "http://127.0.0.1:8000/healthcheck")
    assert shown["proxy_check"] == ("curl -sS -m 5 -o - -w '\\nHTTP %{http_code}\\n' "
                                    "http://127.0.0.1/healthcheck")
    assert not [c for c in shown.values() if "docker exec" in c or "wget" in c], shown
    assert shown["docker_start"] == "docker start onlyoffice-documentserver"
    assert shown["docker_restart"] == "docker restart -t 30 onlyoffice-documentserver"
    assert {s.id: set(s.fixes) for s in runbook.remediation} == {
        "docker_start": {"upstream_down"},
        "docker_restart": {"upstream_crashloop", "oom_killed", "upstream_timeout",
                           "dependency_down"}}
    assert runbook.matches({"alertname": "NginxBadGateway", "deployment": "docker"})
    assert not runbook.matches({"alertname": "NginxBadGateway"})


def test_bad_docker_steps_fail_at_load_time_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps:\n"
                    "  - {id: a, kind: docker, action: restart}\n"
                    "  - {id: b, kind: docker, action: logs, container: x, tail: 20000}\n"
                    "  - {id: c, kind: docker, action: inspect, container: x, argv: [ls]}\n"
                    "  - {id: d, kind: docker, action: exec, container: x, argv: '{{ cmd }}'}\n"
                    "  - {id: e, kind: docker, action: logs, container: x, since: yesterday}\n"
                    "  - {id: f, kind: docker, action: ps, filters: ['{{ nope }}=1']}\n")

    with pytest.raises(RunbookInvalid) as caught:
        load_runbook(path)

    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}:3: steps.0: Value error, docker restart needs `container`"
    assert lines[1].startswith(f"{path}:4: steps.1: Value error, `tail` must be between 1 and")
    assert lines[2] == f"{path}:5: steps.2: Value error, `argv` is for docker exec, not inspect"
    assert lines[3].startswith(f"{path}:6: steps.3.argv: Input should be a valid list")
    assert lines[4].startswith(f"{path}:7: steps.4: Value error, `since` must be a duration")
    assert lines[5] == f"{path}:8: steps.5.filters: template uses unknown parameter 'nope'"


async def _diagnose(runner: Runner, runbook: Runbook, host: Host, params: dict[str, Any]
                    ) -> tuple[Any, dict[str, StepResult]]:
    report = await runner.diagnose_host(runbook, host, params, NullListener())
    return report, {r.step.step_id: r for r in report.results}


def _params(runbook: Runbook, host: Host, app: AppContainer, **more: Any) -> dict[str, Any]:
    return resolve_params(runbook, host.opsbot_vars(), {
        "container": app.name, "health_port": app.port, "upstream_port": app.port,
        "container_port": app.port, "http_client": "wget", **more})


async def test_the_runbook_diagnoses_a_real_oom_kill_and_a_restart_heals_it(
        runner: Runner, docker_sshd: SshServer, docker_lab: DockerLab,
        front_nginx: Any) -> None:
    app = docker_lab.oom_killed()
    front = front_nginx(app.port)
    dock01 = ssh_host(docker_sshd)
    runbook = load_runbook(RUNBOOK)
    params = _params(runbook, dock01, app, proxy_url=front.proxy_url,
                     nginx_error_log=str(front.error_log))

    report, results = await _diagnose(runner, runbook, dock01, params)

    inspect = report.evidence["docker_inspect"]
    assert inspect["State"]["OOMKilled"] is True and inspect["State"]["ExitCode"] == 137
    assert results["docker_inspect"].facts["container_status"] == "exited"
    # probed from the host (never inside the image): nothing answers on the published port
    assert results["healthcheck"].facts["health_status"] == "000"
    assert "curl: (7)" in results["healthcheck"].output
    assert re.search(rf"Exited \(137\) .*{app.name}$", results["docker_ps"].output, re.M)
    assert results["proxy_check"].output.endswith("HTTP 502\n")
    assert "connect() failed (111: Connection refused) while connecting to upstream" in \
        results["nginx_error_log"].output
    assert "db password=[REDACTED]" in results["docker_logs"].output
    assert "hunter2" not in results["docker_logs"].output
    assert all(r.status is not StepStatus.ERROR for r in report.results), \
        [(r.step.step_id, r.error) for r in report.results if r.error]
    assert report.causes[0].cause == "oom_killed", report.causes
    assert '"OOMKilled": true' in "\n".join(report.causes[0].evidence)
    proposal = next(p for p in report.proposals if p.step.step_id == "docker_restart")

    app.set_mode("healthy")  # what was eating memory is gone: a restart behaves
    done, verified = await runner.remediate(runbook, proposal, dock01, NullListener())

    assert done.status is StepStatus.OK and done.output.startswith(f"restarted {app.name} in")
    assert verified is not None and verified.status is StepStatus.OK, verified
    assert verified.output == "HTTP 200\nupstream HTTP 200\n"  # through nginx, and direct
    assert app.state()["Running"]  # (Engine 20.10 keeps OOMKilled true until the next exit)
    assert http_get(front.proxy_url) == (200, "true\n")


async def test_the_runbook_starts_a_stopped_container_and_verifies_it(
        runner: Runner, docker_sshd: SshServer, docker_lab: DockerLab,
        front_nginx: Any) -> None:
    app = docker_lab.stopped()
    front = front_nginx(app.port)
    dock01 = ssh_host(docker_sshd, docker="local")  # the bot runs on the Docker host
    runbook = load_runbook(RUNBOOK)
    params = _params(runbook, dock01, app, proxy_url=front.proxy_url,
                     nginx_error_log=str(front.error_log))

    report, results = await _diagnose(runner, runbook, dock01, params)

    assert report.evidence["docker_inspect"]["State"]["Status"] == "exited"
    assert report.causes[0].cause == "upstream_down", report.causes
    proposal = next(p for p in report.proposals if p.step.step_id == "docker_start")
    done, verified = await runner.remediate(runbook, proposal, dock01, NullListener())

    assert done.status is StepStatus.OK and "state: running" in done.output
    assert verified is not None and verified.status is StepStatus.OK
    assert verified.facts["attempts"].endswith("/31")
    assert http_get(front.proxy_url) == (200, "true\n")


async def test_the_runbook_names_a_crash_loop(
        runner: Runner, docker_sshd: SshServer, docker_lab: DockerLab,
        front_nginx: Any) -> None:
    app = docker_lab.crash_loop()
    front = front_nginx(app.port)
    dock01 = ssh_host(docker_sshd)
    runbook = load_runbook(RUNBOOK)

    report, results = await _diagnose(runner, runbook, dock01, _params(
        runbook, dock01, app, proxy_url=front.proxy_url, nginx_error_log=str(front.error_log)))

    assert re.search(rf"Restarting \(1\) .*{app.name}$", results["docker_ps"].output, re.M)
    assert "Error: docservice failed to start" in results["docker_logs"].output
    assert report.causes[0].cause == "upstream_crashloop", report.causes
    assert "docker_restart" in [p.step.step_id for p in report.proposals]


def test_the_lab_removes_what_it_made(lab_dir: Path, busybox_image: str) -> None:
    lab = DockerLab(lab_dir / "docker-cleanup", busybox_image)
    names = [lab.run_sh("sleep 600"), lab.oom_killed().name]
    net = lab.network()
    lab.cleanup()

    client = docker_sdk.DockerClient(base_url="unix:///var/run/docker.sock")
    try:
        for name in names:
            assert not client.api.containers(all=True, filters={"name": f"^/{name}$"})
        assert not client.api.networks(names=[net])
    finally:
        client.close()
