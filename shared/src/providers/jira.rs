//! Jira: when a secret is configured, `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw
//! body)>` or, for webhooks registered the legacy way, a `?secret=<value>` query parameter.
//! Without a configured secret Jira deliveries are accepted unsigned (signing is optional in
//! Jira), and recorded as such.
//!
//! The query string of a legacy Jira request carries the secret: never log it.

use super::github::{self, json_object, non_empty_header};
use super::mac::ct_eq;
use super::{
    Described, Inbound, ParseError, Provider, ProviderSecrets, Verified, VerifyContext, VerifyError,
};
use crate::model::Source;
use http::HeaderName;
use serde::Deserialize;

pub const SIGNATURE_HEADER: &str = "X-Hub-Signature";
/// [`SIGNATURE_HEADER`] pre-parsed, for the lookup on every delivery.
const SIGNATURE_NAME: HeaderName = HeaderName::from_static("x-hub-signature");
pub const DELIVERY_HEADER: &str = "X-Atlassian-Webhook-Identifier";
pub const SECRET_QUERY_PARAM: &str = "secret";

/// The `X-Hub-Signature` value Jira sends: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    github::signature(secret, body)
}

/// Check an `X-Hub-Signature` value (`None` when absent) over the raw body.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), VerifyError> {
    github::verify_hub_signature(SIGNATURE_HEADER, secret, body, header)
}

