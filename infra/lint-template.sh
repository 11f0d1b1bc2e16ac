#!/usr/bin/env bash
# Lints template.yaml offline, with zero warnings allowed:
#   1. cfn-lint on the SAM template as written;
#   2. `sam validate --lint` (SAM CLI's own schema check, then cfn-lint again);
#   3. the SAM transform run locally (samtranslator, as CloudFormation would) and cfn-lint on
#      the plain CloudFormation it produces. cfn-lint no longer expands SAM itself, so only
#      this step sees generated resources, e.g. a circular dependency between the HttpApi's
#      OpenAPI body and a function;
#   4. checkov (security and configuration checks) on the template: no failed check, and
#      every skip carries its reason in the template (`#checkov:skip=CKV_...:why`).
# Tools come from the project venv: $HOOKLINE_VENV (default $HOME/.cache/hookline/venv); checkov
# from its own, $HOOKLINE_CHECKOV_VENV (default $HOOKLINE_VENV-checkov), because it pins
# versions of networkx, urllib3 and packaging that cfn-lint and the SAM CLI do not accept.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HOOKLINE_VENV:-$HOME/.cache/hookline/venv}"
bin="$venv/bin"
checkov_venv="${HOOKLINE_CHECKOV_VENV:-$venv-checkov}"

for tool in cfn-lint sam python; do
    if [[ ! -x "$bin/$tool" ]]; then
        echo "lint-template: $bin/$tool is missing; install cfn-lint and aws-sam-cli into $venv" >&2
        exit 1
    fi
done
if [[ ! -x "$checkov_venv/bin/checkov" ]]; then
    echo "lint-template: $checkov_venv/bin/checkov is missing; infra/test.sh installs it" >&2
    exit 1
fi

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

echo "== checkov $template"
# Offline (--skip-download: no call to Prisma Cloud for guidelines). Its JSON report is read
# back: every failed check is an error, and so is a skip whose comment gives no reason.
checkov_status=0
"$checkov_venv/bin/checkov" --file "$template" --framework cloudformation --skip-download \
    --compact --output json >"$work/checkov.json" || checkov_status=$?
"$bin/python" - "$work/checkov.json" "$checkov_status" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    report = json.load(f)
status = int(sys.argv[2])
results, summary = report["results"], report["summary"]
for check in results.get("failed_checks", []):
    first, last = check["file_line_range"]
    print(f"template.yaml:{first}-{last}: {check['check_id']} {check['check_name']} "
          f"({check['resource']})", file=sys.stderr)
unexplained = [
    f"{c['check_id']} on {c['resource']}"
    for c in results.get("skipped_checks", [])
    if (c["check_result"].get("suppress_comment") or "").strip() in ("", "No comment provided")
]
for skip in unexplained:
    print(f"lint-template: a checkov skip gives no reason: {skip}", file=sys.stderr)
print(f"checkov {summary['checkov_version']}: {summary['passed']} passed, "
      f"{summary['failed']} failed, {summary['skipped']} skipped with their reasons inline")
if status or summary["failed"] or summary["parsing_errors"] or unexplained:
    sys.exit(1)
PY

echo "lint-template: ok"
