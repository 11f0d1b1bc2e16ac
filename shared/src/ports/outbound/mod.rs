//! The outbound store (DESIGN.md §1.3): an org's endpoints, its ordered event stream and the
//! dispatcher's cursor over it, one delivery per (endpoint, event) with its attempts, and the
//! per-endpoint send-rate counters shared by concurrent deliverers.
//!
//! Both adapters keep each record as its serialised model plus the few columns/attributes the
//! lookups and conditions need. Endpoint secrets are stored exactly as given (sealed), and no
//! method logs a record's contents; errors name records by key only.

use crate::outbound::model::{
    Attempt, Delivery, DeliveryId, DeliveryStatus, Endpoint, EndpointId, Event, EventId, NewEvent,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub mod aws;
pub mod conformance;
pub mod embedded;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// No such record in that org.
    #[error("not found")]
    NotFound,
    /// The store cannot be reached or refused the call; the caller should answer 503 (or let
    /// the queue retry).
    #[error("outbound store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back (named by key, never by contents).
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The largest page a list returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// How many single-record writes a batch method keeps in flight at once (DynamoDB takes
/// conditional puts one item at a time).
const CONCURRENT_WRITES: usize = 64;

/// The outcome of appending an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Appended now, with its `seq`.
    Created(Event),
    /// The org's stream already holds an event with this id: that event, unchanged.
    Existing(Event),
}

impl Appended {
    pub fn event(&self) -> &Event {
        match self {
            Appended::Created(e) | Appended::Existing(e) => e,
        }
    }
}

