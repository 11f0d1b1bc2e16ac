#!/usr/bin/env python3
"""The few GitHub REST calls a repository connection makes, for infra/load.sh's connected
mode: list a repository's hooks, create one (201 with the hook, as GitHub documents), ping it
(204), read the repository. The secret Hookline gives the new hook is written to SECRET_FILE,
so the load generator can sign deliveries with it as GitHub would.

    github-stub.py PORT SECRET_FILE
"""
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, secret_file = int(sys.argv[1]), sys.argv[2]
hooks = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/hooks)?(\?.*)?", self.path)
        if not m:
            return self.answer(404, {"message": "Not Found"})
        repo = f"{m[1]}/{m[2]}"
        if m[3]:
            return self.answer(200, list(hooks.get(repo, {}).values()))
        return self.answer(200, {"full_name": repo, "archived": False, "pushed_at": None})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if re.fullmatch(r"/repos/[^/]+/[^/]+/hooks/\d+/pings", self.path):
            return self.answer(204)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/hooks", self.path)
        if not m:
            return self.answer(404, {"message": "Not Found"})
        repo = f"{m[1]}/{m[2]}"
        config = body.get("config", {})
        with open(secret_file, "w") as f:
            f.write(config.get("secret", ""))
        hook = {
            "id": len(hooks) + 1,
            "active": body.get("active", True),
            "events": body.get("events", []),
            "config": {"url": config.get("url"), "content_type": config.get("content_type")},
            "created_at": "2026-01-01T00:00:00Z",
        }
        hooks.setdefault(repo, {})[hook["id"]] = hook
        return self.answer(201, hook)


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
