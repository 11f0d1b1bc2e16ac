#!/usr/bin/env python3
"""What a million inbound webhooks and a million outbound deliveries cost on AWS, from measured
durations, memory sizes, AWS calls and item sizes.

    infra/with-moto.sh python3 infra/cost-model.py --bin-dir DIR [--runs 30] [--json OUT]

infra/lambda-profile.sh builds the binaries (host release builds of the functions) and runs
this after its cold-start table. Needs the test venv (boto3, PyJWT).

Each function binary is kept warm behind a fake Lambda Runtime API, as Lambda keeps it, with
moto behind the AWS SDK (through a proxy that notes every AWS call, and the size of each item
written: infra/lambda-profile.py's `AwsCalls`). Then, --runs times each, whole chains run as
they run on AWS:

- inbound: octokit's real 17 KB `workflow_run` example, signed with the GitHub secret, to
  `github-webhook` (verify, dedupe, keep the payload, queue); the message it sent, read back
  from the queue, to `event-worker` (claim, process, finish);
- outbound: `POST /api/v1/events` to `events-api` (an `invoice.paid` event for an org with one
  subscribed endpoint); the dispatch signal it sent to `dispatcher` (fan-out: one delivery);
  the delivery message to `deliverer`, which signs it and POSTs it to a receiver on loopback.

For each function: the median duration (what Lambda bills, rounded up to the millisecond), its
AWS calls, DynamoDB write units and log bytes (CloudWatch Logs ingestion: JSON log lines and
the EMF metrics). Prices are AWS's published list prices for us-east-1 (PRICES below, with
the date they were read); the durations are against moto on loopback, whose per-call latency
(~1-3 ms of Python) is of the order of DynamoDB's and SQS's within a region.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib.util
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("lambda_profile", ROOT / "infra/lambda-profile.py")
profile = importlib.util.module_from_spec(_spec)
sys.modules["lambda_profile"] = profile
_spec.loader.exec_module(profile)

MEMORY_MB = 256  # template.yaml's Globals.Function.MemorySize
GITHUB_SECRET = profile.DEV_SECRETS["GITHUB_WEBHOOK_SECRET"]
PAYLOAD = ROOT / "events/payloads/github-workflow-run-octokit.json"

# AWS list prices, us-east-1, as published on the services' pricing pages (read 2026-12).
PRICES = {
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "http_api_request": 1.00 / 1e6,  # first 300 million a month; per 512 KB of request
    "dynamodb_write_unit": 0.625 / 1e6,  # on-demand
    "dynamodb_read_unit": 0.125 / 1e6,  # on-demand; one per strongly consistent 4 KB
    "sqs_request": 0.40 / 1e6,  # standard queue; per 64 KB chunk
    "kms_request": 0.03 / 1e4,
    "ses_message": 0.10 / 1e3,
    "secrets_manager_call": 0.05 / 1e4,
    "logs_ingested_gb": 0.50,
}
# The seeds' stack, for comparison: one small always-on server and a Redis, per month
# (on-demand, us-east-1, 730 h): EC2 t4g.small, ElastiCache cache.t4g.micro, an ALB's hours.
ALWAYS_ON = {
    "EC2 t4g.small (2 vCPU, 2 GiB)": 0.0168 * 730,
    "ElastiCache cache.t4g.micro (Redis)": 0.016 * 730,
    "Application Load Balancer (hours only)": 0.0225 * 730,
}


class Function:
    """One function process kept warm behind its own fake Lambda Runtime API."""

    def __init__(self, binary: Path, name: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.events: queue.Queue[bytes] = queue.Queue()
        self.answers: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.log_path = logs / f"{name}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary)],
            env={
                **env,
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
                "AWS_LAMBDA_FUNCTION_NAME": name,
            },
            stdout=log,
            stderr=log,
        )

    def _handler(self):
        fn = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # see infra/lambda-profile.py's Runtime

            def log_message(self, *_):
                pass

            def do_GET(self):  # noqa: N802
                body = fn.events.get()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Lambda-Runtime-Aws-Request-Id", str(uuid.uuid4()))
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 60000))
                self.send_header(
                    "Lambda-Runtime-Invoked-Function-Arn",
                    f"arn:aws:lambda:us-east-1:123456789012:function:{fn.name}",
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                kind = "error" if self.path.endswith("/error") else "response"
                fn.answers.put((kind, body, time.perf_counter()))

        return Handler

    def invoke(self, event: dict) -> tuple[dict, float, int]:
        """The answer, the duration in seconds, and the log bytes it wrote."""
        before = self.log_path.stat().st_size
        started = time.perf_counter()
        self.events.put(json.dumps(event).encode())
        kind, body, answered = self.answers.get(timeout=60)
        time.sleep(0.02)  # its last log lines (the EMF metrics follow the answer)
        if kind != "response":
            raise RuntimeError(f"{self.name} failed: {body[:500]!r}\n{self.tail()}")
        return json.loads(body or b"null"), answered - started, self.log_path.stat().st_size - before

    def tail(self) -> str:
        return self.log_path.read_bytes()[-3000:].decode(errors="replace")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Receiver:
    """The customer's endpoint: answers 200 to every POST, counts them."""

    def __init__(self) -> None:
        self.received = 0
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # see infra/lambda-profile.py's Runtime

            def log_message(self, *_):
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rx.received += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hookline"


