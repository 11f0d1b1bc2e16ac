//! Endpoint secrets and the signatures on every outbound delivery: seed 002/003's
//! `sha256=<hex>` header (keyed with the secret string as shown) and Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`, keyed with the decoded bytes).

use crate::providers::github;
use crate::providers::standard_webhooks as sw;
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use rand::RngCore;
use zeroize::Zeroize;

/// The smallest key an endpoint secret may decode to (Standard Webhooks asks for 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;

/// A new endpoint secret: `whsec_` + standard base64 of 32 random bytes from the OS.
pub fn generate_secret() -> Secret {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let secret = Secret::new(format!("{}{}", sw::SECRET_PREFIX, STANDARD.encode(key)));
    key.zeroize();
    secret
}

/// Whether `s` is a secret the official Standard Webhooks libraries accept as it is:
/// `whsec_` + padded standard base64 that decodes to at least [`MIN_SECRET_BYTES`].
pub fn is_endpoint_secret(s: &str) -> bool {
    s.strip_prefix(sw::SECRET_PREFIX)
        .and_then(|b64| STANDARD.decode(b64).ok())
        .is_some_and(|mut key| {
            let long_enough = key.len() >= MIN_SECRET_BYTES;
            key.zeroize();
            long_enough
        })
}

/// Headers a sender must not let an endpoint's `signature_header` replace.
const RESERVED_HEADERS: [&str; 8] = [
    sw::ID_HEADER,
    sw::TIMESTAMP_HEADER,
    sw::SIGNATURE_HEADER,
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "transfer-encoding",
];

/// The header an endpoint's `sha256=` signature goes in, checked where the endpoint is
/// registered: a valid HTTP header name that is not one Hookline already sends.
pub fn signature_header_name(name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("signature_header {name:?} is not a valid HTTP header name"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(format!(
            "signature_header {name:?} is a header Hookline already sends; choose another \
             (e.g. X-Signature)"
        ));
    }
    Ok(parsed)
}

/// The signature headers of one delivery attempt.
///
/// `signing[0]` is the endpoint's current secret; the others are previous secrets still in
/// their rotation overlap. The `sha256=` header carries the current secret's signature only
/// (seed 003's receiver compares the whole value, so it must hold exactly one); the Standard
/// Webhooks header carries one `v1,` entry per secret, which is how receivers ride a rotation.
/// Every value is marked sensitive so no `Debug` of a request prints it.
pub fn sign(
    body: &[u8],
    webhook_id: &str,
    timestamp: i64,
    signing: &[&Secret],
    signature_header: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(4);
    let Some(current) = signing.first() else {
        // An endpoint always has a current secret; without one nothing can be signed.
        tracing::error!("outbound delivery {webhook_id} has no signing secret");
        return headers;
    };

    let name = signature_header_name(signature_header).unwrap_or_else(|_| {
        // Registration refuses such names; one that slipped in still gets a signature.
        tracing::warn!("unusable signature header name; signing under X-Signature");
        HeaderName::from_static("x-signature")
    });
    headers.push((name, sensitive(github::signature(current.as_bytes(), body))));

    let entries: Vec<String> = signing
        .iter()
        .filter_map(|secret| match sw::decode_secret(secret.expose()) {
            Ok(mut key) => {
                let entry = sw::sign_with_key(&key, webhook_id, timestamp, body);
                key.zeroize();
                Some(entry)
            }
            Err(_) => {
                tracing::warn!(
                    "outbound delivery {webhook_id}: a signing secret is not whsec_<base64>; \
                     no Standard Webhooks signature for it"
                );
                None
            }
        })
        .collect();

    match HeaderValue::from_str(webhook_id) {
        Ok(id) => headers.push((HeaderName::from_static(sw::ID_HEADER), id)),
        // Ids are generated or validated as printable ASCII before they get here.
        Err(_) => tracing::error!("outbound delivery id is not a valid header value"),
    }
    headers.push((
        HeaderName::from_static(sw::TIMESTAMP_HEADER),
        HeaderValue::from(timestamp),
    ));
    if !entries.is_empty() {
        // One space between entries: the reference libraries split on a single space.
        headers.push((
            HeaderName::from_static(sw::SIGNATURE_HEADER),
            sensitive(entries.join(" ")),
        ));
    }
    headers
}

