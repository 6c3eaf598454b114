"""Each program's own catalogue of failures (issue 9): a signal added from a program's source is
proven on a line that the real program printed, here or in a public thread.

Every row: the evidence step, the line verbatim, where it was seen ("run here: <command>" with the
program's version, or the URL of a public thread that is not a corpus case), and the cause (with
its detail) that must come first. The lines are never edited: a changed rule that no longer ranks
them first is a regression of generalisation, not a test to adjust.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.diagnosis import diagnose, load_rules
from bot.models import Cause

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "runbooks" / "rules" / "http-502.yaml"
EVIDENCE = ROOT / "tests" / "data" / "evidence"

CATALOGUE: list[tuple[str, str, str, str, str | None]] = [
    # ---- gunicorn 23.0.0 (pip), CPython 3.11.7 and Node.js, run here
    (
        "app_logs",
        "Failed to find attribute 'application' in 'm'.",
        "run here: gunicorn -b 127.0.0.1:18765 m:application (m.py without it), gunicorn 23.0.0",
        "upstream_crashloop",
        "app_fails_to_load",
    ),
    (
        "docker_logs",
        "gunicorn: error: argument -k/--worker-class: expected one argument",
        "run here: gunicorn -k (no worker class), gunicorn 23.0.0",
        "upstream_crashloop",
        "bad_command_line",
    ),
    (
        "journal",
        "server.py: error: unrecognized arguments: --nope",
        "run here: python3.11 -m http.server --nope",
        "upstream_crashloop",
        "bad_command_line",
    ),
    (
        "app_logs",
        "OSError: [Errno 30] Read-only file system: '/tmp/rofs/x.lock'",
        "run here: python3.11 -c \"open('/tmp/rofs/x.lock','w')\" on a tmpfs mounted ro",
        "permission_denied",
        "read_only_filesystem",
    ),
    (
        "docker_logs",
        "Error: EROFS: read-only file system, open '/tmp/rofs/x'",
        "run here: node -e \"require('fs').writeFileSync('/tmp/rofs/x','y')\" on a tmpfs "
        "mounted ro (Node.js 20.20.2)",
        "permission_denied",
        "read_only_filesystem",
    ),
    # ---- the official images' entrypoints: the database or broker container exits at start
    (
        "docker_logs",
        "db_1   | Error: Database is uninitialized and superuser password is not specified.",
        "https://github.com/docker/docs/issues/13944 (docker-compose up of the Django sample)",
        "dependency_down",
        "database_failed_to_start",
    ),
    (
        "docker_logs",
        "error: deprecated environment variables detected",
        "https://github.com/docker-library/rabbitmq/issues/506 (rabbitmq 3.9 image)",
        "dependency_down",
        "broker_failed_to_start",
    ),
    (
        "docker_logs",
        "rabbitmq_1             | error: deprecated environment variables detected",
        "https://github.com/laradock/laradock/issues/3035 (docker-compose up -d rabbitmq)",
        "dependency_down",
        "broker_failed_to_start",
    ),
    # ---- php-fpm 8.2.36 (Debian php8.2-fpm), each run with a pool file made to fail one check
    (
        "app_logs",
        "[30-Nov-2026 09:47:27] ERROR: [pool www] the chdir path '/nonexistent/app' does not "
        "exist or is not a directory",
        "run here: php-fpm8.2 -F -y c.conf (chdir = /nonexistent/app)",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "[30-Nov-2026 09:47:27] ERROR: Unable to globalize '/etc/php/8.2/fpm/nothere/*.conf' "
        "(ret=2) from /tmp/catalog/fpm/d.conf at line 4.",
        "run here: php-fpm8.2 -F -y d.conf (include = a missing directory)",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "[30-Nov-2026 09:47:30] ALERT: [pool www] pm.max_children must be a positive value",
        "run here: php-fpm8.2 -F -y a.conf (pm.max_children = 0)",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "[30-Nov-2026 09:47:30] ERROR: [pool two] unable to set listen address as it's already "
        "used in another pool 'www'",
        "run here: php-fpm8.2 -F -y c.conf (two pools, one listen)",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "[30-Nov-2026 09:47:34] ERROR: unable to bind listening socket for address "
        "'/run/catalog-nodir/php8.2-fpm.sock': No such file or directory (2)",
        "run here: php-fpm8.2 -F -y e.conf (listen in a missing directory)",
        "upstream_crashloop",
        "runtime_dir_missing",
    ),
    (
        "app_logs",
        "[30-Nov-2026 09:47:35] ERROR: failed to open access log (/nonexistent-dir/access.log): "
        "No such file or directory (2)",
        "run here: php-fpm8.2 -F -y f.conf (access.log in a missing directory)",
        "upstream_crashloop",
        "exit_config_error",
    ),
    # ---- uWSGI 2.0.21 (Debian uwsgi, uwsgi-plugin-python3)
    (
        "app_logs",
        "worker respawning too fast !!! i have to sleep a bit (2 seconds)...",
        "run here: uwsgi --master --plugin python3 --http-socket 127.0.0.1:19421 --wsgi-file "
        "exits.py --lazy-apps --processes 1 (the app calls os._exit(3))",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "DAMN ! worker 1 (pid: 14949) died :( trying respawn ...",
        "run here: the same uwsgi command",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "OOPS ! failed loading app in worker 1 (pid 16720)",
        "run here: uwsgi --master --plugin python3 --http-socket 127.0.0.1:19422 --wsgi-file "
        "broken.py --lazy-apps --need-app --processes 1",
        "upstream_crashloop",
        "app_fails_to_load",
    ),
    (
        "app_logs",
        "!!! uWSGI process 17185 got Segmentation Fault !!!",
        "run here: uwsgi --master --plugin python3 --http-socket 127.0.0.1:19423 --wsgi-file "
        "segv.py (the app reads address 0 with ctypes)",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "realpath() of /tmp/catalog/uw/nonexistent.ini failed: No such file or directory "
        "[core/utils.c line 3662]",
        "run here: uwsgi --ini /tmp/catalog/uw/nonexistent.ini",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "user nosuchcataloguser not found.",
        "run here: uwsgi --plugin python3 --http-socket 127.0.0.1:19424 --uid nosuchcataloguser",
        "upstream_crashloop",
        "exit_config_error",
    ),
    # ---- gunicorn 27.0.1 (PyPI)
    (
        "app_logs",
        "Error: No such user: 'nosuchcataloguser'",
        "run here: gunicorn -b 127.0.0.1:19431 -u nosuchcataloguser okapp:app",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "Error: can't chdir to '/nonexistent/app'",
        "run here: gunicorn -b 127.0.0.1:19431 --chdir /nonexistent/app okapp:app",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "Error: class uri 'gevent' invalid or not found: ",
        "run here: gunicorn -b 127.0.0.1:19431 -k gevent okapp:app (gevent not installed)",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "Error: '/nonexistent/gunicorn.conf.py' doesn't exist",
        "run here: gunicorn -b 127.0.0.1:19431 -c /nonexistent/gunicorn.conf.py okapp:app",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "[2026-11-30 09:48:05 +0000] [21759] [ERROR] Invalid address: ('10.255.255.1', 19431)",
        "run here: gunicorn -b 10.255.255.1:19431 okapp:app (an address the host lacks)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "app_logs",
        "[2026-11-30 09:48:05 +0000] [21759] [ERROR] connection to ('10.255.255.1', 19431) "
        "failed: [Errno 99] Cannot assign requested address",
        "run here: the same gunicorn command",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    # ---- Puma 5.6.5 (Debian puma)
    (
        "app_logs",
        "! Unable to load application: LoadError: cannot load such file -- catalogx",
        "run here: puma -b tcp://127.0.0.1:19451 bad.ru (config.ru raises LoadError)",
        "upstream_crashloop",
        "app_fails_to_load",
    ),
    (
        "app_logs",
        "[22764] ! Unable to start worker",
        "run here: puma -w 2 -b tcp://127.0.0.1:19452 bad.ru",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "[22764] Early termination of worker",
        "run here: the same puma command",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "[23842] ! Terminating timed out worker (worker failed to check in within 7 seconds): "
        "23843",
        "run here: puma -C t.rb ok.ru (workers 2, worker_timeout 7; kill -STOP on worker 0)",
        "upstream_timeout",
        "puma_worker_timeout",
    ),
    # ---- unicorn 6.0.0 (Debian unicorn)
    (
        "app_logs",
        "E, [2026-11-30T09:49:21.732301 #30741] ERROR -- : adding listener failed "
        "addr=127.0.0.1:19464 (in use)",
        "run here: unicorn -l 127.0.0.1:19464 ok.ru (port held by another process)",
        "upstream_crashloop",
        "port_already_in_use",
    ),
    (
        "app_logs",
        "/usr/lib/ruby/vendor_ruby/unicorn/http_server.rb:206:in `pid=': Already running on "
        "PID:27657 (or pid=/tmp/catalog/rb/live.pid is stale) (ArgumentError)",
        "run here: unicorn -l 127.0.0.1:19462 -c <(echo \'pid \"live.pid\"\') ok.ru (the pid file "
        "names a live process)",
        "upstream_crashloop",
        "stale_pid_file",
    ),
    (
        "app_logs",
        "master failed to start, check stderr log for details",
        "run here: unicorn -D -c pre.rb -l 127.0.0.1:19468 bad.ru (preload_app true)",
        "upstream_crashloop",
        None,
    ),
    # ---- Node.js clients of the dependencies
    (
        "app_logs",
        "Error: Connection terminated unexpectedly",
        "run here: pg 8.23.1 Client.connect() to a port that accepts and closes",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Error: Connection terminated due to connection timeout",
        "run here: pg 8.23.1 Pool.query() (connectionTimeoutMillis 1000) to a port that never "
        "answers",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "[ioredis] Unhandled error event: Error: connect ECONNREFUSED 127.0.0.1:19479",
        "run here: ioredis 6.0.0 to a closed port",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "MaxRetriesPerRequestError: Reached the max retries per request limit (which is 1). "
        "Refer to \"maxRetriesPerRequest\" option for details.",
        "run here: ioredis 6.0.0 get() with maxRetriesPerRequest 1 to a closed port",
        "dependency_down",
        None,
    ),
    # ---- what a backend's clients print when what it needs fails (issue 9), per language and
    # library: a database, queue, cache or search engine refusing, absent or full; a name that does
    # not resolve; an address that does not answer; a certificate or token the client rejects
    # (run here: python3.11 clients in a venv, Node.js 20.20.2 clients, OpenJDK 17.0.15, psql and
    # PostgreSQL 15.18, against a closed port, 172.17.0.99 behind a link that is down, NXDOMAIN,
    # openssl s_server; or public threads for the stacks that cannot run here)
    (
        "app_logs",
        "psycopg2.OperationalError: connection to server at \"127.0.0.1\", port 19999 failed: "
        "Connection refused",
        "run here: psycopg2-binary 2.9.13 (libpq 17) psycopg2.connect() to a closed port "
        "(127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "psycopg2.OperationalError: could not translate host name \"nosuchhost.invalid\" to "
        "address: Name or service not known",
        "run here: psycopg2-binary 2.9.13 (libpq 17) psycopg2.connect() to an unresolvable name "
        "(nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "journal",
        "psycopg2.OperationalError: connection to server at \"127.0.0.1\", port 19997 failed: "
        "timeout expired",
        "run here: psycopg2-binary 2.9.13 (libpq 17) psycopg2.connect() to a loopback listener "
        "whose accept queue is full (its SYNs dropped)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:19999. Connection "
        "refused.",
        "run here: redis-py 8.1.0 Redis().ping() to a closed port (127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "redis.exceptions.ConnectionError: Error -2 connecting to nosuchhost.invalid:6379. Name "
        "or service not known.",
        "run here: redis-py 8.1.0 Redis().ping() to an unresolvable name (nosuchhost.invalid: "
        "NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "journal",
        "redis.exceptions.TimeoutError: Timeout connecting to server",
        "run here: redis-py 8.1.0 Redis().ping() to a loopback listener whose accept queue is "
        "full (its SYNs dropped)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "pika.exceptions.AMQPConnectionError",
        "run here: pika 1.4.4 BlockingConnection() to a closed port (127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "pymongo.errors.ServerSelectionTimeoutError: 127.0.0.1:19999: [Errno 111] Connection "
        "refused (configured timeouts: socketTimeoutMS: 20000.0ms, connectTimeoutMS: 20000.0ms), "
        "Timeout: 1.5s, Topology Description: <TopologyDescription id: 6b0dcaaa62276ef01887a34a, "
        "topology_type: Unknown, servers: [<ServerDescription ('127.0.0.1', 19999) server_type: "
        "Unknown, rtt: None, error=AutoReconnect('127.0.0.1:19999: [Errno 111] Connection refused "
        "(configured timeouts: socketTimeoutMS: 20000.0ms, connectTimeoutMS: 20000.0ms)')>]>",
        "run here: pymongo 4.20.1 MongoClient(serverSelectionTimeoutMS=1500) to a closed port "
        "(127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on '127.0.0.1' "
        "([Errno 111] Connection refused)\")",
        "run here: PyMySQL 1.2.4 connect() to a closed port (127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on "
        "'nosuchhost.invalid' ([Errno -2] Name or service not known)\")",
        "run here: PyMySQL 1.2.4 connect() to an unresolvable name (nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "docker_logs",
        "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on '127.0.0.1' "
        "(timed out)\")",
        "run here: PyMySQL 1.2.4 connect() to a loopback listener whose accept queue is full (its "
        "SYNs dropped)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 19999)",
        "run here: asyncpg 0.32.0 connect() to a closed port (127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "socket.gaierror: [Errno -2] Name or service not known",
        "run here: asyncpg 0.32.0 connect() to an unresolvable name (nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "docker_logs",
        "requests.exceptions.ConnectionError: HTTPConnectionPool(host='127.0.0.1', port=19999): "
        "Max retries exceeded with url: / (Caused by "
        "NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=19999): Failed to establish a "
        "new connection: [Errno 111] Connection refused\"))",
        "run here: requests 2.34.2 get() to a closed port (127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "requests.exceptions.ConnectionError: HTTPConnectionPool(host='nosuchhost.invalid', "
        "port=80): Max retries exceeded with url: / (Caused by "
        "NameResolutionError(\"HTTPConnection(host='nosuchhost.invalid', port=80): Failed to "
        "resolve 'nosuchhost.invalid' ([Errno -2] Name or service not known)\"))",
        "run here: requests 2.34.2 get() to an unresolvable name (nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "jwt.exceptions.InvalidSignatureError: Signature verification failed",
        "run here: PyJWT 2.15.1 jwt.decode() of a token signed with another secret",
        "jwt_mismatch",
        None,
    ),
    (
        "docker_logs",
        "jwt.exceptions.DecodeError: Not enough segments",
        "run here: PyJWT 2.15.1 jwt.decode() of a malformed token",
        "jwt_mismatch",
        None,
    ),
    (
        "journal",
        "jwt.exceptions.ExpiredSignatureError: Signature has expired",
        "run here: PyJWT 2.15.1 jwt.decode() of an expired token",
        "jwt_mismatch",
        "jwt_expired_clock_skew",
    ),
    (
        "app_logs",
        "requests.exceptions.SSLError: HTTPSConnectionPool(host='127.0.0.1', port=19443): Max "
        "retries exceeded with url: / (Caused by SSLError(SSLCertVerificationError(1, '[SSL: "
        "CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate "
        "(_ssl.c:1006)')))",
        "run here: requests 2.34.2 get() to openssl s_server with a self-signed certificate",
        "tls_mismatch",
        "self_signed_certificate",
    ),
    (
        "docker_logs",
        "requests.exceptions.SSLError: HTTPSConnectionPool(host='127.0.0.1', port=19980): Max "
        "retries exceeded with url: / (Caused by SSLError(SSLError(1, '[SSL: "
        "WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)')))",
        "run here: requests 2.34.2 get() https:// to a plain HTTP port (python3 -m http.server)",
        "tls_mismatch",
        "https_to_plain_port",
    ),
    (
        "journal",
        "urllib.error.URLError: <urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: self-signed certificate (_ssl.c:1006)>",
        "run here: CPython 3.11.7 urllib.request.urlopen() to openssl s_server with a self-signed "
        "certificate",
        "tls_mismatch",
        "self_signed_certificate",
    ),
    (
        "app_logs",
        "urllib.error.URLError: <urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'. "
        "(_ssl.c:1006)>",
        "run here: CPython 3.11.7 urllib.request.urlopen() to a certificate without the address "
        "dialed",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "docker_logs",
        "psycopg2.OperationalError: connection to server at \"127.0.0.1\", port 19541 failed: "
        "FATAL:  password authentication failed for user \"app\"",
        "run here: psycopg2-binary 2.9.13 (libpq 17) psycopg2.connect() to PostgreSQL 15.18 with "
        "a wrong password",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "psycopg2.OperationalError: connection to server at \"127.0.0.1\", port 19541 failed: "
        "FATAL:  sorry, too many clients already",
        "run here: psycopg2-binary 2.9.13 (libpq 17) psycopg2.connect() to PostgreSQL 15.18 with "
        "max_connections 3 held",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "java.net.UnknownHostException: nosuchhost.invalid",
        "run here: OpenJDK 17.0.15 HttpURLConnection to an unresolvable name (nosuchhost.invalid: "
        "NXDOMAIN)",
        "dns_or_network",
        None,
    ),
    (
        "docker_logs",
        "javax.net.ssl.SSLHandshakeException: PKIX path building failed: "
        "sun.security.provider.certpath.SunCertPathBuilderException: unable to find valid "
        "certification path to requested target",
        "run here: OpenJDK 17.0.15 HttpURLConnection to a certificate of an unknown CA",
        "tls_mismatch",
        "certificate_chain_untrusted",
    ),
    (
        "journal",
        "Caused by: sun.security.validator.ValidatorException: PKIX path building failed: "
        "sun.security.provider.certpath.SunCertPathBuilderException: unable to find valid "
        "certification path to requested target",
        "run here: OpenJDK 17.0.15 HttpURLConnection to a certificate of an unknown CA",
        "tls_mismatch",
        "certificate_chain_untrusted",
    ),
    (
        "app_logs",
        "Caused by: sun.security.provider.certpath.SunCertPathBuilderException: unable to find "
        "valid certification path to requested target",
        "run here: OpenJDK 17.0.15 HttpURLConnection to a certificate of an unknown CA",
        "tls_mismatch",
        "certificate_chain_untrusted",
    ),
    (
        "docker_logs",
        "Error: connect ECONNREFUSED 127.0.0.1:19999",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 to a closed port "
        "(127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "Error: getaddrinfo ENOTFOUND nosuchhost.invalid",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 to an unresolvable "
        "name (nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "MongoServerSelectionError: connect ECONNREFUSED 127.0.0.1:19999",
        "run here: mongodb 7.9.0 MongoClient.connect() on Node.js 20.20.2 to a closed port "
        "(127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "MongoServerSelectionError: getaddrinfo ENOTFOUND nosuchhost.invalid",
        "run here: mongodb 7.9.0 MongoClient.connect() on Node.js 20.20.2 to an unresolvable name "
        "(nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "journal",
        "JsonWebTokenError: invalid signature",
        "run here: jsonwebtoken 9.0.3 verify() on Node.js 20.20.2 of a token signed with another "
        "secret",
        "jwt_mismatch",
        None,
    ),
    (
        "app_logs",
        "JsonWebTokenError: jwt malformed",
        "run here: jsonwebtoken 9.0.3 verify() on Node.js 20.20.2 of a malformed token",
        "jwt_mismatch",
        None,
    ),
    (
        "docker_logs",
        "TokenExpiredError: jwt expired",
        "run here: jsonwebtoken 9.0.3 verify() on Node.js 20.20.2 of an expired token",
        "jwt_mismatch",
        "jwt_expired_clock_skew",
    ),
    (
        "journal",
        "Error: self-signed certificate",
        "run here: Node.js 20.20.2 https.get() to openssl s_server with a self-signed certificate",
        "tls_mismatch",
        "self_signed_certificate",
    ),
    (
        "app_logs",
        "Error: write EPROTO 80FCE5886C7F0000:error:0A00010B:SSL routines:ssl3_get_record:wrong "
        "version number:../deps/openssl/openssl/ssl/record/ssl3_record.c:350:",
        "run here: Node.js 20.20.2 https.get() https:// to a plain HTTP port (python3 -m "
        "http.server)",
        "tls_mismatch",
        "https_to_plain_port",
    ),
    (
        "docker_logs",
        "Error [ERR_TLS_CERT_ALTNAME_INVALID]: Hostname/IP does not match certificate's altnames: "
        "IP: 127.0.0.1 is not in the cert's list: ",
        "run here: Node.js 20.20.2 https.get() to a certificate without the address dialed",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "journal",
        "Error: connect ECONNREFUSED 127.0.0.1:19541",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 while PostgreSQL "
        "15.18 starts",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "error: the database system is starting up",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 while PostgreSQL "
        "15.18 starts",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "error: the database system is not yet accepting connections",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 while PostgreSQL "
        "15.18 starts",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "requests.exceptions.ConnectTimeout: HTTPConnectionPool(host='172.17.0.99', port=8080): "
        "Max retries exceeded with url: / (Caused by "
        "ConnectTimeoutError(<HTTPConnection(host='172.17.0.99', port=8080) at 0x7eff73c8d590>, "
        "'Connection to 172.17.0.99 timed out. (connect timeout=3)'))",
        "run here: requests 2.34.2 get() to 172.17.0.99, an address no host answers",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "psycopg2.OperationalError: connection to server at \"172.17.0.99\", port 5432 failed: No "
        "route to host",
        "run here: psycopg2-binary 2.9.13 (libpq 17) psycopg2.connect() to 172.17.0.99, an "
        "address no host answers",
        "dns_or_network",
        None,
    ),
    (
        "docker_logs",
        "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on '172.17.0.99' "
        "(timed out)\")",
        "run here: PyMySQL 1.2.4 connect() to 172.17.0.99, an address no host answers",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "Error: connect EHOSTUNREACH 172.17.0.99:8080",
        "run here: Node.js 20.20.2 http.get() to 172.17.0.99, an address no host answers",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "psql: error: connection to server on socket \"/tmp/rulesf-nosock/.s.PGSQL.5432\" failed: "
        "No such file or directory",
        "run here: psql 15.18 with host set to a directory without a PostgreSQL socket",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "psycopg2.OperationalError: connection to server on socket "
        "\"/tmp/rulesf-nosock/.s.PGSQL.5432\" failed: No such file or directory",
        "run here: psycopg2-binary 2.9.13 psycopg2.connect() with host set to a directory without "
        "a PostgreSQL socket",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "Error: connect ENOENT /tmp/rulesf-nosock/.s.PGSQL.5432",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 with host set to a "
        "directory without a PostgreSQL socket",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "psql: error: connection to server at \"127.0.0.1\", port 19541 failed: FATAL:  password "
        "authentication failed for user \"app\"",
        "run here: psql 15.18 to PostgreSQL 15.18 with a wrong password",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "psql: error: connection to server at \"127.0.0.1\", port 19999 failed: Connection refused",
        "run here: psql 15.18 to a closed port",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "psql: error: could not translate host name \"nosuchhost.invalid\" to address: Name or "
        "service not known",
        "run here: psql 15.18 to an unresolvable name (NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "error: password authentication failed for user \"app\"",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 to PostgreSQL 15.18 "
        "with a wrong password",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "error: sorry, too many clients already",
        "run here: node-postgres 8.23.1 Client.connect() on Node.js 20.20.2 to PostgreSQL 15.18 "
        "with max_connections 3 held",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "2026-11-30 19:13:45.149 UTC [13453] FATAL:  the database system is starting up",
        "run here: the log of PostgreSQL 15.18 (pg_ctl start) while a client connects during "
        "start-up",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "2026-11-30 19:13:39.383 UTC [13333] FATAL:  password authentication failed for user "
        "\"app\"",
        "run here: the log of PostgreSQL 15.18 when a client gives a wrong password",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "2026-11-30 19:13:39.190 UTC [13323] FATAL:  sorry, too many clients already",
        "run here: the log of PostgreSQL 15.18 (max_connections 3) when a fourth client connects",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "2020/09/25 17:43:35 failed to connect to `host=database user=terminus "
        "database=terminus`: hostname resolving error (lookup database on 192.168.65.1:53: no "
        "such host)",
        "https://github.com/jackc/pgx/issues/837 (pgx in Docker: the database's name does not "
        "resolve)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "redis.clients.jedis.exceptions.JedisConnectionException: Failed to connect to any host "
        "resolved for DNS name.",
        "https://github.com/redis/jedis/issues/3904 (Jedis 5.1.2)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "redis.clients.jedis.exceptions.JedisConnectionException: Could not get a resource from "
        "the pool",
        "https://github.com/redis/jedis/issues/200 (Jedis: a lead; its cause follows)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "Caused by: java.util.NoSuchElementException: Timeout waiting for idle object",
        "https://github.com/redis/jedis/issues/1874 (Jedis 2.9.0, commons-pool2 2.4.2)",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    (
        "app_logs",
        "java.sql.SQLException: Cannot get a connection, pool error Timeout waiting for idle "
        "object",
        "https://github.com/kenkoooo/AtCoderProblems/issues/53 (DBCP2)",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    (
        "docker_logs",
        "io.jsonwebtoken.security.SignatureException: JWT signature does not match locally "
        "computed signature. JWT validity cannot be asserted and should not be trusted.",
        "https://github.com/ali-bouali/spring-boot-3-jwt-security/issues/13 (jjwt 0.11.5)",
        "jwt_mismatch",
        None,
    ),
    (
        "journal",
        "io.jsonwebtoken.SignatureException: JWT signature does not match locally computed "
        "signature. JWT validity cannot be asserted and should not be trusted.",
        "https://github.com/jwtk/jjwt/issues/276 (jjwt before 0.11)",
        "jwt_mismatch",
        None,
    ),
    (
        "app_logs",
        "Unexpected error validating SSL certificate \"default/cncamp-tls\" for server "
        "\"cncamp.com\": x509: certificate relies on legacy Common Name field, use SANs instead",
        "https://github.com/cncamp/101/pull/12 (ingress-nginx, Go 1.17+)",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "docker_logs",
        "ERRO[2020-08-16T21:33:43-07:00] Get "
        "\"https://vault.example.com8200/v1/auth/token/lookup-self\": x509: certificate relies on "
        "legacy Common Name field, use SANs or temporarily enable Common Name matching with "
        "GODEBUG=x509ignoreCN=0",
        "https://github.com/johanbrandhorst/certify/issues/122 (Go 1.15)",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "journal",
        "x509: certificate is not valid for any names, but wanted to match ecf-harbor.com",
        "https://github.com/goharbor/harbor/issues/9821 (docker login, Go crypto/x509)",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "app_logs",
        "NoNodeAvailableException[None of the configured nodes are available: "
        "[{#transport#-1}{127.0.0.1}{127.0.0.1:9300}]",
        "https://github.com/docker-library/elasticsearch/issues/162 (Spring Data Elasticsearch, "
        "transport client)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "org.elasticsearch.client.transport.NoNodeAvailableException: None of the configured "
        "nodes are available: "
        "[{#transport#-1}{jAVtGqzbTriE07oK0tq41A}{localhost}{127.0.0.1:9200}]",
        "https://github.com/yassinesabri/spring-mysql-elastic/issues/5 (Elasticsearch 5.6.10 "
        "transport client)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "com.mongodb.MongoSocketOpenException: Exception opening socket",
        "https://github.com/ozlerhakan/mongolastic/issues/45 (mongo-java-driver 3.12.11)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "12:03:32 INFO  [or.mo.dr.cluster] (cluster-ClusterId{value='5e89c914bf3e9e132100af54', "
        "description='null'}-127.0.0.1:27017) Exception in monitor thread while connecting to "
        "server 127.0.0.1:27017: com.mongodb.MongoSocketOpenException: Exception opening socket",
        "https://github.com/yurake/k8s-3tier-webapp/issues/38 (Quarkus, MongoDB Java driver)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "httpx.ConnectError: [Errno 111] Connection refused",
        "run here: httpx 0.28.1 get() to a closed port (127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "httpx.ConnectError: [Errno -2] Name or service not known",
        "run here: httpx 0.28.1 get() to an unresolvable name (nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "journal",
        "httpx.ConnectTimeout: timed out",
        "run here: httpx 0.28.1 get() to 172.17.0.99, an address no host answers (a link that is "
        "down)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "httpx.ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate (_ssl.c:1006)",
        "run here: httpx 0.28.1 get() to openssl s_server with a self-signed certificate",
        "tls_mismatch",
        "self_signed_certificate",
    ),
    (
        "docker_logs",
        "httpx.ConnectError: [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
        "run here: httpx 0.28.1 get() https:// to a plain HTTP port (python3 -m http.server)",
        "tls_mismatch",
        "https_to_plain_port",
    ),
    (
        "journal",
        "aiohttp.client_exceptions.ClientConnectorError: Cannot connect to host 127.0.0.1:19999 "
        "ssl:default [Connect call failed ('127.0.0.1', 19999)]",
        "run here: aiohttp 3.14.5 ClientSession.get() to a closed port (127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "aiohttp.client_exceptions.ClientConnectorDNSError: Cannot connect to host "
        "nosuchhost.invalid:80 ssl:default [Name or service not known]",
        "run here: aiohttp 3.14.5 ClientSession.get() to an unresolvable name "
        "(nosuchhost.invalid: NXDOMAIN)",
        "dns_or_network",
        None,
    ),
    (
        "docker_logs",
        "aiohttp.client_exceptions.ClientConnectorCertificateError: Cannot connect to host "
        "127.0.0.1:19443 ssl:True [SSLCertVerificationError: (1, '[SSL: "
        "CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate "
        "(_ssl.c:1006)')]",
        "run here: aiohttp 3.14.5 ClientSession.get() to openssl s_server with a self-signed "
        "certificate",
        "tls_mismatch",
        "self_signed_certificate",
    ),
    (
        "journal",
        "aiohttp.client_exceptions.ClientConnectorCertificateError: Cannot connect to host "
        "localhost:19444 ssl:True [SSLCertVerificationError: (1, '[SSL: "
        "CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer "
        "certificate (_ssl.c:1006)')]",
        "run here: aiohttp 3.14.5 ClientSession.get() to a certificate of an unknown CA",
        "tls_mismatch",
        "certificate_chain_untrusted",
    ),
    (
        "app_logs",
        "WARNING:elastic_transport.node_pool:Node <Urllib3HttpNode(http://127.0.0.1:19999)> has "
        "failed for 1 times in a row, putting on 1 second timeout",
        "run here: elasticsearch 9.5.1 (elastic_transport) info() to a closed port, Python "
        "logging's default format",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "KafkaJSConnectionError: Connection error: connect ECONNREFUSED 127.0.0.1:19999",
        "run here: kafkajs 2.2.4 producer().connect() on Node.js 20.20.2 to a closed port "
        "(127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "MemJS: Server <127.0.0.1:19999> failed after (0) retries with error - connect "
        "ECONNREFUSED 127.0.0.1:19999",
        "run here: memjs 1.3.2 Client.get() on Node.js 20.20.2 to a closed port (its log line)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "ConnectionError: connect ECONNREFUSED 127.0.0.1:19999",
        "run here: @elastic/elasticsearch 9.4.3 info() on Node.js 20.20.2 to a closed port "
        "(127.0.0.1:19999)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "javax.net.ssl.SSLHandshakeException: No subject alternative names matching IP address "
        "127.0.0.1 found",
        "run here: OpenJDK 17.0.15 HttpURLConnection with the CA trusted, to a certificate for "
        "localhost dialed by its address",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "journal",
        "Caused by: java.security.cert.CertificateException: No subject alternative names "
        "matching IP address 127.0.0.1 found",
        "run here: OpenJDK 17.0.15 HttpURLConnection with the CA trusted, to a certificate for "
        "localhost dialed by its address",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "app_logs",
        "javax.net.ssl.SSLHandshakeException: No name matching localhost found",
        "run here: OpenJDK 17.0.15 HttpURLConnection to a trusted certificate with a CN only (no "
        "SAN)",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "docker_logs",
        "Caused by: java.security.cert.CertificateException: No subject alternative DNS name "
        "matching vm found.",
        "run here: OpenJDK 17.0.15 HttpURLConnection, with the CA trusted, to a certificate for "
        "localhost dialed as vm (an /etc/hosts alias)",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "app_logs",
        "[2019-02-20 06:45:10] local.ERROR: AMQP error while attempting pushRaw: "
        "stream_socket_client(): unable to connect to tcp://127.0.0.1:5672 (Connection refused)",
        "https://github.com/vyuldashev/laravel-queue-rabbitmq/issues/221 (Laravel, php-amqplib)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "PhpAmqpLib\\Exception\\AMQPRuntimeException: Error Connecting to server(111): Connection "
        "refused  in /var/www/php-amqplib/PhpAmqpLib/Wire/IO/StreamIO.php on line 24",
        "https://github.com/php-amqplib/php-amqplib/issues/142 (php-amqplib 2)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "[Server thread/CRITICAL]: ErrorException: \"mysqli::__construct(): (HY000/2002): No such "
        "file or directory\" (EXCEPTION) in "
        "\"MyPlot_dev-198.phar/src/MyPlot/provider/MySQLProvider\" at line 33",
        "https://github.com/jasonw4331/MyPlot/issues/146 (PHP mysqli)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "ordering.signalrhub_1       |       "
        "RabbitMQ.Client.Exceptions.BrokerUnreachableException: None of the specified endpoints "
        "were reachable ---> RabbitMQ.Client.Exceptions.ConnectFailureException: Connection "
        "failed ---> System.Net.Internals.SocketExceptionFactory+ExtendedSocketException: "
        "Connection refused 172.18.0.5:5672",
        "https://github.com/dotnet-architecture/eShopOnContainers/issues/638 (RabbitMQ .NET "
        "client, docker-compose)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "May 29 12:52:14 bbb run-prod.sh[22760]: 2019-05-29T12:52:14.006+02:00 WARN  "
        "i.l.c.protocol.ConnectionWatchdog - Cannot reconnect: "
        "io.netty.channel.AbstractChannel$AnnotatedConnectException: Connection refused: "
        "/127.0.0.1:6379",
        "https://github.com/bigbluebutton/bigbluebutton/issues/7529 (Lettuce on Netty, journal)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "Error: error sending request for url (https://mydomain.example.com/user/myuser): error "
        "trying to connect: invalid peer certificate: UnknownIssuer",
        "https://github.com/atuinsh/atuin/issues/1142 (reqwest with rustls)",
        "tls_mismatch",
        "certificate_chain_untrusted",
    ),
    (
        "app_logs",
        "RuntimeError: invalid peer certificate contents: invalid peer certificate: "
        "UnknownIssuer, error sending request for url "
        "(https://passport.bilibili.com/x/passport-login/oauth2/info?access_key=ed66b0e26"
        "c71bfc3515efdf6c97cf9a2&actionKey=appkey&appkey=783bbb7264451d82&sign=ee3c846227"
        "bd09f106c91078e25af90b&ts=1667096237): "
        "error trying to connect: invalid peer certificate contents: invalid peer certificate: "
        "UnknownIssuer",
        "https://github.com/biliup/biliup-rs/issues/49 (reqwest with rustls)",
        "tls_mismatch",
        "certificate_chain_untrusted",
    ),
    (
        "docker_logs",
        "requestrr    |  ---> System.Security.Authentication.AuthenticationException: The remote "
        "certificate is invalid according to the validation procedure: "
        "RemoteCertificateNameMismatch",
        "https://github.com/darkalfx/requestrr/issues/133 (.NET HttpClient, docker-compose)",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "journal",
        "Error validating token response: Error validating identity token: "
        "Microsoft.IdentityModel.Tokens.SecurityTokenInvalidSignatureException: IDX10503: "
        "Signature validation failed. Keys tried: 'Microsoft.IdentityModel.Tokens.RsaSecurityKey "
        ", KeyId: 6g3X80imLE+Xet1NAeus9AnDSLg=",
        "https://github.com/DuendeArchive/IdentityModel.OidcClient/issues/112 "
        "(Microsoft.IdentityModel)",
        "jwt_mismatch",
        None,
    ),
    (
        "app_logs",
        "IDX10501: Signature validation failed. Unable to match key:",
        "https://github.com/DuendeArchive/IdentityModel/issues/352 (Microsoft.IdentityModel)",
        "jwt_mismatch",
        None,
    ),
    (
        "app_logs",
        "javax.net.ssl.SSLHandshakeException: PKIX path validation failed: "
        "java.security.cert.CertPathValidatorException: validity check failed",
        "https://github.com/rutgerkok/BlockLocker/issues/172 (the JDK, an expired certificate)",
        "tls_mismatch",
        "certificate_expired",
    ),
    (
        "docker_logs",
        "Caused by: sun.security.validator.ValidatorException: PKIX path validation failed: "
        "java.security.cert.CertPathValidatorException: validity check failed",
        "https://github.com/developerspace-samples/WebRTC-Kotlin-Sample/issues/5 (the JDK, an "
        "expired certificate)",
        "tls_mismatch",
        "certificate_expired",
    ),
    (
        "journal",
        "Caused by: java.security.cert.CertificateExpiredException: NotAfter: Sat Nov 07 11:52:33 "
        "UTC 2020",
        "https://github.com/opensearch-project/security/issues/870 (the JDK)",
        "tls_mismatch",
        "certificate_expired",
    ),
    (
        "app_logs",
        "redis: connection pool timeout",
        "https://github.com/redis/go-redis/issues/1002 (go-redis; the maintainer: every "
        "connection busy)",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    (
        "docker_logs",
        "System.Net.Http.HttpRequestException: Connection refused (www.soliscloud.com:13333)",
        "https://github.com/Webreaper/SolisAgileManager/issues/194 (.NET HttpClient)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "Error: connect ECONNREFUSED /tmp/rulesf-cap/redis.sock",
        "run here: Node.js 20.20.2 net.connect() to a socket file with no listener",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "[ioredis] Unhandled error event: Error: connect ECONNREFUSED /tmp/rulesf-cap/redis.sock",
        "run here: ioredis 6.0.0 (path) on Node.js 20.20.2 to a socket file with no listener",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "redis.exceptions.ConnectionError: Error 111 connecting to /tmp/rulesf-cap/redis.sock. "
        "Connection refused.",
        "run here: redis-py 8.1.0 Redis(unix_socket_path=...).ping() to a socket file with no "
        "listener",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "io.jsonwebtoken.ExpiredJwtException: JWT expired at 2017-09-19T00:31:16Z. Current time: "
        "2017-12-09T21:26:44Z, a difference of 7073728267 milliseconds.  Allowed clock skew: 0 "
        "milliseconds.",
        "https://github.com/szerhusenBC/jwt-spring-security-demo/issues/69 (jjwt 0.7.0)",
        "jwt_mismatch",
        "jwt_expired_clock_skew",
    ),
    (
        "app_logs",
        "Microsoft.IdentityModel.Tokens.SecurityTokenExpiredException: IDX10223: Lifetime "
        "validation failed. The token is expired.",
        "https://github.com/spetz/tokenmanager-sample/issues/1 (ASP.NET Core JwtBearer)",
        "jwt_mismatch",
        "jwt_expired_clock_skew",
    ),
    (
        "docker_logs",
        "Net::OpenTimeout: execution expired",
        "https://github.com/ualbertalib/HydraNorth/issues/1416 (Ruby net/http under Faraday)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "redis.exceptions.AuthenticationError: HELLO must be called with the client already "
        "authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate "
        "the client and select the RESP protocol version at the same time",
        "run here: redis-py 8.1.0 get() without a password to Redis 7.0.15 with requirepass",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "redis.exceptions.AuthenticationError: invalid username-password pair or user is disabled.",
        "run here: redis-py 8.1.0 get() with a wrong password to Redis 7.0.15 with requirepass",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "ReplyError: NOAUTH HELLO must be called with the client already authenticated, otherwise "
        "the HELLO AUTH <user> <pass> option can be used to authenticate the client and select "
        "the RESP protocol version at the same time",
        "run here: ioredis 6.0.0 without a password to Redis 7.0.15 with requirepass (its error "
        "event)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "ReplyError: WRONGPASS invalid username-password pair or user is disabled.",
        "run here: ioredis 6.0.0 with a wrong password to Redis 7.0.15 with requirepass (its "
        "error event)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "Error: ERR max number of clients reached",
        "run here: node-redis 6.3.1 connect() to Redis 7.0.15 with maxclients 2 held",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "requests.exceptions.ReadTimeout: HTTPConnectionPool(host='127.0.0.1', port=19996): Read "
        "timed out. (read timeout=2)",
        "run here: requests 2.34.2 get(timeout=2) to a port that accepts and never answers",
        "upstream_timeout",
        None,
    ),
    (
        "docker_logs",
        "httpx.ReadTimeout: timed out",
        "run here: httpx 0.28.1 get(timeout=2) to a port that accepts and never answers",
        "upstream_timeout",
        None,
    ),
    (
        "journal",
        "redis.exceptions.TimeoutError: Timeout reading from socket",
        "run here: redis-py 8.1.0 get() (socket_timeout 2) to a port that accepts and never "
        "answers: a lead",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "psycopg2.errors.QueryCanceled: canceling statement due to statement timeout",
        "run here: psycopg2 2.9.13, SELECT pg_sleep(3) with statement_timeout 500 on PostgreSQL "
        "15.18",
        "upstream_timeout",
        None,
    ),
    (
        "docker_logs",
        "error: canceling statement due to statement timeout",
        "run here: node-postgres 8.23.1 (statement_timeout 500), SELECT pg_sleep(3) on PostgreSQL "
        "15.18",
        "upstream_timeout",
        None,
    ),
    (
        "journal",
        "Error: Query read timeout",
        "run here: node-postgres 8.23.1 (query_timeout 500), SELECT pg_sleep(3) on PostgreSQL "
        "15.18",
        "upstream_timeout",
        None,
    ),
    (
        "app_logs",
        "javax.net.ssl.SSLHandshakeException: Received fatal alert: certificate_required",
        "run here: OpenJDK 17.0.15 HttpURLConnection to openssl s_server -Verify 1 (a client "
        "certificate required)",
        "tls_mismatch",
        "client_certificate_required",
    ),
    (
        "docker_logs",
        "urllib.error.URLError: <urlopen error [SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert "
        "protocol version (_ssl.c:1006)>",
        "run here: CPython 3.11.7 urllib with maximum_version TLSv1_2 to openssl s_server -tls1_3",
        "tls_mismatch",
        "tls_protocol_version_mismatch",
    ),
    (
        "journal",
        "ssl.SSLError: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required "
        "(_ssl.c:2580)",
        "run here: CPython 3.11.7 urllib to openssl s_server -Verify 1 (a client certificate "
        "required)",
        "tls_mismatch",
        "client_certificate_required",
    ),
    (
        "app_logs",
        "javax.net.ssl.SSLHandshakeException: Received fatal alert: protocol_version",
        "run here: OpenJDK 17.0.15 HttpURLConnection (jdk.tls.client.protocols=TLSv1.2) to "
        "openssl s_server -tls1_3",
        "tls_mismatch",
        "tls_protocol_version_mismatch",
    ),
    # ---- Spring Boot and Tomcat (public threads; each failure analyzer's Description line)
    (
        "app_logs",
        "The Tomcat connector configured to listen on port 8080 failed to start. The port may "
        "already be in use or the connector may be misconfigured.",
        "https://github.com/apache/skywalking/issues/3696",
        "upstream_crashloop",
        "port_already_in_use",
    ),
    (
        "app_logs",
        "Failed to configure a DataSource: 'url' attribute is not specified and no embedded "
        "datasource could be configured.",
        "https://github.com/apache/servicecomb-java-chassis/issues/1272",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "Failed to bind properties under 'spring.datasource.type' to "
        "java.lang.Class<javax.sql.DataSource>:",
        "https://github.com/ulisesbocchio/jasypt-spring-boot/issues/325",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "org.springframework.data.redis.RedisConnectionFailureException: Unable to connect to "
        "Redis; nested exception is io.lettuce.core.RedisConnectionException: Unable to connect "
        "to 127.0.0.1:6379",
        "https://github.com/648540858/wvp-GB28181-pro/issues/680",
        "dependency_down",
        None,
    ),
    # ---- Node.js 20.20.2 itself (OpenSSL 3.0.19)
    (
        "app_logs",
        "Error: error:0308010C:digital envelope routines::unsupported",
        "run here: node -e \"require(\'crypto\').createHash(\'md4\')\"",
        "upstream_crashloop",
        "openssl3_legacy_algorithm",
    ),
    (
        "app_logs",
        "node: bad option: --no-such-catalog-option",
        "run here: node --no-such-catalog-option",
        "upstream_crashloop",
        "exit_config_error",
    ),
    # ---- PostgreSQL 15.18 (Debian postgresql) on 127.0.0.1:19532, its clients psql and pg 8.23.1
    (
        "app_logs",
        "Error: no pg_hba.conf entry for host \"127.0.0.1\", user \"other\", database \"app\", no "
        "encryption",
        "run here: pg Client.connect() as a user pg_hba.conf has no line for",
        "dependency_down",
        "database_refuses_client",
    ),
    (
        "app_logs",
        "psql: error: connection to server at \"127.0.0.1\", port 19532 failed: FATAL:  no "
        "pg_hba.conf entry for host \"127.0.0.1\", user \"other\", database \"app\", no encryption",
        "run here: psql \"host=127.0.0.1 port=19532 user=other dbname=app\"",
        "dependency_down",
        "database_refuses_client",
    ),
    (
        "app_logs",
        "2026-11-30 09:53:34.111 UTC [30095] FATAL:  terminating connection due to "
        "administrator command",
        "run here: the server's log after pg_terminate_backend() of the app's session",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Error: the database system is shutting down",
        "run here: pg Client.connect() during pg_ctl stop -m smart",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "2026-11-30 09:53:34.094 UTC [30095] ERROR:  relation \"doc_changes\" does not exist at "
        "character 16",
        "run here: the server's log for SELECT id FROM doc_changes on an empty database",
        "dependency_down",
        "database_not_initialised",
    ),
    (
        "app_logs",
        "error: relation \"doc_changes\" does not exist",
        "run here: pg query SELECT id FROM doc_changes on an empty database",
        "dependency_down",
        "database_not_initialised",
    ),
    # the Document Server's docservice (log4js) quoting the same PostgreSQL replies
    (
        "app_logs",
        "[2023-01-12T20:00:12.241] [WARN] [localhost] [docId] [userId] nodeJS - sqlQuery error "
        "sqlCommand: SELECT * FROM task_result WHERE last_open_date <= : error: relation "
        "\"task_result\" does not exist",
        "https://github.com/ONLYOFFICE/DocumentServer/issues/2072",
        "dependency_down",
        "database_not_initialised",
    ),
    (
        "app_logs",
        "error: column \"callback\" of relation \"task_result\" does not exist",
        "https://github.com/ONLYOFFICE/onlyoffice-owncloud/issues/121",
        "dependency_down",
        "database_schema_not_upgraded",
    ),
    # ---- MySQL client for Node.js (mysql 2.18.1) against a port that closes the connection
    (
        "app_logs",
        "Error: Connection lost: The server closed the connection.",
        "run here: mysql 2.18.1 createConnection().connect() to a port that accepts and closes",
        "dependency_down",
        None,
    ),
    # ---- docker compose v2 refusing to start the backend after its database
    (
        "docker_logs",
        "dependency failed to start: container hrm_database exited (0)",
        "https://github.com/docker/compose/issues/11125",
        "dependency_down",
        None,
    ),
    # ---- more of uWSGI 2.0.21's own start-up refusals
    (
        "app_logs",
        "The -s/--socket option is missing and stdin is not a socket.",
        "run here: uwsgi --plugin python3 --wsgi-file okapp.py < /dev/null",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "failed to open python file /nonexistent/app.py",
        "run here: uwsgi --plugin python3 --http-socket 127.0.0.1:19425 --wsgi-file "
        "/nonexistent/app.py --need-app",
        "upstream_crashloop",
        "app_fails_to_load",
    ),
    # ---- RabbitMQ closing the connection, as amqplib prints it
    (
        "app_logs",
        "Error: Connection closed: 320 (CONNECTION-FORCED) with message \"CONNECTION_FORCED - "
        "broker forced connection closure with reason \'shutdown\'\"",
        "https://github.com/amqp-node/amqplib/issues/110",
        "dependency_down",
        None,
    ),
    # ---- JDBC at a Java backend's start-up
    (
        "app_logs",
        "\tCaused by: javax.persistence.PersistenceException: [PersistenceUnit: default] Unable "
        "to build Hibernate SessionFactory; nested exception is "
        "org.hibernate.exception.JDBCConnectionException: Unable to open JDBC Connection for "
        "DDL execution",
        "https://github.com/asit-asso/extract/issues/309",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "org.postgresql.util.PSQLException: Connection refused. Check that the hostname and "
        "port are correct and that the postmaster is accepting TCP/IP connections.",
        "https://github.com/jhades/spring-mvc-angularjs-sample-app/issues/7",
        "dependency_down",
        None,
    ),
    # ---- Phusion Passenger inside nginx
    (
        "nginx_error_log",
        "nginx: [alert] Unable to start the Phusion Passenger(R) watchdog because it "
        "encountered the following error during startup: Unable to start the Passenger core: it "
        "seems to have crashed during startup for an unknown reason, with exit code 1 (-1: "
        "Unknown error)",
        "https://github.com/phusion/passenger/issues/2670",
        "upstream_crashloop",
        None,
    ),
    (
        "nginx_error_log",
        "nginx: [alert] Unable to start the Phusion Passenger watchdog because its executable "
        "(/usr/share/ruby-rvm/gems/ruby-1.9.3-p194/gems/passenger-3.0.12/agents/Passen"
        "gerWatchdog) does not exist. This probably means that your Phusion Passenger "
        "installation is broken or incomplete, or that your 'passenger_root' directive is set "
        "to the wrong value. Please reinstall Phusion Passenger or fix your 'passenger_root' "
        "directive, whichever is applicable. (-1: Unknown error)",
        "https://github.com/rvm/rvm/issues/1013",
        "upstream_crashloop",
        None,
    ),
    # ---- Go 1.19.8 (Debian golang-go): net.Listen's address parsing; lib/pq 1.10.7
    (
        "app_logs",
        "2026/11/30 10:01:31 listen tcp: address 8080: missing port in address",
        "run here: a Go program calling log.Fatal(http.ListenAndServe(\"8080\", nil))",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "2026/11/30 10:01:31 listen tcp: address 99999: invalid port",
        "run here: the same program with 127.0.0.1:99999",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "pq: relation \"doc_changes\" does not exist",
        "run here: lib/pq db.Exec(\"SELECT id FROM doc_changes\") on an empty database",
        "dependency_down",
        "database_not_initialised",
    ),
    (
        "app_logs",
        "pq: SSL is not enabled on the server",
        "run here: lib/pq without sslmode against PostgreSQL 15 without TLS",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "pq: no pg_hba.conf entry for host \"127.0.0.1\", user \"other\", database \"app\", no "
        "encryption",
        "run here: lib/pq as a user pg_hba.conf has no line for",
        "dependency_down",
        "database_refuses_client",
    ),
    # ---- MariaDB 10.11.19 (Debian) on 127.0.0.1:19533, through mysql2 3.24.6 and its own client
    (
        "app_logs",
        "Error: Table 'onlyoffice.task_result' doesn't exist",
        "run here: mysql2 query SELECT * FROM task_result on an empty database",
        "dependency_down",
        "database_not_initialised",
    ),
    (
        "app_logs",
        "Error: Too many connections",
        "run here: mysql2, one connection more than max_connections (10)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Error: Host '127.0.0.1' is not allowed to connect to this MariaDB server",
        "run here: mysql2 as app (an account for 'localhost' only) with --skip-name-resolve",
        "dependency_down",
        "database_refuses_client",
    ),
    (
        "app_logs",
        "ERROR 2002 (HY000): Received error packet before completion of TLS handshake. The "
        "authenticity of the following error cannot be verified: 1130 - Host '127.0.0.1' is not "
        "allowed to connect to this MariaDB server",
        "run here: mariadb -h 127.0.0.1 -P 19533 -u app (the same account)",
        "dependency_down",
        "database_refuses_client",
    ),
    # ---- Java backends on a JVM they do not support; Keycloak's start-up failure line
    (
        "journal",
        "Feb 14 12:25:14 BuildServerTest nexus[54498]: No suitable Java Virtual Machine could "
        "be found on your system.",
        "https://github.com/ansible-ThoTeam/nexus3-oss/issues/244",
        "upstream_crashloop",
        "java_runtime_version_mismatch",
    ),
    (
        "app_logs",
        "SEVERE: Running with Java class version 52, which is older than the Minimum required "
        "version 55. See https://jenkins.io/redirect/java-support/",
        "https://github.com/jenkinsci/extras-executable-war/pull/62",
        "upstream_crashloop",
        "java_runtime_version_mismatch",
    ),
    (
        "app_logs",
        "Jenkins requires Java versions [17, 11] but you are running with Java 1.8 from "
        "/usr/lib/jvm/java-8-openjdk-amd64/jre",
        "https://github.com/jenkinsci/extras-executable-war/pull/62",
        "upstream_crashloop",
        "java_runtime_version_mismatch",
    ),
    (
        "app_logs",
        "Exception in thread \"main\" java.lang.UnsupportedClassVersionError: "
        "org/nodel/jyhost/Launch : Unsupported major.minor version 51.0",
        "https://github.com/museumsvictoria/nodel/issues/31",
        "upstream_crashloop",
        "java_runtime_version_mismatch",
    ),
    (
        "app_logs",
        "ERROR: Failed to start server in (production) mode",
        "https://github.com/keycloak/keycloak/issues/16030",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "ERROR: Unexpected error when starting the server in (production) mode",
        "https://github.com/loculus-project/loculus/issues/962",
        "upstream_crashloop",
        None,
    ),
    # ---- Node.js 20.20.2 without a port, uvicorn 0.54.0 whose lifespan start-up raises
    (
        "app_logs",
        "RangeError [ERR_SOCKET_BAD_PORT]: options.port should be >= 0 and < 65536. Received "
        "type number (NaN).",
        "run here: node -e "
        "\"require(\'http\').createServer().listen(Number(process.env.CATALOG_UNSET_PORT))\"",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "ERROR:    Application startup failed. Exiting.",
        "run here: uvicorn --lifespan on --host 127.0.0.1 --port 19491 life:app (the app raises "
        "at lifespan.startup)",
        "upstream_crashloop",
        None,
    ),
    # ---- Docker running an image of another architecture; Rails without its secret
    (
        "docker_logs",
        "WARNING: The requested image's platform (linux/amd64) does not match the detected host "
        "platform (linux/arm64/v8) and no specific platform was requested",
        "https://github.com/JonasHiltl/openchangelog/issues/21",
        "upstream_crashloop",
        "image_platform_mismatch",
    ),
    (
        "docker_logs",
        "2025-02-03 18:59:59 ArgumentError: Missing `secret_key_base` for 'production' "
        "environment, set this string with `bin/rails credentials:edit` (ArgumentError)",
        "https://github.com/mrysav/geneac/issues/705",
        "upstream_crashloop",
        "exit_config_error",
    ),
    # ---- TLS spoken to a plain HTTP port (python3 -m http.server on 127.0.0.1:19495)
    (
        "app_logs",
        "tls: first record does not look like a TLS handshake",
        "run here: Go 1.19.8 tls.Dial to the plain port",
        "tls_mismatch",
        "https_to_plain_port",
    ),
    (
        "app_logs",
        "Get \"https://127.0.0.1:19495/\": tls: first record does not look like a TLS handshake",
        "run here: Go 1.19.8 http.Get(\"https://127.0.0.1:19495/\")",
        "tls_mismatch",
        "https_to_plain_port",
    ),
    (
        "app_logs",
        "javax.net.ssl.SSLException: Unsupported or unrecognized SSL message",
        "run here: OpenJDK 17.0.15 HttpsURLConnection to https://127.0.0.1:19495/",
        "tls_mismatch",
        "https_to_plain_port",
    ),
    # ---- memory the OS refuses (ulimit -v): the Go runtime, Ruby; Redis full at its maxmemory
    (
        "app_logs",
        "runtime: out of memory: cannot allocate 67108864-byte block (473694208 in use)",
        "run here: a Go 1.19.8 program allocating 64 MB blocks under ulimit -v 1200000",
        "oom_killed",
        "memory_exhausted",
    ),
    (
        "app_logs",
        "fatal error: out of memory",
        "run here: the same Go program",
        "oom_killed",
        "memory_exhausted",
    ),
    (
        "app_logs",
        "-e: failed to allocate memory (NoMemoryError)",
        "run here: ruby -e \'a = []; loop { a << (\"x\" * (64 << 20)) }\' under ulimit -v 600000",
        "oom_killed",
        "memory_exhausted",
    ),
    (
        "app_logs",
        "ReplyError: OOM command not allowed when used memory > 'maxmemory'.",
        "run here: ioredis 6.0.0 SET of 2 MB on redis-server 7.0.15 --maxmemory 1mb",
        "dependency_down",
        None,
    ),
    # ---- dependencies refused in Python's asyncio, PHP's Predis, the Kafka client, Spring AMQP
    (
        "app_logs",
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)",
        "run here: Python 3.11.7 asyncio.open_connection('127.0.0.1', 5432) with nothing "
        "listening",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Predis\\Connection\\ConnectionException: Connection refused [tcp://127.0.0.1:6379]",
        "https://github.com/glosarium/glosarium/issues/6",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "2021-01-21 21:56:36.182  WARN 18 --- [ntainer#0-0-C-1] "
        "org.apache.kafka.clients.NetworkClient   : [Consumer clientId=consumer-email-1, "
        "groupId=email] Connection to node -1 (localhost/127.0.0.1:9092) could not be "
        "established. Broker may not be available.",
        "https://github.com/obsidiandynamics/kafdrop/issues/35",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "2022-01-25 09:26:48.914  WARN 1608 --- [ntContainer#1-2] "
        "o.s.a.r.l.SimpleMessageListenerContainer : Consumer raised exception, processing can "
        "restart if the connection factory supports it. Exception summary: "
        "org.springframework.amqp.AmqpConnectException: java.net.ConnectException: Connection "
        "refused: connect",
        "https://github.com/eclipse-hawkbit/hawkbit/issues/1224",
        "dependency_down",
        None,
    ),
    # ---- php-fpm children dying under the master (mailcow's php-fpm container)
    (
        "docker_logs",
        "php-fpm-mailcow_1    | [05-Mar-2018 12:01:52] WARNING: [pool www] child 43 said into "
        "stderr: \"zend_mm_heap corrupted\"",
        "https://github.com/mailcow/mailcow-dockerized/issues/1141",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        "php-fpm-mailcow_1    | [05-Mar-2018 12:01:52] WARNING: [pool www] child 43 exited with "
        "code 1 after 49.597904 seconds from start",
        "https://github.com/mailcow/mailcow-dockerized/issues/1141",
        "upstream_crashloop",
        None,
    ),
    # ---- the socket's or pid file's directory missing: uWSGI 2.0.21, Puma 5.6.5
    (
        "app_logs",
        "bind(): No such file or directory [core/socket.c line 230]",
        "run here: uwsgi --plugin python3 --socket /run/catalog-nodir/app.sock --wsgi-file "
        "okapp.py",
        "upstream_crashloop",
        "runtime_dir_missing",
    ),
    (
        "app_logs",
        "/usr/lib/x86_64-linux-gnu/rubygems-integration/3.1.0/gems/puma-5.6.5/lib/puma"
        "/binder.rb:196:in `realdirpath': No such file or directory @ realpath_rec - "
        "/run/catalog-nodir (Errno::ENOENT)",
        "run here: puma -b unix:///run/catalog-nodir/puma.sock ok.ru",
        "upstream_crashloop",
        "runtime_dir_missing",
    ),
    (
        "app_logs",
        "/usr/lib/x86_64-linux-gnu/rubygems-integration/3.1.0/gems/puma-5.6.5/lib/puma"
        "/launcher.rb:259:in `write': No such file or directory @ rb_sysopen - "
        "/run/catalog-nodir/puma.pid (Errno::ENOENT)",
        "run here: puma -b tcp://127.0.0.1:19454 --pidfile /run/catalog-nodir/puma.pid ok.ru",
        "upstream_crashloop",
        "runtime_dir_missing",
    ),
    # ---- Django 5.2.19 (PyPI) runserver and its SQLite; supervisord 4.2.5 (Debian)
    (
        "app_logs",
        "Error: That port is already in use.",
        "run here: python manage.py runserver 127.0.0.1:19497 --noreload (port held by another "
        "process)",
        "upstream_crashloop",
        "port_already_in_use",
    ),
    (
        "app_logs",
        "CommandError: You must set settings.ALLOWED_HOSTS if DEBUG is False.",
        "run here: python manage.py runserver 127.0.0.1:19498 --noreload with DEBUG = False",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "django.db.utils.OperationalError: no such table: catalog_item",
        "run here: connection.cursor().execute('select * from catalog_item') on a fresh project",
        "dependency_down",
        "database_not_initialised",
    ),
    (
        "app_logs",
        "supervisor: couldn't chdir to /nonexistent/catalog-app: ENOENT",
        "run here: supervisord with [program:app] directory=/nonexistent/catalog-app (the "
        "program's log)",
        "upstream_crashloop",
        "exit_config_error",
    ),
    (
        "app_logs",
        "Error: Invalid user name nosuchcataloguser in section 'program:app2' (file: 'sv.conf')",
        "run here: supervisord -c sv.conf with user=nosuchcataloguser",
        "upstream_crashloop",
        "exit_config_error",
    ),
    # ---- a Kubernetes service link where a port is wanted (PORT=tcp://IP:PORT)
    (
        "docker_logs",
        "Error: listen EACCES: permission denied tcp://10.108.13.33:80",
        "run here: PORT=tcp://10.108.13.33:80 node -e "
        "\"require(\'http\').createServer().listen(process.env.PORT)\" (Node.js 20.20.2, as root "
        "and as nobody)",
        "upstream_crashloop",
        "k8s_service_link_env_overrides_port",
    ),
    (
        "docker_logs",
        "Error: Invalid value for '--port': 'tcp://10.43.0.1:8000' is not a valid integer.",
        "run here: uvicorn --port tcp://10.43.0.1:8000 life:app (uvicorn 0.54.0, Click)",
        "upstream_crashloop",
        "k8s_service_link_env_overrides_port",
    ),
    # ---- an address the host lacks, in uvicorn's (CPython asyncio's) and the JDK's words
    (
        "app_logs",
        "ERROR:    [Errno 99] error while attempting to bind on address ('10.255.255.1', "
        "19492): cannot assign requested address",
        "run here: uvicorn --host 10.255.255.1 --port 19492 life:app (uvicorn 0.54.0, CPython "
        "3.11.7)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "app_logs",
        "java.net.BindException: Cannot assign requested address",
        "run here: OpenJDK 17.0.15 ServerSocket.bind(10.255.255.1:19493)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    # ---- Elasticsearch's disk at its flood stage; the JDK's EACCES
    (
        "docker_logs",
        "flood stage disk watermark [95%] exceeded on "
        "[2E-4rEiRS1G_2_oztN_guA][2E-4rEi][/usr/share/elasticsearch/data/nodes/0] free: "
        "952.1mb[1.4%], all indices on this node will marked read-only",
        "https://github.com/deviantony/docker-elk/issues/219",
        "disk_full",
        None,
    ),
    (
        "docker_logs",
        "java.nio.file.AccessDeniedException: /tmp/catalog/java/acc/data.bin",
        "run here: OpenJDK 17.0.15 Files.write into a directory nobody may not write (as nobody)",
        "permission_denied",
        None,
    ),
    # ---- Tomcat's request threads all busy; PyMongo without a server
    (
        "app_logs",
        "INFO: Maximum number of threads (200) created for connector with address null and port "
        "8080",
        "https://github.com/collectivemedia/celos/issues/238",
        "upstream_timeout",
        "tomcat_threads_exhausted",
    ),
    (
        "app_logs",
        "pymongo.errors.ServerSelectionTimeoutError: 127.0.0.1:19499: [Errno 111] Connection "
        "refused (configured timeouts: socketTimeoutMS: 20000.0ms, connectTimeoutMS: "
        "20000.0ms), Timeout: 1.5s, Topology Description: <TopologyDescription id: "
        "6b0d5080ac0fadada8c83d7f, topology_type: Unknown, servers: [<ServerDescription "
        "('127.0.0.1', 19499) server_type: Unknown, rtt: None, "
        "error=AutoReconnect('127.0.0.1:19499: [Errno 111] Connection refused (configured "
        "timeouts: socketTimeoutMS: 20000.0ms, connectTimeoutMS: 20000.0ms)')>]>",
        "run here: pymongo 4.20.1 MongoClient('mongodb://127.0.0.1:19499/', "
        "serverSelectionTimeoutMS=1500) ping",
        "dependency_down",
        None,
    ),
    # ---- an unreachable host or network and a name that does not resolve, in each stack's words:
    # run here in a network namespace (unshare -mn: 203.0.113.0/24 an unreachable route, no other
    # route; /etc/resolv.conf bound to a local DNS server answering NXDOMAIN or SERVFAIL, silent,
    # or absent)
    (
        "app_logs",
        "OSError: [Errno 113] No route to host",
        "run here: python -c \"import socket; socket.create_connection(('203.0.113.5', 5432))\" "
        "(CPython 3.11.7, glibc 2.36)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "psycopg.OperationalError: connection is bad: connection to server at \"203.0.113.5\", "
        "port 5432 failed: No route to host",
        "run here: psycopg 3.3.9 psycopg.connect(host='203.0.113.5', user='x', dbname='x')",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "psql: error: connection to server at \"198.51.100.5\", port 5432 failed: Network is "
        "unreachable",
        "run here: psql -h 198.51.100.5 -U x -d x (PostgreSQL 15 client, no route)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "Error: connect EHOSTUNREACH 203.0.113.5:80 - Local (0.0.0.0:0)",
        "run here: node -e \"require('http').get('http://203.0.113.5:80/')\" (Node.js 20.20.2, "
        "uncaught)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "java.net.SocketException: Network is unreachable",
        "run here: OpenJDK 17.0.15 new Socket(\"198.51.100.5\", 80)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "-e:1:in `initialize': Network is unreachable - connect(2) for \"198.51.100.5\" port 80 "
        "(Errno::ENETUNREACH)",
        "run here: ruby -e \"require 'socket'; TCPSocket.new('198.51.100.5', 80)\" (Ruby 3.1.2)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "ERROR 2002 (HY000): Can't connect to server on '203.0.113.5' (113)",
        "run here: mariadb -h 203.0.113.5 -u x -px (MariaDB 10.11 client)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "Could not connect to Redis at 203.0.113.5:6379: Can't create socket: No route to host",
        "run here: redis-cli -h 203.0.113.5 ping (redis-tools 7.0.15)",
        "dns_or_network",
        None,
    ),
    (
        "healthcheck",
        "wget: can't connect to remote host (203.0.113.5): Network is unreachable",
        "run here: docker run --network none busybox wget -q -O- http://203.0.113.5/ (BusyBox "
        "image opsbot-test/busybox)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "/usr/lib/ruby/3.1.0/socket.rb:227:in `getaddrinfo': Failed to open TCP connection to "
        "db:5432 (getaddrinfo: Temporary failure in name resolution) (SocketError)",
        "run here: ruby -e \"require 'net/http'; Net::HTTP.get(URI('http://db:5432/'))\" (Ruby "
        "3.1.2) with no DNS server",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "PHP Warning:  file_get_contents(): php_network_getaddresses: getaddrinfo for db failed: "
        "Name or service not known in /tmp/cat7/ns/p.php on line 4",
        "run here: php 8.2.36 file_get_contents('http://db:5432/') against NXDOMAIN",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "PDOException: SQLSTATE[HY000] [2002] php_network_getaddresses: getaddrinfo for db "
        "failed: Name or service not known",
        "run here: php 8.2.36 new PDO('mysql:host=db;port=3306;dbname=x', ...) against NXDOMAIN",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "ERROR 2005 (HY000): Unknown server host 'db' (-2)",
        "run here: mariadb -h db -u x -px (MariaDB 10.11 client) against NXDOMAIN",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "healthcheck",
        "wget: bad address 'db:81'",
        "run here: busybox wget -q -O- http://db:81/ (Debian busybox 1.35) against NXDOMAIN",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "dial: dial tcp: lookup backend on 127.0.0.1:53: server misbehaving",
        "run here: Go 1.19.8 net.DialTimeout(\"tcp\", \"backend:8080\", 3s) against SERVFAIL",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "http: Get \"http://backend:8080/\": dial tcp: lookup backend on 127.0.0.1:53: read udp "
        "127.0.0.1:34285->127.0.0.1:53: i/o timeout",
        "run here: Go 1.19.8 http.Get(\"http://backend:8080/\") against a silent DNS server",
        "dns_or_network",
        None,
    ),
    # the MariaDB client library and hiredis refused by a closed port
    (
        "app_logs",
        "ERROR 2002 (HY000): Can't connect to server on '127.0.0.1' (115)",
        "run here: mariadb -h 127.0.0.1 -P 3306 -u x -px (MariaDB 10.11 client, nothing listens)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Could not connect to Redis at 127.0.0.1:6379: Connection refused",
        "run here: redis-cli -h 127.0.0.1 -p 6379 ping (redis-tools 7.0.15, nothing listens)",
        "dependency_down",
        None,
    ),
    # ---- memory: the kernel's memory-cgroup OOM report and Docker's event (docker run -m 16m
    # --memory-swap 16m opsbot-test/busybox sh -c 'a=$(head -c 200000000 /dev/zero | tr "\0" x)',
    # kernel 6.18, Docker 20.10.24); the allocators that give up when the OS refuses
    (
        "kernel_log",
        "[67570.059703] memory: usage 16384kB, limit 16384kB, failcnt 0",
        "run here: dmesg after docker run -m 16m (a shell filling its memory)",
        "oom_killed",
        "container_memory_limit_reached",
    ),
    (
        "docker_logs",
        "2026-11-30T13:05:43.797871337Z container oom "
        "348b6fd721d8155b1a05768f05613d939d8b87be2566ef6c91d307a744affd3e "
        "(image=opsbot-test/busybox, name=cat7-oom2)",
        "run here: docker events --filter container=cat7-oom2 during docker run -m 16m",
        "oom_killed",
        None,
    ),
    (
        "app_logs",
        "memory allocation of 67108864 bytes failed",
        "run here: a Rust program growing a Vec (rustc 1.95.0) under ulimit -v 400000",
        "oom_killed",
        "memory_exhausted",
    ),
    (
        "app_logs",
        "RangeError: Array buffer allocation failed",
        "run here: node -e \"let a=[]; for(;;) a.push(Buffer.alloc(64<<20,1))\" (Node.js 20.20.2) "
        "under ulimit -v 1000000",
        "oom_killed",
        "memory_exhausted",
    ),
    (
        "app_logs",
        "E, [2026-11-30T13:06:18.400762 #16609] ERROR -- : reaped #<Process::Status: pid 16611 "
        "SIGKILL (signal 9)> worker=0",
        "run here: unicorn -l 127.0.0.1:19712 config.ru (unicorn 6.0.0), its worker killed with "
        "kill -9",
        "oom_killed",
        "worker_oom_killed",
    ),
    (
        "app_logs",
        "bash: 17260 Killed                  sleep 100",
        "run here: bash -c 'sleep 100 & p=$!; kill -9 $p; wait $p' (bash 5.2)",
        "oom_killed",
        None,
    ),
    # ---- nginx's HTTP reaches a server of another protocol: nginx 1.22.1 proxy_pass to the port
    # of each, one request through it, in a network namespace of its own
    (
        "app_logs",
        "23677:M 30 Nov 2026 13:16:28.569 # Possible SECURITY ATTACK detected. It looks like "
        "somebody is sending POST or Host: commands to Redis. This is likely due to an attacker "
        "attempting to use Cross Protocol Scripting to compromise your Redis instance. "
        "Connection aborted.",
        "run here: redis-server --port 19801 (Redis 7.0.15) behind nginx proxy_pass "
        "http://127.0.0.1:19801",
        "wrong_proxy_config",
        "http_to_non_http_port",
    ),
    (
        "app_logs",
        "kex_exchange_identification: client sent invalid protocol identifier \"GET /index.php "
        "HTTP/1.0\"",
        "run here: sshd -D -e -p 19801 (OpenSSH 9.2) behind nginx proxy_pass http://127.0"
        ".0.1:19801",
        "wrong_proxy_config",
        "http_to_non_http_port",
    ),
    (
        "docker_logs",
        "2026/11/30 13:17:37 [error] 29565#29565: *1 upstream sent no valid HTTP/1.0 header while "
        "reading response header from upstream, client: 127.0.0.1, server: , request: \"GET "
        "/index.php HTTP/1.1\", upstream: \"http://127.0.0.1:19801/index.php\", host: "
        "\"127.0.0.1:19880\"",
        "run here: nginx 1.22.1 proxy_pass http://127.0.0.1:19801 to sshd (OpenSSH 9.2)",
        "wrong_proxy_config",
        None,
    ),
    (
        "nginx_error_log",
        "2026/11/30 13:17:29 [error] 27747#27747: *1 recv() failed (104: Connection reset by peer) "
        "while reading response header from upstream, client: 127.0.0.1, server: , request: \"GET "
        "/index.php HTTP/1.1\", upstream: \"http://127.0.0.1:9000/index.php\", host: "
        "\"127.0.0.1:19880\"",
        "run here: nginx 1.22.1 proxy_pass http://127.0.0.1:9000 to php-fpm 8.2.36 (listen = "
        "127.0.0.1:9000)",
        "wrong_proxy_config",
        "http_to_fastcgi_port",
    ),
    # nginx's own lines as an nginx container's or unit's log carries them
    (
        "docker_logs",
        "2026/11/30 13:19:56 [error] 15#15: *1 peer closed connection in SSL handshake while SSL "
        "handshaking to upstream, client: 127.0.0.1, server: , request: \"GET /index.php "
        "HTTP/1.1\", upstream: \"https://127.0.0.1:19801/index.php\", host: \"127.0.0.1:19880\"",
        "run here: nginx 1.22.1 proxy_pass https://127.0.0.1:19801 to PostgreSQL 15.18 (no TLS "
        "there: it closes on the ClientHello)",
        "tls_mismatch",
        None,
    ),
    (
        "journal",
        "2026/11/30 13:19:26 [crit] 31191#31191: *1 connect() to unix:/tmp/cat7/wp/s.sock failed "
        "(13: Permission denied) while connecting to upstream, client: 127.0.0.1, server: , "
        "request: \"GET /index.php HTTP/1.1\", upstream: \"http://unix:/tmp/cat7/wp/s.sock:"
        "/index.php\", host: \"127.0.0.1:19880\"",
        "run here: nginx 1.22.1 (workers as nobody) proxy_pass http://unix:/tmp/cat7/wp/s.sock, a "
        "socket of root's with mode 600 (socat UNIX-LISTEN:...,mode=600)",
        "permission_denied",
        None,
    ),
    # nginx 1.22.1 in one network namespace, the backends in others on a bridge (172.29.0.0/16,
    # the address range of Docker's 13th network):
    # the backend moved from .3 to .4 and another namespace holds .3, listening on its loopback
    # only (a refusal: a live host); .9 is held by nobody (no ARP answer: no route); the stand-in
    # on 127.0.0.1:9000 only inside .3's namespace is a pool on php-fpm's default address
    (
        "nginx_error_log",
        "2026/11/30 19:06:56 [error] 23861#23861: *3 connect() failed (111: Connection "
        "refused) while connecting to upstream, client: 127.0.0.1, server: docs.lab.test, "
        "request: \"GET /stale/ HTTP/1.1\", upstream: \"http://172.29.0.3:28000/\", host: "
        "\"127.0.0.1:28080\"",
        "run here: nginx 1.22.1 proxy_pass http://172.29.0.3:28000 (ip netns on a bridge: the "
        "backend answers at .4; .3 held by another namespace, nothing on 172.29.0.3:28000)",
        "dns_or_network",
        "stale_upstream_address",
    ),
    (
        "nginx_error_log",
        "2026/11/30 19:06:59 [error] 23861#23861: *5 connect() failed (113: No route to host) "
        "while connecting to upstream, client: 127.0.0.1, server: docs.lab.test, request: \"GET "
        "/gone/ HTTP/1.1\", upstream: \"http://172.29.0.9:28000/\", host: \"127.0.0.1:28080\"",
        "run here: nginx 1.22.1 proxy_pass http://172.29.0.9:28000 (ip netns: an on-link "
        "address no namespace holds)",
        "dns_or_network",
        "stale_upstream_address",
    ),
    (
        "nginx_error_log",
        "2026/11/30 19:06:59 [error] 23861#23861: *7 connect() failed (111: Connection "
        "refused) while connecting to upstream, client: 127.0.0.1, server: docs.lab.test, "
        "request: \"GET /index.php HTTP/1.1\", upstream: \"fastcgi://172.29.0.3:9000\", host: "
        "\"127.0.0.1:28080\"",
        "run here: nginx 1.22.1 fastcgi_pass 172.29.0.3:9000 (ip netns: there python3 -m "
        "http.server --bind 127.0.0.1 9000, ss -ltnp: 127.0.0.1:9000 only)",
        "wrong_proxy_config",
        "backend_listens_on_loopback",
    ),
    (
        "nginx_error_log",
        "2026/12/01 00:24:11 [error] 28046#28046: *1 recv() failed (104: Connection reset by "
        "peer) while reading response header from upstream, client: 127.0.0.1, server: , "
        "request: \"GET /index.php HTTP/1.1\", upstream: \"fastcgi://127.0.0.1:29000\", host: "
        "\"127.0.0.1:28180\"",
        "run here: nginx 1.22.1 fastcgi_pass 127.0.0.1:29000 to a python3 FastCGI stand-in whose "
        "forked worker reads 16 bytes of the request and exits (os._exit), the rest unread",
        "upstream_crashloop",
        "php_worker_died_on_request",
    ),
    (
        "nginx_error_log",
        "2026/11/30 18:51:53 [error] 31703#31703: *1 no live upstreams while connecting to "
        "upstream, client: 127.0.0.1, server: jenkins.lab.test, request: \"GET / HTTP/1.1\", "
        "upstream: \"http://jenkins.lab.test/\", host: \"jenkins.lab.test\"",
        "run here: nginx 1.22.1 with nginx-proxy's fallback upstream (upstream jenkins.lab.test "
        "{ server 127.0.0.1 down; }, proxy_pass http://jenkins.lab.test)",
        "wrong_proxy_config",
        "generated_upstream_marked_down",
    ),
    # the JavaScript dev servers' proxies (node 20.20.2 run here, in front of a closed port):
    # http-proxy-middleware 0.19.2 and 2.0.12 (webpack-dev-server, Vue CLI, Angular CLI), Create
    # React App's react-dev-utils 12.0.1 (its 500 body)
    (
        "nginx_error_log",
        "[HPM] Error occurred while trying to proxy request /api/login from 127.0.0.1:28090 to "
        "http://localhost:28091 (ECONNREFUSED) "
        "(https://nodejs.org/api/errors.html#errors_common_system_errors)",
        "run here: http-proxy-middleware 0.19.2 (node 20.20.2) proxying /api to "
        "http://localhost:28091, where nothing listens",
        "upstream_down",
        None,
    ),
    (
        "app_logs",
        "[HPM] Error occurred while proxying request 127.0.0.1:28090/api/login to "
        "http://localhost:28091/ [ECONNREFUSED] "
        "(https://nodejs.org/api/errors.html#errors_common_system_errors)",
        "run here: http-proxy-middleware 2.0.12 (node 20.20.2) proxying /api to "
        "http://localhost:28091, where nothing listens",
        "upstream_down",
        None,
    ),
    (
        "proxy_check",
        "Proxy error: Could not proxy request /api/login from localhost:3000 to "
        "http://localhost:28091 (ECONNREFUSED).",
        "run here: react-dev-utils 12.0.1 prepareProxy('http://localhost:28091') through "
        "http-proxy-middleware 2.0.12, nothing listening there (the 500 body)",
        "upstream_down",
        None,
    ),
    (
        "docker_logs",
        '{"level":"error","ts":1796065621.4829397,"logger":"http.log.error","msg":"dial tcp 1'
        '72.29.0.3:28000: connect: connection refused","request":{"remote_ip":"127.0.0.1","re'
        'mote_port":"39132","proto":"HTTP/1.1","method":"GET","host":"127.0.0.1:28085","uri":'
        '"/api","headers":{"User-Agent":["curl/7.88.1"],"Accept":["*/*"]}},"duration":0.00103'
        '78,"status":502,"err_id":"dmecwhqaz","err_trace":"reverseproxy.statusError (reversep'
        'roxy.go:1272)"}',
        "run here: caddy 2.6.2 (Debian) reverse_proxy 172.29.0.3:28000 from another network "
        "namespace, where a server listens on 127.0.0.1:28000 only",
        "wrong_proxy_config",
        "backend_listens_on_loopback",
    ),
    # ---- other proxies in front of the backend: Envoy (its body, its access log) and HAProxy
    # 2.6.12 (run here in a network namespace: a closed port, then waitress 3.0.2 answering after
    # 4 s)
    (
        "proxy_check",
        "upstream connect error or disconnect/reset before headers. reset reason: connection "
        "failure, transport failure reason: delayed connect error: 111",
        "https://github.com/ygalblum/quadlet-demo/issues/8",
        "upstream_down",
        None,
    ),
    (
        "proxy_check",
        "no healthy upstream",
        "https://github.com/cortexlabs/cortex/issues/432",
        "upstream_down",
        None,
    ),
    (
        "docker_logs",
        "[05/12/2019T16:14:53+0000 1575562493] method=POST authority=localhost:443 txId=- "
        "request=/StudentService/get alpn=HTTP/2 response_flag=UT ssl_protocol=TLSv1.3 "
        "ssl_cipher=TLS_AES_128_GCM_SHA256 status=200 status_details=upstream_response_timeout "
        "request_size=84 response_size=0 envoy_request_id=52220e61-e045-4dc7-bdc3-c8b5e77dd2ee "
        "user-agent=grpc-go/1.24.0 xFor=49.207.48.241 x-envoy-upstream-service-time=- "
        "total_time_ms=15001 upstream=127.0.0.1:7000",
        "https://github.com/envoyproxy/envoy/issues/9242",
        "upstream_timeout",
        None,
    ),
    (
        "proxy_check",
        "No server is available to handle this request.",
        "run here: curl through haproxy 2.6.12 (server s1 127.0.0.1:19801 check; nothing listens)",
        "upstream_down",
        None,
    ),
    (
        "docker_logs",
        "[ALERT]    (6) : backend 'b' has no server available!",
        "run here: haproxy 2.6.12 -f hap.cfg (server s1 127.0.0.1:19801 check; nothing listens)",
        "upstream_down",
        None,
    ),
    (
        "docker_logs",
        "127.0.0.1:53114 [30/Nov/2026:13:22:02.078] f b/s1 0/0/-1/-1/3006 503 217 - - SC-- "
        "1/1/0/0/3 0/0 \"GET / HTTP/1.1\"",
        "run here: haproxy 2.6.12 option httplog (server s1 127.0.0.1:19801, no check; nothing "
        "listens)",
        "upstream_down",
        None,
    ),
    (
        "proxy_check",
        "The server didn't respond in time.",
        "run here: curl through haproxy 2.6.12 (timeout server 2s) to waitress 3.0.2 answering "
        "after 4 s",
        "upstream_timeout",
        None,
    ),
    (
        "docker_logs",
        "127.0.0.1:53126 [30/Nov/2026:13:22:10.617] f b/s1 0/0/0/-1/2002 504 198 - - sH-- "
        "1/1/0/0/0 0/0 \"GET / HTTP/1.1\"",
        "run here: haproxy 2.6.12 option httplog (timeout server 2s) to waitress 3.0.2 answering "
        "after 4 s",
        "upstream_timeout",
        None,
    ),
    # Apache httpd 2.4.71 mod_proxy (apache2 -X, ProxyPass to an address without a route)
    (
        "nginx_error_log",
        "[Mon Nov 30 13:24:02.197509 2026] [proxy:error] [pid 8:tid 11] (113)No route to host: "
        "AH00957: http: attempt to connect to 203.0.113.9:19801 (203.0.113.9:19801) failed",
        "run here: apache2 -X (Apache 2.4.71) ProxyPass / http://203.0.113.9:19801/ in a network "
        "namespace where 203.0.113.0/24 is unreachable",
        "dns_or_network",
        None,
    ),
    # ---- a worker killed by a fault of its own code, its master living on: php-fpm 8.2.36
    # (Debian php8.2-fpm, pm = static, behind nginx 1.22.1) and gunicorn 27.0.1 (pip), a request
    # whose worker gets SIGILL (a JIT's or an instruction the CPU lacks) or SIGFPE
    (
        "app_logs",
        "[01-Dec-2026 01:01:19] WARNING: [pool www] child 18552 exited on signal 4 (SIGILL) after "
        "1.504143 seconds from start",
        "run here: php-fpm8.2 -n -R -y fpm.conf, crash.php doing posix_kill(getmypid(), 4)",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "[01-Dec-2026 01:01:19] WARNING: [pool www] child 18640 exited on signal 8 (SIGFPE) after "
        "0.518085 seconds from start",
        "run here: php-fpm8.2 -n -R -y fpm.conf, crash.php doing posix_kill(getmypid(), 8)",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        "[2026-12-01 01:00:41 +0000] [15908] [WARNING] Worker (pid:15910) was sent SIGILL!",
        "run here: gunicorn 27.0.1 -w 1, a WSGI app doing os.kill(os.getpid(), signal.SIGILL)",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        "[2026-12-01 01:00:42 +0000] [15908] [WARNING] Worker (pid:15917) was sent SIGFPE!",
        "run here: gunicorn 27.0.1 -w 1, a WSGI app doing os.kill(os.getpid(), signal.SIGFPE)",
        "upstream_crashloop",
        None,
    ),
    # ---- Heroku's router and dyno manager (heroku logs), as public threads quote them
    (
        "nginx_error_log",
        '2016-12-06T22:07:25.937574+00:00 heroku[router]: at=error code=H10 desc="App crashed" '
        'method=GET path="/" host=tstudio.herokuapp.com request_id=93505154-e7c1-412e-aa32-bb0a9bb1'
        '9271 fwd="152.179.69.246" dyno= connect= service= status=503 bytes=',
        "https://github.com/GetStream/Stream-Example-Meteor/issues/2 (heroku logs -t)",
        "upstream_crashloop",
        None,
    ),
    (
        "nginx_error_log",
        "2012-11-10T15:26:15+00:00 heroku[router]: Error H10 (App crashed) -> POST "
        "iamleeg-vulcan.herokuapp.com/make dyno= queue= wait= service= status=503 bytes=",
        "https://gist.github.com/iamleeg/4051395 (the router's older wording)",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        "2020-06-06T11:16:07.009396+00:00 heroku[web.1]: Error R10 (Boot timeout) -> Web process "
        "failed to bind to $PORT within 60 seconds of launch",
        "https://pastebin.com/48T4dhMr (heroku logs)",
        "upstream_crashloop",
        None,
    ),
    (
        "nginx_error_log",
        '2018-04-10T03:30:53.848866+00:00 heroku[router]: at=error code=H12 desc="Request timeo'
        'ut" method=POST path="/poll" host=fast-depths-22674.herokuapp.com request_id=50a4bf5b-'
        '0932-45bd-89ff-95a4fb89cc3d fwd="36.71.232.235" dyno=web.1 connect=1ms service=30000ms'
        ' status=503 bytes=0 protocol=https',
        "https://gist.github.com/Suyash-Purwar (heroku logs)",
        "upstream_timeout",
        None,
    ),
    (
        "nginx_error_log",
        "2010-10-29T14:01:08-07:00 heroku[router]: Error H12 (Request timeout) -> GET "
        "growing-dusk-20.heroku.com/timeout dyno=web.1 queue=0 wait=0ms service=0ms bytes=0",
        "https://gist.github.com/jkvor/654399 (the router's older wording)",
        "upstream_timeout",
        None,
    ),
    # ---- Prisma Migrate's P3009, an app running prisma migrate deploy at its start
    (
        "docker_logs",
        "migrate found failed migrations in the target database, new migrations will not be "
        "applied. Read more about how to resolve migration issues in a production database: "
        "https://pris.ly/d/migrate-resolve",
        "https://github.com/gerssonmg/bot-express-ts (readme.md, a render.com deploy log)",
        "upstream_crashloop",
        "failed_migration_blocks_start",
    ),
    # Apache httpd 2.4.71 mod_proxy on a unix socket (apache2 -X; proxy_fcgi's SetHandler
    # "proxy:unix:PATH|fcgi://HOST", proxy_http's ProxyPass "unix:PATH|http://HOST/"): read as
    # nginx's connect() to unix:PATH failed (2/111/13: ...)
    (
        "nginx_error_log",
        "[Tue Dec 01 00:39:35.635572 2026] [proxy:error] [pid 4626:tid 4630] (2)No such file or "
        "directory: AH02454: FCGI: attempt to connect to Unix domain socket "
        "/run/php/php8.1-fpm.sock (localhost:8000) failed",
        "run here: apache2 -X (Apache 2.4.71) SetHandler \"proxy:unix:/run/php/php8.1-fpm.sock|"
        "fcgi://localhost\", no such socket (no PHP 8.1 here)",
        "wrong_proxy_config",
        "php_socket_version_mismatch",
    ),
    (
        "nginx_error_log",
        "[Tue Dec 01 00:39:35.642518 2026] [proxy:error] [pid 4626:tid 4633] (2)No such file or "
        "directory: AH02454: FCGI: attempt to connect to Unix domain socket /run/php-fpm/www.sock "
        "(127.0.0.2:8000) failed",
        "run here: apache2 -X (Apache 2.4.71) SetHandler \"proxy:unix:/run/php-fpm/www.sock|"
        "fcgi://127.0.0.2\", no php-fpm running to create it",
        "upstream_down",
        None,
    ),
    (
        "nginx_error_log",
        "[Tue Dec 01 00:39:35.661123 2026] [proxy:error] [pid 4626:tid 4637] (2)No such file or "
        "directory: AH02454: http: attempt to connect to Unix domain socket /run/gunicorn.sock "
        "(127.0.0.5:80) failed",
        "run here: apache2 -X (Apache 2.4.71) ProxyPass /e/ \"unix:/run/gunicorn.sock|"
        "http://127.0.0.5/\", no such socket",
        "upstream_down",
        None,
    ),
    (
        "nginx_error_log",
        "[Tue Dec 01 00:39:35.649596 2026] [proxy:error] [pid 4626:tid 4634] (111)Connection "
        "refused: AH02454: FCGI: attempt to connect to Unix domain socket "
        "/run/rules11-fpm/www.sock (127.0.0.3:8000) failed",
        "run here: apache2 -X (Apache 2.4.71) SetHandler \"proxy:unix:/run/rules11-fpm/www.sock|"
        "fcgi://127.0.0.3\", a socket file (mode 0777) nothing listens on",
        "upstream_down",
        None,
    ),
    (
        "nginx_error_log",
        "[Tue Dec 01 00:39:35.655153 2026] [proxy:error] [pid 4626:tid 4635] (13)Permission "
        "denied: AH02454: http: attempt to connect to Unix domain socket "
        "/run/rules11-fpm/gunicorn.sock (127.0.0.4:80) failed",
        "run here: apache2 -X (Apache 2.4.71, User nobody) ProxyPass /d/ "
        "\"unix:/run/rules11-fpm/gunicorn.sock|http://127.0.0.4/\", a socket of root's, mode 0755",
        "permission_denied",
        None,
    ),
    # ---- musl's own strerror texts (musl 1.2.3, a static program built with musl-gcc, perror
    # after the failing call)
    (
        "app_logs",
        "bind: Address in use",
        "run here: musl-gcc -static; bind(2) to 127.0.0.1:19811 while another socket listens there",
        "upstream_crashloop",
        "port_already_in_use",
    ),
    (
        "app_logs",
        "bind: Address not available",
        "run here: musl-gcc -static; bind(2) to 10.255.255.1:19812, an address the host lacks",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "app_logs",
        "mmap: Out of memory",
        "run here: musl-gcc -static; mmap(2) of 16 GiB under ulimit -v 100000",
        "oom_killed",
        "memory_exhausted",
    ),
    # ---- Tomcat 10.1.60 (Debian tomcat10) reading what nginx 1.22.1 sends to its plain HTTP
    # connector: a TLS ClientHello (proxy_pass https://), a FastCGI record (fastcgi_pass)
    (
        "app_logs",
        "\tjava.lang.IllegalArgumentException: Invalid character found in method name [0x160x030x0"
        "10x000xb70x010x000x000xb30x030x030xc5%0xa5B0xd60xf60x070xfa0x110xdd0xe60x070xfe4NC0xd40xa"
        "90xbb0xeb0x150xa3e0xfdXw0xb00x0cY0xb10x030xc00x000x0080xc0,0xc000x000x9f0xcc0xa90xcc0xa80"
        "xcc0xaa0xc0+0xc0/0x000x9e0xc0$0xc0(0x00k0xc0#0xc0'0x00g0xc00x0a0xc00x140x0090xc00x090xc00"
        "x130x0030x000x9d0x000x9c0x00=0x00<0x0050x00/0x000xff0x010x000x00R0x000x0b0x000x040x030x00"
        "0x010x020x000x0a0x000x0c0x000x0a0x000x1d0x000x170x000x1e0x000x190x000x180x00#0x000x000x00"
        "0x160x000x000x000x170x000x000x000x0d0x00*0x00(0x040x030x050x030x060x030x080x070x080x080x0"
        "80x090x080x0a0x080x0b0x080x040x080x050x080x060x040x010x050x010x060x010x030x030x030x010x03"
        "0x020x040x020x050x020x060x02...]. HTTP method names must be tokens",
        "run here: catalina.sh run (Tomcat 10.1.60, Connector port 19801) behind nginx 1.22.1 "
        "proxy_pass https://127.0.0.1:19801",
        "tls_mismatch",
        "https_to_plain_port",
    ),
    (
        "app_logs",
        "\tjava.lang.IllegalArgumentException: Invalid character found in method name [0x010x010x0"
        "00x010x000x080x000x000x000x010x000x000x000x000x000x000x010x040x000x010x010xcb0x050x000x0c"
        "0x00QUERY_STRING0x0e0x03REQUEST_METHODGET0x0c0x00CONTENT_TYPE0x0e0x00CONTENT_LENGTH0x0b0x"
        "0aSCRIPT_NAME/index.php0x0b0x0aREQUEST_URI/index.php0x0c0x0aDOCUMENT_URI/index.php0x0d0x1"
        "5DOCUMENT_ROOT/usr/share/nginx/html0x0f0x08SERVER_PROTOCOLHTTP/1.10x0e0x04REQUEST_SCHEMEh"
        "ttp0x110x07GATEWAY_INTERFACECGI/1.10x0f0x0cSERVER_SOFTWAREnginx/1.22.10x0b0x09REMOTE_ADDR"
        "127.0.0.10x0b0x05REMOTE_PORT559800x0b0x00REMOTE_USER0x0b0x09SERVER_ADDR127.0.0.10x0b0x05S"
        "ERVER_PORT198800x0b0x00SERVER_NAME0x0f0x03REDIRECT_STATUS2000x090x09HTTP_HOST127.0.0.10x0"
        "f0x0bHTTP_USER_AGENTcurl/7.88.10x0b0x03HTTP_ACCEPT*/*0x000x000x000x000x000x010x040x000x01"
        "0x000x000x000x000x010x050x000x010x000x000x000x00...]. HTTP method names must be tokens",
        "run here: catalina.sh run (Tomcat 10.1.60, Connector port 19801) behind nginx 1.22.1 "
        "fastcgi_pass 127.0.0.1:19801",
        "wrong_proxy_config",
        "fastcgi_to_http_port",
    ),
    # nginx's own 504 as curl -si shows it (proxy_read_timeout 1s, waitress answering after 4 s)
    (
        "proxy_check",
        "HTTP/1.1 504 Gateway Time-out",
        "run here: curl -si through nginx 1.22.1 (proxy_read_timeout 1s) to a slow waitress 3.0.2",
        "upstream_timeout",
        None,
    ),
    (
        "proxy_check",
        "<head><title>504 Gateway Time-out</title></head>",
        "run here: curl -si through nginx 1.22.1 (proxy_read_timeout 1s) to a slow waitress 3.0.2",
        "upstream_timeout",
        None,
    ),
    # ---- the kubelet evicting pods from a node low on memory
    (
        "docker_inspect",
        "The node was low on resource: memory. Container kilo was using 30332Ki, which exceeds its "
        "request of 0.",
        "https://github.com/squat/kilo/issues/329",
        "oom_killed",
        "k8s_node_memory_pressure",
    ),
    (
        "app_logs",
        "4m7s        Warning   Evicted               pod/egg-<id2 here>    The node had condition: "
        "[MemoryPressure].",
        "https://github.com/FederatedAI/KubeFATE/issues/64",
        "oom_killed",
        "k8s_node_memory_pressure",
    ),
    (
        "app_logs",
        "2026-11-30T13:28:27: PM2 log: App [api:0] exited with code [0] via signal [SIGKILL]",
        "run here: pm2 7.0.4 start app.js --name api (Node.js 20.20.2), then kill -9 its pid",
        "oom_killed",
        None,
    ),
    # ---- a connect() that times out: run here in a network namespace whose iptables drop every
    # packet to 192.0.2.20 (an address on lo; net.ipv4.tcp_syn_retries=1)
    (
        "app_logs",
        "Error: connect ETIMEDOUT 192.0.2.20:5432",
        "run here: node -e \"require('net').connect(5432,'192.0.2.20')\" (Node.js 20.20.2)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "dial tcp 192.0.2.20:8080: connect: connection timed out",
        "run here: Go 1.19.8 net.Dial(\"tcp\", \"192.0.2.20:8080\")",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "TimeoutError: [Errno 110] Connection timed out",
        "run here: python -c \"import socket; socket.create_connection(('192.0.2.20', 5432))\" "
        "(CPython 3.11.7)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "-e:1:in `initialize': Connection timed out - connect(2) for \"192.0.2.20\" port 5432 "
        "(Errno::ETIMEDOUT)",
        "run here: ruby -e \"require 'socket'; TCPSocket.new('192.0.2.20', 5432)\" (Ruby 3.1.2)",
        "dns_or_network",
        None,
    ),
    (
        "healthcheck",
        "curl: (28) Failed to connect to 192.0.2.20 port 5432 after 3077 ms: Couldn't connect to "
        "server",
        "run here: curl -sS http://192.0.2.20:5432/ (curl 7.88.1)",
        "dns_or_network",
        None,
    ),
    # ---- ECONNREFUSED in the backend's own words, no port named (a closed port, run here)
    (
        "app_logs",
        "ConnectionRefusedError: [Errno 111] Connection refused",
        "run here: python -c \"import socket; socket.create_connection(('127.0.0.1', 19899))\" "
        "(CPython 3.11.7)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Exception in thread \"main\" java.net.ConnectException: Connection refused",
        "run here: OpenJDK 17.0.15 new Socket(\"127.0.0.1\", 19899) in main",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "error connecting to redis: Connection refused (os error 111)",
        "run here: Rust 1.95.0 TcpStream::connect(\"127.0.0.1:19899\"), eprintln!(\"error "
        "connecting to redis: {}\", e)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Error: Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
        "run here: Rust 1.95.0 main returning TcpStream::connect(\"127.0.0.1:19899\")?",
        "dependency_down",
        None,
    ),
    (
        "kernel_log",
        "kernel: [1694413.644132] nf_conntrack: nf_conntrack: table full, dropping packet",
        "https://github.com/canonical/hotsos/issues/101",
        "dns_or_network",
        "conntrack_table_full",
    ),
    # ---- PHP's mysqli and the WordPress image (PHP 8.2.36 with php8.2-mysql, run here)
    (
        "app_logs",
        "PHP Fatal error:  Uncaught mysqli_sql_exception: Connection refused in Command line "
        "code:1",
        "run here: php -r 'mysqli_connect(\"127.0.0.1\",\"u\",\"p\",\"x\",19899);' (nothing "
        "listens)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "PHP Fatal error:  Uncaught mysqli_sql_exception: No such file or directory in Command "
        "line code:1",
        "run here: php -r 'mysqli_connect(\"localhost\",\"u\",\"p\",\"x\");' (no mysqld socket)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "PHP Warning:  mysqli_connect(): (HY000/2002): Connection refused in Command line code on "
        "line 1",
        "run here: php -r with mysqli_report(MYSQLI_REPORT_OFF), mysqli_connect to a closed port",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "MySQL Connection Error: (2002) Connection refused",
        "https://github.com/docker-library/wordpress/issues/119",
        "dependency_down",
        None,
    ),
    # ---- .NET: Npgsql and the runtime's SocketException
    (
        "docker_logs",
        "      Npgsql.NpgsqlException (0x80004005): Failed to connect to 127.0.0.1:5432",
        "https://github.com/npgsql/npgsql/issues/4739",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "System.Net.Sockets.SocketException (111): Connection refused",
        "https://github.com/npgsql/npgsql/issues/2883",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "Error: failed to lookup address information: Temporary failure in name resolution",
        "run here: Rust 1.95.0 \"db:5432\".to_socket_addrs(), eprintln!(\"Error: {}\", e), with no "
        "DNS server answering",
        "dns_or_network",
        None,
    ),
    (
        "nginx_error_log",
        "2024/11/03 00:37:38 [error] 10916#8776: *19 connect() failed (10061: No connection could "
        "be made because the target machine actively refused it) while connecting to upstream, "
        "client: 127.0.0.1, server: localhost, request: \"GET / HTTP/1.1\", upstream: "
        "\"fastcgi://127.0.0.1:9010\", host: \"localhost\"",
        "https://github.com/xianyunleo/EServer/issues/138",
        "upstream_down",
        None,
    ),
    (
        "app_logs",
        "java.net.SocketTimeoutException: Connect timed out",
        "run here: OpenJDK 17.0.15 Socket.connect(192.0.2.20:8080, 2000) where iptables drop it",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "requests.exceptions.ConnectTimeout: HTTPConnectionPool(host='192.0.2.20', port=8080): Max "
        "retries exceeded with url: / (Caused by ConnectTimeoutError(<HTTPConnection(host='192.0.2."
        "20', port=8080) at 0x7feb02f3dd90>, 'Connection to 192.0.2.20 timed out. (connect "
        "timeout=2)'))",
        "run here: requests 2.34.2 requests.get('http://192.0.2.20:8080/', timeout=2) where "
        "iptables drop it",
        "dns_or_network",
        None,
    ),
    # ---- Python backends' clients and servers, run here (issue 9): CPython 3.11.7, PyMySQL 1.2.4,
    # redis-py 8.1.0, pymongo 4.20.1, kombu/Celery 5.7.0, psycopg2-binary 2.9.13, SQLAlchemy 2.1.9,
    # Django 5.2.19, gunicorn 27.0.1, uvicorn 0.54.0, uWSGI 2.0.21; NXDOMAIN for names no
    # resolver knows, EAI_AGAIN from a resolv.conf pointing at a closed port (unshare -m), and a
    # filled 64 KiB tmpfs
    (
        "app_logs",
        "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on 'db' ([Errno "
        "-2] Name or service not known)\")",
        "run here: PyMySQL 1.2.4 pymysql.connect(host='db') where db is NXDOMAIN",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "docker_logs",
        "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on 'db' ([Errno "
        "-3] Temporary failure in name resolution)\")",
        "run here: PyMySQL 1.2.4 pymysql.connect(host='db') with a resolver that refuses "
        "(EAI_AGAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "docker_logs",
        "redis.exceptions.ConnectionError: Error -2 connecting to redis:6379. Name or service "
        "not known.",
        "run here: redis-py 8.1.0 redis.Redis(host='redis').ping() where redis is NXDOMAIN",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "journal",
        "redis.exceptions.ConnectionError: Error -3 connecting to redis:6379. Temporary failure "
        "in name resolution.",
        "run here: redis-py 8.1.0 redis.Redis(host='redis').ping() with a resolver that refuses "
        "(EAI_AGAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "journal",
        "pymongo.errors.ServerSelectionTimeoutError: mongo:27017: [Errno -2] Name or service not "
        "known (configured timeouts: socketTimeoutMS: 20000.0ms, connectTimeoutMS: 20000.0ms), "
        "Timeout: 1.5s, Topology Description: <TopologyDescription id: 6b0d7f9e19581336a26d637a, "
        "topology_type: Unknown, servers: [<ServerDescription ('mongo', 27017) server_type: "
        "Unknown, rtt: None, error=AutoReconnect('mongo:27017: [Errno -2] Name or service not "
        "known (configured timeouts: socketTimeoutMS: 20000.0ms, connectTimeoutMS: "
        "20000.0ms)')>]>",
        "run here: pymongo 4.20.1 MongoClient('mongodb://mongo:27017/', "
        "serverSelectionTimeoutMS=1500) ping where mongo is NXDOMAIN",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "kombu.exceptions.OperationalError: [Errno -3] Temporary failure in name resolution",
        "run here: kombu 5.7.0 Connection('amqp://guest:guest@rabbitmq:5672//').ensure_connection"
        "() with a resolver that refuses (EAI_AGAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "docker_logs",
        "[2026-11-30 13:53:56,234: ERROR/MainProcess] consumer: Cannot connect to "
        "amqp://guest:**@rabbitmq:5672//: [Errno -2] Name or service not known.",
        "run here: Celery 5.7.0 celery -A tasks worker with broker "
        "amqp://guest:guest@rabbitmq:5672// (NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "[2026-11-30 13:53:47,632: ERROR/MainProcess] consumer: Cannot connect to "
        "redis://:**@redis:6379/0: Error -2 connecting to redis:6379. Name or service not known..",
        "run here: Celery 5.7.0 celery -A tasks worker with broker redis://redis:6379/0 "
        "(NXDOMAIN), redis-py 8.1.0",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "django.db.utils.OperationalError: (2003, \"Can't connect to MySQL server on 'mysql' "
        "([Errno -2] Name or service not known)\")",
        "run here: Django 5.2.19 manage.py migrate, ENGINE django.db.backends.mysql through "
        "PyMySQL 1.2.4, HOST mysql (NXDOMAIN)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "app_logs",
        "[2026-11-30 13:53:00 +0000] [20275] [ERROR] connection to ('nosuchhostcat8', 19872) "
        "failed: [Errno -2] Name or service not known",
        "run here: gunicorn -b nosuchhostcat8:19872 wapp:app (gunicorn 27.0.1, CPython 3.11.7)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "docker_logs",
        "ERROR:    [Errno -2] Name or service not known",
        "run here: uvicorn --host nosuchhostcat8 --port 19872 wapp:app (uvicorn 0.54.0, CPython "
        "3.11.7)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "app_logs",
        "sqlite3.OperationalError: database or disk is full",
        "run here: CPython 3.11.7 sqlite3 insert of 100 kB into a database on a full 64 KiB tmpfs",
        "disk_full",
        None,
    ),
    (
        "journal",
        "django.db.migrations.exceptions.MigrationSchemaMissing: Unable to create the "
        "django_migrations table (database or disk is full)",
        "run here: Django 5.2.19 manage.py migrate with its sqlite3 database on a full 64 KiB "
        "tmpfs",
        "disk_full",
        None,
    ),
    (
        "app_logs",
        "psycopg2.OperationalError: connection to server on socket "
        "\"/tmp/cat8/nosock/.s.PGSQL.5432\" failed: No such file or directory",
        "run here: psycopg2-binary 2.9.13 psycopg2.connect(host='/tmp/cat8/nosock') (no server "
        "socket)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) connection to server at "
        "\"127.0.0.1\", port 19899 failed: Connection refused",
        "run here: SQLAlchemy 2.1.9 create_engine('postgresql+psycopg2://x@127.0.0.1:19899/x').co"
        "nnect(), nothing listens",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on '127.0.0.1' "
        "([Errno 111] Connection refused)\")",
        "run here: PyMySQL 1.2.4 pymysql.connect(host='127.0.0.1', port=19899), nothing listens",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "redis.exceptions.ConnectionError: Error 111 connecting to localhost:19899. Connection "
        "refused.",
        "run here: redis-py 8.1.0 redis.Redis(port=19899).ping(), nothing listens",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "[2026-11-30 13:53:38,283: ERROR/MainProcess] consumer: Cannot connect to "
        "amqp://guest:**@127.0.0.1:19899//: [Errno 111] Connection refused.",
        "run here: Celery 5.7.0 celery -A tasks worker with broker "
        "amqp://guest:guest@127.0.0.1:19899//, nothing listens",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "[2026-11-30 13:53:29,273: ERROR/MainProcess] consumer: Cannot connect to "
        "redis://:**@127.0.0.1:19899/0: Error 111 connecting to 127.0.0.1:19899. Connection "
        "refused..",
        "run here: Celery 5.7.0 celery -A tasks worker with broker redis://127.0.0.1:19899/0, "
        "nothing listens",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "kombu.exceptions.OperationalError: Error 111 connecting to 127.0.0.1:19899. Connection "
        "refused.",
        "run here: Celery 5.7.0 add.delay(1, 2) with broker redis://127.0.0.1:19899/0, nothing "
        "listens (kombu 5.7.0)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "[2026-11-30 13:54:32 +0000] [2091] [ERROR] Worker (pid:2093) was sent SIGKILL! Perhaps "
        "out of memory?",
        "run here: gunicorn -w 1 wapp:app, its worker killed with kill -9 (gunicorn 27.0.1, "
        "CPython 3.11.7)",
        "oom_killed",
        "worker_oom_killed",
    ),
    (
        "docker_logs",
        "[2026-11-30 13:54:29 +0000] [32709] [CRITICAL] WORKER TIMEOUT (pid:348)",
        "run here: gunicorn --timeout 2 wapp:app, a request that sleeps 30 s (gunicorn 27.0.1, "
        "CPython 3.11.7)",
        "upstream_timeout",
        "gunicorn_worker_timeout",
    ),
    (
        "app_logs",
        "Mon Nov 30 13:54:56 2026 - *** HARAKIRI ON WORKER 1 (pid: 2523, try: 1) ***",
        "run here: uwsgi --master --plugin python3 --harakiri 2 --wsgi-file wapp.py --callable "
        "app, a request that sleeps 30 s (uWSGI 2.0.21 Debian)",
        "upstream_timeout",
        "uwsgi_harakiri",
    ),
    (
        "journal",
        "[2026-11-30 13:52:57 +0000] [20071] [ERROR] Connection in use: ('127.0.0.1', 19871)",
        "run here: gunicorn -b 127.0.0.1:19871 wapp:app, the port held by another process "
        "(gunicorn 27.0.1, CPython 3.11.7)",
        "upstream_crashloop",
        "port_already_in_use",
    ),
    (
        "docker_logs",
        "Error: Error: '/tmp/cat8/closed/err.log' isn't writable [PermissionError(13, "
        "'Permission denied')]",
        "run here: gunicorn --error-logfile in a root-owned 0755 directory, as nobody (gunicorn "
        "27.0.1, CPython 3.11.7)",
        "permission_denied",
        None,
    ),
    # ---- the same Python clients against real servers that refuse them, and the servers' own
    # words (Redis 7.0.15 and PostgreSQL 15 from Debian, started here and stopped after)
    (
        "app_logs",
        "redis.exceptions.AuthenticationError: invalid username-password pair or user is "
        "disabled.",
        "run here: redis-py 8.1.0 Redis(password='nope').get('x') against Redis 7.0.15 "
        "(redis-server --requirepass, --maxmemory 1mb)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "redis.exceptions.AuthenticationError: HELLO must be called with the client already "
        "authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to "
        "authenticate the client and select the RESP protocol version at the same time",
        "run here: redis-py 8.1.0 Redis().get('x') without a password against Redis 7.0.15 "
        "(redis-server --requirepass, --maxmemory 1mb)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "redis.exceptions.OutOfMemoryError: command not allowed when used memory > 'maxmemory'.",
        "run here: redis-py 8.1.0 set of 2 MB against Redis 7.0.15 (redis-server --requirepass, "
        "--maxmemory 1mb)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "redis.exceptions.ConnectionError: max number of clients reached",
        "run here: redis-py 8.1.0, a fourth client of Redis 7.0.15 with --maxclients 2",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "[2026-11-30 14:00:05,859: ERROR/MainProcess] consumer: Cannot connect to "
        "redis://:**@127.0.0.1:19881/0: Authentication required..",
        "run here: Celery 5.7.0 worker with broker redis://127.0.0.1:19881/0 without the "
        "password of Redis 7.0.15 (redis-server --requirepass, --maxmemory 1mb)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "[2026-11-30 14:01:40,686: ERROR/MainProcess] Process 'ForkPoolWorker-1' pid:25579 "
        "exited with 'signal 9 (SIGKILL)'",
        "run here: Celery 5.7.0 worker --pool prefork -c 1 (billiard 4.3.2), its child killed "
        "with kill -9 during a task",
        "oom_killed",
        "worker_oom_killed",
    ),
    (
        "journal",
        "billiard.exceptions.WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL) Job: "
        "0.",
        "run here: the same Celery worker",
        "oom_killed",
        "worker_oom_killed",
    ),
    (
        "docker_logs",
        "Error: That IP address can't be assigned to.",
        "run here: Django 5.2.19 manage.py runserver 10.255.255.1:19871 --noreload (an address "
        "the host lacks)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "app_logs",
        "Error: [Errno -2] Name or service not known",
        "run here: Django 5.2.19 manage.py runserver nosuchhostcat8:19871 --noreload (NXDOMAIN)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "journal",
        "Port 19871 is in use by another program. Either identify and stop that program, or "
        "start the server with a different port.",
        "run here: Flask 3.1.3 flask run -p 19871 (Werkzeug 3.1.9), the port held by another "
        "process",
        "upstream_crashloop",
        "port_already_in_use",
    ),
    (
        "app_logs",
        "psycopg2.OperationalError: connection to server at \"127.0.0.1\", port 19882 failed: "
        "FATAL:  password authentication failed for user \"postgres\"",
        "run here: psycopg2-binary 2.9.13 connect(password='nope') to PostgreSQL 15 (Debian, md5 "
        "auth, max_connections 4)",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        "psycopg2.OperationalError: connection to server at \"127.0.0.1\", port 19882 failed: "
        "FATAL:  sorry, too many clients already",
        "run here: psycopg2-binary 2.9.13, a fifth connection to PostgreSQL 15 (Debian, md5 "
        "auth, max_connections 4)",
        "dependency_down",
        None,
    ),
    (
        "journal",
        "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) connection to server at "
        "\"127.0.0.1\", port 19882 failed: FATAL:  database \"appdb\" does not exist",
        "run here: SQLAlchemy 2.1.9 with psycopg2 2.9.13 to database appdb, absent on PostgreSQL "
        "15 (Debian, md5 auth, max_connections 4)",
        "dependency_down",
        "database_not_initialised",
    ),
    (
        "app_logs",
        "django.db.utils.OperationalError: connection failed: connection to server at "
        "\"127.0.0.1\", port 19882 failed: fe_sendauth: no password supplied",
        "run here: Django 5.2.19 migrate (psycopg 3.3.9) without a PASSWORD against PostgreSQL "
        "15 (Debian, md5 auth, max_connections 4)",
        "dependency_down",
        None,
    ),
    (
        "app_logs",
        "psycopg2.OperationalError: server closed the connection unexpectedly",
        "run here: psycopg2-binary 2.9.13, a query on a session that pg_terminate_backend "
        "ended (PostgreSQL 15)",
        "dependency_down",
        None,
    ),
    # ---- nginx 1.22.1 and uWSGI 2.0.21 (Debian), the proxy's own configuration (helper rulesa)
    (
        "nginx_error_log",
        "2026/11/30 15:40:33 [error] 23021#23021: *1 no resolver defined to resolve "
        "backend.invalid, client: 127.0.0.1, server: lab, request: \"GET /nores/ HTTP/1.1\", "
        "host: \"127.0.0.1:28080\"",
        "run here: nginx 1.22.1, location /nores/ { set $b \"backend.invalid:8000\"; proxy_pass "
        "http://$b; } without a resolver directive, curl http://127.0.0.1:28080/nores/",
        "wrong_proxy_config",
        "no_resolver_defined",
    ),
    (
        "nginx_error_log",
        "2026/11/30 15:40:33 [error] 23021#23021: *2 connect() failed (111: Connection refused) "
        "while connecting to upstream, client: 127.0.0.1, server: lab2, request: \"GET / "
        "HTTP/1.1\", upstream: \"http://127.0.0.1:80/\", host: \"127.0.0.1:28081\"",
        "run here: nginx 1.22.1, listen 127.0.0.1:28081; location / { proxy_pass http://$host; }, "
        "curl http://127.0.0.1:28081/ (nothing listens on port 80)",
        "wrong_proxy_config",
        "upstream_port_dropped",
    ),
    (
        "app_logs",
        "uwsgi_proto_http_parser() -> client closed connection",
        "run here: uwsgi --plugin python3 --http-socket 127.0.0.1:28092 --wsgi-file app.py "
        "(uWSGI 2.0.21, Debian) behind nginx 1.22.1 uwsgi_pass 127.0.0.1:28092 with "
        "uwsgi_read_timeout 3s, one request",
        "wrong_proxy_config",
        "uwsgi_pass_to_http_socket",
    ),
    # ---- a start-up check that says a path is not writable for the program (issue 9, rulesb)
    (
        "docker_logs",
        "GF_PATHS_DATA='/var/lib/grafana' is not writable.",
        "https://github.com/GhostWriters/DockSTARTer/blob/master/docs/apps/grafana.md (the "
        "Grafana image's run.sh on a volume it may not write)",
        "permission_denied",
        "data_dir_not_writable",
    ),
    # ---- TLS clients' own reasons, each run here against python3 -m http.server wrapped in TLS
    # (certificates from a private CA: one for docs.lab.test, one expired, one self-signed)
    (
        "healthcheck",
        "curl: (60) SSL: no alternative certificate subject name matches target host name "
        "'127.0.0.1'",
        "run here: curl --cacert ca.pem https://127.0.0.1:28443/ (curl 7.88.1, OpenSSL 3.0.19) "
        "to a server whose certificate names docs.lab.test only",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "healthcheck",
        "curl: (60) SSL certificate problem: certificate has expired",
        "run here: curl --cacert ca.pem https://docs.lab.test:28444/ (curl 7.88.1) to a server "
        "whose certificate ended on 2020-01-02",
        "tls_mismatch",
        "certificate_expired",
    ),
    (
        "app_logs",
        "urllib.error.URLError: <urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'. "
        "(_ssl.c:1006)>",
        "run here: urllib.request.urlopen('https://127.0.0.1:28443/') with the CA trusted "
        "(CPython 3.11.7), the certificate naming docs.lab.test only",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "app_logs",
        "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: Hostname mismatch, certificate is not valid for 'other.lab.test'. "
        "(_ssl.c:1006)",
        "run here: ssl wrap_socket(server_hostname='other.lab.test') with the CA trusted "
        "(CPython 3.11.7), the certificate naming docs.lab.test only",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    (
        "app_logs",
        "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: certificate has expired (_ssl.c:1006)",
        "run here: ssl wrap_socket(server_hostname='docs.lab.test') with the CA trusted "
        "(CPython 3.11.7), the certificate ended on 2020-01-02",
        "tls_mismatch",
        "certificate_expired",
    ),
    (
        "app_logs",
        "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: self-signed certificate (_ssl.c:1006)",
        "run here: ssl wrap_socket with the default trust store (CPython 3.11.7) to a server "
        "presenting a self-signed certificate",
        "tls_mismatch",
        "self_signed_certificate",
    ),
    (
        "app_logs",
        "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: unable to get local issuer certificate (_ssl.c:1006)",
        "run here: ssl wrap_socket with the default trust store (CPython 3.11.7) to a server "
        "whose certificate a private CA signed",
        "tls_mismatch",
        "certificate_chain_untrusted",
    ),
    (
        "app_logs",
        "Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's "
        "list:  ERR_TLS_CERT_ALTNAME_INVALID",
        "run here: https.get('https://127.0.0.1:28443/', {ca}) printing err.message and "
        "err.code (Node.js 20.20.2), the certificate naming docs.lab.test only",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
    # ---- nginx 1.22.1 whose resolver does not answer (resolver 127.0.0.1:28054, nothing there;
    # resolver_timeout 2s; proxy_pass through a variable): its two lines, run here
    (
        "nginx_error_log",
        "2026/11/30 16:18:06 [error] 29156#29156: recv() failed (111: Connection refused) while "
        "resolving, resolver: 127.0.0.1:28054",
        "run here: nginx 1.22.1, resolver 127.0.0.1:28054 (nothing listens) with set $b "
        "backend.lab.test; proxy_pass http://$b:28093;, one request",
        "dns_or_network",
        "resolver_unreachable",
    ),
    (
        "nginx_error_log",
        "2026/11/30 16:18:08 [error] 29156#29156: *39 backend.lab.test could not be resolved (110: "
        "Operation timed out), client: 127.0.0.1, server: lab4, request: \"GET / HTTP/1.1\", host: "
        "\"127.0.0.1:28083\"",
        "run here: the same request, resolver_timeout 2s later",
        "dns_or_network",
        "resolver_unreachable",
    ),
    # ---- Envoy's 503 body (Istio, Consul): the connect's errno by number, or by its text
    (
        "proxy_check",
        "Unexpected response: upstream connect error or disconnect/reset before headers. reset "
        "reason: connection failure, transport failure reason: delayed connect error: 113",
        "https://github.com/consul-up/examples/issues/2 (after a Kubernetes cluster restart)",
        "dns_or_network",
        None,
    ),
    (
        "app_logs",
        "[2024-11-28T04:12:28Z WARN  jito_shredstream_proxy::heartbeat] Error sending heartbeat: "
        "status: Unavailable, message: \"upstream connect error or disconnect/reset before "
        "headers. reset reason: remote connection failure, transport failure reason: delayed "
        "connect error: 113\", details: [], metadata: MetadataMap { headers: "
        "{\"x-request-received-at\": \"2024-11-28T04:12:25.003Z\", \"content-type\": "
        "\"application/grpc\", \"server\": \"jito-block-engine\", \"date\": \"Thu, 28 Nov 2024 "
        "04:12:28 GMT\"} }",
        "https://github.com/jito-labs/shredstream-proxy/issues/34 (a gRPC client behind Envoy)",
        "dns_or_network",
        None,
    ),
    (
        "proxy_check",
        "upstream connect error or disconnect/reset before headers. reset reason: remote "
        "connection failure, transport failure reason: delayed connect error: 110",
        "https://github.com/Smana/cloud-native-ref/issues/136 (a 503 through an HTTPRoute while "
        "a port-forward worked)",
        "dns_or_network",
        None,
    ),
    # ---- mutual TLS: a server that requires a client certificate, clients that send none
    (
        "healthcheck",
        "curl: (56) OpenSSL SSL_read: OpenSSL/3.0.19: error:0A00045C:SSL routines::tlsv13 "
        "alert certificate required, errno 0",
        "run here: curl --cacert ca.pem https://docs.lab.test:28447/ (curl 7.88.1) without a "
        "client certificate, to a CPython ssl server with verify_mode CERT_REQUIRED",
        "tls_mismatch",
        "client_certificate_required",
    ),
    (
        "app_logs",
        "809C2B4D457F0000:error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate "
        "required:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert number 116",
        "run here: Node.js 20.20.2 https.get to the same server, printing err.message "
        "(err.code ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED)",
        "tls_mismatch",
        "client_certificate_required",
    ),
    (
        "app_logs",
        "Get \"https://127.0.0.1:28447/\": remote error: tls: certificate required",
        "run here: Go 1.19.8 net/http to the same server without a client certificate",
        "tls_mismatch",
        "client_certificate_required",
    ),
    # ---- no TLS version in common: a server that speaks TLS 1.3 only, clients capped at 1.2
    (
        "nginx_error_log",
        "2026/11/30 16:19:29 [error] 14575#14575: *41 SSL_do_handshake() failed (SSL: "
        "error:0A00042E:SSL routines::tlsv1 alert protocol version:SSL alert number 70) while "
        "SSL handshaking to upstream, client: 127.0.0.1, server: lab, request: \"GET /tls12/ "
        "HTTP/1.1\", upstream: \"https://127.0.0.1:28446/tls12/\", host: \"127.0.0.1:28080\"",
        "run here: nginx 1.22.1 with proxy_ssl_protocols TLSv1.2; proxy_pass "
        "https://127.0.0.1:28446 (a CPython ssl server with minimum_version TLSv1_3)",
        "tls_mismatch",
        "tls_protocol_version_mismatch",
    ),
    (
        "healthcheck",
        "curl: (35) OpenSSL/3.0.19: error:0A00042E:SSL routines::tlsv1 alert protocol version",
        "run here: curl --tls-max 1.2 https://docs.lab.test:28446/ (curl 7.88.1) to the same "
        "TLS 1.3-only server",
        "tls_mismatch",
        "tls_protocol_version_mismatch",
    ),
    (
        "app_logs",
        "ssl.SSLError: [SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version "
        "(_ssl.c:1006)",
        "run here: CPython 3.11.7 ssl with maximum_version TLSv1_2 to the same server",
        "tls_mismatch",
        "tls_protocol_version_mismatch",
    ),
    (
        "app_logs",
        "Get \"https://127.0.0.1:28446/\": remote error: tls: protocol version not supported",
        "run here: Go 1.19.8 net/http with tls.Config{MaxVersion: tls.VersionTLS12} to the "
        "same server",
        "tls_mismatch",
        "tls_protocol_version_mismatch",
    ),
    (
        "app_logs",
        "write EPROTO 80DC4C20AC7F0000:error:0A00042E:SSL routines:ssl3_read_bytes:tlsv1 alert "
        "protocol version:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert "
        "number 70",
        "run here: Node.js 20.20.2 https.get({maxVersion: 'TLSv1.2'}) to the same server, "
        "printing err.message",
        "tls_mismatch",
        "tls_protocol_version_mismatch",
    ),
    # ---- Chrome's console: a page served over https links to its own host over http (the app
    # behind a TLS-ending proxy does not know the client's scheme)
    (
        "browser_console",
        "Mixed Content: The page at 'https://MYDOMAIN.COM/register' was loaded over HTTPS, but "
        "requested an insecure stylesheet 'http://MYDOMAIN.COM/css/app.css'. This request has been "
        "blocked; the content must be served over HTTPS.",
        "https://github.com/nginx-proxy/nginx-proxy/issues/1685 (a Laravel container behind "
        "nginx-proxy)",
        "wrong_proxy_config",
        "forwarded_proto_not_passed",
    ),
    (
        "browser_console",
        "login:31 Mixed Content: The page at 'https://fusionpbx.homeserver.armster.de/login' was "
        "loaded over HTTPS, but requested an insecure stylesheet "
        "'http://fusionpbx.homeserver.armster.de/storage/vite/assets/tailwind-2cb8fe2d.css'. This "
        "request has been blocked; the content must be served over HTTPS.Understand this error",
        "https://github.com/nemerald-voip/fspbx/issues/137 (behind an nginx reverse proxy)",
        "wrong_proxy_config",
        "forwarded_proto_not_passed",
    ),
    (
        "browser_console",
        "Mixed Content: The page at 'https://***/basicui/app' was loaded over HTTPS, but requested "
        "an insecure EventSource endpoint 'http://***/rest/sitemaps/events/"
        "b4e94801-b1b7-4bae-8b7c-5b6c6edb7235?sitemap=thuis&pageid=thuis'. This content should "
        "also be requested over HTTPS.",
        "https://github.com/openhab/openhab-distro/issues/483 (fixed by RequestHeader set "
        "X-Forwarded-Proto \"https\" in the proxy)",
        "wrong_proxy_config",
        "forwarded_proto_not_passed",
    ),
    # ---- the database cannot serve the backend: a CPU it needs, a version (issue 9, rulesb)
    (
        "docker_logs",
        "2022-01-17T14:53:34.802256329Z WARNING: MongoDB 5.0+ requires a CPU with AVX support, and "
        "your current system does not appear to have that!",
        "https://github.com/ICTU/quality-time/issues/3255 (the mongo image's entrypoint, docker "
        "logs --timestamps)",
        "dependency_down",
        "database_failed_to_start",
    ),
    (
        "docker_logs",
        "django.db.utils.NotSupportedError: PostgreSQL 12 or later is required (found 9.615).",
        "https://github.com/getsentry/sentry/pull/53468 (Django 4.2 against PostgreSQL 9.6)",
        "dependency_down",
        "database_version_unsupported",
    ),
    # ---- Nextcloud's HTTP client refuses a local or private address (a request filter)
    (
        "app_logs",
        "[integration_moodle] Warning: Moodle API error : OCP\\Http\\Client\\LocalServerException: "
        "Host violates local access rules in "
        "/var/www/nextcloud/lib/private/Http/Client/LocalAddressChecker.php:42",
        "https://github.com/nextcloud/integration_moodle/issues/24 (Nextcloud 22)",
        "unknown",
        "local_access_rules_block",
    ),
    (
        "app_logs",
        "[no app in context] Warning: Host 10.0.17.6 was not connected to because it violates "
        "local access rules",
        "https://github.com/nextcloud/all-in-one/issues/188 (Nextcloud 23)",
        "unknown",
        "local_access_rules_block",
    ),
    # ---- the backend's own listener on IPv6 where the host has none (EAFNOSUPPORT)
    (
        "docker_logs",
        "nginx: [emerg] socket() [::]:443 failed (97: Address family not supported by protocol)",
        "https://github.com/coolacid/docker-misp/issues/41 (nginx inside the app's image)",
        "upstream_crashloop",
        "ipv6_listener_without_ipv6",
    ),
    (
        "docker_logs",
        "2025/06/18 22:19:32 [emerg] 1#1: socket() [::]:8080 failed (97: Address family not "
        "supported by protocol)",
        "https://github.com/sharevb/it-tools/issues/98 (the app image's nginx, a host without "
        "IPv6)",
        "upstream_crashloop",
        "ipv6_listener_without_ipv6",
    ),
    (
        "journal",
        "2021-01-30 11:38:27: (network.c.281) socket failed: Address family not supported by "
        "protocol",
        "https://github.com/alexreinert/debmatic/issues/194 (lighttpd with ipv6.disable=1)",
        "upstream_crashloop",
        "ipv6_listener_without_ipv6",
    ),
    # ---- Tomcat cannot open its connector
    (
        "app_logs",
        '30-Nov-2026 16:41:40.410 SEVERE [main] org.apache.catalina.util.LifecycleBase.handleSubCla'
        'ssException Failed to initialize component [Connector["http-nio-127.0.0.1-19982"]]',
        "run here: Tomcat 10.1 (Debian tomcat10, catalina.sh run) with its HTTP connector's port "
        "held by another process",
        "upstream_crashloop",
        None,
    ),
    # ---- Gitea and Gogs refuse to run as another user than RUN_USER
    (
        "journal",
        "[...s/setting/setting.go:994 NewContext()] [E] Expect user 'olduser' but current user "
        "is: newuser",
        "https://github.com/go-gitea/gitea/issues/4469 (Gitea 1.4.0)",
        "upstream_crashloop",
        "run_user_mismatch",
    ),
    (
        "docker_logs",
        "Run user isn't the current user: git -> gogs",
        "https://github.com/gogs/gogs/issues/778",
        "upstream_crashloop",
        "run_user_mismatch",
    ),
    # ---- the .NET host cannot find an assembly its deps.json lists
    (
        "journal",
        "  An assembly specified in the application dependencies manifest (pt-feeder.deps.json) "
        "was not found:",
        "https://github.com/mehtadone/PTFeeder/issues/204 (dotnet pt-feeder.dll)",
        "upstream_crashloop",
        "shared_library_missing",
    ),
    # ---- NestJS's TypeORM module cannot reach its database
    (
        "docker_logs",
        "deploy-discord-chat-bot-1  | [Nest] 31  - 01/18/2023, 3:42:14 PM   ERROR [TypeOrmModule] "
        "Unable to connect to the database. Retrying (3)...",
        "https://github.com/karafra/ai-art/issues/39 (docker compose up)",
        "dependency_down",
        None,
    ),
    # ---- PostgREST (Supabase) refuses a token signed with another secret
    (
        "app_logs",
        "Error: `Failed to match page sections: {\"code\":\"PGRST301\",\"details\":null,"
        "\"hint\":null,\"message\":\"JWSError JWSInvalidSignature\"}`",
        "https://github.com/supabase-community/nextjs-openai-doc-search/issues/38 (its title)",
        "jwt_mismatch",
        "jwt_signed_with_other_secret",
    ),
    # ---- a full disk in the words of a program that does not print strerror
    (
        "app_logs",
        "PHP Warning:  file_put_contents(): Only 65536 of 200000 bytes written, possibly out of "
        "free disk space in Command line code on line 1",
        "run here: PHP 8.2.36 file_put_contents of 200 kB on a full 64 KiB tmpfs (the warning "
        "that production error_reporting keeps; "
        "tests/data/captures/php-short-write-disk-full.json)",
        "disk_full",
        None,
    ),
    # ---- the app's database pool has no free connection: requests queue until the proxy gives up
    (
        "docker_logs",
        "psycopg_pool.PoolTimeout: couldn't get a connection after 2.00 sec",
        "run here: psycopg_pool 3.3.3 ConnectionPool(max_size=1) against PostgreSQL 15, its one "
        "connection held, getconn(timeout=2.0) (CPython 3.11.7)",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    (
        "app_logs",
        "sqlalchemy.exc.TimeoutError: QueuePool limit of size 1 overflow 0 reached, connection "
        "timed out, timeout 2.00 (Background on this error at: https://sqlalche.me/e/21/3o7r)",
        "run here: SQLAlchemy 2.1.9 create_engine(pool_size=1, max_overflow=0, pool_timeout=2) "
        "with psycopg 3.3.9 against PostgreSQL 15, its one connection held",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    (
        "app_logs",
        "Caused by: java.sql.SQLTransientConnectionException: HikariPool-1 - Connection is not "
        "available, request timed out after 30014ms.",
        "https://github.com/brettwooldridge/HikariCP/issues/963 (Hibernate behind two web apps, "
        "15 connections each)",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    (
        "docker_logs",
        "The connection pool has been exhausted, either raise MaxPoolSize (currently 100) or "
        "Timeout (currently 15 seconds)",
        "https://github.com/siteserver/cms/issues/2220 (Npgsql, PostgreSQL)",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    # ---- SQLite's I/O error: a WAL database on a full filesystem cannot grow its -shm file
    (
        "journal",
        "Error: in prepare, disk I/O error (10)",
        "run here: sqlite3 3.40.1 kuma.db 'PRAGMA journal_mode = WAL;' (a WAL database on a full "
        "64 KiB tmpfs)",
        "disk_full",
        "sqlite_io_error",
    ),
    # ---- caddy-docker-proxy shares no network with the container it should proxy to
    (
        "docker_logs",
        "caddy-1                  | {\"level\":\"warn\",\"ts\":1711396807.90559,\"logger\":"
        "\"docker-proxy\",\"msg\":\"Container is not in same network as caddy\",\"container\":"
        "\"9ec0059217d0f220ba2e0a6f956e15ed6108a9557c965391782006285004c927\",\"container id\":"
        "\"9ec0059217d0f220ba2e0a6f956e15ed6108a9557c965391782006285004c927\"}",
        "https://github.com/lucaslorentz/caddy-docker-proxy/issues/601 "
        "(CADDY_INGRESS_NETWORKS=caddy under a compose project that prefixes the network's name)",
        "dns_or_network",
        "proxy_shares_no_network_with_backend",
    ),
    # ---- Elasticsearch's bootstrap check refuses the host's vm.max_map_count (a host setting)
    (
        "docker_logs",
        "elasticsearch_1  | [1]: max virtual memory areas vm.max_map_count [65536] is too low, "
        "increase to at least [262144]",
        "https://github.com/deviantony/docker-elk/issues/354 (docker-compose up of the ELK stack)",
        "unknown",
        "vm_max_map_count_too_low",
    ),
    (
        "app_logs",
        "[1]: max virtual memory areas vm.max_map_count [65530] is too low, increase to at least "
        "[262144] by adding `vm.max_map_count = 262144` to `/etc/sysctl.conf` or invoking `sysctl "
        "-w vm.max_map_count=262144`",
        "https://github.com/crate/docker-crate/issues/209 (the CrateDB image does not start)",
        "unknown",
        "vm_max_map_count_too_low",
    ),
    # ---- the dialing host has no free local port: connect() fails with EADDRNOTAVAIL
    (
        "docker_logs",
        "dial tcp 127.0.0.1:18080: connect: cannot assign requested address",
        "run here: Go 1.19.8 net.Dial in a network namespace (unshare -n) whose "
        "net.ipv4.ip_local_port_range was cut to 40000-40001, two connections held",
        "unknown",
        "local_ports_exhausted",
    ),
    (
        "nginx_error_log",
        "2026/11/30 17:07:31 [crit] 3894#3894: *5 connect() to 127.0.0.1:18081 failed (99: Cannot "
        "assign requested address) while connecting to upstream, client: 127.0.0.1, server: , "
        "request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:18081/\", host: \"x\"",
        "run here: nginx 1.22.1 proxy_pass to a listener that never answers, in a network "
        "namespace whose ip_local_port_range was cut to 40000-40001: the third request",
        "unknown",
        "local_ports_exhausted",
    ),
    # ---- an entrypoint that refuses to start without a setting it requires
    (
        "docker_logs",
        "SECRET_KEY is not defined. Aborting.",
        "run here: the SECRET_KEY check of maxking/docker-mailman web/docker-entrypoint.sh "
        "(commit 03483dc3) under bash 5.2.15, SECRET_KEY unset",
        "upstream_crashloop",
        "required_setting_missing",
    ),
    # ---- stopped, with nothing of the backend's own failing: a start is the fix (the guideline's
    # down); supervisord 4.2.5 and Docker 20.10.24, run here
    (
        "journal",
        "2026-11-30 18:47:18,620 WARN stopped: app (terminated by SIGTERM)",
        "run here: supervisorctl stop app (supervisord 4.2.5, program /bin/sleep 1000)",
        "upstream_down",
        None,
    ),
    (
        "journal",
        "2026-11-30 18:47:13,493 INFO exited: once (exit status 0; expected)",
        "run here: supervisord 4.2.5, program /bin/true with autorestart=unexpected, startsecs=0",
        "upstream_down",
        None,
    ),
    (
        "docker_logs",
        "Error response from daemon: Container "
        "d5fc8e826aa9b2fedd2612fa29182c67a58ebb1f4eec9988cf2b41e1dcfce703 is not running",
        "run here: docker exec on a container made by docker create and never started (Docker "
        "20.10.24)",
        "upstream_down",
        None,
    ),
    (
        "docker_logs",
        "Error response from daemon: No such container: rulese-nonexistent",
        "run here: docker logs on a container that does not exist (Docker 20.10.24)",
        "upstream_down",
        None,
    ),
    # ---- EACCES in other words: supervisord's own check of the command's mode, SQLite's refusal
    (
        "supervisorctl_status",
        "noexec                           FATAL     command at '/tmp/rulese/sv/noexec.sh' is not "
        "executable",
        "run here: supervisord 4.2.5, program command= a script of mode 0644 (supervisorctl "
        "status)",
        "permission_denied",
        "program_not_executable",
    ),
    (
        "journal",
        "2026-11-30 18:47:13,484 INFO spawnerr: command at '/tmp/rulese/sv/noexec.sh' is not "
        "executable",
        "run here: the same, in supervisord.log",
        "permission_denied",
        "program_not_executable",
    ),
    (
        "app_logs",
        "sqlite3.OperationalError: attempt to write a readonly database",
        "run here: CPython 3.11.2 (SQLite 3.40.1) as nobody inserting into a database root owns "
        "(mode 0644)",
        "permission_denied",
        "data_dir_not_writable",
    ),
    # ---- Docker restarts a container the kernel killed (docker kill or stop leave it Exited)
    (
        "docker_ps",
        "30981a4fc2bf   opsbot-test/busybox   \"sh -c 'a=aaaaaaaaaa…\"   19 seconds ago   "
        "Restarting (137) 3 seconds ago             rulese-oom",
        "run here: docker run -d --restart=always -m 16m --memory-swap 16m busybox sh -c "
        "'a=aaaaaaaaaaaaaaaa; while true; do a=$a$a; done', then docker ps -a (Docker 20.10.24; "
        "inspect: OOMKilled true, RestartCount 7)",
        "oom_killed",
        None,
    ),
    # ---- the fatal lines of compiled programs: libstdc++'s terminate, Rust's main returning an
    # io::Error, and bash reporting its child's SIGABRT
    (
        "docker_logs",
        "terminate called after throwing an instance of 'std::runtime_error'",
        "run here: a g++ 12.2 program throwing std::runtime_error out of main",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        'Error: Os { code: 2, kind: NotFound, message: "No such file or directory" }',
        "run here: a rustc 1.95.0 program whose main returns std::io::Result and opens a missing "
        "file with ?",
        "upstream_crashloop",
        None,
    ),
    (
        "journal",
        "bash: line 150:  7568 Aborted                 ./t",
        "run here: bash 5.2.15 running the g++ program above (SIGABRT)",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        "Error occurred during initialization of VM",
        "run here: java -Xmx2m -version (OpenJDK 17.0.15): the JVM refuses its own heap options",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        "/root/.pyenv/versions/3.11.7/bin/python3: can't open file '/nonexistent.py': [Errno 2] No "
        "such file or directory",
        "run here: python3 /nonexistent.py (CPython 3.11.7)",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        '2026/11/30 19:18:01 socat[16048] E "/tmp/rulese/x.sock" exists',
        "run here: socat 1.7.4.4 UNIX-LISTEN:/tmp/rulese/x.sock,fork TCP:127.0.0.1:1 on a path a "
        "closed socket still holds",
        "upstream_crashloop",
        "stale_unix_socket",
    ),
    # ---- EPERM in busybox's and initdb's words (the volume is not theirs to chown or chmod)
    (
        "docker_logs",
        "chown: /bin: Operation not permitted",
        "run here: docker run --user 65534:65534 busybox chown 65534 /bin (BusyBox, Docker "
        "20.10.24)",
        "permission_denied",
        "ownership_change_not_permitted",
    ),
    (
        "docker_logs",
        "chmod: /bin: Operation not permitted",
        "run here: docker run --user 65534:65534 busybox chmod 777 /bin",
        "permission_denied",
        "ownership_change_not_permitted",
    ),
    (
        "docker_logs",
        "fixing permissions on existing directory /tmp/rulese/pgx ... initdb: error: could not "
        "change permissions of directory \"/tmp/rulese/pgx\": Operation not permitted",
        "run here: initdb 15.18 -D DIR as postgres, DIR owned by root with mode 0777",
        "permission_denied",
        "ownership_change_not_permitted",
    ),
    # ---- an image's s6-overlay v3 init not run as the container's PID 1
    (
        "docker_logs",
        "2025-12-05T20:27:05Z app[080771c6405138] nrt [info]s6-overlay-suexec: fatal: can only "
        "run as pid 1",
        "https://github.com/just-containers/s6-overlay/issues/634 (Fly.io's log prefix)",
        "upstream_crashloop",
        "init_not_pid_1",
    ),
    (
        "docker_logs",
        "altmount  | s6-overlay-suexec: fatal: can only run as pid 1",
        "https://github.com/kipsilabs/altmount/issues/578 (compose 'init: true')",
        "upstream_crashloop",
        "init_not_pid_1",
    ),
    # ---- the shells' own words for a start command they cannot run, run here
    (
        "docker_logs",
        "sh: 1: exec: nosuchprog_x: not found",
        "run here: dash 0.5.12, sh -c 'exec nosuchprog_x' (a start script's exec of a missing "
        "program)",
        "upstream_crashloop",
        "start_program_not_found",
    ),
    (
        "journal",
        "bash: exec: nosuchprog_x: not found",
        "run here: bash 5.2.15, bash -c 'exec nosuchprog_x'",
        "upstream_crashloop",
        "start_program_not_found",
    ),
    (
        "docker_logs",
        "sh: exec: line 0: nosuchprog_x: not found",
        "run here: BusyBox 1.35.0 sh -c 'exec nosuchprog_x'",
        "upstream_crashloop",
        "start_program_not_found",
    ),
    (
        "docker_logs",
        "sh: 1: [gunicorn,: not found",
        "run here: dash 0.5.12, sh -c '[gunicorn, \"app:app\"]' (an exec form that is not JSON, "
        "run as the shell form)",
        "upstream_crashloop",
        "start_command_not_json",
    ),
    (
        "docker_logs",
        "bash: [gunicorn,: command not found",
        "run here: bash 5.2.15, bash -c '[gunicorn, \"app:app\"]'",
        "upstream_crashloop",
        "start_command_not_json",
    ),
    # ---- Apache httpd whose PidFile names a live pid (a restarted container's)
    (
        "docker_logs",
        "httpd (pid 26) already running",
        "https://github.com/scline/docker-cacti/pull/60 (the container restarted unexpectedly; "
        "fixed by deleting the pid file before starting apache)",
        "upstream_crashloop",
        "stale_pid_file",
    ),
    # ---- a TLS server given plain HTTP, and a TLS client dialing an IP its certificate lacks
    (
        "app_logs",
        "804B1A5C147F0000:error:0A00009C:SSL routines:ssl3_get_record:http request:"
        "../ssl/record/ssl3_record.c:341:",
        "run here: OpenSSL 3.0.19 s_server -accept 127.0.0.1:28443 given curl http://127.0.0.1:28443/",
        "tls_mismatch",
        "plain_http_to_tls_port",
    ),
    (
        "app_logs",
        "      Post https://mbus:<redacted>@X.X.X.X:6868/agent: x509: cannot validate certificate "
        "for X.X.X.X because it doesn't contain any IP SANs",
        "https://github.com/cloudfoundry/bosh-deployment/issues/161 (Go crypto/x509 HostnameError "
        "for an IP without IP SANs)",
        "tls_mismatch",
        "certificate_name_mismatch",
    ),
]


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES_FILE)


# Whole outputs (every line as printed, in order) where the specific line must outweigh the
# generic ones around it: a traceback's header, gunicorn's closing "Can't connect to".
OUTPUTS: list[tuple[str, list[str], str, str, str | None]] = [
    (
        "journal",
        [
            "Traceback (most recent call last):",
            "  File \"/tmp/rules9-ssl/./venvbin/bin/myapp\", line 4, in <module>",
            "    sys.exit(json.loads(\"{\"))",
        ],
        "run here: CPython 3.11.2, a console script in a bin/ directory raising at start (its "
        "first three lines, as threads quote a traceback cut short)",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        [
            "Traceback (most recent call last):",
            "  File \"<frozen runpy>\", line 198, in _run_module_as_main",
            "  File \"<frozen runpy>\", line 88, in _run_code",
        ],
        "run here: CPython 3.11.2 python3 -m boom, a module raising at import (its first three "
        "lines)",
        "upstream_crashloop",
        None,
    ),
    # the same through s6-log's T timestamp (s6-overlay images: Home Assistant add-ons), whatever
    # the Python: runpy.py (CPython <= 3.10) or <frozen runpy>
    (
        "docker_logs",
        [
            "2026-12-01 00:41:23.472731804  Traceback (most recent call last):",
            '2026-12-01 00:41:23.472757513    File "/root/.pyenv/versions/3.9.18/lib/python3.'
            '9/runpy.py", line 197, in _run_module_as_main',
            "2026-12-01 00:41:23.472824266      return _run_code(code, main_globals, None,",
        ],
        "run here: CPython 3.9.18 python -m boom (KeyError at import) piped to s6-log T 1 "
        "(s6 2.11.3.2), its first three lines",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        [
            "2026-12-01 00:41:23.486915224  Traceback (most recent call last):",
            '2026-12-01 00:41:23.486935224    File "<frozen runpy>", line 198, in _run_module'
            '_as_main',
            '2026-12-01 00:41:23.486935869    File "<frozen runpy>", line 88, in _run_code',
            '2026-12-01 00:41:23.486936417    File "/tmp/rules11/py/boom/__main__.py", line 9'
            ', in <module>',
            "2026-12-01 00:41:23.486953191      main()",
            '2026-12-01 00:41:23.486955950    File "/tmp/rules11/py/boom/__main__.py", line 5'
            ', in main',
            '2026-12-01 00:41:23.487010887      port = int(os.environ["BOOM_PORT"])',
            "2026-12-01 00:41:23.487013843                 ~~~~~~~~~~^^^^^^^^^^^^^",
            '2026-12-01 00:41:23.487014328    File "<frozen os>", line 679, in __getitem__',
            "2026-12-01 00:41:23.487070638  KeyError: 'BOOM_PORT'",
        ],
        "run here: CPython 3.11.2 python3 -m boom (KeyError at import) piped to s6-log T 1 "
        "(s6 2.11.3.2)",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        [
            "Proxy error: Could not proxy request /api/login from localhost:3000 to "
            "http://localhost:28091.",
            "See https://nodejs.org/api/errors.html#errors_common_system_errors for more "
            "information (ECONNREFUSED).",
        ],
        "run here: react-dev-utils 12.0.1 prepareProxy('http://localhost:28091') through "
        "http-proxy-middleware 2.0.12, nothing listening there (its two console lines)",
        "upstream_down",
        None,
    ),
    (
        "app_logs",
        [
            "6:57:35 PM [vite] http proxy error: /api/login",
            "Error: connect ECONNREFUSED 127.0.0.1:28091",
            "    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1611:16)",
        ],
        "run here: vite 5.4.21 dev server, server.proxy {'/api': 'http://localhost:28091'}, "
        "nothing listening there (not a dependency: the Error line is the proxy's)",
        "upstream_down",
        None,
    ),
    (
        "app_logs",
        [
            "Traceback (most recent call last):",
            "  File \"<string>\", line 1, in <module>",
            "sqlite3.OperationalError: database or disk is full",
        ],
        "run here: CPython 3.11.7 sqlite3 insert of 100 kB into a database on a full 64 KiB "
        "tmpfs (the whole output)",
        "disk_full",
        None,
    ),
    (
        "docker_logs",
        [
            "[2026-11-30 13:53:00 +0000] [20275] [INFO] Starting gunicorn 27.0.1",
            "[2026-11-30 13:53:00 +0000] [20275] [ERROR] connection to ('nosuchhostcat8', 19872) "
            "failed: [Errno -2] Name or service not known",
            "[2026-11-30 13:53:01 +0000] [20275] [ERROR] connection to ('nosuchhostcat8', 19872) "
            "failed: [Errno -2] Name or service not known",
            "[2026-11-30 13:53:02 +0000] [20275] [ERROR] connection to ('nosuchhostcat8', 19872) "
            "failed: [Errno -2] Name or service not known",
            "[2026-11-30 13:53:03 +0000] [20275] [ERROR] connection to ('nosuchhostcat8', 19872) "
            "failed: [Errno -2] Name or service not known",
            "[2026-11-30 13:53:04 +0000] [20275] [ERROR] connection to ('nosuchhostcat8', 19872) "
            "failed: [Errno -2] Name or service not known",
            "[2026-11-30 13:53:05 +0000] [20275] [ERROR] Can't connect to ('nosuchhostcat8', "
            "19872)",
        ],
        "run here: gunicorn -b nosuchhostcat8:19872 wapp:app (gunicorn 27.0.1; the last lines of "
        "its output)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "journal",
        [
            "[2026-11-30 13:53:47,632: ERROR/MainProcess] consumer: Cannot connect to "
            "redis://:**@redis:6379/0: Error -2 connecting to redis:6379. Name or service not "
            "known..",
            "Trying again in 4.00 seconds... (2/100)",
        ],
        "run here: Celery 5.7.0 worker with broker redis://redis:6379/0 (NXDOMAIN; its first "
        "retry)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "docker_logs",
        [
            "[2026-11-30 14:13:52 +0000] [10097] [INFO] Starting gunicorn 27.0.1",
            "[2026-11-30 14:13:52 +0000] [10097] [INFO] Listening at: http://127.0.0.1:19886 "
            "(10097)",
            "[2026-11-30 14:13:52 +0000] [10097] [INFO] Using worker: sync",
            "[2026-11-30 14:13:52 +0000] [10098] [INFO] Booting worker with pid: 10098",
            "[2026-11-30 14:13:52 +0000] [10098] [ERROR] Exception in worker process",
            "Traceback (most recent call last):",
            "  File \"/tmp/cat8/py/gunicorn/arbiter.py\", line 752, in spawn_worker",
            "    worker.init_process()",
            "  File \"/tmp/cat8/py/gunicorn/workers/base.py\", line 138, in init_process",
            "    self.load_wsgi()",
            "  File \"/tmp/cat8/py/gunicorn/workers/base.py\", line 150, in load_wsgi",
            "    self.wsgi = self.app.wsgi()",
            "                ^^^^^^^^^^^^^^^",
            "  File \"/tmp/cat8/py/gunicorn/app/base.py\", line 67, in wsgi",
            "    self.callable = self.load()",
            "                    ^^^^^^^^^^^",
            "  File \"/tmp/cat8/py/gunicorn/app/wsgiapp.py\", line 57, in load",
            "    return self.load_wsgiapp()",
            "           ^^^^^^^^^^^^^^^^^^^",
            "  File \"/tmp/cat8/py/gunicorn/app/wsgiapp.py\", line 47, in load_wsgiapp",
            "    return util.import_app(self.app_uri)",
            "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
            "  File \"/tmp/cat8/py/gunicorn/util.py\", line 420, in import_app",
            "    mod = importlib.import_module(module)",
            "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
            "  File \"/root/.pyenv/versions/3.11.7/lib/python3.11/importlib/__init__.py\", line "
            "126, in import_module",
            "    return _bootstrap._gcd_import(name[level:], package, level)",
            "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
            "  File \"<frozen importlib._bootstrap>\", line 1204, in _gcd_import",
            "  File \"<frozen importlib._bootstrap>\", line 1176, in _find_and_load",
            "  File \"<frozen importlib._bootstrap>\", line 1147, in _find_and_load_unlocked",
            "  File \"<frozen importlib._bootstrap>\", line 690, in _load_unlocked",
            "  File \"<frozen importlib._bootstrap_external>\", line 940, in exec_module",
            "  File \"<frozen importlib._bootstrap>\", line 241, in _call_with_frames_removed",
            "  File \"/tmp/cat8/cap/impdb.py\", line 2, in <module>",
            "    conn = psycopg2.connect(host=os.environ.get('PGHOST_', '127.0.0.1'), "
            "port=19899, user='x', dbname='x')",
            "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
            "^^^^^^^^^^^^^^^^^^^^^^",
            "  File \"/tmp/cat8/py/psycopg2/__init__.py\", line 122, in connect",
            "    conn = _connect(dsn, connection_factory=connection_factory, **kwasync)",
            "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
            "psycopg2.OperationalError: could not translate host name \"db\" to address: Name or "
            "service not known",
            "",
            "could not translate host name \"db\" to address: Name or service not known",
            "",
            "[2026-11-30 14:13:52 +0000] [10098] [INFO] Worker exiting (pid: 10098)",
            "[2026-11-30 14:13:52 +0000] [10097] [INFO] Control socket listening at "
            "/root/.gunicorn/gunicorn.ctl",
            "[2026-11-30 14:13:52 +0000] [10097] [ERROR] Worker (pid:10098) exited with code 3.",
            "[2026-11-30 14:13:52 +0000] [10097] [ERROR] Shutting down: Master",
            "[2026-11-30 14:13:52 +0000] [10097] [ERROR] Reason: Worker failed to boot.",
        ],
        "run here: gunicorn -b 127.0.0.1:19886 impdb:app, the module connecting with psycopg2 "
        "2.9.13 to host db (NXDOMAIN) at import (gunicorn 27.0.1; its whole output)",
        "dns_or_network",
        "dependency_name_unresolved",
    ),
    (
        "journal",
        [
            "[2026-11-30 14:16:07 +0000] [10411] [INFO] Starting gunicorn 27.0.1",
            "[2026-11-30 14:16:07 +0000] [10411] [ERROR] Invalid address: ('10.255.255.1', 19888)",
            "[2026-11-30 14:16:07 +0000] [10411] [ERROR] connection to ('10.255.255.1', 19888) "
            "failed: [Errno 99] Cannot assign requested address",
            "[2026-11-30 14:16:08 +0000] [10411] [ERROR] Invalid address: ('10.255.255.1', 19888)",
            "[2026-11-30 14:16:08 +0000] [10411] [ERROR] connection to ('10.255.255.1', 19888) "
            "failed: [Errno 99] Cannot assign requested address",
            "[2026-11-30 14:16:09 +0000] [10411] [ERROR] Invalid address: ('10.255.255.1', 19888)",
            "[2026-11-30 14:16:09 +0000] [10411] [ERROR] connection to ('10.255.255.1', 19888) "
            "failed: [Errno 99] Cannot assign requested address",
            "[2026-11-30 14:16:10 +0000] [10411] [ERROR] Invalid address: ('10.255.255.1', 19888)",
            "[2026-11-30 14:16:10 +0000] [10411] [ERROR] connection to ('10.255.255.1', 19888) "
            "failed: [Errno 99] Cannot assign requested address",
            "[2026-11-30 14:16:11 +0000] [10411] [ERROR] Invalid address: ('10.255.255.1', 19888)",
            "[2026-11-30 14:16:11 +0000] [10411] [ERROR] connection to ('10.255.255.1', 19888) "
            "failed: [Errno 99] Cannot assign requested address",
            "[2026-11-30 14:16:12 +0000] [10411] [ERROR] Can't connect to ('10.255.255.1', 19888)",
        ],
        "run here: gunicorn -b 10.255.255.1:19888 wapp:app, an address the host lacks (gunicorn "
        "27.0.1; its whole output)",
        "upstream_crashloop",
        "bind_address_not_available",
    ),
    (
        "proxy_check",
        [
            " 503 upstream connect error or disconnect/reset before headers. ",
            "     reset reason: remote connection failure, transport failure ",
            "     reason: delayed connect error: Connection refused",
        ],
        "https://github.com/anthropics/claude-code/issues/8803 (Envoy's 503 body as a terminal "
        "wrapped it: newer Envoy prints the errno's text)",
        "upstream_down",
        None,
    ),
    (
        "app_logs",
        [
            "[30-Nov-2026 17:02:07] ERROR: [/tmp/rulesc/fpm/php-fpm.conf:9] unknown entry '# "
            "Some distros may default to a directory that is not writable by user'",
            "[30-Nov-2026 17:02:07] ERROR: failed to load configuration file "
            "'/tmp/rulesc/fpm/php-fpm.conf'",
            '[30-Nov-2026 17:02:07] ERROR: FPM initialization failed',
        ],
        "run here: php-fpm8.2 -F -y php-fpm.conf with a '#' comment line holding '=' (PHP 7+ reads "
        "no '#' comments: 'unknown entry'; its whole output): the quoted comment's words ('not "
        "writable') are the file's, not a finding",
        "upstream_crashloop",
        None,
    ),
    (
        "docker_logs",
        [
            'Traceback (most recent call last):',
            '  File "<string>", line 3, in <module>',
            'sqlite3.OperationalError: disk I/O error',
        ],
        "run here: CPython 3.11.7 sqlite3 PRAGMA journal_mode = WAL on a WAL database on a full "
        "64 KiB tmpfs (SQLite 3.40.1, SQLITE_IOERR_SHMSIZE; its whole output): the disk, not a "
        "crash of the app's own",
        "disk_full",
        "sqlite_io_error",
    ),
    (
        "docker_logs",
        [
            'Traceback (most recent call last):',
            '  File "/tmp/rulesc/pool1.py", line 4, in <module>',
            '    conn = pool.getconn(timeout=2.0)',
            '           ^^^^^^^^^^^^^^^^^^^^^^^^^',
            '  File "/tmp/rulesc/py/psycopg_pool/pool.py", line 218, in getconn',
            '    raise PoolTimeout(',
            "psycopg_pool.PoolTimeout: couldn't get a connection after 2.00 sec",
        ],
        "run here: psycopg_pool 3.3.3 ConnectionPool(max_size=1) against PostgreSQL 15, its one "
        "connection held, getconn(timeout=2.0) (CPython 3.11.7; its whole output): the traceback "
        "of a request that waited, not a crash",
        "upstream_timeout",
        "connection_pool_exhausted",
    ),
    (
        "docker_logs",
        [
            "error connecting in 'pool-1': connection failed: connection to server at "
            "\"127.0.0.1\", port 1 failed: Connection refused",
            '\tIs the server running on that host and accepting TCP/IP connections?',
            "error connecting in 'pool-1': connection failed: connection to server at "
            "\"127.0.0.1\", port 1 failed: Connection refused",
            '\tIs the server running on that host and accepting TCP/IP connections?',
            'Traceback (most recent call last):',
            '  File "/tmp/rulesc/pool3.py", line 3, in <module>',
            '    conn = pool.getconn(timeout=2.0)',
            '           ^^^^^^^^^^^^^^^^^^^^^^^^^',
            '  File "/tmp/rulesc/py/psycopg_pool/pool.py", line 218, in getconn',
            '    raise PoolTimeout(',
            "psycopg_pool.PoolTimeout: couldn't get a connection after 2.00 sec",
        ],
        "run here: the same pool pointed at a closed port (psycopg_pool 3.3.3; its whole output): "
        "its own connect errors make the same PoolTimeout a dependency that is down",
        "dependency_down",
        None,
    ),
    (
        "docker_ps",
        [
            "CONTAINER ID   IMAGE                 COMMAND                   CREATED                "
            "  STATUS                              PORTS     NAMES",
            "14532d2444ba   opsbot-test/busybox   \"sh -c 'echo \\\"/app/s…\"   "
            "Less than a second ago   Exited (1) Less than a second ago             rulese-exit1",
        ],
        "run here: docker run busybox sh -c '... exit 1', then docker ps -a (Docker 20.10.24; its "
        "whole output): the program's own failing exit, not a stop",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        [
            "┌────┬────────┬─────────────┬─────────┬─────────┬──────────┬────────┬──────┬────"
            "───────┬──────────┬──────────┬──────────┬──────────┐",
            "│ id │ name   │ namespace   │ version │ mode    │ pid      │ uptime │ ↺    │ sta"
            "tus    │ cpu      │ mem      │ user     │ watching │",
            "├────┼────────┼─────────────┼─────────┼─────────┼──────────┼────────┼──────┼────"
            "───────┼──────────┼──────────┼──────────┼──────────┤",
            "│ 1  │ api    │ default     │ N/A     │ fork    │ 0        │ 0      │ 15   │ err"
            "ored   │ 0%       │ 0b       │ root     │ disabled │",
            "└────┴────────┴─────────────┴─────────┴─────────┴──────────┴────────┴──────┴────"
            "───────┴──────────┴──────────┴──────────┴──────────┘",
        ],
        "run here: pm2 5.4.3 list after pm2 start of an app that throws at start (pm2 gave up "
        "after 15 restarts)",
        "upstream_crashloop",
        None,
    ),
    (
        "app_logs",
        [
            "┌────┬────────┬─────────────┬─────────┬─────────┬──────────┬────────┬──────┬────"
            "───────┬──────────┬──────────┬──────────┬──────────┐",
            "│ id │ name   │ namespace   │ version │ mode    │ pid      │ uptime │ ↺    │ sta"
            "tus    │ cpu      │ mem      │ user     │ watching │",
            "├────┼────────┼─────────────┼─────────┼─────────┼──────────┼────────┼──────┼────"
            "───────┼──────────┼──────────┼──────────┼──────────┤",
            "│ 0  │ web    │ default     │ N/A     │ fork    │ 0        │ 0      │ 0    │ sto"
            "pped   │ 0%       │ 0b       │ root     │ disabled │",
            "└────┴────────┴─────────────┴─────────┴─────────┴──────────┴────────┴──────┴────"
            "───────┴──────────┴──────────┴──────────┴──────────┘",
        ],
        "run here: pm2 5.4.3 list after pm2 stop web",
        "upstream_down",
        None,
    ),
    (
        "systemctl_status",
        [
            "× postgresql.service - PostgreSQL database server",
            "     Loaded: loaded (/usr/lib/systemd/system/postgresql.service; enabled; preset: "
            "disabled)",
            "    Drop-In: /usr/lib/systemd/system/service.d",
            "             └─10-timeout-abort.conf",
            "     Active: failed (Result: exit-code) since Thu 2023-08-24 20:33:29 IST; 4min 42s "
            "ago",
            "    Process: 5207 ExecStartPre=/usr/libexec/postgresql-check-db-dir postgresql "
            "(code=exited, status=0/SUCCESS)",
            "    Process: 5209 ExecStart=/usr/bin/postmaster -D ${PGDATA} (code=exited, "
            "status=1/FAILURE)",
            "   Main PID: 5209 (code=exited, status=1/FAILURE)",
            "        CPU: 22ms",
        ],
        "https://github.com/porsager/postgres/issues/666 (systemctl status postgresql.service on "
        "Fedora 38: the database's own unit failed, not the backend's)",
        "dependency_down",
        "database_failed_to_start",
    ),
    (
        "docker_ps",
        [
            "CONTAINER ID   IMAGE                 COMMAND       CREATED                  STATUS    "
            "PORTS     NAMES",
            "d5fc8e826aa9   opsbot-test/busybox   \"sleep 100\"   Less than a second ago   "
            "Created             rulese-created",
        ],
        "run here: docker create, then docker ps -a (Docker 20.10.24; its whole output): created "
        "and never started",
        "upstream_down",
        None,
    ),
    # the MongoDB Node.js driver gives a connect callback no client when the connect fails; an app
    # that calls client.db() anyway throws through the driver's connectCallback
    (
        "docker_logs",
        [
            "/tmp/rules10/m3.1.13/node_modules/mongodb/lib/operations/mongo_client_ops.js:474",
            "      throw err;",
            "      ^",
            "",
            "TypeError: Cannot read properties of null (reading 'db')",
            "    at /tmp/rules10/m3.1.13/app.js:4:21",
            "    at /tmp/rules10/m3.1.13/node_modules/mongodb/lib/utils.js:415:14",
            "    at executeCallback (/tmp/rules10/m3.1.13/node_modules/mongodb/lib"
            "/utils.js:404:25)",
            "    at /tmp/rules10/m3.1.13/node_modules/mongodb/lib/operations"
            "/mongo_client_ops.js:293:21",
            "    at connectCallback (/tmp/rules10/m3.1.13/node_modules/mongodb/lib"
            "/operations/mongo_client_ops.js:249:5)",
        ],
        "run here: node app.js (MongoClient.connect to a port where nothing listens, then "
        "client.db() in the callback without checking err), mongodb 3.1.13, Node.js 20.20.2",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        [
            "/tmp/rules10/mongo/node_modules/mongodb/lib/utils.js:698",
            "          throw error;",
            "          ^",
            "",
            "TypeError: Cannot read properties of undefined (reading 'db')",
            "    at /tmp/rules10/mongo/app.js:4:21",
            "    at /tmp/rules10/mongo/node_modules/mongodb/lib/utils.js:695:9",
            "    at /tmp/rules10/mongo/node_modules/mongodb/lib/mongo_client.js:261:23",
            "    at connectCallback (/tmp/rules10/mongo/node_modules/mongodb/lib/operations"
            "/connect.js:366:5)",
        ],
        "run here: node app.js (MongoClient.connect to a port where nothing listens, then "
        "client.db() in the callback without checking err), mongodb 3.6.12, Node.js 20.20.2",
        "dependency_down",
        None,
    ),
    (
        "docker_logs",
        [
            "/tmp/rules10/m4.1.0/node_modules/mongodb/lib/utils.js:524",
            "                    throw error;",
            "                    ^",
            "",
            "TypeError: Cannot read properties of undefined (reading 'db')",
            "    at /tmp/rules10/m4.1.0/app.js:4:21",
            "    at /tmp/rules10/m4.1.0/node_modules/mongodb/lib/utils.js:520:17",
            "    at /tmp/rules10/m4.1.0/node_modules/mongodb/lib/mongo_client.js:129:28",
            "    at connectCallback (/tmp/rules10/m4.1.0/node_modules/mongodb/lib/operations"
            "/connect.js:37:9)",
        ],
        "run here: node app.js (MongoClient.connect to a port where nothing listens, then "
        "client.db() in the callback without checking err), mongodb 4.1.0, Node.js 20.20.2",
        "dependency_down",
        None,
    ),
]


def first_named(rules, evidence: dict[str, str], label: str, detail: str | None,
                seen: str) -> Cause:
    """The first cause the evidence names, asserted to be `label` with `detail`."""
    causes = diagnose(rules, evidence)
    assert causes, f"nothing named for {seen}"
    assert (causes[0].cause, causes[0].detail) == (label, detail), seen
    return causes[0]


@pytest.mark.parametrize(("step", "lines", "seen", "label", "detail"), OUTPUTS,
                         ids=[f"{row[3]}:{row[1][-1][:40]}" for row in OUTPUTS])
def test_a_programs_whole_output_names_its_cause(rules, step, lines, seen, label, detail):
    first_named(rules, {step: "\n".join(lines) + "\n"}, label, detail, seen)


@pytest.mark.parametrize(("step", "line", "seen", "label", "detail"), CATALOGUE,
                         ids=[f"{row[3]}:{row[1][:48]}" for row in CATALOGUE])
def test_a_programs_own_line_names_its_cause(rules, step, line, seen, label, detail):
    first = first_named(rules, {step: line + "\n"}, label, detail, f"{line!r} ({seen})")
    assert line.rstrip() in first.evidence  # quoted as read: trailing blanks dropped


# Whole outputs captured here (tests/data/captures/*.json: each step's output with the command that
# printed it): the steps taken from a capture (None: all), and the cause (with its detail) that
# must come first.
CAPTURED: list[tuple[str, tuple[str, ...] | None, str, str | None]] = [
    # the client's MISCONF alone: a full disk is the usual cause of Redis's failed background save
    ("redis-misconf-disk-full.json", ("app_logs",), "disk_full", "redis_cannot_persist"),
    ("redis-misconf-permission.json", ("app_logs",), "disk_full", "redis_cannot_persist"),
    # with Redis's own output its save error names the cause, not a dependency that is down
    ("redis-misconf-disk-full.json", None, "disk_full", "redis_cannot_persist"),
    ("redis-misconf-permission.json", None, "permission_denied", "data_dir_not_writable"),
    # EXITED in supervisorctl is why nginx is refused; Permission denied is why it exited
    ("redis-log-not-writable.json", None, "permission_denied", None),
    # but stopped by the operator since, the program is down whatever its output said before
    ("stopped-by-operator-with-permission-line.json", None, "upstream_down", None),
    # a worker killed by the kernel's OOM killer (in a 100 MiB memory cgroup) while nginx waited:
    # the 504 is the symptom, its app server's line or the kernel's says why (either alone)
    ("uwsgi-worker-oom-killed-504.json", ("nginx_error_log", "proxy_check", "app_logs"),
     "oom_killed", "worker_oom_killed"),
    ("uwsgi-worker-oom-killed-504.json", ("nginx_error_log", "proxy_check", "kernel_log"),
     "oom_killed", None),
    ("uwsgi-worker-oom-killed-504.json", None, "oom_killed", "worker_oom_killed"),
    ("gunicorn-worker-oom-killed-504.json", ("nginx_error_log", "proxy_check", "app_logs"),
     "oom_killed", "worker_oom_killed"),
    ("gunicorn-worker-oom-killed-504.json", ("nginx_error_log", "proxy_check", "kernel_log"),
     "oom_killed", None),
    ("gunicorn-worker-oom-killed-504.json", None, "oom_killed", "worker_oom_killed"),
    # killed at once: nginx sees the connection closed
    ("uwsgi-worker-oom-killed-502.json", None, "oom_killed", "worker_oom_killed"),
    ("gunicorn-worker-oom-killed-502.json", None, "oom_killed", "worker_oom_killed"),
    ("jvm-heap-out-of-memory-502.json", None, "oom_killed", "java_heap_exhausted"),
    # the same SIGKILL sent by uWSGI's own harakiri is the timeout's, not memory's
    ("uwsgi-harakiri-502.json", None, "upstream_timeout", "uwsgi_harakiri"),
    # the backend's own fatal start-up line explains why nginx cannot resolve its name; the name
    # alone stays a name that does not resolve
    ("gunicorn-19-python311-getargspec.json", None, "upstream_crashloop", None),
    ("gunicorn-19-python311-getargspec.json", ("nginx_config_test",), "dns_or_network", None),
    # EACCES from runc's exec, EPERM from chown/chgrp: the OS refused, not a crash of its own
    ("runc-entrypoint-not-executable.json", None, "permission_denied", None),
    ("eperm-ownership-change.json", ("docker_logs",), "permission_denied",
     "ownership_change_not_permitted"),
    ("eperm-ownership-change.json", ("journal",), "permission_denied",
     "ownership_change_not_permitted"),
    ("eperm-runtimes.json", ("docker_logs",), "permission_denied",
     "ownership_change_not_permitted"),
    ("eperm-runtimes.json", ("journal",), "permission_denied", "ownership_change_not_permitted"),
    ("eperm-runtimes.json", ("app_logs",), "permission_denied", None),
    # PHP's short write on a full disk (its errno=28 notice and the warning)
    ("php-short-write-disk-full.json", None, "disk_full", None),
    # the database ended the session under the client (MariaDB killed between two queries)
    ("pymysql-server-killed.json", None, "dependency_down", None),
    # a command of the entrypoint killed by SIGILL, as bash reports it
    ("bash-child-sigill.json", None, "upstream_crashloop", "cpu_lacks_instructions"),
    # the app server's own refusals: a stale pid file, no plugin for its language, a port NaN
    ("gunicorn-stale-pid-file.json", None, "upstream_crashloop", "stale_pid_file"),
    ("uwsgi-no-request-plugin.json", None, "upstream_crashloop", "app_fails_to_load"),
    ("node-bad-port.json", None, "upstream_crashloop", "exit_config_error"),
    # php-fpm refuses a pool run as root: the finer cause, not only FPM initialization failed
    ("php-fpm-pool-as-root.json", None, "upstream_crashloop", "php_fpm_pool_runs_as_root"),
    # the database lacks an extension the backend asks for
    ("postgres-extension-not-available.json", None, "dependency_down",
     "database_extension_missing"),
    # a program the kernel kills again and again in its memory cgroup, restarted by supervisord:
    # the kernel's kill and supervisord's SIGKILL together (the restarts are the consequence)
    ("supervisord-program-oom-killed.json", None, "oom_killed", None),
    ("supervisord-program-oom-killed.json", ("journal", "kernel_log"), "oom_killed", None),
    # supervisord's log alone: the same SIGKILL death on every start is the OOM killer's
    ("supervisord-program-oom-killed.json", ("journal", "supervisorctl_status"), "oom_killed",
     None),
]


@pytest.mark.parametrize(("name", "steps", "label", "detail"), CAPTURED,
                         ids=[f"{row[2]}:{row[0]}:{'+'.join(row[1] or ('all',))}"
                              for row in CAPTURED])
def test_a_captured_output_names_its_cause(rules, name, steps, label, detail):
    capture = json.loads((CAPTURES / name).read_text(encoding="utf-8"))
    evidence = {step: text for step, text in capture["evidence"].items()
                if steps is None or step in steps}
    causes = diagnose(rules, evidence, capture.get("params") or {})
    assert causes, name
    assert (causes[0].cause, causes[0].detail) == (label, detail), (name, causes[:2])


def test_a_unit_killed_by_a_sigkill_systemd_did_not_send_is_named_oom_killed(rules):
    """systemd's main process killed by SIGKILL, the unit failed, and no stop timeout of
    systemd's own: the kernel's OOM killer is the usual sender (before systemd 243, or on cgroup
    v1, systemd says 'signal', not 'oom-kill'). The two lines are verbatim from
    https://github.com/docker/for-linux/issues/1001 (a host out of memory)."""
    journal = ("May 15 23:09:30 ubuntu-s-1vcpu-2gb-ams3-01 systemd[1]: "
               "networkd-dispatcher.service: Main process exited, code=killed, status=9/KILL\n"
               "May 15 23:09:30 ubuntu-s-1vcpu-2gb-ams3-01 systemd[1]: "
               "networkd-dispatcher.service: Failed with result 'signal'.\n")
    first = diagnose(rules, {"journal": journal})[0]
    assert first.cause == "oom_killed"
    assert first.confidence >= rules.threshold  # named, not a candidate


