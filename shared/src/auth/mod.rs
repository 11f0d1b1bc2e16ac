//! API authentication and tenancy: a bearer JWT on every `/api/v1` route that is not a
//! provider webhook becomes a [`Principal`] — who is calling, for which org, with which scopes.
//!
//! - Keys come from configuration ([`AuthConfig::from_env`]): an HS256 secret, an EdDSA or
//!   RS256 public key, or a JWKS URL as Cognito and Auth0 publish (see [`jwks`]).
//! - The algorithm is pinned by the configuration, never taken from the token: a token whose
//!   header names another algorithm (`none`, or HS256 signed with the public key as the HMAC
//!   secret) is refused before any key is looked at.
//! - `exp` is required and checked against an injectable [`Clock`] with [`LEEWAY`]; `iss`,
//!   `aud` and `sub` are required and checked, and so is the org claim.
//! - [`AuthError`] maps once to HTTP: 401 (with `WWW-Authenticate: Bearer`) for a missing,
//!   malformed, invalid or expired token; 403 for a missing scope. No message ever contains
//!   the token.
//! - [`LocalIssuer`] signs dev tokens with an Ed25519 key kept in the data dir, for
//!   `hookline token` and the local server.

pub mod jwks;
mod local;

#[cfg(test)]
mod tests;

pub use local::LocalIssuer;

use crate::clock::{Clock, SystemClock};
use crate::config::{var, ConfigError};
use crate::http::{problem, Response};
use crate::secret::Secret;
use base64::Engine;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How far past `exp` (and before `nbf`) a token is still accepted, for clock skew between
/// the issuer and this server.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The longest bearer token looked at; anything longer is refused unparsed.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The longest id accepted from a claim.
const MAX_ID_BYTES: usize = 256;

// ---------------------------------------------------------------------------------------------
// Typed ids

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// The organisation (tenant) a principal acts for; every record is scoped to one.
    OrgId
);
id_type!(
    /// The user a principal is (the token's `sub`).
    UserId
);

// ---------------------------------------------------------------------------------------------
// Scopes

/// What a principal may do. `admin` implies every other scope but `licenses:issue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    ReposRead,
    ReposWrite,
    WebhooksManage,
    /// Publish events (`POST /api/v1/events`) without managing endpoints.
    EventsWrite,
    /// Start a Checkout or open the Customer Portal for the org (`/api/v1/billing/…`).
    BillingManage,
    Admin,
    /// Mint offline licences (`POST /api/v1/licenses`): the operator's own staff only, granted
    /// by the deployment's identity provider. No org's `admin` implies it.
    LicensesIssue,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::ReposRead,
        Scope::ReposWrite,
        Scope::WebhooksManage,
        Scope::EventsWrite,
        Scope::BillingManage,
        Scope::Admin,
        Scope::LicensesIssue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReposRead => "repos:read",
            Scope::ReposWrite => "repos:write",
            Scope::WebhooksManage => "webhooks:manage",
            Scope::EventsWrite => "events:write",
            Scope::BillingManage => "billing:manage",
            Scope::Admin => "admin",
            Scope::LicensesIssue => "licenses:issue",
        }
    }

    /// Every known scope in a space- or comma-separated list; an unknown one is an error
    /// (for input a person typed, such as `hookline token --scopes`).
    pub fn parse_list(list: &str) -> Result<BTreeSet<Scope>, UnknownScope> {
        split_scopes(list).map(str::parse).collect()
    }

    /// The known scopes in a space- or comma-separated list, ignoring the others (a token
    /// from Cognito or Auth0 also carries `openid`, `email`, …).
    pub fn parse_lenient(list: &str) -> BTreeSet<Scope> {
        split_scopes(list).filter_map(|s| s.parse().ok()).collect()
    }

    /// The scopes as a space-separated claim value, as OAuth sends `scope`.
    pub fn join(scopes: &BTreeSet<Scope>) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn split_scopes(list: &str) -> impl Iterator<Item = &str> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?} (known: repos:read, repos:write, webhooks:manage, events:write, billing:manage, admin, \
     licenses:issue)"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Principal

