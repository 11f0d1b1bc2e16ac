#!/usr/bin/env python3
"""Writes events/: API Gateway HTTP API (payload 2.0) events, one or more per inbound
function, and an SQS event for the worker, signed for the documented dev secrets.

Every signature is computed over the exact body bytes that end up in the event (for a
base64-encoded event, the decoded bytes), the way each provider computes it.

    python3 infra/make-events.py                 # rewrite events/
    python3 infra/make-events.py --check         # exit 1 if events/ is stale
    python3 infra/make-events.py --out DIR --stripe-timestamp now
                                                 # fresh Stripe timestamp (300 s tolerance)

Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The dev secrets these events are signed with (events/README.md lists them too).
DEV = {
    "GITHUB_WEBHOOK_SECRET": "dev-github-secret",
    "GITLAB_WEBHOOK_TOKEN": "dev-gitlab-token",
    "JIRA_WEBHOOK_SECRET": "dev-jira-secret",
    "STRIPE_WEBHOOK_SECRET": "whsec_dev_stripe_secret",
    "TWILIO_AUTH_TOKEN": "dev-twilio-token",
    "WHATSAPP_APP_SECRET": "dev-whatsapp-secret",
    "WHATSAPP_VERIFY_TOKEN": "dev-whatsapp-verify",
    "WEBHOOK_BASE_URL": "https://hooks.example.com",
}

# 2026-01-01T00:00:00Z: every event "happens" then; Stripe's signed timestamp too.
EPOCH = 1767225600
API_ID = "a1b2c3d4e5"
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
DOMAIN = urllib.parse.urlsplit(DEV["WEBHOOK_BASE_URL"]).hostname


# --------------------------------------------------------------------------------------------
# Signing, as each provider does it.
# --------------------------------------------------------------------------------------------


def hmac_hex(key: str, msg: bytes, digest=hashlib.sha256) -> str:
    return hmac.new(key.encode(), msg, digest).hexdigest()


def github_signatures(secret: str, body: bytes) -> dict[str, str]:
    # GitHub (and Meta for WhatsApp) send the legacy SHA-1 header alongside the SHA-256 one.
    return {
        "x-hub-signature": "sha1=" + hmac_hex(secret, body, hashlib.sha1),
        "x-hub-signature-256": "sha256=" + hmac_hex(secret, body),
    }


def stripe_signature(secret: str, timestamp: int, body: bytes) -> str:
    # The key is the whole `whsec_...` string; the signed payload is "{t}.{body}".
    v1 = hmac_hex(secret, str(timestamp).encode() + b"." + body)
    return f"t={timestamp},v1={v1}"


def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    # base64(HMAC-SHA1(token, url + each param's name and value, sorted by name)).
    data = url + "".join(k + v for k, v in sorted(params))
    mac = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


# --------------------------------------------------------------------------------------------
# Envelopes.
# --------------------------------------------------------------------------------------------


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def apigw_event(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    *,
    source_ip: str,
    request_id: str,
    query: list[tuple[str, str]] | None = None,
    base64_body: bool = False,
    at: int = EPOCH,
    route: str | None = None,
    path_parameters: dict[str, str] | None = None,
    cookies: list[str] | None = None,
) -> dict:
    """An HTTP API payload-2.0 event as API Gateway hands it to Lambda: headers lower-cased,
    multi-valued query joined by commas, the body text or base64."""
    raw_query = urllib.parse.urlencode(query or [])
    user_agent = headers.get("user-agent", "")
    all_headers = {
        "content-length": str(len(body or b"")),
        "host": DOMAIN,
        "x-amzn-trace-id": f"Root=1-{at:08x}-{hashlib.sha1(request_id.encode()).hexdigest()[:24]}",
        "x-forwarded-for": source_ip,
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    if body is None:
        del all_headers["content-length"]
    all_headers.update({k.lower(): v for k, v in headers.items()})
    route_key = f"{method} {route or path}"
    event = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": dict(sorted(all_headers.items())),
    }
    if cookies:
        # Payload 2.0 hands the request's cookies over apart from its headers.
        event["cookies"] = cookies
    if query:
        params: dict[str, str] = {}
        for k, v in query:
            params[k] = f"{params[k]},{v}" if k in params else v
        event["queryStringParameters"] = params
    if path_parameters:
        event["pathParameters"] = path_parameters
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": DOMAIN,
        "domainPrefix": DOMAIN.split(".")[0],
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": user_agent,
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": "$default",
        "time": datetime.fromtimestamp(at, timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": at * 1000,
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if base64_body else body.decode()
    event["isBase64Encoded"] = base64_body
    return event


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# Providers.
# --------------------------------------------------------------------------------------------

GITHUB_REPO = {
    "id": 812345678,
    "node_id": "R_kgDOMGvXzg",
    "name": "hookline-demo",
    "full_name": "acme/hookline-demo",
    "private": False,
    "owner": {
        "name": "acme",
        "email": None,
        "login": "acme",
        "id": 98765432,
        "node_id": "O_kgDOBeL0uA",
        "avatar_url": "https://avatars.githubusercontent.com/u/98765432?v=4",
        "html_url": "https://github.com/acme",
        "type": "Organization",
        "site_admin": False,
    },
    "html_url": "https://github.com/acme/hookline-demo",
    "description": "Demo repository for Hookline",
    "fork": False,
    "url": "https://github.com/acme/hookline-demo",
    "created_at": 1735689600,
    "updated_at": "2025-12-31T23:59:00Z",
    "pushed_at": EPOCH,
    "git_url": "git://github.com/acme/hookline-demo.git",
    "ssh_url": "git@github.com:acme/hookline-demo.git",
    "clone_url": "https://github.com/acme/hookline-demo.git",
    "default_branch": "main",
    "master_branch": "main",
    "organization": "acme",
    "visibility": "public",
}
GITHUB_ORG = {
    "login": "acme",
    "id": 98765432,
    "node_id": "O_kgDOBeL0uA",
    "url": "https://api.github.com/orgs/acme",
    "avatar_url": "https://avatars.githubusercontent.com/u/98765432?v=4",
    "description": "",
}
GITHUB_SENDER = {
    "login": "octocat",
    "id": 583231,
    "node_id": "MDQ6VXNlcjU4MzIzMQ==",
    "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
    "html_url": "https://github.com/octocat",
    "type": "User",
    "site_admin": False,
}
GITHUB_HEAD = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
GITHUB_BEFORE = "a10867b14bb761a232cd80139fbd4c0d33264240"


def github_event(name: str, event: str, delivery: str, payload: dict, request_id: str):
    body = compact(payload)
    headers = {
        "accept": "*/*",
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/b3e5a1c",
        "x-github-delivery": delivery,
        "x-github-event": event,
        "x-github-hook-id": "512345678",
        "x-github-hook-installation-target-id": str(GITHUB_REPO["id"]),
        "x-github-hook-installation-target-type": "repository",
        **github_signatures(DEV["GITHUB_WEBHOOK_SECRET"], body),
    }
    return name, apigw_event(
        "POST", "/api/v1/webhooks/github", headers, body,
        source_ip="140.82.115.54", request_id=request_id,
    )


def github_push():
    commit = {
        "id": GITHUB_HEAD,
        "tree_id": "e1f0a0b2c3d4e5f60718293a4b5c6d7e8f901234",
        "distinct": True,
        "message": "Verify Stripe signatures against every v1 entry",
        "timestamp": "2025-12-31T23:58:41Z",
        "url": f"https://github.com/acme/hookline-demo/commit/{GITHUB_HEAD}",
        "author": {"name": "Mona Octocat", "email": "octocat@github.com", "username": "octocat"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": [],
        "removed": [],
        "modified": ["shared/src/providers/stripe.rs"],
    }
    payload = {
        "ref": "refs/heads/main",
        "before": GITHUB_BEFORE,
        "after": GITHUB_HEAD,
        "repository": GITHUB_REPO,
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "organization": GITHUB_ORG,
        "sender": GITHUB_SENDER,
        "created": False,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/acme/hookline-demo/compare/{GITHUB_BEFORE[:12]}...{GITHUB_HEAD[:12]}",
        "commits": [commit],
        "head_commit": commit,
    }
    return github_event(
        "github-push.json", "push", "4f6d3a80-e6c4-11f0-8f3a-2b9e1c7d5a10", payload,
        "XyZ1aGhpoAMEaBw=",
    )


def github_workflow_run_failure():
    run_id = 12987654321
    payload = {
        "action": "completed",
        "workflow_run": {
            "id": run_id,
            "name": "CI",
            "node_id": "WFR_kwLOMGvXzs8AAAADBZ4uMQ",
            "head_branch": "main",
            "head_sha": GITHUB_HEAD,
            "path": ".github/workflows/ci.yml",
            "display_title": "Verify Stripe signatures against every v1 entry",
            "run_number": 418,
            "event": "push",
            "status": "completed",
            "conclusion": "failure",
            "workflow_id": 98123456,
            "check_suite_id": 31234567890,
            "url": f"https://api.github.com/repos/acme/hookline-demo/actions/runs/{run_id}",
            "html_url": f"https://github.com/acme/hookline-demo/actions/runs/{run_id}",
            "created_at": "2025-12-31T23:58:50Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "run_attempt": 1,
            "run_started_at": "2025-12-31T23:58:50Z",
            "actor": GITHUB_SENDER,
            "triggering_actor": GITHUB_SENDER,
            "jobs_url": f"https://api.github.com/repos/acme/hookline-demo/actions/runs/{run_id}/jobs",
            "logs_url": f"https://api.github.com/repos/acme/hookline-demo/actions/runs/{run_id}/logs",
            "head_commit": {
                "id": GITHUB_HEAD,
                "tree_id": "e1f0a0b2c3d4e5f60718293a4b5c6d7e8f901234",
                "message": "Verify Stripe signatures against every v1 entry",
                "timestamp": "2025-12-31T23:58:41Z",
                "author": {"name": "Mona Octocat", "email": "octocat@github.com"},
                "committer": {"name": "GitHub", "email": "noreply@github.com"},
            },
            "repository": {k: GITHUB_REPO[k] for k in ("id", "node_id", "name", "full_name", "private", "html_url")},
            "head_repository": {k: GITHUB_REPO[k] for k in ("id", "node_id", "name", "full_name", "private", "html_url")},
        },
        "workflow": {
            "id": 98123456,
            "node_id": "W_kwDOMGvXzs4F2Tfg",
            "name": "CI",
            "path": ".github/workflows/ci.yml",
            "state": "active",
            "created_at": "2025-01-02T10:00:00.000Z",
            "updated_at": "2025-06-01T12:00:00.000Z",
            "url": "https://api.github.com/repos/acme/hookline-demo/actions/workflows/98123456",
            "html_url": "https://github.com/acme/hookline-demo/blob/main/.github/workflows/ci.yml",
        },
        "repository": {**GITHUB_REPO, "created_at": "2025-01-01T00:00:00Z", "pushed_at": "2025-12-31T23:58:42Z"},
        "organization": GITHUB_ORG,
        "sender": GITHUB_SENDER,
    }
    return github_event(
        "github-workflow-run-failure.json", "workflow_run",
        "9b2e7c10-e6c4-11f0-9a51-77c0d4e2b3f8", payload, "XyZ2bGhpoAMEbCw=",
    )


def gitlab_pipeline():
    payload = {
        "object_kind": "pipeline",
        "object_attributes": {
            "id": 1604523417,
            "iid": 212,
            "name": None,
            "ref": "main",
            "tag": False,
            "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2",
            "before_sha": "a21d6ee3c1e3d0e2b6f3a0f0d6e8f3c1b2a49587",
            "source": "push",
            "status": "failed",
            "detailed_status": "failed",
            "stages": ["build", "test", "deploy"],
            "created_at": "2025-12-31 23:55:12 UTC",
            "finished_at": "2026-01-01 00:00:00 UTC",
            "duration": 268,
            "queued_duration": 4,
            "variables": [],
            "url": "https://gitlab.com/acme/hookline-demo/-/pipelines/1604523417",
        },
        "merge_request": None,
        "user": {
            "id": 1234567,
            "name": "Sasha Developer",
            "username": "sasha",
            "avatar_url": "https://secure.gravatar.com/avatar/0f3a?s=80&d=identicon",
            "email": "[REDACTED]",
        },
        "project": {
            "id": 60123456,
            "name": "hookline-demo",
            "description": "Demo project for Hookline",
            "web_url": "https://gitlab.com/acme/hookline-demo",
            "avatar_url": None,
            "git_ssh_url": "git@gitlab.com:acme/hookline-demo.git",
            "git_http_url": "https://gitlab.com/acme/hookline-demo.git",
            "namespace": "acme",
            "visibility_level": 20,
            "path_with_namespace": "acme/hookline-demo",
            "default_branch": "main",
            "ci_config_path": "",
        },
        "commit": {
            "id": "bcbb5ec396a2c0f828686f14fac9b80b780504f2",
            "message": "Retry enqueue after a store timeout\n",
            "title": "Retry enqueue after a store timeout",
            "timestamp": "2025-12-31T23:55:02+00:00",
            "url": "https://gitlab.com/acme/hookline-demo/-/commit/bcbb5ec396a2c0f828686f14fac9b80b780504f2",
            "author": {"name": "Sasha Developer", "email": "sasha@example.com"},
        },
        "builds": [
            {
                "id": 8765432101,
                "stage": "test",
                "name": "cargo-test",
                "status": "failed",
                "created_at": "2025-12-31 23:55:12 UTC",
                "started_at": "2025-12-31 23:55:20 UTC",
                "finished_at": "2025-12-31 23:59:58 UTC",
                "duration": 278.1,
                "queued_duration": 3.2,
                "failure_reason": "script_failure",
                "when": "on_success",
                "manual": False,
                "allow_failure": False,
                "user": {"id": 1234567, "name": "Sasha Developer", "username": "sasha"},
                "runner": {"id": 12270837, "description": "3-green.saas-linux-small-amd64.runners-manager.gitlab.com/default", "runner_type": "instance_type", "active": True, "is_shared": True, "tags": ["saas-linux-small-amd64"]},
                "artifacts_file": {"filename": None, "size": None},
                "environment": None,
            }
        ],
    }
    body = compact(payload)
    headers = {
        "content-type": "application/json",
        "user-agent": "GitLab/18.7.0-pre",
        "x-gitlab-event": "Pipeline Hook",
        "x-gitlab-token": DEV["GITLAB_WEBHOOK_TOKEN"],
        "x-gitlab-instance": "https://gitlab.com",
        "x-gitlab-webhook-uuid": "2f1d0c8e-3b7a-4c55-9e61-5d0a7b9c1e42",
        "x-gitlab-event-uuid": "7c3e5a19-0d2b-4f8e-a6c1-93b4e2d7f058",
        "idempotency-key": "d9e1f3a5-6b7c-4d8e-9f01-a2b3c4d5e6f7",
    }
    return "gitlab-pipeline.json", apigw_event(
        "POST", "/api/v1/webhooks/gitlab", headers, body,
        source_ip="34.74.90.65", request_id="XyZ3cGhpoAMEcDw=",
    )


def jira_issue_created():
    site = "https://acme.atlassian.net"
    user = {
        "self": f"{site}/rest/api/2/user?accountId=5b10ac8d82e05b22cc7d4ef5",
        "accountId": "5b10ac8d82e05b22cc7d4ef5",
        "avatarUrls": {"48x48": "https://secure.gravatar.com/avatar/5b10?d=mm&s=48"},
        "displayName": "Priya Lead",
        "active": True,
        "timeZone": "Europe/London",
        "accountType": "atlassian",
    }
    payload = {
        "timestamp": EPOCH * 1000,
        "webhookEvent": "jira:issue_created",
        "issue_event_type_name": "issue_created",
        "user": user,
        "issue": {
            "id": "10042",
            "self": f"{site}/rest/api/2/10042",
            "key": "HOOK-42",
            "fields": {
                "summary": "Twilio callbacks rejected behind the custom domain",
                "description": "Signatures fail when WEBHOOK_BASE_URL is not set.",
                "issuetype": {"self": f"{site}/rest/api/2/issuetype/10004", "id": "10004", "name": "Bug", "subtask": False, "hierarchyLevel": 0},
                "project": {"self": f"{site}/rest/api/2/project/10000", "id": "10000", "key": "HOOK", "name": "Hookline", "projectTypeKey": "software", "simplified": False},
                "priority": {"self": f"{site}/rest/api/2/priority/2", "name": "High", "id": "2"},
                "status": {"self": f"{site}/rest/api/2/status/10000", "name": "To Do", "id": "10000", "statusCategory": {"id": 2, "key": "new", "name": "To Do"}},
                "labels": ["webhooks"],
                "creator": user,
                "reporter": user,
                "assignee": None,
                "created": "2026-01-01T00:00:00.000+0000",
                "updated": "2026-01-01T00:00:00.000+0000",
            },
        },
        "matchedWebhookIds": [3],
    }
    body = compact(payload)
    headers = {
        "accept": "*/*",
        "content-type": "application/json; charset=utf-8",
        "user-agent": "Atlassian Webhook HTTP Client",
        "x-atlassian-webhook-flow": "Primary",
        "x-atlassian-webhook-identifier": "3a7e9c52-41b8-4d0f-8e6a-c2f1d5b09e73",
        "x-hub-signature": "sha256=" + hmac_hex(DEV["JIRA_WEBHOOK_SECRET"], body),
    }
    return "jira-issue-created.json", apigw_event(
        "POST", "/api/v1/webhooks/jira", headers, body,
        source_ip="13.52.5.96", request_id="XyZ4dGhpoAMEdEw=",
    )


def stripe_invoice_paid(timestamp: int):
    invoice_id = "in_1QdevHooklineInv0001"
    period_start = timestamp - 31 * 86400
    invoice = {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Hookline",
        "amount_due": 4900,
        "amount_paid": 4900,
        "amount_remaining": 0,
        "attempt_count": 1,
        "attempted": True,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": timestamp - 3600,
        "currency": "usd",
        "customer": "cus_RdevHookline01",
        "customer_email": "owner@acme.example",
        "customer_name": "Acme Inc.",
        "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1Ndev/test_YWNjdF8x",
        "invoice_pdf": "https://pay.stripe.com/invoice/acct_1Ndev/test_YWNjdF8x/pdf",
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": "il_1QdevHooklineLine01",
                    "object": "line_item",
                    "amount": 4900,
                    "currency": "usd",
                    "description": "1 × Hookline Team (at $49.00 / month)",
                    "period": {"end": timestamp + 28 * 86400, "start": timestamp - 3 * 86400},
                    "price": {"id": "price_dev_team_monthly", "object": "price", "currency": "usd", "product": "prod_RdevTeam", "recurring": {"interval": "month", "interval_count": 1}, "type": "recurring", "unit_amount": 4900},
                    "quantity": 1,
                    "subscription": "sub_1QdevHooklineSub01",
                    "type": "subscription",
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": {"org_id": "org_acme"},
        "number": "ACME-0007",
        "paid": True,
        "period_end": timestamp - 3 * 86400,
        "period_start": period_start,
        "status": "paid",
        "status_transitions": {"finalized_at": timestamp - 3500, "paid_at": timestamp, "voided_at": None},
        "subscription": "sub_1QdevHooklineSub01",
        "subtotal": 4900,
        "tax": None,
        "total": 4900,
    }
    payload = {
        "id": "evt_1QdevHooklineEvt0001",
        "object": "event",
        "api_version": "2024-06-20",
        "created": timestamp,
        "data": {"object": invoice},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "invoice.paid",
    }
    # Stripe sends pretty-printed JSON: the signature must be checked over these exact bytes.
    body = json.dumps(payload, indent=2, ensure_ascii=False).encode()
    headers = {
        "accept": "*/*; q=0.5, application/xml",
        "cache-control": "no-cache",
        "content-type": "application/json; charset=utf-8",
        "stripe-signature": stripe_signature(DEV["STRIPE_WEBHOOK_SECRET"], timestamp, body),
        "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    return "stripe-invoice-paid.json", apigw_event(
        "POST", "/api/v1/billing/webhooks/stripe", headers, body,
        source_ip="54.187.174.169", request_id="XyZ5eGhpoAMEeFw=", at=timestamp,
    )


def twilio_event(name: str, params: list[tuple[str, str]], idempotency: str, request_id: str, *, b64: bool):
    path = "/api/v1/webhooks/twilio"
    url = DEV["WEBHOOK_BASE_URL"] + path  # + "?" + rawQueryString when there is one
    body = urllib.parse.urlencode(params).encode()
    headers = {
        "accept": "*/*",
        "content-type": "application/x-www-form-urlencoded",
        "i-twilio-idempotency-token": idempotency,
        "user-agent": "TwilioProxy/1.1",
        "x-home-region": "us1",
        "x-twilio-signature": twilio_signature(DEV["TWILIO_AUTH_TOKEN"], url, params),
    }
    return name, apigw_event(
        "POST", path, headers, body,
        source_ip="54.172.60.1", request_id=request_id, base64_body=b64,
    )


def twilio_message_status():
    # A status callback, base64-encoded as API Gateway hands form posts to Lambda.
    params = [
        ("SmsSid", "SM3f1c2a9b8e7d6c5b4a39281706f5e4d3"),
        ("SmsStatus", "delivered"),
        ("MessageStatus", "delivered"),
        ("To", "+15558675310"),
        ("MessageSid", "SM3f1c2a9b8e7d6c5b4a39281706f5e4d3"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", "+15017122661"),
        ("ApiVersion", "2010-04-01"),
        ("RawDlrDoneDate", "2601010000"),
    ]
    return twilio_event(
        "twilio-message-status.json", params, "b5e2c7a1-8f3d-4e6b-9a0c-1d2e3f4a5b6c",
        "XyZ6fGhpoAMEfGw=", b64=True,
    )


def twilio_inbound_message():
    # An incoming SMS, body as plain text: the same route, for the non-base64 path.
    params = [
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", "SMa8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3"),
        ("NumMedia", "0"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", "SMa8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3"),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", "Is the deploy done? Reply STATUS & I'll check."),
        ("FromCountry", "US"),
        ("To", "+15017122661"),
        ("ToZip", "94016"),
        ("NumSegments", "1"),
        ("MessageSid", "SMa8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", "+15558675310"),
        ("ApiVersion", "2010-04-01"),
    ]
    return twilio_event(
        "twilio-inbound-message.json", params, "c6f3d8b2-9a4e-4f7c-8b1d-2e3f4a5b6c7d",
        "XyZ7gGhpoAMEgHw=", b64=False,
    )


def whatsapp_message():
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
                            "messages": [
                                {
                                    "from": "16505551234",
                                    "id": "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                                    "timestamp": str(EPOCH),
                                    "type": "text",
                                    "text": {"body": "Is the deploy done?"},
                                }
                            ],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }
    body = compact(payload)
    headers = {
        "accept": "*/*",
        "content-type": "application/json",
        "user-agent": "facebookexternalua",
        **github_signatures(DEV["WHATSAPP_APP_SECRET"], body),
    }
    return "whatsapp-message.json", apigw_event(
        "POST", "/api/v1/webhooks/whatsapp", headers, body,
        source_ip="173.252.127.1", request_id="XyZ8hGhpoAMEhIw=",
    )


def whatsapp_verify():
    query = [
        ("hub.mode", "subscribe"),
        ("hub.challenge", "1158201444"),
        ("hub.verify_token", DEV["WHATSAPP_VERIFY_TOKEN"]),
    ]
    headers = {
        "accept": "*/*",
        "accept-encoding": "deflate, gzip",
        "user-agent": "facebookplatform/1.0 (+http://developers.facebook.com)",
    }
    return "whatsapp-verify.json", apigw_event(
        "GET", "/api/v1/webhooks/whatsapp", headers, None,
        source_ip="173.252.127.2", request_id="XyZ9iGhpoAMEiJw=", query=query,
    )


# --------------------------------------------------------------------------------------------
# The authenticated API functions. Their bearer token is a placeholder in the shape of a
# Hookline JWT (EdDSA, the claims the API reads) that verifies nowhere: a function answers it
# 401. Swap in a real one (`hookline token --org org_acme --user user_mona --scopes ...`) to
# invoke them for real; shared/tests/lambda_events.rs does that.
# --------------------------------------------------------------------------------------------

API_ORG = "org_acme"
API_USER = "user_mona"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def placeholder_jwt(scope: str) -> str:
    header = {"alg": "EdDSA", "typ": "JWT", "kid": "local-0000000000000000"}
    claims = {
        "iss": "hookline-local",
        "aud": "hookline",
        "sub": API_USER,
        "org_id": API_ORG,
        "scope": scope,
        "iat": EPOCH,
        "exp": EPOCH + 3600,
        "jti": "00000000-0000-4000-8000-000000000000",
    }
    signature = b"placeholder signature: replace this token".ljust(64, b".")
    return ".".join([b64url(compact(header)), b64url(compact(claims)), b64url(signature)])


def api_event(name: str, path: str, *, route: str, proxy: str | None, scope: str | None,
              request_id: str, query: list[tuple[str, str]] | None = None,
              cookies: list[str] | None = None, method: str = "GET", body: dict | None = None,
              params: dict[str, str] | None = None):
    headers = {
        "accept": "application/json",
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    }
    if scope is not None:
        headers["authorization"] = "Bearer " + placeholder_jwt(scope)
    raw = None
    if body is not None:
        headers["content-type"] = "application/json"
        raw = compact(body)
    return name, apigw_event(
        method, path, headers, raw,
        source_ip="203.0.113.24", request_id=request_id, query=query,
        route=route, path_parameters=params or ({"proxy": proxy} if proxy else None),
        cookies=cookies,
    )


def repositories_list_connections():
    return api_event(
        "repositories-api-list-connections.json", "/api/v1/repositories/connections",
        route="/api/v1/repositories/{proxy+}", proxy="connections", scope="repos:read",
        request_id="XyZ7cGhpoAMEgDw=", query=[("limit", "20")],
    )


# The delivery the replay sample names: a GitHub delivery of org_acme's connected repository.
REPLAY_KEY = "github#72d3162e-cc78-11e3-81ab-4c9367dc0958"
REPLAY_ID = "whd_" + base64.urlsafe_b64encode(REPLAY_KEY.encode()).decode().rstrip("=")


def repositories_list_webhook_deliveries():
    return api_event(
        "repositories-api-list-webhook-deliveries.json", "/api/v1/webhooks/deliveries",
        route="/api/v1/webhooks/deliveries", proxy=None, scope="repos:read",
        request_id="XyZFcGhpoAMEoDw=", query=[("status", "failed"), ("limit", "20")],
    )


def repositories_get_webhook_delivery():
    return api_event(
        "repositories-api-get-webhook-delivery.json",
        f"/api/v1/webhooks/deliveries/{REPLAY_ID}",
        route="/api/v1/webhooks/deliveries/{proxy+}", proxy=REPLAY_ID,
        scope="repos:read", request_id="XyZHcGhpoAMEqDw=",
    )


def repositories_replay_webhook_delivery():
    return api_event(
        "repositories-api-replay-webhook-delivery.json",
        f"/api/v1/webhooks/deliveries/{REPLAY_ID}/replay",
        route="/api/v1/webhooks/deliveries/{proxy+}", proxy=f"{REPLAY_ID}/replay",
        scope="repos:write", request_id="XyZGcGhpoAMEpDw=", method="POST",
    )


def oauth_authorize():
    return api_event(
        "oauth-api-github-authorize.json", "/api/v1/oauth/github/authorize",
        route="/api/v1/oauth/{proxy+}", proxy="github/authorize", scope="repos:write",
        request_id="XyZ8cGhpoAMEhDw=", query=[("format", "json")],
    )


def oauth_callback():
    # What GitHub's redirect brings back: no bearer token, a code and the state Hookline
    # signed (this one is not signed by any server's key: it is refused as invalid_state),
    # with the cookie authorize set in the browser that started it (its value the nonce).
    nonce = "AAAAAAAAAAAAAAAAAAAAAA"
    state = b64url(compact({"u": API_USER, "o": API_ORG, "p": "github", "t": EPOCH,
                            "n": nonce})) + "." + b64url(b"\0" * 32)
    return api_event(
        "oauth-api-github-callback.json", "/api/v1/oauth/github/callback",
        route="/api/v1/oauth/{proxy+}", proxy="github/callback", scope=None,
        request_id="XyZ9cGhpoAMEiDw=", query=[("code", "0f3c9a2b7d5e4c1a8b6f"), ("state", state)],
        cookies=[f"hookline_oauth_github={nonce}"],
    )


def incidents_list():
    return api_event(
        "incidents-api-list.json", "/api/v1/incidents",
        route="/api/v1/incidents", proxy=None, scope="repos:read",
        request_id="XyZAcGhpoAMEjDw=",
        query=[("repository", "acme/hookline-demo"), ("status", "open")],
    )


def endpoints_create():
    return api_event(
        "endpoints-api-create.json", "/api/v1/endpoints",
        route="/api/v1/endpoints", proxy=None, scope="webhooks:manage",
        request_id="XyZBcGhpoAMEkDw=", method="POST",
        body={"url": "https://receiver.example.com/hookline", "event_types": ["invoice.paid", "github.*"],
              "description": "Billing system"},
    )


def endpoints_list_deliveries():
    return api_event(
        "endpoints-api-list-deliveries.json", "/api/v1/deliveries",
        route="/api/v1/deliveries", proxy=None, scope="webhooks:manage",
        request_id="XyZCcGhpoAMElDw=", query=[("status", "dead_lettered"), ("limit", "20")],
    )


def endpoints_openapi():
    # The API's description: no token needed (a client generator fetches it as it is).
    return api_event(
        "endpoints-api-openapi.json", "/api/v1/openapi.json",
        route="/api/v1/openapi.json", proxy=None, scope=None,
        request_id="XyZCcGhpoAMEoDw=",
    )


def events_publish():
    return api_event(
        "events-api-publish.json", "/api/v1/events",
        route="/api/v1/events", proxy=None, scope="events:write",
        request_id="XyZDcGhpoAMEmDw=", method="POST",
        body={"type": "invoice.paid", "id": "inv_2026_0042_paid",
              "data": {"invoice_id": "inv_2026_0042", "amount": 4200, "currency": "eur"}},
    )


def licenses_issue():
    # The operator's token: `licenses:issue` must be granted by name (admin never implies it).
    return api_event(
        "licenses-api-issue.json", "/api/v1/licenses",
        route="/api/v1/licenses", proxy=None, scope="licenses:issue",
        request_id="XyZEcGhpoAMEnDw=", method="POST",
        body={"org_id": "org_selfhosted_globex", "tier": "enterprise", "seats": 50,
              "expires_at": "2030-01-01T00:00:00Z"},
    )


def billing_entitlements():
    # Any token of the org reads its own entitlements; the route names the org.
    return api_event(
        "billing-api-entitlements.json", f"/api/v1/billing/entitlements/{API_ORG}",
        route="/api/v1/billing/entitlements/{org_id}", proxy=None, scope="repos:read",
        request_id="XyZFcGhpoAMEoDw=", params={"org_id": API_ORG},
    )


def billing_checkout():
    return api_event(
        "billing-api-checkout.json", "/api/v1/billing/checkout",
        route="/api/v1/billing/checkout", proxy=None, scope="billing:manage",
        request_id="XyZGcGhpoAMEpDw=", method="POST",
        body={"tier": "team", "success_url": "https://app.example.com/billing/done",
              "cancel_url": "https://app.example.com/billing"},
    )


def billing_reconcile_tick():
    """What billing-reconcile's schedule (EventBridge Scheduler) sends: `{}`, one pass."""
    return "billing-reconcile-schedule.json", {}


