//! Recording a delivery and queueing it as one step.
//!
//! The pipeline needs both to happen or neither. Across DynamoDB and SQS there is no shared
//! transaction, so it takes three steps with an enqueue lease between them (record, send,
//! mark queued; a provider retry finishes what a failed attempt left `received`). The
//! embedded store and queue live in one SQLite file, and there one transaction does it: one
//! commit per delivery instead of three, and no record is ever left received-but-not-queued.
//! The body is written once there: the message holds the envelope's head and names the
//! payload row whose body completes it (a second copy of a 17 KB body in the message was
//! half of what the writer thread wrote).

use crate::model::{NewDelivery, StoredPayload};
use crate::ports::queue::embedded::{insert_message, insert_message_over_payload, EmbeddedQueue};
use crate::ports::store::embedded::{insert_new, insert_payload};
use crate::ports::store::{RecordOutcome, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The queue message of a delivery, as the intake is given it.
#[derive(Debug, Clone, PartialEq)]
pub enum IntakeMessage {
    /// The message is this head (ending in its newline) followed by the payload's body.
    HeadOfPayload(String),
    /// The whole message (a body that travels base64-encoded, so not as the payload keeps it).
    Whole(String),
}

#[async_trait]
pub trait AtomicIntake: Send + Sync + 'static {
    /// Record `new` as `queued` at `queued_at`, keep its payload and send `message` to the
    /// queue, all or none. A live record with the same key wins: nothing is written and it is
    /// returned.
    async fn record_and_send(
        &self,
        new: &NewDelivery,
        message: IntakeMessage,
        queued_at: DateTime<Utc>,
        payload: &StoredPayload,
    ) -> Result<RecordOutcome, StoreError>;
}

/// The embedded store and queue in one transaction. Built from the queue, whose database
/// the embedded store shares (one data dir, one file).
#[derive(Debug, Clone)]
pub struct EmbeddedIntake {
    queue: EmbeddedQueue,
}

impl EmbeddedIntake {
    pub fn new(queue: EmbeddedQueue) -> Self {
        Self { queue }
    }
}

