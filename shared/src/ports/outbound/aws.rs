//! The DynamoDB outbound store, on the one Hookline table (`pk`/`sk`, GSI `gsi1` on
//! `gsi1pk`/`gsi1sk`, TTL on `expires_at`; the SAM template defines it, `store::aws::create_table`
//! makes it for tests). Every rule of [`OutboundStore`] holds across concurrent Lambdas through
//! conditional writes, TransactWriteItems and `ADD` alone: no read-then-write decides anything.
//!
//! Layout (`{org}` is escaped — `%` → `%25`, `#` → `%23` — so no value can forge a key; ids are
//! typed and cannot hold `#`; `{seq}` is 20 digits, `{ms}` 15, `{n}` 10):
//!
//! | item | `pk` | `sk` | `gsi1pk` | `gsi1sk` |
//! |---|---|---|---|---|
//! | endpoint | `OEP#{id}` | `OEP` | `ORGOEP#{org}` (the org's list) | `{created_at ms}#{id}` |
//! | endpoint count | `OORG#{org}` | `OEPCOUNT` | – | – |
//! | stream head | `OSTREAM#{org}` | `HEAD` | `OBEHIND#{shard}` while its cursor is behind | `{org}` |
//! | event | `OSTREAM#{org}` | `EVT#{seq}` | – | – |
//! | event-id marker | `OEVT#{org}#{event id}` | `OEVT` | – | – |
//! | delivery | `ODLV#{id}` | `ODLV` | `ORGODLV#{org}` (the org's list) | `{created_at ms}#{id}` |
//! | attempt | `ODLV#{id}` | `ATT#{n}` | – | – |
//! | send slot | `OSLOT#{endpoint}#{epoch second}` | `OSLOT` | – | – |
//!
//! Records hold their serialised model in `record` (S, JSON) and `org_id`, plus: the head
//! `last_seq` and `cursor` (N); the marker the event's `seq`; a delivery `endpoint_id`,
//! `event_id`, `event_type`, `status` (the list filters), `attempts` and `lease_until` (N, epoch
//! ms; absent when none), which override the record; the count `count`; a slot `n` and
//! `expires_at` (epoch seconds, a minute on). The head's gsi1 attributes are set by every
//! append and removed by the advance that reaches `last_seq`, both atomically on the item, so
//! the sparse `OBEHIND#…` partitions (8 of them, by a hash of the org, so no one partition
//! takes every org's appends) hold exactly the orgs with work left. Record reads are
//! consistent; the gsi1 lists are eventually consistent, as DynamoDB's indexes are.
//!
//! An append reads the head's `last_seq` and writes head (conditional on that value), event and
//! id marker in one transaction; a loser reads again. Appends of one process to one org take
//! turns on a local lock first, so only appends from different Lambdas race.

use super::{
    decode_cursor, encode_cursor, json_corrupt, Appended, DeliveryFilter, OutboundError,
    OutboundStore, MAX_PAGE,
};
use crate::outbound::model::{
    Attempt, Delivery, DeliveryId, Endpoint, EndpointId, Event, EventId, NewEvent,
};
use crate::ports::dynamo::{self, backoff, esc, n, s, Item, Table};
use crate::ports::store::aws::{GSI1, TTL_ATTRIBUTE};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

type Reader<'a> = dynamo::Reader<'a, OutboundError>;

const EP_SK: &str = "OEP";
const EPCOUNT_SK: &str = "OEPCOUNT";
const HEAD_SK: &str = "HEAD";
const MARKER_SK: &str = "OEVT";
const DLV_SK: &str = "ODLV";
const SLOT_SK: &str = "OSLOT";
/// How many `OBEHIND#…` partitions the behind-orgs index is spread over.
const BEHIND_SHARDS: u8 = 8;
/// Tries of an append that lost the race for its `seq` to another append.
const APPEND_ATTEMPTS: u32 = 64;
/// Items one query request reads.
const QUERY_PAGE: usize = 1000;
/// How long a send-slot counter outlives its second (DynamoDB deletes it lazily after that).
const SLOT_TTL_SECS: i64 = 60;

/// How many locks this process's appends are spread over (by a hash of the org).
const APPEND_LOCKS: usize = 64;

