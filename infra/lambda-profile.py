#!/usr/bin/env python3
"""How big and how fast to start each Lambda function is, measured as Lambda would run it.

    infra/with-moto.sh python3 infra/lambda-profile.py --bin-dir DIR [--zip-dir DIR]
        [--runs 20] [--only NAME ...] [--json OUT]

infra/lambda-profile.sh builds what this needs and runs it; see there.

For each function binary in --bin-dir (host builds, so they run here) and the `hello-lambda`
floor beside them (a bare `lambda_runtime` function that answers `{}`):
- init: from just before the process is started until its first
  `GET /2018-06-01/runtime/invocation/next` reaches a fake Lambda Runtime API served here,
  over --runs cold starts (min / median / max);
- first and warm invocation: from handing it its sample event from events/ until its answer
  comes back, on the first invocation of every cold start (median) and on the second of one
  process; and init + first, what a request that met a cold start waited for (median);
- peak RSS: the process's VmHWM after the warm invocation.
And, from --zip-dir (`cargo lambda build --release --arm64`'s target/lambda), each arm64
`bootstrap` zipped with `zip -9` as `sam deploy` uploads it.

The AWS services behind the SDK are moto's (HOOKLINE_MOTO_ENDPOINT, set by with-moto.sh):
the table, queues, provider secret and KMS key are created the way template.yaml declares
them, and each function gets the environment template.yaml gives it (its globals, an HS256
issuer for the API functions). API events get a valid bearer token; the provider events are
signed with the dev secrets in events/README.md, which the provider secret holds.

Needs boto3 and PyJWT (the test venv has both). Prints a Markdown table; --json writes the
raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = "hello-lambda"
ISSUER = "https://issuer.example.com/"
AUDIENCE = "hookline-api"
HS256_SECRET = "profile-hs256-secret-of-at-least-32-bytes"
ORG = "org_acme"

# The sample event each function is invoked with (events/README.md says what each is).
EVENTS = {
    "github-webhook": "github-push.json",
    "gitlab-webhook": "gitlab-pipeline.json",
    "jira-webhook": "jira-issue-created.json",
    "stripe-webhook": "stripe-invoice-paid.json",
    "twilio-webhook": "twilio-inbound-message.json",
    "whatsapp-webhook": "whatsapp-message.json",
    "event-worker": "sqs-delivery.json",
    "repositories-api": "repositories-api-list-connections.json",
    "oauth-api": "oauth-api-github-authorize.json",
    "incidents-api": "incidents-api-list.json",
    "endpoints-api": "endpoints-api-list-deliveries.json",
    "events-api": "events-api-publish.json",
    "licenses-api": "licenses-api-issue.json",
    "billing-api": "billing-api-entitlements.json",
    "billing-reconcile": "billing-reconcile-schedule.json",
    "hook-health": "hook-health-schedule.json",
    "dispatcher": "sqs-dispatch.json",
    "deliverer": "sqs-outbound-delivery.json",
}

DEV_SECRETS = {
    "GITHUB_WEBHOOK_SECRET": "dev-github-secret",
    "GITLAB_WEBHOOK_TOKEN": "dev-gitlab-token",
    "GITLAB_WEBHOOK_SIGNING_TOKEN": "",
    "JIRA_WEBHOOK_SECRET": "dev-jira-secret",
    "STRIPE_WEBHOOK_SECRET": "whsec_dev_stripe_secret",
    "TWILIO_AUTH_TOKEN": "dev-twilio-token",
    "WHATSAPP_APP_SECRET": "dev-whatsapp-secret",
    "WHATSAPP_VERIFY_TOKEN": "dev-whatsapp-verify",
    "HOOKLINE_JWT_HS256_SECRET": HS256_SECRET,
}


# ---------------------------------------------------------------------------------------------
# The stack in moto


def aws_stack(endpoint: str) -> dict[str, str]:
    """Create the template's table, queues, secret and key in moto; the globals' environment."""
    import boto3

    name = f"prof-{os.getpid()}"
    kw = dict(endpoint_url=endpoint, region_name="us-east-1")
    ddb = boto3.client("dynamodb", **kw)
    keys = [("pk", "sk"), ("gsi1pk", "gsi1sk"), ("gsi2pk", "gsi2sk")]
    ddb.create_table(
        TableName=f"{name}-table",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": a, "AttributeType": "S"} for pair in keys for a in pair
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": h, "KeyType": "HASH"},
                    {"AttributeName": r, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, (h, r) in zip(("gsi1", "gsi2"), keys[1:])
        ],
    )
    sqs = boto3.client("sqs", **kw)
    queue = lambda q: sqs.create_queue(QueueName=f"{name}-{q}")["QueueUrl"]  # noqa: E731
    secret = boto3.client("secretsmanager", **kw).create_secret(
        Name=f"{name}/provider-secrets", SecretString=json.dumps(DEV_SECRETS)
    )["ARN"]
    key = boto3.client("kms", **kw).create_key()["KeyMetadata"]["Arn"]
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HOOKLINE_TABLE": f"{name}-table",
        "HOOKLINE_QUEUE_URL": queue("deliveries"),
        "HOOKLINE_DLQ_URL": queue("deliveries-dlq"),
        "HOOKLINE_SECRETS_ID": secret,
        "HOOKLINE_KMS_KEY_ID": key,
        "WEBHOOK_BASE_URL": "https://hooks.example.com",
        "HOOKLINE_PAYLOAD_RETENTION": "7d",
        "RUST_LOG": "info",
        "HOOKLINE_DISPATCH_QUEUE_URL": queue("dispatch"),
        "HOOKLINE_DISPATCH_DLQ_URL": queue("dispatch-dlq"),
        "HOOKLINE_OUTBOUND_QUEUE_URL": queue("outbound"),
        "HOOKLINE_OUTBOUND_DLQ_URL": queue("outbound-dlq"),
        "HOOKLINE_MAIL_FROM": "hookline@example.com",
        # The API functions' issuer: HS256 with the secret from the provider secret.
        "HOOKLINE_JWT_ISSUER": ISSUER,
        "HOOKLINE_JWT_AUDIENCE": AUDIENCE,
        "HOOKLINE_JWT_ALGORITHM": "HS256",
        # The Lambda runtime's own variables.
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": "profile",
        "AWS_LAMBDA_LOG_GROUP_NAME": "profile",
    }


def bearer(scopes: str) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user_mona",
        "org_id": ORG,
        "scope": scopes,
        "iat": now,
        "exp": now + 3600,
    }
    return "Bearer " + jwt.encode(claims, HS256_SECRET, algorithm="HS256")


def event_for(function: str, fresh_events: Path) -> bytes:
    if function == HELLO:
        return b"{}"
    # Stripe's signed timestamp must be recent: a copy of events/ regenerated now.
    path = fresh_events / EVENTS[function]
    event = json.loads(path.read_text())
    headers = event.get("headers")
    if isinstance(headers, dict) and "authorization" in headers:
        headers["authorization"] = bearer(
            "repos:read repos:write webhooks:manage events:write licenses:issue "
            "billing:manage admin"
        )
    return json.dumps(event).encode()


# ---------------------------------------------------------------------------------------------
# A fake Lambda Runtime API: hands out one event per `next`, notes when each call arrived.


class Runtime:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.event = b"{}"
        self.calls: list[tuple[str, float, bytes]] = []  # (kind, perf_counter, body)
        self.pending = 0  # events still to hand out
        self.generation = 0  # one per run: see do_GET
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self.server = server
        self.address = f"127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def _handler(self):
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body of the second
            # answer on a connection waited for a delayed ACK (40 ms of no one's making).
            disable_nagle_algorithm = True

            def log_message(self, *_):
                pass

            def _note(self, kind: str, body: bytes = b"") -> None:
                with runtime.lock:
                    runtime.calls.append((kind, time.perf_counter(), body))
                    runtime.lock.notify_all()

            def do_GET(self):  # noqa: N802
                if not self.path.endswith("/runtime/invocation/next"):
                    self.send_error(404)
                    return
                self._note("next")
                with runtime.lock:
                    # A `next` of a process killed before (an earlier run) must not take the
                    # event meant for this run's process: it gives up when the run changes.
                    generation = runtime.generation
                    while runtime.pending == 0:
                        runtime.lock.wait()
                        if runtime.generation != generation:
                            self.close_connection = True
                            return
                    runtime.pending -= 1
                    body = runtime.event
                    runtime.calls.append(("handed", time.perf_counter(), b""))
                    runtime.lock.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Lambda-Runtime-Aws-Request-Id", f"req-{time.time_ns()}")
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
                self.send_header(
                    "Lambda-Runtime-Invoked-Function-Arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:profile",
                )
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                kind = "error" if self.path.endswith("/error") else "response"
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._note(kind, body)

        return Handler

    def reset(self, event: bytes) -> None:
        with self.lock:
            self.event, self.calls, self.pending = event, [], 0
            self.generation += 1
            self.lock.notify_all()

    def wait_for(self, kind: str, count: int, timeout: float = 30.0) -> float:
        """The time of the `count`-th call of `kind`."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                seen = [c for c in self.calls if c[0] == kind or (kind == "answer" and c[0] in ("response", "error"))]
                if len(seen) >= count:
                    return seen[count - 1][1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} #{count} within {timeout}s")
                self.lock.wait(left)

    def hand_out(self) -> float:
        with self.lock:
            # Counted before the event is released: its `handed` may be noted at once.
            number = sum(1 for c in self.calls if c[0] == "handed") + 1
            self.pending += 1
            self.lock.notify_all()
        return self.wait_for("handed", number)


