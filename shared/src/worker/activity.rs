//! The activity handler: turns any provider event into one normalised record (source, event
//! type, action, repository/project, actor, ref, url, timestamps) and stores it.

use super::payload::paths;
use super::{Event, FieldPath, Handled, Handler, Payload, WorkerError};
use crate::model::{Activity, Envelope, Source};
use crate::ports::store::DeliveryStore;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use std::sync::Arc;

pub struct RecordActivity {
    store: Arc<dyn DeliveryStore>,
}

impl RecordActivity {
    pub fn new(store: Arc<dyn DeliveryStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Handler for RecordActivity {
    async fn handle(&self, event: &Event, now: DateTime<Utc>) -> Result<Handled, WorkerError> {
        self.store.put_activity(&normalise(event, now)).await?;
        Ok(Handled::Processed)
    }

    fn fields(&self, envelope: &Envelope) -> Vec<FieldPath> {
        fields(envelope)
    }
}

/// The first of several paths that holds a string.
fn first(p: &Payload, paths: &[FieldPath]) -> Option<String> {
    paths
        .iter()
        .find_map(|path| p.str_at(path).filter(|s| !s.is_empty()))
}

/// Provider timestamps: RFC 3339, GitLab's `2024-01-02 10:00:00 UTC`, or epoch (s or ms).
pub(crate) fn timestamp(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S %z"] {
        if let Ok(t) = DateTime::parse_from_str(raw, fmt) {
            return Some(t.with_timezone(&Utc));
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, fmt) {
            return Some(t.and_utc());
        }
    }
    let n: i64 = raw.parse().ok()?;
    if n > 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }
}

/// Where each field of the activity record may be in a provider's payload, best first.
struct Places {
    action: Vec<FieldPath>,
    repository: Vec<FieldPath>,
    actor: Vec<FieldPath>,
    git_ref: Vec<FieldPath>,
    url: Vec<FieldPath>,
    occurred_at: Vec<FieldPath>,
}

impl Places {
    fn of(source: Source, event_type: &str) -> Self {
        match source {
            Source::Github => github(event_type),
            Source::Gitlab => gitlab(),
            Source::Jira => jira(),
            Source::Stripe => stripe(),
            Source::Twilio => twilio(),
            Source::Whatsapp => whatsapp(),
        }
    }

    fn all(self) -> Vec<FieldPath> {
        [
            self.action,
            self.repository,
            self.actor,
            self.git_ref,
            self.url,
            self.occurred_at,
        ]
        .concat()
    }
}

/// The payload fields the activity record of a delivery reads.
pub fn fields(envelope: &Envelope) -> Vec<FieldPath> {
    Places::of(envelope.source, &envelope.event_type).all()
}

fn github(event_type: &str) -> Places {
    // The payload field that holds the event's main object.
    let o = match event_type {
        "issues" => "issue",
        "issue_comment" => "comment",
        "workflow_run" => "workflow_run",
        "workflow_job" => "workflow_job",
        "check_run" => "check_run",
        "check_suite" => "check_suite",
        "pull_request" => "pull_request",
        "deployment" => "deployment",
        "deployment_status" => "deployment_status",
        "release" => "release",
        _ => "",
    };
    Places {
        action: paths(&[&["action"], &[o, "conclusion"], &[o, "status"]]),
        repository: paths(&[&["repository", "full_name"]]),
        actor: paths(&[&["sender", "login"], &["pusher", "name"]]),
        git_ref: paths(&[
            &["ref"],
            &[o, "head_branch"],
            &[o, "head", "ref"],
            &[o, "ref"],
        ]),
        url: paths(&[&[o, "html_url"], &["compare"], &["repository", "html_url"]]),
        occurred_at: paths(&[
            &[o, "updated_at"],
            &["head_commit", "timestamp"],
            &[o, "created_at"],
            &["repository", "pushed_at"],
        ]),
    }
}

fn gitlab() -> Places {
    Places {
        action: paths(&[
            &["object_attributes", "action"],
            &["object_attributes", "status"],
            &["build_status"],
        ]),
        repository: paths(&[&["project", "path_with_namespace"], &["project_name"]]),
        actor: paths(&[&["user", "username"], &["user_username"], &["user_name"]]),
        git_ref: paths(&[
            &["ref"],
            &["object_attributes", "ref"],
            &["object_attributes", "source_branch"],
        ]),
        url: paths(&[
            &["object_attributes", "url"],
            &["project", "web_url"],
            &["repository", "homepage"],
        ]),
        occurred_at: paths(&[
            &["object_attributes", "finished_at"],
            &["object_attributes", "updated_at"],
            &["build_finished_at"],
            &["commits", "0", "timestamp"],
        ]),
    }
}

