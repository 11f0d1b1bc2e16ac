//! What verification costs: every provider's `Provider::verify` over a realistic request at
//! 1 KB, 25 KB and 1 MB, next to the bare MAC of the same bytes.
//!
//! `cargo bench -p hookline-shared --bench verify` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use chrono::DateTime;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookline::providers::{
    github, gitlab, jira, mac, standard_webhooks, stripe, twilio, whatsapp, Inbound, Provider,
    ProviderSecrets, Verified, VerifyContext,
};
use hookline::secret::Secret;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

const SIZES: [(&str, usize); 3] = [("1KB", 1024), ("25KB", 25 * 1024), ("1MB", 1024 * 1024)];

const NOW: i64 = 1_700_000_000;
const BASE_URL: &str = "https://hooks.example.com";
const GITHUB_SECRET: &str = "4f2c8a1e9b7d3f6a0c5e8b2d7f1a4c9e6b3d0f8a";
const GITLAB_TOKEN: &str = "glwt-5e8b2d7f1a4c9e6b3d0f";
const GITLAB_SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const JIRA_SECRET: &str = "jira-7f1a4c9e6b3d0f8a4f2c";
const STRIPE_SECRET: &str = "whsec_2c8a1e9b7d3f6a0c5e8b2d7f1a4c9e6b";
const TWILIO_TOKEN: &str = "9e6b3d0f8a4f2c8a1e9b7d3f6a0c5e8b";
const WHATSAPP_SECRET: &str = "0c5e8b2d7f1a4c9e6b3d0f8a4f2c8a1e";

/// A JSON object of exactly `size` bytes, shaped like a webhook event.
fn json_body(size: usize) -> Vec<u8> {
    let head = br#"{"id":"evt_1OqLbX2eZvKYlo2C","object":"event","type":"invoice.paid","object_kind":"pipeline","webhookEvent":"jira:issue_updated","data":{"padding":""#;
    let tail = br#""}}"#;
    let pad = size - head.len() - tail.len();
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head);
    body.extend((0..pad).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]));
    body.extend_from_slice(tail);
    assert_eq!(body.len(), size);
    body
}

/// A Twilio status callback of exactly `size` bytes (the `Body` parameter carries the bulk,
/// with `+` and `%XX` escapes as a real message text would).
fn form_body(size: usize) -> Vec<u8> {
    let head = b"AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&Body=";
    let tail = b"&From=%2B14158675309&MessageSid=SM0123456789abcdef0123456789abcdef&MessageStatus=delivered&NumMedia=0&SmsSid=SM0123456789abcdef0123456789abcdef&SmsStatus=delivered&To=%2B18005551212";
    let pad = size - head.len() - tail.len();
    let pattern = b"Hello+world%21+";
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head);
    body.extend((0..pad).map(|i| pattern[i % pattern.len()]));
    // Never end the text in the middle of an escape.
    if let Some(pos) = body.iter().rposition(|b| *b == b'%') {
        if body.len() - pos < 3 {
            let len = body.len();
            body[pos..len].fill(b'x');
        }
    }
    body.extend_from_slice(tail);
    assert_eq!(body.len(), size);
    body
}

fn request(path: &str, query: Option<&str>, headers: &[(&str, String)], body: &[u8]) -> Inbound {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Inbound {
        method: Method::POST,
        path: path.to_owned(),
        query: query.map(str::to_owned),
        headers: map,
        body: Bytes::copy_from_slice(body),
    }
}

fn secrets() -> ProviderSecrets {
    ProviderSecrets {
        github_webhook_secret: Some(Secret::new(GITHUB_SECRET)),
        gitlab_webhook_token: Some(Secret::new(GITLAB_TOKEN)),
        gitlab_signing_token: None,
        jira_webhook_secret: Some(Secret::new(JIRA_SECRET)),
        stripe_webhook_secret: Some(Secret::new(STRIPE_SECRET)),
        twilio_auth_token: Some(Secret::new(TWILIO_TOKEN)),
        whatsapp_app_secret: Some(Secret::new(WHATSAPP_SECRET)),
        whatsapp_verify_token: None,
    }
}

/// One verifier under test: a name, the provider, its request and its secrets.
struct Case {
    name: &'static str,
    provider: &'static dyn Provider,
    request: Inbound,
    secrets: ProviderSecrets,
}

