//! Offline licences for self-hosted deployments: JWTs signed with Ed25519 (`alg: EdDSA`) by
//! the operator's `LICENSE_PRIVATE_KEY`, naming an org, its tier, features, limits and seats,
//! and verified anywhere with the public key alone — by Hookline or by any standard JWT library.

use super::tiers::{Limits, Plan, Tier};
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The `iss` of licences unless a deployment names its own.
pub const DEFAULT_ISSUER: &str = "hookline";

/// How far past `exp` (and before `nbf`) a licence is still accepted, for clock skew between
/// the operator's machine and the customer's. Decided here rather than left to jsonwebtoken's
/// default: a licence that expired more than a minute ago is expired.
pub const LEEWAY: Duration = Duration::from_secs(60);

/// The longest token looked at; a licence is well under 1 KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The most seats one licence may grant.
pub const MAX_SEATS: u32 = 1_000_000;

/// The longest org id a licence may name.
const MAX_ORG_ID_BYTES: usize = 256;

/// What a licence says. Serialised as the JWT's payload, so every field is a plain JSON
/// value a standard JWT library reads (times are NumericDate seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LicenceClaims {
    /// Who issued it (`hookline` unless the deployment names another).
    pub iss: String,
    /// The org it is for.
    pub sub: String,
    pub tier: Tier,
    pub features: Vec<String>,
    pub limits: Limits,
    pub seats: u32,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// A random id, so one licence can be told from another (and revoked by id).
    pub jti: String,
}

impl LicenceClaims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Why a key could not be read. Never contains the key text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Why a licence was refused (or could not be issued). Says which check failed, never
/// quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenceError {
    #[error("the licence is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the licence is signed with {0}, not EdDSA: refused")]
    WrongAlgorithm(String),
    #[error(
        "the licence's signature does not verify with this public key: it was signed with \
         another key, or a claim was changed after signing"
    )]
    BadSignature,
    #[error("the licence was issued by {found:?}, not {expected:?}")]
    WrongIssuer { expected: String, found: String },
    #[error("the licence expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the licence is not valid before {0}")]
    NotYetValid(DateTime<Utc>),
}

/// A licence that cannot be issued as asked: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct IssueError {
    pub field: &'static str,
    pub problem: String,
}

/// What to issue a licence for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceRequest {
    pub org_id: String,
    pub tier: Tier,
    pub seats: u32,
    pub expires_at: DateTime<Utc>,
}

/// A signed licence and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Licence {
    pub licence: String,
    pub claims: LicenceClaims,
}

// ---------------------------------------------------------------------------------------------
// Keys

/// Base64 text as people paste it: standard or URL-safe alphabet, padded or not, wrapped over
/// lines, or a PEM block around it.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const FORGIVING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    FORGIVING.decode(body).ok()
}

/// The operator's licence signing key (`LICENSE_PRIVATE_KEY`). A secret: its `Debug` prints
/// nothing of it, and the key bytes are wiped when it is dropped.
#[derive(Clone)]
pub struct LicenceKey {
    key: SigningKey,
    issuer: String,
}

impl fmt::Debug for LicenceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LicenceKey(***)")
    }
}

