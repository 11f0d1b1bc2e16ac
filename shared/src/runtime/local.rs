//! The local server: every route and the worker in one process, over the embedded adapters
//! in a data dir that survives a restart. `hookline serve` runs this.

use super::App;
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::http::{Request, Response};
use crate::model::Source;
use crate::pipeline::InboundError;
use crate::ports::intake::EmbeddedIntake;
use crate::ports::queue::embedded::EmbeddedQueue;
use crate::ports::queue::{Queue, QueueSettings};
use crate::ports::sqlite::{Database, DbError, Durability};
use crate::ports::store::embedded::EmbeddedStore;
use crate::providers::ProviderSecrets;
use crate::telemetry::{self, InboundOutcome};
use crate::worker::{Worker, WorkerMessage};
use axum::extract::State;
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use axum::Router;
use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Local queue settings: a failed delivery is retried after 30 s, five times, then
/// dead-lettered (the template gives SQS the same redrive limit).
pub const LOCAL_QUEUE: QueueSettings = QueueSettings {
    visibility_timeout: Duration::from_secs(30),
    max_receive_count: 5,
};

/// The app over the embedded adapters in `data_dir`.
pub fn embedded_app(
    data_dir: &Path,
    secrets: ProviderSecrets,
    settings: Settings,
    queue_settings: QueueSettings,
    durability: Durability,
    clock: Arc<dyn Clock>,
) -> Result<App, DbError> {
    let db = Database::open(data_dir, durability)?;
    let settings = Settings {
        process_lease: queue_settings.visibility_timeout,
        ..settings
    };
    let queue = EmbeddedQueue::new(db.clone(), queue_settings);
    let gauges = QueueGauges {
        db: db.clone(),
        inbound: Arc::from(queue.name()),
    };
    let mut app = App::assemble(
        Arc::new(EmbeddedStore::new(db)),
        Arc::new(queue.clone()),
        secrets,
        clock,
        settings,
    );
    app.local_queues = Some(gauges);
    // The store and queue share one file: record and enqueue each delivery in one commit.
    app.pipeline = Arc::new(
        app.pipeline
            .with_atomic_intake(Arc::new(EmbeddedIntake::new(queue))),
    );
    Ok(app)
}

/// The default local app: system clock, fsync on every commit.
pub fn default_embedded_app(
    data_dir: &Path,
    secrets: ProviderSecrets,
    settings: Settings,
) -> Result<App, DbError> {
    embedded_app(
        data_dir,
        secrets,
        settings,
        LOCAL_QUEUE,
        Durability::Full,
        Arc::new(SystemClock),
    )
}

/// Where the local server's repository routes find the world outside.
pub struct RepositoriesConfig {
    /// `GITHUB_API_URL` (default the public API) — a stub's URL in tests.
    pub github_api_url: String,
    /// `GITLAB_URL` (default gitlab.com).
    pub gitlab_url: String,
    /// Bearer-token verification; `None` accepts the tokens `hookline token` prints (a dev key
    /// kept in the data dir).
    pub auth: Option<crate::auth::Authenticator>,
    /// How long a rotated-out webhook secret still verifies deliveries.
    pub rotation_overlap: Duration,
    /// The OAuth apps and endpoints, for the OAuth routes and for renewing expiring OAuth
    /// tokens before a hook call; `None` reads them from the environment.
    pub oauth: Option<crate::api::oauth::OAuthSettings>,
}

impl RepositoriesConfig {
    /// From `GITHUB_API_URL`, `GITLAB_URL`, `HOOKLINE_SECRET_ROTATION_OVERLAP_SECS` (default
    /// 3600) and the OAuth apps' `GITHUB_OAUTH_*` / `GITLAB_OAUTH_*` as `lookup` gives them
    /// (`hookline serve`'s: the environment, then its `--env-file`). `auth` is left to the
    /// server ([`server_authenticator`]).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let lookup = |name: &str| crate::config::present(lookup(name));
        let overlap = lookup("HOOKLINE_SECRET_ROTATION_OVERLAP_SECS")
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    format!(
                        "HOOKLINE_SECRET_ROTATION_OVERLAP_SECS must be a whole number, got {v:?}"
                    )
                })
            })
            .transpose()?
            .unwrap_or(3600);
        Ok(Self {
            github_api_url: lookup("GITHUB_API_URL")
                .unwrap_or_else(|| "https://api.github.com".into()),
            gitlab_url: lookup("GITLAB_URL").unwrap_or_else(|| "https://gitlab.com".into()),
            auth: None,
            rotation_overlap: Duration::from_secs(overlap),
            oauth: Some(crate::api::oauth::OAuthSettings::from_lookup(lookup)),
        })
    }
}

