//! The connection store (DESIGN.md §1.2): repository connections with their sealed secrets and
//! delivery counters, and what the worker records about connected repositories: workflow runs
//! (pipelines), incidents opened from failed ones, and pull (merge) requests.
//!
//! Both adapters keep each record as its serialised model plus the few columns/attributes the
//! lookups need; the secrets are stored exactly as given (`StoredSecret` is ciphertext only).
//! No method logs a record's contents, and errors name records by key only.
//!
//! Repository names are matched case-insensitively (`Owner/Repo` and `owner/repo` are one
//! repository on GitHub and on GitLab), exactly otherwise: no prefix matching. The stored
//! record keeps the name as given.

use crate::connections::{
    Connection, ConnectionId, Incident, IncidentId, PullRequest, RepoProvider, StoredProviderToken,
    WorkflowRun,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub mod aws;
pub mod conformance;
pub mod embedded;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The org has already connected this repository (with this provider): the existing
    /// connection's id, for the API's 409.
    #[error("the repository is already connected as {0}")]
    Duplicate(ConnectionId),
    /// No such record in that org.
    #[error("not found")]
    NotFound,
    /// The store cannot be reached or refused the call; the caller should answer 503.
    #[error("connection store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back (named by key, never by contents).
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The largest page `list` returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// How many connections the org has, counted page by page; with `up_to`, counting stops once
/// it is reached (a limit check needs no more).
pub async fn count_connections(
    store: &dyn ConnectionStore,
    org_id: &str,
    up_to: Option<u64>,
) -> Result<u64, ConnectionError> {
    let mut have = 0u64;
    let mut cursor = None;
    loop {
        let (page, next) = store.list(org_id, MAX_PAGE, cursor).await?;
        have += page.len() as u64;
        match next {
            Some(c) if up_to.is_none_or(|max| have < max) => cursor = Some(c),
            _ => return Ok(have),
        }
    }
}

#[async_trait]
pub trait ConnectionStore: Send + Sync + 'static {
    // ---- connections ---------------------------------------------------------------------

    /// Save a new connection, atomically unique per (org, provider, repository): a second
    /// connect of the same repository in the same org is `Duplicate(existing id)`. Different
    /// orgs may connect the same repository.
    async fn create(&self, connection: &Connection) -> Result<(), ConnectionError>;

    /// The connection, if it exists in `org_id` (another org's id is `None`).
    async fn get(
        &self,
        org_id: &str,
        id: &ConnectionId,
    ) -> Result<Option<Connection>, ConnectionError>;

    /// One page of the org's connections, newest (`created_at`) first, and the cursor of the
    /// next page (`None` on the last). `limit` is capped at [`MAX_PAGE`]; an unreadable
    /// cursor gives an empty last page (check it first with [`valid_cursor`] to answer 400).
    async fn list(
        &self,
        org_id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Connection>, Option<String>), ConnectionError>;

    /// Every org's connection of this repository, for routing inbound deliveries.
    async fn find_by_repository(
        &self,
        provider: RepoProvider,
        repository_full_name: &str,
    ) -> Result<Vec<Connection>, ConnectionError>;

    /// Every org's GitLab connection with this numeric project id.
    async fn find_by_project_id(
        &self,
        project_id: &str,
    ) -> Result<Vec<Connection>, ConnectionError>;

    /// Replace the connection (found by `connection.id` in `connection.org_id`; `NotFound`
    /// otherwise). Its identity — org, provider, repository (case-insensitively) — must be the
    /// stored one, else `NotFound`: the uniqueness marker stays as it is. The delivery counters
    /// (`total_deliveries`, `failed_deliveries`, `webhook_last_delivery_at`) belong to
    /// [`record_delivery`](Self::record_delivery): the stored values are kept, whatever the
    /// caller passes, so a concurrent delivery is never lost.
    async fn update(&self, connection: &Connection) -> Result<(), ConnectionError>;

    /// As [`update`](Self::update), but only while the stored record's `updated_at` is still
    /// `read_at` (the value the caller read): true when written; false, writing nothing, when
    /// the record changed since it was read — a user's change (rotate, events, disable) made
    /// meanwhile wins over the hook-health check's. `NotFound` when the connection is gone.
    async fn update_if_unchanged(
        &self,
        connection: &Connection,
        read_at: DateTime<Utc>,
    ) -> Result<bool, ConnectionError>;

    /// Remove the connection (with its secrets) and its uniqueness marker atomically: the
    /// repository can be connected again. False when there was no such connection in the org.
    /// The connection's runs, incidents and pull requests stay (history).
    async fn delete(&self, org_id: &str, id: &ConnectionId) -> Result<bool, ConnectionError>;

    /// Count one delivery, atomically: `total_deliveries += 1`, `failed_deliveries += failed`,
    /// `webhook_last_delivery_at = max(current, at)` (kept to the millisecond).
    /// `NotFound` when the connection is gone.
    async fn record_delivery(
        &self,
        id: &ConnectionId,
        at: DateTime<Utc>,
        failed: bool,
    ) -> Result<(), ConnectionError>;

    /// Record that a ping (GitHub `ping`, GitLab test push) arrived for the connection,
    /// atomically: `health.last_ping_at = max(current, at)` (kept to the millisecond). `update`
    /// keeps the stored value, as it keeps the delivery counters. `NotFound` when it is gone.
    async fn record_ping(
        &self,
        id: &ConnectionId,
        at: DateTime<Utc>,
    ) -> Result<(), ConnectionError>;

    /// One page of every org's connections (the hook-health check reads them all), in no
    /// particular order, and the cursor of the next page (`None` on the last). A page holds
    /// about `limit` (capped at [`MAX_PAGE`]), fewer or more: page on until the cursor is `None`.
    async fn list_all(
        &self,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Connection>, Option<String>), ConnectionError>;

    // ---- workflow runs -------------------------------------------------------------------

    /// Store the run's latest state, keyed by (connection, run id, attempt). An event older
    /// than the stored one (`updated_at`, to the millisecond) is not written; at the same
    /// `updated_at`, a finished run (`conclusion` set) is not overwritten by an unfinished one.
    /// True when this event was written. Failed jobs only grow: the stored ones are kept and
    /// `run.failed_jobs` added, whether or not the rest of the event is written.
    async fn upsert_workflow_run(&self, run: &WorkflowRun) -> Result<bool, ConnectionError>;

    /// Add `job` to the failed jobs of the run `placeholder` names (connection, run id,
    /// attempt) in one atomic step, so a job event and a run event for the same run at the
    /// same moment both keep what they bring. A run not stored yet is stored as
    /// `placeholder`, which any event about the run replaces.
    async fn add_failed_job(
        &self,
        placeholder: &WorkflowRun,
        job: &str,
    ) -> Result<(), ConnectionError>;

    async fn get_workflow_run(
        &self,
        connection_id: &ConnectionId,
        run_id: &str,
        run_attempt: u32,
    ) -> Result<Option<WorkflowRun>, ConnectionError>;

    // ---- incidents -----------------------------------------------------------------------

    /// Create the incident unless one exists for its (connection, run id, attempt): true when
    /// this call created it (of concurrent calls, exactly one).
    async fn create_incident_once(&self, incident: &Incident) -> Result<bool, ConnectionError>;

    /// The incident, if it belongs to `org_id`.
    async fn get_incident(
        &self,
        org_id: &str,
        id: &IncidentId,
    ) -> Result<Option<Incident>, ConnectionError>;

    /// The org's incidents, newest (`created_at`) first, optionally only one repository's
    /// (case-insensitively) and only those with one `status`; at most `limit`.
    async fn list_incidents(
        &self,
        org_id: &str,
        repository: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Incident>, ConnectionError>;

    /// Set the status of the incident's fix PR (`updated_at` is left as it is). `NotFound`
    /// unless the incident belongs to `org_id`.
    async fn set_incident_pr_status(
        &self,
        org_id: &str,
        id: &IncidentId,
        pr_status: &str,
    ) -> Result<(), ConnectionError>;

    /// Mark the org's incident `resolved` (with `updated_at = at`) if it is `open`, in one
    /// conditional write: true when this call changed it (of concurrent calls, exactly one),
    /// false when it was not open. `NotFound` unless the incident belongs to `org_id`.
    async fn resolve_incident(
        &self,
        org_id: &str,
        id: &IncidentId,
        at: DateTime<Utc>,
    ) -> Result<bool, ConnectionError>;

    /// The newest incident of the connection whose failing `branch` is `branch` (exact).
    /// When a fix PR's head ref carries the incident id itself, prefer
    /// [`get_incident`](Self::get_incident) with that id.
    async fn find_incident_by_branch(
        &self,
        connection_id: &ConnectionId,
        branch: &str,
    ) -> Result<Option<Incident>, ConnectionError>;

    // ---- pull requests -------------------------------------------------------------------

    /// Store the PR's metadata, keyed by (connection, number); an older `updated_at` than the
    /// stored one is not written (equal overwrites). True when written.
    async fn upsert_pull_request(&self, pr: &PullRequest) -> Result<bool, ConnectionError>;

    async fn get_pull_request(
        &self,
        connection_id: &ConnectionId,
        number: u64,
    ) -> Result<Option<PullRequest>, ConnectionError>;

    // ---- provider access tokens ------------------------------------------------------------

    /// Store (replace) the sealed access token a user of an org registered for a provider
    /// (OAuth, with its refresh token where it expires, or a personal access token): hooks
    /// are managed with it.
    async fn put_provider_token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        token: &StoredProviderToken,
    ) -> Result<(), ConnectionError>;

    async fn get_provider_token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
    ) -> Result<Option<StoredProviderToken>, ConnectionError>;
}