/// A header value made of base64/hex text, marked sensitive.
fn sensitive(text: String) -> HeaderValue {
    let mut value = HeaderValue::try_from(text).expect("base64 and hex are valid header values");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::VerifyError;
    use http::HeaderMap;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid","created_at":"2026-12-02T00:00:00Z","data":{"amount":4200}}"#;
    const ID: &str = "dlv_0123456789abcdef";

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn map(headers: &[(HeaderName, HeaderValue)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name.clone(), value.clone());
        }
        map
    }

    fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn a_generated_secret_is_whsec_and_32_random_bytes() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        let b64 = a.expose().strip_prefix("whsec_").expect("whsec_ prefix");
        assert_eq!(STANDARD.decode(b64).unwrap().len(), 32);
        assert!(is_endpoint_secret(a.expose()));
    }

    #[test]
    fn only_whsec_base64_of_at_least_24_bytes_is_an_endpoint_secret() {
        assert!(is_endpoint_secret(&format!(
            "whsec_{}",
            STANDARD.encode([7u8; 24])
        )));
        assert!(!is_endpoint_secret(&format!(
            "whsec_{}",
            STANDARD.encode([7u8; 23])
        )));
        assert!(!is_endpoint_secret(&STANDARD.encode([7u8; 32])));
        assert!(!is_endpoint_secret("whsec_not*base64!"));
        assert!(!is_endpoint_secret("whsec_"));
        assert!(!is_endpoint_secret(""));
    }

    #[test]
    fn the_official_standard_webhooks_library_verifies_a_delivery_unmodified() {
        let secret = generate_secret();
        let headers = map(&sign(BODY, ID, now(), &[&secret], "X-Signature"));
        let official = standardwebhooks::Webhook::new(secret.expose()).unwrap();
        official.verify(BODY, &headers).expect("verified");
        assert_eq!(get(&headers, "webhook-id"), Some(ID));
    }

    #[test]
    fn during_a_rotation_the_official_library_verifies_with_the_new_and_the_old_secret() {
        let new = generate_secret();
        let old = generate_secret();
        let headers = map(&sign(BODY, ID, now(), &[&new, &old], "X-Signature"));
        for secret in [&new, &old] {
            standardwebhooks::Webhook::new(secret.expose())
                .unwrap()
                .verify(BODY, &headers)
                .expect("verified");
        }
        let signature = get(&headers, "webhook-signature").unwrap();
        assert_eq!(signature.split(' ').count(), 2);
        assert!(signature.split(' ').all(|e| e.starts_with("v1,")));
        let stranger = generate_secret();
        assert!(standardwebhooks::Webhook::new(stranger.expose())
            .unwrap()
            .verify(BODY, &headers)
            .is_err());
    }

    #[test]
    fn the_official_library_rejects_a_delivery_whose_body_was_changed() {
        let secret = generate_secret();
        let headers = map(&sign(BODY, ID, now(), &[&secret], "X-Signature"));
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert!(standardwebhooks::Webhook::new(secret.expose())
            .unwrap()
            .verify(&tampered, &headers)
            .is_err());
    }

    /// Seed 003's receiver: `sha256=` + hex HMAC keyed with the secret string, the whole
    /// header compared at once.
    fn seed_003_receiver(secret: &str, body: &[u8], header: &str) -> bool {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        header == expected
    }

    #[test]
    fn the_seed_003_receiver_accepts_the_sha256_header_under_the_endpoints_name() {
        let new = generate_secret();
        let old = generate_secret();
        let headers = map(&sign(
            BODY,
            ID,
            now(),
            &[&new, &old],
            "X-GitProductivity-Signature",
        ));
        assert_eq!(
            headers
                .get_all("x-gitproductivity-signature")
                .iter()
                .count(),
            1
        );
        let header = get(&headers, "X-GitProductivity-Signature").unwrap();
        assert!(seed_003_receiver(new.expose(), BODY, header));
        // Only the current secret signs this header: it holds exactly one value.
        assert!(!seed_003_receiver(old.expose(), BODY, header));
        assert!(headers.get("x-signature").is_none());
    }

    #[test]
    fn hookline_s_own_inbound_verifier_accepts_both_signatures() {
        let new = generate_secret();
        let old = generate_secret();
        let ts = now();
        let headers = map(&sign(BODY, ID, ts, &[&new, &old], "X-Signature"));
        for secret in [&new, &old] {
            let res = sw::verify(
                secret.expose(),
                get(&headers, "webhook-id"),
                get(&headers, "webhook-timestamp"),
                BODY,
                get(&headers, "webhook-signature"),
                chrono::Utc::now(),
                sw::TOLERANCE_SECS,
            );
            assert_eq!(res, Ok(()));
        }
        assert_eq!(
            github::verify_hub_signature(
                "X-Signature",
                new.expose().as_bytes(),
                BODY,
                get(&headers, "x-signature")
            ),
            Ok(())
        );
        assert_eq!(
            github::verify_hub_signature(
                "X-Signature",
                old.expose().as_bytes(),
                BODY,
                get(&headers, "x-signature")
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn the_specification_example_signs_to_its_published_signature() {
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let headers = map(&sign(
            br#"{"test": 2432232314}"#,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            &[&secret],
            "X-Signature",
        ));
        assert_eq!(
            get(&headers, "webhook-signature"),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(get(&headers, "webhook-timestamp"), Some("1614265330"));
    }

    #[test]
    fn signature_values_are_marked_sensitive_and_never_debug_printed() {
        let secret = generate_secret();
        let headers = sign(BODY, ID, now(), &[&secret], "X-Signature");
        let printed = format!("{:?}", map(&headers));
        for (name, value) in &headers {
            if name == "x-signature" || name == "webhook-signature" {
                assert!(value.is_sensitive());
                assert!(!printed.contains(value.to_str().unwrap()));
            }
        }
        assert!(!printed.contains(secret.expose()));
    }

    #[test]
    fn a_signature_header_name_must_be_valid_and_not_one_hookline_sends() {
        assert_eq!(
            signature_header_name("X-GitProductivity-Signature").unwrap(),
            "x-gitproductivity-signature"
        );
        assert!(signature_header_name("X Signature")
            .unwrap_err()
            .contains("not a valid HTTP header name"));
        assert!(signature_header_name("Webhook-Signature")
            .unwrap_err()
            .contains("already sends"));
        assert!(signature_header_name("Content-Type").is_err());
    }
}
