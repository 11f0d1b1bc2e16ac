//! Secrets at rest: envelope encryption. Every seal takes a fresh 256-bit data key (from KMS
//! `GenerateDataKey` on AWS, wrapped by a local master key when embedded), encrypts the secret
//! with AES-256-GCM under it, and binds both to an [`EncryptionContext`] naming whose secret
//! it is, so a ciphertext copied onto another record does not open.

use crate::clock::{Clock, SystemClock};
use crate::secret::Secret;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

pub mod aws;
pub mod conformance;
pub mod embedded;

/// The envelope format written into every [`Sealed`]: AES-256-GCM data, 96-bit random nonce,
/// a 256-bit data key per seal.
pub const ALGORITHM: &str = "AES256-GCM/v1";

const DATA_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// A plaintext data key; zeroed when dropped.
type DataKey = Zeroizing<[u8; DATA_KEY_LEN]>;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key service could not be asked (KMS unreachable, throttled, no permission, a key
    /// disabled or missing, a local master key file that cannot be used). Worth retrying or
    /// fixing the configuration; says nothing about the sealed secret.
    #[error("key service unavailable: {0}")]
    Unavailable(String),
    /// The sealed secret does not open: sealed for another context or under another key, or
    /// altered since.
    #[error(
        "sealed secret refused: it was sealed for another encryption context or key, or it \
         was altered"
    )]
    Rejected,
}

/// Seals secrets for storage and opens them again, under an encryption context that must
/// match.
#[async_trait]
pub trait KeyService: Send + Sync + 'static {
    async fn seal(
        &self,
        plaintext: &Secret,
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError>;

    async fn open(&self, sealed: &Sealed, context: &EncryptionContext) -> Result<Secret, KeyError>;
}

#[async_trait]
impl<K: KeyService + ?Sized> KeyService for Arc<K> {
    async fn seal(
        &self,
        plaintext: &Secret,
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        (**self).seal(plaintext, context).await
    }

    async fn open(&self, sealed: &Sealed, context: &EncryptionContext) -> Result<Secret, KeyError> {
        (**self).open(sealed, context).await
    }
}

/// Whose secret this is, e.g. `{"org": "org_1", "connection": "rpc_abc", "purpose":
/// "webhook_secret"}`. KMS receives it as its encryption context; both adapters also bind it
/// to the ciphertext as AES-GCM associated data. Its `Debug` shows the names only.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// `EncryptionContext::new([("org", org_id), ("connection", connection_id)])`. A name
    /// given twice keeps its last value.
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// This context plus (or with a new value for) `name`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The canonical bytes bound as associated data: the JSON object of the pairs sorted by
    /// name (a `BTreeMap` serialises in order), unambiguous whatever the values contain.
    fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("a map of strings serialises")
    }

    /// Associated data for one use (`data` or `data-key`) under [`ALGORITHM`].
    fn aad(&self, purpose: &str) -> Vec<u8> {
        let mut aad = format!("hookline:{ALGORITHM}:{purpose}\n").into_bytes();
        aad.extend_from_slice(&self.canonical());
        aad
    }
}

impl fmt::Debug for EncryptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EncryptionContext")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A sealed secret, as stored: the ciphertext, the data key encrypted by the master key, the
/// nonce (all base64), the master key's id and the envelope version. Never the plaintext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// AES-256-GCM ciphertext with its 16-byte tag, base64.
    pub ciphertext: String,
    /// The data key as the master key encrypted it (a KMS ciphertext blob, or nonce and
    /// AES-GCM ciphertext under the local master key), base64.
    pub encrypted_data_key: String,
    /// The 96-bit nonce of `ciphertext`, base64.
    pub nonce: String,
    /// The KMS key ARN, or `local:<fingerprint>` for the embedded master key.
    pub key_id: String,
    /// The envelope format, [`ALGORITHM`].
    pub algorithm: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A fresh random data key.