/// A principal this server verified for a request, kept in the request's extensions (which
/// only server code can set) for [`Authenticator::authenticate_request`], with the
/// authenticator that verified it: a route configured with another one verifies for itself.
#[derive(Clone)]
pub(crate) struct VerifiedPrincipal {
    pub(crate) principal: Principal,
    by: Authenticator,
}

/// Who is calling: the verified claims of a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub scopes: BTreeSet<Scope>,
}

impl Principal {
    /// Whether the principal holds `scope` (`admin` holds them all but `licenses:issue`).
    pub fn has(&self, scope: Scope) -> bool {
        // An org's admin is the customer's: were `licenses:issue` implied, any customer could
        // mint itself an enterprise licence. It must be granted by name.
        if scope == Scope::LicensesIssue {
            return self.scopes.contains(&scope);
        }
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// `Ok` when the principal holds `scope`, else the 403 that says which scope is missing.
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(AuthError::Forbidden { needed: scope })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a request was not let in. Messages say what is wrong with the token, never what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("this route needs an `Authorization: Bearer <token>` header")]
    MissingToken,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    MalformedHeader,
    /// A token that does not verify; the reason names the check that failed.
    #[error("the bearer token is invalid: {0}")]
    InvalidToken(String),
    /// A valid token past its `exp` (plus [`LEEWAY`]).
    #[error("the bearer token has expired")]
    Expired,
    /// A valid token without the scope this route needs.
    #[error("this needs the {needed} scope")]
    Forbidden { needed: Scope },
    /// The signing keys could not be fetched (JWKS endpoint down) and none are cached.
    #[error("the signing keys are unavailable; try again shortly")]
    KeysUnavailable,
}

impl AuthError {
    fn invalid(reason: impl Into<String>) -> Self {
        AuthError::InvalidToken(reason.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken
            | AuthError::MalformedHeader
            | AuthError::InvalidToken(_)
            | AuthError::Expired => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON problem response: `401 {"error":"unauthorized"}` with
    /// `WWW-Authenticate: Bearer …` (RFC 6750), `403 {"error":"forbidden"}`, or 503 when the
    /// keys cannot be fetched.
    pub fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let (code, challenge) = match &self {
            AuthError::MissingToken => ("unauthorized", r#"Bearer realm="hookline""#.to_owned()),
            AuthError::MalformedHeader => (
                "unauthorized",
                r#"Bearer realm="hookline", error="invalid_request""#.to_owned(),
            ),
            AuthError::InvalidToken(_) | AuthError::Expired => (
                "unauthorized",
                format!(
                    r#"Bearer realm="hookline", error="invalid_token", error_description="{}""#,
                    message.replace(['"', '\\'], "'")
                ),
            ),
            AuthError::Forbidden { needed } => (
                "forbidden",
                format!(r#"Bearer realm="hookline", error="insufficient_scope", scope="{needed}""#),
            ),
            AuthError::KeysUnavailable => ("auth_unavailable", String::new()),
        };
        let mut res = problem(status, code, message);
        if !challenge.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }
}

impl From<AuthError> for Response {
    fn from(e: AuthError) -> Self {
        e.into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The algorithms a public key may be configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyAlgorithm {
    EdDsa,
    Rs256,
}

impl PublicKeyAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            PublicKeyAlgorithm::EdDsa => Algorithm::EdDSA,
            PublicKeyAlgorithm::Rs256 => Algorithm::RS256,
        }
    }
}

impl FromStr for PublicKeyAlgorithm {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim() {
            "EdDSA" | "eddsa" | "EDDSA" | "Ed25519" => Ok(PublicKeyAlgorithm::EdDsa),
            "RS256" | "rs256" => Ok(PublicKeyAlgorithm::Rs256),
            _ => Err(()),
        }
    }
}

/// Where the verification key comes from: exactly one of these is configured.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `HOOKLINE_JWT_HS256_SECRET`: a shared HMAC secret (at least 32 bytes).
    Hs256(Secret),
    /// `HOOKLINE_JWT_PUBLIC_KEY`: a PEM public key (SPKI `PUBLIC KEY`, or PKCS#1
    /// `RSA PUBLIC KEY`).
    PublicKey {
        algorithm: PublicKeyAlgorithm,
        pem: String,
    },
    /// `HOOKLINE_JWT_JWKS_URL`: a JWKS document (Cognito's
    /// `https://cognito-idp.<region>.amazonaws.com/<pool>/.well-known/jwks.json`, Auth0's
    /// `https://<tenant>/.well-known/jwks.json`), cached for `ttl`.
    Jwks {
        url: String,
        algorithm: PublicKeyAlgorithm,
        ttl: Duration,
    },
}

