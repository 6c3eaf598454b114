# Shared set-up for scripts/start and scripts/test (sourced, not run). Debian 12 or newer.
# Installs only what is missing, so a second run takes seconds.

RUN_PACKAGES=(python3 python3-venv python3-pip openssh-client curl)
TEST_PACKAGES=(openssh-server nginx supervisor prometheus prometheus-alertmanager
               prometheus-blackbox-exporter docker.io busybox-static redis-server sqlite3 postgresql
               iproute2 procps s6 zsh)  # s6-log, zsh: the envelope and batch-shell tests

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
  local wanted=("${RUN_PACKAGES[@]}")
  [ "${1:-}" = test ] && wanted+=("${TEST_PACKAGES[@]}")
  local missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  # python3/venv may come from elsewhere (pyenv); only ask apt when a tool is really absent
  if command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
    local keep=()
    for pkg in "${missing[@]}"; do
      case "$pkg" in python3|python3-venv|python3-pip) ;; *) keep+=("$pkg") ;; esac
    done
    missing=("${keep[@]}")
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local extra="${1:-}"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  local stamp=".venv/.installed${extra:+-$extra}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    local log=.venv/pip-install.log target=.
    [ -n "$extra" ] && target=".[$extra]"
    echo "installing opsbot${extra:+ with its $extra dependencies} into .venv" >&2
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e "$target"; } >"$log" 2>&1; then
      cat "$log" >&2
      return 1
    fi
    touch "$stamp"
  fi
}

# start_daemon LOG COMMAND...: COMMAND in a session of its own, its output appended to LOG, and
# none of this shell's other descriptors (a caller's lock taken with flock, a CI runner's pipe)
# held open for as long as it runs; prints its pid
start_daemon() {
  local log=$1
  shift
  as_root python3 -c 'import subprocess, sys
with open(sys.argv[1], "ab") as log:
    print(subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT, close_fds=True,
                           start_new_session=True).pid)' "$log" "$@"
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  echo "starting dockerd" >&2
  start_daemon /tmp/opsbot-dockerd.log dockerd >/dev/null
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "dockerd did not start; see /tmp/opsbot-dockerd.log" >&2
  tail -n 20 /tmp/opsbot-dockerd.log >&2 || true
  return 1
}
