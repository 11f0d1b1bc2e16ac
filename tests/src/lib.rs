//! The end-to-end test harness: a real Hookline server on a loopback port, over the embedded
//! adapters in a fresh data dir ([`spawn_app`]) or over DynamoDB + SQS on moto
//! ([`spawn_app_on_moto`]), spoken to over HTTP exactly as each provider speaks to it.
//!
//! Every wait is bounded: a test that does not see what it waits for panics with what it saw.

use chrono::{DateTime, Utc};
use hookline::clock::{Clock, ManualClock, SystemClock};
use hookline::config::Settings;
use hookline::model::{Activity, Delivery, DeliveryStatus, Source};
use hookline::ports::queue::{Queue, QueueError, QueueSettings, ReceivedMessage};
use hookline::ports::sqlite::Durability;
use hookline::ports::store::{DeliveryQuery, DeliveryStore};
use hookline::providers::simulate::{self, SignedRequest, Simulation};
use hookline::providers::ProviderSecrets;
use hookline::runtime::local::{embedded_app, Server};
use hookline::runtime::App;
use hookline::worker::{Dispatcher, Worker};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use hookline;

pub mod billing;
pub mod outbound;
pub mod stripe_stub;

/// The dev secrets of `events/README.md`: every payload in `events/` is signed for them.
pub const GITHUB_SECRET: &str = "dev-github-secret";
pub const GITLAB_TOKEN: &str = "dev-gitlab-token";
pub const JIRA_SECRET: &str = "dev-jira-secret";
pub const STRIPE_SECRET: &str = "whsec_dev_stripe_secret";
pub const TWILIO_TOKEN: &str = "dev-twilio-token";
pub const WHATSAPP_SECRET: &str = "dev-whatsapp-secret";
pub const WHATSAPP_VERIFY_TOKEN: &str = "dev-whatsapp-verify";

/// How long any wait in these tests may take before it fails.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// The provider secrets, built the way the server builds them: by variable name.
pub fn dev_secrets() -> ProviderSecrets {
    ProviderSecrets::from_lookup(|name| {
        let value = match name {
            "GITHUB_WEBHOOK_SECRET" => GITHUB_SECRET,
            "GITLAB_WEBHOOK_TOKEN" => GITLAB_TOKEN,
            "JIRA_WEBHOOK_SECRET" => JIRA_SECRET,
            "STRIPE_WEBHOOK_SECRET" => STRIPE_SECRET,
            "TWILIO_AUTH_TOKEN" => TWILIO_TOKEN,
            "WHATSAPP_APP_SECRET" => WHATSAPP_SECRET,
            "WHATSAPP_VERIFY_TOKEN" => WHATSAPP_VERIFY_TOKEN,
            _ => return None,
        };
        Some(value.to_string())
    })
}

/// The dev secret a source signs with.
pub fn secret_for(source: Source) -> &'static str {
    match source {
        Source::Github => GITHUB_SECRET,
        Source::Gitlab => GITLAB_TOKEN,
        Source::Jira => JIRA_SECRET,
        Source::Stripe => STRIPE_SECRET,
        Source::Twilio => TWILIO_TOKEN,
        Source::Whatsapp => WHATSAPP_SECRET,
    }
}

/// The workspace's `events/payloads/` directory.
pub fn payloads_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/payloads")
}

/// The exact bytes of one payload in `events/payloads/`.
pub fn payload(file: &str) -> Vec<u8> {
    let path = payloads_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One real-looking delivery per source, and what Hookline must call it.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    pub source: Source,
    /// In `events/payloads/`.
    pub file: &'static str,
    /// The event type as the provider names it.
    pub event_type: &'static str,
}

pub const FIXTURES: [Fixture; 6] = [
    Fixture {
        source: Source::Github,
        file: "github-push.json",
        event_type: "push",
    },
    Fixture {
        source: Source::Gitlab,
        file: "gitlab-pipeline.json",
        event_type: "pipeline",
    },
    Fixture {
        source: Source::Jira,
        file: "jira-issue-created.json",
        event_type: "jira:issue_created",
    },
    Fixture {
        source: Source::Stripe,
        file: "stripe-invoice-paid.json",
        event_type: "invoice.paid",
    },
    Fixture {
        source: Source::Twilio,
        file: "twilio-message-status.txt",
        event_type: "message_status",
    },
    Fixture {
        source: Source::Whatsapp,
        file: "whatsapp-message.json",
        event_type: "whatsapp_business_account.messages",
    },
];

