//! The billing service: Stripe events keep each org's subscription, invoices and refunds
//! current and mail its owner about money; Checkout and the Customer Portal are one call
//! away; entitlements say what the org may use, and [`PlanGate`] enforces them where
//! Hookline hands things out. Reconciliation repairs what a missed webhook left behind.

use super::model::{BillingAccount, Subscription, SubscriptionStatus, Version};
use super::plan::Plans;
use super::stripe::{CheckoutRequest, Session, StripeClient, StripeError};
use super::stripe_events::{self, Change, PriceMap, StripeEvent};
use super::tiers::{Limits, Tier};
use crate::clock::Clock;
use crate::outbound::notify::Notifier;
use crate::ports::billing::{BillingError, BillingStore};
use crate::ports::connections::ConnectionStore;
use crate::ports::orgs::OrgStore;
use crate::ports::outbound::OutboundStore;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

/// Why a billing call failed; the API maps each to one status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 422: the request cannot be taken as it is.
    #[error("{0}")]
    Invalid(String),
    /// 409: the org is not in the state the call needs (no Stripe customer yet).
    #[error("{0}")]
    Conflict(String),
    /// 502: Stripe refused or could not be reached; its message, never the key.
    #[error("Stripe: {0}")]
    Stripe(String),
    /// 503: billing is not configured here (no Stripe key), or a store failed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StripeError> for Error {
    fn from(e: StripeError) -> Self {
        match e {
            StripeError::Api { message, .. } => Error::Stripe(message),
            StripeError::Transport(why) => Error::Stripe(why),
        }
    }
}

impl From<BillingError> for Error {
    fn from(e: BillingError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

/// What an org may use, and why (`GET /api/v1/billing/entitlements/{org_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Entitlements {
    pub org_id: String,
    pub tier: Tier,
    /// The subscription's Stripe status (`active`, `past_due`, …), `none` without one;
    /// `licensed` / `unlicensed` on a licence; `unlimited` in local development.
    pub status: String,
    pub features: Vec<String>,
    pub limits: Limits,
    pub usage: UsageView,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    /// `stripe`, `licence` or `unlimited`.
    pub source: &'static str,
    /// Why the tier is not what the subscription or licence names (a cancelled or unpaid
    /// subscription, an expired licence), or why nothing is limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageView {
    /// The calendar month (UTC) the monthly counts are for, `YYYY-MM`.
    pub period: String,
    pub repositories: u64,
    pub endpoints: u64,
    pub events_per_month: u64,
    /// Inbound provider deliveries for the org's connected repositories this month: counted,
    /// never limited.
    pub inbound_deliveries: u64,
}

/// What one Stripe event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Kept for its org (and the owner mailed where seed 000 says so).
    Applied { org_id: String },
    /// Older than what is kept: nothing changed.
    Stale { org_id: String },
    /// Its customer is not linked to an org yet: kept for reconciliation.
    Parked,
    /// Not one of the events Hookline acts on.
    Ignored,
}

/// What a reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    pub subscriptions_seen: usize,
    pub repaired: usize,
    pub parked_applied: usize,
    pub unknown_customers: usize,
}

pub struct Billing {
    store: Arc<dyn BillingStore>,
    orgs: Arc<dyn OrgStore>,
    notifier: Arc<Notifier>,
    stripe: Option<StripeClient>,
    /// Counted for entitlements' usage (repositories).
    connections: Arc<dyn ConnectionStore>,
    /// Counted for entitlements' usage (endpoints).
    outbound: Arc<dyn OutboundStore>,
    plans: Arc<Plans>,
    prices: PriceMap,
    clock: Arc<dyn Clock>,
}

/// The notice key of the mail an event sends: one per event, ever.
fn notice_key(event_id: &str) -> String {
    format!("stripe#{event_id}")
}

