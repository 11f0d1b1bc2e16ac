//! The inbound delivery log as an org sees it: its deliveries listed and read (headers and
//! payload included while they are kept), and replays, which put the stored payload back on
//! the same queue the first delivery went through. `api::deliveries` and `hookline replay`
//! both go through here.

use crate::clock::Clock;
use crate::model::{Delivery, DeliveryKey, DeliveryOutcome, Envelope, StoredPayload};
use crate::ports::queue::Queue;
use crate::ports::store::{DeliveryStore, LogCounts, LogPage, LogQuery, Reopen};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// What a redacted header's value reads.
pub const REDACTED: &str = "[redacted]";

/// Headers that are, or are keyed by, a secret: the providers' signature and token headers
/// by name, and anything else whose name says it carries one.
fn secret_bearing(name: &str) -> bool {
    const NAMED: [&str; 10] = [
        "x-hub-signature",
        "x-hub-signature-256",
        "x-gitlab-token",
        "stripe-signature",
        "x-twilio-signature",
        "webhook-signature",
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
    ];
    const WORDS: [&str; 7] = [
        "signature",
        "token",
        "secret",
        "password",
        "api-key",
        "apikey",
        "auth",
    ];
    let name = name.to_ascii_lowercase();
    NAMED.contains(&name.as_str()) || WORDS.iter().any(|w| name.contains(w))
}

/// The headers as the provider sent them, in order, secret-bearing values replaced by
/// [`REDACTED`]: what is stored, so a secret never reaches the store at all.
pub fn redact_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if secret_bearing(name.as_str()) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("no such delivery")]
    NotFound,
    #[error("the payload of this delivery was kept for {retention} and has expired; it can no longer be replayed")]
    PayloadExpired { retention: String },
    #[error("this delivery is queued or being processed right now; replay it once it is done")]
    InFlight,
    #[error("{0}")]
    Unavailable(String),
}

impl From<crate::ports::store::StoreError> for LogError {
    fn from(e: crate::ports::store::StoreError) -> Self {
        LogError::Unavailable(e.to_string())
    }
}

/// One row of the log as the API shows it (the field names).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = InboundDelivery)]
pub struct DeliveryView<'a> {
    pub id: String,
    pub source: crate::model::Source,
    pub delivery_id: &'a str,
    pub event_type: &'a str,
    pub connection_id: Option<&'a str>,
    pub repository_full_name: Option<&'a str>,
    pub signature_verified: bool,
    pub status: crate::model::DeliveryStatus,
    pub error: Option<&'a str>,
    pub duration_ms: Option<u64>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub attempts: u32,
}

impl<'a> From<&'a Delivery> for DeliveryView<'a> {
    fn from(d: &'a Delivery) -> Self {
        let owner = d.owner.as_ref();
        Self {
            id: d.key().log_id(),
            source: d.source,
            delivery_id: &d.delivery_id,
            event_type: &d.event_type,
            connection_id: owner.and_then(|o| o.connection_id.as_deref()),
            repository_full_name: owner.and_then(|o| o.repository_full_name.as_deref()),
            signature_verified: d.signature_verified,
            status: d.status,
            error: d.error.as_deref(),
            duration_ms: d.duration_ms,
            received_at: d.received_at,
            processed_at: d.processed_at,
            attempts: d.attempts,
        }
    }
}

/// One delivery with what the provider sent: headers (redacted) and the payload exactly as
/// received, text when it is UTF-8 and base64 otherwise (`payload_encoding` says which).
/// Once the payload has expired both are `null` and `payload_expired` is true.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = InboundDeliveryDetail)]
pub struct DeliveryDetail<'a> {
    #[serde(flatten)]
    pub delivery: DeliveryView<'a>,
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    pub payload: Option<String>,
    pub payload_encoding: Option<&'static str>,
    pub payload_size_bytes: Option<usize>,
    pub payload_expires_at: Option<DateTime<Utc>>,
    pub payload_expired: bool,
}

impl<'a> DeliveryDetail<'a> {
    pub fn new(d: &'a Delivery, payload: Option<&StoredPayload>) -> Self {
        use base64::Engine;
        let (body, encoding) = match payload.map(|p| std::str::from_utf8(&p.body)) {
            Some(Ok(text)) => (Some(text.to_owned()), Some("utf8")),
            Some(Err(_)) => (
                payload.map(|p| base64::engine::general_purpose::STANDARD.encode(&p.body)),
                Some("base64"),
            ),
            None => (None, None),
        };
        let headers = payload.map(|p| {
            let mut map = serde_json::Map::new();
            for (name, value) in &p.headers {
                // A header sent more than once reads as HTTP joins it: values, comma-separated.
                match map.get_mut(name) {
                    Some(serde_json::Value::String(v)) => {
                        v.push_str(", ");
                        v.push_str(value);
                    }
                    _ => {
                        map.insert(name.clone(), serde_json::Value::String(value.clone()));
                    }
                }
            }
            map
        });
        Self {
            delivery: DeliveryView::from(d),
            headers,
            payload: body,
            payload_encoding: encoding,
            payload_size_bytes: payload.map(|p| p.body.len()),
            payload_expires_at: payload.map(|p| p.expires_at),
            payload_expired: payload.is_none(),
        }
    }
}

/// The log over the delivery store, and replays onto the worker's queue.
pub struct DeliveryLog {
    store: Arc<dyn DeliveryStore>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    /// A record `queued` longer than this has lost its message: a replay may requeue it.
    process_lease: Duration,
}

