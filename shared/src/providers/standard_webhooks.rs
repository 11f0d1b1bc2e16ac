//! Standard Webhooks (<https://www.standardwebhooks.com/>): the scheme GitLab's signing tokens
//! use and the one Hookline signs its own outbound deliveries with.
//!
//! The secret is `whsec_<base64>`; the MAC key is the decoded bytes. The signed content is
//! `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256, base64. `webhook-signature` is a
//! space-separated list of `v1,<base64>` entries, any of which may match (several appear while a
//! secret is being rotated); entries of other versions are ignored.

use super::github::ct_eq_mac;
use super::mac::hmac_sha256;
use super::VerifyError;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{DecodeSliceError, Engine as _};
use chrono::{DateTime, Utc};
use http::HeaderName;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The three header names pre-parsed, for the lookups on every delivery.
pub(super) const ID_NAME: HeaderName = HeaderName::from_static(ID_HEADER);
pub(super) const TIMESTAMP_NAME: HeaderName = HeaderName::from_static(TIMESTAMP_HEADER);
pub(super) const SIGNATURE_NAME: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);

/// How far the timestamp may be from now, in either direction.
pub const TOLERANCE_SECS: i64 = 300;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Standard base64 that also accepts input without padding (secrets are copied by hand).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The secret is not `whsec_<base64>` (or bare base64). Says nothing about the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signing secret is not valid base64 (expected whsec_<base64>)")]
pub struct InvalidSecret;

impl From<InvalidSecret> for VerifyError {
    fn from(_: InvalidSecret) -> Self {
        VerifyError::Invalid("the signing secret is not valid base64 (expected whsec_<base64>)")
    }
}

/// The MAC key of a secret: the base64 after `whsec_` (a secret without the prefix is taken as
/// base64 too).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, InvalidSecret> {
    match LENIENT.decode(secret_base64(secret)) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(InvalidSecret),
    }
}

/// The base64 part of a secret.
fn secret_base64(secret: &str) -> &str {
    let encoded = secret.trim();
    encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded)
}

/// Run `f` with the MAC key of a secret, as [`decode_secret`] decodes it, but onto the stack
/// when it fits (every realistic key does): no allocation per delivery.
fn with_key<R>(secret: &str, f: impl FnOnce(&[u8]) -> R) -> Result<R, InvalidSecret> {
    let mut key = [0u8; 96];
    match LENIENT.decode_slice(secret_base64(secret), &mut key) {
        Ok(0) | Err(DecodeSliceError::DecodeError(_)) => Err(InvalidSecret),
        Ok(len) => Ok(f(&key[..len])),
        Err(DecodeSliceError::OutputSliceTooSmall) => Ok(f(&decode_secret(secret)?)),
    }
}

/// The entries of a `webhook-signature` value, as `split_ascii_whitespace` splits it, without
/// its search byte by byte in the usual case of one entry (no byte at or below a space at all,
/// checked a vector at a time).
fn entries(signatures: &str) -> impl Iterator<Item = &str> {
    let one_entry = !signatures.bytes().fold(false, |any, b| any | (b <= b' '));
    let (whole, to_split) = if one_entry {
        (Some(signatures).filter(|s| !s.is_empty()), "")
    } else {
        (None, signatures)
    };
    whole.into_iter().chain(to_split.split_ascii_whitespace())
}

/// The raw MAC over `{id}.{timestamp}.{body}` with a decoded key.
pub fn mac_with_key(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // Formatted on the stack: no allocation per delivery.
    let mut ts = itoa::Buffer::new();
    let ts = ts.format(timestamp);
    hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])
}

/// One `webhook-signature` entry, `v1,<base64>`, as the sender produces it.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, InvalidSecret> {
    let key = decode_secret(secret)?;
    Ok(sign_with_key(&key, id, timestamp, body))
}