pub fn fixture(source: Source) -> Fixture {
    FIXTURES
        .into_iter()
        .find(|f| f.source == source)
        .expect("every source has a fixture")
}

impl Fixture {
    pub fn body(&self) -> Vec<u8> {
        payload(self.file)
    }

    /// The delivery id Hookline must record when the provider's own id is `sent_id`: the
    /// header id where the provider sends one, the event id for Stripe, the body's SHA-256
    /// for WhatsApp.
    pub fn expected_delivery_id(&self, sent_id: &str) -> String {
        match self.source {
            Source::Stripe => {
                let v: serde_json::Value =
                    serde_json::from_slice(&self.body()).expect("the Stripe payload is JSON");
                v["id"].as_str().expect("a Stripe event has an id").into()
            }
            Source::Whatsapp => hookline::model::sha256_hex(&self.body()),
            _ => sent_id.to_string(),
        }
    }
}

/// An HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics (showing it) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body with {}, got {:?}: {e}",
                self.status, self.body
            )
        })
    }

    /// `status` field of a JSON body, or the raw body when it has none.
    pub fn outcome(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.get("status")
                    .or_else(|| v.get("error"))
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| self.body.clone())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "expected {status}, got {} with body {}",
            self.status, self.body
        );
        self
    }
}

/// A queue that counts what the pipeline put on it, so a test can say "nothing was queued"
/// or "queued exactly once" even after the worker has taken the message off again.
pub struct CountingQueue {
    inner: Arc<dyn Queue>,
    sent: Arc<AtomicUsize>,
    /// How long `send` takes to answer after the message is on the queue (a slow network
    /// response), so the worker can finish before the pipeline hears back.
    answer_after: Duration,
}

#[async_trait::async_trait]
impl Queue for CountingQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        let id = self.inner.send(body, delay).await?;
        self.sent.fetch_add(1, Ordering::SeqCst);
        if !self.answer_after.is_zero() {
            tokio::time::sleep(self.answer_after).await;
        }
        Ok(id)
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(max, wait).await
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt).await
    }

    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive_dead_letters(max).await
    }

    async fn redrive(&self, max: u32) -> Result<usize, QueueError> {
        self.inner.redrive(max).await
    }
}

/// Builds the worker's handlers over the app's store.
pub type DispatcherFactory = Arc<dyn Fn(Arc<dyn DeliveryStore>) -> Dispatcher + Send + Sync>;

/// How to start a test server.
pub struct Options {
    pub settings: Settings,
    pub queue: QueueSettings,
    /// Worker pollers; 0 leaves every queued message on the queue for the test to inspect.
    pub worker_loops: usize,
    /// Replace the standard handlers (to make processing fail, for instance); given the
    /// app's store.
    pub dispatcher: Option<DispatcherFactory>,
    /// Reuse this data dir (a restart) instead of a fresh one.
    pub data_dir: Option<Arc<tempfile::TempDir>>,
    /// The clock of the pipeline and the worker; the system clock if `None`.
    pub clock: Option<Arc<ManualClock>>,
    /// How long the queue takes to answer a send after the message is on it.
    pub slow_enqueue_answer: Duration,
}

/// Quick retries (a failed delivery is seen again after 2 s), yet long enough that a worker
/// slowed down by a busy machine is not overtaken by a second receipt of its message.
pub const TEST_QUEUE: QueueSettings = QueueSettings {
    visibility_timeout: Duration::from_secs(2),
    max_receive_count: 5,
};

impl Default for Options {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            queue: TEST_QUEUE,
            worker_loops: 2,
            dispatcher: None,
            data_dir: None,
            clock: None,
            slow_enqueue_answer: Duration::ZERO,
        }
    }
}

/// A running Hookline and a client for it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`, also the server's `public_base_url`.
    pub url: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn DeliveryStore>,
    /// The queue as the server sees it (through the counter).
    pub queue: Arc<dyn Queue>,
    /// The embedded data dir (`None` on moto).
    pub data_dir: Option<Arc<tempfile::TempDir>>,
    /// DynamoDB and SQS handles (`None` on the embedded adapters).
    pub moto: Option<MotoResources>,
    enqueued: Arc<AtomicUsize>,
    server: Option<Server>,
}