def test_sqlites_disk_io_error_is_a_full_disk_unless_df_shows_room(rules):
    """SQLite's "disk I/O error" on a WAL database is what a full filesystem gives it (run here:
    sqlite3 3.40.1 on a full 64 KiB tmpfs): a candidate disk_full; df run on that filesystem
    names it; df showing room silences the rule (df -h run here, GNU coreutils 9.1)."""
    line = "Error: in prepare, disk I/O error (10)\n"
    full = ("Filesystem      Size  Used Avail Use% Mounted on\n"
            "tmpfs            64K   64K     0 100% /tmp/rulesc/full\n")
    room = ("Filesystem      Size  Used Avail Use% Mounted on\n"
            "tmpfs            24G   79M   24G   1% /dev/shm\n")
    alone = diagnose(rules, {"app_logs": line})[0]
    assert (alone.cause, alone.detail) == ("disk_full", "sqlite_io_error")
    assert alone.confidence < rules.threshold  # a candidate: a failing disk says it too
    with_full = diagnose(rules, {"app_logs": line, "disk": full})[0]
    assert with_full.cause == "disk_full" and with_full.confidence >= rules.threshold
    with_room = diagnose(rules, {"app_logs": line, "disk": room})
    # the rule is silent (past incidents may still compare the df output with theirs)
    assert all(c.detail != "sqlite_io_error" and c.confidence < rules.threshold
               for c in with_room), with_room


