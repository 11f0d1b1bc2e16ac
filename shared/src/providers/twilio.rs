//! Twilio: `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, full URL + every form parameter
//! as key then value, sorted by key)).
//!
//! Behind API Gateway the function cannot see the URL Twilio signed, so it is rebuilt from
//! `WEBHOOK_BASE_URL` + path + raw query. JSON bodies (Twilio adds `bodySHA256=<hex>` to the
//! URL) are signed over the URL alone, and the body must hash to that `bodySHA256`.
//!
//! Verification runs on every callback, so it allocates as little as it can: the URL is fed to
//! the MAC in pieces, and form values are percent-decoded in stack-sized chunks straight into the
//! MAC (bit for bit what `url::form_urlencoded` decodes, which the tests check).

use super::github::{ct_eq_mac, decode_hex, header, hex_digit, non_empty_header};
use super::{
    Described, Inbound, ParseError, Provider, ProviderSecrets, Verified, VerifyContext, VerifyError,
};
use crate::model::Source;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderName;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
pub const BODY_SHA256_PARAM: &str = "bodySHA256";
pub const SECRET_NAME: &str = "TWILIO_AUTH_TOKEN";

/// [`SIGNATURE_HEADER`] pre-parsed, for the lookup on every callback.
const SIGNATURE_NAME: HeaderName = HeaderName::from_static("x-twilio-signature");

type HmacSha1 = Hmac<sha1::Sha1>;

/// The URL Twilio signed: the public base URL (without a trailing slash) + path + `?query`.
pub fn request_url(public_base_url: &str, path: &str, query: Option<&str>) -> String {
    url_parts(public_base_url, path, query).concat()
}

