//! Where an org's tier comes from, what it is entitled to, and the gate the services that
//! hand things out (repositories, endpoints, published events) ask before they do.

use super::licence::{LicenceClaims, LicenceVerifier};
use super::model::{usage_period, Subscription, SubscriptionStatus, UsageMetric};
use super::tiers::{Limits, Tier, TierTable};
use crate::clock::Clock;
use crate::ports::billing::{BillingError, BillingStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Arc, RwLock};

/// Where tiers come from on this deployment.
pub enum TierSource {
    /// SaaS (`STRIPE_SECRET_KEY` set): each org's Stripe subscription.
    Stripe,
    /// Self-hosted: the deployment's licence (`HOOKLINE_LICENSE`, checked with
    /// `LICENSE_PUBLIC_KEY` at start and daily).
    Licence(Box<InstalledLicence>),
    /// Local development (neither): nothing is limited.
    Unlimited,
}

impl TierSource {
    pub fn name(&self) -> &'static str {
        match self {
            TierSource::Stripe => "stripe",
            TierSource::Licence(_) => "licence",
            TierSource::Unlimited => "unlimited",
        }
    }
}

/// The installed licence and what its last check found.
pub struct InstalledLicence {
    token: String,
    verifier: Option<LicenceVerifier>,
    /// When it was last verified, and the claims or why the licence does not count (the
    /// deployment falls back to `free`).
    checked: RwLock<(DateTime<Utc>, Result<LicenceClaims, String>)>,
}

/// How long a verification stands before the licence is verified again.
pub const LICENCE_CHECK_EVERY: chrono::Duration = chrono::Duration::days(1);

impl InstalledLicence {
    /// The licence and its public key as configured; `public_key` is `LICENSE_PUBLIC_KEY`'s
    /// text. A key that cannot be read leaves the licence refused (and says why) rather than
    /// failing the start.
    pub fn new(token: &str, public_key: Option<&str>, now: DateTime<Utc>) -> Self {
        let (verifier, problem) = match public_key.map(LicenceVerifier::from_base64) {
            Some(Ok(v)) => (Some(v), None),
            Some(Err(e)) => (
                None,
                Some(format!("LICENSE_PUBLIC_KEY cannot be read: {e}")),
            ),
            None => (
                None,
                Some("HOOKLINE_LICENSE is set but LICENSE_PUBLIC_KEY is not".to_owned()),
            ),
        };
        let this = Self {
            token: token.trim().to_owned(),
            verifier,
            checked: RwLock::new((now, Err(problem.clone().unwrap_or_default()))),
        };
        if problem.is_none() {
            this.check(now);
        } else {
            tracing::warn!(
                reason = problem.as_deref().unwrap_or(""),
                "the licence is not in force; the free tier applies"
            );
        }
        this
    }

    /// Verify the licence again (at start, then daily): an expired or invalid licence falls
    /// back to `free`, with a log line that says why.
    pub fn check(&self, now: DateTime<Utc>) {
        let Some(verifier) = &self.verifier else {
            return;
        };
        let result = verifier
            .verify(&self.token, now)
            .map_err(|e| format!("the licence is not valid: {e}"));
        match &result {
            Ok(c) => {
                tracing::info!(org = %c.sub, tier = %c.tier, expires = %c.expires_at(), "licence in force")
            }
            Err(why) => {
                tracing::warn!(reason = %why, "the licence is not in force; the free tier applies")
            }
        }
        *self.checked.write().unwrap_or_else(|p| p.into_inner()) = (now, result);
    }

    /// The licence's claims at `now`, or why it does not count. It is verified again once a
    /// day has passed since the last check (so a Lambda that stays warm checks daily too), and
    /// stops counting the moment it expires, whenever the last check was.
    pub fn state(&self, now: DateTime<Utc>) -> Result<LicenceClaims, String> {
        let stale = {
            let checked = self.checked.read().unwrap_or_else(|p| p.into_inner());
            now - checked.0 >= LICENCE_CHECK_EVERY
        };
        if stale {
            self.check(now);
        }
        let checked = self.checked.read().unwrap_or_else(|p| p.into_inner());
        match &checked.1 {
            Ok(c) if c.expires_at() <= now => Err(format!(
                "the licence is not valid: it expired at {}",
                c.expires_at()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            other => other.clone(),
        }
    }
}

/// Things a tier limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Limited {
    Repositories,
    Endpoints,
    EventsPerMonth,
}

impl Limited {
    pub fn of(self, limits: &Limits) -> Option<u64> {
        match self {
            Limited::Repositories => limits.repositories,
            Limited::Endpoints => limits.endpoints,
            Limited::EventsPerMonth => limits.events_per_month,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Repositories => "repositories",
            Limited::Endpoints => "endpoints",
            Limited::EventsPerMonth => "events_per_month",
        }
    }
}

/// The org's plan does not allow one more: the API answers 402.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {tier} plan allows {limit} {}; upgrade at /api/v1/billing/checkout", .what.as_str())]
pub struct PlanLimit {
    pub what: Limited,
    pub limit: u64,
    pub tier: Tier,
}

/// Why the gate said no.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Limit(#[from] PlanLimit),
    /// The billing store failed: the work fails too (503) rather than run unmetered.
    #[error("{0}")]
    Unavailable(String),
}

