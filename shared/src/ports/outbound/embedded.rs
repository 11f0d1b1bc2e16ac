//! The embedded outbound store: the `outbound_*` tables of the local SQLite file (schema in
//! `ports::sqlite`). Every write is one closure on the database's single writer thread, inside
//! its transaction, so a condition and the write that depends on it are atomic; reads run
//! beside the writer on a reader connection and see everything committed before them.

use super::{
    decode_cursor, due_at, encode_cursor, json_corrupt, Appended, DeliveryFilter, DueDeliveries,
    OutboundError, OutboundStore, MAX_PAGE,
};
use crate::outbound::model::{
    Attempt, Delivery, DeliveryId, Endpoint, EndpointId, Event, EventId, NewEvent,
};
use crate::ports::sqlite::{millis, Database, DbError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long a send slot's row is kept after its second (seconds): long enough for any
/// deliverer still counting in it, short enough that the table stays small.
const SEND_SLOT_KEEP_SECS: i64 = 60;

#[derive(Debug, Clone)]
pub struct EmbeddedOutboundStore {
    db: Database,
    /// Woken when a delivery is created or rescheduled (the local deliverer waits on it).
    scheduled: std::sync::Arc<tokio::sync::Notify>,
}

impl EmbeddedOutboundStore {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            scheduled: Default::default(),
        }
    }

    /// A number on the org's stream row (`last_seq`, `cursor`): 0 before it has one.
    fn stream_number(&self, org_id: &str, column: &'static str) -> Result<u64, OutboundError> {
        let n: Option<i64> = self.db.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {column} FROM outbound_streams WHERE org_id = ?1"
                ))?
                .query_row([org_id], |r| r.get(0))
                .optional()?)
        })?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Tell the waiting deliverer (if any) that `delivery` may be due.
    fn wake_for(&self, delivery: &Delivery) {
        if delivery.lease_until.is_none() && due_at(delivery).is_some() {
            // One permit is kept if nobody waits: the next wait returns at once.
            self.scheduled.notify_one();
        }
    }

    /// The record of `id` in `table`, if it is the org's.
    fn get_in_org<T: DeserializeOwned>(
        &self,
        table: &str,
        org_id: &str,
        id: &str,
    ) -> Result<Option<T>, OutboundError> {
        let sql = format!("SELECT id, record FROM {table} WHERE id = ?1 AND org_id = ?2");
        let rows = self.db.read(|conn| records(conn, &sql, [id, org_id]))?;
        Ok(parse_all(rows)?.pop())
    }
}

impl From<DbError> for OutboundError {
    fn from(e: DbError) -> Self {
        OutboundError::Unavailable(e.0)
    }
}