fn jira() -> Places {
    Places {
        action: paths(&[&["issue_event_type_name"], &["webhookEvent"]]),
        repository: paths(&[&["issue", "fields", "project", "key"]]),
        actor: paths(&[
            &["user", "accountId"],
            &["user", "name"],
            &["user", "displayName"],
        ]),
        git_ref: paths(&[&["issue", "key"]]),
        url: paths(&[&["issue", "self"]]),
        occurred_at: paths(&[&["timestamp"]]),
    }
}

fn stripe() -> Places {
    Places {
        action: paths(&[&["data", "object", "status"]]),
        repository: paths(&[&["account"]]),
        actor: paths(&[&["data", "object", "customer"]]),
        git_ref: paths(&[&["data", "object", "id"]]),
        url: paths(&[
            &["data", "object", "hosted_invoice_url"],
            &["data", "object", "url"],
        ]),
        occurred_at: paths(&[&["created"]]),
    }
}

fn twilio() -> Places {
    Places {
        action: paths(&[
            &["MessageStatus"],
            &["SmsStatus"],
            &["CallStatus"],
            &["status"],
        ]),
        repository: paths(&[&["To"], &["to"]]),
        actor: paths(&[&["From"], &["from"]]),
        git_ref: paths(&[&["MessageSid"], &["SmsSid"], &["CallSid"], &["sid"]]),
        url: Vec::new(),
        occurred_at: paths(&[&["Timestamp"], &["timestamp"]]),
    }
}

