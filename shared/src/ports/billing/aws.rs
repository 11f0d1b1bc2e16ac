//! The DynamoDB billing store, on the one Hookline table (`pk`/`sk`, GSI `gsi1` on
//! `gsi1pk`/`gsi1sk`; the SAM template defines it, `store::aws::create_table` makes it for tests).
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | the org's customer | `BILLORG#{org}` | `ACCOUNT#CUSTOMER` | `customer_id` |
//! | the org's subscription | `BILLORG#{org}` | `ACCOUNT#SUBSCRIPTION` | `version`, `record` |
//! | invoice | `BILLORG#{org}` | `INV#{id}` | `version`, `record`; gsi1 `BILLINV#{org}` / `{created ms}#{id}` |
//! | refund | `BILLORG#{org}` | `REF#{id}` | `version`, `record`; gsi1 `BILLREF#{org}` / `{created ms}#{id}` |
//! | usage | `BILLORG#{org}` | `USAGE#{period}` | `events_published`, `inbound_deliveries` (N) |
//! | the customer's org | `BILLCUS#{customer}` | `ORG` | `org_id` |
//! | parked event | `BILLING#PARKED` | `EVT#{event id}` | `received_at` (N, epoch ms), `record` |
//!
//! Values in keys are escaped (`%` → `%25`, `#` → `%23`) so none can forge a key. `version` is
//! [`Version::as_i64`](crate::billing::model::Version::as_i64): a put passes
//! `attribute_not_exists(pk) OR version <= :v`. A link writes both customer items in one
//! transaction, each `attribute_not_exists(pk)`; usage is one `ADD` under the limit's condition.
//! Account and usage reads are consistent; the invoice and refund lists (gsi1) are eventually
//! consistent, as DynamoDB's indexes are. Parked events are few: one partition holds them.

use super::{json_corrupt, BillingError, BillingStore};
use crate::billing::model::{
    BillingAccount, Invoice, ParkedEvent, Refund, Subscription, Usage, UsageMetric,
};
use crate::ports::dynamo::{self, backoff, esc, n, s, DynamoError, Item, Table};
use crate::ports::store::aws::GSI1;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;

type Reader<'a> = dynamo::Reader<'a, BillingError>;

const CUSTOMER_SK: &str = "ACCOUNT#CUSTOMER";
const SUBSCRIPTION_SK: &str = "ACCOUNT#SUBSCRIPTION";
const ACCOUNT_PREFIX: &str = "ACCOUNT#";
const CUSTOMER_ORG_SK: &str = "ORG";
const PARKED_PK: &str = "BILLING#PARKED";
/// Tries of a link whose transaction failed while neither of its items was readable yet.
const LINK_ATTEMPTS: u32 = 8;
/// Tries of giving usage back while concurrent counts keep moving it.
const REMOVE_ATTEMPTS: u32 = 16;
/// Items one query request reads.
const QUERY_PAGE: usize = 1000;

impl DynamoError for BillingError {
    fn unavailable(message: String) -> Self {
        Self::Unavailable(message)
    }
    fn corrupt(key: String, reason: String) -> Self {
        Self::Corrupt { key, reason }
    }
}

/// The AWS adapter of [`BillingStore`].
#[derive(Debug, Clone)]
pub struct DynamoBillingStore {
    client: Client,
    table: String,
}

/// What a link found.
enum Linked {
    /// The org's customer afterwards (this one, or the one it had).
    Org(String),
    /// The customer is another org's.
    Taken,
}