impl Billing {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn BillingStore>,
        orgs: Arc<dyn OrgStore>,
        notifier: Arc<Notifier>,
        stripe: Option<StripeClient>,
        connections: Arc<dyn ConnectionStore>,
        outbound: Arc<dyn OutboundStore>,
        plans: Arc<Plans>,
        prices: PriceMap,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            orgs,
            notifier,
            stripe,
            connections,
            outbound,
            plans,
            prices,
            clock,
        }
    }

    pub fn plans(&self) -> &Arc<Plans> {
        &self.plans
    }

    // ---- Stripe events ------------------------------------------------------------------

    /// Apply one verified (and deduped) Stripe event. An `Err` is a store that failed: the
    /// queue retries the event. A mail failure is logged and never fails the event.
    pub async fn apply_event(&self, payload: &[u8]) -> Result<Applied, Error> {
        self.apply(payload, true).await
    }

    async fn apply(&self, payload: &[u8], mail: bool) -> Result<Applied, Error> {
        let event = StripeEvent::parse(payload).map_err(Error::Invalid)?;
        if !stripe_events::HANDLED.contains(&event.event_type.as_str()) {
            return Ok(Applied::Ignored);
        }
        let Some(org_id) = self.org_of(&event).await? else {
            let customer_id = event.customer_id().unwrap_or_default();
            tracing::warn!(event = %event.id, kind = %event.event_type, customer = %customer_id, "a Stripe event for a customer no org has; kept for reconciliation");
            self.store
                .park_event(&super::model::ParkedEvent {
                    event_id: event.id.clone(),
                    customer_id,
                    received_at: self.clock.now(),
                    payload: String::from_utf8_lossy(payload).into_owned(),
                })
                .await?;
            return Ok(Applied::Parked);
        };
        let change =
            stripe_events::change(&event, &org_id, &self.prices).map_err(Error::Invalid)?;
        let written = match change {
            Change::CheckoutCompleted { customer_id } => {
                self.link(&org_id, &customer_id).await?;
                true
            }
            Change::Subscription(sub) => {
                let before = self.store.get_account(&org_id).await?;
                // A customer holds two subscriptions for a while when it changes plan through
                // a second Checkout: events about the one that is ending never replace the
                // one that goes on, whichever Stripe sent (or delivered) last.
                // Between two subscriptions the store lets either replace the other, keeping
                // each one's own version (so its later events still apply): this decides.
                let kept = before.as_ref().and_then(|a| a.subscription.as_ref());
                if let Some(kept) = kept.filter(|k| k.id != sub.id) {
                    let newer = (sub.version, standing(&sub)) >= (kept.version, standing(kept));
                    if standing(&sub) < standing(kept)
                        || (standing(&sub) == standing(kept) && !newer)
                    {
                        tracing::info!(event = %event.id, org = %org_id, subscription = %sub.id, kept = %kept.id, "a Stripe event about a subscription the org is leaving; the live one is kept");
                        return Ok(Applied::Stale { org_id });
                    }
                }
                let written = self.store.put_subscription(&org_id, &sub).await?;
                if written && mail {
                    self.mail_subscription(&event, &org_id, before.as_ref(), &sub)
                        .await;
                }
                written
            }
            Change::Invoice(invoice) => {
                let written = self.store.put_invoice(&invoice).await?;
                // A receipt is owed even when a later update of the invoice came first (the
                // notice key still sends it once); an alert for a stale failure is not.
                if (written || event.event_type == "invoice.paid") && mail {
                    self.mail_invoice(&event, &invoice).await;
                }
                written
            }
            Change::RefundsOf { charge_id } => {
                let Some(stripe) = &self.stripe else {
                    tracing::warn!(event = %event.id, charge = %charge_id, "a refunded charge without its refunds, and no Stripe key to ask for them");
                    return Ok(Applied::Ignored);
                };
                let listed = stripe.charge_refunds(&charge_id).await.map_err(|e| {
                    // Retried by the queue: the refunds are Stripe's to tell.
                    Error::Unavailable(format!("listing the refunds of {charge_id}: {e}"))
                })?;
                let mut any = false;
                for o in &listed {
                    match stripe_events::refund(o, &org_id, Some(&charge_id), event.version()) {
                        Ok(r) => any |= self.store.put_refund(&r).await?,
                        Err(why) => {
                            tracing::warn!(reason = %why, "a refund Stripe listed cannot be read")
                        }
                    }
                }
                any || listed.is_empty()
            }
            Change::Refunds(refunds) => {
                let mut any = false;
                for r in &refunds {
                    any |= self.store.put_refund(r).await?;
                }
                any || refunds.is_empty()
            }
            Change::Ignored => return Ok(Applied::Ignored),
        };
        tracing::info!(event = %event.id, kind = %event.event_type, org = %org_id, written, "Stripe event applied");
        Ok(if written {
            crate::telemetry::stripe_event_applied(&event.event_type);
            Applied::Applied { org_id }
        } else {
            Applied::Stale { org_id }
        })
    }

    /// The org an event belongs to: the customer already linked to an org, else the org the
    /// object names in its metadata (Hookline sets `metadata.org_id` on everything it
    /// creates), which links the customer to it. Never guessed beyond that.
    async fn org_of(&self, event: &StripeEvent) -> Result<Option<String>, Error> {
        let customer = match event.customer_id() {
            Some(c) => Some(c),
            None => self.customer_of_refund(event).await?,
        };
        if let Some(c) = &customer {
            if let Some(org) = self.store.org_for_customer(c).await? {
                return Ok(Some(org));
            }
        }
        let Some(named) = event.named_org() else {
            return Ok(None);
        };
        if let Some(c) = &customer {
            if !self.link(&named, c).await? {
                return Ok(None);
            }
        }
        Ok(Some(named))
    }

    /// A refund names its charge, not its customer: the charge's customer, from Stripe.
    async fn customer_of_refund(&self, event: &StripeEvent) -> Result<Option<String>, Error> {
        let (Some("refund"), Some(charge), Some(stripe)) = (
            event.object["object"].as_str(),
            event.object["charge"].as_str(),
            &self.stripe,
        ) else {
            return Ok(None);
        };
        let charge = stripe
            .get_charge(charge)
            .await
            .map_err(|e| Error::Unavailable(format!("reading the charge of a refund: {e}")))?;
        Ok(charge["customer"].as_str().map(str::to_owned))
    }

    /// Link a customer to the org; false (logged) when the org already has another customer
    /// or the customer another org.
    async fn link(&self, org_id: &str, customer_id: &str) -> Result<bool, Error> {
        match self.store.link_customer(org_id, customer_id).await {
            Ok(linked) if linked == customer_id => Ok(true),
            Ok(other) => {
                tracing::warn!(org = %org_id, customer = %customer_id, linked = %other, "the org already has another Stripe customer; the event is kept aside");
                Ok(false)
            }
            Err(BillingError::CustomerTaken { .. }) => {
                tracing::warn!(org = %org_id, customer = %customer_id, "the customer belongs to another org; the event is kept aside");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn mail_subscription(
        &self,
        event: &StripeEvent,
        org_id: &str,
        before: Option<&BillingAccount>,
        after: &Subscription,
    ) {
        let now = self.clock.now();
        let tier_before = before
            .and_then(|a| a.subscription.as_ref())
            .map(|s| super::plan::effective_tier(Some(s), now).0)
            .unwrap_or(Tier::Free);
        let tier_after = super::plan::effective_tier(Some(after), now).0;
        let (subject, text) = match event.event_type.as_str() {
            "customer.subscription.updated" if tier_before != tier_after => (
                format!("Your Hookline plan is now {tier_after}"),
                format!(
                    "Your organisation's Hookline subscription changed from {tier_before} to {tier_after}.\n\nWhat each plan includes: GET /api/v1/billing/entitlements/{org_id}\n"
                ),
            ),
            "customer.subscription.deleted" => (
                "Your Hookline subscription was cancelled".to_owned(),
                format!(
                    "Your organisation's Hookline subscription ({}) was cancelled; it now runs on the free plan.\n\nTo subscribe again: POST /api/v1/billing/checkout\n",
                    after.id
                ),
            ),
            _ => return,
        };
        self.notifier
            .tell_owner(org_id, &notice_key(&event.id), &subject, &text)
            .await;
    }

    async fn mail_invoice(&self, event: &StripeEvent, invoice: &super::model::Invoice) {
        let number = invoice.number.as_deref().unwrap_or(&invoice.id);
        let amount = money(
            invoice.amount_paid.max(invoice.amount_due),
            &invoice.currency,
        );
        let link = invoice
            .hosted_invoice_url
            .as_deref()
            .map(|u| format!("\n\nThe invoice: {u}\n"))
            .unwrap_or_default();
        let (subject, text) = match event.event_type.as_str() {
            "invoice.paid" => (
                format!("Receipt for Hookline invoice {number}"),
                format!(
                    "Thank you: we received {} for invoice {number}.{link}",
                    money(invoice.amount_paid, &invoice.currency)
                ),
            ),
            "invoice.payment_failed" => (
                format!("Payment failed for Hookline invoice {number}"),
                format!(
                    "We could not collect {amount} for invoice {number}. Stripe will retry; to update the card, open the billing portal (POST /api/v1/billing/portal).{link}"
                ),
            ),
            _ => return,
        };
        self.notifier
            .tell_owner(&invoice.org_id, &notice_key(&event.id), &subject, &text)
            .await;
    }

    // ---- Checkout and the portal --------------------------------------------------------

    fn stripe(&self) -> Result<&StripeClient, Error> {
        self.stripe.as_ref().ok_or_else(|| {
            Error::Unavailable(
                "billing is not configured on this deployment (STRIPE_SECRET_KEY is not set)"
                    .into(),
            )
        })
    }

    /// A Checkout Session in subscription mode for `tier`'s price; the org's Stripe customer
    /// is created the first time (with `metadata.org_id` and the owner's email) and reused.
    pub async fn checkout(
        &self,
        org_id: &str,
        tier: Tier,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<Session, Error> {
        let stripe = self.stripe()?;
        let price = self.prices.price_of(tier).ok_or_else(|| {
            Error::Invalid(match tier {
                Tier::Free => "tier: free needs no checkout".to_owned(),
                t => format!(
                    "tier: {t} has no Stripe price on this deployment (STRIPE_PRICE_ID_{} is not set)",
                    t.as_str().to_uppercase()
                ),
            })
        })?;
        for (field, url) in [("success_url", success_url), ("cancel_url", cancel_url)] {
            check_url(field, url)?;
        }
        let customer = self.customer(org_id, stripe).await?;
        let key = format!("checkout-{org_id}-{}", uuid::Uuid::new_v4());
        let req = CheckoutRequest {
            customer_id: &customer,
            price_id: price,
            org_id,
            success_url,
            cancel_url,
        };
        Ok(stripe.create_checkout_session(req, &key).await?)
    }

    /// A Customer Portal session; 409 while the org has no Stripe customer.
    pub async fn portal(&self, org_id: &str, return_url: &str) -> Result<Session, Error> {
        let stripe = self.stripe()?;
        check_url("return_url", return_url)?;
        let customer = self
            .store
            .get_account(org_id)
            .await?
            .and_then(|a| a.customer_id)
            .ok_or_else(|| {
                Error::Conflict(
                    "the org has no Stripe customer yet: subscribe first (POST /api/v1/billing/checkout)"
                        .into(),
                )
            })?;
        let key = format!("portal-{org_id}-{}", uuid::Uuid::new_v4());
        Ok(stripe
            .create_portal_session(&customer, return_url, &key)
            .await?)
    }

    /// The org's Stripe customer, created once. The idempotency key is the org's, so two
    /// concurrent first checkouts make one customer at Stripe; the link decides which one
    /// the org keeps if they ever differ.
    async fn customer(&self, org_id: &str, stripe: &StripeClient) -> Result<String, Error> {
        if let Some(c) = self
            .store
            .get_account(org_id)
            .await?
            .and_then(|a| a.customer_id)
        {
            return Ok(c);
        }
        let profile = self
            .orgs
            .get_org(org_id)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let email = profile.as_ref().and_then(|p| p.owner_email.as_deref());
        let name = profile.as_ref().and_then(|p| p.name.as_deref());
        let created = stripe
            .create_customer(org_id, email, name, &format!("customer-{org_id}"))
            .await?
            .id;
        match self.store.link_customer(org_id, &created).await {
            Ok(linked) => Ok(linked),
            Err(BillingError::CustomerTaken { .. }) => Err(Error::Conflict(
                "Stripe answered with a customer that belongs to another org".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    // ---- entitlements -------------------------------------------------------------------

    /// The tier the org runs on now, its limits and features, what it uses, and why.
    pub async fn entitlements(&self, org_id: &str) -> Result<Entitlements, Error> {
        let now = self.clock.now();
        let period = super::model::usage_period(now);
        let current = self.plans.current(org_id).await?;
        let usage = self.store.usage(org_id, &period).await?;
        Ok(Entitlements {
            org_id: org_id.to_owned(),
            tier: current.tier,
            status: current.status,
            features: current.features,
            limits: current.limits,
            usage: UsageView {
                repositories: crate::ports::connections::count_connections(
                    self.connections.as_ref(),
                    org_id,
                    None,
                )
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?,
                endpoints: self
                    .outbound
                    .count_endpoints(org_id)
                    .await
                    .map_err(|e| Error::Unavailable(e.to_string()))?,
                events_per_month: usage.events_published,
                inbound_deliveries: usage.inbound_deliveries,
                period,
            },
            current_period_end: current.period_end,
            cancel_at_period_end: current.cancel_at_period_end,
            source: self.plans.source().name(),
            reason: current.reason,
        })
    }

    // ---- reconciliation -----------------------------------------------------------------

    /// List subscriptions from Stripe (all, or `org`'s customer's) and repair the state a
    /// missed webhook left; then apply the events kept for customers linked since. Each
    /// repair is logged; nobody is mailed.
    pub async fn reconcile(&self, org: Option<&str>) -> Result<Reconciled, Error> {
        let stripe = self.stripe()?;
        let mut done = Reconciled::default();
        let customer = match org {
            Some(o) => match self.store.get_account(o).await?.and_then(|a| a.customer_id) {
                Some(c) => Some(c),
                None => return Ok(done),
            },
            None => None,
        };
        // The listing is the truth as of when it began: it outranks every event created before
        // then, never one Stripe created while the pages were being read.
        let version = Version::new(self.clock.now().timestamp(), 0);
        let listed = stripe
            .subscriptions(customer.as_deref(), super::stripe::MAX_PAGE)
            .await?;
        done.subscriptions_seen = listed.len();
        let mut best: std::collections::BTreeMap<String, (Subscription, i64)> = Default::default();
        for o in &listed {
            let sub = match stripe_events::subscription(o, &self.prices, version, "reconcile") {
                Ok(s) => s,
                Err(why) => {
                    tracing::warn!(reason = %why, "reconcile: a subscription Stripe listed cannot be read");
                    continue;
                }
            };
            let named = o["metadata"]["org_id"].as_str().map(str::to_owned);
            let org_id = match self.store.org_for_customer(&sub.customer_id).await? {
                Some(org) => org,
                None => match named {
                    Some(n) if self.link(&n, &sub.customer_id).await? => n,
                    _ => {
                        done.unknown_customers += 1;
                        tracing::warn!(customer = %sub.customer_id, subscription = %sub.id, "reconcile: a subscription for a customer no org has");
                        continue;
                    }
                },
            };
            if org.is_some_and(|o| o != org_id) {
                continue;
            }
            // A customer may have several (an old cancelled one beside the live one): the
            // live one, then the newest, decides.
            let created = o["created"].as_i64().unwrap_or(0);
            // The same choice the events make (`standing`), then the newest.
            let rank = |s: &Subscription, c: i64| (standing(s), c);
            match best.get(&org_id) {
                Some((kept, c)) if rank(kept, *c) >= rank(&sub, created) => {}
                _ => {
                    best.insert(org_id, (sub, created));
                }
            }
        }
        for (org_id, (sub, _)) in best {
            let stored = self
                .store
                .get_account(&org_id)
                .await?
                .and_then(|a| a.subscription);
            let drifted = stored.as_ref().is_none_or(|s| {
                (
                    s.id.as_str(),
                    s.status,
                    s.tier,
                    s.current_period_end,
                    s.cancel_at_period_end,
                ) != (
                    sub.id.as_str(),
                    sub.status,
                    sub.tier,
                    sub.current_period_end,
                    sub.cancel_at_period_end,
                )
            });
            if drifted && self.store.put_subscription(&org_id, &sub).await? {
                done.repaired += 1;
                tracing::warn!(
                    org = %org_id,
                    subscription = %sub.id,
                    was = stored.as_ref().map(|s| s.status.as_str()).unwrap_or("nothing"),
                    now = sub.status.as_str(),
                    tier = %sub.tier,
                    "reconcile: repaired the subscription a missed webhook left behind"
                );
            }
        }
        for parked in self
            .store
            .parked_events(crate::ports::outbound::MAX_PAGE)
            .await?
        {
            if self
                .store
                .org_for_customer(&parked.customer_id)
                .await?
                .is_none()
            {
                continue;
            }
            match self.apply(parked.payload.as_bytes(), false).await {
                Ok(_) | Err(Error::Invalid(_)) => {
                    self.store.remove_parked(&parked.event_id).await?;
                    done.parked_applied += 1;
                    tracing::info!(event = %parked.event_id, "reconcile: applied an event kept until its customer was linked");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Which of two subscriptions of one org decides its tier: the live one, then the one not
/// cancelling at its period's end, then the higher tier.
fn standing(s: &Subscription) -> (u8, bool, Tier) {
    (live(s.status), !s.cancel_at_period_end, s.tier)
}

/// Live subscriptions outrank ended ones when a customer has several.
fn live(status: SubscriptionStatus) -> u8 {
    match status {
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => 3,
        SubscriptionStatus::PastDue => 2,
        SubscriptionStatus::Incomplete
        | SubscriptionStatus::Unpaid
        | SubscriptionStatus::Paused => 1,
        SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired => 0,
    }
}

fn check_url(field: &str, url: &str) -> Result<(), Error> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "https" | "http") => Ok(()),
        _ => Err(Error::Invalid(format!(
            "{field}: must be an absolute http(s) URL"
        ))),
    }
}

/// Minor units as a person reads them ("49.00 USD").
fn money(minor: i64, currency: &str) -> String {
    format!(
        "{}.{:02} {}",
        minor / 100,
        (minor % 100).abs(),
        currency.to_uppercase()
    )
}