def api_event(sample: str, method: str, path: str, body: str, token: str | None) -> dict:
    event = json.loads((ROOT / "events" / sample).read_text())
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["routeKey"] = event["requestContext"]["routeKey"] = f"{method} {path}"
    event["requestContext"]["http"]["method"] = method
    event["body"], event["isBase64Encoded"] = body, False
    event["headers"]["content-length"] = str(len(body.encode()))
    if token:
        event["headers"]["authorization"] = token
    return event


def github_event(body: bytes, delivery: str) -> dict:
    event = json.loads((ROOT / "events/github-push.json").read_text())
    signature = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256)
    event["headers"].update(
        {
            "x-github-delivery": delivery,
            "x-github-event": "workflow_run",
            "x-hub-signature-256": f"sha256={signature.hexdigest()}",
            "x-hub-signature": "sha1=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha1).hexdigest(),
            "content-length": str(len(body)),
        }
    )
    event["body"], event["isBase64Encoded"] = body.decode(), False
    return event


def sqs_event(sqs, queue_url: str, tries: int = 50) -> dict:
    """One message from `queue_url`, as Lambda's SQS event source hands it to a function."""
    for _ in range(tries):
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if got:
            m = got[0]
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            attributes = {
                k: v
                for k, v in m.get("Attributes", {}).items()
                if k in ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp")
            }
            return {
                "Records": [
                    {
                        "messageId": m["MessageId"],
                        "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"],
                        "attributes": attributes,
                        "messageAttributes": {
                            k: {"stringValue": v.get("StringValue"), "dataType": v["DataType"],
                                "stringListValues": [], "binaryListValues": []}
                            for k, v in m.get("MessageAttributes", {}).items()
                        },
                        "md5OfBody": m["MD5OfBody"],
                        "eventSource": "aws:sqs",
                        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue_url.rsplit('/', 1)[1]}",
                        "awsRegion": "us-east-1",
                    }
                ]
            }
    raise TimeoutError(f"no message arrived on {queue_url}")


def measure(fn: Function, event: dict, aws, rows: dict) -> dict:
    aws.take()
    answer, seconds, log_bytes = fn.invoke(event)  # it waits for the last calls and log lines
    calls = profile.summarise(aws.take())
    row = rows.setdefault(fn.name, {"ms": [], "log_bytes": [], "calls": []})
    row["ms"].append(seconds * 1000)
    row["log_bytes"].append(log_bytes)
    row["calls"].append(calls)
    return answer


