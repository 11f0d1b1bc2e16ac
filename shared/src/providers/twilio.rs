//! Twilio: `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, full URL + every form parameter
//! as key then value, sorted by key)).
//!
//! Behind API Gateway the function cannot see the URL Twilio signed, so it is rebuilt from
//! `WEBHOOK_BASE_URL` + path + raw query. JSON bodies (Twilio adds `bodySHA256=<hex>` to the
//! URL) are signed over the URL alone, and the body must hash to that `bodySHA256`.

use super::github::non_empty_header;
use super::mac::{ct_eq, hmac_sha1};
use super::{
    Described, Inbound, ParseError, Provider, ProviderSecrets, Verified, VerifyContext, VerifyError,
};
use crate::model::Source;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
pub const BODY_SHA256_PARAM: &str = "bodySHA256";
pub const SECRET_NAME: &str = "TWILIO_AUTH_TOKEN";

/// The URL Twilio signed: the public base URL (without a trailing slash) + path + `?query`.
pub fn request_url(public_base_url: &str, path: &str, query: Option<&str>) -> String {
    let base = public_base_url.trim_end_matches('/');
    match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    }
}

/// The decoded parameters of an `application/x-www-form-urlencoded` body.
pub fn form_params(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The signature over `url` and `params` (sorted here by key, then value for repeated keys).
pub fn signature<K: AsRef<str>, V: AsRef<str>>(
    auth_token: &[u8],
    url: &str,
    params: &[(K, V)],
) -> String {
    B64.encode(mac(auth_token, url, params))
}

fn mac<K: AsRef<str>, V: AsRef<str>>(auth_token: &[u8], url: &str, params: &[(K, V)]) -> [u8; 20] {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    sorted.sort_unstable();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + 2 * sorted.len());
    parts.push(url.as_bytes());
    for (k, v) in &sorted {
        parts.push(k.as_bytes());
        parts.push(v.as_bytes());
    }
    hmac_sha1(auth_token, &parts)
}

/// The `X-Twilio-Signature` Twilio sends for a form-encoded body posted to `url`.
pub fn sign_form(auth_token: &[u8], url: &str, body: &[u8]) -> String {
    signature(auth_token, url, &form_params(body))
}

/// Lowercase hex SHA-256 of the body, as Twilio puts it in `bodySHA256`.
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// For a JSON body: the URL Twilio posts to (with `bodySHA256` appended) and its
/// `X-Twilio-Signature`.
pub fn sign_json(auth_token: &[u8], url: &str, body: &[u8]) -> (String, String) {
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}{BODY_SHA256_PARAM}={}", body_sha256_hex(body));
    let sig = signature::<&str, &str>(auth_token, &url, &[]);
    (url, sig)
}

fn check_signature(expected: &[u8; 20], header: Option<&str>) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER))?;
    let given = B64
        .decode(header.trim())
        .ok()
        .filter(|b| b.len() == 20)
        .ok_or(VerifyError::MalformedHeader(SIGNATURE_HEADER))?;
    if ct_eq(expected, &given) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Check a form-encoded request: `url` as signed, the raw body, the header (`None` if absent).
pub fn verify_form(
    auth_token: &[u8],
    url: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), VerifyError> {
    // Borrowed where no escape needed decoding: no copy of a large message text.
    let params: Vec<_> = url::form_urlencoded::parse(body).collect();
    check_signature(&mac(auth_token, url, &params), header)
}

/// Check a request whose parameters are not signed (a JSON body): the signature covers `url`
/// alone, and, when `body_sha256` (the decoded `bodySHA256` query value) is given, the body must
/// hash to it.
pub fn verify_json(
    auth_token: &[u8],
    url: &str,
    body: &[u8],
    body_sha256: Option<&str>,
    header: Option<&str>,
) -> Result<(), VerifyError> {
    check_signature(&mac::<&str, &str>(auth_token, url, &[]), header)?;
    if let Some(claimed) = body_sha256 {
        let claimed = hex::decode(claimed.trim()).map_err(|_| VerifyError::Mismatch)?;
        if !ct_eq(&Sha256::digest(body), &claimed) {
            return Err(VerifyError::Mismatch);
        }
    }
    Ok(())
}

