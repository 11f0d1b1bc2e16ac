//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`.
//!
//! The signed payload is `"{t}.{raw body}"`, HMAC-SHA256 keyed with the whole endpoint secret
//! string (`whsec_…` as bytes, not base64-decoded — unlike Standard Webhooks). Any `v1` may match
//! (Stripe sends several while a secret is rolled); other schemes (`v0`, test-mode extras) are
//! ignored. The timestamp must be within 300 s of now, either way.

use super::github::{ct_eq_mac, decode_hex, header as header_value, json_object};
use super::mac::hmac_sha256;
use super::{
    Described, Inbound, ParseError, Provider, ProviderSecrets, Verified, VerifyContext, VerifyError,
};
use crate::model::Source;
use chrono::{DateTime, Utc};
use http::HeaderName;
use serde::Deserialize;

pub const SIGNATURE_HEADER: &str = "Stripe-Signature";
pub const SECRET_NAME: &str = "STRIPE_WEBHOOK_SECRET";
pub const TOLERANCE_SECS: i64 = 300;

/// [`SIGNATURE_HEADER`] pre-parsed, for the lookup on every delivery.
const SIGNATURE_NAME: HeaderName = HeaderName::from_static("stripe-signature");

/// The hex `v1` signature of `body` at time `t`.
pub fn signature(secret: &str, body: &[u8], t: i64) -> String {
    hex::encode(mac(secret, body, t))
}

fn mac(secret: &str, body: &[u8], t: i64) -> [u8; 32] {
    // Formatted on the stack: no allocation per delivery.
    let mut t_text = itoa::Buffer::new();
    let t = t_text.format(t);
    hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body])
}

/// The `Stripe-Signature` header value Stripe sends: `t=<t>,v1=<hex>`.
pub fn sign(secret: &str, body: &[u8], t: i64) -> String {
    format!("t={t},v1={}", signature(secret, body, t))
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    pub timestamp: i64,
    /// The `v1` values, hex, as sent.
    pub v1: Vec<&'a str>,
}

/// The `key=value` items of a `Stripe-Signature` value, the key trimmed; items without `=` are
/// skipped.
fn items(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value
        .split(',')
        .filter_map(|item| item.split_once('='))
        .map(|(key, val)| (key.trim(), val))
}

/// The `v1` values of a `Stripe-Signature` value, trimmed, in order.
fn v1_values(value: &str) -> impl Iterator<Item = &str> {
    items(value)
        .filter(|(key, _)| *key == "v1")
        .map(|(_, val)| val.trim())
}

/// What one pass over a `Stripe-Signature` value finds: the timestamp, checked as
/// [`parse_header`] checks it (exactly one numeric `t`, at least one `v1`), the first `v1` and how
/// many there are, so the usual single `v1` needs no second pass.
struct Scanned<'a> {
    timestamp: i64,
    first_v1: &'a str,
    v1_count: usize,
}

fn scan_header(value: &str) -> Result<Scanned<'_>, VerifyError> {
    let malformed = VerifyError::MalformedHeader(SIGNATURE_HEADER);
    let mut timestamp = None;
    let (mut first_v1, mut v1_count) = ("", 0);
    for (key, val) in items(value) {
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(malformed);
                }
                timestamp = Some(val.trim().parse::<i64>().map_err(|_| malformed.clone())?);
            }
            "v1" => {
                if v1_count == 0 {
                    first_v1 = val.trim();
                }
                v1_count += 1;
            }
            _ => {}
        }
    }
    match timestamp {
        Some(timestamp) if v1_count > 0 => Ok(Scanned {
            timestamp,
            first_v1,
            v1_count,
        }),
        _ => Err(malformed),
    }
}

/// Split a `Stripe-Signature` value: exactly one numeric `t`, at least one `v1`.
pub fn parse_header(value: &str) -> Result<SignatureHeader<'_>, VerifyError> {
    let timestamp = scan_header(value)?.timestamp;
    Ok(SignatureHeader {
        timestamp,
        v1: v1_values(value).collect(),
    })
}

/// Check a `Stripe-Signature` value (`None` when absent) over the raw body at `now`.
pub fn verify(
    secret: &str,
    body: &[u8],
    header: Option<&str>,
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER))?;
    let scanned = scan_header(header)?;
    // abs_diff: `t=-9223372036854775808` must be refused, not overflow.
    if now.timestamp().abs_diff(scanned.timestamp) > tolerance_secs.unsigned_abs() {
        return Err(VerifyError::StaleTimestamp { tolerance_secs });
    }
    let expected = mac(secret, body, scanned.timestamp);
    // Every candidate is compared, so the time taken does not say which one matched. A value
    // that is not 64 hex digits cannot match, as before.
    let matches = |candidate: &str| {
        decode_hex::<32>(candidate).is_some_and(|given| ct_eq_mac(&expected, &given))
    };
    let matched = if scanned.v1_count == 1 {
        matches(scanned.first_v1)
    } else {
        v1_values(header).fold(false, |matched, candidate| matched | matches(candidate))
    };
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// The Stripe provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stripe;

