//! The `hookline` binary as a user runs it: `serve` in one process, `send`, `sign` and
//! `deliveries` in others, on a temporary data dir and a free loopback port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hookline::providers::simulate::Simulation;

const HOOKLINE: &str = env!("CARGO_BIN_EXE_hookline");
const GITHUB_PUSH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/payloads/github-push.json"
);
const STRIPE_INVOICE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/payloads/stripe-invoice-paid.json"
);

/// The dev secrets of `events/README.md`.
const DEV_SECRETS: [(&str, &str); 7] = [
    ("GITHUB_WEBHOOK_SECRET", "dev-github-secret"),
    ("GITLAB_WEBHOOK_TOKEN", "dev-gitlab-token"),
    ("JIRA_WEBHOOK_SECRET", "dev-jira-secret"),
    ("STRIPE_WEBHOOK_SECRET", "whsec_dev_stripe_secret"),
    ("TWILIO_AUTH_TOKEN", "dev-twilio-token"),
    ("WHATSAPP_APP_SECRET", "dev-whatsapp-secret"),
    ("WHATSAPP_VERIFY_TOKEN", "dev-whatsapp-verify"),
];

/// Settings from the developer's own environment that would change what the tests see.
const UNSET: [&str; 15] = [
    "HOOKLINE_JWT_ISSUER",
    "HOOKLINE_JWT_AUDIENCE",
    "HOOKLINE_JWT_HS256_SECRET",
    "HOOKLINE_JWT_PUBLIC_KEY",
    "HOOKLINE_JWT_PUBLIC_KEY_FILE",
    "HOOKLINE_JWT_JWKS_URL",
    "HOOKLINE_JWT_ALGORITHM",
    "HOOKLINE_JWT_JWKS_TTL_SECS",
    "HOOKLINE_JWT_ORG_CLAIM",
    "WEBHOOK_BASE_URL",
    "HOOKLINE_MAX_BODY_BYTES",
    "HOOKLINE_DELIVERY_TTL_HOURS",
    "HOOKLINE_PROCESS_LEASE_SECS",
    "HOOKLINE_SIGNING_SECRET",
    "GITLAB_WEBHOOK_SIGNING_TOKEN",
];

/// `hookline ARGS` with a controlled environment.
fn hookline(args: &[&str]) -> Command {
    let mut cmd = Command::new(HOOKLINE);
    cmd.args(args);
    for name in UNSET {
        cmd.env_remove(name);
    }
    cmd
}

fn run(args: &[&str]) -> Output {
    hookline(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run hookline {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A GET over a plain socket; `None` while nothing listens.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_with(addr, path, "")
}

/// [`http_get`] with `headers` (each line ending in CRLF) added to the request.
fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, headers, b"")
}

/// One request over a connection of its own (closed after the answer): its status and body,
/// or `None` if the server could not be reached or answered nothing.
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}{length}Connection: close\r\n\r\n"
    )
    .ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// A running `hookline serve`; killed when dropped, so a failing test leaves nothing behind.
struct Serve {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Serve {
    fn start(data_dir: &Path) -> Self {
        Self::start_with_env(data_dir, &[])
    }

    /// `hookline serve` with these variables set beside the dev secrets.
    fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::launch(data_dir, env, &data_dir.join("no-such.env"))
    }

    /// `hookline serve --env-file FILE` with `contents` in that file and `env` set.
    fn start_with_env_file(data_dir: &Path, env: &[(&str, &str)], contents: &str) -> Self {
        let file = data_dir.with_extension("env");
        std::fs::write(&file, contents).expect("write the env file");
        Self::launch(data_dir, env, &file)
    }

