//! The billing store: each org's Stripe customer and subscription, its invoices and refunds,
//! the Stripe events kept until their customer is linked to an org, and the monthly usage
//! counts the limits are checked against. Writes that Stripe events drive are conditional on
//! the record's [`Version`]: an older event never overwrites a newer state.

use crate::billing::model::{
    BillingAccount, Invoice, ParkedEvent, Refund, Subscription, Usage, UsageMetric,
};
use async_trait::async_trait;

pub mod aws;
pub mod conformance;
pub mod embedded;

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("billing store unavailable: {0}")]
    Unavailable(String),
    /// The Stripe customer is already linked to another org.
    #[error("customer {customer_id} belongs to another org")]
    CustomerTaken { customer_id: String },
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

#[async_trait]
pub trait BillingStore: Send + Sync + 'static {
    /// The org's account; `None` before it has a customer or a subscription.
    async fn get_account(&self, org_id: &str) -> Result<Option<BillingAccount>, BillingError>;

    /// Link the Stripe customer to the org, once: the customer id the org has afterwards —
    /// `customer_id`, or the one linked before (which wins; of concurrent calls exactly one
    /// links). `CustomerTaken` when another org has this customer.
    async fn link_customer(&self, org_id: &str, customer_id: &str) -> Result<String, BillingError>;

    /// The org a Stripe customer is linked to.
    async fn org_for_customer(&self, customer_id: &str) -> Result<Option<String>, BillingError>;

    /// Save the org's subscription unless the stored one is the same subscription with a
    /// newer `version`; true when written (an equal version is written again: the same
    /// state). Another subscription replaces the stored one whatever the versions: which of
    /// an org's two subscriptions counts is the service's choice. Also links its customer to
    /// the org when the org has none yet.
    async fn put_subscription(
        &self,
        org_id: &str,
        subscription: &Subscription,
    ) -> Result<bool, BillingError>;

    /// Save the invoice unless the stored one has a newer `version`; true when written.
    async fn put_invoice(&self, invoice: &Invoice) -> Result<bool, BillingError>;

    /// The org's invoices, newest (`created`) first, at most `limit`.
    async fn list_invoices(&self, org_id: &str, limit: usize)
        -> Result<Vec<Invoice>, BillingError>;

    /// Save the refund unless the stored one has a newer `version`; true when written.
    async fn put_refund(&self, refund: &Refund) -> Result<bool, BillingError>;

    /// The org's refunds, newest (`created`) first, at most `limit`.
    async fn list_refunds(&self, org_id: &str, limit: usize) -> Result<Vec<Refund>, BillingError>;

    /// Keep an event whose customer is not linked to any org (again: the same id keeps one).
    async fn park_event(&self, event: &ParkedEvent) -> Result<(), BillingError>;

    /// Up to `limit` parked events, oldest first.
    async fn parked_events(&self, limit: usize) -> Result<Vec<ParkedEvent>, BillingError>;

    /// Forget a parked event (it was applied).
    async fn remove_parked(&self, event_id: &str) -> Result<(), BillingError>;

    /// Count `n` more of `metric` for the org in `period` (`YYYY-MM`), atomically, unless the
    /// count would then pass `limit`: the new count, or `None` (nothing counted) when it would.
    /// With `limit: None` it always counts.
    async fn add_usage(
        &self,
        org_id: &str,
        period: &str,
        metric: UsageMetric,
        n: u64,
        limit: Option<u64>,
    ) -> Result<Option<u64>, BillingError>;

    /// Give back `n` of `metric` counted by `add_usage` for work that then did not happen
    /// (never below zero).
    async fn remove_usage(
        &self,
        org_id: &str,
        period: &str,
        metric: UsageMetric,
        n: u64,
    ) -> Result<(), BillingError>;

    /// The org's counts in `period` (zeros when nothing was counted).
    async fn usage(&self, org_id: &str, period: &str) -> Result<Usage, BillingError>;
}

/// A record that does not parse, named by key (serde's message can quote the value).
#[allow(dead_code)] // used by the adapters
pub(crate) fn json_corrupt(key: impl Into<String>, e: &serde_json::Error) -> BillingError {
    BillingError::Corrupt {
        key: key.into(),
        reason: format!(
            "unreadable record ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    }
}