fn whatsapp() -> Places {
    // Every field is in the first change's value.
    let value: &[&'static str] = &["entry", "0", "changes", "0", "value"];
    let at = |list: &[&[&'static str]]| -> Vec<FieldPath> {
        list.iter().map(|rest| [value, rest].concat()).collect()
    };
    Places {
        action: at(&[&["statuses", "0", "status"], &["messages", "0", "type"]]),
        repository: at(&[&["metadata", "display_phone_number"]]),
        actor: at(&[
            &["messages", "0", "from"],
            &["statuses", "0", "recipient_id"],
        ]),
        git_ref: at(&[&["messages", "0", "id"], &["statuses", "0", "id"]]),
        url: Vec::new(),
        occurred_at: at(&[
            &["messages", "0", "timestamp"],
            &["statuses", "0", "timestamp"],
        ]),
    }
}

/// The activity record of one event.
pub fn normalise(event: &Event, processed_at: DateTime<Utc>) -> Activity {
    let env = &event.envelope;
    let p = &event.payload;
    let places = Places::of(env.source, &env.event_type);
    Activity {
        source: env.source,
        delivery_id: env.delivery_id.clone(),
        event_type: env.event_type.clone(),
        action: first(p, &places.action),
        repository: first(p, &places.repository),
        actor: first(p, &places.actor),
        git_ref: first(p, &places.git_ref),
        url: first(p, &places.url),
        occurred_at: first(p, &places.occurred_at).as_deref().and_then(timestamp),
        received_at: env.received_at,
        processed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Envelope;

    /// The activity record of a delivery, read as the worker reads it: with the fields the
    /// handler declares, and without building the whole document.
    fn normalised(source: Source, event_type: &str, body: &str) -> Activity {
        let envelope = Envelope::new(source, "d1", event_type, Utc::now(), body.as_bytes());
        let payload = Payload::parse(body.as_bytes().to_vec(), fields(&envelope)).unwrap();
        let event = Event::new(envelope, payload);
        let a = normalise(&event, Utc::now());
        if let Payload::Json(json) = &event.payload {
            assert!(
                !json.is_built(),
                "a field the record reads was not declared"
            );
        }
        a
    }

    #[test]
    fn a_failed_github_workflow_run_is_normalised() {
        let body = r#"{"action":"completed","workflow_run":{"head_branch":"main","conclusion":"failure",
            "html_url":"https://github.com/octo/hello/actions/runs/1","updated_at":"2026-01-02T10:00:00Z"},
            "repository":{"full_name":"octo/hello"},"sender":{"login":"octocat"}}"#;
        let a = normalised(Source::Github, "workflow_run", body);
        assert_eq!(a.action.as_deref(), Some("completed"));
        assert_eq!(a.repository.as_deref(), Some("octo/hello"));
        assert_eq!(a.actor.as_deref(), Some("octocat"));
        assert_eq!(a.git_ref.as_deref(), Some("main"));
        assert_eq!(
            a.url.as_deref(),
            Some("https://github.com/octo/hello/actions/runs/1")
        );
        assert_eq!(a.occurred_at, timestamp("2026-01-02T10:00:00Z"));
    }

    #[test]
    fn a_github_push_keeps_its_ref_and_compare_url() {
        let body = r#"{"ref":"refs/heads/main","compare":"https://github.com/o/r/compare/a...b",
            "repository":{"full_name":"o/r"},"pusher":{"name":"p"},"sender":{"login":"s"},
            "head_commit":{"timestamp":"2026-01-02T10:00:00+01:00"}}"#;
        let a = normalised(Source::Github, "push", body);
        assert_eq!(a.git_ref.as_deref(), Some("refs/heads/main"));
        assert_eq!(
            a.url.as_deref(),
            Some("https://github.com/o/r/compare/a...b")
        );
        assert_eq!(a.actor.as_deref(), Some("s"));
        assert_eq!(a.occurred_at, timestamp("2026-01-02T09:00:00Z"));
    }

    #[test]
    fn a_gitlab_pipeline_reads_gitlab_time_format() {
        let body = r#"{"object_kind":"pipeline","object_attributes":{"status":"failed","ref":"main",
            "finished_at":"2016-08-12 15:26:29 UTC","url":"https://gitlab.com/g/p/-/pipelines/1"},
            "project":{"path_with_namespace":"g/p"},"user":{"username":"root"}}"#;
        let a = normalised(Source::Gitlab, "pipeline", body);
        assert_eq!(a.action.as_deref(), Some("failed"));
        assert_eq!(a.repository.as_deref(), Some("g/p"));
        assert_eq!(a.actor.as_deref(), Some("root"));
        assert_eq!(a.git_ref.as_deref(), Some("main"));
        assert_eq!(a.occurred_at, timestamp("2016-08-12T15:26:29Z"));
    }

    #[test]
    fn a_twilio_status_callback_is_read_from_its_form() {
        let body = "MessageSid=SM1&MessageStatus=delivered&To=%2B15551230000&From=%2B15559870000";
        let a = normalised(Source::Twilio, "message_status", body);
        assert_eq!(a.action.as_deref(), Some("delivered"));
        assert_eq!(a.repository.as_deref(), Some("+15551230000"));
        assert_eq!(a.actor.as_deref(), Some("+15559870000"));
        assert_eq!(a.git_ref.as_deref(), Some("SM1"));
    }

    #[test]
    fn a_whatsapp_message_and_a_jira_issue_are_normalised() {
        let wa = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",
            "value":{"metadata":{"display_phone_number":"15550001111"},"messages":[{"from":"16315551181",
            "id":"wamid.X","timestamp":"1700000000","type":"text"}]}}]}]}"#;
        let a = normalised(Source::Whatsapp, "whatsapp_business_account.messages", wa);
        assert_eq!(a.action.as_deref(), Some("text"));
        assert_eq!(a.repository.as_deref(), Some("15550001111"));
        assert_eq!(a.actor.as_deref(), Some("16315551181"));
        assert_eq!(a.occurred_at, DateTime::from_timestamp(1_700_000_000, 0));

        let jira = r#"{"webhookEvent":"jira:issue_created","timestamp":1700000000123,"issue_event_type_name":"issue_created",
            "user":{"accountId":"abc"},"issue":{"key":"ENG-1","self":"https://x.atlassian.net/rest/api/2/issue/1",
            "fields":{"project":{"key":"ENG"}}}}"#;
        let j = normalised(Source::Jira, "jira:issue_created", jira);
        assert_eq!(j.action.as_deref(), Some("issue_created"));
        assert_eq!(j.repository.as_deref(), Some("ENG"));
        assert_eq!(j.git_ref.as_deref(), Some("ENG-1"));
        assert_eq!(
            j.occurred_at,
            DateTime::from_timestamp_millis(1_700_000_000_123)
        );
    }
}
