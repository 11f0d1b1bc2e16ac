//! What the auth module promises, one test per promise.

use super::jwks::REFRESH_COOLDOWN;
use super::*;
use crate::clock::ManualClock;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "https://auth.example.test/";
const AUDIENCE: &str = "hookline-api";
const HS_SECRET: &str = "an-hs256-secret-that-is-long-enough-for-tests";

// TEST ONLY: an RSA key pair generated for these tests (`openssl genpkey -algorithm RSA`),
// never used anywhere else.
const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC4UV3W4fxmCeRP
toL035oTro4STPSznf5dNXDAHtmxUQIzLek5aXAfptHzld8EO07yLmO+SBfTtj0E
fh83TGcFkf8MIWJsKhhX7c4uWBjysiII5DVACjI37bGuwinkTI+hgxc/zoaShK/d
XWl7jTuzqrrGlgxS1FQcchmbhycg9HLYCjmL64mAbF1MWJDr8ZecYZLxtGMmOnnl
Zh5++D6srifil0rDcl/xgOVD0VF4IPEeW7qIwxcCnDu381Di4oULuxBbVFkCSkI7
J0PpyNat68R6MOsDqkbFpnCuChd8mw3BFYNmuKBtfjhnoTSj+rnsY2YCXdA8/Y33
+kymW+3HAgMBAAECggEAKEIpb3ZzxSvS8PBJ4Ud3pWXihS/G4PaY6O3zvxrd7KNn
ihs0jkQv59HtmLk6+Xck0rP8OEMR5T2wTStpERCAjhBp91HRaBO3tnjsKGY4qMXs
til2UhMIDfw+a4/gS4vHcX0rFlY7QYR2zzCIiiJ6kE8xtY9viKX06zOm0TgvfTxX
xgo6DKqmUZW1UdaUZ2tN/yU9832E6U0MAYLJYZxL+RA5BErObY+LIYXDXlr2FTjL
R1WbI70cTduKnKCXo9R+HZFZhz33E3tvlTn753qiDO4LpdJNCobxuyKEn/QGD0GC
UQz7dIUC5JDoUcEcBgZOCDq16DyWCtmFtgP5+5SuqQKBgQD1ECX7stWt5XqeVV8C
EA+ZtiKLuLTEcQ6/R35n94bTAoiBmv7VeOm1zjDdGAJV2KkXPevEgP+/tMF6D5DH
dL6YHvDGWoaR8IsllRqqAXXnEHnRnYqjjVYkHV6BbuDly7lDUaszfFYooA6pclMs
T2eQczx8wqHZUWBiQc9uZ+IgvwKBgQDAizPL+5Iv+kPu9J2vDNGKQO532gkCw0Od
0EwCGX+J2KjmBJHRvFkQIQZ+uMgrk1PAliP2r5Tp2tYpLRJCh9id+aGp94NiMh3F
Q8H8qdY0KcLPRCmvHJ951NEJjfbFIVpfQWvb6UR6Zzk6n511jeVh7GIKwWk134Fe
eXvbD0bs+QKBgFv27WohWJLjtTpJ61eI03HpqdkpPZ0imFgr6kH14AC7yKJqmgte
TsZNVIUEB4xTvFDeieW6Sz+UA69cvAY9x3Cq28x0GGAYFv/JjrIRzj8iLbT+HBL4
bUUsSFTmWTujUijzMv4lQOgJ+LaaEqBkRAcvV5myKK63HSaCb+eM0I1dAoGBAKF7
HbHSB0Tdq+PYm/aX1ZUR5+30muIKScctTtHj+KbvYpem9XTldfyk9gGJj7ecE/3M
7dSSZV3L/xkBh/LsY6v6FK+rujC8v2MV9Lem6NNOwud5z0vhwY44Aij1OyURV+3T
vFXvSVMvBzw3aaORofOCgKdsloRsMt+9GzcZlO5hAoGBAOgWycf6IfNPAD3DlH7n
4/5+lHU0+fV9M6RwDlWcTaAcbpMc4OH7k/j0SR6OuX90lWgaLk9M9ECDPIkl4CkD
Nw1zgSa+bX357YgVC0c4XNku+Yr/1YOBT4mp58asLXtSmzBMLERSCJm8PMVPk+Sq
rECJfJhca7xmL1RsbqjvOadx
-----END PRIVATE KEY-----
";

const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuFFd1uH8ZgnkT7aC9N+a
E66OEkz0s53+XTVwwB7ZsVECMy3pOWlwH6bR85XfBDtO8i5jvkgX07Y9BH4fN0xn
BZH/DCFibCoYV+3OLlgY8rIiCOQ1QAoyN+2xrsIp5EyPoYMXP86GkoSv3V1pe407
s6q6xpYMUtRUHHIZm4cnIPRy2Ao5i+uJgGxdTFiQ6/GXnGGS8bRjJjp55WYefvg+
rK4n4pdKw3Jf8YDlQ9FReCDxHlu6iMMXApw7t/NQ4uKFC7sQW1RZAkpCOydD6cjW
revEejDrA6pGxaZwrgoXfJsNwRWDZrigbX44Z6E0o/q57GNmAl3QPP2N9/pMplvt
xwIDAQAB
-----END PUBLIC KEY-----
";

