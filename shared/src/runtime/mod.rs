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
    /// How many outbound attempts the local server makes at once.
    pub outbound_concurrency: usize,
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
            outbound_concurrency: 64,
        }
    }
}

/// JSON logs to stdout (CloudWatch reads them as structured), filtered by `RUST_LOG`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .try_init();
}
