//! The embedded queue: the `messages` table of the local SQLite file, with SQS semantics
//! (delay, visibility timeout, receive count, dead-letter queue after the redrive limit).

use super::{Queue, QueueError, QueueSettings, ReceivedMessage};
use crate::ports::payload_log::PayloadLog;
use crate::ports::sqlite::{Database, DbError};
use crate::ports::store::embedded::{stored_body, StoredBody};
use async_trait::async_trait;
use rusqlite::params;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const MAIN: &str = "main";
const DEAD: &str = "dead";
/// How often a long poll looks again when nothing wakes it (a delay or visibility timeout
/// ending wakes nobody).
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct EmbeddedQueue {
    db: Database,
    settings: QueueSettings,
    sent: Arc<Notify>,
    /// The queue's name in the `messages` table, and its dead-letter queue's.
    main: Arc<str>,
    dead: Arc<str>,
}

impl EmbeddedQueue {
    /// The inbound deliveries queue (named `main`, as data dirs before named queues had it).
    pub fn new(db: Database, settings: QueueSettings) -> Self {
        Self::named(db, MAIN, settings)
    }

    /// Another queue in the same file (`outbound-deliveries`, `outbound-dispatch`), with a
    /// dead-letter queue of its own (`{name}.dead`).
    pub fn named(db: Database, name: &str, settings: QueueSettings) -> Self {
        let dead = if name == MAIN {
            DEAD.to_owned()
        } else {
            format!("{name}.dead")
        };
        Self {
            db,
            settings,
            sent: Arc::new(Notify::new()),
            main: Arc::from(name),
            dead: Arc::from(dead.as_str()),
        }
    }

    /// The queue's name in the file.
    pub(crate) fn name(&self) -> &str {
        &self.main
    }

    /// The database this queue's messages live in.
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Wake receivers waiting for a message (after one was committed outside `send`).
    pub(crate) fn notify_sent(&self) {
        self.sent.notify_waiters();
    }

