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
//!
//! With an [`EventSink`] ([`RepositoryEvents::with_events`]) the handler also publishes into
//! each enabled connection's org stream: the delivery itself as `{source}.{event}` (the relay,
//! see [`relay_type`]), `incident.created` when a run opens an incident and `incident.resolved`
//! when a later run of the same workflow on the same branch succeeds. Every id is derived from
//! its cause, so a redelivered or redone delivery publishes nothing new; a publish failure
//! fails the delivery so the queue retries it.

use super::activity::{normalise, timestamp};
use super::payload::paths;
use super::{Event, FieldPath, Handled, Handler, JsonBody, Payload, WorkerError};
use crate::api::incidents::IncidentView;
use crate::connections::{
    Connection, ConnectionId, Incident, IncidentId, PullRequest, RepoProvider, WorkflowRun,
};
use crate::model::{Activity, Envelope, Source};
use crate::outbound::model::{valid_event_type, EventData, EventId};
use crate::outbound::sink::EventSink;
use crate::ports::connections::{ConnectionError, ConnectionStore, MAX_PAGE};
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

/// A relayed payload larger than this is replaced by a stub naming the delivery, so the
/// outbound event stays far below the store's item limit (DynamoDB's is 400 KB).
pub const MAX_RELAYED_PAYLOAD: usize = 256 * 1024;

pub struct RepositoryEvents {
    store: Arc<dyn DeliveryStore>,
    connections: Arc<dyn ConnectionStore>,
    events: Option<Arc<dyn EventSink>>,
    /// Counts each delivery in its orgs' monthly usage (never refused for a plan).
    usage: Option<Arc<dyn crate::billing::plan::PlanGate>>,
}

impl RepositoryEvents {
    pub fn new(store: Arc<dyn DeliveryStore>, connections: Arc<dyn ConnectionStore>) -> Self {
        Self {
            store,
            connections,
            events: None,
            usage: None,
        }
    }

    /// Also count each delivery in its orgs' usage (entitlements show it).
    pub fn with_usage(mut self, plans: Arc<dyn crate::billing::plan::PlanGate>) -> Self {
        self.usage = Some(plans);
        self
    }

    /// Also publish relayed deliveries and incidents into each org's outbound stream.
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    async fn publish(
        &self,
        org_id: &str,
        event_type: &str,
        id: EventId,
        data: EventData,
    ) -> Result<(), WorkerError> {
        let Some(sink) = &self.events else {
            return Ok(());
        };
        sink.publish_own(org_id, event_type, id.clone(), data)
            .await
            .map_err(|e| {
                WorkerError::Handler(format!(
                    "could not publish {event_type} {id} for org {org_id}: {e}"
                ))
            })
    }
}

/// The outbound event type a relayed delivery takes: `{source}.{event}`, `None` when the
/// provider's event name cannot make one (it is then not relayed).
///
/// GitHub's event is its `X-GitHub-Event` name as is (`github.workflow_run`,
/// `github.pull_request`). GitLab's is the payload's `object_kind` the intake keeps
/// (`gitlab.pipeline`, `gitlab.push`, `gitlab.tag_push`, `gitlab.merge_request`,
/// `gitlab.build` for jobs, `gitlab.note`, `gitlab.issue`); a body without one is named by
/// its `X-Gitlab-Event` header, folded the same way (`Pipeline Hook` → `pipeline`,
/// `Job Hook` → `build`).
pub fn relay_type(source: Source, event_type: &str) -> Option<String> {
    let name = match source {
        Source::Github => event_type.trim().to_owned(),
        Source::Gitlab => {
            let lower = event_type.trim().to_ascii_lowercase();
            let folded = lower
                .strip_suffix(" hook")
                .unwrap_or(&lower)
                .trim()
                .replace([' ', '-'], "_");
            match folded.as_str() {
                "job" => "build".to_owned(),
                _ => folded,
            }
        }
        _ => return None,
    };
    let full = format!("{}.{name}", source.as_str());
    (!name.is_empty() && !name.contains('.') && valid_event_type(&full)).then_some(full)
}

/// The size of the delivery's body as the provider sent it.
fn raw_size(event: &Event) -> usize {
    if event.envelope.body_base64 {
        event.envelope.raw_body().map(|b| b.len()).unwrap_or(0)
    } else {
        event.envelope.body.len()
    }
}

/// The id of the incident a run attempt opens: derived from (connection, run, attempt), so a
/// redo that finds it already created can read it back.
fn incident_id(connection: &ConnectionId, run_id: &str, attempt: u32) -> IncidentId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(connection.as_str())
        .chain_update([0u8])
        .chain_update(run_id)
        .chain_update([0u8])
        .chain_update(attempt.to_string())
        .finalize();
    IncidentId::parse(&format!(
        "{}{}",
        IncidentId::PREFIX,
        hex::encode(&digest[..16])
    ))
    .expect("a prefix and hex digits make an incident id")
}

/// An incident as its events carry it: the API's view of it.
fn incident_data(incident: &Incident) -> Value {
    serde_json::to_value(IncidentView::from(incident)).unwrap_or(Value::Null)
}

fn store_error(e: ConnectionError) -> WorkerError {
    if matches!(
        e,
        ConnectionError::Unavailable(_) | ConnectionError::Corrupt { .. }
    ) {
        crate::telemetry::store_error();
    }
    WorkerError::Handler(e.to_string())
}

#[async_trait]
impl Handler for RepositoryEvents {
    async fn handle(&self, event: &Event, now: DateTime<Utc>) -> Result<Handled, WorkerError> {
        let activity = activity(event, now);
        let json = match &event.payload {
            Payload::Json(json) => json,
            Payload::Form(_) => {
                self.store.put_activity(&activity).await?;
                return Ok(Handled::Processed);
            }
        };
        let connections = self
            .connections_for(event.envelope.source, json)
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
            let mut relayed: Vec<&str> = Vec::new();
            for c in enabled {
                // Once per org, however many of its connections the delivery matched.
                if !relayed.contains(&c.org_id.as_str()) {
                    self.relay(&c.org_id, event, json).await?;
                    relayed.push(&c.org_id);
                }
                self.apply(c, kind, event, json, now).await?;
            }
            Handled::Processed
        };
        // Only the delivery's owner's connection hears of it below: the repository may be
        // connected by other orgs too, each with its own hook sending its own deliveries.
        let owned: Vec<&Connection> = match &event.owner {
            Some(owner) => connections
                .iter()
                .filter(|c| {
                    c.org_id == owner.org_id
                        && owner.connection_id.as_deref() == Some(c.id.as_str())
                })
                .collect(),
            None => Vec::new(),
        };
        // GitLab marks its test push no differently from a real one: every push counts as the
        // ping (either way it proves the hook delivers).
        if event.envelope.source == Source::Gitlab && event.envelope.event_type == "push" {
            for c in &owned {
                self.ping_arrived(c, event.envelope.received_at).await?;
            }
        }
        // A retry or a replay is not a new delivery: counted once, on the first attempt.
        if event.attempt > 1 {
            return Ok(outcome);
        }
        // Counted last: everything above is idempotent, the counter is not. A delivery nobody
        // owns (a hook set up by hand with the global secret) counts for every org whose
        // connection it matched, as before.
        let counted_for: Vec<&Connection> = match &event.owner {
            Some(_) => owned,
            None => connections.iter().collect(),
        };
        for c in &counted_for {
            match self.connections.record_delivery(&c.id, now, false).await {
                Ok(()) | Err(ConnectionError::NotFound) => {}
                Err(e) => {
                    tracing::warn!(connection_id = %c.id, error = %e, "could not count a delivery for a connection");
                }
            }
        }
        if let Some(usage) = &self.usage {
            let mut counted: Vec<&str> = Vec::new();
            for c in &counted_for {
                if !counted.contains(&c.org_id.as_str()) {
                    usage.count_inbound(&c.org_id).await;
                    counted.push(&c.org_id);
                }
            }
        }
        Ok(outcome)
    }

    fn fields(&self, envelope: &Envelope) -> Vec<FieldPath> {
        fields(envelope)
    }
}