def test_a_du_listing_makes_a_full_disk_a_candidate_not_a_finding(rules):
    """du's listing says where the space went, not that the disk is full: disk_full comes first,
    under the threshold (du 9.1 run here: tests/data/captures/du-listing.json)."""
    capture = json.loads((CAPTURES / "du-listing.json").read_text(encoding="utf-8"))
    first = diagnose(rules, capture["evidence"])[0]
    assert first.cause == "disk_full" and first.detail is None
    assert first.confidence < rules.threshold


# The backend says where it listens (its own start banner) and nginx, in the same run, is refused on
# another port or on an address other than that loopback: the proxy points elsewhere (issue 9).
# Each pair was printed by one real run here: the backend started in a network namespace of its
# own (lo, with 198.51.100.10 added), then nginx proxying to the address shown, one request.
BANNERS: list[tuple[str, str, str, str, str]] = [
    (
        "Starting development server at http://127.0.0.1:19801/",
        "2026/11/30 13:09:46 [error] 29214#29214: *1 connect() failed (111: Connection refused) "
        'while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        'upstream: "http://127.0.0.1:19802/", host: "127.0.0.1:19880"',
        "run here: Django 5.2.19: python manage.py runserver 127.0.0.1:19801, behind nginx 1.22.1 "
        "with proxy_pass http://127.0.0.1:19802 (one network namespace, 198.51.100.10 on lo)",
        "wrong_proxy_config",
        "port_mismatch",
    ),
    (
        "INFO:waitress:Serving on http://127.0.0.1:19801",
        "2026/11/30 13:10:04 [error] 30883#30883: *1 connect() failed (111: Connection refused) "
        'while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        'upstream: "http://198.51.100.10:19801/", host: "127.0.0.1:19880"',
        "run here: waitress 3.0.2: waitress-serve --listen=127.0.0.1:19801 app:application, "
        "behind nginx 1.22.1 with proxy_pass http://198.51.100.10:19801 (one network namespace, "
        "198.51.100.10 on lo)",
        "wrong_proxy_config",
        "backend_listens_on_loopback",
    ),
    (
        "2026-11-30 13:10:06,184 INFO     Listening on TCP address 127.0.0.1:19801",
        "2026/11/30 13:10:09 [error] 32540#32540: *1 connect() failed (111: Connection refused) "
        'while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        'upstream: "http://127.0.0.1:19802/", host: "127.0.0.1:19880"',
        "run here: Daphne 4.2.3: daphne -b 127.0.0.1 -p 19801 app:asgi, behind nginx 1.22.1 with "
        "proxy_pass http://127.0.0.1:19802 (one network namespace, 198.51.100.10 on lo)",
        "wrong_proxy_config",
        "port_mismatch",
    ),
    (
        "[Mon Nov 30 13:10:20 2026] PHP 8.2.36 Development Server (http://127.0.0.1:19801) started",
        "2026/11/30 13:10:24 [error] 345#345: *1 connect() failed (111: Connection refused) while "
        'connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        'upstream: "http://198.51.100.10:19801/", host: "127.0.0.1:19880"',
        "run here: PHP 8.2.36: php -S 127.0.0.1:19801, behind nginx 1.22.1 with proxy_pass "
        "http://198.51.100.10:19801 (one network namespace, 198.51.100.10 on lo)",
        "wrong_proxy_config",
        "backend_listens_on_loopback",
    ),
    (
        "Serving HTTP on 127.0.0.1 port 19801 (http://127.0.0.1:19801/) ...",
        "2026/11/30 13:10:29 [error] 703#703: *1 connect() failed (111: Connection refused) while "
        'connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        'upstream: "http://127.0.0.1:19802/", host: "127.0.0.1:19880"',
        "run here: CPython 3.11.7: python3 -m http.server 19801 --bind 127.0.0.1, behind nginx "
        "1.22.1 with proxy_pass http://127.0.0.1:19802 (one network namespace, 198.51.100.10 on "
        "lo)",
        "wrong_proxy_config",
        "port_mismatch",
    ),
    (
        "30-Nov-2026 13:11:46.923 INFO [main] org.apache.coyote.AbstractProtocol.start Starting "
        'ProtocolHandler ["http-nio-127.0.0.1-19801"]',
        "2026/11/30 13:11:54 [error] 8477#8477: *1 connect() failed (111: Connection refused) "
        'while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        'upstream: "http://198.51.100.10:19801/", host: "127.0.0.1:19880"',
        "run here: Tomcat 10.1.60 (Debian tomcat10), its Connector at address=127.0.0.1 "
        "port=19801, behind nginx 1.22.1 with proxy_pass http://198.51.100.10:19801 (one network "
        "namespace, 198.51.100.10 on lo)",
        "wrong_proxy_config",
        "backend_listens_on_loopback",
    ),
    (
        "30-Nov-2026 13:12:03.191 INFO [main] org.apache.coyote.AbstractProtocol.start Starting "
        'ProtocolHandler ["http-nio-127.0.0.1-19801"]',
        "2026/11/30 13:12:09 [error] 8843#8843: *1 connect() failed (111: Connection refused) "
        'while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        'upstream: "http://127.0.0.1:19802/", host: "127.0.0.1:19880"',
        "run here: Tomcat 10.1.60 (Debian tomcat10), its Connector at address=127.0.0.1 "
        "port=19801, behind nginx 1.22.1 with proxy_pass http://127.0.0.1:19802 (one network "
        "namespace, 198.51.100.10 on lo)",
        "wrong_proxy_config",
        "port_mismatch",
    ),
]


