//! Outbound webhooks (DESIGN.md §1.3, seeds 002 and 003): endpoints an org registers, events
//! it publishes into its ordered stream, the dispatcher that turns each event into one
//! delivery per subscribed endpoint, and the deliverer that signs and sends them with retries.

pub mod catalog;
pub mod deliver;
pub mod dispatch;
pub mod endpoints;
pub mod model;
pub mod notify;
pub mod publish;
pub mod replay;
pub mod sender;
pub mod settings;
pub mod signing;
pub mod sink;
pub mod ssrf;

use crate::ports::keys::KeyError;
use crate::ports::outbound::OutboundError;
use crate::ports::queue::QueueError;

/// Why an outbound call failed; the API maps each to one status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be taken as it is (an unknown event type, a refused URL): 422 with
    /// a message that says which and why.
    #[error("{0}")]
    Invalid(String),
    /// No such record in the caller's org: 404.
    #[error("no such record")]
    NotFound,
    /// A store, queue or key service failed: 503, details in the log only.
    #[error("{0}")]
    Unavailable(String),
    /// The org's plan allows no more: 402.
    #[error(transparent)]
    PlanLimit(#[from] crate::billing::plan::PlanLimit),
}

impl From<crate::billing::plan::Refusal> for Error {
    fn from(r: crate::billing::plan::Refusal) -> Self {
        match r {
            crate::billing::plan::Refusal::Limit(l) => Error::PlanLimit(l),
            crate::billing::plan::Refusal::Unavailable(why) => Error::Unavailable(why),
        }
    }
}

impl From<OutboundError> for Error {
    fn from(e: OutboundError) -> Self {
        match e {
            OutboundError::NotFound => Error::NotFound,
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

use crate::clock::Clock;
use crate::ports::keys::KeyService;
use crate::ports::mail::Mailer;
use crate::ports::orgs::OrgStore;
use crate::ports::outbound::OutboundStore;
use crate::ports::queue::Queue;
use std::sync::Arc;

/// The ports outbound delivery runs over: DynamoDB, SQS, KMS and SES on AWS; the data dir's
/// SQLite file, master key and outbox locally.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn OutboundStore>,
    pub orgs: Arc<dyn OrgStore>,
    pub keys: Arc<dyn KeyService>,
    pub mailer: Arc<dyn Mailer>,
    /// "This org has new events", for the dispatcher.
    pub dispatch_queue: Arc<dyn Queue>,
    /// One message per attempt to make, for the deliverer.
    pub deliveries_queue: Arc<dyn Queue>,
    /// The store, when it hands out due deliveries itself (the embedded one): then only
    /// manual attempts go through `deliveries_queue`, and the local deliverer claims the rest
    /// from the store in batches.
    pub due: Option<Arc<dyn crate::ports::outbound::DueDeliveries>>,
    pub clock: Arc<dyn Clock>,
}

/// Everything outbound, built once over a set of ports.
#[derive(Clone)]
pub struct Outbound {
    pub ports: Ports,
    pub endpoints: Arc<endpoints::Endpoints>,
    pub publisher: Arc<publish::Publisher>,
    pub dispatcher: Arc<dispatch::Dispatcher>,
    pub deliverer: Arc<deliver::Deliverer>,
    pub replay: Arc<replay::Replay>,
    pub notifier: Arc<notify::Notifier>,
}

impl Outbound {
    pub fn assemble(
        ports: Ports,
        settings: settings::OutboundSettings,
        policy: ssrf::AddressPolicy,
        catalog: catalog::EventCatalog,
        jitter: deliver::Jitter,
        plans: Option<Arc<dyn crate::billing::plan::PlanGate>>,
    ) -> Self {
        let catalog = Arc::new(catalog);
        let policy = Arc::new(policy);
        let attempts =
            dispatch::AttemptQueue::new(ports.deliveries_queue.clone(), ports.due.is_some());
        let publisher = Arc::new(publish::Publisher::new(
            ports.store.clone(),
            ports.dispatch_queue.clone(),
            attempts.clone(),
            catalog.clone(),
            ports.clock.clone(),
            plans.clone(),
        ));
        let notifier = Arc::new(notify::Notifier::new(
            ports.orgs.clone(),
            ports.mailer.clone(),
            ports.clock.clone(),
        ));
        let sender = Arc::new(sender::Sender::new((*policy).clone(), settings.timeout));
        Self {
            endpoints: Arc::new(endpoints::Endpoints::new(
                ports.store.clone(),
                ports.keys.clone(),
                policy,
                catalog,
                publisher.clone(),
                ports.clock.clone(),
                settings.clone(),
                plans,
            )),
            dispatcher: Arc::new(dispatch::Dispatcher::new(
                ports.store.clone(),
                attempts.clone(),
                ports.clock.clone(),
            )),
            deliverer: Arc::new(deliver::Deliverer::new(
                ports.store.clone(),
                ports.keys.clone(),
                sender,
                attempts.clone(),
                notifier.clone(),
                ports.clock.clone(),
                settings,
                jitter,
            )),
            replay: Arc::new(replay::Replay::new(ports.store.clone(), attempts)),
            publisher,
            notifier,
            ports,
        }
    }
}
