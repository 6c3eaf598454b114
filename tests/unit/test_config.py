from pathlib import Path

import pytest

from bot.config import load_settings
from bot.errors import ConfigError


def test_defaults_are_console_mode() -> None:
    s = load_settings({})
    assert not s.slack_enabled
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 3000)
    assert s.db == Path("opsbot.db") and s.approvers == frozenset()


def test_environment_wins_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "opsbot.toml"
    cfg.write_text('listen = "127.0.0.1:4000"\napprovers = ["U1", "U2"]\ndb = "/tmp/x.db"\n')
    s = load_settings({"OPSBOT_LISTEN": "127.0.0.1:5000"}, cfg)
    assert s.listen_port == 5000
    assert s.approvers == {"U1", "U2"} and s.db == Path("/tmp/x.db")


@pytest.mark.parametrize(("env", "named"), [
    ({"SLACK_BOT_TOKEN": "xoxb-1"}, "OPSBOT_CHANNEL"),
    ({"SLACK_BOT_TOKEN": "nope", "OPSBOT_CHANNEL": "C1"}, "SLACK_BOT_TOKEN"),
    ({"OPSBOT_LISTEN": "localhost"}, "OPSBOT_LISTEN"),
    ({"OPSBOT_APPROVAL_TTL": "soon"}, "OPSBOT_APPROVAL_TTL"),
    ({"SLACK_API_URL": "ftp://x"}, "SLACK_API_URL"),
])
def test_bad_setting_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_signing_secret_required_only_to_serve_http() -> None:
    env = {"SLACK_BOT_TOKEN": "xoxb-1", "OPSBOT_CHANNEL": "C1"}
    load_settings(env)  # the CLI can post without it
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        load_settings(env, serving=True)
    load_settings({**env, "SLACK_APP_TOKEN": "xapp-1"}, serving=True)  # socket mode


def test_api_url_gets_trailing_slash_and_unknown_toml_key_fails(tmp_path: Path) -> None:
    assert load_settings({"SLACK_API_URL": "http://127.0.0.1:9/api"}).slack_api_url == \
        "http://127.0.0.1:9/api/"
    cfg = tmp_path / "c.toml"
    cfg.write_text("chanel = 'C1'\n")
    with pytest.raises(ConfigError, match="chanel"):
        load_settings({}, cfg)


def test_operators_default_to_approvers_and_metrics_token() -> None:
    s = load_settings({"OPSBOT_APPROVERS": "U1,U2"})
    assert s.operators == {"U1", "U2"} and s.metrics_token is None
    s = load_settings({"OPSBOT_APPROVERS": "U1", "OPSBOT_OPERATORS": "U3, S0ONCALL",
                       "OPSBOT_METRICS_TOKEN": "m"})
    assert s.operators == {"U3", "S0ONCALL"} and s.approvers == {"U1"}
    assert s.metrics_token == "m"


def test_ssh_sessions_are_kept_unless_turned_off(tmp_path: Path) -> None:
    assert load_settings({}, serving=True).ssh_reuse_sessions is True
    assert load_settings({}).ssh_reuse_sessions is False  # a one-shot command
    assert load_settings({"OPSBOT_SSH_REUSE_SESSIONS": "true"}).ssh_reuse_sessions is True
    assert load_settings({"OPSBOT_SSH_REUSE_SESSIONS": "false"}).ssh_reuse_sessions is False
    cfg = tmp_path / "opsbot.toml"
    cfg.write_text("ssh_reuse_sessions = false\n")
    assert load_settings({}, cfg, serving=True).ssh_reuse_sessions is False
    with pytest.raises(ConfigError, match="OPSBOT_SSH_REUSE_SESSIONS"):
        load_settings({"OPSBOT_SSH_REUSE_SESSIONS": "sometimes"})


def test_batch_work_runs_ten_steps_of_nice_below_unless_set(tmp_path: Path) -> None:
    assert load_settings({}).batch_nice == 10
    assert load_settings({"OPSBOT_BATCH_NICE": "0"}).batch_nice == 0
    cfg = tmp_path / "opsbot.toml"
    cfg.write_text("batch_nice = 19\n")
    assert load_settings({}, cfg).batch_nice == 19
    for bad in ("20", "-1", "low"):
        with pytest.raises(ConfigError, match="OPSBOT_BATCH_NICE") as err:
            load_settings({"OPSBOT_BATCH_NICE": bad})
        assert "\n" not in str(err.value)


def test_ssh_client_of_one_shot_commands() -> None:
    assert load_settings({}).ssh_client == "libssh2"
    assert load_settings({"OPSBOT_SSH_CLIENT": "asyncssh"}).ssh_client == "asyncssh"
    # a server's pooled connections and kept sessions are asyncssh's, whatever is set
    assert load_settings({}, serving=True).ssh_client == "asyncssh"
    assert load_settings({"OPSBOT_SSH_CLIENT": "libssh2"}, serving=True).ssh_client == "asyncssh"
    with pytest.raises(ConfigError, match="OPSBOT_SSH_CLIENT must be asyncssh or libssh2"):
        load_settings({"OPSBOT_SSH_CLIENT": "paramiko"})
