//! The same server over the AWS adapters — DynamoDB and SQS, spoken to on moto server — and
//! what it does when one of them is down: 503 with Retry-After, nothing half-done, and the
//! provider's retry later gets the delivery queued and processed once.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-e2e` (it starts moto and exports
//! `HOOKLINE_MOTO_ENDPOINT`); without it every test here fails, none is skipped.

use hookline::model::{DeliveryStatus, Source};
use hookline_e2e::*;
use std::time::{Duration, Instant};

/// Copies sent at once in the concurrency test on moto. The embedded test sends 200; moto is
/// one Python process, and at 200 simultaneous copies it cannot keep up: 10–25% of the copies
/// got an (honest) 503 — DynamoDB calls timing out on connect, or the first copy's enqueue
/// taking longer than the 2 s a concurrent copy waits — and the load spilled into the other
/// tests of this file. 50 copies race on the conditional write just the same.
const CONCURRENT_COPIES: usize = 50;

fn assert_unavailable(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status, 503,
        "{what}: expected 503, got {} {}",
        reply.status, reply.body
    );
    assert_eq!(
        reply.json()["error"],
        "unavailable",
        "{what}: {}",
        reply.body
    );
    let retry_after: u64 = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: a 503 says when to retry: {:?}", reply.headers))
        .parse()
        .expect("Retry-After is a number of seconds");
    assert!(retry_after > 0, "{what}: Retry-After {retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_is_accepted_and_processed_on_dynamodb_and_sqs() {
    let app = spawn_app_on_moto().await;
    let mut expected = Vec::new();
    for f in FIXTURES {
        let sent_id = format!("{}-{}", f.source, uuid::Uuid::new_v4());
        let reply = app
            .send_with_id(f.source, &f.body(), secret_for(f.source), &sent_id)
            .await;
        reply.assert_status(202);
        assert_eq!(reply.json()["status"], "queued", "{}", f.source);
        expected.push((f, f.expected_delivery_id(&sent_id)));
    }
    let log = app.wait_until_processed(FIXTURES.len()).await;
    assert_eq!(log.len(), FIXTURES.len(), "{}", describe(&log));
    for (f, delivery_id) in &expected {
        let mine: Vec<_> = log.iter().filter(|d| d.source == f.source).collect();
        assert_eq!(mine.len(), 1, "{}:\n{}", f.source, describe(&log));
        assert_eq!(&mine[0].delivery_id, delivery_id);
        assert_eq!(mine[0].event_type, f.event_type);
        assert!(processed_once(mine[0]), "{}", describe(&log));
    }
    let activities = app.activities().await;
    assert_eq!(activities.len(), FIXTURES.len(), "{activities:#?}");

    // A redelivery of each is a duplicate.
    for (f, _) in &expected {
        let sent_id = log
            .iter()
            .find(|d| d.source == f.source)
            .map(|d| d.delivery_id.clone())
            .unwrap();
        let again = app
            .send_with_id(f.source, &f.body(), secret_for(f.source), &sent_id)
            .await;
        again.assert_status(200);
        assert_eq!(again.json()["status"], "duplicate", "{}", f.source);
    }
    assert_eq!(app.enqueued(), FIXTURES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused_on_moto_and_nothing_is_written() {
    let app = spawn_app_on_moto_with(MotoOptions {
        worker_loops: 0,
        ..MotoOptions::default()
    })
    .await;
    for f in FIXTURES {
        let reply = app.send(f.source, &f.body(), "wrong-secret").await;
        reply.assert_status(401);
        assert_eq!(reply.json()["error"], "invalid_signature");
    }
    assert!(app.deliveries().await.is_empty());
    let moto = app.moto.as_ref().unwrap();
    assert!(moto.drain_main_queue().await.is_empty());
    assert_eq!(app.enqueued(), 0);
}

async fn store_down_answers_503_and_enqueues_nothing(store: MotoStore, what: &str) {
    // No worker: whatever the pipeline queued would still be on the SQS queue.
    let app = spawn_app_on_moto_with(MotoOptions {
        store,
        worker_loops: 0,
        ..MotoOptions::default()
    })
    .await;
    for f in FIXTURES {
        let started = Instant::now();
        let reply = app.send(f.source, &f.body(), secret_for(f.source)).await;
        assert_unavailable(&reply, &format!("{what}, {}", f.source));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: the 503 came fast ({:?})",
            started.elapsed()
        );
    }
    assert_eq!(app.enqueued(), 0, "{what}: nothing was sent to SQS");
    let on_queue = app.moto.as_ref().unwrap().drain_main_queue().await;
    assert!(
        on_queue.is_empty(),
        "{what}: the SQS queue holds {on_queue:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_answers_503_and_nothing_is_enqueued() {
    store_down_answers_503_and_enqueues_nothing(MotoStore::MissingTable, "missing table").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_answers_503_and_nothing_is_enqueued() {
    store_down_answers_503_and_enqueues_nothing(MotoStore::ClosedPort, "closed port").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_down_answers_503_and_the_providers_retry_is_queued_and_processed_once() {
    let app = spawn_app_on_moto_with(MotoOptions {
        queue: MotoQueue::NotCreatedYet,
        ..MotoOptions::default()
    })
    .await;
    let moto = app.moto.clone().unwrap();
    let f = fixture(Source::Github);
    // The provider signs once and retries the identical request.
    let req = app.sign(f.source, &f.body(), GITHUB_SECRET, Some("retried-later"));

    let first = app.post(&req).await;
    assert_unavailable(&first, "queue down");
    let log = app.deliveries().await;
    assert_eq!(log.len(), 1, "{}", describe(&log));
    assert_eq!(
        log[0].status,
        DeliveryStatus::Received,
        "recorded, not queued: {}",
        describe(&log)
    );
    assert_eq!(log[0].attempts, 0);

    // Still down: still 503, still one record.
    assert_unavailable(&app.post(&req).await, "queue still down");
    assert_eq!(app.deliveries().await.len(), 1);

    // The queue comes back (same name, so the same URL the server holds).
    let (url, _) = moto.create_queue(MOTO_QUEUE).await;
    assert_eq!(
        url.rsplit('/').next(),
        moto.sqs_queue.queue_url().rsplit('/').next(),
        "the created queue is the one the server was given"
    );

    let retry = app.post(&req).await;
    retry.assert_status(202);
    assert_eq!(retry.json()["status"], "queued");

    let log = app.wait_until_processed(1).await;
    assert_eq!(log.len(), 1, "{}", describe(&log));
    assert!(processed_once(&log[0]), "{}", describe(&log));
    assert_eq!(app.activities().await.len(), 1);
    assert_eq!(app.enqueued(), 1, "queued exactly once");

    let again = app.post(&req).await;
    again.assert_status(200);
    assert_eq!(again.json()["status"], "duplicate");
    // Give a stray second message time to show up, then check nothing changed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = app.deliveries().await;
    assert!(processed_once(&log[0]), "{}", describe(&log));
    assert_eq!(app.enqueued(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_delivery_are_accepted_once_on_moto() {
    let app = spawn_app_on_moto().await;
    let f = fixture(Source::Github);
    let req = app.sign(f.source, &f.body(), GITHUB_SECRET, Some("concurrent-moto"));
    let replies = send_concurrently(&app, &req, CONCURRENT_COPIES).await;
    let h = histogram(&replies);
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let duplicates = replies
        .iter()
        .filter(|r| r.status == 200 && r.outcome() == "duplicate")
        .count();
    // A copy that waited longer than `in_progress_wait` for the first one's enqueue (moto on
    // a busy machine is slow) is answered 503 so the provider retries it: nothing is lost.
    let retried = replies
        .iter()
        .filter(|r| r.status == 503 && r.json()["error"] == "delivery_in_progress")
        .count();
    assert!(
        accepted == 1 && duplicates + retried == CONCURRENT_COPIES - 1,
        "expected one 202 and {} duplicates or retry-laters, got {h:?}",
        CONCURRENT_COPIES - 1
    );
    // The provider's retry of each of those, once the first copy is queued, is a duplicate.
    for _ in 0..retried {
        let again = app.post(&req).await;
        again.assert_status(200);
        assert_eq!(again.json()["status"], "duplicate");
    }
    let log = app.wait_until_processed(1).await;
    assert_eq!(log.len(), 1, "{}", describe(&log));
    assert!(processed_once(&log[0]), "{}", describe(&log));
    assert_eq!(app.enqueued(), 1);
    assert_eq!(app.activities().await.len(), 1);
}

/// The moto tests never skip: a missing endpoint is a failure that says what to do.
#[test]
fn the_moto_endpoint_is_configured() {
    let endpoint = moto_endpoint();
    assert!(endpoint.starts_with("http"), "{endpoint}");
}
