//! Providers. Each one is data plus two functions: how to verify a request (over the exact raw
//! bytes, in constant time) and how to read its delivery id, event type and routing fields.
//! The pipeline does everything else, so a seventh provider is one module here.

use crate::model::Source;
use crate::secret::Secret;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method};
use serde::Deserialize;

pub mod github;
pub mod gitlab;
pub mod jira;
pub mod simulate;
pub mod standard_webhooks;
pub mod stripe;
pub mod twilio;
pub mod whatsapp;

/// An inbound HTTP request as the provider sent it: the body is the exact raw bytes.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub method: Method,
    /// The path as routed, e.g. `/api/v1/webhooks/twilio`.
    pub path: String,
    /// The raw query string without `?`, exactly as received.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Inbound {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded value of one query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// The provider secrets, by the names of DESIGN.md §1.5. Absent means not configured.
#[derive(Debug, Clone, Default)]
pub struct ProviderSecrets {
    pub github_webhook_secret: Option<Secret>,
    pub gitlab_webhook_token: Option<Secret>,
    /// GitLab's Standard Webhooks signing token (`whsec_…`), when the hook has one.
    pub gitlab_signing_token: Option<Secret>,
    pub jira_webhook_secret: Option<Secret>,
    pub stripe_webhook_secret: Option<Secret>,
    pub twilio_auth_token: Option<Secret>,
    pub whatsapp_app_secret: Option<Secret>,
    pub whatsapp_verify_token: Option<Secret>,
}

impl ProviderSecrets {
    /// Every variable name with its setter, so env, `.env` and Secrets Manager read one list.
    pub const NAMES: [&'static str; 8] = [
        "GITHUB_WEBHOOK_SECRET",
        "GITLAB_WEBHOOK_TOKEN",
        "GITLAB_WEBHOOK_SIGNING_TOKEN",
        "JIRA_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_SECRET",
        "TWILIO_AUTH_TOKEN",
        "WHATSAPP_APP_SECRET",
        "WHATSAPP_VERIFY_TOKEN",
    ];

    /// Build from a lookup by variable name; empty values count as unset.
    pub fn from_lookup(mut get: impl FnMut(&str) -> Option<String>) -> Self {
        let mut take = |name: &str| get(name).filter(|v| !v.is_empty()).map(Secret::new);
        Self {
            github_webhook_secret: take("GITHUB_WEBHOOK_SECRET"),
            gitlab_webhook_token: take("GITLAB_WEBHOOK_TOKEN"),
            gitlab_signing_token: take("GITLAB_WEBHOOK_SIGNING_TOKEN"),
            jira_webhook_secret: take("JIRA_WEBHOOK_SECRET"),
            stripe_webhook_secret: take("STRIPE_WEBHOOK_SECRET"),
            twilio_auth_token: take("TWILIO_AUTH_TOKEN"),
            whatsapp_app_secret: take("WHATSAPP_APP_SECRET"),
            whatsapp_verify_token: take("WHATSAPP_VERIFY_TOKEN"),
        }
    }
}

/// What verification needs besides the request and the secrets.
#[derive(Debug, Clone)]
pub struct VerifyContext {
    pub now: DateTime<Utc>,
    /// The public base URL (`WEBHOOK_BASE_URL`): behind API Gateway the function cannot see the
    /// URL the provider signed, so Twilio's is rebuilt from this + path + query.
    pub public_base_url: Option<String>,
}

/// How a request proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// A signature or token matched.
    Signature,
    /// The provider has no secret configured and signing is optional for it (Jira).
    Unsigned,
}

/// Why a request was refused. The message is safe to log: it never holds a secret or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    #[error("signature does not match")]
    Mismatch,
    #[error("timestamp outside the {tolerance_secs} s tolerance")]
    StaleTimestamp { tolerance_secs: i64 },
    #[error("empty body")]
    EmptyBody,
    #[error("no secret is configured for {0}")]
    NotConfigured(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
}

/// The opening of every verification that needs a secret: a body to check, and the secret
/// to check it with (`name` is the setting that holds it, for the error).
pub(crate) fn body_and_secret<'a>(
    req: &Inbound,
    secret: &'a Option<Secret>,
    name: &'static str,
) -> Result<&'a Secret, VerifyError> {
    if req.body.is_empty() {
        return Err(VerifyError::EmptyBody);
    }
    secret.as_ref().ok_or(VerifyError::NotConfigured(name))
}

