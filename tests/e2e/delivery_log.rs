//! The inbound delivery log over HTTP against a running local server (the repository routes,
//! billing and the worker, as `hookline serve` wires them) with the GitHub/GitLab stub: each
//! org sees only its own deliveries on every route, payloads come back byte for byte, a
//! replay is one more attempt of the same delivery, payloads expire under an injected clock,
//! and the connection's status counts are the log's.

use hookline::auth::Scope;
use hookline::clock::{Clock, ManualClock};
use hookline::delivery_log::{DeliveryDetail, DeliveryLog};
use hookline::hooks::HookProvider;
use hookline::model::{DeliveryKey, DeliveryOutcome, DeliveryStatus, Source};
use hookline::ports::store::DeliveryStore;
use hookline::providers::simulate::{sign, Simulation};
use hookline_e2e::{call_api, dev_secrets, payload, secret_for};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALL: &[Scope] = &[Scope::ReposRead, Scope::ReposWrite];
const DEMO: &str = "acme/hookline-demo";
/// The public origin the server is told it has (the hooks it creates point there).
const PUBLIC: &str = "https://hooks.example.com";

struct LogServer {
    server: hookline::runtime::local::Server,
    stub: hookline::hooks::stub::HookApiStub,
    issuer: hookline::auth::LocalIssuer,
    http: reqwest::Client,
    clock: Arc<ManualClock>,
    store: Arc<dyn DeliveryStore>,
    /// The operator's view of the same log (what `hookline` commands see).
    operator: DeliveryLog,
    _dir: tempfile::TempDir,
}

/// A server as `hookline serve` wires it (billing, repositories, the worker), on a clock that
/// moves only when a test moves it, keeping payloads for `retention`.
async fn spawn(retention: Duration) -> LogServer {
    use hookline::runtime::local::{
        embedded_app, with_billing, with_repositories, BillingConfig, RepositoriesConfig,
    };
    let dir = tempfile::tempdir().unwrap();
    let stub = hookline::hooks::stub::HookApiStub::start().await;
    let clock = Arc::new(ManualClock::at(chrono::Utc::now()));
    let settings = hookline::config::Settings {
        payload_retention: retention,
        ..Default::default()
    };
    let app = embedded_app(
        dir.path(),
        dev_secrets(),
        settings.clone(),
        hookline::runtime::local::LOCAL_QUEUE,
        hookline::ports::sqlite::Durability::Normal,
        clock.clone(),
    )
    .unwrap();
    let billing = BillingConfig::from_lookup(&|_| None).unwrap();
    let app = with_billing(app, dir.path(), billing, clock.clone()).unwrap();
    let config = RepositoriesConfig {
        github_api_url: stub.url().to_string(),
        gitlab_url: stub.url().to_string(),
        auth: None,
        rotation_overlap: Duration::from_secs(3600),
        oauth: None,
    };
    let app = with_repositories(app, dir.path(), PUBLIC, config, clock.clone()).unwrap();
    let store = app.store.clone();
    let operator = DeliveryLog::new(store.clone(), app.queue.clone(), clock.clone(), &settings);
    let server = hookline::runtime::local::Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
        .await
        .unwrap();
    let issuer = hookline::auth::LocalIssuer::open(dir.path()).unwrap();
    LogServer {
        server,
        stub,
        issuer,
        http: reqwest::Client::new(),
        clock,
        store,
        operator,
        _dir: dir,
    }
}

impl LogServer {
    fn token(&self, org: &str, scopes: &[Scope]) -> String {
        self.issuer.issue(
            &hookline::auth::OrgId::from(org),
            &hookline::auth::UserId::from("user-1"),
            &scopes.iter().copied().collect(),
            Duration::from_secs(600),
        )
    }