/// The one bearer-token verification of a local server: the `HOOKLINE_JWT_*` settings as
/// `lookup` gives them (the environment, then the `--env-file`), else the dev key in the data
/// dir that `hookline token` signs with. Give it to every route group's config: each group
/// then accepts the same tokens, and a route takes the principal the API rate limit verified
/// instead of verifying the token again (that needs the very same authenticator).
pub fn server_authenticator(
    data_dir: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::auth::Authenticator, String> {
    let configured = crate::auth::Authenticator::from_lookup(lookup).map_err(|e| e.to_string())?;
    local_auth(data_dir, configured)
}

/// The bearer-token verification a local route group uses: the configured one, or the dev key
/// in the data dir that `hookline token` signs with.
fn local_auth(
    data_dir: &Path,
    configured: Option<crate::auth::Authenticator>,
) -> Result<crate::auth::Authenticator, String> {
    match configured {
        Some(auth) => Ok(auth),
        None => crate::auth::LocalIssuer::open(data_dir)
            .map(|issuer| issuer.authenticator())
            .map_err(|e| {
                format!(
                    "cannot open the dev token key in {}: {e}",
                    data_dir.display()
                )
            }),
    }
}

/// Add the repository-connection routes to a local app: connections in the data dir's
/// database, secrets sealed with the data dir's master key.
pub fn with_repositories(
    mut app: App,
    data_dir: &Path,
    webhook_base_url: &str,
    config: RepositoriesConfig,
    clock: Arc<dyn Clock>,
) -> Result<App, String> {
    use crate::ports::connections::embedded::EmbeddedConnectionStore;
    use crate::ports::keys::{embedded::LocalKeys, CachedKeys, KeyService};
    // The provider OAuth routes come with the repository routes (client ids from the env).
    let oauth = config
        .oauth
        .clone()
        .unwrap_or_else(crate::api::oauth::OAuthSettings::from_env);
    app = with_oauth(
        app,
        data_dir,
        webhook_base_url,
        oauth,
        config.auth.clone(),
        clock.clone(),
    )?;
    let db = Database::open(data_dir, Durability::Full).map_err(|e| e.to_string())?;
    let store: Arc<dyn crate::ports::connections::ConnectionStore> =
        Arc::new(EmbeddedConnectionStore::new(db));
    let keys: Arc<dyn KeyService> = Arc::new(CachedKeys::new(
        LocalKeys::open_or_create(data_dir).map_err(|e| e.to_string())?,
    ));
    let auth = local_auth(data_dir, config.auth.clone())?;
    Ok(with_repositories_over(
        app,
        store,
        keys,
        auth,
        webhook_base_url,
        config,
        clock,
    ))
}

/// Add the repository-connection routes, the incidents routes, the connected-repository
/// worker handlers and per-repository verification to an app, over any connection store and
/// key service (embedded locally; DynamoDB and KMS on moto in tests). Add outbound first
/// ([`with_outbound`]) for incidents, connections and relayed deliveries to be published.
pub fn with_repositories_over(
    mut app: App,
    store: Arc<dyn crate::ports::connections::ConnectionStore>,
    keys: Arc<dyn crate::ports::keys::KeyService>,
    auth: crate::auth::Authenticator,
    webhook_base_url: &str,
    config: RepositoriesConfig,
    clock: Arc<dyn Clock>,
) -> App {
    use crate::connections::service::{Repositories, Settings, StoredProviderTokens};
    let log_clock = clock.clone();
    let oauth = config
        .oauth
        .clone()
        .unwrap_or_else(crate::api::oauth::OAuthSettings::from_env);
    let tokens = Arc::new(
        StoredProviderTokens::new(store.clone(), keys.clone()).with_refresh(&oauth, clock.clone()),
    );
    // With outbound on, incidents, connections and relayed deliveries enter the org's stream.
    let events: Option<Arc<dyn crate::outbound::sink::EventSink>> = app
        .outbound
        .as_ref()
        .map(|o| o.publisher.clone() as Arc<dyn crate::outbound::sink::EventSink>);
    let mut dispatcher = crate::worker::Dispatcher::with_repositories(
        app.store.clone(),
        store.clone(),
        events.clone(),
        app.plans
            .clone()
            .map(|p| p as Arc<dyn crate::billing::plan::PlanGate>),
    );
    if let Some(billing) = &app.billing {
        dispatcher = dispatcher.with_billing(app.store.clone(), billing.clone());
    }
    app.worker = Arc::new(app.worker.with_dispatcher(dispatcher));
    app.incidents = Some(Arc::new(crate::api::incidents::IncidentsApi::new(
        auth.clone(),
        store.clone(),
    )));
    let mut repos = Repositories::new(
        store,
        keys,
        tokens.clone(),
        Arc::new(crate::hooks::github::GitHubHooks::new(
            config.github_api_url,
        )),
        Arc::new(crate::hooks::gitlab::GitLabHooks::new(config.gitlab_url)),
        clock,
        Settings {
            webhook_base_url: webhook_base_url.to_string(),
            rotation_overlap: config.rotation_overlap,
        },
    );
    if let Some(events) = events {
        repos = repos.with_events(events);
    }
    if let Some(plans) = &app.plans {
        repos = repos.with_plan_gate(plans.clone());
    }
    let repos = Arc::new(repos);
    app.hooks = Some(repos.clone());
    // GitHub and GitLab deliveries for connected repositories verify with their own secret.
    app.pipeline = Arc::new(app.pipeline.with_connections(repos.clone()));
    app.repositories = Some(Arc::new(
        crate::api::repositories::RepositoriesApi::new(auth, repos, tokens).with_delivery_log(
            Arc::new(crate::delivery_log::DeliveryLog::new(
                app.store.clone(),
                app.queue.clone(),
                log_clock,
                app.pipeline.settings(),
            )),
        ),
    ));
    app
}

/// Add (or replace) the provider OAuth routes: tokens sealed with the data dir's master key
/// into its database, states signed with `settings.state_key` or else the data dir's
/// `oauth-state.key`, callbacks at `webhook_base_url` unless the settings name one.
pub fn with_oauth(
    mut app: App,
    data_dir: &Path,
    webhook_base_url: &str,
    mut settings: crate::api::oauth::OAuthSettings,
    auth: Option<crate::auth::Authenticator>,
    clock: Arc<dyn Clock>,
) -> Result<App, String> {
    use crate::connections::service::StoredProviderTokens;
    use crate::ports::connections::embedded::EmbeddedConnectionStore;
    use crate::ports::keys::{embedded::LocalKeys, CachedKeys};
    let db = Database::open(data_dir, Durability::Full).map_err(|e| e.to_string())?;
    let keys = CachedKeys::new(LocalKeys::open_or_create(data_dir).map_err(|e| e.to_string())?);
    let tokens =
        StoredProviderTokens::new(Arc::new(EmbeddedConnectionStore::new(db)), Arc::new(keys));
    let auth = local_auth(data_dir, auth)?;
    if settings.state_key.is_none() {
        settings.state_key = Some(crate::api::oauth::local_state_key(data_dir).map_err(|e| {
            format!(
                "cannot open the OAuth state key in {}: {e}",
                data_dir.display()
            )
        })?);
    }
    if settings.public_base_url.is_none() {
        settings.public_base_url = Some(webhook_base_url.to_string());
    }
    app.oauth = Some(Arc::new(crate::api::oauth::OAuthApi::new(
        auth,
        Arc::new(tokens),
        settings,
        clock,
    )));
    Ok(app)
}

/// How the local server delivers outbound webhooks.
#[derive(Clone)]
pub struct OutboundConfig {
    pub settings: crate::outbound::settings::OutboundSettings,
    /// `OUTBOUND_ALLOW_HTTP`, `OUTBOUND_ALLOW_CIDRS`.
    pub policy: crate::outbound::ssrf::AddressPolicy,
    pub catalog: crate::outbound::catalog::EventCatalog,
    /// Bearer-token verification; `None` accepts the tokens `hookline token` prints.
    pub auth: Option<crate::auth::Authenticator>,
    /// Retry jitter; random unless a test pins it.
    pub jitter: crate::outbound::deliver::Jitter,
    /// How many deliveries the local deliverer sends at once (`OUTBOUND_CONCURRENCY`).
    pub concurrency: usize,
}

/// `OUTBOUND_CONCURRENCY` unless set: on 2 cores, 64 in flight left a third of the CPU idle
/// waiting on round trips to the writer thread; 256 kept it busy (the outbound bench).
pub const OUTBOUND_CONCURRENCY: usize = 256;

/// `OUTBOUND_CONCURRENCY`: a whole number from 1 to 4,096.
fn outbound_concurrency(lookup: &dyn Fn(&str) -> Option<String>) -> Result<usize, String> {
    match lookup("OUTBOUND_CONCURRENCY") {
        None => Ok(OUTBOUND_CONCURRENCY),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n @ 1..=4096) => Ok(n),
            _ => Err(format!(
                "OUTBOUND_CONCURRENCY must be a whole number from 1 to 4096 (attempts sent at \
                 once), got {:?}",
                text.trim()
            )),
        },
    }
}

impl OutboundConfig {
    /// From the `OUTBOUND_*` and `HOOKLINE_EVENT_TYPES*` variables as `lookup` gives them
    /// (the environment, then the `--env-file`).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        Ok(Self {
            settings: crate::outbound::settings::OutboundSettings::from_lookup(lookup)
                .map_err(|e| e.to_string())?,
            policy: crate::outbound::ssrf::AddressPolicy::from_vars(lookup)
                .map_err(|e| e.to_string())?,
            catalog: crate::outbound::catalog::EventCatalog::from_lookup(lookup)?,
            // Left to the server ([`server_authenticator`]), one for every route group.
            auth: None,
            jitter: crate::outbound::deliver::random_jitter(),
            concurrency: outbound_concurrency(lookup)?,
        })
    }
}

