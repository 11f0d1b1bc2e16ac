//! The DynamoDB delivery store: one table, conditional writes for idempotency and leases,
//! a TTL on `expires_at`, and the `gsi1` index for the delivery log and the activity feed.
//!
//! Layout (the SAM template defines the same table; keep them in step):
//!
//! | item | `pk` | `sk` | `gsi1pk` | `gsi1sk` |
//! |---|---|---|---|---|
//! | delivery | `DELIVERY#{source}#{delivery_id}` | `DELIVERY` | `DELIVERIES#{source}` | `{received_at ms, 15 digits}#{delivery_id}` |
//! | activity | `ACTIVITY#{source}#{delivery_id}` | `ACTIVITY` | `ACTIVITIES` | `{received_at ms, 15 digits}#{source}#{delivery_id}` |
//! | payload part | `PAYLOAD#{source}#{delivery_id}` | `PART#{n, 4 digits}` | — | — |
//!
//! A delivery that belongs to an org also carries `gsi2pk` = `ORGDLV#{org}` and `gsi2sk` =
//! `{received_at ms, 15 digits}#{source}#{delivery_id}` (the org's log, sparse index `gsi2`).
//! A payload is split into parts of at most [`PAYLOAD_PART_BYTES`] (an item holds 400 KB);
//! part 0 also holds the part count and the headers; every part has the payload's TTL.
//!
//! Times are epoch milliseconds (`N`), except `expires_at`, the TTL attribute, in epoch
//! seconds. DynamoDB deletes expired items lazily, so every read and conditional write treats
//! an item past its `expires_at` as absent itself.

use super::{
    Claim, DeliveryQuery, DeliveryStore, LogCounts, LogPage, LogQuery, RecordOutcome, Reopen,
    StoreError,
};
use crate::model::{
    log_sort_key, Activity, Delivery, DeliveryKey, DeliveryOutcome, DeliveryStatus, NewDelivery,
    Owner, Source, StoredPayload,
};
use crate::ports::dynamo::{self, esc, n, s, DynamoError, Item};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

type Reader<'a> = dynamo::Reader<'a, StoreError>;

/// The name of the one global secondary index.
pub const GSI1: &str = "gsi1";
/// The sparse index of each org's delivery log.
pub const GSI2: &str = "gsi2";
/// The TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// The most payload bytes one item holds (DynamoDB's item limit is 400 KB, keys included).
pub const PAYLOAD_PART_BYTES: usize = 350_000;

const DELIVERY_SK: &str = "DELIVERY";
const ACTIVITY_SK: &str = "ACTIVITY";
const ACTIVITIES_GSI1PK: &str = "ACTIVITIES";
/// Records `record` re-reads after losing a conditional write before giving up (the winner
/// can only vanish between the two calls if it expired just then).
const RECORD_ATTEMPTS: usize = 3;
/// Items one log query reads per page before its filter.
const PAGE_MAX: usize = 1000;

/// The AWS adapter of [`DeliveryStore`].
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The item as stored, expired or not.
    /// The outcome of a conditional UpdateItem on a delivery: `Ok` with the item it returned,
    /// or, when its condition failed, `Err` with the item as it was (from the failure, else
    /// read again; `None` when there is no such item).
    async fn updated_or_as_was(
        &self,
        done: Result<
            aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
            SdkError<UpdateItemError>,
        >,
        key: &DeliveryKey,
        op: &'static str,
    ) -> Result<Result<Item, Option<Item>>, StoreError> {
        Ok(match condition_outcome(op, done)? {
            Ok(out) => Ok(out.attributes.unwrap_or_default()),
            Err(Some(item)) if !item.is_empty() => Err(Some(item)),
            Err(_) => Err(self.get_item(key).await?),
        })
    }

    async fn get_item(&self, key: &DeliveryKey) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        Ok(out.item)
    }

    /// Query one `gsi1` partition newest first, keeping the items `parse` accepts, until
    /// `limit` are kept or the partition ends.
    async fn query_gsi1<T>(
        &self,
        gsi1pk: &str,
        limit: usize,
        parse: impl FnMut(&Item) -> Result<Option<T>, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let query = Gsi1Query {
            client: &self.client,
            table: &self.table,
            gsi1pk,
            start: None,
            want: limit,
            page: limit,
        };
        query.run(parse, |e| StoreError::dynamo("Query", e)).await
    }

    async fn list_source(
        &self,
        source: Source,
        query: &DeliveryQuery,
        now_secs: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.query_gsi1(&format!("DELIVERIES#{source}"), query.limit, |item| {
            let d = parse_delivery(item)?;
            Ok((d.expires_at.timestamp() >= now_secs && query.matches(&d)).then_some(d))
        })
        .await
    }
}

