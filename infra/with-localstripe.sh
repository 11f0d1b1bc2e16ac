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

# shellcheck source=infra/server-lib.sh
source "$(dirname "$0")/server-lib.sh"
server_setup localstripe "$python"

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
' "$port" >"$server_log" 2>&1 &
server_pid=$!
# Any HTTP answer means it is up (an unauthenticated call answers 401).
server_wait '
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/v1/customers", timeout=1).read()
except urllib.error.HTTPError:
    pass
'

export HOOKLINE_LOCALSTRIPE_URL="$endpoint"
server_run "$@"
