//! The nouns Hookline stores and passes around: sources, deliveries, queue envelopes and the
//! normalised activity records the worker writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A webhook provider Hookline receives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Github,
    Gitlab,
    Jira,
    Stripe,
    Twilio,
    Whatsapp,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::Github,
        Source::Gitlab,
        Source::Jira,
        Source::Stripe,
        Source::Twilio,
        Source::Whatsapp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Github => "github",
            Source::Gitlab => "gitlab",
            Source::Jira => "jira",
            Source::Stripe => "stripe",
            Source::Twilio => "twilio",
            Source::Whatsapp => "whatsapp",
        }
    }

    /// The public route a provider posts to (DESIGN.md §1.1).
    pub fn route(self) -> &'static str {
        match self {
            Source::Github => "/api/v1/webhooks/github",
            Source::Gitlab => "/api/v1/webhooks/gitlab",
            Source::Jira => "/api/v1/webhooks/jira",
            Source::Stripe => "/api/v1/billing/webhooks/stripe",
            Source::Twilio => "/api/v1/webhooks/twilio",
            Source::Whatsapp => "/api/v1/webhooks/whatsapp",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown source {0:?}: expected one of github, gitlab, jira, stripe, twilio, whatsapp")]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .into_iter()
            .find(|src| src.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownSource(s.to_string()))
    }
}

/// The dedupe key of a delivery: `{source}#{delivery id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryKey(String);

impl DeliveryKey {
    pub fn new(source: Source, delivery_id: &str) -> Self {
        Self(format!("{}#{}", source.as_str(), delivery_id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn source(&self) -> Option<Source> {
        self.0.split_once('#').and_then(|(s, _)| s.parse().ok())
    }

    pub fn delivery_id(&self) -> &str {
        self.0.split_once('#').map(|(_, id)| id).unwrap_or(&self.0)
    }

    /// Rebuild a key read back from storage.
    pub fn from_stored(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hex SHA-256 of a body: the payload hash kept with every delivery, and the delivery id of
/// providers that send none.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Recorded, not yet on the queue.
    Received,
    /// On the queue for the worker.
    Queued,
    /// Handled by the worker.
    Processed,
    /// The worker's last attempt failed; the queue will retry it.
    Failed,
    /// Accepted and deliberately not processed (a ping, a disabled connection).
    Skipped,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Received => "received",
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Processed => "processed",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Skipped => "skipped",
        }
    }

    /// Processed and skipped deliveries are never worked on again.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryStatus::Processed | DeliveryStatus::Skipped)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "received" => DeliveryStatus::Received,
            "queued" => DeliveryStatus::Queued,
            "processed" => DeliveryStatus::Processed,
            "failed" => DeliveryStatus::Failed,
            "skipped" => DeliveryStatus::Skipped,
            other => return Err(format!("unknown delivery status {other:?}")),
        })
    }
}

/// What the pipeline records when a verified delivery first arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub key: DeliveryKey,
    pub source: Source,
    pub delivery_id: String,
    pub event_type: String,
    pub payload_sha256: String,
    pub signature_verified: bool,
    pub received_at: DateTime<Utc>,
    /// Until then the request that recorded it owns the enqueue; a retry after it may take over.
    pub enqueue_lease_until: DateTime<Utc>,
    /// The record's TTL (DynamoDB `expires_at`).
    pub expires_at: DateTime<Utc>,
}

/// One row of the delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub source: Source,
    pub delivery_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub payload_sha256: String,
    pub signature_verified: bool,
    pub received_at: DateTime<Utc>,
    pub queued_at: Option<DateTime<Utc>>,
    pub processed_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    /// How many times the worker has started on it.
    pub attempts: u32,
    #[serde(skip)]
    pub enqueue_lease_until: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub process_lease_until: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

impl Delivery {
    pub fn key(&self) -> DeliveryKey {
        DeliveryKey::new(self.source, &self.delivery_id)
    }
}

/// How the worker's attempt on a delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryOutcome {
    pub status: DeliveryStatus,
    pub error: Option<String>,
    pub processed_at: DateTime<Utc>,
    pub duration_ms: u64,
}

/// The message the pipeline puts on the queue: everything the worker needs, raw body included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub source: Source,
    pub delivery_id: String,
    pub event_type: String,
    pub received_at: DateTime<Utc>,
    /// The exact bytes the provider sent: UTF-8 text as is, anything else base64.
    pub body: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub body_base64: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Envelope {
    pub fn new(
        source: Source,
        delivery_id: &str,
        event_type: &str,
        received_at: DateTime<Utc>,
        raw: &[u8],
    ) -> Self {
        use base64::Engine;
        let (body, body_base64) = match std::str::from_utf8(raw) {
            Ok(text) => (text.to_owned(), false),
            Err(_) => (base64::engine::general_purpose::STANDARD.encode(raw), true),
        };
        Self {
            source,
            delivery_id: delivery_id.to_owned(),
            event_type: event_type.to_owned(),
            received_at,
            body,
            body_base64,
        }
    }

    pub fn key(&self) -> DeliveryKey {
        DeliveryKey::new(self.source, &self.delivery_id)
    }

    pub fn raw_body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        if self.body_base64 {
            base64::engine::general_purpose::STANDARD.decode(&self.body)
        } else {
            Ok(self.body.as_bytes().to_vec())
        }
    }
}

/// The normalised record the worker keeps of each processed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub source: Source,
    pub delivery_id: String,
    pub event_type: String,
    pub action: Option<String>,
    /// `owner/repo` (GitHub), `group/project` (GitLab), project key (Jira), account (Stripe),
    /// phone number (Twilio, WhatsApp).
    pub repository: Option<String>,
    pub actor: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub url: Option<String>,
    /// When the provider says it happened, where it says so.
    pub occurred_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_key_is_source_hash_id() {
        let k = DeliveryKey::new(Source::Github, "abc#def");
        assert_eq!(k.as_str(), "github#abc#def");
        assert_eq!(k.source(), Some(Source::Github));
        assert_eq!(k.delivery_id(), "abc#def");
    }

    #[test]
    fn an_envelope_keeps_binary_bodies_exactly() {
        let raw = [0xff, 0x00, 0x10];
        let env = Envelope::new(Source::Twilio, "x", "message", Utc::now(), &raw);
        assert!(env.body_base64);
        assert_eq!(env.raw_body().unwrap(), raw);
        let text = Envelope::new(Source::Github, "x", "push", Utc::now(), b"{\"a\":1}");
        assert!(!text.body_base64);
        assert_eq!(text.raw_body().unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn sources_parse_from_their_names() {
        for s in Source::ALL {
            assert_eq!(s.as_str().parse::<Source>().unwrap(), s);
        }
        assert!("bitbucket".parse::<Source>().is_err());
    }
}
