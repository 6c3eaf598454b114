"""`python -m tests.pacedbot ARGS`: `python -m bot ARGS` posting at TEST_PACE, for bots run as
child processes that talk to a Slack stand-in that does not enforce Slack's pace.

Slack's own pace (bot.adapters.slack.PACE: about a post a second per channel) is kept by bots
that talk to a stand-in enforcing it (FakeSlack.enforce_rate_limits; the `opsbot run` of
test_thread_at_scale, the new user's `opsbot serve` of test_acceptance). The others keep a pace
of the same shape a hundred times faster: what such a test waits for is the bot's work, not a
second per message. Replicas also look for the work of replicas that are gone every
TEST_TAKEOVER_EVERY seconds instead of 5 (when a replica counts as gone, its lease, is unchanged).
"""

from __future__ import annotations

import runpy

from bot.adapters import slack

TEST_PACE = {method: (interval / 100, burst) for method, (interval, burst) in slack.PACE.items()}
TEST_TAKEOVER_EVERY = 1.0

if __name__ == "__main__":
    from bot import server

    slack.PACE = TEST_PACE
    server.TAKEOVER_EVERY = TEST_TAKEOVER_EVERY
    runpy.run_module("bot", run_name="__main__", alter_sys=True)