fn random_data_key() -> DataKey {
    let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(&mut *key);
    key
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// A data key from bytes a key service returned, which are zeroed here.
fn data_key_from(bytes: Vec<u8>) -> Option<DataKey> {
    let bytes = Zeroizing::new(bytes);
    let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    if bytes.len() != DATA_KEY_LEN {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

/// Encrypts `plaintext` under `data_key` and wraps the result with the already encrypted data
/// key into a [`Sealed`].
fn seal_with(
    data_key: &DataKey,
    encrypted_data_key: &[u8],
    key_id: String,
    plaintext: &Secret,
    context: &EncryptionContext,
) -> Result<Sealed, KeyError> {
    let cipher = Aes256Gcm::new_from_slice(&data_key[..]).expect("a 256-bit key");
    let nonce = random_nonce();
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: &context.aad("data"),
            },
        )
        .map_err(|_| KeyError::Unavailable("AES-GCM refused to encrypt the secret".into()))?;
    Ok(Sealed {
        ciphertext: BASE64.encode(ciphertext),
        encrypted_data_key: BASE64.encode(encrypted_data_key),
        nonce: BASE64.encode(nonce),
        key_id,
        algorithm: ALGORITHM.to_string(),
    })
}

/// The decoded parts of a [`Sealed`]; anything malformed is `Rejected`.
struct Envelope {
    ciphertext: Vec<u8>,
    encrypted_data_key: Vec<u8>,
    nonce: [u8; NONCE_LEN],
}

impl Envelope {
    fn decode(sealed: &Sealed) -> Result<Self, KeyError> {
        if sealed.algorithm != ALGORITHM {
            return Err(KeyError::Rejected);
        }
        let decode = |text: &str| BASE64.decode(text).map_err(|_| KeyError::Rejected);
        let nonce = decode(&sealed.nonce)?
            .try_into()
            .map_err(|_| KeyError::Rejected)?;
        let encrypted_data_key = decode(&sealed.encrypted_data_key)?;
        if encrypted_data_key.is_empty() {
            return Err(KeyError::Rejected);
        }
        Ok(Self {
            ciphertext: decode(&sealed.ciphertext)?,
            encrypted_data_key,
            nonce,
        })
    }

    /// The plaintext, if `data_key` and `context` are the ones it was sealed with.
    fn open_with(
        &self,
        data_key: &DataKey,
        context: &EncryptionContext,
    ) -> Result<Secret, KeyError> {
        let cipher = Aes256Gcm::new_from_slice(&data_key[..]).expect("a 256-bit key");
        let mut plaintext = cipher
            .decrypt(
                Nonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &context.aad("data"),
                },
            )
            .map_err(|_| KeyError::Rejected)?;
        match String::from_utf8(std::mem::take(&mut plaintext)) {
            Ok(text) => Ok(Secret::new(text)),
            Err(not_utf8) => {
                not_utf8.into_bytes().zeroize();
                Err(KeyError::Rejected)
            }
        }
    }
}

/// How long [`CachedKeys`] keeps an opened secret by default.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// How many opened secrets [`CachedKeys`] keeps at most by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

/// A [`KeyService`] that remembers what it opened for a short time, so a warm Lambda verifies
/// a burst of deliveries for one connection with one KMS `Decrypt`. Entries are keyed by a
/// hash of the whole sealed record and the context, so an altered record or another context
/// always reaches the inner service. Failures are not cached; seals pass straight through.
pub struct CachedKeys<K> {
    inner: K,
    ttl: chrono::Duration,
    capacity: usize,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<[u8; 32], CacheEntry>>,
}

struct CacheEntry {
    secret: Secret,
    expires_at: DateTime<Utc>,
}