/// Create the delivery table exactly as the SAM template does (on-demand billing, `gsi1` and
/// `gsi2` projecting everything, TTL on `expires_at`). For tests and local bootstrap.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building the table definition: {e}")))
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building the table definition: {e}")))
    };
    let gsi = GlobalSecondaryIndex::builder()
        .index_name(GSI1)
        .key_schema(key("gsi1pk", KeyType::Hash)?)
        .key_schema(key("gsi1sk", KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| StoreError::Unavailable(format!("building the table definition: {e}")))?;
    let gsi2 = GlobalSecondaryIndex::builder()
        .index_name(GSI2)
        .key_schema(key("gsi2pk", KeyType::Hash)?)
        .key_schema(key("gsi2sk", KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| StoreError::Unavailable(format!("building the table definition: {e}")))?;
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .attribute_definitions(attr("gsi1pk")?)
        .attribute_definitions(attr("gsi1sk")?)
        .attribute_definitions(attr("gsi2pk")?)
        .attribute_definitions(attr("gsi2sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .global_secondary_indexes(gsi)
        .global_secondary_indexes(gsi2)
        .send()
        .await
        .map_err(|e| unavailable("CreateTable", e))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(TTL_ATTRIBUTE)
                .build()
                .map_err(|e| StoreError::Unavailable(format!("building the TTL setting: {e}")))?,
        )
        .send()
        .await
        .map_err(|e| unavailable("UpdateTimeToLive", e))?;
    Ok(())
}

#[async_trait]
impl DeliveryStore for DynamoStore {
    async fn record(&self, new: &NewDelivery) -> Result<RecordOutcome, StoreError> {
        let item = delivery_item(new);
        for _ in 0..RECORD_ATTEMPTS {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", n(new.received_at.timestamp()))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let old = match put {
                Ok(_) => return Ok(RecordOutcome::Recorded),
                Err(SdkError::ServiceError(e)) => match e.into_err() {
                    PutItemError::ConditionalCheckFailedException(failed) => failed.item,
                    other => return Err(StoreError::dynamo("PutItem", &other)),
                },
                Err(e) => return Err(unavailable("PutItem", e)),
            };
            let old = match old {
                Some(item) if !item.is_empty() => Some(item),
                _ => self.get_item(&new.key).await?,
            };
            match old {
                Some(item) => return Ok(RecordOutcome::Exists(parse_delivery(&item)?)),
                // It was there a moment ago and has just gone (deleted on expiry): try again.
                None => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "PutItem: record {} kept losing its conditional write to a vanishing item",
            new.key
        )))
    }

    async fn get(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        self.get_item(key)
            .await?
            .map(|item| parse_delivery(&item))
            .transpose()
    }

    async fn take_over_enqueue(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .update_expression("SET enqueue_lease_until = :lease")
            .condition_expression("#status = :received AND enqueue_lease_until <= :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":received", s(DeliveryStatus::Received.as_str()))
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .expression_attribute_values(":lease", n(lease_until.timestamp_millis()))
            .send()
            .await;
        conditional_update("UpdateItem (take over enqueue)", done)
    }

    async fn release_enqueue(&self, key: &DeliveryKey) -> Result<(), StoreError> {
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .update_expression("SET enqueue_lease_until = :zero")
            .condition_expression("#status = :received")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":received", s(DeliveryStatus::Received.as_str()))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        conditional_update("UpdateItem (release enqueue)", done).map(drop)
    }

    async fn mark_queued(&self, key: &DeliveryKey, at: DateTime<Utc>) -> Result<(), StoreError> {
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .update_expression("SET #status = :queued, queued_at = :at")
            .condition_expression("#status = :received")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":received", s(DeliveryStatus::Received.as_str()))
            .expression_attribute_values(":queued", s(DeliveryStatus::Queued.as_str()))
            .expression_attribute_values(":at", n(at.timestamp_millis()))
            .send()
            .await;
        if conditional_update("UpdateItem (mark queued)", done)? {
            return Ok(());
        }
        // The worker moved it on first: keep its status, but still log when it was queued.
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .update_expression("SET queued_at = if_not_exists(queued_at, :at)")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":at", n(at.timestamp_millis()))
            .send()
            .await;
        conditional_update("UpdateItem (queued at)", done).map(drop)
    }

    async fn claim(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .update_expression("SET process_lease_until = :lease ADD attempts :one")
            .condition_expression(
                "attribute_exists(pk) AND #status IN (:received, :queued, :failed) \
                 AND (attribute_not_exists(process_lease_until) OR process_lease_until <= :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":received", s(DeliveryStatus::Received.as_str()))
            .expression_attribute_values(":queued", s(DeliveryStatus::Queued.as_str()))
            .expression_attribute_values(":failed", s(DeliveryStatus::Failed.as_str()))
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .expression_attribute_values(":lease", n(lease_until.timestamp_millis()))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match self
            .updated_or_as_was(done, key, "UpdateItem (claim)")
            .await?
        {
            Ok(item) => return Ok(Claim::Claimed(parse_delivery(&item)?)),
            Err(old) => old,
        };
        // The condition failed: say why, from the item as it was.
        let Some(item) = old else {
            return Ok(Claim::Missing);
        };
        let current = parse_delivery(&item)?;
        Ok(if current.status.is_final() {
            Claim::Done(current)
        } else {
            Claim::Busy
        })
    }

    async fn finish(&self, key: &DeliveryKey, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":status", s(outcome.status.as_str()))
            .expression_attribute_values(
                ":processed_at",
                n(outcome.processed_at.timestamp_millis()),
            )
            .expression_attribute_values(
                ":duration_ms",
                n(i64::try_from(outcome.duration_ms).unwrap_or(i64::MAX)),
            );
        let set = "SET #status = :status, processed_at = :processed_at, duration_ms = :duration_ms";
        update = match &outcome.error {
            Some(error) => update
                .update_expression(format!("{set}, #error = :error REMOVE process_lease_until"))
                .expression_attribute_values(":error", s(error)),
            None => update.update_expression(format!("{set} REMOVE process_lease_until, #error")),
        };
        let done = update.send().await;
        if !conditional_update("UpdateItem (finish)", done)? {
            tracing::warn!(key = %key, "finished a delivery whose record is gone");
        }
        Ok(())
    }

    async fn list(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let now_secs = Utc::now().timestamp();
        let sources: Vec<Source> = match query.source {
            Some(source) => vec![source],
            None => Source::ALL.to_vec(),
        };
        let pages = futures::future::try_join_all(
            sources
                .into_iter()
                .map(|source| self.list_source(source, query, now_secs)),
        )
        .await?;
        let mut all: Vec<Delivery> = pages.into_iter().flatten().collect();
        // The same order as gsi1sk within a source: received_at, then delivery id.
        all.sort_by(|a, b| {
            (b.received_at.timestamp_millis(), &b.delivery_id)
                .cmp(&(a.received_at.timestamp_millis(), &a.delivery_id))
        });
        all.truncate(query.limit);
        Ok(all)
    }

    async fn put_activity(&self, activity: &Activity) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(activity_item(activity)))
            .send()
            .await
            .map_err(|e| unavailable("PutItem (activity)", e))?;
        Ok(())
    }

    async fn list_activities(&self, limit: usize) -> Result<Vec<Activity>, StoreError> {
        self.query_gsi1(ACTIVITIES_GSI1PK, limit, |item| {
            parse_activity(item).map(Some)
        })
        .await
    }

    async fn set_owner(&self, key: &DeliveryKey, owner: &Owner) -> Result<(), StoreError> {
        let Some(current) = self.get(key).await? else {
            return Ok(());
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .condition_expression("attribute_exists(pk)");
        let mut sets = Vec::new();
        for (i, (name, value)) in owner_attributes(owner, current.received_at, key)
            .into_iter()
            .enumerate()
        {
            sets.push(format!("#a{i} = :v{i}"));
            update = update
                .expression_attribute_names(format!("#a{i}"), name)
                .expression_attribute_values(format!(":v{i}"), value);
        }
        let done = update
            .update_expression(format!("SET {}", sets.join(", ")))
            .send()
            .await;
        conditional_update("UpdateItem (owner)", done).map(drop)
    }

    async fn list_org(&self, q: &LogQuery) -> Result<LogPage, StoreError> {
        let now_secs = q.now.timestamp();
        let lo = q
            .since
            .map(|t| format!("{:015}", t.timestamp_millis().max(0)))
            .unwrap_or_else(|| "0".to_owned());
        // Above every sort key: '~' follows the digits and '#'.
        let hi = q.after.clone().unwrap_or_else(|| "~".to_owned());
        let mut out = Vec::new();
        let want = q.limit + 1;
        self.query_org(&q.org_id, lo, hi, None, |item| {
            let d = parse_delivery(item)?;
            let after = q.after.as_deref();
            let keep = d.expires_at.timestamp() >= now_secs
                && after != Some(d.log_sort_key().as_str())
                && q.connection_id.as_ref().is_none_or(|c| {
                    d.owner.as_ref().and_then(|o| o.connection_id.as_ref()) == Some(c)
                })
                && q.source.is_none_or(|s| d.source == s)
                && q.event_type.as_ref().is_none_or(|e| &d.event_type == e)
                && q.status.is_none_or(|s| d.status == s);
            if keep {
                out.push(d);
            }
            Ok(out.len() < want)
        })
        .await?;
        let next = if out.len() > q.limit {
            out.truncate(q.limit);
            out.last().map(Delivery::log_sort_key)
        } else {
            None
        };
        Ok(LogPage {
            deliveries: out,
            next,
        })
    }

    async fn count_connection(
        &self,
        org_id: &str,
        connection_id: &str,
        now: DateTime<Utc>,
    ) -> Result<LogCounts, StoreError> {
        let now_secs = now.timestamp();
        let mut counts = LogCounts::default();
        self.query_org(
            org_id,
            "0".to_owned(),
            "~".to_owned(),
            Some("connection_id, #status, received_at, expires_at"),
            |item| {
                let r = Reader::new(item);
                if r.opt_str("connection_id")? != Some(connection_id)
                    || r.i64(TTL_ATTRIBUTE)? < now_secs
                {
                    return Ok(true);
                }
                counts.total += 1;
                if r.str("status")? == DeliveryStatus::Failed.as_str() {
                    counts.failed += 1;
                }
                let at = r.millis("received_at")?;
                if counts.last_received_at.is_none_or(|last| at > last) {
                    counts.last_received_at = Some(at);
                }
                Ok(true)
            },
        )
        .await?;
        Ok(counts)
    }

    async fn reopen(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
        queued_before: DateTime<Utc>,
    ) -> Result<Reopen, StoreError> {
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(key)))
            .update_expression("SET #status = :queued, queued_at = :now")
            .condition_expression(
                "attribute_exists(pk) AND expires_at >= :now_secs \
                 AND (#status IN (:processed, :skipped, :failed) \
                      OR (#status = :received AND enqueue_lease_until <= :now) \
                      OR (#status = :queued AND queued_at <= :queued_before)) \
                 AND (attribute_not_exists(process_lease_until) OR process_lease_until <= :now)",
            )
            .expression_attribute_values(":received", s(DeliveryStatus::Received.as_str()))
            .expression_attribute_values(":queued_before", n(queued_before.timestamp_millis()))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":queued", s(DeliveryStatus::Queued.as_str()))
            .expression_attribute_values(":processed", s(DeliveryStatus::Processed.as_str()))
            .expression_attribute_values(":skipped", s(DeliveryStatus::Skipped.as_str()))
            .expression_attribute_values(":failed", s(DeliveryStatus::Failed.as_str()))
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .expression_attribute_values(":now_secs", n(now.timestamp()))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match self
            .updated_or_as_was(done, key, "UpdateItem (reopen)")
            .await?
        {
            Ok(item) => return Ok(Reopen::Reopened(parse_delivery(&item)?)),
            Err(old) => old,
        };
        Ok(match old.map(|item| parse_delivery(&item)).transpose()? {
            Some(d) if d.expires_at.timestamp() >= now.timestamp() => Reopen::InFlight(d),
            _ => Reopen::Missing,
        })
    }

    async fn put_payload(
        &self,
        key: &DeliveryKey,
        payload: &StoredPayload,
    ) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        let items = payload_items(key, payload)?;
        // Parts after the first go first: part 0 names the count, so a reader never sees a
        // count whose parts are not all there yet.
        let (first, rest) = items.split_at(1);
        for batch in rest.chunks(25) {
            let mut pending: Vec<WriteRequest> = batch
                .iter()
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(|e| StoreError::Unavailable(format!("building a put: {e}")))
                })
                .collect::<Result<_, _>>()?;
            for attempt in 0.. {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchWriteItem (payload)", e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                if attempt >= 5 {
                    return Err(StoreError::Unavailable(
                        "BatchWriteItem (payload): parts left unprocessed after retries".into(),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(first[0].clone()))
            .send()
            .await
            .map_err(|e| unavailable("PutItem (payload)", e))?;
        Ok(())
    }

    async fn get_payload(
        &self,
        key: &DeliveryKey,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredPayload>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let answer = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(payload_pk(key)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("Query (payload)", e))?;
            items.extend(answer.items().iter().cloned());
            match answer.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => break,
            }
        }
        payload_from_items(&items, now)
    }

    async fn prune_payloads(&self, _now: DateTime<Utc>) -> Result<u64, StoreError> {
        // The table's TTL deletes them; reads already treat an expired one as gone.
        Ok(0)
    }
}

