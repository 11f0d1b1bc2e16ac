//! The embedded delivery store: the `deliveries` and `activities` tables of the local SQLite
//! file, with the same conditional-write semantics as the DynamoDB store.

use super::{
    Claim, DeliveryQuery, DeliveryStore, LogCounts, LogPage, LogQuery, RecordOutcome, Reopen,
    StoreError,
};
use crate::model::{
    Activity, Delivery, DeliveryKey, DeliveryOutcome, DeliveryStatus, NewDelivery, Owner,
    StoredPayload,
};
use crate::ports::payload_log::{LogWriter, PayloadLog, Place};
use crate::ports::sqlite::{from_millis, millis, Database, DbError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    db: Database,
}

impl EmbeddedStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::Unavailable(e.0)
    }
}

const COLUMNS: &str = "source, delivery_id, event_type, status, payload_sha256, \
    signature_verified, received_at, queued_at, processed_at, error, duration_ms, attempts, \
    enqueue_lease_until, process_lease_until, expires_at, org_id, connection_id, \
    repository_full_name";

/// A column that holds something the model does not know.
fn bad_column(index: usize, reason: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, reason.into())
}

fn read_delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        source: row
            .get::<_, String>(0)?
            .parse()
            .map_err(|e| bad_column(0, format!("{e}")))?,
        delivery_id: row.get(1)?,
        event_type: row.get(2)?,
        status: row
            .get::<_, String>(3)?
            .parse()
            .map_err(|e| bad_column(3, e))?,
        payload_sha256: row.get(4)?,
        signature_verified: row.get(5)?,
        received_at: from_millis(row.get(6)?),
        queued_at: row.get::<_, Option<i64>>(7)?.map(from_millis),
        processed_at: row.get::<_, Option<i64>>(8)?.map(from_millis),
        error: row.get(9)?,
        duration_ms: row.get::<_, Option<i64>>(10)?.map(|d| d as u64),
        attempts: row.get::<_, i64>(11)? as u32,
        enqueue_lease_until: Some(from_millis(row.get(12)?)),
        process_lease_until: Some(from_millis(row.get(13)?)),
        expires_at: from_millis(row.get::<_, i64>(14)? * 1000),
        owner: row.get::<_, Option<String>>(15)?.map(|org_id| Owner {
            org_id,
            connection_id: row.get(16).ok().flatten(),
            repository_full_name: row.get(17).ok().flatten(),
        }),
    })
}

/// Keep a payload (the intake writes it in the transaction that records the delivery): its
/// body in the payload log (`ports::payload_log`) when `writer` is this process's writer of
/// `log`, the row saying where; otherwise in the row.
pub(crate) fn insert_payload(
    conn: &Connection,
    log: &PayloadLog,
    writer: Option<&mut LogWriter>,
    key: &str,
    payload: &StoredPayload,
) -> Result<(), DbError> {
    let headers = serde_json::to_string(&payload.headers)
        .map_err(|e| DbError(format!("headers of {key}: {e}")))?;
    let replaced: Option<StoredBody> = conn
        .prepare_cached(&format!(
            "SELECT {BODY_COLUMNS} FROM payloads WHERE key = ?1 \
             AND EXISTS (SELECT 1 FROM messages WHERE payload_key = ?1)"
        ))?
        .query_row([key], |r| stored_body(r, 0))
        .optional()?;
    if let Some(replaced) = replaced {
        // A message still queued over the payload this replaces (`ports::intake`) keeps the
        // body it was sent with. Rare: a key recorded again after its record expired.
        let old = replaced.read(log).unwrap_or_else(|why| {
            // Never a reason to refuse the new copy: that message alone is left incomplete.
            tracing::error!(key, why, "a queued message's payload cannot be read");
            Vec::new()
        });
        conn.prepare_cached(
            "UPDATE messages SET payload_key = NULL, body = body || CAST(?2 AS TEXT) \
             WHERE payload_key = ?1",
        )?
        .execute(params![key, old])?;
    }
    // In the log, the row keeps an empty body and where the body is; otherwise the body.
    let (body, place) = match writer {
        Some(writer) => (&[][..], Some(writer.append(&payload.body)?)),
        None => (&payload.body[..], None),
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO payloads (key, body, headers, expires_at, body_segment, \
         body_at, body_len) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        key,
        body,
        headers,
        millis(payload.expires_at),
        place.map(|p| p.segment),
        place.map(|p| p.offset as i64),
        place.map(|p| p.len),
    ])?;
    Ok(())
}