fn cases(json: &[u8], form: &[u8]) -> Vec<Case> {
    let all = secrets();
    let mut cases = Vec::new();

    cases.push(Case {
        name: "github",
        provider: &github::GitHub,
        request: request(
            "/api/v1/webhooks/github",
            None,
            &[
                ("Content-Type", "application/json".into()),
                ("X-GitHub-Event", "workflow_run".into()),
                (
                    "X-GitHub-Delivery",
                    "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
                ),
                (
                    "X-Hub-Signature-256",
                    github::signature(GITHUB_SECRET.as_bytes(), json),
                ),
            ],
            json,
        ),
        secrets: all.clone(),
    });

    cases.push(Case {
        name: "gitlab_token",
        provider: &gitlab::GitLab,
        request: request(
            "/api/v1/webhooks/gitlab",
            None,
            &[
                ("Content-Type", "application/json".into()),
                ("X-Gitlab-Event", "Pipeline Hook".into()),
                ("X-Gitlab-Token", GITLAB_TOKEN.into()),
            ],
            json,
        ),
        secrets: all.clone(),
    });

    let mut sw_headers: Vec<(&str, String)> = vec![
        ("Content-Type", "application/json".into()),
        ("X-Gitlab-Event", "Pipeline Hook".into()),
    ];
    sw_headers.extend(
        standard_webhooks::headers(GITLAB_SIGNING, "msg_2bYf1vG0dXtKQH8r", NOW, json).unwrap(),
    );
    cases.push(Case {
        name: "gitlab_standard_webhooks",
        provider: &gitlab::GitLab,
        request: request("/api/v1/webhooks/gitlab", None, &sw_headers, json),
        secrets: ProviderSecrets {
            gitlab_webhook_token: None,
            gitlab_signing_token: Some(Secret::new(GITLAB_SIGNING)),
            ..all.clone()
        },
    });

    cases.push(Case {
        name: "jira",
        provider: &jira::Jira,
        request: request(
            "/api/v1/webhooks/jira",
            None,
            &[
                ("Content-Type", "application/json".into()),
                ("X-Atlassian-Webhook-Identifier", "1234567".into()),
                (
                    "X-Hub-Signature",
                    jira::signature(JIRA_SECRET.as_bytes(), json),
                ),
            ],
            json,
        ),
        secrets: all.clone(),
    });

    cases.push(Case {
        name: "stripe",
        provider: &stripe::Stripe,
        request: request(
            "/api/v1/billing/webhooks/stripe",
            None,
            &[
                ("Content-Type", "application/json; charset=utf-8".into()),
                (
                    "Stripe-Signature",
                    stripe::sign(STRIPE_SECRET, json, NOW - 2),
                ),
            ],
            json,
        ),
        secrets: all.clone(),
    });

    let path = "/api/v1/webhooks/twilio";
    let url = twilio::request_url(BASE_URL, path, None);
    cases.push(Case {
        name: "twilio_form",
        provider: &twilio::Twilio,
        request: request(
            path,
            None,
            &[
                ("Content-Type", "application/x-www-form-urlencoded".into()),
                (
                    "I-Twilio-Idempotency-Token",
                    "5a4f3e2d-1c0b-4a9f-8e7d-6c5b4a3f2e1d".into(),
                ),
                (
                    "X-Twilio-Signature",
                    twilio::sign_form(TWILIO_TOKEN.as_bytes(), &url, form),
                ),
            ],
            form,
        ),
        secrets: all.clone(),
    });

    let (json_url, json_sig) = twilio::sign_json(TWILIO_TOKEN.as_bytes(), &url, json);
    let query = json_url.split_once('?').map(|(_, q)| q.to_owned());
    cases.push(Case {
        name: "twilio_json",
        provider: &twilio::Twilio,
        request: request(
            path,
            query.as_deref(),
            &[
                ("Content-Type", "application/json".into()),
                ("X-Twilio-Signature", json_sig),
            ],
            json,
        ),
        secrets: all.clone(),
    });

    cases.push(Case {
        name: "whatsapp",
        provider: &whatsapp::WhatsApp,
        request: request(
            "/api/v1/webhooks/whatsapp",
            None,
            &[
                ("Content-Type", "application/json".into()),
                (
                    "X-Hub-Signature-256",
                    whatsapp::signature(WHATSAPP_SECRET.as_bytes(), json),
                ),
            ],
            json,
        ),
        secrets: all,
    });

    cases
}

fn verify(c: &mut Criterion) {
    let ctx = VerifyContext {
        now: DateTime::from_timestamp(NOW, 0).unwrap(),
        public_base_url: Some(BASE_URL.to_owned()),
    };
    for (label, size) in SIZES {
        let json = json_body(size);
        let form = form_body(size);
        let mut group = c.benchmark_group(format!("verify/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 1024 * 1024 {
            group.sample_size(30);
        }

        group.bench_function("hmac_sha256", |b| {
            b.iter(|| mac::hmac_sha256(GITHUB_SECRET.as_bytes(), &[black_box(&json)]))
        });
        group.bench_function("hmac_sha1", |b| {
            b.iter(|| mac::hmac_sha1(TWILIO_TOKEN.as_bytes(), &[black_box(&form)]))
        });
        // What Twilio's form scheme needs before any MAC: the parameters percent-decoded
        // (here by the `url` crate, the reference the verifier is tested against).
        group.bench_function("form_decode_url_crate", |b| {
            b.iter(|| {
                url::form_urlencoded::parse(black_box(&form))
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
            })
        });

        for case in cases(&json, &form) {
            // A benchmark of a refusal would measure nothing useful.
            assert_eq!(
                case.provider.verify(&case.request, &case.secrets, &ctx),
                Ok(Verified::Signature),
                "{} must verify",
                case.name
            );
            group.bench_function(case.name, |b| {
                b.iter(|| {
                    case.provider
                        .verify(black_box(&case.request), &case.secrets, &ctx)
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = verify
}
criterion_main!(benches);