/// The AWS adapter of [`OutboundStore`].
#[derive(Debug, Clone)]
pub struct DynamoOutboundStore {
    client: Client,
    table: String,
    /// Appends to one org from this process take turns: the conditional head decides between
    /// Lambdas, but N tasks of one process racing for each seq would cost O(N²) transactions.
    append_locks: Arc<[tokio::sync::Mutex<()>; APPEND_LOCKS]>,
}

/// One Query: a partition of the table or of gsi1, a range of its sort key, a filter.
struct Query<'a> {
    index: bool,
    pk: String,
    /// Sort key bounds, inclusive.
    from: Option<String>,
    to: Option<String>,
    forward: bool,
    start: Option<Item>,
    /// A filter expression, with the names and values it uses.
    filter: Option<Filter>,
    want: usize,
    page: usize,
    op: &'a str,
}

struct Filter {
    expression: String,
    names: HashMap<String, String>,
    values: Item,
}

impl DynamoOutboundStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            append_locks: Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(()))),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn db(&self) -> Table<'_, OutboundError> {
        Table::new(&self.client, &self.table)
    }

    /// A number on the org's stream head (`last_seq`, `cursor`): 0 before it has one.
    async fn head_number(&self, org_id: &str, attribute: &str) -> Result<u64, OutboundError> {
        match self.db().get_item(stream_pk(org_id), HEAD_SK).await? {
            None => Ok(0),
            Some(head) => Ok(read(&head).opt_u64(attribute)?.unwrap_or(0)),
        }
    }

    /// Run a query until `want` items came back or the range ends.
    async fn query(&self, q: Query<'_>) -> Result<Vec<Item>, OutboundError> {
        let Query {
            index,
            pk,
            from,
            to,
            forward,
            start,
            filter,
            want,
            page,
            op,
        } = q;
        let (pk_name, sk_name) = if index {
            ("gsi1pk", "gsi1sk")
        } else {
            ("pk", "sk")
        };
        let mut condition = "#pk = :pk".to_owned();
        let mut values = HashMap::from([(":pk".to_owned(), s(pk))]);
        let mut names = HashMap::from([("#pk".to_owned(), pk_name.to_owned())]);
        if from.is_some() || to.is_some() {
            names.insert("#sk".to_owned(), sk_name.to_owned());
        }
        match (from, to) {
            (Some(from), Some(to)) => {
                condition.push_str(" AND #sk BETWEEN :from AND :to");
                values.insert(":from".to_owned(), s(from));
                values.insert(":to".to_owned(), s(to));
            }
            (Some(from), None) => {
                condition.push_str(" AND #sk >= :from");
                values.insert(":from".to_owned(), s(from));
            }
            (None, Some(to)) => {
                condition.push_str(" AND #sk <= :to");
                values.insert(":to".to_owned(), s(to));
            }
            (None, None) => {}
        }
        let mut filter_expression = None;
        if let Some(filter) = filter {
            filter_expression = Some(filter.expression);
            names.extend(filter.names);
            values.extend(filter.values);
        }
        let query = self
            .db()
            .query()
            .set_index_name(index.then(|| GSI1.to_owned()))
            .consistent_read(!index)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .set_filter_expression(filter_expression)
            .scan_index_forward(forward);
        self.db()
            .query_up_to(op, query, start, want, page.clamp(1, QUERY_PAGE))
            .await
    }

    /// The endpoint counter's `ADD`: +1 on create, -1 on delete.
    fn count_update(&self, org_id: &str, by: i64) -> Result<TransactWriteItem, OutboundError> {
        self.db().update(org_pk(org_id), EPCOUNT_SK, |update| {
            update
                .update_expression("SET org_id = :org ADD #count :by")
                .expression_attribute_names("#count", "count")
                .expression_attribute_values(":org", s(org_id))
                .expression_attribute_values(":by", n(by))
        })
    }

    async fn event_at(&self, org_id: &str, seq: u64) -> Result<Option<Event>, OutboundError> {
        self.db()
            .get_item(stream_pk(org_id), &event_sk(seq))
            .await?
            .map(|item| read(&item).record())
            .transpose()
    }

    /// The event the org's marker for `id` names (`None` when there is no marker).
    async fn event_by_id(
        &self,
        org_id: &str,
        id: &EventId,
    ) -> Result<Option<Event>, OutboundError> {
        let pk = marker_pk(org_id, id);
        let Some(marker) = self.db().get_item(pk.clone(), MARKER_SK).await? else {
            return Ok(None);
        };
        let seq = read(&marker).u64("seq")?;
        match self.event_at(org_id, seq).await? {
            // The marker and its event are written in one transaction: one without the other is
            // damage, not a race.
            None => Err(OutboundError::Corrupt {
                key: pk,
                reason: format!("names seq {seq}, which the stream does not hold"),
            }),
            Some(event) => Ok(Some(event)),
        }
    }

    /// One page of a gsi1 list partition from a cursor: `want` items past it, in order.
    #[allow(clippy::too_many_arguments)]
    async fn list_page(
        &self,
        op: &str,
        gsi1pk: String,
        item_pk: fn(&str) -> String,
        item_sk: &str,
        cursor: Option<String>,
        forward: bool,
        since: Option<String>,
        filter: Option<Filter>,
        want: usize,
    ) -> Result<Option<Vec<Item>>, OutboundError> {
        let start = match cursor.as_deref().map(decode_cursor) {
            None => None,
            Some(None) => return Ok(None),
            Some(Some((ms, id))) => {
                // Only a list's own ids go in a start key (they cannot hold `#`).
                if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Ok(None);
                }
                Some(HashMap::from([
                    ("pk".to_owned(), s(item_pk(&id))),
                    ("sk".to_owned(), s(item_sk)),
                    ("gsi1pk".to_owned(), s(&gsi1pk)),
                    ("gsi1sk".to_owned(), s(format!("{ms:015}#{id}"))),
                ]))
            }
        };
        // A start key before `since` would be outside the key condition: that page is empty.
        if let (Some(since), Some(start)) = (&since, &start) {
            if matches!(start.get("gsi1sk"), Some(AttributeValue::S(sk)) if sk < since) {
                return Ok(Some(Vec::new()));
            }
        }
        let page = if filter.is_some() { QUERY_PAGE } else { want };
        self.query(Query {
            index: true,
            pk: gsi1pk,
            from: since,
            to: None,
            forward,
            start,
            filter,
            want,
            page,
            op,
        })
        .await
        .map(Some)
    }
}