impl DynamoBillingStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn db(&self) -> Table<'_, BillingError> {
        Table::new(&self.client, &self.table)
    }

    /// Every item of a partition (of the table, or of gsi1 newest first), at most `want`,
    /// whose sort key starts with `prefix`.
    async fn query(
        &self,
        op: &str,
        index: bool,
        pk: String,
        prefix: Option<&str>,
        want: usize,
    ) -> Result<Vec<Item>, BillingError> {
        let (pk_name, sk_name) = if index {
            ("gsi1pk", "gsi1sk")
        } else {
            ("pk", "sk")
        };
        let mut condition = "#pk = :pk".to_owned();
        let mut names = HashMap::from([("#pk".to_owned(), pk_name.to_owned())]);
        let mut values = HashMap::from([(":pk".to_owned(), s(pk))]);
        if let Some(prefix) = prefix {
            condition.push_str(" AND begins_with(#sk, :prefix)");
            names.insert("#sk".to_owned(), sk_name.to_owned());
            values.insert(":prefix".to_owned(), s(prefix));
        }
        let query = self
            .db()
            .query()
            .set_index_name(index.then(|| GSI1.to_owned()))
            .consistent_read(!index)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .scan_index_forward(!index);
        self.db()
            .query_up_to(op, query, None, want, want.clamp(1, QUERY_PAGE))
            .await
    }

    async fn customer_of(&self, org_id: &str) -> Result<Option<String>, BillingError> {
        let Some(item) = self.db().get_item(org_pk(org_id), CUSTOMER_SK).await? else {
            return Ok(None);
        };
        Ok(Some(read(&item).str("customer_id")?.to_owned()))
    }

    /// Link `customer_id` to `org_id` unless either is linked already.
    async fn link(&self, org_id: &str, customer_id: &str) -> Result<Linked, BillingError> {
        for attempt in 1..=LINK_ATTEMPTS {
            let items = vec![
                self.db().put(
                    HashMap::from([
                        ("pk".to_owned(), s(org_pk(org_id))),
                        ("sk".to_owned(), s(CUSTOMER_SK)),
                        ("customer_id".to_owned(), s(customer_id)),
                    ]),
                    Some("attribute_not_exists(pk)"),
                )?,
                self.db().put(
                    HashMap::from([
                        ("pk".to_owned(), s(customer_pk(customer_id))),
                        ("sk".to_owned(), s(CUSTOMER_ORG_SK)),
                        ("org_id".to_owned(), s(org_id)),
                    ]),
                    Some("attribute_not_exists(pk)"),
                )?,
            ];
            if self
                .db()
                .transact("TransactWriteItems (link customer)", items)
                .await?
            {
                return Ok(Linked::Org(customer_id.to_owned()));
            }
            // A condition failed: which link was there first decides the answer. Both items
            // of a link are written together, so one of them is there to read.
            if let Some(existing) = self.customer_of(org_id).await? {
                return Ok(Linked::Org(existing));
            }
            match self.org_for_customer(customer_id).await? {
                Some(other) if other != org_id => return Ok(Linked::Taken),
                Some(_) => return Ok(Linked::Org(customer_id.to_owned())),
                None => backoff(attempt).await,
            }
        }
        Err(BillingError::Unavailable(format!(
            "DynamoDB TransactWriteItems (link customer): customer {customer_id} and org \
             {org_id} kept conflicting"
        )))
    }

    /// A version-conditional put: true when written.
    async fn put_versioned(
        &self,
        op: &str,
        item: Item,
        version: i64,
    ) -> Result<bool, BillingError> {
        self.db()
            .put_if(
                op,
                item,
                Some("attribute_not_exists(pk) OR version <= :v"),
                Some(HashMap::from([(":v".to_owned(), n(version))])),
            )
            .await
    }

    /// The org's invoices or refunds (gsi1 `{list}#{org}`), newest first.
    async fn list_org<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        list: &str,
        org_id: &str,
        limit: usize,
    ) -> Result<Vec<T>, BillingError> {
        let pk = format!("{list}#{}", esc(org_id));
        self.query(op, true, pk, None, limit)
            .await?
            .iter()
            .map(|item| read(item).record())
            .collect()
    }
}

#[async_trait]
impl BillingStore for DynamoBillingStore {
    async fn get_account(&self, org_id: &str) -> Result<Option<BillingAccount>, BillingError> {
        let items = self
            .query(
                "Query (account)",
                false,
                org_pk(org_id),
                Some(ACCOUNT_PREFIX),
                QUERY_PAGE,
            )
            .await?;
        if items.is_empty() {
            return Ok(None);
        }
        let mut account = BillingAccount {
            org_id: org_id.to_owned(),
            customer_id: None,
            subscription: None,
        };
        for item in &items {
            let r = read(item);
            match r.str("sk")? {
                CUSTOMER_SK => account.customer_id = Some(r.str("customer_id")?.to_owned()),
                SUBSCRIPTION_SK => account.subscription = Some(r.record()?),
                _ => {}
            }
        }
        Ok(Some(account))
    }

