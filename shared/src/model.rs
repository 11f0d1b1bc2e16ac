//! The nouns Hookline stores and passes around: sources, deliveries, queue envelopes and the
//! normalised activity records the worker writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A webhook provider Hookline receives from.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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

/// What the delivery log API calls a delivery (`whd_…`): its key, base64url, so the id is
/// one URL segment whatever the provider's delivery id holds, and needs no index to resolve.
const LOG_ID_PREFIX: &str = "whd_";

impl DeliveryKey {
    pub fn log_id(&self) -> String {
        use base64::Engine;
        let tail = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes());
        format!("{LOG_ID_PREFIX}{tail}")
    }

    /// The key a log id names; `None` for anything [`log_id`](Self::log_id) did not make.
    pub fn from_log_id(id: &str) -> Option<Self> {
        use base64::Engine;
        let tail = id.strip_prefix(LOG_ID_PREFIX)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tail)
            .ok()?;
        let key = Self(String::from_utf8(raw).ok()?);
        (key.source().is_some() && !key.delivery_id().is_empty()).then_some(key)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = InboundDeliveryStatus)]
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

/// The org a delivery belongs to: the connected repository whose secret verified it, or the
/// org a Stripe event was applied to. Deliveries without one are the operator's only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub org_id: String,
    pub connection_id: Option<String>,
    pub repository_full_name: Option<String>,
}

/// A delivery's body exactly as received and the headers that came with it (secret-bearing
/// ones redacted before they are stored), kept until `expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPayload {
    /// Shared, not copied: the pipeline hands the request's own buffer to the store.
    pub body: bytes::Bytes,
    pub headers: Vec<(String, String)>,
    pub expires_at: DateTime<Utc>,
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
    /// Whose delivery it is, when the pipeline knows (a connected repository's).
    pub owner: Option<Owner>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

impl Delivery {
    pub fn key(&self) -> DeliveryKey {
        DeliveryKey::new(self.source, &self.delivery_id)
    }

    /// Where it sorts in the delivery log: received time (ms, 15 digits), then key. The log's
    /// cursors are these, so both stores page the same way.
    pub fn log_sort_key(&self) -> String {
        log_sort_key(self.received_at, &self.key())
    }
}

pub fn log_sort_key(received_at: DateTime<Utc>, key: &DeliveryKey) -> String {
    format!("{:015}#{}", received_at.timestamp_millis().max(0), key)
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
    /// The exact bytes the provider sent: text as is, anything else (bytes that are not UTF-8,
    /// or characters an SQS message may not hold) base64.
    pub body: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub body_base64: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The first line of a queue message: the envelope without its body.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeHead<'a> {
    source: Source,
    #[serde(borrow)]
    delivery_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "is_false")]
    body_base64: bool,
}

impl EnvelopeHead<'_> {
    /// The head as one line of JSON and its newline. Compact JSON escapes every newline inside
    /// a string: the first one ends the head.
    fn line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("an envelope head always serialises");
        line.push('\n');
        line
    }
}

