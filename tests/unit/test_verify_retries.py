"""What a verify step retries, and when a remediation step is offered."""

from __future__ import annotations

from bot.models import Host, Phase, RenderedStep, StepResult, StepStatus
from bot.runner import render_context, retryable


def result(status: StepStatus, exit_status: int | None, output: str = "",
           error: str | None = None) -> StepResult:
    step = RenderedStep("verify", "ssh", Phase.VERIFY, "h", {"command": "x"}, "x", 5)
    return StepResult(step, status, exit_status, "2026-11-29T00:00:00Z", 0.1, output, 0, "",
                      error=error)


def test_only_what_can_pass_later_is_retried() -> None:
    assert retryable(result(StepStatus.FAILED, 0, "HTTP 502\nupstream HTTP 000\n"))
    assert retryable(result(StepStatus.FAILED, 7, "curl: (7) Failed to connect\nHTTP 000"))
    assert retryable(result(StepStatus.TIMEOUT, None, error="timed out after 5s"))
    assert not retryable(result(StepStatus.FAILED, 126, "OCI runtime exec failed"))
    assert not retryable(result(StepStatus.FAILED, 127, "sh: curl: not found"))
    assert not retryable(result(StepStatus.ERROR, None, error="no container named app on h"))
    assert not retryable(result(StepStatus.FAILED, 0, "HTTP 404\nupstream HTTP 404\n"))


def test_listed_names_a_whole_word_of_a_step_output() -> None:
    context = render_context(Host("h", "127.0.0.1"), {}, {}, {}, {
        "supervisorctl_status": "myapp      STOPPED   Nov 29 06:23 PM\n"
                                "ds:docservice-old   RUNNING   pid 4, uptime 0:01:00\n"})
    listed = context["listed"]
    assert listed("supervisorctl_status", "myapp")
    assert not listed("supervisorctl_status", "ds:docservice")
    assert not listed("supervisorctl_status", "app") and not listed("docker_ps", "myapp")
