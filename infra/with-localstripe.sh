#!/usr/bin/env bash
# Run a command against a private localstripe (a stateful Stripe API emulator) on loopback:
# infra/with-localstripe.sh CMD ARGS...
#
# Starts localstripe on a free 127.0.0.1 port, waits until it answers, exports
#   HOOKLINE_LOCALSTRIPE_URL=http://127.0.0.1:PORT
# runs the command, and stops localstripe however the command ends. Exits with the command's
# status. Chains with infra/with-moto.sh: infra/with-moto.sh infra/with-localstripe.sh cargo test
#
# localstripe comes from the venv at $HOOKLINE_VENV (default ~/.cache/hookline/venv). Its state
# lives in memory only: its own `localstripe` command would pickle the whole store to the fixed
# path /tmp/localstripe.pickle on every write (shared by every run on the machine) and listen on
# every interface, so this starts its aiohttp app directly instead.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CMD [ARGS...]   e.g. $0 cargo test -p hookline-e2e --test stripe_client" >&2
  exit 2
fi

venv="${HOOKLINE_VENV:-$HOME/.cache/hookline/venv}"
python="$venv/bin/python3"
if [[ ! -x "$python" ]] || ! "$python" -c 'import localstripe' 2>/dev/null; then
  cat >&2 <<EOT
with-localstripe: no localstripe in the venv at $venv
Install it once (Python 3.9+):
  python3 -m venv "$venv"
  "$venv/bin/pip" install localstripe
or point HOOKLINE_VENV at a venv that has it (infra/test.sh installs it).
EOT
  exit 127
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/hookline-localstripe.XXXXXX")"
log="$workdir/localstripe.log"
ls_pid=""

cleanup() {
  local status=$?
  if [[ -n "$ls_pid" ]] && kill -0 "$ls_pid" 2>/dev/null; then
    kill "$ls_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$ls_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$ls_pid" 2>/dev/null || true
    wait "$ls_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -s "$log" ]]; then
    echo "with-localstripe: exit status $status; localstripe's log is kept at $log" >&2
  else
    rm -rf "$workdir"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback port (a rare race with another process is possible; localstripe then fails
# to start, loudly).
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
endpoint="http://127.0.0.1:$port"

# localstripe's app, in memory, on loopback only (see the header).
"$python" -c '
import logging, sys
from aiohttp import web
from localstripe import resources, server
resources.Store.dump_to_disk = lambda self: None
logger = logging.getLogger("aiohttp.access")
logger.setLevel(logging.INFO)
logger.addHandler(logging.StreamHandler())
web.run_app(server.app, host="127.0.0.1", port=int(sys.argv[1]), access_log=logger, print=None)
' "$port" >"$log" 2>&1 &
ls_pid=$!

ready=""
for _ in $(seq 1 200); do
  if ! kill -0 "$ls_pid" 2>/dev/null; then
    echo "with-localstripe: localstripe exited at start; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  # Any HTTP answer means it is up (an unauthenticated call answers 401).
  if "$python" - "$endpoint" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/v1/customers", timeout=1).read()
except urllib.error.HTTPError:
    pass
PY
  then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ -z "$ready" ]]; then
  echo "with-localstripe: localstripe did not answer on $endpoint within 20 s; its log:" >&2
  cat "$log" >&2
  exit 1
fi

export HOOKLINE_LOCALSTRIPE_URL="$endpoint"

echo "with-localstripe: localstripe on $endpoint" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
