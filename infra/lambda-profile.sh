#!/usr/bin/env bash
# Each Lambda function's zipped size, cold start, first and warm invocation and peak RSS,
# beside a hello-world `lambda_runtime` function measured in the same run:
#
#   infra/lambda-profile.sh [RUNS] [FUNCTION...]      (default 20 cold starts, every function)
#
# Builds the arm64 bootstraps as `sam build` does (`cargo lambda build --release --arm64`) for
# their zipped size, and the same functions for this machine (x86_64 release) to run them;
# then runs infra/lambda-profile.py under infra/with-moto.sh: each binary against a fake Lambda
# Runtime API, with moto behind the AWS SDK. Needs the test venv (infra/test.sh makes it).
# The release builds are fat-LTO: the first run takes a long while.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-20}"
shift || true
export HOOKLINE_VENV="${HOOKLINE_VENV:-$HOME/.cache/hookline/venv}"
export PATH="$HOOKLINE_VENV/bin:$PATH"
target="${CARGO_TARGET_DIR:-$HOME/.cache/hookline/target}"

if (( $# )); then
  functions=("$@")
else
  functions=()
  for f in functions/*/; do functions+=("$(basename "$f")"); done
fi
packages=()
for f in "${functions[@]}"; do packages+=(-p "$f"); done

echo "== arm64 bootstraps, as sam build makes them" >&2
CARGO_TARGET_DIR="$target-lambda" cargo lambda build --release --arm64 --locked "${packages[@]}"
echo "== the same functions and the hello-world floor, for this machine" >&2
CARGO_TARGET_DIR="$target-release" cargo build --release --locked "${packages[@]}"
CARGO_TARGET_DIR="$target-release" cargo build --release --locked -p hookline-e2e --bin hello-lambda

infra/with-moto.sh "$HOOKLINE_VENV/bin/python3" infra/lambda-profile.py \
  --bin-dir "$target-release/release" --zip-dir "$target-lambda/lambda" \
  --runs "$runs" --only "${functions[@]}"
# The cost model needs the inbound and outbound chains' functions.
if [[ -z "${NO_COST_MODEL:-}" ]]; then
  infra/with-moto.sh "$HOOKLINE_VENV/bin/python3" infra/cost-model.py \
    --bin-dir "$target-release/release" --runs 30
fi
