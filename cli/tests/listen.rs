//! `hookline listen` as a developer runs it: the binary on a free loopback port, receiving
//! bodies signed the way Hookline's deliverer signs them (`outbound::signing::sign`).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use bytes::Bytes;
use hookline::outbound::signing;
use hookline::secret::Secret;

const HOOKLINE: &str = env!("CARGO_BIN_EXE_hookline");

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A running `hookline listen`, its output in a file; killed when dropped.
struct Listen {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Listen {
    fn start(secret: &Secret, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let log = dir.path().join("listen.log");
        let out = std::fs::File::create(&log).unwrap();
        let port = addr.port().to_string();
        let child = Command::new(HOOKLINE)
            .args(["listen", "--port", &port, "--secret", secret.expose()])
            .args(extra)
            .env_remove("HOOKLINE_ENDPOINT_SECRET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start hookline listen");
        let mut listen = Listen {
            child,
            addr,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = listen.child.try_wait().unwrap() {
                panic!("hookline listen exited with {status}:\n{}", listen.output());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "hookline listen is not listening on {addr} after 20 s:\n{}",
                listen.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        listen
    }

    fn url(&self) -> String {
        format!("http://{}/webhooks", self.addr)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The line printed for the delivery `id` (printed right after it is answered).
    fn line_for(&self, id: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.output().lines().find(|l| l.contains(id)) {
                return line.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no line for {id}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envelope(event_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "evt_listen",
        "type": event_type,
        "created_at": "2026-12-02T00:00:00Z",
        "data": {"amount": 4200},
    }))
    .unwrap()
}

/// POST `body` with `headers`; the status and the response text.
async fn post(
    url: &str,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("listen answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_delivery_signed_by_hookline_verifies_both_ways_and_is_printed() {
    let secret = signing::generate_secret();
    let listen = Listen::start(&secret, &[]);
    let body = envelope("invoice.paid");
    let headers = signing::sign(&body, "dlv_listen_ok", now(), &[&secret], "X-Signature");
    assert_eq!(post(&listen.url(), headers, body).await.0, 200);

    let line = listen.line_for("dlv_listen_ok");
    assert!(line.contains("  invoice.paid  "), "{line}");
    assert!(
        line.contains("sha256: ok  standard-webhooks: ok  → 200"),
        "{line}"
    );
    let output = listen.output();
    assert!(output.starts_with(&format!(
        "Listening on http://{} — verifying X-Signature (sha256=) and Standard Webhooks",
        listen.addr
    )));
    assert!(
        !output.contains(secret.expose()),
        "the secret is never printed"
    );
}

#[tokio::test]
async fn a_delivery_signed_with_another_secret_is_answered_401_and_says_why() {
    let listen = Listen::start(&signing::generate_secret(), &[]);
    let stranger = signing::generate_secret();
    let body = envelope("lead_won");
    let headers = signing::sign(&body, "dlv_listen_bad", now(), &[&stranger], "X-Signature");
    let (status, text) = post(&listen.url(), headers, body).await;
    assert_eq!(status, 401);
    assert!(text.contains("signature does not match"), "{text}");
    let line = listen.line_for("dlv_listen_bad");
    assert!(
        line.contains(
            "sha256: signature does not match  standard-webhooks: signature does not match  → 401"
        ),
        "{line}"
    );
}

#[tokio::test]
async fn either_scheme_alone_is_enough_under_the_endpoints_own_header_name() {
    let secret = signing::generate_secret();
    let listen = Listen::start(&secret, &["--header", "X-GitProductivity-Signature"]);
    let body = envelope("analysis.complete");
    let signed = signing::sign(
        &body,
        "dlv_listen_one",
        now(),
        &[&secret],
        "X-GitProductivity-Signature",
    );
    // The sha256= header, and webhook-id only so the line can be found.
    let sha256_only: Vec<_> = signed
        .into_iter()
        .filter(|(name, _)| name == "x-gitproductivity-signature" || name == "webhook-id")
        .collect();
    assert_eq!(post(&listen.url(), sha256_only, body.clone()).await.0, 200);
    let line = listen.line_for("dlv_listen_one");
    assert!(
        line.contains("sha256: ok  standard-webhooks: missing webhook-timestamp header  → 200"),
        "{line}"
    );

    let resigned = signing::sign(&body, "dlv_listen_two", now(), &[&secret], "X-Other");
    let standard_only: Vec<_> = resigned
        .into_iter()
        .filter(|(name, _)| name.as_str().starts_with("webhook-"))
        .collect();
    assert_eq!(post(&listen.url(), standard_only, body).await.0, 200);
    let line = listen.line_for("dlv_listen_two");
    assert!(
        line.contains(
            "sha256: missing X-GitProductivity-Signature header  standard-webhooks: ok  → 200"
        ),
        "{line}"
    );
}

#[tokio::test]
async fn during_a_rotation_a_receiver_still_on_the_old_secret_verifies() {
    let old = signing::generate_secret();
    let new = signing::generate_secret();
    let listen = Listen::start(&old, &[]);
    let body = envelope("invoice.paid");
    let headers = signing::sign(&body, "dlv_listen_rot", now(), &[&new, &old], "X-Signature");
    assert_eq!(post(&listen.url(), headers, body).await.0, 200);
    let line = listen.line_for("dlv_listen_rot");
    // The sha256= header carries the new secret only; Standard Webhooks carries both.
    assert!(
        line.contains("sha256: signature does not match  standard-webhooks: ok  → 200"),
        "{line}"
    );
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// The developer's app behind `--forward-to`: records what it got, answers 202.
async fn start_app() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push((headers, body));
            (axum::http::StatusCode::ACCEPTED, "thanks")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test]
async fn a_verified_delivery_is_forwarded_unchanged_and_the_apps_answer_returned() {
    let (app, seen) = start_app().await;
    let secret = signing::generate_secret();
    let target = format!("http://{app}/hooks");
    let listen = Listen::start(&secret, &["--forward-to", &target]);
    let body = envelope("task.completed");
    let headers = signing::sign(&body, "dlv_listen_fwd", now(), &[&secret], "X-Signature");
    let sent = headers.clone();
    let (status, text) = post(&listen.url(), headers, body.clone()).await;
    assert_eq!((status, text.as_str()), (202, "thanks"));

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (got_headers, got_body) = &seen[0];
    assert_eq!(got_body.as_ref(), body.as_slice());
    for (name, value) in &sent {
        assert_eq!(got_headers.get(name), Some(value), "{name}");
    }
    assert_eq!(got_headers["content-type"], "application/json");
    let line = listen.line_for("dlv_listen_fwd");
    assert!(line.ends_with(&format!("→ 202 from {target}")), "{line}");
}

#[tokio::test]
async fn an_unverified_delivery_is_not_forwarded_and_an_unreachable_app_is_a_502() {
    let (app, seen) = start_app().await;
    let secret = signing::generate_secret();
    let listen = Listen::start(&secret, &["--forward-to", &format!("http://{app}/hooks")]);
    let body = envelope("task.completed");
    let forged = signing::sign(
        &body,
        "dlv_listen_forged",
        now(),
        &[&signing::generate_secret()],
        "X-Signature",
    );
    assert_eq!(post(&listen.url(), forged, body.clone()).await.0, 401);
    assert!(seen.lock().unwrap().is_empty());

    let closed = free_addr();
    let listen = Listen::start(&secret, &["--forward-to", &format!("http://{closed}/")]);
    let headers = signing::sign(&body, "dlv_listen_gone", now(), &[&secret], "X-Signature");
    let (status, text) = post(&listen.url(), headers, body).await;
    assert_eq!(status, 502);
    assert!(
        text.starts_with(&format!("cannot reach http://{closed}/")),
        "{text}"
    );
}
