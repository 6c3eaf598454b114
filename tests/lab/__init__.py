"""The real test lab: sshd, nginx + supervisord + docservice stand-in, Prometheus + Alertmanager.

Everything runs on loopback, as root, in a folder under /tmp; test hosts are reached over ssh as
the unprivileged `opsbot-lab` user. Load the fixtures with
`pytest_plugins = ["tests.lab.fixtures"]` (tests/conftest.py).
"""

from .alerting import ALERT_NAME, Alerting, start_alerting
from .process import LabError, free_port, http_get, make_lab_dir, reap_stale_labs
from .sshd import LAB_USER, SSH_PORT, SshServer, ensure_lab_user, start_sshd, wrong_known_hosts
from .web import PROGRAM, WebLab, start_web

__all__ = [
    "ALERT_NAME",
    "LAB_USER",
    "PROGRAM",
    "SSH_PORT",
    "Alerting",
    "LabError",
    "SshServer",
    "WebLab",
    "ensure_lab_user",
    "free_port",
    "http_get",
    "make_lab_dir",
    "reap_stale_labs",
    "start_alerting",
    "start_sshd",
    "start_web",
    "wrong_known_hosts",
]
