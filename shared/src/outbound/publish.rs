//! Publishing: an event enters its org's ordered stream (once per id), and the dispatcher is
//! told the org has new events. The stream is the record: a lost signal delays the fan-out
//! until the dispatcher's sweep, it never loses an event.

use super::catalog::{EventCatalog, TEST_EVENT};
use super::dispatch::{AttemptQueue, DispatchMessage};
use super::model::{Delivery, Endpoint, EventData, EventId, NewEvent};
use super::Error;
use crate::billing::plan::PlanGate;
use crate::clock::Clock;
use crate::ports::outbound::{Appended, OutboundStore};
use crate::ports::queue::Queue;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// What `POST /api/v1/events` takes.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// One of `GET /api/v1/event-types`.
    #[serde(rename = "type")]
    #[schema(example = "invoice.paid")]
    pub event_type: String,
    /// Any JSON, up to 256 KiB serialised.
    pub data: serde_json::Value,
    /// The publisher's own id (1–128 of `A-Z a-z 0-9 _ - . :`): publishing it again answers
    /// the first event. `evt_…` when left out.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub id: Option<String>,
}

/// The largest `data` an event may carry, serialised (a DynamoDB item holds 400 KB).
pub const MAX_DATA_BYTES: usize = 256 * 1024;

pub struct Publisher {
    store: Arc<dyn OutboundStore>,
    /// Tells the dispatcher an org has new events.
    dispatch: Arc<dyn Queue>,
    /// Where a test event's one delivery is queued.
    deliveries: AttemptQueue,
    catalog: Arc<EventCatalog>,
    clock: Arc<dyn Clock>,
    /// Counts customers' events against their plan's month (`None`: nothing is limited).
    plans: Option<Arc<dyn PlanGate>>,
}

impl Publisher {
    pub fn new(
        store: Arc<dyn OutboundStore>,
        dispatch: Arc<dyn Queue>,
        deliveries: AttemptQueue,
        catalog: Arc<EventCatalog>,
        clock: Arc<dyn Clock>,
        plans: Option<Arc<dyn PlanGate>>,
    ) -> Self {
        Self {
            store,
            dispatch,
            deliveries,
            catalog,
            clock,
            plans,
        }
    }

    /// Publish a customer's event: a known type, data an object or any JSON value up to
    /// [`MAX_DATA_BYTES`]. An id the org already published answers that event, unchanged.
    pub async fn publish(&self, org_id: &str, req: PublishRequest) -> Result<Appended, Error> {
        let event_type = req.event_type.trim();
        self.catalog
            .check_publishable(event_type)
            .map_err(|e| Error::Invalid(format!("type: {e}")))?;
        let id = match req.id {
            Some(raw) => EventId::parse(raw.trim()).map_err(Error::Invalid)?,
            None => EventId::generate(),
        };
        let data = EventData::from(req.data);
        let size = data.get().len();
        if size > MAX_DATA_BYTES {
            return Err(Error::Invalid(format!(
                "data: {size} bytes is over the {MAX_DATA_BYTES}-byte limit"
            )));
        }
        // Counted before it is appended, so a plan's month can never be passed; given back
        // when nothing new was appended (the id was published before, or the store failed).
        if let Some(plans) = &self.plans {
            if let Err(refusal) = plans.take_event(org_id).await {
                // A retry of an event already published answers it, whatever the month's count.
                if let Some(existing) = self.store.get_event(org_id, &id).await? {
                    return Ok(Appended::Existing(existing));
                }
                return Err(refusal.into());
            }
        }
        let appended = self.append(org_id, id, event_type, data).await;
        if let Some(plans) = &self.plans {
            if !matches!(appended, Ok(Appended::Created(_))) {
                plans.give_back_event(org_id).await;
            }
        }
        appended
    }

    /// Publish one of Hookline's own events (an incident, a connection, a relayed delivery),
    /// with an id derived from its cause so doing the work again publishes nothing new.
    pub async fn publish_own(
        &self,
        org_id: &str,
        event_type: &str,
        id: EventId,
        data: EventData,
    ) -> Result<Appended, Error> {
        self.append(org_id, id, event_type, data).await
    }

    async fn append(
        &self,
        org_id: &str,
        id: EventId,
        event_type: &str,
        data: EventData,
    ) -> Result<Appended, Error> {
        let appended = self
            .store
            .append_event(&NewEvent {
                id,
                org_id: org_id.to_owned(),
                event_type: event_type.to_owned(),
                created_at: self.clock.now(),
                data,
            })
            .await?;
        // Signal on a repeat too: the first publish may have stopped before its signal.
        self.signal(org_id).await;
        Ok(appended)
    }

    /// Tell the dispatcher `org_id` has new events; a failure is logged, and the dispatcher's
    /// sweep finds the events anyway.
    pub async fn signal(&self, org_id: &str) {
        let body = DispatchMessage {
            org_id: org_id.to_owned(),
        }
        .to_json();
        if let Err(e) = self.dispatch.send(&body, Duration::ZERO).await {
            tracing::warn!(org = org_id, error = %e, "could not signal the dispatcher; its sweep will find the event");
        }
    }

    /// Send a `webhook.test` event to one endpoint (not fanned out to the org's others): the
    /// event enters the stream for the record, and its one delivery is created and queued
    /// here.
    pub async fn send_test(&self, endpoint: &Endpoint) -> Result<Delivery, Error> {
        let now = self.clock.now();
        let appended = self
            .store
            .append_event(&NewEvent {
                id: EventId::generate(),
                org_id: endpoint.org_id.clone(),
                event_type: TEST_EVENT.to_owned(),
                created_at: now,
                data: serde_json::json!({
                    "endpoint_id": endpoint.id,
                    "message": "This is a test event from Hookline: your endpoint receives and verifies webhooks.",
                })
                .into(),
            })
            .await?;
        let event = appended.event();
        let delivery = Delivery::pending(&endpoint.id, event, now);
        self.store.create_delivery(&delivery).await?;
        self.deliveries.scheduled(&delivery, now, now).await?;
        // The dispatcher moves its cursor past the test event.
        self.signal(&endpoint.org_id).await;
        Ok(delivery)
    }
}

/// Hookline's own events (incidents, connections, relayed deliveries) enter the org's stream
/// through the same publisher as a customer's.
#[async_trait::async_trait]
impl super::sink::EventSink for Publisher {
    async fn publish_own(
        &self,
        org_id: &str,
        event_type: &str,
        id: EventId,
        data: EventData,
    ) -> Result<(), String> {
        Publisher::publish_own(self, org_id, event_type, id, data)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