impl DynamoStore {
    /// Query one org's `gsi2` partition newest first between `lo` and `hi` (inclusive),
    /// handing each item to `keep` until it says stop (false) or the range ends.
    async fn query_org(
        &self,
        org_id: &str,
        lo: String,
        hi: String,
        projection: Option<&str>,
        mut keep: impl FnMut(&Item) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI2)
                .key_condition_expression("gsi2pk = :pk AND gsi2sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(org_gsi2pk(org_id)))
                .expression_attribute_values(":lo", s(&lo))
                .expression_attribute_values(":hi", s(&hi))
                .scan_index_forward(false)
                .set_exclusive_start_key(start.take());
            if let Some(p) = projection {
                query = query
                    .projection_expression(p)
                    .expression_attribute_names("#status", "status");
            }
            let answer = query
                .send()
                .await
                .map_err(|e| StoreError::dynamo("Query (org log)", &e))?;
            for item in answer.items() {
                if !keep(item)? {
                    return Ok(());
                }
            }
            match answer.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(()),
            }
        }
    }
}

// ---- items ---------------------------------------------------------------------------------

/// Epoch milliseconds, zero-padded so they sort as strings.
fn sortable_millis(t: DateTime<Utc>) -> String {
    format!("{:015}", t.timestamp_millis().max(0))
}

