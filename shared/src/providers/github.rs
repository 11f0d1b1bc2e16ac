//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>`.
//!
//! The `sha256=<hex>` scheme is shared: WhatsApp (Meta) sends it in the same header and Jira in
//! `X-Hub-Signature`, so both call [`verify_hub_signature`].

use super::mac::hmac_sha256;
use super::VerifyError;
use super::{
    Described, Inbound, ParseError, Provider, ProviderSecrets, RepositoryRef, Verified,
    VerifyContext,
};
use crate::model::Source;
use http::HeaderName;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use subtle::{Choice, ConstantTimeEq};

pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// [`SIGNATURE_HEADER`] pre-parsed: a lookup by `&str` lower-cases and classifies the name on
/// every call, which is a measurable part of a 1 KB verification.
pub(super) const SIGNATURE_NAME: HeaderName = HeaderName::from_static("x-hub-signature-256");
pub const DELIVERY_HEADER: &str = "X-GitHub-Delivery";
pub const EVENT_HEADER: &str = "X-GitHub-Event";
pub const SECRET_NAME: &str = "GITHUB_WEBHOOK_SECRET";

/// The header value GitHub sends: `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body])))
}

/// Check an `X-Hub-Signature-256` value (`None` when the header is absent) over the raw body.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), VerifyError> {
    verify_hub_signature(SIGNATURE_HEADER, secret, body, header)
}

/// Check a `sha256=<hex>` value sent in the header `header_name` (named in errors). Hex is
/// accepted in either case; the comparison is constant-time.
pub fn verify_hub_signature(
    header_name: &'static str,
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), VerifyError> {
    let value = header
        .ok_or(VerifyError::MissingHeader(header_name))?
        .trim();
    // Decoded onto the stack: this runs on every delivery.
    let given: [u8; 32] = split_scheme(value, "sha256")
        .and_then(decode_hex)
        .ok_or(VerifyError::MalformedHeader(header_name))?;
    let expected = hmac_sha256(secret, &[body]);
    if ct_eq_mac(&expected, &given) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// A header value as text, looked up by a pre-parsed name: what [`Inbound::header`] returns.
#[inline]
pub(super) fn header<'a>(req: &'a Inbound, name: &HeaderName) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of each ASCII byte as a hex digit (either case), or `0xFF`.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The value of one hex digit (either case), or `None`.
#[inline]
pub(super) fn hex_digit(c: u8) -> Option<u8> {
    Some(HEX_DIGITS[c as usize]).filter(|v| *v < 16)
}

/// Exactly `2 * N` hex digits (either case) decoded onto the stack; what `hex::decode_to_slice`
/// accepts, without its branch per digit (a mispredicted branch for every other character of a
/// random digest).
#[inline]
pub(super) fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (i, byte) in out.iter_mut().enumerate() {
        let (hi, lo) = (
            HEX_DIGITS[text[2 * i] as usize],
            HEX_DIGITS[text[2 * i + 1] as usize],
        );
        invalid |= hi | lo;
        *byte = (hi << 4) | lo;
    }
    (invalid < 16).then_some(out)
}

/// Constant-time equality of two MACs, a machine word at a time (`subtle` on each word, so
/// nothing short-circuits on the contents).
#[inline]
pub(super) fn ct_eq_mac<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut equal = Choice::from(1);
    for start in (0..N).step_by(8) {
        let end = N.min(start + 8);
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        x[..end - start].copy_from_slice(&a[start..end]);
        y[..end - start].copy_from_slice(&b[start..end]);
        equal &= u64::from_le_bytes(x).ct_eq(&u64::from_le_bytes(y));
    }
    equal.into()
}

/// `scheme=<rest>` with the scheme compared case-insensitively.
fn split_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = value.split_once('=')?;
    name.trim()
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
}