    async fn link_customer(&self, org_id: &str, customer_id: &str) -> Result<String, BillingError> {
        match self.link(org_id, customer_id).await? {
            Linked::Org(customer) => Ok(customer),
            Linked::Taken => Err(BillingError::CustomerTaken {
                customer_id: customer_id.to_owned(),
            }),
        }
    }

    async fn org_for_customer(&self, customer_id: &str) -> Result<Option<String>, BillingError> {
        let Some(item) = self
            .db()
            .get_item(customer_pk(customer_id), CUSTOMER_ORG_SK)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(read(&item).str("org_id")?.to_owned()))
    }

    async fn put_subscription(
        &self,
        org_id: &str,
        subscription: &Subscription,
    ) -> Result<bool, BillingError> {
        // The link goes first: a crash between the two leaves a link, which the event's
        // redelivery finds and keeps, never a subscription in an org that was refused.
        if self.customer_of(org_id).await?.is_none() {
            if let Linked::Taken = self.link(org_id, &subscription.customer_id).await? {
                return Err(BillingError::CustomerTaken {
                    customer_id: subscription.customer_id.clone(),
                });
            }
        }
        let pk = org_pk(org_id);
        let version = subscription.version.as_i64();
        let item = HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("sk".to_owned(), s(SUBSCRIPTION_SK)),
            ("version".to_owned(), n(version)),
            ("subscription_id".to_owned(), s(&subscription.id)),
            ("record".to_owned(), s(to_json(&pk, subscription)?)),
        ]);
        // Versions order the events of one subscription; another subscription replaces the
        // stored one whatever its version (the service decided it should).
        self.db()
            .put_if(
                "PutItem (subscription)",
                item,
                Some("attribute_not_exists(pk) OR version <= :v OR subscription_id <> :id"),
                Some(HashMap::from([
                    (":v".to_owned(), n(version)),
                    (":id".to_owned(), s(&subscription.id)),
                ])),
            )
            .await
    }

    async fn put_invoice(&self, invoice: &Invoice) -> Result<bool, BillingError> {
        let item = listed_item(
            &invoice.org_id,
            ("INV", "BILLINV"),
            &invoice.id,
            invoice.created,
            invoice.version.as_i64(),
            invoice,
        )?;
        self.put_versioned("PutItem (invoice)", item, invoice.version.as_i64())
            .await
    }

    async fn list_invoices(
        &self,
        org_id: &str,
        limit: usize,
    ) -> Result<Vec<Invoice>, BillingError> {
        self.list_org("Query (invoices)", "BILLINV", org_id, limit)
            .await
    }

    async fn put_refund(&self, refund: &Refund) -> Result<bool, BillingError> {
        let item = listed_item(
            &refund.org_id,
            ("REF", "BILLREF"),
            &refund.id,
            refund.created,
            refund.version.as_i64(),
            refund,
        )?;
        self.put_versioned("PutItem (refund)", item, refund.version.as_i64())
            .await
    }

    async fn list_refunds(&self, org_id: &str, limit: usize) -> Result<Vec<Refund>, BillingError> {
        self.list_org("Query (refunds)", "BILLREF", org_id, limit)
            .await
    }

    async fn park_event(&self, event: &ParkedEvent) -> Result<(), BillingError> {
        let sk = parked_sk(&event.event_id);
        let item = HashMap::from([
            ("pk".to_owned(), s(PARKED_PK)),
            ("sk".to_owned(), s(&sk)),
            (
                "received_at".to_owned(),
                n(event.received_at.timestamp_millis()),
            ),
            (
                "record".to_owned(),
                s(to_json(&format!("{PARKED_PK}/{sk}"), event)?),
            ),
        ]);
        // The first park of an id is kept: Stripe's redelivery is the same event.
        self.db()
            .put_if(
                "PutItem (park event)",
                item,
                Some("attribute_not_exists(pk)"),
                None,
            )
            .await
            .map(|_| ())
    }

    async fn parked_events(&self, limit: usize) -> Result<Vec<ParkedEvent>, BillingError> {
        // Oldest first needs every parked event read: they are few, and keyed by id so that a
        // redelivery finds its first park.
        let items = self
            .query(
                "Query (parked events)",
                false,
                PARKED_PK.to_owned(),
                None,
                usize::MAX,
            )
            .await?;
        let mut events = items
            .iter()
            .map(|item| read(item).record())
            .collect::<Result<Vec<ParkedEvent>, _>>()?;
        events.sort_by(|a, b| (a.received_at, &a.event_id).cmp(&(b.received_at, &b.event_id)));
        events.truncate(limit);
        Ok(events)
    }

    async fn remove_parked(&self, event_id: &str) -> Result<(), BillingError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(dynamo::key(
                PARKED_PK.to_owned(),
                &parked_sk(event_id),
            )))
            .send()
            .await
            .map_err(|e| BillingError::dynamo("DeleteItem (parked event)", &e))?;
        Ok(())
    }

    async fn add_usage(
        &self,
        org_id: &str,
        period: &str,
        metric: UsageMetric,
        by: u64,
        limit: Option<u64>,
    ) -> Result<Option<u64>, BillingError> {
        let mut update = self
            .db()
            .update_item(org_pk(org_id), &usage_sk(period))
            .update_expression("ADD #m :n")
            .expression_attribute_names("#m", metric.as_str())
            .expression_attribute_values(":n", n(count(by)?))
            .return_values(ReturnValue::UpdatedNew);
        if let Some(limit) = limit {
            // Counted only while the count stays within the limit after adding: DynamoDB
            // applies the condition and the ADD to the item as one write.
            let Some(room) = limit.checked_sub(by) else {
                return Ok(None);
            };
            update = update
                .condition_expression("attribute_not_exists(#m) OR #m <= :room")
                .expression_attribute_values(":room", n(count(room)?));
        }
        let Some(attributes) = self
            .db()
            .send_update("UpdateItem (add usage)", update)
            .await?
        else {
            return Ok(None);
        };
        match attributes.get(metric.as_str()) {
            Some(AttributeValue::N(counted)) => counted.parse().map(Some).ok(),
            _ => None,
        }
        .ok_or_else(|| BillingError::Corrupt {
            key: format!("{}/{}", org_pk(org_id), usage_sk(period)),
            reason: format!("attribute {} is not a count", metric.as_str()),
        })
    }

    async fn remove_usage(
        &self,
        org_id: &str,
        period: &str,
        metric: UsageMetric,
        by: u64,
    ) -> Result<(), BillingError> {
        let (pk, sk) = (org_pk(org_id), usage_sk(period));
        let by = count(by)?;
        for attempt in 1..=REMOVE_ATTEMPTS {
            // Subtract when there is that much, else set zero when there is less (or nothing):
            // each a condition on the item, so concurrent counts never take it below zero.
            let subtract = self
                .db()
                .update_item(pk.clone(), &sk)
                .update_expression("ADD #m :minus")
                .condition_expression("#m >= :n")
                .expression_attribute_names("#m", metric.as_str())
                .expression_attribute_values(":minus", n(-by))
                .expression_attribute_values(":n", n(by));
            if self
                .db()
                .send_update("UpdateItem (remove usage)", subtract)
                .await?
                .is_some()
            {
                return Ok(());
            }
            let zero = self
                .db()
                .update_item(pk.clone(), &sk)
                .update_expression("SET #m = :zero")
                .condition_expression("attribute_exists(#m) AND #m < :n")
                .expression_attribute_names("#m", metric.as_str())
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":n", n(by));
            if self
                .db()
                .send_update("UpdateItem (remove usage)", zero)
                .await?
                .is_some()
            {
                return Ok(());
            }
            // Neither held: nothing was counted at all, or a count moved it in between.
            let Some(item) = self.db().get_item(pk.clone(), &sk).await? else {
                return Ok(());
            };
            if read(&item).opt_u64(metric.as_str())?.is_none() {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(BillingError::Unavailable(format!(
            "DynamoDB UpdateItem (remove usage): {pk}/{sk} kept changing"
        )))
    }

    async fn usage(&self, org_id: &str, period: &str) -> Result<Usage, BillingError> {
        let mut usage = Usage {
            period: period.to_owned(),
            ..Usage::default()
        };
        if let Some(item) = self
            .db()
            .get_item(org_pk(org_id), &usage_sk(period))
            .await?
        {
            let r = read(&item);
            let counted = |m: UsageMetric| r.opt_u64(m.as_str()).map(Option::unwrap_or_default);
            usage.events_published = counted(UsageMetric::EventsPublished)?;
            usage.inbound_deliveries = counted(UsageMetric::InboundDeliveries)?;
        }
        Ok(usage)
    }
}

