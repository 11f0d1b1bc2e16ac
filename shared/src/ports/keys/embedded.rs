//! The embedded adapter of [`KeyService`]: data keys wrapped with AES-256-GCM under a local
//! master key, a file `master.key` in the data dir created on first run (mode 0600). Same
//! envelope as KMS; losing the file makes every stored secret unreadable.

use super::{
    data_key_from, random_data_key, random_nonce, seal_with, EncryptionContext, Envelope, KeyError,
    KeyService, Sealed, DATA_KEY_LEN, NONCE_LEN,
};
use crate::secret::Secret;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The master key's file name in the data dir.
pub const MASTER_KEY_FILE: &str = "master.key";

/// An AES-GCM tag's length: the wrapped data key is nonce, key and tag.
const TAG_LEN: usize = 16;

/// Envelope encryption under a local master key.
pub struct LocalKeys {
    master: Aes256Gcm,
    key_id: String,
}

impl LocalKeys {
    /// The master key in `dir/master.key`, created (32 random bytes, base64, mode 0600) if
    /// there is none. A file of the wrong length, or readable by group or others, is refused.
    pub fn open_or_create(dir: &Path) -> Result<Self, KeyError> {
        let key = load_or_create(dir)?;
        Ok(Self::from_master_key(&key))
    }

    /// `local:<fingerprint>`: names the master key in every [`Sealed`] it makes.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn from_master_key(key: &[u8; DATA_KEY_LEN]) -> Self {
        // The fingerprint is a domain-separated hash, so it says nothing usable about the key.
        let mut hash = Sha256::new();
        hash.update(b"hookline local master key fingerprint\n");
        hash.update(key);
        let fingerprint = hex::encode(&hash.finalize()[..8]);
        Self {
            master: Aes256Gcm::new_from_slice(key).expect("a 256-bit key"),
            key_id: format!("local:{fingerprint}"),
        }
    }

    /// Nonce followed by the AES-GCM ciphertext of the data key, bound to the context.
    fn wrap(&self, data_key: &[u8; DATA_KEY_LEN], context: &EncryptionContext) -> Vec<u8> {
        let nonce = random_nonce();
        let wrapped = self
            .master
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: data_key,
                    aad: &context.aad("data-key"),
                },
            )
            .expect("AES-GCM encrypts 32 bytes");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&wrapped);
        out
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, KeyError> {
        if wrapped.len() != NONCE_LEN + DATA_KEY_LEN + TAG_LEN {
            return Err(KeyError::Rejected);
        }
        let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
        let key = self
            .master
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &context.aad("data-key"),
                },
            )
            .map_err(|_| KeyError::Rejected)?;
        data_key_from(key).ok_or(KeyError::Rejected)
    }
}

impl fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyService for LocalKeys {
    async fn seal(
        &self,
        plaintext: &Secret,
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        let data_key = random_data_key();
        let wrapped = self.wrap(&data_key, context);
        seal_with(&data_key, &wrapped, self.key_id.clone(), plaintext, context)
    }

    async fn open(&self, sealed: &Sealed, context: &EncryptionContext) -> Result<Secret, KeyError> {
        let envelope = Envelope::decode(sealed)?;
        if sealed.key_id != self.key_id {
            return Err(KeyError::Rejected);
        }
        let data_key = self.unwrap(&envelope.encrypted_data_key, context)?;
        envelope.open_with(&data_key, context)
    }
}

fn unavailable(path: &Path, what: &str, err: io::Error) -> KeyError {
    KeyError::Unavailable(format!("master key file {}: {what}: {err}", path.display()))
}