/// A free loopback port: bind port 0, read it back, let it go. Another process could take it
/// before the server binds it; [`start`] then tries another.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener
        .local_addr()
        .expect("a bound socket has an address")
}

/// Start `app`'s server on a free port whose URL is the app's `public_base_url` (Twilio signs
/// the full URL), retrying on the rare port race.
async fn start(
    build: impl Fn(Settings) -> App,
    settings: &Settings,
    worker_loops: usize,
) -> (Server, App) {
    let mut last_error = None;
    for _ in 0..5 {
        let addr = free_addr();
        let app = build(Settings {
            public_base_url: Some(format!("http://{addr}")),
            ..settings.clone()
        });
        match Server::start(app.clone(), addr, worker_loops).await {
            Ok(server) => return (server, app),
            Err(e) => last_error = Some(e),
        }
    }
    panic!("cannot start the test server: {last_error:?}");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the HTTP client")
}

/// Hookline on the embedded adapters in a fresh data dir, with the dev secrets.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("create a temporary data dir")));
    let enqueued = Arc::new(AtomicUsize::new(0));
    let queue_settings = options.queue;
    let dispatcher = options.dispatcher.clone();
    let dir = data_dir.path().to_path_buf();
    let counter = enqueued.clone();
    let manual_clock = options.clock.clone();
    let answer_after = options.slow_enqueue_answer;
    let build = move |settings: Settings| -> App {
        let clock: Arc<dyn Clock> = match &manual_clock {
            Some(manual) => manual.clone(),
            None => Arc::new(SystemClock),
        };
        let embedded = embedded_app(
            &dir,
            dev_secrets(),
            settings.clone(),
            queue_settings,
            Durability::Normal,
            clock.clone(),
        )
        .expect("open the embedded app");
        // The same app, its queue seen through the counter.
        let queue: Arc<dyn Queue> = Arc::new(CountingQueue {
            inner: embedded.queue.clone(),
            sent: counter.clone(),
            answer_after,
        });
        let settings = Settings {
            process_lease: queue_settings.visibility_timeout,
            ..settings
        };
        assemble(
            embedded.store.clone(),
            queue,
            clock,
            settings,
            dispatcher.clone(),
        )
    };
    let (server, app) = start(build, &options.settings, options.worker_loops).await;
    TestApp {
        url: server.url(),
        client: client(),
        store: app.store.clone(),
        queue: app.queue.clone(),
        data_dir: Some(data_dir),
        moto: None,
        enqueued,
        server: Some(server),
    }
}

fn assemble(
    store: Arc<dyn DeliveryStore>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    dispatcher: Option<DispatcherFactory>,
) -> App {
    let mut app = App::assemble(
        store.clone(),
        queue,
        dev_secrets(),
        clock.clone(),
        settings.clone(),
    );
    if let Some(dispatcher) = dispatcher {
        let dispatcher = dispatcher(store.clone());
        app.worker = Arc::new(Worker::new(store, dispatcher, clock, &settings));
    }
    app
}

impl TestApp {
    /// The URL of a source's route.
    pub fn route(&self, source: Source) -> String {
        format!("{}{}", self.url, source.route())
    }