@pytest.mark.parametrize(("banner", "refused", "seen", "label", "detail"), BANNERS,
                         ids=[f"{row[4]}:{row[0][:40]}" for row in BANNERS])
def test_a_backends_banner_and_nginx_refused_elsewhere_name_the_proxy(rules, banner, refused, seen,
                                                                       label, detail):
    first = first_named(rules, {"app_logs": banner + "\n", "nginx_error_log": refused + "\n"},
                        label, detail, seen)
    assert banner in first.evidence


def test_http_to_php_fpm_named_by_what_listens_there(rules):
    """nginx's proxy_pass http:// to the port where ss -ltnp shows php-fpm (both printed here by
    one run: php-fpm 8.2.36 on 127.0.0.1:9000, nginx 1.22.1, ss from iproute2 6.1.0)."""
    refused = ('2026/11/30 13:17:29 [error] 27747#27747: *1 recv() failed (104: Connection reset '
               'by peer) while reading response header from upstream, client: 127.0.0.1, server: , '
               'request: "GET /index.php HTTP/1.1", upstream: "http://127.0.0.1:9000/index.php", '
               'host: "127.0.0.1:19880"')
    ss = ('State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n'
          'LISTEN 0      4096       127.0.0.1:9000      0.0.0.0:*    '
          'users:(("php-fpm8.2",pid=27164,fd=11),("php-fpm8.2",pid=27162,fd=8))\n')
    causes = diagnose(rules, {"nginx_error_log": refused + "\n", "listening_ports": ss})
    assert (causes[0].cause, causes[0].detail) == ("wrong_proxy_config", "http_to_fastcgi_port")
    alone = diagnose(rules, {"nginx_error_log": refused + "\n"})
    assert causes[0].confidence > alone[0].confidence  # what listens there adds to the port alone


