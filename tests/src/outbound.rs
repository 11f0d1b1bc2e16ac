//! Outbound test harness: a Hookline server with outbound webhooks on, and local receivers
//! that answer as a customer's endpoint would (fail, succeed, 410, 429, hang) and keep every
//! request they got.

use axum::extract::State;
use axum::routing::any;
use axum::Router;
use hookline::auth::Scope;
use hookline::clock::{Clock, SystemClock};
use hookline::outbound::catalog::EventCatalog;
use hookline::outbound::settings::OutboundSettings;
use hookline::outbound::ssrf::AddressPolicy;
use hookline::ports::sqlite::Durability;
use hookline::runtime::local::{embedded_app, with_outbound, OutboundConfig, Server};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::WAIT_LIMIT;

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How a receiver answers its n-th request (1-based).
pub type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with a `Retry-After` of that many seconds.
    RetryAfter(u16, u64),
    /// Answer 200 only after this long (longer than the attempt timeout, say).
    Slow(Duration),
}

/// A local HTTP server standing in for a customer's endpoint.
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ReceiverState {
    got: Arc<Mutex<Vec<Received>>>,
    script: Script,
}

impl Receiver {
    pub async fn start(script: Script) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let state = ReceiverState {
            got: got.clone(),
            script,
        };
        let app = Router::new()
            .fallback(any(
                |State(s): State<ReceiverState>, req: axum::extract::Request| async move {
                    let (parts, body) = req.into_parts();
                    let body = axum::body::to_bytes(body, 1 << 20)
                        .await
                        .unwrap_or_default();
                    let n = {
                        let mut got = s.got.lock().unwrap();
                        got.push(Received {
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers.clone(),
                            body,
                            at: Instant::now(),
                        });
                        got.len()
                    };
                    let reply = (s.script)(n);
                    let mut res = axum::response::Response::new(axum::body::Body::from("ok"));
                    match reply {
                        Reply::Status(code) => {
                            *res.status_mut() = http::StatusCode::from_u16(code).unwrap();
                        }
                        Reply::RetryAfter(code, secs) => {
                            *res.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            res.headers_mut()
                                .insert("retry-after", secs.to_string().parse().unwrap());
                        }
                        Reply::Slow(wait) => tokio::time::sleep(wait).await,
                    }
                    res
                },
            ))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, got, task }
    }

    /// Always the same answer.
    pub async fn answering(status: u16) -> Self {
        Self::start(Arc::new(move |_| Reply::Status(status))).await
    }

    /// `failures` answers of 500, then 200.
    pub async fn failing_first(failures: usize) -> Self {
        Self::start(Arc::new(move |n| {
            Reply::Status(if n <= failures { 500 } else { 200 })
        }))
        .await
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Wait until the receiver has got at least `n` requests; they all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} requests, waiting for {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many requests each path got.
    pub fn by_path(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.received() {
            *counts.entry(r.path).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SSRF policy `.env.example` sets for local development: http, and loopback receivers.
pub fn local_development() -> AddressPolicy {
    AddressPolicy::strict()
        .allow_http(true)
        .allow_cidrs(["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
}

/// A short retry schedule for tests: one attempt plus `retries`, `step` apart.
pub fn short_settings(retries: usize, step: Duration) -> OutboundSettings {
    OutboundSettings {
        retry_schedule: vec![step; retries],
        timeout: Duration::from_secs(2),
        ..OutboundSettings::default()
    }
}

/// Hookline with outbound webhooks on, over the embedded adapters in a fresh data dir; its
/// SSRF policy lets loopback receivers in (as `.env.example` does for local development).
pub struct OutboundServer {
    pub server: Server,
    pub issuer: hookline::auth::LocalIssuer,
    pub http: reqwest::Client,
    /// The data dir (embedded), which the moto server also uses for nothing but its keys.
    pub dir: tempfile::TempDir,
    pub app: hookline::runtime::App,
}

/// The AWS resources of an outbound server on moto.
pub struct MotoOutbound {
    pub endpoint: String,
    pub table: String,
    pub dispatch_dlq: String,
    pub deliveries_dlq: String,
}

impl OutboundServer {
    pub async fn spawn(settings: OutboundSettings) -> Self {
        Self::spawn_with(settings, local_development()).await
    }

    pub async fn spawn_with(settings: OutboundSettings, policy: AddressPolicy) -> Self {
        Self::spawn_tuned(settings, policy, 64, Durability::Normal).await
    }

    /// With `concurrency` attempts in flight at most (`hookline serve`'s is
    /// `OUTBOUND_CONCURRENCY`, 256 unless set), and the data dir's `durability` (`hookline
    /// serve`'s is `Full`: every write the API or the deliverer waits on has reached the disk;
    /// the tests take `Normal`, which skips the fsync).
    pub async fn spawn_tuned(
        settings: OutboundSettings,
        policy: AddressPolicy,
        concurrency: usize,
        durability: Durability,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let app = embedded_app(
            dir.path(),
            super::dev_secrets(),
            hookline::config::Settings::default(),
            hookline::runtime::local::LOCAL_QUEUE,
            durability,
            clock.clone(),
        )
        .unwrap();
        let config = OutboundConfig {
            settings,
            policy,
            catalog: EventCatalog::default(),
            auth: None,
            // Retries exactly on the schedule, so tests can check the gaps.
            jitter: Arc::new(|| 0.0),
            concurrency,
        };
        let app = with_outbound(app, dir.path(), config, clock).unwrap();
        let server = Server::start(app.clone(), "127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        let issuer = hookline::auth::LocalIssuer::open(dir.path()).unwrap();
        Self {
            server,
            issuer,
            http: reqwest::Client::new(),
            dir,
            app,
        }
    }

    /// The same server over DynamoDB, SQS, KMS and SES on moto (`HOOKLINE_MOTO_ENDPOINT`).
    pub async fn spawn_on_moto(settings: OutboundSettings) -> (Self, MotoOutbound) {
        use hookline::ports::queue::aws::{create_queue_pair, SqsQueue};
        let endpoint = super::moto_endpoint();
        let sdk = hookline::ports::secrets::aws::sdk_config_for(Some(&endpoint)).await;
        let name = format!("hookline-out-{}", uuid::Uuid::new_v4().simple());
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        hookline::ports::store::aws::create_table(&dynamo, &name)
            .await
            .unwrap();
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let visibility = settings.timeout + Duration::from_secs(5);
        let (dispatch, dispatch_dlq) =
            create_queue_pair(&sqs, &format!("{name}-dispatch"), visibility, 5)
                .await
                .unwrap();
        let (deliveries, deliveries_dlq) =
            create_queue_pair(&sqs, &format!("{name}-deliveries"), visibility, 5)
                .await
                .unwrap();
        let kms = aws_sdk_kms::Client::new(&sdk);
        let key_id = kms
            .create_key()
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .key_id;
        let ses = aws_sdk_sesv2::Client::new(&sdk);
        ses.create_email_identity()
            .email_identity("hookline@example.com")
            .send()
            .await
            .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ports = hookline::outbound::Ports {
            store: Arc::new(hookline::ports::outbound::aws::DynamoOutboundStore::new(
                dynamo.clone(),
                name.clone(),
            )),
            orgs: Arc::new(hookline::ports::orgs::aws::DynamoOrgStore::new(
                dynamo.clone(),
                name.clone(),
            )),
            keys: Arc::new(hookline::ports::keys::CachedKeys::new(
                hookline::ports::keys::aws::KmsKeys::new(kms, key_id),
            )),
            mailer: Arc::new(hookline::ports::mail::aws::SesMailer::new(
                ses,
                "hookline@example.com".to_owned(),
            )),
            dispatch_queue: Arc::new(SqsQueue::new(sqs.clone(), dispatch, dispatch_dlq.clone())),
            deliveries_queue: Arc::new(SqsQueue::new(sqs, deliveries, deliveries_dlq.clone())),
            due: None,
            clock: clock.clone(),
        };
        let dir = tempfile::tempdir().unwrap();
        let issuer = hookline::auth::LocalIssuer::open(dir.path()).unwrap();
        let app = hookline::runtime::App::assemble(
            Arc::new(hookline::ports::store::aws::DynamoStore::new(dynamo, &name)),
            Arc::new(hookline::ports::queue::embedded::EmbeddedQueue::new(
                hookline::ports::sqlite::Database::open(
                    dir.path(),
                    hookline::ports::sqlite::Durability::Normal,
                )
                .unwrap(),
                hookline::runtime::local::LOCAL_QUEUE,
            )),
            super::dev_secrets(),
            clock,
            hookline::config::Settings::default(),
        );
        let config = OutboundConfig {
            settings,
            policy: local_development(),
            catalog: EventCatalog::default(),
            auth: None,
            jitter: Arc::new(|| 0.0),
            concurrency: 32,
        };
        let app = hookline::runtime::local::with_outbound_over(
            app,
            ports,
            config,
            issuer.authenticator(),
        );
        let server = Server::start(app.clone(), "127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        (
            Self {
                server,
                issuer,
                http: reqwest::Client::new(),
                dir,
                app,
            },
            MotoOutbound {
                endpoint,
                table: name,
                dispatch_dlq,
                deliveries_dlq,
            },
        )
    }

    pub fn outbound(&self) -> &hookline::outbound::Outbound {
        self.app.outbound.as_deref().expect("outbound is on")
    }

    /// A token of `org` with `webhooks:manage` and `admin`.
    pub fn manager(&self, org: &str) -> String {
        self.token(org, &[Scope::WebhooksManage, Scope::Admin])
    }

    pub fn token(&self, org: &str, scopes: &[Scope]) -> String {
        self.issuer.issue(
            &hookline::auth::OrgId::from(org),
            &hookline::auth::UserId::from("user-1"),
            &scopes.iter().copied().collect(),
            Duration::from_secs(600),
        )
    }

    /// Call a route; the status and the JSON body (or the text as a JSON string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        super::call_api(&self.http, &self.server.url(), method, path, token, body).await
    }

    /// Register an endpoint for `org`; its id and secret.
    pub async fn endpoint(&self, org: &str, url: &str, event_types: &[&str]) -> (String, String) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/endpoints",
                Some(&self.manager(org)),
                Some(serde_json::json!({ "url": url, "event_types": event_types })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Publish an event for `org`; its id.
    pub async fn publish(&self, org: &str, event_type: &str, data: serde_json::Value) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/events",
                Some(&self.manager(org)),
                Some(serde_json::json!({ "type": event_type, "data": data })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// The org's deliveries matching `query` (e.g. `endpoint_id=ep_…`).
    pub async fn deliveries(&self, org: &str, query: &str) -> Vec<serde_json::Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/deliveries?{query}"),
                Some(&self.manager(org)),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["deliveries"].as_array().unwrap().clone()
    }

    /// Wait until the delivery of `event_id` to `endpoint_id` has `status`; it.
    pub async fn wait_delivery(
        &self,
        org: &str,
        endpoint_id: &str,
        event_id: &str,
        status: &str,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let found = self
                .deliveries(
                    org,
                    &format!("endpoint_id={endpoint_id}&event_id={event_id}"),
                )
                .await;
            if let Some(d) = found.first() {
                if d["status"] == status {
                    return d.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "delivery of {event_id} to {endpoint_id} never became {status}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The attempts of a delivery.
    pub async fn attempts(&self, org: &str, delivery_id: &str) -> Vec<serde_json::Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/deliveries/{delivery_id}/attempts"),
                Some(&self.manager(org)),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["attempts"].as_array().unwrap().clone()
    }

    /// The messages in the data dir's outbox.
    pub fn outbox(&self) -> Vec<hookline::ports::mail::Mail> {
        hookline::ports::mail::embedded::Outbox::open(self.dir.path())
            .list()
            .unwrap()
            .into_iter()
            .map(|m| m.mail)
            .collect()
    }
}