/// Characters an SQS message body may not contain (its allowed set is tab, newline, carriage
/// return, and U+0020 upward except U+FFFE and U+FFFF). JSON escaped them; a raw body can't.
fn sqs_refuses(text: &str) -> bool {
    // Every delivery goes through here, so it is one pass over 64-byte blocks with no early
    // exit inside a block, which the compiler turns into vector compares. 0xEF leads U+FFFE
    // and U+FFFF (and other characters): only then is a closer look needed.
    let mut lead_ef = false;
    for block in text.as_bytes().chunks(64) {
        let (mut control, mut ef) = (false, false);
        for &b in block {
            control |= (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r');
            ef |= b == 0xEF;
        }
        if control {
            return true;
        }
        lead_ef |= ef;
    }
    lead_ef && text.contains(['\u{fffe}', '\u{ffff}'])
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
            Ok(text) if !sqs_refuses(text) => (text.to_owned(), false),
            _ => (base64::engine::general_purpose::STANDARD.encode(raw), true),
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

    /// The queue message: the envelope's other fields as one line of JSON, a newline, then the
    /// body as it is. Escaping the body into a JSON string was the costliest step of taking a
    /// delivery, and the worker had to unescape it again.
    pub fn to_message(&self) -> String {
        let head = EnvelopeHead {
            source: self.source,
            delivery_id: self.delivery_id.as_str().into(),
            event_type: self.event_type.as_str().into(),
            received_at: self.received_at,
            body_base64: self.body_base64,
        };
        let mut message = head.line();
        message.reserve(self.body.len());
        message.push_str(&self.body);
        message
    }

    /// The head line of the queue message of a `raw` body that travels as it is (what
    /// [`Envelope::to_message`] writes before the body), or `None` for one that travels
    /// base64-encoded. The local intake stores this head and the body once, in its payload
    /// row, instead of a second copy of the body in the message.
    pub fn text_head(
        source: Source,
        delivery_id: &str,
        event_type: &str,
        received_at: DateTime<Utc>,
        raw: &[u8],
    ) -> Option<String> {
        let text = std::str::from_utf8(raw).ok()?;
        if sqs_refuses(text) {
            return None;
        }
        let head = EnvelopeHead {
            source,
            delivery_id: delivery_id.into(),
            event_type: event_type.into(),
            received_at,
            body_base64: false,
        };
        Some(head.line())
    }

    /// Read a queue message: the form [`Envelope::to_message`] writes, or a whole envelope as
    /// one JSON object (messages queued by earlier versions, hand-written test events).
    pub fn from_message(message: &str) -> Result<Self, serde_json::Error> {
        if let Some((head, body)) = message.split_once('\n') {
            if let Ok(head) = serde_json::from_str::<EnvelopeHead<'_>>(head) {
                return Ok(Self {
                    source: head.source,
                    delivery_id: head.delivery_id.into_owned(),
                    event_type: head.event_type.into_owned(),
                    received_at: head.received_at,
                    body: body.to_owned(),
                    body_base64: head.body_base64,
                });
            }
        }
        serde_json::from_str(message)
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
    fn a_message_carries_the_body_unescaped_and_reads_back_whole() {
        let body = "{\"a\": \"line one\\nline two\"}\n";
        let env = Envelope::new(Source::Github, "d-1", "push", Utc::now(), body.as_bytes());
        let message = env.to_message();
        assert!(message.ends_with(&format!("\n{body}")), "{message}");
        assert_eq!(message.matches('\n').count(), 2, "the head is one line");
        assert_eq!(Envelope::from_message(&message).unwrap(), env);
    }

    #[test]
    fn a_body_sqs_cannot_carry_travels_as_base64() {
        let raw = "Body=bell\u{7}";
        let env = Envelope::new(Source::Twilio, "x", "message", Utc::now(), raw.as_bytes());
        assert!(env.body_base64);
        let back = Envelope::from_message(&env.to_message()).unwrap();
        assert_eq!(back.raw_body().unwrap(), raw.as_bytes());
        assert!(!env.to_message().bytes().any(|b| b == 7));
        for refused in ["nul\u{0}", "\u{fffe}", "x\u{ffff}y"] {
            let env = Envelope::new(Source::Github, "x", "push", Utc::now(), refused.as_bytes());
            assert!(env.body_base64, "{refused:?}");
        }
        // Tabs, newlines and other characters led by 0xEF (fullwidth forms, a BOM) go as text.
        for kept in ["{\n\t\"a\": 1\r\n}", "\u{ff21}\u{feff}", ""] {
            let env = Envelope::new(Source::Github, "x", "push", Utc::now(), kept.as_bytes());
            assert!(!env.body_base64, "{kept:?}");
        }
    }

    #[test]
    fn a_message_in_the_earlier_one_object_form_still_reads() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let old = r#"{"source":"github","delivery_id":"d-2","event_type":"push","received_at":"2026-01-01T00:00:00Z","body":"{\"x\":1}"}"#;
        let env = Envelope::from_message(old).unwrap();
        assert_eq!(
            env,
            Envelope::new(Source::Github, "d-2", "push", at, b"{\"x\":1}")
        );
        // Pretty-printed, as a hand-written event may be: newlines, but no head line.
        let pretty = serde_json::to_string_pretty(&env).unwrap();
        assert_eq!(Envelope::from_message(&pretty).unwrap(), env);
    }

    #[test]
    fn a_log_id_names_its_key_and_nothing_else_parses() {
        let key = DeliveryKey::new(Source::Twilio, "a/b#c?d");
        let id = key.log_id();
        assert!(id.starts_with("whd_"));
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(DeliveryKey::from_log_id(&id), Some(key));
        for bad in ["", "whd_", "whd_!!", "dlv_abc", "whd_Ym9ndXM"] {
            assert_eq!(DeliveryKey::from_log_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn sources_parse_from_their_names() {
        for s in Source::ALL {
            assert_eq!(s.as_str().parse::<Source>().unwrap(), s);
        }
        assert!("bitbucket".parse::<Source>().is_err());
    }
}
