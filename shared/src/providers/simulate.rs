//! Requests exactly as each provider sends them — headers, signature and body — so a user can
//! try Hookline without the provider (`hookline sign`, `hookline send`) and tests can speak
//! to it the way GitHub or Stripe would.

use super::{github, gitlab, jira, standard_webhooks, stripe, twilio, whatsapp};
use crate::model::Source;
use chrono::{DateTime, Utc};

/// One signed request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// Where to POST it (Twilio's JSON signatures add `bodySHA256` to the URL).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("the GitLab signing token is not a valid whsec_ secret")]
    InvalidSigningToken,
    #[error("--url is required for Twilio: its signature covers the URL")]
    TwilioNeedsUrl,
}

/// What to sign.
#[derive(Debug, Clone)]
pub struct Simulation<'a> {
    pub source: Source,
    /// The provider secret (GitLab: the secret token, or a `whsec_` signing token).
    pub secret: &'a str,
    /// The URL the request goes to (required for Twilio).
    pub url: Option<&'a str>,
    pub body: &'a [u8],
    /// The event type header where the provider sends one; guessed from the body if `None`.
    pub event: Option<&'a str>,
    pub now: DateTime<Utc>,
    /// The provider's delivery id where it sends one; a fresh one if `None`.
    pub delivery_id: Option<&'a str>,
}

fn h(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

fn json_field(body: &[u8], field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get(field)?.as_str().map(str::to_string)
}

/// GitHub's event name for a payload, from the keys only that event carries.
fn guess_github_event(body: &[u8]) -> &'static str {
    let Ok(serde_json::Value::Object(v)) = serde_json::from_slice(body) else {
        return "ping";
    };
    for (key, event) in [
        ("workflow_run", "workflow_run"),
        ("workflow_job", "workflow_job"),
        ("check_run", "check_run"),
        ("check_suite", "check_suite"),
        ("pull_request", "pull_request"),
        ("deployment_status", "deployment_status"),
        ("deployment", "deployment"),
        ("release", "release"),
        ("comment", "issue_comment"),
        ("issue", "issues"),
        ("zen", "ping"),
        ("commits", "push"),
    ] {
        if v.contains_key(key) {
            return event;
        }
    }
    "push"
}

/// GitLab's `X-Gitlab-Event` for a payload's `object_kind`.
fn gitlab_event(body: &[u8]) -> String {
    let kind = json_field(body, "object_kind").unwrap_or_else(|| "push".into());
    match kind.as_str() {
        "push" => "Push Hook",
        "tag_push" => "Tag Push Hook",
        "merge_request" => "Merge Request Hook",
        "pipeline" => "Pipeline Hook",
        "build" => "Job Hook",
        "issue" => "Issue Hook",
        "note" => "Note Hook",
        "deployment" => "Deployment Hook",
        "release" => "Release Hook",
        _ => "System Hook",
    }
    .to_string()
}

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok()
}