/// [`sign`] with an already decoded key.
pub fn sign_with_key(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = mac_with_key(key, id, timestamp, body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

/// The three headers a Standard Webhooks sender attaches: `webhook-id`, `webhook-timestamp`,
/// `webhook-signature`.
pub fn headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, InvalidSecret> {
    Ok(vec![
        (ID_HEADER, id.to_owned()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, sign(secret, id, timestamp, body)?),
    ])
}

/// Check a delivery: the header values as received (`None` when absent), the exact raw body,
/// the current time and the tolerance in seconds.
pub fn verify(
    secret: &str,
    id: Option<&str>,
    timestamp_header: Option<&str>,
    body: &[u8],
    signature_header: Option<&str>,
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    with_key(secret, |key| {
        verify_with_key(
            key,
            id,
            timestamp_header,
            body,
            signature_header,
            now,
            tolerance_secs,
        )
    })?
}

/// [`verify`] with an already decoded key.
pub fn verify_with_key(
    key: &[u8],
    id: Option<&str>,
    timestamp_header: Option<&str>,
    body: &[u8],
    signature_header: Option<&str>,
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let id = id
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(VerifyError::MissingHeader(ID_HEADER))?;
    let timestamp = timestamp_header.ok_or(VerifyError::MissingHeader(TIMESTAMP_HEADER))?;
    let signatures = signature_header.ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER))?;

    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::MalformedHeader(TIMESTAMP_HEADER))?;
    // abs_diff: a timestamp near i64::MIN must be refused, not overflow.
    if now.timestamp().abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
        return Err(VerifyError::StaleTimestamp { tolerance_secs });
    }

    let candidates = || entries(signatures).filter_map(|entry| entry.strip_prefix("v1,"));
    if candidates().next().is_none() {
        return Err(VerifyError::MalformedHeader(SIGNATURE_HEADER));
    }

    let expected = mac_with_key(key, id, timestamp, body);
    // Every candidate is compared, so the time taken does not say which one matched. Each is
    // decoded onto the stack; one that does not decode to exactly 32 bytes cannot match, as
    // before.
    let mut matched = false;
    for candidate in candidates() {
        let mut given = [0u8; 64];
        if let Ok(32) = LENIENT.decode_slice(candidate, &mut given) {
            let given: &[u8; 32] = given.first_chunk().expect("32 bytes");
            matched |= ct_eq_mac(&expected, given);
        }
    }
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification and its reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn check(secret: &str, body: &[u8], sig: Option<&str>, now: i64) -> Result<(), VerifyError> {
        verify(
            secret,
            Some(ID),
            Some(&TS.to_string()),
            body,
            sig,
            at(now),
            TOLERANCE_SECS,
        )
    }

    #[test]
    fn the_specification_example_signs_to_the_published_signature() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), SIGNATURE);
    }

    #[test]
    fn the_specification_example_verifies() {
        assert_eq!(check(SECRET, BODY, Some(SIGNATURE), TS), Ok(()));
    }

    #[test]
    fn a_secret_without_the_whsec_prefix_is_read_as_base64() {
        let bare = SECRET.strip_prefix("whsec_").unwrap();
        assert_eq!(sign(bare, ID, TS, BODY).unwrap(), SIGNATURE);
        assert_eq!(check(bare, BODY, Some(SIGNATURE), TS), Ok(()));
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused_without_echoing_it() {
        let err = sign("whsec_not*base64!", ID, TS, BODY).unwrap_err();
        assert!(!err.to_string().contains("not*base64"));
        let err = check("whsec_not*base64!", BODY, Some(SIGNATURE), TS).unwrap_err();
        assert!(matches!(err, VerifyError::Invalid(_)));
        assert!(!err.to_string().contains("not*base64"));
    }

    #[test]
    fn any_v1_entry_of_a_rotating_sender_may_match_and_other_versions_are_ignored() {
        let header = format!("v1a,abc v2,AAAA v1,bm90IHRoZSBzaWduYXR1cmU= {SIGNATURE}");
        assert_eq!(check(SECRET, BODY, Some(&header), TS), Ok(()));
    }

    #[test]
    fn a_signature_made_with_another_secret_is_a_mismatch() {
        let other = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBvZiAzMiBieXRlcw==";
        let sig = sign(other, ID, TS, BODY).unwrap();
        assert_eq!(
            check(SECRET, BODY, Some(&sig), TS),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn one_flipped_byte_of_the_body_is_a_mismatch() {
        let mut body = BODY.to_vec();
        body[3] ^= 0x01;
        assert_eq!(
            check(SECRET, &body, Some(SIGNATURE), TS),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn another_message_id_is_a_mismatch() {
        let res = verify(
            SECRET,
            Some("msg_other"),
            Some(&TS.to_string()),
            BODY,
            Some(SIGNATURE),
            at(TS),
            TOLERANCE_SECS,
        );
        assert_eq!(res, Err(VerifyError::Mismatch));
    }

    #[test]
    fn missing_headers_are_named() {
        let ts = TS.to_string();
        let now = at(TS);
        let missing = |id, ts, sig| verify(SECRET, id, ts, BODY, sig, now, TOLERANCE_SECS);
        assert_eq!(
            missing(None, Some(&ts), Some(SIGNATURE)),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            missing(Some(ID), None, Some(SIGNATURE)),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            missing(Some(ID), Some(&ts), None),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        let res = verify(
            SECRET,
            Some(ID),
            Some("yesterday"),
            BODY,
            Some(SIGNATURE),
            at(TS),
            TOLERANCE_SECS,
        );
        assert_eq!(res, Err(VerifyError::MalformedHeader("webhook-timestamp")));
        assert_eq!(
            check(
                SECRET,
                BODY,
                Some("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
                TS
            ),
            Err(VerifyError::MalformedHeader("webhook-signature"))
        );
        assert_eq!(
            check(SECRET, BODY, Some("v1,***not-base64***"), TS),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_timestamp_older_than_the_tolerance_is_stale() {
        assert_eq!(check(SECRET, BODY, Some(SIGNATURE), TS + 300), Ok(()));
        assert_eq!(
            check(SECRET, BODY, Some(SIGNATURE), TS + 301),
            Err(VerifyError::StaleTimestamp {
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn a_timestamp_further_in_the_future_than_the_tolerance_is_refused_too() {
        assert_eq!(check(SECRET, BODY, Some(SIGNATURE), TS - 300), Ok(()));
        assert_eq!(
            check(SECRET, BODY, Some(SIGNATURE), TS - 301),
            Err(VerifyError::StaleTimestamp {
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn the_headers_helper_produces_what_verify_accepts() {
        let hs = headers(SECRET, ID, TS, BODY).unwrap();
        let get = |n: &str| hs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("webhook-signature"), Some(SIGNATURE));
        let res = verify(
            SECRET,
            get("webhook-id"),
            get("webhook-timestamp"),
            BODY,
            get("webhook-signature"),
            at(TS + 10),
            TOLERANCE_SECS,
        );
        assert_eq!(res, Ok(()));
    }

    #[test]
    fn the_pre_parsed_header_names_are_the_headers() {
        assert_eq!(ID_NAME, ID_HEADER);
        assert_eq!(TIMESTAMP_NAME, TIMESTAMP_HEADER);
        assert_eq!(SIGNATURE_NAME, SIGNATURE_HEADER);
    }
}
