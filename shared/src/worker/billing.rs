//! Stripe deliveries: the billing service applies each (subscription state, invoices,
//! refunds, owner mails), and the activity log records it like any other delivery.

use super::activity::RecordActivity;
use super::{Event, FieldPath, Handled, Handler, WorkerError};
use crate::billing::service::{Applied, Billing, Error};
use crate::model::{Envelope, Owner};
use crate::ports::store::DeliveryStore;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub struct BillingEvents {
    billing: Arc<Billing>,
    activity: RecordActivity,
    /// Where the delivery is put in its org's log once the event names the org.
    store: Arc<dyn DeliveryStore>,
}

impl BillingEvents {
    pub fn new(
        billing: Arc<Billing>,
        activity: RecordActivity,
        store: Arc<dyn DeliveryStore>,
    ) -> Self {
        Self {
            billing,
            activity,
            store,
        }
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
            // The org's own billing event: it joins that org's delivery log.
            Ok(Applied::Applied { org_id } | Applied::Stale { org_id }) => {
                let owner = Owner {
                    org_id,
                    connection_id: None,
                    repository_full_name: None,
                };
                self.store.set_owner(&event.envelope.key(), &owner).await?;
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

    fn fields(&self, envelope: &Envelope) -> Vec<FieldPath> {
        self.activity.fields(envelope)
    }
}