impl Provider for Stripe {
    fn source(&self) -> Source {
        Source::Stripe
    }

    fn verify(
        &self,
        req: &Inbound,
        secrets: &ProviderSecrets,
        ctx: &VerifyContext,
    ) -> Result<Verified, VerifyError> {
        let secret = super::body_and_secret(req, &secrets.stripe_webhook_secret, SECRET_NAME)?;
        verify(
            secret.expose(),
            &req.body,
            header_value(req, &SIGNATURE_NAME),
            ctx.now,
            TOLERANCE_SECS,
        )?;
        Ok(Verified::Signature)
    }

    fn describe(&self, req: &Inbound) -> Result<Described, ParseError> {
        let body: Body = json_object(&req.body)?;
        let id = body
            .id
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ParseError("event has no id".into()))?;
        let event_type = body
            .event_type
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ParseError("event has no type".into()))?;
        Ok(Described {
            delivery_id: Some(id),
            event_type,
            ..Default::default()
        })
    }
}

#[derive(Deserialize)]
struct Body {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::github::test_support::*;
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] =
        br#"{"id":"evt_1","object":"event","type":"invoice.paid","data":{"object":{}}}"#;
    const T: i64 = 1_700_000_000;

    fn secrets() -> ProviderSecrets {
        ProviderSecrets {
            stripe_webhook_secret: secret(SECRET),
            ..Default::default()
        }
    }

    fn request(header: Option<&str>, body: &[u8]) -> Inbound {
        match header {
            Some(h) => post(&[("Stripe-Signature", h)], body),
            None => post(&[], body),
        }
    }

    fn verify_at(req: &Inbound, now: i64) -> Result<Verified, VerifyError> {
        Stripe.verify(req, &secrets(), &ctx_at(now))
    }

    /// A real delivery: the `customer.updated` event and `Stripe-Signature` header published in
    /// the test suite of agrafix/stripe-hs (stripe-hs/test/WebhookSpec.hs and
    /// stripe-hs/test-data/customer_webhook.json without its trailing newline), signed by Stripe
    /// with an endpoint secret its author has since deleted.
    mod published {
        pub const SECRET: &str = "whsec_2FZJ5Kqdi6AF8fGCLOCP9lH8Hpw9DW6T";
        pub const HEADER: &str = "t=1608784111,\
            v1=3cef61e0cf5ad6e9832925080d463dd7396160f8371c430e426242f3f89f4126,\
            v0=aa179c5358b80a557a960137a85279caa13b06a05390816b533c3c146127bbe0";
        pub const BODY: &str = r#"{
  "id": "evt_1I1lRDCAi9F65qzmBGkbFoBI",
  "object": "event",
  "api_version": "2020-08-27",
  "created": 1608784111,
  "data": {
    "object": {
      "id": "cus_Id1Ulz09V5J58Y",
      "object": "customer",
      "address": null,
      "balance": 0,
      "created": 1608784111,
      "currency": null,
      "default_source": null,
      "delinquent": false,
      "description": null,
      "discount": null,
      "email": "mail+2@athiemann.net",
      "invoice_prefix": "0347A879",
      "invoice_settings": {
        "custom_fields": null,
        "default_payment_method": null,
        "footer": null
      },
      "livemode": false,
      "metadata": {
      },
      "name": null,
      "next_invoice_sequence": 1,
      "phone": null,
      "preferred_locales": [

      ],
      "shipping": null,
      "tax_exempt": "none"
    },
    "previous_attributes": {
      "email": "mail@athiemann.net"
    }
  },
  "livemode": false,
  "pending_webhooks": 1,
  "request": {
    "id": "req_Gk9uCas2pS3Xlr",
    "idempotency_key": null
  },
  "type": "customer.updated"
}"#;
    }

    #[test]
    fn a_delivery_signed_by_stripe_verifies_with_the_whole_whsec_string_as_key() {
        let req = request(Some(published::HEADER), published::BODY.as_bytes());
        let secrets = ProviderSecrets {
            stripe_webhook_secret: secret(published::SECRET),
            ..Default::default()
        };
        assert_eq!(
            Stripe.verify(&req, &secrets, &ctx_at(1608784111 + 5)),
            Ok(Verified::Signature)
        );
        assert_eq!(
            Stripe.describe(&req),
            Ok(Described {
                delivery_id: Some("evt_1I1lRDCAi9F65qzmBGkbFoBI".into()),
                event_type: "customer.updated".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn sign_reproduces_the_published_v1_signature() {
        let header = sign(published::SECRET, published::BODY.as_bytes(), 1608784111);
        assert_eq!(
            header,
            "t=1608784111,v1=3cef61e0cf5ad6e9832925080d463dd7396160f8371c430e426242f3f89f4126"
        );
    }

    #[test]
    fn sign_matches_an_independent_hmac_of_t_dot_body() {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{T}.").as_bytes());
        mac.update(BODY);
        let independent = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sign(SECRET, BODY, T), format!("t={T},v1={independent}"));
    }

    #[test]
    fn a_stripe_delivery_signed_with_sign_verifies() {
        let req = request(Some(&sign(SECRET, BODY, T)), BODY);
        assert_eq!(verify_at(&req, T), Ok(Verified::Signature));
    }

    #[test]
    fn any_v1_may_match_and_other_schemes_are_ignored() {
        let good = signature(SECRET, BODY, T);
        let other = signature("whsec_old", BODY, T);
        let header = format!("t={T},v1={other},v0=deadbeef,v1={good},v2=zz");
        assert_eq!(
            verify_at(&request(Some(&header), BODY), T),
            Ok(Verified::Signature)
        );
    }

    #[test]
    fn a_signature_made_with_another_secret_is_a_mismatch() {
        let req = request(Some(&sign("whsec_other", BODY, T)), BODY);
        assert_eq!(verify_at(&req, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn one_flipped_byte_of_the_body_is_a_mismatch() {
        let mut body = BODY.to_vec();
        body[8] ^= 0x01;
        let req = request(Some(&sign(SECRET, BODY, T)), &body);
        assert_eq!(verify_at(&req, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn a_moved_timestamp_is_a_mismatch() {
        let header = format!("t={},v1={}", T + 1, signature(SECRET, BODY, T));
        assert_eq!(
            verify_at(&request(Some(&header), BODY), T),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_delivery_without_the_header_is_refused() {
        assert_eq!(
            verify_at(&request(None, BODY), T),
            Err(VerifyError::MissingHeader("Stripe-Signature"))
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let sig = signature(SECRET, BODY, T);
        for bad in [
            format!("v1={sig}"),
            format!("t={T}"),
            format!("t={T},v0={sig}"),
            format!("t=soon,v1={sig}"),
            format!("t={T},t={T},v1={sig}"),
            "garbage".to_owned(),
            String::new(),
        ] {
            assert_eq!(
                verify_at(&request(Some(&bad), BODY), T),
                Err(VerifyError::MalformedHeader("Stripe-Signature")),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_timestamp_older_than_five_minutes_is_stale() {
        let req = request(Some(&sign(SECRET, BODY, T)), BODY);
        assert_eq!(verify_at(&req, T + 300), Ok(Verified::Signature));
        assert_eq!(
            verify_at(&req, T + 301),
            Err(VerifyError::StaleTimestamp {
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn a_timestamp_more_than_five_minutes_ahead_is_refused() {
        let req = request(Some(&sign(SECRET, BODY, T)), BODY);
        assert_eq!(verify_at(&req, T - 300), Ok(Verified::Signature));
        assert_eq!(
            verify_at(&req, T - 301),
            Err(VerifyError::StaleTimestamp {
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn an_empty_body_is_refused() {
        let req = request(Some(&sign(SECRET, b"", T)), b"");
        assert_eq!(verify_at(&req, T), Err(VerifyError::EmptyBody));
    }

    #[test]
    fn without_a_secret_nothing_is_accepted() {
        let req = request(Some(&sign(SECRET, BODY, T)), BODY);
        assert_eq!(
            Stripe.verify(&req, &no_secrets(), &ctx_at(T)),
            Err(VerifyError::NotConfigured("STRIPE_WEBHOOK_SECRET"))
        );
    }

    #[test]
    fn describe_needs_an_event_id_and_type() {
        assert_eq!(
            Stripe.describe(&request(None, BODY)),
            Ok(Described {
                delivery_id: Some("evt_1".into()),
                event_type: "invoice.paid".into(),
                ..Default::default()
            })
        );
        for body in [
            &br#"{"type":"invoice.paid"}"#[..],
            br#"{"id":"evt_1"}"#,
            b"evt_1",
        ] {
            assert!(Stripe.describe(&request(None, body)).is_err());
        }
    }

    #[test]
    fn the_pre_parsed_header_name_is_the_header() {
        assert_eq!(SIGNATURE_NAME, SIGNATURE_HEADER);
    }
}