    fn launch(data_dir: &Path, env: &[(&str, &str)], env_file: &Path) -> Self {
        let addr = free_addr();
        let log = data_dir.with_extension(format!("serve-{}.log", addr.port()));
        let out = std::fs::File::create(&log).expect("create the serve log");
        let mut cmd = hookline(&[
            "serve",
            "--addr",
            &addr.to_string(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
        ]);
        cmd.envs(DEV_SECRETS)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("start hookline serve");
        let mut serve = Serve {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        serve.wait_until_healthy();
        serve
    }

    fn wait_until_healthy(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "hookline serve exited at start with {status}; its output:\n{}",
                    self.output()
                );
            }
            if let Some((200, body)) = http_get(self.addr, "/healthz") {
                assert!(body.contains(r#""status":"ok""#), "{body}");
                return;
            }
            if started.elapsed() > Duration::from_secs(20) {
                panic!(
                    "hookline serve did not answer /healthz on {} in 20 s; its output:\n{}",
                    self.addr,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ctrl-C, as a user stops it; returns whether it exited successfully.
    fn interrupt(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT {pid}");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if started.elapsed() > Duration::from_secs(10) {
                panic!(
                    "hookline serve did not stop on Ctrl-C in 10 s; its output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every delivery of the data dir, as `hookline deliveries --json` lists them.
fn deliveries_json(data_dir: &Path) -> Vec<serde_json::Value> {
    let out = run(&[
        "deliveries",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--json",
        "--limit",
        "1000000",
    ]);
    assert!(
        out.status.success(),
        "hookline deliveries failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("each line is a JSON object, got {line:?}: {e}"))
        })
        .collect()
}

/// Poll `hookline deliveries --json` until its one delivery is processed.
fn wait_until_processed(serve: &Serve) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let lines = deliveries_json(&serve.data_dir);
        if lines.len() == 1 && lines[0]["status"] == "processed" {
            return lines.into_iter().next().unwrap();
        }
        if started.elapsed() > Duration::from_secs(10) {
            panic!(
                "no processed delivery in 10 s; `hookline deliveries --json` said {lines:#?}; \
                 serve's output:\n{}",
                serve.output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send_github(serve: &Serve, secret: &str) -> Output {
    run(&[
        "send",
        "github",
        "--url",
        &serve.url("/api/v1/webhooks/github"),
        "--secret",
        secret,
        "--file",
        GITHUB_PUSH,
    ])
}

#[test]
fn serve_takes_a_sent_delivery_and_deliveries_lists_it_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let serve = Serve::start(&data_dir);

    let sent = send_github(&serve, "dev-github-secret");
    let stdout = text(&sent.stdout);
    assert!(
        sent.status.success(),
        "send failed: {stdout}{}",
        text(&sent.stderr)
    );
    assert!(stdout.starts_with("202"), "prints the status: {stdout}");
    assert!(stdout.contains(r#""status":"queued""#), "{stdout}");

    let d = wait_until_processed(&serve);
    assert_eq!(d["source"], "github", "{d}");
    assert_eq!(d["event_type"], "push", "{d}");
    assert_eq!(d["status"], "processed", "{d}");
    let id = d["delivery_id"].as_str().expect("a delivery_id");
    assert!(
        uuid::Uuid::parse_str(id).is_ok(),
        "the X-GitHub-Delivery GUID, got {id:?}"
    );
    assert!(stdout.contains(id), "send printed the same delivery id");
    for time in ["received_at", "processed_at"] {
        let t = d[time].as_str().unwrap_or_else(|| panic!("{time} in {d}"));
        chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{time} {t:?}: {e}"));
    }
    assert!(d.get("error").is_some_and(|e| e.is_null()), "{d}");

    // The table form, too.
    let out = run(&["deliveries", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("SOURCE"), "a header line: {table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("github") && l.contains(id) && l.contains("processed")),
        "{table}"
    );

    // And the activity the worker recorded.
    let out = run(&[
        "activity",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let activity: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(activity.len(), 1, "{activity:#?}");
    assert_eq!(activity[0]["repository"], "acme/hookline-demo");

    // Sending the same file again is a new delivery (a fresh GUID), not a duplicate.
    assert!(send_github(&serve, "dev-github-secret").status.success());
    let started = Instant::now();
    while deliveries_json(&data_dir).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "second delivery"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn send_with_a_wrong_secret_exits_non_zero_and_prints_401() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let serve = Serve::start(&data_dir);
    let sent = send_github(&serve, "not-the-secret");
    let stdout = text(&sent.stdout);
    assert!(!sent.status.success(), "exit status {}", sent.status);
    assert!(stdout.starts_with("401"), "{stdout}");
    assert!(stdout.contains("invalid_signature"), "{stdout}");
    assert!(deliveries_json(&data_dir).is_empty());
}

#[test]
fn sign_prints_the_stripe_signature_header() {
    let out = run(&[
        "sign",
        "stripe",
        "--secret",
        "whsec_x",
        "--file",
        STRIPE_INVOICE,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let header = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Stripe-Signature: "))
        .unwrap_or_else(|| panic!("no Stripe-Signature line in {stdout}"));
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("not t=…,v1=…: {header}"));
    let t: i64 = t.parse().expect("t is a unix time");
    assert!(
        (chrono::Utc::now().timestamp() - t).abs() < 60,
        "t is now: {t}"
    );
    // v1 is the HMAC-SHA256 of "{t}.{body}" with the secret, as Stripe computes it.
    let body = std::fs::read(STRIPE_INVOICE).unwrap();
    assert_eq!(
        header,
        hookline::providers::stripe::sign("whsec_x", &body, t),
        "v1={v1}"
    );
}

#[test]
fn deliveries_on_a_dir_without_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("nothing-here");
    let out = run(&["deliveries", "--data-dir", empty.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(
        stderr.contains("nothing-here") && stderr.contains("hookline serve"),
        "says which dir and what to do: {stderr}"
    );
    assert!(!empty.exists(), "reading the log creates nothing");
}

#[test]
fn serve_stops_on_ctrl_c_and_its_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let serve = Serve::start(&data_dir);
    assert!(send_github(&serve, "dev-github-secret").status.success());
    let before = wait_until_processed(&serve);
    assert!(serve.interrupt(), "serve exits 0 on Ctrl-C");

    let serve = Serve::start(&data_dir);
    let after = deliveries_json(&data_dir);
    assert_eq!(after, vec![before], "the log after the restart");
    assert_eq!(http_get(serve.addr, "/healthz").map(|r| r.0), Some(200));
}

#[test]
fn serve_answers_get_metrics_in_prometheus_text_after_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"));
    assert!(send_github(&serve, "dev-github-secret").status.success());
    assert!(!send_github(&serve, "not-the-secret").status.success());
    wait_until_processed(&serve);
    // Its own process: the counts are this server's alone.
    let want = [
        "hookline_inbound_deliveries_total{source=\"github\",outcome=\"accepted\"} 1",
        "hookline_inbound_deliveries_total{source=\"github\",outcome=\"invalid_signature\"} 1",
        "hookline_signature_failures_total 1",
        "hookline_ingest_seconds_count{source=\"github\"} 2",
        "hookline_processing_seconds_count 1",
        "hookline_queue_depth{queue=\"inbound\"} 0",
        "# TYPE hookline_processing_seconds summary",
    ];
    // The worker times a delivery just after the log shows it processed.
    let started = Instant::now();
    loop {
        let (status, body) = http_get(serve.addr, "/metrics").expect("GET /metrics answers");
        assert_eq!(status, 200, "{body}");
        let missing: Vec<_> = want
            .iter()
            .filter(|line| !body.lines().any(|l| l == **line))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no lines {missing:?} in:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A data dir holding `n` processed GitHub deliveries, a second apart, the newest last.
fn data_dir_with_deliveries(data_dir: &Path, n: i64) {
    use hookline::model::{DeliveryOutcome, DeliveryStatus, Source};
    use hookline::ports::sqlite::{Database, Durability};
    use hookline::ports::store::embedded::EmbeddedStore;
    use hookline::ports::store::DeliveryStore;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::new(Database::open(data_dir, Durability::Normal).unwrap());
        let start = chrono::Utc::now() - chrono::Duration::hours(1);
        for i in 0..n {
            let at = start + chrono::Duration::seconds(i);
            let new = hookline::ports::store::conformance::new_delivery(
                Source::Github,
                &format!("d-{i:03}"),
                at,
            );
            store.record(&new).await.unwrap();
            let status = if i % 10 == 0 {
                DeliveryStatus::Failed
            } else {
                DeliveryStatus::Processed
            };
            let outcome = DeliveryOutcome {
                status,
                error: None,
                processed_at: at,
                duration_ms: 1,
            };
            store.finish(&new.key, &outcome).await.unwrap();
        }
    });
}

#[test]
fn deliveries_shows_fifty_rows_and_says_how_many_it_left_out_and_how_to_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    data_dir_with_deliveries(&data_dir, 53);
    let dd = data_dir.to_str().unwrap();

    let out = run(&["deliveries", "--data-dir", dd]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows = table.lines().filter(|l| l.starts_with("github")).count();
    assert_eq!(rows, 50, "{table}");
    assert!(table.contains("d-052"), "newest first: {table}");
    assert!(
        !table.contains("d-002 "),
        "the oldest are left out: {table}"
    );
    let note = table.lines().last().unwrap();
    assert!(note.contains("3 older deliveries not shown"), "{note}");
    for how in ["--limit 53", "--since", "--status"] {
        assert!(note.contains(how), "says how to see them ({how}): {note}");
    }

    // All of them: nothing left out, nothing said.
    let out = run(&["deliveries", "--data-dir", dd, "--limit", "53"]);
    let table = text(&out.stdout);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("github")).count(),
        53
    );
    assert!(!table.contains("not shown"), "{table}");

    // The filters it suggests narrow the list, and the count follows them.
    let out = run(&[
        "deliveries",
        "--data-dir",
        dd,
        "--status",
        "failed",
        "--limit",
        "2",
    ]);
    let table = text(&out.stdout);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("github") && l.contains("failed"))
            .count(),
        2,
        "{table}"
    );
    assert!(table.contains("4 older deliveries not shown"), "{table}");
    let out = run(&["deliveries", "--data-dir", dd, "--since", "2h", "--json"]);
    assert_eq!(text(&out.stdout).lines().count(), 50);
    assert!(
        text(&out.stderr).contains("3 older deliveries not shown"),
        "with --json the note goes to stderr: {}",
        text(&out.stderr)
    );
    let out = run(&["deliveries", "--data-dir", dd, "--since", "yesterday-ish"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn replay_runs_a_processed_delivery_through_the_serving_worker_again() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let serve = Serve::start(&data_dir);
    assert!(send_github(&serve, "dev-github-secret").status.success());
    let d = wait_until_processed(&serve);
    assert_eq!(d["attempts"], 1);
    let id = d["delivery_id"].as_str().unwrap().to_owned();

    let out = run(&["replay", &id, "--data-dir", data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("attempt 2"),
        "{}",
        text(&out.stdout)
    );

    let started = Instant::now();
    loop {
        let lines = deliveries_json(&data_dir);
        assert_eq!(
            lines.len(),
            1,
            "the same delivery, not a new one: {lines:#?}"
        );
        if lines[0]["status"] == "processed" && lines[0]["attempts"] == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replay not processed: {lines:#?}\n{}",
            serve.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = run(&[
        "replay",
        "no-such-delivery",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no delivery"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn replay_of_an_expired_payload_says_so_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let retention = [("HOOKLINE_PAYLOAD_RETENTION", "1s")];
    let serve = Serve::start_with_env(&data_dir, &retention);
    assert!(send_github(&serve, "dev-github-secret").status.success());
    let d = wait_until_processed(&serve);
    let id = d["delivery_id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1500));

    let out = hookline(&["replay", &id, "--data-dir", data_dir.to_str().unwrap()])
        .envs(retention)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("kept for 1s and has expired") && err.contains("can no longer be replayed"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let lines = deliveries_json(&data_dir);
    assert_eq!(
        (lines.len(), &lines[0]["attempts"], &lines[0]["status"]),
        (1, &serde_json::json!(1), &serde_json::json!("processed")),
        "nothing was queued again: {lines:#?}"
    );
}

/// A GET with a bearer token: the status.
fn get_with_token(addr: SocketAddr, path: &str, token: &str) -> u16 {
    let auth = format!("Authorization: Bearer {token}\r\n");
    http_get_with(addr, path, &auth)
        .unwrap_or_else(|| panic!("no answer from serve to GET {path}"))
        .0
}

#[test]
fn jwt_settings_in_the_env_file_are_what_every_api_route_group_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let secret = "an-idp-shared-secret-of-32-bytes!!";
    // Split between the shell and the file, as a developer may have it.
    let serve = Serve::start_with_env_file(
        &data_dir,
        &[("HOOKLINE_JWT_ISSUER", "https://idp.example")],
        &format!("HOOKLINE_JWT_AUDIENCE=hookline\nHOOKLINE_JWT_HS256_SECRET={secret}\n"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let idp_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({
            "iss": "https://idp.example", "aud": "hookline", "sub": "user-1",
            "org_id": "org-jwt", "iat": now, "exp": now + 600,
            "scope": "admin repos:read webhooks:manage",
        }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let dev_token = dev_token(&data_dir, "org-jwt");
    for path in ONE_ROUTE_OF_EACH_GROUP {
        assert_eq!(
            get_with_token(serve.addr, path, &idp_token),
            200,
            "the configured IdP's token on {path}"
        );
        assert_eq!(
            get_with_token(serve.addr, path, &dev_token),
            401,
            "a dev-key token on {path}, with an IdP configured"
        );
    }
}

/// One route of each group `hookline serve` mounts, for org `org-jwt` (billing's group was
/// once left on the dev key whatever was configured).
const ONE_ROUTE_OF_EACH_GROUP: [&str; 5] = [
    "/api/v1/repositories/connections",
    "/api/v1/incidents",
    "/api/v1/endpoints",
    "/api/v1/org",
    "/api/v1/billing/entitlements/org-jwt",
];

/// A `hookline token` for `org` with the scopes those routes ask for.
fn dev_token(data_dir: &Path, org: &str) -> String {
    let dev = run(&[
        "token",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--org",
        org,
        "--user",
        "u",
        "--scopes",
        "admin repos:read webhooks:manage",
    ]);
    assert!(dev.status.success(), "{}", text(&dev.stderr));
    text(&dev.stdout).trim().to_owned()
}

#[test]
fn with_no_jwt_settings_every_api_route_group_accepts_hookline_token() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let serve = Serve::start(&data_dir);
    let token = dev_token(&data_dir, "org-jwt");
    for path in ONE_ROUTE_OF_EACH_GROUP {
        assert_eq!(get_with_token(serve.addr, path, &token), 200, "{path}");
    }
}

/// POST one signed GitHub delivery over a socket of its own; the answer's status.
fn post_github(addr: SocketAddr, body: &[u8], delivery_id: &str) -> Option<u16> {
    let signed = hookline::providers::simulate::sign(&Simulation {
        source: hookline::model::Source::Github,
        secret: "dev-github-secret",
        url: None,
        body,
        event: Some("workflow_run"),
        now: chrono::Utc::now(),
        delivery_id: Some(delivery_id),
    })
    .expect("GitHub signs any body");
    let headers: String = signed
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let (status, _) = http_request(
        addr,
        "POST",
        "/api/v1/webhooks/github",
        &headers,
        &signed.body,
    )?;
    Some(status)
}

#[test]
fn a_server_killed_under_load_loses_no_answered_delivery_and_processes_every_recorded_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = Serve::start(&data);
    // A real-sized body (octokit's 17 KB workflow_run): the payload log's records are torn
    // mid-write by the kill more often than small ones.
    let body: Arc<Vec<u8>> = Arc::new(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/payloads/github-workflow-run-octokit.json"
        ))
        .unwrap(),
    );
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let (body, answered, stop, addr) =
                (body.clone(), answered.clone(), stop.clone(), serve.addr);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("killed-{sender}-{n}");
                    if post_github(addr, &body, &id) == Some(202) {
                        answered.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    serve.child.kill().expect("SIGKILL hookline serve");
    serve.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    assert!(answered.len() > 100, "only {} answered", answered.len());
    drop(serve);

    let serve = Serve::start(&data);
    // Messages the worker held when it died come back after the visibility timeout (30 s).
    let started = Instant::now();
    let recorded = loop {
        let lines = deliveries_json(&data);
        if lines.iter().all(|d| d["status"] == "processed") {
            break lines;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not every recorded delivery processed in 60 s: {:?}; serve's output:\n{}",
            lines
                .iter()
                .filter(|d| d["status"] != "processed")
                .collect::<Vec<_>>(),
            serve.output()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let recorded: std::collections::HashSet<&str> = recorded
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap())
        .collect();
    let lost: Vec<_> = answered
        .iter()
        .filter(|id| !recorded.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "answered 202 but forgotten: {lost:?}");
    eprintln!(
        "{} answered, {} recorded and processed after the restart",
        answered.len(),
        recorded.len()
    );
    let dead = run(&["dead-letters", "--data-dir", data.to_str().unwrap()]);
    assert!(
        text(&dead.stdout).contains("empty"),
        "{}",
        text(&dead.stdout)
    );
}
