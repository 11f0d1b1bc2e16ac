//! The behaviour every [`KeyService`] adapter must have. The embedded keys, the cache and KMS
//! (on moto) run these through [`keys_conformance!`](crate::keys_conformance), each test on a
//! fresh master key.

use super::{EncryptionContext, KeyError, KeyService, Sealed, ALGORITHM};
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::sync::Arc;

/// The context a connection's webhook secret is sealed under.
pub fn connection_context(org: &str, connection: &str) -> EncryptionContext {
    EncryptionContext::new([
        ("org", org),
        ("connection", connection),
        ("purpose", "webhook_secret"),
    ])
}

fn webhook_secret() -> Secret {
    Secret::new("9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c0b2d4f6e8a0c2e4b6d8f0a2c4e6b8d0f")
}

fn assert_rejected(result: Result<Secret, KeyError>, what: &str) {
    match result {
        Err(KeyError::Rejected) => {}
        Err(other) => panic!("{what}: expected Rejected, got {other}"),
        Ok(_) => panic!("{what}: expected Rejected, but it opened"),
    }
}

/// `field` decoded from base64, with `edit` applied, encoded again.
fn edit_field(field: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = BASE64.decode(field).expect("a sealed field is base64");
    edit(&mut bytes);
    BASE64.encode(bytes)
}

pub async fn a_sealed_secret_opens_to_the_same_value(keys: Arc<dyn KeyService>) {
    let ctx = connection_context("org_1", "rpc_abc");
    for value in [
        webhook_secret().expose().to_string(),
        String::new(),
        "x".repeat(1024),
        "ключ-🔑-秘密-clé".to_string(),
    ] {
        let sealed = keys.seal(&Secret::new(value.clone()), &ctx).await.unwrap();
        assert_eq!(sealed.algorithm, ALGORITHM);
        assert!(!sealed.key_id.is_empty());
        assert_eq!(
            BASE64.decode(&sealed.nonce).unwrap().len(),
            12,
            "96-bit nonce"
        );
        assert_eq!(
            BASE64.decode(&sealed.ciphertext).unwrap().len(),
            value.len() + 16,
            "ciphertext and GCM tag"
        );
        // What is stored is JSON; it must come back intact.
        let stored: Sealed =
            serde_json::from_str(&serde_json::to_string(&sealed).unwrap()).unwrap();
        let opened = keys.open(&stored, &ctx).await.unwrap();
        assert_eq!(opened.expose(), value, "{} bytes", value.len());
    }
}

pub async fn the_same_context_built_in_another_order_opens(keys: Arc<dyn KeyService>) {
    let ctx = EncryptionContext::new([("org", "org_1"), ("connection", "rpc_abc")]);
    let sealed = keys.seal(&webhook_secret(), &ctx).await.unwrap();
    let reordered = EncryptionContext::new([("connection", "rpc_abc"), ("org", "org_1")]);
    assert_eq!(
        keys.open(&sealed, &reordered).await.unwrap(),
        webhook_secret()
    );
}

pub async fn two_seals_of_the_same_secret_differ(keys: Arc<dyn KeyService>) {
    let ctx = connection_context("org_1", "rpc_abc");
    let a = keys.seal(&webhook_secret(), &ctx).await.unwrap();
    let b = keys.seal(&webhook_secret(), &ctx).await.unwrap();
    assert_ne!(a.ciphertext, b.ciphertext);
    assert_ne!(a.nonce, b.nonce, "a random nonce per seal");
    assert_ne!(
        a.encrypted_data_key, b.encrypted_data_key,
        "a fresh data key per seal"
    );
    assert_eq!(a.key_id, b.key_id);
    assert_eq!(keys.open(&a, &ctx).await.unwrap(), webhook_secret());
    assert_eq!(keys.open(&b, &ctx).await.unwrap(), webhook_secret());
}