/// Parse a body that must be a JSON object into `T` (whose fields are the few we read).
/// The message never quotes the body.
pub(super) fn json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    let starts_as_object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !starts_as_object {
        return Err(ParseError("body is not a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| {
        ParseError(format!(
            "body is not a valid JSON object (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// A header value, trimmed, `None` when absent or empty.
pub(super) fn non_empty_header(req: &Inbound, name: &str) -> Option<String> {
    req.header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The GitHub provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct GitHub;

impl Provider for GitHub {
    fn source(&self) -> Source {
        Source::Github
    }

    fn verify(
        &self,
        req: &Inbound,
        secrets: &ProviderSecrets,
        _ctx: &VerifyContext,
    ) -> Result<Verified, VerifyError> {
        let secret = super::body_and_secret(req, &secrets.github_webhook_secret, SECRET_NAME)?;
        verify_signature(secret.as_bytes(), &req.body, header(req, &SIGNATURE_NAME))?;
        Ok(Verified::Signature)
    }

    fn describe(&self, req: &Inbound) -> Result<Described, ParseError> {
        let event_type = non_empty_header(req, EVENT_HEADER)
            .ok_or_else(|| ParseError(format!("missing {EVENT_HEADER} header")))?;
        let body: Body = json_object(&req.body)?;
        Ok(Described {
            delivery_id: non_empty_header(req, DELIVERY_HEADER),
            event_type,
            repository: body.repository,
        })
    }
}

/// A GitHub payload: any JSON object; only the repository it names is kept.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    repository: RepositoryRef,
}

#[cfg(test)]
pub(super) mod test_support {
    use super::super::{Inbound, ProviderSecrets, VerifyContext};
    use crate::secret::Secret;
    use bytes::Bytes;
    use chrono::DateTime;
    use http::{HeaderMap, HeaderName, HeaderValue, Method};

    pub fn inbound(
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Inbound {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Inbound {
            method,
            path: path.to_owned(),
            query: query.map(str::to_owned),
            headers: map,
            body: Bytes::from(body.into()),
        }
    }

    pub fn post(headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Inbound {
        inbound(Method::POST, "/api/v1/webhooks/test", None, headers, body)
    }

    pub fn ctx_at(secs: i64) -> VerifyContext {
        VerifyContext {
            now: DateTime::from_timestamp(secs, 0).unwrap(),
            public_base_url: None,
        }
    }

    pub fn secret(v: &str) -> Option<Secret> {
        Some(Secret::new(v))
    }

    pub fn no_secrets() -> ProviderSecrets {
        ProviderSecrets::default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    // GitHub's documentation example ("Validating webhook deliveries").
    const DOCS_SECRET: &str = "It's a Secret to Everybody";
    const DOCS_PAYLOAD: &[u8] = b"Hello, World!";
    const DOCS_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    const SECRET: &str = "a-repo-secret";
    const BODY: &[u8] = br#"{"action":"completed","workflow_run":{"id":1}}"#;

    fn secrets() -> ProviderSecrets {
        ProviderSecrets {
            github_webhook_secret: secret(SECRET),
            ..Default::default()
        }
    }

    fn delivery(sig: Option<&str>, body: &[u8]) -> Inbound {
        let mut headers = vec![
            ("X-GitHub-Event", "workflow_run"),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ];
        if let Some(sig) = sig {
            headers.push(("X-Hub-Signature-256", sig));
        }
        post(&headers, body)
    }

    #[test]
    fn the_docs_payload_signs_to_the_docs_signature() {
        assert_eq!(
            signature(DOCS_SECRET.as_bytes(), DOCS_PAYLOAD),
            DOCS_SIGNATURE
        );
    }

    #[test]
    fn a_github_delivery_signed_with_the_docs_secret_verifies() {
        let req = delivery(Some(DOCS_SIGNATURE), DOCS_PAYLOAD);
        let secrets = ProviderSecrets {
            github_webhook_secret: secret(DOCS_SECRET),
            ..Default::default()
        };
        assert_eq!(
            GitHub.verify(&req, &secrets, &ctx_at(0)),
            Ok(Verified::Signature)
        );
    }

    #[test]
    fn hex_in_upper_case_is_accepted() {
        let upper = format!("sha256={}", DOCS_SIGNATURE[7..].to_ascii_uppercase());
        assert_eq!(
            verify_signature(DOCS_SECRET.as_bytes(), DOCS_PAYLOAD, Some(&upper)),
            Ok(())
        );
    }

    #[test]
    fn a_signature_made_with_another_secret_is_a_mismatch() {
        let sig = signature(b"another secret", BODY);
        let req = delivery(Some(&sig), BODY);
        assert_eq!(
            GitHub.verify(&req, &secrets(), &ctx_at(0)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn one_flipped_byte_of_the_body_is_a_mismatch() {
        let sig = signature(SECRET.as_bytes(), BODY);
        let mut body = BODY.to_vec();
        body[10] ^= 0x20;
        let req = delivery(Some(&sig), &body);
        assert_eq!(
            GitHub.verify(&req, &secrets(), &ctx_at(0)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_delivery_without_the_signature_header_is_refused() {
        let req = delivery(None, BODY);
        assert_eq!(
            GitHub.verify(&req, &secrets(), &ctx_at(0)),
            Err(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn malformed_signature_headers_are_refused() {
        let good = signature(SECRET.as_bytes(), BODY);
        let hex_part = &good[7..];
        for bad in [
            hex_part.to_owned(),
            format!("sha1={hex_part}"),
            "sha256=zz".to_owned(),
            format!("sha256={}", &hex_part[..62]),
            "sha256=".to_owned(),
        ] {
            let req = delivery(Some(&bad), BODY);
            assert_eq!(
                GitHub.verify(&req, &secrets(), &ctx_at(0)),
                Err(VerifyError::MalformedHeader("X-Hub-Signature-256")),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_empty_body_is_refused() {
        let sig = signature(SECRET.as_bytes(), b"");
        let req = delivery(Some(&sig), b"");
        assert_eq!(
            GitHub.verify(&req, &secrets(), &ctx_at(0)),
            Err(VerifyError::EmptyBody)
        );
    }

    #[test]
    fn without_a_secret_nothing_is_accepted() {
        let sig = signature(SECRET.as_bytes(), BODY);
        let req = delivery(Some(&sig), BODY);
        assert_eq!(
            GitHub.verify(&req, &no_secrets(), &ctx_at(0)),
            Err(VerifyError::NotConfigured("GITHUB_WEBHOOK_SECRET"))
        );
    }

    #[test]
    fn describe_reads_the_delivery_and_event_headers() {
        let req = delivery(None, BODY);
        assert_eq!(
            GitHub.describe(&req),
            Ok(Described {
                delivery_id: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
                event_type: "workflow_run".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn describe_names_the_repository_the_payload_is_about() {
        let body = br#"{"ref":"refs/heads/main","repository":{"id":1,"full_name":"acme/demo"}}"#;
        let req = post(&[("X-GitHub-Event", "push")], &body[..]);
        let named = GitHub.describe(&req).unwrap().repository;
        assert_eq!(named.full_name.as_deref(), Some("acme/demo"));
        let odd = post(
            &[("X-GitHub-Event", "push")],
            &br#"{"repository":"acme/demo"}"#[..],
        );
        assert_eq!(
            GitHub.describe(&odd).unwrap().repository,
            RepositoryRef::default()
        );
    }

    #[test]
    fn describe_without_a_delivery_header_falls_back_to_the_body_hash() {
        let req = post(&[("X-GitHub-Event", "ping")], BODY);
        assert_eq!(GitHub.describe(&req).unwrap().delivery_id, None);
    }

    #[test]
    fn describe_needs_the_event_header_and_a_json_object() {
        let req = post(&[("X-GitHub-Delivery", "d1")], BODY);
        assert!(GitHub.describe(&req).is_err());
        for body in [&b"[1,2]"[..], b"not json", b"{\"a\":", b"\"text\""] {
            let req = post(&[("X-GitHub-Event", "push")], body);
            let err = GitHub.describe(&req).unwrap_err();
            assert!(!err.0.contains("not json"), "{err}");
        }
    }

    #[test]
    fn errors_never_quote_the_secret_or_the_body() {
        let req = delivery(Some("sha256=00"), BODY);
        let err = GitHub.verify(&req, &secrets(), &ctx_at(0)).unwrap_err();
        let text = err.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains("workflow_run"),
            "{text}"
        );
    }

    #[test]
    fn the_pre_parsed_header_name_is_the_header() {
        assert_eq!(SIGNATURE_NAME, SIGNATURE_HEADER);
    }

    #[test]
    fn decode_hex_accepts_what_the_hex_crate_accepts() {
        let hex_part = &DOCS_SIGNATURE[7..];
        let mut inputs: Vec<String> = vec![
            String::new(),
            "0".repeat(63),
            "0".repeat(64),
            "0".repeat(66),
            hex_part.to_owned(),
            hex_part.to_ascii_uppercase(),
            format!("{}g", &hex_part[..63]),
            format!("{} ", &hex_part[..63]),
        ];
        for c in 0u8..=127 {
            let mut s = hex_part.to_owned();
            s.replace_range(10..11, &char::from(c).to_string());
            inputs.push(s);
        }
        for input in inputs {
            let mut expected = [0u8; 32];
            let ok = hex::decode_to_slice(&input, &mut expected).is_ok();
            assert_eq!(decode_hex::<32>(&input), ok.then_some(expected), "{input}");
        }
    }

    #[test]
    fn ct_eq_mac_compares_every_byte() {
        let a: [u8; 20] = std::array::from_fn(|i| i as u8);
        assert!(ct_eq_mac(&a, &a));
        for i in 0..20 {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!ct_eq_mac(&a, &b), "{i}");
        }
    }
}
