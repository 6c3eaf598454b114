"""`python -m tests.pacedbot ARGS`: `python -m bot ARGS` posting at TEST_PACE, for bots run as
child processes that talk to a Slack stand-in that does not enforce Slack's pace.

Slack's own pace (bot.adapters.slack.PACE: about a post a second per channel) is kept by bots
that talk to a stand-in enforcing it (FakeSlack.enforce_rate_limits; the `opsbot run` of
test_thread_at_scale, the new user's `opsbot serve` of test_acceptance). The others keep a pace
of the same shape a hundred times faster: what such a test waits for is the bot's work, not a
second per message.
"""

from __future__ import annotations

import runpy

from bot.adapters import slack

TEST_PACE = {method: (interval / 100, burst) for method, (interval, burst) in slack.PACE.items()}

if __name__ == "__main__":
    slack.PACE = TEST_PACE
    runpy.run_module("bot", run_name="__main__", alter_sys=True)