pub async fn the_stored_record_never_contains_the_plaintext(keys: Arc<dyn KeyService>) {
    let ctx = connection_context("org_1", "rpc_abc");
    for value in [webhook_secret().expose().to_string(), "ab".repeat(512)] {
        let sealed = keys.seal(&Secret::new(value.clone()), &ctx).await.unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains(&value), "the record holds the plaintext");
        assert!(
            !json.contains(&BASE64.encode(&value)),
            "the record holds it in base64"
        );
        let shown = format!("{sealed:?}");
        assert!(!shown.contains(&value));
        assert!(
            !shown.contains(&sealed.ciphertext),
            "Debug shows the ciphertext"
        );
        assert!(!shown.contains(&sealed.encrypted_data_key));
    }
}

pub async fn a_sealed_secret_does_not_open_under_another_context(keys: Arc<dyn KeyService>) {
    let ctx = connection_context("org_1", "rpc_abc");
    let sealed = keys.seal(&webhook_secret(), &ctx).await.unwrap();
    let others = [
        (
            "another connection",
            connection_context("org_1", "rpc_other"),
        ),
        ("another org", connection_context("org_2", "rpc_abc")),
        (
            "another purpose",
            ctx.clone().with("purpose", "oauth_token"),
        ),
        ("an extra name", ctx.clone().with("user", "usr_1")),
        (
            "a missing name",
            EncryptionContext::new([("org", "org_1"), ("connection", "rpc_abc")]),
        ),
        ("no context", EncryptionContext::default()),
        // Names and values run together spell the original context: any canonical form
        // that merely concatenates them (as moto's KMS does) would accept it.
        (
            "the same characters split differently",
            EncryptionContext::new([
                ("connection", "rpc_abcorgorg_1"),
                ("purpose", "webhook_secret"),
            ]),
        ),
    ];
    for (what, other) in others {
        match keys.open(&sealed, &other).await {
            Err(err @ KeyError::Rejected) => {
                let shown = format!("{err} {err:?}");
                for value in ["org_1", "rpc_abc", "rpc_other", "org_2"] {
                    assert!(!shown.contains(value), "the error names a value: {shown}");
                }
            }
            Err(other) => panic!("{what}: expected Rejected, got {other}"),
            Ok(_) => panic!("{what}: a secret opened under another context"),
        }
    }
    assert_eq!(keys.open(&sealed, &ctx).await.unwrap(), webhook_secret());
}

/// `field` with one byte flipped: at `position` 0 the first, 1 the middle, 2 the last.
fn flipped(field: &str, position: usize) -> String {
    edit_field(field, |b| {
        let i = [0, b.len() / 2, b.len() - 1][position];
        b[i] ^= 0x01;
    })
}

const POSITIONS: [&str; 3] = ["first", "middle", "last"];