/// How many deliveries have an attempt scheduled (due, leased or waiting for a retry), and
/// when the earliest falls due (ms), from the partial `due_at` index.
pub(crate) fn due_backlog(conn: &Connection) -> Result<(u64, Option<i64>), DbError> {
    let (depth, earliest): (i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT count(*), min(due_at) FROM outbound_deliveries WHERE due_at IS NOT NULL",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((depth.max(0) as u64, earliest))
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, OutboundError> {
    serde_json::to_string(value).map_err(|e| json_corrupt(key, &e))
}

fn from_json<T: DeserializeOwned>(key: &str, record: &str) -> Result<T, OutboundError> {
    serde_json::from_str(record).map_err(|e| json_corrupt(key, &e))
}

/// A count or number the model keeps unsigned, as SQLite's signed integer.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `(key, record)` rows of one query.
fn records(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(String, String)>, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn parse_all<T: DeserializeOwned>(rows: Vec<(String, String)>) -> Result<Vec<T>, OutboundError> {
    rows.iter().map(|(key, r)| from_json(key, r)).collect()
}

/// A list's page size (at most [`MAX_PAGE`]) and where its keyset starts: after the cursor's
/// (created_at, id), or from the first row. `None` when the page is empty before any query:
/// no rows wanted, or an unreadable cursor (an empty last page).
fn page_request(limit: usize, cursor: Option<&str>) -> Option<(usize, Option<(i64, String)>)> {
    let limit = limit.min(MAX_PAGE);
    let after = match cursor.map(decode_cursor) {
        None => None,
        Some(Some(after)) => Some(after),
        Some(None) => return None,
    };
    (limit > 0).then_some((limit, after))
}

/// One page of a list queried for `limit + 1` rows: the first `limit`, and the cursor after
/// the last of them when there were more (`at` names a record's place in the keyset).
fn keyset_page<T: DeserializeOwned>(
    rows: Vec<(String, String)>,
    limit: usize,
    at: impl Fn(&T) -> (DateTime<Utc>, &str),
) -> Result<(Vec<T>, Option<String>), OutboundError> {
    let more = rows.len() > limit;
    let mut page: Vec<T> = parse_all(rows)?;
    page.truncate(limit);
    let next = match page.last() {
        Some(last) if more => {
            let (created_at, id) = at(last);
            Some(encode_cursor(created_at, id))
        }
        _ => None,
    };
    Ok((page, next))
}

/// The outcome of an append, decided on the writer thread.
enum Append {
    Created(Event),
    /// The stored record of the event with that id.
    Existing(String),
    Corrupt(OutboundError),
}

/// A delivery's record as read: its lease lives in the `lease_until` column only (a claim
/// writes nothing else, so the writer neither parses nor rewrites the record to take one),
/// laid over the record's as chrono writes it.
const DELIVERY_RECORD: &str = "json_set(record, '$.lease_until', CASE WHEN lease_until IS NULL \
     THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', lease_until / 1000.0, 'unixepoch') END)";

/// The columns of a delivery row, taken from its record.
fn delivery_columns(d: &Delivery) -> [Value; 9] {
    [
        Value::Text(d.id.as_str().to_owned()),
        Value::Text(d.org_id.clone()),
        Value::Text(d.endpoint_id.as_str().to_owned()),
        Value::Text(d.event_id.as_str().to_owned()),
        Value::Text(d.event_type.clone()),
        Value::Text(d.status.as_str().to_owned()),
        Value::Integer(i64::from(d.attempts)),
        d.lease_until
            .map(|l| Value::Integer(millis(l)))
            .unwrap_or(Value::Null),
        due_at(d)
            .map(|at| Value::Integer(millis(at)))
            .unwrap_or(Value::Null),
    ]
}

/// The statement (and its arguments) of one page of [`OutboundStore::list_deliveries`]: the
/// org's deliveries that match `filter`, newest first, after the keyset cursor `after`, one more
/// than `limit` (to tell whether a next page exists).
fn delivery_query(
    org_id: &str,
    filter: &DeliveryFilter,
    after: Option<(i64, String)>,
    limit: usize,
) -> (String, Vec<Value>) {
    // Only the filters given go into the statement, so SQLite picks the index that
    // narrows most: `by_endpoint`, `by_event`, `failing` (failed and dead-lettered only),
    // else `by_org`, whose order is the page's, with the rest checked row by row.
    let mut sql = format!("SELECT id, {DELIVERY_RECORD} FROM outbound_deliveries WHERE org_id = ?");
    let mut args = vec![Value::Text(org_id.to_owned())];
    let mut narrow = |column: &str, op: &str, value: Value| {
        sql.push_str(&format!(" AND {column} {op} ?"));
        args.push(value);
    };
    if let Some(endpoint) = &filter.endpoint_id {
        narrow(
            "endpoint_id",
            "=",
            Value::Text(endpoint.as_str().to_owned()),
        );
    }
    if let Some(event) = &filter.event_id {
        narrow("event_id", "=", Value::Text(event.as_str().to_owned()));
    }
    if let Some(status) = filter.status {
        // Bound, SQLite still matches it against the partial index's WHERE (and prepares
        // the statement again when the value bound to it changes).
        narrow("status", "=", Value::Text(status.as_str().to_owned()));
    }
    if let Some(event_type) = &filter.event_type {
        narrow("event_type", "=", Value::Text(event_type.clone()));
    }
    if let Some(since) = filter.since {
        narrow("created_at", ">=", Value::Integer(millis(since)));
    }
    // Keyset pagination on (created_at, id), newest first.
    if let Some((before_ms, before_id)) = after {
        sql.push_str(" AND (created_at, id) < (?, ?)");
        args.push(Value::Integer(before_ms));
        args.push(Value::Text(before_id));
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?");
    args.push(Value::Integer(limit as i64 + 1));
    (sql, args)
}

#[async_trait]
impl OutboundStore for EmbeddedOutboundStore {
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), OutboundError> {
        let record = to_json(endpoint.id.as_str(), endpoint)?;
        let (id, org_id, created_at) = (
            endpoint.id.as_str().to_owned(),
            endpoint.org_id.clone(),
            millis(endpoint.created_at),
        );
        Ok(self
            .db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO outbound_endpoints (id, org_id, created_at, record) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id, org_id, created_at, record])?;
                Ok(())
            })
            .await?)
    }

    async fn get_endpoint(
        &self,
        org_id: &str,
        id: &EndpointId,
    ) -> Result<Option<Endpoint>, OutboundError> {
        self.get_in_org("outbound_endpoints", org_id, id.as_str())
    }

    async fn list_endpoints(
        &self,
        org_id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Endpoint>, Option<String>), OutboundError> {
        let Some((limit, after)) = page_request(limit, cursor.as_deref()) else {
            return Ok((Vec::new(), None));
        };
        // Keyset pagination on (created_at, id), oldest first.
        let (after_ms, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let rows = self.db.read(|conn| {
            records(
                conn,
                "SELECT id, record FROM outbound_endpoints \
                 WHERE org_id = ?1 AND (created_at, id) > (?2, ?3) \
                 ORDER BY created_at, id LIMIT ?4",
                params![org_id, after_ms, after_id, limit as i64 + 1],
            )
        })?;
        keyset_page(rows, limit, |e: &Endpoint| (e.created_at, e.id.as_str()))
    }

    async fn count_endpoints(&self, org_id: &str) -> Result<u64, OutboundError> {
        let count: i64 = self.db.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT count(*) FROM outbound_endpoints WHERE org_id = ?1")?
                .query_row([org_id], |r| r.get(0))?)
        })?;
        Ok(count.max(0) as u64)
    }

    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<(), OutboundError> {
        let record = to_json(endpoint.id.as_str(), endpoint)?;
        let (id, org_id, created_at) = (
            endpoint.id.as_str().to_owned(),
            endpoint.org_id.clone(),
            millis(endpoint.created_at),
        );
        let changed = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "UPDATE outbound_endpoints SET created_at = ?3, record = ?4 \
                         WHERE id = ?1 AND org_id = ?2",
                    )?
                    .execute(params![id, org_id, created_at, record])?)
            })
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(OutboundError::NotFound)
        }
    }

    async fn delete_endpoint(&self, org_id: &str, id: &EndpointId) -> Result<bool, OutboundError> {
        let (org_id, id) = (org_id.to_owned(), id.as_str().to_owned());
        Ok(self
            .db
            .call(move |conn| {
                let deleted = conn
                    .prepare_cached("DELETE FROM outbound_endpoints WHERE id = ?1 AND org_id = ?2")?
                    .execute([id, org_id])?;
                Ok(deleted == 1)
            })
            .await?)
    }

    async fn append_event(&self, event: &NewEvent) -> Result<Appended, OutboundError> {
        let new = event.clone();
        let key = format!("{}#{}", new.org_id, new.id);
        let outcome = self
            .db
            .call(move |conn| {
                let existing: Option<String> = conn
                    .prepare_cached(
                        "SELECT record FROM outbound_events WHERE org_id = ?1 AND id = ?2",
                    )?
                    .query_row([new.org_id.as_str(), new.id.as_str()], |r| r.get(0))
                    .optional()?;
                if let Some(record) = existing {
                    return Ok(Append::Existing(record));
                }
                // The writer runs one call at a time, so reading the last seq and taking the
                // next is atomic: no gaps, no two events on one seq.
                let last: i64 = conn
                    .prepare_cached("SELECT last_seq FROM outbound_streams WHERE org_id = ?1")?
                    .query_row([new.org_id.as_str()], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                let seq = last + 1;
                let event = Event {
                    id: new.id,
                    org_id: new.org_id,
                    event_type: new.event_type,
                    created_at: new.created_at,
                    data: new.data,
                    seq: seq as u64,
                };
                // Serialised before anything is written, so a failure leaves no seq taken.
                let record = match to_json(&format!("{}#{}", event.org_id, event.id), &event) {
                    Ok(record) => record,
                    Err(corrupt) => return Ok(Append::Corrupt(corrupt)),
                };
                conn.prepare_cached(
                    "INSERT INTO outbound_streams (org_id, last_seq) VALUES (?1, ?2) \
                     ON CONFLICT (org_id) DO UPDATE SET last_seq = excluded.last_seq",
                )?
                .execute(params![event.org_id, seq])?;
                conn.prepare_cached(
                    "INSERT INTO outbound_events (org_id, id, seq, record) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![event.org_id, event.id.as_str(), seq, record])?;
                Ok(Append::Created(event))
            })
            .await?;
        match outcome {
            Append::Created(event) => Ok(Appended::Created(event)),
            Append::Existing(record) => Ok(Appended::Existing(from_json(&key, &record)?)),
            Append::Corrupt(e) => Err(e),
        }
    }

    async fn get_event(&self, org_id: &str, id: &EventId) -> Result<Option<Event>, OutboundError> {
        let rows = self.db.read(|conn| {
            records(
                conn,
                "SELECT org_id || '#' || id, record FROM outbound_events \
                 WHERE org_id = ?1 AND id = ?2",
                [org_id, id.as_str()],
            )
        })?;
        Ok(parse_all(rows)?.pop())
    }

    async fn events_after(
        &self,
        org_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, OutboundError> {
        let limit = int(limit as u64);
        let rows = self.db.read(|conn| {
            records(
                conn,
                "SELECT org_id || '#' || id, record FROM outbound_events \
                 WHERE org_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                params![org_id, int(after), limit],
            )
        })?;
        parse_all(rows)
    }

    async fn last_seq(&self, org_id: &str) -> Result<u64, OutboundError> {
        self.stream_number(org_id, "last_seq")
    }

    async fn dispatch_cursor(&self, org_id: &str) -> Result<u64, OutboundError> {
        self.stream_number(org_id, "cursor")
    }

    async fn advance_cursor(&self, org_id: &str, seq: u64) -> Result<(), OutboundError> {
        let (org_id, seq) = (org_id.to_owned(), int(seq));
        Ok(self
            .db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO outbound_streams (org_id, cursor) VALUES (?1, ?2) \
                     ON CONFLICT (org_id) DO UPDATE \
                     SET cursor = MAX(cursor, excluded.cursor)",
                )?
                .execute(params![org_id, seq])?;
                Ok(())
            })
            .await?)
    }

    async fn orgs_behind(&self, limit: usize) -> Result<Vec<String>, OutboundError> {
        let limit = int(limit as u64);
        Ok(self.db.read(|conn| {
            // The same condition as the partial index `outbound_streams_behind`, so it is used.
            let mut stmt = conn.prepare_cached(
                "SELECT org_id FROM outbound_streams WHERE cursor < last_seq LIMIT ?1",
            )?;
            let orgs = stmt
                .query_map([limit], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(orgs)
        })?)
    }

    async fn create_delivery(&self, delivery: &Delivery) -> Result<bool, OutboundError> {
        let record = to_json(delivery.id.as_str(), delivery)?;
        let mut values = delivery_columns(delivery).to_vec();
        values.push(Value::Integer(millis(delivery.created_at)));
        values.push(Value::Text(record));
        let created = self
            .db
            .call_one(move |conn| {
                // OR IGNORE: the primary key (one delivery per endpoint and event) decides.
                let inserted = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO outbound_deliveries (id, org_id, endpoint_id, \
                         event_id, event_type, status, attempts, lease_until, due_at, \
                         created_at, record) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )?
                    .execute(params_from_iter(values))?;
                Ok(inserted == 1)
            })
            .await?;
        if created {
            self.wake_for(delivery);
        }
        Ok(created)
    }

    async fn create_deliveries(&self, deliveries: &[Delivery]) -> Result<Vec<bool>, OutboundError> {
        let mut rows = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let mut values = delivery_columns(d).to_vec();
            values.push(Value::Integer(millis(d.created_at)));
            values.push(Value::Text(to_json(d.id.as_str(), d)?));
            rows.push(values);
        }
        // One writer call for the lot: a round trip to the writer thread per delivery cost
        // more than the insert itself.
        let created = self
            .db
            .call(move |conn| {
                let mut insert = conn.prepare_cached(
                    "INSERT OR IGNORE INTO outbound_deliveries (id, org_id, endpoint_id, \
                     event_id, event_type, status, attempts, lease_until, due_at, created_at, \
                     record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                rows.into_iter()
                    .map(|values| Ok(insert.execute(params_from_iter(values))? == 1))
                    .collect::<Result<Vec<bool>, DbError>>()
            })
            .await?;
        if created.iter().any(|c| *c) {
            self.scheduled.notify_one();
        }
        Ok(created)
    }

    async fn get_delivery(
        &self,
        org_id: &str,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>, OutboundError> {
        let sql = format!(
            "SELECT id, {DELIVERY_RECORD} FROM outbound_deliveries WHERE id = ?1 AND org_id = ?2"
        );
        let rows = self
            .db
            .read(|conn| records(conn, &sql, [id.as_str(), org_id]))?;
        Ok(parse_all(rows)?.pop())
    }

    async fn list_deliveries(
        &self,
        org_id: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), OutboundError> {
        let Some((limit, after)) = page_request(limit, cursor.as_deref()) else {
            return Ok((Vec::new(), None));
        };
        let (sql, args) = delivery_query(org_id, filter, after, limit);
        let rows = self
            .db
            .read(|conn| records(conn, &sql, params_from_iter(args)))?;
        keyset_page(rows, limit, |d: &Delivery| (d.created_at, d.id.as_str()))
    }

    async fn claim_delivery(
        &self,
        id: &DeliveryId,
        attempts_made: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Delivery>, OutboundError> {
        let id = id.as_str().to_owned();
        let (lease_ms, now_ms) = (millis(lease_until), millis(now));
        // One conditional UPDATE: the lease lives in its column only (reads lay it over the
        // record), so the writer neither parses nor rewrites the record to take it.
        let key = id.clone();
        let record: Option<String> = self
            .db
            .call_one(move |conn| {
                Ok(conn
                    .prepare_cached(
                        // A due delivery is not due again before the lease ends.
                        "UPDATE outbound_deliveries SET lease_until = ?2, \
                         due_at = CASE WHEN due_at IS NULL THEN NULL ELSE MAX(due_at, ?2) END \
                         WHERE id = ?1 \
                         AND attempts = ?3 AND (lease_until IS NULL OR lease_until <= ?4) \
                         RETURNING record",
                    )?
                    .query_row(
                        params![id, lease_ms, i64::from(attempts_made), now_ms],
                        |r| r.get(0),
                    )
                    .optional()?)
            })
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let mut delivery: Delivery = from_json(&key, &record)?;
        delivery.lease_until = Some(lease_until);
        Ok(Some(delivery))
    }

    async fn record_attempt(
        &self,
        delivery: &Delivery,
        attempt: &Attempt,
    ) -> Result<bool, OutboundError> {
        let Some(before) = attempt.number.checked_sub(1) else {
            return Ok(false);
        };
        let record = to_json(delivery.id.as_str(), delivery)?;
        let attempt_key = format!("{}#{}", attempt.delivery_id, attempt.number);
        let attempt_record = to_json(&attempt_key, attempt)?;
        let [id, org_id, _, _, _, status, attempts, lease, due] = delivery_columns(delivery);
        let (attempt_delivery, number, attempt_org) = (
            attempt.delivery_id.as_str().to_owned(),
            attempt.number,
            attempt.org_id.clone(),
        );
        // No savepoint (a fifth of the writer's time went to savepoints' page copies) and no
        // wait for the disk: the attempt's row goes first, only while the delivery still has
        // made `before` attempts; the delivery's update then matches in the same writer step.
        // Should the update fail, the row goes again. A record lost in a power cut before the
        // next fsync leaves the delivery due again: one more attempt, which a receiver tells
        // apart by its `webhook-id` as it does any retry.
        let recorded = self
            .db
            .call_one_unsynced(move |conn| {
                let inserted = conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO outbound_attempts \
                         (delivery_id, number, org_id, record) \
                         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM outbound_deliveries \
                         WHERE id = ?5 AND org_id = ?6 AND attempts = ?7)",
                    )?
                    .execute(params![
                        attempt_delivery,
                        number,
                        attempt_org,
                        attempt_record,
                        id,
                        org_id,
                        before
                    ])?;
                if inserted != 1 {
                    return Ok(false);
                }
                let changed = conn
                    .prepare_cached(
                        "UPDATE outbound_deliveries SET status = ?3, attempts = ?4, \
                         lease_until = ?5, record = ?6, due_at = ?8 \
                         WHERE id = ?1 AND org_id = ?2 AND attempts = ?7",
                    )?
                    .execute(params![
                        id, org_id, status, attempts, lease, record, before, due
                    ]);
                if !matches!(changed, Ok(1)) {
                    conn.prepare_cached(
                        "DELETE FROM outbound_attempts WHERE delivery_id = ?1 AND number = ?2",
                    )?
                    .execute(params![attempt_delivery, number])?;
                }
                Ok(changed? == 1)
            })
            .await?;
        if recorded {
            self.wake_for(delivery);
        }
        Ok(recorded)
    }

    async fn update_delivery(&self, delivery: &Delivery) -> Result<bool, OutboundError> {
        let record = to_json(delivery.id.as_str(), delivery)?;
        let mut values = delivery_columns(delivery).to_vec();
        values.push(Value::Integer(millis(delivery.created_at)));
        values.push(Value::Text(record));
        let changed = self
            .db
            .call(move |conn| {
                // `attempts` is both the condition and (unchanged) the new value.
                let changed = conn
                    .prepare_cached(
                        "UPDATE outbound_deliveries SET endpoint_id = ?3, event_id = ?4, \
                         event_type = ?5, status = ?6, lease_until = ?8, due_at = ?9, \
                         created_at = ?10, record = ?11 \
                         WHERE id = ?1 AND org_id = ?2 AND attempts = ?7",
                    )?
                    .execute(params_from_iter(values))?;
                Ok(changed == 1)
            })
            .await?;
        if changed {
            self.wake_for(delivery);
        }
        Ok(changed)
    }

    async fn list_attempts(
        &self,
        org_id: &str,
        id: &DeliveryId,
    ) -> Result<Vec<Attempt>, OutboundError> {
        let rows = self.db.read(|conn| {
            records(
                conn,
                "SELECT delivery_id || '#' || number, record FROM outbound_attempts \
                 WHERE delivery_id = ?1 AND org_id = ?2 ORDER BY number",
                [id.as_str(), org_id],
            )
        })?;
        parse_all(rows)
    }

    async fn take_send_slot(
        &self,
        endpoint: &EndpointId,
        second: i64,
        limit: u32,
    ) -> Result<bool, OutboundError> {
        if limit == 0 {
            return Ok(false);
        }
        let endpoint = endpoint.as_str().to_owned();
        Ok(self
            .db
            .call(move |conn| {
                conn.prepare_cached("DELETE FROM outbound_send_slots WHERE second < ?1")?
                    .execute([second.saturating_sub(SEND_SLOT_KEEP_SECS)])?;
                // The upsert's WHERE refuses the increment once `limit` are taken: no row
                // changes, and the caller waits for the next second.
                let taken = conn
                    .prepare_cached(
                        "INSERT INTO outbound_send_slots (endpoint_id, second, taken) \
                         VALUES (?1, ?2, 1) ON CONFLICT (endpoint_id, second) \
                         DO UPDATE SET taken = taken + 1 WHERE taken < ?3",
                    )?
                    .execute(params![endpoint, second, limit])?;
                Ok(taken == 1)
            })
            .await?)
    }
}

