//! Properties of every provider's signature-header parser and of the Stripe and Standard
//! Webhooks header splitters: whatever bytes arrive, verification answers (never panics) and
//! never accepts them; a header signed with a random secret over a random body verifies; and
//! one bit changed in the signature, the body it covers or the secret does not.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hookline::model::Source;
use hookline::providers::simulate::{self, Simulation};
use hookline::providers::{
    github, gitlab, jira, provider, standard_webhooks, stripe, twilio, whatsapp, Inbound,
    ProviderSecrets, Verified, VerifyContext, VerifyError,
};
use hookline::secret::Secret;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::collection::vec;
use proptest::prelude::*;

const NOW: i64 = 1_780_000_000;
const BASE_URL: &str = "https://hooks.example.com";
const SOURCES: [Source; 6] = [
    Source::Github,
    Source::Gitlab,
    Source::Jira,
    Source::Stripe,
    Source::Twilio,
    Source::Whatsapp,
];

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).unwrap()
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..512)
}

/// Bytes as a header parser sees them: text, invalid UTF-8 replaced.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Timestamps, with the extremes a uniform draw never reaches.
fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        (NOW - 1_000..NOW + 1_000),
    ]
}

/// Header values: random bytes, and random text shaped like each scheme so the parsers get
/// past their first check.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        bytes(160).prop_map(lossy),
        any::<String>(),
        ("(sha256|SHA256|sha1| sha256 )?=?", "[0-9a-fA-FxX =]{0,80}").prop_map(|(a, b)| a + &b),
        vec(
            prop_oneof![
                timestamp().prop_map(|t| format!("t={t}")),
                "( ?)(t|v1|v0|)( ?)=[-+0-9a-fA-F ]{0,70}",
                "[^,]{0,20}",
            ],
            0..6
        )
        .prop_map(|items| items.join(",")),
        vec("(v1|v2|v1a|)(,?)[A-Za-z0-9+/=_-]{0,60}", 0..5).prop_map(|entries| entries.join(" \t")),
    ]
}

/// A bit index into `len` bytes.
fn flip(mut bytes: Vec<u8>, bit: usize) -> Vec<u8> {
    let bit = bit % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
    bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 as signed")
}

/// A `sha256=<hex>` value with one bit of its MAC changed.
fn flip_hub(header: &str, bit: usize) -> String {
    let mac = hex::decode(header.strip_prefix("sha256=").expect("sha256=")).unwrap();
    format!("sha256={}", hex::encode(flip(mac, bit)))
}

fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// Every provider configured with `secret` (GitLab: as a signing token when it is `whsec_`).
fn secrets(secret: &str) -> ProviderSecrets {
    let s = || Some(Secret::new(secret));
    let signing = secret.starts_with(standard_webhooks::SECRET_PREFIX);
    ProviderSecrets {
        github_webhook_secret: s(),
        gitlab_webhook_token: if signing { None } else { s() },
        gitlab_signing_token: if signing { s() } else { None },
        jira_webhook_secret: s(),
        stripe_webhook_secret: s(),
        twilio_auth_token: s(),
        whatsapp_app_secret: s(),
        whatsapp_verify_token: s(),
    }
}

fn context() -> VerifyContext {
    VerifyContext {
        now: now(),
        public_base_url: Some(BASE_URL.into()),
    }
}

/// The request a provider would send for `body` signed with `secret`, as the route receives it.
fn signed(source: Source, secret: &str, body: &[u8], url: &str) -> Inbound {
    let signed = simulate::sign(&Simulation {
        source,
        secret,
        url: Some(url),
        body,
        event: Some("push"),
        now: now(),
        delivery_id: Some("d-1"),
    })
    .expect("signs");
    let target = signed
        .url
        .strip_prefix(BASE_URL)
        .expect("under the base URL");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    Inbound {
        method: Method::POST,
        path: path.to_owned(),
        query,
        headers: header_map(&signed.headers),
        body: signed.body.into(),
    }
}

fn verify(source: Source, req: &Inbound, secret: &str) -> Result<Verified, VerifyError> {
    provider(source).verify(req, &secrets(secret), &context())
}