#[async_trait]
impl OutboundStore for DynamoOutboundStore {
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), OutboundError> {
        let items = vec![
            self.db()
                .put(endpoint_item(endpoint)?, Some("attribute_not_exists(pk)"))?,
            self.count_update(&endpoint.org_id, 1)?,
        ];
        if self
            .db()
            .transact("TransactWriteItems (create endpoint)", items)
            .await?
        {
            Ok(())
        } else {
            Err(OutboundError::Unavailable(format!(
                "DynamoDB TransactWriteItems (create endpoint): endpoint {} already exists",
                endpoint.id
            )))
        }
    }

    async fn get_endpoint(
        &self,
        org_id: &str,
        id: &EndpointId,
    ) -> Result<Option<Endpoint>, OutboundError> {
        let Some(item) = self.db().get_item(endpoint_pk(id.as_str()), EP_SK).await? else {
            return Ok(None);
        };
        let endpoint: Endpoint = read(&item).record()?;
        Ok((endpoint.org_id == org_id).then_some(endpoint))
    }

    async fn list_endpoints(
        &self,
        org_id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Endpoint>, Option<String>), OutboundError> {
        let limit = limit.min(MAX_PAGE);
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        let Some(items) = self
            .list_page(
                "Query (endpoints)",
                format!("ORGOEP#{}", esc(org_id)),
                endpoint_pk,
                EP_SK,
                cursor,
                true,
                None,
                None,
                limit + 1,
            )
            .await?
        else {
            return Ok((Vec::new(), None));
        };
        org_page(
            &items,
            limit,
            |item| read(item).record(),
            |e: &Endpoint| (e.org_id == org_id, e.created_at, e.id.as_str()),
        )
    }

    async fn count_endpoints(&self, org_id: &str) -> Result<u64, OutboundError> {
        match self.db().get_item(org_pk(org_id), EPCOUNT_SK).await? {
            None => Ok(0),
            Some(item) => {
                let r = read(&item);
                Ok(u64::try_from(r.i64("count")?).unwrap_or(0))
            }
        }
    }

    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<(), OutboundError> {
        let written = self
            .db()
            .put_if(
                "PutItem (update endpoint)",
                endpoint_item(endpoint)?,
                Some("org_id = :org"),
                Some(HashMap::from([(":org".to_owned(), s(&endpoint.org_id))])),
            )
            .await?;
        if written {
            Ok(())
        } else {
            Err(OutboundError::NotFound)
        }
    }

    async fn delete_endpoint(&self, org_id: &str, id: &EndpointId) -> Result<bool, OutboundError> {
        let delete = self.db().delete(
            endpoint_pk(id.as_str()),
            EP_SK,
            Some((
                "org_id = :org",
                HashMap::from([(":org".to_owned(), s(org_id))]),
            )),
        )?;
        let items = vec![delete, self.count_update(org_id, -1)?];
        // A failed condition: none in this org, or a concurrent delete got there first.
        self.db()
            .transact("TransactWriteItems (delete endpoint)", items)
            .await
    }

    async fn append_event(&self, event: &NewEvent) -> Result<Appended, OutboundError> {
        let org = &event.org_id;
        let head_pk = stream_pk(org);
        let marker_pk = marker_pk(org, &event.id);
        let stripe = usize::from(Sha256::digest(org.as_bytes())[1]) % APPEND_LOCKS;
        let _turn = self.append_locks[stripe].lock().await;
        for attempt in 1..=APPEND_ATTEMPTS {
            let last_seq = match self.db().get_item(head_pk.clone(), HEAD_SK).await? {
                None => 0,
                Some(head) => read(&head).opt_u64("last_seq")?.unwrap_or(0),
            };
            let seq = last_seq + 1;
            let appended = Event {
                id: event.id.clone(),
                org_id: org.clone(),
                event_type: event.event_type.clone(),
                created_at: event.created_at,
                data: event.data.clone(),
                seq,
            };
            // The head moves from exactly the `last_seq` read, so of two appends that read the
            // same one, one wins the seq and the other goes round again: no gap, no double.
            let head = self.db().update(head_pk.clone(), HEAD_SK, |update| {
                update
                    .update_expression(
                        "SET last_seq = :seq, org_id = :org, \
                         #cursor = if_not_exists(#cursor, :zero), \
                         gsi1pk = :behind, gsi1sk = :org_key",
                    )
                    .condition_expression(if last_seq == 0 {
                        "attribute_not_exists(last_seq) OR last_seq = :last"
                    } else {
                        "last_seq = :last"
                    })
                    .expression_attribute_names("#cursor", "cursor")
                    .expression_attribute_values(":seq", n_u64(seq))
                    .expression_attribute_values(":last", n_u64(last_seq))
                    .expression_attribute_values(":zero", n(0))
                    .expression_attribute_values(":org", s(org))
                    .expression_attribute_values(":behind", s(behind_pk(org)))
                    .expression_attribute_values(":org_key", s(esc(org)))
            })?;
            let event_item = HashMap::from([
                ("pk".to_owned(), s(&head_pk)),
                ("sk".to_owned(), s(event_sk(seq))),
                ("org_id".to_owned(), s(org)),
                ("record".to_owned(), s(to_json(&head_pk, &appended)?)),
            ]);
            let marker = HashMap::from([
                ("pk".to_owned(), s(&marker_pk)),
                ("sk".to_owned(), s(MARKER_SK)),
                ("org_id".to_owned(), s(org)),
                ("seq".to_owned(), n_u64(seq)),
            ]);
            let items = vec![
                head,
                self.db()
                    .put(event_item, Some("attribute_not_exists(pk)"))?,
                self.db().put(marker, Some("attribute_not_exists(pk)"))?,
            ];
            if self
                .db()
                .transact("TransactWriteItems (append event)", items)
                .await?
            {
                return Ok(Appended::Created(appended));
            }
            // Lost: either the id is taken (then that event is the answer) or the seq was.
            if let Some(existing) = self.event_by_id(org, &event.id).await? {
                return Ok(Appended::Existing(existing));
            }
            if attempt > 4 {
                backoff(attempt.min(10)).await;
            }
        }
        Err(OutboundError::Unavailable(format!(
            "DynamoDB TransactWriteItems (append event): {head_pk} kept losing the race for its \
             next seq"
        )))
    }

    async fn get_event(&self, org_id: &str, id: &EventId) -> Result<Option<Event>, OutboundError> {
        self.event_by_id(org_id, id).await
    }

    async fn events_after(
        &self,
        org_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, OutboundError> {
        let limit = limit.min(MAX_PAGE);
        if limit == 0 || after == u64::MAX {
            return Ok(Vec::new());
        }
        let items = self
            .query(Query {
                index: false,
                pk: stream_pk(org_id),
                from: Some(event_sk(after + 1)),
                to: Some(event_sk(u64::MAX)),
                forward: true,
                start: None,
                filter: None,
                want: limit,
                page: limit,
                op: "Query (events)",
            })
            .await?;
        items.iter().map(|item| read(item).record()).collect()
    }

    async fn last_seq(&self, org_id: &str) -> Result<u64, OutboundError> {
        self.head_number(org_id, "last_seq").await
    }

    async fn dispatch_cursor(&self, org_id: &str) -> Result<u64, OutboundError> {
        self.head_number(org_id, "cursor").await
    }

    async fn advance_cursor(&self, org_id: &str, seq: u64) -> Result<(), OutboundError> {
        let update = |reaches_end: bool| {
            let mut update = self
                .db()
                .update_item(stream_pk(org_id), HEAD_SK)
                .expression_attribute_names("#cursor", "cursor")
                .expression_attribute_values(":seq", n_u64(seq))
                .expression_attribute_values(":org", s(org_id))
                .expression_attribute_values(":zero", n(0));
            let moves = "(attribute_not_exists(#cursor) OR #cursor < :seq)";
            let set =
                "SET #cursor = :seq, org_id = :org, last_seq = if_not_exists(last_seq, :zero)";
            update = if reaches_end {
                // Leaving the behind index only when no append has gone past `seq` meanwhile.
                update
                    .update_expression(format!("{set} REMOVE gsi1pk, gsi1sk"))
                    .condition_expression(format!(
                        "{moves} AND (attribute_not_exists(last_seq) OR last_seq <= :seq)"
                    ))
            } else {
                update.update_expression(set).condition_expression(moves)
            };
            update
        };
        if self
            .db()
            .send_update("UpdateItem (advance cursor)", update(true))
            .await?
            .is_none()
        {
            // Behind the stream's end still (or already there or past: then nothing changes).
            self.db()
                .send_update("UpdateItem (advance cursor)", update(false))
                .await?;
        }
        Ok(())
    }

    async fn orgs_behind(&self, limit: usize) -> Result<Vec<String>, OutboundError> {
        let mut out = Vec::new();
        for shard in 0..BEHIND_SHARDS {
            if out.len() >= limit {
                break;
            }
            let items = self
                .query(Query {
                    index: true,
                    pk: format!("OBEHIND#{shard}"),
                    from: None,
                    to: None,
                    forward: true,
                    start: None,
                    // The index lags the table; its projected counters say what it saw.
                    filter: Some(Filter {
                        expression: "#cursor < last_seq".to_owned(),
                        names: HashMap::from([("#cursor".to_owned(), "cursor".to_owned())]),
                        values: HashMap::new(),
                    }),
                    want: limit - out.len(),
                    page: QUERY_PAGE,
                    op: "Query (orgs behind)",
                })
                .await?;
            for item in &items {
                out.push(read(item).str("org_id")?.to_owned());
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn create_delivery(&self, delivery: &Delivery) -> Result<bool, OutboundError> {
        self.db()
            .put_if(
                "PutItem (create delivery)",
                delivery_item(delivery)?,
                Some("attribute_not_exists(pk)"),
                None,
            )
            .await
    }

    async fn get_delivery(
        &self,
        org_id: &str,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>, OutboundError> {
        let Some(item) = self.db().get_item(delivery_pk(id.as_str()), DLV_SK).await? else {
            return Ok(None);
        };
        let delivery = parse_delivery(&item)?;
        Ok((delivery.org_id == org_id).then_some(delivery))
    }

    async fn list_deliveries(
        &self,
        org_id: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), OutboundError> {
        let limit = limit.min(MAX_PAGE);
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        let mut clauses = Vec::new();
        let mut values = HashMap::new();
        let mut names = HashMap::new();
        let mut narrow = |attribute: &str, value: Option<&str>| {
            if let Some(value) = value {
                clauses.push(format!("{attribute} = :{attribute}"));
                values.insert(format!(":{attribute}"), s(value));
            }
        };
        narrow(
            "endpoint_id",
            filter.endpoint_id.as_ref().map(|e| e.as_str()),
        );
        narrow("event_id", filter.event_id.as_ref().map(|e| e.as_str()));
        narrow("event_type", filter.event_type.as_deref());
        if let Some(status) = filter.status {
            clauses.push("#status = :status".to_owned());
            names.insert("#status".to_owned(), "status".to_owned());
            values.insert(":status".to_owned(), s(status.as_str()));
        }
        let narrowing = (!clauses.is_empty()).then(|| Filter {
            expression: clauses.join(" AND "),
            names,
            values,
        });
        let since = filter
            .since
            .map(|t| format!("{:015}", t.timestamp_millis().max(0)));
        let Some(items) = self
            .list_page(
                "Query (deliveries)",
                format!("ORGODLV#{}", esc(org_id)),
                delivery_pk,
                DLV_SK,
                cursor,
                false,
                since,
                narrowing,
                limit + 1,
            )
            .await?
        else {
            return Ok((Vec::new(), None));
        };
        org_page(&items, limit, parse_delivery, |d: &Delivery| {
            (d.org_id == org_id, d.created_at, d.id.as_str())
        })
    }

    async fn claim_delivery(
        &self,
        id: &DeliveryId,
        attempts_made: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Delivery>, OutboundError> {
        let update = self
            .db()
            .update_item(delivery_pk(id.as_str()), DLV_SK)
            .update_expression("SET lease_until = :lease")
            .condition_expression(
                "attempts = :made AND (attribute_not_exists(lease_until) OR lease_until <= :now)",
            )
            .expression_attribute_values(":lease", n(lease_until.timestamp_millis()))
            .expression_attribute_values(":made", n(i64::from(attempts_made)))
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .return_values(ReturnValue::AllNew);
        self.db()
            .send_update("UpdateItem (claim delivery)", update)
            .await?
            .map(|item| parse_delivery(&item))
            .transpose()
    }

    async fn record_attempt(
        &self,
        delivery: &Delivery,
        attempt: &Attempt,
    ) -> Result<bool, OutboundError> {
        let delivery = Delivery {
            attempts: attempt.number,
            lease_until: None,
            ..delivery.clone()
        };
        let pk = delivery_pk(delivery.id.as_str());
        let state = self.delivery_update(&delivery, attempt.number.saturating_sub(1))?;
        let attempt_item = HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("sk".to_owned(), s(attempt_sk(attempt.number))),
            ("org_id".to_owned(), s(&attempt.org_id)),
            ("record".to_owned(), s(to_json(&pk, attempt)?)),
        ]);
        let items = vec![
            state,
            self.db()
                .put(attempt_item, Some("attribute_not_exists(pk)"))?,
        ];
        self.db()
            .transact("TransactWriteItems (record attempt)", items)
            .await
    }

    async fn update_delivery(&self, delivery: &Delivery) -> Result<bool, OutboundError> {
        let state = self.delivery_update(delivery, delivery.attempts)?;
        let items = vec![state];
        self.db()
            .transact("TransactWriteItems (update delivery)", items)
            .await
    }

    async fn list_attempts(
        &self,
        org_id: &str,
        id: &DeliveryId,
    ) -> Result<Vec<Attempt>, OutboundError> {
        let items = self
            .query(Query {
                index: false,
                pk: delivery_pk(id.as_str()),
                from: Some(attempt_sk(0)),
                to: Some(attempt_sk(u32::MAX)),
                forward: true,
                start: None,
                filter: None,
                want: usize::MAX,
                page: QUERY_PAGE,
                op: "Query (attempts)",
            })
            .await?;
        let attempts = items
            .iter()
            .map(|item| read(item).record::<Attempt>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(attempts
            .into_iter()
            .filter(|a| a.org_id == org_id)
            .collect())
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
        let update = self
            .db()
            .update_item(format!("OSLOT#{endpoint}#{second}"), SLOT_SK)
            .update_expression("SET #ttl = :ttl ADD #n :one")
            .condition_expression("attribute_not_exists(#n) OR #n < :limit")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":ttl", n(second.saturating_add(SLOT_TTL_SECS)))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(i64::from(limit)));
        Ok(self
            .db()
            .send_update("UpdateItem (send slot)", update)
            .await?
            .is_some())
    }
}

impl DynamoOutboundStore {
    /// The update writing `delivery`'s state, only if its stored `attempts` is `expected`.
    fn delivery_update(
        &self,
        d: &Delivery,
        expected: u32,
    ) -> Result<TransactWriteItem, OutboundError> {
        let pk = delivery_pk(d.id.as_str());
        let record = to_json(&pk, d)?;
        self.db().update(pk, DLV_SK, |update| {
            let update = update
                .condition_expression("attempts = :expected AND org_id = :org")
                .expression_attribute_names("#record", "record")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":expected", n(i64::from(expected)))
                .expression_attribute_values(":org", s(&d.org_id))
                .expression_attribute_values(":record", s(record))
                .expression_attribute_values(":status", s(d.status.as_str()))
                .expression_attribute_values(":attempts", n(i64::from(d.attempts)));
            let set = "SET #record = :record, #status = :status, attempts = :attempts";
            match d.lease_until {
                Some(lease) => update
                    .update_expression(format!("{set}, lease_until = :lease"))
                    .expression_attribute_values(":lease", n(lease.timestamp_millis())),
                None => update.update_expression(format!("{set} REMOVE lease_until")),
            }
        })
    }
}

// ---- keys and items ------------------------------------------------------------------------

fn n_u64(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn endpoint_pk(id: &str) -> String {
    format!("OEP#{id}")
}

fn delivery_pk(id: &str) -> String {
    format!("ODLV#{id}")
}

fn org_pk(org_id: &str) -> String {
    format!("OORG#{}", esc(org_id))
}

fn stream_pk(org_id: &str) -> String {
    format!("OSTREAM#{}", esc(org_id))
}

fn event_sk(seq: u64) -> String {
    format!("EVT#{seq:020}")
}

fn attempt_sk(number: u32) -> String {
    format!("ATT#{number:010}")
}

fn marker_pk(org_id: &str, id: &EventId) -> String {
    format!("OEVT#{}#{}", esc(org_id), id.as_str())
}

/// The behind-index partition of an org: a stable hash, so every writer picks the same one.
fn behind_pk(org_id: &str) -> String {
    let shard = Sha256::digest(org_id.as_bytes())[0] % BEHIND_SHARDS;
    format!("OBEHIND#{shard}")
}

fn list_sk(created_at: DateTime<Utc>, id: &str) -> String {
    format!("{:015}#{id}", created_at.timestamp_millis().max(0))
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, OutboundError> {
    serde_json::to_string(value).map_err(|e| json_corrupt(key, &e))
}

fn endpoint_item(e: &Endpoint) -> Result<Item, OutboundError> {
    let pk = endpoint_pk(e.id.as_str());
    Ok(HashMap::from([
        ("pk".to_owned(), s(&pk)),
        ("sk".to_owned(), s(EP_SK)),
        ("gsi1pk".to_owned(), s(format!("ORGOEP#{}", esc(&e.org_id)))),
        ("gsi1sk".to_owned(), s(list_sk(e.created_at, e.id.as_str()))),
        ("org_id".to_owned(), s(&e.org_id)),
        ("record".to_owned(), s(to_json(&pk, e)?)),
    ]))
}

fn delivery_item(d: &Delivery) -> Result<Item, OutboundError> {
    let pk = delivery_pk(d.id.as_str());
    let mut item = HashMap::from([
        ("pk".to_owned(), s(&pk)),
        ("sk".to_owned(), s(DLV_SK)),
        (
            "gsi1pk".to_owned(),
            s(format!("ORGODLV#{}", esc(&d.org_id))),
        ),
        ("gsi1sk".to_owned(), s(list_sk(d.created_at, d.id.as_str()))),
        ("org_id".to_owned(), s(&d.org_id)),
        ("endpoint_id".to_owned(), s(d.endpoint_id.as_str())),
        ("event_id".to_owned(), s(d.event_id.as_str())),
        ("event_type".to_owned(), s(&d.event_type)),
        ("status".to_owned(), s(d.status.as_str())),
        ("attempts".to_owned(), n(i64::from(d.attempts))),
        ("record".to_owned(), s(to_json(&pk, d)?)),
    ]);
    if let Some(lease) = d.lease_until {
        item.insert("lease_until".to_owned(), n(lease.timestamp_millis()));
    }
    Ok(item)
}

/// One page of a list read for `limit + 1` items: the first `limit` parsed, those `place`
/// says are the org's kept, and the cursor after the last kept one when there were more.
fn org_page<T>(
    items: &[Item],
    limit: usize,
    parse: impl Fn(&Item) -> Result<T, OutboundError>,
    place: impl Fn(&T) -> (bool, DateTime<Utc>, &str),
) -> Result<(Vec<T>, Option<String>), OutboundError> {
    let more = items.len() > limit;
    let mut page = items
        .iter()
        .take(limit)
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    page.retain(|record| place(record).0);
    let next = match page.last().map(&place) {
        Some((_, created_at, id)) if more => Some(encode_cursor(created_at, id)),
        _ => None,
    };
    Ok((page, next))
}

/// A reader naming its item by `pk/sk`: a delivery and its attempts share one `pk`.
fn read(item: &Item) -> Reader<'_> {
    Reader::named_by(item, &["pk", "sk"])
}

/// A delivery: its record, with `attempts` and `lease_until` from their attributes (a claim
/// moves only the lease attribute).
fn parse_delivery(item: &Item) -> Result<Delivery, OutboundError> {
    let r = read(item);
    let mut d: Delivery = r.record()?;
    d.attempts = u32::try_from(r.i64("attempts")?)
        .map_err(|_| r.corrupt("attribute attempts is out of range"))?;
    d.lease_until = r.opt_millis("lease_until")?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> Delivery {
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let event = Event {
            id: EventId::parse("evt_1").unwrap(),
            org_id: "org#a".to_owned(),
            event_type: "invoice.paid".to_owned(),
            created_at: at,
            data: serde_json::Value::Null.into(),
            seq: 1,
        };
        Delivery::pending(&EndpointId::generate(), &event, at)
    }

    #[test]
    fn keys_cannot_be_forged_with_separators() {
        let id = EventId::parse("x").unwrap();
        assert_ne!(
            marker_pk("a#b", &id),
            marker_pk("a", &EventId::parse("b").unwrap())
        );
        assert_eq!(stream_pk("50%#1"), "OSTREAM#50%25%231");
        assert_eq!(event_sk(7), "EVT#00000000000000000007");
        assert!(event_sk(9) < event_sk(10));
        assert_eq!(event_sk(u64::MAX).len(), "EVT#".len() + 20);
        assert_eq!(behind_pk("org-a"), behind_pk("org-a"));
    }

    #[test]
    fn a_delivery_item_round_trips_with_attempts_and_lease_from_their_attributes() {
        let d = delivery();
        let mut item = delivery_item(&d).unwrap();
        assert_eq!(item["gsi1pk"], s("ORGODLV#org%23a"));
        assert_eq!(item["gsi1sk"], s(format!("001700000000123#{}", d.id)));
        assert_eq!(parse_delivery(&item).unwrap(), d);
        item.insert("attempts".into(), n(2));
        item.insert("lease_until".into(), n(1_700_000_060_000));
        let claimed = parse_delivery(&item).unwrap();
        assert_eq!(claimed.attempts, 2);
        assert_eq!(
            claimed.lease_until,
            DateTime::from_timestamp_millis(1_700_000_060_000)
        );
    }

    #[test]
    fn a_corrupt_item_names_its_key_but_not_its_contents() {
        let d = delivery();
        let mut item = delivery_item(&d).unwrap();
        item.insert(
            "record".into(),
            s("{\"last_error\": \"customer-secret-text\""),
        );
        let err = parse_delivery(&item).unwrap_err().to_string();
        assert!(err.contains(&format!("ODLV#{}/ODLV", d.id)), "{err}");
        assert!(!err.contains("customer-secret-text"), "{err}");
    }
}