/// The modulus of the test RSA key, base64url, as a JWKS carries it.
const RSA_N: &str = "uFFd1uH8ZgnkT7aC9N-aE66OEkz0s53-XTVwwB7ZsVECMy3pOWlwH6bR85XfBDtO8i5jvkgX07Y9BH4fN0xnBZH_DCFibCoYV-3OLlgY8rIiCOQ1QAoyN-2xrsIp5EyPoYMXP86GkoSv3V1pe407s6q6xpYMUtRUHHIZm4cnIPRy2Ao5i-uJgGxdTFiQ6_GXnGGS8bRjJjp55WYefvg-rK4n4pdKw3Jf8YDlQ9FReCDxHlu6iMMXApw7t_NQ4uKFC7sQW1RZAkpCOydD6cjWrevEejDrA6pGxaZwrgoXfJsNwRWDZrigbX44Z6E0o_q57GNmAl3QPP2N9_pMplvtxw";

// --- helpers ---------------------------------------------------------------------------------

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_unix(NOW))
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "org_id": "org-1",
        "scope": "repos:read repos:write",
        "iat": NOW,
        "exp": NOW + 3600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
}

fn rs256(kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
    sign(Algorithm::RS256, kid, claims, &key)
}

fn hs_auth(clock: Arc<ManualClock>) -> Authenticator {
    let config = AuthConfig::new(ISSUER, AUDIENCE, KeySource::Hs256(Secret::new(HS_SECRET)));
    Authenticator::with_clock(config, clock).unwrap()
}

fn rs_auth(clock: Arc<ManualClock>) -> Authenticator {
    let config = AuthConfig::new(
        ISSUER,
        AUDIENCE,
        KeySource::PublicKey {
            algorithm: PublicKeyAlgorithm::Rs256,
            pem: RSA_PUBLIC_PEM.into(),
        },
    );
    Authenticator::with_clock(config, clock).unwrap()
}