impl DeliveryLog {
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        queue: Arc<dyn Queue>,
        clock: Arc<dyn Clock>,
        settings: &crate::config::Settings,
    ) -> Self {
        Self {
            store,
            queue,
            clock,
            retention: settings.payload_retention,
            process_lease: settings.process_lease,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub async fn list(&self, query: &LogQuery) -> Result<LogPage, LogError> {
        Ok(self.store.list_org(query).await?)
    }

    pub async fn counts(&self, org_id: &str, connection_id: &str) -> Result<LogCounts, LogError> {
        Ok(self
            .store
            .count_connection(org_id, connection_id, self.clock.now())
            .await?)
    }

    /// The delivery, if it is live and `org` owns it (`None`: the operator, who sees all).
    pub async fn find(&self, org: Option<&str>, key: &DeliveryKey) -> Result<Delivery, LogError> {
        let now = self.clock.now();
        match self.store.get(key).await? {
            Some(d)
                if d.expires_at.timestamp() >= now.timestamp()
                    && org.is_none_or(|org| d.owner.as_ref().is_some_and(|o| o.org_id == org)) =>
            {
                Ok(d)
            }
            _ => Err(LogError::NotFound),
        }
    }

    /// The delivery and its payload (`None` once expired).
    pub async fn detail(
        &self,
        org: Option<&str>,
        key: &DeliveryKey,
    ) -> Result<(Delivery, Option<StoredPayload>), LogError> {
        let d = self.find(org, key).await?;
        let payload = self.store.get_payload(key, self.clock.now()).await?;
        Ok((d, payload))
    }

    /// Put the stored payload on the worker's queue again as a new attempt of the same
    /// delivery. Answers the delivery as it was before; the worker records the outcome.
    pub async fn replay(&self, org: Option<&str>, key: &DeliveryKey) -> Result<Delivery, LogError> {
        self.find(org, key).await?;
        let now = self.clock.now();
        let Some(payload) = self.store.get_payload(key, now).await? else {
            return Err(LogError::PayloadExpired {
                retention: humantime::format_duration(self.retention).to_string(),
            });
        };
        let queued_before =
            now - chrono::Duration::from_std(self.process_lease).unwrap_or(chrono::Duration::MAX);
        let before = match self.store.reopen(key, now, queued_before).await? {
            Reopen::Reopened(before) => before,
            Reopen::InFlight(_) => return Err(LogError::InFlight),
            Reopen::Missing => return Err(LogError::NotFound),
        };
        let message = Envelope::new(
            before.source,
            &before.delivery_id,
            &before.event_type,
            before.received_at,
            &payload.body,
        )
        .to_message();
        if let Err(e) = self.queue.send(&message, Duration::ZERO).await {
            // Put the record back as it was, so the log does not show a replay that never left.
            let restore = DeliveryOutcome {
                status: before.status,
                error: before.error.clone(),
                processed_at: before.processed_at.unwrap_or(now),
                duration_ms: before.duration_ms.unwrap_or(0),
            };
            if let Err(e) = self.store.finish(key, &restore).await {
                tracing::error!(key = %key, error = %e, "a replay could not be queued nor its record restored");
            }
            return Err(LogError::Unavailable(e.to_string()));
        }
        tracing::info!(source = %before.source, delivery_id = %before.delivery_id, attempt = before.attempts + 1, "delivery replayed");
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_that_is_not_utf8_reads_as_base64_and_one_that_is_as_text() {
        use base64::Engine;
        let new = crate::ports::store::conformance::new_delivery(
            crate::model::Source::Twilio,
            "d",
            Utc::now(),
        );
        let d = Delivery {
            source: new.source,
            delivery_id: new.delivery_id.clone(),
            event_type: new.event_type.clone(),
            status: crate::model::DeliveryStatus::Processed,
            payload_sha256: new.payload_sha256.clone(),
            signature_verified: true,
            received_at: new.received_at,
            queued_at: None,
            processed_at: None,
            error: None,
            duration_ms: None,
            attempts: 1,
            enqueue_lease_until: None,
            process_lease_until: None,
            expires_at: new.expires_at,
            owner: None,
        };
        let mut p = crate::ports::store::conformance::payload(Utc::now());
        p.body = b"Body=caf\xe9"[..].into();
        let v = serde_json::to_value(DeliveryDetail::new(&d, Some(&p))).unwrap();
        assert_eq!(v["payload_encoding"], "base64");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, p.body);
        assert_eq!(v["id"], d.key().log_id());
        p.body = "Body=café".as_bytes().to_vec().into();
        let v = serde_json::to_value(DeliveryDetail::new(&d, Some(&p))).unwrap();
        assert_eq!(
            (v["payload_encoding"].as_str(), v["payload"].as_str()),
            (Some("utf8"), Some("Body=café"))
        );
        let v = serde_json::to_value(DeliveryDetail::new(&d, None)).unwrap();
        assert_eq!(v["payload_expired"], true);
        assert_eq!(v["payload"], serde_json::Value::Null);
    }

    #[test]
    fn signature_and_secret_headers_are_redacted_and_the_rest_kept() {
        let mut h = http::HeaderMap::new();
        for (name, value) in [
            ("X-Hub-Signature-256", "sha256=abc"),
            ("X-Hub-Signature", "sha1=abc"),
            ("X-Gitlab-Token", "the-secret"),
            ("Stripe-Signature", "t=1,v1=abc"),
            ("X-Twilio-Signature", "abc="),
            ("webhook-signature", "v1,abc"),
            ("Authorization", "Bearer x"),
            ("X-Custom-Secret-Key", "s3cr3t"),
            ("X-GitHub-Event", "push"),
            ("Content-Type", "application/json"),
        ] {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let out = redact_headers(&h);
        assert_eq!(out.len(), 10);
        for (name, value) in &out {
            let kept = matches!(name.as_str(), "x-github-event" | "content-type");
            assert_eq!(value == REDACTED, !kept, "{name}: {value}");
        }
        assert!(out.contains(&("x-github-event".into(), "push".into())));
    }
}
