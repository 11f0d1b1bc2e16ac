#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, starts what they
# talk to, runs everything, and stops what it started. `.ci/run` runs exactly this.
#
#   infra/test.sh
#
# Installs (once, reused between runs):
#   - a Python venv at $HOOKLINE_VENV (default ~/.cache/hookline/venv) with moto[server],
#     cfn-lint, aws-sam-cli, cargo-lambda, schemathesis (the API fuzzer), pyjwt[crypto] and
#     localstripe (a Stripe API emulator);
#   - checkov in a venv of its own at $HOOKLINE_CHECKOV_VENV (default $HOOKLINE_VENV-checkov):
#     it pins networkx, urllib3 and packaging to versions cfn-lint and the SAM CLI refuse;
#   - jose (npm, the JavaScript JWT library) at $HOOKLINE_NODE_DIR (default
#     ~/.cache/hookline/node), for the licence interop test; needs node and npm;
#   - a cargo target dir at $CARGO_TARGET_DIR (default ~/.cache/hookline/target), so the AWS
#     SDK is built once, not on every run.
# A missing tool is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

export HOOKLINE_VENV="${HOOKLINE_VENV:-$HOME/.cache/hookline/venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s\n' "$*"; }
started=$(date +%s)

step "tools: Python venv at $HOOKLINE_VENV"
if [[ ! -x "$HOOKLINE_VENV/bin/python3" ]]; then
  python3 -m venv "$HOOKLINE_VENV"
fi
missing=()
for tool in moto_server cfn-lint sam cargo-lambda schemathesis; do
  [[ -x "$HOOKLINE_VENV/bin/$tool" ]] || missing+=("$tool")
done
if (( ${#missing[@]} )); then
  echo "installing: ${missing[*]}"
  "$HOOKLINE_VENV/bin/pip" install --quiet --disable-pip-version-check \
    'moto[server]' cfn-lint aws-sam-cli cargo-lambda 'schemathesis>=4.32,<5'
fi
for tool in moto_server cfn-lint sam cargo-lambda schemathesis; do
  [[ -x "$HOOKLINE_VENV/bin/$tool" ]] || { echo "test.sh: $tool did not install" >&2; exit 1; }
done
# PyJWT has no command of its own: the licence interop test imports it.
if ! "$HOOKLINE_VENV/bin/python3" -c 'import jwt, cryptography' 2>/dev/null; then
  echo "installing: pyjwt[crypto]"
  "$HOOKLINE_VENV/bin/pip" install --quiet --disable-pip-version-check 'pyjwt[crypto]'
fi
"$HOOKLINE_VENV/bin/python3" -c 'import jwt, cryptography' \
  || { echo "test.sh: pyjwt[crypto] did not install" >&2; exit 1; }
# localstripe: the billing tests' Stripe API (infra/with-localstripe.sh starts it). Pinned:
# with-localstripe.sh runs its app directly, so an upgrade is a reviewed change.
if ! "$HOOKLINE_VENV/bin/python3" -c 'import localstripe' 2>/dev/null; then
  echo "installing: localstripe"
  "$HOOKLINE_VENV/bin/pip" install --quiet --disable-pip-version-check 'localstripe==1.15.10'
fi
"$HOOKLINE_VENV/bin/python3" -c 'import localstripe' \
  || { echo "test.sh: localstripe did not install" >&2; exit 1; }
export HOOKLINE_PYTHON="$HOOKLINE_VENV/bin/python3"
# checkov: the template's security checks (infra/lint-template.sh runs it). Pinned: a release
# adds checks, so an upgrade is a reviewed change, not a red CI on an unchanged template.
export HOOKLINE_CHECKOV_VENV="${HOOKLINE_CHECKOV_VENV:-$HOOKLINE_VENV-checkov}"
checkov_version=3.3.30
if [[ "$("$HOOKLINE_CHECKOV_VENV/bin/checkov" --version 2>/dev/null)" != "$checkov_version" ]]; then
  echo "installing: checkov $checkov_version (own venv: $HOOKLINE_CHECKOV_VENV)"
  [[ -x "$HOOKLINE_CHECKOV_VENV/bin/python3" ]] || python3 -m venv "$HOOKLINE_CHECKOV_VENV"
  "$HOOKLINE_CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$checkov_version"
fi
[[ "$("$HOOKLINE_CHECKOV_VENV/bin/checkov" --version 2>/dev/null)" == "$checkov_version" ]] \
  || { echo "test.sh: checkov $checkov_version did not install" >&2; exit 1; }
# jose (npm), the other JWT library the licence interop test verifies with. Pinned to 5: its
# CommonJS build is what `node -e` can require.
HOOKLINE_NODE_DIR="${HOOKLINE_NODE_DIR:-$HOME/.cache/hookline/node}"
if ! NODE_PATH="$HOOKLINE_NODE_DIR/node_modules" node -e 'require("jose")' 2>/dev/null; then
  echo "installing: jose (npm)"
  mkdir -p "$HOOKLINE_NODE_DIR"
  (cd "$HOOKLINE_NODE_DIR" && npm install --silent --no-audit --no-fund 'jose@5')
fi
NODE_PATH="$HOOKLINE_NODE_DIR/node_modules" node -e 'require("jose")' \
  || { echo "test.sh: jose (npm) did not install" >&2; exit 1; }
export HOOKLINE_JOSE_PATH="$HOOKLINE_NODE_DIR/node_modules"
export PATH="$HOOKLINE_VENV/bin:$PATH"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "SAM template"
infra/lint-template.sh

step "sample events are up to date with their generator"
python3 infra/make-events.py --check

step "tests: unit, conformance (embedded and moto), Lambda events, end to end (moto, localstripe)"
infra/with-moto.sh infra/with-localstripe.sh cargo test --workspace --locked --no-fail-fast

step "API contract: schemathesis on every route of openapi.json against hookline serve"
infra/fuzz-api.sh

step "every function cross-builds for Lambda (arm64, as sam build does)"
# A target dir of its own: the aarch64 build shares nothing with the host build but its lock.
CARGO_TARGET_DIR="$CARGO_TARGET_DIR-lambda" cargo lambda build --arm64 --locked \
  $(for f in functions/*/; do printf -- '-p %s ' "$(basename "$f")"; done)

printf '\n== all green in %ss\n' "$(( $(date +%s) - started ))"