/// A fresh Ed25519 key: (PKCS#8 document, raw public key).
fn ed_key() -> (Vec<u8>, Vec<u8>) {
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    (doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
}

use ring::signature::{Ed25519KeyPair, KeyPair};

fn eddsa(kid: Option<&str>, claims: &Value, pkcs8: &[u8]) -> String {
    sign(
        Algorithm::EdDSA,
        kid,
        claims,
        &EncodingKey::from_ed_der(pkcs8),
    )
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn authorization(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    headers
}

/// A token made of `header` and `claims` JSON with the given signature part.
fn forged(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

fn body(res: &Response) -> Value {
    serde_json::from_slice(res.body()).unwrap()
}

fn invalid_because(result: Result<Principal, AuthError>, words: &str) {
    match result {
        Err(AuthError::InvalidToken(reason)) => {
            assert!(reason.contains(words), "reason {reason:?} lacks {words:?}")
        }
        other => panic!("expected an invalid token ({words}), got {other:?}"),
    }
}

// --- the happy path ----------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_token_becomes_the_principal_it_names() {
    let auth = hs_auth(clock());
    let principal = auth.authenticate(&bearer(&hs256(&claims()))).await.unwrap();
    assert_eq!(principal.user_id, UserId::new("user-1"));
    assert_eq!(principal.org_id, OrgId::new("org-1"));
    assert_eq!(
        principal.scopes,
        BTreeSet::from([Scope::ReposRead, Scope::ReposWrite])
    );
    assert!(principal.has(Scope::ReposWrite));
    assert!(!principal.has(Scope::WebhooksManage));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let auth = hs_auth(clock());
    let token = hs256(&claims());
    assert!(auth
        .authenticate(&authorization(&format!("bearer {token}")))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_cognito_token_with_custom_org_id_and_a_scopes_array_is_accepted() {
    let auth = hs_auth(clock());
    let c = with(
        without(without(claims(), "org_id"), "scope"),
        "custom:org_id",
        json!("org-cognito"),
    );
    let c = with(c, "scopes", json!(["webhooks:manage", "openid"]));
    let principal = auth.verify(&hs256(&c)).await.unwrap();
    assert_eq!(principal.org_id.as_str(), "org-cognito");
    assert_eq!(principal.scopes, BTreeSet::from([Scope::WebhooksManage]));
}

#[tokio::test]
async fn an_audience_list_that_includes_ours_is_accepted() {
    let auth = hs_auth(clock());
    let c = with(claims(), "aud", json!(["other", AUDIENCE]));
    assert!(auth.verify(&hs256(&c)).await.is_ok());
}

#[tokio::test]
async fn the_org_claim_name_is_configurable() {
    let mut config = AuthConfig::new(ISSUER, AUDIENCE, KeySource::Hs256(Secret::new(HS_SECRET)));
    config.org_claims = vec!["https://hookline.dev/org".into()];
    let auth = Authenticator::with_clock(config, clock()).unwrap();
    let c = with(claims(), "https://hookline.dev/org", json!("org-auth0"));
    assert_eq!(
        auth.verify(&hs256(&c)).await.unwrap().org_id.as_str(),
        "org-auth0"
    );
    // The default claim alone no longer counts.
    invalid_because(
        auth.verify(&hs256(&claims())).await,
        "https://hookline.dev/org",
    );
}

// --- the header --------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_without_a_token_is_401_missing_token() {
    let auth = hs_auth(clock());
    let err = auth.authenticate(&HeaderMap::new()).await.unwrap_err();
    assert_eq!(err, AuthError::MissingToken);
    let res = err.into_response();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body(&res)["error"], "unauthorized");
    assert!(res.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
}

#[tokio::test]
async fn basic_auth_and_a_bearer_without_token_are_malformed_headers() {
    let auth = hs_auth(clock());
    for value in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Token abc",
        "Bearer a b",
    ] {
        assert_eq!(
            auth.authenticate(&authorization(value)).await.unwrap_err(),
            AuthError::MalformedHeader,
            "{value:?}"
        );
    }
}

#[tokio::test]
async fn two_authorization_headers_are_malformed() {
    let auth = hs_auth(clock());
    let token = hs256(&claims());
    let mut headers = bearer(&token);
    headers.append(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    assert_eq!(
        auth.authenticate(&headers).await.unwrap_err(),
        AuthError::MalformedHeader
    );
}

#[tokio::test]
async fn garbage_in_place_of_a_jwt_is_an_invalid_token() {
    let auth = hs_auth(clock());
    for token in ["abc", "a.b", "a.b.c", "a.b.c.d", "!!!.e30.sig"] {
        invalid_because(auth.verify(token).await, "well-formed");
    }
    invalid_because(auth.verify(&"a".repeat(9000)).await, "too long");
}

// --- time --------------------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_token_is_refused_once_the_leeway_has_passed() {
    let clock = clock();
    let auth = hs_auth(clock.clone());
    let token = hs256(&with(claims(), "exp", json!(NOW - 10)));
    // Ten seconds late is within the 30 s leeway.
    assert!(auth.verify(&token).await.is_ok());
    clock.advance(chrono::Duration::seconds(21));
    assert_eq!(auth.verify(&token).await.unwrap_err(), AuthError::Expired);
    let res = AuthError::Expired.into_response();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(body(&res)["message"].as_str().unwrap().contains("expired"));
    assert!(res.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains(r#"error="invalid_token""#));
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let auth = hs_auth(clock());
    invalid_because(auth.verify(&hs256(&without(claims(), "exp"))).await, "exp");
    invalid_because(
        auth.verify(&hs256(&with(claims(), "exp", json!("tomorrow"))))
            .await,
        "exp",
    );
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let auth = hs_auth(clock());
    let token = hs256(&with(claims(), "nbf", json!(NOW + 120)));
    invalid_because(auth.verify(&token).await, "nbf");
    let soon = hs256(&with(claims(), "nbf", json!(NOW + 5)));
    assert!(auth.verify(&soon).await.is_ok());
}

// --- issuer, audience, subject, org ----------------------------------------------------------

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let auth = hs_auth(clock());
    let c = with(claims(), "iss", json!("https://evil.example/"));
    invalid_because(auth.verify(&hs256(&c)).await, "issuer");
    invalid_because(auth.verify(&hs256(&without(claims(), "iss"))).await, "iss");
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let auth = hs_auth(clock());
    let c = with(claims(), "aud", json!("another-api"));
    invalid_because(auth.verify(&hs256(&c)).await, "audience");
    invalid_because(auth.verify(&hs256(&without(claims(), "aud"))).await, "aud");
}

#[tokio::test]
async fn a_token_without_sub_or_org_is_refused() {
    let auth = hs_auth(clock());
    invalid_because(auth.verify(&hs256(&without(claims(), "sub"))).await, "sub");
    invalid_because(
        auth.verify(&hs256(&with(claims(), "sub", json!("")))).await,
        "sub",
    );
    invalid_because(
        auth.verify(&hs256(&without(claims(), "org_id"))).await,
        "org_id",
    );
    invalid_because(
        auth.verify(&hs256(&with(claims(), "org_id", json!(""))))
            .await,
        "org_id",
    );
    invalid_because(
        auth.verify(&hs256(&with(claims(), "org_id", json!(42))))
            .await,
        "org_id",
    );
}

// --- signatures and algorithms ----------------------------------------------------------------

#[tokio::test]
async fn a_tampered_signature_or_payload_is_refused() {
    let auth = hs_auth(clock());
    let token = hs256(&claims());
    let (rest, sig) = token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let bad_sig = format!("{rest}.{flipped}{}", &sig[1..]);
    invalid_because(auth.verify(&bad_sig).await, "signature");

    // Someone else's org, with the original signature.
    let (header, _) = rest.split_once('.').unwrap();
    let other = URL_SAFE_NO_PAD.encode(with(claims(), "org_id", json!("org-2")).to_string());
    invalid_because(
        auth.verify(&format!("{header}.{other}.{sig}")).await,
        "signature",
    );

    // Signed with another secret.
    let other_key = EncodingKey::from_secret(b"another-secret-another-secret-another-secret");
    let token = sign(Algorithm::HS256, None, &claims(), &other_key);
    invalid_because(auth.verify(&token).await, "signature");
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // Algorithm confusion: a verifier that trusted the token's `alg` would use the public
    // key's PEM as an HMAC secret.
    let auth = rs_auth(clock());
    let key = EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes());
    let token = sign(Algorithm::HS256, None, &claims(), &key);
    invalid_because(auth.verify(&token).await, "algorithm");
    // The same attack through jsonwebtoken alone is refused too (defence in depth).
    let key = DecodingKey::from_rsa_pem(RSA_PUBLIC_PEM.as_bytes()).unwrap();
    let err = jsonwebtoken::decode::<Value>(&token, &key, &auth.0.validation).unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::InvalidAlgorithm);
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_ed25519_public_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::open(dir.path()).unwrap().with_clock(clock());
    let pem = issuer.public_key_pem();
    let config = AuthConfig::new(
        ISSUER,
        AUDIENCE,
        KeySource::PublicKey {
            algorithm: PublicKeyAlgorithm::EdDsa,
            pem: pem.clone(),
        },
    );
    let auth = Authenticator::with_clock(config, clock()).unwrap();
    for secret in [pem.as_bytes(), issuer.public_key()] {
        let token = sign(
            Algorithm::HS256,
            None,
            &claims(),
            &EncodingKey::from_secret(secret),
        );
        invalid_because(auth.verify(&token).await, "algorithm");
    }
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    for auth in [hs_auth(clock()), rs_auth(clock())] {
        for alg in ["none", "None", "NONE"] {
            let token = forged(&json!({"alg": alg, "typ": "JWT"}), &claims(), "");
            invalid_because(auth.verify(&token).await, "algorithm");
        }
        let no_alg = forged(&json!({"typ": "JWT"}), &claims(), "");
        invalid_because(auth.verify(&no_alg).await, "algorithm");
    }
}

#[tokio::test]
async fn an_rs256_token_is_refused_where_hs256_is_configured() {
    let auth = hs_auth(clock());
    invalid_because(auth.verify(&rs256(None, &claims())).await, "algorithm");
}

#[tokio::test]
async fn an_rs256_public_key_config_accepts_its_tokens() {
    let auth = rs_auth(clock());
    assert_eq!(auth.algorithm(), Algorithm::RS256);
    let principal = auth.verify(&rs256(Some("any"), &claims())).await.unwrap();
    assert_eq!(principal.org_id.as_str(), "org-1");
    // The RS384 family shares the key type but not the pinned algorithm.
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
    let rs384 = sign(Algorithm::RS384, None, &claims(), &key);
    invalid_because(auth.verify(&rs384).await, "algorithm");
}

#[tokio::test]
async fn an_eddsa_public_key_config_accepts_its_tokens() {
    let (pkcs8, _) = ed_key();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(LocalIssuer::KEY_FILE),
        URL_SAFE_NO_PAD.encode(&pkcs8),
    )
    .unwrap();
    let pem = LocalIssuer::open(dir.path()).unwrap().public_key_pem();
    let lookup = HashMap::from([
        ("HOOKLINE_JWT_ISSUER", ISSUER.to_owned()),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE.to_owned()),
        // As an env var would carry it, newlines escaped.
        ("HOOKLINE_JWT_PUBLIC_KEY", pem.replace('\n', "\\n")),
    ]);
    let config = AuthConfig::from_lookup(|k| lookup.get(k).cloned())
        .unwrap()
        .unwrap();
    assert!(matches!(
        config.keys,
        KeySource::PublicKey {
            algorithm: PublicKeyAlgorithm::EdDsa,
            ..
        }
    ));
    let auth = Authenticator::with_clock(config, clock()).unwrap();
    assert!(auth.verify(&eddsa(None, &claims(), &pkcs8)).await.is_ok());
    let (other, _) = ed_key();
    invalid_because(
        auth.verify(&eddsa(None, &claims(), &other)).await,
        "signature",
    );
}