/// The header that carries the signature (or token) for a source and secret.
fn signature_header(source: Source, secret: &str) -> &'static str {
    match source {
        Source::Github | Source::Whatsapp => github::SIGNATURE_HEADER,
        Source::Jira => jira::SIGNATURE_HEADER,
        Source::Stripe => stripe::SIGNATURE_HEADER,
        Source::Twilio => twilio::SIGNATURE_HEADER,
        Source::Gitlab if secret.starts_with(standard_webhooks::SECRET_PREFIX) => {
            standard_webhooks::SIGNATURE_HEADER
        }
        Source::Gitlab => gitlab::TOKEN_HEADER,
    }
}

/// The signature header's value with one bit of what it proves changed: the MAC (re-encoded
/// as the provider encodes it) or, for GitLab's token, the token itself.
fn flip_signature(source: Source, secret: &str, value: &str, bit: usize) -> String {
    match signature_header(source, secret) {
        stripe::SIGNATURE_HEADER => {
            let (t, v1) = value.split_once(",v1=").expect("t=…,v1=…");
            format!(
                "{t},v1={}",
                hex::encode(flip(hex::decode(v1).unwrap(), bit))
            )
        }
        standard_webhooks::SIGNATURE_HEADER => {
            let mac = value.strip_prefix("v1,").expect("v1,");
            format!("v1,{}", b64(&flip(unb64(mac), bit)))
        }
        twilio::SIGNATURE_HEADER => b64(&flip(unb64(value), bit)),
        gitlab::TOKEN_HEADER => lossy(flip(value.as_bytes().to_vec(), bit)),
        _ => flip_hub(value, bit),
    }
}

/// Secrets as each provider issues them: any text, or a `whsec_` Standard Webhooks secret.
fn provider_secret() -> impl Strategy<Value = String> {
    prop_oneof![
        "[!-~]{1,64}",
        vec(any::<u8>(), 1..64).prop_map(|key| format!("whsec_{}", b64(&key))),
    ]
}

/// A Twilio target under the base URL: a path and perhaps a query that is not a `bodySHA256`.
fn target() -> impl Strategy<Value = String> {
    (
        "/api/v1/webhooks/twilio",
        proptest::option::of("[!-~]{1,40}"),
    )
        .prop_map(|(path, query)| match query {
            Some(q) if !q.contains('#') => format!("{path}?{q}"),
            _ => path.to_owned(),
        })
}

