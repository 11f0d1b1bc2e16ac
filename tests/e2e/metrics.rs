//! Metrics as an operator reads them: `GET /metrics` of a running local server, in Prometheus
//! text, after real requests through every instrumented path — inbound deliveries of every
//! outcome, the worker, hooks created, deleted and repaired at the GitHub stub, incidents,
//! outbound attempts to local receivers, Stripe events and owner mails, the local queues. The
//! store-down cases run on moto (DynamoDB and SQS), where the store really fails.
//!
//! The `metrics` facade has one recorder per process, shared by every server a test starts:
//! each test holds [`SERIAL`] and reads how much a series grew across what it did.

use hookline::auth::Scope;
use hookline::config::Settings;
use hookline::model::Source;
use hookline::ports::queue::Queue;
use hookline::providers::simulate::{self, Simulation};
use hookline_e2e::billing::{
    invoice_object, now, org, stripe_event, subscription_object, BillingOptions, BillingServer,
    SubscriptionState, TierFrom,
};
use hookline_e2e::outbound::{short_settings, OutboundServer, Receiver, Reply};
use hookline_e2e::{
    dev_secrets, fixture, payload, secret_for, spawn_app_on_moto_with, spawn_app_with, ApiServer,
    MotoOptions, MotoStore, Options, WAIT_LIMIT,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One scrape of `GET /metrics`: each series' value by its name and sorted labels.
#[derive(Debug)]
struct Scrape(HashMap<String, f64>);

/// A series as [`Scrape`] keys it: `name{a="1",b="2"}` with its labels sorted, or `name`.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort();
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

impl Scrape {
    /// Read the exposition format: `# HELP`/`# TYPE` comments, then `series value` lines.
    fn parse(text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name_labels, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"));
            let key = match name_labels.split_once('{') {
                None => name_labels.to_owned(),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("labels end with }");
                    let pairs: Vec<(&str, &str)> = labels
                        .split(',')
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label=value");
                            (k, v.trim_matches('"'))
                        })
                        .collect();
                    series(name, &pairs)
                }
            };
            values.insert(key, value);
        }
        Self(values)
    }

    /// A series' value; 0 for one not recorded yet (as a counter that never moved).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&series(name, labels)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.contains_key(&series(name, labels))
    }
}

/// `GET {base}/metrics`: 200, Prometheus text.
async fn scrape(base: &str) -> Scrape {
    let res = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Scrape::parse(&res.text().await.unwrap())
}

