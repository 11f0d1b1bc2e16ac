#!/usr/bin/env bash
# Fuzz every route of the API contract: schemathesis (PyPI) generates valid and malformed
# requests from the OpenAPI document a fresh `hookline serve` serves, with a token holding
# every scope, and fails on any 5xx or any answer the document does not allow (status code,
# content type, body schema). Another org's endpoint, connection and profile, seeded first,
# must come out unchanged.
#
#   infra/fuzz-api.sh                                  # schemathesis from $HOOKLINE_VENV
#   FUZZ_MAX_EXAMPLES=100 FUZZ_SEED=1234 infra/fuzz-api.sh
#   FUZZ_PHASES=examples,coverage,fuzzing,stateful infra/fuzz-api.sh   # a deeper local run
#
# It runs in a network namespace of its own with only loopback in it, so nothing the fuzzer
# makes the server call (a registered endpoint, GitHub's API) can leave the machine. It
# starts and stops the server itself; the data dir is a fresh temporary one.
set -euo pipefail
cd "$(dirname "$0")/.."

HOOKLINE_VENV="${HOOKLINE_VENV:-$HOME/.cache/hookline/venv}"
SCHEMATHESIS="${SCHEMATHESIS:-$HOOKLINE_VENV/bin/schemathesis}"
PYTHON="${HOOKLINE_PYTHON:-$HOOKLINE_VENV/bin/python3}"
# 30 per operation: ~2 minutes on 2 busy cores (50: ~3); raise it for a deeper run.
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-30}"
PHASES="${FUZZ_PHASES:-examples,coverage,fuzzing}"
SEED="${FUZZ_SEED:-$RANDOM$RANDOM}"

if [[ "${HOOKLINE_FUZZ_IN_NETNS:-}" != 1 ]]; then
  [[ -x "$SCHEMATHESIS" ]] || { echo "fuzz-api.sh: $SCHEMATHESIS is missing (pip install schemathesis)" >&2; exit 1; }
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline/target}"
  cargo build --locked --quiet -p hookline-cli --bin hookline
  export HOOKLINE_BIN="$CARGO_TARGET_DIR/debug/hookline"
  exec unshare --net --map-root-user env HOOKLINE_FUZZ_IN_NETNS=1 \
    HOOKLINE_BIN="$HOOKLINE_BIN" FUZZ_SEED="$SEED" FUZZ_MAX_EXAMPLES="$MAX_EXAMPLES" \
    FUZZ_PHASES="$PHASES" "$0" "$@"
fi

# --- inside the namespace: only loopback, and it starts down
ip link set lo up
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
data="$work/data"
# Every route group configured, so the fuzzer reaches each handler's real work rather than
# a 503 naming what is not set. GitHub's, GitLab's and Stripe's APIs point at a closed local
# port (a call that reaches them answers 502, which only a valid tier and two valid URLs at
# checkout could); endpoints on loopback are allowed, so a registered one is attempted (and
# refused) here. Every tier unlimited, so plan limits do not stop the fuzzer creating things.
cat > "$work/env" <<EOF
GITHUB_WEBHOOK_SECRET=dev-github-secret
GITLAB_WEBHOOK_TOKEN=dev-gitlab-token
STRIPE_WEBHOOK_SECRET=whsec_dev_stripe_secret
TWILIO_AUTH_TOKEN=dev-twilio-token
WHATSAPP_APP_SECRET=dev-whatsapp-secret
WHATSAPP_VERIFY_TOKEN=dev-whatsapp-verify
OUTBOUND_ALLOW_HTTP=true
OUTBOUND_ALLOW_CIDRS=127.0.0.0/8,::1/128
OUTBOUND_TIMEOUT=2s
STRIPE_SECRET_KEY=sk_test_fuzz
STRIPE_API_BASE=http://127.0.0.1:9
STRIPE_PRICE_ID_TEAM=price_fuzz_team
STRIPE_PRICE_ID_ENTERPRISE=price_fuzz_enterprise
HOOKLINE_TIERS='{"free": {"limits": {"repositories": null, "endpoints": null, "events_per_month": null}}}'
HOOK_HEALTH_INTERVAL=0
BILLING_RECONCILE_INTERVAL=0
HOOKLINE_API_RATE_LIMIT=1000000/min
EOF
# Jira is left unsigned (no JIRA_WEBHOOK_SECRET): the fuzzer's bodies reach its parser.
"$HOOKLINE_BIN" license keygen | grep '^LICENSE_PRIVATE_KEY=' >> "$work/env"

# The repository and OAuth routes read these from the environment only.
GITHUB_API_URL=http://127.0.0.1:9 GITLAB_URL=http://127.0.0.1:9 GITHUB_OAUTH_URL=http://127.0.0.1:9 \
GITHUB_OAUTH_CLIENT_ID=fuzz-client GITHUB_OAUTH_CLIENT_SECRET=fuzz-client-secret \
GITLAB_OAUTH_CLIENT_ID=fuzz-client GITLAB_OAUTH_CLIENT_SECRET=fuzz-client-secret \
RUST_LOG="${RUST_LOG:-warn}" "$HOOKLINE_BIN" serve --addr "127.0.0.1:$port" --data-dir "$data" \
  --env-file "$work/env" --worker-loops 1 > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('$base/healthz', timeout=1)" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "fuzz-api.sh: hookline serve exited" >&2; exit 1; }
  sleep 0.1
done

token() { "$HOOKLINE_BIN" token --data-dir "$data" --org "$1" --user "$2" --scopes "$3" --ttl 1h 2>/dev/null; }
fuzz_token="$(token org_fuzz fuzzer 'admin licenses:issue')"
other_token="$(token org_other owner admin)"

"$PYTHON" infra/fuzz_other_org.py seed "$base" "$other_token" "$work/other.json"

echo "schemathesis: phases $PHASES, $MAX_EXAMPLES examples per operation, seed $SEED"
status=0
# From the temporary dir: schemathesis keeps its example database in the working directory.
(cd "$work" && "$SCHEMATHESIS" run "$base/api/v1/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $fuzz_token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases "$PHASES" \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 10 \
  --suppress-health-check all \
  --no-color) || status=$?

"$PYTHON" infra/fuzz_other_org.py check "$base" "$other_token" "$work/other.json" || status=1

if grep -q '"level":"ERROR"' "$work/server.log"; then
  echo "the server logged errors while fuzzed:" >&2
  grep '"level":"ERROR"' "$work/server.log" | head -20 >&2
fi
if [[ $status -ne 0 ]]; then
  echo "fuzz-api.sh: failed (reproduce with FUZZ_SEED=$SEED); server log tail:" >&2
  tail -40 "$work/server.log" >&2
fi
exit $status
