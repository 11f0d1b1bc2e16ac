//! The event worker: takes queued deliveries, processes each exactly once (a claim in the
//! store guards against redelivery), dispatches by (source, event type) to a handler, and
//! keeps the delivery log up to date. Failures are reported per message so the queue retries
//! only those, and after the redrive limit they land in the dead-letter queue.

use crate::clock::Clock;
use crate::model::{DeliveryOutcome, DeliveryStatus, Envelope, NewDelivery, Source};
use crate::ports::store::{Claim, DeliveryStore, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod activity;
pub mod billing;
pub mod payload;
pub mod repositories;

pub use payload::{FieldPath, JsonBody, Payload};

/// A queued delivery as the worker reads it, with its payload decoded once.
#[derive(Debug, Clone)]
pub struct Event {
    pub envelope: Envelope,
    pub payload: Payload,
    /// Whose delivery it is, as its record says (`None`: nobody's yet, or the operator's).
    pub owner: Option<crate::model::Owner>,
    /// Which attempt this is (1 the first; more for a retry or a replay).
    pub attempt: u32,
}

impl Event {
    /// A first attempt of a delivery nobody owns.
    pub fn new(envelope: Envelope, payload: Payload) -> Self {
        Self {
            envelope,
            payload,
            owner: None,
            attempt: 1,
        }
    }
}

/// What a handler did with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    Processed,
    /// Deliberately not processed (a ping); the reason goes in the delivery log.
    Skipped(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("malformed queue message: {0}")]
    Malformed(String),
    #[error("another worker is processing this delivery")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("handler failed: {0}")]
    Handler(String),
}

/// Processes one kind of event.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, event: &Event, now: DateTime<Utc>) -> Result<Handled, WorkerError>;

    /// The payload fields `handle` reads of this delivery, so the worker picks them as it
    /// reads the body instead of building the whole document. A field left out still reads
    /// ([`JsonBody::document`] is built for it), only slower.
    fn fields(&self, _envelope: &Envelope) -> Vec<FieldPath> {
        Vec::new()
    }
}

/// Handlers by (source, event type), with a fallback per source and one for everything.
#[derive(Default, Clone)]
pub struct Dispatcher {
    exact: HashMap<(Source, String), Arc<dyn Handler>>,
    by_source: HashMap<Source, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
}

impl Dispatcher {
    pub fn on(mut self, source: Source, event_type: &str, h: Arc<dyn Handler>) -> Self {
        self.exact.insert((source, event_type.to_string()), h);
        self
    }

    pub fn on_source(mut self, source: Source, h: Arc<dyn Handler>) -> Self {
        self.by_source.insert(source, h);
        self
    }

    pub fn otherwise(mut self, h: Arc<dyn Handler>) -> Self {
        self.fallback = Some(h);
        self
    }

    pub fn route(&self, source: Source, event_type: &str) -> Option<&Arc<dyn Handler>> {
        self.exact
            .get(&(source, event_type.to_string()))
            .or_else(|| self.by_source.get(&source))
            .or(self.fallback.as_ref())
    }

    /// The handlers of this issue: pings are skipped, everything else becomes an activity.
    pub fn standard(store: Arc<dyn DeliveryStore>) -> Self {
        let skip_ping: Arc<dyn Handler> = Arc::new(SkipPing);
        Dispatcher::default()
            .on(Source::Github, "ping", skip_ping)
            .otherwise(Arc::new(activity::RecordActivity::new(store)))
    }