/// The columns [`stored_body`] reads, in its order.
pub(crate) const BODY_COLUMNS: &str = "body, body_segment, body_at, body_len";

/// Where a payload row's body is.
#[derive(Debug)]
pub(crate) enum StoredBody {
    /// In the row (data dirs from before the payload log).
    Row(Vec<u8>),
    Log(Place),
}

impl StoredBody {
    pub(crate) fn read(self, log: &PayloadLog) -> Result<Vec<u8>, String> {
        match self {
            StoredBody::Row(body) => Ok(body),
            StoredBody::Log(place) => log.read(place),
        }
    }

    /// [`StoredBody::read`] onto the end of `out` (left as it was on an error).
    pub(crate) fn read_into(self, log: &PayloadLog, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            StoredBody::Row(body) => {
                out.extend_from_slice(&body);
                Ok(())
            }
            StoredBody::Log(place) => log.read_into(place, out),
        }
    }
}

/// [`BODY_COLUMNS`] from column `first` on.
pub(crate) fn stored_body(row: &Row<'_>, first: usize) -> rusqlite::Result<StoredBody> {
    Ok(match row.get::<_, Option<u32>>(first + 1)? {
        Some(segment) => StoredBody::Log(Place {
            segment,
            offset: row.get::<_, i64>(first + 2)? as u64,
            len: row.get(first + 3)?,
        }),
        None => StoredBody::Row(row.get(first)?),
    })
}

fn get(conn: &Connection, key: &str) -> Result<Option<Delivery>, DbError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM deliveries WHERE key = ?1"))?
        .query_row([key], read_delivery)
        .optional()?)
}

/// Create the record of a new delivery unless a live one exists: `received`, or `queued` at
/// `queued_at` when its message goes on the queue in the same transaction (`ports::intake`).
pub(crate) fn insert_new(
    conn: &Connection,
    new: &NewDelivery,
    queued_at: Option<i64>,
) -> Result<RecordOutcome, DbError> {
    let key = new.key.as_str();
    // An expired record counts as absent, as with DynamoDB's lazy TTL.
    if let Some(existing) = get(conn, key)? {
        if existing.expires_at.timestamp() >= new.received_at.timestamp() {
            return Ok(RecordOutcome::Exists(existing));
        }
    }
    let status = match queued_at {
        Some(_) => DeliveryStatus::Queued,
        None => DeliveryStatus::Received,
    };
    let owner = new.owner.as_ref();
    conn.prepare_cached(
        "INSERT OR REPLACE INTO deliveries (key, source, delivery_id, event_type, status, \
         payload_sha256, signature_verified, received_at, queued_at, enqueue_lease_until, \
         expires_at, org_id, connection_id, repository_full_name) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        key,
        new.source.as_str(),
        new.delivery_id,
        new.event_type,
        status.as_str(),
        new.payload_sha256,
        new.signature_verified,
        millis(new.received_at),
        queued_at,
        millis(new.enqueue_lease_until),
        new.expires_at.timestamp(),
        owner.map(|o| &o.org_id),
        owner.and_then(|o| o.connection_id.as_ref()),
        owner.and_then(|o| o.repository_full_name.as_ref()),
    ])?;
    Ok(RecordOutcome::Recorded)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

#[async_trait]
impl DeliveryStore for EmbeddedStore {
    async fn record(&self, new: &NewDelivery) -> Result<RecordOutcome, StoreError> {
        let new = new.clone();
        Ok(self
            .db
            .call(move |conn| insert_new(conn, &new, None))
            .await?)
    }

    async fn get(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        Ok(self.db.read(|conn| get(conn, key.as_str()))?)
    }