fn delivery_pk(key: &DeliveryKey) -> String {
    format!("DELIVERY#{key}")
}

fn delivery_key(key: &DeliveryKey) -> Item {
    HashMap::from([
        ("pk".to_owned(), s(delivery_pk(key))),
        ("sk".to_owned(), s(DELIVERY_SK)),
    ])
}

fn org_gsi2pk(org_id: &str) -> String {
    format!("ORGDLV#{}", esc(org_id))
}

/// The attributes that put a delivery in its org's log.
fn owner_attributes(owner: &Owner, received_at: DateTime<Utc>, key: &DeliveryKey) -> Item {
    let mut item = HashMap::from([
        ("org_id".to_owned(), s(&owner.org_id)),
        ("gsi2pk".to_owned(), s(org_gsi2pk(&owner.org_id))),
        ("gsi2sk".to_owned(), s(log_sort_key(received_at, key))),
    ]);
    if let Some(c) = &owner.connection_id {
        item.insert("connection_id".to_owned(), s(c));
    }
    if let Some(r) = &owner.repository_full_name {
        item.insert("repository_full_name".to_owned(), s(r));
    }
    item
}

fn delivery_item(new: &NewDelivery) -> Item {
    let mut item = delivery_item_without_owner(new);
    if let Some(owner) = &new.owner {
        item.extend(owner_attributes(owner, new.received_at, &new.key));
    }
    item
}

