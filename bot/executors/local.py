"""`local`: run an argv on the bot's own machine (no shell)."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from bot.executors.base import KindParams, StepKind
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
        chunks: list[bytes] = []

        async def pump() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                chunks.append(chunk)

        try:
            await asyncio.wait_for(pump(), timeout)
            status = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ExecOutput(None, b"".join(chunks).decode("utf-8", "replace"),
                              error=f"timed out after {timeout:g}s", timed_out=True)
        return ExecOutput(status, b"".join(chunks).decode("utf-8", "replace"))
