//! What the DynamoDB adapters on the one Hookline table share: attribute values and escaped
//! keys, conditional writes that retry while they collide with concurrent transactions, and
//! the reader that names a corrupt item by its key, never by its contents.

use super::connections::ConnectionError;
use super::orgs::OrgError;
use super::outbound::OutboundError;
use super::store::aws::error_chain;
use super::store::StoreError;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::time::Duration;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// Tries of a write that lost to a concurrent transaction (DynamoDB's TransactionConflict).
const TX_ATTEMPTS: u32 = 8;

/// A port's error as the DynamoDB adapters build it: every port has these two cases.
pub(crate) trait DynamoError: Sized {
    fn unavailable(message: String) -> Self;
    fn corrupt(key: String, reason: String) -> Self;

    /// A failed DynamoDB call, named by its operation (the SDK's message chain, no dump).
    fn dynamo(op: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        Self::unavailable(format!("DynamoDB {op}: {}", error_chain(err)))
    }
}

macro_rules! dynamo_error {
    ($($error:ty),*) => {$(
        impl DynamoError for $error {
            fn unavailable(message: String) -> Self {
                Self::Unavailable(message)
            }
            fn corrupt(key: String, reason: String) -> Self {
                Self::Corrupt { key, reason }
            }
        }
    )*};
}

dynamo_error!(ConnectionError, OutboundError, OrgError, StoreError);

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// A value made safe to place between `#` separators.
pub(crate) fn esc(v: &str) -> String {
    v.replace('%', "%25").replace('#', "%23")
}

