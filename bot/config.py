"""The one place that reads the environment (and the optional TOML file)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ConfigError

PREFIXED = {  # env name -> TOML key
    "SLACK_BOT_TOKEN": "slack_bot_token",
    "SLACK_SIGNING_SECRET": "slack_signing_secret",
    "SLACK_APP_TOKEN": "slack_app_token",
    "SLACK_API_URL": "slack_api_url",
}
OWN = ("CHANNEL", "APPROVERS", "OPERATORS", "METRICS_TOKEN", "LISTEN", "DB", "RUNBOOKS",
       "INVENTORY", "KNOWN_HOSTS", "ALERT_TOKEN", "AUDIT_KEY", "APPROVAL_TTL",
       "ALLOW_SELF_APPROVAL", "SSH_IDLE", "SSH_REUSE_SESSIONS", "SSH_CLIENT",
       "STOP_TIMEOUT", "CLOSE_AFTER", "REMIND_AFTER", "BATCH_NICE", "EDGE")
EDGES = ("thread", "process")  # OPSBOT_EDGE
SSH_CLIENTS = ("asyncssh", "libssh2")  # OPSBOT_SSH_CLIENT: who runs one-shot ssh steps


@dataclass(frozen=True)
class Settings:
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str | None = None
    channel: str | None = None
    approvers: frozenset[str] = frozenset()
    # Slack user (U…/W…) or usergroup (S…) IDs who may run, diag, resolve and export
    operators: frozenset[str] = frozenset()
    listen_host: str = "127.0.0.1"
    listen_port: int = 3000
    db: Path | str = Path("opsbot.db")  # a SQLite file, or a postgresql:// URL
    runbooks: Path = Path("runbooks")
    inventory: Path = Path("inventory.yaml")
    known_hosts: Path = Path("~/.ssh/known_hosts").expanduser()
    alert_token: str | None = None
    audit_key: str | None = None  # optional HMAC key for the audit chain
    metrics_token: str | None = None  # bearer token GET /metrics (and detailed /healthz) need
    approval_ttl: float = 1800.0  # seconds a pending approval stays valid
    allow_self_approval: bool = False  # two-person rule unless set
    ssh_idle: float = 300.0  # seconds an idle pooled SSH connection is kept
    ssh_reuse_sessions: bool = True  # shell sessions kept open for the next commands
    # who runs a one-shot command's ssh steps: libssh2 (C: less CPU for a cold fan-out), or
    # asyncssh; `opsbot serve` always uses asyncssh's pool
    ssh_client: str = "libssh2"
    stop_timeout: float = 20.0  # seconds running steps get to finish on SIGTERM
    close_after: float = 14400.0  # seconds an incident with nothing to do stays open
    remind_after: float = 600.0  # seconds a pending approval waits before its one reminder
    # steps of nice the serving process's batch work (diagnosis workers and their fork server,
    # offload threads, the Docker steps' threads; not the store's) runs below its answers and
    # its loop (bot.offload); 0: no difference
    batch_nice: int = 10
    # who answers HTTP requests: a thread of the serving process, or a process of its own with
    # its own interpreter lock (bot.edgeproc)
    edge: str = "thread"

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_bot_token)

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token)


PATHS = ("db", "runbooks", "inventory", "known_hosts")


def _raw(env: Mapping[str, str], file_values: Mapping[str, object],
         base: Path | None = None) -> dict[str, str]:
    """Settings as text, environment over file. A relative path in the file is relative to the
    file's folder, so that one opsbot.toml serves every terminal."""
    names = {key: env_name for env_name, key in PREFIXED.items()}
    names.update({name.lower(): f"OPSBOT_{name}" for name in OWN})
    out: dict[str, str] = {}
    for key, env_name in names.items():
        if env.get(env_name, "") != "":
            out[key] = env[env_name]
        elif key in PATHS and base is not None and isinstance(file_values.get(key), str) \
                and not is_database_url(str(file_values[key])):
            path = Path(str(file_values[key])).expanduser()
            out[key] = str(path if path.is_absolute() else base / path)
        elif key in file_values and file_values[key] is not None:
            value = file_values[key]
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[key] = str(value)
    return out


def _read_toml(path: Path) -> dict[str, object]:
    import tomllib  # only with a config file: 9-13 ms of every start otherwise

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    known = set(PREFIXED.values()) | {n.lower() for n in OWN}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
    return data


def is_database_url(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))


def _database(text: str) -> Path | str:
    """OPSBOT_DB: a postgresql:// URL as it is (checked when the store opens it), else a file."""
    return text if is_database_url(text) else Path(text).expanduser()


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"OPSBOT_LISTEN must be host:port, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _ids(text: str) -> frozenset[str]:
    return frozenset(a.strip() for a in text.split(",") if a.strip())