fn is_form(req: &Inbound) -> bool {
    match req.header("content-type") {
        None => true,
        Some(ct) => ct.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }),
    }
}

/// The Twilio provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct Twilio;

impl Provider for Twilio {
    fn source(&self) -> Source {
        Source::Twilio
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
        let token = secrets
            .twilio_auth_token
            .as_ref()
            .ok_or(VerifyError::NotConfigured(SECRET_NAME))?;
        let base = ctx.public_base_url.as_deref().ok_or(VerifyError::Invalid(
            "WEBHOOK_BASE_URL is not set; Twilio signatures cannot be checked",
        ))?;
        let url = request_url(base, &req.path, req.query.as_deref());
        let header = req.header(SIGNATURE_HEADER);
        match req.query_param(BODY_SHA256_PARAM) {
            Some(hash) => verify_json(token.as_bytes(), &url, &req.body, Some(&hash), header)?,
            None if is_form(req) => verify_form(token.as_bytes(), &url, &req.body, header)?,
            None => verify_json(token.as_bytes(), &url, &req.body, None, header)?,
        }
        Ok(Verified::Signature)
    }

    fn describe(&self, req: &Inbound) -> Result<Described, ParseError> {
        let delivery_id = non_empty_header(req, IDEMPOTENCY_HEADER);
        // The worker reads the body as JSON or as form fields: refuse here what it never could.
        let event_type = if req.query_param(BODY_SHA256_PARAM).is_some() || !is_form(req) {
            serde_json::from_slice::<serde::de::IgnoredAny>(&req.body)
                .map_err(|_| ParseError("Twilio JSON body is not valid JSON".into()))?;
            "twilio"
        } else {
            let params = std::str::from_utf8(&req.body)
                .ok()
                .map(|text| form_params(text.as_bytes()))
                .filter(|params| !params.is_empty())
                .ok_or_else(|| ParseError("Twilio form body has no UTF-8 form fields".into()))?;
            event_type(&params)
        };
        Ok(Described {
            delivery_id,
            event_type: event_type.to_owned(),
        })
    }
}

/// The event type of a form-encoded callback, from the parameters it carries.
pub fn event_type(params: &[(String, String)]) -> &'static str {
    let has = |name: &str| params.iter().any(|(k, _)| k == name);
    // An incoming message carries its Body (and `SmsStatus=received`); a status callback for
    // a sent message carries a status and no Body.
    if has("Body") && has("MessageSid") {
        "message"
    } else if has("MessageStatus") || has("SmsStatus") {
        "message_status"
    } else if has("CallStatus") {
        "call_status"
    } else {
        "twilio"
    }
}

#[cfg(test)]
mod tests {
    use super::super::github::test_support::*;
    use super::*;
    use http::Method;

    // Twilio's documentation example ("Webhooks security").
    const TOKEN: &str = "12345";
    const DOCS_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const DOCS_SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const DOCS_FORM: &str =
        "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
    const JSON_BODY: &str = r#"{"property": "value", "boolean": true}"#;
    const JSON_BODY_SHA256: &str =
        "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    const JSON_SIGNATURE: &str = "a9nBmqA0ju/hNViExpshrM61xv4=";

    fn secrets() -> ProviderSecrets {
        ProviderSecrets {
            twilio_auth_token: secret(TOKEN),
            ..Default::default()
        }
    }

    fn ctx(base: Option<&str>) -> VerifyContext {
        VerifyContext {
            public_base_url: base.map(str::to_owned),
            ..ctx_at(0)
        }
    }

    fn form_request(query: &str, sig: Option<&str>, body: &str) -> Inbound {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(sig) = sig {
            headers.push(("X-Twilio-Signature", sig));
        }
        inbound(Method::POST, "/myapp.php", Some(query), &headers, body)
    }

    fn json_request(query: &str, sig: Option<&str>, body: &str) -> Inbound {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(sig) = sig {
            headers.push(("X-Twilio-Signature", sig));
        }
        inbound(Method::POST, "/myapp.php", Some(query), &headers, body)
    }