impl<K: KeyService> CachedKeys<K> {
    /// Caches for [`DEFAULT_CACHE_TTL`], at most [`DEFAULT_CACHE_CAPACITY`] secrets, on the
    /// wall clock.
    pub fn new(inner: K) -> Self {
        Self {
            inner,
            ttl: chrono::Duration::from_std(DEFAULT_CACHE_TTL).expect("a small duration"),
            capacity: DEFAULT_CACHE_CAPACITY,
            clock: Arc::new(SystemClock),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an opened secret is served from memory. Zero turns the cache off.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        self
    }

    /// How many opened secrets are kept at most. Zero turns the cache off.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Secrets held now, expired ones included until they are evicted.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every cached secret.
    pub fn clear(&self) {
        self.entries().clear();
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<[u8; 32], CacheEntry>> {
        // A panic while holding the lock leaves a consistent map: every write is one insert
        // or remove.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lookup(&self, key: &[u8; 32]) -> Option<Secret> {
        let now = self.clock.now();
        let mut entries = self.entries();
        match entries.get(key) {
            Some(entry) if entry.expires_at > now => Some(entry.secret.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: [u8; 32], secret: &Secret) {
        if self.capacity == 0 || self.ttl <= chrono::Duration::zero() {
            return;
        }
        let now = self.clock.now();
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.expires_at > now);
            while entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires_at)
                    .map(|(key, _)| *key)
                    .expect("a full cache has entries");
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            CacheEntry {
                secret: secret.clone(),
                expires_at: now
                    .checked_add_signed(self.ttl)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            },
        );
    }
}

/// The cache key: SHA-256 over every field of the record and the context, each length-prefixed
/// so no two different inputs share an encoding.
fn cache_key(sealed: &Sealed, context: &EncryptionContext) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        sealed.algorithm.as_bytes(),
        sealed.key_id.as_bytes(),
        sealed.encrypted_data_key.as_bytes(),
        sealed.nonce.as_bytes(),
        sealed.ciphertext.as_bytes(),
        &context.canonical(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

#[async_trait]
impl<K: KeyService> KeyService for CachedKeys<K> {
    async fn seal(
        &self,
        plaintext: &Secret,
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        self.inner.seal(plaintext, context).await
    }

    async fn open(&self, sealed: &Sealed, context: &EncryptionContext) -> Result<Secret, KeyError> {
        let key = cache_key(sealed, context);
        if let Some(secret) = self.lookup(&key) {
            return Ok(secret);
        }
        let secret = self.inner.open(sealed, context).await?;
        self.remember(key, &secret);
        Ok(secret)
    }
}

impl<K: fmt::Debug> fmt::Debug for CachedKeys<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self
            .entries
            .lock()
            .map(|entries| entries.len())
            .unwrap_or_default();
        f.debug_struct("CachedKeys")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("held", &held)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::embedded::LocalKeys;
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A key service that counts the opens reaching it.
    struct Counting {
        inner: LocalKeys,
        opens: AtomicUsize,
    }

    #[async_trait]
    impl KeyService for Counting {
        async fn seal(
            &self,
            plaintext: &Secret,
            context: &EncryptionContext,
        ) -> Result<Sealed, KeyError> {
            self.inner.seal(plaintext, context).await
        }

        async fn open(
            &self,
            sealed: &Sealed,
            context: &EncryptionContext,
        ) -> Result<Secret, KeyError> {
            self.opens.fetch_add(1, Ordering::SeqCst);
            self.inner.open(sealed, context).await
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        keys: CachedKeys<Arc<Counting>>,
        counting: Arc<Counting>,
    }

    impl Fixture {
        fn opens(&self) -> usize {
            self.counting.opens.load(Ordering::SeqCst)
        }
    }

    fn fixture(ttl: Duration, capacity: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting {
            inner: LocalKeys::open_or_create(dir.path()).unwrap(),
            opens: AtomicUsize::new(0),
        });
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000));
        let keys = CachedKeys::new(counting.clone())
            .with_ttl(ttl)
            .with_capacity(capacity)
            .with_clock(clock.clone());
        Fixture {
            _dir: dir,
            clock,
            keys,
            counting,
        }
    }

    fn context(connection: &str) -> EncryptionContext {
        EncryptionContext::new([
            ("org", "org_1"),
            ("connection", connection),
            ("purpose", "webhook_secret"),
        ])
    }

    #[tokio::test]
    async fn a_secret_opened_again_within_the_ttl_is_served_from_memory() {
        let f = fixture(Duration::from_secs(300), 16);
        let ctx = context("rpc_abc");
        let sealed = f.keys.seal(&Secret::new("s3cret"), &ctx).await.unwrap();
        for _ in 0..5 {
            assert_eq!(f.keys.open(&sealed, &ctx).await.unwrap().expose(), "s3cret");
            f.clock.advance(chrono::Duration::seconds(59));
        }
        assert_eq!(f.opens(), 1, "only the first open reaches the key service");
    }

    #[tokio::test]
    async fn a_cached_secret_expires_after_its_ttl() {
        let f = fixture(Duration::from_secs(300), 16);
        let ctx = context("rpc_abc");
        let sealed = f.keys.seal(&Secret::new("s3cret"), &ctx).await.unwrap();
        f.keys.open(&sealed, &ctx).await.unwrap();
        f.clock.advance(chrono::Duration::seconds(299));
        f.keys.open(&sealed, &ctx).await.unwrap();
        assert_eq!(f.opens(), 1);
        f.clock.advance(chrono::Duration::seconds(1));
        assert_eq!(f.keys.open(&sealed, &ctx).await.unwrap().expose(), "s3cret");
        assert_eq!(f.opens(), 2, "an expired entry asks the key service again");
    }

    #[tokio::test]
    async fn the_cache_never_serves_a_secret_under_another_context() {
        let f = fixture(Duration::from_secs(300), 16);
        let sealed = f
            .keys
            .seal(&Secret::new("s3cret"), &context("rpc_abc"))
            .await
            .unwrap();
        f.keys.open(&sealed, &context("rpc_abc")).await.unwrap();
        assert!(matches!(
            f.keys.open(&sealed, &context("rpc_other")).await,
            Err(KeyError::Rejected)
        ));
        let mut altered = sealed.clone();
        altered.key_id.push('x');
        assert!(matches!(
            f.keys.open(&altered, &context("rpc_abc")).await,
            Err(KeyError::Rejected)
        ));
        assert_eq!(f.opens(), 3, "both misses reached the key service");
    }

    #[tokio::test]
    async fn a_refused_open_is_not_cached() {
        let f = fixture(Duration::from_secs(300), 16);
        let sealed = f
            .keys
            .seal(&Secret::new("s3cret"), &context("rpc_abc"))
            .await
            .unwrap();
        for _ in 0..2 {
            assert!(f.keys.open(&sealed, &context("rpc_other")).await.is_err());
        }
        assert_eq!(f.opens(), 2);
        assert!(f.keys.is_empty());
    }

    #[tokio::test]
    async fn the_cache_keeps_at_most_its_capacity() {
        let f = fixture(Duration::from_secs(300), 3);
        let mut sealed = Vec::new();
        for i in 0..5 {
            let ctx = context(&format!("rpc_{i}"));
            let s = f
                .keys
                .seal(&Secret::new(format!("s{i}")), &ctx)
                .await
                .unwrap();
            f.keys.open(&s, &ctx).await.unwrap();
            f.clock.advance(chrono::Duration::seconds(1));
            sealed.push((s, ctx));
        }
        assert_eq!(f.keys.len(), 3);
        assert_eq!(f.opens(), 5);
        // The newest are kept, the oldest were evicted.
        f.keys.open(&sealed[4].0, &sealed[4].1).await.unwrap();
        assert_eq!(f.opens(), 5);
        f.keys.open(&sealed[0].0, &sealed[0].1).await.unwrap();
        assert_eq!(f.opens(), 6);
    }

    #[tokio::test]
    async fn a_zero_ttl_turns_the_cache_off() {
        let f = fixture(Duration::ZERO, 16);
        let ctx = context("rpc_abc");
        let sealed = f.keys.seal(&Secret::new("s3cret"), &ctx).await.unwrap();
        f.keys.open(&sealed, &ctx).await.unwrap();
        f.keys.open(&sealed, &ctx).await.unwrap();
        assert_eq!(f.opens(), 2);
        assert!(f.keys.is_empty());
    }

    #[test]
    fn debug_output_shows_names_and_key_ids_only() {
        let ctx = context("rpc_abc");
        assert_eq!(
            format!("{ctx:?}"),
            r#"EncryptionContext(["connection", "org", "purpose"])"#
        );
        let sealed = Sealed {
            ciphertext: "Y2lwaGVy".into(),
            encrypted_data_key: "ZWRr".into(),
            nonce: "bm9uY2U=".into(),
            key_id: "local:abcd".into(),
            algorithm: ALGORITHM.into(),
        };
        assert_eq!(
            format!("{sealed:?}"),
            r#"Sealed { key_id: "local:abcd", algorithm: "AES256-GCM/v1", .. }"#
        );
    }

    #[test]
    fn the_canonical_context_is_order_independent_and_unambiguous() {
        let a = EncryptionContext::new([("org", "o"), ("connection", "c")]);
        let b = EncryptionContext::new([("connection", "c"), ("org", "o")]);
        assert_eq!(a.canonical(), b.canonical());
        let c = EncryptionContext::new([("ab", "c")]);
        let d = EncryptionContext::new([("a", "bc")]);
        assert_ne!(c.canonical(), d.canonical());
        let e = EncryptionContext::new([("a", "b\nc=d")]);
        let f = EncryptionContext::new([("a", "b"), ("c", "d")]);
        assert_ne!(e.canonical(), f.canonical());
    }

    /// The cache passes the whole conformance suite too.
    mod cached {
        use super::*;

        async fn fresh() -> (tempfile::TempDir, Arc<dyn KeyService>) {
            let dir = tempfile::tempdir().unwrap();
            let keys = LocalKeys::open_or_create(dir.path()).unwrap();
            (dir, Arc::new(CachedKeys::new(keys)))
        }

        crate::keys_conformance!(fresh());
    }
}
