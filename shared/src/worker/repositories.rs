//! The connected-repository handlers (DESIGN.md §1.1, "Event handling in the worker"): GitHub
//! and GitLab deliveries of a repository an org connected update what Hookline knows about it.
//!
//! - `workflow_run` (GitHub) / `pipeline` (GitLab): the run's latest state is upserted on every
//!   event; a run that completes with `failure` (GitLab `failed`) opens one incident per run
//!   attempt for the connection's org and user.
//! - `check_run` / `workflow_job` (GitHub) / `build` (GitLab job): a failed job is attached to
//!   its run (`failed_jobs`).
//! - `pull_request` / `merge_request`: the PR's metadata is upserted; a Hookline fix PR (head
//!   ref `hookline/fix/<incident id>`, see [`FIX_BRANCH_PREFIX`]) sets its incident's
//!   `pr_status` to `open`, `merged` or `closed`.
//! - `push` / `tag_push`: the activity record also says `<before>..<after> (<n> commits)`.
//!
//! Every delivery still becomes the normal activity record. A delivery for no connected
//! repository is only that; one whose every connection is disabled is skipped. Each matched
//! connection counts the delivery (`record_delivery`) once the handling is done.

use super::activity::{normalise, timestamp};
use super::{Event, Handled, Handler, Payload, WorkerError};
use crate::connections::{
    Connection, ConnectionId, Incident, IncidentId, PullRequest, RepoProvider, WorkflowRun,
};
use crate::model::{Activity, Source};
use crate::ports::connections::{ConnectionError, ConnectionStore};
use crate::ports::store::DeliveryStore;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;

/// The head ref of a fix PR Hookline opens for an incident: `hookline/fix/<incident id>`.
/// Another head ref under `hookline/` marks a Hookline PR too; it is linked to the newest
/// incident of the branch it targets (its base ref).
pub const FIX_BRANCH_PREFIX: &str = "hookline/fix/";

/// The head ref of Hookline's fix PR for `incident`.
pub fn fix_branch(incident: &IncidentId) -> String {
    format!("{FIX_BRANCH_PREFIX}{incident}")
}

pub struct RepositoryEvents {
    store: Arc<dyn DeliveryStore>,
    connections: Arc<dyn ConnectionStore>,
}

impl RepositoryEvents {
    pub fn new(store: Arc<dyn DeliveryStore>, connections: Arc<dyn ConnectionStore>) -> Self {
        Self { store, connections }
    }
}

fn store_error(e: ConnectionError) -> WorkerError {
    WorkerError::Handler(e.to_string())
}

#[async_trait]
impl Handler for RepositoryEvents {
    async fn handle(&self, event: &Event, now: DateTime<Utc>) -> Result<Handled, WorkerError> {
        let activity = activity(event, now);
        let body = match &event.payload {
            Payload::Json(v) => v,
            Payload::Form(_) => {
                self.store.put_activity(&activity).await?;
                return Ok(Handled::Processed);
            }
        };
        let connections = self
            .connections_for(event.envelope.source, body)
            .await
            .map_err(store_error)?;
        if connections.is_empty() {
            self.store.put_activity(&activity).await?;
            return Ok(Handled::Processed);
        }
        let enabled: Vec<&Connection> = connections.iter().filter(|c| c.is_enabled).collect();
        let outcome = if enabled.is_empty() {
            Handled::Skipped("connection disabled".into())
        } else {
            self.store.put_activity(&activity).await?;
            let kind = Kind::of(event.envelope.source, &event.envelope.event_type);
            for c in enabled {
                self.apply(c, kind, event, body, now)
                    .await
                    .map_err(store_error)?;
            }
            Handled::Processed
        };
        // Counted last: everything above is idempotent, the counter is not, and a retry
        // after a failure above should not count the delivery twice.
        for c in &connections {
            match self.connections.record_delivery(&c.id, now, false).await {
                Ok(()) | Err(ConnectionError::NotFound) => {}
                Err(e) => {
                    tracing::warn!(connection_id = %c.id, error = %e, "could not count a delivery for a connection");
                }
            }
        }
        Ok(outcome)
    }
}

/// What a delivery is about, across the two providers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Run,
    Job,
    PullRequest,
    Other,
}

impl Kind {
    fn of(source: Source, event_type: &str) -> Self {
        match (source, event_type) {
            (Source::Github, "workflow_run") | (Source::Gitlab, "pipeline") => Kind::Run,
            (Source::Github, "check_run" | "workflow_job") | (Source::Gitlab, "build") => Kind::Job,
            (Source::Github, "pull_request") | (Source::Gitlab, "merge_request") => {
                Kind::PullRequest
            }
            _ => Kind::Other,
        }
    }
}

/// The activity record, with a push's range and commit count in `action`.
fn activity(event: &Event, now: DateTime<Utc>) -> Activity {
    let mut a = normalise(event, now);
    if let (Payload::Json(body), "push" | "tag_push") =
        (&event.payload, event.envelope.event_type.as_str())
    {
        if a.action.is_none() {
            a.action = push_summary(body);
        }
    }
    a
}

fn push_summary(body: &Value) -> Option<String> {
    let before = text(body, &["before"])?;
    let after = text(body, &["after"])?;
    let count = number(body, &["total_commits_count"])
        .or_else(|| body.get("commits")?.as_array().map(|c| c.len() as u64))
        .unwrap_or(0);
    let short = |s: &str| s.chars().take(12).collect::<String>();
    Some(format!(
        "{}..{} ({count} commit{})",
        short(&before),
        short(&after),
        if count == 1 { "" } else { "s" }
    ))
}

