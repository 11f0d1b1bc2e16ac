#!/usr/bin/env bash
# Lints template.yaml offline, with zero warnings allowed:
#   1. cfn-lint on the SAM template as written;
#   2. `sam validate --lint` (SAM CLI's own schema check, then cfn-lint again);
#   3. the SAM transform run locally (samtranslator, as CloudFormation would) and cfn-lint on
#      the plain CloudFormation it produces. cfn-lint no longer expands SAM itself, so only
#      this step sees generated resources, e.g. a circular dependency between the HttpApi's
#      OpenAPI body and a function.
# Tools come from the project venv: $HOOKLINE_VENV (default $HOME/.cache/hookline/venv).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HOOKLINE_VENV:-$HOME/.cache/hookline/venv}"
bin="$venv/bin"

for tool in cfn-lint sam python; do
    if [[ ! -x "$bin/$tool" ]]; then
        echo "lint-template: $bin/$tool is missing; install cfn-lint and aws-sam-cli into $venv" >&2
        exit 1
    fi
done

cd "$root"
template=template.yaml
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Offline and deterministic: a region for the schemas, dummy credentials so nothing looks for
# a profile or the instance metadata service, no telemetry, and a private SAM CLI config dir
# that says the weekly PyPI version check has just run.
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=lint AWS_SECRET_ACCESS_KEY=lint AWS_SESSION_TOKEN=lint
export AWS_EC2_METADATA_DISABLED=true
export SAM_CLI_TELEMETRY=0
export __SAM_CLI_APP_DIR="$work/sam-cli"
mkdir -p "$__SAM_CLI_APP_DIR"
printf '{"telemetryEnabled": false, "lastVersionCheck": %s}\n' "$(date +%s)" \
    >"$__SAM_CLI_APP_DIR/metadata.json"

echo "== cfn-lint $template"
"$bin/cfn-lint" --format parseable -- "$template"

echo "== sam validate --lint"
"$bin/sam" validate --lint --template "$template" --region us-east-1 2>&1 | tee "$work/sam.log"
# sam validate exits 0 on warnings it prints; treat any as a failure.
if grep -qiE '^(W|E)[0-9]{4}|warning' "$work/sam.log"; then
    echo "lint-template: sam validate printed warnings" >&2
    exit 1
fi

echo "== SAM transform + cfn-lint on the generated CloudFormation"
"$bin/python" - "$template" "$work/transformed.json" <<'PY'
import json
import sys

from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform


class NoManagedPolicies:
    """The template names no AWS managed policy by name, so no IAM lookup is needed."""

    def load(self):
        return {}


src, dst = sys.argv[1], sys.argv[2]
template = yaml_parse(open(src, encoding="utf-8").read())
# `sam build` / `sam package` replace local CodeUri paths with S3 locations before the
# transform runs; stand one in.
for resource in template.get("Resources", {}).values():
    if resource.get("Type") == "AWS::Serverless::Function":
        resource.setdefault("Properties", {})["CodeUri"] = "s3://hookline-lint/code.zip"
parameter_values = {"AWS::Region": "us-east-1"}
with open(dst, "w", encoding="utf-8") as out:
    json.dump(transform(template, parameter_values, NoManagedPolicies()), out, indent=1)
PY
"$bin/cfn-lint" --format parseable -- "$work/transformed.json"

echo "lint-template: ok"