/// How bearer tokens are verified (names in the README's table).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `HOOKLINE_JWT_ISSUER`: the exact `iss` accepted.
    pub issuer: String,
    /// `HOOKLINE_JWT_AUDIENCE`: the `aud` a token must name.
    pub audience: String,
    pub keys: KeySource,
    /// `HOOKLINE_JWT_ORG_CLAIM`: the claim holding the org id; by default `org_id`, else
    /// `custom:org_id` (a Cognito custom attribute).
    pub org_claims: Vec<String>,
}

/// The org claims looked at when `HOOKLINE_JWT_ORG_CLAIM` is not set, in order.
pub const DEFAULT_ORG_CLAIMS: [&str; 2] = ["org_id", "custom:org_id"];

/// How long a fetched JWKS is used before it is fetched again, by default.
pub const DEFAULT_JWKS_TTL: Duration = Duration::from_secs(600);

impl AuthConfig {
    /// A configuration with the default claim names.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, keys: KeySource) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            keys,
            org_claims: DEFAULT_ORG_CLAIMS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Read the configuration from the environment. `Ok(None)` when no `HOOKLINE_JWT_*`
    /// variable is set at all (the local server then uses [`LocalIssuer`]); an error when the
    /// configuration is incomplete or names more than one key source.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(var)
    }

    /// [`AuthConfig::from_env`] over any lookup (tests use a map, not the process env).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        const NAMES: [&str; 9] = [
            "HOOKLINE_JWT_ISSUER",
            "HOOKLINE_JWT_AUDIENCE",
            "HOOKLINE_JWT_HS256_SECRET",
            "HOOKLINE_JWT_PUBLIC_KEY",
            "HOOKLINE_JWT_JWKS_URL",
            "HOOKLINE_JWT_ALGORITHM",
            "HOOKLINE_JWT_JWKS_TTL_SECS",
            "HOOKLINE_JWT_ORG_CLAIM",
            "HOOKLINE_JWT_PUBLIC_KEY_FILE",
        ];
        let lookup = |name: &str| crate::config::present(lookup(name));
        if NAMES.iter().all(|n| lookup(n).is_none()) {
            return Ok(None);
        }
        let required = |name: &'static str| {
            lookup(name).ok_or(ConfigError {
                name,
                expected: "set when any HOOKLINE_JWT_* variable is",
                value: String::new(),
            })
        };
        let issuer = required("HOOKLINE_JWT_ISSUER")?.trim().to_owned();
        let audience = required("HOOKLINE_JWT_AUDIENCE")?.trim().to_owned();

        let algorithm = lookup("HOOKLINE_JWT_ALGORITHM");
        let public_algorithm = |default: Option<PublicKeyAlgorithm>| match (&algorithm, default) {
            (Some(a), _) => a.parse().map_err(|()| ConfigError {
                name: "HOOKLINE_JWT_ALGORITHM",
                expected: "EdDSA or RS256 with a public key or a JWKS URL",
                value: a.clone(),
            }),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(ConfigError {
                name: "HOOKLINE_JWT_ALGORITHM",
                expected: "EdDSA or RS256 (it cannot be told from this key)",
                value: String::new(),
            }),
        };

        let secret = lookup("HOOKLINE_JWT_HS256_SECRET");
        let public_key = match (
            lookup("HOOKLINE_JWT_PUBLIC_KEY"),
            lookup("HOOKLINE_JWT_PUBLIC_KEY_FILE"),
        ) {
            (Some(pem), None) => Some(pem),
            (None, Some(path)) => {
                Some(
                    std::fs::read_to_string(path.trim()).map_err(|e| ConfigError {
                        name: "HOOKLINE_JWT_PUBLIC_KEY_FILE",
                        expected: "a readable PEM file",
                        value: format!("{path} ({e})"),
                    })?,
                )
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    name: "HOOKLINE_JWT_PUBLIC_KEY_FILE",
                    expected: "unset when HOOKLINE_JWT_PUBLIC_KEY is set",
                    value: String::new(),
                })
            }
            (None, None) => None,
        };
        let jwks_url = lookup("HOOKLINE_JWT_JWKS_URL");

        let sources = [secret.is_some(), public_key.is_some(), jwks_url.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(ConfigError {
                name: "HOOKLINE_JWT_HS256_SECRET",
                expected: "the one key source: set exactly one of HOOKLINE_JWT_HS256_SECRET, \
                           HOOKLINE_JWT_PUBLIC_KEY and HOOKLINE_JWT_JWKS_URL",
                value: String::new(),
            });
        }

        let keys = if let Some(secret) = secret {
            if algorithm.as_deref().is_some_and(|a| a.trim() != "HS256") {
                return Err(ConfigError {
                    name: "HOOKLINE_JWT_ALGORITHM",
                    expected: "HS256 (or unset) with HOOKLINE_JWT_HS256_SECRET",
                    value: algorithm.unwrap_or_default(),
                });
            }
            if secret.len() < 32 {
                return Err(ConfigError {
                    name: "HOOKLINE_JWT_HS256_SECRET",
                    expected: "at least 32 bytes",
                    value: format!("{} bytes", secret.len()),
                });
            }
            KeySource::Hs256(Secret::new(secret))
        } else if let Some(pem) = public_key {
            // Environment variables often carry PEM newlines escaped.
            let pem = pem.replace("\\n", "\n").trim().to_owned();
            let algorithm = public_algorithm(guess_pem_algorithm(&pem))?;
            KeySource::PublicKey { algorithm, pem }
        } else {
            let url = jwks_url.unwrap_or_default().trim().to_owned();
            if url::Url::parse(&url).is_err() {
                return Err(ConfigError {
                    name: "HOOKLINE_JWT_JWKS_URL",
                    expected: "an absolute URL",
                    value: url,
                });
            }
            let ttl = match lookup("HOOKLINE_JWT_JWKS_TTL_SECS") {
                None => DEFAULT_JWKS_TTL,
                Some(v) => Duration::from_secs(v.trim().parse().map_err(|_| ConfigError {
                    name: "HOOKLINE_JWT_JWKS_TTL_SECS",
                    expected: "a whole number of seconds",
                    value: v,
                })?),
            };
            KeySource::Jwks {
                url,
                algorithm: public_algorithm(Some(PublicKeyAlgorithm::Rs256))?,
                ttl,
            }
        };

        let mut config = AuthConfig::new(issuer, audience, keys);
        if let Some(claim) = lookup("HOOKLINE_JWT_ORG_CLAIM") {
            config.org_claims = vec![claim.trim().to_owned()];
        }
        Ok(Some(config))
    }
}

