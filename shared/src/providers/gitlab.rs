//! GitLab: the `X-Gitlab-Token` secret token (compared in constant time), and, when the hook
//! has a signing token, Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`).
//!
//! A request passes when either configured method validates, with one exception: when a signing
//! token is configured and the request carries a `webhook-signature`, that signature must be
//! valid — a bad signature is never rescued by a good token.

use super::github::{header, json_object, non_empty_header};
use super::mac::ct_eq;
use super::standard_webhooks;
use super::{
    Described, Inbound, ParseError, Provider, ProviderSecrets, RepositoryRef, Verified,
    VerifyContext, VerifyError,
};
use crate::model::Source;
use http::HeaderName;
use serde::Deserialize;

pub const TOKEN_HEADER: &str = "X-Gitlab-Token";
/// [`TOKEN_HEADER`] pre-parsed, for the lookup on every delivery.
const TOKEN_HEADER_NAME: HeaderName = HeaderName::from_static("x-gitlab-token");
pub const EVENT_HEADER: &str = "X-Gitlab-Event";
pub const EVENT_UUID_HEADER: &str = "X-Gitlab-Event-UUID";
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
pub const TOKEN_NAME: &str = "GITLAB_WEBHOOK_TOKEN";

/// Check an `X-Gitlab-Token` value (`None` when absent) against the configured token.
pub fn verify_token(expected: &[u8], header: Option<&str>) -> Result<(), VerifyError> {
    let given = header.ok_or(VerifyError::MissingHeader(TOKEN_HEADER))?;
    if ct_eq(expected, given.as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// The authentication headers GitLab sends for a hook with this secret token and/or signing
/// token: `X-Gitlab-Token`, and the three Standard Webhooks headers.
pub fn signed_headers(
    token: Option<&str>,
    signing_token: Option<&str>,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, standard_webhooks::InvalidSecret> {
    let mut headers = Vec::new();
    if let Some(token) = token {
        headers.push((TOKEN_HEADER, token.to_owned()));
    }
    if let Some(signing) = signing_token {
        headers.extend(standard_webhooks::headers(
            signing, webhook_id, timestamp, body,
        )?);
    }
    Ok(headers)
}

/// The GitLab provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct GitLab;

impl Provider for GitLab {
    fn source(&self) -> Source {
        Source::Gitlab
    }

    fn verify(
        &self,
        req: &Inbound,
        secrets: &ProviderSecrets,
        ctx: &VerifyContext,
    ) -> Result<Verified, VerifyError> {
        if req.body.is_empty() {
            return Err(VerifyError::EmptyBody);
        }
        let token = secrets.gitlab_webhook_token.as_ref();
        let signing = secrets.gitlab_signing_token.as_ref();
        let signature = header(req, &standard_webhooks::SIGNATURE_NAME);

        if let (Some(signing), Some(signature)) = (signing, signature) {
            standard_webhooks::verify(
                signing.expose(),
                header(req, &standard_webhooks::ID_NAME),
                header(req, &standard_webhooks::TIMESTAMP_NAME),
                &req.body,
                Some(signature),
                ctx.now,
                standard_webhooks::TOLERANCE_SECS,
            )?;
            return Ok(Verified::Signature);
        }
        match (token, signing) {
            (Some(token), _) => {
                verify_token(token.as_bytes(), header(req, &TOKEN_HEADER_NAME))?;
                Ok(Verified::Signature)
            }
            (None, Some(_)) => Err(VerifyError::MissingHeader(
                standard_webhooks::SIGNATURE_HEADER,
            )),
            (None, None) => Err(VerifyError::NotConfigured(TOKEN_NAME)),
        }
    }

    fn describe(&self, req: &Inbound) -> Result<Described, ParseError> {
        let body: Body = json_object(&req.body)?;
        let event_type = body
            .object_kind
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .or_else(|| non_empty_header(req, EVENT_HEADER))
            .ok_or_else(|| ParseError(format!("missing {EVENT_HEADER} header and object_kind")))?;
        let delivery_id = non_empty_header(req, IDEMPOTENCY_HEADER)
            .or_else(|| non_empty_header(req, EVENT_UUID_HEADER));
        Ok(Described {
            delivery_id,
            event_type,
            repository: body.project,
        })
    }
}

#[derive(Deserialize)]
struct Body {
    object_kind: Option<String>,
    #[serde(default)]
    project: RepositoryRef,
}

#[cfg(test)]
mod tests {
    use super::super::github::test_support::*;
    use super::*;
    use crate::secret::Secret;

    const TOKEN: &str = "glpat-ish-secret-token";
    const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const BODY: &[u8] = br#"{"object_kind":"pipeline","project":{"id":7}}"#;
    const NOW: i64 = 1_700_000_000;

    fn secrets(token: Option<&str>, signing: Option<&str>) -> ProviderSecrets {
        ProviderSecrets {
            gitlab_webhook_token: token.map(Secret::new),
            gitlab_signing_token: signing.map(Secret::new),
            ..Default::default()
        }
    }

    fn request(token: Option<&str>, signing: Option<&str>, body: &[u8]) -> Inbound {
        let mut headers = signed_headers(token, signing, "msg_1", NOW, body).unwrap();
        headers.push((EVENT_HEADER, "Pipeline Hook".into()));
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post(&refs, body)
    }

    fn verify(req: &Inbound, secrets: &ProviderSecrets) -> Result<Verified, VerifyError> {
        GitLab.verify(req, secrets, &ctx_at(NOW))
    }

    #[test]
    fn the_right_token_verifies() {
        let req = request(Some(TOKEN), None, BODY);
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), None)),
            Ok(Verified::Signature)
        );
    }

    #[test]
    fn a_wrong_token_is_a_mismatch() {
        let req = request(Some("glpat-ish-secret-tokeN"), None, BODY);
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), None)),
            Err(VerifyError::Mismatch)
        );
        let req = request(Some("short"), None, BODY);
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), None)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_request_without_the_token_header_is_refused() {
        let req = request(None, None, BODY);
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), None)),
            Err(VerifyError::MissingHeader("X-Gitlab-Token"))
        );
    }

    #[test]
    fn an_empty_body_is_refused() {
        let req = request(Some(TOKEN), None, b"");
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), None)),
            Err(VerifyError::EmptyBody)
        );
    }

    #[test]
    fn nothing_configured_means_nothing_is_accepted() {
        let req = request(Some(TOKEN), Some(SIGNING), BODY);
        assert_eq!(
            verify(&req, &secrets(None, None)),
            Err(VerifyError::NotConfigured("GITLAB_WEBHOOK_TOKEN"))
        );
    }

    #[test]
    fn a_signing_token_alone_verifies_standard_webhooks_signatures() {
        let req = request(None, Some(SIGNING), BODY);
        assert_eq!(
            verify(&req, &secrets(None, Some(SIGNING))),
            Ok(Verified::Signature)
        );
    }

    #[test]
    fn a_signing_token_alone_needs_the_signature_header() {
        let req = request(Some(TOKEN), None, BODY);
        assert_eq!(
            verify(&req, &secrets(None, Some(SIGNING))),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
    }

    #[test]
    fn with_both_configured_a_valid_signature_is_enough() {
        let req = request(Some("wrong token"), Some(SIGNING), BODY);
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), Some(SIGNING))),
            Ok(Verified::Signature)
        );
    }

    #[test]
    fn with_both_configured_a_token_is_enough_when_no_signature_is_sent() {
        let req = request(Some(TOKEN), None, BODY);
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), Some(SIGNING))),
            Ok(Verified::Signature)
        );
    }

    #[test]
    fn a_present_but_invalid_signature_is_refused_even_with_the_right_token() {
        let mut body = BODY.to_vec();
        let req = request(Some(TOKEN), Some(SIGNING), BODY);
        body[5] ^= 0x01;
        let tampered = Inbound {
            body: body.into(),
            ..req
        };
        assert_eq!(
            verify(&tampered, &secrets(Some(TOKEN), Some(SIGNING))),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_signature_from_another_signing_token_is_a_mismatch() {
        let other = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBvZiAzMiBieXRlcw==";
        let req = request(None, Some(other), BODY);
        assert_eq!(
            verify(&req, &secrets(None, Some(SIGNING))),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_stale_or_future_signature_timestamp_is_refused() {
        let req = request(None, Some(SIGNING), BODY);
        let s = secrets(None, Some(SIGNING));
        for now in [NOW + 301, NOW - 301] {
            assert_eq!(
                GitLab.verify(&req, &s, &ctx_at(now)),
                Err(VerifyError::StaleTimestamp {
                    tolerance_secs: 300
                })
            );
        }
    }

    #[test]
    fn a_malformed_signature_header_is_refused() {
        let req = post(
            &[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", "1700000000"),
                ("webhook-signature", "sha256=abc"),
            ],
            BODY,
        );
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), Some(SIGNING))),
            Err(VerifyError::MalformedHeader("webhook-signature"))
        );
    }

    #[test]
    fn a_signature_header_is_ignored_when_no_signing_token_is_configured() {
        let req = request(Some(TOKEN), Some(SIGNING), BODY);
        assert_eq!(
            verify(&req, &secrets(Some(TOKEN), None)),
            Ok(Verified::Signature)
        );
    }

    #[test]
    fn describe_prefers_the_idempotency_key_then_the_event_uuid() {
        let both = post(
            &[
                ("Idempotency-Key", "idem-1"),
                ("X-Gitlab-Event-UUID", "uuid-1"),
                ("X-Gitlab-Event", "Pipeline Hook"),
            ],
            BODY,
        );
        assert_eq!(
            GitLab.describe(&both),
            Ok(Described {
                delivery_id: Some("idem-1".into()),
                event_type: "pipeline".into(),
                repository: RepositoryRef {
                    full_name: None,
                    project_id: Some("7".into()),
                },
            })
        );
        let uuid = post(&[("X-Gitlab-Event-UUID", "uuid-1")], BODY);
        assert_eq!(
            GitLab.describe(&uuid).unwrap().delivery_id,
            Some("uuid-1".into())
        );
        let neither = post(&[("X-Gitlab-Event", "Pipeline Hook")], BODY);
        assert_eq!(GitLab.describe(&neither).unwrap().delivery_id, None);
    }

    #[test]
    fn describe_normalises_the_event_to_the_object_kind() {
        for (header, kind) in [
            ("Push Hook", "push"),
            ("Tag Push Hook", "tag_push"),
            ("Merge Request Hook", "merge_request"),
            ("Issue Hook", "issue"),
            ("Job Hook", "build"),
        ] {
            let body = format!(r#"{{"object_kind":"{kind}"}}"#);
            let req = post(&[("X-Gitlab-Event", header)], body);
            assert_eq!(GitLab.describe(&req).unwrap().event_type, kind);
        }
    }

    #[test]
    fn describe_falls_back_to_the_event_header_without_an_object_kind() {
        let req = post(
            &[("X-Gitlab-Event", "System Hook")],
            &br#"{"event_name":"x"}"#[..],
        );
        assert_eq!(GitLab.describe(&req).unwrap().event_type, "System Hook");
        let req = post(&[], &br#"{"event_name":"x"}"#[..]);
        assert!(GitLab.describe(&req).is_err());
        let req = post(&[("X-Gitlab-Event", "Push Hook")], &b"push"[..]);
        assert!(GitLab.describe(&req).is_err());
    }

    #[test]
    fn the_pre_parsed_header_name_is_the_header() {
        assert_eq!(TOKEN_HEADER_NAME, TOKEN_HEADER);
    }
}