fn delivery_item_without_owner(new: &NewDelivery) -> Item {
    HashMap::from([
        ("pk".to_owned(), s(delivery_pk(&new.key))),
        ("sk".to_owned(), s(DELIVERY_SK)),
        ("gsi1pk".to_owned(), s(format!("DELIVERIES#{}", new.source))),
        (
            "gsi1sk".to_owned(),
            s(format!(
                "{}#{}",
                sortable_millis(new.received_at),
                new.delivery_id
            )),
        ),
        ("source".to_owned(), s(new.source.as_str())),
        ("delivery_id".to_owned(), s(&new.delivery_id)),
        ("event_type".to_owned(), s(&new.event_type)),
        ("status".to_owned(), s(DeliveryStatus::Received.as_str())),
        ("payload_sha256".to_owned(), s(&new.payload_sha256)),
        (
            "signature_verified".to_owned(),
            AttributeValue::Bool(new.signature_verified),
        ),
        (
            "received_at".to_owned(),
            n(new.received_at.timestamp_millis()),
        ),
        ("attempts".to_owned(), n(0)),
        (
            "enqueue_lease_until".to_owned(),
            n(new.enqueue_lease_until.timestamp_millis()),
        ),
        (TTL_ATTRIBUTE.to_owned(), n(new.expires_at.timestamp())),
    ])
}