/// Scrape until `series` has grown by at least `by` since `before` (the worker and the
/// deliverer finish after the answer); the last scrape.
async fn grown(
    base: &str,
    before: &Scrape,
    name: &str,
    labels: &[(&str, &str)],
    by: f64,
) -> Scrape {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let now = scrape(base).await;
        let delta = now.get(name, labels) - before.get(name, labels);
        if delta >= by {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{} grew by {delta} within {WAIT_LIMIT:?}, expected {by}",
            series(name, labels)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delta(after: &Scrape, before: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

const INBOUND: &str = "hookline_inbound_deliveries_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_inbound_delivery_is_counted_by_source_and_outcome_and_timed() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app_with(Options {
        settings: Settings {
            max_body_bytes: 64 * 1024,
            ..Settings::default()
        },
        worker_loops: 0,
        ..Options::default()
    })
    .await;
    let before = scrape(&app.url).await;
    let github = fixture(Source::Github);
    let signed = app.sign(
        Source::Github,
        &github.body(),
        secret_for(Source::Github),
        None,
    );
    app.post(&signed).await.assert_status(202);
    app.post(&signed).await.assert_status(200);
    app.send(Source::Github, &github.body(), "not-the-secret")
        .await
        .assert_status(401);
    app.send(Source::Github, b"not json", secret_for(Source::Github))
        .await
        .assert_status(400);
    app.send(
        Source::Github,
        &vec![b' '; 64 * 1024 + 1],
        secret_for(Source::Github),
    )
    .await
    .assert_status(413);
    let stripe = fixture(Source::Stripe);
    app.send(Source::Stripe, &stripe.body(), secret_for(Source::Stripe))
        .await
        .assert_status(202);
    let after = scrape(&app.url).await;

    for (source, outcome, n) in [
        ("github", "accepted", 1.0),
        ("github", "duplicate", 1.0),
        ("github", "invalid_signature", 1.0),
        ("github", "malformed", 1.0),
        ("github", "too_large", 1.0),
        ("github", "unavailable", 0.0),
        ("stripe", "accepted", 1.0),
        ("stripe", "invalid_signature", 0.0),
    ] {
        let labels = [("source", source), ("outcome", outcome)];
        assert_eq!(
            delta(&after, &before, INBOUND, &labels),
            n,
            "{source} {outcome}"
        );
    }
    assert_eq!(
        delta(&after, &before, "hookline_signature_failures_total", &[]),
        1.0
    );
    // Every answer is timed, the 413 cut off before the pipeline too.
    let github = [("source", "github")];
    assert_eq!(
        delta(&after, &before, "hookline_ingest_seconds_count", &github),
        5.0
    );
    assert!(delta(&after, &before, "hookline_ingest_seconds_sum", &github) > 0.0);
    for q in ["0.5", "0.95", "0.99"] {
        let quantile = after.get(
            "hookline_ingest_seconds",
            &[("source", "github"), ("quantile", q)],
        );
        assert!(
            after.has(
                "hookline_ingest_seconds",
                &[("source", "github"), ("quantile", q)]
            ) && quantile >= 0.0,
            "p{q} of the ingest time: {after:?}"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_times_each_delivery_from_received_to_processed() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app_with(Options::default()).await;
    let before = scrape(&app.url).await;
    for source in [Source::Github, Source::Jira, Source::Whatsapp] {
        let f = fixture(source);
        app.send(source, &f.body(), secret_for(source))
            .await
            .assert_status(202);
    }
    app.wait_until_processed(3).await;
    let after = grown(
        &app.url,
        &before,
        "hookline_processing_seconds_count",
        &[],
        3.0,
    )
    .await;
    assert_eq!(
        delta(&after, &before, "hookline_processing_seconds_count", &[]),
        3.0
    );
    assert!(delta(&after, &before, "hookline_processing_seconds_sum", &[]) > 0.0);
    assert!(after.has("hookline_processing_seconds", &[("quantile", "0.95")]));
    assert_eq!(
        delta(&after, &before, "hookline_store_errors_total", &[]),
        0.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_counts_unavailable_deliveries_and_worker_store_errors_on_moto() {
    let _serial = SERIAL.lock().await;
    // The table is never created: the pipeline answers 503 and the worker cannot claim.
    let app = spawn_app_on_moto_with(MotoOptions {
        store: MotoStore::MissingTable,
        worker_loops: 0,
        ..MotoOptions::default()
    })
    .await;
    let before = scrape(&app.url).await;
    let f = fixture(Source::Gitlab);
    app.send(Source::Gitlab, &f.body(), secret_for(Source::Gitlab))
        .await
        .assert_status(503);
    let after = scrape(&app.url).await;
    assert_eq!(
        delta(
            &after,
            &before,
            INBOUND,
            &[("source", "gitlab"), ("outcome", "unavailable")]
        ),
        1.0
    );

    // A queued delivery the worker cannot claim, as SQS would hand it over.
    let envelope = hookline::model::Envelope::new(
        Source::Gitlab,
        "gl-store-down",
        "pipeline",
        chrono::Utc::now(),
        &f.body(),
    );
    let moto = app.moto.clone().unwrap();
    moto.sqs_queue
        .send(&envelope.to_message(), Duration::ZERO)
        .await
        .unwrap();
    let messages: Vec<hookline::worker::WorkerMessage> = moto
        .drain_main_queue()
        .await
        .into_iter()
        .map(|m| hookline::worker::WorkerMessage {
            message_id: m.message_id,
            body: m.body,
        })
        .collect();
    assert_eq!(messages.len(), 1);
    let worker = hookline::worker::Worker::new(
        app.store.clone(),
        hookline::worker::Dispatcher::standard(app.store.clone()),
        Arc::new(hookline::clock::SystemClock),
        &Settings::default(),
    );
    assert_eq!(worker.process_batch(&messages).await.len(), 1, "it failed");
    let after = scrape(&app.url).await;
    assert_eq!(
        delta(&after, &before, "hookline_store_errors_total", &[]),
        1.0
    );
    assert_eq!(
        delta(&after, &before, "hookline_processing_seconds_count", &[]),
        0.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_queues_show_their_depth_and_the_age_of_their_oldest_message() {
    let _serial = SERIAL.lock().await;
    // No worker: what is sent stays on the queue.
    let dir = tempfile::tempdir().unwrap();
    let app = hookline::runtime::local::embedded_app(
        dir.path(),
        dev_secrets(),
        Settings::default(),
        hookline::runtime::local::LOCAL_QUEUE,
        hookline::ports::sqlite::Durability::Normal,
        Arc::new(hookline::clock::SystemClock),
    )
    .unwrap();
    let server = hookline::runtime::local::Server::start(app, "127.0.0.1:0".parse().unwrap(), 0)
        .await
        .unwrap();
    let url = server.url();
    let empty = scrape(&url).await;
    let inbound = [("queue", "inbound")];
    let outbound = [("queue", "outbound")];
    assert_eq!(empty.get("hookline_queue_depth", &inbound), 0.0);
    assert!(empty.has("hookline_queue_oldest_age_seconds", &inbound));
    assert_eq!(
        empty.get("hookline_queue_oldest_age_seconds", &inbound),
        0.0
    );
    assert_eq!(empty.get("hookline_queue_depth", &outbound), 0.0);

    let http = reqwest::Client::new();
    let route = format!("{url}{}", Source::Github.route());
    for _ in 0..3 {
        let signed = simulate::sign(&Simulation {
            source: Source::Github,
            secret: secret_for(Source::Github),
            url: Some(&route),
            body: &fixture(Source::Github).body(),
            event: None,
            now: chrono::Utc::now(),
            delivery_id: None,
        })
        .unwrap();
        let mut req = http.post(&signed.url).body(signed.body.clone());
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), 202);
    }
    let sent = Instant::now();
    // The oldest message waits; its age grows with it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let full = scrape(&url).await;
    assert_eq!(full.get("hookline_queue_depth", &inbound), 3.0);
    let age = full.get("hookline_queue_oldest_age_seconds", &inbound);
    assert!(
        age >= 0.05 && age <= sent.elapsed().as_secs_f64() + 1.0,
        "oldest age {age}"
    );
    server.shutdown().await;
}

// ---- hooks and incidents, against the GitHub stub -------------------------------------------

const HOOKS: &str = "hookline_hook_operations_total";

async fn github_token(api: &ApiServer, token: &str) {
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/provider-tokens/github",
            Some(token),
            Some(json!({"access_token": "gho_stub_token"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn connect(api: &ApiServer, token: &str, repo: &str) -> Value {
    let (status, c) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(token),
            Some(json!({"repository_full_name": repo})),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_created_deleted_and_repaired_are_counted_with_their_failures() {
    let _serial = SERIAL.lock().await;
    let api = ApiServer::spawn(dev_secrets(), Duration::from_secs(3600)).await;
    let url = api.server.url();
    let token = api.token("acme", &[Scope::ReposRead, Scope::ReposWrite]);
    github_token(&api, &token).await;
    let before = scrape(&url).await;

    let made = connect(&api, &token, "acme/made").await;
    assert_eq!(made["webhook_status"], "active", "{made}");
    // GitHub refuses the next hook: the connection stays, its hook failed.
    api.stub.set_repo_missing("acme/refused", true);
    let refused = connect(&api, &token, "acme/refused").await;
    assert_eq!(refused["webhook_status"], "failed", "{refused}");
    let after_create = scrape(&url).await;
    let create = |outcome| [("operation", "create"), ("outcome", outcome)];
    assert_eq!(delta(&after_create, &before, HOOKS, &create("ok")), 1.0);
    assert_eq!(delta(&after_create, &before, HOOKS, &create("failed")), 1.0);

    // Deleted by hand at GitHub: the health check puts it back.
    let hook = api.stub.hooks("acme/made")[0].clone();
    assert!(api.stub.remove_hook(hook.id));
    let report = api
        .hooks
        .check_hooks(
            true,
            &hookline::connections::service::health::HealthSettings::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.recreated, 1, "{report:?}");
    let after_repair = scrape(&url).await;
    assert_eq!(
        delta(
            &after_repair,
            &before,
            HOOKS,
            &[("operation", "repair"), ("outcome", "ok")]
        ),
        1.0
    );

    // Disconnecting with the hook: deleted at GitHub.
    let id = made["id"].as_str().unwrap();
    let (status, body) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/repositories/connections/{id}?delete_webhook=true"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook_deleted"], true, "{body}");
    let after = scrape(&url).await;
    let delete = |outcome| [("operation", "delete"), ("outcome", outcome)];
    assert_eq!(delta(&after, &before, HOOKS, &delete("ok")), 1.0);
    assert_eq!(delta(&after, &before, HOOKS, &delete("failed")), 0.0);
    assert_eq!(
        delta(
            &after,
            &before,
            HOOKS,
            &[("operation", "repair"), ("outcome", "failed")]
        ),
        0.0
    );
}

/// A workflow run of `repo` ending with `conclusion`, as GitHub delivers it.
fn run(repo: &str, conclusion: &str, run_id: u64) -> Vec<u8> {
    let mut body: Value =
        serde_json::from_slice(&payload("github-workflow-run-failure.json")).unwrap();
    body["repository"]["full_name"] = json!(repo);
    body["workflow_run"]["conclusion"] = json!(conclusion);
    body["workflow_run"]["id"] = json!(run_id);
    body["workflow_run"]["run_number"] = json!(run_id);
    body["workflow_run"]["run_attempt"] = json!(1);
    serde_json::to_vec(&body).unwrap()
}

async fn deliver_run(api: &ApiServer, body: &[u8], secret: &str) {
    let url = format!("{}{}", api.server.url(), Source::Github.route());
    let signed = simulate::sign(&Simulation {
        source: Source::Github,
        secret,
        url: Some(&url),
        body,
        event: Some("workflow_run"),
        now: chrono::Utc::now(),
        delivery_id: None,
    })
    .unwrap();
    let mut req = api.http.post(&signed.url).body(signed.body.clone());
    for (name, value) in &signed.headers {
        req = req.header(name, value);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_opens_an_incident_and_a_later_green_run_resolves_it() {
    let _serial = SERIAL.lock().await;
    let api = ApiServer::spawn(dev_secrets(), Duration::from_secs(3600)).await;
    let url = api.server.url();
    let token = api.token("acme", &[Scope::ReposRead, Scope::ReposWrite]);
    github_token(&api, &token).await;
    connect(&api, &token, "acme/ci").await;
    let secret = api.stub.hooks("acme/ci")[0]
        .secret
        .clone()
        .unwrap()
        .expose()
        .to_owned();
    let before = scrape(&url).await;

    deliver_run(&api, &run("acme/ci", "failure", 701), &secret).await;
    let opened = grown(
        &url,
        &before,
        "hookline_incidents_total",
        &[("action", "opened")],
        1.0,
    )
    .await;
    assert_eq!(
        delta(
            &opened,
            &before,
            "hookline_incidents_total",
            &[("action", "resolved")]
        ),
        0.0
    );
    deliver_run(&api, &run("acme/ci", "success", 702), &secret).await;
    let resolved = grown(
        &url,
        &before,
        "hookline_incidents_total",
        &[("action", "resolved")],
        1.0,
    )
    .await;
    assert_eq!(
        delta(
            &resolved,
            &before,
            "hookline_incidents_total",
            &[("action", "opened")]
        ),
        1.0
    );
}

// ---- outbound --------------------------------------------------------------------------------

const ATTEMPTS: &str = "hookline_outbound_attempts_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_attempts_are_counted_by_outcome_with_dead_letters_and_disabled_endpoints() {
    let _serial = SERIAL.lock().await;
    let mut settings = short_settings(1, Duration::from_millis(50));
    settings.timeout = Duration::from_millis(300);
    let app = OutboundServer::spawn(settings).await;
    let url = app.server.url();
    let before = scrape(&url).await;

    // The test event of a new endpoint, answered 200.
    let ok = Receiver::answering(200).await;
    app.endpoint("acme", &ok.url, &["invoice.paid"]).await;
    ok.wait_for(1).await;
    let after = grown(&url, &before, ATTEMPTS, &[("outcome", "delivered")], 1.0).await;
    assert!(
        delta(
            &after,
            &before,
            "hookline_outbound_attempt_seconds_count",
            &[]
        ) >= 1.0
    );

    // Slower than the timeout, twice: two timeouts, then dead-lettered.
    let slow = Receiver::start(Arc::new(|_| Reply::Slow(Duration::from_secs(3)))).await;
    let (ep, _) = app.endpoint("acme", &slow.url, &["invoice.paid"]).await;
    let test_id = slow.wait_for(1).await[0].json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_delivery("acme", &ep, &test_id, "dead_lettered")
        .await;
    let after = grown(&url, &before, ATTEMPTS, &[("outcome", "timeout")], 2.0).await;
    assert_eq!(
        delta(&after, &before, ATTEMPTS, &[("outcome", "timeout")]),
        2.0
    );
    assert_eq!(
        delta(
            &after,
            &before,
            "hookline_outbound_dead_lettered_total",
            &[]
        ),
        1.0
    );

    // 410 Gone: a failed attempt, the delivery given up, the endpoint disabled.
    let gone = Receiver::answering(410).await;
    app.endpoint("acme", &gone.url, &["invoice.paid"]).await;
    gone.wait_for(1).await;
    let after = grown(&url, &before, "hookline_endpoints_disabled_total", &[], 1.0).await;
    assert_eq!(
        delta(&after, &before, ATTEMPTS, &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        delta(
            &after,
            &before,
            "hookline_outbound_dead_lettered_total",
            &[]
        ),
        2.0
    );
    assert_eq!(
        delta(&after, &before, ATTEMPTS, &[("outcome", "refused")]),
        0.0
    );

    // A failing receiver with a retry due later: the outbound queue holds it meanwhile.
    let mut settings = short_settings(1, Duration::from_secs(600));
    settings.timeout = Duration::from_secs(2);
    let waiting = OutboundServer::spawn(settings).await;
    let failing = Receiver::answering(500).await;
    waiting
        .endpoint("acme", &failing.url, &["invoice.paid"])
        .await;
    failing.wait_for(1).await;
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let s = scrape(&waiting.server.url()).await;
        if s.get("hookline_queue_depth", &[("queue", "outbound")]) == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the retry never showed: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_policy_refuses_at_send_time_counts_as_refused() {
    let _serial = SERIAL.lock().await;
    // http allowed, no private range: a URL the store holds for localhost is refused at send.
    let policy = hookline::outbound::ssrf::AddressPolicy::strict().allow_http(true);
    let app =
        OutboundServer::spawn_with(short_settings(0, Duration::from_millis(30)), policy).await;
    let url = app.server.url();
    let before = scrape(&url).await;
    let outbound = app.outbound();
    let now = chrono::Utc::now();
    let id = hookline::outbound::model::EndpointId::generate();
    let secret = hookline::secret::Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let sealed = outbound
        .ports
        .keys
        .seal(
            &secret,
            &hookline::outbound::endpoints::secret_context("acme", &id),
        )
        .await
        .unwrap();
    outbound
        .ports
        .store
        .create_endpoint(&hookline::outbound::model::Endpoint {
            id: id.clone(),
            org_id: "acme".into(),
            url: "http://localhost:9/hook".into(),
            description: None,
            event_types: vec!["invoice.paid".into()],
            signature_header: "X-Signature".into(),
            enabled: true,
            disabled_reason: None,
            rate_limit_per_second: None,
            secret: hookline::connections::StoredSecret {
                sealed: serde_json::to_string(&sealed).unwrap(),
                valid_until: None,
            },
            previous_secret: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    app.publish("acme", "invoice.paid", json!({})).await;
    let after = grown(&url, &before, ATTEMPTS, &[("outcome", "refused")], 1.0).await;
    assert_eq!(
        delta(&after, &before, ATTEMPTS, &[("outcome", "delivered")]),
        0.0
    );
}

// ---- billing and mail ------------------------------------------------------------------------

const APPLIED: &str = "hookline_stripe_events_applied_total";
const MAILS: &str = "hookline_mails_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_events_applied_count_by_family_and_owner_mails_by_outcome() {
    let _serial = SERIAL.lock().await;
    let app = BillingServer::spawn(BillingOptions {
        tiers_from: TierFrom::Unlimited,
        ..BillingOptions::default()
    })
    .await;
    let url = app.url();
    let org = org();
    app.set_owner(&org, "owner@metrics.test").await;
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let before = scrape(&url).await;

    let sub = SubscriptionState {
        id: "sub_metrics",
        customer: &customer,
        org: &org,
        price: "price_metrics",
        status: "active",
        current_period_end: now() + 30 * 86_400,
        cancel_at_period_end: false,
    };
    let created = stripe_event(
        "customer.subscription.created",
        now() - 10,
        subscription_object(&sub),
    );
    app.deliver_event(&created).await;
    // Stripe's retry of the same event applies nothing more.
    app.post_event(&created).await;
    let paid = stripe_event(
        "invoice.paid",
        now() - 5,
        invoice_object("in_metrics_1", &customer, "paid", 2900, true),
    );
    app.deliver_event(&paid).await;
    let after = grown(&url, &before, MAILS, &[("outcome", "sent")], 1.0).await;
    assert_eq!(
        delta(
            &after,
            &before,
            APPLIED,
            &[("type_family", "customer.subscription")]
        ),
        1.0
    );
    assert_eq!(
        delta(&after, &before, APPLIED, &[("type_family", "invoice")]),
        1.0
    );
    assert_eq!(delta(&after, &before, MAILS, &[("outcome", "failed")]), 0.0);

    // The outbox cannot be written: the receipt fails, the event still applies.
    app.break_outbox();
    let failed = stripe_event(
        "invoice.payment_failed",
        now(),
        invoice_object("in_metrics_2", &customer, "open", 2900, false),
    );
    app.deliver_event(&failed).await;
    let after = grown(&url, &before, MAILS, &[("outcome", "failed")], 1.0).await;
    assert_eq!(
        delta(&after, &before, APPLIED, &[("type_family", "invoice")]),
        2.0
    );
    assert_eq!(delta(&after, &before, MAILS, &[("outcome", "sent")]), 1.0);
    assert_eq!(
        delta(
            &after,
            &before,
            INBOUND,
            &[("source", "stripe"), ("outcome", "duplicate")]
        ),
        1.0
    );
    app.shutdown().await;
}