#[async_trait]
impl AtomicIntake for EmbeddedIntake {
    async fn record_and_send(
        &self,
        new: &NewDelivery,
        message: IntakeMessage,
        queued_at: DateTime<Utc>,
        payload: &StoredPayload,
    ) -> Result<RecordOutcome, StoreError> {
        let new = new.clone();
        let payload = payload.clone();
        let queued_at = crate::ports::sqlite::millis(queued_at);
        let queue_name: std::sync::Arc<str> = std::sync::Arc::from(self.queue.name());
        let log = self.queue.database().payload_log().clone();
        let outcome = self
            .queue
            .database()
            .call_with_log(move |conn, writer| {
                let outcome = insert_new(conn, &new, Some(queued_at))?;
                if outcome == RecordOutcome::Recorded {
                    // A whole message keeps its body in its payload row: the log's recovery
                    // forgets a delivery through the message over its payload
                    // (`ports::payload_log`), and such bodies (not text) are rare.
                    let writer = match &message {
                        IntakeMessage::HeadOfPayload(_) => writer,
                        IntakeMessage::Whole(_) => None,
                    };
                    insert_payload(conn, &log, writer, new.key.as_str(), &payload)?;
                    match &message {
                        IntakeMessage::HeadOfPayload(head) => {
                            insert_message_over_payload(conn, &queue_name, head, new.key.as_str())?
                        }
                        IntakeMessage::Whole(message) => {
                            insert_message(conn, &queue_name, message, Duration::ZERO)?
                        }
                    };
                }
                Ok(outcome)
            })
            .await?;
        if outcome == RecordOutcome::Recorded {
            self.queue.notify_sent();
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeliveryStatus, Source};
    use crate::ports::queue::conformance::SETTINGS;
    use crate::ports::queue::Queue;
    use crate::ports::sqlite::{Database, Durability};
    use crate::ports::store::conformance::{new_delivery, payload};
    use crate::ports::store::embedded::EmbeddedStore;
    use crate::ports::store::DeliveryStore;

    fn whole(message: &str) -> IntakeMessage {
        IntakeMessage::Whole(message.into())
    }

    fn open(dir: &std::path::Path) -> (EmbeddedStore, EmbeddedQueue, EmbeddedIntake) {
        let db = Database::open(dir, Durability::Normal).unwrap();
        let queue = EmbeddedQueue::new(db.clone(), SETTINGS);
        (
            EmbeddedStore::new(db),
            queue.clone(),
            EmbeddedIntake::new(queue),
        )
    }

    #[tokio::test]
    async fn a_new_delivery_is_recorded_queued_and_its_message_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue, intake) = open(dir.path());
        let now = Utc::now();
        let new = new_delivery(Source::Github, "atomic-1", now);
        let outcome = intake
            .record_and_send(&new, whole("m1"), now, &payload(now))
            .await
            .unwrap();
        assert_eq!(outcome, RecordOutcome::Recorded);
        let got = store.get(&new.key).await.unwrap().unwrap();
        assert_eq!(got.status, DeliveryStatus::Queued);
        assert_eq!(
            got.queued_at.map(|t| t.timestamp_millis()),
            Some(now.timestamp_millis())
        );
        let messages = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].body, "m1");
    }

    #[tokio::test]
    async fn a_message_over_its_payload_is_received_whole_and_keeps_the_payload() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue, intake) = open(dir.path());
        let now = Utc::now();
        let new = new_delivery(Source::Github, "atomic-once", now);
        let mut kept = payload(now);
        kept.body = "{\"zen\":\"caf\u{e9}\"}".as_bytes().to_vec().into();
        // Expired at once: pruning must still leave it while its message waits.
        kept.expires_at = now - chrono::Duration::seconds(1);
        intake
            .record_and_send(
                &new,
                IntakeMessage::HeadOfPayload("{\"head\":1}\n".into()),
                now,
                &kept,
            )
            .await
            .unwrap();
        assert_eq!(store.prune_payloads(now).await.unwrap(), 0);
        let messages = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].body, "{\"head\":1}\n{\"zen\":\"caf\u{e9}\"}");
        queue.delete(&messages[0].receipt).await.unwrap();
        assert_eq!(store.prune_payloads(now).await.unwrap(), 1);
        assert!(store.get_payload(&new.key, now).await.unwrap().is_none());
    }

    /// The payload log's one segment file in `data_dir`, and its length.
    fn only_segment(data_dir: &std::path::Path) -> (std::path::PathBuf, u64) {
        let segment = std::fs::read_dir(data_dir.join("payloads"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let len = std::fs::metadata(&segment).unwrap().len();
        (segment, len)
    }

    async fn send_over_payload(intake: &EmbeddedIntake, id: &str, body: &str, now: DateTime<Utc>) {
        let new = new_delivery(Source::Github, id, now);
        let mut kept = payload(now);
        kept.body = body.as_bytes().to_vec().into();
        let head = IntakeMessage::HeadOfPayload(format!("{{\"head\":\"{id}\"}}\n"));
        intake
            .record_and_send(&new, head, now, &kept)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_message_whose_payload_is_gone_goes_to_the_dead_letters_and_the_rest_flow() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, queue, intake) = open(dir.path());
        let now = Utc::now();
        send_over_payload(&intake, "lost", "{\"a\":1}", now).await;
        send_over_payload(&intake, "kept", "{\"b\":2}", now).await;
        // The first one's payload removed behind the adapters' backs (a hand-made cleanup).
        let raw = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
        let lost = new_delivery(Source::Github, "lost", now).key;
        raw.execute("DELETE FROM payloads WHERE key = ?1", [lost.as_str()])
            .unwrap();
        drop(raw);
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        let bodies: Vec<_> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["{\"head\":\"kept\"}\n{\"b\":2}"]);
        let dead = queue.receive_dead_letters(10).await.unwrap();
        let bodies: Vec<_> = dead.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(
            bodies,
            ["{\"head\":\"lost\"}\n"],
            "its head, to say which it was"
        );
    }

    #[tokio::test]
    async fn a_delivery_whose_body_never_reached_the_disk_is_forgotten_and_its_retry_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        {
            let (_store, _queue, intake) = open(dir.path());
            send_over_payload(&intake, "whole", "{\"a\":1}", now).await;
            send_over_payload(&intake, "torn", "{\"b\":2}", now).await;
        }
        // A power cut after the WAL reached the disk but before the last record did.
        let (segment, len) = only_segment(dir.path());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.set_len(len - 3).unwrap();
        drop(file);

        let (store, queue, intake) = open(dir.path());
        let torn = new_delivery(Source::Github, "torn", now);
        assert!(store.get(&torn.key).await.unwrap().is_none());
        assert!(store.get_payload(&torn.key, now).await.unwrap().is_none());
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        let bodies: Vec<_> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["{\"head\":\"whole\"}\n{\"a\":1}"]);
        assert!(queue.receive_dead_letters(10).await.unwrap().is_empty());
        // GitHub's retry of the unanswered delivery is a new delivery, not a duplicate.
        let mut kept = payload(now);
        kept.body = b"{\"b\":2}"[..].into();
        let again = intake
            .record_and_send(
                &torn,
                IntakeMessage::HeadOfPayload("{\"head\":\"torn\"}\n".into()),
                now,
                &kept,
            )
            .await
            .unwrap();
        assert_eq!(again, RecordOutcome::Recorded);
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].body, "{\"head\":\"torn\"}\n{\"b\":2}");
        // In the log again: reopened at once in this process, the data dir's log writer (and
        // its lock) had been let go by the handle dropped before.
        let raw = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
        let in_log: bool = raw
            .query_row(
                "SELECT body_segment IS NOT NULL FROM payloads WHERE key = ?1",
                [torn.key.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert!(in_log);
    }

    #[tokio::test]
    async fn a_payload_an_older_version_kept_in_its_row_still_reads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        // The payloads table and a message over it as versions before the payload log left them.
        let old = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
        old.execute_batch(&format!(
            "CREATE TABLE payloads (key TEXT PRIMARY KEY, body BLOB NOT NULL, \
                 headers TEXT NOT NULL, expires_at INTEGER NOT NULL); \
             CREATE TABLE messages (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, \
                 body TEXT NOT NULL, visible_at INTEGER NOT NULL, \
                 receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, \
                 sent_at INTEGER NOT NULL, payload_key TEXT); \
             INSERT INTO payloads VALUES ('github#old', CAST('{{\"old\":1}}' AS BLOB), '[]', {}); \
             INSERT INTO messages (queue, body, visible_at, sent_at, payload_key) \
                 VALUES ('{}', '{{\"head\":0}}\n', 0, 0, 'github#old');",
            crate::ports::sqlite::millis(now) + 60_000,
            "main",
        ))
        .unwrap();
        drop(old);
        let (store, queue, _intake) = open(dir.path());
        let key = crate::model::DeliveryKey::new(Source::Github, "old");
        assert_eq!(key.as_str(), "github#old");
        let kept = store.get_payload(&key, now).await.unwrap().unwrap();
        assert_eq!(&kept.body[..], b"{\"old\":1}");
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].body, "{\"head\":0}\n{\"old\":1}");
    }

    #[tokio::test]
    async fn a_whole_message_keeps_its_body_in_its_row_and_a_damaged_row_fails_only_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue, intake) = open(dir.path());
        let now = Utc::now();
        let whole_one = new_delivery(Source::Github, "whole-one", now);
        intake
            .record_and_send(&whole_one, whole("the whole message"), now, &payload(now))
            .await
            .unwrap();
        send_over_payload(&intake, "damaged", "{\"d\":1}", now).await;
        send_over_payload(&intake, "fine", "{\"f\":2}", now).await;
        let raw = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
        let in_row: bool = raw
            .query_row(
                "SELECT body_segment IS NULL AND length(body) > 0 FROM payloads WHERE key = ?1",
                [whole_one.key.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert!(in_row, "a whole message's payload is kept in its row");
        let damaged = new_delivery(Source::Github, "damaged", now).key;
        raw.execute(
            "UPDATE payloads SET body_len = -1 WHERE key = ?1",
            [damaged.as_str()],
        )
        .unwrap();
        drop(raw);
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        let bodies: Vec<_> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(
            bodies,
            ["the whole message", "{\"head\":\"fine\"}\n{\"f\":2}"]
        );
        let dead = queue.receive_dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "{\"head\":\"damaged\"}\n");
        assert!(store
            .get_payload(&whole_one.key, now)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn a_payload_recorded_again_over_an_unreadable_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue, intake) = open(dir.path());
        let now = Utc::now();
        send_over_payload(&intake, "again", "{\"first\":1}", now).await;
        // The first body's record damaged on disk.
        let (segment, len) = only_segment(dir.path());
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap(),
            b"X",
            len - 2,
        )
        .unwrap();
        let key = new_delivery(Source::Github, "again", now).key;
        let mut second = payload(now);
        second.body = b"{\"second\":2}"[..].into();
        store.put_payload(&key, &second).await.unwrap();
        let kept = store.get_payload(&key, now).await.unwrap().unwrap();
        assert_eq!(&kept.body[..], b"{\"second\":2}");
        // The queued message is left with its head only; the worker will refuse it.
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].body, "{\"head\":\"again\"}\n");
    }

    #[tokio::test]
    async fn a_payload_recorded_again_leaves_the_queued_message_its_own_body() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue, intake) = open(dir.path());
        let now = Utc::now();
        send_over_payload(&intake, "again", "{\"first\":1}", now).await;
        // The same key kept again (its record expired and it came back with another body).
        let mut second = payload(now);
        second.body = b"{\"second\":2}"[..].into();
        let key = new_delivery(Source::Github, "again", now).key;
        store.put_payload(&key, &second).await.unwrap();
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].body, "{\"head\":\"again\"}\n{\"first\":1}");
        let kept = store.get_payload(&key, now).await.unwrap().unwrap();
        assert_eq!(&kept.body[..], b"{\"second\":2}");
    }

    #[tokio::test]
    async fn a_copy_of_a_live_delivery_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, queue, intake) = open(dir.path());
        let now = Utc::now();
        let new = new_delivery(Source::Stripe, "atomic-2", now);
        intake
            .record_and_send(&new, whole("first"), now, &payload(now))
            .await
            .unwrap();
        let again = intake
            .record_and_send(&new, whole("second"), now, &payload(now))
            .await
            .unwrap();
        match again {
            RecordOutcome::Exists(existing) => assert_eq!(existing.status, DeliveryStatus::Queued),
            other => panic!("expected the first record back, got {other:?}"),
        }
        let messages = queue.receive(10, Duration::ZERO).await.unwrap();
        let bodies: Vec<_> = messages.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["first"], "the copy must not be queued");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, queue, intake) = open(dir.path());
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.receive(1, Duration::from_secs(20)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Utc::now();
        let new = new_delivery(Source::Jira, "atomic-3", now);
        intake
            .record_and_send(&new, whole("wake"), now, &payload(now))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the receiver was not woken")
            .unwrap()
            .unwrap();
        assert_eq!(got[0].body, "wake");
    }

    #[tokio::test]
    async fn a_failed_send_leaves_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _queue, intake) = open(dir.path());
        // A constraint the message insert will break, added behind the adapters' backs, so the
        // second half of the transaction fails after the first has run.
        let raw = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
        raw.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages \
             BEGIN SELECT RAISE(ABORT, 'queue is full'); END;",
        )
        .unwrap();
        drop(raw);
        let now = Utc::now();
        let new = new_delivery(Source::Github, "atomic-4", now);
        let err = intake
            .record_and_send(&new, whole("lost?"), now, &payload(now))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("queue is full"), "{err}");
        assert!(store.get(&new.key).await.unwrap().is_none());
        assert!(store.get_payload(&new.key, now).await.unwrap().is_none());
    }
}
