"""`local`: run an argv on the bot's own machine (no shell)."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from bot.executors.base import KindParams, StepKind
from bot.executors.capture import Capture
from bot.models import ExecOutput, Host


class LocalParams(KindParams):
    argv: list[str] = Field(min_length=1)


class LocalStep(StepKind):
    name = "local"
    Params = LocalParams

    @classmethod
    def display(cls, action: Mapping[str, Any]) -> str:
        return shlex.join(action["argv"])

    async def run(self, action: Mapping[str, Any], host: Host, timeout: float) -> ExecOutput:
        try:
            proc = await asyncio.create_subprocess_exec(
                *action["argv"], stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            return ExecOutput(None, "", error=f"cannot start {action['argv'][0]}: {exc.strerror}")
        capture = Capture()

        async def pump() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                if not capture.feed(chunk):
                    proc.kill()  # the output cap: stop the command
                    return

        error, timed_out, status = None, False, None
        try:
            async with asyncio.timeout(timeout):
                await pump()
                status = await proc.wait()
        except TimeoutError:
            error, timed_out = f"timed out after {timeout:g}s", True
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if capture.capped:
            error, status = f"stopped: printed more than {capture.cap} bytes (the output cap)", None
        return ExecOutput(status, capture.text(), error=error, timed_out=timed_out,
                          digest=capture.digest, total_bytes=capture.total, capped=capture.capped)