/// What [`RepositoryEvents`] reads of a delivery before it knows the repository is connected.
fn fields(envelope: &Envelope) -> Vec<FieldPath> {
    let mut fields = super::activity::fields(envelope);
    fields.extend(paths(LOOKUP));
    if matches!(envelope.event_type.as_str(), "push" | "tag_push") {
        fields.extend(paths(PUSH_SUMMARY));
    }
    if envelope.source == Source::Github {
        fields.extend(paths(match envelope.event_type.as_str() {
            "workflow_run" => GITHUB_RUN,
            "workflow_job" => GITHUB_WORKFLOW_JOB,
            "check_run" => GITHUB_CHECK_RUN,
            "pull_request" => GITHUB_PR,
            _ => &[],
        }));
    }
    fields
}

/// The fields that find a delivery's connections ([`RepositoryEvents::connections_for`]).
const LOOKUP: &[&[&str]] = &[
    &["repository", "full_name"],
    &["project", "id"],
    &["project_id"],
    &["project", "path_with_namespace"],
];

/// The fields a push's summary reads ([`push_summary`]).
const PUSH_SUMMARY: &[&[&str]] = &[
    &["before"],
    &["after"],
    &["total_commits_count"],
    &["commits"],
];

/// What [`github_run`] reads.
const GITHUB_RUN: &[&[&str]] = &[
    &["workflow_run", "id"],
    &["workflow_run", "run_attempt"],
    &["workflow_run", "name"],
    &["workflow", "name"],
    &["workflow_run", "status"],
    &["workflow_run", "conclusion"],
    &["workflow_run", "head_branch"],
    &["workflow_run", "head_sha"],
    &["workflow_run", "run_number"],
    &["workflow_run", "html_url"],
    &["workflow_run", "created_at"],
    &["workflow_run", "updated_at"],
];

/// What [`github_job`] reads of a `workflow_job`.
const GITHUB_WORKFLOW_JOB: &[&[&str]] = &[
    &["workflow_job", "conclusion"],
    &["workflow_job", "run_id"],
    &["workflow_job", "run_attempt"],
    &["workflow_job", "name"],
    &["workflow_job", "workflow_name"],
    &["workflow_job", "head_branch"],
    &["workflow_job", "head_sha"],
];

/// What [`github_job`] reads of a `check_run`.
const GITHUB_CHECK_RUN: &[&[&str]] = &[
    &["check_run", "conclusion"],
    &["check_run", "details_url"],
    &["check_run", "html_url"],
    &["check_run", "name"],
    &["check_run", "check_suite", "head_branch"],
    &["check_run", "head_sha"],
];

/// What [`github_pr`] reads.
const GITHUB_PR: &[&[&str]] = &[
    &["pull_request"],
    &["pull_request", "merged"],
    &["pull_request", "merged_at"],
    &["pull_request", "state"],
    &["pull_request", "number"],
    &["number"],
    &["pull_request", "title"],
    &["pull_request", "user", "login"],
    &["pull_request", "head", "ref"],
    &["pull_request", "base", "ref"],
    &["pull_request", "html_url"],
    &["pull_request", "updated_at"],
];

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

