//! The org store: each org's profile (name, the owner Hookline tells when something needs a
//! person) and the notices already sent, so the same notice never goes out twice.

use crate::outbound::model::OrgProfile;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub mod aws;
pub mod conformance;
pub mod embedded;

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("org store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

#[async_trait]
pub trait OrgStore: Send + Sync + 'static {
    /// The org's profile; `None` before anyone set it.
    async fn get_org(&self, org_id: &str) -> Result<Option<OrgProfile>, OrgError>;

    /// Save (replace) the org's profile.
    async fn put_org(&self, profile: &OrgProfile) -> Result<(), OrgError>;

    /// Mark the notice `key` (e.g. `dead_lettered#dlv_…`) of the org as sent, atomically:
    /// true for the first call with that key (of concurrent calls, exactly one), false after.
    async fn claim_notice(
        &self,
        org_id: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, OrgError>;
}

/// How long a claimed notice is remembered: past this, the same key may be claimed (and the
/// notice sent) again. DynamoDB's TTL removes the marker around then; the embedded store keeps
/// it and compares the time. Long enough that no retry or replay of its cause comes later.
pub const NOTICE_RETENTION: chrono::Duration = chrono::Duration::days(400);

/// A record that does not parse, named by key: serde_json's own message can quote the value
/// it choked on, so only the kind of error and its position are kept.
pub(crate) fn json_corrupt(key: impl Into<String>, e: &serde_json::Error) -> OrgError {
    OrgError::Corrupt {
        key: key.into(),
        reason: format!(
            "unreadable record ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    }
}