// ---- shared by both adapters ---------------------------------------------------------------

/// How a record's `updated_at` reads in its stored JSON (the string, without its quotes), for
/// the conditional writes of [`ConnectionStore::update_if_unchanged`].
pub(crate) fn json_time(t: DateTime<Utc>) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(text)) => text,
        _ => t.to_rfc3339(),
    }
}

/// The case-folded repository name the lookups and the uniqueness marker use.
pub(crate) fn repo_key(repository_full_name: &str) -> String {
    repository_full_name.to_lowercase()
}

/// Epoch milliseconds, zero-padded so they sort as strings.
pub(crate) fn sortable_millis(t: DateTime<Utc>) -> String {
    format!("{:015}", t.timestamp_millis().max(0))
}

/// A list cursor: where the previous page ended, (created_at ms, id), as opaque URL-safe text.
pub(crate) fn encode_cursor(created_at: DateTime<Utc>, id: &ConnectionId) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}#{}",
        sortable_millis(created_at),
        id
    ))
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<(i64, ConnectionId)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (millis, id) = raw.split_once('#')?;
    if millis.len() != 15 || !millis.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((millis.parse().ok()?, ConnectionId::parse(id)?))
}

/// Whether `cursor` is one `list` handed out (an API answers 400 otherwise).
pub fn valid_cursor(cursor: &str) -> bool {
    decode_cursor(cursor).is_some()
}