/// Asked by the services that hand limited things out, before they do.
#[async_trait]
pub trait PlanGate: Send + Sync + 'static {
    /// The org's limit on `what` (`None`: unlimited), for a service that counts what the org
    /// has itself and refuses one more past it with [`PlanLimit`].
    async fn limit(&self, org_id: &str, what: Limited) -> Result<Option<(u64, Tier)>, Refusal>;

    /// Count one published event against the org's month; `Limit` when the month's are used
    /// up (nothing counted then).
    async fn take_event(&self, org_id: &str) -> Result<(), Refusal>;

    /// Give back an event counted by `take_event` that was not published after all (the
    /// same id was published before).
    async fn give_back_event(&self, org_id: &str);

    /// Count one inbound provider delivery for the org (never refused; a failure is logged).
    async fn count_inbound(&self, org_id: &str);
}

/// Refuse one more past `limit` when the org has `have`.
pub fn check_limit(have: u64, what: Limited, limit: Option<(u64, Tier)>) -> Result<(), PlanLimit> {
    match limit {
        Some((limit, tier)) if have >= limit => Err(PlanLimit { what, limit, tier }),
        _ => Ok(()),
    }
}

/// The plan an org is on now, as entitlements report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub tier: Tier,
    pub status: String,
    pub features: Vec<String>,
    pub limits: Limits,
    pub period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub reason: Option<String>,
}

/// The plans in force: the tier table, where tiers come from, and the monthly usage counts
/// (the only state a limit needs beyond what the services count themselves). It is the
/// [`PlanGate`] the repository, endpoint and event services ask.
pub struct Plans {
    store: Arc<dyn BillingStore>,
    tiers: TierTable,
    source: TierSource,
    clock: Arc<dyn Clock>,
}

impl Plans {
    pub fn new(
        store: Arc<dyn BillingStore>,
        tiers: TierTable,
        source: TierSource,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            tiers,
            source,
            clock,
        }
    }

    pub fn source(&self) -> &TierSource {
        &self.source
    }

    /// Check the installed licence again (the local server and the Lambdas call this daily).
    pub fn recheck_licence(&self) {
        if let TierSource::Licence(l) = &self.source {
            l.check(self.clock.now());
        }
    }

    pub async fn current(&self, org_id: &str) -> Result<Current, BillingError> {
        let now = self.clock.now();
        let plan = |tier: Tier| self.tiers.plan(tier).clone();
        Ok(match &self.source {
            TierSource::Unlimited => Current {
                tier: Tier::Enterprise,
                status: "unlimited".into(),
                features: plan(Tier::Enterprise).features,
                limits: Limits::UNLIMITED,
                period_end: None,
                cancel_at_period_end: false,
                reason: Some(
                    "local development: no STRIPE_SECRET_KEY and no HOOKLINE_LICENSE, so nothing is limited"
                        .into(),
                ),
            },
            TierSource::Licence(licence) => match licence.state(now) {
                Ok(c) => Current {
                    tier: c.tier,
                    status: "licensed".into(),
                    period_end: Some(c.expires_at()),
                    features: c.features,
                    limits: c.limits,
                    cancel_at_period_end: false,
                    reason: None,
                },
                Err(why) => {
                    let p = plan(Tier::Free);
                    Current {
                        tier: Tier::Free,
                        status: "unlicensed".into(),
                        features: p.features,
                        limits: p.limits,
                        period_end: None,
                        cancel_at_period_end: false,
                        reason: Some(why),
                    }
                }
            },
            TierSource::Stripe => {
                let sub = self
                    .store
                    .get_account(org_id)
                    .await?
                    .and_then(|a| a.subscription);
                let (tier, reason) = effective_tier(sub.as_ref(), now);
                let p = plan(tier);
                Current {
                    tier,
                    status: sub
                        .as_ref()
                        .map(|s| s.status.as_str().to_owned())
                        .unwrap_or_else(|| "none".into()),
                    features: p.features,
                    limits: p.limits,
                    period_end: sub.as_ref().and_then(|s| s.current_period_end),
                    cancel_at_period_end: sub.as_ref().is_some_and(|s| s.cancel_at_period_end),
                    reason,
                }
            }
        })
    }
}

