//! Requests Hookline refuses, and what it leaves behind (nothing): bad or missing signatures,
//! tampered bodies, stale Stripe timestamps, oversized bodies, a wrong WhatsApp verify token,
//! unknown routes. Over HTTP against the embedded adapters.

use hookline::config::Settings;
use hookline::model::Source;
use hookline::providers::simulate::SignedRequest;
use hookline_e2e::*;
use std::time::Duration;

/// Every header a provider proves itself with.
const PROOF_HEADERS: [&str; 6] = [
    "X-Hub-Signature-256",
    "X-Gitlab-Token",
    "webhook-signature",
    "X-Hub-Signature",
    "Stripe-Signature",
    "X-Twilio-Signature",
];

fn without_proof(mut req: SignedRequest) -> SignedRequest {
    let before = req.headers.len();
    req.headers
        .retain(|(name, _)| !PROOF_HEADERS.iter().any(|p| p.eq_ignore_ascii_case(name)));
    assert!(req.headers.len() < before, "the request had a proof header");
    req
}

fn tampered(mut req: SignedRequest) -> SignedRequest {
    // One byte of the body changed after signing, keeping it well-formed.
    let pos = req
        .body
        .iter()
        .rposition(|b| b.is_ascii_lowercase())
        .expect("a payload has a lowercase letter");
    req.body[pos] = req.body[pos].to_ascii_uppercase();
    req
}

/// Nothing was recorded, processed or queued.
async fn assert_nothing_left(app: &TestApp) {
    let log = app.deliveries().await;
    assert!(log.is_empty(), "recorded:\n{}", describe(&log));
    assert!(app.activities().await.is_empty(), "activities were stored");
    assert_eq!(app.enqueued(), 0, "messages were queued");
    let queued = app
        .queue
        .receive(10, Duration::ZERO)
        .await
        .expect("receive from the queue");
    assert!(queued.is_empty(), "on the queue: {queued:?}");
}

