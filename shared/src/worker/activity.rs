//! The activity handler: turns any provider event into one normalised record (source, event
//! type, action, repository/project, actor, ref, url, timestamps) and stores it.

use super::{Event, Handled, Handler, Payload, WorkerError};
use crate::model::{Activity, Source};
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
}

/// The first of several paths that holds a string.
fn first(p: &Payload, paths: &[&[&str]]) -> Option<String> {
    paths
        .iter()
        .find_map(|path| p.str_at(path))
        .filter(|s| !s.is_empty())
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

struct Fields {
    action: Option<String>,
    repository: Option<String>,
    actor: Option<String>,
    git_ref: Option<String>,
    url: Option<String>,
    occurred_at: Option<String>,
}

fn github(p: &Payload, event_type: &str) -> Fields {
    // The payload field that holds the event's main object.
    let o = match event_type {
        "issues" => "issue",
        "issue_comment" => "comment",
        "workflow_run" | "workflow_job" | "check_run" | "check_suite" | "pull_request"
        | "deployment" | "deployment_status" | "release" => event_type,
        _ => "",
    };
    Fields {
        action: first(p, &[&["action"]])
            .or_else(|| first(p, &[&[o, "conclusion"], &[o, "status"]])),
        repository: first(p, &[&["repository", "full_name"]]),
        actor: first(p, &[&["sender", "login"], &["pusher", "name"]]),
        git_ref: first(
            p,
            &[
                &["ref"],
                &[o, "head_branch"],
                &[o, "head", "ref"],
                &[o, "ref"],
            ],
        ),
        url: first(
            p,
            &[&[o, "html_url"], &["compare"], &["repository", "html_url"]],
        ),
        occurred_at: first(
            p,
            &[
                &[o, "updated_at"],
                &["head_commit", "timestamp"],
                &[o, "created_at"],
                &["repository", "pushed_at"],
            ],
        ),
    }
}

fn gitlab(p: &Payload) -> Fields {
    Fields {
        action: first(
            p,
            &[
                &["object_attributes", "action"],
                &["object_attributes", "status"],
                &["build_status"],
            ],
        ),
        repository: first(p, &[&["project", "path_with_namespace"], &["project_name"]]),
        actor: first(
            p,
            &[&["user", "username"], &["user_username"], &["user_name"]],
        ),
        git_ref: first(
            p,
            &[
                &["ref"],
                &["object_attributes", "ref"],
                &["object_attributes", "source_branch"],
            ],
        ),
        url: first(
            p,
            &[
                &["object_attributes", "url"],
                &["project", "web_url"],
                &["repository", "homepage"],
            ],
        ),
        occurred_at: first(
            p,
            &[
                &["object_attributes", "finished_at"],
                &["object_attributes", "updated_at"],
                &["build_finished_at"],
                &["commits", "0", "timestamp"],
            ],
        ),
    }
}

fn jira(p: &Payload) -> Fields {
    Fields {
        action: first(p, &[&["issue_event_type_name"], &["webhookEvent"]]),
        repository: first(p, &[&["issue", "fields", "project", "key"]]),
        actor: first(
            p,
            &[
                &["user", "accountId"],
                &["user", "name"],
                &["user", "displayName"],
            ],
        ),
        git_ref: first(p, &[&["issue", "key"]]),
        url: first(p, &[&["issue", "self"]]),
        occurred_at: first(p, &[&["timestamp"]]),
    }
}

fn stripe(p: &Payload) -> Fields {
    Fields {
        action: first(p, &[&["data", "object", "status"]]),
        repository: first(p, &[&["account"]]),
        actor: first(p, &[&["data", "object", "customer"]]),
        git_ref: first(p, &[&["data", "object", "id"]]),
        url: first(
            p,
            &[
                &["data", "object", "hosted_invoice_url"],
                &["data", "object", "url"],
            ],
        ),
        occurred_at: first(p, &[&["created"]]),
    }
}

fn twilio(p: &Payload) -> Fields {
    Fields {
        action: first(
            p,
            &[
                &["MessageStatus"],
                &["SmsStatus"],
                &["CallStatus"],
                &["status"],
            ],
        ),
        repository: first(p, &[&["To"], &["to"]]),
        actor: first(p, &[&["From"], &["from"]]),
        git_ref: first(p, &[&["MessageSid"], &["SmsSid"], &["CallSid"], &["sid"]]),
        url: None,
        occurred_at: first(p, &[&["Timestamp"], &["timestamp"]]),
    }
}

fn whatsapp(p: &Payload) -> Fields {
    let value = ["entry", "0", "changes", "0", "value"];
    let at = |rest: &[&'static str]| -> Vec<&'static str> {
        value.iter().chain(rest).copied().collect()
    };
    let paths = |list: &[&[&'static str]]| -> Vec<Vec<&'static str>> {
        list.iter().map(|r| at(r)).collect()
    };
    let pick = |list: &[&[&'static str]]| {
        let owned = paths(list);
        let refs: Vec<&[&str]> = owned.iter().map(|v| v.as_slice()).collect();
        first(p, &refs)
    };
    Fields {
        action: pick(&[&["statuses", "0", "status"], &["messages", "0", "type"]]),
        repository: pick(&[&["metadata", "display_phone_number"]]),
        actor: pick(&[
            &["messages", "0", "from"],
            &["statuses", "0", "recipient_id"],
        ]),
        git_ref: pick(&[&["messages", "0", "id"], &["statuses", "0", "id"]]),
        url: None,
        occurred_at: pick(&[
            &["messages", "0", "timestamp"],
            &["statuses", "0", "timestamp"],
        ]),
    }
}

/// The activity record of one event.
pub fn normalise(event: &Event, processed_at: DateTime<Utc>) -> Activity {
    let env = &event.envelope;
    let p = &event.payload;
    let f = match env.source {
        Source::Github => github(p, &env.event_type),
        Source::Gitlab => gitlab(p),
        Source::Jira => jira(p),
        Source::Stripe => stripe(p),
        Source::Twilio => twilio(p),
        Source::Whatsapp => whatsapp(p),
    };
    Activity {
        source: env.source,
        delivery_id: env.delivery_id.clone(),
        event_type: env.event_type.clone(),
        action: f.action,
        repository: f.repository,
        actor: f.actor,
        git_ref: f.git_ref,
        url: f.url,
        occurred_at: f.occurred_at.as_deref().and_then(timestamp),
        received_at: env.received_at,
        processed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Envelope;

    fn event(source: Source, event_type: &str, body: &str) -> Event {
        let envelope = Envelope::new(source, "d1", event_type, Utc::now(), body.as_bytes());
        let payload = Payload::parse(body.as_bytes()).unwrap();
        Event::new(envelope, payload)
    }

    #[test]
    fn a_failed_github_workflow_run_is_normalised() {
        let body = r#"{"action":"completed","workflow_run":{"head_branch":"main","conclusion":"failure",
            "html_url":"https://github.com/octo/hello/actions/runs/1","updated_at":"2026-01-02T10:00:00Z"},
            "repository":{"full_name":"octo/hello"},"sender":{"login":"octocat"}}"#;
        let a = normalise(&event(Source::Github, "workflow_run", body), Utc::now());
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
        let a = normalise(&event(Source::Github, "push", body), Utc::now());
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
        let a = normalise(&event(Source::Gitlab, "pipeline", body), Utc::now());
        assert_eq!(a.action.as_deref(), Some("failed"));
        assert_eq!(a.repository.as_deref(), Some("g/p"));
        assert_eq!(a.actor.as_deref(), Some("root"));
        assert_eq!(a.git_ref.as_deref(), Some("main"));
        assert_eq!(a.occurred_at, timestamp("2016-08-12T15:26:29Z"));
    }

    #[test]
    fn a_twilio_status_callback_is_read_from_its_form() {
        let body = "MessageSid=SM1&MessageStatus=delivered&To=%2B15551230000&From=%2B15559870000";
        let a = normalise(&event(Source::Twilio, "message_status", body), Utc::now());
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
        let a = normalise(
            &event(Source::Whatsapp, "whatsapp_business_account.messages", wa),
            Utc::now(),
        );
        assert_eq!(a.action.as_deref(), Some("text"));
        assert_eq!(a.repository.as_deref(), Some("15550001111"));
        assert_eq!(a.actor.as_deref(), Some("16315551181"));
        assert_eq!(a.occurred_at, DateTime::from_timestamp(1_700_000_000, 0));

        let jira = r#"{"webhookEvent":"jira:issue_created","timestamp":1700000000123,"issue_event_type_name":"issue_created",
            "user":{"accountId":"abc"},"issue":{"key":"ENG-1","self":"https://x.atlassian.net/rest/api/2/issue/1",
            "fields":{"project":{"key":"ENG"}}}}"#;
        let j = normalise(&event(Source::Jira, "jira:issue_created", jira), Utc::now());
        assert_eq!(j.action.as_deref(), Some("issue_created"));
        assert_eq!(j.repository.as_deref(), Some("ENG"));
        assert_eq!(j.git_ref.as_deref(), Some("ENG-1"));
        assert_eq!(
            j.occurred_at,
            DateTime::from_timestamp_millis(1_700_000_000_123)
        );
    }
}
