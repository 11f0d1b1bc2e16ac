//! Stripe deliveries: the billing service applies each (subscription state, invoices,
//! refunds, owner mails), and the activity log records it like any other delivery.

use super::activity::RecordActivity;
use super::{Event, Handled, Handler, WorkerError};
use crate::billing::service::{Applied, Billing, Error};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub struct BillingEvents {
    billing: Arc<Billing>,
    activity: RecordActivity,
}

impl BillingEvents {
    pub fn new(billing: Arc<Billing>, activity: RecordActivity) -> Self {
        Self { billing, activity }
    }
}

#[async_trait]
impl Handler for BillingEvents {
    async fn handle(&self, event: &Event, now: DateTime<Utc>) -> Result<Handled, WorkerError> {
        let raw = event
            .envelope
            .raw_body()
            .map_err(|_| WorkerError::Malformed("the body is not valid base64".into()))?;
        match self.billing.apply_event(&raw).await {
            Ok(Applied::Parked) => {
                tracing::info!("Stripe event kept until its customer is linked to an org")
            }
            Ok(_) => {}
            // A malformed event is recorded and not retried; a store that failed is retried.
            Err(Error::Invalid(why)) => {
                tracing::warn!(reason = %why, "a Stripe event Hookline cannot read")
            }
            Err(e) => return Err(WorkerError::Handler(e.to_string())),
        }
        self.activity.handle(event, now).await
    }
}