fn load_or_create(dir: &Path) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, KeyError> {
    let path = dir.join(MASTER_KEY_FILE);
    match File::open(&path) {
        Ok(file) => return read_master_key(&path, file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(unavailable(&path, "cannot open", e)),
    }
    fs::create_dir_all(dir).map_err(|e| unavailable(&path, "cannot create its directory", e))?;
    create_master_key(dir, &path)?;
    let file = File::open(&path).map_err(|e| unavailable(&path, "cannot open", e))?;
    read_master_key(&path, file)
}

/// Writes a new key to a private temporary file, then links it into place, which fails if
/// another process got there first (its key is then the one read back). So the key file is
/// never seen half-written or with looser permissions.
fn create_master_key(dir: &Path, path: &Path) -> Result<(), KeyError> {
    let tmp: PathBuf = dir.join(format!(".{MASTER_KEY_FILE}.{}.tmp", uuid::Uuid::new_v4()));
    let written = (|| {
        let mut file = private_new_file(&tmp)?;
        let key = super::random_data_key();
        let mut text = Zeroizing::new(BASE64.encode(&key[..]));
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    })();
    let _ = fs::remove_file(&tmp);
    written.map_err(|e| unavailable(path, "cannot create", e))?;
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn private_new_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

fn read_master_key(path: &Path, file: File) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = file
            .metadata()
            .map_err(|e| unavailable(path, "cannot read its permissions", e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Unavailable(format!(
                "master key file {} is accessible to group or others (mode {mode:04o}); it \
                 must be readable by its owner only: chmod 600 {}",
                path.display(),
                path.display()
            )));
        }
    }
    let mut text = Zeroizing::new(String::new());
    // A key file is 45 bytes; reading a little more is enough to tell a wrong one.
    file.take(1024)
        .read_to_string(&mut text)
        .map_err(|e| unavailable(path, "cannot read", e))?;
    let malformed = || {
        KeyError::Unavailable(format!(
            "master key file {} is malformed: it must hold 32 random bytes in base64. Restore \
             it from a backup; deleting it makes every stored secret unreadable",
            path.display()
        ))
    };
    let bytes = Zeroizing::new(BASE64.decode(text.trim()).map_err(|_| malformed())?);
    let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    if bytes.len() != DATA_KEY_LEN {
        return Err(malformed());
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn KeyService>) {
        let dir = tempfile::tempdir().unwrap();
        let keys = LocalKeys::open_or_create(dir.path()).unwrap();
        (dir, Arc::new(keys))
    }

    crate::keys_conformance!(fresh());

    fn ctx() -> EncryptionContext {
        EncryptionContext::new([("org", "org_1"), ("connection", "rpc_abc")])
    }

    #[tokio::test]
    async fn the_master_key_persists_across_restarts_in_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = LocalKeys::open_or_create(&data).unwrap();
        let sealed = first.seal(&Secret::new("s3cret"), &ctx()).await.unwrap();
        drop(first);

        let again = LocalKeys::open_or_create(&data).unwrap();
        assert_eq!(again.key_id(), sealed.key_id);
        assert!(again.key_id().starts_with("local:"));
        assert_eq!(
            again.open(&sealed, &ctx()).await.unwrap().expose(),
            "s3cret"
        );

        let text = fs::read_to_string(data.join(MASTER_KEY_FILE)).unwrap();
        assert_eq!(BASE64.decode(text.trim()).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [MASTER_KEY_FILE], "no temporary file is left");
    }

    #[test]
    fn processes_starting_together_agree_on_one_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        LocalKeys::open_or_create(dir.path())
                            .unwrap()
                            .key_id()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    }

    fn write_key_file(dir: &Path, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(MASTER_KEY_FILE);
        fs::write(&path, content).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
        path
    }

    fn refusal(dir: &Path) -> String {
        match LocalKeys::open_or_create(dir) {
            Err(err @ KeyError::Unavailable(_)) => err.to_string(),
            other => panic!("expected the key file to be refused, got {other:?}"),
        }
    }

    #[test]
    fn a_master_key_file_of_the_wrong_length_is_refused() {
        for content in [
            BASE64.encode([7u8; 16]),
            BASE64.encode([7u8; 33]),
            String::new(),
            "not base64 at all!".to_string(),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = write_key_file(dir.path(), content.as_bytes(), 0o600);
            let message = refusal(dir.path());
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("32 random bytes"), "{message}");
            if !content.is_empty() {
                assert!(!message.contains(&content), "the error echoes the file");
            }
            assert_eq!(
                fs::read(&path).unwrap(),
                content.as_bytes(),
                "a refused key file is left alone"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_master_key_file_readable_by_others_is_refused() {
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let dir = tempfile::tempdir().unwrap();
            let path = write_key_file(dir.path(), BASE64.encode([7u8; 32]).as_bytes(), mode);
            let message = refusal(dir.path());
            assert!(
                message.contains(&format!("chmod 600 {}", path.display())),
                "{message}"
            );
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
        }
        let dir = tempfile::tempdir().unwrap();
        write_key_file(dir.path(), BASE64.encode([7u8; 32]).as_bytes(), 0o400);
        LocalKeys::open_or_create(dir.path()).expect("an owner-only read-only key is fine");
    }

    #[tokio::test]
    async fn another_master_keys_record_relabelled_with_our_key_id_is_rejected() {
        let (_a, ours) = fresh().await;
        let (_b, theirs) = fresh().await;
        let mine = ours.seal(&Secret::new("s3cret"), &ctx()).await.unwrap();
        let mut relabelled = theirs.seal(&Secret::new("s3cret"), &ctx()).await.unwrap();
        relabelled.key_id = mine.key_id.clone();
        assert!(matches!(
            ours.open(&relabelled, &ctx()).await,
            Err(KeyError::Rejected)
        ));
    }

    #[tokio::test]
    async fn the_key_file_and_sealed_record_hold_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let keys = LocalKeys::open_or_create(dir.path()).unwrap();
        let secret = "plaintext-webhook-secret-0123456789abcdef";
        let sealed = keys.seal(&Secret::new(secret), &ctx()).await.unwrap();
        let record = serde_json::to_vec(&sealed).unwrap();
        let key_file = fs::read(dir.path().join(MASTER_KEY_FILE)).unwrap();
        for bytes in [&record, &key_file] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
        assert!(
            !format!("{keys:?}").contains(&String::from_utf8_lossy(&key_file).trim().to_string())
        );
    }
}