    fn verify(req: &Inbound) -> Result<Verified, VerifyError> {
        Twilio.verify(req, &secrets(), &ctx(Some("https://mycompany.com")))
    }

    #[test]
    fn the_docs_parameters_sign_to_the_docs_signature() {
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ];
        assert_eq!(
            signature(TOKEN.as_bytes(), DOCS_URL, &params),
            DOCS_SIGNATURE
        );
        assert_eq!(
            sign_form(TOKEN.as_bytes(), DOCS_URL, DOCS_FORM.as_bytes()),
            DOCS_SIGNATURE
        );
    }

    #[test]
    fn a_twilio_form_callback_signed_as_in_the_docs_verifies() {
        let req = form_request("foo=1&bar=2", Some(DOCS_SIGNATURE), DOCS_FORM);
        assert_eq!(verify(&req), Ok(Verified::Signature));
    }

    #[test]
    fn form_parameters_are_sorted_whatever_order_they_arrive_in() {
        let shuffled = "To=%2B18005551212&Digits=1234&CallSid=CA1234567890ABCDE&From=%2B14158675309&Caller=%2B14158675309";
        let req = form_request("foo=1&bar=2", Some(DOCS_SIGNATURE), shuffled);
        assert_eq!(verify(&req), Ok(Verified::Signature));
    }

    #[test]
    fn a_trailing_slash_on_the_base_url_is_ignored() {
        let req = form_request("foo=1&bar=2", Some(DOCS_SIGNATURE), DOCS_FORM);
        let res = Twilio.verify(&req, &secrets(), &ctx(Some("https://mycompany.com/")));
        assert_eq!(res, Ok(Verified::Signature));
    }

    #[test]
    fn the_docs_json_body_hashes_to_the_docs_body_sha256() {
        assert_eq!(body_sha256_hex(JSON_BODY.as_bytes()), JSON_BODY_SHA256);
        let (url, sig) = sign_json(TOKEN.as_bytes(), DOCS_URL, JSON_BODY.as_bytes());
        assert_eq!(url, format!("{DOCS_URL}&bodySHA256={JSON_BODY_SHA256}"));
        assert_eq!(sig, JSON_SIGNATURE);
    }

    #[test]
    fn a_twilio_json_callback_signed_as_in_the_docs_verifies() {
        let query = format!("foo=1&bar=2&bodySHA256={JSON_BODY_SHA256}");
        let req = json_request(&query, Some(JSON_SIGNATURE), JSON_BODY);
        assert_eq!(verify(&req), Ok(Verified::Signature));
    }

    #[test]
    fn a_json_body_that_does_not_hash_to_body_sha256_is_a_mismatch() {
        let query = format!("foo=1&bar=2&bodySHA256={JSON_BODY_SHA256}");
        let req = json_request(
            &query,
            Some(JSON_SIGNATURE),
            r#"{"property": "value", "boolean": false}"#,
        );
        assert_eq!(verify(&req), Err(VerifyError::Mismatch));
        let query = "foo=1&bar=2&bodySHA256=not-hex";
        let sig = signature::<&str, &str>(
            TOKEN.as_bytes(),
            &format!("https://mycompany.com/myapp.php?{query}"),
            &[],
        );
        let req = json_request(query, Some(&sig), JSON_BODY);
        assert_eq!(verify(&req), Err(VerifyError::Mismatch));
    }

    #[test]
    fn a_signature_made_with_another_token_is_a_mismatch() {
        let sig = sign_form(b"54321", DOCS_URL, DOCS_FORM.as_bytes());
        let req = form_request("foo=1&bar=2", Some(&sig), DOCS_FORM);
        assert_eq!(verify(&req), Err(VerifyError::Mismatch));
    }

    #[test]
    fn one_flipped_byte_of_the_body_is_a_mismatch() {
        let mut body = DOCS_FORM.as_bytes().to_vec();
        body[10] ^= 0x01;
        let req = form_request(
            "foo=1&bar=2",
            Some(DOCS_SIGNATURE),
            std::str::from_utf8(&body).unwrap(),
        );
        assert_eq!(verify(&req), Err(VerifyError::Mismatch));
    }

    #[test]
    fn another_url_is_a_mismatch() {
        let req = form_request("foo=1&bar=3", Some(DOCS_SIGNATURE), DOCS_FORM);
        assert_eq!(verify(&req), Err(VerifyError::Mismatch));
        let res = Twilio.verify(
            &form_request("foo=1&bar=2", Some(DOCS_SIGNATURE), DOCS_FORM),
            &secrets(),
            &ctx(Some("https://other.example")),
        );
        assert_eq!(res, Err(VerifyError::Mismatch));
    }

    #[test]
    fn a_callback_without_the_signature_header_is_refused() {
        let req = form_request("foo=1&bar=2", None, DOCS_FORM);
        assert_eq!(
            verify(&req),
            Err(VerifyError::MissingHeader("X-Twilio-Signature"))
        );
    }

    #[test]
    fn a_malformed_signature_header_is_refused() {
        for bad in ["not base64!", "AAAA", ""] {
            let req = form_request("foo=1&bar=2", Some(bad), DOCS_FORM);
            assert_eq!(
                verify(&req),
                Err(VerifyError::MalformedHeader("X-Twilio-Signature")),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_empty_body_is_refused() {
        let req = form_request("foo=1&bar=2", Some(DOCS_SIGNATURE), "");
        assert_eq!(verify(&req), Err(VerifyError::EmptyBody));
    }

    #[test]
    fn without_webhook_base_url_twilio_signatures_cannot_be_checked() {
        let req = form_request("foo=1&bar=2", Some(DOCS_SIGNATURE), DOCS_FORM);
        let err = Twilio.verify(&req, &secrets(), &ctx(None)).unwrap_err();
        assert_eq!(
            err,
            VerifyError::Invalid(
                "WEBHOOK_BASE_URL is not set; Twilio signatures cannot be checked"
            )
        );
    }

    #[test]
    fn without_an_auth_token_nothing_is_accepted() {
        let req = form_request("foo=1&bar=2", Some(DOCS_SIGNATURE), DOCS_FORM);
        let res = Twilio.verify(&req, &no_secrets(), &ctx(Some("https://mycompany.com")));
        assert_eq!(res, Err(VerifyError::NotConfigured("TWILIO_AUTH_TOKEN")));
    }

    #[test]
    fn repeated_keys_are_sorted_by_value_too() {
        let url = "https://example.com/hook";
        let a = sign_form(TOKEN.as_bytes(), url, b"Media=b&Media=a&X=1");
        let b = sign_form(TOKEN.as_bytes(), url, b"X=1&Media=a&Media=b");
        assert_eq!(a, b);
        let expected = signature(
            TOKEN.as_bytes(),
            url,
            &[("Media", "a"), ("Media", "b"), ("X", "1")],
        );
        assert_eq!(a, expected);
    }

    #[test]
    fn describe_uses_the_idempotency_token_and_never_the_message_sid() {
        let mut req = form_request(
            "",
            None,
            "MessageSid=SM1&MessageStatus=delivered&AccountSid=AC1",
        );
        assert_eq!(
            Twilio.describe(&req),
            Ok(Described {
                delivery_id: None,
                event_type: "message_status".into(),
            })
        );
        req.headers.insert(
            "I-Twilio-Idempotency-Token",
            http::HeaderValue::from_static("tok-1"),
        );
        assert_eq!(
            Twilio.describe(&req).unwrap().delivery_id,
            Some("tok-1".into())
        );
    }

    #[test]
    fn describe_names_the_kind_of_callback() {
        for (body, kind) in [
            ("MessageSid=SM1&SmsStatus=sent", "message_status"),
            ("CallSid=CA1&CallStatus=completed", "call_status"),
            ("MessageSid=SM1&Body=hello&From=%2B1", "message"),
            ("MessageSid=SM1&SmsStatus=received&Body=hi", "message"),
            ("Foo=bar", "twilio"),
        ] {
            let req = form_request("", None, body);
            assert_eq!(Twilio.describe(&req).unwrap().event_type, kind, "{body}");
        }
        let json = json_request("bodySHA256=00", None, JSON_BODY);
        assert_eq!(Twilio.describe(&json).unwrap().event_type, "twilio");
    }
}