/// [`request_url`] as the pieces to concatenate, so it can be fed to a MAC without building it.
fn url_parts<'a>(public_base_url: &'a str, path: &'a str, query: Option<&'a str>) -> [&'a str; 4] {
    let base = public_base_url.trim_end_matches('/');
    match query.filter(|q| !q.is_empty()) {
        Some(q) => [base, path, "?", q],
        None => [base, path, "", ""],
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
    let mut mac = url_mac(auth_token, &[url]);
    for (k, v) in &sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA1 keyed with the auth token that has been fed the URL (given in pieces).
fn url_mac(auth_token: &[u8], url: &[&str]) -> HmacSha1 {
    let mut mac = HmacSha1::new_from_slice(auth_token).expect("HMAC takes any key length");
    for part in url {
        mac.update(part.as_bytes());
    }
    mac
}

/// The MAC of a form-encoded body posted to `url` (in pieces): the parameters decoded as
/// `url::form_urlencoded::parse` decodes them, sorted by key then value. Keys are decoded up
/// front (they are short, and borrowed unless escaped); values are decoded straight into the MAC
/// in sorted order, except where several share a key and their decoded values set the order.
fn form_mac(auth_token: &[u8], url: &[&str], body: &[u8]) -> [u8; 20] {
    // Most callbacks carry 10–25 parameters; one small allocation, more only for long forms.
    let mut params: Vec<(Cow<'_, [u8]>, &[u8])> = Vec::with_capacity(24);
    let mut rest = body;
    while !rest.is_empty() {
        let (sequence, next) = match memchr::memchr(b'&', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = next;
        if sequence.is_empty() {
            continue;
        }
        // Keys are short: the `=` is a few bytes in.
        let (key, value) = match sequence.iter().position(|b| *b == b'=') {
            Some(i) => (&sequence[..i], &sequence[i + 1..]),
            None => (sequence, &[][..]),
        };
        params.push((decode_key(key), value));
    }
    // Keys mostly differ in their first byte: compare that before calling `memcmp`.
    params.sort_unstable_by(|(a, _), (b, _)| {
        a.first()
            .cmp(&b.first())
            .then_with(|| a.as_ref().cmp(b.as_ref()))
    });

    let mut mac = url_mac(auth_token, url);
    let mut buf = None;
    let mut rest = &params[..];
    while let Some((key, _)) = rest.first() {
        let run = rest.iter().take_while(|(k, _)| k == key).count();
        let (same_key, next) = rest.split_at(run);
        rest = next;
        if let [(key, value)] = same_key {
            mac.update(key);
            update_decoded(&mut mac, value, &mut buf);
        } else {
            // A repeated key (several media URLs, say): its values are ordered decoded.
            let mut values: Vec<Cow<'_, str>> =
                same_key.iter().map(|(_, v)| decode_component(v)).collect();
            values.sort_unstable();
            for value in &values {
                mac.update(key);
                mac.update(value.as_bytes());
            }
        }
    }
    mac.finalize().into_bytes().into()
}

/// One component (key or value) of a form or query, decoded as `url::form_urlencoded` does:
/// `+` is a space, `%XX` a byte (a `%` not followed by two hex digits stays as it is), and the
/// result is read as UTF-8 with each invalid sequence replaced by U+FFFD.
fn decode_component(raw: &[u8]) -> Cow<'_, str> {
    if is_plain(raw) {
        return String::from_utf8_lossy(raw);
    }
    let mut decoded = Vec::with_capacity(raw.len());
    decode_append(raw, &mut decoded);
    match String::from_utf8(decoded) {
        Ok(text) => Cow::Owned(text),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// [`decode_component`] as the bytes of its text, borrowed without a UTF-8 check beyond
/// "all ASCII" in the usual case: keys are only sorted and fed to the MAC (and the order of
/// `str` is the order of its bytes).
fn decode_key(raw: &[u8]) -> Cow<'_, [u8]> {
    if is_plain(raw) && raw.is_ascii() {
        return Cow::Borrowed(raw);
    }
    match decode_component(raw) {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

/// Nothing to decode: no `+` and no `%`. (A short one — most are keys and ids — is looked
/// through whole, which compiles to a few vector compares, cheaper than a call to `memchr`.)
fn is_plain(raw: &[u8]) -> bool {
    if raw.len() <= 64 {
        !raw.iter()
            .fold(false, |found, b| found | (*b == b'%') | (*b == b'+'))
    } else {
        memchr::memchr2(b'%', b'+', raw).is_none()
    }
}

/// UTF-8, checked the quick way first.
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Percent-decode all of `raw` onto the end of `out` (bytes, not yet read as UTF-8).
fn decode_append(raw: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + raw.len(), 0);
    let written = percent_decode_into(raw, &mut out[start..]).written;
    out.truncate(start + written);
}

/// How much of a value is decoded at a time: big enough that the MAC is fed in long runs, small
/// enough to stay in L1 and to zero once per request.
const DECODE_CHUNK: usize = 2048;

/// Feed the MAC the decoded form of one value, as [`decode_component`] would produce it, without
/// building it. A value without escapes (most of them) is fed as it is; others are decoded a
/// stack buffer at a time (`buf`, set up on first use and shared by the values of a request) and
/// checked as UTF-8 on the way, a character cut by the buffer's end being carried over. A value
/// that is not UTF-8 — never one Twilio sends — has its remainder decoded at once and replaced
/// as `String::from_utf8_lossy` replaces it.
fn update_decoded(mac: &mut HmacSha1, raw: &[u8], buf: &mut Option<[u8; DECODE_CHUNK]>) {
    if is_plain(raw) && is_utf8(raw) {
        mac.update(raw);
        return;
    }
    let buf = buf.get_or_insert([0u8; DECODE_CHUNK]);
    let mut carried = 0;
    let mut rest = raw;
    while !rest.is_empty() {
        let progress = percent_decode_into(rest, &mut buf[carried..]);
        rest = &rest[progress.used..];
        let filled = carried + progress.written;
        if progress.ascii && carried == 0 {
            mac.update(&buf[..filled]);
            continue;
        }
        match std::str::from_utf8(&buf[..filled]) {
            Ok(_) => {
                mac.update(&buf[..filled]);
                carried = 0;
            }
            Err(e) if e.error_len().is_none() && !rest.is_empty() => {
                // A character cut by the buffer's end: finish it with the next chunk.
                let valid = e.valid_up_to();
                mac.update(&buf[..valid]);
                buf.copy_within(valid..filled, 0);
                carried = filled - valid;
            }
            Err(e) => {
                // Everything before `valid` is whole characters, so the lossy reading of the
                // whole value is that prefix followed by the lossy reading of the remainder.
                let valid = e.valid_up_to();
                mac.update(&buf[..valid]);
                let mut remainder = buf[valid..filled].to_vec();
                decode_append(rest, &mut remainder);
                mac.update(String::from_utf8_lossy(&remainder).as_bytes());
                return;
            }
        }
    }
}

/// How far [`percent_decode_into`] got.
struct Progress {
    /// Bytes of the input used.
    used: usize,
    /// Bytes of the output written.
    written: usize,
    /// Every byte written is ASCII. (`false` can be wrong — a byte looked at but not yet used
    /// counts — `true` cannot.)
    ascii: bool,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit set in each byte of `word` that is exactly `byte`, and in no other.
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// `word` with each `+` made a space (`+` ^ 0x0B is a space).
fn plus_to_space(word: u64) -> u64 {
    word ^ ((bytes_equal(word, b'+') >> 7) * 0x0B)
}

/// The eight bytes at `at`, little-endian.
fn word_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The byte `%XX` stands for, if `h` and `l` are both hex digits.
fn escaped(h: u8, l: u8) -> Option<u8> {
    Some((hex_digit(h)? << 4) | hex_digit(l)?)
}

/// The bytes of one block of input (and a word of slack) with each `+` already a space.
const BLOCK: usize = 64;
type Spaced = [u8; BLOCK + 8];

/// Copy `spaced[from..to]` to `out` at `*o`, a word at a time, and move `*o` past it. The last
/// word may write up to 7 bytes past the run: the caller leaves that room, and what it writes
/// next overwrites them.
fn copy_run(spaced: &Spaced, from: usize, to: usize, out: &mut [u8], o: &mut usize) {
    let (mut s, mut d) = (from, *o);
    while s < to {
        out[d..d + 8].copy_from_slice(&spaced[s..s + 8]);
        s += 8;
        d += 8;
    }
    *o += to - from;
}

/// Percent-decode from `raw` into `out` until either runs out: `+` becomes a space and `%XX` a
/// byte, and a `%` without two hex digits after it stays as it is. Each step writes exactly one
/// byte, so `raw.len()` bytes of `out` always suffice.
///
/// This costs as much as the SHA-1 that follows, so it works a word at a time. In 64-byte blocks
/// (while there is room): every `+` is replaced and every `%` found eight bytes at a time, then
/// the runs between escapes are copied a word at a time; the cost of an escape is a few
/// instructions, not a chain of dependent loads. The remainder goes a word at a time up to each
/// `%`, then a byte at a time.
fn percent_decode_into(raw: &[u8], out: &mut [u8]) -> Progress {
    let (mut i, mut o) = (0, 0);
    // Every byte written is OR-ed in (with a few more), for `Progress::ascii`.
    let mut seen = 0u64;

    // A block needs the two bytes after it (for an escape at its end), and room for itself and
    // the spill of a word copy.
    while let (Some(block), true) = (raw.get(i..i + BLOCK + 2), o + BLOCK + 8 <= out.len()) {
        let mut spaced: Spaced = [0; BLOCK + 8];
        let mut percents = [0u64; BLOCK / 8];
        for (w, percent) in percents.iter_mut().enumerate() {
            let word = word_at(block, 8 * w);
            seen |= word;
            spaced[8 * w..8 * w + 8].copy_from_slice(&plus_to_space(word).to_le_bytes());
            *percent = bytes_equal(word, b'%');
        }
        // The plain run not yet copied starts here.
        let mut run = 0;
        for (w, mut percent) in percents.into_iter().enumerate() {
            while percent != 0 {
                let p = 8 * w + (percent.trailing_zeros() / 8) as usize;
                percent &= percent - 1;
                // A `%` without two hex digits after it is a plain byte of the run. (One with
                // them is never among another's digits, so `p >= run`.)
                if let Some(byte) = escaped(block[p + 1], block[p + 2]) {
                    copy_run(&spaced, run, p, out, &mut o);
                    out[o] = byte;
                    seen |= u64::from(byte);
                    o += 1;
                    run = p + 3;
                }
            }
        }
        // An escape at the very end used the next block's first bytes.
        copy_run(&spaced, run.min(BLOCK), BLOCK, out, &mut o);
        i += run.max(BLOCK);
    }

    while i < raw.len() && o < out.len() {
        if let (Some(chunk), Some(dest)) = (raw.get(i..i + 8), out.get_mut(o..o + 8)) {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            seen |= word;
            dest.copy_from_slice(&plus_to_space(word).to_le_bytes());
            // The lowest byte that is `%` (the bits above it may be wrong, the lowest is not).
            let y = word ^ (ONES * u64::from(b'%'));
            let percent = y.wrapping_sub(ONES) & !y & HIGH;
            if percent == 0 {
                i += 8;
                o += 8;
                continue;
            }
            let plain = (percent.trailing_zeros() / 8) as usize;
            i += plain;
            o += plain;
        }
        // One step: raw[i] is a `%`, or the word path had no room.
        let byte = match raw[i] {
            b'%' => match raw.get(i + 1..i + 3).and_then(|d| escaped(d[0], d[1])) {
                Some(byte) => {
                    i += 2;
                    byte
                }
                None => b'%',
            },
            b'+' => b' ',
            b => b,
        };
        out[o] = byte;
        seen |= u64::from(byte);
        i += 1;
        o += 1;
    }
    Progress {
        used: i,
        written: o,
        ascii: seen & HIGH == 0,
    }
}

/// The value of the first query parameter named `name`, decoded: what
/// `url::form_urlencoded::parse(query).find(..)` gives, borrowed unless it had escapes.
fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let decode = |text: &'a str| {
        if memchr::memchr2(b'%', b'+', text.as_bytes()).is_some() {
            decode_component(text.as_bytes())
        } else {
            Cow::Borrowed(text)
        }
    };
    query
        .split('&')
        .filter(|sequence| !sequence.is_empty())
        .find_map(|sequence| {
            let (key, value) = sequence.split_once('=').unwrap_or((sequence, ""));
            (decode(key) == name).then(|| decode(value))
        })
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
    // Decoded onto the stack; anything but 20 bytes is malformed.
    let mut given = [0u8; 32];
    let given: &[u8; 20] = match B64.decode_slice(header.trim(), &mut given) {
        Ok(20) => given.first_chunk().expect("20 bytes"),
        _ => return Err(VerifyError::MalformedHeader(SIGNATURE_HEADER)),
    };
    if ct_eq_mac(expected, given) {
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
    check_signature(&form_mac(auth_token, &[url], body), header)
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
    check_json(auth_token, &[url], body, body_sha256, header)
}

/// [`verify_json`] with the URL in pieces.
fn check_json(
    auth_token: &[u8],
    url: &[&str],
    body: &[u8],
    body_sha256: Option<&str>,
    header: Option<&str>,
) -> Result<(), VerifyError> {
    check_signature(
        &url_mac(auth_token, url).finalize().into_bytes().into(),
        header,
    )?;
    if let Some(claimed) = body_sha256 {
        // Anything but 64 hex digits cannot match.
        let claimed: [u8; 32] = decode_hex(claimed.trim()).ok_or(VerifyError::Mismatch)?;
        let digest: [u8; 32] = Sha256::digest(body).into();
        if !ct_eq_mac(&digest, &claimed) {
            return Err(VerifyError::Mismatch);
        }
    }
    Ok(())
}

fn is_form(req: &Inbound) -> bool {
    match header(req, &http::header::CONTENT_TYPE) {
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
        let token = super::body_and_secret(req, &secrets.twilio_auth_token, SECRET_NAME)?;
        let base = ctx.public_base_url.as_deref().ok_or(VerifyError::Invalid(
            "WEBHOOK_BASE_URL is not set; Twilio signatures cannot be checked",
        ))?;
        let url = url_parts(base, &req.path, req.query.as_deref());
        let token = token.as_bytes();
        let sig_header = header(req, &SIGNATURE_NAME);
        let body_sha256 = req
            .query
            .as_deref()
            .and_then(|q| query_value(q, BODY_SHA256_PARAM));
        match body_sha256 {
            Some(hash) => check_json(token, &url, &req.body, Some(&hash), sig_header)?,
            None if is_form(req) => {
                check_signature(&form_mac(token, &url, &req.body), sig_header)?;
            }
            None => check_json(token, &url, &req.body, None, sig_header)?,
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
            ..Default::default()
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
                ..Default::default()
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

    /// The reference: parameters as `url::form_urlencoded` decodes them, sorted and signed.
    fn reference_mac(url: &str, body: &[u8]) -> [u8; 20] {
        let params: Vec<_> = url::form_urlencoded::parse(body).collect();
        mac(TOKEN.as_bytes(), url, &params)
    }

    /// A deterministic stream of pseudo-random numbers (xorshift64).
    fn rng(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Bodies built from the fragments where decoding is easy to get wrong: escapes cut short,
    /// non-hex escapes, `+` next to escapes, multi-byte and invalid UTF-8, raw and escaped.
    fn tricky_body(next: &mut impl FnMut() -> u64, pieces: usize) -> Vec<u8> {
        const FRAGMENTS: [&[u8]; 30] = [
            b"a",
            b"Body",
            b"Media",
            b"=",
            b"&",
            b"&&",
            b"%",
            b"%4",
            b"%41",
            b"%zz",
            b"%G1",
            b"+",
            b"%2B",
            b"%2b",
            b"%25",
            b"%26",
            b"%3D",
            b"%C3%A9",
            b"%C3",
            b"%A9",
            b"%FF",
            "\u{e9}".as_bytes(),
            b"\xff",
            b"\xc3",
            b"%E2%82%AC",
            b"%F0%9F%98%80",
            b"%F0%9F",
            b"Hello+world%21+",
            b"0123456789abcdef",
            b"%%41",
        ];
        let mut body = Vec::new();
        for _ in 0..pieces {
            body.extend_from_slice(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
        }
        body
    }

    #[test]
    fn the_form_mac_is_the_mac_of_the_form_urlencoded_parameters() {
        let url = "https://example.com/hook?x=1";
        for body in [
            &b""[..],
            b"&",
            b"=",
            b"a",
            b"a=",
            b"=a",
            b"a=1&a=1",
            b"b=2&a=1&a=0&a=10",
            b"x=%",
            b"x=%4",
            b"x=%4g%41",
            b"x=%%41",
            b"x=+%2B+",
            b"x=%C3%A9&%C3%A9=x",
            b"x=%C3&x=%C3%A9",
            b"x=%FF%FE&y=\xff",
            b"Media=b&Media=a&Media=%61",
        ] {
            assert_eq!(
                form_mac(TOKEN.as_bytes(), &[url], body),
                reference_mac(url, body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut next = rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..2000 {
            let body = tricky_body(&mut next, 1 + round % 60);
            assert_eq!(
                form_mac(TOKEN.as_bytes(), &[url], &body),
                reference_mac(url, &body),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn long_values_decode_the_same_across_the_buffer_boundary() {
        // Multi-byte characters, escapes and invalid sequences at every offset around the end
        // of the buffer that values are decoded in.
        let url = "https://example.com/hook";
        let mut next = rng(42);
        for filler in DECODE_CHUNK - 20..DECODE_CHUNK + 10 {
            for tail in [
                &b"%E2%82%AC%E2%82%AC"[..],
                "\u{20ac}\u{20ac}".as_bytes(),
                b"%F0%9F%98%80x",
                b"%E2%82",
                b"%E2%82x%E2",
                b"\xe2\x82",
                b"%FFabc",
                b"%4",
            ] {
                let mut body = b"To=%2B1&Body=".to_vec();
                body.extend((0..filler).map(|i| b"ab+c"[i % 4]));
                body.extend_from_slice(tail);
                body.extend_from_slice(&tricky_body(&mut next, 3));
                assert_eq!(
                    form_mac(TOKEN.as_bytes(), &[url], &body),
                    reference_mac(url, &body),
                    "filler {filler}"
                );
            }
        }
    }

    #[test]
    fn decoding_matches_form_urlencoded_for_any_output_room() {
        let mut next = rng(7);
        for round in 0..1000 {
            let raw: Vec<u8> = tricky_body(&mut next, 1 + round % 100)
                .into_iter()
                .filter(|b| *b != b'&')
                .collect();
            let expected = url::form_urlencoded::parse(&[b"k=", &raw[..]].concat())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap();
            assert_eq!(decode_component(&raw), expected);
            // Decoding in pieces, as `update_decoded` does, gives the same bytes.
            let mut whole = Vec::new();
            decode_append(&raw, &mut whole);
            for room in (1..12).chain(70..76).chain([100, 200, 400]) {
                let (mut pieces, mut rest, mut out) = (Vec::new(), &raw[..], [0u8; 400]);
                while !rest.is_empty() {
                    let progress = percent_decode_into(rest, &mut out[..room]);
                    let written = &out[..progress.written];
                    assert!(progress.used > 0 && !written.is_empty());
                    assert!(!progress.ascii || written.is_ascii());
                    pieces.extend_from_slice(written);
                    rest = &rest[progress.used..];
                }
                assert_eq!(pieces, whole);
            }
        }
    }

    #[test]
    fn the_body_sha256_query_value_is_found_as_form_urlencoded_finds_it() {
        for query in [
            "",
            "&",
            "bodySHA256",
            "bodySHA256=",
            "bodySHA256=ab&bodySHA256=cd",
            "x=1&bodySHA256=ab%20",
            "body%53HA256=ab",
            "bodySHA256+=ab",
            "a=b&&bodySHA256=+ab+",
            "bodySHA256%3Dab=cd",
        ] {
            let req = inbound(Method::POST, "/", Some(query), &[], "x");
            assert_eq!(
                query_value(query, BODY_SHA256_PARAM).map(Cow::into_owned),
                req.query_param(BODY_SHA256_PARAM),
                "{query}"
            );
        }
    }

    #[test]
    fn the_rebuilt_url_is_the_one_fed_to_the_mac() {
        assert_eq!(
            request_url("https://h.example/", "/p", Some("a=1")),
            "https://h.example/p?a=1"
        );
        assert_eq!(
            request_url("https://h.example//", "/p", Some("")),
            "https://h.example/p"
        );
        assert_eq!(
            request_url("https://h.example", "/p", None),
            "https://h.example/p"
        );
    }

    #[test]
    fn the_pre_parsed_header_name_is_the_header() {
        assert_eq!(SIGNATURE_NAME, SIGNATURE_HEADER);
    }
}