fn activity_item(a: &Activity) -> Item {
    let mut item = HashMap::from([
        (
            "pk".to_owned(),
            s(format!("ACTIVITY#{}#{}", a.source, a.delivery_id)),
        ),
        ("sk".to_owned(), s(ACTIVITY_SK)),
        ("gsi1pk".to_owned(), s(ACTIVITIES_GSI1PK)),
        (
            "gsi1sk".to_owned(),
            s(format!(
                "{}#{}#{}",
                sortable_millis(a.received_at),
                a.source,
                a.delivery_id
            )),
        ),
        ("source".to_owned(), s(a.source.as_str())),
        ("delivery_id".to_owned(), s(&a.delivery_id)),
        ("event_type".to_owned(), s(&a.event_type)),
        (
            "received_at".to_owned(),
            n(a.received_at.timestamp_millis()),
        ),
        (
            "processed_at".to_owned(),
            n(a.processed_at.timestamp_millis()),
        ),
    ]);
    // Attribute names follow the model's serde names (`git_ref` is `ref`).
    for (name, value) in [
        ("action", &a.action),
        ("repository", &a.repository),
        ("actor", &a.actor),
        ("ref", &a.git_ref),
        ("url", &a.url),
    ] {
        if let Some(value) = value {
            item.insert(name.to_owned(), s(value));
        }
    }
    if let Some(at) = a.occurred_at {
        item.insert("occurred_at".to_owned(), n(at.timestamp_millis()));
    }
    item
}

impl Reader<'_> {
    fn source(&self) -> Result<Source, StoreError> {
        self.str("source")?
            .parse()
            .map_err(|_| self.corrupt("attribute source is not a known source"))
    }
}

fn parse_delivery(item: &Item) -> Result<Delivery, StoreError> {
    let r = Reader::new(item);
    let expires_secs = r.i64(TTL_ATTRIBUTE)?;
    Ok(Delivery {
        source: r.source()?,
        delivery_id: r.str("delivery_id")?.to_owned(),
        event_type: r.str("event_type")?.to_owned(),
        status: r
            .str("status")?
            .parse()
            .map_err(|_| r.corrupt("attribute status is not a known status"))?,
        payload_sha256: r.str("payload_sha256")?.to_owned(),
        signature_verified: match item.get("signature_verified") {
            Some(AttributeValue::Bool(b)) => *b,
            _ => return Err(r.corrupt("attribute signature_verified is not a boolean")),
        },
        received_at: r.millis("received_at")?,
        queued_at: r.opt_millis("queued_at")?,
        processed_at: r.opt_millis("processed_at")?,
        error: r.opt_str("error")?.map(str::to_owned),
        duration_ms: r
            .opt_i64("duration_ms")?
            .map(|d| u64::try_from(d).map_err(|_| r.corrupt("duration_ms is negative")))
            .transpose()?,
        attempts: u32::try_from(r.opt_i64("attempts")?.unwrap_or(0))
            .map_err(|_| r.corrupt("attribute attempts is out of range"))?,
        enqueue_lease_until: r.opt_millis("enqueue_lease_until")?,
        process_lease_until: r.opt_millis("process_lease_until")?,
        expires_at: DateTime::from_timestamp(expires_secs, 0)
            .ok_or_else(|| r.corrupt(format!("attribute {TTL_ATTRIBUTE} is out of range")))?,
        owner: r.opt_str("org_id")?.map(|org_id| Owner {
            org_id: org_id.to_owned(),
            connection_id: item
                .get("connection_id")
                .and_then(|v| v.as_s().ok())
                .cloned(),
            repository_full_name: item
                .get("repository_full_name")
                .and_then(|v| v.as_s().ok())
                .cloned(),
        }),
    })
}