    async fn take_over_enqueue(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let key = key.as_str().to_owned();
        Ok(self
            .db
            .call(move |conn| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE deliveries SET enqueue_lease_until = ?2 WHERE key = ?1 \
                         AND status = 'received' AND enqueue_lease_until <= ?3",
                    )?
                    .execute(params![key, millis(lease_until), millis(now)])?;
                Ok(changed == 1)
            })
            .await?)
    }

    async fn release_enqueue(&self, key: &DeliveryKey) -> Result<(), StoreError> {
        let key = key.as_str().to_owned();
        Ok(self
            .db
            .call(move |conn| {
                conn.prepare_cached(
                    "UPDATE deliveries SET enqueue_lease_until = 0 \
                     WHERE key = ?1 AND status = 'received'",
                )?
                .execute([key])?;
                Ok(())
            })
            .await?)
    }

    async fn mark_queued(&self, key: &DeliveryKey, at: DateTime<Utc>) -> Result<(), StoreError> {
        let key = key.as_str().to_owned();
        Ok(self
            .db
            .call(move |conn| {
                // The status moves only from received (the worker may have finished first), but
                // the log always keeps when it was queued.
                conn.prepare_cached(
                    "UPDATE deliveries SET queued_at = COALESCE(queued_at, ?2), \
                     status = CASE status WHEN 'received' THEN 'queued' ELSE status END \
                     WHERE key = ?1",
                )?
                .execute(params![key, millis(at)])?;
                Ok(())
            })
            .await?)
    }

    async fn claim(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        let key = key.as_str().to_owned();
        // Not waiting for the disk (here and in `finish`, `put_activity`): commits reach the WAL
        // in order and a sync keeps a prefix of them, so a power cut can only lose the last of
        // a worker's writes, and the queue's message with them (its delete comes last): the
        // delivery is then received and processed again, as after any crash. Waiting for a
        // sync at each step held every message a worker had in hand for several of them.
        Ok(self
            .db
            .call_unsynced(move |conn| {
                // One statement in the common case; only a refused claim reads why.
                let claimed = conn
                    .prepare_cached(&format!(
                        "UPDATE deliveries SET process_lease_until = ?2, attempts = attempts + 1 \
                         WHERE key = ?1 AND status IN ('received', 'queued', 'failed') \
                         AND process_lease_until <= ?3 RETURNING {COLUMNS}"
                    ))?
                    .query_row(
                        params![key, millis(lease_until), millis(now)],
                        read_delivery,
                    )
                    .optional()?;
                if let Some(claimed) = claimed {
                    return Ok(Claim::Claimed(claimed));
                }
                Ok(match get(conn, &key)? {
                    None => Claim::Missing,
                    Some(current) if current.status.is_final() => Claim::Done(current),
                    Some(_) => Claim::Busy,
                })
            })
            .await?)
    }

    async fn finish(&self, key: &DeliveryKey, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        let key = key.as_str().to_owned();
        let outcome = outcome.clone();
        Ok(self
            .db
            .call_one_unsynced(move |conn| {
                conn.prepare_cached(
                    "UPDATE deliveries SET status = ?2, error = ?3, processed_at = ?4, \
                     duration_ms = ?5, process_lease_until = 0 WHERE key = ?1",
                )?
                .execute(params![
                    key,
                    outcome.status.as_str(),
                    outcome.error,
                    millis(outcome.processed_at),
                    outcome.duration_ms as i64,
                ])?;
                Ok(())
            })
            .await?)
    }

    async fn list(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let query = query.clone();
        let now = Utc::now().timestamp();
        Ok(self
            .db
            .read_blocking(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM deliveries WHERE expires_at >= ?1 {OPERATOR_FILTERS} \
                     ORDER BY received_at DESC, rowid DESC LIMIT ?5"
                ))?;
                let (source, status, since) = operator_filters(&query);
                let rows = stmt.query_map(
                    params![now, source, status, since, query.limit as i64],
                    read_delivery,
                )?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?)
    }

    async fn put_activity(&self, activity: &Activity) -> Result<(), StoreError> {
        let key = format!("{}#{}", activity.source, activity.delivery_id);
        let record = serde_json::to_string(activity).map_err(|e| StoreError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let received_at = millis(activity.received_at);
        Ok(self
            .db
            .call_one_unsynced(move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO activities (key, received_at, record) \
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![key, received_at, record])?;
                Ok(())
            })
            .await?)
    }

    async fn list_activities(&self, limit: usize) -> Result<Vec<Activity>, StoreError> {
        let rows: Vec<(String, String)> = self
            .db
            .read_blocking(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT key, record FROM activities ORDER BY received_at DESC, rowid DESC \
                     LIMIT ?1",
                )?;
                let rows = stmt
                    .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(key, record)| {
                serde_json::from_str(&record).map_err(|e| StoreError::Corrupt {
                    key,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    async fn set_owner(&self, key: &DeliveryKey, owner: &Owner) -> Result<(), StoreError> {
        let key = key.as_str().to_owned();
        let owner = owner.clone();
        Ok(self
            .db
            .call(move |conn| {
                conn.prepare_cached(
                    "UPDATE deliveries SET org_id = ?2, connection_id = ?3, \
                     repository_full_name = ?4 WHERE key = ?1",
                )?
                .execute(params![
                    key,
                    owner.org_id,
                    owner.connection_id,
                    owner.repository_full_name
                ])?;
                Ok(())
            })
            .await?)
    }

    async fn list_org(&self, query: &LogQuery) -> Result<LogPage, StoreError> {
        self.log_page(query).await
    }

    async fn count_connection(
        &self,
        org_id: &str,
        connection_id: &str,
        now: DateTime<Utc>,
    ) -> Result<LogCounts, StoreError> {
        let (org_id, connection_id) = (org_id.to_owned(), connection_id.to_owned());
        Ok(self
            .db
            .read_blocking(move |conn| {
                let counts = conn
                    .prepare_cached(
                        "SELECT COUNT(*), COALESCE(SUM(status = 'failed'), 0), MAX(received_at) \
                         FROM deliveries WHERE org_id = ?1 AND connection_id = ?2 \
                         AND expires_at >= ?3",
                    )?
                    .query_row(params![org_id, connection_id, now.timestamp()], |r| {
                        Ok(LogCounts {
                            total: r.get::<_, i64>(0)? as u64,
                            failed: r.get::<_, i64>(1)? as u64,
                            last_received_at: r.get::<_, Option<i64>>(2)?.map(from_millis),
                        })
                    })?;
                Ok(counts)
            })
            .await?)
    }

    async fn reopen(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        queued_before: DateTime<Utc>,
    ) -> Result<Reopen, StoreError> {
        let key = key.as_str().to_owned();
        Ok(self
            .db
            .call(move |conn| {
                let Some(before) = get(conn, &key)? else {
                    return Ok(Reopen::Missing);
                };
                if before.expires_at.timestamp() < now.timestamp() {
                    return Ok(Reopen::Missing);
                }
                let changed = conn
                    .prepare_cached(
                        "UPDATE deliveries SET status = 'queued', queued_at = ?2 WHERE key = ?1 \
                         AND (status IN ('processed', 'skipped', 'failed') \
                              OR (status = 'received' AND enqueue_lease_until <= ?2) \
                              OR (status = 'queued' AND queued_at <= ?3)) \
                         AND process_lease_until <= ?2",
                    )?
                    .execute(params![key, millis(now), millis(queued_before)])?;
                Ok(if changed == 1 {
                    Reopen::Reopened(before)
                } else {
                    Reopen::InFlight(before)
                })
            })
            .await?)
    }

    async fn put_payload(
        &self,
        key: &DeliveryKey,
        payload: &StoredPayload,
    ) -> Result<(), StoreError> {
        let key = key.as_str().to_owned();
        let payload = payload.clone();
        let log = self.db.payload_log().clone();
        Ok(self
            .db
            .call_with_log(move |conn, writer| insert_payload(conn, &log, writer, &key, &payload))
            .await?)
    }

    async fn get_payload(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredPayload>, StoreError> {
        let key = key.as_str();
        let row: Option<(StoredBody, String, i64)> = self.db.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT headers, expires_at, {BODY_COLUMNS} FROM payloads \
                     WHERE key = ?1 AND expires_at > ?2"
                ))?
                .query_row(params![key, millis(now)], |r| {
                    Ok((stored_body(r, 2)?, r.get(0)?, r.get(1)?))
                })
                .optional()?)
        })?;
        let Some((body, headers, expires_at)) = row else {
            return Ok(None);
        };
        let body = match body.read(self.db.payload_log()) {
            Ok(body) => body,
            // Expired and pruned since the row was read: gone, as an expired payload is.
            Err(_) if from_millis(expires_at) <= Utc::now() => return Ok(None),
            Err(reason) => {
                return Err(StoreError::Corrupt {
                    key: format!("the payload of {key}"),
                    reason,
                })
            }
        };
        Ok(Some(StoredPayload {
            body: body.into(),
            headers: serde_json::from_str(&headers).map_err(|e| StoreError::Corrupt {
                key: "payload headers".into(),
                reason: e.to_string(),
            })?,
            expires_at: from_millis(expires_at),
        }))
    }

    async fn prune_payloads(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let (gone, keep_from) = self
            .db
            .call_with_log(move |conn, writer| {
                let gone = conn
                    // A message still on a queue reads its body from its payload row
                    // (`ports::intake`): that row stays until the message goes.
                    .prepare_cached(
                        "DELETE FROM payloads WHERE expires_at <= ?1 AND key NOT IN \
                         (SELECT payload_key FROM messages WHERE payload_key IS NOT NULL)",
                    )?
                    .execute([millis(now)])?;
                let oldest_named: Option<u32> = conn
                    .prepare_cached(
                        "SELECT min(body_segment) FROM payloads WHERE body_segment IS NOT NULL",
                    )?
                    .query_row([], |r| r.get(0))?;
                // Read here, beside the rows: a segment the writer starts later is never below.
                let keep_from =
                    writer.map(|w| oldest_named.map_or(w.segment(), |o| o.min(w.segment())));
                Ok((gone as u64, keep_from))
            })
            .await?;
        // Once the rows are gone for good: the segments no row names any more. Only the
        // process that writes the log deletes from it.
        if let Some(keep_from) = keep_from {
            self.db.payload_log().prune(keep_from)?;
        }
        Ok(gone)
    }
}

