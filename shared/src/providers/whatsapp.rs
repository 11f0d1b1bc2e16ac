//! WhatsApp Cloud API (Meta). GET is the subscription handshake: `hub.mode=subscribe` with the
//! configured `hub.verify_token` is answered by echoing `hub.challenge`; anything else is
//! refused. POST deliveries carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret,
//! raw body)>`, the same scheme as GitHub.
//!
//! There is no delivery id: a retry resends the same bytes and one message id has several
//! status updates, so the pipeline dedupes on the body's SHA-256.

use super::github::{self, json_object};
use super::mac::ct_eq;
use super::{
    Described, Handshake, Inbound, ParseError, Provider, ProviderSecrets, Verified, VerifyContext,
    VerifyError,
};
use crate::model::Source;
use serde::Deserialize;

pub const SIGNATURE_HEADER: &str = github::SIGNATURE_HEADER;
pub const SECRET_NAME: &str = "WHATSAPP_APP_SECRET";

/// The `X-Hub-Signature-256` value Meta sends.
pub fn signature(app_secret: &[u8], body: &[u8]) -> String {
    github::signature(app_secret, body)
}

/// Check an `X-Hub-Signature-256` value (`None` when absent) over the raw body.
pub fn verify_signature(
    app_secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), VerifyError> {
    github::verify_signature(app_secret, body, header)
}

/// Answer the subscription handshake from its decoded query values.
pub fn handshake(
    verify_token: Option<&[u8]>,
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&str>,
) -> Handshake {
    match (verify_token, mode, token, challenge) {
        (Some(expected), Some("subscribe"), Some(given), Some(challenge))
            if ct_eq(expected, given.as_bytes()) =>
        {
            Handshake::Challenge(challenge.to_owned())
        }
        _ => Handshake::Refused,
    }
}

/// The WhatsApp provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct WhatsApp;

impl Provider for WhatsApp {
    fn source(&self) -> Source {
        Source::Whatsapp
    }

    fn verify(
        &self,
        req: &Inbound,
        secrets: &ProviderSecrets,
        _ctx: &VerifyContext,
    ) -> Result<Verified, VerifyError> {
        let secret = super::body_and_secret(req, &secrets.whatsapp_app_secret, SECRET_NAME)?;
        verify_signature(
            secret.as_bytes(),
            &req.body,
            github::header(req, &github::SIGNATURE_NAME),
        )?;
        Ok(Verified::Signature)
    }

    fn describe(&self, req: &Inbound) -> Result<Described, ParseError> {
        let body: serde_json::Map<String, serde_json::Value> = json_object(&req.body)?;
        let typed = serde_json::from_value::<Body>(serde_json::Value::Object(body)).ok();
        let event_type = typed
            .and_then(|b| {
                let object = b.object.filter(|o| !o.is_empty())?;
                let field = b
                    .entry
                    .into_iter()
                    .next()?
                    .changes
                    .into_iter()
                    .next()?
                    .field
                    .filter(|f| !f.is_empty())?;
                Some(format!("{object}.{field}"))
            })
            .unwrap_or_else(|| "whatsapp".to_owned());
        Ok(Described {
            delivery_id: None,
            event_type,
            ..Default::default()
        })
    }

    fn handshake(&self, req: &Inbound, secrets: &ProviderSecrets) -> Option<Handshake> {
        let verify_token = secrets.whatsapp_verify_token.as_ref().map(|s| s.as_bytes());
        Some(handshake(
            verify_token,
            req.query_param("hub.mode").as_deref(),
            req.query_param("hub.verify_token").as_deref(),
            req.query_param("hub.challenge").as_deref(),
        ))
    }
}

#[derive(Deserialize)]
struct Body {
    object: Option<String>,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::github::test_support::*;
    use super::*;
    use http::Method;

    const APP_SECRET: &str = "meta-app-secret";
    const VERIFY_TOKEN: &str = "my-verify-token";
    const BODY: &[u8] = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","statuses":[{"id":"wamid.X","status":"delivered"}]},"field":"messages"}]}]}"#;

    fn secrets() -> ProviderSecrets {
        ProviderSecrets {
            whatsapp_app_secret: secret(APP_SECRET),
            whatsapp_verify_token: secret(VERIFY_TOKEN),
            ..Default::default()
        }
    }

    fn delivery(sig: Option<&str>, body: &[u8]) -> Inbound {
        match sig {
            Some(sig) => post(&[("X-Hub-Signature-256", sig)], body),
            None => post(&[], body),
        }
    }

    fn verify(req: &Inbound) -> Result<Verified, VerifyError> {
        WhatsApp.verify(req, &secrets(), &ctx_at(0))
    }