// --- scopes ------------------------------------------------------------------------------------

#[test]
fn scopes_parse_from_space_or_comma_separated_lists() {
    assert_eq!(
        Scope::parse_list("repos:read repos:write").unwrap(),
        BTreeSet::from([Scope::ReposRead, Scope::ReposWrite])
    );
    assert_eq!(
        Scope::parse_list(" repos:read,webhooks:manage ,, admin ").unwrap(),
        BTreeSet::from([Scope::ReposRead, Scope::WebhooksManage, Scope::Admin])
    );
    assert_eq!(Scope::parse_list("").unwrap(), BTreeSet::new());
    assert_eq!(
        Scope::parse_list("repos:read repos:delete").unwrap_err(),
        UnknownScope("repos:delete".into())
    );
    assert_eq!(
        Scope::parse_lenient("openid email repos:read"),
        BTreeSet::from([Scope::ReposRead])
    );
    for scope in Scope::ALL {
        assert_eq!(scope.to_string().parse::<Scope>().unwrap(), scope);
        assert_eq!(serde_json::to_value(scope).unwrap(), json!(scope.as_str()));
    }
}

#[test]
fn admin_implies_every_scope_but_licenses_issue() {
    let admin = Principal {
        user_id: "u".into(),
        org_id: "o".into(),
        scopes: BTreeSet::from([Scope::Admin]),
    };
    for scope in Scope::ALL {
        if scope == Scope::LicensesIssue {
            continue;
        }
        assert!(admin.has(scope), "{scope}");
        assert!(admin.require(scope).is_ok());
    }
    let reader = Principal {
        scopes: BTreeSet::from([Scope::ReposRead]),
        ..admin
    };
    assert!(reader.require(Scope::ReposRead).is_ok());
    assert_eq!(
        reader.require(Scope::ReposWrite),
        Err(AuthError::Forbidden {
            needed: Scope::ReposWrite
        })
    );
    assert!(!reader.has(Scope::Admin));
}