/// The local queue of outbound attempts asked for by hand (scheduled ones are due rows of
/// the deliveries table).
const OUTBOUND_DELIVERIES: &str = "outbound-deliveries";

/// The queue settings of the local outbound queues: a message whose handling failed (a store
/// error) comes back after the attempt's lease (its timeout + 30 s) has surely ended.
fn outbound_queue(settings: &crate::outbound::settings::OutboundSettings) -> QueueSettings {
    QueueSettings {
        visibility_timeout: settings.timeout + Duration::from_secs(60),
        max_receive_count: 10,
    }
}

/// Add outbound webhooks to a local app: endpoints, events and deliveries in the data dir's
/// database, endpoint secrets sealed with its master key, mail written to its outbox, and
/// the dispatcher and deliverer run by [`Server::start`].
pub fn with_outbound(
    mut app: App,
    data_dir: &Path,
    config: OutboundConfig,
    clock: Arc<dyn Clock>,
) -> Result<App, String> {
    use crate::ports::keys::{embedded::LocalKeys, CachedKeys};
    let db = Database::open(data_dir, Durability::Full).map_err(|e| e.to_string())?;
    let queues = outbound_queue(&config.settings);
    let store = Arc::new(crate::ports::outbound::embedded::EmbeddedOutboundStore::new(db.clone()));
    let ports = crate::outbound::Ports {
        store: store.clone(),
        due: Some(store),
        orgs: Arc::new(crate::ports::orgs::embedded::EmbeddedOrgStore::new(
            db.clone(),
        )),
        keys: Arc::new(CachedKeys::new(
            LocalKeys::open_or_create(data_dir).map_err(|e| e.to_string())?,
        )),
        mailer: Arc::new(crate::ports::mail::embedded::Outbox::open(data_dir)),
        dispatch_queue: Arc::new(EmbeddedQueue::named(
            db.clone(),
            "outbound-dispatch",
            queues,
        )),
        deliveries_queue: Arc::new(EmbeddedQueue::named(db, OUTBOUND_DELIVERIES, queues)),
        clock: clock.clone(),
    };
    let auth = local_auth(data_dir, config.auth.clone())?;
    app = with_outbound_over(app, ports, config, auth);
    Ok(app)
}

/// Add outbound webhooks over any ports (embedded locally; DynamoDB, SQS, KMS and SES on moto
/// in tests).
pub fn with_outbound_over(
    mut app: App,
    ports: crate::outbound::Ports,
    config: OutboundConfig,
    auth: crate::auth::Authenticator,
) -> App {
    let outbound = Arc::new(crate::outbound::Outbound::assemble(
        ports.clone(),
        config.settings,
        config.policy,
        config.catalog,
        config.jitter,
        app.plans
            .clone()
            .map(|p| p as Arc<dyn crate::billing::plan::PlanGate>),
    ));
    app.endpoints_api = Some(Arc::new(crate::api::endpoints::EndpointsApi::new(
        auth.clone(),
        outbound.endpoints.clone(),
        ports.store.clone(),
        outbound.replay.clone(),
    )));
    app.events_api = Some(Arc::new(crate::api::events::EventsApi::new(
        auth.clone(),
        outbound.publisher.clone(),
        ports.store.clone(),
    )));
    app.org_api = Some(Arc::new(crate::api::org::OrgApi::new(
        auth,
        ports.orgs.clone(),
        ports.clock.clone(),
    )));
    app.outbound_concurrency = config.concurrency;
    app.outbound = Some(outbound);
    app
}

/// What the local server's licence route needs.
pub struct LicensesConfig {
    /// `LICENSE_PRIVATE_KEY` (with `LICENSE_ISSUER`, default `hookline`); `None` answers 503.
    pub key: Option<crate::billing::licence::LicenceKey>,
    /// The tier table (`HOOKLINE_TIERS`, `HOOKLINE_TIERS_FILE`): a licence grants its tier's
    /// features and limits.
    pub tiers: crate::billing::tiers::TierTable,
    /// Bearer-token verification; `None` accepts the tokens `hookline token` prints.
    pub auth: Option<crate::auth::Authenticator>,
}

impl LicensesConfig {
    /// From `LICENSE_PRIVATE_KEY`, `LICENSE_ISSUER` and `HOOKLINE_TIERS*` as
    /// `lookup` gives them (the environment, then the `--env-file`); an error names the
    /// variable that is wrong, never its value.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let lookup = |name: &str| crate::config::present(lookup(name));
        let key = lookup("LICENSE_PRIVATE_KEY")
            .map(|text| {
                crate::billing::licence::LicenceKey::from_base64(&text)
                    .map_err(|e| format!("LICENSE_PRIVATE_KEY: {e}"))
            })
            .transpose()?
            .map(|key| match lookup("LICENSE_ISSUER") {
                Some(issuer) => key.with_issuer(issuer.trim()),
                None => key,
            });
        Ok(Self {
            key,
            tiers: crate::billing::tiers::TierTable::from_lookup(lookup)
                .map_err(|e| e.to_string())?,
            // Left to the server ([`server_authenticator`]), one for every route group.
            auth: None,
        })
    }
}

/// What billing needs, locally and on Lambda.
#[derive(Clone)]
pub struct BillingConfig {
    pub tiers: crate::billing::tiers::TierTable,
    /// `STRIPE_PRICE_ID_TEAM`, `STRIPE_PRICE_ID_ENTERPRISE`.
    pub prices: crate::billing::stripe_events::PriceMap,
    /// `STRIPE_SECRET_KEY` (SaaS: tiers come from Stripe) against `STRIPE_API_BASE`.
    pub stripe: Option<crate::billing::stripe::StripeClient>,
    /// `HOOKLINE_LICENSE` and `LICENSE_PUBLIC_KEY` (self-hosted, without Stripe).
    pub licence: Option<(String, Option<String>)>,
    /// `BILLING_RECONCILE_INTERVAL` (default `1h`; `0` turns it off).
    pub reconcile_every: Option<Duration>,
    /// Bearer-token verification; `None` accepts the tokens `hookline token` prints.
    pub auth: Option<crate::auth::Authenticator>,
}

impl BillingConfig {
    /// From the variables above as `lookup` gives them; an error names the variable that is
    /// wrong, never its value.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let lookup = |name: &str| crate::config::present(lookup(name));
        let stripe = lookup("STRIPE_SECRET_KEY").map(|key| {
            let base =
                lookup("STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com".to_owned());
            crate::billing::stripe::StripeClient::new(&base, crate::secret::Secret::new(key))
        });
        let reconcile_every = match lookup("BILLING_RECONCILE_INTERVAL") {
            None => Some(Duration::from_secs(3600)),
            Some(text) => {
                let d = humantime::parse_duration(text.trim()).map_err(|e| {
                    format!("BILLING_RECONCILE_INTERVAL: {e} (e.g. 1h, 30m, or 0 to turn it off)")
                })?;
                (!d.is_zero()).then_some(d)
            }
        };
        Ok(Self {
            tiers: crate::billing::tiers::TierTable::from_lookup(lookup)
                .map_err(|e| e.to_string())?,
            prices: crate::billing::stripe_events::PriceMap {
                team: lookup("STRIPE_PRICE_ID_TEAM"),
                enterprise: lookup("STRIPE_PRICE_ID_ENTERPRISE"),
            },
            stripe,
            licence: lookup("HOOKLINE_LICENSE").map(|t| (t, lookup("LICENSE_PUBLIC_KEY"))),
            reconcile_every,
            // Left to the server ([`server_authenticator`]), one for every route group; the
            // Lambdas verify tokens with the secret-backed config.
            auth: None,
        })
    }
}