pub async fn a_tampered_record_is_rejected(keys: Arc<dyn KeyService>) {
    let ctx = connection_context("org_1", "rpc_abc");
    let sealed = keys.seal(&webhook_secret(), &ctx).await.unwrap();
    let other = keys.seal(&webhook_secret(), &ctx).await.unwrap();
    let altered = |what: String, edit: &dyn Fn(&mut Sealed)| {
        let mut s = sealed.clone();
        edit(&mut s);
        (what, s)
    };
    let mut cases = Vec::new();
    for (position, name) in POSITIONS.iter().enumerate() {
        cases.push(altered(format!("{name} ciphertext byte flipped"), &|s| {
            s.ciphertext = flipped(&s.ciphertext, position)
        }));
        cases.push(altered(format!("{name} nonce byte flipped"), &|s| {
            s.nonce = flipped(&s.nonce, position)
        }));
    }
    // The start of a KMS ciphertext blob names its key, and moto answers a blob naming an
    // unknown key as a permission problem (Unavailable), so flip the key material only.
    for (position, name) in POSITIONS.iter().enumerate().skip(1) {
        cases.push(altered(
            format!("{name} encrypted data key byte flipped"),
            &|s| s.encrypted_data_key = flipped(&s.encrypted_data_key, position),
        ));
    }
    cases.extend([
        altered("ciphertext truncated".into(), &|s| {
            s.ciphertext = edit_field(&s.ciphertext, |b| b.truncate(b.len() - 1))
        }),
        altered("ciphertext extended".into(), &|s| {
            s.ciphertext = edit_field(&s.ciphertext, |b| b.push(0))
        }),
        altered("nonce of the wrong length".into(), &|s| {
            s.nonce = edit_field(&s.nonce, |b| b.push(0))
        }),
        altered("ciphertext not base64".into(), &|s| {
            s.ciphertext = "not base64!".into()
        }),
        altered("no encrypted data key".into(), &|s| {
            s.encrypted_data_key = String::new()
        }),
        altered("an unknown algorithm".into(), &|s| {
            s.algorithm = "AES256-GCM/v0".into()
        }),
        altered("another key id".into(), &|s| s.key_id.push('0')),
        altered("another record's data key".into(), &|s| {
            s.encrypted_data_key = other.encrypted_data_key.clone()
        }),
        altered("another record's nonce".into(), &|s| {
            s.nonce = other.nonce.clone()
        }),
    ]);
    for (what, tampered) in cases {
        assert_rejected(keys.open(&tampered, &ctx).await, &what);
    }
    assert_eq!(keys.open(&sealed, &ctx).await.unwrap(), webhook_secret());
}

pub async fn a_record_sealed_under_another_key_is_rejected(
    keys: Arc<dyn KeyService>,
    other_keys: Arc<dyn KeyService>,
) {
    let ctx = connection_context("org_1", "rpc_abc");
    let ours = keys.seal(&webhook_secret(), &ctx).await.unwrap();
    let theirs = other_keys.seal(&webhook_secret(), &ctx).await.unwrap();
    assert_ne!(ours.key_id, theirs.key_id);
    assert_rejected(keys.open(&theirs, &ctx).await, "another key's record");
    assert_rejected(other_keys.open(&ours, &ctx).await, "another key's record");
}

pub async fn concurrent_seals_and_opens_all_succeed(keys: Arc<dyn KeyService>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let ctx = connection_context("org_1", &format!("rpc_{i}"));
                let value = Secret::new(format!("secret-{i}"));
                let sealed = keys.seal(&value, &ctx).await.unwrap();
                for _ in 0..3 {
                    assert_eq!(keys.open(&sealed, &ctx).await.unwrap(), value);
                }
                sealed
            })
        })
        .collect();
    let mut sealed = Vec::new();
    for task in tasks {
        sealed.push(task.await.unwrap());
    }
    // Every record is bound to its own connection.
    let ctx = connection_context("org_1", "rpc_1");
    assert_rejected(keys.open(&sealed[0], &ctx).await, "rpc_0's record as rpc_1");
}

/// Runs every case of this suite as a test against the adapter `$make` builds: an expression
/// of a future yielding `(guard, Arc<dyn KeyService>)`; the guard lives as long as the test.
/// Each call must give a service with its own, new master key.
#[macro_export]
macro_rules! keys_conformance {
    ($make:expr) => {
        mod keys_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::keys::conformance as c;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (_guard, keys) = $make.await;
                        c::$name(keys).await;
                    }
                };
                ($name:ident, two_keys) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (_guard, keys) = $make.await;
                        let (_other_guard, other_keys) = $make.await;
                        c::$name(keys, other_keys).await;
                    }
                };
            }

            case!(a_sealed_secret_opens_to_the_same_value);
            case!(the_same_context_built_in_another_order_opens);
            case!(two_seals_of_the_same_secret_differ);
            case!(the_stored_record_never_contains_the_plaintext);
            case!(a_sealed_secret_does_not_open_under_another_context);
            case!(a_tampered_record_is_rejected);
            case!(a_record_sealed_under_another_key_is_rejected, two_keys);
            case!(concurrent_seals_and_opens_all_succeed);
        }
    };
}
