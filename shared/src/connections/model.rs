//! Repository connections (DESIGN.md §1.2, seeds 001 and 004): a repository an org connected,
//! the webhook Hookline manages on it, and the sealed per-repository secret.

use crate::ids::typed_id;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

typed_id!(
    /// A repository connection: `rpc_…`.
    ConnectionId,
    "rpc_"
);
typed_id!(
    /// An incident opened from a failed workflow run or pipeline: `inc_…`.
    IncidentId,
    "inc_"
);

/// Where the repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RepoProvider {
    Github,
    Gitlab,
}

impl RepoProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            RepoProvider::Github => "github",
            RepoProvider::Gitlab => "gitlab",
        }
    }
}

/// The state of the webhook Hookline manages on the repository (seed 001's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    /// The hook exists and delivers.
    Active,
    /// Not set up (`setup_webhook: false`) or removed.
    Inactive,
    /// Creating it failed; `webhook_status_reason` says why and what to do.
    Failed,
}

/// A secret as stored: only ciphertext (see `ports::keys`), never the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// The serialised sealed envelope (ciphertext, encrypted data key, nonce, key id, version).
    pub sealed: String,
    /// For a previous secret after a rotation: deliveries signed with it are accepted until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
}

/// A user's provider access token as stored: sealed, with when it expires (`valid_until`)
/// and, for OAuth tokens that expire (GitLab's last two hours), the sealed refresh token that
/// renews it. Records written before refresh tokens were kept read as having none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProviderToken {
    #[serde(flatten)]
    pub access: StoredSecret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
}

/// A connected repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub id: ConnectionId,
    pub org_id: String,
    pub user_id: String,
    pub provider: RepoProvider,
    /// `owner/repo` on GitHub, `group/subgroup/project` on GitLab.
    pub repository_full_name: String,
    /// GitLab's numeric project id, once known.
    pub project_id: Option<String>,
    pub auto_pr_enabled: bool,
    pub is_enabled: bool,
    pub webhook_id: Option<String>,
    pub webhook_url: String,
    pub webhook_status: WebhookStatus,
    pub webhook_status_reason: Option<String>,
    pub webhook_events: Vec<String>,
    pub webhook_created_at: Option<DateTime<Utc>>,
    pub webhook_last_delivery_at: Option<DateTime<Utc>>,
    pub total_deliveries: u64,
    pub failed_deliveries: u64,
    pub secret: Option<StoredSecret>,
    pub previous_secret: Option<StoredSecret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Pings and what the hook-health check last found (records from before it read as none).
    #[serde(default)]
    pub health: HookHealth,
}

/// Whether the hook is known to deliver: the provider's ping Hookline asked for, and what the
/// last hook-health check found. `last_ping_at` belongs to the store's `record_ping` (the
/// worker records a ping when it arrives): like the delivery counters, `update` keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookHealth {
    /// When Hookline last asked the provider to ping the hook (after creating or repairing it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_requested_at: Option<DateTime<Utc>>,
    /// Why the provider refused that ping request, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_error: Option<String>,
    /// When a ping last arrived and verified: GitHub's `ping`, or a GitLab push (its test push
    /// looks like any other, and either proves the hook delivers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ping_at: Option<DateTime<Utc>>,
    /// When the last hook-health check read this hook from the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
    /// Since when the hook has been silent although the repository saw pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_since: Option<DateTime<Utc>>,
    /// What the user should know and do about the silence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
}

/// How long a requested ping may take to arrive before the status calls it missing: providers
/// deliver one within seconds, and retry a failed one for a few minutes.
pub const PING_GRACE: chrono::Duration = chrono::Duration::minutes(10);

impl HookHealth {
    /// Whether the last ping Hookline asked for arrived: `Some(true)` once it did (or a ping
    /// arrived though none was asked for), `Some(false)` when the provider refused the request
    /// or it has not arrived within [`PING_GRACE`], `None` while it may still come or when no
    /// ping was ever asked for.
    pub fn ping_ok(&self, now: DateTime<Utc>) -> Option<bool> {
        match (self.ping_requested_at, self.last_ping_at) {
            (Some(asked), Some(arrived)) if arrived >= asked => Some(true),
            (None, Some(_)) => Some(true),
            (Some(_), _) if self.ping_error.is_some() => Some(false),
            (Some(asked), _) if now - asked > PING_GRACE => Some(false),
            _ => None,
        }
    }
}

/// An incident: a failed workflow run (GitHub) or pipeline (GitLab) of a connected repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub org_id: String,
    pub user_id: String,
    pub connection_id: ConnectionId,
    pub repository_full_name: String,
    pub provider: RepoProvider,
    /// The run and attempt it was opened for: one incident per run attempt.
    pub run_id: String,
    pub run_attempt: u32,
    pub workflow: String,
    pub branch: Option<String>,
    pub sha: Option<String>,
    pub url: Option<String>,
    /// `open` or `resolved`.
    pub status: String,
    /// The status of the fix PR Hookline opened for it, if any.
    pub pr_status: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The latest state of one CI run (GitHub workflow run, GitLab pipeline), upserted on every
/// event about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRun {
    pub org_id: String,
    pub connection_id: ConnectionId,
    pub repository_full_name: String,
    pub run_id: String,
    pub run_attempt: u32,
    pub name: String,
    /// `queued`, `in_progress`, `completed` (GitLab: `pending`, `running`, `success`, …).
    pub status: String,
    /// `success`, `failure`, `cancelled`, … once completed.
    pub conclusion: Option<String>,
    pub branch: Option<String>,
    pub sha: Option<String>,
    pub run_number: Option<u64>,
    pub url: Option<String>,
    /// Failed check runs / jobs attached to the run.
    pub failed_jobs: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A pull request (GitHub) or merge request (GitLab) of a connected repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    pub org_id: String,
    pub connection_id: ConnectionId,
    pub repository_full_name: String,
    pub number: u64,
    pub title: String,
    /// `open`, `closed`, `merged` (GitLab: `opened`, `closed`, `merged`).
    pub state: String,
    pub author: Option<String>,
    pub head_ref: Option<String>,
    pub merged: bool,
    pub url: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_is_ok_once_it_arrives_and_missing_after_the_grace() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let mut h = HookHealth::default();
        assert_eq!(h.ping_ok(t(0)), None, "never asked");
        h.ping_requested_at = Some(t(0));
        assert_eq!(h.ping_ok(t(60)), None, "awaited");
        assert_eq!(h.ping_ok(t(11 * 60)), Some(false), "not within the grace");
        h.last_ping_at = Some(t(1));
        assert_eq!(h.ping_ok(t(11 * 60)), Some(true));
        h.ping_requested_at = Some(t(100));
        assert_eq!(
            h.ping_ok(t(101)),
            None,
            "the ping before the last request counts not"
        );
        h.ping_error = Some("GitHub answered 404".into());
        assert_eq!(h.ping_ok(t(101)), Some(false), "refused at once");
    }

    #[test]
    fn ids_carry_their_prefix_and_parse_back() {
        let id = ConnectionId::generate();
        assert!(id.as_str().starts_with("rpc_"));
        assert_eq!(id.as_str().len(), 4 + 22);
        assert_eq!(ConnectionId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(ConnectionId::parse("inc_abc"), None);
        assert_eq!(ConnectionId::parse("rpc_"), None);
        assert_eq!(ConnectionId::parse("rpc_../etc"), None);
        assert_ne!(ConnectionId::generate(), ConnectionId::generate());
    }
}
