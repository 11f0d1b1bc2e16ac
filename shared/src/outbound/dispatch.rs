//! The dispatcher: reads an org's stream from its cursor and creates exactly one delivery per
//! (endpoint, event) whose subscription matches, then queues it for the deliverer. A delivery's
//! id is derived from the pair and written with a conditional put, so a crash or a rerun (or
//! two dispatchers at once) never duplicates; the cursor moves past an event only after all
//! its deliveries exist and are queued, so nothing is skipped.

use super::catalog::TEST_EVENT;
use super::model::{subscribed, Delivery, DeliveryId, DeliveryStatus, Endpoint, Event};
use super::Error;
use crate::clock::Clock;
use crate::ports::outbound::{OutboundStore, MAX_PAGE};
use crate::ports::queue::Queue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// "This org has new events", on the dispatch queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchMessage {
    pub org_id: String,
}

impl DispatchMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// "Make the next attempt at this delivery", on the deliveries queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub delivery_id: DeliveryId,
    pub org_id: String,
    /// The attempts the delivery had made when this message was sent: a message whose count
    /// no longer matches is stale and dropped.
    pub attempts_made: u32,
    /// When the attempt is due (epoch ms). A queue delay stops at 15 minutes, so a message
    /// that arrives early is sent on again with the rest of the wait.
    pub due_at_ms: i64,
    /// A person asked for this attempt (retry, recover): made whatever the status.
    #[serde(default)]
    pub manual: bool,
}

