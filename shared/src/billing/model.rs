//! What Hookline keeps of an org's billing: its Stripe customer, its subscription, its invoices
//! and refunds, the events it could not place yet, and what it used this month. Every record
//! that Stripe events change carries the [`Version`] of the event it came from, so an older
//! event (Stripe sends them out of order and more than once) never overwrites a newer state.

use super::tiers::Tier;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a record's state came from: the Stripe event's `created` (epoch seconds), and a rank
/// that orders events of the same second (`created` before `updated` before `deleted`; an
/// invoice `draft` before `open` before `paid`/`void`). Newer or equal wins (an equal version
/// is the same state again); older never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub at: i64,
    pub rank: u8,
}

impl Version {
    pub const fn new(at: i64, rank: u8) -> Self {
        Self { at, rank }
    }

    /// One number with the same order (for a store's conditional write).
    pub fn as_i64(self) -> i64 {
        self.at
            .saturating_mul(16)
            .saturating_add(i64::from(self.rank.min(15)))
    }

    pub fn from_i64(v: i64) -> Self {
        Self {
            at: v.div_euclid(16),
            rank: v.rem_euclid(16) as u8,
        }
    }
}

/// A Stripe subscription's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// The org's subscription as the newest event (or reconciliation) left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// Stripe's `sub_…`.
    pub id: String,
    /// Stripe's `cus_…`.
    pub customer_id: String,
    pub status: SubscriptionStatus,
    /// The first item's `price.id` (or `plan.id`), as Stripe sent it.
    pub price_id: Option<String>,
    /// The tier that price maps to (`free` when it maps to none).
    pub tier: Tier,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub version: Version,
    /// The event (or `reconcile`) that wrote this state.
    pub source: String,
}

/// One org's billing account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillingAccount {
    pub org_id: String,
    /// Stripe's `cus_…`, once Hookline created (or an event linked) it.
    pub customer_id: Option<String>,
    pub subscription: Option<Subscription>,
}

/// An invoice of the org's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    /// Stripe's `in_…`.
    pub id: String,
    pub org_id: String,
    pub customer_id: String,
    pub subscription_id: Option<String>,
    pub number: Option<String>,
    /// `draft`, `open`, `paid`, `void`, `uncollectible`.
    pub status: String,
    pub currency: String,
    /// Minor units (cents), as Stripe counts.
    pub amount_due: i64,
    pub amount_paid: i64,
    pub amount_remaining: i64,
    pub hosted_invoice_url: Option<String>,
    pub created: DateTime<Utc>,
    pub version: Version,
}

/// A refund of one of the org's charges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    /// Stripe's `re_…`.
    pub id: String,
    pub org_id: String,
    /// Stripe's `ch_…`.
    pub charge_id: String,
    pub currency: String,
    pub amount: i64,
    /// `pending`, `succeeded`, `failed`, `canceled`.
    pub status: String,
    pub created: DateTime<Utc>,
    pub version: Version,
}

/// A Stripe event for a customer no org is linked to yet: kept whole (it was verified and
/// deduped on the way in) until reconciliation finds its org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// Stripe's `evt_…`.
    pub event_id: String,
    pub customer_id: String,
    pub received_at: DateTime<Utc>,
    /// The event's JSON as Stripe sent it.
    pub payload: String,
}

/// What is counted per org and calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageMetric {
    /// Events published into the org's outbound stream (limited by `events_per_month`).
    EventsPublished,
    /// Inbound provider deliveries for the org's connections (counted, never refused).
    InboundDeliveries,
}

impl UsageMetric {
    pub const ALL: [UsageMetric; 2] = [Self::EventsPublished, Self::InboundDeliveries];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventsPublished => "events_published",
            Self::InboundDeliveries => "inbound_deliveries",
        }
    }
}

/// The month a usage count belongs to, `YYYY-MM` in UTC.
pub fn usage_period(at: DateTime<Utc>) -> String {
    at.format("%Y-%m").to_string()
}

/// An org's counts for one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub period: String,
    pub events_published: u64,
    pub inbound_deliveries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_orders_by_second_then_rank_and_survives_its_number() {
        let a = Version::new(1_700_000_000, 1);
        let b = Version::new(1_700_000_000, 2);
        let c = Version::new(1_700_000_001, 0);
        assert!(a < b && b < c);
        assert!(a.as_i64() < b.as_i64() && b.as_i64() < c.as_i64());
        for v in [a, b, c, Version::new(0, 0)] {
            assert_eq!(Version::from_i64(v.as_i64()), v);
        }
    }

    #[test]
    fn stripe_statuses_parse_by_their_wire_names() {
        assert_eq!(
            SubscriptionStatus::parse("past_due"),
            Some(SubscriptionStatus::PastDue)
        );
        assert_eq!(SubscriptionStatus::parse("bogus"), None);
        assert_eq!(
            SubscriptionStatus::IncompleteExpired.as_str(),
            "incomplete_expired"
        );
    }
}