/// Why a verified request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// What the pipeline needs to know about a request. Read before verifying, so the payload is
/// parsed once; the pipeline still answers a failed verification (401) before a failed read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Described {
    /// The provider's delivery id; `None` means "use the body's SHA-256".
    pub delivery_id: Option<String>,
    pub event_type: String,
    /// The repository a GitHub or GitLab payload names: its connection's secret verifies it.
    pub repository: RepositoryRef,
}

/// A repository as a payload names it (GitHub `repository`, GitLab `project`). Read leniently:
/// a member of another shape is left out, never an error, since naming no repository only
/// means the global secret applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepositoryRef {
    /// GitHub `repository.full_name`; GitLab `project.path_with_namespace`.
    pub full_name: Option<String>,
    /// The named object's `id`, as written (GitLab connections are found by project id).
    pub project_id: Option<String>,
}

impl<'de> Deserialize<'de> for RepositoryRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RepositoryVisitor)
    }
}

struct RepositoryVisitor;

impl<'de> serde::de::Visitor<'de> for RepositoryVisitor {
    type Value = RepositoryRef;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = RepositoryRef::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "full_name" | "path_with_namespace" => {
                    if let Scalar(Some(name)) = map.next_value()? {
                        out.full_name = Some(name);
                    }
                }
                "id" => out.project_id = map.next_value::<Scalar>()?.0,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(RepositoryRef::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RepositoryRef::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RepositoryRef::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RepositoryRef::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RepositoryRef::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RepositoryRef::default())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(RepositoryRef::default())
    }
}

/// A string or a number as text; any other value as `None`.
struct Scalar(Option<String>);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Scalar(match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }))
    }
}

/// The answer to a provider's GET handshake (WhatsApp's `hub.challenge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Echo this text with 200.
    Challenge(String),
    /// Refuse with 403.
    Refused,
}

/// One webhook provider.
pub trait Provider: Send + Sync + 'static {
    fn source(&self) -> Source;

    /// Check the request came from the provider, over the exact raw bytes.
    fn verify(
        &self,
        req: &Inbound,
        secrets: &ProviderSecrets,
        ctx: &VerifyContext,
    ) -> Result<Verified, VerifyError>;

    /// Read the delivery id and event type of a verified request.
    fn describe(&self, req: &Inbound) -> Result<Described, ParseError>;

    /// Answer a GET on the route; `None` means the route takes POST only.
    fn handshake(&self, _req: &Inbound, _secrets: &ProviderSecrets) -> Option<Handshake> {
        None
    }
}

/// The provider for a source.
pub fn provider(source: Source) -> &'static dyn Provider {
    match source {
        Source::Github => &github::GitHub,
        Source::Gitlab => &gitlab::GitLab,
        Source::Jira => &jira::Jira,
        Source::Stripe => &stripe::Stripe,
        Source::Twilio => &twilio::Twilio,
        Source::Whatsapp => &whatsapp::WhatsApp,
    }
}

/// Shared MAC helpers: every provider signs with HMAC, compared in constant time.
pub mod mac {
    use hmac::{Hmac, Mac};
    use subtle::ConstantTimeEq;

    pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// Constant-time equality (length is not secret).
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }
}

#[cfg(test)]
mod tests {
    use super::RepositoryRef;

    fn read(json: &str) -> RepositoryRef {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_repository_is_read_from_either_providers_names() {
        let github = read(r#"{"id":812345678,"full_name":"acme/demo","owner":{"login":"acme"}}"#);
        assert_eq!(github.full_name.as_deref(), Some("acme/demo"));
        let gitlab = read(r#"{"id":60123456,"path_with_namespace":"acme/sub/demo"}"#);
        assert_eq!(gitlab.full_name.as_deref(), Some("acme/sub/demo"));
        assert_eq!(gitlab.project_id.as_deref(), Some("60123456"));
        assert_eq!(
            read(r#"{"id":"gid://7"}"#).project_id.as_deref(),
            Some("gid://7")
        );
    }

    #[test]
    fn a_repository_of_another_shape_names_nothing_and_is_no_error() {
        for odd in [
            "null",
            "\"acme/demo\"",
            "42",
            "[1,{\"full_name\":\"x\"}]",
            r#"{"full_name":{"nested":true},"id":[1]}"#,
        ] {
            assert_eq!(read(odd), RepositoryRef::default(), "{odd}");
        }
    }
}