CAPTURES = ROOT / "tests" / "data" / "captures"


def test_uwsgi_pass_to_an_http_socket_is_the_proxys_protocol_not_a_slow_backend(rules):
    """nginx's uwsgi_pass to uWSGI's --http-socket times out like a slow backend; uWSGI's own
    log (its HTTP parser left mid-request) outweighs the timeout (one real run, whole outputs)."""
    capture = json.loads((CAPTURES / "uwsgi-pass-to-http-socket.json").read_text(encoding="utf-8"))
    evidence = capture["evidence"]
    first = first_named(rules, evidence, "wrong_proxy_config", "uwsgi_pass_to_http_socket",
                        capture["what"])
    assert "uwsgi_proto_http_parser() -> client closed connection" in first.evidence
    named = {c.cause: c.confidence for c in diagnose(rules, evidence)}
    assert named.get("upstream_timeout", 0) < 0.5  # the timeout is the symptom here
    proxy_only = diagnose(rules, {k: v for k, v in evidence.items() if k != "app_logs"})
    assert proxy_only[0].cause == "upstream_timeout"  # nginx alone cannot tell them apart


def test_nginx_dialing_an_address_its_name_no_longer_resolves_to_is_a_stale_address(rules):
    """nginx kept the address it resolved (resolver valid=300s) after the backend moved, and the
    name's answer (nslookup) names another one; when the answer is still the dialed address, the
    backend is down there (both printed by one real run: tests/data/captures)."""
    capture = json.loads((CAPTURES / "nginx-cached-address-after-backend-moved.json")
                         .read_text(encoding="utf-8"))
    evidence, params = capture["evidence"], capture["params"]
    causes = diagnose(rules, evidence, params)
    assert (causes[0].cause, causes[0].detail) == ("dns_or_network", "stale_upstream_address")
    assert causes[0].confidence >= 0.5
    assert not any(c.cause == "upstream_down" and c.confidence >= 0.5 for c in causes)
    without_dns = diagnose(rules, {k: v for k, v in evidence.items() if k != "dns"}, params)
    assert without_dns[0].cause == "upstream_down"  # a lone refusal says no more
    same = diagnose(rules, capture["same_address"]["evidence"], params)
    assert same[0].cause == "upstream_down"
    assert all(c.detail != "stale_upstream_address" for c in same)
    literal = diagnose(rules, capture["literal_loopback"]["evidence"], params)
    assert all(c.detail != "stale_upstream_address" for c in literal)  # 127.0.0.1 by hand