    /// [`standard`](Self::standard), plus the connected-repository handlers for every GitHub
    /// and GitLab event: runs, incidents, jobs and PRs of connected repositories, and pings
    /// (still skipped in the log) recorded on the connection whose hook sent them.
    /// With `events`, also publishing into each org's outbound stream (relayed deliveries
    /// `github.*`, `gitlab.*`; `incident.created`, `incident.resolved`); with `usage`,
    /// counting each delivery in its orgs' monthly usage.
    pub fn with_repositories(
        store: Arc<dyn DeliveryStore>,
        connections: Arc<dyn crate::ports::connections::ConnectionStore>,
        events: Option<Arc<dyn crate::outbound::sink::EventSink>>,
        usage: Option<Arc<dyn crate::billing::plan::PlanGate>>,
    ) -> Self {
        let ping: Arc<dyn Handler> = Arc::new(repositories::RecordPing::new(connections.clone()));
        let mut repos = repositories::RepositoryEvents::new(store.clone(), connections);
        if let Some(events) = events {
            repos = repos.with_events(events);
        }
        if let Some(usage) = usage {
            repos = repos.with_usage(usage);
        }
        Self::standard(store)
            .with_repository_handler(repos)
            .on(Source::Github, "ping", ping)
    }

    /// Also apply Stripe deliveries to the orgs' billing (and record them as activity).
    pub fn with_billing(
        self,
        store: Arc<dyn DeliveryStore>,
        billing: Arc<crate::billing::service::Billing>,
    ) -> Self {
        let h: Arc<dyn Handler> = Arc::new(billing::BillingEvents::new(
            billing,
            activity::RecordActivity::new(store.clone()),
            store,
        ));
        self.on_source(Source::Stripe, h)
    }

    fn with_repository_handler(self, repos: repositories::RepositoryEvents) -> Self {
        let repos: Arc<dyn Handler> = Arc::new(repos);
        self.on_source(Source::Github, repos.clone())
            .on_source(Source::Gitlab, repos)
    }
}

struct SkipPing;

#[async_trait]
impl Handler for SkipPing {
    async fn handle(&self, _: &Event, _: DateTime<Utc>) -> Result<Handled, WorkerError> {
        Ok(Handled::Skipped(
            "ping: the hook is set up; nothing to process".into(),
        ))
    }
}

/// One queue message, as SQS or the embedded queue hands it over.
#[derive(Debug, Clone)]
pub struct WorkerMessage {
    pub message_id: String,
    pub body: String,
}

pub struct Worker {
    store: Arc<dyn DeliveryStore>,
    dispatcher: Dispatcher,
    clock: Arc<dyn Clock>,
    lease: Duration,
    delivery_ttl: Duration,
}