    fn get(query: &str) -> Inbound {
        inbound(
            Method::GET,
            "/api/v1/webhooks/whatsapp",
            Some(query),
            &[],
            Vec::new(),
        )
    }

    #[test]
    fn the_subscription_handshake_with_the_right_token_echoes_the_challenge() {
        let req =
            get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=my-verify-token");
        assert_eq!(
            WhatsApp.handshake(&req, &secrets()),
            Some(Handshake::Challenge("1158201444".into()))
        );
    }

    #[test]
    fn the_handshake_decodes_query_values() {
        let req =
            get("hub.mode=subscribe&hub.challenge=a%20b&hub.verify_token=my%2Dverify%2Dtoken");
        assert_eq!(
            WhatsApp.handshake(&req, &secrets()),
            Some(Handshake::Challenge("a b".into()))
        );
    }

    #[test]
    fn the_handshake_with_a_wrong_token_is_refused() {
        let req = get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=guess");
        assert_eq!(
            WhatsApp.handshake(&req, &secrets()),
            Some(Handshake::Refused)
        );
    }

    #[test]
    fn the_handshake_with_another_mode_is_refused() {
        let req =
            get("hub.mode=unsubscribe&hub.challenge=1158201444&hub.verify_token=my-verify-token");
        assert_eq!(
            WhatsApp.handshake(&req, &secrets()),
            Some(Handshake::Refused)
        );
    }

    #[test]
    fn the_handshake_without_a_challenge_or_a_configured_token_is_refused() {
        let req = get("hub.mode=subscribe&hub.verify_token=my-verify-token");
        assert_eq!(
            WhatsApp.handshake(&req, &secrets()),
            Some(Handshake::Refused)
        );
        let req = get("hub.mode=subscribe&hub.challenge=1&hub.verify_token=my-verify-token");
        assert_eq!(
            WhatsApp.handshake(&req, &no_secrets()),
            Some(Handshake::Refused)
        );
        let req = get("hub.mode=subscribe&hub.challenge=1&hub.verify_token=");
        assert_eq!(
            WhatsApp.handshake(&req, &no_secrets()),
            Some(Handshake::Refused)
        );
    }

    #[test]
    fn a_whatsapp_delivery_signed_with_the_app_secret_verifies() {
        let req = delivery(Some(&signature(APP_SECRET.as_bytes(), BODY)), BODY);
        assert_eq!(verify(&req), Ok(Verified::Signature));
    }

    #[test]
    fn a_signature_made_with_another_secret_is_a_mismatch() {
        let req = delivery(Some(&signature(b"other", BODY)), BODY);
        assert_eq!(verify(&req), Err(VerifyError::Mismatch));
    }

    #[test]
    fn one_flipped_byte_of_the_body_is_a_mismatch() {
        let mut body = BODY.to_vec();
        body[12] ^= 0x01;
        let req = delivery(Some(&signature(APP_SECRET.as_bytes(), BODY)), &body);
        assert_eq!(verify(&req), Err(VerifyError::Mismatch));
    }

    #[test]
    fn a_delivery_without_the_signature_header_is_refused() {
        assert_eq!(
            verify(&delivery(None, BODY)),
            Err(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn a_malformed_signature_header_is_refused() {
        assert_eq!(
            verify(&delivery(Some("sha1=abcdef"), BODY)),
            Err(VerifyError::MalformedHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn an_empty_body_is_refused() {
        let req = delivery(Some(&signature(APP_SECRET.as_bytes(), b"")), b"");
        assert_eq!(verify(&req), Err(VerifyError::EmptyBody));
    }

    #[test]
    fn without_an_app_secret_nothing_is_accepted() {
        let req = delivery(Some(&signature(APP_SECRET.as_bytes(), BODY)), BODY);
        assert_eq!(
            WhatsApp.verify(&req, &no_secrets(), &ctx_at(0)),
            Err(VerifyError::NotConfigured("WHATSAPP_APP_SECRET"))
        );
    }

    #[test]
    fn describe_names_the_object_and_the_first_change_field() {
        assert_eq!(
            WhatsApp.describe(&delivery(None, BODY)),
            Ok(Described {
                delivery_id: None,
                event_type: "whatsapp_business_account.messages".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn describe_falls_back_to_whatsapp_for_other_json_objects() {
        for body in [&br#"{"object":"page"}"#[..], br#"{"entry":"odd"}"#, b"{}"] {
            assert_eq!(
                WhatsApp.describe(&delivery(None, body)).unwrap().event_type,
                "whatsapp"
            );
        }
        for body in [&b"[]"[..], b"hello"] {
            assert!(WhatsApp.describe(&delivery(None, body)).is_err());
        }
    }
}