#[test]
fn only_a_token_that_names_licenses_issue_may_mint_licences() {
    let admin = Principal {
        user_id: "u".into(),
        org_id: "o".into(),
        scopes: BTreeSet::from([Scope::Admin]),
    };
    assert!(!admin.has(Scope::LicensesIssue));
    assert_eq!(
        admin.require(Scope::LicensesIssue),
        Err(AuthError::Forbidden {
            needed: Scope::LicensesIssue
        })
    );
    let operator = Principal {
        scopes: BTreeSet::from([Scope::LicensesIssue]),
        ..admin
    };
    assert!(operator.require(Scope::LicensesIssue).is_ok());
    // The operator's scope gives nothing else.
    assert!(!operator.has(Scope::Admin));
    assert!(!operator.has(Scope::ReposRead));
    assert_eq!(
        Scope::parse_list("licenses:issue").unwrap(),
        BTreeSet::from([Scope::LicensesIssue])
    );
    let unknown = Scope::parse_list("licenses:revoke")
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("licenses:issue"), "{unknown}");
}

#[test]
fn ids_serialise_and_display_as_their_plain_string() {
    let org = OrgId::new("org-1");
    assert_eq!(org.to_string(), "org-1");
    assert_eq!(serde_json::to_value(&org).unwrap(), json!("org-1"));
    let user: UserId = serde_json::from_value(json!("user-1")).unwrap();
    assert_eq!(user.as_str(), "user-1");
}

// --- HTTP --------------------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_scope_is_403_naming_the_scope_and_a_bad_token_is_401() {
    let auth = hs_auth(clock());
    let principal = auth
        .verify(&hs256(&with(claims(), "scope", json!("repos:read"))))
        .await
        .unwrap();
    let res = principal
        .require(Scope::ReposWrite)
        .unwrap_err()
        .into_response();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        body(&res),
        json!({"error": "forbidden", "message": "this needs the repos:write scope"})
    );
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        HeaderValue::from_static("application/json")
    );
    assert!(res.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains(r#"error="insufficient_scope", scope="repos:write""#));

    let res = AuthError::invalid("its signature does not verify").into_response();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        body(&res),
        json!({"error": "unauthorized", "message": "the bearer token is invalid: its signature does not verify"})
    );
}

#[tokio::test]
async fn no_error_ever_contains_the_token() {
    let clock = clock();
    let auth = hs_auth(clock.clone());
    let good = hs256(&claims());
    let (head, sig) = good.rsplit_once('.').unwrap();
    let tokens = [
        hs256(&with(claims(), "exp", json!(NOW - 3600))),
        hs256(&with(claims(), "aud", json!("x"))),
        hs256(&with(claims(), "iss", json!("x"))),
        hs256(&without(claims(), "org_id")),
        format!("{head}.x{sig}"),
        rs256(None, &claims()),
        forged(&json!({"alg": "none"}), &claims(), ""),
        "not-a-jwt".to_owned(),
    ];
    for token in tokens {
        let err = auth.authenticate(&bearer(&token)).await.unwrap_err();
        let res = err.clone().into_response();
        let text = format!(
            "{err} {err:?} {} {:?}",
            String::from_utf8_lossy(res.body()),
            res.headers()
        );
        let (rest, signature) = token.rsplit_once('.').unwrap_or((&token, ""));
        assert!(!text.contains(&token), "{text}");
        assert!(!text.contains(rest), "{text}");
        if signature.len() > 4 {
            assert!(!text.contains(signature), "{text}");
        }
    }
}

// --- configuration ---------------------------------------------------------------------------

fn config_from(vars: &[(&str, &str)]) -> Result<Option<AuthConfig>, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AuthConfig::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn no_jwt_settings_means_no_config() {
    assert!(config_from(&[]).unwrap().is_none());
}

