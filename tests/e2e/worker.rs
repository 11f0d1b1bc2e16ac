//! What the worker does when handling an event fails: the queue hands it back after the
//! visibility timeout, the delivery log shows each attempt, and after the redrive limit the
//! message lands in the dead-letter queue, from where a redrive replays it. Over HTTP against
//! the embedded adapters, with a handler that fails on purpose (the standard handlers only
//! store activity records, which does not fail).

use chrono::{DateTime, Utc};
use hookline::model::{DeliveryStatus, Envelope, Source};
use hookline::ports::queue::QueueSettings;
use hookline::ports::store::DeliveryStore;
use hookline::worker::activity::RecordActivity;
use hookline::worker::{Dispatcher, Event, Handled, Handler, WorkerError};
use hookline_e2e::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A handler whose downstream is down for its first `failures` calls, then records the
/// activity as the standard handler does.
struct Flaky {
    failures: usize,
    calls: Arc<AtomicUsize>,
    then: RecordActivity,
}

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn handle(&self, event: &Event, now: DateTime<Utc>) -> Result<Handled, WorkerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.failures {
            return Err(WorkerError::Handler(format!(
                "the downstream is down (call {})",
                call + 1
            )));
        }
        self.then.handle(event, now).await
    }
}

const RETRY_LIMIT: u32 = 3;

fn flaky_app(failures: usize, calls: Arc<AtomicUsize>) -> Options {
    Options {
        queue: QueueSettings {
            visibility_timeout: Duration::from_millis(300),
            max_receive_count: RETRY_LIMIT,
        },
        dispatcher: Some(Arc::new(move |store: Arc<dyn DeliveryStore>| {
            Dispatcher::default().otherwise(Arc::new(Flaky {
                failures,
                calls: calls.clone(),
                then: RecordActivity::new(store),
            }))
        })),
        ..Options::default()
    }
}

/// Wait until the dead-letter queue holds a message, and return its envelope.
async fn wait_for_dead_letter(app: &TestApp) -> Envelope {
    let started = Instant::now();
    loop {
        let dead = app
            .queue
            .receive_dead_letters(10)
            .await
            .expect("read the dead-letter queue");
        if let Some(m) = dead.first() {
            assert_eq!(dead.len(), 1, "{dead:?}");
            return Envelope::from_message(&m.body).expect("a dead letter is a queue envelope");
        }
        if started.elapsed() > WAIT_LIMIT {
            panic!(
                "nothing reached the dead-letter queue in {WAIT_LIMIT:?}; the delivery log:\n{}",
                describe(&app.deliveries().await)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failure_is_retried_then_dead_lettered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = spawn_app_with(flaky_app(usize::MAX, calls.clone())).await;
    let f = fixture(Source::Github);
    app.send_with_id(f.source, &f.body(), GITHUB_SECRET, "always-fails")
        .await
        .assert_status(202);

    let dead = wait_for_dead_letter(&app).await;
    assert_eq!(dead.source, Source::Github);
    assert_eq!(dead.delivery_id, "always-fails");
    assert_eq!(dead.event_type, "push");
    assert_eq!(
        dead.raw_body().unwrap(),
        f.body(),
        "the dead letter keeps the exact body"
    );

    let log = app.deliveries().await;
    assert_eq!(log.len(), 1, "{}", describe(&log));
    let d = &log[0];
    assert_eq!(d.status, DeliveryStatus::Failed, "{}", describe(&log));
    assert_eq!(
        d.attempts,
        RETRY_LIMIT,
        "one attempt per receive: {}",
        describe(&log)
    );
    assert!(
        d.error
            .as_deref()
            .is_some_and(|e| e.contains("the downstream is down")),
        "the log says why: {:?}",
        d.error
    );
    assert_eq!(calls.load(Ordering::SeqCst), RETRY_LIMIT as usize);
    assert!(app.activities().await.is_empty());

    // Dead-lettered means no more attempts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(calls.load(Ordering::SeqCst), RETRY_LIMIT as usize);
    assert_eq!(app.deliveries().await[0].attempts, RETRY_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failure_is_retried_and_succeeds_on_the_next_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = spawn_app_with(flaky_app(1, calls.clone())).await;
    let f = fixture(Source::Jira);
    app.send(f.source, &f.body(), JIRA_SECRET)
        .await
        .assert_status(202);

    let log = app.wait_until_processed(1).await;
    let d = &log[0];
    assert_eq!(d.status, DeliveryStatus::Processed, "{}", describe(&log));
    assert_eq!(d.attempts, 2, "{}", describe(&log));
    assert_eq!(d.error, None, "a success clears the last error");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(app.activities().await.len(), 1);
    assert_eq!(
        app.enqueued(),
        1,
        "the retry came from the queue, not the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_redriven_after_the_downstream_recovers_is_processed_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = spawn_app_with(flaky_app(RETRY_LIMIT as usize, calls.clone())).await;
    let f = fixture(Source::Gitlab);
    app.send(f.source, &f.body(), GITLAB_TOKEN)
        .await
        .assert_status(202);
    wait_for_dead_letter(&app).await;

    assert_eq!(app.queue.redrive(10).await.expect("redrive"), 1);
    let log = app.wait_until_processed(1).await;
    let d = &log[0];
    assert_eq!(d.status, DeliveryStatus::Processed, "{}", describe(&log));
    assert_eq!(d.attempts, RETRY_LIMIT + 1, "{}", describe(&log));
    assert_eq!(calls.load(Ordering::SeqCst), RETRY_LIMIT as usize + 1);
    assert_eq!(app.activities().await.len(), 1);
}