    /// `body` signed for `source` with `secret` as the provider would, at `now`; a fresh
    /// delivery id unless `delivery_id` is given.
    pub fn sign_at(
        &self,
        source: Source,
        body: &[u8],
        secret: &str,
        delivery_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> SignedRequest {
        let url = self.route(source);
        simulate::sign(&Simulation {
            source,
            secret,
            url: Some(&url),
            body,
            event: None,
            now,
            delivery_id,
        })
        .expect("sign the simulated delivery")
    }

    pub fn sign(
        &self,
        source: Source,
        body: &[u8],
        secret: &str,
        delivery_id: Option<&str>,
    ) -> SignedRequest {
        self.sign_at(source, body, secret, delivery_id, Utc::now())
    }

    /// POST a signed request exactly as signed.
    pub async fn post(&self, req: &SignedRequest) -> Reply {
        let mut builder = self.client.post(&req.url).body(req.body.clone());
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        read(builder.send().await.expect("POST to the test server")).await
    }

    /// Deliver `body` to `source`'s route, signed with `secret`, under a fresh delivery id.
    pub async fn send(&self, source: Source, body: &[u8], secret: &str) -> Reply {
        self.post(&self.sign(source, body, secret, None)).await
    }

    /// Deliver `body` under the provider delivery id `delivery_id`.
    pub async fn send_with_id(
        &self,
        source: Source,
        body: &[u8],
        secret: &str,
        delivery_id: &str,
    ) -> Reply {
        self.post(&self.sign(source, body, secret, Some(delivery_id)))
            .await
    }

    pub async fn get(&self, path_and_query: &str) -> Reply {
        let url = format!("{}{path_and_query}", self.url);
        read(
            self.client
                .get(url)
                .send()
                .await
                .expect("GET the test server"),
        )
        .await
    }

    /// How many messages the pipeline has put on the queue.
    pub fn enqueued(&self) -> usize {
        self.enqueued.load(Ordering::SeqCst)
    }

    /// The delivery log, newest first.
    pub async fn deliveries(&self) -> Vec<Delivery> {
        self.store
            .list(&DeliveryQuery {
                source: None,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("list the delivery log")
    }

    pub async fn activities(&self) -> Vec<Activity> {
        self.store
            .list_activities(1000)
            .await
            .expect("list the activities")
    }

    /// Poll the delivery log until `check` accepts it (returning what it found), for at most
    /// [`WAIT_LIMIT`]; then panic with `what` and the log as last seen.
    pub async fn wait_for<T>(&self, what: &str, check: impl Fn(&[Delivery]) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            let seen = self.deliveries().await;
            if let Some(found) = check(&seen) {
                return found;
            }
            if started.elapsed() > WAIT_LIMIT {
                panic!(
                    "waited {WAIT_LIMIT:?} for {what}; the delivery log was:\n{}",
                    describe(&seen)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until the log holds `n` deliveries and the worker has finished every one of them
    /// (processed or skipped); returns the log.
    pub async fn wait_until_processed(&self, n: usize) -> Vec<Delivery> {
        self.wait_for(&format!("{n} processed deliveries"), |seen| {
            (seen.len() >= n && seen.iter().all(|d| d.status.is_final())).then(|| seen.to_vec())
        })
        .await
    }

    /// Stop the server (the worker finishes what it holds) and hand back the data dir.
    pub async fn shutdown(mut self) -> Option<Arc<tempfile::TempDir>> {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.data_dir.take()
    }
}

async fn read(res: reqwest::Response) -> Reply {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.expect("read the response body");
    Reply {
        status,
        headers,
        body,
    }
}

/// The delivery log as lines, for failure messages.
pub fn describe(deliveries: &[Delivery]) -> String {
    if deliveries.is_empty() {
        return "  (empty)".into();
    }
    deliveries
        .iter()
        .map(|d| {
            format!(
                "  {} {} {} status={} attempts={} error={:?}",
                d.source, d.delivery_id, d.event_type, d.status, d.attempts, d.error
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Count answers by (status code, outcome), for failure messages of concurrency tests.
pub fn histogram(replies: &[Reply]) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut h = std::collections::BTreeMap::new();
    for r in replies {
        *h.entry((r.status, r.outcome())).or_insert(0) += 1;
    }
    h
}

/// Send `copies` copies of one signed request at once.
pub async fn send_concurrently(app: &TestApp, req: &SignedRequest, copies: usize) -> Vec<Reply> {
    let sends = (0..copies).map(|_| {
        let client = app.client.clone();
        let req = req.clone();
        tokio::spawn(async move {
            let mut builder = client.post(&req.url).body(req.body.clone());
            for (name, value) in &req.headers {
                builder = builder.header(name, value);
            }
            read(builder.send().await.expect("POST a concurrent copy")).await
        })
    });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.expect("a concurrent send panicked"))
        .collect()
}

/// Whether a delivery's record says it was processed once, for assertions.
pub fn processed_once(d: &Delivery) -> bool {
    d.status == DeliveryStatus::Processed && d.attempts == 1
}

// ---------------------------------------------------------------------------------------------
// On moto: the same server over the AWS adapters (DynamoDB + SQS) on a moto server.

use hookline::ports::queue::aws::{create_queue_pair, SqsQueue};
use hookline::ports::secrets::aws::sdk_config_for;
use hookline::ports::store::aws::{create_table, DynamoStore};

/// moto's fixed account id, which its queue URLs carry.
pub const MOTO_ACCOUNT: &str = "123456789012";

pub use hookline::ports::secrets::aws::moto_endpoint;

/// The AWS resources behind a moto test app.
#[derive(Clone)]
pub struct MotoResources {
    pub endpoint: String,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub table: String,
    /// The main queue's name (its dead-letter queue is `{name}-dlq`).
    pub queue_name: String,
    /// The queue the server talks to (through the counter, in [`TestApp::queue`]).
    pub sqs_queue: Arc<SqsQueue>,
}

impl MotoResources {
    /// Create the queue pair the server was given the URLs of (for "queue down" tests).
    pub async fn create_queue(&self, queue: QueueSettings) -> (String, String) {
        create_queue_pair(
            &self.sqs,
            &self.queue_name,
            queue.visibility_timeout,
            queue.max_receive_count,
        )
        .await
        .expect("create the queue pair in moto")
    }

    /// Every message on the main queue right now (received, so hidden for a while).
    pub async fn drain_main_queue(&self) -> Vec<ReceivedMessage> {
        let mut all = Vec::new();
        loop {
            let got = self
                .sqs_queue
                .receive(10, Duration::ZERO)
                .await
                .expect("receive from the SQS queue");
            if got.is_empty() {
                return all;
            }
            all.extend(got);
        }
    }
}

/// What a moto test app's store is.
pub enum MotoStore {
    /// A fresh table.
    Table,
    /// A table name that does not exist: every call fails (the store is down).
    MissingTable,
    /// An endpoint nothing listens on: every call fails to connect.
    ClosedPort,
}

/// What a moto test app's queue is.
pub enum MotoQueue {
    /// A fresh queue pair.
    Created,
    /// A queue pair named but not created yet (the queue is down until
    /// [`MotoResources::create_queue`]).
    NotCreatedYet,
}

pub struct MotoOptions {
    pub store: MotoStore,
    pub queue: MotoQueue,
    pub queue_settings: QueueSettings,
    pub worker_loops: usize,
    pub settings: Settings,
}

/// SQS counts visibility in whole seconds; moto under load can take seconds per call, so
/// a message is not handed out again while its first worker still holds it.
pub const MOTO_QUEUE: QueueSettings = QueueSettings {
    visibility_timeout: Duration::from_secs(5),
    max_receive_count: 5,
};

impl Default for MotoOptions {
    fn default() -> Self {
        Self {
            store: MotoStore::Table,
            queue: MotoQueue::Created,
            queue_settings: MOTO_QUEUE,
            worker_loops: 2,
            settings: Settings::default(),
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Hookline on DynamoDB + SQS (moto), with the dev secrets.
pub async fn spawn_app_on_moto() -> TestApp {
    spawn_app_on_moto_with(MotoOptions::default()).await
}

pub async fn spawn_app_on_moto_with(options: MotoOptions) -> TestApp {
    let endpoint = moto_endpoint();
    let config = sdk_config_for(Some(&endpoint)).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let table = unique("hookline-e2e");
    let store: Arc<dyn DeliveryStore> = match options.store {
        MotoStore::Table => {
            create_table(&dynamodb, &table)
                .await
                .expect("create the test table in moto");
            Arc::new(DynamoStore::new(dynamodb.clone(), &table))
        }
        MotoStore::MissingTable => Arc::new(DynamoStore::new(dynamodb.clone(), &table)),
        MotoStore::ClosedPort => {
            let closed = format!("http://{}", free_addr());
            let config = sdk_config_for(Some(&closed)).await;
            Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&config),
                &table,
            ))
        }
    };
    let queue_name = unique("hookline-e2e");
    let (queue_url, dlq_url) = match options.queue {
        MotoQueue::Created => create_queue_pair(
            &sqs,
            &queue_name,
            options.queue_settings.visibility_timeout,
            options.queue_settings.max_receive_count,
        )
        .await
        .expect("create the test queues in moto"),
        MotoQueue::NotCreatedYet => {
            let base = endpoint.trim_end_matches('/');
            (
                format!("{base}/{MOTO_ACCOUNT}/{queue_name}"),
                format!("{base}/{MOTO_ACCOUNT}/{queue_name}-dlq"),
            )
        }
    };
    let sqs_queue = Arc::new(SqsQueue::new(sqs.clone(), queue_url, dlq_url));
    let enqueued = Arc::new(AtomicUsize::new(0));
    let queue: Arc<dyn Queue> = Arc::new(CountingQueue {
        inner: sqs_queue.clone(),
        sent: enqueued.clone(),
        answer_after: Duration::ZERO,
    });
    let process_lease = options.queue_settings.visibility_timeout;
    let build = |settings: Settings| -> App {
        assemble(
            store.clone(),
            queue.clone(),
            Arc::new(SystemClock),
            Settings {
                process_lease,
                ..settings
            },
            None,
        )
    };
    let (server, app) = start(build, &options.settings, options.worker_loops).await;
    TestApp {
        url: server.url(),
        client: client(),
        store: app.store.clone(),
        queue: app.queue.clone(),
        data_dir: None,
        moto: Some(MotoResources {
            endpoint,
            dynamodb,
            sqs,
            table,
            queue_name,
            sqs_queue,
        }),
        enqueued,
        server: Some(server),
    }
}

// ---- the authenticated API over a running server, with the GitHub/GitLab stub -----------------

/// A local server with the repository, incidents and OAuth routes, its provider-API stub, and
/// a dev-token issuer for its data dir (zero2prod's `spawn_app` for the `/api/v1` routes).
pub struct ApiServer {
    pub server: hookline::runtime::local::Server,
    pub stub: hookline::hooks::stub::HookApiStub,
    /// The server's repository service: tests run the hook-health check on it.
    pub hooks: std::sync::Arc<hookline::connections::service::Repositories>,
    pub issuer: hookline::auth::LocalIssuer,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl ApiServer {
    /// A fresh server: `secrets` for the webhook routes; a rotated-out secret keeps verifying
    /// for `rotation_overlap`.
    pub async fn spawn(
        secrets: hookline::providers::ProviderSecrets,
        rotation_overlap: std::time::Duration,
    ) -> Self {
        Self::spawn_with(secrets, rotation_overlap, None).await
    }

    /// [`spawn`](Self::spawn), running the hook-health check on `hook_health`'s interval as
    /// `hookline serve` does (`None`: only when a test calls it).
    pub async fn spawn_with(
        secrets: hookline::providers::ProviderSecrets,
        rotation_overlap: std::time::Duration,
        hook_health: Option<hookline::connections::service::health::HealthSettings>,
    ) -> Self {
        use hookline::runtime::local::{embedded_app, with_repositories, RepositoriesConfig};
        let dir = tempfile::tempdir().unwrap();
        let stub = hookline::hooks::stub::HookApiStub::start().await;
        let clock = std::sync::Arc::new(hookline::clock::SystemClock);
        let app = embedded_app(
            dir.path(),
            secrets,
            hookline::config::Settings::default(),
            hookline::runtime::local::LOCAL_QUEUE,
            hookline::ports::sqlite::Durability::Normal,
            clock.clone(),
        )
        .unwrap();
        let config = RepositoriesConfig {
            github_api_url: stub.url().to_string(),
            gitlab_url: stub.url().to_string(),
            auth: None,
            rotation_overlap,
            oauth: None,
        };
        let mut app =
            with_repositories(app, dir.path(), "https://hooks.example.com", config, clock).unwrap();
        app.hook_health = hook_health;
        let hooks = app.hooks.clone().unwrap();
        let server =
            hookline::runtime::local::Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
                .await
                .unwrap();
        let issuer = hookline::auth::LocalIssuer::open(dir.path()).unwrap();
        Self {
            server,
            stub,
            hooks,
            issuer,
            http: reqwest::Client::new(),
            dir,
        }
    }

    /// A bearer token for `user-1` of `org` with `scopes`, valid ten minutes.
    pub fn token(&self, org: &str, scopes: &[hookline::auth::Scope]) -> String {
        let scopes = scopes.iter().copied().collect();
        self.issuer.issue(
            &hookline::auth::OrgId::from(org),
            &hookline::auth::UserId::from("user-1"),
            &scopes,
            std::time::Duration::from_secs(600),
        )
    }

    /// Call an API route; the answer's status and JSON body (or its text as a JSON string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        call_api(&self.http, &self.server.url(), method, path, token, body).await
    }
}

/// Call an API route of the server at `base` with an optional bearer token and JSON body; the
/// answer's status and JSON body (or its text as a JSON string).
pub async fn call_api(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}