# ---------------------------------------------------------------------------------------------
# The AWS calls each invocation makes: the functions talk to moto through this proxy, which
# forwards every request unchanged and notes its operation and, for DynamoDB writes, the size of
# the item written (what a write request unit is charged on). The cost model reads these.


class AwsCalls:
    def __init__(self, upstream: str) -> None:
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.calls: list[dict] = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def take(self) -> list[dict]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls

    @staticmethod
    def describe(headers, path: str, body: bytes) -> dict:
        target = headers.get("X-Amz-Target") or ""
        if target:
            service, _, op = target.partition(".")
            service = {"DynamoDB_20120810": "DynamoDB", "AmazonSQS": "SQS", "TrentService": "KMS",
                       "secretsmanager": "SecretsManager"}.get(service, service)
        elif path.startswith("/v2/email"):
            service, op = "SES", "SendEmail" if "outbound-emails" in path else path
        else:
            from urllib.parse import parse_qs

            service, op = "other", (parse_qs(body.decode(errors="replace")).get("Action") or [path])[0]
        call = {"op": f"{service} {op}", "bytes": len(body)}
        if service == "DynamoDB" and op in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"):
            # DynamoDB sizes an item by its attribute names and values; the request's JSON is a
            # close upper bound for the items it writes (one write unit per started KB each).
            try:
                req = json.loads(body)
            except ValueError:
                req = {}
            items = []
            if "Item" in req:
                items.append(req["Item"])
            for t in req.get("TransactItems", []):
                for kind in ("Put", "Update", "Delete", "ConditionCheck"):
                    if kind in t:
                        items.append(t[kind].get("Item") or t[kind].get("Key") or {})
            for reqs in req.get("RequestItems", {}).values():
                for r in reqs:
                    items.append((r.get("PutRequest") or {}).get("Item") or (r.get("DeleteRequest") or {}).get("Key") or {})
            if not items and "Key" in req:
                items.append({**req["Key"], **req.get("ExpressionAttributeValues", {})})
            call["write_units"] = sum(max(1, -(-len(json.dumps(i)) // 1024)) for i in items)
        return call

    def _handler(self):
        calls = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # see Runtime's handler

            def log_message(self, *_):
                pass

            def _forward(self):
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                conn = http.client.HTTPConnection(calls.upstream.hostname, calls.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                res = conn.getresponse()
                data = res.read()
                with calls.lock:
                    calls.calls.append(AwsCalls.describe(self.headers, self.path, body))
                self.send_response(res.status)
                for k, v in res.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815

        return Handler


def summarise(calls: list[dict]) -> dict:
    ops: dict[str, int] = {}
    for c in calls:
        ops[c["op"]] = ops.get(c["op"], 0) + 1
    return {"ops": ops, "write_units": sum(c.get("write_units", 0) for c in calls)}


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def profile(binary: Path, function: str, env: dict[str, str], runtime: Runtime, runs: int, events: Path, aws: AwsCalls):
    event = event_for(function, events)
    inits, first, warm, rss, answers, aws_calls = [], [], [], [], [], {}
    for run in range(runs):
        runtime.reset(event)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(binary)],
            env={**env, "AWS_LAMBDA_RUNTIME_API": runtime.address, "AWS_LAMBDA_FUNCTION_NAME": function},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            inits.append(runtime.wait_for("next", 1) - started)
            if run == 0:
                aws_calls["init"] = summarise(aws.take())
            # The first invocation of every cold start (what it still waits for of the cold
            # start's work); a warm one, the calls and the memory once per function.
            invocations = (("first", first), ("warm", warm)) if run == 0 else (("first", first),)
            for number, (label, timings) in enumerate(invocations, start=1):
                handed = runtime.hand_out()
                timings.append(runtime.wait_for("answer", number) - handed)
                if run == 0:
                    time.sleep(0.05)  # a call still landing after the answer (none expected)
                    aws_calls[label] = summarise(aws.take())
            if run == 0:
                answers = [c for c in runtime.calls if c[0] in ("response", "error")]
                runtime.wait_for("next", 3)
                rss.append(peak_rss_kib(proc.pid))
            else:
                # Its next `next`, noted before the kill: one still in flight would outlive the
                # process and take the next run's event.
                runtime.wait_for("next", 2)
                aws.take()
        finally:
            proc.kill()
            _, err = proc.communicate()
        if run == 0 and (not answers or answers[0][0] == "error"):
            sys.stderr.write(f"{function}: the first invocation failed: {answers[:1]}\n{err.decode(errors='replace')[-2000:]}\n")
    return {
        "init_ms": [round(x * 1000, 2) for x in inits],
        "first_ms": [round(x * 1000, 2) for x in first],
        "warm_ms": round(warm[0] * 1000, 2) if warm else None,
        "peak_rss_kib": rss[0] if rss else None,
        "answer": answers[0][2][:300].decode(errors="replace") if answers else None,
        "aws_calls": aws_calls,
    }


def zipped_size(bootstrap: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "function.zip"
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            z.write(bootstrap, "bootstrap")
        return out.stat().st_size


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True, type=Path, help="host release binaries (target/release)")
    ap.add_argument("--zip-dir", type=Path, help="cargo lambda's target/lambda (arm64 bootstraps)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--only", nargs="*", help="functions to measure (default: every one)")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    ap.add_argument("--count-calls", action="store_true",
                    help="list each function's AWS calls (through a proxy that slows every call)")
    args = ap.parse_args()

    endpoint = os.environ.get("HOOKLINE_MOTO_ENDPOINT")
    if not endpoint:
        sys.exit("lambda-profile: HOOKLINE_MOTO_ENDPOINT is not set; run it under infra/with-moto.sh")
    names = args.only or sorted(p.name for p in (ROOT / "functions").iterdir() if p.is_dir())
    unknown = [n for n in names if n not in EVENTS]
    if unknown:
        sys.exit(f"lambda-profile: no sample event for {unknown}: add it to EVENTS")
    missing = [n for n in [HELLO, *names] if not (args.bin_dir / n).is_file()]
    if missing:
        sys.exit(f"lambda-profile: not built in {args.bin_dir}: {missing}")

    env = aws_stack(endpoint)
    aws = AwsCalls(endpoint)
    if args.count_calls:
        # Through the counting proxy: each call pays its hop, so the timings are not comparable.
        env["AWS_ENDPOINT_URL"] = aws.url
    fresh_events = Path(tempfile.mkdtemp(prefix="hookline-events-"))
    subprocess.run(
        [sys.executable, str(ROOT / "infra/make-events.py"), "--out", str(fresh_events), "--stripe-timestamp", "now"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    runtime = Runtime()
    results = {}
    for name in [HELLO, *names]:
        print(f"lambda-profile: {name} ({args.runs} cold starts)", file=sys.stderr, flush=True)
        aws.take()
        r = profile(args.bin_dir / name, name, env, runtime, args.runs, fresh_events, aws)
        if args.zip_dir and name != HELLO:
            bootstrap = args.zip_dir / name / "bootstrap"
            r["zip_bytes"] = zipped_size(bootstrap) if bootstrap.is_file() else None
        results[name] = r

    floor = statistics.median(results[HELLO]["init_ms"])
    print(f"\n| function | zipped (arm64) | init min / median / max | × {HELLO} | first invocation (median) / warm | init + first (median) | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        init = r["init_ms"]
        med = statistics.median(init)
        size = f"{r['zip_bytes'] / 1e6:.2f} MB" if r.get("zip_bytes") else "—"
        rss = f"{r['peak_rss_kib'] / 1024:.1f} MB" if r["peak_rss_kib"] else "—"
        first = statistics.median(r["first_ms"]) if r["first_ms"] else None
        cold = statistics.median(i + f for i, f in zip(init, r["first_ms"])) if first is not None else None
        print(
            f"| {name} | {size} | {min(init):.1f} / {med:.1f} / {max(init):.1f} ms | {med / floor:.2f} "
            f"| {ms(first)} / {ms(r['warm_ms'])} | {ms(cold)} | {rss} |"
        )
    if not args.count_calls:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    print("\n| function | AWS calls of its sample event, first invocation (and at cold start) | DynamoDB write units |")
    print("|---|---|---|")
    for name, r in results.items():
        if name == HELLO:
            continue
        calls = r["aws_calls"]
        warm_ops = ", ".join(f"{op} ×{n}" for op, n in sorted(calls.get("first", {}).get("ops", {}).items())) or "none"
        init_ops = ", ".join(f"{op} ×{n}" for op, n in sorted(calls.get("init", {}).get("ops", {}).items()))
        print(f"| {name} | {warm_ops}{f' (cold start: {init_ops})' if init_ops else ''} | {calls.get('first', {}).get('write_units', 0)} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
