//! The deliverer: makes one attempt per deliveries-queue message. It signs the envelope both
//! ways, POSTs it through the SSRF-checked sender, records the attempt, and decides what
//! comes next: delivered, a retry on the schedule (chained queue delays, never a sleeping
//! process), or dead-lettered with one mail to the org's owner. A 410 disables the endpoint;
//! so do failures that last `OUTBOUND_DISABLE_AFTER`.

use super::dispatch::{AttemptQueue, DeliveryMessage, MAX_QUEUE_DELAY_MS};
use super::endpoints::open_secret;
use super::model::{Attempt, AttemptId, AttemptTrigger, Delivery, DeliveryStatus, Endpoint, Event};
use super::notify::Notifier;
use super::sender::{SendOutcome, Sender};
use super::settings::OutboundSettings;
use super::signing;
use super::Error;
use crate::clock::Clock;
use crate::ports::keys::KeyService;
use crate::ports::outbound::OutboundStore;
use crate::secret::Secret;
use crate::telemetry;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// A number in [-1, 1] for each retry's jitter; injectable so schedules are testable.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

pub fn random_jitter() -> Jitter {
    Arc::new(|| {
        use rand::Rng;
        rand::thread_rng().gen_range(-1.0..=1.0)
    })
}

/// What one message came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// The attempt failed; the next is due then.
    Retrying(DateTime<Utc>),
    DeadLettered,
    /// Not made now (not due yet, or the endpoint's rate is used up): sent on again.
    Deferred,
    /// Nothing to do: a stale or repeated message, a finished delivery, another deliverer's.
    Dropped(&'static str),
}

/// How long past the attempt's timeout a deliverer owns the delivery it claimed.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// A message this early is handled now rather than sent round again.
const EARLY_OK_MS: i64 = 500;
/// A rate-limited attempt waits this long before it asks for a slot again.
const RATE_WAIT: Duration = Duration::from_millis(1000);

pub struct Deliverer {
    store: Arc<dyn OutboundStore>,
    keys: Arc<dyn KeyService>,
    sender: Arc<Sender>,
    attempts: AttemptQueue,
    notifier: Arc<Notifier>,
    clock: Arc<dyn Clock>,
    settings: OutboundSettings,
    jitter: Jitter,
}

