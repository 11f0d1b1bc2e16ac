//! Dev tokens for the local server: an Ed25519 key pair kept in the data dir signs tokens
//! (`hookline token`), and the authenticator it hands out accepts exactly those.

use super::{AuthError, Authenticator, Keys, OrgId, Scope, UserId, DEFAULT_ORG_CLAIMS};
use crate::clock::{Clock, SystemClock};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Signs and verifies local dev tokens.
pub struct LocalIssuer {
    path: PathBuf,
    /// The PKCS#8 document of the private key.
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: String,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("path", &self.path)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    org_id: &'a str,
    scope: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// The PKCS#8 v1 prefix of an Ed25519 private key, before its 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl LocalIssuer {
    /// The `iss` of local dev tokens.
    pub const ISSUER: &'static str = "hookline-local";
    /// The `aud` of local dev tokens.
    pub const AUDIENCE: &'static str = "hookline";
    /// The key file's name in the data dir.
    pub const KEY_FILE: &'static str = "jwt-dev.key";

    /// The issuer whose key is `<data_dir>/jwt-dev.key`, creating the directory and the key
    /// (owner-only, 0600) on first use. The file holds a PKCS#8 PEM `PRIVATE KEY`; a bare
    /// base64 PKCS#8 document or 32-byte seed is read too.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(Self::KEY_FILE);
        let pkcs8 = match std::fs::read_to_string(&path) {
            Ok(text) => {
                tighten_permissions(&path)?;
                decode_key_file(&text).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is not an Ed25519 private key (PKCS#8 PEM); delete it to make a new one",
                            path.display()
                        ),
                    )
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_key_file(&path)?,
            Err(e) => return Err(e),
        };
        Self::from_pkcs8(path, pkcs8)
    }

    fn from_pkcs8(path: PathBuf, pkcs8: Vec<u8>) -> io::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds an unusable Ed25519 key", path.display()),
            )
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(&public);
            format!("local-{}", hex::encode(&digest[..8]))
        };
        Ok(Self {
            path,
            pkcs8,
            public,
            kid,
            clock: Arc::new(SystemClock),
        })
    }

    /// An issuer with a fresh key kept only in memory (for tests of routes that need tokens).
    pub fn ephemeral() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
        Self::from_pkcs8(PathBuf::new(), doc.as_ref().to_vec())
            .expect("a generated Ed25519 key loads")
    }

    /// Read the time (for `iat`/`exp`, and the authenticator's checks) from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where the key is kept.
    pub fn key_path(&self) -> &Path {
        &self.path
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The public key as PEM (SPKI), for `HOOKLINE_JWT_PUBLIC_KEY`.
    pub fn public_key_pem(&self) -> String {
        // SubjectPublicKeyInfo for Ed25519: fixed 12-byte prefix, then the key.
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&self.public);
        pem("PUBLIC KEY", &der)
    }

    /// A token for `user` in `org` with `scopes`, valid for `ttl` from now.
    pub fn issue(
        &self,
        org: &OrgId,
        user: &UserId,
        scopes: &BTreeSet<Scope>,
        ttl: Duration,
    ) -> String {
        let now = self.clock.now().timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            iss: Self::ISSUER,
            aud: Self::AUDIENCE,
            sub: user.as_str(),
            org_id: org.as_str(),
            scope: Scope::join(scopes),
            iat: now,
            exp: now.saturating_add(ttl),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".into());
        header.kid = Some(self.kid.clone());
        // The key was checked when it was loaded, and the claims are plain JSON.
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .expect("a loaded Ed25519 key signs")
    }

    /// An authenticator that accepts exactly this issuer's tokens (EdDSA with this key,
    /// `iss = hookline-local`, `aud = hookline`).
    pub fn authenticator(&self) -> Authenticator {
        Authenticator::from_parts(
            Algorithm::EdDSA,
            Keys::Static(DecodingKey::from_ed_der(&self.public)),
            Self::ISSUER,
            Self::AUDIENCE,
            DEFAULT_ORG_CLAIMS.iter().map(|s| s.to_string()).collect(),
            self.clock.clone(),
        )
    }

    /// Verify a token issued here (a shortcut for `authenticator().verify`).
    pub async fn verify(&self, token: &str) -> Result<super::Principal, AuthError> {
        self.authenticator().verify(token).await
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The PKCS#8 document in a key file: PEM, bare base64 PKCS#8, or a bare base64 seed.
fn decode_key_file(text: &str) -> Option<Vec<u8>> {
    let b64: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim()))
        .ok()?;
    let der = if der.len() == 32 {
        let mut doc = PKCS8_ED25519_PREFIX.to_vec();
        doc.extend_from_slice(&der);
        doc
    } else {
        der
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).ok()?;
    Some(der)
}

/// Make a new key and store it at `path` without ever leaving a partly written or
/// world-readable file there; if another process got there first, use its key.
fn create_key_file(path: &Path) -> io::Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| io::Error::other("could not generate an Ed25519 key"))?;
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let write = || -> io::Result<()> {
        let mut file = owner_only_create(&tmp)?;
        file.write_all(pem("PRIVATE KEY", doc.as_ref()).as_bytes())?;
        file.sync_all()?;
        Ok(())
    };
    let linked = write().and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(doc.as_ref().to_vec()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)?;
            decode_key_file(&text).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not an Ed25519 private key", path.display()),
                )
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn owner_only_create(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn owner_only_create(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// A key file others can read is made owner-only again.
#[cfg(unix)]
fn tighten_permissions(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the dev JWT key was readable by others; made it 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten_permissions(_: &Path) -> io::Result<()> {
    Ok(())
}
