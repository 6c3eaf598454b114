"""Discovery's readers, on text as nginx -T, ss and docker inspect print it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bot.discovery.chain import Chain
from bot.discovery.nginx import Address, parse_dump, route, serves
from bot.discovery.owners import (
    container_holds,
    parse_cgroup,
    parse_docker_inspect,
    parse_ss,
    parse_supervisor_files,
    parse_supervisor_status,
)
from bot.discovery.probe import _cat

DUMP = """\
nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
nginx: configuration file /etc/nginx/nginx.conf test is successful
# configuration file /etc/nginx/nginx.conf:
error_log /var/log/nginx/error.log;
http {
    map $host $pool { default 127.0.0.1:9100; docs.example.com unix:/run/docs.sock; }
    include conf.d/*.conf;
}

# configuration file /etc/nginx/conf.d/site.conf:
upstream app { server 10.0.0.5:8000 down; server 127.0.0.1:8001; }
server {
    listen 443 ssl default_server;
    server_name docs.example.com *.docs.example.com;
    location / { proxy_pass http://app; }
    location = /exact { fastcgi_pass unix:/run/php/php-fpm.sock; }
    location ^~ /static/ { root /srv; }
    location ~ \\.php$ { fastcgi_pass 127.0.0.1:9000; }
    location /grpc/ { grpc_pass grpc://127.0.0.1:50051; }
    location /mapped/ { proxy_pass http://$pool; }
    location /files/ { proxy_pass http://127.0.0.1:7000/store/; }
}
server {
    listen 443 ssl;
    server_name other.example.com;
    error_log /var/log/nginx/other.log;
    location / { uwsgi_pass 127.0.0.1:3031; }
}
"""


def test_server_and_location_as_nginx_picks_them() -> None:
    config = parse_dump(DUMP)
    docs = route(config, "https://docs.example.com/a/b")
    assert docs is not None and docs.server_name == "docs.example.com"
    assert docs.upstream is not None and docs.addresses == (Address("127.0.0.1", 8001),)
    assert docs.error_log == "/var/log/nginx/error.log"
    assert docs.server.where == "/etc/nginx/conf.d/site.conf:2"

    exact = route(config, "https://docs.example.com/exact")
    assert exact is not None and exact.addresses == (Address(path="/run/php/php-fpm.sock"),)
    static = route(config, "https://docs.example.com/static/x.php")  # ^~ beats the regex
    assert static is not None and static.directive is None
    php = route(config, "https://a.docs.example.com/index.php")
    assert php is not None and php.addresses == (Address("127.0.0.1", 9000),)
    grpc = route(config, "https://docs.example.com/grpc/x")
    assert grpc is not None and grpc.addresses == (Address("127.0.0.1", 50051),)
    mapped = route(config, "https://docs.example.com/mapped/")
    assert mapped is not None and mapped.addresses == (Address(path="/run/docs.sock"),)
    files = route(config, "https://docs.example.com/files/a.txt")
    assert files is not None and files.upstream_path == "/store/a.txt"

    other = route(config, "https://other.example.com/")
    assert other is not None and other.addresses == (Address("127.0.0.1", 3031),)
    assert other.error_log == "/var/log/nginx/other.log"
    unknown_name = route(config, "https://nobody.example.org/")  # default_server
    assert unknown_name is not None and unknown_name.server_name == "docs.example.com"
    assert route(config, "http://docs.example.com/") is None  # nothing listens on 80


def test_an_alert_url_counts_only_where_nginx_serves_it_by_name() -> None:
    config = parse_dump(DUMP)
    docs = route(config, "https://docs.example.com/a/b")
    assert docs is not None and serves(docs, "https://docs.example.com/a/b")
    evil = route(config, "https://evil.example/x")  # the port's default server answers it
    assert evil is not None and not serves(evil, "https://evil.example/x")
    assert not serves(evil, "https://10.9.8.7/x")  # another machine's address
    assert serves(evil, "https://127.0.0.1/x") and serves(evil, "https://web01/", ("web01",))

    # a served name is fetched on the host: curl --resolve to the address nginx listens on
    params = Chain(host="web01", url="https://docs.example.com/a/b", route=docs).params()
    assert params["proxy_url"] == "https://docs.example.com/a/b"
    assert params["proxy_resolve"] == "docs.example.com:443:127.0.0.1"
    assert "proxy_url" not in Chain(host="web01", url="https://evil.example/x").params()


def test_ss_lines() -> None:
    listeners = parse_ss(
        'LISTEN 0 511 127.0.0.1:33689 0.0.0.0:* users:(("nginx",pid=3432,fd=5),'
        '("nginx",pid=3431,fd=5))\n'
        "LISTEN 0 4096 [::]:8080 [::]:*\n"
        "u_str LISTEN 0 4096 /var/run/app.sock 6117 * 0 "
        'users:(("gunicorn",pid=36,fd=7))\n')
    assert listeners[0].processes == (("nginx", 3432), ("nginx", 3431))
    assert listeners[1].serves(Address("127.0.0.1", 8080)) and not listeners[1].processes
    assert listeners[2].serves(Address(path="/var/run/app.sock"))


def test_supervisor_config_status_and_cgroup() -> None:
    conf = parse_supervisor_files("/etc/supervisor/supervisord.conf", {
        "/etc/supervisor/supervisord.conf": "[supervisord]\nlogfile=/var/log/sv.log\n"
                                            "[include]\nfiles = conf.d/*.conf\n",
        "/etc/supervisor/conf.d/ds.conf": "[program:docservice]\ncommand=/usr/bin/node app.js"
                                          "\n  --port 8000\nstdout_logfile=/var/log/ds.log\n"
                                          "[group:ds]\nprograms=docservice\n"})
    assert conf.includes == ("/etc/supervisor/conf.d/*.conf",)
    assert conf.programs[0].name == "ds:docservice"
    assert conf.programs[0].command == "/usr/bin/node app.js --port 8000"
    status = parse_supervisor_status("ds:docservice   RUNNING   pid 42, uptime 0:01:00\n"
                                     "myapp   FATAL     Exited too quickly\n")
    assert status["ds:docservice"].pid == 42 and status["myapp"].state == "FATAL"
    assert parse_cgroup("0::/system.slice/myapp.service\n") == ("myapp.service", "")
    cid = "a" * 64
    assert parse_cgroup(f"0::/system.slice/docker-{cid}.scope\n")[1] == cid


def test_stopped_container_that_publishes_the_port() -> None:
    inspect = [{"Id": "b" * 64, "Name": "/docs", "State": {"Status": "exited", "ExitCode": 137,
                                                           "OOMKilled": True},
                "Config": {"Image": "onlyoffice/documentserver", "Env": ["A=1"]},
                "HostConfig": {"NetworkMode": "bridge",
                               "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1",
                                                            "HostPort": "8080"}]}},
                "NetworkSettings": {"Ports": {}}}]
    (c,) = parse_docker_inspect(json.dumps(inspect))
    assert c.state_text == "exited (137, OOM-killed)"
    assert container_holds(c, Address("127.0.0.1", 8080)) == "publishes 127.0.0.1:8080->80/tcp"
    assert container_holds(c, Address("127.0.0.1", 8081)) == ""


def test_a_supervisord_conf_is_read_where_it_is_a_file_and_a_missing_one_fails_quietly(
        tmp_path: Path) -> None:
    """Discovery reads the default supervisord confs on every host; one that is not there
    fails (status 1, as `cat` did) without starting `cat` (no message from it)."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\nlogfile=/var/log/supervisor/supervisord.log\n")

    def sh(command: str) -> tuple[int, str]:
        done = subprocess.run(["sh", "-c", f"exec 2>&1\n{command}"], capture_output=True,
                              text=True, timeout=30, check=False)
        return done.returncode, done.stdout

    assert sh(_cat(str(conf))) == (0, conf.read_text())
    assert sh(_cat(str(tmp_path / "missing.conf"))) == (1, "")
    assert sh(_cat(str(tmp_path))) == (1, "")  # a folder
    assert sh(_cat(str(tmp_path / "it's here.conf"))) == (1, "")  # quoted