/// The algorithm a PEM public key implies, when its type says so.
fn guess_pem_algorithm(pem: &str) -> Option<PublicKeyAlgorithm> {
    if pem.contains("BEGIN RSA PUBLIC KEY") {
        return Some(PublicKeyAlgorithm::Rs256);
    }
    if DecodingKey::from_ed_pem(pem.as_bytes()).is_ok() {
        return Some(PublicKeyAlgorithm::EdDsa);
    }
    if DecodingKey::from_rsa_pem(pem.as_bytes()).is_ok() {
        return Some(PublicKeyAlgorithm::Rs256);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The authenticator

/// The keys a token is checked against.
enum Keys {
    Static(DecodingKey),
    Jwks(jwks::JwksKeys),
}

struct Inner {
    algorithm: Algorithm,
    keys: Keys,
    validation: Validation,
    org_claims: Vec<String>,
    clock: Arc<dyn Clock>,
}

/// Verifies bearer tokens. Build it once per cold start and share it (cloning is cheap).
#[derive(Clone)]
pub struct Authenticator(Arc<Inner>);

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.0.algorithm)
            .field("issuer", &self.0.validation.iss)
            .field("audience", &self.0.validation.aud)
            .field(
                "keys",
                &match self.0.keys {
                    Keys::Static(_) => "static",
                    Keys::Jwks(_) => "jwks",
                },
            )
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for `config` on the wall clock. Fails when the key does not parse.
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// [`Authenticator::new`] with `AuthConfig::from_env`; `Ok(None)` when nothing is set.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        AuthConfig::from_env()?.map(Self::new).transpose()
    }

    /// [`Authenticator::from_env`] over any lookup (the local server's: the environment, then
    /// its `--env-file`).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        AuthConfig::from_lookup(lookup)?.map(Self::new).transpose()
    }

    /// An authenticator that reads the time (for `exp`, `nbf`, the JWKS cache) from `clock`.
    pub fn with_clock(config: AuthConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let bad_key = |expected| ConfigError {
            name: "HOOKLINE_JWT_PUBLIC_KEY",
            expected,
            value: String::new(),
        };
        let (algorithm, keys) = match config.keys {
            KeySource::Hs256(secret) => (
                Algorithm::HS256,
                Keys::Static(DecodingKey::from_secret(secret.as_bytes())),
            ),
            KeySource::PublicKey { algorithm, pem } => {
                let key = match algorithm {
                    PublicKeyAlgorithm::EdDsa => DecodingKey::from_ed_pem(pem.as_bytes())
                        .map_err(|_| bad_key("an Ed25519 public key in PEM (EdDSA)"))?,
                    PublicKeyAlgorithm::Rs256 => DecodingKey::from_rsa_pem(pem.as_bytes())
                        .map_err(|_| bad_key("an RSA public key in PEM (RS256)"))?,
                };
                (algorithm.jwt(), Keys::Static(key))
            }
            KeySource::Jwks {
                url,
                algorithm,
                ttl,
            } => (
                algorithm.jwt(),
                Keys::Jwks(jwks::JwksKeys::new(
                    url,
                    algorithm.jwt(),
                    ttl,
                    clock.clone(),
                )),
            ),
        };
        Ok(Self::from_parts(
            algorithm,
            keys,
            &config.issuer,
            &config.audience,
            config.org_claims,
            clock,
        ))
    }

    fn from_parts(
        algorithm: Algorithm,
        keys: Keys,
        issuer: &str,
        audience: &str,
        org_claims: Vec<String>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // `exp` and `nbf` are checked below against the injectable clock: jsonwebtoken reads
        // the system time.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        Self(Arc::new(Inner {
            algorithm,
            keys,
            validation,
            org_claims,
            clock,
        }))
    }

    /// The algorithm every accepted token must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.0.algorithm
    }

    /// The principal of an API request: the one verified for this very request in front of
    /// its route (the API rate limit counts by it, `VerifiedPrincipal`), or its bearer token
    /// verified now. One signature check per request, not two.
    pub async fn authenticate_request<B>(
        &self,
        req: &http::Request<B>,
    ) -> Result<Principal, AuthError> {
        match req.extensions().get::<VerifiedPrincipal>() {
            Some(v) if Arc::ptr_eq(&v.by.0, &self.0) => Ok(v.principal.clone()),
            _ => self.authenticate(req.headers()).await,
        }
    }

    /// `principal`, verified by this authenticator, to hand to a route with its request.
    pub(crate) fn vouch(&self, principal: Principal) -> VerifiedPrincipal {
        VerifiedPrincipal {
            principal,
            by: self.clone(),
        }
    }

    /// The principal behind the request's `Authorization: Bearer <jwt>` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;
        self.verify(token).await
    }

    /// The principal a bare token stands for (what [`Authenticator::authenticate`] does after
    /// taking it out of the header).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let inner = &*self.0;
        let header = read_header(token)?;
        // Pinned: the configuration says which algorithm is valid, the token does not.
        if header.alg.as_deref() != Some(algorithm_name(inner.algorithm)) {
            return Err(AuthError::invalid(
                "it is not signed with the algorithm this server accepts",
            ));
        }
        let key = match &inner.keys {
            Keys::Static(key) => key.clone(),
            Keys::Jwks(jwks) => {
                let kid = header
                    .kid
                    .ok_or_else(|| AuthError::invalid("it names no signing key (kid)"))?;
                jwks.key(&kid).await?
            }
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &inner.validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        self.principal(&data.claims)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let inner = &*self.0;
        let now = inner.clock.now().timestamp();
        let leeway = LEEWAY.as_secs() as i64;
        let exp = numeric_date(claims.get("exp"))
            .ok_or_else(|| AuthError::invalid("its exp claim is not a number"))?;
        if exp.saturating_add(leeway) < now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(Some(nbf))
                .ok_or_else(|| AuthError::invalid("its nbf claim is not a number"))?;
            if nbf > now.saturating_add(leeway) {
                return Err(AuthError::invalid("it is not valid yet (nbf)"));
            }
        }

        let sub = id_claim(claims, "sub").ok_or_else(|| AuthError::invalid("it has no sub"))?;
        let org = inner
            .org_claims
            .iter()
            .find_map(|name| id_claim(claims, name))
            .ok_or_else(|| {
                AuthError::invalid(format!("it has no {} claim", inner.org_claims.join(" or ")))
            })?;

        let mut scopes = BTreeSet::new();
        for name in ["scope", "scopes", "scp"] {
            match claims.get(name) {
                Some(Value::String(list)) => scopes.extend(Scope::parse_lenient(list)),
                Some(Value::Array(items)) => scopes.extend(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .flat_map(Scope::parse_lenient),
                ),
                _ => {}
            }
        }
        Ok(Principal {
            user_id: UserId::new(sub),
            org_id: OrgId::new(org),
            scopes,
        })
    }
}

