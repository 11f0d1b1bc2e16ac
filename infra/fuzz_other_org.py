#!/usr/bin/env python3
"""Another org's data, seeded before the API is fuzzed and checked unchanged after it.

    fuzz_other_org.py seed  BASE_URL TOKEN SNAPSHOT.json   # create, then snapshot
    fuzz_other_org.py check BASE_URL TOKEN SNAPSHOT.json   # snapshot again, compare

The org gets a profile, a disabled endpoint (so nothing is sent to it and it does not change
by itself), a repository connection without a hook, and a published event. The snapshot is
what the org's own token reads back: a change made by the fuzzer's org shows as a difference.
"""

import json
import sys
import urllib.error
import urllib.request


def call(base, token, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def expect(status, body, wanted, what):
    if status not in wanted:
        sys.exit(f"fuzz_other_org: {what} answered {status}: {body}")
    return body


def seed(base, token):
    expect(*call(base, token, "PATCH", "/api/v1/org",
                 {"name": "Other Org", "owner_email": "owner@other.example"}), (200,), "PATCH /org")
    expect(*call(base, token, "POST", "/api/v1/endpoints", {
        "url": "http://127.0.0.1:9/other", "event_types": ["invoice.paid"],
        "description": "the other org's", "enabled": False}), (201,), "POST /endpoints")
    expect(*call(base, token, "POST", "/api/v1/repositories/connect", {
        "repository_full_name": "other/repository", "setup_webhook": False}),
        (201,), "POST /repositories/connect")
    expect(*call(base, token, "POST", "/api/v1/events", {
        "type": "invoice.paid", "id": "other_evt_1", "data": {"invoice": "inv_other"}}),
        (202,), "POST /events")


def snapshot(base, token):
    get = lambda path: expect(*call(base, token, "GET", path), (200,), "GET " + path)
    endpoints = get("/api/v1/endpoints")["endpoints"]
    return {
        "org": get("/api/v1/org"),
        "endpoints": endpoints,
        "secrets": [get(f"/api/v1/endpoints/{e['id']}/secret") for e in endpoints],
        "connections": get("/api/v1/repositories/connections")["connections"],
        "event": get("/api/v1/events/other_evt_1"),
    }


def main():
    action, base, token, path = sys.argv[1:5]
    if action == "seed":
        seed(base, token)
        with open(path, "w") as f:
            json.dump(snapshot(base, token), f, indent=2, sort_keys=True)
        return
    with open(path) as f:
        before = json.load(f)
    after = snapshot(base, token)
    if after != before:
        print("the other org's data changed while the API was fuzzed:", file=sys.stderr)
        for key in before:
            if before[key] != after.get(key):
                print(f"  {key}:\n    before {before[key]}\n    after  {after.get(key)}", file=sys.stderr)
        sys.exit(1)
    print(f"the other org's data is unchanged ({len(after['endpoints'])} endpoint, "
          f"{len(after['connections'])} connection, its profile and event)")


if __name__ == "__main__":
    main()