def test_what_listens_names_a_backend_bound_elsewhere_than_nginx_dials(rules):
    """ss -ltnp shows the refused port bound on loopback only while nginx dials the host's own
    address (one real run: tests/data/captures), or on 127.0.0.2 while nginx dials 127.0.0.1 (the
    lab capture): the proxy and the backend disagree on the address; nginx's line alone cannot
    say."""
    capture = json.loads((CAPTURES / "backend-on-loopback-nginx-dials-host-address.json")
                         .read_text(encoding="utf-8"))
    evidence, params = capture["evidence"], capture["params"]
    first = first_named(rules, evidence, "wrong_proxy_config", "backend_listens_on_loopback",
                        capture["what"])
    assert any('upstream: "http://192.0.2.2:28094/' in line for line in first.evidence)
    alone = diagnose(rules, {k: v for k, v in evidence.items() if k != "listening_ports"}, params)
    assert alone[0].cause == "upstream_down"
    lab = json.loads((EVIDENCE / "wrong_proxy_config--backend-bound-127-0-0-2.json")
                     .read_text(encoding="utf-8"))
    causes = diagnose(rules, lab["evidence"], lab["params"])
    assert (causes[0].cause, causes[0].detail) == ("wrong_proxy_config",
                                                   "backend_listens_on_other_address")