#[test]
fn the_hs256_secret_config_needs_issuer_audience_and_a_long_secret() {
    let config = config_from(&[
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE),
        ("HOOKLINE_JWT_HS256_SECRET", HS_SECRET),
    ])
    .unwrap()
    .unwrap();
    assert!(matches!(config.keys, KeySource::Hs256(_)));
    assert!(!format!("{config:?}").contains(HS_SECRET));

    let err = config_from(&[("HOOKLINE_JWT_HS256_SECRET", HS_SECRET)]).unwrap_err();
    assert_eq!(err.name, "HOOKLINE_JWT_ISSUER");
    let err = config_from(&[
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_HS256_SECRET", HS_SECRET),
    ])
    .unwrap_err();
    assert_eq!(err.name, "HOOKLINE_JWT_AUDIENCE");
    let err = config_from(&[
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE),
        ("HOOKLINE_JWT_HS256_SECRET", "short"),
    ])
    .unwrap_err();
    assert_eq!(err.name, "HOOKLINE_JWT_HS256_SECRET");
    assert!(!err.to_string().contains("short"));
    let err = config_from(&[
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE),
        ("HOOKLINE_JWT_HS256_SECRET", HS_SECRET),
        ("HOOKLINE_JWT_ALGORITHM", "RS256"),
    ])
    .unwrap_err();
    assert_eq!(err.name, "HOOKLINE_JWT_ALGORITHM");
}

#[test]
fn exactly_one_key_source_is_configured() {
    let base = [
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE),
    ];
    let none = config_from(&base).unwrap_err();
    assert!(none.expected.contains("exactly one"));
    let two = config_from(&[
        base[0],
        base[1],
        ("HOOKLINE_JWT_HS256_SECRET", HS_SECRET),
        ("HOOKLINE_JWT_JWKS_URL", "https://example.test/jwks.json"),
    ])
    .unwrap_err();
    assert!(two.expected.contains("exactly one"));
}

#[test]
fn a_public_key_config_infers_or_checks_its_algorithm() {
    let base = [
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE),
        ("HOOKLINE_JWT_PUBLIC_KEY", RSA_PUBLIC_PEM),
    ];
    let config = config_from(&base).unwrap().unwrap();
    assert!(matches!(
        config.keys,
        KeySource::PublicKey {
            algorithm: PublicKeyAlgorithm::Rs256,
            ..
        }
    ));
    // An RSA key configured as EdDSA fails at start-up, not on the first request.
    let config = config_from(&[
        base[0],
        base[1],
        base[2],
        ("HOOKLINE_JWT_ALGORITHM", "EdDSA"),
    ])
    .unwrap()
    .unwrap();
    let err = Authenticator::new(config).unwrap_err();
    assert_eq!(err.name, "HOOKLINE_JWT_PUBLIC_KEY");
    let err = config_from(&[
        base[0],
        base[1],
        base[2],
        ("HOOKLINE_JWT_ALGORITHM", "HS256"),
    ])
    .unwrap_err();
    assert_eq!(err.name, "HOOKLINE_JWT_ALGORITHM");
}

#[test]
fn a_jwks_config_defaults_to_rs256_and_a_ten_minute_cache() {
    let config = config_from(&[
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE),
        (
            "HOOKLINE_JWT_JWKS_URL",
            "https://cognito-idp.eu-west-1.amazonaws.com/pool/.well-known/jwks.json",
        ),
        ("HOOKLINE_JWT_ORG_CLAIM", "custom:tenant"),
    ])
    .unwrap()
    .unwrap();
    match config.keys {
        KeySource::Jwks { algorithm, ttl, .. } => {
            assert_eq!(algorithm, PublicKeyAlgorithm::Rs256);
            assert_eq!(ttl, DEFAULT_JWKS_TTL);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.org_claims, vec!["custom:tenant".to_owned()]);
    let err = config_from(&[
        ("HOOKLINE_JWT_ISSUER", ISSUER),
        ("HOOKLINE_JWT_AUDIENCE", AUDIENCE),
        ("HOOKLINE_JWT_JWKS_URL", "not a url"),
    ])
    .unwrap_err();
    assert_eq!(err.name, "HOOKLINE_JWT_JWKS_URL");
}

// --- JWKS --------------------------------------------------------------------------------------

/// A tiny JWKS endpoint: answers every request with the current document (or a 500) and
/// counts the requests.
struct JwksServer {
    url: String,
    document: Arc<Mutex<Value>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let document = Arc::new(Mutex::new(document));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (doc, fail, count) = (document.clone(), failing.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (doc, fail, count) = (doc.clone(), fail.clone(), count.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if fail.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", "{}".to_owned())
                    } else {
                        ("200 OK", doc.lock().unwrap().to_string())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url,
            document,
            failing,
            hits,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set(&self, document: Value) {
        *self.document.lock().unwrap() = document;
    }
}

fn ed_jwk(kid: &str, public: &[u8]) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(public), "kid": kid, "use": "sig", "alg": "EdDSA"})
}

fn rsa_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": kid, "use": "sig", "alg": "RS256"})
}

fn jwks_auth(url: &str, algorithm: PublicKeyAlgorithm, clock: Arc<ManualClock>) -> Authenticator {
    let config = AuthConfig::new(
        ISSUER,
        AUDIENCE,
        KeySource::Jwks {
            url: url.to_owned(),
            algorithm,
            ttl: Duration::from_secs(600),
        },
    );
    Authenticator::with_clock(config, clock).unwrap()
}