/// The operator's filters (`hookline deliveries`), as parameters ?2 to ?4.
const OPERATOR_FILTERS: &str = "AND (?2 IS NULL OR source = ?2) AND (?3 IS NULL OR status = ?3) \
     AND (?4 IS NULL OR received_at >= ?4)";

fn operator_filters(q: &DeliveryQuery) -> (Option<&str>, Option<&str>, Option<i64>) {
    (
        q.source.map(|s| s.as_str()),
        q.status.map(|s| s.as_str()),
        q.since.map(millis),
    )
}

impl EmbeddedStore {
    /// How many live deliveries `query` matches, whatever its limit (so `hookline deliveries`
    /// can say how many it left out).
    pub async fn count(&self, query: &DeliveryQuery) -> Result<u64, StoreError> {
        let query = query.clone();
        let now = Utc::now().timestamp();
        Ok(self
            .db
            .read_blocking(move |conn| {
                let (source, status, since) = operator_filters(&query);
                let n: i64 = conn
                    .prepare_cached(&format!(
                        "SELECT COUNT(*) FROM deliveries WHERE expires_at >= ?1 {OPERATOR_FILTERS}"
                    ))?
                    .query_row(params![now, source, status, since], |r| r.get(0))?;
                Ok(n as u64)
            })
            .await?)
    }

