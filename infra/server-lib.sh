# Shared by infra/with-moto.sh and infra/with-localstripe.sh (sourced, not run): one helper
# server on a free loopback port for as long as a command runs, stopped however it ends.
#
#   server_setup NAME PYTHON      # a work dir and log, the cleanup trap, a free port:
#                                 # sets $port, $endpoint, $server_log
#   "$python" … >"$server_log" 2>&1 &  server_pid=$!
#   server_wait 'PYTHON CODE'     # until the code (argv[1] = $endpoint) runs without error
#   server_run "$@"               # the command; exits with its status

server_setup() {
  server_name="$1"
  server_python="$2"
  server_workdir="$(mktemp -d "${TMPDIR:-/tmp}/hookline-$server_name.XXXXXX")"
  server_log="$server_workdir/$server_name.log"
  server_pid=""
  trap server_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # A free loopback port: bind port 0 and read back what the kernel chose. (A race with
  # another process taking it first is possible but rare; the server then fails to start,
  # loudly.)
  port="$("$server_python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  endpoint="http://127.0.0.1:$port"
}

server_cleanup() {
  local status=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -s "$server_log" ]]; then
    echo "with-$server_name: exit status $status; its log is kept at $server_log" >&2
  else
    rm -rf "$server_workdir"
  fi
  exit "$status"
}

server_wait() {
  local probe="$1"
  for _ in $(seq 1 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "with-$server_name: the server exited at start; its log:" >&2
      cat "$server_log" >&2
      exit 1
    fi
    if "$server_python" -c "$probe" "$endpoint" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "with-$server_name: nothing answered on $endpoint within 20 s; the log:" >&2
  cat "$server_log" >&2
  exit 1
}

server_run() {
  echo "with-$server_name: on $endpoint" >&2
  set +e
  "$@"
  local status=$?
  set -e
  exit "$status"
}
