//! Signing keys from a JWKS URL (Cognito, Auth0): fetched on first use, kept for a TTL, and
//! fetched again once when a token names a key id the cached set lacks (the issuer rotated
//! its keys). Unknown key ids cannot force more than one fetch per [`REFRESH_COOLDOWN`], so
//! a flood of made-up `kid`s does not turn into a flood of requests to the issuer.
//!
//! Only keys that fit the pinned algorithm are kept: RSA keys for RS256, Ed25519 keys for
//! EdDSA, and only when their `use` (if given) is `sig` and their `alg` (if given) is the
//! pinned one. If a refresh fails, the keys fetched before keep working.

use super::AuthError;
use crate::clock::Clock;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The shortest time between two fetches caused by unknown key ids.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// How long one fetch of the JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

struct Cached {
    keys: HashMap<String, DecodingKey>,
    fetched_at: DateTime<Utc>,
}

pub(crate) struct JwksKeys {
    url: String,
    algorithm: Algorithm,
    ttl: chrono::Duration,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    /// One fetch at a time; waiters re-read the cache the fetch filled.
    fetching: tokio::sync::Mutex<Option<DateTime<Utc>>>,
    fetches: AtomicU64,
}

impl JwksKeys {
    pub(crate) fn new(
        url: String,
        algorithm: Algorithm,
        ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            url,
            algorithm,
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
            clock,
            client,
            cache: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many times the JWKS was requested (for tests and metrics).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key `kid` names: from the cache while it is fresh, else after one fetch.
    pub(crate) async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Lookup::Found(key) = self.lookup(kid) {
            return Ok(key);
        }
        let mut last_forced = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let reason = match self.lookup(kid) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Unknown => {
                let now = self.clock.now();
                let cooled = last_forced.is_none_or(|t| now - t >= cooldown());
                if !cooled {
                    return Err(unknown_kid());
                }
                *last_forced = Some(now);
                "unknown kid"
            }
            Lookup::Stale | Lookup::Empty => "stale",
        };
        match self.fetch().await {
            Ok(keys) => {
                let key = keys.get(kid).cloned();
                *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
                    keys,
                    fetched_at: self.clock.now(),
                });
                key.ok_or_else(unknown_kid)
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, reason, "could not fetch the JWKS");
                // Keep serving the keys fetched before, stale or not.
                let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
                match cache.as_ref() {
                    Some(cached) => cached.keys.get(kid).cloned().ok_or_else(unknown_kid),
                    None => Err(AuthError::KeysUnavailable),
                }
            }
        }
    }

    fn lookup(&self, kid: &str) -> Lookup {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let Some(cached) = cache.as_ref() else {
            return Lookup::Empty;
        };
        if self.clock.now() - cached.fetched_at >= self.ttl {
            return Lookup::Stale;
        }
        match cached.keys.get(kid) {
            Some(key) => Lookup::Found(key.clone()),
            None => Lookup::Unknown,
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let res = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err("the JWKS document is too large".into());
        }
        let body = res.bytes().await.map_err(|e| e.without_url().to_string())?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("the JWKS document is too large".into());
        }
        let keys = parse_jwks(&body, self.algorithm)?;
        if keys.is_empty() {
            tracing::warn!(url = %self.url, algorithm = ?self.algorithm,
                "the JWKS has no signing key for the configured algorithm");
        }
        Ok(keys)
    }
}

enum Lookup {
    Found(DecodingKey),
    Unknown,
    Stale,
    Empty,
}

fn cooldown() -> chrono::Duration {
    chrono::Duration::from_std(REFRESH_COOLDOWN).unwrap_or(chrono::Duration::zero())
}

fn unknown_kid() -> AuthError {
    AuthError::invalid("it is signed with a key this server does not know (kid)")
}

/// The keys of a JWKS document usable with `algorithm`, by key id. Entries that do not parse
/// or do not fit are skipped, not fatal.
pub(crate) fn parse_jwks(
    body: &[u8],
    algorithm: Algorithm,
) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not valid JSON: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        if jwk
            .common
            .key_algorithm
            .is_some_and(|a| !key_algorithm_is(a, algorithm))
        {
            continue;
        }
        let fits = match (&jwk.algorithm, algorithm) {
            (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
            (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
                p.curve == EllipticCurve::Ed25519
            }
            _ => false,
        };
        if !fits {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, key);
        }
    }
    Ok(keys)
}

fn key_algorithm_is(key: KeyAlgorithm, algorithm: Algorithm) -> bool {
    matches!(
        (key, algorithm),
        (KeyAlgorithm::RS256, Algorithm::RS256) | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
    )
}