impl LicenceKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        Self {
            key,
            issuer: DEFAULT_ISSUER.to_owned(),
        }
    }

    /// Read `LICENSE_PRIVATE_KEY`: the base64 (standard or URL-safe, padded or not) of the
    /// 32-byte Ed25519 seed, of a PKCS#8 DER document (`openssl genpkey -algorithm ed25519
    /// -outform DER`), or of the 64-byte seed-and-public-key form; a PEM block works too.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let expected = "expected the base64 of a 32-byte Ed25519 seed or of a PKCS#8 DER \
                        document (openssl genpkey -algorithm ed25519 -outform DER)";
        let bytes = zeroize::Zeroizing::new(
            decode_base64(text).ok_or_else(|| KeyError(format!("not base64: {expected}")))?,
        );
        let key = match bytes.len() {
            32 => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                seed.copy_from_slice(&bytes);
                SigningKey::from_bytes(&seed)
            }
            // libsodium's and NaCl's form: the seed, then its public key.
            64 => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                seed.copy_from_slice(&bytes[..32]);
                let key = SigningKey::from_bytes(&seed);
                if key.verifying_key().as_bytes()[..] != bytes[32..] {
                    return Err(KeyError(
                        "64 bytes whose second half is not the public key of the first: \
                         not an Ed25519 key pair"
                            .into(),
                    ));
                }
                key
            }
            n => SigningKey::from_pkcs8_der(&bytes).map_err(|_| {
                KeyError(format!(
                    "not an Ed25519 private key ({n} bytes that are no PKCS#8 Ed25519 document): {expected}"
                ))
            })?,
        };
        Ok(Self::from_signing_key(key))
    }

    /// Sign licences with this `iss` (and expect it when verifying with [`Self::verifier`]).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The 32-byte seed as standard base64: what `LICENSE_PRIVATE_KEY` holds.
    pub fn to_base64(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(self.key.as_bytes()),
        )
    }

    /// The raw 32-byte public key as standard base64: what `LICENSE_PUBLIC_KEY` holds.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// A verifier for the licences this key signs.
    pub fn verifier(&self) -> LicenceVerifier {
        LicenceVerifier::from_key(self.key.verifying_key()).with_issuer(self.issuer.clone())
    }

    /// Sign a licence for `request`, granting `plan`'s features and limits, issued `now`.
    pub fn issue(
        &self,
        request: &LicenceRequest,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Result<Licence, IssueError> {
        let org_id = request.org_id.trim();
        if org_id.is_empty()
            || org_id.len() > MAX_ORG_ID_BYTES
            || org_id.chars().any(char::is_control)
        {
            return Err(IssueError {
                field: "org_id",
                problem: format!("must be 1 to {MAX_ORG_ID_BYTES} bytes on one line"),
            });
        }
        if !(1..=MAX_SEATS).contains(&request.seats) {
            return Err(IssueError {
                field: "seats",
                problem: format!("must be from 1 to {MAX_SEATS}"),
            });
        }
        if request.expires_at <= now {
            return Err(IssueError {
                field: "expires_at",
                problem: "must be in the future".into(),
            });
        }
        let claims = LicenceClaims {
            iss: self.issuer.clone(),
            sub: org_id.to_owned(),
            tier: request.tier,
            features: plan.features.clone(),
            limits: plan.limits.clone(),
            seats: request.seats,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: request.expires_at.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        Ok(Licence {
            licence: self.sign(&claims),
            claims,
        })
    }

    /// Sign any claims (tests use this for licences that must be refused).
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".into());
        header.kid = Some(key_id(&self.key.verifying_key()));
        // jsonwebtoken reads Ed25519 private keys as PKCS#8 (through ring).
        let der = self
            .key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8");
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .expect("a valid Ed25519 key signs plain JSON claims")
    }
}

/// A short, stable name for a public key (the JWT header's `kid`), so a customer can tell
/// which of the operator's keys signed a licence.
fn key_id(key: &VerifyingKey) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8])
}

/// Verifies licences with the operator's public key (`LICENSE_PUBLIC_KEY`) alone.
#[derive(Clone)]
pub struct LicenceVerifier {
    key: VerifyingKey,
    issuer: String,
}

impl fmt::Debug for LicenceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenceVerifier")
            .field("kid", &key_id(&self.key))
            .field("issuer", &self.issuer)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
}

impl LicenceVerifier {
    fn from_key(key: VerifyingKey) -> Self {
        Self {
            key,
            issuer: DEFAULT_ISSUER.to_owned(),
        }
    }