fn push_summary(body: &JsonBody) -> Option<String> {
    let before = text(body, &["before"])?;
    let after = text(body, &["after"])?;
    let count = number(body, &["total_commits_count"])
        .or_else(|| body.len_at(&["commits"]).map(|n| n as u64))
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

/// A body the payload readers below read from: a built document (GitLab's, whose readers
/// walk arrays of any length), or GitHub's fields picked in the worker's one pass, so a
/// connected repository's 17 KB run is read without building it (building and dropping
/// it was a fifth of the server's CPU on that path).
trait Fields {
    /// A non-empty string, or a number as its text.
    fn text(&self, path: &[&str]) -> Option<String>;
    fn flag(&self, path: &[&str]) -> Option<bool>;
    /// Whether `path` holds anything, `null` included.
    fn present(&self, path: &[&str]) -> bool;
    /// Whether `path` holds a value other than `null`.
    fn non_null(&self, path: &[&str]) -> bool;
}

impl Fields for Value {
    fn text(&self, path: &[&str]) -> Option<String> {
        match at(self, path)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn flag(&self, path: &[&str]) -> Option<bool> {
        at(self, path)?.as_bool()
    }

    fn present(&self, path: &[&str]) -> bool {
        at(self, path).is_some()
    }

    fn non_null(&self, path: &[&str]) -> bool {
        at(self, path).is_some_and(|v| !v.is_null())
    }
}

impl Fields for JsonBody {
    fn text(&self, path: &[&str]) -> Option<String> {
        JsonBody::text(self, path)
    }

    fn flag(&self, path: &[&str]) -> Option<bool> {
        self.bool_at(path)
    }

    fn present(&self, path: &[&str]) -> bool {
        JsonBody::present(self, path)
    }

    fn non_null(&self, path: &[&str]) -> bool {
        JsonBody::non_null(self, path)
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, p| cur.get(p))
}

/// A non-empty string (numbers as their text).
fn text(v: &impl Fields, path: &[&str]) -> Option<String> {
    v.text(path)
}

/// A whole number that is not negative, or a string of one.
fn number(v: &impl Fields, path: &[&str]) -> Option<u64> {
    v.text(path)?.parse().ok()
}

fn time(v: &impl Fields, path: &[&str]) -> Option<DateTime<Utc>> {
    timestamp(&text(v, path)?)
}

/// One CI run's state as a provider reports it.
#[derive(Debug, PartialEq)]
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

    fn succeeded(&self) -> bool {
        self.status == "completed" && self.conclusion.as_deref() == Some("success")
    }
}

/// Reads only [`GITHUB_RUN`].
fn github_run(body: &impl Fields, received_at: DateTime<Utc>) -> Option<RunEvent> {
    const R: &str = "workflow_run";
    Some(RunEvent {
        run_id: text(body, &[R, "id"])?,
        attempt: number(body, &[R, "run_attempt"]).unwrap_or(1).max(1) as u32,
        name: text(body, &[R, "name"])
            .or_else(|| text(body, &["workflow", "name"]))
            .unwrap_or_else(|| "workflow".into()),
        status: text(body, &[R, "status"]).unwrap_or_else(|| "queued".into()),
        conclusion: text(body, &[R, "conclusion"]),
        branch: text(body, &[R, "head_branch"]),
        sha: text(body, &[R, "head_sha"]),
        run_number: number(body, &[R, "run_number"]),
        url: text(body, &[R, "html_url"]),
        failed_jobs: Vec::new(),
        created_at: time(body, &[R, "created_at"]),
        updated_at: time(body, &[R, "updated_at"])
            .or_else(|| time(body, &[R, "created_at"]))
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
                    text(*b, &["status"]).as_deref() == Some("failed")
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
#[derive(Debug, PartialEq)]
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

/// Reads only [`GITHUB_WORKFLOW_JOB`] or [`GITHUB_CHECK_RUN`].
fn github_job(event_type: &str, body: &impl Fields) -> Option<JobFailure> {
    match event_type {
        "workflow_job" => {
            const J: &str = "workflow_job";
            if !FAILED.contains(&text(body, &[J, "conclusion"])?.as_str()) {
                return None;
            }
            Some(JobFailure {
                run_id: text(body, &[J, "run_id"])?,
                attempt: number(body, &[J, "run_attempt"]).map(|a| a.max(1) as u32),
                job: text(body, &[J, "name"])?,
                workflow: text(body, &[J, "workflow_name"]),
                branch: text(body, &[J, "head_branch"]),
                sha: text(body, &[J, "head_sha"]),
            })
        }
        "check_run" => {
            const C: &str = "check_run";
            if !FAILED.contains(&text(body, &[C, "conclusion"])?.as_str()) {
                return None;
            }
            // Only an Actions check run belongs to a workflow run; its URLs name the run.
            let (run_id, attempt) = ["details_url", "html_url"]
                .iter()
                .find_map(|k| run_in_url(&text(body, &[C, k])?))?;
            Some(JobFailure {
                run_id,
                attempt,
                job: text(body, &[C, "name"])?,
                workflow: None,
                branch: text(body, &[C, "check_suite", "head_branch"]),
                sha: text(body, &[C, "head_sha"]),
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

#[derive(Debug, PartialEq)]
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

/// Reads only [`GITHUB_PR`].
fn github_pr(body: &impl Fields, received_at: DateTime<Utc>) -> Option<PrEvent> {
    const P: &str = "pull_request";
    if !body.present(&[P]) {
        return None;
    }
    let merged = body.flag(&[P, "merged"]).unwrap_or(false) || body.non_null(&[P, "merged_at"]);
    let state = text(body, &[P, "state"]).unwrap_or_else(|| "open".into());
    Some(PrEvent {
        number: number(body, &[P, "number"]).or_else(|| number(body, &["number"]))?,
        title: text(body, &[P, "title"]).unwrap_or_default(),
        state: if merged { "merged".into() } else { state },
        author: text(body, &[P, "user", "login"]),
        head_ref: text(body, &[P, "head", "ref"]),
        base_ref: text(body, &[P, "base", "ref"]),
        merged,
        url: text(body, &[P, "html_url"]),
        updated_at: time(body, &[P, "updated_at"]).unwrap_or(received_at),
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

// ---- pings ------------------------------------------------------------------------------------

/// GitHub's `ping` for a connected repository's hook: recorded on the connection (its status
/// then shows the ping arrived), and in the log as skipped, as every ping is.
pub struct RecordPing {
    connections: Arc<dyn ConnectionStore>,
}

impl RecordPing {
    pub fn new(connections: Arc<dyn ConnectionStore>) -> Self {
        Self { connections }
    }
}

#[async_trait]
impl Handler for RecordPing {
    async fn handle(&self, event: &Event, _now: DateTime<Utc>) -> Result<Handled, WorkerError> {
        if let Payload::Json(body) = &event.payload {
            if let Some(name) = body.text(&["repository", "full_name"]) {
                let hook_id = body.text(&["hook_id"]);
                let found = self
                    .connections
                    .find_by_repository(RepoProvider::Github, &name)
                    .await
                    .map_err(store_error)?;
                // Another hook on the same repository (one made by hand) is not this one's.
                for c in found.iter().filter(|c| {
                    hook_id.is_none() || c.webhook_id.is_none() || c.webhook_id == hook_id
                }) {
                    record_ping(self.connections.as_ref(), c, event.envelope.received_at).await?;
                }
            }
        }
        Ok(Handled::Skipped(
            "ping: the hook is set up; nothing to process".into(),
        ))
    }

    fn fields(&self, _: &Envelope) -> Vec<FieldPath> {
        paths(&[&["repository", "full_name"], &["hook_id"]])
    }
}

async fn record_ping(
    connections: &dyn ConnectionStore,
    c: &Connection,
    at: DateTime<Utc>,
) -> Result<(), WorkerError> {
    match connections.record_ping(&c.id, at).await {
        Ok(()) => {
            tracing::info!(connection_id = %c.id, repository = %c.repository_full_name, "the hook's ping arrived");
            Ok(())
        }
        Err(ConnectionError::NotFound) => Ok(()),
        Err(e) => Err(store_error(e)),
    }
}

// ---- applying them ----------------------------------------------------------------------------

impl RepositoryEvents {
    async fn ping_arrived(&self, c: &Connection, at: DateTime<Utc>) -> Result<(), WorkerError> {
        record_ping(self.connections.as_ref(), c, at).await
    }

    /// The connections of the delivery's repository, in every org that connected it.
    async fn connections_for(
        &self,
        source: Source,
        body: &JsonBody,
    ) -> Result<Vec<Connection>, ConnectionError> {
        match source {
            Source::Github => match body.text(&["repository", "full_name"]) {
                Some(name) => {
                    self.connections
                        .find_by_repository(RepoProvider::Github, &name)
                        .await
                }
                None => Ok(Vec::new()),
            },
            Source::Gitlab => {
                let mut found = match body
                    .text(&["project", "id"])
                    .or_else(|| body.text(&["project_id"]))
                {
                    Some(id) => self.connections.find_by_project_id(&id).await?,
                    None => Vec::new(),
                };
                if let Some(path) = body.text(&["project", "path_with_namespace"]) {
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

    /// Publish the delivery into the org's stream as `{source}.{event}`, with the provider's
    /// payload as its data.
    async fn relay(&self, org_id: &str, event: &Event, body: &JsonBody) -> Result<(), WorkerError> {
        if self.events.is_none() {
            return Ok(());
        }
        let envelope = &event.envelope;
        let Some(event_type) = relay_type(envelope.source, &envelope.event_type) else {
            tracing::debug!(source = %envelope.source, delivery_id = %envelope.delivery_id, "no outbound event type for this delivery; not relayed");
            return Ok(());
        };
        let size = raw_size(event);
        let data = if size > MAX_RELAYED_PAYLOAD {
            serde_json::json!({"truncated": true, "delivery_id": envelope.delivery_id, "size": size})
                .into()
        } else {
            // The provider's bytes as they came, not a document written out again.
            body.event_data()
        };
        let cause = format!(
            "{org_id}\0{}\0{}",
            envelope.source.as_str(),
            envelope.delivery_id
        );
        self.publish(org_id, &event_type, EventId::derived("relay", &cause), data)
            .await
    }

    async fn apply(
        &self,
        c: &Connection,
        kind: Kind,
        event: &Event,
        json: &JsonBody,
        now: DateTime<Utc>,
    ) -> Result<(), WorkerError> {
        // GitHub's are read from the fields picked in the one pass (`fields`); GitLab's walk
        // arrays of builds, so they read the whole document, built once.
        let github = event.envelope.source == Source::Github;
        let received = event.envelope.received_at;
        match kind {
            Kind::Run => {
                let run = if github {
                    github_run(json, received)
                } else {
                    gitlab_run(json.document(), received)
                };
                if let Some(run) = run {
                    self.run(c, run, now).await?;
                }
            }
            Kind::Job => {
                let job = if github {
                    github_job(&event.envelope.event_type, json)
                } else {
                    gitlab_job(json.document())
                };
                if let Some(job) = job {
                    self.job(c, job).await.map_err(store_error)?;
                }
            }
            Kind::PullRequest => {
                let pr = if github {
                    github_pr(json, received)
                } else {
                    gitlab_mr(json.document(), received)
                };
                if let Some(pr) = pr {
                    self.pull_request(c, pr, !github)
                        .await
                        .map_err(store_error)?;
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
    ) -> Result<(), WorkerError> {
        let failed = ev.failed();
        let succeeded = ev.succeeded();
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
        self.connections
            .upsert_workflow_run(&run)
            .await
            .map_err(store_error)?;
        if failed {
            self.open_incident(c, &run, now).await?;
        } else if succeeded {
            self.resolve_incidents(c, &run, now).await?;
        }
        Ok(())
    }

    /// Open the run attempt's incident (once) and publish `incident.created` — also when a
    /// previous try opened it and then failed before publishing.
    async fn open_incident(
        &self,
        c: &Connection,
        run: &WorkflowRun,
        now: DateTime<Utc>,
    ) -> Result<(), WorkerError> {
        let incident = Incident {
            id: incident_id(&c.id, &run.run_id, run.run_attempt),
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
        let created = self
            .connections
            .create_incident_once(&incident)
            .await
            .map_err(store_error)?;
        if created {
            crate::telemetry::incident_opened();
            tracing::info!(connection_id = %c.id, incident_id = %incident.id, run_id = %run.run_id, run_attempt = run.run_attempt, "incident opened for a failed run");
        }
        if self.events.is_none() {
            return Ok(());
        }
        let stored = if created {
            Some(incident)
        } else {
            self.incident_of_run(c, run, &incident.id)
                .await
                .map_err(store_error)?
        };
        let Some(stored) = stored else {
            tracing::warn!(connection_id = %c.id, run_id = %run.run_id, run_attempt = run.run_attempt, "the run's incident exists but could not be read back; incident.created not published");
            return Ok(());
        };
        let cause = format!("{}\0{}\0{}", c.id, run.run_id, run.run_attempt);
        self.publish(
            &c.org_id,
            "incident.created",
            EventId::derived("incident.created", &cause),
            incident_data(&stored).into(),
        )
        .await?;
        Ok(())
    }

    /// The incident a run attempt opened: by its derived id, else (opened before ids were
    /// derived) among the repository's incidents.
    async fn incident_of_run(
        &self,
        c: &Connection,
        run: &WorkflowRun,
        id: &IncidentId,
    ) -> Result<Option<Incident>, ConnectionError> {
        if let Some(i) = self.connections.get_incident(&c.org_id, id).await? {
            return Ok(Some(i));
        }
        Ok(self
            .connections
            .list_incidents(&c.org_id, Some(&c.repository_full_name), None, MAX_PAGE)
            .await?
            .into_iter()
            .find(|i| {
                i.connection_id == c.id
                    && i.run_id == run.run_id
                    && i.run_attempt == run.run_attempt
            }))
    }

    /// A successful run resolves the connection's open incidents of the same workflow on the
    /// same branch that an earlier run (or attempt) opened, publishing `incident.resolved`.
    async fn resolve_incidents(
        &self,
        c: &Connection,
        run: &WorkflowRun,
        now: DateTime<Utc>,
    ) -> Result<(), WorkerError> {
        let Some(branch) = run.branch.as_deref() else {
            return Ok(());
        };
        let open = self
            .connections
            .list_incidents(
                &c.org_id,
                Some(&c.repository_full_name),
                Some("open"),
                MAX_PAGE,
            )
            .await
            .map_err(store_error)?;
        for incident in open.into_iter().filter(|i| {
            i.connection_id == c.id && i.workflow == run.name && i.branch.as_deref() == Some(branch)
        }) {
            if !self
                .is_later(c, run, &incident)
                .await
                .map_err(store_error)?
            {
                continue;
            }
            let mut data = incident_data(&Incident {
                status: "resolved".into(),
                updated_at: now,
                ..incident.clone()
            });
            data["resolved_by"] = serde_json::json!({
                "run_id": run.run_id, "run_attempt": run.run_attempt, "url": run.url,
            });
            // Published before the write: a crash between the two leaves the incident open,
            // so the redo publishes the same id again (a no-op) and then resolves it. The
            // other order would lose the event.
            self.publish(
                &c.org_id,
                "incident.resolved",
                EventId::derived("incident.resolved", incident.id.as_str()),
                data.into(),
            )
            .await?;
            match self
                .connections
                .resolve_incident(&c.org_id, &incident.id, now)
                .await
            {
                Ok(true) => {
                    crate::telemetry::incident_resolved();
                    tracing::info!(connection_id = %c.id, incident_id = %incident.id, run_id = %run.run_id, run_attempt = run.run_attempt, "incident resolved by a successful run");
                }
                Ok(false) | Err(ConnectionError::NotFound) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        Ok(())
    }

    /// Whether the successful `run` came after the one that opened `incident`: a later
    /// attempt of the same run, a higher run number, else a later start. A success delivered
    /// late (queues do not keep order) must not resolve a newer failure.
    async fn is_later(
        &self,
        c: &Connection,
        run: &WorkflowRun,
        incident: &Incident,
    ) -> Result<bool, ConnectionError> {
        if run.run_id == incident.run_id {
            return Ok(run.run_attempt > incident.run_attempt);
        }
        let Some(failed) = self
            .connections
            .get_workflow_run(&c.id, &incident.run_id, incident.run_attempt)
            .await?
        else {
            return Ok(true);
        };
        Ok(match (run.run_number, failed.run_number) {
            (Some(a), Some(b)) if a != b => a > b,
            _ => match (run.created_at, failed.created_at) {
                (Some(a), Some(b)) if a != b => a > b,
                _ => run.updated_at > failed.updated_at,
            },
        })
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
    use crate::outbound::sink::RecordingSink;
    use crate::ports::connections::conformance::connection;
    use crate::ports::connections::embedded::EmbeddedConnectionStore;
    use crate::ports::sqlite::{Database, Durability};
    use crate::ports::store::embedded::EmbeddedStore;
    use serde_json::json;

    struct Fixture {
        handler: Arc<RepositoryEvents>,
        store: Arc<dyn DeliveryStore>,
        connections: Arc<dyn ConnectionStore>,
        /// What the handler published into the orgs' outbound streams.
        sink: Arc<RecordingSink>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let store: Arc<dyn DeliveryStore> = Arc::new(EmbeddedStore::new(db.clone()));
        let connections: Arc<dyn ConnectionStore> = Arc::new(EmbeddedConnectionStore::new(db));
        let sink = Arc::new(RecordingSink::default());
        Fixture {
            handler: Arc::new(
                RepositoryEvents::new(store.clone(), connections.clone()).with_events(sink.clone()),
            ),
            store,
            connections,
            sink,
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

        /// The distinct ids published with `event_type`, in first-published order.
        fn ids(&self, event_type: &str) -> Vec<EventId> {
            let mut ids: Vec<EventId> = Vec::new();
            for p in self.sink.of_type(event_type) {
                if !ids.contains(&p.id) {
                    ids.push(p.id);
                }
            }
            ids
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
        let envelope = Envelope::new(source, &id, event_type, Utc::now(), &raw);
        // Read as the worker reads it: the fields the handlers declare picked in one pass.
        let mut declared = fields(&envelope);
        declared.push(vec!["hook_id"]);
        let payload = Payload::parse(raw, declared).unwrap();
        Event::new(envelope, payload)
    }

    #[tokio::test]
    async fn an_unconnected_delivery_is_recorded_without_building_its_document() {
        let f = fixture();
        for (source, event_type, file) in [
            (
                Source::Github,
                "workflow_run",
                "github-workflow-run-failure.json",
            ),
            (Source::Github, "push", "github-push.json"),
            (Source::Gitlab, "pipeline", "gitlab-pipeline.json"),
        ] {
            let e = event(source, event_type, &payload(file));
            f.handler.handle(&e, Utc::now()).await.unwrap();
            let Payload::Json(json) = &e.payload else {
                panic!("{file} is JSON")
            };
            assert!(!json.is_built(), "{file}: a field read was not declared");
        }
        let recorded = f.store.list_activities(10).await.unwrap();
        assert_eq!(recorded.len(), 3);
        assert!(recorded.iter().all(|a| a.repository.is_some()));
        assert!(recorded
            .iter()
            .any(|a| a.action.as_deref().is_some_and(|s| s.contains(".."))));
    }

    /// A connected repository's GitHub run, job or pull request is read from the fields the
    /// one pass picked, never the built document, and reads the same as from the document.
    #[tokio::test]
    async fn a_connected_github_delivery_is_applied_without_building_its_document() {
        let f = fixture();
        let repo = "acme/hookline-demo";
        f.connect("org-a", repo).await;
        let mut octokit_run = payload("github-workflow-run-octokit.json");
        octokit_run["repository"]["full_name"] = json!(repo);
        let failed_check = json!({
            "action": "completed",
            "check_run": {
                "id": 128620228u64, "name": "build", "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "status": "completed", "conclusion": "failure",
                "details_url": "https://github.com/acme/hookline-demo/actions/runs/4242/job/99",
                "html_url": "https://github.com/acme/hookline-demo/runs/128620228",
                "check_suite": {"head_branch": "feature"}
            },
            "repository": {"full_name": repo}
        });
        let mut merged = pull_request(repo, "feature", true, "2026-01-02T03:04:05Z");
        merged["pull_request"]["merged_at"] = json!("2026-01-02T03:04:05Z");
        let received = Utc::now();
        for (event_type, body) in [
            ("workflow_run", failed_run(repo)),
            ("workflow_run", octokit_run),
            ("workflow_job", failed_job(repo)),
            ("check_run", failed_check),
            ("pull_request", merged),
            (
                "pull_request",
                pull_request(repo, "other", false, "2026-01-02T03:04:05Z"),
            ),
        ] {
            let e = event(Source::Github, event_type, &body);
            let Payload::Json(json) = &e.payload else {
                panic!("{event_type} is JSON")
            };
            match event_type {
                "workflow_run" => {
                    let picked = github_run(json, received);
                    assert!(picked.is_some());
                    assert_eq!(picked, github_run(&body, received));
                }
                "pull_request" => {
                    let picked = github_pr(json, received);
                    assert!(picked.is_some());
                    assert_eq!(picked, github_pr(&body, received));
                }
                _ => {
                    let picked = github_job(event_type, json);
                    assert!(picked.is_some(), "{event_type}: a failed job");
                    assert_eq!(picked, github_job(event_type, &body));
                }
            }
            f.handler.handle(&e, received).await.unwrap();
            assert!(
                !json.is_built(),
                "{event_type}: a field read was not declared"
            );
        }
    }

    /// Odd bodies (a missing or null object, odd types where GitHub sends a time or a
    /// number) read the same from the picked fields as from the document.
    #[test]
    fn odd_github_bodies_read_the_same_picked_and_built() {
        let received = Utc::now();
        let bodies = [
            json!({"action": "opened", "number": 7}),
            json!({"action": "opened", "number": 7, "pull_request": null}),
            json!({"number": 7, "pull_request": {"merged_at": ""}}),
            json!({"number": 7, "pull_request": {"merged_at": false, "state": "open"}}),
            json!({"number": 7, "pull_request": {"merged_at": {}, "merged": "yes"}}),
            json!({"pull_request": {"number": 7.0, "merged_at": null, "merged": false}}),
            json!({"pull_request": {"number": -7, "updated_at": 5}}),
            json!({"workflow_run": null}),
            json!({"workflow_run": [1, 2]}),
            json!({"workflow_run": {"id": "", "run_attempt": "2"}}),
            json!({"workflow_run": {"id": 1, "run_attempt": -1, "created_at": "yesterday"}}),
            json!({"workflow_job": {"conclusion": "failure", "run_id": 3, "name": {}}}),
            json!({"check_run": {"conclusion": "failure", "name": "x", "details_url": 4}}),
        ];
        for (event_type, body) in ["pull_request", "workflow_run", "workflow_job", "check_run"]
            .into_iter()
            .flat_map(|t| bodies.iter().map(move |b| (t, b)))
        {
            let e = event(Source::Github, event_type, body);
            let Payload::Json(json) = &e.payload else {
                panic!("JSON")
            };
            match event_type {
                "pull_request" => {
                    assert_eq!(
                        github_pr(json, received),
                        github_pr(body, received),
                        "{body}"
                    )
                }
                "workflow_run" => {
                    assert_eq!(
                        github_run(json, received),
                        github_run(body, received),
                        "{body}"
                    )
                }
                _ => assert_eq!(
                    github_job(event_type, json),
                    github_job(event_type, body),
                    "{event_type} {body}"
                ),
            }
            assert!(!json.is_built(), "{event_type} {body}");
        }
        // As the readers always read a document: no pull request without its object, and a
        // `merged_at` that is anything but null means merged.
        assert_eq!(github_pr(&bodies[0], received), None);
        for merged_at in [json!(""), json!(false), json!({})] {
            let body = json!({"pull_request": {"number": 7, "merged_at": merged_at}});
            assert!(github_pr(&body, received).unwrap().merged, "{body}");
        }
    }

    #[tokio::test]
    async fn a_ping_is_recorded_on_the_connection_whose_hook_sent_it_and_logged_as_skipped() {
        let f = fixture();
        // connection() names hook 123456 on the repository.
        let c = f.connect("org-a", "acme/pinged").await;
        let ping = RecordPing::new(f.connections.clone());
        let body = |hook_id: u64| {
            serde_json::json!({"zen": "Design for failure.", "hook_id": hook_id,
                               "repository": {"full_name": "acme/pinged"}})
        };
        // Another hook on the same repository (one made by hand) is not this connection's.
        let other = ping
            .handle(&event(Source::Github, "ping", &body(42)), Utc::now())
            .await
            .unwrap();
        assert!(matches!(other, Handled::Skipped(_)));
        assert_eq!(f.reload(&c).await.health.last_ping_at, None);
        let ev = event(Source::Github, "ping", &body(123456));
        let handled = ping.handle(&ev, Utc::now()).await.unwrap();
        assert!(matches!(handled, Handled::Skipped(why) if why.starts_with("ping")));
        let got = f.reload(&c).await.health.last_ping_at.unwrap();
        assert_eq!(
            got.timestamp_millis(),
            ev.envelope.received_at.timestamp_millis()
        );
    }

    /// `e` as an attempt of a delivery owned by `c` (what the worker reads off its record).
    fn owned_by(mut e: Event, c: &Connection, attempt: u32) -> Event {
        e.owner = Some(crate::model::Owner {
            org_id: c.org_id.clone(),
            connection_id: Some(c.id.to_string()),
            repository_full_name: Some(c.repository_full_name.clone()),
        });
        e.attempt = attempt;
        e
    }

    #[tokio::test]
    async fn a_gitlab_push_proves_only_its_owners_hook_delivers() {
        let f = fixture();
        // Two orgs connected the same project, each with its own hook.
        let a = f.connect_gitlab("org-a", "acme/group/svc", "77").await;
        let b = f.connect_gitlab("org-b", "acme/group/svc", "77").await;
        let body = serde_json::json!({"object_kind": "push", "project": {"id": 77,
            "path_with_namespace": "acme/group/svc"}, "before": "a", "after": "b", "commits": []});
        f.handler
            .handle(
                &owned_by(event(Source::Gitlab, "push", &body), &b, 1),
                Utc::now(),
            )
            .await
            .unwrap();
        assert!(f.reload(&b).await.health.last_ping_at.is_some());
        assert_eq!(
            f.reload(&a).await.health.last_ping_at,
            None,
            "org-b's hook delivered, not org-a's"
        );
    }

    #[tokio::test]
    async fn a_delivery_counts_once_and_only_for_its_owner_a_replay_not_at_all() {
        use crate::billing::model::usage_period;
        use crate::billing::plan::{Plans, TierSource};
        use crate::ports::billing::embedded::EmbeddedBillingStore;
        use crate::ports::billing::BillingStore;
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let billing: Arc<dyn BillingStore> = Arc::new(EmbeddedBillingStore::new(
            Database::open(dir.path(), Durability::Normal).unwrap(),
        ));
        let plans = Arc::new(Plans::new(
            billing.clone(),
            crate::billing::tiers::TierTable::from_lookup(|_| None).unwrap(),
            TierSource::Stripe,
            Arc::new(crate::clock::SystemClock),
        ));
        let handler =
            RepositoryEvents::new(f.store.clone(), f.connections.clone()).with_usage(plans);
        let a = f.connect("org-a", "acme/hookline-demo").await;
        let b = f.connect("org-b", "acme/hookline-demo").await;
        let push =
            json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/hookline-demo"}});
        let first = owned_by(event(Source::Github, "push", &push), &a, 1);
        handler.handle(&first, Utc::now()).await.unwrap();
        // org-a replays its delivery, again and again.
        for attempt in 2..=4 {
            let replay = Event {
                attempt,
                ..first.clone()
            };
            handler.handle(&replay, Utc::now()).await.unwrap();
        }
        let period = usage_period(Utc::now());
        let usage = |org: &'static str| {
            let billing = billing.clone();
            let period = period.clone();
            async move {
                billing
                    .usage(org, &period)
                    .await
                    .unwrap()
                    .inbound_deliveries
            }
        };
        assert_eq!(usage("org-a").await, 1, "once, on its first attempt");
        assert_eq!(
            usage("org-b").await,
            0,
            "another org's delivery is not org-b's usage"
        );
        let (a, b) = (f.reload(&a).await, f.reload(&b).await);
        assert_eq!(a.total_deliveries, 1);
        assert_eq!(
            (b.total_deliveries, b.webhook_last_delivery_at),
            (0, None),
            "org-b's counters are untouched"
        );
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

    /// An excerpt of @octokit/webhooks-examples' failed `workflow_job` (CodeQL linters), for
    /// `repo`.
    fn failed_job(repo: &str) -> Value {
        json!({
            "action": "completed",
            "workflow_job": {
                "id": 6053734069u64, "run_id": 12987654321u64, "run_attempt": 1,
                "workflow_name": "CI", "head_branch": "main",
                "head_sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "html_url": "https://github.com/acme/hookline-demo/actions/runs/12987654321/job/6053734069",
                "status": "completed", "conclusion": "failure", "name": "linters",
                "started_at": "2025-12-31T23:59:00Z", "completed_at": "2025-12-31T23:59:40Z"
            },
            "repository": {"full_name": repo},
            "sender": {"login": "octocat"}
        })
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
    async fn each_org_counts_a_delivery_for_its_repository_once_in_its_usage() {
        use crate::billing::model::usage_period;
        use crate::billing::plan::{Plans, TierSource};
        use crate::ports::billing::embedded::EmbeddedBillingStore;
        use crate::ports::billing::BillingStore;
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let store: Arc<dyn DeliveryStore> = Arc::new(EmbeddedStore::new(db.clone()));
        let connections: Arc<dyn ConnectionStore> =
            Arc::new(EmbeddedConnectionStore::new(db.clone()));
        let billing: Arc<dyn BillingStore> = Arc::new(EmbeddedBillingStore::new(db));
        // A free plan whose every limit is used up: inbound deliveries are still taken.
        let tiers = crate::billing::tiers::TierTable::from_lookup(|name| {
            (name == "HOOKLINE_TIERS").then(|| {
                r#"{"free": {"limits": {"repositories": 0, "endpoints": 0, "events_per_month": 0}}}"#
                    .to_owned()
            })
        })
        .unwrap();
        let plans = Arc::new(Plans::new(
            billing.clone(),
            tiers,
            TierSource::Stripe,
            Arc::new(crate::clock::SystemClock),
        ));
        let handler = RepositoryEvents::new(store, connections.clone()).with_usage(plans);
        for (org, repo) in [
            ("org-a", "acme/hookline-demo"),
            ("org-a", "Acme/Hookline-Demo-Fork"),
            ("org-b", "acme/hookline-demo"),
        ] {
            connections.create(&connection(org, repo)).await.unwrap();
        }
        let push =
            json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/hookline-demo"}});
        for _ in 0..2 {
            let handled = handler
                .handle(&event(Source::Github, "push", &push), Utc::now())
                .await
                .unwrap();
            assert_eq!(handled, Handled::Processed, "never refused for a plan");
        }
        let period = usage_period(Utc::now());
        for org in ["org-a", "org-b"] {
            let usage = billing.usage(org, &period).await.unwrap();
            assert_eq!(usage.inbound_deliveries, 2, "{org}: once per delivery");
        }
        assert_eq!(
            billing
                .usage("org-c", &period)
                .await
                .unwrap()
                .inbound_deliveries,
            0
        );
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
        let job = failed_job("acme/hookline-demo");
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
            push_summary(&gitlab.into()).unwrap(),
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
    /// The failed run's successful successor: the next run of CI on main.
    fn fixed_run(repo: &str) -> Value {
        let mut body = failed_run(repo);
        let r = &mut body["workflow_run"];
        r["id"] = json!(12987654999u64);
        r["run_number"] = json!(419);
        r["conclusion"] = json!("success");
        r["created_at"] = json!("2026-01-01T00:10:00Z");
        r["updated_at"] = json!("2026-01-01T00:12:00Z");
        r["html_url"] = json!("https://github.com/acme/hookline-demo/actions/runs/12987654999");
        body
    }

    #[tokio::test]
    async fn a_failed_run_publishes_one_incident_created_however_often_it_is_delivered() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        let body = failed_run("acme/hookline-demo");
        f.handle(Source::Github, "workflow_run", &body).await;
        f.handle(Source::Github, "workflow_run", &body).await;

        let published = f.sink.of_type("incident.created");
        assert_eq!(
            published.len(),
            2,
            "each delivery publishes; the stream keeps one"
        );
        assert_eq!(published[0].id, published[1].id);
        assert_eq!(f.ids("incident.created").len(), 1);
        let incident = f.incidents("org-a").await.remove(0);
        let p = &published[0];
        assert_eq!(p.org_id, "org-a");
        assert_eq!(p.data["id"], json!(incident.id));
        assert_eq!(p.data["status"], json!("open"));
        assert_eq!(p.data["repository_full_name"], json!("acme/hookline-demo"));
        assert_eq!(p.data["workflow"], json!("CI"));
        assert_eq!(p.data["branch"], json!("main"));
        assert_eq!(
            p.data["url"],
            json!("https://github.com/acme/hookline-demo/actions/runs/12987654321")
        );
        assert_eq!(
            (p.data["run_id"].clone(), p.data["run_attempt"].clone()),
            (json!("12987654321"), json!(1))
        );
        // The incidents API shows the same thing.
        assert_eq!(
            p.data,
            serde_json::to_value(IncidentView::from(&incident)).unwrap()
        );

        // Another attempt of the run is another incident, with another event.
        let mut second = body.clone();
        second["workflow_run"]["run_attempt"] = json!(2);
        f.handle(Source::Github, "workflow_run", &second).await;
        assert_eq!(f.ids("incident.created").len(), 2);
    }

    #[tokio::test]
    async fn a_redone_delivery_publishes_nothing_new() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        let e = event(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        );
        f.handler.handle(&e, Utc::now()).await.unwrap();
        let first: Vec<EventId> = f.sink.all().into_iter().map(|p| p.id).collect();
        assert_eq!(first.len(), 2, "the relay and incident.created");
        f.handler.handle(&e, Utc::now()).await.unwrap();
        let second: Vec<EventId> = f.sink.all().into_iter().skip(2).map(|p| p.id).collect();
        assert_eq!(first, second);
    }

    #[tokio::test]
    async fn a_publish_failure_fails_the_delivery_and_the_retry_publishes_the_incident() {
        let f = fixture();
        let c = f.connect("org-a", "acme/hookline-demo").await;
        let e = event(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        );
        f.sink
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let err = f.handler.handle(&e, Utc::now()).await.unwrap_err();
        assert!(matches!(err, WorkerError::Handler(_)), "{err}");
        assert!(f.sink.all().is_empty());
        // Not counted: the queue's retry will count it.
        assert_eq!(f.reload(&c).await.total_deliveries, 0);

        // The incident was opened before the publish failed; the retry finds it and publishes.
        let opened = RepositoryEvents::new(f.store.clone(), f.connections.clone());
        opened.handle(&e, Utc::now()).await.unwrap();
        assert_eq!(f.incidents("org-a").await.len(), 1);
        f.sink
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        f.handler.handle(&e, Utc::now()).await.unwrap();
        let created = f.sink.of_type("incident.created");
        assert_eq!(created.len(), 1);
        assert_eq!(
            created[0].data["id"],
            json!(f.incidents("org-a").await[0].id)
        );
        assert_eq!(f.sink.of_type("github.workflow_run").len(), 1);
    }

    #[tokio::test]
    async fn a_later_success_on_the_same_branch_resolves_the_incident_once() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;
        let incident = f.incidents("org-a").await.remove(0);
        let fixed = fixed_run("acme/hookline-demo");
        f.handle(Source::Github, "workflow_run", &fixed).await;
        f.handle(Source::Github, "workflow_run", &fixed).await;

        let i = f
            .connections
            .get_incident("org-a", &incident.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(i.status, "resolved");
        assert!(i.updated_at > incident.updated_at);
        let resolved = f.sink.of_type("incident.resolved");
        assert_eq!(resolved.len(), 1, "the second success finds nothing open");
        assert_eq!(
            resolved[0].id,
            EventId::derived("incident.resolved", incident.id.as_str())
        );
        assert_eq!(resolved[0].data["id"], json!(incident.id));
        assert_eq!(resolved[0].data["status"], json!("resolved"));
        assert_eq!(
            resolved[0].data["resolved_by"]["run_id"],
            json!("12987654999")
        );
        assert!(f
            .connections
            .list_incidents("org-a", None, Some("open"), 10)
            .await
            .unwrap()
            .is_empty());

        // A successful re-run attempt of a failed run resolves that run's incident too.
        let mut failed_again = failed_run("acme/hookline-demo");
        failed_again["workflow_run"]["id"] = json!(12987655000u64);
        failed_again["workflow_run"]["run_number"] = json!(420);
        f.handle(Source::Github, "workflow_run", &failed_again)
            .await;
        let mut rerun = failed_again.clone();
        rerun["workflow_run"]["run_attempt"] = json!(2);
        rerun["workflow_run"]["conclusion"] = json!("success");
        f.handle(Source::Github, "workflow_run", &rerun).await;
        assert_eq!(f.ids("incident.resolved").len(), 2);
        assert!(f
            .connections
            .list_incidents("org-a", None, Some("open"), 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_success_elsewhere_or_earlier_resolves_nothing() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;

        let mut other_branch = fixed_run("acme/hookline-demo");
        other_branch["workflow_run"]["head_branch"] = json!("feature/x");
        f.handle(Source::Github, "workflow_run", &other_branch)
            .await;
        let mut other_workflow = fixed_run("acme/hookline-demo");
        other_workflow["workflow_run"]["id"] = json!(12987655001u64);
        other_workflow["workflow_run"]["name"] = json!("Docs");
        f.handle(Source::Github, "workflow_run", &other_workflow)
            .await;
        // An older run's success, delivered late, does not resolve a newer failure.
        let mut older = fixed_run("acme/hookline-demo");
        older["workflow_run"]["id"] = json!(12987654000u64);
        older["workflow_run"]["run_number"] = json!(417);
        older["workflow_run"]["created_at"] = json!("2025-12-31T23:00:00Z");
        f.handle(Source::Github, "workflow_run", &older).await;
        assert_eq!(f.incidents("org-a").await[0].status, "open");
        assert!(f.sink.of_type("incident.resolved").is_empty());
    }

    #[tokio::test]
    async fn a_delivery_is_relayed_to_every_enabled_connection_org_with_its_payload() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        f.connect("org-b", "Acme/Hookline-Demo").await;
        let mut off = f.connect("org-c", "acme/hookline-demo").await;
        off.is_enabled = false;
        f.connections.update(&off).await.unwrap();

        let mut body = payload("github-push.json");
        body["repository"]["full_name"] = json!("acme/hookline-demo");
        let e = event(Source::Github, "push", &body);
        f.handler.handle(&e, Utc::now()).await.unwrap();

        let mut relayed = f.sink.of_type("github.push");
        relayed.sort_by(|a, b| a.org_id.cmp(&b.org_id));
        let orgs: Vec<&str> = relayed.iter().map(|p| p.org_id.as_str()).collect();
        assert_eq!(orgs, ["org-a", "org-b"]);
        assert!(relayed.iter().all(|p| p.data == body));
        assert_ne!(relayed[0].id, relayed[1].id, "each org's event is its own");
        assert_eq!(f.sink.all().len(), 2, "a push is only relayed");
    }

    #[tokio::test]
    async fn deliveries_no_enabled_connection_takes_are_not_relayed() {
        let f = fixture();
        f.handle(Source::Github, "workflow_run", &failed_run("someone/else"))
            .await;
        let mut c = f.connect("org-a", "acme/hookline-demo").await;
        c.is_enabled = false;
        f.connections.update(&c).await.unwrap();
        f.handle(
            Source::Github,
            "workflow_run",
            &failed_run("acme/hookline-demo"),
        )
        .await;
        assert!(f.sink.all().is_empty());
    }

    #[tokio::test]
    async fn a_payload_over_256_kib_is_relayed_as_a_stub() {
        let f = fixture();
        f.connect("org-a", "acme/hookline-demo").await;
        let mut body = payload("github-push.json");
        body["repository"]["full_name"] = json!("acme/hookline-demo");
        body["padding"] = json!("x".repeat(MAX_RELAYED_PAYLOAD));
        let e = event(Source::Github, "push", &body);
        f.handler.handle(&e, Utc::now()).await.unwrap();
        let relayed = f.sink.of_type("github.push");
        assert_eq!(relayed.len(), 1);
        assert_eq!(
            relayed[0].data,
            json!({"truncated": true, "delivery_id": e.envelope.delivery_id,
                   "size": serde_json::to_vec(&body).unwrap().len()})
        );
    }

    #[tokio::test]
    async fn gitlab_deliveries_are_relayed_under_their_object_kind() {
        let f = fixture();
        f.connect_gitlab("org-a", "acme/hookline-demo", "60123456")
            .await;
        let body = payload("gitlab-pipeline.json");
        f.handle(Source::Gitlab, "pipeline", &body).await;
        let relayed = f.sink.of_type("gitlab.pipeline");
        assert_eq!(relayed.len(), 1);
        assert_eq!(relayed[0].data, body);
        assert_eq!(f.ids("incident.created").len(), 1);

        // The pipeline passing again on main resolves it.
        let mut fixed = body.clone();
        fixed["object_attributes"]["id"] = json!(1604523500u64);
        fixed["object_attributes"]["iid"] = json!(213);
        fixed["object_attributes"]["status"] = json!("success");
        fixed["object_attributes"]["created_at"] = json!("2026-01-01 01:00:00 UTC");
        fixed["object_attributes"]["finished_at"] = json!("2026-01-01 01:05:00 UTC");
        f.handle(Source::Gitlab, "pipeline", &fixed).await;
        assert_eq!(f.incidents("org-a").await[0].status, "resolved");
        assert_eq!(f.ids("incident.resolved").len(), 1);
    }

    #[test]
    fn relayed_event_types_are_source_dot_event() {
        let cases = [
            (Source::Github, "workflow_run", Some("github.workflow_run")),
            (Source::Github, "pull_request", Some("github.pull_request")),
            (Source::Gitlab, "pipeline", Some("gitlab.pipeline")),
            (
                Source::Gitlab,
                "merge_request",
                Some("gitlab.merge_request"),
            ),
            (Source::Gitlab, "Pipeline Hook", Some("gitlab.pipeline")),
            (Source::Gitlab, "Tag Push Hook", Some("gitlab.tag_push")),
            (Source::Gitlab, "Job Hook", Some("gitlab.build")),
            (Source::Gitlab, "System Hook", Some("gitlab.system")),
            (Source::Github, "Weird.Event", None),
            (Source::Github, "", None),
            (Source::Stripe, "invoice.paid", None),
        ];
        for (source, raw, want) in cases {
            assert_eq!(relay_type(source, raw).as_deref(), want, "{raw}");
        }
    }
}
