#!/usr/bin/env bash
# Load test of the local server: `hookline serve` on a fresh data dir, driven by wrk with
# signed GitHub deliveries, each with its own X-GitHub-Delivery id, over loopback.
# Reports requests/s and latency percentiles, how many deliveries the log recorded, and the
# server's CPU time per delivery (all its threads, the worker's included).
#
#   infra/load.sh [DURATION=20s] [CONNECTIONS=64] [THREADS=1] [WORKER_LOOPS=2] [PAYLOAD] [EVENT]
#
# WORKER_LOOPS=0 measures intake alone (verify, dedupe, durably queue), as the inbound
# functions do on AWS; the default also runs the worker in the same process.
# PAYLOAD is a GitHub webhook body (default events/payloads/github-push.json, 2.7 KB);
# events/payloads/github-workflow-run-octokit.json is octokit's workflow_run example (17 KB,
# the size of real workflow_run and pull_request bodies). EVENT is its X-GitHub-Event
# (default: read from the payload's shape: workflow_run, pull_request, push).
#
# CONNECTED=1 first connects the payload's repository to an org (`POST
# /api/v1/repositories/connect`, against infra/github-stub.py standing in for GitHub's REST
# API) and signs the deliveries with the secret the connection gave its hook, as GitHub would:
# each delivery is then verified with the repository's own secret, owned by the org, and the
# worker runs the connected-repository handlers (runs, incidents, the org's usage, and a
# `github.<event>` event in the org's outbound stream: the relay's inbound half).
#
# PERF_DATA=FILE also records a CPU profile of the server (`perf record -g`, or PERF_ARGS
# instead of `-g`, e.g. "--call-graph dwarf,16384 -F 300" for callers in the perf build)
# while wrk runs; read it with `perf report -i FILE`.
#
# HOOKLINE_BIN=FILE runs that `hookline` binary instead of building the perf profile: keep a
# copy of one build and alternate runs of it with the next (this machine's speed drifts by
# the hour, so only runs minutes apart compare).
#
# Installs wrk from Debian's packages if it is missing. Bounded in time; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-20s}"
connections="${2:-64}"
threads="${3:-1}"
worker_loops="${4:-2}"
payload="${5:-events/payloads/github-push.json}"
[[ -f "$payload" ]] || { echo "load.sh: no payload file $payload" >&2; exit 2; }
event="${6:-$(python3 - "$payload" <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
for key in ("workflow_run", "workflow_job", "pull_request", "check_run", "issue"):
    if key in body:
        print(key)
        break
else:
    if "commits" in body and "pusher" in body:
        print("push")
    else:
        sys.exit(f"load.sh: cannot tell the GitHub event of {sys.argv[1]}; give it as EVENT")
PY
)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline/target}"

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)"
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
fi

if [[ -n "${HOOKLINE_BIN:-}" ]]; then
  bin="$HOOKLINE_BIN"
else
  cargo build --profile perf -p hookline-cli --quiet
  bin="$CARGO_TARGET_DIR/perf/hookline"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/hookline-load.XXXXXX")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
secret="load-test-secret"
stub=""
if [[ -n "${CONNECTED:-}" ]]; then
  stub_port="$(free_port)"
  python3 infra/github-stub.py "$stub_port" "$work/hook-secret" > "$work/stub.log" 2>&1 &
  stub=$!
  export GITHUB_API_URL="http://127.0.0.1:$stub_port"
fi

GITHUB_WEBHOOK_SECRET="$secret" RUST_LOG=warn \
  "$bin" serve --addr "127.0.0.1:$port" --data-dir "$work/data" --env-file /dev/null \
    --worker-loops "$worker_loops" \
  > "$work/serve.log" 2>&1 &
server=$!
trap 'kill $server $stub 2>/dev/null || true; wait $server $stub 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