/// Check the decoded legacy `?secret=` value against the configured secret.
pub fn verify_query_secret(secret: &[u8], value: Option<&str>) -> Result<(), VerifyError> {
    let value = value.ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER))?;
    if ct_eq(secret, value.as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// The Jira provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct Jira;

impl Provider for Jira {
    fn source(&self) -> Source {
        Source::Jira
    }

    fn verify(
        &self,
        req: &Inbound,
        secrets: &ProviderSecrets,
        _ctx: &VerifyContext,
    ) -> Result<Verified, VerifyError> {
        if req.body.is_empty() {
            return Err(VerifyError::EmptyBody);
        }
        let Some(secret) = secrets.jira_webhook_secret.as_ref() else {
            return Ok(Verified::Unsigned);
        };
        // Either method is enough; when both fail, the header's reason is the one reported.
        let header_error = match github::header(req, &SIGNATURE_NAME) {
            Some(h) => match verify_signature(secret.as_bytes(), &req.body, Some(h)) {
                Ok(()) => return Ok(Verified::Signature),
                Err(e) => Some(e),
            },
            None => None,
        };
        let query_error = match req.query_param(SECRET_QUERY_PARAM) {
            Some(q) => match verify_query_secret(secret.as_bytes(), Some(&q)) {
                Ok(()) => return Ok(Verified::Signature),
                Err(e) => Some(e),
            },
            None => None,
        };
        Err(header_error
            .or(query_error)
            .unwrap_or(VerifyError::MissingHeader(SIGNATURE_HEADER)))
    }

    fn describe(&self, req: &Inbound) -> Result<Described, ParseError> {
        let body: Body = json_object(&req.body)?;
        let event_type = body
            .webhook_event
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .ok_or_else(|| ParseError("body has no webhookEvent".into()))?;
        Ok(Described {
            delivery_id: non_empty_header(req, DELIVERY_HEADER),
            event_type,
            ..Default::default()
        })
    }
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "webhookEvent")]
    webhook_event: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::github::test_support::*;
    use super::*;
    use http::Method;

    const SECRET: &str = "jira-webhook-secret";
    const BODY: &[u8] = br#"{"timestamp":1700000000000,"webhookEvent":"jira:issue_created","issue":{"key":"HL-1"}}"#;

    fn secrets() -> ProviderSecrets {
        ProviderSecrets {
            jira_webhook_secret: secret(SECRET),
            ..Default::default()
        }
    }

    fn signed(sig: Option<&str>, query: Option<&str>, body: &[u8]) -> Inbound {
        let mut headers = vec![("X-Atlassian-Webhook-Identifier", "12345")];
        if let Some(sig) = sig {
            headers.push(("X-Hub-Signature", sig));
        }
        inbound(Method::POST, "/api/v1/webhooks/jira", query, &headers, body)
    }

    fn verify(req: &Inbound, secrets: &ProviderSecrets) -> Result<Verified, VerifyError> {
        Jira.verify(req, secrets, &ctx_at(0))
    }

    #[test]
    fn a_jira_delivery_signed_with_the_secret_verifies() {
        let sig = signature(SECRET.as_bytes(), BODY);
        assert!(sig.starts_with("sha256="));
        let req = signed(Some(&sig), None, BODY);
        assert_eq!(verify(&req, &secrets()), Ok(Verified::Signature));
    }

    #[test]
    fn the_legacy_query_secret_verifies() {
        let req = signed(None, Some("secret=jira-webhook-secret"), BODY);
        assert_eq!(verify(&req, &secrets()), Ok(Verified::Signature));
        let encoded = signed(None, Some("user=x&secret=jira%2Dwebhook%2Dsecret"), BODY);
        assert_eq!(verify(&encoded, &secrets()), Ok(Verified::Signature));
    }

    #[test]
    fn a_wrong_query_secret_is_a_mismatch() {
        let req = signed(None, Some("secret=jira-webhook-secreT"), BODY);
        assert_eq!(verify(&req, &secrets()), Err(VerifyError::Mismatch));
    }

    #[test]
    fn a_signature_made_with_another_secret_is_a_mismatch() {
        let sig = signature(b"another", BODY);
        let req = signed(Some(&sig), None, BODY);
        assert_eq!(verify(&req, &secrets()), Err(VerifyError::Mismatch));
    }

    #[test]
    fn one_flipped_byte_of_the_body_is_a_mismatch() {
        let sig = signature(SECRET.as_bytes(), BODY);
        let mut body = BODY.to_vec();
        body[20] ^= 0x04;
        let req = signed(Some(&sig), None, &body);
        assert_eq!(verify(&req, &secrets()), Err(VerifyError::Mismatch));
    }

    #[test]
    fn a_signed_request_needs_the_header_or_the_query_secret() {
        let req = signed(None, None, BODY);
        assert_eq!(
            verify(&req, &secrets()),
            Err(VerifyError::MissingHeader("X-Hub-Signature"))
        );
    }

    #[test]
    fn a_malformed_signature_header_is_refused() {
        let req = signed(Some("sha256=not-hex"), None, BODY);
        assert_eq!(
            verify(&req, &secrets()),
            Err(VerifyError::MalformedHeader("X-Hub-Signature"))
        );
    }

    #[test]
    fn either_method_is_enough_when_both_are_sent() {
        let bad_sig = signature(b"stale secret", BODY);
        let req = signed(Some(&bad_sig), Some("secret=jira-webhook-secret"), BODY);
        assert_eq!(verify(&req, &secrets()), Ok(Verified::Signature));
        let good_sig = signature(SECRET.as_bytes(), BODY);
        let req = signed(Some(&good_sig), Some("secret=wrong"), BODY);
        assert_eq!(verify(&req, &secrets()), Ok(Verified::Signature));
    }

    #[test]
    fn without_a_secret_jira_deliveries_are_accepted_unsigned() {
        let req = signed(None, None, BODY);
        assert_eq!(verify(&req, &no_secrets()), Ok(Verified::Unsigned));
    }

    #[test]
    fn an_empty_body_is_refused_signed_or_not() {
        let req = signed(Some(&signature(SECRET.as_bytes(), b"")), None, b"");
        assert_eq!(verify(&req, &secrets()), Err(VerifyError::EmptyBody));
        assert_eq!(verify(&req, &no_secrets()), Err(VerifyError::EmptyBody));
    }

    #[test]
    fn describe_reads_the_webhook_event_and_the_identifier_header() {
        let req = signed(None, None, BODY);
        assert_eq!(
            Jira.describe(&req),
            Ok(Described {
                delivery_id: Some("12345".into()),
                event_type: "jira:issue_created".into(),
                ..Default::default()
            })
        );
        let bare = post(&[], BODY);
        assert_eq!(Jira.describe(&bare).unwrap().delivery_id, None);
    }

    #[test]
    fn describe_needs_json_with_a_webhook_event() {
        for body in [
            &b"webhookEvent=jira:issue_created"[..],
            br#"{"issue":{}}"#,
            b"[]",
        ] {
            assert!(Jira.describe(&post(&[], body)).is_err());
        }
    }

    #[test]
    fn the_pre_parsed_header_name_is_the_header() {
        assert_eq!(SIGNATURE_NAME, SIGNATURE_HEADER);
    }
}