/// The tier a subscription gives now, and why it is `free` when it names another: a
/// past-due subscription keeps its tier through Stripe's retries (within its period); a
/// cancelled one, or one whose period ended unpaid, does not.
pub fn effective_tier(sub: Option<&Subscription>, now: DateTime<Utc>) -> (Tier, Option<String>) {
    let Some(s) = sub else {
        return (Tier::Free, None);
    };
    let period_over = s.current_period_end.is_some_and(|end| end <= now);
    match s.status {
        // Set to cancel at its period's end, and that end has passed (the `deleted` event
        // may not have arrived yet).
        SubscriptionStatus::Active | SubscriptionStatus::Trialing
            if s.cancel_at_period_end && period_over =>
        {
            (
                Tier::Free,
                Some("the subscription was cancelled at its period's end".into()),
            )
        }
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => (s.tier, None),
        SubscriptionStatus::PastDue if !period_over => (s.tier, None),
        SubscriptionStatus::PastDue => (
            Tier::Free,
            Some("the subscription's period ended unpaid".into()),
        ),
        _ if s.tier == Tier::Free => (Tier::Free, None),
        other => (
            Tier::Free,
            Some(format!("the subscription is {}", other.as_str())),
        ),
    }
}

#[async_trait]
impl PlanGate for Plans {
    async fn limit(&self, org_id: &str, what: Limited) -> Result<Option<(u64, Tier)>, Refusal> {
        let current = self
            .current(org_id)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        Ok(what.of(&current.limits).map(|l| (l, current.tier)))
    }

    async fn take_event(&self, org_id: &str) -> Result<(), Refusal> {
        let current = self
            .current(org_id)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let limit = Limited::EventsPerMonth.of(&current.limits);
        let period = usage_period(self.clock.now());
        match self
            .store
            .add_usage(org_id, &period, UsageMetric::EventsPublished, 1, limit)
            .await
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Refusal::Limit(PlanLimit {
                what: Limited::EventsPerMonth,
                limit: limit.unwrap_or(0),
                tier: current.tier,
            })),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    async fn give_back_event(&self, org_id: &str) {
        let period = usage_period(self.clock.now());
        if let Err(e) = self
            .store
            .remove_usage(org_id, &period, UsageMetric::EventsPublished, 1)
            .await
        {
            tracing::warn!(org = %org_id, error = %e, "could not give back a counted event");
        }
    }

    async fn count_inbound(&self, org_id: &str) {
        let period = usage_period(self.clock.now());
        if let Err(e) = self
            .store
            .add_usage(org_id, &period, UsageMetric::InboundDeliveries, 1, None)
            .await
        {
            tracing::warn!(org = %org_id, error = %e, "could not count an inbound delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::licence::{LicenceKey, LicenceRequest};

    fn licence(key: &LicenceKey, now: DateTime<Utc>, days: i64) -> String {
        key.issue(
            &LicenceRequest {
                org_id: "org_globex".into(),
                tier: Tier::Enterprise,
                seats: 5,
                expires_at: now + chrono::Duration::days(days),
            },
            TierTable::default().plan(Tier::Enterprise),
            now,
        )
        .unwrap()
        .licence
    }

    #[test]
    fn a_licence_stops_counting_once_it_has_expired() {
        let key = LicenceKey::generate();
        let now = Utc::now();
        let installed =
            InstalledLicence::new(&licence(&key, now, 2), Some(&key.public_key_base64()), now);
        assert_eq!(installed.state(now).unwrap().tier, Tier::Enterprise);
        let why = installed
            .state(now + chrono::Duration::days(3))
            .unwrap_err();
        assert!(why.contains("expired"), "{why}");
    }

    #[test]
    fn a_licence_without_its_public_key_does_not_count_and_says_why() {
        let key = LicenceKey::generate();
        let now = Utc::now();
        let installed = InstalledLicence::new(&licence(&key, now, 30), None, now);
        let why = installed.state(now).unwrap_err();
        assert!(why.contains("LICENSE_PUBLIC_KEY"), "{why}");
        let other = LicenceKey::generate();
        let installed = InstalledLicence::new(
            &licence(&key, now, 30),
            Some(&other.public_key_base64()),
            now,
        );
        assert!(
            installed.state(now).is_err(),
            "another key's licence is refused"
        );
    }
}
