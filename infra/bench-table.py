"""Print the criterion results under $CARGO_TARGET_DIR/criterion as the README's tables.

    cargo bench -p hookline-shared && python3 infra/bench-table.py
"""

import json
import os
from pathlib import Path

root = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/hookline/target")) / "criterion"


def median_ns(group: str, bench: str) -> float | None:
    # criterion keeps `group/bench/param` as `group_with_underscores/bench/param`
    path = root / group.replace("/", "_") / bench / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"]


def fmt(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


sizes = ["1KB", "25KB", "1MB"]
verifiers = [
    ("github", "hmac_sha256"),
    ("gitlab_token", None),
    ("gitlab_standard_webhooks", "hmac_sha256"),
    ("jira", "hmac_sha256"),
    ("stripe", "hmac_sha256"),
    ("twilio_form", "hmac_sha1"),
    ("twilio_json", "hmac_sha256"),
    ("whatsapp", "hmac_sha256"),
]
print("| verifier | " + " | ".join(f"{s} | × bare HMAC" for s in sizes) + " |")
print("|---|" + "---|---|" * len(sizes))
for bare in ("hmac_sha256", "hmac_sha1"):
    cells = [fmt(median_ns(f"verify/{s}", bare) or 0) + " | 1.00" for s in sizes]
    print(f"| bare {bare.replace('_', '-').upper()} | " + " | ".join(cells) + " |")
for name, bare in verifiers:
    cells = []
    for s in sizes:
        v = median_ns(f"verify/{s}", name)
        b = median_ns(f"verify/{s}", bare) if bare else None
        ratio = f"{v / b:.2f}" if v and b else "— (no MAC)"
        cells.append(f"{fmt(v) if v else '?'} | {ratio}")
    print(f"| {name} | " + " | ".join(cells) + " |")
cells = []
for s in sizes:
    v = median_ns(f"verify/{s}", "form_decode_url_crate")
    b = median_ns(f"verify/{s}", "hmac_sha1")
    cells.append(f"{fmt(v) if v else '?'} | {v / b:.2f}" if v and b else "? | ?")
print("| form decoding alone (`url` crate) | " + " | ".join(cells) + " |")

print()
print("| pipeline (verify → record → enqueue), GitHub push 2.7 KB | concurrency | per batch | deliveries/s |")
print("|---|---|---|---|")
for mode in ("fsync-every-commit", "fsync-at-checkpoint"):
    for n in (1, 64):
        v = median_ns("pipeline/github-push", f"{mode}/{n}")
        if v:
            print(f"| {mode} | {n} | {fmt(v)} | {n / (v / 1e9):,.0f} |")