fn jwks_fetches(auth: &Authenticator) -> u64 {
    match &auth.0.keys {
        Keys::Jwks(jwks) => jwks.fetches(),
        Keys::Static(_) => 0,
    }
}

#[tokio::test]
async fn a_cognito_style_rs256_jwks_verifies_tokens_by_kid() {
    let server = JwksServer::start(json!({"keys": [rsa_jwk("rsa-1")]})).await;
    let auth = jwks_auth(&server.url, PublicKeyAlgorithm::Rs256, clock());
    let principal = auth.verify(&rs256(Some("rsa-1"), &claims())).await.unwrap();
    assert_eq!(principal.user_id.as_str(), "user-1");
    invalid_because(auth.verify(&rs256(None, &claims())).await, "kid");
}

#[tokio::test]
async fn the_jwks_is_cached_and_fetched_once_more_for_an_unknown_kid() {
    let (key_a, public_a) = ed_key();
    let (key_b, public_b) = ed_key();
    let server = JwksServer::start(json!({"keys": [ed_jwk("a", &public_a)]})).await;
    let clock = clock();
    let auth = jwks_auth(&server.url, PublicKeyAlgorithm::EdDsa, clock.clone());

    // First use fetches; later uses read the cache.
    for _ in 0..3 {
        auth.verify(&eddsa(Some("a"), &claims(), &key_a))
            .await
            .unwrap();
    }
    assert_eq!(server.hits(), 1);

    // An unknown kid refreshes exactly once, then is refused.
    let bogus = eddsa(Some("bogus"), &claims(), &key_b);
    invalid_because(auth.verify(&bogus).await, "kid");
    assert_eq!(server.hits(), 2);
    // More unknown kids within the cooldown do not reach the issuer.
    invalid_because(auth.verify(&bogus).await, "kid");
    invalid_because(
        auth.verify(&eddsa(Some("other"), &claims(), &key_b)).await,
        "kid",
    );
    assert_eq!(server.hits(), 2);

    // The issuer rotates in key b; after the cooldown a token signed with it triggers the
    // one refresh that finds it.
    server.set(json!({"keys": [ed_jwk("a", &public_a), ed_jwk("b", &public_b)]}));
    clock.advance(chrono::Duration::from_std(REFRESH_COOLDOWN).unwrap());
    let rotated = eddsa(Some("b"), &claims(), &key_b);
    auth.verify(&rotated).await.unwrap();
    assert_eq!(server.hits(), 3);
    auth.verify(&rotated).await.unwrap();
    assert_eq!(server.hits(), 3);
    assert_eq!(jwks_fetches(&auth), 3);

    // A key id found under another kid's key does not verify.
    let mislabelled = eddsa(Some("a"), &claims(), &key_b);
    invalid_because(auth.verify(&mislabelled).await, "signature");
}

#[tokio::test]
async fn the_jwks_is_fetched_again_when_its_ttl_runs_out() {
    let (key, public) = ed_key();
    let server = JwksServer::start(json!({"keys": [ed_jwk("a", &public)]})).await;
    let clock = clock();
    let auth = jwks_auth(&server.url, PublicKeyAlgorithm::EdDsa, clock.clone());
    let token = eddsa(Some("a"), &claims(), &key);
    auth.verify(&token).await.unwrap();
    clock.advance(chrono::Duration::seconds(599));
    auth.verify(&token).await.unwrap();
    assert_eq!(server.hits(), 1);
    clock.advance(chrono::Duration::seconds(2));
    auth.verify(&token).await.unwrap();
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_failing_jwks_endpoint_keeps_the_cached_keys_or_answers_503() {
    let (key, public) = ed_key();
    let server = JwksServer::start(json!({"keys": [ed_jwk("a", &public)]})).await;
    let clock = clock();
    let token = eddsa(Some("a"), &claims(), &key);

    // Never fetched: nothing to fall back on.
    server.failing.store(true, Ordering::SeqCst);
    let cold = jwks_auth(&server.url, PublicKeyAlgorithm::EdDsa, clock.clone());
    let err = cold.verify(&token).await.unwrap_err();
    assert_eq!(err, AuthError::KeysUnavailable);
    assert_eq!(
        err.into_response().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Fetched before: the stale keys keep working while the endpoint is down.
    server.failing.store(false, Ordering::SeqCst);
    let warm = jwks_auth(&server.url, PublicKeyAlgorithm::EdDsa, clock.clone());
    warm.verify(&token).await.unwrap();
    server.failing.store(true, Ordering::SeqCst);
    clock.advance(chrono::Duration::seconds(3600));
    let token = eddsa(Some("a"), &claims_at(NOW + 3600), &key);
    warm.verify(&token).await.unwrap();
}

fn claims_at(now: i64) -> Value {
    with(with(claims(), "iat", json!(now)), "exp", json!(now + 3600))
}

#[test]
fn jwks_keys_that_do_not_fit_the_pinned_algorithm_are_skipped() {
    let (_, public) = ed_key();
    let document = json!({"keys": [
        rsa_jwk("rsa"),
        ed_jwk("ed", &public),
        {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "enc", "use": "enc"},
        {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "rs512", "alg": "RS512"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "weird"},
        {"kid": "not-a-key"},
    ]});
    let bytes = document.to_string().into_bytes();
    let rs: Vec<_> = jwks::parse_jwks(&bytes, Algorithm::RS256)
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(rs, vec!["rsa".to_owned()]);
    let ed: Vec<_> = jwks::parse_jwks(&bytes, Algorithm::EdDSA)
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(ed, vec!["ed".to_owned()]);
}

// --- local dev tokens -------------------------------------------------------------------------

#[tokio::test]
async fn a_local_dev_token_is_accepted_by_the_local_authenticator() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::open(dir.path()).unwrap().with_clock(clock());
    let scopes = BTreeSet::from([Scope::ReposRead, Scope::WebhooksManage]);
    let token = issuer.issue(
        &OrgId::new("org-9"),
        &UserId::new("dev"),
        &scopes,
        Duration::from_secs(3600),
    );
    let principal = issuer
        .authenticator()
        .authenticate(&bearer(&token))
        .await
        .unwrap();
    assert_eq!(
        principal,
        Principal {
            user_id: UserId::new("dev"),
            org_id: OrgId::new("org-9"),
            scopes,
        }
    );
    assert_eq!(issuer.authenticator().algorithm(), Algorithm::EdDSA);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
}

#[tokio::test]
async fn a_local_dev_token_expires_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let issuer = LocalIssuer::open(dir.path())
        .unwrap()
        .with_clock(clock.clone());
    let token = issuer.issue(
        &"o".into(),
        &"u".into(),
        &BTreeSet::new(),
        Duration::from_secs(60),
    );
    assert!(issuer.verify(&token).await.is_ok());
    clock.advance(chrono::Duration::seconds(60 + 31));
    assert_eq!(issuer.verify(&token).await.unwrap_err(), AuthError::Expired);
}

