//! The behaviour every [`Queue`] adapter must have: SQS semantics. Run through
//! [`queue_conformance!`](crate::queue_conformance) on a fresh queue pair per test, created
//! with [`SETTINGS`].

use super::Queue;
pub use super::QueueSettings;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The settings the conformance suite expects its fresh queues to have.
pub const SETTINGS: QueueSettings = QueueSettings {
    visibility_timeout: Duration::from_secs(1),
    max_receive_count: 2,
};

const NO_WAIT: Duration = Duration::ZERO;

async fn after_visibility_timeout() {
    tokio::time::sleep(SETTINGS.visibility_timeout + Duration::from_millis(300)).await;
}

pub async fn a_sent_message_is_received_once_and_deleted(queue: Arc<dyn Queue>) {
    queue.send("hello", Duration::ZERO).await.unwrap();
    let got = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "hello");
    assert_eq!(got[0].receive_count, 1);
    // Invisible while someone works on it.
    assert!(queue.receive(10, NO_WAIT).await.unwrap().is_empty());
    queue.delete(&got[0].receipt).await.unwrap();
    after_visibility_timeout().await;
    assert!(
        queue.receive(10, NO_WAIT).await.unwrap().is_empty(),
        "deleted for good"
    );
}

pub async fn an_undeleted_message_returns_after_the_visibility_timeout(queue: Arc<dyn Queue>) {
    queue.send("again", Duration::ZERO).await.unwrap();
    let first = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    after_visibility_timeout().await;
    let second = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].body, "again");
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    queue.delete(&second[0].receipt).await.unwrap();
}

pub async fn a_delayed_message_stays_hidden_until_its_delay(queue: Arc<dyn Queue>) {
    queue.send("later", Duration::from_secs(2)).await.unwrap();
    assert!(queue.receive(10, NO_WAIT).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let got = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "later");
}

pub async fn a_message_received_too_often_moves_to_the_dead_letter_queue(queue: Arc<dyn Queue>) {
    queue.send("poison", Duration::ZERO).await.unwrap();
    for attempt in 1..=SETTINGS.max_receive_count {
        let got = queue.receive(1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1, "receipt {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        after_visibility_timeout().await;
    }
    assert!(
        queue.receive(1, NO_WAIT).await.unwrap().is_empty(),
        "past the redrive limit it is not handed out again"
    );
    let dead = queue.receive_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
}

pub async fn dead_letters_redrive_back_to_the_queue(queue: Arc<dyn Queue>) {
    queue.send("retry-me", Duration::ZERO).await.unwrap();
    for _ in 0..SETTINGS.max_receive_count {
        assert_eq!(
            queue
                .receive(1, Duration::from_secs(1))
                .await
                .unwrap()
                .len(),
            1
        );
        after_visibility_timeout().await;
    }
    assert!(queue.receive(1, NO_WAIT).await.unwrap().is_empty());
    // The move happens when the redrive limit is passed; give the DLQ a moment.
    let mut moved = 0;
    for _ in 0..10 {
        moved = queue.redrive(10).await.unwrap();
        if moved > 0 {
            break;
        }
        after_visibility_timeout().await;
    }
    assert_eq!(moved, 1);
    let back = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, "retry-me");
    assert_eq!(back[0].receive_count, 1, "a redriven message starts afresh");
    queue.delete(&back[0].receipt).await.unwrap();
    assert!(queue.receive_dead_letters(10).await.unwrap().is_empty());
}

pub async fn many_messages_are_each_received_exactly_once(queue: Arc<dyn Queue>) {
    let sent: BTreeSet<String> = (0..25).map(|i| format!("message-{i}")).collect();
    for body in &sent {
        queue.send(body, Duration::ZERO).await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        let batch = queue.receive(10, Duration::from_millis(200)).await.unwrap();
        assert!(batch.len() <= 10);
        for m in batch {
            queue.delete(&m.receipt).await.unwrap();
            seen.push(m.body);
        }
        if seen.len() == sent.len() {
            break;
        }
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), unique.len(), "no message twice");
    assert_eq!(unique, sent);
}

/// Both adapters: four receivers at once between them receive every message.
pub async fn concurrent_receivers_receive_every_message(queue: Arc<dyn Queue>) {
    concurrent_receivers(queue, false).await;
}

/// The embedded queue also never hands a message to a second receiver while the first holds
/// it. SQS promises less: a standard queue delivers at least once ("on rare occasions" a
/// message comes twice), and moto's ReceiveMessage checks and marks a message without a lock,
/// so two receives at once on a loaded machine can both take it. The worker's process lease
/// makes such a second copy harmless on both.
pub async fn concurrent_receivers_never_share_a_message(queue: Arc<dyn Queue>) {
    concurrent_receivers(queue, true).await;
}

async fn concurrent_receivers(queue: Arc<dyn Queue>, exclusive: bool) {
    for i in 0..20 {
        queue.send(&format!("c{i}"), Duration::ZERO).await.unwrap();
    }
    // Nothing is deleted, so on a slow server a message may come back once its visibility
    // timeout has run out; what must never happen is a second receiver getting it while the
    // first still holds it. Each receive notes when its call started and returned.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..10 {
                    let started = tokio::time::Instant::now();
                    let got = queue.receive(3, Duration::from_millis(100)).await.unwrap();
                    let returned = tokio::time::Instant::now();
                    for m in got {
                        mine.push((m.body, started, returned));
                    }
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let mut by_body: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for (body, started, returned) in all {
        by_body.entry(body).or_default().push((started, returned));
    }
    for (body, receives) in &mut by_body {
        receives.sort();
        if !exclusive {
            continue;
        }
        for pair in receives.windows(2) {
            let ((first_started, _), (_, second_returned)) = (pair[0], pair[1]);
            assert!(
                second_returned >= first_started + SETTINGS.visibility_timeout,
                "message {body} went to a second receiver while the first still held it"
            );
        }
    }
    assert_eq!(by_body.len(), 20, "every message was received");
}

/// Generates one `#[tokio::test]` per case. `$make` is an async expression yielding
/// `(guard, Arc<dyn Queue>)` for a fresh queue (with its dead-letter queue) configured with
/// [`SETTINGS`].
#[macro_export]
macro_rules! queue_conformance {
    ($make:expr) => {
        mod queue_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::queue::conformance as c;

            macro_rules! case {
                ($name:ident) => {
                    $crate::conformance_case!($make, $name, shared);
                };
            }

            case!(a_sent_message_is_received_once_and_deleted);
            case!(an_undeleted_message_returns_after_the_visibility_timeout);
            case!(a_delayed_message_stays_hidden_until_its_delay);
            case!(a_message_received_too_often_moves_to_the_dead_letter_queue);
            case!(dead_letters_redrive_back_to_the_queue);
            case!(many_messages_are_each_received_exactly_once);
            case!(concurrent_receivers_receive_every_message);
        }
    };
}