/// The token in `Authorization: Bearer <token>` (the scheme is case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::MalformedHeader);
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::MalformedHeader)?
        .trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token)
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// The token's header, read without trusting it (only to refuse a foreign algorithm early
/// and to find the key id).
fn read_header(token: &str) -> Result<RawHeader, AuthError> {
    let malformed = || AuthError::invalid("it is not a well-formed JWT");
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::invalid("it is too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| malformed())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed())
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => {
            AuthError::invalid("its signature does not verify")
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::invalid("it is not signed with the algorithm this server accepts")
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::invalid("it is not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => AuthError::invalid("it was issued by another issuer (iss)"),
        ErrorKind::InvalidAudience => AuthError::invalid("it is meant for another audience (aud)"),
        ErrorKind::InvalidSubject => AuthError::invalid("its subject is not accepted"),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::invalid("it has no exp"),
            "iss" => AuthError::invalid("it has no iss"),
            "aud" => AuthError::invalid("it has no aud"),
            "sub" => AuthError::invalid("it has no sub"),
            _ => AuthError::invalid("it lacks a required claim"),
        },
        _ => AuthError::invalid("it is not a well-formed JWT"),
    }
}

/// A JWT NumericDate (seconds, possibly fractional).
fn numeric_date(value: Option<&Value>) -> Option<i64> {
    let n = value?.as_number()?;
    n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64))
}

/// A non-empty, printable, bounded string claim.
fn id_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    let value = claims.get(name)?.as_str()?.trim();
    let ok =
        !value.is_empty() && value.len() <= MAX_ID_BYTES && !value.chars().any(|c| c.is_control());
    ok.then(|| value.to_owned())
}