/// Add billing to a local app: Stripe state, invoices and usage in the data dir's database,
/// owner mail to its outbox, `/api/v1/billing/…`, Stripe deliveries applied by the worker,
/// and the plans the repository, endpoint and event services enforce. Call it before
/// [`with_outbound`] and [`with_repositories`], which ask its plans.
pub fn with_billing(
    mut app: App,
    data_dir: &Path,
    config: BillingConfig,
    clock: Arc<dyn Clock>,
) -> Result<App, String> {
    let db = Database::open(data_dir, Durability::Full).map_err(|e| e.to_string())?;
    let auth = local_auth(data_dir, config.auth.clone())?;
    let reconcile_every = config.reconcile_every;
    let billing = super::assemble_billing(
        super::BillingPorts {
            store: Arc::new(crate::ports::billing::embedded::EmbeddedBillingStore::new(
                db.clone(),
            )),
            orgs: Arc::new(crate::ports::orgs::embedded::EmbeddedOrgStore::new(
                db.clone(),
            )),
            mailer: Arc::new(crate::ports::mail::embedded::Outbox::open(data_dir)),
            connections: Arc::new(
                crate::ports::connections::embedded::EmbeddedConnectionStore::new(db.clone()),
            ),
            outbound: Arc::new(crate::ports::outbound::embedded::EmbeddedOutboundStore::new(db)),
        },
        config,
        clock,
    );
    app.billing_api = Some(Arc::new(crate::api::billing::BillingApi::new(
        auth,
        billing.clone(),
    )));
    let dispatcher = app
        .worker
        .dispatcher()
        .clone()
        .with_billing(app.store.clone(), billing.clone());
    app.worker = Arc::new(app.worker.with_dispatcher(dispatcher));
    app.billing_reconcile_every = reconcile_every;
    app.plans = Some(billing.plans().clone());
    app.billing = Some(billing);
    Ok(app)
}

/// Add `POST /api/v1/licenses` to a local app (it answers 503 without a signing key).
pub fn with_licenses(
    mut app: App,
    data_dir: &Path,
    config: LicensesConfig,
    clock: Arc<dyn Clock>,
) -> Result<App, String> {
    let auth = local_auth(data_dir, config.auth)?;
    app.licenses_api = Some(Arc::new(crate::api::licenses::LicensesApi::new(
        auth,
        config.key,
        config.tiers,
        clock,
    )));
    Ok(app)
}

/// The process's Prometheus recorder, installed by the first local server (the `metrics`
/// facade has one recorder per process); `None` if another recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Summaries: the p50/p95/p99 an operator asks for, readable without a Prometheus.
            let installed = PrometheusBuilder::new()
                .set_quantiles(&[0.5, 0.95, 0.99])
                .and_then(|b| b.install_recorder());
            match installed {
                Ok(handle) => {
                    telemetry::describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics are not recorded for GET /metrics");
                    None
                }
            }
        })
        .as_ref()
}

/// The local queues' backlog, read for `GET /metrics` when it is asked (never on the hot
/// path): a count and a minimum over an index each.
#[derive(Clone)]
pub struct QueueGauges {
    db: Database,
    /// The inbound queue's name in the data dir's `messages` table.
    inbound: Arc<str>,
}

impl QueueGauges {
    async fn sample(&self) -> Result<(), DbError> {
        use crate::telemetry::LocalQueue;
        let db = self.db.clone();
        let inbound = self.inbound.clone();
        let (inbound, manual, due) = tokio::task::spawn_blocking(move || {
            db.read(|conn| {
                Ok((
                    crate::ports::queue::embedded::backlog(conn, &inbound)?,
                    crate::ports::queue::embedded::backlog(conn, OUTBOUND_DELIVERIES)?,
                    crate::ports::outbound::embedded::due_backlog(conn)?,
                ))
            })
        })
        .await
        .map_err(|e| DbError(e.to_string()))??;
        let now = chrono::Utc::now().timestamp_millis();
        let age = |since: Option<i64>| {
            Duration::from_millis(since.map_or(0, |at| (now - at).max(0)) as u64)
        };
        telemetry::queue_backlog(LocalQueue::Inbound, inbound.0, age(inbound.1));
        // Outbound: attempts scheduled in the deliveries table plus those asked for by hand;
        // the age is how long the longest-waiting one has been due.
        telemetry::queue_backlog(
            LocalQueue::Outbound,
            due.0 + manual.0,
            age(due.1).max(age(manual.1)),
        );
        Ok(())
    }
}

/// `GET /metrics`: every metric in Prometheus text, the queue gauges read just now.
async fn metrics(app: App) -> Response {
    let Some(handle) = prometheus() else {
        return crate::http::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        );
    };
    if let Some(queues) = &app.local_queues {
        if let Err(e) = queues.sample().await {
            tracing::warn!(error = %e, "could not read the local queues' backlog");
        }
    }
    let mut res = crate::http::text(StatusCode::OK, handle.render());
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// How often histogram samples are folded into their summaries when nobody scrapes.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Fold recorded samples into the summaries every few seconds, so memory stays bounded
/// whether or not `GET /metrics` is asked, until `shutdown` resolves.
async fn run_metrics_upkeep(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(handle) = prometheus() else { return };
    let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// The per-org limit of the local server's authenticated API routes.
pub struct ApiRateLimitConfig {
    /// `HOOKLINE_API_RATE_LIMIT` (default `600/min`); `None` when it is `off`.
    pub rate: Option<crate::api::ratelimit::Rate>,
    /// Bearer-token verification, as the API routes verify; `None` accepts the tokens
    /// `hookline token` prints.
    pub auth: Option<crate::auth::Authenticator>,
}

impl ApiRateLimitConfig {
    /// From `HOOKLINE_API_RATE_LIMIT` as `lookup` gives it (the environment, then the
    /// `--env-file`); the error names the variable.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        Ok(Self {
            rate: crate::api::ratelimit::Rate::from_lookup(lookup).map_err(|e| e.to_string())?,
            // Left to the server ([`server_authenticator`]), one for every route group.
            auth: None,
        })
    }
}

/// Put the authenticated API routes (all but the operator's licence route) behind a per-org
/// limit counted in this process: one process serves every request, so no shared store is
/// needed, and no write per request reaches the data dir.
pub fn with_api_rate_limit(
    mut app: App,
    data_dir: &Path,
    config: ApiRateLimitConfig,
    clock: Arc<dyn Clock>,
) -> Result<App, String> {
    app.api_rate_limit = match config.rate {
        None => None,
        Some(rate) => Some(Arc::new(crate::api::ratelimit::ApiRateLimit::new(
            rate,
            local_auth(data_dir, config.auth)?,
            Arc::new(crate::ports::ratelimit::embedded::InProcessRateLimiter::new()),
            clock,
        ))),
    };
    Ok(app)
}

