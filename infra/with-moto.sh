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

workdir="$(mktemp -d "${TMPDIR:-/tmp}/hookline-moto.XXXXXX")"
log="$workdir/moto.log"
moto_pid=""

cleanup() {
  local status=$?
  if [[ -n "$moto_pid" ]] && kill -0 "$moto_pid" 2>/dev/null; then
    kill "$moto_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$moto_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -s "$log" ]]; then
    echo "with-moto: exit status $status; moto's log is kept at $log" >&2
  else
    rm -rf "$workdir"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback port: bind port 0 and read back what the kernel chose. (A race with another
# process taking it before moto does is possible but rare; moto then fails to start, loudly.)
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
endpoint="http://127.0.0.1:$port"

# infra/moto-server.py is moto_server with DynamoDB's per-item write atomicity (see there).
"$python" "$(dirname "$0")/moto-server.py" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!

ready=""
for _ in $(seq 1 200); do
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    echo "with-moto: moto_server exited at start; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  if "$python" - "$endpoint" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1).read()
PY
  then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ -z "$ready" ]]; then
  echo "with-moto: moto_server did not answer on $endpoint within 20 s; its log:" >&2
  cat "$log" >&2
  exit 1
fi

export HOOKLINE_MOTO_ENDPOINT="$endpoint"
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_SESSION_TOKEN=testing
export AWS_DEFAULT_REGION=us-east-1
export AWS_REGION=us-east-1
unset AWS_PROFILE

echo "with-moto: moto on $endpoint" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