fn assert_refused(reply: &Reply, status: u16, error: &str, what: &str) {
    assert_eq!(
        reply.status, status,
        "{what}: expected {status}, got {} {}",
        reply.status, reply.body
    );
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: a JSON error, got {:?}",
        reply.header("content-type")
    );
    let json = reply.json();
    assert_eq!(json["error"], error, "{what}: {}", reply.body);
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: the error says what to fix: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused_and_nothing_is_recorded_or_queued() {
    // No worker, so anything queued would still be on the queue.
    let app = spawn_app_with(Options {
        worker_loops: 0,
        ..Options::default()
    })
    .await;
    for f in FIXTURES {
        let body = f.body();
        let wrong = app
            .send(f.source, &body, "not-the-secret-Hookline-knows")
            .await;
        assert_refused(
            &wrong,
            401,
            "invalid_signature",
            &format!("{} wrong secret", f.source),
        );
        assert!(
            !wrong.body.contains(secret_for(f.source)),
            "the answer never holds the secret"
        );

        let good = app.sign(f.source, &body, secret_for(f.source), None);
        let missing = app.post(&without_proof(good.clone())).await;
        assert_refused(
            &missing,
            401,
            "invalid_signature",
            &format!("{} no signature", f.source),
        );

        // GitLab's secret token is a shared password, not a signature over the body, so only
        // the signing providers can notice a changed body.
        if f.source != Source::Gitlab {
            let changed = app.post(&tampered(good)).await;
            assert_refused(
                &changed,
                401,
                "invalid_signature",
                &format!("{} tampered body", f.source),
            );
        }
    }
    assert_nothing_left(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_with_413() {
    let app = spawn_app_with(Options {
        settings: Settings {
            max_body_bytes: 1024,
            ..Settings::default()
        },
        worker_loops: 0,
        ..Options::default()
    })
    .await;
    let f = fixture(Source::Github);
    let body = f.body();
    assert!(
        body.len() > 1024,
        "the push payload is over the 1 KiB limit"
    );
    let reply = app.send(f.source, &body, GITHUB_SECRET).await;
    assert_refused(&reply, 413, "payload_too_large", "over the limit");
    assert_nothing_left(&app).await;

    // Under the limit is fine.
    let small = fixture(Source::Whatsapp).body();
    assert!(small.len() <= 1024);
    app.send(Source::Whatsapp, &small, WHATSAPP_SECRET)
        .await
        .assert_status(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_event_with_a_stale_or_future_timestamp_is_refused() {
    let app = spawn_app_with(Options {
        worker_loops: 0,
        ..Options::default()
    })
    .await;
    let body = fixture(Source::Stripe).body();
    let now = chrono::Utc::now();
    for (what, at) in [
        ("ten minutes ago", now - chrono::Duration::minutes(10)),
        ("ten minutes ahead", now + chrono::Duration::minutes(10)),
    ] {
        let req = app.sign_at(Source::Stripe, &body, STRIPE_SECRET, None, at);
        let reply = app.post(&req).await;
        assert_refused(&reply, 401, "invalid_signature", what);
    }
    assert_nothing_left(&app).await;

    // Signed a minute ago: within Stripe's 300 s tolerance.
    let req = app.sign_at(
        Source::Stripe,
        &body,
        STRIPE_SECRET,
        None,
        now - chrono::Duration::minutes(1),
    );
    app.post(&req).await.assert_status(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whatsapp_handshake_echoes_the_challenge_only_for_the_right_token() {
    let app = spawn_app().await;
    let route = Source::Whatsapp.route();
    let ok = app
        .get(&format!(
            "{route}?hub.mode=subscribe&hub.verify_token={WHATSAPP_VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .await;
    ok.assert_status(200);
    assert_eq!(ok.body, "1158201444");
    assert!(
        ok.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        ok.header("content-type")
    );

    let wrong = app
        .get(&format!(
            "{route}?hub.mode=subscribe&hub.verify_token=guessed&hub.challenge=1158201444"
        ))
        .await;
    assert_refused(&wrong, 403, "verification_failed", "wrong verify token");
    assert!(!wrong.body.contains("1158201444"), "no challenge echoed");

    let no_mode = app
        .get(&format!(
            "{route}?hub.verify_token={WHATSAPP_VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .await;
    assert_refused(&no_mode, 403, "verification_failed", "no hub.mode");
    assert_nothing_left(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok_and_unknown_routes_404_as_json() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    health.assert_status(200);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));

    let missing = app.get("/api/v1/webhooks/bitbucket").await;
    assert_refused(&missing, 404, "not_found", "unknown route");
    let post = app
        .client
        .post(format!("{}/nowhere", app.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_post_only_route_is_refused_with_405() {
    let app = spawn_app().await;
    let reply = app.get(Source::Github.route()).await;
    assert_refused(&reply, 405, "method_not_allowed", "GET on the GitHub route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_but_malformed_payload_is_refused_with_400() {
    let app = spawn_app_with(Options {
        worker_loops: 0,
        ..Options::default()
    })
    .await;
    for (source, body) in [
        (Source::Github, &b"not json"[..]),
        (Source::Stripe, br#"{"type":"invoice.paid"}"#),
        (Source::Jira, br#"{"issue":{}}"#),
    ] {
        let reply = app.send(source, body, secret_for(source)).await;
        assert_refused(&reply, 400, "malformed_payload", source.as_str());
    }
    assert_nothing_left(&app).await;
}

/// Twilio's signature covers whatever bytes arrive, so a correctly signed body can still be
/// unreadable: a JSON-variant request (`bodySHA256` in the URL) whose body is not JSON, or a
/// form body that is not UTF-8. The pipeline must refuse it (400, DESIGN.md §1.1 step 3)
/// rather than queue a delivery the worker can never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_twilio_body_that_is_neither_json_nor_a_form_is_refused_with_400() {
    use hookline::providers::twilio;
    let app = spawn_app_with(Options {
        worker_loops: 0,
        ..Options::default()
    })
    .await;
    let route = app.route(Source::Twilio);
    let token = TWILIO_TOKEN.as_bytes();
    let json_variant = |body: &[u8]| {
        let (url, signature) = twilio::sign_json(token, &route, body);
        (url, signature, "application/json")
    };
    let form = |body: &[u8]| {
        let signature = twilio::sign_form(token, &route, body);
        (
            route.clone(),
            signature,
            "application/x-www-form-urlencoded",
        )
    };
    for (what, body, (url, signature, content_type)) in [
        (
            "JSON variant, text body",
            &b"hello there"[..],
            json_variant(b"hello there"),
        ),
        (
            "form, not UTF-8",
            b"\xff\xfe=1&MessageSid=SM1",
            form(b"\xff\xfe=1&MessageSid=SM1"),
        ),
    ] {
        let req = SignedRequest {
            url,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                (twilio::SIGNATURE_HEADER.into(), signature),
                (
                    twilio::IDEMPOTENCY_HEADER.into(),
                    uuid::Uuid::new_v4().to_string(),
                ),
            ],
            body: body.to_vec(),
        };
        let reply = app.post(&req).await;
        assert_refused(&reply, 400, "malformed_payload", what);
    }
    assert_nothing_left(&app).await;
}