/// Every route of the local server.
pub fn router(app: &App) -> Router {
    routes(app)
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(&path, handler)
        })
        // Operators' scrape target, not part of the API contract (openapi.json).
        .route(
            "/metrics",
            get(|State(app): State<App>| async move { to_axum(metrics(app).await) }),
        )
        .fallback(|| async {
            to_axum(crate::http::problem(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            ))
        })
        .with_state(app.clone())
}

/// The paths the local server answers, as the router is given them (`{id}` for a parameter).
pub fn route_paths(app: &App) -> Vec<String> {
    routes(app).into_iter().map(|(path, _)| path).collect()
}

type Route = (String, axum::routing::MethodRouter<App>);

/// The health check, the OpenAPI document, each provider's webhook route, and for each API
/// group the app has, exactly the paths the OpenAPI document names under the group's
/// prefixes: a route the document does not describe is not served.
fn routes(app: &App) -> Vec<Route> {
    use crate::api::openapi;
    let mut routes: Vec<Route> = vec![
        (
            "/healthz".into(),
            get(|| async { to_axum(openapi::healthz()) }),
        ),
        (
            openapi::PATH.into(),
            any(|req: axum::extract::Request| async move {
                let (parts, _) = req.into_parts();
                to_axum(openapi::serve(&Request::from_parts(
                    parts,
                    bytes::Bytes::new(),
                )))
            }),
        ),
    ];
    for source in Source::ALL {
        routes.push((
            source.route().into(),
            any(
                move |State(app): State<App>, req: axum::extract::Request| async move {
                    to_axum(inbound(app, source, req).await)
                },
            ),
        ));
    }
    let ops = openapi::operations();
    let mut group = |prefixes: &[&str], handler: axum::routing::MethodRouter<App>| {
        for prefix in prefixes {
            for path in openapi::paths_under(&ops, prefix) {
                routes.push((path, handler.clone()));
            }
        }
    };
    if app.repositories.is_some() {
        group(
            &[
                "/api/v1/repositories",
                "/api/v1/provider-tokens",
                "/api/v1/webhooks/deliveries",
            ],
            any(
                |State(app): State<App>, req: axum::extract::Request| async move {
                    to_axum(limited(app, req, repositories).await)
                },
            ),
        );
    }
    if app.incidents.is_some() {
        group(
            &["/api/v1/incidents"],
            any(
                |State(app): State<App>, req: axum::extract::Request| async move {
                    to_axum(limited(app, req, incidents).await)
                },
            ),
        );
    }
    if app.oauth.is_some() {
        group(
            &["/api/v1/oauth"],
            any(
                |State(app): State<App>, req: axum::extract::Request| async move {
                    to_axum(limited(app, req, oauth).await)
                },
            ),
        );
    }
    if app.billing_api.is_some() {
        group(
            &["/api/v1/billing"],
            any(
                |State(app): State<App>, req: axum::extract::Request| async move {
                    to_axum(limited(app, req, billing).await)
                },
            ),
        );
    }
    if app.licenses_api.is_some() {
        group(
            &["/api/v1/licenses"],
            any(
                |State(app): State<App>, req: axum::extract::Request| async move {
                    to_axum(licenses(app, req).await)
                },
            ),
        );
    }
    if app.endpoints_api.is_some() {
        group(
            &[
                "/api/v1/endpoints",
                "/api/v1/deliveries",
                "/api/v1/event-types",
                "/api/v1/events",
                "/api/v1/org",
            ],
            any(
                |State(app): State<App>, req: axum::extract::Request| async move {
                    to_axum(limited(app, req, outbound_api).await)
                },
            ),
        );
    }
    routes
}

/// An authenticated API route, behind the org's rate limit when one is set. The webhook
/// routes never are: a verified delivery is never refused for a rate.
async fn limited<Fut: std::future::Future<Output = Response>>(
    app: App,
    req: axum::extract::Request,
    route: impl FnOnce(App, axum::extract::Request) -> Fut,
) -> Response {
    match app.api_rate_limit.clone() {
        Some(limit) => limit.serve(req, |req| route(app, req)).await,
        None => route(app, req).await,
    }
}

fn to_axum(res: Response) -> axum::response::Response {
    res.map(axum::body::Body::from)
}