def hook_health_tick():
    """What hook-health's schedule (EventBridge Scheduler) sends: `{}`, one check of every hook."""
    return "hook-health-schedule.json", {}


def sqs_record(message_id: str, body: str, queue: str, offset_ms: int) -> dict:
    sent_ms = EPOCH * 1000 + offset_ms
    return {
        "messageId": message_id,
        "receiptHandle": "AQEB" + base64.b64encode(hashlib.sha256(message_id.encode()).digest() * 3).decode(),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(sent_ms),
            "SenderId": "AROAEXAMPLEROLEID:hookline-EventsApiFunction-AbC123",
            "ApproximateFirstReceiveTimestamp": str(sent_ms + 5),
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue}",
        "awsRegion": REGION,
    }


def sqs_dispatch():
    """The dispatcher's SQS event: "org_acme has new events"."""
    body = compact({"org_id": API_ORG}).decode()
    return "sqs-dispatch.json", {"Records": [sqs_record(
        "7b0c3a52-9f1e-4c8e-a1d4-3f6b2c9e8d71", body, "hookline-outbound-dispatch", 11)]}


def dispatch_sweep():
    """What the dispatcher's schedule (EventBridge Scheduler) sends: no Records, a sweep."""
    return "dispatcher-sweep.json", {}