fn payload_pk(key: &DeliveryKey) -> String {
    format!("PAYLOAD#{key}")
}

fn payload_part_sk(n: usize) -> String {
    format!("PART#{n:04}")
}

/// A payload as items: its parts in order, part 0 with the count and the headers.
fn payload_items(key: &DeliveryKey, p: &StoredPayload) -> Result<Vec<Item>, StoreError> {
    let headers = serde_json::to_string(&p.headers).map_err(|e| StoreError::Corrupt {
        key: payload_pk(key),
        reason: e.to_string(),
    })?;
    let parts: Vec<&[u8]> = if p.body.is_empty() {
        vec![&[]]
    } else {
        p.body.chunks(PAYLOAD_PART_BYTES).collect()
    };
    let count = parts.len();
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let mut item = HashMap::from([
                ("pk".to_owned(), s(payload_pk(key))),
                ("sk".to_owned(), s(payload_part_sk(i))),
                (
                    "body".to_owned(),
                    AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes)),
                ),
                (TTL_ATTRIBUTE.to_owned(), n(p.expires_at.timestamp())),
                (
                    "expires_at_ms".to_owned(),
                    n(p.expires_at.timestamp_millis()),
                ),
            ]);
            if i == 0 {
                item.insert("parts".to_owned(), n(count as i64));
                item.insert("headers".to_owned(), s(&headers));
            }
            item
        })
        .collect())
}

/// The payload from its parts (in `sk` order), or `None` when a part is missing (still
/// being written over, or partly deleted on expiry: DynamoDB's TTL deletes each part on its
/// own, part 0 and its count possibly first) or expired by `now` and not deleted yet.
fn payload_from_items(
    items: &[Item],
    now: DateTime<Utc>,
) -> Result<Option<StoredPayload>, StoreError> {
    let mut live = Vec::with_capacity(items.len());
    for item in items {
        if Reader::new(item).millis("expires_at_ms")? > now {
            live.push(item);
        }
    }
    let Some(first) = live.first() else {
        return Ok(None);
    };
    let r = Reader::new(first);
    if r.str("sk")? != payload_part_sk(0) {
        return Ok(None);
    }
    let count = usize::try_from(r.i64("parts")?).unwrap_or(0);
    if live.len() < count {
        return Ok(None);
    }
    let mut body = Vec::new();
    for (i, item) in live.iter().take(count).enumerate() {
        let r = Reader::new(item);
        if r.str("sk")? != payload_part_sk(i) {
            return Ok(None);
        }
        match item.get("body") {
            Some(AttributeValue::B(b)) => body.extend_from_slice(b.as_ref()),
            _ => return Err(r.corrupt("attribute body is not binary")),
        }
    }
    let headers = serde_json::from_str(r.str("headers")?)
        .map_err(|e| r.corrupt(dynamo::unreadable_json(&e)))?;
    Ok(Some(StoredPayload {
        body: body.into(),
        headers,
        expires_at: r.millis("expires_at_ms")?,
    }))
}

fn parse_activity(item: &Item) -> Result<Activity, StoreError> {
    let r = Reader::new(item);
    let opt = |name: &str| r.opt_str(name).map(|v| v.map(str::to_owned));
    Ok(Activity {
        source: r.source()?,
        delivery_id: r.str("delivery_id")?.to_owned(),
        event_type: r.str("event_type")?.to_owned(),
        action: opt("action")?,
        repository: opt("repository")?,
        actor: opt("actor")?,
        git_ref: opt("ref")?,
        url: opt("url")?,
        occurred_at: r.opt_millis("occurred_at")?,
        received_at: r.millis("received_at")?,
        processed_at: r.millis("processed_at")?,
    })
}

// ---- errors --------------------------------------------------------------------------------

/// Ok(true) when the update was applied, Ok(false) when its condition did not hold.
fn conditional_update<O>(
    op: &str,
    done: Result<O, SdkError<UpdateItemError>>,
) -> Result<bool, StoreError> {
    Ok(condition_outcome(op, done)?.is_ok())
}

