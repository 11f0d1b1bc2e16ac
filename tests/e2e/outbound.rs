//! Outbound webhooks end to end, over real HTTP: endpoints registered through the API,
//! events published through it, and local receivers that answer as customers' endpoints do.
//! Schedules are short (tens of milliseconds) and jitter is off, so every wait is bounded.

use hookline_e2e::outbound::{short_settings, OutboundServer, Receiver, Reply};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Both schemes of a delivery verify with `secret`: seed 003's `sha256=` check and the
/// official Standard Webhooks library, unmodified.
fn verifies(r: &hookline_e2e::outbound::Received, secret: &str, header: &str) -> (bool, bool) {
    let sha = r.header(header) == Some(&format!("sha256={}", hmac_hex(secret, &r.body)));
    let standard = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok();
    (sha, standard)
}

async fn set_owner(app: &OutboundServer, org: &str, email: &str) {
    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/v1/org",
            Some(&app.manager(org)),
            Some(json!({ "name": "Acme", "owner_email": email })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_gets_a_test_event_signed_both_ways() {
    let app = OutboundServer::spawn(short_settings(2, Duration::from_millis(50))).await;
    let receiver = Receiver::answering(200).await;
    let (ep, secret) = app
        .endpoint(
            "acme",
            &format!("{}/hooks", receiver.url),
            &["invoice.paid"],
        )
        .await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let got = receiver.wait_for(1).await;
    let test = &got[0];
    assert_eq!(test.json()["type"], "webhook.test");
    assert_eq!(test.json()["data"]["endpoint_id"], ep.as_str());
    assert_eq!(verifies(test, &secret, "x-signature"), (true, true));
    assert_eq!(test.header("content-type"), Some("application/json"));
    assert!(test.header("user-agent").unwrap().starts_with("Hookline"));
    assert_eq!(test.header("webhook-id"), test.json()["id"].as_str());
    // Its outcome is in the endpoint's deliveries.
    let test_id = test.json()["id"].as_str().unwrap().to_owned();
    let d = app.wait_delivery("acme", &ep, &test_id, "delivered").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status_code"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_reaches_each_subscribed_endpoint_once_in_seed_003s_envelope() {
    let app = OutboundServer::spawn(short_settings(2, Duration::from_millis(50))).await;
    let paid = Receiver::answering(200).await;
    let github = Receiver::answering(200).await;
    let other = Receiver::answering(200).await;
    let (_, paid_secret) = app.endpoint("acme", &paid.url, &["invoice.paid"]).await;
    app.endpoint("acme", &github.url, &["github.*"]).await;
    app.endpoint("acme", &other.url, &["lead_won"]).await;
    // Another org's endpoint never sees acme's events.
    let stranger = Receiver::answering(200).await;
    app.endpoint("globex", &stranger.url, &["*"]).await;
    for r in [&paid, &github, &other, &stranger] {
        r.wait_for(1).await; // the test events
    }
    let id = app
        .publish(
            "acme",
            "invoice.paid",
            json!({"invoice": "in_1", "amount": 4200}),
        )
        .await;
    let got = paid.wait_for(2).await;
    let event = got[1].json();
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["type"], "invoice.paid");
    assert_eq!(event["data"], json!({"invoice": "in_1", "amount": 4200}));
    assert!(event["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(verifies(&got[1], &paid_secret, "x-signature"), (true, true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(paid.count(), 2);
    assert_eq!(github.count(), 1, "github.* does not take invoice.paid");
    assert_eq!(other.count(), 1);
    assert_eq!(stranger.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_an_id_again_answers_the_first_event_and_sends_nothing_new() {
    let app = OutboundServer::spawn(short_settings(2, Duration::from_millis(50))).await;
    let receiver = Receiver::answering(200).await;
    app.endpoint("acme", &receiver.url, &["task.completed"])
        .await;
    receiver.wait_for(1).await;
    let body = json!({"type": "task.completed", "id": "task-42-done", "data": {"task": 42}});
    let token = app.manager("acme");
    let (first, a) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(&token),
            Some(body.clone()),
        )
        .await;
    let (again, b) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(&token),
            Some(json!({"type": "task.completed", "id": "task-42-done", "data": {"task": 43}})),
        )
        .await;
    assert_eq!((first, again), (202, 200), "{a} {b}");
    assert_eq!(b["data"], json!({"task": 42}), "the first event, unchanged");
    assert_eq!(a["sequence"], b["sequence"]);
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 2);
    // An unknown type, a relayed type and a malformed body say what is wrong.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(&token),
            Some(json!({"type": "invoice.refunded", "data": {}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("invoice.refunded"));
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(&token),
            Some(json!({"type": "github.push", "data": {}})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(&token),
            Some(json!({"data": {}})),
        )
        .await;
    assert_eq!(status, 400);
    // events:write alone may publish; repos:read may not.
    let writer = app.token("acme", &[hookline::auth::Scope::EventsWrite]);
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(&writer),
            Some(json!({"type": "task.completed", "data": {}})),
        )
        .await;
    assert_eq!(status, 202);
    let reader = app.token("acme", &[hookline::auth::Scope::ReposRead]);
    let (status, _) = app
        .call(Method::POST, "/api/v1/events", Some(&reader), Some(body))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt_on_schedule() {
    let app = OutboundServer::spawn(short_settings(5, Duration::from_millis(300))).await;
    // The test event takes the first answer; the event then fails twice.
    let receiver = Receiver::start(Arc::new(|n| {
        Reply::Status(if n == 2 || n == 3 { 500 } else { 200 })
    }))
    .await;
    let (ep, _) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    receiver.wait_for(1).await;
    let id = app.publish("acme", "invoice.paid", json!({"n": 1})).await;
    let d = app.wait_delivery("acme", &ep, &id, "delivered").await;
    assert_eq!(d["attempts"], 3);
    let got = receiver.received();
    assert_eq!(got.len(), 4);
    for pair in got[1..].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(280), "retried after {gap:?}");
        assert_eq!(pair[0].header("webhook-id"), pair[1].header("webhook-id"));
    }
    let attempts = app.attempts("acme", d["id"].as_str().unwrap()).await;
    let codes: Vec<_> = attempts.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), json!(200)]);
    assert_eq!(attempts[0]["number"], 1);
    assert!(attempts[0]["error"].as_str().unwrap().contains("500"));
    assert_eq!(attempts[2]["succeeded"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_is_dead_lettered_after_every_attempt_and_the_owner_told_once()
{
    let app = OutboundServer::spawn(short_settings(3, Duration::from_millis(50))).await;
    set_owner(&app, "acme", "owner@acme.example").await;
    let receiver = Receiver::answering(503).await;
    let (ep, _) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    let id = app.publish("acme", "invoice.paid", json!({})).await;
    let d = app.wait_delivery("acme", &ep, &id, "dead_lettered").await;
    assert_eq!(d["attempts"], 4, "one attempt plus three retries");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The test event is dead-lettered too: two deliveries, four attempts each.
    assert_eq!(receiver.count(), 8);
    let mails = app.outbox();
    let about: Vec<_> = mails
        .iter()
        .filter(|m| m.text.contains(d["id"].as_str().unwrap()))
        .collect();
    assert_eq!(about.len(), 1, "{mails:?}");
    assert_eq!(about[0].to, "owner@acme.example");
    assert!(about[0].subject.contains("dead-lettered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_at_once_and_nothing_more_is_sent() {
    let app = OutboundServer::spawn(short_settings(3, Duration::from_millis(50))).await;
    set_owner(&app, "acme", "owner@acme.example").await;
    let receiver = Receiver::answering(410).await;
    let (ep, _) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    receiver.wait_for(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, e) = app
            .call(
                Method::GET,
                &format!("/api/v1/endpoints/{ep}"),
                Some(&app.manager("acme")),
                None,
            )
            .await;
        if e["enabled"] == false {
            assert!(
                e["disabled_reason"].as_str().unwrap().contains("410"),
                "{e}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never disabled: {e}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.publish("acme", "invoice.paid", json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count(),
        1,
        "nothing is sent to a disabled endpoint"
    );
    assert_eq!(
        app.outbox()
            .iter()
            .filter(|m| m.subject.contains("disabled"))
            .count(),
        1
    );
    // A person brings it back.
    let (status, e) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{ep}"),
            Some(&app.manager("acme")),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(e["enabled"], true);
    assert!(e.get("disabled_reason").is_none() || e["disabled_reason"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_waits_as_long_as_asked() {
    let app = OutboundServer::spawn(short_settings(3, Duration::from_millis(50))).await;
    let receiver = Receiver::start(Arc::new(|n| {
        if n == 1 {
            Reply::RetryAfter(429, 1)
        } else {
            Reply::Status(200)
        }
    }))
    .await;
    app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    let got = receiver.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_slower_than_the_timeout_fails_with_a_timeout() {
    let mut settings = short_settings(1, Duration::from_millis(50));
    settings.timeout = Duration::from_millis(300);
    let app = OutboundServer::spawn(settings).await;
    let receiver = Receiver::start(Arc::new(|_| Reply::Slow(Duration::from_secs(3)))).await;
    let (ep, _) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    let test_id = receiver.wait_for(1).await[0].json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = app
        .wait_delivery("acme", &ep, &test_id, "dead_lettered")
        .await;
    let attempts = app.attempts("acme", d["id"].as_str().unwrap()).await;
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert!(a["error"].as_str().unwrap().contains("timed out"), "{a}");
        assert!(a["status_code"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_the_old_and_the_new_secret_both_verify() {
    let app = OutboundServer::spawn(short_settings(1, Duration::from_millis(50))).await;
    let receiver = Receiver::answering(200).await;
    let (ep, old) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    receiver.wait_for(1).await;
    let (status, rotated) = app
        .call(
            Method::POST,
            &format!("/api/v1/endpoints/{ep}/secret/rotate"),
            Some(&app.manager("acme")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let (_, shown) = app
        .call(
            Method::GET,
            &format!("/api/v1/endpoints/{ep}/secret"),
            Some(&app.manager("acme")),
            None,
        )
        .await;
    assert_eq!(shown["secret"], new.as_str());
    app.publish("acme", "invoice.paid", json!({})).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(verifies(&got[1], &new, "x-signature"), (true, true));
    // The previous secret still verifies the Standard Webhooks signature in the overlap.
    assert!(verifies(&got[1], &old, "x-signature").1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_recover_resend_what_failed_once_the_receiver_is_fixed() {
    let app = OutboundServer::spawn(short_settings(1, Duration::from_millis(30))).await;
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let receiver = Receiver::start(Arc::new(move |_| {
        Reply::Status(if flag.load(std::sync::atomic::Ordering::SeqCst) {
            200
        } else {
            500
        })
    }))
    .await;
    let (ep, _) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.publish("acme", "invoice.paid", json!({ "n": n })).await);
    }
    for id in &ids {
        app.wait_delivery("acme", &ep, id, "dead_lettered").await;
    }
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    // One by hand...
    let first = app
        .wait_delivery("acme", &ep, &ids[0], "dead_lettered")
        .await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/deliveries/{}/retry", first["id"].as_str().unwrap()),
            Some(&app.manager("acme")),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let d = app.wait_delivery("acme", &ep, &ids[0], "delivered").await;
    assert_eq!(d["attempts"], 3);
    let attempts = app.attempts("acme", d["id"].as_str().unwrap()).await;
    assert_eq!(attempts[2]["trigger"], "manual");
    // ...the rest since a moment.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/endpoints/{ep}/recover"),
            Some(&app.manager("acme")),
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(body["queued"].as_u64().unwrap() >= 2, "{body}");
    for id in &ids[1..] {
        app.wait_delivery("acme", &ep, id, "delivered").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forbidden_address_is_refused_at_registration_with_a_reason() {
    let app = OutboundServer::spawn_with(
        short_settings(1, Duration::from_millis(50)),
        hookline::outbound::ssrf::AddressPolicy::strict(),
    )
    .await;
    let token = app.manager("acme");
    for url in [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://100.100.100.200/hook",
        "https://[::1]/hook",
        "https://[fe80::1]/hook",
        "https://[fc00::1]/hook",
        "https://[fd00:ec2::254]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[64:ff9b::a00:1]/hook",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
        "https://localhost/hook",
        "http://example.com/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let (status, body) = app
            .call(
                Method::POST,
                "/api/v1/endpoints",
                Some(&token),
                Some(json!({"url": url, "event_types": ["invoice.paid"]})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with("url:"),
            "{url}: {body}"
        );
    }
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/endpoints",
            Some(&token),
            Some(json!({"url": "https://example.com/hook", "event_types": ["nope.never"]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("nope.never"));
    let (_, list) = app
        .call(Method::GET, "/api/v1/endpoints", Some(&token), None)
        .await;
    assert_eq!(list["endpoints"], json!([]), "nothing half-created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_loopback_is_refused_at_send_time() {
    // http is allowed here but no private range: a URL that passed registration (its name
    // pointed elsewhere then) and now resolves to loopback is refused when sent.
    let policy = hookline::outbound::ssrf::AddressPolicy::strict().allow_http(true);
    let app =
        OutboundServer::spawn_with(short_settings(1, Duration::from_millis(30)), policy).await;
    let receiver = Receiver::answering(200).await;
    let port = receiver.url.rsplit(':').next().unwrap().to_owned();
    let outbound = app.outbound();
    let now = chrono::Utc::now();
    let id = hookline::outbound::model::EndpointId::generate();
    let secret = hookline::secret::Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let sealed = outbound
        .ports
        .keys
        .seal(
            &secret,
            &hookline::outbound::endpoints::secret_context("acme", &id),
        )
        .await
        .unwrap();
    outbound
        .ports
        .store
        .create_endpoint(&hookline::outbound::model::Endpoint {
            id: id.clone(),
            org_id: "acme".into(),
            url: format!("http://localhost:{port}/hook"),
            description: None,
            event_types: vec!["invoice.paid".into()],
            signature_header: "X-Signature".into(),
            enabled: true,
            disabled_reason: None,
            rate_limit_per_second: None,
            secret: hookline::connections::StoredSecret {
                sealed: serde_json::to_string(&sealed).unwrap(),
                valid_until: None,
            },
            previous_secret: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    let event = app.publish("acme", "invoice.paid", json!({})).await;
    let d = app
        .wait_delivery("acme", id.as_str(), &event, "dead_lettered")
        .await;
    let attempts = app.attempts("acme", d["id"].as_str().unwrap()).await;
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("refused"),
        "{attempts:?}"
    );
    assert_eq!(receiver.count(), 0, "the socket never opened to loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_ids_answer_404_on_every_route() {
    let app = OutboundServer::spawn(short_settings(1, Duration::from_millis(30))).await;
    let receiver = Receiver::answering(200).await;
    let (ep, _) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    let event = app.publish("acme", "invoice.paid", json!({})).await;
    let d = app.wait_delivery("acme", &ep, &event, "delivered").await;
    let dlv = d["id"].as_str().unwrap();
    let globex = app.manager("globex");
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/endpoints/{ep}"), None),
        (
            Method::PATCH,
            format!("/api/v1/endpoints/{ep}"),
            Some(json!({"enabled": false})),
        ),
        (Method::GET, format!("/api/v1/endpoints/{ep}/secret"), None),
        (
            Method::POST,
            format!("/api/v1/endpoints/{ep}/secret/rotate"),
            None,
        ),
        (Method::POST, format!("/api/v1/endpoints/{ep}/test"), None),
        (
            Method::POST,
            format!("/api/v1/endpoints/{ep}/recover"),
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        ),
        (Method::DELETE, format!("/api/v1/endpoints/{ep}"), None),
        (Method::GET, format!("/api/v1/deliveries/{dlv}"), None),
        (
            Method::GET,
            format!("/api/v1/deliveries/{dlv}/attempts"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/deliveries/{dlv}/retry"),
            None,
        ),
        (Method::GET, format!("/api/v1/events/{event}"), None),
    ] {
        let (status, answer) = app.call(method.clone(), &path, Some(&globex), body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, list) = app
        .call(
            Method::GET,
            &format!("/api/v1/deliveries?event_id={event}"),
            Some(&globex),
            None,
        )
        .await;
    assert_eq!(list["deliveries"], json!([]));
    let (_, list) = app
        .call(Method::GET, "/api/v1/endpoints", Some(&globex), None)
        .await;
    assert_eq!(list["endpoints"], json!([]));
    // And acme's own still work, untouched by globex's attempts.
    let (status, e) = app
        .call(
            Method::GET,
            &format!("/api/v1/endpoints/{ep}"),
            Some(&app.manager("acme")),
            None,
        )
        .await;
    assert_eq!((status, e["enabled"].clone()), (200, json!(true)));
    // No token, a token without the scope.
    let (status, _) = app.call(Method::GET, "/api/v1/endpoints", None, None).await;
    assert_eq!(status, 401);
    let reader = app.token("acme", &[hookline::auth::Scope::ReposRead]);
    let (status, _) = app
        .call(Method::GET, "/api/v1/endpoints", Some(&reader), None)
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_endpoints_subscribed_to_one_event_each_receive_it_exactly_once() {
    let app = OutboundServer::spawn(short_settings(2, Duration::from_millis(50))).await;
    let receiver = Receiver::answering(200).await;
    let outbound = app.outbound();
    // Registered through the service (the API adds only HTTP to this), 16 at a time.
    use futures::StreamExt;
    let created: Vec<_> = futures::stream::iter(0..1000)
        .map(|i| {
            let url = format!("{}/ep/{i}", receiver.url);
            async move {
                outbound
                    .endpoints
                    .create(
                        "acme",
                        hookline::outbound::endpoints::CreateEndpoint {
                            url,
                            event_types: vec!["meeting.booked".into()],
                            description: None,
                            signature_header: None,
                            // Each gets its test event first; the test counts the one after.
                            enabled: Some(true),
                            rate_limit_per_second: None,
                        },
                    )
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(created.len(), 1000);
    receiver.wait_for(1000).await; // the test events
    let event = app
        .publish("acme", "meeting.booked", json!({"at": "10:00"}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = receiver
            .received()
            .into_iter()
            .filter(|r| r.json()["id"] == event.as_str())
            .count();
        if got >= 1000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{got} of 1000 received"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut per_endpoint = std::collections::HashMap::new();
    for r in receiver.received() {
        if r.json()["id"] == event.as_str() {
            *per_endpoint.entry(r.path.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(per_endpoint.len(), 1000);
    assert!(per_endpoint.values().all(|n| *n == 1), "a duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_fan_out_and_rerun_creates_no_duplicate_and_skips_none() {
    use hookline::outbound::dispatch::{AttemptQueue, DeliveryMessage, Dispatcher};
    use hookline::outbound::model::{Endpoint, EndpointId, EventId, NewEvent};
    use hookline::ports::outbound::{
        embedded::EmbeddedOutboundStore, DeliveryFilter, OutboundStore,
    };
    use hookline::ports::queue::{embedded::EmbeddedQueue, Queue, QueueSettings};
    use hookline::ports::sqlite::{Database, Durability};
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Durability::Normal).unwrap();
    let store: Arc<dyn OutboundStore> = Arc::new(EmbeddedOutboundStore::new(db.clone()));
    let queue: Arc<dyn Queue> = Arc::new(EmbeddedQueue::named(
        db,
        "outbound-deliveries",
        QueueSettings {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: 5,
        },
    ));
    let clock = Arc::new(hookline::clock::SystemClock);
    let now = chrono::Utc::now();
    for i in 0..200 {
        store
            .create_endpoint(&Endpoint {
                id: EndpointId::generate(),
                org_id: "acme".into(),
                url: format!("https://receiver.example.com/{i}"),
                description: None,
                event_types: vec!["invoice.paid".into()],
                signature_header: "X-Signature".into(),
                enabled: true,
                disabled_reason: None,
                rate_limit_per_second: None,
                secret: hookline::connections::StoredSecret {
                    sealed: "sealed".into(),
                    valid_until: None,
                },
                previous_secret: None,
                failing_since: None,
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
    }
    for n in 0..3 {
        store
            .append_event(&NewEvent {
                id: EventId::generate(),
                org_id: "acme".into(),
                event_type: "invoice.paid".into(),
                created_at: now,
                data: json!({ "n": n }).into(),
            })
            .await
            .unwrap();
    }
    // Killed after 250 of the 600 deliveries were queued.
    let dying = Dispatcher::new(
        store.clone(),
        AttemptQueue::new(Arc::new(FaultyQueue::new(queue.clone(), 250)), false),
        clock.clone(),
    );
    assert!(dying.dispatch("acme").await.is_err());
    assert!(store.dispatch_cursor("acme").await.unwrap() < 3);
    // Restarted.
    let rerun = Dispatcher::new(
        store.clone(),
        AttemptQueue::new(queue.clone(), false),
        clock,
    );
    rerun.dispatch("acme").await.unwrap();
    assert_eq!(store.dispatch_cursor("acme").await.unwrap(), 3);
    // Exactly one delivery per (endpoint, event)...
    let mut ids = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let (page, next) = store
            .list_deliveries("acme", &DeliveryFilter::default(), 1000, cursor)
            .await
            .unwrap();
        for d in page {
            assert!(
                ids.insert((d.endpoint_id, d.event_id)),
                "a duplicate delivery"
            );
        }
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(ids.len(), 600);
    // ...and every one of them queued at least once (a repeat is dropped by the deliverer).
    let mut queued = std::collections::HashSet::new();
    loop {
        let batch = queue.receive(10, Duration::from_millis(100)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let msg: DeliveryMessage = serde_json::from_str(&m.body).unwrap();
            queued.insert(msg.delivery_id);
            queue.delete(&m.receipt).await.unwrap();
        }
    }
    assert_eq!(queued.len(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_rate_limit_holds_its_sends_per_second() {
    let app = OutboundServer::spawn(short_settings(2, Duration::from_millis(50))).await;
    let receiver = Receiver::answering(200).await;
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/endpoints",
            Some(&app.manager("acme")),
            Some(json!({
                "url": receiver.url,
                "event_types": ["task.completed"],
                "rate_limit_per_second": 2,
                "enabled": false,
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let ep = body["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{ep}"),
            Some(&app.manager("acme")),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    for n in 0..8 {
        app.publish("acme", "task.completed", json!({ "n": n }))
            .await;
    }
    let got = receiver.wait_for(8).await;
    // Two per wall-clock second: eight sends span at least three second boundaries, and no
    // window of one second (which overlaps at most two wall-clock seconds) holds over four.
    let span = got[7].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1900),
        "8 sends at 2/s took {span:?}"
    );
    for (i, r) in got.iter().enumerate() {
        let in_window = got[i..]
            .iter()
            .filter(|later| later.at - r.at < Duration::from_secs(1))
            .count();
        assert!(in_window <= 4, "{in_window} sends within one second");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_longer_than_the_disable_window_is_disabled_and_its_owner_told() {
    let mut settings = short_settings(5, Duration::from_millis(100));
    settings.disable_after = Duration::from_millis(250);
    let app = OutboundServer::spawn(settings).await;
    set_owner(&app, "acme", "owner@acme.example").await;
    let receiver = Receiver::answering(500).await;
    let (ep, _) = app.endpoint("acme", &receiver.url, &["invoice.paid"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let endpoint = loop {
        let (_, e) = app
            .call(
                Method::GET,
                &format!("/api/v1/endpoints/{ep}"),
                Some(&app.manager("acme")),
                None,
            )
            .await;
        if e["enabled"] == false {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "never disabled: {e}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{endpoint}"
    );
    let sent = receiver.count();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.count(), sent, "nothing more is sent once disabled");
    let told: Vec<_> = app
        .outbox()
        .into_iter()
        .filter(|m| m.subject.contains("disabled"))
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].to, "owner@acme.example");
}

/// A queue whose sends fail once `sends_left` is used up: as a dispatcher killed part way
/// through a fan-out stops, or as SQS refuses sends in a brief outage.
struct FaultyQueue {
    inner: Arc<dyn hookline::ports::queue::Queue>,
    sends_left: std::sync::atomic::AtomicUsize,
}

impl FaultyQueue {
    fn new(inner: Arc<dyn hookline::ports::queue::Queue>, sends_left: usize) -> Self {
        Self {
            inner,
            sends_left: std::sync::atomic::AtomicUsize::new(sends_left),
        }
    }

    /// Every send fails from now on, until [`FaultyQueue::heal`].
    fn fail_sends(&self) {
        self.sends_left
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    fn heal(&self) {
        self.sends_left
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl hookline::ports::queue::Queue for FaultyQueue {
    async fn send(
        &self,
        body: &str,
        delay: Duration,
    ) -> Result<String, hookline::ports::queue::QueueError> {
        // One atomic step, so concurrent senders never get more sends than there are.
        let took = self.sends_left.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |left| left.checked_sub(1),
        );
        if took.is_err() {
            return Err(hookline::ports::queue::QueueError::Unavailable(
                "the queue refuses sends".into(),
            ));
        }
        self.inner.send(body, delay).await
    }
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<hookline::ports::queue::ReceivedMessage>, hookline::ports::queue::QueueError>
    {
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), hookline::ports::queue::QueueError> {
        self.inner.delete(receipt).await
    }
    async fn receive_dead_letters(
        &self,
        max: u32,
    ) -> Result<Vec<hookline::ports::queue::ReceivedMessage>, hookline::ports::queue::QueueError>
    {
        self.inner.receive_dead_letters(max).await
    }
    async fn redrive(&self, max: u32) -> Result<usize, hookline::ports::queue::QueueError> {
        self.inner.redrive(max).await
    }
}

/// Outbound over the embedded adapters with its deliveries queue behind a [`FaultyQueue`],
/// driven by hand (no loops), so a test can fail a send at an exact moment.
async fn outbound_by_hand(
    dir: &std::path::Path,
) -> (hookline::outbound::Outbound, Arc<FaultyQueue>) {
    use hookline::ports::queue::{embedded::EmbeddedQueue, QueueSettings};
    use hookline::ports::sqlite::{Database, Durability};
    let db = Database::open(dir, Durability::Normal).unwrap();
    let settings = QueueSettings {
        visibility_timeout: Duration::from_millis(300),
        max_receive_count: 50,
    };
    let deliveries = Arc::new(FaultyQueue::new(
        Arc::new(EmbeddedQueue::named(
            db.clone(),
            "outbound-deliveries",
            settings,
        )),
        usize::MAX,
    ));
    let ports = hookline::outbound::Ports {
        store: Arc::new(
            hookline::ports::outbound::embedded::EmbeddedOutboundStore::new(db.clone()),
        ),
        orgs: Arc::new(hookline::ports::orgs::embedded::EmbeddedOrgStore::new(
            db.clone(),
        )),
        keys: Arc::new(hookline::ports::keys::embedded::LocalKeys::open_or_create(dir).unwrap()),
        mailer: Arc::new(hookline::ports::mail::embedded::Outbox::open(dir)),
        dispatch_queue: Arc::new(EmbeddedQueue::named(db, "outbound-dispatch", settings)),
        deliveries_queue: deliveries.clone(),
        due: None,
        clock: Arc::new(hookline::clock::SystemClock),
    };
    let outbound = hookline::outbound::Outbound::assemble(
        ports,
        short_settings(3, Duration::from_millis(100)),
        hookline_e2e::outbound::local_development(),
        hookline::outbound::catalog::EventCatalog::default(),
        Arc::new(|| 0.0),
        None,
    );
    (outbound, deliveries)
}

/// Take the one message the deliveries queue holds now (waiting up to `wait`).
async fn take_one(
    queue: &dyn hookline::ports::queue::Queue,
    wait: Duration,
) -> hookline::ports::queue::ReceivedMessage {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut got = queue.receive(1, Duration::from_millis(50)).await.unwrap();
        if let Some(m) = got.pop() {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "no message came");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_follow_up_could_not_be_queued_is_queued_again_when_its_message_returns() {
    use hookline::outbound::deliver::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let (outbound, queue) = outbound_by_hand(dir.path()).await;
    let receiver = Receiver::answering(500).await;
    let (endpoint, _) = outbound
        .endpoints
        .create(
            "acme",
            hookline::outbound::endpoints::CreateEndpoint {
                url: receiver.url.clone(),
                event_types: vec!["invoice.paid".into()],
                description: None,
                signature_header: None,
                enabled: Some(true),
                rate_limit_per_second: None,
            },
        )
        .await
        .unwrap();
    // The test event's message.
    let first = take_one(queue.as_ref(), Duration::from_secs(2)).await;
    // The attempt fails at the receiver, and the queue fails as the retry is scheduled.
    queue.fail_sends();
    assert!(outbound
        .deliverer
        .handle_message(&first.body)
        .await
        .is_err());
    queue.heal();
    assert_eq!(receiver.count(), 1);
    // The message was not acknowledged: it comes back, finds its attempt made, and queues the
    // follow-up instead of being dropped as stale.
    let again = take_one(queue.as_ref(), Duration::from_secs(2)).await;
    assert_eq!(again.body, first.body);
    assert_eq!(
        outbound
            .deliverer
            .handle_message(&again.body)
            .await
            .unwrap(),
        Outcome::Deferred
    );
    queue.inner.delete(&again.receipt).await.unwrap();
    let follow_up = take_one(queue.as_ref(), Duration::from_secs(2)).await;
    let outcome = outbound
        .deliverer
        .handle_message(&follow_up.body)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Retrying(_)), "{outcome:?}");
    assert_eq!(receiver.count(), 2, "the second attempt was made");
    let (page, _) = outbound
        .ports
        .store
        .list_deliveries(
            "acme",
            &hookline::ports::outbound::DeliveryFilter {
                endpoint_id: Some(endpoint.id.clone()),
                ..Default::default()
            },
            10,
            None,
        )
        .await
        .unwrap();
    assert_eq!(page[0].attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_loses_its_claim_to_a_dead_deliverer_waits_for_the_lease_and_sends() {
    use hookline::outbound::deliver::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let (outbound, queue) = outbound_by_hand(dir.path()).await;
    let receiver = Receiver::answering(200).await;
    outbound
        .endpoints
        .create(
            "acme",
            hookline::outbound::endpoints::CreateEndpoint {
                url: receiver.url.clone(),
                event_types: vec!["invoice.paid".into()],
                description: None,
                signature_header: None,
                enabled: Some(true),
                rate_limit_per_second: None,
            },
        )
        .await
        .unwrap();
    let message = take_one(queue.as_ref(), Duration::from_secs(2)).await;
    let msg: hookline::outbound::dispatch::DeliveryMessage =
        serde_json::from_str(&message.body).unwrap();
    // A deliverer claimed the attempt and died: its lease runs another 700 ms.
    let now = chrono::Utc::now();
    outbound
        .ports
        .store
        .claim_delivery(
            &msg.delivery_id,
            0,
            now + chrono::Duration::milliseconds(700),
            now,
        )
        .await
        .unwrap()
        .expect("the first claim wins");
    assert_eq!(
        outbound
            .deliverer
            .handle_message(&message.body)
            .await
            .unwrap(),
        Outcome::Deferred,
        "not dropped while another deliverer's lease runs"
    );
    queue.inner.delete(&message.receipt).await.unwrap();
    let later = take_one(queue.as_ref(), Duration::from_secs(5)).await;
    assert_eq!(
        outbound
            .deliverer
            .handle_message(&later.body)
            .await
            .unwrap(),
        Outcome::Delivered
    );
    assert_eq!(receiver.count(), 1);
}