def status_of(answer: dict) -> int:
    return int(answer.get("statusCode", 0)) if isinstance(answer, dict) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True, type=Path, help="host release binaries (target/release)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args()
    endpoint = os.environ.get("HOOKLINE_MOTO_ENDPOINT")
    if not endpoint:
        sys.exit("cost-model: HOOKLINE_MOTO_ENDPOINT is not set; run it under infra/with-moto.sh")
    import boto3

    env = profile.aws_stack(endpoint)
    aws = profile.AwsCalls(endpoint)
    env.update(
        {
            "AWS_ENDPOINT_URL": aws.url,
            "RUST_LOG": "info",
            # The receiver is on loopback: allowed here as for local development.
            "OUTBOUND_ALLOW_HTTP": "true",
            "OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
        }
    )
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    logs = Path(tempfile.mkdtemp(prefix="hookline-cost-"))
    names = ["github-webhook", "event-worker", "endpoints-api", "events-api", "dispatcher", "deliverer"]
    missing = [n for n in names if not (args.bin_dir / n).is_file()]
    if missing:
        sys.exit(f"cost-model: not built in {args.bin_dir}: {missing}")
    fns = {n: Function(args.bin_dir / n, n, env, logs) for n in names}
    receiver = Receiver()
    token = profile.bearer("webhooks:manage events:write admin")
    rows: dict[str, dict] = {}
    body = PAYLOAD.read_bytes()
    try:
        # One endpoint subscribed to invoice.paid; its webhook.test delivered before measuring.
        answer, _, _ = fns["endpoints-api"].invoke(
            api_event(
                "endpoints-api-create.json",
                "POST",
                "/api/v1/endpoints",
                json.dumps({"url": receiver.url, "event_types": ["invoice.paid"]}),
                token,
            )
        )
        if status_of(answer) != 201:
            sys.exit(f"cost-model: creating the endpoint answered {answer}\n{fns['endpoints-api'].tail()}")
        # Everything the new endpoint set off (the dispatch signal, its test delivery, any
        # repeat), drained before measuring.
        for name, url in [("dispatcher", "HOOKLINE_DISPATCH_QUEUE_URL"), ("deliverer", "HOOKLINE_OUTBOUND_QUEUE_URL")] * 2:
            while True:
                try:
                    fns[name].invoke(sqs_event(sqs, env[url], tries=2))
                except TimeoutError:
                    break
        if receiver.received != 1:
            sys.exit(f"cost-model: the endpoint's webhook.test did not arrive\n{fns['deliverer'].tail()}")

        for run in range(args.runs + 1):
            scratch: dict[str, dict] = {}
            target = rows if run else scratch  # the first round warms every function up
            answer = measure(fns["github-webhook"], github_event(body, f"cost-{uuid.uuid4()}"), aws, target)
            if status_of(answer) != 202:
                sys.exit(f"cost-model: github-webhook answered {answer}\n{fns['github-webhook'].tail()}")
            answer = measure(fns["event-worker"], sqs_event(sqs, env["HOOKLINE_QUEUE_URL"]), aws, target)
            if answer.get("batchItemFailures"):
                sys.exit(f"cost-model: event-worker failed {answer}\n{fns['event-worker'].tail()}")
            publish = json.dumps(
                {
                    "type": "invoice.paid",
                    "id": f"inv_cost_{run}_{uuid.uuid4().hex[:8]}",
                    "data": {"invoice_id": f"in_{run}", "amount": 4200, "currency": "eur",
                             "customer": "cus_cost", "lines": [{"description": "Team plan", "amount": 4200}]},
                }
            )
            answer = measure(fns["events-api"], api_event("events-api-publish.json", "POST", "/api/v1/events", publish, token), aws, target)
            if status_of(answer) != 202:
                sys.exit(f"cost-model: events-api answered {answer}\n{fns['events-api'].tail()}")
            measure(fns["dispatcher"], sqs_event(sqs, env["HOOKLINE_DISPATCH_QUEUE_URL"]), aws, target)
            before = receiver.received
            message = sqs_event(sqs, env["HOOKLINE_OUTBOUND_QUEUE_URL"])
            answer = measure(fns["deliverer"], message, aws, target)
            if receiver.received != before + 1:
                sys.exit(f"cost-model: the delivery did not arrive (round {run}, received {receiver.received}, "
                         f"answer {answer}, message {message['Records'][0]['body']})")
            print(f"cost-model: round {run}/{args.runs}", file=sys.stderr, end="\r", flush=True)
        print(file=sys.stderr)
    finally:
        for fn in fns.values():
            fn.stop()

    report = {}
    for name, row in rows.items():
        report[name] = {
            "median_ms": statistics.median(row["ms"]),
            "p90_ms": sorted(row["ms"])[int(len(row["ms"]) * 0.9) - 1],
            "log_bytes": statistics.median(row["log_bytes"]),
            "ops": dict(row["calls"][-1]["ops"]),
            "write_units": statistics.median(c["write_units"] for c in row["calls"]),
        }
    print_report(report, len(body))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def function_cost(r: dict) -> dict[str, float]:
    """Dollars per invocation of one function, by line item."""
    billed_ms = int(r["median_ms"]) + 1
    reads = sum(n for op, n in r["ops"].items() if op.split()[0] == "DynamoDB" and op.split()[1] in ("GetItem", "Query", "BatchGetItem", "TransactGetItems"))
    sqs = sum(n for op, n in r["ops"].items() if op.startswith("SQS "))
    kms = sum(n for op, n in r["ops"].items() if op.startswith("KMS "))
    ses = sum(n for op, n in r["ops"].items() if op.startswith("SES "))
    return {
        "Lambda requests": PRICES["lambda_request"],
        "Lambda duration": billed_ms / 1000 * MEMORY_MB / 1024 * PRICES["lambda_gb_second_arm64"],
        "DynamoDB writes": r["write_units"] * PRICES["dynamodb_write_unit"],
        "DynamoDB reads": reads * PRICES["dynamodb_read_unit"],
        "SQS (sent by the function)": sqs * PRICES["sqs_request"],
        "KMS": kms * PRICES["kms_request"],
        "SES": ses * PRICES["ses_message"],
        "CloudWatch Logs": r["log_bytes"] / 1e9 * PRICES["logs_ingested_gb"],
    }