impl Deliverer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn OutboundStore>,
        keys: Arc<dyn KeyService>,
        sender: Arc<Sender>,
        attempts: AttemptQueue,
        notifier: Arc<Notifier>,
        clock: Arc<dyn Clock>,
        settings: OutboundSettings,
        jitter: Jitter,
    ) -> Self {
        Self {
            store,
            keys,
            sender,
            attempts,
            notifier,
            clock,
            settings,
            jitter,
        }
    }

    /// Handle one deliveries-queue message. An `Err` leaves the message on the queue to be
    /// tried again (a store or key service that is down); anything else is done with it.
    pub async fn handle_message(&self, body: &str) -> Result<Outcome, Error> {
        let msg: DeliveryMessage = match serde_json::from_str(body) {
            Ok(m) => m,
            Err(_) => return Ok(Outcome::Dropped("not a delivery message")),
        };
        let now = self.clock.now();
        if msg.due_at_ms > now.timestamp_millis() + EARLY_OK_MS {
            self.send_on(&msg, msg.delay(now)).await?;
            return Ok(Outcome::Deferred);
        }
        let Some(d) = self
            .store
            .get_delivery(&msg.org_id, &msg.delivery_id)
            .await?
        else {
            return Ok(Outcome::Dropped("no such delivery"));
        };
        if d.attempts != msg.attempts_made {
            if !msg.manual
                && d.attempts == msg.attempts_made + 1
                && d.status == DeliveryStatus::Failed
            {
                // The attempt this message asked for was made and failed, but its follow-up
                // may not have been queued (the queue failed just then): queue it again. A
                // second copy is harmless, only one of them can claim the next attempt.
                let at = d.next_attempt_at.unwrap_or(now);
                self.attempts.scheduled(&d, at, now).await?;
                return Ok(Outcome::Deferred);
            }
            return Ok(Outcome::Dropped("stale message: that attempt was made"));
        }
        let finished = matches!(
            d.status,
            DeliveryStatus::Delivered | DeliveryStatus::DeadLettered
        );
        if finished && !msg.manual {
            return Ok(Outcome::Dropped("the delivery is finished"));
        }
        let shared = ClaimShared::default();
        let endpoint = match shared.endpoint(self.store.as_ref(), &d).await? {
            Some(e) if e.enabled => e,
            Some(_) => return self.give_up(d, "the endpoint is disabled").await,
            None => return self.give_up(d, "the endpoint was deleted").await,
        };
        if let Some(limit) = endpoint.rate_limit_per_second {
            if !self
                .store
                .take_send_slot(&endpoint.id, now.timestamp(), limit)
                .await?
            {
                self.send_on(&msg, RATE_WAIT).await?;
                return Ok(Outcome::Deferred);
            }
        }
        let Some(d) = self
            .store
            .claim_delivery(&d.id, d.attempts, now + self.lease(), now)
            .await?
        else {
            return self.claimed_elsewhere(&msg, now).await;
        };
        self.attempt(d, &endpoint, msg.manual, now, &shared).await
    }

    /// How long a deliverer owns a delivery it claimed: the attempt's timeout and a margin.
    pub fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.timeout + LEASE_MARGIN)
            .unwrap_or(chrono::Duration::minutes(1))
    }

    /// Make the scheduled attempt at a delivery claimed from a store that hands out due
    /// deliveries itself ([`DueDeliveries`]): the same checks and attempt as a queue
    /// message's, without the message.
    ///
    /// [`DueDeliveries`]: crate::ports::outbound::DueDeliveries
    /// The deliveries claimed together pass one `shared`: each endpoint and event is read once
    /// for all of them.
    pub async fn handle_claimed(
        &self,
        d: Delivery,
        shared: &ClaimShared,
    ) -> Result<Outcome, Error> {
        let now = self.clock.now();
        let endpoint = match shared.endpoint(self.store.as_ref(), &d).await? {
            Some(e) if e.enabled => e,
            Some(_) => return self.give_up(d, "the endpoint is disabled").await,
            None => return self.give_up(d, "the endpoint was deleted").await,
        };
        if let Some(limit) = endpoint.rate_limit_per_second {
            if !self
                .store
                .take_send_slot(&endpoint.id, now.timestamp(), limit)
                .await?
            {
                // Due again once the endpoint's next second may have room; the lease goes.
                let mut later = d;
                later.lease_until = None;
                later.next_attempt_at =
                    Some(now + chrono::Duration::from_std(RATE_WAIT).unwrap_or_default());
                later.updated_at = now;
                self.store.update_delivery(&later).await?;
                return Ok(Outcome::Deferred);
            }
        }
        self.attempt(d, &endpoint, false, now, shared).await
    }

    async fn attempt(
        &self,
        d: Delivery,
        endpoint: &Endpoint,
        manual: bool,
        now: DateTime<Utc>,
        shared: &ClaimShared,
    ) -> Result<Outcome, Error> {
        let event = shared
            .event(self.store.as_ref(), &d)
            .await?
            .ok_or_else(|| {
                Error::Unavailable(format!("event {} of {} is missing", d.event_id, d.id))
            })?;
        let secrets = shared.secrets(self.keys.as_ref(), endpoint, now).await?;
        let signing_secrets: Vec<&Secret> = secrets.iter().collect();
        let headers = signing::sign(
            &event.body,
            event.event.id.as_str(),
            now.timestamp(),
            &signing_secrets,
            &endpoint.signature_header,
        );
        let sending = std::time::Instant::now();
        let sent = self
            .sender
            .post(&endpoint.url, headers, event.body.clone())
            .await;
        telemetry::outbound_attempt(sent.outcome(), sending.elapsed());
        let number = d.attempts + 1;
        let attempt = Attempt {
            id: AttemptId::generate(),
            delivery_id: d.id.clone(),
            org_id: d.org_id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            number,
            at: now,
            url: endpoint.url.clone(),
            status_code: sent.status,
            duration_ms: sent.duration_ms,
            response_body: sent.response_body.clone(),
            error: sent.error.clone(),
            succeeded: sent.succeeded(),
            trigger: if manual {
                AttemptTrigger::Manual
            } else {
                AttemptTrigger::Scheduled
            },
        };
        let after = self.clock.now();
        let was_finished = matches!(
            d.status,
            DeliveryStatus::Delivered | DeliveryStatus::DeadLettered
        );
        let mut next = d.clone();
        next.attempts = number;
        next.last_attempt_at = Some(now);
        next.last_status_code = sent.status;
        next.last_error = sent.error.clone();
        next.lease_until = None;
        next.updated_at = after;
        next.next_attempt_at = None;
        let gone = sent.status == Some(410);
        next.status = if sent.succeeded() {
            DeliveryStatus::Delivered
        } else if gone || was_finished {
            DeliveryStatus::DeadLettered
        } else {
            match self.retry_at(number, &sent, after) {
                Some(at) => {
                    next.next_attempt_at = Some(at);
                    DeliveryStatus::Failed
                }
                None => DeliveryStatus::DeadLettered,
            }
        };
        if !self.store.record_attempt(&next, &attempt).await? {
            return Ok(Outcome::Dropped("that attempt was already recorded"));
        }
        tracing::info!(
            delivery = %next.id,
            endpoint = %endpoint.id,
            attempt = number,
            status = ?sent.status,
            outcome = next.status.as_str(),
            duration_ms = sent.duration_ms,
            "outbound attempt"
        );
        self.endpoint_health(endpoint, &sent, gone, after).await;
        match next.status {
            DeliveryStatus::Delivered => Ok(Outcome::Delivered),
            DeliveryStatus::Failed => {
                let at = next.next_attempt_at.unwrap_or(after);
                // On failure the message that brought this attempt comes back, and finding
                // the attempt made, queues this follow-up again (`handle_message`).
                self.attempts.scheduled(&next, at, after).await?;
                Ok(Outcome::Retrying(at))
            }
            _ => {
                if !was_finished {
                    telemetry::outbound_dead_lettered();
                    if !gone {
                        self.tell_dead_lettered(&next, endpoint).await;
                    }
                }
                Ok(Outcome::DeadLettered)
            }
        }
    }

    /// When the next attempt is due after failed attempt `number`, or `None` after the last:
    /// the schedule's wait, jittered, or a longer `Retry-After` (on 429 and 503) up to a cap.
    fn retry_at(
        &self,
        number: u32,
        sent: &SendOutcome,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut wait = self.settings.retry_delay(number, (self.jitter)())?;
        if matches!(sent.status, Some(429 | 503)) {
            if let Some(asked) = sent.retry_after {
                wait = wait.max(asked.min(self.settings.max_retry_after));
            }
        }
        Some(after + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::days(1)))
    }

    /// The claim failed: another deliverer holds a lease on the delivery, or took this
    /// attempt. If the lease holder dies, its message comes back only once its queue
    /// visibility ends; this one waits for the lease to end and looks again, so the delivery
    /// never depends on a single message.
    async fn claimed_elsewhere(
        &self,
        msg: &DeliveryMessage,
        now: DateTime<Utc>,
    ) -> Result<Outcome, Error> {
        let current = self
            .store
            .get_delivery(&msg.org_id, &msg.delivery_id)
            .await?;
        match current {
            Some(d) if d.attempts == msg.attempts_made => {
                let until = d.lease_until.unwrap_or(now) + chrono::Duration::seconds(1);
                let wait = (until - now).to_std().unwrap_or(Duration::from_secs(1));
                self.send_on(
                    msg,
                    wait.min(Duration::from_millis(MAX_QUEUE_DELAY_MS as u64)),
                )
                .await?;
                Ok(Outcome::Deferred)
            }
            _ => Ok(Outcome::Dropped("another deliverer made this attempt")),
        }
    }

    /// A delivery that cannot be attempted any more (its endpoint is gone or disabled).
    async fn give_up(&self, mut d: Delivery, why: &str) -> Result<Outcome, Error> {
        // Only an unfinished delivery turns dead: a manual retry of a delivered one is not
        // turned into a failure by its endpoint going away meanwhile.
        if !matches!(d.status, DeliveryStatus::Pending | DeliveryStatus::Failed) {
            return Ok(Outcome::Dropped("the delivery is finished"));
        }
        d.status = DeliveryStatus::DeadLettered;
        d.next_attempt_at = None;
        d.lease_until = None;
        d.last_error = Some(why.to_owned());
        d.updated_at = self.clock.now();
        self.store.update_delivery(&d).await?;
        telemetry::outbound_dead_lettered();
        Ok(Outcome::DeadLettered)
    }

    /// Keep the endpoint's failure streak, and disable it on a 410 or a streak that lasted
    /// `OUTBOUND_DISABLE_AFTER`.
    async fn endpoint_health(
        &self,
        seen: &Endpoint,
        sent: &SendOutcome,
        gone: bool,
        now: DateTime<Utc>,
    ) {
        let ok = sent.succeeded();
        let since = seen.failing_since;
        let window = chrono::Duration::from_std(self.settings.disable_after)
            .unwrap_or(chrono::Duration::days(5));
        // Write only when something changes (a streak starts or ends, the endpoint is
        // disabled): a whole-record write on every failure could undo a person's change
        // (a rotation, a PATCH) made while the attempt was in flight.
        let changes = match (ok, since) {
            (true, None) => false,
            (true, Some(_)) => true,
            (false, None) => true,
            (false, Some(since)) => gone || now - since >= window,
        };
        if !changes {
            return;
        }
        // Re-read: a person may have changed the endpoint while the attempt was in flight.
        let mut e = match self.store.get_endpoint(&seen.org_id, &seen.id).await {
            Ok(Some(e)) => e,
            _ => return,
        };
        let mut disable: Option<String> = None;
        if ok {
            e.failing_since = None;
        } else {
            let since = *e.failing_since.get_or_insert(now);
            if gone {
                disable = Some("the endpoint answered 410 Gone".into());
            } else if now - since >= window {
                disable = Some(format!(
                    "every attempt since {} failed",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        }
        if let Some(reason) = &disable {
            if !e.enabled {
                disable = None;
            } else {
                e.enabled = false;
                e.disabled_reason = Some(reason.clone());
            }
        }
        e.updated_at = now;
        if let Err(err) = self.store.update_endpoint(&e).await {
            tracing::warn!(endpoint = %e.id, error = %err, "could not update the endpoint's health");
            return;
        }
        if let Some(reason) = disable {
            telemetry::endpoint_disabled();
            tracing::warn!(endpoint = %e.id, reason = %reason, "endpoint disabled");
            let key = format!("endpoint_disabled#{}#{}", e.id, now.timestamp_millis());
            let text = format!(
                "Hookline stopped sending webhooks to your endpoint {} ({}) because {}.\n\n\
                 Nothing more is sent to it until it is enabled again: \
                 PATCH /api/v1/endpoints/{} with {{\"enabled\": true}}. Deliveries that failed \
                 meanwhile can be resent with POST /api/v1/endpoints/{}/recover.\n",
                e.url, e.id, reason, e.id, e.id
            );
            self.notifier
                .tell_owner(
                    &e.org_id,
                    &key,
                    "A Hookline webhook endpoint was disabled",
                    &text,
                )
                .await;
        }
    }

    async fn tell_dead_lettered(&self, d: &Delivery, e: &Endpoint) {
        let key = format!("dead_lettered#{}", d.id);
        let text = format!(
            "Hookline gave up delivering event {} ({}) to your endpoint {} ({}) after {} \
             attempts. The last one: {}.\n\nSee its attempts at GET /api/v1/deliveries/{}/attempts \
             and send it again with POST /api/v1/deliveries/{}/retry.\n",
            d.event_id,
            d.event_type,
            e.url,
            e.id,
            d.attempts,
            d.last_error
                .clone()
                .or_else(|| d.last_status_code.map(|s| format!("HTTP {s}")))
                .unwrap_or_else(|| "failed".into()),
            d.id,
            d.id
        );
        self.notifier
            .tell_owner(
                &d.org_id,
                &key,
                "A Hookline webhook delivery was dead-lettered",
                &text,
            )
            .await;
    }

    async fn send_on(&self, msg: &DeliveryMessage, delay: Duration) -> Result<(), Error> {
        self.attempts.send(msg, delay).await
    }
}

/// What the attempts of one claim share: each endpoint and event is read, each endpoint's
/// secrets opened and each event's envelope written once for the claim instead of once per
/// delivery. A claim of 64 deliveries is typically a few events, each to many endpoints;
/// reading and parsing both records on every attempt was a fifth of the deliverer's time.
/// Built per claim and dropped with it, so nothing it holds outlives the claim's moment.
#[derive(Default)]
pub struct ClaimShared {
    endpoints: OnceEach<Option<Arc<Endpoint>>>,
    secrets: OnceEach<Arc<Vec<Secret>>>,
    events: OnceEach<Option<Arc<SharedEvent>>>,
}

/// An event and the envelope every endpoint receives for it.
struct SharedEvent {
    event: Event,
    body: bytes::Bytes,
}

impl ClaimShared {
    async fn endpoint(
        &self,
        store: &dyn OutboundStore,
        d: &Delivery,
    ) -> Result<Option<Arc<Endpoint>>, Error> {
        self.endpoints
            .get(&d.org_id, d.endpoint_id.as_str(), || async {
                Ok(store
                    .get_endpoint(&d.org_id, &d.endpoint_id)
                    .await?
                    .map(Arc::new))
            })
            .await
    }

    async fn event(
        &self,
        store: &dyn OutboundStore,
        d: &Delivery,
    ) -> Result<Option<Arc<SharedEvent>>, Error> {
        self.events
            .get(&d.org_id, d.event_id.as_str(), || async {
                Ok(store.get_event(&d.org_id, &d.event_id).await?.map(|event| {
                    let body = event.envelope().into();
                    Arc::new(SharedEvent { event, body })
                }))
            })
            .await
    }

    /// The secrets an attempt signs with: the current one, and the previous one while its
    /// rotation overlap lasts.
    async fn secrets(
        &self,
        keys: &dyn KeyService,
        endpoint: &Endpoint,
        now: DateTime<Utc>,
    ) -> Result<Arc<Vec<Secret>>, Error> {
        self.secrets
            .get(&endpoint.org_id, endpoint.id.as_str(), || async {
                let mut secrets = vec![open_secret(keys, endpoint, &endpoint.secret).await?];
                if let Some(p) = &endpoint.previous_secret {
                    if p.valid_until.is_some_and(|until| until > now) {
                        secrets.push(open_secret(keys, endpoint, p).await?);
                    }
                }
                Ok(Arc::new(secrets))
            })
            .await
    }
}

/// Values made at most once per (org, id): the first caller makes it, the others wait for it.
/// A failure is not kept: the next caller tries again. Keyed by org as well as id because a
/// claim spans orgs and ids are only unique within one (a publisher picks its event ids).
struct OnceEach<V>(std::sync::Mutex<OnceCells<V>>);

type OnceCells<V> = std::collections::HashMap<(String, String), Arc<tokio::sync::OnceCell<V>>>;

impl<V> Default for OnceEach<V> {
    fn default() -> Self {
        Self(Default::default())
    }
}

impl<V: Clone> OnceEach<V> {
    async fn get<F, Fut>(&self, org: &str, id: &str, make: F) -> Result<V, Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, Error>>,
    {
        let cell = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((org.to_owned(), id.to_owned()))
            .or_default()
            .clone();
        cell.get_or_try_init(make).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_value_is_made_once_for_every_caller_of_its_key() {
        let once: Arc<OnceEach<Arc<String>>> = Arc::default();
        let made = Arc::new(AtomicUsize::new(0));
        let calls = (0..16).map(|i| {
            let (once, made) = (once.clone(), made.clone());
            tokio::spawn(async move {
                let key = if i % 2 == 0 { "ep_a" } else { "ep_b" };
                once.get("org", key, || async {
                    made.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok(Arc::new(key.to_owned()))
                })
                .await
                .unwrap()
            })
        });
        for (i, call) in calls.enumerate() {
            let got = call.await.unwrap();
            assert_eq!(got.as_str(), if i % 2 == 0 { "ep_a" } else { "ep_b" });
        }
        assert_eq!(made.load(Ordering::SeqCst), 2, "one make per key");
    }

    #[tokio::test]
    async fn a_failure_is_not_kept_and_the_next_caller_tries_again() {
        let once: OnceEach<u32> = OnceEach::default();
        let failed = once
            .get("org", "evt_1", || async {
                Err(Error::Unavailable("the store is down".into()))
            })
            .await;
        assert!(failed.is_err());
        let got = once.get("org", "evt_1", || async { Ok(7) }).await.unwrap();
        assert_eq!(got, 7);
    }

    #[tokio::test]
    async fn two_orgs_events_of_the_same_id_in_one_claim_stay_apart() {
        use crate::ports::outbound::conformance::{delivery_for, endpoint, new_event};
        use crate::ports::outbound::embedded::EmbeddedOutboundStore;
        use crate::ports::sqlite::{Database, Durability};
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedOutboundStore::new(Database::open(dir.path(), Durability::Normal).unwrap());
        // A publisher picks its own event ids: two orgs may both publish `order-1`.
        let mut deliveries = Vec::new();
        for org in ["org-a", "org-b"] {
            let mut event = new_event(org, "invoice.paid");
            event.id = super::super::model::EventId::parse("order-1").unwrap();
            event.data = serde_json::json!({ "org": org }).into();
            let appended = store.append_event(&event).await.unwrap();
            let e = endpoint(org);
            store.create_endpoint(&e).await.unwrap();
            deliveries.push(delivery_for(&e, appended.event()));
        }
        let shared = ClaimShared::default();
        for (d, org) in deliveries.iter().zip(["org-a", "org-b"]) {
            let event = shared.event(&store, d).await.unwrap().unwrap();
            assert_eq!(event.event.org_id, org);
            let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
            assert_eq!(
                body["data"]["org"], org,
                "each org's endpoint gets its own event"
            );
            let endpoint = shared.endpoint(&store, d).await.unwrap().unwrap();
            assert_eq!(endpoint.org_id, org);
        }
    }
}