/// A conditional UpdateItem's outcome: `Ok` with its output, or `Err` with the item as it was
/// when the condition failed (if the call asked for it); any other failure is the error.
fn condition_outcome<O>(
    op: &str,
    done: Result<O, SdkError<UpdateItemError>>,
) -> Result<Result<O, Option<Item>>, StoreError> {
    match done {
        Ok(out) => Ok(Ok(out)),
        Err(SdkError::ServiceError(e)) => match e.into_err() {
            UpdateItemError::ConditionalCheckFailedException(failed) => Ok(Err(failed.item)),
            other => Err(StoreError::dynamo(op, &other)),
        },
        Err(e) => Err(unavailable(op, e)),
    }
}

fn unavailable<E>(op: &str, err: SdkError<E>) -> StoreError
where
    E: std::error::Error + 'static,
{
    StoreError::dynamo(op, &err)
}

/// A Query of one `gsi1` partition, newest (highest `gsi1sk`) first, shared by the delivery
/// log and the connection store.
pub(crate) struct Gsi1Query<'a> {
    pub client: &'a Client,
    pub table: &'a str,
    pub gsi1pk: &'a str,
    /// Where to go on from (exclusive); `None` from the newest.
    pub start: Option<Item>,
    /// How many kept items end the query early.
    pub want: usize,
    /// Items one request reads (at most 1,000).
    pub page: usize,
}

impl Gsi1Query<'_> {
    /// Each item goes to `keep`, which returns it parsed when it counts; `unavailable` turns a
    /// failed request into the caller's error.
    pub async fn run<T, E>(
        mut self,
        mut keep: impl FnMut(&Item) -> Result<Option<T>, E>,
        unavailable: impl Fn(&(dyn std::error::Error + 'static)) -> E,
    ) -> Result<Vec<T>, E> {
        let mut out = Vec::new();
        if self.want == 0 {
            return Ok(out);
        }
        loop {
            let answer = self
                .client
                .query()
                .table_name(self.table)
                .index_name(GSI1)
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(self.gsi1pk))
                .scan_index_forward(false)
                .limit(self.page.clamp(1, PAGE_MAX) as i32)
                .set_exclusive_start_key(self.start.take())
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            for item in answer.items() {
                if let Some(kept) = keep(item)? {
                    out.push(kept);
                    if out.len() >= self.want {
                        return Ok(out);
                    }
                }
            }
            match answer.last_evaluated_key {
                Some(next) if !next.is_empty() => self.start = Some(next),
                _ => return Ok(out),
            }
        }
    }
}

/// Every message of an error's source chain, joined with ": ". Unlike the SDK's
/// `DisplayErrorContext` this leaves out the `Debug` dump, which holds the raw HTTP response
/// (and so, for some errors, item contents).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let msg = e.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::store::conformance::new_delivery;

    #[test]
    fn a_delivery_item_round_trips() {
        let new = new_delivery(Source::Github, "abc#1", Utc::now());
        let item = delivery_item(&new);
        assert_eq!(item["pk"], s("DELIVERY#github#abc#1"));
        assert_eq!(item["gsi1pk"], s("DELIVERIES#github"));
        let d = parse_delivery(&item).unwrap();
        assert_eq!(d.key(), new.key);
        assert_eq!(d.status, DeliveryStatus::Received);
        assert_eq!(
            d.received_at.timestamp_millis(),
            new.received_at.timestamp_millis()
        );
        assert_eq!(d.expires_at.timestamp(), new.expires_at.timestamp());
    }

    #[test]
    fn gsi1_sort_keys_sort_as_time() {
        let early = DateTime::from_timestamp_millis(999).unwrap();
        let late = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        assert_eq!(sortable_millis(early), "000000000000999");
        assert!(sortable_millis(early) < sortable_millis(late));
    }

    #[test]
    fn a_corrupt_item_names_its_key_but_not_its_contents() {
        let mut item = delivery_item(&new_delivery(Source::Jira, "x", Utc::now()));
        item.insert("status".into(), s("secret-looking-value"));
        let err = parse_delivery(&item).unwrap_err().to_string();
        assert!(err.contains("DELIVERY#jira#x"), "{err}");
        assert!(!err.contains("secret-looking-value"), "{err}");
    }
}
