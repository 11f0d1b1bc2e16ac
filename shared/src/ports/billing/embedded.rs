//! The embedded billing store: the `billing_*` tables of the local SQLite file (schema in
//! `ports::sqlite`). Every write is one closure on the database's single writer thread, so a
//! condition and the write that depends on it are atomic; reads run beside the writer.

use super::{json_corrupt, BillingError, BillingStore};
use crate::billing::model::{
    BillingAccount, Invoice, ParkedEvent, Refund, Subscription, Usage, UsageMetric,
};
use crate::ports::sqlite::{millis, Database, DbError};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct EmbeddedBillingStore {
    db: Database,
}

impl EmbeddedBillingStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// A version-conditional upsert of an org's invoice or refund: true when written.
    async fn put_versioned(
        &self,
        table: &'static str,
        (org_id, id, created, version): (String, String, i64, i64),
        record: String,
    ) -> Result<bool, BillingError> {
        let sql = format!(
            "INSERT INTO {table} (org_id, id, created, version, record) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (org_id, id) DO UPDATE \
             SET created = excluded.created, version = excluded.version, record = excluded.record \
             WHERE {table}.version <= excluded.version"
        );
        let changed = self
            .db
            .call_one(move |conn| {
                Ok(conn
                    .prepare_cached(&sql)?
                    .execute(params![org_id, id, created, version, record])?)
            })
            .await?;
        Ok(changed == 1)
    }

    /// The org's records in `table`, newest `created` first.
    fn list_org<T: DeserializeOwned>(
        &self,
        table: &'static str,
        kind: &str,
        org_id: &str,
        limit: usize,
    ) -> Result<Vec<T>, BillingError> {
        let sql = format!(
            "SELECT id, record FROM {table} WHERE org_id = ?1 \
             ORDER BY created DESC, id DESC LIMIT ?2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String)> = self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![org_id, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|(id, record)| from_json(&format!("{kind} {id} of org {org_id}"), record))
            .collect()
    }
}

impl From<DbError> for BillingError {
    fn from(e: DbError) -> Self {
        BillingError::Unavailable(e.0)
    }
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, BillingError> {
    serde_json::to_string(value).map_err(|e| json_corrupt(key, &e))
}

fn from_json<T: DeserializeOwned>(key: &str, record: &str) -> Result<T, BillingError> {
    serde_json::from_str(record).map_err(|e| json_corrupt(key, &e))
}

/// A count as SQLite stores it (an i64).
fn count(n: u64) -> Result<i64, BillingError> {
    i64::try_from(n).map_err(|_| BillingError::Unavailable(format!("usage count {n} is too large")))
}

/// What linking a customer found, decided inside the writer's transaction.
enum Linked {
    /// The org's customer afterwards (this one, or the one it had).
    Org(String),
    /// The customer is another org's.
    Taken,
}

/// Link `customer_id` to `org_id` unless either is linked already; runs in one writer call.
fn link(conn: &Connection, org_id: &str, customer_id: &str) -> Result<Linked, DbError> {
    let existing: Option<String> = conn
        .prepare_cached("SELECT customer_id FROM billing_customers WHERE org_id = ?1")?
        .query_row(params![org_id], |r| r.get(0))
        .optional()?;
    if let Some(existing) = existing {
        return Ok(Linked::Org(existing));
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO billing_customers (customer_id, org_id) VALUES (?1, ?2) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![customer_id, org_id])?;
    // The org had none, so a conflict is the customer's: another org has it.
    Ok(if inserted == 1 {
        Linked::Org(customer_id.to_owned())
    } else {
        Linked::Taken
    })
}

#[async_trait]
impl BillingStore for EmbeddedBillingStore {
    async fn get_account(&self, org_id: &str) -> Result<Option<BillingAccount>, BillingError> {
        let (customer_id, record): (Option<String>, Option<String>) = self.db.read(|conn| {
            let customer = conn
                .prepare_cached("SELECT customer_id FROM billing_customers WHERE org_id = ?1")?
                .query_row(params![org_id], |r| r.get(0))
                .optional()?;
            let record = conn
                .prepare_cached("SELECT record FROM billing_subscriptions WHERE org_id = ?1")?
                .query_row(params![org_id], |r| r.get(0))
                .optional()?;
            Ok((customer, record))
        })?;
        let subscription: Option<Subscription> = record
            .map(|r| from_json(&format!("subscription of org {org_id}"), &r))
            .transpose()?;
        if customer_id.is_none() && subscription.is_none() {
            return Ok(None);
        }
        Ok(Some(BillingAccount {
            org_id: org_id.to_owned(),
            customer_id,
            subscription,
        }))
    }