    async fn call(&self, method: Method, path: &str, token: &str) -> (u16, Value) {
        call_api(
            &self.http,
            &self.server.url(),
            method,
            path,
            Some(token),
            None,
        )
        .await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, token).await
    }

    /// Connect `repo` on `provider` for the token's org; the hook's secret on the stub.
    async fn connect(&self, token: &str, provider: &str, repo: &str) -> (String, String) {
        let (status, body) = call_api(
            &self.http,
            &self.server.url(),
            Method::PUT,
            &format!("/api/v1/provider-tokens/{provider}"),
            Some(token),
            Some(json!({"access_token": "stub-token"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, c) = call_api(
            &self.http,
            &self.server.url(),
            Method::POST,
            "/api/v1/repositories/connect",
            Some(token),
            Some(json!({"repository_full_name": repo, "provider": provider})),
        )
        .await;
        assert_eq!(status, 201, "{c}");
        let kind = if provider == "github" {
            HookProvider::GitHub
        } else {
            HookProvider::GitLab
        };
        let hook = self
            .stub
            .hooks(repo)
            .into_iter()
            .find(|h| h.provider == kind)
            .expect("the hook was created");
        let secret = hook.secret.unwrap().expose().to_string();
        (c["id"].as_str().unwrap().to_string(), secret)
    }

    /// POST `body` to `source`'s route signed as the provider would; the answer's status and
    /// the delivery key it was recorded under.
    async fn send(
        &self,
        source: Source,
        body: &[u8],
        secret: &str,
        suffix: &str,
    ) -> (u16, Option<DeliveryKey>) {
        // Without WEBHOOK_BASE_URL the server rebuilds the URL Twilio signed from `Host`, as
        // https (what API Gateway would have been called on): sign that, send over http.
        let public = self.server.url().replacen("http://", "https://", 1);
        let url = format!("{public}{}{suffix}", source.route());
        let signed = sign(&Simulation {
            source,
            secret,
            url: Some(&url),
            body,
            event: None,
            now: self.clock.now(),
            delivery_id: None,
        })
        .unwrap();
        let local = signed.url.replacen(&public, &self.server.url(), 1);
        let mut req = self.http.post(&local).body(signed.body);
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let reply: Value = res.json().await.unwrap_or(Value::Null);
        if status >= 300 {
            eprintln!("{source} answered {status}: {reply}");
        }
        let key = reply["delivery_id"]
            .as_str()
            .map(|id| DeliveryKey::new(source, id));
        (status, key)
    }

    /// Wait until the delivery is finished (processed, skipped or failed) after `attempts`.
    async fn wait_finished(&self, key: &DeliveryKey, attempts: u32) -> hookline::model::Delivery {
        let started = Instant::now();
        loop {
            let d = self.store.get(key).await.unwrap();
            if let Some(d) = &d {
                if d.attempts >= attempts
                    && matches!(
                        d.status,
                        DeliveryStatus::Processed
                            | DeliveryStatus::Skipped
                            | DeliveryStatus::Failed
                    )
                {
                    return d.clone();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{key} not finished after {attempts} attempt(s): {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn push_for(repo: &str) -> Vec<u8> {
    String::from_utf8(payload("github-push.json"))
        .unwrap()
        .replace(DEMO, repo)
        .into_bytes()
}

fn list_ids(body: &Value) -> Vec<String> {
    body["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_route_shows_an_org_only_its_own_deliveries() {
    let s = spawn(Duration::from_secs(7 * 86400)).await;
    let (a, b) = (s.token("org-a", ALL), s.token("org-b", ALL));
    let (conn_a, secret_a) = s.connect(&a, "github", DEMO).await;
    let (_, secret_b) = s.connect(&b, "github", "globex/site").await;
    let (status, key_a) = s.send(Source::Github, &push_for(DEMO), &secret_a, "").await;
    assert_eq!(status, 202);
    let key_a = key_a.unwrap();
    s.clock.advance(chrono::Duration::seconds(1));
    let (status, key_b) = s
        .send(Source::Github, &push_for("globex/site"), &secret_b, "")
        .await;
    assert_eq!(status, 202);
    let key_b = key_b.unwrap();
    // A delivery of no org's (a hook set up by hand, the global secret).
    let (status, key_none) = s
        .send(
            Source::Jira,
            &payload("jira-issue-created.json"),
            secret_for(Source::Jira),
            "",
        )
        .await;
    assert_eq!(status, 202);
    let key_none = key_none.unwrap();
    s.wait_finished(&key_a, 1).await;
    s.wait_finished(&key_b, 1).await;

    let (status, list) = s.get("/api/v1/webhooks/deliveries", &a).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list_ids(&list), vec![key_a.log_id()], "{list}");
    let row = &list["deliveries"][0];
    assert_eq!(row["source"], "github");
    assert_eq!(row["delivery_id"], key_a.delivery_id());
    assert_eq!(row["event_type"], "push");
    assert_eq!(row["connection_id"], conn_a.as_str());
    assert_eq!(row["repository_full_name"], DEMO);
    assert_eq!(row["signature_verified"], true);
    assert_eq!(row["status"], "processed");
    assert_eq!(row["attempts"], 1);
    for field in ["error", "duration_ms", "received_at", "processed_at"] {
        assert!(row.get(field).is_some(), "{field} in {row}");
    }
    let (_, list_b) = s.get("/api/v1/webhooks/deliveries", &b).await;
    assert_eq!(list_ids(&list_b), vec![key_b.log_id()]);

    for (other, token) in [(&key_b, &a), (&key_a, &b), (&key_none, &a)] {
        let id = other.log_id();
        let (status, _) = s
            .get(&format!("/api/v1/webhooks/deliveries/{id}"), token)
            .await;
        assert_eq!(status, 404, "detail of another org's {other}");
        let (status, _) = s
            .call(
                Method::POST,
                &format!("/api/v1/webhooks/deliveries/{id}/replay"),
                token,
            )
            .await;
        assert_eq!(status, 404, "replay of another org's {other}");
    }
    // Nothing was replayed by those refusals.
    assert_eq!(s.store.get(&key_b).await.unwrap().unwrap().attempts, 1);
    // Unknown and malformed ids are as unknown.
    for id in [
        "whd_bm9wZQ",
        "not-an-id",
        &DeliveryKey::new(Source::Github, "nope").log_id(),
    ] {
        let (status, _) = s
            .get(&format!("/api/v1/webhooks/deliveries/{id}"), &a)
            .await;
        assert_eq!(status, 404, "{id}");
    }
    // Scopes: reading needs repos:read, replaying repos:write.
    let reader = s.token("org-a", &[Scope::ReposRead]);
    let id = key_a.log_id();
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/api/v1/webhooks/deliveries/{id}/replay"),
            &reader,
        )
        .await;
    assert_eq!(status, 403);
    let writer = s.token("org-a", &[Scope::ReposWrite]);
    let (status, _) = s.get("/api/v1/webhooks/deliveries", &writer).await;
    assert_eq!(status, 403);
    let (status, _) = call_api(
        &s.http,
        &s.server.url(),
        Method::GET,
        "/api/v1/webhooks/deliveries",
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    s.server.shutdown().await;
}

/// A Twilio form whose `Body` holds bytes that are not UTF-8 (a Latin-1 "café").
fn latin1_twilio_form() -> Vec<u8> {
    let mut body = b"MessageSid=SM0123456789abcdef0123456789abcdef&AccountSid=AC0123&From=%2B15005550006&To=%2B15005550001&Body=caf".to_vec();
    body.push(0xE9);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_come_back_byte_for_byte_for_every_provider() {
    let s = spawn(Duration::from_secs(7 * 86400)).await;
    // Stripe's sample names org_acme in its metadata: the event is applied to that org.
    let a = s.token("org_acme", ALL);
    let (_, gh_secret) = s.connect(&a, "github", DEMO).await;
    let (_, gl_secret) = s.connect(&a, "gitlab", DEMO).await;

    // The org's own: read over the API.
    let owned = [
        (
            Source::Github,
            payload("github-push.json"),
            gh_secret.as_str(),
        ),
        (
            Source::Gitlab,
            payload("gitlab-pipeline.json"),
            gl_secret.as_str(),
        ),
        (
            Source::Stripe,
            payload("stripe-invoice-paid.json"),
            secret_for(Source::Stripe),
        ),
    ];
    for (source, body, secret) in &owned {
        let (status, key) = s.send(*source, body, secret, "").await;
        assert_eq!(status, 202, "{source}");
        let key = key.unwrap();
        s.wait_finished(&key, 1).await;
        let (status, d) = s
            .get(&format!("/api/v1/webhooks/deliveries/{}", key.log_id()), &a)
            .await;
        assert_eq!(status, 200, "{source}: {d}");
        assert_eq!(d["payload_encoding"], "utf8", "{source}");
        assert!(
            d["payload"].as_str().unwrap().as_bytes() == body.as_slice(),
            "{source}: the payload exactly as received"
        );
        assert_eq!(d["payload_size_bytes"], body.len());
        assert_eq!(d["payload_expired"], false);
        // The headers as sent, the signature's value redacted.
        let headers = d["headers"].as_object().unwrap();
        let signature = match source {
            Source::Github => "x-hub-signature-256",
            Source::Gitlab => "x-gitlab-token",
            _ => "stripe-signature",
        };
        assert_eq!(headers[signature], "[redacted]", "{source}: {headers:?}");
        assert!(
            !d.to_string().contains(*secret),
            "{source}: no secret in {d}"
        );
        assert!(headers.contains_key("content-type"), "{headers:?}");
    }

    // No org's (a hand-made hook, the global secrets): the operator's only, and the same
    // payload handling. Twilio forms (one not UTF-8), Twilio JSON, Jira, WhatsApp.
    let none = [
        (Source::Jira, payload("jira-issue-created.json"), "", "utf8"),
        (
            Source::Twilio,
            payload("twilio-inbound-message.txt"),
            "",
            "utf8",
        ),
        (
            Source::Twilio,
            payload("twilio-message-status.txt"),
            "?tenant=acme",
            "utf8",
        ),
        (
            Source::Twilio,
            br#"{"property": "value", "boolean": true}"#.to_vec(),
            "",
            "utf8",
        ),
        (
            Source::Whatsapp,
            payload("whatsapp-message.json"),
            "",
            "utf8",
        ),
    ];
    for (source, body, suffix, encoding) in &none {
        let (status, key) = s.send(*source, body, secret_for(*source), suffix).await;
        assert_eq!(status, 202, "{source} {encoding} {suffix} {}", body.len());
        let key = key.unwrap();
        let (status, _) = s
            .get(&format!("/api/v1/webhooks/deliveries/{}", key.log_id()), &a)
            .await;
        assert_eq!(
            status, 404,
            "{source}: no org's delivery is any org's to read"
        );
        let (d, kept) = s.operator.detail(None, &key).await.unwrap();
        let view = serde_json::to_value(DeliveryDetail::new(&d, kept.as_ref())).unwrap();
        assert_eq!(view["payload_encoding"], *encoding, "{source}: {view}");
        let back = match *encoding {
            "utf8" => view["payload"].as_str().unwrap().as_bytes().to_vec(),
            _ => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(view["payload"].as_str().unwrap())
                    .unwrap()
            }
        };
        assert!(back == *body, "{source} {encoding}: byte for byte");
        assert_eq!(view["connection_id"], Value::Null);
    }
    // A body that is not UTF-8 is refused by every provider's route (each reads its body as
    // JSON or UTF-8 form fields), and nothing of it is kept; the log renders stored bytes
    // that are not UTF-8 as base64 (`delivery_log` unit test, and the store's conformance
    // suite round-trips 1 MiB of them on both adapters).
    let (status, _) = s
        .send(
            Source::Twilio,
            &latin1_twilio_form(),
            secret_for(Source::Twilio),
            "",
        )
        .await;
    assert_eq!(status, 400);
    // The org's list holds its three, never the others.
    let (_, list) = s.get("/api/v1/webhooks/deliveries?limit=50", &a).await;
    let mut sources: Vec<_> = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap().to_string())
        .collect();
    sources.sort();
    assert_eq!(sources, vec!["github", "gitlab", "stripe"], "{list}");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reaches_the_worker_once_per_call_as_a_new_attempt() {
    let s = spawn(Duration::from_secs(7 * 86400)).await;
    let a = s.token("org-a", ALL);
    let (_, secret) = s.connect(&a, "github", DEMO).await;
    let (_, key) = s
        .send(Source::Github, &payload("github-push.json"), &secret, "")
        .await;
    let key = key.unwrap();
    let first = s.wait_finished(&key, 1).await;
    assert_eq!(first.attempts, 1);
    let replay = format!("/api/v1/webhooks/deliveries/{}/replay", key.log_id());

    for attempt in 2..=3u32 {
        let (status, body) = s.call(Method::POST, &replay, &a).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["attempt"], attempt);
        let d = s.wait_finished(&key, attempt).await;
        assert_eq!(d.attempts, attempt, "one attempt per replay");
        assert_eq!(d.status, DeliveryStatus::Processed);
    }
    // Ten calls at once: one is queued, the rest are told it is in flight; one attempt more.
    let calls = (0..10).map(|_| s.call(Method::POST, &replay, &a));
    let answers = futures::future::join_all(calls).await;
    // The worker may finish one before the next call arrives: that call is a new replay.
    let queued = answers.iter().filter(|(status, _)| *status == 202).count() as u32;
    assert!(queued >= 1, "{answers:?}");
    assert!(
        answers.iter().all(|(status, body)| *status == 202
            || (*status == 409 && body["error"] == "replay_in_progress")),
        "{answers:?}"
    );
    let d = s.wait_finished(&key, 3 + queued).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = s.store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (d.attempts, after.attempts),
        (3 + queued, 3 + queued),
        "exactly one attempt per queued replay, none for a refused one"
    );
    // The log shows the same delivery, its attempts and outcome; still one row.
    let (_, list) = s.get("/api/v1/webhooks/deliveries", &a).await;
    assert_eq!(list_ids(&list), vec![key.log_id()]);
    assert_eq!(list["deliveries"][0]["attempts"], 3 + queued);
    assert_eq!(list["deliveries"][0]["status"], "processed");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_retention_the_payload_is_gone_and_a_replay_is_410() {
    let s = spawn(Duration::from_secs(3600)).await;
    let a = s.token("org-a", ALL);
    let (_, secret) = s.connect(&a, "github", DEMO).await;
    let (_, key) = s
        .send(Source::Github, &payload("github-push.json"), &secret, "")
        .await;
    let key = key.unwrap();
    s.wait_finished(&key, 1).await;
    let detail = format!("/api/v1/webhooks/deliveries/{}", key.log_id());

    s.clock.advance(chrono::Duration::minutes(59));
    let (_, d) = s.get(&detail, &a).await;
    assert_eq!(d["payload_expired"], false, "kept until the retention ends");

    s.clock.advance(chrono::Duration::minutes(2));
    let (status, d) = s.get(&detail, &a).await;
    assert_eq!(status, 200, "the record outlives its payload: {d}");
    assert_eq!(d["payload"], Value::Null);
    assert_eq!(d["headers"], Value::Null);
    assert_eq!(d["payload_expired"], true);
    let (status, body) = s.call(Method::POST, &format!("{detail}/replay"), &a).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"], "payload_expired");
    assert!(body["message"].as_str().unwrap().contains("1h"), "{body}");
    assert_eq!(s.store.get(&key).await.unwrap().unwrap().attempts, 1);
    s.server.shutdown().await;
}

/// With the default settings (payloads kept 7d, records `HOOKLINE_DELIVERY_TTL_HOURS` 168h)
/// the record outlives its payload, so an expired payload answers 410, not 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_settings_an_expired_payload_answers_410() {
    let defaults = hookline::config::Settings::default();
    let s = spawn(defaults.payload_retention).await;
    let a = s.token("org-a", ALL);
    let (_, secret) = s.connect(&a, "github", DEMO).await;
    let (_, key) = s
        .send(Source::Github, &payload("github-push.json"), &secret, "")
        .await;
    let key = key.unwrap();
    s.wait_finished(&key, 1).await;
    let detail = format!("/api/v1/webhooks/deliveries/{}", key.log_id());

    s.clock
        .advance(chrono::Duration::days(7) + chrono::Duration::minutes(1));
    let (status, d) = s.get(&detail, &a).await;
    assert_eq!(status, 200, "the record outlives its payload: {d}");
    assert_eq!(d["payload_expired"], true);
    let (status, body) = s.call(Method::POST, &format!("{detail}/replay"), &a).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"], "payload_expired");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_status_counts_are_what_the_log_shows() {
    let s = spawn(Duration::from_secs(7 * 86400)).await;
    let a = s.token("org-a", ALL);
    let (conn, secret) = s.connect(&a, "github", DEMO).await;
    let (other_conn, other_secret) = s.connect(&a, "github", "acme/other").await;
    let mut keys = Vec::new();
    for _ in 0..4 {
        s.clock.advance(chrono::Duration::seconds(1));
        let (status, key) = s
            .send(Source::Github, &payload("github-push.json"), &secret, "")
            .await;
        assert_eq!(status, 202);
        keys.push(key.unwrap());
    }
    let (_, key) = s
        .send(Source::Github, &push_for("acme/other"), &other_secret, "")
        .await;
    let other_key = key.unwrap();
    for key in keys.iter().chain([&other_key]) {
        s.wait_finished(key, 1).await;
    }
    // One of them failed (as a handler failure leaves it).
    let outcome = DeliveryOutcome {
        status: DeliveryStatus::Failed,
        error: Some("handler failed: boom".into()),
        processed_at: s.clock.now(),
        duration_ms: 3,
    };
    s.store.finish(&keys[1], &outcome).await.unwrap();

    let (status, st) = s
        .get(
            &format!("/api/v1/repositories/connections/{conn}/webhook/status"),
            &a,
        )
        .await;
    assert_eq!(status, 200, "{st}");
    let (_, all) = s
        .get(
            &format!("/api/v1/webhooks/deliveries?connection_id={conn}"),
            &a,
        )
        .await;
    let (_, failed) = s
        .get(
            &format!("/api/v1/webhooks/deliveries?connection_id={conn}&status=failed"),
            &a,
        )
        .await;
    assert_eq!(
        st["total_deliveries"],
        list_ids(&all).len(),
        "{st} vs {all}"
    );
    assert_eq!(st["total_deliveries"], 4);
    assert_eq!(st["failed_deliveries"], list_ids(&failed).len());
    assert_eq!(st["failed_deliveries"], 1);
    assert_eq!(
        st["last_delivery_at"], all["deliveries"][0]["received_at"],
        "the newest in the list"
    );
    let (_, st) = s
        .get(
            &format!("/api/v1/repositories/connections/{other_conn}/webhook/status"),
            &a,
        )
        .await;
    assert_eq!(st["total_deliveries"], 1);
    assert_eq!(st["failed_deliveries"], 0);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_newest_first_and_refuses_a_bad_filter_saying_which() {
    let s = spawn(Duration::from_secs(7 * 86400)).await;
    let a = s.token("org-a", ALL);
    let (_, secret) = s.connect(&a, "github", DEMO).await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        s.clock.advance(chrono::Duration::seconds(1));
        let (_, key) = s
            .send(Source::Github, &payload("github-push.json"), &secret, "")
            .await;
        sent.push(key.unwrap().log_id());
    }
    sent.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/v1/webhooks/deliveries?limit=2&source=github&event_type=push".to_string();
    loop {
        let (status, page) = s.get(&path, &a).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(list_ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => {
                path = format!(
                    "/api/v1/webhooks/deliveries?limit=2&source=github&event_type=push&cursor={c}"
                )
            }
            None => break,
        }
    }
    assert_eq!(seen, sent, "every delivery once, newest first");
    let since = (s.clock.now() - chrono::Duration::milliseconds(1500))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (_, recent) = s
        .get(&format!("/api/v1/webhooks/deliveries?since={since}"), &a)
        .await;
    assert_eq!(list_ids(&recent), sent[..2].to_vec(), "since {since}");

    for (query, names) in [
        ("source=bitbucket", "source"),
        ("status=done", "status"),
        ("since=yesterday", "since"),
        ("connection_id=42", "connection_id"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("sorce=github", "sorce"),
    ] {
        let (status, body) = s
            .get(&format!("/api/v1/webhooks/deliveries?{query}"), &a)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{query}: the message names {names}: {body}"
        );
    }
    s.server.shutdown().await;
}