/// Whether a workflow-run event (updated ms, finished) may replace the stored one.
/// A run's failed jobs after adding `new` to `stored`: each once, sorted by name (the order
/// both adapters return them in, since DynamoDB keeps them as a set).
pub(crate) fn merge_jobs(stored: &[String], new: &[String]) -> Vec<String> {
    let all: std::collections::BTreeSet<&String> = stored.iter().chain(new).collect();
    all.into_iter().cloned().collect()
}

pub(crate) fn run_is_newer(new: (i64, bool), stored: (i64, bool)) -> bool {
    new.0 > stored.0 || (new.0 == stored.0 && (new.1 || !stored.1))
}

/// A record that does not parse, named by key. serde_json's own message can quote the value it
/// choked on, so only the kind of error and its position are kept.
pub(crate) fn json_corrupt(key: impl Into<String>, e: &serde_json::Error) -> ConnectionError {
    corrupt(
        key,
        format!(
            "unreadable record ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

pub(crate) fn corrupt(key: impl Into<String>, e: impl std::fmt::Display) -> ConnectionError {
    ConnectionError::Corrupt {
        key: key.into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let id = ConnectionId::generate();
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let cursor = encode_cursor(at, &id);
        assert!(valid_cursor(&cursor));
        assert_eq!(decode_cursor(&cursor), Some((1_700_000_000_123, id)));
        for junk in [
            "",
            "abc",
            "!!!",
            &encode_cursor(at, &ConnectionId::generate())[..10],
        ] {
            assert!(!valid_cursor(junk), "{junk}");
        }
    }

    #[test]
    fn a_finished_run_beats_an_unfinished_one_at_the_same_time() {
        assert!(run_is_newer((2, false), (1, true)));
        assert!(!run_is_newer((1, true), (2, false)));
        assert!(run_is_newer((2, true), (2, false)));
        assert!(!run_is_newer((2, false), (2, true)));
        assert!(run_is_newer((2, false), (2, false)));
        assert!(run_is_newer((2, true), (2, true)));
    }
}