def _bool(name: str, text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {text!r}")


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {text!r}")
    return value


def _nice(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number from 0 to 19, got {text!r}") from None
    if not 0 <= value <= 19:
        raise ConfigError(f"{name} must be a whole number from 0 to 19, got {text!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None, config_file: Path | None = None,
                  *, serving: bool = False) -> Settings:
    """Settings from the environment over the optional TOML file.

    `serving` adds the checks that only `opsbot serve` needs (signing secret in HTTP mode).
    """
    env = os.environ if env is None else env
    raw = _raw(env, _read_toml(config_file) if config_file else {},
               config_file.resolve().parent if config_file else None)
    token = raw.get("slack_bot_token")
    if token is not None and not token.startswith("xoxb-"):
        raise ConfigError("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
    app_token = raw.get("slack_app_token")
    if app_token is not None and not app_token.startswith("xapp-"):
        raise ConfigError("SLACK_APP_TOKEN must be an app-level token starting with xapp-")
    api_url = raw.get("slack_api_url")
    if api_url is not None:
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError(f"SLACK_API_URL must be an http(s) URL, got {api_url!r}")
        if not api_url.endswith("/"):
            api_url += "/"
    channel = raw.get("channel")
    if token and not channel:
        raise ConfigError("OPSBOT_CHANNEL is required when SLACK_BOT_TOKEN is set")
    if token and serving and not app_token and not raw.get("slack_signing_secret"):
        raise ConfigError("SLACK_SIGNING_SECRET is required in HTTP mode (or set SLACK_APP_TOKEN)")
    approvers = _ids(raw.get("approvers", ""))
    operators = _ids(raw["operators"]) if "operators" in raw else approvers
    host, port = _listen(raw.get("listen", "127.0.0.1:3000"))
    return Settings(
        slack_bot_token=token,
        slack_signing_secret=raw.get("slack_signing_secret"),
        slack_app_token=app_token,
        slack_api_url=api_url,
        channel=channel,
        approvers=approvers,
        operators=operators,
        listen_host=host,
        listen_port=port,
        db=_database(raw.get("db", "opsbot.db")),
        runbooks=Path(raw.get("runbooks", "runbooks")).expanduser(),
        inventory=Path(raw.get("inventory", "inventory.yaml")).expanduser(),
        known_hosts=Path(raw.get("known_hosts", "~/.ssh/known_hosts")).expanduser(),
        alert_token=raw.get("alert_token"),
        audit_key=raw.get("audit_key"),
        metrics_token=raw.get("metrics_token"),
        approval_ttl=_seconds("OPSBOT_APPROVAL_TTL", raw.get("approval_ttl", "1800")),
        allow_self_approval=_bool("OPSBOT_ALLOW_SELF_APPROVAL",
                                  raw.get("allow_self_approval", "false")),
        ssh_idle=_seconds("OPSBOT_SSH_IDLE", raw.get("ssh_idle", "300")),
        # kept sessions pay off in a server, whose next runs take them; a one-shot command's
        # would end with it (a cold one-command run on 50 hosts: +0.17 s of its CPU)
        ssh_reuse_sessions=_bool("OPSBOT_SSH_REUSE_SESSIONS", raw.get(
            "ssh_reuse_sessions", "true" if serving else "false")),
        ssh_client=_ssh_client(raw.get("ssh_client", "libssh2"), serving),
        stop_timeout=_seconds("OPSBOT_STOP_TIMEOUT", raw.get("stop_timeout", "20")),
        close_after=_seconds("OPSBOT_CLOSE_AFTER", raw.get("close_after", "14400")),
        remind_after=_seconds("OPSBOT_REMIND_AFTER", raw.get("remind_after", "600")),
        batch_nice=_nice("OPSBOT_BATCH_NICE", raw.get("batch_nice", "10")),
        edge=_edge(raw.get("edge", "thread"), raw.get("db", "opsbot.db")),
    )


def _ssh_client(text: str, serving: bool) -> str:
    if text not in SSH_CLIENTS:
        raise ConfigError(f"OPSBOT_SSH_CLIENT must be asyncssh or libssh2, got {text!r}")
    return "asyncssh" if serving else text  # a server's pooled connections are asyncssh's


def _edge(text: str, db: str) -> str:
    if text not in EDGES:
        raise ConfigError(f"OPSBOT_EDGE must be thread or process, got {text!r}")
    if text == "process" and db == ":memory:":
        raise ConfigError("OPSBOT_EDGE=process needs a database both processes open "
                          "(OPSBOT_DB is :memory:); use OPSBOT_EDGE=thread")
    return text