    async fn link_customer(&self, org_id: &str, customer_id: &str) -> Result<String, BillingError> {
        let (org, customer) = (org_id.to_owned(), customer_id.to_owned());
        let linked = self
            .db
            .call(move |conn| link(conn, &org, &customer))
            .await?;
        match linked {
            Linked::Org(customer) => Ok(customer),
            Linked::Taken => Err(BillingError::CustomerTaken {
                customer_id: customer_id.to_owned(),
            }),
        }
    }

    async fn org_for_customer(&self, customer_id: &str) -> Result<Option<String>, BillingError> {
        Ok(self.db.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT org_id FROM billing_customers WHERE customer_id = ?1")?
                .query_row(params![customer_id], |r| r.get(0))
                .optional()?)
        })?)
    }

    async fn put_subscription(
        &self,
        org_id: &str,
        subscription: &Subscription,
    ) -> Result<bool, BillingError> {
        let record = to_json(&format!("subscription of org {org_id}"), subscription)?;
        let (org, customer) = (org_id.to_owned(), subscription.customer_id.clone());
        let version = subscription.version.as_i64();
        let written = self
            .db
            .call(move |conn| {
                if let Linked::Taken = link(conn, &org, &customer)? {
                    return Ok(None);
                }
                let changed = conn
                    .prepare_cached(
                        "INSERT INTO billing_subscriptions (org_id, version, record) \
                         VALUES (?1, ?2, ?3) \
                         ON CONFLICT (org_id) DO UPDATE \
                         SET version = excluded.version, record = excluded.record \
                         WHERE billing_subscriptions.version <= excluded.version \
                         OR json_extract(billing_subscriptions.record, '$.id') \
                            IS NOT json_extract(excluded.record, '$.id')",
                    )?
                    .execute(params![org, version, record])?;
                Ok(Some(changed == 1))
            })
            .await?;
        written.ok_or_else(|| BillingError::CustomerTaken {
            customer_id: subscription.customer_id.clone(),
        })
    }

    async fn put_invoice(&self, invoice: &Invoice) -> Result<bool, BillingError> {
        let key = format!("invoice {} of org {}", invoice.id, invoice.org_id);
        let record = to_json(&key, invoice)?;
        let columns = (
            invoice.org_id.clone(),
            invoice.id.clone(),
            millis(invoice.created),
            invoice.version.as_i64(),
        );
        self.put_versioned("billing_invoices", columns, record)
            .await
    }

    async fn list_invoices(
        &self,
        org_id: &str,
        limit: usize,
    ) -> Result<Vec<Invoice>, BillingError> {
        self.list_org("billing_invoices", "invoice", org_id, limit)
    }

    async fn put_refund(&self, refund: &Refund) -> Result<bool, BillingError> {
        let key = format!("refund {} of org {}", refund.id, refund.org_id);
        let record = to_json(&key, refund)?;
        let columns = (
            refund.org_id.clone(),
            refund.id.clone(),
            millis(refund.created),
            refund.version.as_i64(),
        );
        self.put_versioned("billing_refunds", columns, record).await
    }

    async fn list_refunds(&self, org_id: &str, limit: usize) -> Result<Vec<Refund>, BillingError> {
        self.list_org("billing_refunds", "refund", org_id, limit)
    }

    async fn park_event(&self, event: &ParkedEvent) -> Result<(), BillingError> {
        let record = to_json(&format!("parked event {}", event.event_id), event)?;
        let (id, at) = (event.event_id.clone(), millis(event.received_at));
        self.db
            .call_one(move |conn| {
                // The first park of an id is kept: Stripe's redelivery is the same event.
                conn.prepare_cached(
                    "INSERT INTO billing_parked_events (event_id, received_at, record) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?
                .execute(params![id, at, record])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn parked_events(&self, limit: usize) -> Result<Vec<ParkedEvent>, BillingError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String)> = self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT event_id, record FROM billing_parked_events \
                 ORDER BY received_at, event_id LIMIT ?1",
            )?;
            let rows = stmt
                .query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|(id, record)| from_json(&format!("parked event {id}"), record))
            .collect()
    }

    async fn remove_parked(&self, event_id: &str) -> Result<(), BillingError> {
        let id = event_id.to_owned();
        self.db
            .call_one(move |conn| {
                conn.prepare_cached("DELETE FROM billing_parked_events WHERE event_id = ?1")?
                    .execute(params![id])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn add_usage(
        &self,
        org_id: &str,
        period: &str,
        metric: UsageMetric,
        n: u64,
        limit: Option<u64>,
    ) -> Result<Option<u64>, BillingError> {
        let (org, period) = (org_id.to_owned(), period.to_owned());
        let by = count(n)?;
        let limit = limit.map(count).transpose()?;
        let counted = self
            .db
            .call_one(move |conn| {
                let now: i64 = conn
                    .prepare_cached(
                        "SELECT count FROM billing_usage \
                         WHERE org_id = ?1 AND period = ?2 AND metric = ?3",
                    )?
                    .query_row(params![org, period, metric.as_str()], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                let after = now.saturating_add(by);
                if limit.is_some_and(|limit| after > limit) {
                    return Ok(None);
                }
                conn.prepare_cached(
                    "INSERT INTO billing_usage (org_id, period, metric, count) \
                     VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (org_id, period, metric) DO UPDATE SET count = excluded.count",
                )?
                .execute(params![org, period, metric.as_str(), after])?;
                Ok(Some(after))
            })
            .await?;
        Ok(counted.map(|c| c.max(0) as u64))
    }

    async fn remove_usage(
        &self,
        org_id: &str,
        period: &str,
        metric: UsageMetric,
        n: u64,
    ) -> Result<(), BillingError> {
        let (org, period) = (org_id.to_owned(), period.to_owned());
        let by = count(n)?;
        self.db
            .call_one(move |conn| {
                conn.prepare_cached(
                    "UPDATE billing_usage SET count = max(count - ?4, 0) \
                     WHERE org_id = ?1 AND period = ?2 AND metric = ?3",
                )?
                .execute(params![org, period, metric.as_str(), by])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn usage(&self, org_id: &str, period: &str) -> Result<Usage, BillingError> {
        let rows: Vec<(String, i64)> = self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT metric, count FROM billing_usage WHERE org_id = ?1 AND period = ?2",
            )?;
            let rows = stmt
                .query_map(params![org_id, period], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        let mut usage = Usage {
            period: period.to_owned(),
            ..Usage::default()
        };
        for (metric, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match UsageMetric::ALL.into_iter().find(|m| m.as_str() == metric) {
                Some(UsageMetric::EventsPublished) => usage.events_published = n,
                Some(UsageMetric::InboundDeliveries) => usage.inbound_deliveries = n,
                // A metric a newer release counts: not this one's business.
                None => {}
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::sqlite::Durability;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn BillingStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        (dir, Arc::new(EmbeddedBillingStore::new(db)))
    }

    crate::billing_conformance!(fresh());

    #[tokio::test]
    async fn links_subscriptions_and_usage_survive_a_restart() {
        use crate::ports::billing::conformance::{subscription, PERIOD};
        let dir = tempfile::tempdir().unwrap();
        let sub = subscription("cus_a", 100, 0);
        {
            let store =
                EmbeddedBillingStore::new(Database::open(dir.path(), Durability::Full).unwrap());
            assert!(store.put_subscription("org-a", &sub).await.unwrap());
            store
                .add_usage("org-a", PERIOD, UsageMetric::EventsPublished, 3, None)
                .await
                .unwrap();
        }
        let reopened =
            EmbeddedBillingStore::new(Database::open(dir.path(), Durability::Full).unwrap());
        let account = reopened.get_account("org-a").await.unwrap().unwrap();
        assert_eq!(account.customer_id.as_deref(), Some("cus_a"));
        assert_eq!(account.subscription, Some(sub));
        assert_eq!(
            reopened
                .usage("org-a", PERIOD)
                .await
                .unwrap()
                .events_published,
            3
        );
    }
}