/// Which deliveries `list_deliveries` returns; every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<EndpointId>,
    pub event_id: Option<EventId>,
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    /// Only deliveries created at or after this instant.
    pub since: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait OutboundStore: Send + Sync + 'static {
    // ---- endpoints ------------------------------------------------------------------------

    /// Save a new endpoint (its id is fresh).
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), OutboundError>;

    /// The endpoint, if it exists in `org_id` (another org's id is `None`).
    async fn get_endpoint(
        &self,
        org_id: &str,
        id: &EndpointId,
    ) -> Result<Option<Endpoint>, OutboundError>;

    /// One page of the org's endpoints, oldest (`created_at`, then id) first, and the cursor of
    /// the next page (`None` on the last). `limit` is capped at [`MAX_PAGE`]; an unreadable
    /// cursor is an empty last page.
    async fn list_endpoints(
        &self,
        org_id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Endpoint>, Option<String>), OutboundError>;

    /// How many endpoints the org has.
    async fn count_endpoints(&self, org_id: &str) -> Result<u64, OutboundError>;

    /// Replace the endpoint (found by `endpoint.id` in `endpoint.org_id`); `NotFound` if it is
    /// not there.
    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<(), OutboundError>;

    /// Remove the endpoint; false when there was none in the org. Its deliveries and attempts
    /// stay (history).
    async fn delete_endpoint(&self, org_id: &str, id: &EndpointId) -> Result<bool, OutboundError>;

    // ---- the org's event stream -------------------------------------------------------------

    /// Append the event to its org's stream with the next `seq` (1 for the first; no gaps,
    /// even under concurrent appends), unless the org already has an event with this id: then
    /// that one, unchanged. Another org's event with the same id is a different event.
    async fn append_event(&self, event: &NewEvent) -> Result<Appended, OutboundError>;

    async fn get_event(&self, org_id: &str, id: &EventId) -> Result<Option<Event>, OutboundError>;

    /// Up to `limit` of the org's events with `seq > after`, in `seq` order.
    async fn events_after(
        &self,
        org_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, OutboundError>;

    /// The `seq` of the org's last event (0 before the first).
    async fn last_seq(&self, org_id: &str) -> Result<u64, OutboundError>;

    /// The `seq` of the last event the dispatcher has finished with (0 before the first).
    async fn dispatch_cursor(&self, org_id: &str) -> Result<u64, OutboundError>;

    /// Move the cursor to `seq` unless it is already there or past it (it never goes back).
    async fn advance_cursor(&self, org_id: &str, seq: u64) -> Result<(), OutboundError>;

    /// Orgs whose cursor is behind their stream's last `seq` (for a sweep that finds work a
    /// lost signal left behind), at most `limit`.
    async fn orgs_behind(&self, limit: usize) -> Result<Vec<String>, OutboundError>;

    // ---- deliveries and attempts ------------------------------------------------------------

    /// Save the delivery unless one with its id (one per (endpoint, event)) exists: true when
    /// this call created it (of concurrent calls, exactly one).
    async fn create_delivery(&self, delivery: &Delivery) -> Result<bool, OutboundError>;

    /// [`create_delivery`] for each of `deliveries` (the dispatcher's fan-out of a batch of
    /// events): for each, true when this call created it. An error may leave some created;
    /// calling again with the same deliveries creates the rest.
    ///
    /// [`create_delivery`]: OutboundStore::create_delivery
    async fn create_deliveries(&self, deliveries: &[Delivery]) -> Result<Vec<bool>, OutboundError> {
        let mut created = Vec::with_capacity(deliveries.len());
        for chunk in deliveries.chunks(CONCURRENT_WRITES) {
            let writes = chunk.iter().map(|d| self.create_delivery(d));
            created.extend(futures::future::try_join_all(writes).await?);
        }
        Ok(created)
    }

    async fn get_delivery(
        &self,
        org_id: &str,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>, OutboundError>;

    /// One page of the org's deliveries matching `filter`, newest (`created_at`, then id)
    /// first, and the next page's cursor. `limit` is capped at [`MAX_PAGE`].
    async fn list_deliveries(
        &self,
        org_id: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), OutboundError>;

    /// Take the delivery for its next attempt, atomically: only if it has made exactly
    /// `attempts_made` attempts and no other deliverer's lease runs past `now`. Sets
    /// `lease_until` and returns the delivery as it now is; `None` when the condition fails
    /// (another deliverer has it, or this attempt was already made) or it does not exist.
    async fn claim_delivery(
        &self,
        id: &DeliveryId,
        attempts_made: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Delivery>, OutboundError>;

    /// Record an attempt and the delivery's state after it (`delivery.attempts ==
    /// attempt.number`, lease cleared) in one step, only if the stored delivery has made
    /// `attempt.number - 1` attempts: true when written, false when that attempt was already
    /// recorded (a redo writes nothing).
    async fn record_attempt(
        &self,
        delivery: &Delivery,
        attempt: &Attempt,
    ) -> Result<bool, OutboundError>;

    /// Replace a delivery's state without an attempt (dead-lettered because its endpoint went
    /// away, rescheduled by a manual retry), only if its stored `attempts` is still
    /// `delivery.attempts`: true when written.
    async fn update_delivery(&self, delivery: &Delivery) -> Result<bool, OutboundError>;

    /// The delivery's attempts, oldest first (another org's delivery has none).
    async fn list_attempts(
        &self,
        org_id: &str,
        id: &DeliveryId,
    ) -> Result<Vec<Attempt>, OutboundError>;

    // ---- rate limits ------------------------------------------------------------------------

    /// Take one of the endpoint's `limit` sends for the wall-clock second `second` (epoch
    /// seconds), counted across every deliverer: false when they are all taken.
    async fn take_send_slot(
        &self,
        endpoint: &EndpointId,
        second: i64,
        limit: u32,
    ) -> Result<bool, OutboundError>;
}

/// A store that is also the deliverer's queue (the embedded one): a delivery whose next
/// attempt is due and that no deliverer holds is handed out by [`claim_due`], so an attempt
/// needs no queue message of its own (SQS carries one per attempt on AWS; locally those
/// messages cost more writes than the attempt itself). Like `ports::intake`, for the store
/// that shares a file with its queue.
///
/// [`claim_due`]: DueDeliveries::claim_due
#[async_trait]
pub trait DueDeliveries: Send + Sync + 'static {
    /// Up to `max` deliveries (pending or failed) whose next attempt is due at `now` and whose
    /// lease, if any, has ended, oldest due first: each leased until `lease_until` (and not
    /// due again before then, so a deliverer that dies mid-attempt only delays it).
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<Delivery>, OutboundError>;

    /// When the next attempt falls due, if one is scheduled.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, OutboundError>;

    /// Resolves when a delivery may have fallen due since the last call (one was created or
    /// rescheduled), or after `at_most`.
    async fn wait_for_work(&self, at_most: std::time::Duration);
}

/// When a delivery in this state is next due for an attempt, if it is: while pending or
/// failed, at its `next_attempt_at`, and not before a lease on it ends.
pub fn due_at(delivery: &Delivery) -> Option<DateTime<Utc>> {
    if !matches!(
        delivery.status,
        DeliveryStatus::Pending | DeliveryStatus::Failed
    ) {
        return None;
    }
    let at = delivery.next_attempt_at.unwrap_or(delivery.created_at);
    Some(match delivery.lease_until {
        Some(lease) if lease > at => lease,
        _ => at,
    })
}

// ---- shared by both adapters ---------------------------------------------------------------

/// A list cursor: where the previous page ended, (created_at ms, id), as opaque URL-safe text.
pub fn encode_cursor(created_at: DateTime<Utc>, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{:015}#{id}", created_at.timestamp_millis().max(0)))
}

pub fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (millis, id) = raw.split_once('#')?;
    if millis.len() != 15 || !millis.bytes().all(|b| b.is_ascii_digit()) || id.is_empty() {
        return None;
    }
    Some((millis.parse().ok()?, id.to_owned()))
}

/// Whether `cursor` is one a list handed out (an API answers 400 otherwise).
pub fn valid_cursor(cursor: &str) -> bool {
    decode_cursor(cursor).is_some()
}

/// A record that does not parse, named by key; serde's message can quote the value, so only
/// the kind of error and its place are kept.
#[allow(dead_code)] // used by the adapters
pub(crate) fn json_corrupt(key: impl Into<String>, e: &serde_json::Error) -> OutboundError {
    OutboundError::Corrupt {
        key: key.into(),
        reason: format!(
            "unreadable record ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    }
}
