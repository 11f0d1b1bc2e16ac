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