    /// Read `LICENSE_PUBLIC_KEY`: the base64 of the raw 32-byte Ed25519 public key or of an
    /// SPKI DER document (`openssl pkey -pubout -outform DER`); a PEM block works too.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let expected = "expected the base64 of a 32-byte Ed25519 public key or of an SPKI DER \
                        document (openssl pkey -pubout -outform DER)";
        let bytes =
            decode_base64(text).ok_or_else(|| KeyError(format!("not base64: {expected}")))?;
        let key = match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(raw) => VerifyingKey::from_bytes(&raw)
                .map_err(|_| KeyError("32 bytes that are no Ed25519 public key".into()))?,
            Err(_) => VerifyingKey::from_public_key_der(&bytes).map_err(|_| {
                KeyError(format!(
                    "not an Ed25519 public key ({} bytes that are no SPKI Ed25519 document): {expected}",
                    bytes.len()
                ))
            })?,
        };
        Ok(Self::from_key(key))
    }

    /// Accept licences issued by `issuer` only (default `hookline`).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// The raw public key as standard base64.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.as_bytes())
    }

    /// The claims of `token` if it is a licence this key signed, from this issuer, valid at
    /// `now` (with [`LEEWAY`]); else which check failed.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<LicenceClaims, LicenceError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(LicenceError::Malformed(format!(
                "it is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header, _, _] = parts[..] else {
            return Err(LicenceError::Malformed(
                "it is not three base64url parts separated by dots".into(),
            ));
        };
        let header: RawHeader = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| LicenceError::Malformed("its header is not base64url JSON".into()))?;
        // Pinned: only EdDSA, whatever the token says (`none`, or HS256 with the public key as
        // the HMAC secret, would otherwise let anyone mint one).
        match header.alg.as_deref() {
            Some("EdDSA") => {}
            Some(alg) if alg.len() <= 16 && alg.chars().all(|c| c.is_ascii_graphic()) => {
                return Err(LicenceError::WrongAlgorithm(format!("alg {alg:?}")))
            }
            Some(_) => return Err(LicenceError::WrongAlgorithm("an unknown alg".into())),
            None => return Err(LicenceError::WrongAlgorithm("no alg".into())),
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        // Times and the issuer are checked below, each with its own message and LEEWAY.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        let key = DecodingKey::from_ed_der(self.key.as_bytes());
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::Crypto(_) => LicenceError::BadSignature,
                _ => LicenceError::Malformed("its payload is not base64url JSON".into()),
            },
        )?;
        let claims: LicenceClaims = serde_json::from_value(data.claims).map_err(|e| {
            LicenceError::Malformed(format!("its claims are not a licence's ({e})"))
        })?;
        if claims.iss != self.issuer {
            return Err(LicenceError::WrongIssuer {
                expected: self.issuer.clone(),
                found: claims.iss.chars().take(64).collect(),
            });
        }
        let now = now.timestamp();
        let leeway = LEEWAY.as_secs() as i64;
        let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
        if claims.exp.saturating_add(leeway) <= now {
            return Err(LicenceError::Expired(at(claims.exp)));
        }
        if claims.nbf > now.saturating_add(leeway) {
            return Err(LicenceError::NotYetValid(at(claims.nbf)));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::tiers::TierTable;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn request(tier: Tier) -> LicenceRequest {
        LicenceRequest {
            org_id: "org-acme".into(),
            tier,
            seats: 25,
            expires_at: now() + chrono::Duration::days(365),
        }
    }

    fn issue(key: &LicenceKey, tier: Tier) -> Licence {
        key.issue(&request(tier), TierTable::default().plan(tier), now())
            .unwrap()
    }

    fn b64url(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn unb64url(part: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap()
    }

    #[test]
    fn a_licence_verifies_with_the_public_key_alone_and_says_what_it_grants() {
        let key = LicenceKey::generate();
        let licence = issue(&key, Tier::Enterprise);
        let verifier = LicenceVerifier::from_base64(&key.public_key_base64()).unwrap();
        let claims = verifier.verify(&licence.licence, now()).unwrap();
        assert_eq!(claims, licence.claims);
        assert_eq!(claims.iss, "hookline");
        assert_eq!(claims.sub, "org-acme");
        assert_eq!(claims.tier, Tier::Enterprise);
        assert_eq!(claims.seats, 25);
        assert_eq!(claims.features, TierTable::default().enterprise.features);
        assert_eq!(claims.limits, Limits::UNLIMITED);
        assert_eq!(claims.iat, now().timestamp());
        assert_eq!(claims.nbf, now().timestamp());
        assert_eq!(claims.expires_at(), now() + chrono::Duration::days(365));
        // The header names EdDSA, as standard libraries expect.
        let header: serde_json::Value =
            serde_json::from_slice(&unb64url(licence.licence.split('.').next().unwrap())).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["typ"], "JWT");
        // Each licence has its own id.
        assert_ne!(issue(&key, Tier::Enterprise).claims.jti, claims.jti);
    }

    #[test]
    fn a_licence_signed_with_another_key_is_refused() {
        let licence = issue(&LicenceKey::generate(), Tier::Team);
        let other = LicenceKey::generate().verifier();
        assert_eq!(
            other.verify(&licence.licence, now()),
            Err(LicenceError::BadSignature)
        );
    }

    #[test]
    fn a_changed_claim_is_refused() {
        let key = LicenceKey::generate();
        let licence = issue(&key, Tier::Team);
        let parts: Vec<&str> = licence.licence.split('.').collect();
        let mut claims: serde_json::Value = serde_json::from_slice(&unb64url(parts[1])).unwrap();
        for (field, value) in [
            ("tier", serde_json::json!("enterprise")),
            ("seats", serde_json::json!(10_000)),
            ("sub", serde_json::json!("org-other")),
            (
                "exp",
                serde_json::json!(claims["exp"].as_i64().unwrap() + 86_400),
            ),
        ] {
            let original = claims[field].clone();
            claims[field] = value;
            let tampered = format!(
                "{}.{}.{}",
                parts[0],
                b64url(&serde_json::to_vec(&claims).unwrap()),
                parts[2]
            );
            assert_eq!(
                key.verifier().verify(&tampered, now()),
                Err(LicenceError::BadSignature),
                "{field}"
            );
            claims[field] = original;
        }
    }

    #[test]
    fn alg_none_and_hs256_are_refused_before_any_signature_is_checked() {
        let key = LicenceKey::generate();
        let licence = issue(&key, Tier::Enterprise);
        let payload = licence.licence.split('.').nth(1).unwrap();
        // `none`: no signature at all.
        let none = format!("{}.{payload}.", b64url(br#"{"alg":"none","typ":"JWT"}"#));
        let err = key.verifier().verify(&none, now()).unwrap_err();
        assert_eq!(err, LicenceError::WrongAlgorithm("alg \"none\"".into()));
        assert!(err.to_string().contains("not EdDSA"), "{err}");
        // HS256 keyed with the public key, the classic confusion attack.
        let public = key.verifier().key.to_bytes();
        let hs256 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &licence.claims,
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(
            key.verifier().verify(&hs256, now()),
            Err(LicenceError::WrongAlgorithm("alg \"HS256\"".into()))
        );
        let no_alg = format!("{}.{payload}.AAAA", b64url(br#"{"typ":"JWT"}"#));
        assert_eq!(
            key.verifier().verify(&no_alg, now()),
            Err(LicenceError::WrongAlgorithm("no alg".into()))
        );
    }

    #[test]
    fn an_expired_licence_is_refused_after_the_leeway() {
        let key = LicenceKey::generate();
        let licence = issue(&key, Tier::Team);
        let exp = licence.claims.expires_at();
        let leeway = chrono::Duration::from_std(LEEWAY).unwrap();
        let verifier = key.verifier();
        assert!(verifier.verify(&licence.licence, exp).is_ok(), "at exp");
        assert!(
            verifier
                .verify(
                    &licence.licence,
                    exp + leeway - chrono::Duration::seconds(1)
                )
                .is_ok(),
            "within the leeway"
        );
        let err = verifier.verify(&licence.licence, exp + leeway).unwrap_err();
        assert_eq!(err, LicenceError::Expired(exp));
        assert!(
            err.to_string().starts_with("the licence expired at 2027-"),
            "{err}"
        );
        assert!(verifier
            .verify(&licence.licence, exp + chrono::Duration::days(30))
            .is_err());
    }

    #[test]
    fn a_licence_not_yet_valid_is_refused() {
        let key = LicenceKey::generate();
        let licence = issue(&key, Tier::Team);
        let verifier = key.verifier();
        let leeway = chrono::Duration::from_std(LEEWAY).unwrap();
        assert!(verifier.verify(&licence.licence, now() - leeway).is_ok());
        let err = verifier
            .verify(
                &licence.licence,
                now() - leeway - chrono::Duration::seconds(1),
            )
            .unwrap_err();
        assert_eq!(err, LicenceError::NotYetValid(now()));
        assert!(err.to_string().contains("not valid before"), "{err}");
    }

    #[test]
    fn a_licence_from_another_issuer_is_refused() {
        let key = LicenceKey::generate().with_issuer("acme-ops");
        let licence = issue(&key, Tier::Team);
        assert_eq!(licence.claims.iss, "acme-ops");
        assert!(key.verifier().verify(&licence.licence, now()).is_ok());
        let plain = LicenceVerifier::from_base64(&key.public_key_base64()).unwrap();
        assert_eq!(
            plain.verify(&licence.licence, now()),
            Err(LicenceError::WrongIssuer {
                expected: "hookline".into(),
                found: "acme-ops".into()
            })
        );
    }

    #[test]
    fn malformed_tokens_say_so_without_quoting_them() {
        let key = LicenceKey::generate();
        let valid_header = b64url(br#"{"alg":"EdDSA"}"#);
        for token in [
            "",
            "not-a-jwt",
            "a.b",
            "a.b.c.d",
            "%%%.e30.sig",
            &"x".repeat(20_000),
        ] {
            let err = key.verifier().verify(token, now()).unwrap_err();
            assert!(
                matches!(err, LicenceError::Malformed(_)),
                "{token:.40}: {err}"
            );
            if token.len() > 3 {
                assert!(!err.to_string().contains(token), "{err}");
            }
        }
        // Signed by the right key, but its payload is not JSON.
        use ed25519_dalek::Signer;
        let signed = format!("{valid_header}.{}", b64url(b"not json"));
        let sig = key.key.sign(signed.as_bytes());
        let token = format!("{signed}.{}", b64url(&sig.to_bytes()));
        assert_eq!(
            key.verifier().verify(&token, now()),
            Err(LicenceError::Malformed(
                "its payload is not base64url JSON".into()
            ))
        );
        // Signed by the right key but not a licence: says which claim is missing.
        let not_a_licence = key.sign(&serde_json::json!({"iss": "hookline", "sub": "x"}));
        let err = key.verifier().verify(&not_a_licence, now()).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn the_private_key_reads_as_a_seed_in_any_base64_form() {
        let key = LicenceKey::generate();
        let seed = key.key.to_bytes();
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        for engine in engines {
            let text = format!("  {}\n", engine.encode(seed));
            let read = LicenceKey::from_base64(&text).unwrap();
            assert_eq!(read.public_key_base64(), key.public_key_base64());
        }
        assert_eq!(
            LicenceKey::from_base64(&key.to_base64())
                .unwrap()
                .public_key_base64(),
            key.public_key_base64()
        );
        // The 64-byte seed-and-public-key form of libsodium.
        let mut pair = seed.to_vec();
        pair.extend_from_slice(key.key.verifying_key().as_bytes());
        let text = base64::engine::general_purpose::STANDARD.encode(&pair);
        assert!(LicenceKey::from_base64(&text).is_ok());
        pair[40] ^= 1;
        let text = base64::engine::general_purpose::STANDARD.encode(&pair);
        assert!(LicenceKey::from_base64(&text).is_err());
    }

    #[test]
    fn the_private_key_reads_as_pkcs8_der_and_signs_the_same_licences() {
        let key = LicenceKey::generate();
        let der = key.key.to_pkcs8_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        let from_der = LicenceKey::from_base64(&b64).unwrap();
        assert_eq!(from_der.public_key_base64(), key.public_key_base64());
        let licence = issue(&from_der, Tier::Team);
        assert!(key.verifier().verify(&licence.licence, now()).is_ok());
        // The 48-byte PKCS#8 v1 document openssl writes.
        let mut v1 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        v1.extend_from_slice(key.key.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&v1);
        assert_eq!(
            LicenceKey::from_base64(&b64).unwrap().public_key_base64(),
            key.public_key_base64()
        );
        // And as PEM.
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        assert!(LicenceKey::from_base64(&pem).is_ok());
    }

    #[test]
    fn a_key_that_is_not_one_is_a_clear_error_that_never_echoes_it() {
        for text in [
            "",
            "not base64 at all!",
            "c2VjcmV0LXZhbHVlLXRoYXQtaXMtbm90LWEta2V5",
            // 32 bytes of base64 that decode to 24 bytes.
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let err = LicenceKey::from_base64(text).unwrap_err().to_string();
            assert!(err.contains("32-byte Ed25519 seed"), "{err}");
            if !text.is_empty() {
                assert!(!err.contains(text), "{err}");
            }
        }
    }

    #[test]
    fn the_public_key_reads_raw_or_as_spki_der() {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let key = LicenceKey::generate();
        let licence = issue(&key, Tier::Free);
        let spki = key.key.verifying_key().to_public_key_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_bytes());
        let verifier = LicenceVerifier::from_base64(&b64).unwrap();
        assert_eq!(verifier.public_key_base64(), key.public_key_base64());
        assert!(verifier.verify(&licence.licence, now()).is_ok());
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key.key.verifying_key().as_bytes());
        assert!(LicenceVerifier::from_base64(&url_safe).is_ok());
        let err = LicenceVerifier::from_base64("AAAA")
            .unwrap_err()
            .to_string();
        assert!(err.contains("32-byte Ed25519 public key"), "{err}");
    }

    #[test]
    fn the_private_key_never_prints_itself() {
        let key = LicenceKey::generate();
        let seed = key.to_base64();
        let shown = format!("{key:?} {:?}", Some(&key));
        assert_eq!(shown, "LicenceKey(***) Some(LicenceKey(***))");
        assert!(!shown.contains(seed.as_str()));
        let verifier = format!("{:?}", key.verifier());
        assert!(!verifier.contains(seed.as_str()), "{verifier}");
    }

    #[test]
    fn a_licence_is_issued_only_for_a_real_org_seats_and_a_future_expiry() {
        let key = LicenceKey::generate();
        let plan = TierTable::default().team;
        for (change, field) in [
            (
                (|r: &mut LicenceRequest| r.org_id = "  ".into()) as fn(&mut LicenceRequest),
                "org_id",
            ),
            (|r| r.org_id = "a\nb".into(), "org_id"),
            (|r| r.seats = 0, "seats"),
            (|r| r.seats = MAX_SEATS + 1, "seats"),
            (|r| r.expires_at = now(), "expires_at"),
            (
                |r| r.expires_at = now() - chrono::Duration::days(1),
                "expires_at",
            ),
        ] {
            let mut req = request(Tier::Team);
            change(&mut req);
            let err = key.issue(&req, &plan, now()).unwrap_err();
            assert_eq!(err.field, field);
        }
    }
}