def test_go_and_apache_refused_where_the_backend_is_not_bound_name_the_address(rules):
    """The same disagreement in the words of a Go client (Traefik and Caddy dial with Go's net)
    and of Apache httpd's mod_proxy, against what ss shows (one real run each:
    tests/data/captures)."""
    capture = json.loads((CAPTURES / "backend-on-loopback-go-and-apache-dial-host-address.json")
                         .read_text(encoding="utf-8"))
    ss = capture["evidence"]["listening_ports"]
    for step, key in (("docker_logs", "go"), ("nginx_error_log", "apache")):
        refused = capture["evidence"][key]
        first_named(rules, {step: refused, "listening_ports": ss}, "wrong_proxy_config",
                    "backend_listens_on_loopback", f"{key} ({capture['programs']})")
        assert diagnose(rules, {step: refused})[0].cause == "upstream_down"  # alone: refused


def test_https_to_a_plain_port_that_waits_is_tls_not_a_slow_backend(rules):
    """proxy_pass https:// to uWSGI's http-socket times out in the handshake (a 504, as a hung
    backend would); the port answering plain HTTP, or uWSGI's own line, says it is TLS to a plain
    port; a plain server that answers says so in its log (one real run: tests/data/captures)."""
    capture = json.loads((CAPTURES / "https-to-plain-http-ports.json")
                         .read_text(encoding="utf-8"))
    uwsgi, params = capture["uwsgi"], capture["params"]
    for steps in (("nginx_error_log", "healthcheck"), ("nginx_error_log", "app_logs"),
                  tuple(uwsgi)):
        causes = diagnose(rules, {k: uwsgi[k] for k in steps}, params)
        assert (causes[0].cause, causes[0].detail) == ("tls_mismatch", "https_to_plain_port"), steps
        assert all(c.cause != "upstream_timeout" or c.confidence < 0.5 for c in causes), steps
    alone = diagnose(rules, {k: uwsgi[k] for k in ("nginx_error_log", "proxy_check")}, params)
    assert alone[0].cause == "upstream_timeout"  # a hung TLS backend says the same
    first_named(rules, {"app_logs": capture["http_server"]["app_logs"]}, "tls_mismatch",
                "https_to_plain_port", capture["programs"])