    async fn log_page(&self, q: &LogQuery) -> Result<LogPage, StoreError> {
        let q = q.clone();
        let want = q.limit + 1;
        let mut rows: Vec<Delivery> = self
            .db
            .read_blocking(move |conn| {
                // The sort key is `{received_at ms, 15 digits}#{key}`: the same order as
                // (received_at, key), which the index serves.
                let after = q.after.as_deref().and_then(|a| a.split_once('#'));
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM deliveries WHERE org_id = ?1 AND expires_at >= ?2 \
                     AND (?3 IS NULL OR connection_id = ?3) AND (?4 IS NULL OR source = ?4) \
                     AND (?5 IS NULL OR event_type = ?5) AND (?6 IS NULL OR status = ?6) \
                     AND (?7 IS NULL OR received_at >= ?7) \
                     AND (?8 IS NULL OR (received_at, key) < (?8, ?9)) \
                     ORDER BY received_at DESC, key DESC LIMIT ?10"
                ))?;
                let rows = stmt.query_map(
                    params![
                        q.org_id,
                        q.now.timestamp(),
                        q.connection_id,
                        q.source.map(|s| s.as_str()),
                        q.event_type,
                        q.status.map(|s| s.as_str()),
                        q.since.map(millis),
                        after.map(|(ms, _)| ms.parse::<i64>().unwrap_or(0)),
                        after.map(|(_, key)| key),
                        want as i64,
                    ],
                    read_delivery,
                )?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        let next = if rows.len() > q.limit {
            rows.truncate(q.limit);
            rows.last().map(Delivery::log_sort_key)
        } else {
            None
        };
        Ok(LogPage {
            deliveries: rows,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::sqlite::Durability;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn DeliveryStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        (dir, Arc::new(EmbeddedStore::new(db)))
    }

    crate::store_conformance!(fresh());

    #[tokio::test]
    async fn pruning_deletes_only_expired_payloads() {
        let (_dir, store) = fresh().await;
        let at = Utc::now();
        let old = DeliveryKey::new(crate::model::Source::Github, "old");
        let new = DeliveryKey::new(crate::model::Source::Github, "new");
        let mut p = crate::ports::store::conformance::payload(at);
        p.expires_at = at + chrono::Duration::minutes(1);
        store.put_payload(&old, &p).await.unwrap();
        p.expires_at = at + chrono::Duration::hours(1);
        store.put_payload(&new, &p).await.unwrap();
        let pruned = store
            .prune_payloads(at + chrono::Duration::minutes(2))
            .await
            .unwrap();
        assert_eq!(pruned, 1);
        // Read as of before its expiry: gone because it was deleted, not filtered.
        assert_eq!(store.get_payload(&old, at).await.unwrap(), None);
        assert!(store.get_payload(&new, at).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_data_dir_from_before_the_log_opens_with_its_columns_added() {
        let dir = tempfile::tempdir().unwrap();
        {
            let raw = Connection::open(dir.path().join("hookline.db")).unwrap();
            raw.execute_batch(
                "CREATE TABLE deliveries (key TEXT PRIMARY KEY, source TEXT NOT NULL, \
                 delivery_id TEXT NOT NULL, event_type TEXT NOT NULL, status TEXT NOT NULL, \
                 payload_sha256 TEXT NOT NULL, signature_verified INTEGER NOT NULL, \
                 received_at INTEGER NOT NULL, queued_at INTEGER, processed_at INTEGER, \
                 error TEXT, duration_ms INTEGER, attempts INTEGER NOT NULL DEFAULT 0, \
                 enqueue_lease_until INTEGER NOT NULL DEFAULT 0, \
                 process_lease_until INTEGER NOT NULL DEFAULT 0, expires_at INTEGER NOT NULL);",
            )
            .unwrap();
        }
        let store = EmbeddedStore::new(Database::open(dir.path(), Durability::Normal).unwrap());
        let new = crate::ports::store::conformance::new_delivery(
            crate::model::Source::Github,
            "old-dir",
            Utc::now(),
        );
        store.record(&new).await.unwrap();
        assert_eq!(store.get(&new.key).await.unwrap().unwrap().owner, None);
    }

    /// Reads go to a reader connection beside the writer: a `GET` of the delivery log or of a
    /// kept payload neither queues behind intake's writes nor waits for a sync (reading
    /// through the writer, each did both).
    #[tokio::test]
    #[allow(clippy::await_holding_lock)] // the held syncs are the point
    async fn reads_answer_while_a_write_waits_for_the_disk() {
        use crate::model::Owner;
        use crate::ports::store::conformance::{new_delivery, payload};
        use crate::ports::store::{DeliveryQuery, LogQuery};
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        let store = EmbeddedStore::new(db.clone());
        let now = Utc::now();
        let first = new_delivery(crate::model::Source::Github, "d1", now);
        store.record(&first).await.unwrap();
        store.put_payload(&first.key, &payload(now)).await.unwrap();
        let owner = Owner {
            org_id: "org_1".into(),
            connection_id: Some("conn_1".into()),
            repository_full_name: Some("o/r".into()),
        };
        store.set_owner(&first.key, &owner).await.unwrap();

        let held = db.hold_syncs();
        let durable = tokio::spawn({
            let store = store.clone();
            async move {
                let second = new_delivery(crate::model::Source::Github, "d2", now);
                store.record(&second).await
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            assert!(store.get(&first.key).await.unwrap().is_some());
            let kept = store.get_payload(&first.key, now).await.unwrap().unwrap();
            assert_eq!(kept.body, payload(now).body);
            assert!(!store
                .list(&DeliveryQuery::default())
                .await
                .unwrap()
                .is_empty());
            assert!(store.count(&DeliveryQuery::default()).await.unwrap() >= 1);
            assert!(store.list_activities(10).await.unwrap().is_empty());
            let page = store
                .list_org(&LogQuery {
                    org_id: "org_1".into(),
                    connection_id: None,
                    source: None,
                    event_type: None,
                    status: None,
                    since: None,
                    limit: 10,
                    after: None,
                    now,
                })
                .await
                .unwrap();
            assert_eq!(page.deliveries.len(), 1);
            let counts = store
                .count_connection("org_1", "conn_1", now)
                .await
                .unwrap();
            assert_eq!(counts.total, 1);
        })
        .await
        .expect("reads answer while the disk holds a write");
        assert!(!durable.is_finished(), "the write waits for its sync");
        drop(held);
        durable.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let new = crate::ports::store::conformance::new_delivery(
            crate::model::Source::Github,
            "persisted",
            Utc::now(),
        );
        {
            let store = EmbeddedStore::new(Database::open(dir.path(), Durability::Full).unwrap());
            store.record(&new).await.unwrap();
        }
        let reopened = EmbeddedStore::new(Database::open(dir.path(), Durability::Full).unwrap());
        let got = reopened.get(&new.key).await.unwrap().unwrap();
        assert_eq!(got.status, DeliveryStatus::Received);
    }
}