impl Worker {
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        dispatcher: Dispatcher,
        clock: Arc<dyn Clock>,
        settings: &crate::config::Settings,
    ) -> Self {
        Self {
            store,
            dispatcher,
            clock,
            lease: settings.process_lease,
            delivery_ttl: settings.record_ttl(),
        }
    }

    /// The same worker with other handlers.
    /// The handlers this worker routes to (to extend them).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    pub fn with_dispatcher(&self, dispatcher: Dispatcher) -> Self {
        Self {
            store: self.store.clone(),
            dispatcher,
            clock: self.clock.clone(),
            lease: self.lease,
            delivery_ttl: self.delivery_ttl,
        }
    }

    /// Process a batch concurrently; returns the ids of the messages that failed, for
    /// `batchItemFailures` (the queue retries just those).
    pub async fn process_batch(&self, messages: &[WorkerMessage]) -> Vec<String> {
        let results = futures::future::join_all(messages.iter().map(|m| self.process(m))).await;
        messages
            .iter()
            .zip(results)
            .filter_map(|(m, r)| r.err().map(|_| m.message_id.clone()))
            .collect()
    }

    /// Process one message; `Ok` means it may be deleted from the queue.
    pub async fn process(&self, message: &WorkerMessage) -> Result<(), WorkerError> {
        let envelope = match Envelope::from_message(&message.body) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(message_id = %message.message_id, error = %e, "unreadable queue message; leaving it for the dead-letter queue");
                return Err(WorkerError::Malformed(e.to_string()));
            }
        };
        let (source, delivery_id) = (envelope.source, envelope.delivery_id.clone());
        let result = self.process_envelope(envelope).await;
        if let Err(WorkerError::Store(_)) = &result {
            crate::telemetry::store_error();
        }
        if let Err(e) = &result {
            tracing::warn!(%source, %delivery_id, error = %e, "delivery processing failed; the queue will retry it");
        }
        result
    }

    async fn process_envelope(&self, envelope: Envelope) -> Result<(), WorkerError> {
        let key = envelope.key();
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let claim = match self.store.claim(&key, now, until).await? {
            Claim::Missing => {
                // Its record expired while the message waited (e.g. redriven from the DLQ
                // days later): record it again so the log shows what happens to it.
                self.re_record(&envelope).await?;
                self.store.claim(&key, now, until).await?
            }
            other => other,
        };
        let claimed = match claim {
            Claim::Done(_) => {
                tracing::info!(source = %envelope.source, delivery_id = %envelope.delivery_id, "already processed; dropping the redelivered message");
                return Ok(());
            }
            Claim::Busy => return Err(WorkerError::Busy),
            Claim::Missing => return Err(WorkerError::Malformed("record vanished".into())),
            Claim::Claimed(d) => d,
        };

        let started = Instant::now();
        let handler = self.dispatcher.route(envelope.source, &envelope.event_type);
        // The envelope (and its body) moves into the event and back out, never copied.
        let (result, envelope) = match envelope.raw_body() {
            Ok(raw) => {
                let fields = handler.map(|h| h.fields(&envelope)).unwrap_or_default();
                match Payload::parse(raw, fields) {
                    Ok(payload) => {
                        let event = Event {
                            envelope,
                            payload,
                            owner: claimed.owner.clone(),
                            attempt: claimed.attempts,
                        };
                        let result = match handler {
                            Some(handler) => handler.handle(&event, now).await,
                            None => Ok(Handled::Skipped("no handler for this event type".into())),
                        };
                        (result, event.envelope)
                    }
                    Err(e) => (Err(e), envelope),
                }
            }
            Err(e) => (
                Err(WorkerError::Malformed(format!(
                    "body is not valid base64: {e}"
                ))),
                envelope,
            ),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let processed_at = self.clock.now();
        let (status, error) = match &result {
            Ok(Handled::Processed) => (DeliveryStatus::Processed, None),
            Ok(Handled::Skipped(why)) => (DeliveryStatus::Skipped, Some(why.clone())),
            Err(e) => (DeliveryStatus::Failed, Some(e.to_string())),
        };
        self.store
            .finish(
                &key,
                &DeliveryOutcome {
                    status,
                    error,
                    processed_at,
                    duration_ms,
                },
            )
            .await?;
        tracing::info!(
            source = %envelope.source, delivery_id = %envelope.delivery_id,
            event_type = %envelope.event_type, outcome = status.as_str(), duration_ms,
            "delivery processed"
        );
        // Timed on a first attempt only: a replay days later is not processing latency.
        if claimed.attempts == 1 {
            crate::telemetry::processed(
                (processed_at - envelope.received_at)
                    .to_std()
                    .unwrap_or_default(),
            );
        }
        result.map(|_| ())
    }

    async fn re_record(&self, envelope: &Envelope) -> Result<(), WorkerError> {
        let now = self.clock.now();
        let raw = envelope.raw_body().unwrap_or_default();
        let new = NewDelivery {
            key: envelope.key(),
            source: envelope.source,
            delivery_id: envelope.delivery_id.clone(),
            event_type: envelope.event_type.clone(),
            payload_sha256: crate::model::sha256_hex(&raw),
            signature_verified: true,
            received_at: envelope.received_at,
            enqueue_lease_until: now,
            expires_at: now
                + chrono::Duration::from_std(self.delivery_ttl).unwrap_or(chrono::Duration::MAX),
            owner: None,
        };
        self.store.record(&new).await?;
        Ok(())
    }
}
