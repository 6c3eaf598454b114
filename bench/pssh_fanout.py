"""One command on many hosts with parallel-ssh (run by the benchmark with the tools' venv).

    python pssh_fanout.py HOSTS_JSON USER KEY COMMAND

HOSTS_JSON is a list of [address, port]. Prints how many hosts answered with exit status 0.
"""

from __future__ import annotations

import json
import sys

from pssh.clients import ParallelSSHClient  # type: ignore[import-not-found]
from pssh.config import HostConfig  # type: ignore[import-not-found]


def main() -> int:
    hosts_json, user, key, command = sys.argv[1:5]
    pairs = json.loads(hosts_json)
    client = ParallelSSHClient([a for a, _ in pairs], user=user, pkey=key,
                               host_config=[HostConfig(port=p) for _, p in pairs],
                               pool_size=len(pairs), timeout=20)
    output = client.run_command(command, stop_on_errors=False)
    client.join(output)
    ok = 0
    for host_out in output:
        lines = list(host_out.stdout or ())
        if host_out.exit_code == 0 and lines:
            ok += 1
    print(json.dumps({"ok": ok, "hosts": len(pairs)}))
    return 0 if ok == len(pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