def sqs_outbound_delivery():
    """The deliverer's SQS event: the first attempt at one delivery."""
    body = compact({
        "delivery_id": "dlv_0f3k8m2q9r7t5v1w3x6y8z0a2b",
        "org_id": API_ORG,
        "attempts_made": 0,
        "due_at_ms": 0,
        "manual": False,
    }).decode()
    return "sqs-outbound-delivery.json", {"Records": [sqs_record(
        "c4d8e2f6-1a3b-4c5d-9e7f-0a1b2c3d4e5f", body, "hookline-outbound-deliveries", 23)]}


def sqs_delivery(push_event: dict):
    """The worker's SQS event: one message carrying the envelope the pipeline enqueues for the
    github-push.json delivery (same delivery id, same raw body)."""
    head = {
        "source": "github",
        "delivery_id": push_event["headers"]["x-github-delivery"],
        "event_type": push_event["headers"]["x-github-event"],
        "received_at": iso(EPOCH),
    }
    # Envelope::to_message: the head as one line of JSON, a newline, the body as sent.
    body = compact(head).decode() + "\n" + push_event["body"]
    sent_ms = EPOCH * 1000 + 42
    event = {
        "Records": [
            {
                "messageId": "2e1424d4-f796-459a-8184-9c92662be6da",
                "receiptHandle": "AQEBzWwaftRI0KuVm4tP+/7q1rGgNqicHq4EHrxDHxAOtTdfyCXRsfA+xLVQ+QH/VfKf1Xbiq1o8qFPxA3m+qxhBkNvz6b4tVHLJM0sIbD9UQoN1ALCgMsdQ3D5X5jOe6u8nJ0DLX4W6KQJXLJvN+7P8zQmPXBTQtw==",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": str(sent_ms),
                    "SenderId": "AROAEXAMPLEROLEID:hookline-GithubWebhookFunction-AbC123",
                    "ApproximateFirstReceiveTimestamp": str(sent_ms + 7),
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:hookline-deliveries",
                "awsRegion": REGION,
            }
        ]
    }
    return "sqs-delivery.json", event