fn org_pk(org_id: &str) -> String {
    format!("BILLORG#{}", esc(org_id))
}

fn customer_pk(customer_id: &str) -> String {
    format!("BILLCUS#{}", esc(customer_id))
}

fn parked_sk(event_id: &str) -> String {
    format!("EVT#{}", esc(event_id))
}

fn usage_sk(period: &str) -> String {
    format!("USAGE#{}", esc(period))
}

/// A count as DynamoDB's number takes it here (an i64).
fn count(n: u64) -> Result<i64, BillingError> {
    i64::try_from(n).map_err(|_| BillingError::Unavailable(format!("usage count {n} is too large")))
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, BillingError> {
    serde_json::to_string(value).map_err(|e| json_corrupt(key, &e))
}

/// An invoice or refund: in the org's partition by id, listed on gsi1 by `created`.
fn listed_item<T: Serialize>(
    org_id: &str,
    (sk_prefix, list): (&str, &str),
    id: &str,
    created: DateTime<Utc>,
    version: i64,
    record: &T,
) -> Result<Item, BillingError> {
    let pk = org_pk(org_id);
    let sk = format!("{sk_prefix}#{}", esc(id));
    let record = to_json(&format!("{pk}/{sk}"), record)?;
    Ok(HashMap::from([
        ("pk".to_owned(), s(pk)),
        ("sk".to_owned(), s(sk)),
        ("gsi1pk".to_owned(), s(format!("{list}#{}", esc(org_id)))),
        (
            "gsi1sk".to_owned(),
            s(format!(
                "{:015}#{}",
                created.timestamp_millis().max(0),
                esc(id)
            )),
        ),
        ("version".to_owned(), n(version)),
        ("record".to_owned(), s(record)),
    ]))
}

/// A reader naming its item by `pk/sk`: an org's billing items share one `pk`.
fn read(item: &Item) -> Reader<'_> {
    Reader::named_by(item, &["pk", "sk"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::billing::conformance::{invoice, v};

    #[test]
    fn keys_cannot_be_forged_with_separators() {
        assert_eq!(org_pk("a#b"), "BILLORG#a%23b");
        assert_ne!(org_pk("a#b"), org_pk("a%23b"));
        assert_ne!(customer_pk("cus#ORG"), customer_pk("cus"));
        assert_eq!(usage_sk("2026-03#x"), "USAGE#2026-03%23x");
    }

    #[test]
    fn an_invoice_is_listed_by_its_creation_and_named_by_key_when_corrupt() {
        let inv = invoice("org#a", "in_1", 0, v(0, 1), "open");
        let mut item = listed_item(
            &inv.org_id,
            ("INV", "BILLINV"),
            &inv.id,
            inv.created,
            inv.version.as_i64(),
            &inv,
        )
        .unwrap();
        assert_eq!(item["gsi1pk"], s("BILLINV#org%23a"));
        assert_eq!(
            item["gsi1sk"],
            s(format!("{:015}#in_1", inv.created.timestamp_millis()))
        );
        assert_eq!(read(&item).record::<Invoice>().unwrap(), inv);
        item.insert(
            "record".into(),
            s("{\"hosted_invoice_url\": \"https://secret"),
        );
        let err = read(&item).record::<Invoice>().unwrap_err().to_string();
        assert!(err.contains("BILLORG#org%23a/INV#in_1"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