// ---- reading payloads -------------------------------------------------------------------------

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, p| cur.get(p))
}

/// A non-empty string (numbers as their text).
fn text(v: &Value, path: &[&str]) -> Option<String> {
    match at(v, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: &Value, path: &[&str]) -> Option<u64> {
    match at(v, path)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn time(v: &Value, path: &[&str]) -> Option<DateTime<Utc>> {
    timestamp(&text(v, path)?)
}

/// One CI run's state as a provider reports it.
#[derive(Debug)]
struct RunEvent {
    run_id: String,
    attempt: u32,
    name: String,
    status: String,
    conclusion: Option<String>,
    branch: Option<String>,
    sha: Option<String>,
    run_number: Option<u64>,
    url: Option<String>,
    failed_jobs: Vec<String>,
    created_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl RunEvent {
    fn failed(&self) -> bool {
        self.status == "completed" && self.conclusion.as_deref() == Some("failure")
    }
}

fn github_run(body: &Value, received_at: DateTime<Utc>) -> Option<RunEvent> {
    let r = body.get("workflow_run")?;
    Some(RunEvent {
        run_id: text(r, &["id"])?,
        attempt: number(r, &["run_attempt"]).unwrap_or(1).max(1) as u32,
        name: text(r, &["name"])
            .or_else(|| text(body, &["workflow", "name"]))
            .unwrap_or_else(|| "workflow".into()),
        status: text(r, &["status"]).unwrap_or_else(|| "queued".into()),
        conclusion: text(r, &["conclusion"]),
        branch: text(r, &["head_branch"]),
        sha: text(r, &["head_sha"]),
        run_number: number(r, &["run_number"]),
        url: text(r, &["html_url"]),
        failed_jobs: Vec::new(),
        created_at: time(r, &["created_at"]),
        updated_at: time(r, &["updated_at"])
            .or_else(|| time(r, &["created_at"]))
            .unwrap_or(received_at),
    })
}

/// GitLab's pipeline status as (status, conclusion), in GitHub's terms.
fn gitlab_status(status: &str) -> (String, Option<String>) {
    let done = |c: &str| ("completed".to_string(), Some(c.to_string()));
    match status {
        "success" => done("success"),
        "failed" => done("failure"),
        "canceled" | "canceling" => done("cancelled"),
        "skipped" => done("skipped"),
        "running" => ("in_progress".into(), None),
        "manual" => ("waiting".into(), None),
        "pending" | "created" | "waiting_for_resource" | "preparing" | "scheduled" => {
            ("queued".into(), None)
        }
        other => (other.to_string(), None),
    }
}

fn gitlab_run(body: &Value, received_at: DateTime<Utc>) -> Option<RunEvent> {
    let p = body.get("object_attributes")?;
    let run_id = text(p, &["id"])?;
    let (status, conclusion) = gitlab_status(&text(p, &["status"]).unwrap_or_default());
    let failed_jobs = body
        .get("builds")
        .and_then(Value::as_array)
        .map(|builds| {
            builds
                .iter()
                .filter(|b| {
                    text(b, &["status"]).as_deref() == Some("failed")
                        && !b
                            .get("allow_failure")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                })
                .filter_map(|b| text(b, &["name"]))
                .collect()
        })
        .unwrap_or_default();
    let url = text(p, &["url"]).or_else(|| {
        text(body, &["project", "web_url"]).map(|web| format!("{web}/-/pipelines/{run_id}"))
    });
    Some(RunEvent {
        attempt: 1,
        name: text(p, &["name"]).unwrap_or_else(|| "pipeline".into()),
        status,
        conclusion,
        branch: text(p, &["ref"]),
        sha: text(p, &["sha"]),
        run_number: number(p, &["iid"]),
        url,
        failed_jobs,
        created_at: time(p, &["created_at"]),
        updated_at: time(p, &["updated_at"])
            .or_else(|| time(p, &["finished_at"]))
            .or_else(|| time(p, &["created_at"]))
            .unwrap_or(received_at),
        run_id,
    })
}

/// A failed job of a run.
#[derive(Debug)]
struct JobFailure {
    run_id: String,
    /// `None` when the event does not say (a check run): the run's latest known attempt.
    attempt: Option<u32>,
    job: String,
    workflow: Option<String>,
    branch: Option<String>,
    sha: Option<String>,
}

const FAILED: &[&str] = &["failure", "timed_out"];

/// The workflow run id (and attempt) in an Actions URL: `…/actions/runs/<id>[/attempts/<n>]…`.
fn run_in_url(url: &str) -> Option<(String, Option<u32>)> {
    let rest = url.split("/actions/runs/").nth(1)?;
    let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if id.is_empty() {
        return None;
    }
    let attempt = rest.split("/attempts/").nth(1).and_then(|a| {
        a.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    });
    Some((id, attempt))
}

fn github_job(event_type: &str, body: &Value) -> Option<JobFailure> {
    match event_type {
        "workflow_job" => {
            let j = body.get("workflow_job")?;
            if !FAILED.contains(&text(j, &["conclusion"])?.as_str()) {
                return None;
            }
            Some(JobFailure {
                run_id: text(j, &["run_id"])?,
                attempt: number(j, &["run_attempt"]).map(|a| a.max(1) as u32),
                job: text(j, &["name"])?,
                workflow: text(j, &["workflow_name"]),
                branch: text(j, &["head_branch"]),
                sha: text(j, &["head_sha"]),
            })
        }
        "check_run" => {
            let c = body.get("check_run")?;
            if !FAILED.contains(&text(c, &["conclusion"])?.as_str()) {
                return None;
            }
            // Only an Actions check run belongs to a workflow run; its URLs name the run.
            let (run_id, attempt) = ["details_url", "html_url"]
                .iter()
                .find_map(|k| run_in_url(&text(c, &[k])?))?;
            Some(JobFailure {
                run_id,
                attempt,
                job: text(c, &["name"])?,
                workflow: None,
                branch: text(c, &["check_suite", "head_branch"]),
                sha: text(c, &["head_sha"]),
            })
        }
        _ => None,
    }
}

fn gitlab_job(body: &Value) -> Option<JobFailure> {
    if text(body, &["build_status"]).as_deref() != Some("failed")
        || body
            .get("build_allow_failure")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    {
        return None;
    }
    Some(JobFailure {
        run_id: text(body, &["pipeline_id"])?,
        attempt: Some(1),
        job: text(body, &["build_name"])?,
        workflow: None,
        branch: text(body, &["ref"]),
        sha: text(body, &["sha"]),
    })
}

#[derive(Debug)]
struct PrEvent {
    number: u64,
    title: String,
    state: String,
    author: Option<String>,
    head_ref: Option<String>,
    base_ref: Option<String>,
    merged: bool,
    url: Option<String>,
    updated_at: DateTime<Utc>,
}

impl PrEvent {
    /// The fix-PR status an incident shows.
    fn pr_status(&self) -> &'static str {
        match (self.merged, self.state.as_str()) {
            (true, _) => "merged",
            (_, "open" | "opened" | "reopened") => "open",
            _ => "closed",
        }
    }
}

fn github_pr(body: &Value, received_at: DateTime<Utc>) -> Option<PrEvent> {
    let p = body.get("pull_request")?;
    let merged = p.get("merged").and_then(Value::as_bool).unwrap_or(false)
        || p.get("merged_at").is_some_and(|m| !m.is_null());
    let state = text(p, &["state"]).unwrap_or_else(|| "open".into());
    Some(PrEvent {
        number: number(p, &["number"]).or_else(|| number(body, &["number"]))?,
        title: text(p, &["title"]).unwrap_or_default(),
        state: if merged { "merged".into() } else { state },
        author: text(p, &["user", "login"]),
        head_ref: text(p, &["head", "ref"]),
        base_ref: text(p, &["base", "ref"]),
        merged,
        url: text(p, &["html_url"]),
        updated_at: time(p, &["updated_at"]).unwrap_or(received_at),
    })
}

fn gitlab_mr(body: &Value, received_at: DateTime<Utc>) -> Option<PrEvent> {
    let m = body.get("object_attributes")?;
    let state = text(m, &["state"]).unwrap_or_else(|| "opened".into());
    Some(PrEvent {
        number: number(m, &["iid"])?,
        title: text(m, &["title"]).unwrap_or_default(),
        merged: state == "merged",
        state,
        // The event's user is who acted; the stored author is kept once known (below).
        author: text(body, &["user", "username"]),
        head_ref: text(m, &["source_branch"]),
        base_ref: text(m, &["target_branch"]),
        url: text(m, &["url"]),
        updated_at: time(m, &["updated_at"]).unwrap_or(received_at),
    })
}

// ---- applying them ----------------------------------------------------------------------------

impl RepositoryEvents {
    /// The connections of the delivery's repository, in every org that connected it.
    async fn connections_for(
        &self,
        source: Source,
        body: &Value,
    ) -> Result<Vec<Connection>, ConnectionError> {
        match source {
            Source::Github => match text(body, &["repository", "full_name"]) {
                Some(name) => {
                    self.connections
                        .find_by_repository(RepoProvider::Github, &name)
                        .await
                }
                None => Ok(Vec::new()),
            },
            Source::Gitlab => {
                let mut found =
                    match text(body, &["project", "id"]).or_else(|| text(body, &["project_id"])) {
                        Some(id) => self.connections.find_by_project_id(&id).await?,
                        None => Vec::new(),
                    };
                if let Some(path) = text(body, &["project", "path_with_namespace"]) {
                    for c in self
                        .connections
                        .find_by_repository(RepoProvider::Gitlab, &path)
                        .await?
                    {
                        if !found.iter().any(|f| f.id == c.id) {
                            found.push(c);
                        }
                    }
                }
                Ok(found)
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn apply(
        &self,
        c: &Connection,
        kind: Kind,
        event: &Event,
        body: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectionError> {
        let received = event.envelope.received_at;
        let github = event.envelope.source == Source::Github;
        match kind {
            Kind::Run => {
                let run = if github {
                    github_run(body, received)
                } else {
                    gitlab_run(body, received)
                };
                if let Some(run) = run {
                    self.run(c, run, now).await?;
                }
            }
            Kind::Job => {
                let job = if github {
                    github_job(&event.envelope.event_type, body)
                } else {
                    gitlab_job(body)
                };
                if let Some(job) = job {
                    self.job(c, job).await?;
                }
            }
            Kind::PullRequest => {
                let pr = if github {
                    github_pr(body, received)
                } else {
                    gitlab_mr(body, received)
                };
                if let Some(pr) = pr {
                    self.pull_request(c, pr, !github).await?;
                }
            }
            Kind::Other => {}
        }
        Ok(())
    }

    async fn run(
        &self,
        c: &Connection,
        ev: RunEvent,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectionError> {
        let failed = ev.failed();
        let run = WorkflowRun {
            org_id: c.org_id.clone(),
            connection_id: c.id.clone(),
            repository_full_name: c.repository_full_name.clone(),
            run_id: ev.run_id,
            run_attempt: ev.attempt,
            name: ev.name,
            status: ev.status,
            conclusion: ev.conclusion,
            branch: ev.branch,
            sha: ev.sha,
            run_number: ev.run_number,
            url: ev.url,
            // Added to the jobs already attached (the store keeps them all).
            failed_jobs: ev.failed_jobs,
            created_at: ev.created_at,
            updated_at: ev.updated_at,
        };
        self.connections.upsert_workflow_run(&run).await?;
        if failed {
            let incident = Incident {
                id: IncidentId::generate(),
                org_id: c.org_id.clone(),
                user_id: c.user_id.clone(),
                connection_id: c.id.clone(),
                repository_full_name: c.repository_full_name.clone(),
                provider: c.provider,
                run_id: run.run_id.clone(),
                run_attempt: run.run_attempt,
                workflow: run.name.clone(),
                branch: run.branch.clone(),
                sha: run.sha.clone(),
                url: run.url.clone(),
                status: "open".into(),
                pr_status: None,
                created_at: now,
                updated_at: now,
            };
            if self.connections.create_incident_once(&incident).await? {
                tracing::info!(connection_id = %c.id, incident_id = %incident.id, run_id = %run.run_id, run_attempt = run.run_attempt, "incident opened for a failed run");
            }
        }
        Ok(())
    }

    /// The highest attempt of the run Hookline has seen (1 when none).
    async fn latest_attempt(
        &self,
        connection: &ConnectionId,
        run_id: &str,
    ) -> Result<u32, ConnectionError> {
        let mut latest = 1;
        for attempt in 2..=10 {
            if self
                .connections
                .get_workflow_run(connection, run_id, attempt)
                .await?
                .is_none()
            {
                break;
            }
            latest = attempt;
        }
        Ok(latest)
    }

    async fn job(&self, c: &Connection, job: JobFailure) -> Result<(), ConnectionError> {
        let attempt = match job.attempt {
            Some(a) => a,
            None => self.latest_attempt(&c.id, &job.run_id).await?,
        };
        // The job may come first: then this placeholder stands for the run until any event
        // about the run replaces it (the epoch is older than all of them).
        let placeholder = WorkflowRun {
            org_id: c.org_id.clone(),
            connection_id: c.id.clone(),
            repository_full_name: c.repository_full_name.clone(),
            run_id: job.run_id.clone(),
            run_attempt: attempt,
            name: job.workflow.clone().unwrap_or_else(|| "workflow".into()),
            status: "in_progress".into(),
            conclusion: None,
            branch: job.branch.clone(),
            sha: job.sha.clone(),
            run_number: None,
            url: None,
            failed_jobs: Vec::new(),
            created_at: None,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        self.connections
            .add_failed_job(&placeholder, &job.job)
            .await
    }

    async fn pull_request(
        &self,
        c: &Connection,
        ev: PrEvent,
        keep_author: bool,
    ) -> Result<(), ConnectionError> {
        let mut author = ev.author.clone();
        if keep_author {
            if let Some(stored) = self.connections.get_pull_request(&c.id, ev.number).await? {
                author = stored.author.or(author);
            }
        }
        let pr = PullRequest {
            org_id: c.org_id.clone(),
            connection_id: c.id.clone(),
            repository_full_name: c.repository_full_name.clone(),
            number: ev.number,
            title: ev.title.clone(),
            state: ev.state.clone(),
            author,
            head_ref: ev.head_ref.clone(),
            merged: ev.merged,
            url: ev.url.clone(),
            updated_at: ev.updated_at,
        };
        // An older event than the stored one says nothing new about the incident either.
        if !self.connections.upsert_pull_request(&pr).await? {
            return Ok(());
        }
        if let Some(incident) = self.linked_incident(c, &ev).await? {
            match self
                .connections
                .set_incident_pr_status(&c.org_id, &incident, ev.pr_status())
                .await
            {
                Ok(()) | Err(ConnectionError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The incident a Hookline fix PR is for: the one its head ref names, else the newest one
    /// of the branch it targets. Other PRs are linked to none.
    async fn linked_incident(
        &self,
        c: &Connection,
        ev: &PrEvent,
    ) -> Result<Option<IncidentId>, ConnectionError> {
        let Some(head) = ev.head_ref.as_deref() else {
            return Ok(None);
        };
        if let Some(rest) = head.strip_prefix(FIX_BRANCH_PREFIX) {
            let raw: String = rest
                .chars()
                .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .collect();
            if let Some(id) = IncidentId::parse(&raw) {
                return Ok(self
                    .connections
                    .get_incident(&c.org_id, &id)
                    .await?
                    .filter(|i| i.connection_id == c.id)
                    .map(|i| i.id));
            }
        }
        if !head.starts_with("hookline/") {
            return Ok(None);
        }
        let Some(base) = ev.base_ref.as_deref() else {
            return Ok(None);
        };
        Ok(self
            .connections
            .find_incident_by_branch(&c.id, base)
            .await?
            .map(|i| i.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Envelope;
    use crate::ports::connections::conformance::connection;
    use crate::ports::connections::embedded::EmbeddedConnectionStore;
    use crate::ports::sqlite::{Database, Durability};
    use crate::ports::store::embedded::EmbeddedStore;
    use serde_json::json;

    struct Fixture {
        handler: Arc<RepositoryEvents>,
        store: Arc<dyn DeliveryStore>,
        connections: Arc<dyn ConnectionStore>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let store: Arc<dyn DeliveryStore> = Arc::new(EmbeddedStore::new(db.clone()));
        let connections: Arc<dyn ConnectionStore> = Arc::new(EmbeddedConnectionStore::new(db));
        Fixture {
            handler: Arc::new(RepositoryEvents::new(store.clone(), connections.clone())),
            store,
            connections,
            _dir: dir,
        }
    }

    impl Fixture {
        async fn connect(&self, org: &str, repo: &str) -> Connection {
            let c = connection(org, repo);
            self.connections.create(&c).await.unwrap();
            c
        }

        async fn connect_gitlab(&self, org: &str, repo: &str, project_id: &str) -> Connection {
            let c = Connection {
                provider: RepoProvider::Gitlab,
                project_id: Some(project_id.into()),
                ..connection(org, repo)
            };
            self.connections.create(&c).await.unwrap();
            c
        }

        async fn handle(&self, source: Source, event_type: &str, body: &Value) -> Handled {
            self.handler
                .handle(&event(source, event_type, body), Utc::now())
                .await
                .unwrap()
        }

        async fn incidents(&self, org: &str) -> Vec<Incident> {
            self.connections
                .list_incidents(org, None, None, 100)
                .await
                .unwrap()
        }

        async fn reload(&self, c: &Connection) -> Connection {
            self.connections
                .get(&c.org_id, &c.id)
                .await
                .unwrap()
                .unwrap()
        }
    }

    fn event(source: Source, event_type: &str, body: &Value) -> Event {
        let raw = serde_json::to_vec(body).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        Event {
            envelope: Envelope::new(source, &id, event_type, Utc::now(), &raw),
            payload: Payload::Json(body.clone()),
        }
    }

    fn payload(file: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../events/payloads")
            .join(file);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The repository's failed workflow run (events/payloads), for `repo`.
    fn failed_run(repo: &str) -> Value {
        let mut body = payload("github-workflow-run-failure.json");
        body["repository"]["full_name"] = json!(repo);
        body
    }

    /// An excerpt of @octokit/webhooks-examples' `pull_request` `closed` example.
    fn pull_request(repo: &str, head: &str, merged: bool, updated_at: &str) -> Value {
        json!({
            "action": "closed",
            "number": 2,
            "pull_request": {
                "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2",
                "id": 279147437,
                "html_url": "https://github.com/Codertocat/Hello-World/pull/2",
                "number": 2,
                "state": "closed",
                "locked": false,
                "title": "Update the README with new information.",
                "user": {"login": "Codertocat", "id": 21031067, "type": "User"},
                "created_at": "2019-05-15T15:20:33Z",
                "updated_at": updated_at,
                "closed_at": updated_at,
                "merged_at": if merged { json!(updated_at) } else { Value::Null },
                "head": {"label": "Codertocat:changes", "ref": head, "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"},
                "base": {"label": "Codertocat:master", "ref": "main", "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"},
                "merged": merged,
            },
            "repository": {"id": 186853002, "name": "Hello-World", "full_name": repo},
            "sender": {"login": "Codertocat", "id": 21031067},
        })
    }

    #[tokio::test]
    async fn a_failed_workflow_run_opens_one_incident_even_when_delivered_twice() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        let body = failed_run("acme/hookline-demo");
        assert_eq!(
            f.handle(Source::Github, "workflow_run", &body).await,
            Handled::Processed
        );
        assert_eq!(
            f.handle(Source::Github, "workflow_run", &body).await,
            Handled::Processed
        );
        let incidents = f.incidents("org-a").await;
        assert_eq!(incidents.len(), 1);
        let i = &incidents[0];
        assert_eq!(i.repository_full_name, "acme/hookline-demo");
        assert_eq!(i.provider, RepoProvider::Github);
        assert_eq!(i.workflow, "CI");
        assert_eq!(i.branch.as_deref(), Some("main"));
        assert_eq!(
            i.sha.as_deref(),
            Some("6dcb09b5b57875f334f61aebed695e2e4193db5e")
        );
        assert_eq!(
            i.url.as_deref(),
            Some("https://github.com/acme/hookline-demo/actions/runs/12987654321")
        );
        assert_eq!((i.run_id.as_str(), i.run_attempt), ("12987654321", 1));
        assert_eq!((i.status.as_str(), i.pr_status.as_deref()), ("open", None));
        assert_eq!((i.org_id.as_str(), i.user_id.as_str()), ("org-a", "user-1"));

        let run = f
            .connections
            .get_workflow_run(&c.id, "12987654321", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, "completed");
        assert_eq!(run.conclusion.as_deref(), Some("failure"));
        assert_eq!(run.run_number, Some(418));
        assert_eq!(run.updated_at, timestamp("2026-01-01T00:00:00Z").unwrap());
        assert_eq!(run.created_at, timestamp("2025-12-31T23:58:50Z"));

        // Both deliveries were counted and stored as activities.
        let c = f.reload(&c).await;
        assert_eq!(c.total_deliveries, 2);
        assert_eq!(c.failed_deliveries, 0);
        assert!(c.webhook_last_delivery_at.is_some());
        assert_eq!(f.store.list_activities(10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_deliveries_of_a_failed_run_open_one_incident() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        let body = failed_run("acme/hookline-demo");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let handler = f.handler.clone();
                let e = event(Source::Github, "workflow_run", &body);
                tokio::spawn(async move { handler.handle(&e, Utc::now()).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Handled::Processed);
        }
        assert_eq!(f.incidents("org-a").await.len(), 1);
    }

    #[tokio::test]
    async fn every_org_that_connected_the_repository_gets_its_incident() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        f.connect("org-b", "Acme/Hookline-Demo").await;
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;
        assert_eq!(f.incidents("org-a").await.len(), 1);
        assert_eq!(f.incidents("org-b").await.len(), 1);
    }

    #[tokio::test]
    async fn a_successful_run_opens_none_and_a_rerun_attempt_opens_another() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        let mut ok = failed_run("acme/hookline-demo");
        ok["workflow_run"]["conclusion"] = json!("success");
        f.handle(Source::Github, "workflow_run", &ok).await;
        assert!(f.incidents("org-a").await.is_empty());
        let run = f
            .connections
            .get_workflow_run(&c.id, "12987654321", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.conclusion.as_deref(), Some("success"));

        let mut second = failed_run("acme/hookline-demo");
        second["workflow_run"]["run_attempt"] = json!(2);
        f.handle(Source::Github, "workflow_run", &second).await;
        let incidents = f.incidents("org-a").await;
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].run_attempt, 2);
    }

    #[tokio::test]
    async fn an_older_run_event_does_not_overwrite_a_newer_one() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;
        let mut older = failed_run("acme/hookline-demo");
        older["action"] = json!("in_progress");
        older["workflow_run"]["status"] = json!("in_progress");
        older["workflow_run"]["conclusion"] = Value::Null;
        older["workflow_run"]["updated_at"] = json!("2025-12-31T23:59:00Z");
        f.handle(Source::Github, "workflow_run", &older).await;
        let run = f
            .connections
            .get_workflow_run(&c.id, "12987654321", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, "completed");
        assert_eq!(run.conclusion.as_deref(), Some("failure"));
        assert_eq!(f.incidents("org-a").await.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_gitlab_pipeline_opens_an_incident_with_its_failed_jobs() {
        let f = fixture();
        // Connected by project id under another name (renamed since): still found.
        let c = f.connect_gitlab("org-a", "acme/old-name", "60123456").await;
        let body = payload("gitlab-pipeline.json");
        assert_eq!(
            f.handle(Source::Gitlab, "pipeline", &body).await,
            Handled::Processed
        );
        f.handle(Source::Gitlab, "pipeline", &body).await;
        let incidents = f.incidents("org-a").await;
        assert_eq!(incidents.len(), 1);
        let i = &incidents[0];
        assert_eq!(i.provider, RepoProvider::Gitlab);
        assert_eq!(i.run_id, "1604523417");
        assert_eq!(i.branch.as_deref(), Some("main"));
        assert_eq!(
            i.url.as_deref(),
            Some("https://gitlab.com/acme/hookline-demo/-/pipelines/1604523417")
        );
        let run = f
            .connections
            .get_workflow_run(&c.id, "1604523417", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (run.status.as_str(), run.conclusion.as_deref()),
            ("completed", Some("failure"))
        );
        assert_eq!(run.failed_jobs, vec!["cargo-test".to_string()]);
        assert_eq!(run.run_number, Some(212));
        assert_eq!(run.name, "pipeline");

        // A running pipeline is no incident; by path, without a project id.
        let other = f.connect_gitlab("org-b", "acme/hookline-demo", "1").await;
        let mut running = body.clone();
        running["object_attributes"]["id"] = json!(1604523999u64);
        running["object_attributes"]["status"] = json!("running");
        f.handle(Source::Gitlab, "pipeline", &running).await;
        let run = f
            .connections
            .get_workflow_run(&other.id, "1604523999", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((run.status.as_str(), run.conclusion), ("in_progress", None));
        assert!(f.incidents("org-b").await.is_empty());
        assert_eq!(f.incidents("org-a").await.len(), 1);
    }

    #[tokio::test]
    async fn failed_jobs_attach_to_their_run_whichever_comes_first() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        // An excerpt of @octokit/webhooks-examples' failed `workflow_job` (CodeQL linters).
        let job = json!({
            "action": "completed",
            "workflow_job": {
                "id": 6053734069u64, "run_id": 12987654321u64, "run_attempt": 1,
                "workflow_name": "CI", "head_branch": "main",
                "head_sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "html_url": "https://github.com/acme/hookline-demo/actions/runs/12987654321/job/6053734069",
                "status": "completed", "conclusion": "failure", "name": "linters",
                "started_at": "2025-12-31T23:59:00Z", "completed_at": "2025-12-31T23:59:40Z"
            },
            "repository": {"full_name": "acme/hookline-demo"},
            "sender": {"login": "octocat"}
        });
        f.handle(Source::Github, "workflow_job", &job).await;
        let placeholder = f
            .connections
            .get_workflow_run(&c.id, "12987654321", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(placeholder.failed_jobs, vec!["linters".to_string()]);
        assert_eq!(placeholder.name, "CI");

        // The run's own event replaces the placeholder and keeps the job.
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;
        // A check run of the same run (Actions check runs name it in their details URL).
        let check = json!({
            "action": "completed",
            "check_run": {
                "id": 128620228, "name": "test", "head_sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "details_url": "https://github.com/acme/hookline-demo/actions/runs/12987654321/job/6053734070",
                "html_url": "https://github.com/acme/hookline-demo/runs/128620228",
                "status": "completed", "conclusion": "failure",
                "check_suite": {"id": 118578147, "head_branch": "main"}
            },
            "repository": {"full_name": "acme/hookline-demo"},
            "sender": {"login": "octocat"}
        });
        f.handle(Source::Github, "check_run", &check).await;
        f.handle(Source::Github, "check_run", &check).await;
        let run = f
            .connections
            .get_workflow_run(&c.id, "12987654321", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.failed_jobs, vec!["linters".to_string(), "test".into()]);
        assert_eq!(run.conclusion.as_deref(), Some("failure"));
        assert_eq!(run.updated_at, timestamp("2026-01-01T00:00:00Z").unwrap());

        // A successful job attaches nothing.
        let mut ok = job.clone();
        ok["workflow_job"]["conclusion"] = json!("success");
        ok["workflow_job"]["name"] = json!("build");
        f.handle(Source::Github, "workflow_job", &ok).await;
        let run = f
            .connections
            .get_workflow_run(&c.id, "12987654321", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.failed_jobs.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_gitlab_job_attaches_to_its_pipeline() {
        let f = fixture();
        let c = f
            .connect_gitlab("org-a", "acme/hookline-demo", "60123456")
            .await;
        f.handle(Source::Gitlab, "pipeline", &payload("gitlab-pipeline.json"))
            .await;
        let job = json!({
            "object_kind": "build", "ref": "main", "tag": false,
            "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2",
            "build_id": 8765432102u64, "build_name": "clippy", "build_stage": "test",
            "build_status": "failed", "build_allow_failure": false,
            "pipeline_id": 1604523417u64, "project_id": 60123456,
            "project_name": "acme / hookline-demo",
            "user": {"id": 1234567, "username": "sasha"},
            "project": {"id": 60123456, "path_with_namespace": "acme/hookline-demo"}
        });
        f.handle(Source::Gitlab, "build", &job).await;
        let run = f
            .connections
            .get_workflow_run(&c.id, "1604523417", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            run.failed_jobs,
            vec!["cargo-test".to_string(), "clippy".into()]
        );
    }

    #[tokio::test]
    async fn a_hookline_fix_pr_updates_its_incident() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;
        let incident = f.incidents("org-a").await.remove(0);
        let head = fix_branch(&incident.id);

        let mut opened = pull_request("acme/hookline-demo", &head, false, "2026-01-01T01:00:00Z");
        opened["action"] = json!("opened");
        opened["pull_request"]["state"] = json!("open");
        f.handle(Source::Github, "pull_request", &opened).await;
        let i = f.incidents("org-a").await.remove(0);
        assert_eq!(i.pr_status.as_deref(), Some("open"));

        let merged = pull_request("acme/hookline-demo", &head, true, "2026-01-01T02:00:00Z");
        f.handle(Source::Github, "pull_request", &merged).await;
        let i = f.incidents("org-a").await.remove(0);
        assert_eq!(i.pr_status.as_deref(), Some("merged"));
        let pr = f
            .connections
            .get_pull_request(&c.id, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pr.title, "Update the README with new information.");
        assert_eq!(pr.state, "merged");
        assert!(pr.merged);
        assert_eq!(pr.author.as_deref(), Some("Codertocat"));
        assert_eq!(pr.head_ref.as_deref(), Some(head.as_str()));
        assert_eq!(
            pr.url.as_deref(),
            Some("https://github.com/Codertocat/Hello-World/pull/2")
        );

        // A late, older event changes neither the PR nor the incident.
        f.handle(Source::Github, "pull_request", &opened).await;
        let i = f.incidents("org-a").await.remove(0);
        assert_eq!(i.pr_status.as_deref(), Some("merged"));

        // Another org's incident id in a head ref is not this repository's.
        let other = f.connect("org-b", "acme/other").await;
        let mut foreign = pull_request("acme/other", &head, false, "2026-01-01T03:00:00Z");
        foreign["pull_request"]["number"] = json!(9);
        f.handle(Source::Github, "pull_request", &foreign).await;
        assert!(f
            .connections
            .get_pull_request(&other.id, 9)
            .await
            .unwrap()
            .is_some());
        let i = f.incidents("org-a").await.remove(0);
        assert_eq!(i.pr_status.as_deref(), Some("merged"));
    }

    #[tokio::test]
    async fn an_ordinary_pr_is_stored_but_touches_no_incident() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;
        // Its head is the failing branch itself: still not a Hookline PR.
        let pr = pull_request("acme/hookline-demo", "main", false, "2026-01-01T01:00:00Z");
        f.handle(Source::Github, "pull_request", &pr).await;
        assert!(f
            .connections
            .get_pull_request(&c.id, 2)
            .await
            .unwrap()
            .is_some());
        assert_eq!(f.incidents("org-a").await[0].pr_status, None);

        // A Hookline branch without an id links to the newest incident of its base branch.
        let mut hookline = pull_request(
            "acme/hookline-demo",
            "hookline/retry-ci",
            false,
            "2026-01-01T02:00:00Z",
        );
        hookline["pull_request"]["number"] = json!(3);
        f.handle(Source::Github, "pull_request", &hookline).await;
        assert_eq!(
            f.incidents("org-a").await[0].pr_status.as_deref(),
            Some("closed")
        );
    }

    #[tokio::test]
    async fn a_gitlab_merge_request_updates_its_incident() {
        let f = fixture();
        let c = f
            .connect_gitlab("org-a", "acme/hookline-demo", "60123456")
            .await;
        f.handle(Source::Gitlab, "pipeline", &payload("gitlab-pipeline.json"))
            .await;
        let incident = f.incidents("org-a").await.remove(0);
        let mr = json!({
            "object_kind": "merge_request", "event_type": "merge_request",
            "user": {"id": 1, "name": "Sasha Developer", "username": "sasha"},
            "project": {"id": 60123456, "path_with_namespace": "acme/hookline-demo"},
            "object_attributes": {
                "id": 99, "iid": 7, "title": "Fix the enqueue retry",
                "source_branch": fix_branch(&incident.id), "target_branch": "main",
                "state": "merged", "action": "merge",
                "updated_at": "2026-01-01 02:00:00 UTC",
                "url": "https://gitlab.com/acme/hookline-demo/-/merge_requests/7"
            }
        });
        f.handle(Source::Gitlab, "merge_request", &mr).await;
        let pr = f
            .connections
            .get_pull_request(&c.id, 7)
            .await
            .unwrap()
            .unwrap();
        assert!(pr.merged);
        assert_eq!(pr.author.as_deref(), Some("sasha"));
        assert_eq!(
            f.incidents("org-a").await[0].pr_status.as_deref(),
            Some("merged")
        );
    }

    #[tokio::test]
    async fn a_disabled_connection_skips_and_an_unconnected_repository_is_only_an_activity() {
        let f = fixture();
        let mut c = f.connect("org-a", "acme/hookline-demo").await;
        c.is_enabled = false;
        f.connections.update(&c).await.unwrap();
        assert_eq!(
            f.handle(
                Source::Github,
                "workflow_run",
                &failed_run("acme/hookline-demo")
            )
            .await,
            Handled::Skipped("connection disabled".into())
        );
        assert!(f.incidents("org-a").await.is_empty());
        assert!(f
            .connections
            .get_workflow_run(&c.id, "12987654321", 1)
            .await
            .unwrap()
            .is_none());
        // The delivery still counts: the hook is there and delivering.
        assert_eq!(f.reload(&c).await.total_deliveries, 1);

        assert_eq!(
            f.handle(Source::Github, "workflow_run", &failed_run("someone/else"))
                .await,
            Handled::Processed
        );
        let activities = f.store.list_activities(10).await.unwrap();
        assert_eq!(activities.len(), 1);
        assert_eq!(activities[0].repository.as_deref(), Some("someone/else"));
    }

    #[tokio::test]
    async fn a_push_keeps_its_range_and_commit_count() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        let mut body = payload("github-push.json");
        body["repository"]["full_name"] = json!("acme/hookline-demo");
        f.handle(Source::Github, "push", &body).await;
        let a = f.store.list_activities(1).await.unwrap().remove(0);
        let before = body["before"].as_str().unwrap();
        let after = body["after"].as_str().unwrap();
        let n = body["commits"].as_array().unwrap().len();
        assert_eq!(
            a.action.unwrap(),
            format!(
                "{}..{} ({n} commit{})",
                &before[..12],
                &after[..12],
                if n == 1 { "" } else { "s" }
            )
        );
        assert_eq!(a.git_ref, body["ref"].as_str().map(String::from));
        assert_eq!(f.reload(&c).await.total_deliveries, 1);

        let gitlab = json!({"object_kind": "push", "before": "a".repeat(40), "after": "b".repeat(40),
            "ref": "refs/heads/main", "total_commits_count": 31, "commits": [],
            "user_username": "sasha", "project": {"id": 5, "path_with_namespace": "g/p"}});
        assert_eq!(
            push_summary(&gitlab).unwrap(),
            "aaaaaaaaaaaa..bbbbbbbbbbbb (31 commits)"
        );
    }

    #[test]
    fn actions_urls_name_their_run() {
        assert_eq!(
            run_in_url("https://github.com/o/r/actions/runs/42/job/7"),
            Some(("42".into(), None))
        );
        assert_eq!(
            run_in_url("https://github.com/o/r/actions/runs/42/attempts/3"),
            Some(("42".into(), Some(3)))
        );
        assert_eq!(run_in_url("https://octocoders.io"), None);
        assert_eq!(gitlab_status("failed").1.as_deref(), Some("failure"));
        assert_eq!(gitlab_status("canceled").1.as_deref(), Some("cancelled"));
        assert_eq!(gitlab_status("pending").0, "queued");
    }
}
