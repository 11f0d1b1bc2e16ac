//! Replays a person asks for: one more attempt at a delivery now, whatever its status, or
//! every delivery of an endpoint that failed or was dead-lettered since a moment (after the
//! receiver was fixed). Each is a manual attempt the deliverer makes like any other.

use super::dispatch::AttemptQueue;
use super::model::{Delivery, DeliveryId, DeliveryStatus, EndpointId};
use super::Error;
use crate::ports::outbound::{DeliveryFilter, OutboundStore, MAX_PAGE};
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub struct Replay {
    store: Arc<dyn OutboundStore>,
    deliveries: AttemptQueue,
}

/// At most this many deliveries are resent by one recover call.
pub const MAX_RECOVER: usize = 10_000;

impl Replay {
    pub fn new(store: Arc<dyn OutboundStore>, deliveries: AttemptQueue) -> Self {
        Self { store, deliveries }
    }

    /// Queue one more attempt at the delivery, now.
    pub async fn retry(&self, org_id: &str, id: &DeliveryId) -> Result<Delivery, Error> {
        let d = self
            .store
            .get_delivery(org_id, id)
            .await?
            .ok_or(Error::NotFound)?;
        self.endpoint_enabled(org_id, &d.endpoint_id).await?;
        self.queue(&d).await?;
        Ok(d)
    }

    /// Resend every delivery of the endpoint that is `failed` or `dead_lettered` and was
    /// created at or after `since`; how many were queued.
    pub async fn recover(
        &self,
        org_id: &str,
        endpoint: &EndpointId,
        since: DateTime<Utc>,
    ) -> Result<usize, Error> {
        self.endpoint_enabled(org_id, endpoint).await?;
        let mut queued = 0;
        for status in [DeliveryStatus::Failed, DeliveryStatus::DeadLettered] {
            let filter = DeliveryFilter {
                endpoint_id: Some(endpoint.clone()),
                status: Some(status),
                since: Some(since),
                ..DeliveryFilter::default()
            };
            let mut cursor = None;
            loop {
                let (page, next) = self
                    .store
                    .list_deliveries(org_id, &filter, MAX_PAGE, cursor)
                    .await?;
                for d in &page {
                    if queued >= MAX_RECOVER {
                        return Ok(queued);
                    }
                    self.queue(d).await?;
                    queued += 1;
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        Ok(queued)
    }

    async fn endpoint_enabled(&self, org_id: &str, id: &EndpointId) -> Result<(), Error> {
        match self.store.get_endpoint(org_id, id).await? {
            Some(e) if e.enabled => Ok(()),
            Some(e) => Err(Error::Invalid(format!(
                "endpoint {} is disabled{}: enable it first with PATCH /api/v1/endpoints/{} {{\"enabled\": true}}",
                e.id,
                e.disabled_reason
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                e.id
            ))),
            None => Err(Error::NotFound),
        }
    }

    async fn queue(&self, d: &Delivery) -> Result<(), Error> {
        self.deliveries.manual(d).await
    }
}
