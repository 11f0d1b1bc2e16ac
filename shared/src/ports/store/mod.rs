//! The delivery store: idempotent delivery records, their status transitions and TTL, the
//! delivery log, and the worker's activity records.

use crate::model::{
    Activity, Delivery, DeliveryKey, DeliveryOutcome, DeliveryStatus, NewDelivery, Owner, Source,
    StoredPayload,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub mod aws;
pub mod conformance;
pub mod embedded;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the call; the caller should answer 503.
    #[error("delivery store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The answer to [`DeliveryStore::record`].
// A short-lived answer, moved once: boxing the record would cost an allocation per duplicate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// This call created the record.
    Recorded,
    /// A live record with this key already exists (an expired one counts as absent).
    Exists(Delivery),
}

/// The answer to [`DeliveryStore::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This worker owns the delivery until the lease ends; `attempts` was incremented.
    Claimed(Delivery),
    /// Already processed or skipped: nothing to do.
    Done(Delivery),
    /// Another worker holds an unexpired lease on it.
    Busy,
    /// No such record (expired, or never recorded).
    Missing,
}

/// A page of the delivery log, newest first.
#[derive(Debug, Clone)]
pub struct DeliveryQuery {
    pub source: Option<Source>,
    pub status: Option<DeliveryStatus>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Default for DeliveryQuery {
    fn default() -> Self {
        Self {
            source: None,
            status: None,
            since: None,
            limit: 50,
        }
    }
}

impl DeliveryQuery {
    pub fn matches(&self, d: &Delivery) -> bool {
        self.source.is_none_or(|s| d.source == s)
            && self.status.is_none_or(|s| d.status == s)
            && self.since.is_none_or(|t| d.received_at >= t)
    }
}

/// A page of one org's delivery log (`GET /api/v1/webhooks/deliveries`), newest first.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub org_id: String,
    pub connection_id: Option<String>,
    pub source: Option<Source>,
    pub event_type: Option<String>,
    pub status: Option<DeliveryStatus>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Strictly older than this sort key ([`Delivery::log_sort_key`]) of a previous page.
    pub after: Option<String>,
    /// Records expired by then are left out.
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub deliveries: Vec<Delivery>,
    /// The sort key to go on from, when there may be more.
    pub next: Option<String>,
}

/// One connection's numbers, from the same log the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogCounts {
    pub total: u64,
    pub failed: u64,
    pub last_received_at: Option<DateTime<Utc>>,
}

/// The answer to [`DeliveryStore::reopen`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reopen {
    /// It is `queued` again; this is how it was before.
    Reopened(Delivery),
    /// Queued, or a worker is on it right now: nothing changed.
    InFlight(Delivery),
    /// No live record.
    Missing,
}

/// Does a stored sort key look like one [`Delivery::log_sort_key`] made?
pub fn valid_log_sort_key(raw: &str) -> bool {
    matches!(raw.split_once('#'), Some((ms, key))
        if ms.len() == 15 && ms.bytes().all(|b| b.is_ascii_digit())
            && DeliveryKey::from_stored(key).source().is_some())
}

#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// Create the record unless a live one exists (`attribute_not_exists`). Status `received`.
    async fn record(&self, new: &NewDelivery) -> Result<RecordOutcome, StoreError>;

    async fn get(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError>;

    /// A provider retry takes over a record left `received` whose enqueue lease has ended:
    /// true (and the lease is now `lease_until`) for exactly one caller.
    async fn take_over_enqueue(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// End the enqueue lease now (the enqueue failed), so the provider's retry can take over.
    async fn release_enqueue(&self, key: &DeliveryKey) -> Result<(), StoreError>;

    /// `received` → `queued`. A no-op when the worker has already moved it on.
    async fn mark_queued(&self, key: &DeliveryKey, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// The worker's claim: succeeds when the record is not final and no other worker's
    /// process lease is running; increments `attempts`.
    async fn claim(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim, StoreError>;

    /// Record how the worker's attempt ended and end its lease.
    async fn finish(&self, key: &DeliveryKey, outcome: &DeliveryOutcome) -> Result<(), StoreError>;

    /// The delivery log, newest first, live records only.
    async fn list(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;

    /// Store (or overwrite: the worker may redo an event) the activity of one delivery.
    async fn put_activity(&self, activity: &Activity) -> Result<(), StoreError>;

    /// Activity records, newest first.
    async fn list_activities(&self, limit: usize) -> Result<Vec<Activity>, StoreError>;

    /// Say whose delivery it is (the worker learns a Stripe event's org when it applies it).
    async fn set_owner(&self, key: &DeliveryKey, owner: &Owner) -> Result<(), StoreError>;

    /// One org's deliveries, newest first, filtered; live records only.
    async fn list_org(&self, query: &LogQuery) -> Result<LogPage, StoreError>;

    /// Total and failed live deliveries of one connection of `org_id`, and the newest one's time.
    async fn count_connection(
        &self,
        org_id: &str,
        connection_id: &str,
        now: DateTime<Utc>,
    ) -> Result<LogCounts, StoreError>;

    /// A replay: a processed, skipped or failed delivery whose worker is done with it goes
    /// back to `queued` (the worker's claim then counts a new attempt). So does one stuck
    /// where no message will come for it: `received` once its enqueue lease has ended (the
    /// request that recorded it died before queueing it), or `queued` since before
    /// `queued_before` (its message was lost, e.g. a replay whose send and restore both failed).
    async fn reopen(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        queued_before: DateTime<Utc>,
    ) -> Result<Reopen, StoreError>;

    /// Keep the payload (overwriting one kept before under the same key).
    async fn put_payload(
        &self,
        key: &DeliveryKey,
        payload: &StoredPayload,
    ) -> Result<(), StoreError>;

    /// The payload, unless none was kept or it expired by `now`.
    async fn get_payload(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredPayload>, StoreError>;

    /// Delete payloads expired by `now`; how many went. (DynamoDB's TTL does this itself.)
    async fn prune_payloads(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}