    async fn take(&self, dead_letters: bool, max: u32) -> Result<Vec<ReceivedMessage>, QueueError> {
        let settings = self.settings;
        let (queue, dead) = if dead_letters {
            (self.dead.clone(), self.dead.clone())
        } else {
            (self.main.clone(), self.dead.clone())
        };
        let max = max.clamp(1, 10) as i64;
        // Look before claiming: a claim is a write the writer commits and the disk syncs, and
        // idle receivers polling every 50 ms made an idle server sync ~60 times a second.
        let any_visible = self.db.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT 1 FROM messages WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1",
                )?
                .exists(params![&*queue, now_millis()])?)
        })?;
        if !any_visible {
            return Ok(Vec::new());
        }
        let log = self.db.payload_log().clone();
        // Answered before the disk has it: lost in a power cut, a receipt only makes its
        // messages visible again (the store's writes explain why that is safe).
        Ok(self
            .db
            .call_unsynced(move |conn| {
                let now = now_millis();
                type Body = Result<String, (String, String)>;
                let candidates: Vec<(i64, Body, i64)> = conn
                    .prepare_cached(&format!(
                        // In index order: the oldest visible first, without sorting the backlog.
                        "SELECT m.id, m.body, m.receive_count, m.payload_key, {} \
                         FROM messages m LEFT JOIN payloads p ON p.key = m.payload_key \
                         WHERE m.queue = ?1 AND m.visible_at <= ?2 ORDER BY m.visible_at LIMIT ?3",
                        PAYLOAD_BODY
                    ))?
                    .query_map(params![&*queue, now, max], |r| {
                        // `p.body` is never NULL but where no payload row joined.
                        let payload = match r.get_ref(4)? {
                            rusqlite::types::ValueRef::Null => None,
                            // A row that does not convert fails its message only.
                            _ => Some(stored_body(r, 4).map_err(|e| e.to_string())),
                        };
                        let body = message_body(r.get(1)?, r.get(3)?, payload, &log);
                        Ok((r.get(0)?, body, r.get(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let mut out = Vec::new();
                for (id, body, count) in candidates {
                    let count = count as u32 + 1;
                    let body = match body {
                        Ok(body) => body,
                        Err((head, reason)) => {
                            // Never fails the receive (every message behind it would wait):
                            // the message goes to the dead-letter queue with its head, where
                            // `hookline dead-letters` shows it.
                            tracing::error!(
                                message = id,
                                reason,
                                "a queued message cannot be read whole"
                            );
                            if !dead_letters {
                                conn.prepare_cached(
                                    "UPDATE messages SET queue = ?2, receive_count = 0, \
                                     visible_at = ?3, receipt = NULL WHERE id = ?1",
                                )?
                                .execute(params![id, &*dead, now])?;
                                continue;
                            }
                            head
                        }
                    };
                    if !dead_letters && count > settings.max_receive_count {
                        // Past the redrive limit: to the dead-letter queue, as SQS does on receive.
                        conn.prepare_cached(
                            "UPDATE messages SET queue = ?2, receive_count = 0, visible_at = ?3, \
                             receipt = NULL WHERE id = ?1",
                        )?
                        .execute(params![id, &*dead, now])?;
                        continue;
                    }
                    // The receipt names its message, so a delete finds it by primary key.
                    let receipt = format!("{id}/{}", uuid::Uuid::new_v4());
                    let visible_at = now + settings.visibility_timeout.as_millis() as i64;
                    conn.prepare_cached(
                        "UPDATE messages SET receive_count = ?2, visible_at = ?3, receipt = ?4 \
                         WHERE id = ?1",
                    )?
                    .execute(params![id, count, visible_at, receipt])?;
                    out.push(ReceivedMessage {
                        message_id: id.to_string(),
                        receipt,
                        body,
                        receive_count: count,
                    });
                }
                Ok(out)
            })
            .await?)
    }
}

/// Put a message on `queue`, visible after `delay`; its id.
pub(crate) fn insert_message(
    conn: &rusqlite::Connection,
    queue: &str,
    body: &str,
    delay: Duration,
) -> Result<i64, DbError> {
    let now = now_millis();
    conn.prepare_cached(
        "INSERT INTO messages (queue, body, visible_at, sent_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![queue, body, now + delay.as_millis() as i64, now])?;
    Ok(conn.last_insert_rowid())
}

/// Put a message on `queue`, visible now, that is `head` followed by the body of the payload
/// row `payload_key` (`ports::intake`): the body is stored once. The payload row is kept while
/// the message is (`prune_payloads`).
pub(crate) fn insert_message_over_payload(
    conn: &rusqlite::Connection,
    queue: &str,
    head: &str,
    payload_key: &str,
) -> Result<i64, DbError> {
    let now = now_millis();
    conn.prepare_cached(
        "INSERT INTO messages (queue, body, payload_key, visible_at, sent_at) \
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![queue, head, payload_key, now])?;
    Ok(conn.last_insert_rowid())
}

/// The payload row's body columns (`store::embedded::BODY_COLUMNS`) as the receive's join
/// names them.
const PAYLOAD_BODY: &str = "p.body, p.body_segment, p.body_at, p.body_len";

/// A message's body: its own, or its head followed by the body of the payload row it names;
/// `Err((head, why))` when that row or its body is gone or is not text.
fn message_body(
    head: String,
    payload_key: Option<String>,
    payload: Option<Result<StoredBody, String>>,
    log: &PayloadLog,
) -> Result<String, (String, String)> {
    let Some(key) = payload_key else {
        return Ok(head);
    };
    let head_len = head.len();
    let mut whole = head.into_bytes();
    let read = match payload {
        Some(Ok(body)) => body.read_into(log, &mut whole),
        Some(Err(why)) => Err(format!("the payload row of {key} is damaged: {why}")),
        None => Err(format!("the payload of {key} is missing")),
    };
    let back_to_head = |mut bytes: Vec<u8>| {
        bytes.truncate(head_len);
        // Cut where the head ended, so still the text it was.
        String::from_utf8_lossy(&bytes).into_owned()
    };
    match read {
        Ok(()) => String::from_utf8(whole).map_err(|e| {
            // The intake only stores text bodies this way; anything else is a damaged file.
            let why = format!("the payload of {key} is not UTF-8");
            (back_to_head(e.into_bytes()), why)
        }),
        Err(why) => Err((back_to_head(whole), why)),
    }
}

/// How many messages `queue` holds (waiting, delayed or received and not yet deleted), and
/// when the oldest of them was sent (ms). Both come from the `(queue, visible_at)` index.
pub(crate) fn backlog(
    conn: &rusqlite::Connection,
    queue: &str,
) -> Result<(u64, Option<i64>), DbError> {
    let (depth, oldest): (i64, Option<i64>) = conn
        .prepare_cached("SELECT count(*), min(id) FROM messages WHERE queue = ?1")?
        .query_row(params![queue], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let sent_at = match oldest {
        Some(id) => conn
            .prepare_cached("SELECT sent_at FROM messages WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                // Deleted between the two reads.
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?,
        None => None,
    };
    Ok((depth.max(0) as u64, sent_at))
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        QueueError::Unavailable(e.0)
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        if delay > Duration::from_secs(900) {
            return Err(QueueError::Rejected("delay is over 15 minutes".into()));
        }
        let body = body.to_owned();
        let queue = self.main.clone();
        let message_id = self
            .db
            .call_one(move |conn| insert_message(conn, &queue, &body, delay))
            .await?;
        self.sent.notify_waiters();
        Ok(message_id.to_string())
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.sent.notified();
            let got = self.take(false, max).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let _ = tokio::time::timeout(POLL.min(deadline - now), notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        // Not waiting for the disk: a delete lost in a power cut is a redelivery, which the
        // worker's claim finds done (or the deliverer's lease, due).
        Ok(self
            .db
            .call_one_unsynced(move |conn| {
                let Some(id) = receipt
                    .split_once('/')
                    .and_then(|(id, _)| id.parse::<i64>().ok())
                else {
                    return Err(DbError(format!("not a receipt of this queue: {receipt:?}")));
                };
                conn.prepare_cached("DELETE FROM messages WHERE id = ?1 AND receipt = ?2")?
                    .execute(params![id, receipt])?;
                Ok(())
            })
            .await?)
    }

    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.take(true, max).await
    }

    async fn redrive(&self, max: u32) -> Result<usize, QueueError> {
        let (main, dead) = (self.main.clone(), self.dead.clone());
        let moved = self
            .db
            .call(move |conn| {
                let moved = conn
                    .prepare_cached(
                        "UPDATE messages SET queue = ?1, receive_count = 0, visible_at = ?2, \
                         receipt = NULL WHERE id IN \
                         (SELECT id FROM messages WHERE queue = ?3 ORDER BY sent_at LIMIT ?4)",
                    )?
                    .execute(params![&*main, now_millis(), &*dead, max as i64])?;
                Ok(moved)
            })
            .await?;
        if moved > 0 {
            self.sent.notify_waiters();
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::queue::conformance::SETTINGS;
    use crate::ports::sqlite::Durability;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn Queue>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        (dir, Arc::new(EmbeddedQueue::new(db, SETTINGS)))
    }

    crate::queue_conformance!(fresh());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_receivers_never_share_a_message() {
        let (_dir, queue) = fresh().await;
        crate::ports::queue::conformance::concurrent_receivers_never_share_a_message(queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_of_an_empty_queue_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        let queue = EmbeddedQueue::new(db.clone(), SETTINGS);
        // Hold the writer for 3 s: a poll that went through it (a write, synced) would wait.
        let (held, holding) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn(async move {
            db.call(move |_| {
                let _ = held.send(());
                std::thread::sleep(Duration::from_secs(3));
                Ok(())
            })
            .await
        });
        holding.await.unwrap();
        let started = std::time::Instant::now();
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "an empty poll waited {:?} for the writer",
            started.elapsed()
        );
        writer.await.unwrap().unwrap();
        // A message is still claimed through the writer, as before.
        queue.send("due", Duration::ZERO).await.unwrap();
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn queued_messages_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = EmbeddedQueue::new(
                Database::open(dir.path(), Durability::Full).unwrap(),
                SETTINGS,
            );
            q.send("durable", Duration::ZERO).await.unwrap();
        }
        let q = EmbeddedQueue::new(
            Database::open(dir.path(), Durability::Full).unwrap(),
            SETTINGS,
        );
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "durable");
    }
}