proptest! {
    // ---------------------------------------------------------------------------------------
    // Arbitrary input: an answer, never a panic, never a pass.

    #[test]
    fn any_bytes_in_any_provider_request_are_refused_without_a_panic(
        values in vec(header_value(), 9),
        raw in vec(bytes(100), 9),
        use_raw in vec(any::<bool>(), 9),
        body in bytes(300),
        query in proptest::option::of(bytes(80).prop_map(lossy)),
        secret in provider_secret(),
    ) {
        let names = [
            github::SIGNATURE_HEADER, jira::SIGNATURE_HEADER, gitlab::TOKEN_HEADER,
            standard_webhooks::ID_HEADER, standard_webhooks::TIMESTAMP_HEADER,
            standard_webhooks::SIGNATURE_HEADER, stripe::SIGNATURE_HEADER,
            twilio::SIGNATURE_HEADER, "Content-Type",
        ];
        let mut headers = HeaderMap::new();
        for (i, name) in names.iter().enumerate() {
            // Raw bytes as a proxy might pass them through (not always valid UTF-8).
            let value = if use_raw[i] {
                HeaderValue::from_bytes(&raw[i]).ok()
            } else {
                HeaderValue::from_str(&values[i]).ok()
            };
            if let Some(value) = value {
                headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            }
        }
        for source in SOURCES {
            let req = Inbound {
                method: Method::POST,
                path: "/api/v1/webhooks/x".into(),
                query: query.clone(),
                headers: headers.clone(),
                body: body.clone().into(),
            };
            let outcome = verify(source, &req, &secret);
            prop_assert!(outcome.is_err(), "{source:?} accepted arbitrary input: {outcome:?}");
            let _ = provider(source).handshake(&req, &secrets(&secret));
        }
    }

    #[test]
    fn any_header_value_is_answered_by_each_parser_without_a_panic(
        value in header_value(),
        secret in bytes(64),
        body in bytes(300),
        t in timestamp(),
        text_secret in any::<String>(),
        id in proptest::option::of(header_value()),
        ts in proptest::option::of(prop_oneof![timestamp().prop_map(|t| t.to_string()), header_value()]),
    ) {
        let header = Some(value.as_str());
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        prop_assert!(github::verify_signature(&secret, &body, header).is_err());
        prop_assert!(jira::verify_signature(&secret, &body, header).is_err());
        prop_assert!(whatsapp::verify_signature(&secret, &body, header).is_err());
        let _ = jira::verify_query_secret(&secret, header);
        let _ = gitlab::verify_token(&secret, header);
        let _ = whatsapp::handshake(Some(&secret), Some("subscribe"), header, Some("c"));
        if let Ok(parsed) = stripe::parse_header(&value) {
            prop_assert!(!parsed.v1.is_empty());
        }
        prop_assert!(stripe::verify(&text_secret, &body, header, now, stripe::TOLERANCE_SECS).is_err());
        let _ = stripe::verify(&text_secret, &body, Some(&format!("t={t},v1=00")), now, 300);
        let _ = standard_webhooks::decode_secret(&text_secret);
        let _ = standard_webhooks::verify(
            &text_secret, id.as_deref(), ts.as_deref(), &body, header, now, 300,
        );
        prop_assert!(standard_webhooks::verify(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Some("msg_1"), Some(&t.to_string()),
            &body, header, now, 300,
        ).is_err());
        prop_assert!(twilio::verify_form(&secret, BASE_URL, &body, header).is_err());
        prop_assert!(twilio::verify_json(&secret, BASE_URL, &body, header, header).is_err());
        let _ = twilio::form_params(&body);
    }

    // ---------------------------------------------------------------------------------------
    // Signed as the provider signs: verifies; one bit changed: does not.

    #[test]
    fn a_request_signed_with_a_random_secret_verifies_on_every_route(
        secret in provider_secret(),
        body in body(),
        target in target(),
    ) {
        for source in SOURCES {
            let url = format!("{BASE_URL}{target}");
            let req = signed(source, &secret, &body, &url);
            prop_assert!(
                matches!(verify(source, &req, &secret), Ok(Verified::Signature)),
                "{source:?}: {:?}", verify(source, &req, &secret)
            );
        }
    }

    #[test]
    fn one_bit_changed_in_the_signature_or_the_secret_is_refused(
        secret in provider_secret(),
        body in body(),
        bit in any::<usize>(),
    ) {
        for source in SOURCES {
            let url = format!("{BASE_URL}/api/v1/webhooks/twilio");
            let req = signed(source, &secret, &body, &url);
            let name = signature_header(source, &secret);
            let value = req.headers.get(name).unwrap().to_str().unwrap().to_owned();
            let mut tampered = req.clone();
            let flipped = flip_signature(source, &secret, &value, bit);
            let Ok(flipped) = HeaderValue::from_str(&flipped) else { continue };
            tampered.headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), flipped);
            prop_assert!(verify(source, &tampered, &secret).is_err(), "{source:?} signature");

            let other = lossy(flip(secret.clone().into_bytes(), bit));
            if other != secret {
                prop_assert!(verify(source, &req, &other).is_err(), "{source:?} secret");
            }
        }
    }

    #[test]
    fn one_bit_changed_in_a_signed_body_is_refused(
        secret in provider_secret(),
        body in body(),
        bit in any::<usize>(),
    ) {
        // Every scheme that signs the raw bytes. (GitLab's secret token signs nothing, and a
        // Twilio form signature covers the decoded fields, not the bytes.)
        let json_body = serde_json::to_vec(&lossy(body.clone())).unwrap();
        for (source, body) in [
            (Source::Github, &body),
            (Source::Jira, &body),
            (Source::Whatsapp, &body),
            (Source::Stripe, &body),
            (Source::Twilio, &json_body),
        ] {
            let url = format!("{BASE_URL}/api/v1/webhooks/twilio");
            let mut req = signed(source, &secret, body, &url);
            req.body = flip(body.to_vec(), bit).into();
            prop_assert!(verify(source, &req, &secret).is_err(), "{source:?}");
        }
        if secret.starts_with(standard_webhooks::SECRET_PREFIX) {
            let mut req = signed(Source::Gitlab, &secret, &body, BASE_URL);
            req.body = flip(body, bit).into();
            prop_assert!(verify(Source::Gitlab, &req, &secret).is_err(), "GitLab signing token");
        }
    }

    #[test]
    fn hub_signatures_round_trip_and_a_flipped_bit_fails(
        secret in vec(any::<u8>(), 1..64),
        body in bytes(512),
        bit in any::<usize>(),
    ) {
        for (sign, check) in [
            (github::signature as fn(&[u8], &[u8]) -> String,
             github::verify_signature as fn(&[u8], &[u8], Option<&str>) -> Result<(), VerifyError>),
            (jira::signature, jira::verify_signature),
            (whatsapp::signature, whatsapp::verify_signature),
        ] {
            let header = sign(&secret, &body);
            prop_assert_eq!(check(&secret, &body, Some(&header)), Ok(()));
            prop_assert_eq!(
                check(&secret, &body, Some(&flip_hub(&header, bit))),
                Err(VerifyError::Mismatch)
            );
            prop_assert_eq!(
                check(&flip(secret.clone(), bit), &body, Some(&header)),
                Err(VerifyError::Mismatch)
            );
        }
        prop_assert_eq!(jira::verify_query_secret(b"s3cret", Some("s3cret")), Ok(()));
    }

    #[test]
    fn a_gitlab_token_matches_itself_only(token in "[!-~]{1,64}", bit in any::<usize>()) {
        prop_assert_eq!(gitlab::verify_token(token.as_bytes(), Some(&token)), Ok(()));
        let other = lossy(flip(token.clone().into_bytes(), bit));
        prop_assert_eq!(
            gitlab::verify_token(token.as_bytes(), Some(&other)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_twilio_signature_over_any_form_body_verifies_and_a_changed_url_does_not(
        token in vec(any::<u8>(), 1..40),
        body in bytes(400),
        path in "/[!-~]{0,30}",
        bit in any::<usize>(),
    ) {
        // The signer decodes the fields with the url crate; the verifier with its own decoder.
        let url = format!("{BASE_URL}{path}");
        let signature = twilio::sign_form(&token, &url, &body);
        prop_assert_eq!(twilio::verify_form(&token, &url, &body, Some(&signature)), Ok(()));
        let flipped = b64(&flip(unb64(&signature), bit));
        prop_assert_eq!(
            twilio::verify_form(&token, &url, &body, Some(&flipped)),
            Err(VerifyError::Mismatch)
        );
        if let Ok(other) = String::from_utf8(flip(url.clone().into_bytes(), bit)) {
            prop_assert_eq!(
                twilio::verify_form(&token, &other, &body, Some(&signature)),
                Err(VerifyError::Mismatch)
            );
        }
        let (json_url, json_signature) = twilio::sign_json(&token, &url, &body);
        let hash = twilio::body_sha256_hex(&body);
        prop_assert_eq!(
            twilio::verify_json(&token, &json_url, &body, Some(&hash), Some(&json_signature)),
            Ok(())
        );
    }

    // ---------------------------------------------------------------------------------------
    // The header splitters.

    #[test]
    fn a_stripe_header_splits_into_its_timestamp_and_every_v1_in_order(
        t in timestamp(),
        v1 in vec("[0-9a-f]{0,64}", 1..4),
        others in vec(("(v0|t1|x| v0 )", "[^,]{0,20}"), 0..4),
        spaces in vec(" {0,2}", 8),
        positions in vec(any::<usize>(), 5),
    ) {
        // The v1 items in order, the t and the other items inserted anywhere among them.
        let mut items: Vec<String> = v1
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{}v1={}{v}", spaces[i + 1], spaces[i + 4]))
            .collect();
        let extra = std::iter::once(format!("{}t={t}", spaces[0]))
            .chain(others.iter().map(|(k, v)| format!("{k}={v}")));
        for (item, at) in extra.zip(&positions) {
            items.insert(at % (items.len() + 1), item);
        }
        let header = items.join(",");
        let parsed = stripe::parse_header(&header).unwrap();
        prop_assert_eq!(parsed.timestamp, t);
        prop_assert_eq!(parsed.v1, v1.iter().map(String::as_str).collect::<Vec<_>>());

        // Two timestamps, or none, or no v1: malformed.
        let twice = format!("{header},t={t}");
        prop_assert!(stripe::parse_header(&twice).is_err());
        let without_t: Vec<&str> = header.split(',').filter(|i| !i.trim().starts_with("t=")).collect();
        prop_assert!(stripe::parse_header(&without_t.join(",")).is_err());
        let without_v1: Vec<&str> = header.split(',').filter(|i| !i.trim().starts_with("v1=")).collect();
        prop_assert!(stripe::parse_header(&without_v1.join(",")).is_err());
    }

    #[test]
    fn a_stripe_signature_verifies_whichever_v1_it_is_and_within_the_tolerance_only(
        secret in any::<String>(),
        body in bytes(400),
        wrong in vec("[0-9a-f]{64}", 0..3),
        position in any::<usize>(),
        skew in -300i64..=300,
        late in 301i64..100_000,
    ) {
        let t = NOW - skew;
        let mut v1: Vec<String> = wrong.clone();
        v1.insert(position % (wrong.len() + 1), stripe::signature(&secret, &body, t));
        let header = format!("t={t},{}", v1.iter().map(|v| format!("v1={v}")).collect::<Vec<_>>().join(","));
        prop_assert_eq!(stripe::verify(&secret, &body, Some(&header), now(), 300), Ok(()));
        prop_assert_eq!(stripe::parse_header(&stripe::sign(&secret, &body, t)).unwrap().timestamp, t);
        let stale = stripe::sign(&secret, &body, NOW - late);
        prop_assert_eq!(
            stripe::verify(&secret, &body, Some(&stale), now(), 300),
            Err(VerifyError::StaleTimestamp { tolerance_secs: 300 })
        );
        if !wrong.is_empty() {
            let only_wrong = format!("t={t},{}", wrong.iter().map(|v| format!("v1={v}")).collect::<Vec<_>>().join(","));
            prop_assert_eq!(
                stripe::verify(&secret, &body, Some(&only_wrong), now(), 300),
                Err(VerifyError::Mismatch)
            );
        }
    }

    #[test]
    fn a_standard_webhooks_signature_verifies_among_any_other_entries(
        key in vec(any::<u8>(), 1..64),
        id in "[!-~]{1,40}",
        body in bytes(400),
        skew in -300i64..=300,
        others in vec(prop_oneof![
            vec(any::<u8>(), 32).prop_map(|mac| format!("v1,{}", b64(&mac))),
            "(v2|v1a|v0),[A-Za-z0-9+/=]{0,60}",
        ], 0..4),
        position in any::<usize>(),
        separators in vec("[ \t\n]{1,3}", 5),
        bit in any::<usize>(),
    ) {
        let secret = format!("whsec_{}", b64(&key));
        let t = NOW - skew;
        let ours = standard_webhooks::sign(&secret, &id, t, &body).unwrap();
        let mut entries = others.clone();
        entries.insert(position % (others.len() + 1), ours.clone());
        let mut header = String::new();
        for (i, entry) in entries.iter().enumerate() {
            header.push_str(entry);
            header.push_str(&separators[i % separators.len()]);
        }
        let check = |header: &str, body: &[u8]| {
            standard_webhooks::verify(&secret, Some(&id), Some(&t.to_string()), body, Some(header), now(), 300)
        };
        prop_assert_eq!(check(&header, &body), Ok(()));
        let mac = unb64(ours.strip_prefix("v1,").unwrap());
        prop_assert_eq!(check(&format!("v1,{}", b64(&flip(mac, bit))), &body), Err(VerifyError::Mismatch));
        if !body.is_empty() {
            prop_assert_eq!(check(&header, &flip(body.clone(), bit)), Err(VerifyError::Mismatch));
        }
        let without: Vec<&String> = entries.iter().filter(|e| **e != ours).collect();
        let rest = without.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(" ");
        let expected = if without.iter().any(|e| e.starts_with("v1,")) {
            VerifyError::Mismatch
        } else {
            VerifyError::MalformedHeader(standard_webhooks::SIGNATURE_HEADER)
        };
        prop_assert_eq!(check(&rest, &body), Err(expected));
    }
}
