//! Deliveries that Hookline takes: each source accepted, processed and listed once; duplicates
//! answered as duplicates; conflicting redeliveries refused; many concurrent copies accepted
//! once; and all of it surviving a restart. Over HTTP against the embedded adapters.

use hookline::model::{sha256_hex, DeliveryStatus, Source};
use hookline_e2e::*;
use std::collections::BTreeSet;

fn id_for(source: Source) -> String {
    format!("{source}-{}", uuid::Uuid::new_v4())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_is_accepted_processed_and_listed_once() {
    let app = spawn_app().await;
    let mut expected_ids = Vec::new();
    for f in FIXTURES {
        let sent_id = id_for(f.source);
        let reply = app
            .send_with_id(f.source, &f.body(), secret_for(f.source), &sent_id)
            .await;
        reply.assert_status(202);
        let json = reply.json();
        let delivery_id = f.expected_delivery_id(&sent_id);
        assert_eq!(json["status"], "queued", "{}: {}", f.source, reply.body);
        assert_eq!(json["source"], f.source.as_str(), "{}", reply.body);
        assert_eq!(json["delivery_id"], delivery_id.as_str(), "{}", reply.body);
        expected_ids.push((f, delivery_id));
    }

    let log = app.wait_until_processed(FIXTURES.len()).await;
    assert_eq!(log.len(), FIXTURES.len(), "{}", describe(&log));
    for (f, delivery_id) in &expected_ids {
        let mine: Vec<_> = log.iter().filter(|d| d.source == f.source).collect();
        assert_eq!(
            mine.len(),
            1,
            "one delivery for {}:\n{}",
            f.source,
            describe(&log)
        );
        let d = mine[0];
        assert_eq!(&d.delivery_id, delivery_id, "{}", f.source);
        assert_eq!(d.event_type, f.event_type, "{}", f.source);
        assert_eq!(d.status, DeliveryStatus::Processed, "{}", f.source);
        assert_eq!(d.attempts, 1, "{}", f.source);
        assert_eq!(d.error, None, "{}", f.source);
        assert!(d.signature_verified, "{}", f.source);
        assert_eq!(d.payload_sha256, sha256_hex(&f.body()), "{}", f.source);
        assert!(d.processed_at.is_some(), "{} has no processed_at", f.source);
        assert!(d.duration_ms.is_some(), "{} has no duration", f.source);
    }

    let activities = app.activities().await;
    assert_eq!(activities.len(), FIXTURES.len(), "{activities:#?}");
    for (f, delivery_id) in &expected_ids {
        let a = activities
            .iter()
            .find(|a| a.source == f.source)
            .unwrap_or_else(|| panic!("no activity for {}: {activities:#?}", f.source));
        assert_eq!(&a.delivery_id, delivery_id);
        assert_eq!(a.event_type, f.event_type);
    }
    assert_eq!(app.enqueued(), FIXTURES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activity_names_the_repository_and_actor_of_a_github_push() {
    let app = spawn_app().await;
    let f = fixture(Source::Github);
    app.send(f.source, &f.body(), GITHUB_SECRET)
        .await
        .assert_status(202);
    app.wait_until_processed(1).await;
    let activities = app.activities().await;
    assert_eq!(activities.len(), 1, "{activities:#?}");
    let a = &activities[0];
    assert_eq!(a.repository.as_deref(), Some("acme/hookline-demo"));
    assert_eq!(a.actor.as_deref(), Some("octocat"));
    assert_eq!(a.git_ref.as_deref(), Some("refs/heads/main"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_is_answered_as_a_duplicate() {
    let app = spawn_app().await;
    let ids: Vec<_> = FIXTURES.iter().map(|f| (*f, id_for(f.source))).collect();
    for (f, id) in &ids {
        app.send_with_id(f.source, &f.body(), secret_for(f.source), id)
            .await
            .assert_status(202);
        // At once, while the first copy may still be on the queue.
        let again = app
            .send_with_id(f.source, &f.body(), secret_for(f.source), id)
            .await;
        again.assert_status(200);
        assert_eq!(again.json()["status"], "duplicate", "{}", f.source);
    }
    app.wait_until_processed(ids.len()).await;
    // And again once it has been processed.
    for (f, id) in &ids {
        let again = app
            .send_with_id(f.source, &f.body(), secret_for(f.source), id)
            .await;
        again.assert_status(200);
        let json = again.json();
        assert_eq!(json["status"], "duplicate", "{}", f.source);
        assert_eq!(
            json["delivery_id"],
            f.expected_delivery_id(id).as_str(),
            "{}",
            f.source
        );
    }

    let log = app.deliveries().await;
    assert_eq!(log.len(), ids.len(), "{}", describe(&log));
    assert!(log.iter().all(processed_once), "{}", describe(&log));
    assert_eq!(app.activities().await.len(), ids.len());
    assert_eq!(app.enqueued(), ids.len(), "each delivery is queued once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_id_with_a_different_payload_is_a_conflict() {
    let app = spawn_app().await;
    // Every source whose provider sends a delivery id (WhatsApp's id is the body's hash, so
    // a different body is a different delivery).
    for source in [
        Source::Github,
        Source::Gitlab,
        Source::Jira,
        Source::Stripe,
        Source::Twilio,
    ] {
        let f = fixture(source);
        let id = id_for(source);
        let original = f.body();
        app.send_with_id(source, &original, secret_for(source), &id)
            .await
            .assert_status(202);
        // Same id (Stripe: the same event id, which lives in the body), other bytes.
        let text = String::from_utf8(original.clone()).unwrap();
        let changed = match source {
            Source::Twilio => text.replace("delivered", "undelivered"),
            Source::Stripe => text.replace("4900", "4901"),
            _ => text.replacen('{', r#"{"tampered_by_test":true,"#, 1),
        };
        assert_ne!(
            changed.as_bytes(),
            &original[..],
            "{source}: the change took"
        );
        let reply = app
            .send_with_id(source, changed.as_bytes(), secret_for(source), &id)
            .await;
        reply.assert_status(409);
        assert_eq!(reply.json()["error"], "delivery_conflict", "{source}");
    }

    let log = app.wait_until_processed(5).await;
    assert_eq!(log.len(), 5, "{}", describe(&log));
    for d in &log {
        let f = fixture(d.source);
        assert_eq!(d.payload_sha256, sha256_hex(&f.body()), "{}", d.source);
        assert_eq!(d.event_type, f.event_type, "{}", d.source);
        assert!(processed_once(d), "{}", describe(&log));
    }
    assert_eq!(app.activities().await.len(), 5);
    assert_eq!(app.enqueued(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_copies_of_one_delivery_are_accepted_once() {
    let app = spawn_app().await;
    let f = fixture(Source::Github);
    let req = app.sign(f.source, &f.body(), GITHUB_SECRET, Some("concurrent-1"));
    let replies = send_concurrently(&app, &req, 200).await;

    let h = histogram(&replies);
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let duplicates = replies
        .iter()
        .filter(|r| r.status == 200 && r.outcome() == "duplicate")
        .count();
    assert!(
        accepted == 1 && duplicates == 199,
        "expected one 202 and 199 duplicates, got {h:?}"
    );

    let log = app.wait_until_processed(1).await;
    assert_eq!(log.len(), 1, "{}", describe(&log));
    assert!(processed_once(&log[0]), "{}", describe(&log));
    assert_eq!(app.enqueued(), 1, "queued exactly once");
    assert_eq!(app.activities().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let app = spawn_app().await;
    let f = fixture(Source::Github);
    app.send_with_id(f.source, &f.body(), GITHUB_SECRET, "survivor")
        .await
        .assert_status(202);
    let before = app.wait_until_processed(1).await;
    let data_dir = app
        .shutdown()
        .await
        .expect("an embedded app has a data dir");

    let app = spawn_app_with(Options {
        data_dir: Some(data_dir),
        ..Options::default()
    })
    .await;
    let after = app.deliveries().await;
    assert_eq!(after, before, "the log after the restart");
    assert_eq!(app.activities().await.len(), 1);

    let again = app
        .send_with_id(f.source, &f.body(), GITHUB_SECRET, "survivor")
        .await;
    again.assert_status(200);
    assert_eq!(again.json()["status"], "duplicate");
    assert_eq!(app.enqueued(), 0, "nothing queued after the restart");
    let log = app.deliveries().await;
    assert_eq!(log.len(), 1, "{}", describe(&log));
    assert!(processed_once(&log[0]), "{}", describe(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_queued_before_a_restart_is_processed_after_it() {
    // No worker: the delivery waits on the durable queue across the restart.
    let app = spawn_app_with(Options {
        worker_loops: 0,
        ..Options::default()
    })
    .await;
    let f = fixture(Source::Stripe);
    app.send(f.source, &f.body(), STRIPE_SECRET)
        .await
        .assert_status(202);
    let log = app.deliveries().await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, DeliveryStatus::Queued, "{}", describe(&log));
    let data_dir = app.shutdown().await;

    let app = spawn_app_with(Options {
        data_dir,
        ..Options::default()
    })
    .await;
    let log = app.wait_until_processed(1).await;
    assert!(processed_once(&log[0]), "{}", describe(&log));
    let sources: BTreeSet<_> = app.activities().await.iter().map(|a| a.source).collect();
    assert_eq!(sources, BTreeSet::from([Source::Stripe]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_payload_and_signing_variant_is_accepted_and_processed() {
    let app = spawn_app().await;
    let twilio_json = br#"{"property": "value", "boolean": true}"#;
    // (what, source, body, URL suffix, expected event type)
    let cases: [(&str, Source, Vec<u8>, &str, &str); 5] = [
        (
            "a failed GitHub workflow run",
            Source::Github,
            payload("github-workflow-run-failure.json"),
            "",
            "workflow_run",
        ),
        (
            "an incoming SMS",
            Source::Twilio,
            payload("twilio-inbound-message.txt"),
            "",
            "message",
        ),
        (
            "a Twilio callback URL with its own query (signed with it)",
            Source::Twilio,
            payload("twilio-message-status.txt"),
            "?tenant=acme&region=eu",
            "message_status",
        ),
        (
            "a Twilio JSON body (bodySHA256 in the URL)",
            Source::Twilio,
            twilio_json.to_vec(),
            "",
            "twilio",
        ),
        (
            "a second WhatsApp notification",
            Source::Whatsapp,
            String::from_utf8(payload("whatsapp-message.json"))
                .unwrap()
                .replace("Is the deploy done?", "Deployed, thanks")
                .into_bytes(),
            "",
            "whatsapp_business_account.messages",
        ),
    ];
    for (what, source, body, suffix, _) in &cases {
        let url = format!("{}{suffix}", app.route(*source));
        let req = hookline::providers::simulate::sign(&hookline::providers::simulate::Simulation {
            source: *source,
            secret: secret_for(*source),
            url: Some(&url),
            body,
            event: None,
            now: chrono::Utc::now(),
            delivery_id: None,
        })
        .unwrap();
        let reply = app.post(&req).await;
        assert_eq!(reply.status, 202, "{what}: {}", reply.body);
    }
    let log = app.wait_until_processed(cases.len()).await;
    assert_eq!(log.len(), cases.len(), "{}", describe(&log));
    let mut want: Vec<_> = cases.iter().map(|c| (c.1, c.4.to_string())).collect();
    let mut got: Vec<_> = log
        .iter()
        .map(|d| (d.source, d.event_type.clone()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(log.iter().all(processed_once), "{}", describe(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jira_delivery_may_prove_itself_with_the_legacy_secret_query() {
    let app = spawn_app().await;
    let body = fixture(Source::Jira).body();
    let post = |query: &'static str| {
        let url = format!("{}?secret={query}", app.route(Source::Jira));
        app.client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Atlassian-Webhook-Identifier", "legacy-1")
            .body(body.clone())
            .send()
    };
    let wrong = post("guessed").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(app.deliveries().await.is_empty());
    let right = post(JIRA_SECRET).await.unwrap();
    assert_eq!(right.status(), 202);
    let log = app.wait_until_processed(1).await;
    assert_eq!(log[0].delivery_id, "legacy-1");
    assert_eq!(log[0].event_type, "jira:issue_created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_ping_is_accepted_and_skipped() {
    let app = spawn_app().await;
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":123,"hook":{"type":"Repository","id":123,"events":["push"]},"repository":{"full_name":"acme/hookline-demo"}}"#;
    let reply = app
        .send_with_id(Source::Github, ping, GITHUB_SECRET, "ping-1")
        .await;
    reply.assert_status(202);
    let log = app.wait_until_processed(1).await;
    let d = &log[0];
    assert_eq!(d.event_type, "ping");
    assert_eq!(d.status, DeliveryStatus::Skipped, "{}", describe(&log));
    assert!(
        d.error.as_deref().is_some_and(|e| e.contains("ping")),
        "{:?}",
        d.error
    );
    assert!(app.activities().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_distinct_deliveries_at_once_are_each_processed_once() {
    let app = spawn_app().await;
    let f = fixture(Source::Github);
    let body = f.body();
    let app = &app;
    let sends = (0..200).map(|i| {
        let req = app.sign(f.source, &body, GITHUB_SECRET, Some(&format!("burst-{i}")));
        async move { app.post(&req).await }
    });
    let replies = futures::future::join_all(sends).await;
    let h = histogram(&replies);
    assert!(replies.iter().all(|r| r.status == 202), "{h:?}");
    let log = app.wait_until_processed(200).await;
    assert_eq!(log.len(), 200);
    assert!(log.iter().all(processed_once), "{}", describe(&log));
    let ids: BTreeSet<_> = log.iter().map(|d| d.delivery_id.clone()).collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(app.enqueued(), 200);
    assert_eq!(app.activities().await.len(), 200);
}

/// A request that recorded a delivery and died before queueing it leaves it `received`; the
/// provider's retry waits while that request's enqueue lease runs (503, retry later), then
/// takes it over and queues it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_left_unqueued_by_a_crash_is_queued_by_the_providers_retry() {
    use hookline::model::{DeliveryKey, NewDelivery};
    let app = spawn_app_with(Options {
        settings: hookline::config::Settings {
            in_progress_wait: std::time::Duration::from_millis(200),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let f = fixture(Source::Github);
    let body = f.body();
    let now = chrono::Utc::now();
    let lease_ends = now + chrono::Duration::milliseconds(1500);
    let outcome = app
        .store
        .record(&NewDelivery {
            key: DeliveryKey::new(Source::Github, "crashed-1"),
            source: Source::Github,
            delivery_id: "crashed-1".into(),
            event_type: "push".into(),
            payload_sha256: sha256_hex(&body),
            signature_verified: true,
            received_at: now,
            enqueue_lease_until: lease_ends,
            expires_at: now + chrono::Duration::days(1),
            owner: None,
        })
        .await
        .unwrap();
    assert_eq!(outcome, hookline::ports::store::RecordOutcome::Recorded);

    let req = app.sign(Source::Github, &body, GITHUB_SECRET, Some("crashed-1"));
    let early = app.post(&req).await;
    assert_eq!(early.status, 503, "{}", early.body);
    assert_eq!(early.json()["error"], "delivery_in_progress");
    assert!(early.header("retry-after").is_some());
    assert_eq!(app.enqueued(), 0);

    let wait = (lease_ends - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(50)).await;
    let retry = app.post(&req).await;
    retry.assert_status(202);
    assert_eq!(retry.json()["status"], "queued");
    let log = app.wait_until_processed(1).await;
    assert!(processed_once(&log[0]), "{}", describe(&log));
    assert_eq!(app.enqueued(), 1);
    app.post(&req).await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_exactly_at_the_limit_is_accepted_and_one_byte_more_is_not() {
    let body = fixture(Source::Github).body();
    let app = spawn_app_with(Options {
        settings: hookline::config::Settings {
            max_body_bytes: body.len(),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    app.send(Source::Github, &body, GITHUB_SECRET)
        .await
        .assert_status(202);
    let mut bigger = body.clone();
    bigger.push(b'\n');
    app.send(Source::Github, &bigger, GITHUB_SECRET)
        .await
        .assert_status(413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_the_dedupe_window_is_a_new_delivery() {
    let clock = std::sync::Arc::new(hookline::clock::ManualClock::at(chrono::Utc::now()));
    let app = spawn_app_with(Options {
        settings: hookline::config::Settings {
            delivery_ttl: std::time::Duration::from_secs(3600),
            // The record outlives the payload's retention: keep it short enough not to
            // stretch the one-hour dedupe window.
            payload_retention: std::time::Duration::from_secs(1800),
            ..Default::default()
        },
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    let f = fixture(Source::Github);
    app.send_with_id(f.source, &f.body(), GITHUB_SECRET, "late")
        .await
        .assert_status(202);
    let first = app.wait_until_processed(1).await;
    clock.advance(chrono::Duration::minutes(59));
    let within = app
        .send_with_id(f.source, &f.body(), GITHUB_SECRET, "late")
        .await;
    within.assert_status(200);
    assert_eq!(within.json()["status"], "duplicate");

    // Past the record's TTL the dedupe record is gone: the provider's (very) late redelivery
    // is taken as new.
    clock.advance(chrono::Duration::minutes(2));
    let late = app
        .send_with_id(f.source, &f.body(), GITHUB_SECRET, "late")
        .await;
    late.assert_status(202);
    assert_eq!(late.json()["status"], "queued");
    let log = app
        .wait_for("the late redelivery processed", |seen| {
            (seen.len() == 1
                && seen[0].received_at > first[0].received_at
                && seen[0].status == DeliveryStatus::Processed)
                .then(|| seen.to_vec())
        })
        .await;
    assert!(processed_once(&log[0]), "{}", describe(&log));
    assert_eq!(app.enqueued(), 2);
}

/// The delivery log says when each delivery was queued, even when the worker finishes it
/// before the queue's answer to the send reaches the pipeline (a slow SQS response: the
/// message is already visible to consumers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_when_a_delivery_was_queued_even_if_the_worker_was_faster() {
    let app = spawn_app_with(Options {
        slow_enqueue_answer: std::time::Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    let f = fixture(Source::Github);
    app.send(f.source, &f.body(), GITHUB_SECRET)
        .await
        .assert_status(202);
    let log = app.wait_until_processed(1).await;
    let d = &log[0];
    assert!(processed_once(d), "{}", describe(&log));
    assert!(
        d.queued_at.is_some(),
        "a processed delivery has a queued_at: {d:#?}"
    );
    assert!(d.queued_at <= d.processed_at, "{d:#?}");
}