async fn repositories(app: App, req: axum::extract::Request) -> Response {
    let Some(api) = app.repositories.clone() else {
        return crate::http::problem(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    match read_body(req, 64).await {
        Ok(req) => api.handle(req).await,
        Err(res) => res,
    }
}

/// The outbound routes: endpoints, deliveries and event types; events; the org profile.
async fn outbound_api(app: App, req: axum::extract::Request) -> Response {
    // Events carry up to 256 KiB of data, plus the envelope around it.
    let req = match read_body(req, 300).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    let path = req.uri().path();
    if path.starts_with("/api/v1/events") {
        if let Some(api) = app.events_api.clone() {
            return api.handle(req).await;
        }
    } else if path.trim_end_matches('/') == "/api/v1/org" {
        if let Some(api) = app.org_api.clone() {
            return api.handle(req).await;
        }
    } else if let Some(api) = app.endpoints_api.clone() {
        return api.handle(req).await;
    }
    crate::http::problem(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The request with its body read, up to `max_kib` KiB (413 past that, saying the limit).
async fn read_body(req: axum::extract::Request, max_kib: usize) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, max_kib * 1024).await {
        Ok(bytes) => Ok(Request::from_parts(parts, bytes)),
        Err(_) => Err(crate::http::problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies here are at most {max_kib} KiB"),
        )),
    }
}

async fn billing(app: App, req: axum::extract::Request) -> Response {
    let Some(api) = app.billing_api.clone() else {
        return crate::http::problem(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    // Billing requests are a few fields.
    match read_body(req, 16).await {
        Ok(req) => api.handle(req).await,
        Err(res) => res,
    }
}

async fn licenses(app: App, req: axum::extract::Request) -> Response {
    let Some(api) = app.licenses_api.clone() else {
        return crate::http::problem(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    // A licence request is a few fields.
    match read_body(req, 16).await {
        Ok(req) => api.handle(req).await,
        Err(res) => res,
    }
}

async fn oauth(app: App, req: axum::extract::Request) -> Response {
    let Some(api) = app.oauth.clone() else {
        return crate::http::problem(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    // Every OAuth route is a GET: the body is never read.
    let (parts, _body) = req.into_parts();
    api.handle(Request::from_parts(parts, bytes::Bytes::new()))
        .await
}

async fn incidents(app: App, req: axum::extract::Request) -> Response {
    let Some(api) = app.incidents.clone() else {
        return crate::http::problem(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    // Only GETs: the body is not read.
    let (parts, _) = req.into_parts();
    api.handle(Request::from_parts(parts, bytes::Bytes::new()))
        .await
}

async fn inbound(app: App, source: Source, req: axum::extract::Request) -> Response {
    let started = std::time::Instant::now();
    let limit = app.pipeline.settings().max_body_bytes;
    let (parts, body) = req.into_parts();
    // Read one byte past the limit so the pipeline's own 413 answers, not the framework's.
    match axum::body::to_bytes(body, limit + 1).await {
        Ok(bytes) => {
            app.pipeline
                .handle(source, Request::from_parts(parts, bytes))
                .await
        }
        Err(_) => {
            // A body cut off past the limit never reaches the pipeline: counted here.
            telemetry::inbound(source, InboundOutcome::TooLarge, started.elapsed());
            InboundError::TooLarge { limit }.into_response()
        }
    }
}

/// Messages one worker poller keeps in processing at once.
const WORKER_IN_FLIGHT_PER_LOOP: usize = 64;

/// Poll the queue and process what arrives until `shutdown` resolves; `loops` pollers run
/// side by side, each keeping up to [`WORKER_IN_FLIGHT_PER_LOOP`] messages in processing.
/// Each message is deleted as soon as it is processed, not when its batch is: a batch of ten
/// processed and then deleted one by one made each poller wait on the writer's fsync a dozen
/// times per ten deliveries, and under load the worker fell ever further behind the intake.
pub async fn run_worker_loops(
    worker: Arc<Worker>,
    queue: Arc<dyn Queue>,
    loops: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        loops * WORKER_IN_FLIGHT_PER_LOOP,
    ));
    let handle = move |queue: Arc<dyn Queue>, m: crate::ports::queue::ReceivedMessage| {
        let worker = worker.clone();
        async move { process_one(&worker, queue.as_ref(), m).await }
    };
    let pollers: Vec<_> = (0..loops)
        .map(|_| {
            tokio::spawn(poll_queue(
                queue.clone(),
                in_flight.clone(),
                shutdown.clone(),
                "worker",
                handle.clone(),
            ))
        })
        .collect();
    for p in pollers {
        let _ = p.await;
    }
}

async fn process_one(worker: &Worker, queue: &dyn Queue, m: crate::ports::queue::ReceivedMessage) {
    let message = WorkerMessage {
        message_id: m.message_id,
        body: m.body,
    };
    if worker.process(&message).await.is_ok() {
        if let Err(e) = queue.delete(&m.receipt).await {
            tracing::warn!(error = %e, "could not delete a processed message; it will be seen again and skipped");
        }
    }
}

/// One permit of room in flight, or `None` once `shutdown` resolves (or the room is closed).
async fn room_or_stop(
    in_flight: &Arc<tokio::sync::Semaphore>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        _ = shutdown.changed() => None,
        permit = in_flight.clone().acquire_owned() => permit.ok(),
    }
}

/// Receive from `queue` while `in_flight` has room, and handle each message on a task of its
/// own holding one permit, until `shutdown` resolves. Room is taken before the queue is
/// asked, so messages are received only when they can be worked on (their visibility timeout
/// runs meanwhile), and a slow message holds up only itself, not the batch it came in.
async fn poll_queue<F, Fut>(
    queue: Arc<dyn Queue>,
    in_flight: Arc<tokio::sync::Semaphore>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<dyn Queue>, crate::ports::queue::ReceivedMessage) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let Some(first) = room_or_stop(&in_flight, &mut shutdown).await else {
            break;
        };
        let room = in_flight.available_permits().min(9) as u32 + 1;
        let batch = tokio::select! {
            _ = shutdown.changed() => break,
            batch = queue.receive(room, Duration::from_secs(1)) => batch,
        };
        let messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::error!(error = %e, poller = what, "cannot read the queue; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut first = Some(first);
        for m in messages {
            let permit = match first.take() {
                Some(p) => p,
                None => match in_flight.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let work = handle(queue.clone(), m);
            tokio::spawn(async move {
                work.await;
                drop(permit);
            });
        }
    }
}

/// How often expired payloads are deleted from the data dir (reads skip them meanwhile).
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Delete expired payloads now and every [`PRUNE_EVERY`] until `shutdown` resolves.
pub async fn run_prune_loop(
    store: Arc<dyn crate::ports::store::DeliveryStore>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = every.tick() => match store.prune_payloads(chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired payloads deleted"),
                Err(e) => tracing::warn!(error = %e, "could not delete expired payloads; trying again later"),
            },
        }
    }
}

/// How often an installed licence is verified again.
const LICENCE_CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Reconcile billing with Stripe every `every` (when Stripe is configured), and verify the
/// installed licence daily, until `shutdown` resolves.
pub async fn run_billing_loop(
    billing: Option<Arc<crate::billing::service::Billing>>,
    every: Option<Duration>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(billing) = billing else { return };
    let stripe = matches!(
        billing.plans().source(),
        crate::billing::plan::TierSource::Stripe
    );
    let mut reconcile = tokio::time::interval(every.unwrap_or(LICENCE_CHECK_EVERY));
    let mut licence = tokio::time::interval(LICENCE_CHECK_EVERY);
    // Both fire at once first: the licence was checked at start, and reconciliation runs
    // once the server is up.
    licence.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = reconcile.tick(), if stripe && every.is_some() => {
                match billing.reconcile(None).await {
                    Ok(done) => tracing::info!(
                        seen = done.subscriptions_seen,
                        repaired = done.repaired,
                        parked_applied = done.parked_applied,
                        "billing reconciled with Stripe"
                    ),
                    Err(e) => tracing::error!(error = %e, "billing reconciliation failed; it runs again next interval"),
                }
            }
            _ = licence.tick() => billing.plans().recheck_licence(),
        }
    }
}

/// Run the hook-health check on `settings`' interval (repairing), like the `hook-health`
/// function's schedule on AWS, until `shutdown` resolves. The first run comes one interval
/// after start.
pub async fn run_hook_health_loop(
    repos: Option<Arc<crate::connections::service::Repositories>>,
    settings: Option<crate::connections::service::health::HealthSettings>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (Some(repos), Some(settings)) = (repos, settings) else {
        return;
    };
    let Some(every) = settings.every else { return };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                if let Err(e) = repos.check_hooks(true, &settings).await {
                    tracing::error!(error = %e, "hook health check failed; it runs again next interval");
                }
            }
        }
    }
}

