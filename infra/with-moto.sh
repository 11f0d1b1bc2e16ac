#!/usr/bin/env bash
# Run a command against a private moto server (DynamoDB, SQS, Secrets Manager, KMS, SES on
# loopback): infra/with-moto.sh CMD ARGS...
#
# Starts moto's server (infra/moto-server.py) on a free 127.0.0.1 port, waits until it answers, exports
#   HOOKLINE_MOTO_ENDPOINT=http://127.0.0.1:PORT
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY=testing, AWS_REGION / AWS_DEFAULT_REGION=us-east-1
# runs the command, and stops moto however the command ends. Exits with the command's status.
#
# moto comes from the venv at $HOOKLINE_VENV (default ~/.cache/hookline/venv).
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CMD [ARGS...]   e.g. $0 cargo test -p hookline-shared --test aws_adapters" >&2
  exit 2
fi

venv="${HOOKLINE_VENV:-$HOME/.cache/hookline/venv}"
moto="$venv/bin/moto_server"
python="$venv/bin/python3"
if [[ ! -x "$moto" || ! -x "$python" ]]; then
  cat >&2 <<EOF
with-moto: no moto_server at $moto
Install it once (Python 3.9+):
  python3 -m venv "$venv"
  "$venv/bin/pip" install 'moto[server]'
or point HOOKLINE_VENV at a venv that has moto[server].
EOF
  exit 127
fi

# shellcheck source=infra/server-lib.sh
source "$(dirname "$0")/server-lib.sh"
server_setup moto "$python"

# infra/moto-server.py is moto_server with DynamoDB's per-item write atomicity (see there).
"$python" "$(dirname "$0")/moto-server.py" -H 127.0.0.1 -p "$port" >"$server_log" 2>&1 &
server_pid=$!
server_wait '
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1).read()
'

export HOOKLINE_MOTO_ENDPOINT="$endpoint"
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_SESSION_TOKEN=testing
export AWS_DEFAULT_REGION=us-east-1
export AWS_REGION=us-east-1
unset AWS_PROFILE

server_run "$@"