impl DeliveryMessage {
    pub fn now(d: &Delivery, manual: bool) -> Self {
        Self {
            delivery_id: d.id.clone(),
            org_id: d.org_id.clone(),
            attempts_made: d.attempts,
            due_at_ms: 0,
            manual,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The queue delay for this message: the time left until it is due, at most 15 minutes.
    pub fn delay(&self, now: DateTime<Utc>) -> Duration {
        let left = self.due_at_ms - now.timestamp_millis();
        Duration::from_millis(left.clamp(0, MAX_QUEUE_DELAY_MS) as u64)
    }
}

/// The longest delay SQS (and so the embedded queue) takes.
pub const MAX_QUEUE_DELAY_MS: i64 = 15 * 60 * 1000;

/// How a delivery's next attempt reaches a deliverer: one deliveries-queue message per
/// attempt (SQS), or, over a store that hands out due deliveries itself (the embedded one,
/// [`DueDeliveries`]), the delivery's own `next_attempt_at`, with only the attempts a person
/// asks for sent as messages.
///
/// [`DueDeliveries`]: crate::ports::outbound::DueDeliveries
#[derive(Clone)]
pub struct AttemptQueue {
    messages: Arc<dyn Queue>,
    store_is_queue: bool,
}

impl AttemptQueue {
    pub fn new(messages: Arc<dyn Queue>, store_is_queue: bool) -> Self {
        Self {
            messages,
            store_is_queue,
        }
    }

    /// Queue the delivery's next scheduled attempt (it has made `d.attempts`), due at `at`.
    pub async fn scheduled(
        &self,
        d: &Delivery,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        if self.store_is_queue {
            // The stored delivery's due time is its place in the queue.
            return Ok(());
        }
        let msg = DeliveryMessage {
            delivery_id: d.id.clone(),
            org_id: d.org_id.clone(),
            attempts_made: d.attempts,
            due_at_ms: at.timestamp_millis(),
            manual: false,
        };
        self.send(&msg, msg.delay(now)).await
    }

    /// Queue one more attempt now, whatever the delivery's status (a person asked).
    pub async fn manual(&self, d: &Delivery) -> Result<(), Error> {
        self.send(&DeliveryMessage::now(d, true), Duration::ZERO)
            .await
    }

    /// Send a message on (again), visible after `delay`.
    pub async fn send(&self, msg: &DeliveryMessage, delay: Duration) -> Result<(), Error> {
        self.messages.send(&msg.to_json(), delay).await?;
        Ok(())
    }
}

/// How many events the dispatcher reads at a time, and how many deliveries it writes at once.
const EVENTS_PER_READ: usize = 100;
const DELIVERIES_PER_BATCH: usize = 5_000;
/// How many deliveries one store call creates (the embedded writer holds everyone else up
/// while it writes them).
const DELIVERIES_PER_WRITE: usize = 500;
const FAN_OUT: usize = 64;

/// What one dispatch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatched {
    pub events: usize,
    pub deliveries: usize,
}

pub struct Dispatcher {
    store: Arc<dyn OutboundStore>,
    deliveries: AttemptQueue,
    clock: Arc<dyn Clock>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn OutboundStore>,
        deliveries: AttemptQueue,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            deliveries,
            clock,
        }
    }

    /// One dispatch-queue message.
    pub async fn handle_message(&self, body: &str) -> Result<Dispatched, Error> {
        let msg: DispatchMessage = serde_json::from_str(body)
            .map_err(|_| Error::Invalid("not a dispatch message".into()))?;
        self.dispatch(&msg.org_id).await
    }

    /// Fan out every event of the org past its cursor.
    pub async fn dispatch(&self, org_id: &str) -> Result<Dispatched, Error> {
        let mut done = Dispatched::default();
        loop {
            // Endpoints are read per batch of events: one added meanwhile gets the later ones.
            let endpoints = self.endpoints(org_id).await?;
            let cursor = self.store.dispatch_cursor(org_id).await?;
            if endpoints.is_empty() {
                // No event makes a delivery (a test event names an enabled endpoint too), so
                // the cursor moves to the stream's end without reading the events back.
                let last = self.store.last_seq(org_id).await?;
                if last > cursor {
                    self.store.advance_cursor(org_id, last).await?;
                    done.events += (last - cursor) as usize;
                }
                return Ok(done);
            }
            // A batch of events makes about DELIVERIES_PER_BATCH deliveries at most (10 events
            // for 1,000 endpoints, 100 for 10), and never fewer than 10 events: the endpoint
            // list is read again for every batch.
            let per_read =
                (DELIVERIES_PER_BATCH / endpoints.len().max(1)).clamp(10, EVENTS_PER_READ);
            let events = self.store.events_after(org_id, cursor, per_read).await?;
            if events.is_empty() {
                return Ok(done);
            }
            // The whole batch's deliveries are written at once (events one after another left
            // the store waiting on round trips), and the cursor moves past the batch only
            // when every one of them exists and is queued.
            let now = self.clock.now();
            let deliveries: Vec<Delivery> = events
                .iter()
                .flat_map(|event| Self::deliveries_for(event, &endpoints, now))
                .collect();
            for chunk in deliveries.chunks(DELIVERIES_PER_WRITE) {
                let created = self.store.create_deliveries(chunk).await?;
                done.deliveries += created.iter().filter(|c| **c).count();
                for (some, created) in chunk.chunks(FAN_OUT).zip(created.chunks(FAN_OUT)) {
                    let queued = some.iter().zip(created).map(|(d, c)| self.queue(d, *c));
                    futures::future::try_join_all(queued).await?;
                }
            }
            if let Some(last) = events.last() {
                self.store.advance_cursor(org_id, last.seq).await?;
            }
            done.events += events.len();
        }
    }

    /// Dispatch every org whose cursor is behind (work a lost signal left): the local server
    /// runs it every few seconds, the dispatcher Lambda on a schedule.
    pub async fn sweep(&self) -> Result<Dispatched, Error> {
        let mut done = Dispatched::default();
        for org in self.store.orgs_behind(MAX_PAGE).await? {
            // One org that cannot be dispatched (a corrupt record) must not hold up the rest.
            match self.dispatch(&org).await {
                Ok(d) => {
                    done.events += d.events;
                    done.deliveries += d.deliveries;
                }
                Err(e) => {
                    tracing::error!(org = %org, error = %e, "sweep could not dispatch an org")
                }
            }
        }
        Ok(done)
    }

    async fn endpoints(&self, org_id: &str) -> Result<Vec<Endpoint>, Error> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.store.list_endpoints(org_id, MAX_PAGE, cursor).await?;
            all.extend(page.into_iter().filter(|e| e.enabled));
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// The deliveries `event` should have: one per enabled endpoint whose subscription takes
    /// it; for a test event, only the endpoint it names (`Publisher::send_test` created and
    /// queued that one; creating it again here re-queues it if the queue failed just then).
    fn deliveries_for(event: &Event, endpoints: &[Endpoint], now: DateTime<Utc>) -> Vec<Delivery> {
        let test_target = (event.event_type == TEST_EVENT)
            .then(|| {
                event.data.to_value()["endpoint_id"]
                    .as_str()
                    .map(str::to_owned)
            })
            .flatten();
        if event.event_type == TEST_EVENT && test_target.is_none() {
            return Vec::new();
        }
        endpoints
            .iter()
            .filter(|e| match &test_target {
                Some(target) => e.id.as_str() == target.as_str(),
                None => subscribed(&e.event_types, &event.event_type),
            })
            .map(|endpoint| Delivery::pending(&endpoint.id, event, now))
            .collect()
    }

    /// Queue the delivery's first attempt: one this dispatch created, or one a run that
    /// stopped before queueing it left pending. A second message for an attempt already made
    /// is dropped by the deliverer.
    async fn queue(&self, delivery: &Delivery, created: bool) -> Result<(), Error> {
        if self.deliveries.store_is_queue {
            // The stored delivery is its own place in the queue, whoever created it.
            return Ok(());
        }
        let queue_it = created
            || self
                .store
                .get_delivery(&delivery.org_id, &delivery.id)
                .await?
                .is_some_and(|d| d.status == DeliveryStatus::Pending && d.attempts == 0);
        if queue_it {
            let now = self.clock.now();
            self.deliveries.scheduled(delivery, now, now).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::ports::outbound::conformance::{endpoint, new_event};
    use crate::ports::outbound::embedded::EmbeddedOutboundStore;
    use crate::ports::queue::embedded::EmbeddedQueue;
    use crate::ports::sqlite::{Database, Durability};

    #[tokio::test]
    async fn an_org_without_endpoints_moves_past_its_events_and_a_new_endpoint_gets_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let store = Arc::new(EmbeddedOutboundStore::new(db.clone()));
        let queue = Arc::new(EmbeddedQueue::new(
            db,
            crate::ports::queue::conformance::SETTINGS,
        ));
        let dispatcher = Dispatcher::new(
            store.clone(),
            AttemptQueue::new(queue, true),
            Arc::new(SystemClock),
        );
        for _ in 0..3 {
            store
                .append_event(&new_event("org-a", "invoice.paid"))
                .await
                .unwrap();
        }
        let mut off = endpoint("org-a");
        off.enabled = false;
        store.create_endpoint(&off).await.unwrap();
        let nothing_to_deliver = Dispatched {
            events: 3,
            deliveries: 0,
        };
        assert_eq!(
            dispatcher.dispatch("org-a").await.unwrap(),
            nothing_to_deliver
        );
        assert_eq!(store.dispatch_cursor("org-a").await.unwrap(), 3);
        assert!(store.orgs_behind(10).await.unwrap().is_empty());
        assert_eq!(
            dispatcher.dispatch("org-a").await.unwrap(),
            Dispatched::default(),
            "nothing left"
        );

        store.create_endpoint(&endpoint("org-a")).await.unwrap();
        store
            .append_event(&new_event("org-a", "invoice.paid"))
            .await
            .unwrap();
        let one = Dispatched {
            events: 1,
            deliveries: 1,
        };
        assert_eq!(dispatcher.dispatch("org-a").await.unwrap(), one);
    }
}