/// How often the local dispatcher sweeps for events a lost signal left behind.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Run the outbound dispatcher (one loop, plus a sweep every few seconds) and deliverer
/// (`concurrency` attempts at once) until `shutdown` resolves.
pub async fn run_outbound_loops(
    outbound: Option<Arc<crate::outbound::Outbound>>,
    concurrency: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(outbound) = outbound else { return };
    let dispatcher = {
        let outbound = outbound.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let queue = outbound.ports.dispatch_queue.clone();
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = sweep.tick() => {
                        if let Err(e) = outbound.dispatcher.sweep().await {
                            tracing::error!(error = %e, "outbound sweep failed; retrying");
                        }
                    }
                    batch = queue.receive(10, Duration::from_secs(1)) => match batch {
                        Ok(messages) => dispatch_received(&outbound, queue.as_ref(), messages).await,
                        Err(e) => {
                            tracing::error!(error = %e, "dispatcher cannot read its queue; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                }
            }
        })
    };
    // Pollers keep up to `concurrency` attempts in flight: each message is handled on a task
    // of its own as soon as it arrives, so one slow endpoint holds up only its attempt, not
    // the batch it came in. A receive is a round trip to the writer thread, so several
    // pollers take turns at it (one per 10 in flight). Over a store that hands out due
    // deliveries itself, only manual attempts come as messages: one poller does.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let pollers = match outbound.ports.due {
        Some(_) => 1,
        None => concurrency.div_ceil(10).max(2),
    };
    let handle = {
        let outbound = outbound.clone();
        move |queue: Arc<dyn Queue>, m: crate::ports::queue::ReceivedMessage| {
            let outbound = outbound.clone();
            async move { deliver_one(&outbound, queue.as_ref(), m).await }
        }
    };
    let mut deliverers: Vec<_> = (0..pollers)
        .map(|_| {
            tokio::spawn(poll_queue(
                outbound.ports.deliveries_queue.clone(),
                in_flight.clone(),
                shutdown.clone(),
                "deliverer",
                handle.clone(),
            ))
        })
        .collect();
    if let Some(due) = outbound.ports.due.clone() {
        deliverers.push(tokio::spawn(deliver_due(
            outbound.clone(),
            due,
            in_flight,
            shutdown,
        )));
    }
    let _ = dispatcher.await;
    for d in deliverers {
        let _ = d.await;
    }
}

async fn dispatch_received(
    outbound: &crate::outbound::Outbound,
    queue: &dyn Queue,
    messages: Vec<crate::ports::queue::ReceivedMessage>,
) {
    // One dispatch per org covers all of its signals in the batch.
    let mut orgs: Vec<String> = Vec::new();
    let mut done = Vec::new();
    for m in &messages {
        match serde_json::from_str::<crate::outbound::dispatch::DispatchMessage>(&m.body) {
            Ok(msg) => {
                if !orgs.contains(&msg.org_id) {
                    orgs.push(msg.org_id);
                }
            }
            Err(_) => tracing::warn!("dropping a malformed dispatch message"),
        }
        done.push(m.receipt.clone());
    }
    for org in &orgs {
        if let Err(e) = outbound.dispatcher.dispatch(org).await {
            // The messages stay: they come back after their visibility timeout.
            tracing::error!(error = %e, "dispatch failed; it will be retried");
            return;
        }
    }
    for receipt in done {
        let _ = queue.delete(&receipt).await;
    }
}

/// How many due deliveries one claim takes at most, and how long an idle deliverer waits
/// before it looks again when nothing wakes it (a retry falling due wakes nobody).
const DUE_PER_CLAIM: usize = 64;
const DUE_IDLE_WAIT: Duration = Duration::from_millis(250);

/// Claim due deliveries from the store, as many at once as there is room in flight for, and
/// attempt each on a task of its own. One that fails (a store error) is due again when its
/// lease ends.
async fn deliver_due(
    outbound: Arc<crate::outbound::Outbound>,
    due: Arc<dyn crate::ports::outbound::DueDeliveries>,
    in_flight: Arc<tokio::sync::Semaphore>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some(first) = room_or_stop(&in_flight, &mut shutdown).await else {
            break;
        };
        let room = gather_room(&in_flight, first).await;
        let now = outbound.ports.clock.now();
        let claimed = match due
            .claim_due(now, now + outbound.deliverer.lease(), room.len())
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!(error = %e, "deliverer cannot claim due deliveries; retrying");
                drop(room);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if claimed.is_empty() {
            drop(room);
            let wait = match due.next_due().await {
                Ok(Some(at)) => (at - now).to_std().unwrap_or_default(),
                _ => DUE_IDLE_WAIT,
            };
            let wait = wait.clamp(Duration::from_millis(5), DUE_IDLE_WAIT);
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = due.wait_for_work(wait) => {}
            }
            continue;
        }
        // One permit per claimed delivery; the room left over is given back as they drop.
        let shared = Arc::new(crate::outbound::deliver::ClaimShared::default());
        for (d, permit) in claimed.into_iter().zip(room) {
            let (outbound, shared) = (outbound.clone(), shared.clone());
            tokio::spawn(async move {
                if let Err(e) = outbound.deliverer.handle_claimed(d, &shared).await {
                    tracing::error!(error = %e, "delivery attempt failed; it is due again when its lease ends");
                }
                drop(permit);
            });
        }
    }
}

/// The room in flight for one claim: `first`, what else is free now, and, when that is
/// little (attempts finish one at a time), whatever frees up within a couple of
/// milliseconds. Claiming for each permit as it freed made the poller's round trip to the
/// writer thread the limit on deliveries per second.
async fn gather_room(
    in_flight: &Arc<tokio::sync::Semaphore>,
    first: tokio::sync::OwnedSemaphorePermit,
) -> Vec<tokio::sync::OwnedSemaphorePermit> {
    const GATHER_FOR: Duration = Duration::from_millis(2);
    const ENOUGH: usize = 16;
    let mut room = vec![first];
    let deadline = tokio::time::Instant::now() + GATHER_FOR;
    while room.len() < DUE_PER_CLAIM {
        match in_flight.clone().try_acquire_owned() {
            Ok(p) => room.push(p),
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) if room.len() >= ENOUGH => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match tokio::time::timeout_at(deadline, in_flight.clone().acquire_owned()).await {
                    Ok(Ok(p)) => room.push(p),
                    _ => break,
                }
            }
        }
    }
    room
}

async fn deliver_one(
    outbound: &crate::outbound::Outbound,
    queue: &dyn Queue,
    m: crate::ports::queue::ReceivedMessage,
) {
    match outbound.deliverer.handle_message(&m.body).await {
        Ok(_) => {
            if let Err(e) = queue.delete(&m.receipt).await {
                tracing::warn!(error = %e, "could not delete a handled delivery message; it will be dropped as stale");
            }
        }
        Err(e) => tracing::error!(error = %e, "delivery message failed; it will be retried"),
    }
}