if [[ -n "$stub" ]]; then
  repo="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["repository"]["full_name"])' "$payload")"
  token="$("$bin" token --data-dir "$work/data" --org load --user load --scopes "repos:read repos:write")"
  api() { curl -fsS -X "$1" "http://127.0.0.1:$port$2" -H "Authorization: Bearer $token" \
    -H "Content-Type: application/json" -d "$3"; }
  api PUT /api/v1/provider-tokens/github '{"access_token":"ghp_load"}' >/dev/null
  api POST /api/v1/repositories/connect "{\"repository_full_name\":\"$repo\"}" >/dev/null
  secret="$(cat "$work/hook-secret")"
  echo "connected $repo to org load; deliveries signed with its hook's secret"
fi
signature="sha256=$(openssl dgst -sha256 -hmac "$secret" -hex < "$payload" | sed 's/^.*= //')"

# Each request gets a fresh delivery id (a new delivery, not a duplicate); the body and its
# signature stay the same, as GitHub's signature covers the body only.
cat > "$work/github.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "$event"
wrk.headers["X-Hub-Signature-256"] = "$signature"
local f = io.open("$payload", "rb"); wrk.body = f:read("*a"); f:close()
local n = 0
local prefix = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. n
  return wrk.format()
end
done = function(summary, latency, requests)
  io.write(string.format("requests/s: %.0f\n", summary.requests / (summary.duration / 1e6)))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format("p%d: %.2f ms\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("non-2xx answers: %d, socket errors: %d\n", summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

echo "load: ${duration}, ${connections} connections, ${threads} wrk thread(s), ${worker_loops} worker loop(s), $(wc -c < "$payload") B GitHub $event payload ($payload)"
if [[ -n "${PERF_DATA:-}" ]]; then
  perf record ${PERF_ARGS:--g} -o "$PERF_DATA" -p "$server" -- sleep "${duration%s}" >/dev/null 2>&1 &
  recorder=$!
fi
# The server's CPU time so far, all threads (utime + stime, /proc's fixed 100 ticks/s).
server_cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$server/stat"; }
cpu_before="$(server_cpu_ticks)"
started_ns="$(date +%s%N)"
# wrk's own CPU (bash's `time`: user and system seconds), for the floor it leaves the server.
TIMEFORMAT='%U %S'
{ time wrk -t "$threads" -c "$connections" -d "$duration" --latency -s "$work/github.lua" "http://127.0.0.1:$port/api/v1/webhooks/github" 2>&1; } 2> "$work/wrk-cpu"
[[ -n "${PERF_DATA:-}" ]] && wait "$recorder"
sleep 2
cpu_ticks=$(( $(server_cpu_ticks) - cpu_before ))
elapsed_ns=$(( $(date +%s%N) - started_ns ))
"$bin" deliveries --data-dir "$work/data" --json --limit 100000000 > "$work/deliveries.json"
recorded="$(wc -l < "$work/deliveries.json")"
echo "delivery log: $recorded deliveries recorded ($(python3 -c '
import collections, json, sys
by = collections.Counter(json.loads(line)["status"] for line in open(sys.argv[1]))
print(", ".join(f"{n} {status}" for status, n in by.most_common()))' "$work/deliveries.json"))"
# CPU per delivery moves far less with the machine's hour than requests/s do; the 2 s
# after wrk stops are counted, so the worker's share of the last deliveries is in it.
awk -v t="$cpu_ticks" -v n="$recorded" -v e="$elapsed_ns" 'BEGIN {
  if (n > 0) printf "server CPU: %.0f µs per delivery (%.2f cores busy over the run)\n", t * 1e4 / n, t / 100 / (e / 1e9)
}'
read -r wrk_user wrk_sys < "$work/wrk-cpu"
awk -v u="$wrk_user" -v s="$wrk_sys" -v n="$recorded" 'BEGIN {
  if (n > 0) printf "wrk CPU: %.0f µs per request\n", (u + s) * 1e6 / n
}'
rm -rf "$work"