def test_php_fpm_dropping_the_proxys_address_is_the_proxys_path_not_a_down_backend(rules):
    """php-fpm's listen.allowed_clients without nginx's address: nginx sees a reset, php-fpm says
    whom it dropped (one real run, whole outputs: tests/data/captures)."""
    capture = json.loads((CAPTURES / "php-fpm-allowed-clients-excludes-nginx.json")
                         .read_text(encoding="utf-8"))
    first = first_named(rules, capture["evidence"], "wrong_proxy_config",
                        "proxy_not_in_allowed_clients", capture["what"])
    assert any("Connection disallowed: IP address '127.0.0.1'" in line for line in first.evidence)
    # nginx's reset alone is a php-fpm child's death as well: a candidate whose advice names both
    alone = diagnose(rules, {"nginx_error_log": capture["evidence"]["nginx_error_log"]})
    assert (alone[0].detail, alone[0].confidence < rules.threshold) == \
        ("php_worker_died_on_request", True)
    assert "Connection disallowed" in alone[0].remediation[0]


def test_haproxy_says_why_its_health_check_marked_the_server_down(rules):
    """HAProxy's 503 and "no server available" read as a down backend; its own check's reason says
    more: a 4xx on the check path is the proxy's configuration, a Layer4 timeout an address that
    leads nowhere (one real run each: tests/data/captures)."""
    capture = json.loads((CAPTURES / "haproxy-health-check-marks-server-down.json")
                         .read_text(encoding="utf-8"))
    first_named(rules, capture["layer7"], "wrong_proxy_config", "proxy_health_check_path",
                capture["what"])
    first_named(rules, capture["layer4"], "dns_or_network", None, capture["what"])
    for part in ("layer7", "layer4"):
        refused = {"proxy_check": capture[part]["proxy_check"]}
        assert diagnose(rules, refused)[0].cause == "upstream_down"  # the 503 page alone


def test_tomcat_behind_nginx_http_to_ajp_and_a_java_socket_on_loopback(rules):
    """Tomcat's AJP connector names the HTTP it was sent by its first two bytes; Java's listening
    socket on 127.0.0.1 shows in ss as [::ffff:127.0.0.1] (one real run: tests/data/captures)."""
    capture = json.loads((CAPTURES / "tomcat-ajp-connector-behind-nginx.json")
                         .read_text(encoding="utf-8"))
    first = first_named(rules, capture["ajp"], "wrong_proxy_config", "http_to_non_http_port",
                        capture["what"])
    assert any("signature [18245]" in line for line in first.evidence)
    first_named(rules, capture["loopback"], "wrong_proxy_config", "backend_listens_on_loopback",
                capture["what"])


def test_nginx_proxying_http_to_a_postgresql_port(rules):
    """PostgreSQL drops nginx's HTTP as an invalid startup packet and nginx sees the connection
    closed; the database's line and nginx's together name the wrong port (one real run:
    tests/data/captures)."""
    capture = json.loads((CAPTURES / "http-to-postgresql-port.json").read_text(encoding="utf-8"))
    first = first_named(rules, capture["evidence"], "wrong_proxy_config", "http_to_non_http_port",
                        capture["what"])
    assert any("prematurely closed" in line for line in first.evidence)
    database_alone = {"docker_logs": capture["evidence"]["docker_logs"]}
    assert all(c.detail != "http_to_non_http_port" for c in diagnose(rules, database_alone))


def test_nginx_proxying_http_to_a_mariadb_port(rules):
    """MariaDB greets first, nginx finds no HTTP header and MariaDB logs a client that left
    unauthenticated: together the wrong port (one real run: tests/data/captures)."""
    capture = json.loads((CAPTURES / "http-to-mariadb-port.json").read_text(encoding="utf-8"))
    first_named(rules, capture["evidence"], "wrong_proxy_config", "http_to_non_http_port",
                capture["what"])
    database_alone = {"docker_logs": capture["evidence"]["docker_logs"]}
    assert all(c.detail != "http_to_non_http_port" for c in diagnose(rules, database_alone))


def catalogue_line(words: str) -> tuple[str, str]:
    """The step and line of the CATALOGUE row whose line holds `words`."""
    return next((step, line) for step, line, _seen, _label, _detail in CATALOGUE if words in line)


def test_the_address_a_proxy_is_refused_on_is_a_candidate_the_backends_side_overrules(rules):
    """Refused by a live address of a container network (nginx: a stale address; Caddy: a
    backend listening elsewhere), FastCGI refused on a network address, nginx-proxy's upstream
    marked down: each a candidate under the threshold, not a down backend; a stopped backend's
    own evidence (a lab capture's docker ps) or nginx's own failed connects overrule them."""
    stopped = json.loads((EVIDENCE / "upstream_down--docker-stopped-exit-137.json")
                         .read_text(encoding="utf-8"))["evidence"]["docker_ps"]
    for words in ('"http://172.29.0.3:28000/"', '"fastcgi://172.29.0.3:9000"',
                  '"msg":"dial tcp 172.29.0.3:28000'):
        step, line = catalogue_line(words)
        alone = diagnose(rules, {step: line + "\n"})
        assert alone[0].cause != "upstream_down" and alone[0].confidence < rules.threshold, words
        assert diagnose(rules, {step: line + "\n", "docker_ps": stopped})[0].cause == \
            "upstream_down", words
    step, line = catalogue_line("no live upstreams")
    lab = json.loads((EVIDENCE / "upstream_down--no-live-upstreams.json")
                     .read_text(encoding="utf-8"))["evidence"]["nginx_error_log"]
    refused = next(row for row in lab.splitlines() if "(111: Connection refused)" in row)
    causes = diagnose(rules, {step: refused + "\n" + line + "\n"})
    assert all(c.detail != "generated_upstream_marked_down" for c in causes)


def corpus_urls() -> set[str]:
    """The source URLs of every corpus case (both parts: a thread that is a case is not a test)."""
    urls = set()
    for path in EVIDENCE.rglob("*.json"):
        try:
            case = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(case, dict) and isinstance(case.get("source_url"), str):
            urls.add(case["source_url"].rstrip("/"))
    return urls


def test_every_line_names_where_it_was_seen_and_no_thread_is_a_corpus_case():
    urls = corpus_urls()
    rows = [(seen, line) for _step, line, seen, _label, _detail in CATALOGUE]
    rows += [(seen, lines[-1]) for _step, lines, seen, _label, _detail in OUTPUTS]
    for seen, line in rows:
        assert seen.startswith(("run here: ", "https://")), line
        if seen.startswith("https://"):
            assert seen.split()[0].rstrip("/") not in urls, seen
