//! The delivery store: idempotent delivery records, their status transitions and TTL, the
//! delivery log, and the worker's activity records.

use crate::model::{Activity, Delivery, DeliveryKey, DeliveryOutcome, NewDelivery, Source};
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
    pub limit: usize,
}

impl Default for DeliveryQuery {
    fn default() -> Self {
        Self {
            source: None,
            limit: 50,
        }
    }
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
}
