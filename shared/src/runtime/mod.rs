//! Assembly: the pipeline and worker built once over a set of adapters, and the two ways to
//! run them — on Lambda (`lambda`) and in the local server (`local`). Neither knows the other.

use crate::clock::Clock;
use crate::config::Settings;
use crate::pipeline::Pipeline;
use crate::ports::queue::Queue;
use crate::ports::store::DeliveryStore;
use crate::providers::ProviderSecrets;
use crate::worker::{Dispatcher, Worker};
use std::sync::Arc;

pub mod lambda;
pub mod local;

/// Everything a handler needs, built once per cold start (or per local server).
#[derive(Clone)]
pub struct App {
    pub pipeline: Arc<Pipeline>,
    pub worker: Arc<Worker>,
    pub store: Arc<dyn DeliveryStore>,
    pub queue: Arc<dyn Queue>,
    /// The repository-connection routes, where this app serves them.
    pub repositories: Option<Arc<crate::api::repositories::RepositoriesApi>>,
    /// The incidents routes, where this app serves them.
    pub incidents: Option<Arc<crate::api::incidents::IncidentsApi>>,
    /// The provider OAuth routes, where this app serves them.
    pub oauth: Option<Arc<crate::api::oauth::OAuthApi>>,
    /// Outbound webhooks (endpoints, events, dispatcher, deliverer), where this app runs them.
    pub outbound: Option<Arc<crate::outbound::Outbound>>,
    /// `/api/v1/endpoints…`, `/api/v1/deliveries…`, `/api/v1/event-types`.
    pub endpoints_api: Option<Arc<crate::api::endpoints::EndpointsApi>>,
    /// `/api/v1/events…`.
    pub events_api: Option<Arc<crate::api::events::EventsApi>>,
    /// `/api/v1/org`.
    pub org_api: Option<Arc<crate::api::org::OrgApi>>,
    /// `POST /api/v1/licenses`.
    pub licenses_api: Option<Arc<crate::api::licenses::LicensesApi>>,
    /// The plans in force, asked by the repository, endpoint and event services; set before
    /// they are wired (`with_billing` comes first).
    pub plans: Option<Arc<crate::billing::plan::Plans>>,
    /// Billing: Stripe state, Checkout/Portal, entitlements, reconciliation.
    pub billing: Option<Arc<crate::billing::service::Billing>>,
    /// `/api/v1/billing/…`.
    pub billing_api: Option<Arc<crate::api::billing::BillingApi>>,
    /// How often the local server reconciles billing with Stripe (`None`: never).
    pub billing_reconcile_every: Option<std::time::Duration>,
    /// How many outbound attempts the local server makes at once.
    pub outbound_concurrency: usize,
    /// The repository service, for the hook-health check, where this app manages connections.
    pub hooks: Option<Arc<crate::connections::service::Repositories>>,
    /// How the local server runs the hook-health check (`None`, or no interval: it does not).
    pub hook_health: Option<crate::connections::service::health::HealthSettings>,
    /// The local queues whose backlog `GET /metrics` shows (the embedded adapters only).
    pub local_queues: Option<local::QueueGauges>,
    /// The per-org limit in front of the local server's authenticated API routes (`None`: no
    /// limit).
    pub api_rate_limit: Option<Arc<crate::api::ratelimit::ApiRateLimit>>,
}

/// The ports billing runs over (DynamoDB and SES on AWS; the data dir locally).
pub struct BillingPorts {
    pub store: Arc<dyn crate::ports::billing::BillingStore>,
    pub orgs: Arc<dyn crate::ports::orgs::OrgStore>,
    pub mailer: Arc<dyn crate::ports::mail::Mailer>,
    /// Counted for entitlements' usage (repositories).
    pub connections: Arc<dyn crate::ports::connections::ConnectionStore>,
    /// Counted for entitlements' usage (endpoints).
    pub outbound: Arc<dyn crate::ports::outbound::OutboundStore>,
}

/// Billing and its plans over `ports`: tiers from Stripe when a Stripe key is configured,
/// else from the installed licence, else (local development) unlimited.
pub fn assemble_billing(
    ports: BillingPorts,
    config: local::BillingConfig,
    clock: Arc<dyn Clock>,
) -> Arc<crate::billing::service::Billing> {
    use crate::billing::plan::{InstalledLicence, Plans, TierSource};
    let source = match (&config.stripe, &config.licence) {
        (Some(_), _) => TierSource::Stripe,
        (None, Some((token, key))) => TierSource::Licence(Box::new(InstalledLicence::new(
            token,
            key.as_deref(),
            clock.now(),
        ))),
        (None, None) => TierSource::Unlimited,
    };
    let plans = Arc::new(Plans::new(
        ports.store.clone(),
        config.tiers,
        source,
        clock.clone(),
    ));
    let notifier = Arc::new(crate::outbound::notify::Notifier::new(
        ports.orgs.clone(),
        ports.mailer,
        clock.clone(),
    ));
    Arc::new(crate::billing::service::Billing::new(
        ports.store,
        ports.orgs,
        notifier,
        config.stripe,
        ports.connections,
        ports.outbound,
        plans,
        config.prices,
        clock,
    ))
}

impl App {
    pub fn assemble(
        store: Arc<dyn DeliveryStore>,
        queue: Arc<dyn Queue>,
        secrets: ProviderSecrets,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        let worker = Worker::new(
            store.clone(),
            Dispatcher::standard(store.clone()),
            clock.clone(),
            &settings,
        );
        let pipeline = Pipeline::new(
            store.clone(),
            queue.clone(),
            Arc::new(secrets),
            clock,
            settings,
        );
        Self {
            pipeline: Arc::new(pipeline),
            worker: Arc::new(worker),
            store,
            queue,
            repositories: None,
            incidents: None,
            oauth: None,
            outbound: None,
            endpoints_api: None,
            events_api: None,
            org_api: None,
            licenses_api: None,
            plans: None,
            billing: None,
            billing_api: None,
            billing_reconcile_every: None,
            outbound_concurrency: 64,
            hooks: None,
            hook_health: None,
            local_queues: None,
            api_rate_limit: None,
        }
    }
}

/// JSON logs to stdout (CloudWatch reads them as structured), filtered by `RUST_LOG`: a
/// default level and `target=level` pairs (`warn,hookline=debug`), which a `Targets` filter
/// reads without the regex engine `EnvFilter` would link into every Lambda binary. A value
/// that does not read is reported and `info` applies.
pub fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let parsed = crate::config::var("RUST_LOG").map(|v| v.parse::<Targets>());
    let filter = match &parsed {
        Some(Ok(filter)) => filter.clone(),
        _ => Targets::new().with_default(LevelFilter::INFO),
    };
    let installed = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .finish()
        .with(filter)
        .try_init();
    if let (Ok(()), Some(Err(e))) = (installed, parsed) {
        tracing::warn!(error = %e, "RUST_LOG does not read (e.g. `info` or `warn,hookline=debug`): logging at info");
    }
}