#[tokio::test]
async fn the_dev_key_is_created_once_owner_only_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested/.hookline");
    let first = LocalIssuer::open(&data_dir).unwrap();
    let path = data_dir.join("jwt-dev.key");
    assert_eq!(first.key_path(), path);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));

    let again = LocalIssuer::open(&data_dir).unwrap();
    assert_eq!(first.public_key(), again.public_key());
    let token = first.issue(
        &"o".into(),
        &"u".into(),
        &BTreeSet::new(),
        Duration::from_secs(60),
    );
    assert!(again.verify(&token).await.is_ok());

    // Another data dir has another key and refuses this one's tokens.
    let other = LocalIssuer::open(&dir.path().join("other")).unwrap();
    invalid_because(other.verify(&token).await, "signature");
}

#[cfg(unix)]
#[test]
fn a_dev_key_readable_by_others_is_made_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = LocalIssuer::open(dir.path()).unwrap().key_path().to_owned();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    LocalIssuer::open(dir.path()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_local_issuer_never_prints_its_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::open(dir.path()).unwrap();
    let text = std::fs::read_to_string(issuer.key_path()).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!format!("{issuer:?}").contains(&body[body.len() - 20..]));
}

#[tokio::test]
async fn a_dev_token_is_refused_by_a_server_configured_for_another_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::open(dir.path()).unwrap().with_clock(clock());
    let token = issuer.issue(
        &"o".into(),
        &"u".into(),
        &BTreeSet::from([Scope::Admin]),
        Duration::from_secs(60),
    );
    // Same key, but the production issuer and audience.
    let config = AuthConfig::new(
        ISSUER,
        AUDIENCE,
        KeySource::PublicKey {
            algorithm: PublicKeyAlgorithm::EdDsa,
            pem: issuer.public_key_pem(),
        },
    );
    let auth = Authenticator::with_clock(config, clock()).unwrap();
    let err = auth.verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::InvalidToken(_)), "{err:?}");
}

#[tokio::test]
async fn an_ephemeral_issuer_needs_no_data_dir() {
    let issuer = LocalIssuer::ephemeral().with_clock(clock());
    let token = issuer.issue(
        &"o".into(),
        &"u".into(),
        &BTreeSet::from([Scope::ReposRead]),
        Duration::from_secs(60),
    );
    assert!(issuer.authenticator().verify(&token).await.is_ok());
    invalid_because(LocalIssuer::ephemeral().verify(&token).await, "signature");
}

#[test]
fn the_authenticator_is_shareable_across_tasks() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let auth = hs_auth(clock());
    send_sync(&auth);
    let headers = HeaderMap::new();
    send(auth.authenticate(&headers));
}

#[tokio::test]
async fn absurd_timestamps_do_not_overflow() {
    let auth = hs_auth(clock());
    let far = hs256(&with(claims(), "exp", json!(i64::MAX)));
    assert!(auth.verify(&far).await.is_ok());
    let nbf = hs256(&with(claims(), "nbf", json!(i64::MAX)));
    invalid_because(auth.verify(&nbf).await, "nbf");
    let negative = hs256(&with(claims(), "exp", json!(-1)));
    // jsonwebtoken reads a negative NumericDate as no `exp` at all.
    assert!(auth.verify(&negative).await.is_err());
}