/// A running local server; dropping it does not stop it, call [`Server::shutdown`].
pub struct Server {
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Bind `addr` (port 0 picks a free one) and serve `app` with `worker_loops` pollers.
    pub async fn start(app: App, addr: SocketAddr, worker_loops: usize) -> std::io::Result<Self> {
        // Before the first request, so every delivery is counted.
        prometheus();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Answers are small and final: send each at once rather than wait on Nagle's algorithm.
        let listener = listener.tap_io(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY on a connection");
            }
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let router = router(&app);
        let mut http_stop = stopped.clone();
        let task = tokio::spawn(async move {
            let http = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            });
            let outbound = run_outbound_loops(
                app.outbound.clone(),
                app.outbound_concurrency,
                stopped.clone(),
            );
            let billing = run_billing_loop(
                app.billing.clone(),
                app.billing_reconcile_every,
                stopped.clone(),
            );
            let hooks = run_hook_health_loop(app.hooks.clone(), app.hook_health, stopped.clone());
            let prune = run_prune_loop(app.store.clone(), stopped.clone());
            let upkeep = run_metrics_upkeep(stopped.clone());
            let workers =
                run_worker_loops(app.worker.clone(), app.queue.clone(), worker_loops, stopped);
            let (served, (), (), (), (), (), ()) =
                tokio::join!(http, workers, outbound, billing, hooks, prune, upkeep);
            if let Err(e) = served {
                tracing::error!(error = %e, "local server stopped with an error");
            }
        });
        Ok(Self { addr, stop, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[test]
    fn outbound_concurrency_is_a_bounded_whole_number_named_when_wrong() {
        let with = |v: &'static str| {
            move |name: &str| (name == "OUTBOUND_CONCURRENCY").then(|| v.to_owned())
        };
        assert_eq!(outbound_concurrency(&|_| None), Ok(OUTBOUND_CONCURRENCY));
        assert_eq!(outbound_concurrency(&with(" 32 ")), Ok(32));
        for bad in ["0", "4097", "-1", "lots", "1.5"] {
            let e = outbound_concurrency(&with(bad)).unwrap_err();
            assert!(e.starts_with("OUTBOUND_CONCURRENCY must be"), "{e}");
            assert!(e.contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn a_claim_takes_all_the_room_there_is_up_to_one_claims_worth() {
        let in_flight = Arc::new(Semaphore::new(100));
        let first = in_flight.clone().acquire_owned().await.unwrap();
        let room = gather_room(&in_flight, first).await;
        assert_eq!(room.len(), DUE_PER_CLAIM);
        assert_eq!(in_flight.available_permits(), 100 - DUE_PER_CLAIM);
        drop(room);
        assert_eq!(
            in_flight.available_permits(),
            100,
            "given back as they drop"
        );
    }

    #[tokio::test]
    async fn when_attempts_free_up_one_at_a_time_a_claim_waits_briefly_for_more() {
        let in_flight = Arc::new(Semaphore::new(64));
        let mut busy = in_flight.clone().acquire_many_owned(64).await.unwrap();
        // Attempts finish one by one (each after the claimer has run), well within the
        // gathering window.
        let freeing = {
            let mut held: Vec<_> = (0..20).map(|_| busy.split(1).unwrap()).collect();
            tokio::spawn(async move {
                while let Some(permit) = held.pop() {
                    tokio::task::yield_now().await;
                    drop(permit);
                }
            })
        };
        let first = in_flight.clone().acquire_owned().await.unwrap();
        let room = gather_room(&in_flight, first).await;
        freeing.await.unwrap();
        assert!(
            room.len() >= 16,
            "one claim for many attempts, not one per attempt: {}",
            room.len()
        );
    }

    #[tokio::test]
    async fn a_poller_keeps_as_many_messages_in_hand_as_it_has_room_for_not_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let queue: Arc<dyn Queue> = Arc::new(EmbeddedQueue::new(
            db,
            crate::ports::queue::conformance::SETTINGS,
        ));
        const ROOM: usize = 30;
        for n in 0..ROOM {
            queue.send(&format!("m{n}"), Duration::ZERO).await.unwrap();
        }
        // Every handler waits until ROOM of them run at once: three batches' worth, which a
        // poller that finished each batch before receiving the next never reached.
        let all_in_hand = Arc::new(tokio::sync::Barrier::new(ROOM));
        let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let poller = tokio::spawn(poll_queue(
            queue.clone(),
            Arc::new(Semaphore::new(ROOM)),
            stopped,
            "test",
            {
                let (all_in_hand, handled) = (all_in_hand.clone(), handled.clone());
                move |queue: Arc<dyn Queue>, m: crate::ports::queue::ReceivedMessage| {
                    let (all_in_hand, handled) = (all_in_hand.clone(), handled.clone());
                    async move {
                        all_in_hand.wait().await;
                        queue.delete(&m.receipt).await.unwrap();
                        handled.lock().unwrap().push(m.body);
                    }
                }
            },
        ));
        tokio::time::timeout(Duration::from_secs(20), async {
            while handled.lock().unwrap().len() < ROOM {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("all messages in hand at once");
        stop.send(true).unwrap();
        poller.await.unwrap();
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        let mut bodies = handled.lock().unwrap().clone();
        bodies.sort();
        let mut sent: Vec<String> = (0..ROOM).map(|n| format!("m{n}")).collect();
        sent.sort();
        assert_eq!(bodies, sent, "each message handled once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // the held syncs are the point
    async fn the_worker_takes_processes_and_deletes_a_message_without_waiting_for_the_disk() {
        use crate::ports::store::DeliveryStore;
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        let store: Arc<dyn DeliveryStore> = Arc::new(EmbeddedStore::new(db.clone()));
        let queue = EmbeddedQueue::new(db.clone(), crate::ports::queue::conformance::SETTINGS);
        let now = chrono::Utc::now();
        let new = crate::ports::store::conformance::new_delivery(Source::Github, "d1", now);
        store.record(&new).await.unwrap();
        let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"o/r"}}"#;
        let envelope = crate::model::Envelope::new(Source::Github, "d1", "push", now, body);
        queue
            .send(&envelope.to_message(), Duration::ZERO)
            .await
            .unwrap();
        let worker = Worker::new(
            store.clone(),
            crate::worker::Dispatcher::standard(store.clone()),
            Arc::new(SystemClock),
            &Settings::default(),
        );
        let held = db.hold_syncs();
        // A write that waits for the disk waits while it does not answer…
        let durable = tokio::spawn({
            let store = store.clone();
            async move {
                let other =
                    crate::ports::store::conformance::new_delivery(Source::Github, "d2", now);
                store.record(&other).await
            }
        });
        // (Committed, so only its sync holds its answer.)
        tokio::time::timeout(Duration::from_secs(10), async {
            let committed = || {
                db.read(|conn| {
                    Ok(conn
                        .prepare("SELECT 1 FROM deliveries WHERE delivery_id = 'd2'")?
                        .exists([])?)
                })
                .unwrap()
            };
            while !committed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the durable write commits");
        // …and the worker's steps do not: losing them in a power cut (the last writes before
        // it, in order) only brings the message back, and its claim finds it done or not.
        tokio::time::timeout(Duration::from_secs(10), async {
            let taken = queue.receive(10, Duration::ZERO).await.unwrap();
            assert_eq!(taken.len(), 1);
            worker
                .process(&WorkerMessage {
                    message_id: taken[0].message_id.clone(),
                    body: taken[0].body.clone(),
                })
                .await
                .unwrap();
            queue.delete(&taken[0].receipt).await.unwrap();
        })
        .await
        .expect("the worker's steps waited for the disk");
        assert!(!durable.is_finished(), "the disk was not held");
        drop(held);
        durable.await.unwrap().unwrap();
        let done = store.get(&new.key).await.unwrap().unwrap();
        assert_eq!(done.status, crate::model::DeliveryStatus::Processed);
        let activity = store.list_activities(1).await.unwrap().remove(0);
        assert_eq!(activity.repository.as_deref(), Some("o/r"));
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_does_not_wait_long_for_room_that_does_not_come() {
        let in_flight = Arc::new(Semaphore::new(64));
        let _busy = in_flight.clone().acquire_many_owned(63).await.unwrap();
        let first = in_flight.clone().acquire_owned().await.unwrap();
        let started = tokio::time::Instant::now();
        let room = gather_room(&in_flight, first).await;
        assert_eq!(room.len(), 1);
        assert!(started.elapsed() <= Duration::from_millis(2));
    }
}