/// Sign `sim` as its provider would.
pub fn sign(sim: &Simulation<'_>) -> Result<SignedRequest, SimulateError> {
    let id = sim
        .delivery_id
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let secret = sim.secret.as_bytes();
    let body = sim.body;
    let url = sim.url.unwrap_or_default().to_string();
    let json = h("Content-Type", "application/json");
    let (url, headers) = match sim.source {
        Source::Github => (
            url,
            vec![
                json,
                h("User-Agent", "GitHub-Hookshot/hookline"),
                h(
                    github::EVENT_HEADER,
                    sim.event.unwrap_or_else(|| guess_github_event(body)),
                ),
                h(github::DELIVERY_HEADER, id),
                h(github::SIGNATURE_HEADER, github::signature(secret, body)),
            ],
        ),
        Source::Gitlab => {
            let event = sim
                .event
                .map(str::to_string)
                .unwrap_or_else(|| gitlab_event(body));
            let mut headers = vec![
                json,
                h("User-Agent", "GitLab/hookline"),
                h(gitlab::EVENT_HEADER, event),
                h(gitlab::EVENT_UUID_HEADER, id.clone()),
                h(gitlab::IDEMPOTENCY_HEADER, id.clone()),
            ];
            let signing = sim.secret.starts_with(standard_webhooks::SECRET_PREFIX);
            let (token, signing_token) = if signing {
                (None, Some(sim.secret))
            } else {
                (Some(sim.secret), None)
            };
            let signed = gitlab::signed_headers(
                token,
                signing_token,
                &format!("msg_{id}"),
                sim.now.timestamp(),
                body,
            )
            .map_err(|_| SimulateError::InvalidSigningToken)?;
            headers.extend(signed.into_iter().map(|(k, v)| h(k, v)));
            (url, headers)
        }
        Source::Jira => (
            url,
            vec![
                json,
                h(jira::DELIVERY_HEADER, id),
                h(jira::SIGNATURE_HEADER, jira::signature(secret, body)),
            ],
        ),
        Source::Stripe => (
            url,
            vec![
                h("Content-Type", "application/json; charset=utf-8"),
                h(
                    "User-Agent",
                    "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                ),
                h(
                    stripe::SIGNATURE_HEADER,
                    stripe::sign(sim.secret, body, sim.now.timestamp()),
                ),
            ],
        ),
        Source::Twilio => {
            let url = sim.url.ok_or(SimulateError::TwilioNeedsUrl)?;
            let (url, signature, content_type) = if is_json(body) {
                let (url, sig) = twilio::sign_json(secret, url, body);
                (url, sig, "application/json")
            } else {
                (
                    url.to_string(),
                    twilio::sign_form(secret, url, body),
                    "application/x-www-form-urlencoded",
                )
            };
            (
                url,
                vec![
                    h("Content-Type", content_type),
                    h("User-Agent", "TwilioProxy/1.1"),
                    h(twilio::SIGNATURE_HEADER, signature),
                    h(twilio::IDEMPOTENCY_HEADER, id),
                ],
            )
        }
        Source::Whatsapp => (
            url,
            vec![
                json,
                h(
                    whatsapp::SIGNATURE_HEADER,
                    whatsapp::signature(secret, body),
                ),
            ],
        ),
    };
    Ok(SignedRequest {
        url,
        headers,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{provider, Inbound, ProviderSecrets, Verified, VerifyContext};

    /// Everything `sign` produces must pass the provider's own verifier.
    #[test]
    fn every_simulated_request_passes_its_providers_verification() {
        let now = Utc::now();
        let base = "https://hooks.example.com";
        let cases: [(Source, &str, &[u8]); 8] = [
            (Source::Github, "gh-secret", br#"{"zen":"hi","hook_id":1}"#),
            (Source::Gitlab, "gl-token", br#"{"object_kind":"pipeline"}"#),
            (
                Source::Gitlab,
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                br#"{"object_kind":"push"}"#,
            ),
            (
                Source::Jira,
                "jira-secret",
                br#"{"webhookEvent":"jira:issue_created"}"#,
            ),
            (
                Source::Stripe,
                "whsec_stripe",
                br#"{"id":"evt_1","type":"invoice.paid"}"#,
            ),
            (
                Source::Twilio,
                "tw-token",
                b"MessageSid=SM1&MessageStatus=sent",
            ),
            (Source::Twilio, "tw-token", br#"{"property": "value"}"#),
            (
                Source::Whatsapp,
                "wa-secret",
                br#"{"object":"whatsapp_business_account","entry":[]}"#,
            ),
        ];
        for (source, secret, body) in cases {
            let url = format!("{base}{}", source.route());
            let signed = sign(&Simulation {
                source,
                secret,
                url: Some(&url),
                body,
                event: None,
                now,
                delivery_id: None,
            })
            .unwrap();
            let parsed = url::Url::parse(&signed.url).unwrap();
            let mut headers = http::HeaderMap::new();
            for (k, v) in &signed.headers {
                headers.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let req = Inbound {
                method: http::Method::POST,
                path: parsed.path().to_string(),
                query: parsed.query().map(str::to_string),
                headers,
                body: bytes::Bytes::copy_from_slice(body),
            };
            let secrets = ProviderSecrets::from_lookup(|name| {
                let wanted = match (source, name) {
                    (Source::Github, "GITHUB_WEBHOOK_SECRET")
                    | (Source::Jira, "JIRA_WEBHOOK_SECRET")
                    | (Source::Stripe, "STRIPE_WEBHOOK_SECRET")
                    | (Source::Twilio, "TWILIO_AUTH_TOKEN")
                    | (Source::Whatsapp, "WHATSAPP_APP_SECRET") => true,
                    (Source::Gitlab, "GITLAB_WEBHOOK_TOKEN") => !secret.starts_with("whsec_"),
                    (Source::Gitlab, "GITLAB_WEBHOOK_SIGNING_TOKEN") => {
                        secret.starts_with("whsec_")
                    }
                    _ => false,
                };
                wanted.then(|| secret.to_string())
            });
            let ctx = VerifyContext {
                now,
                public_base_url: Some(base.into()),
            };
            let p = provider(source);
            assert_eq!(
                p.verify(&req, &secrets, &ctx),
                Ok(Verified::Signature),
                "{source} {secret}"
            );
            assert!(p.describe(&req).is_ok(), "{source}");
        }
    }

    #[test]
    fn the_github_event_is_guessed_from_the_payload() {
        assert_eq!(
            guess_github_event(br#"{"workflow_run":{},"repository":{}}"#),
            "workflow_run"
        );
        assert_eq!(guess_github_event(br#"{"ref":"x","commits":[]}"#), "push");
        assert_eq!(guess_github_event(br#"{"zen":"x"}"#), "ping");
        assert_eq!(
            gitlab_event(br#"{"object_kind":"merge_request"}"#),
            "Merge Request Hook"
        );
    }
}