#[async_trait]
impl DueDeliveries for EmbeddedOutboundStore {
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<Delivery>, OutboundError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let (now_ms, lease_ms, max) = (millis(now), millis(lease_until), int(max as u64));
        // One statement claims the whole batch, in the order of the `outbound_deliveries_due`
        // index: the lease moves each one's due time past the lease's end.
        // Not waited on to reach the disk: a claim lost in a power cut leaves the delivery due,
        // to be claimed again, which is what its lease ending would have done anyway.
        let rows = self
            .db
            .call_one_unsynced(move |conn| {
                records(
                    conn,
                    "UPDATE outbound_deliveries SET lease_until = ?2, due_at = ?2 \
                     WHERE id IN (SELECT id FROM outbound_deliveries \
                     WHERE due_at <= ?1 ORDER BY due_at LIMIT ?3) \
                     AND (lease_until IS NULL OR lease_until <= ?1) \
                     RETURNING id, record",
                    params![now_ms, lease_ms, max],
                )
            })
            .await?;
        let mut claimed: Vec<Delivery> = parse_all(rows)?;
        for d in &mut claimed {
            d.lease_until = Some(lease_until);
        }
        Ok(claimed)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, OutboundError> {
        let at: Option<i64> = self.db.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT min(due_at) FROM outbound_deliveries WHERE due_at IS NOT NULL",
                )?
                .query_row([], |r| r.get(0))?)
        })?;
        Ok(at.and_then(DateTime::from_timestamp_millis))
    }

    async fn wait_for_work(&self, at_most: std::time::Duration) {
        let _ = tokio::time::timeout(at_most, self.scheduled.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::model::DeliveryStatus;
    use crate::ports::outbound::conformance::{
        after, attempt, delivery_for, endpoint, new_event, t,
    };
    use crate::ports::sqlite::Durability;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn OutboundStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        (dir, Arc::new(EmbeddedOutboundStore::new(db)))
    }

    crate::outbound_conformance!(fresh());

    fn fresh_embedded() -> (tempfile::TempDir, EmbeddedOutboundStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        (dir, EmbeddedOutboundStore::new(db))
    }

    #[tokio::test]
    async fn endpoints_events_and_deliveries_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            || EmbeddedOutboundStore::new(Database::open(dir.path(), Durability::Full).unwrap());
        let ep = endpoint("org-a");
        let (event, delivered) = {
            let store = open();
            store.create_endpoint(&ep).await.unwrap();
            let event = store
                .append_event(&new_event("org-a", "invoice.paid"))
                .await
                .unwrap()
                .event()
                .clone();
            store.advance_cursor("org-a", 1).await.unwrap();
            let d = delivery_for(&ep, &event);
            assert!(store.create_delivery(&d).await.unwrap());
            let a1 = attempt(&d, 1, true);
            let delivered = after(&d, &a1);
            assert!(store.record_attempt(&delivered, &a1).await.unwrap());
            (event, delivered)
        };
        let reopened = open();
        assert_eq!(
            reopened.get_endpoint("org-a", &ep.id).await.unwrap(),
            Some(ep.clone())
        );
        assert_eq!(
            reopened.get_event("org-a", &event.id).await.unwrap(),
            Some(event.clone())
        );
        assert_eq!(
            reopened.get_delivery("org-a", &delivered.id).await.unwrap(),
            Some(delivered.clone())
        );
        assert_eq!(
            reopened
                .list_attempts("org-a", &delivered.id)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(reopened.dispatch_cursor("org-a").await.unwrap(), 1);
        // The stream carries on from where it was.
        let next = reopened
            .append_event(&new_event("org-a", "invoice.paid"))
            .await
            .unwrap();
        assert_eq!(next.event().seq, 2);
    }

    /// An endpoint, one of its events and the delivery between them, created.
    async fn one_delivery(store: &EmbeddedOutboundStore) -> Delivery {
        let ep = endpoint("org-due");
        store.create_endpoint(&ep).await.unwrap();
        let event = store
            .append_event(&new_event("org-due", "invoice.paid"))
            .await
            .unwrap()
            .event()
            .clone();
        let d = delivery_for(&ep, &event);
        assert!(store.create_delivery(&d).await.unwrap());
        d
    }

    fn ids(claimed: &[Delivery]) -> Vec<String> {
        claimed.iter().map(|d| d.id.to_string()).collect()
    }

    #[tokio::test]
    async fn a_due_delivery_is_claimed_once_and_again_only_after_its_lease_ends() {
        let (_dir, store) = fresh_embedded();
        let d = one_delivery(&store).await;
        let due_at = d.next_attempt_at.unwrap();
        assert_eq!(store.next_due().await.unwrap(), Some(due_at));
        assert!(
            store
                .claim_due(due_at - chrono::Duration::seconds(1), t(100), 10)
                .await
                .unwrap()
                .is_empty(),
            "not due before its time"
        );
        let lease = due_at + chrono::Duration::seconds(60);
        let claimed = store.claim_due(due_at, lease, 10).await.unwrap();
        assert_eq!(ids(&claimed), vec![d.id.to_string()]);
        assert_eq!(claimed[0].lease_until, Some(lease));
        assert!(
            store
                .claim_due(
                    lease - chrono::Duration::milliseconds(1),
                    lease + chrono::Duration::seconds(60),
                    10
                )
                .await
                .unwrap()
                .is_empty(),
            "held while the lease runs"
        );
        assert_eq!(
            store.next_due().await.unwrap(),
            Some(lease),
            "due again when the lease ends"
        );
        // The deliverer died mid-attempt: its lease ends and the delivery is handed out again.
        let again = store
            .claim_due(lease, lease + chrono::Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(ids(&again), vec![d.id.to_string()]);
    }

    #[tokio::test]
    async fn a_failed_attempt_is_due_at_its_retry_and_a_finished_delivery_never() {
        let (_dir, store) = fresh_embedded();
        let d = one_delivery(&store).await;
        let now = d.next_attempt_at.unwrap();
        let claimed = store
            .claim_due(now, now + chrono::Duration::seconds(60), 10)
            .await
            .unwrap();
        let a1 = attempt(&claimed[0], 1, false);
        let failed = after(&claimed[0], &a1);
        assert!(store.record_attempt(&failed, &a1).await.unwrap());
        let retry = failed.next_attempt_at.unwrap();
        assert_eq!(store.next_due().await.unwrap(), Some(retry));
        assert!(store
            .claim_due(retry - chrono::Duration::seconds(1), retry, 10)
            .await
            .unwrap()
            .is_empty());
        let claimed = store
            .claim_due(retry, retry + chrono::Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 1);
        let a2 = attempt(&claimed[0], 2, true);
        assert!(store
            .record_attempt(&after(&claimed[0], &a2), &a2)
            .await
            .unwrap());
        assert_eq!(
            store.next_due().await.unwrap(),
            None,
            "delivered: nothing is due"
        );
        assert!(store
            .claim_due(t(100_000), t(100_060), 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn an_attempt_whose_delivery_cannot_be_updated_leaves_no_row_and_can_be_recorded_again() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedOutboundStore::new(Database::open(dir.path(), Durability::Normal).unwrap());
        let d = one_delivery(&store).await;
        // The delivery's update refused, as a full disk would: the attempt's row, written
        // first, must go with it.
        let raw = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
        raw.execute_batch(
            "CREATE TRIGGER refuse BEFORE UPDATE ON outbound_deliveries \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        let a1 = attempt(&d, 1, true);
        assert!(store.record_attempt(&after(&d, &a1), &a1).await.is_err());
        assert!(store
            .list_attempts(&d.org_id, &d.id)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .get_delivery(&d.org_id, &d.id)
                .await
                .unwrap()
                .unwrap()
                .attempts,
            0
        );
        raw.execute_batch("DROP TRIGGER refuse").unwrap();
        assert!(store.record_attempt(&after(&d, &a1), &a1).await.unwrap());
        let attempts = store.list_attempts(&d.org_id, &d.id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].id, a1.id);
        // Recorded once: the same attempt again is stale.
        assert!(!store.record_attempt(&after(&d, &a1), &a1).await.unwrap());
    }

    #[tokio::test]
    async fn a_delivery_claimed_for_a_message_is_not_handed_out_as_due_meanwhile() {
        let (_dir, store) = fresh_embedded();
        let d = one_delivery(&store).await;
        let now = d.next_attempt_at.unwrap();
        let lease = now + chrono::Duration::seconds(60);
        assert!(store
            .claim_delivery(&d.id, 0, lease, now)
            .await
            .unwrap()
            .is_some());
        assert!(store
            .claim_due(now + chrono::Duration::seconds(1), t(500), 10)
            .await
            .unwrap()
            .is_empty());
        // Dead-lettered by hand (its endpoint went away): never due.
        let mut dead = d.clone();
        dead.status = crate::outbound::model::DeliveryStatus::DeadLettered;
        dead.next_attempt_at = None;
        assert!(store.update_delivery(&dead).await.unwrap());
        assert!(store
            .claim_due(t(100_000), t(100_060), 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn one_claim_takes_at_most_what_it_asks_oldest_due_first() {
        let (_dir, store) = fresh_embedded();
        let ep = endpoint("org-due");
        store.create_endpoint(&ep).await.unwrap();
        let mut made = Vec::new();
        for i in 0..5 {
            let mut new = new_event("org-due", "invoice.paid");
            new.created_at = t(10 - i);
            let event = store.append_event(&new).await.unwrap().event().clone();
            let d = delivery_for(&ep, &event);
            assert!(store.create_delivery(&d).await.unwrap());
            made.push(d);
        }
        let first = store.claim_due(t(20), t(80), 2).await.unwrap();
        let mut got = ids(&first);
        got.sort();
        let mut want = vec![made[4].id.to_string(), made[3].id.to_string()];
        want.sort();
        assert_eq!(got, want, "the two due earliest");
        assert_eq!(store.claim_due(t(20), t(80), 10).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn creating_a_delivery_wakes_a_waiting_deliverer() {
        let (_dir, store) = fresh_embedded();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                store
                    .wait_for_work(std::time::Duration::from_secs(30))
                    .await;
                started.elapsed()
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        one_delivery(&store).await;
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken, not left to its 30 s")
            .unwrap();
        assert!(waited < std::time::Duration::from_secs(5));
    }

    /// `outbound_deliveries` as it first shipped, without its closing parenthesis: the
    /// columns later versions added follow it.
    const FIRST_DELIVERIES_TABLE: &str = "CREATE TABLE outbound_deliveries (id TEXT PRIMARY KEY, \
         org_id TEXT NOT NULL, endpoint_id TEXT NOT NULL, event_id TEXT NOT NULL, \
         event_type TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL, \
         lease_until INTEGER, created_at INTEGER NOT NULL, record TEXT NOT NULL";

    #[test]
    fn a_data_dir_from_before_due_times_gains_the_column_and_its_deliveries_stay() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The table as it shipped before `due_at`.
            let conn = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
            conn.execute_batch(&format!(
                "{FIRST_DELIVERIES_TABLE}); \
                 INSERT INTO outbound_deliveries VALUES ('dlv_old', 'org-a', 'ep_1', 'evt_1', \
                 'invoice.paid', 'delivered', 1, NULL, 0, '{{}}');",
            ))
            .unwrap();
        }
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let (rows, due): (i64, i64) = db
            .read(|conn| {
                Ok((
                    conn.query_row("SELECT count(*) FROM outbound_deliveries", [], |r| r.get(0))?,
                    conn.query_row(
                        "SELECT count(*) FROM pragma_table_info('outbound_deliveries') \
                         WHERE name = 'due_at'",
                        [],
                        |r| r.get(0),
                    )?,
                ))
            })
            .unwrap();
        assert_eq!((rows, due), (1, 1));
    }

    #[test]
    fn a_data_dir_with_the_old_status_and_type_indexes_opens_without_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The two listing indexes every delivery's insert and attempt used to update.
            let conn = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
            conn.execute_batch(&format!(
                "{FIRST_DELIVERIES_TABLE}, due_at INTEGER); \
                 CREATE INDEX outbound_deliveries_by_status \
                 ON outbound_deliveries (org_id, status, created_at DESC, id DESC); \
                 CREATE INDEX outbound_deliveries_by_type \
                 ON outbound_deliveries (org_id, event_type, created_at DESC, id DESC); \
                 INSERT INTO outbound_deliveries VALUES ('dlv_old', 'org-a', 'ep_1', 'evt_1', \
                 'invoice.paid', 'failed', 1, NULL, 0, '{{}}', 5);",
            ))
            .unwrap();
        }
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let indexes: Vec<String> = db
            .read(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'index' \
                     AND tbl_name = 'outbound_deliveries' AND sql IS NOT NULL ORDER BY name",
                )?;
                let names = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(names)
            })
            .unwrap();
        assert_eq!(
            indexes,
            [
                "outbound_deliveries_by_endpoint",
                "outbound_deliveries_by_event",
                "outbound_deliveries_by_org",
                "outbound_deliveries_due",
                "outbound_deliveries_failing",
            ]
        );
        let failing: i64 = db
            .read(|conn| {
                Ok(conn.query_row(
                    "SELECT count(*) FROM outbound_deliveries INDEXED BY outbound_deliveries_failing \
                     WHERE org_id = 'org-a' AND status = 'failed'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(failing, 1, "the old row is in the new partial index");
    }

    /// How SQLite runs one page of `list_deliveries` with `filter`: its query plan, one line
    /// per step.
    fn plan_of(db: &Database, filter: &DeliveryFilter) -> String {
        let (sql, args) = delivery_query("org-a", filter, Some((5, "dlv_x".into())), 50);
        db.read(|conn| {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let steps = stmt
                .query_map(params_from_iter(args), |r| r.get::<_, String>(3))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(steps.join("\n"))
        })
        .unwrap()
    }

    #[test]
    fn every_delivery_filter_reads_an_index_in_page_order_without_sorting_the_org() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let (ep, ev) = (EndpointId::generate(), EventId::generate());
        let status = |s| DeliveryFilter {
            status: Some(s),
            ..DeliveryFilter::default()
        };
        let cases = [
            (DeliveryFilter::default(), "outbound_deliveries_by_org"),
            (
                DeliveryFilter {
                    endpoint_id: Some(ep.clone()),
                    ..DeliveryFilter::default()
                },
                "outbound_deliveries_by_endpoint",
            ),
            (
                DeliveryFilter {
                    event_id: Some(ev),
                    ..DeliveryFilter::default()
                },
                "outbound_deliveries_by_event",
            ),
            (
                status(DeliveryStatus::Failed),
                "outbound_deliveries_failing",
            ),
            (
                status(DeliveryStatus::DeadLettered),
                "outbound_deliveries_failing",
            ),
            (
                status(DeliveryStatus::Delivered),
                "outbound_deliveries_by_org",
            ),
            (
                status(DeliveryStatus::Pending),
                "outbound_deliveries_by_org",
            ),
            (
                DeliveryFilter {
                    event_type: Some("invoice.paid".into()),
                    since: Some(t(0)),
                    ..DeliveryFilter::default()
                },
                "outbound_deliveries_by_org",
            ),
            // What `recover` asks: either narrowing index serves it.
            (
                DeliveryFilter {
                    endpoint_id: Some(ep),
                    status: Some(DeliveryStatus::DeadLettered),
                    since: Some(t(0)),
                    ..DeliveryFilter::default()
                },
                "",
            ),
        ];
        for (filter, index) in cases {
            let plan = plan_of(&db, &filter);
            assert!(plan.contains(index), "{filter:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?} sorts: {plan}");
            assert!(
                !plan.lines().any(|step| step == "SCAN outbound_deliveries"),
                "{filter:?} reads the whole table: {plan}"
            );
        }
    }

    #[tokio::test]
    async fn send_slots_of_seconds_past_a_minute_ago_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let store = EmbeddedOutboundStore::new(db.clone());
        let second = t(0).timestamp();
        let (old, recent) = (EndpointId::generate(), EndpointId::generate());
        assert!(store.take_send_slot(&old, second, 5).await.unwrap());
        assert!(store.take_send_slot(&recent, second + 30, 5).await.unwrap());
        assert!(store.take_send_slot(&recent, second + 61, 5).await.unwrap());
        let rows: Vec<(String, i64)> = db
            .read(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT endpoint_id, second FROM outbound_send_slots ORDER BY second",
                )?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (recent.as_str().to_owned(), second + 30),
                (recent.as_str().to_owned(), second + 61)
            ],
            "the row of a second more than a minute old is gone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_holds_at_most_max_page_records_whatever_is_asked() {
        let (_dir, store) = fresh().await;
        let ep = endpoint("org-big");
        store.create_endpoint(&ep).await.unwrap();
        let writes = (0..=MAX_PAGE).map(|i| {
            let store = store.clone();
            let ep = ep.clone();
            async move {
                let mut other = endpoint("org-big");
                other.created_at = t(i as i64);
                store.create_endpoint(&other).await.unwrap();
                let mut new = new_event("org-big", "invoice.paid");
                new.created_at = t(i as i64);
                let event = store.append_event(&new).await.unwrap().event().clone();
                assert!(store
                    .create_delivery(&delivery_for(&ep, &event))
                    .await
                    .unwrap());
            }
        });
        futures::future::join_all(writes).await;
        let (endpoints, next) = store
            .list_endpoints("org-big", MAX_PAGE + 500, None)
            .await
            .unwrap();
        assert_eq!(endpoints.len(), MAX_PAGE);
        let (rest, last) = store
            .list_endpoints("org-big", MAX_PAGE, next)
            .await
            .unwrap();
        assert_eq!((rest.len(), last), (2, None), "1,002 endpoints in all");
        let (deliveries, next) = store
            .list_deliveries("org-big", &DeliveryFilter::default(), usize::MAX, None)
            .await
            .unwrap();
        assert_eq!(deliveries.len(), MAX_PAGE);
        assert!(next.is_some());
    }

    #[tokio::test]
    async fn a_corrupt_record_is_named_by_key_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let store = EmbeddedOutboundStore::new(db.clone());
        let ep = endpoint("org-a");
        store.create_endpoint(&ep).await.unwrap();
        let id = ep.id.as_str().to_owned();
        db.call(move |conn| {
            conn.execute(
                "UPDATE outbound_endpoints SET record = '{\"url\":\"whsec_leaked\"' WHERE id = ?1",
                [id],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        let err = store.get_endpoint("org-a", &ep.id).await.unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(ep.id.as_str()), "{shown}");
        assert!(!shown.contains("whsec_leaked"), "{shown}");
    }
}