/// Why a stored JSON record could not be read: where, never what.
pub(crate) fn unreadable_json(e: &serde_json::Error) -> String {
    format!(
        "unreadable record ({:?} error at line {} column {})",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// One table as an adapter writes it, answering in the adapter's error type `E`.
pub(crate) struct Table<'a, E> {
    client: &'a Client,
    name: &'a str,
    _error: PhantomData<fn() -> E>,
}

impl<'a, E: DynamoError> Table<'a, E> {
    pub fn new(client: &'a Client, name: &'a str) -> Self {
        Self {
            client,
            name,
            _error: PhantomData,
        }
    }

    /// A query of this table: the caller adds its index, key condition and order.
    pub fn query(&self) -> QueryFluentBuilder {
        self.client.query().table_name(self.name)
    }

    /// Run `query` page after page from `start` (each page asking for `page` items at most)
    /// until `want` items came back or the range ends.
    pub async fn query_up_to(
        &self,
        op: &str,
        query: QueryFluentBuilder,
        mut start: Option<Item>,
        want: usize,
        page: usize,
    ) -> Result<Vec<Item>, E> {
        let mut out = Vec::new();
        while out.len() < want {
            let answer = query
                .clone()
                .limit(page.max(1).min(i32::MAX as usize) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| E::dynamo(op, &e))?;
            out.extend(answer.items().iter().take(want - out.len()).cloned());
            match answer.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }

    /// A consistent read of one item; `None` when there is none.
    pub async fn get_item(&self, pk: String, sk: &str) -> Result<Option<Item>, E> {
        let out = self
            .client
            .get_item()
            .table_name(self.name)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| E::dynamo("GetItem", &e))?;
        Ok(out.item.filter(|item| !item.is_empty()))
    }

    /// An UpdateItem request on one item, for the caller to complete and `send_update`.
    pub fn update_item(&self, pk: String, sk: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(self.name)
            .set_key(Some(key(pk, sk)))
    }

    /// Run a transaction, retrying while it loses to concurrent ones. `Ok(false)` when a
    /// condition failed.
    pub async fn transact(&self, op: &str, items: Vec<TransactWriteItem>) -> Result<bool, E> {
        for attempt in 1..=TX_ATTEMPTS {
            let done = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            match done {
                Ok(_) => return Ok(true),
                Err(e) => match classify(op, e) {
                    TxFailure::Condition => return Ok(false),
                    TxFailure::Conflict if attempt < TX_ATTEMPTS => backoff(attempt).await,
                    TxFailure::Conflict => {
                        return Err(E::unavailable(format!(
                            "DynamoDB {op}: kept conflicting with concurrent transactions"
                        )))
                    }
                    TxFailure::Other(e) => return Err(e),
                },
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Send a conditional update, retrying while it collides with a transaction on the item:
    /// the attributes it returned, or `None` when the condition did not hold.
    pub async fn send_update(
        &self,
        op: &str,
        update: UpdateItemFluentBuilder,
    ) -> Result<Option<Item>, E> {
        for attempt in 1..=TX_ATTEMPTS {
            match update.clone().send().await {
                Ok(out) => return Ok(Some(out.attributes.unwrap_or_default())),
                Err(SdkError::ServiceError(e)) => match e.into_err() {
                    UpdateItemError::ConditionalCheckFailedException(_) => return Ok(None),
                    UpdateItemError::TransactionConflictException(_) if attempt < TX_ATTEMPTS => {
                        backoff(attempt).await
                    }
                    other => return Err(E::dynamo(op, &other)),
                },
                Err(e) => return Err(E::dynamo(op, &e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A put, under `condition` (with its `values`) if any, retrying while it collides with a
    /// transaction on the item; `Ok(false)` when the condition did not hold.
    pub async fn put_if(
        &self,
        op: &str,
        item: Item,
        condition: Option<&str>,
        values: Option<Item>,
    ) -> Result<bool, E> {
        let put = self
            .client
            .put_item()
            .table_name(self.name)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned))
            .set_expression_attribute_values(values);
        for attempt in 1..=TX_ATTEMPTS {
            match put.clone().send().await {
                Ok(_) => return Ok(true),
                Err(SdkError::ServiceError(e)) => match e.into_err() {
                    PutItemError::ConditionalCheckFailedException(_) => return Ok(false),
                    PutItemError::TransactionConflictException(_) if attempt < TX_ATTEMPTS => {
                        backoff(attempt).await
                    }
                    other => return Err(E::dynamo(op, &other)),
                },
                Err(e) => return Err(E::dynamo(op, &e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A transaction's put of `item`, under `condition` if any.
    pub fn put(&self, item: Item, condition: Option<&str>) -> Result<TransactWriteItem, E> {
        let put = Put::builder()
            .table_name(self.name)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned))
            .build()
            .map_err(|e| E::unavailable(format!("building a Put: {e}")))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// A transaction's delete of one item, under `condition` (with its values) if any.
    pub fn delete(
        &self,
        pk: String,
        sk: &str,
        condition: Option<(&str, Item)>,
    ) -> Result<TransactWriteItem, E> {
        let mut delete = Delete::builder()
            .table_name(self.name)
            .set_key(Some(key(pk, sk)));
        if let Some((expression, values)) = condition {
            delete = delete
                .condition_expression(expression)
                .set_expression_attribute_values(Some(values));
        }
        let delete = delete
            .build()
            .map_err(|e| E::unavailable(format!("building a Delete: {e}")))?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    /// A transaction's update of one item: `build` completes it from its table and key.
    pub fn update(
        &self,
        pk: String,
        sk: &str,
        build: impl FnOnce(UpdateBuilder) -> UpdateBuilder,
    ) -> Result<TransactWriteItem, E> {
        let update = build(
            aws_sdk_dynamodb::types::Update::builder()
                .table_name(self.name)
                .set_key(Some(key(pk, sk))),
        )
        .build()
        .map_err(|e| E::unavailable(format!("building an Update: {e}")))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

enum TxFailure<E> {
    /// A condition of the transaction failed.
    Condition,
    /// It collided with a concurrent transaction on one of its items: try again.
    Conflict,
    Other(E),
}

fn classify<E: DynamoError>(op: &str, err: SdkError<TransactWriteItemsError>) -> TxFailure<E> {
    let service = match err {
        SdkError::ServiceError(e) => e.into_err(),
        other => return TxFailure::Other(E::dynamo(op, &other)),
    };
    match service {
        TransactWriteItemsError::TransactionCanceledException(cancelled) => {
            let codes: Vec<&str> = cancelled
                .cancellation_reasons()
                .iter()
                .filter_map(|r| r.code())
                .collect();
            // Without reasons (some emulators), the message lists them.
            let message = cancelled.message().unwrap_or_default();
            let has =
                |code: &str| codes.contains(&code) || (codes.is_empty() && message.contains(code));
            if has("ConditionalCheckFailed") {
                TxFailure::Condition
            } else if has("TransactionConflict") {
                TxFailure::Conflict
            } else {
                TxFailure::Other(E::dynamo(op, &cancelled))
            }
        }
        TransactWriteItemsError::TransactionInProgressException(_) => TxFailure::Conflict,
        other => TxFailure::Other(E::dynamo(op, &other)),
    }
}

/// A pause before trying again after losing to a concurrent write.
pub(crate) async fn backoff(attempt: u32) {
    let jitter = rand::random::<u64>() % 20;
    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt) + jitter)).await;
}

/// Reads attributes of one item, naming the item (never its contents) when one is wrong.
pub(crate) struct Reader<'a, E> {
    item: &'a Item,
    /// The key attributes that name the item in errors, joined with `/`.
    named_by: &'static [&'static str],
    _error: PhantomData<fn() -> E>,
}

impl<'a, E: DynamoError> Reader<'a, E> {
    /// A reader naming the item by its `pk`.
    pub fn new(item: &'a Item) -> Self {
        Self::named_by(item, &["pk"])
    }

    pub fn named_by(item: &'a Item, named_by: &'static [&'static str]) -> Self {
        Self {
            item,
            named_by,
            _error: PhantomData,
        }
    }

    pub fn key(&self) -> String {
        let part = |name: &str| match self.item.get(name) {
            Some(AttributeValue::S(v)) => v.clone(),
            _ => format!("<no {name}>"),
        };
        self.named_by
            .iter()
            .map(|name| part(name))
            .collect::<Vec<_>>()
            .join("/")
    }

    pub fn corrupt(&self, reason: impl Into<String>) -> E {
        E::corrupt(self.key(), reason.into())
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, E> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v)),
            Some(_) => Err(self.corrupt(format!("attribute {name} is not a string"))),
        }
    }

    pub fn str(&self, name: &str) -> Result<&'a str, E> {
        self.opt_str(name)?
            .ok_or_else(|| self.corrupt(format!("attribute {name} is missing")))
    }

    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, E> {
        self.opt_number(name, "an integer")
    }

    pub fn i64(&self, name: &str) -> Result<i64, E> {
        self.opt_i64(name)?
            .ok_or_else(|| self.corrupt(format!("attribute {name} is missing")))
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, E> {
        self.opt_number(name, "a count")
    }

    pub fn u64(&self, name: &str) -> Result<u64, E> {
        self.opt_u64(name)?
            .ok_or_else(|| self.corrupt(format!("attribute {name} is missing")))
    }

    /// An epoch-milliseconds attribute as a time.
    pub fn opt_millis(&self, name: &str) -> Result<Option<DateTime<Utc>>, E> {
        self.opt_i64(name)?
            .map(|ms| {
                DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| self.corrupt(format!("attribute {name} is out of range")))
            })
            .transpose()
    }

    pub fn millis(&self, name: &str) -> Result<DateTime<Utc>, E> {
        self.opt_millis(name)?
            .ok_or_else(|| self.corrupt(format!("attribute {name} is missing")))
    }

    /// The serialised model in `record`.
    pub fn record<T: DeserializeOwned>(&self) -> Result<T, E> {
        serde_json::from_str(self.str("record")?)
            .map_err(|e| E::corrupt(self.key(), unreadable_json(&e)))
    }

    fn opt_number<T: std::str::FromStr>(&self, name: &str, kind: &str) -> Result<Option<T>, E> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(format!("attribute {name} is not {kind}"))),
            Some(_) => Err(self.corrupt(format!("attribute {name} is not a number"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn a_corrupt_attribute_is_named_by_the_items_key_and_never_its_value() {
        let it = item(&[
            ("pk", s("OEP#1")),
            ("sk", s("OEP")),
            ("n", s("secret-looking-value")),
        ]);
        let by_pk = Reader::<OutboundError>::new(&it).i64("n").unwrap_err();
        assert_eq!(
            by_pk.to_string(),
            "corrupt record OEP#1: attribute n is not a number"
        );
        let by_both = Reader::<OutboundError>::named_by(&it, &["pk", "sk"])
            .record::<u32>()
            .unwrap_err();
        assert_eq!(
            by_both.to_string(),
            "corrupt record OEP#1/OEP: attribute record is missing"
        );
        let no_key = Reader::<OrgError>::named_by(&Item::new(), &["pk", "sk"]).corrupt("x");
        assert_eq!(no_key.to_string(), "corrupt record <no pk>/<no sk>: x");
    }

    #[test]
    fn numbers_say_which_kind_they_failed_to_be() {
        let it = item(&[("pk", s("P")), ("a", n(-1)), ("b", s("1"))]);
        let r = Reader::<StoreError>::new(&it);
        assert_eq!(r.opt_i64("a").unwrap(), Some(-1));
        assert_eq!(r.opt_i64("absent").unwrap(), None);
        assert!(r
            .opt_u64("a")
            .unwrap_err()
            .to_string()
            .ends_with("attribute a is not a count"));
        assert!(r
            .i64("absent")
            .unwrap_err()
            .to_string()
            .ends_with("attribute absent is missing"));
    }

    #[test]
    fn escaped_values_cannot_forge_a_separator() {
        assert_eq!(esc("50%#1"), "50%25%231");
        assert_ne!(esc("a#b"), esc("a%23b"));
    }
}
