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
use base64::Engine as _;
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
    match decode_base64(secret_base64(secret), Padding::Indifferent, &mut key) {
        Some(len) if len > 0 => Ok(f(&key[..len])),
        // Refused, empty, or longer than the stack buffer: the general path says which.
        _ => Ok(f(&decode_secret(secret)?)),
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

/// How [`decode_base64`] treats `=` padding, as the `base64` crate's engines do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Padding {
    /// Optional ([`LENIENT`]).
    Indifferent,
    /// Required where the length calls for it (`general_purpose::STANDARD`).
    Canonical,
}

/// The value of each ASCII byte as a standard-alphabet base64 digit, or `0xFF`.
const BASE64_DIGITS: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 26 {
        table[b'A' as usize + i] = i as u8;
        table[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = 52 + i as u8;
        i += 1;
    }
    table[b'+' as usize] = 62;
    table[b'/' as usize] = 63;
    table
};

/// Standard-alphabet base64 decoded into `out` (on the caller's stack): how many bytes, or
/// `None` when the `base64` crate (with that padding rule, trailing bits refused) would refuse
/// the text or the result would not fit. Signatures and keys are a few dozen characters, for
/// which the crate's general decoder costs several times this.
#[inline]
pub(super) fn decode_base64(text: &str, padding: Padding, out: &mut [u8]) -> Option<usize> {
    let text = text.as_bytes();
    let pads = text.iter().rev().take_while(|b| **b == b'=').count();
    let digits = &text[..text.len() - pads];
    let (quads, tail) = digits.split_at(digits.len() / 4 * 4);
    let padding_ok = match (tail.len(), padding) {
        (0, _) => pads == 0,
        (2, Padding::Indifferent) => pads <= 2,
        (3, Padding::Indifferent) => pads <= 1,
        (2, Padding::Canonical) => pads == 2,
        (3, Padding::Canonical) => pads == 1,
        _ => false,
    };
    let len = quads.len() / 4 * 3 + tail.len().saturating_sub(1);
    if !padding_ok || len > out.len() {
        return None;
    }
    let mut invalid = 0u8;
    let value = |c: &u8, invalid: &mut u8| {
        let v = BASE64_DIGITS[*c as usize];
        *invalid |= v;
        u32::from(v)
    };
    for (i, quad) in quads.chunks_exact(4).enumerate() {
        let n = quad
            .iter()
            .fold(0, |n, c| (n << 6) | value(c, &mut invalid));
        out[3 * i..3 * i + 3].copy_from_slice(&n.to_be_bytes()[1..]);
    }
    if !tail.is_empty() {
        let n = tail
            .iter()
            .fold(0, |n, c| (n << 6) | value(c, &mut invalid));
        // The bits below the last whole byte must be zero (no trailing bits).
        let spare = tail.len() * 6 % 8;
        if n & ((1 << spare) - 1) != 0 {
            return None;
        }
        let n = n >> spare;
        let bytes = tail.len() - 1;
        out[len - bytes..len].copy_from_slice(&n.to_be_bytes()[4 - bytes..]);
    }
    (invalid < 64).then_some(len)
}

/// The raw MAC over `{id}.{timestamp}.{body}` with a decoded key.
pub fn mac_with_key(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // Formatted on the stack: no allocation per delivery.
    let mut ts = itoa::Buffer::new();
    let ts = ts.format(timestamp).as_bytes();
    // `{id}.{timestamp}.` assembled on the stack when it fits (ids are short): one update of the
    // MAC instead of four small ones.
    let mut prefix = [0u8; 128];
    let len = id.len() + ts.len() + 2;
    if len > prefix.len() {
        return hmac_sha256(key, &[id.as_bytes(), b".", ts, b".", body]);
    }
    prefix[..id.len()].copy_from_slice(id.as_bytes());
    prefix[id.len()] = b'.';
    prefix[id.len() + 1..len - 1].copy_from_slice(ts);
    prefix[len - 1] = b'.';
    hmac_sha256(key, &[&prefix[..len], body])
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
    if (now.timestamp() - timestamp).abs() > tolerance_secs {
        return Err(VerifyError::StaleTimestamp { tolerance_secs });
    }

    let expected = mac_with_key(key, id, timestamp, body);
    // One pass over the entries: every candidate is compared, so the time taken does not say
    // which one matched. Each is decoded onto the stack; one that does not decode to exactly 32
    // bytes cannot match, as before.
    let mut any_v1 = false;
    let mut matched = false;
    for candidate in entries(signatures).filter_map(|entry| entry.strip_prefix("v1,")) {
        any_v1 = true;
        let mut given = [0u8; 32];
        if decode_base64(candidate, Padding::Indifferent, &mut given) == Some(32) {
            matched |= ct_eq_mac(&expected, &given);
        }
    }
    if !any_v1 {
        return Err(VerifyError::MalformedHeader(SIGNATURE_HEADER));
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
    fn decode_base64_accepts_exactly_what_the_base64_crate_accepts() {
        use base64::engine::general_purpose::STANDARD;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut inputs: Vec<String> = Vec::new();
        for len in 0..40usize {
            // The encoding of some bytes, then with its padding, last digit or length disturbed.
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let encoded = STANDARD.encode(&bytes);
            let bare = encoded.trim_end_matches('=').to_owned();
            inputs.extend([
                encoded.clone(),
                bare.clone(),
                format!("{bare}="),
                format!("{bare}=="),
                format!("{bare}==="),
                format!("{encoded}="),
                format!("={encoded}"),
                format!("{encoded}A"),
                format!("{encoded} "),
            ]);
            if let Some(last) = bare.chars().last() {
                for c in ['A', 'B', 'Q', 'g', 'w', '/', '+', '-', '_', '='] {
                    let mut changed = bare[..bare.len() - 1].to_owned();
                    changed.push(c);
                    inputs.push(changed.clone());
                    inputs.push(format!("{changed}="));
                    inputs.push(format!("{changed}=="));
                }
                inputs.push(format!("{}{last}", &bare[..bare.len() - 1]));
            }
        }
        // And arbitrary strings over the alphabet, padding and a few strangers.
        let chars = b"AQgw09+/=-_ *az";
        for _ in 0..5000 {
            let len = (next() % 14) as usize;
            inputs.push(
                (0..len)
                    .map(|_| char::from(chars[(next() % chars.len() as u64) as usize]))
                    .collect(),
            );
        }
        for input in &inputs {
            for (engine, padding) in [
                (&LENIENT, Padding::Indifferent),
                (&STANDARD, Padding::Canonical),
            ] {
                let expected = engine.decode(input).ok();
                let mut out = [0u8; 64];
                let got = decode_base64(input, padding, &mut out).map(|len| out[..len].to_vec());
                assert_eq!(got, expected, "{input:?} {padding:?}");
            }
        }
        // Too long for the buffer is a refusal, not a truncation.
        assert_eq!(
            decode_base64("AAAA", Padding::Canonical, &mut [0u8; 2]),
            None
        );
    }
}