# --------------------------------------------------------------------------------------------


def build(stripe_ts: int) -> dict[str, dict]:
    events = dict(
        [
            github_push(),
            github_workflow_run_failure(),
            gitlab_pipeline(),
            jira_issue_created(),
            stripe_invoice_paid(stripe_ts),
            twilio_message_status(),
            twilio_inbound_message(),
            whatsapp_message(),
            whatsapp_verify(),
            repositories_list_connections(),
            repositories_list_webhook_deliveries(),
            repositories_get_webhook_delivery(),
            repositories_replay_webhook_delivery(),
            oauth_authorize(),
            oauth_callback(),
            incidents_list(),
            endpoints_create(),
            endpoints_list_deliveries(),
            endpoints_openapi(),
            events_publish(),
            licenses_issue(),
            billing_entitlements(),
            billing_checkout(),
            billing_reconcile_tick(),
            hook_health_tick(),
            sqs_dispatch(),
            dispatch_sweep(),
            sqs_outbound_delivery(),
        ]
    )
    name, sqs = sqs_delivery(events["github-push.json"])
    events[name] = sqs
    return events


def render(event: dict) -> str:
    return json.dumps(event, indent=2, ensure_ascii=False) + "\n"


def payloads(events: dict[str, dict]) -> dict[str, bytes]:
    """The raw body of every POST event, for `hookline send --file events/payloads/...`."""
    out = {}
    for name, event in events.items():
        if ("Records" in event or "requestContext" not in event
                or event["requestContext"]["http"]["method"] != "POST" or "-api-" in name):
            continue
        body = event.get("body") or ""
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8")
        ext = "txt" if name.startswith("twilio") else "json"
        out[f"payloads/{name[:-len('.json')]}.{ext}"] = raw
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "events", help="directory to write (default events/)")
    ap.add_argument("--stripe-timestamp", default=str(EPOCH),
                    help=f"Stripe's t= and the event's created: epoch seconds or 'now' (default {EPOCH})")
    ap.add_argument("--check", action="store_true", help="only compare with --out; exit 1 if stale")
    args = ap.parse_args()
    stripe_ts = int(time.time()) if args.stripe_timestamp == "now" else int(args.stripe_timestamp)

    events = build(stripe_ts)
    files = {name: render(event).encode("utf-8") for name, event in events.items()}
    files.update(payloads(events))
    stale = []
    if not args.check:
        (args.out / "payloads").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
    if stale:
        print("stale events (run python3 infra/make-events.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(events)} events to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