def print_report(report: dict, payload_bytes: int) -> None:
    print("\n| function | median / p90 duration | AWS calls per invocation | DynamoDB write units | log bytes |")
    print("|---|---|---|---|---|")
    for name, r in report.items():
        ops = ", ".join(f"{op} ×{n}" for op, n in sorted(r["ops"].items()))
        print(f"| {name} | {r['median_ms']:.1f} / {r['p90_ms']:.1f} ms | {ops} | {r['write_units']:.0f} | {r['log_bytes']:.0f} |")

    # Per message, Lambda's SQS poller receives and deletes in batches: at steady volume a
    # batch of 10 is one ReceiveMessage and one DeleteMessageBatch (0.2 requests a message);
    # its empty long polls cost the same whatever the volume (~$1 a month per queue).
    poller = 2 / 10
    chains = {
        f"1 million inbound GitHub deliveries ({payload_bytes / 1000:.0f} KB workflow_run)": (
            ["github-webhook", "event-worker"], 1),
        "1 million outbound deliveries (one event → one endpoint)": (
            ["events-api", "dispatcher", "deliverer"], 2),
    }
    for title, (functions, queues) in chains.items():
        items: dict[str, float] = {}
        for name in functions:
            for item, dollars in function_cost(report[name]).items():
                items[item] = items.get(item, 0.0) + dollars * 1e6
        items["SQS (Lambda's poller: receive + delete)"] = queues * poller * PRICES["sqs_request"] * 1e6
        items["HTTP API requests"] = PRICES["http_api_request"] * 1e6
        total = sum(items.values())
        print(f"\n**{title}**: ${total:.2f}\n")
        print("| item | $ per million |")
        print("|---|---|")
        for item, dollars in sorted(items.items(), key=lambda kv: -kv[1]):
            if dollars > 0:
                print(f"| {item} | {dollars:.3f} |")
    monthly = sum(ALWAYS_ON.values())
    print(f"\n**The seeds' stack** (always on, whatever the volume): ${monthly:.2f} a month — "
          + ", ".join(f"{k} ${v:.2f}" for k, v in ALWAYS_ON.items()) + ".")


if __name__ == "__main__":
    sys.exit(main())
