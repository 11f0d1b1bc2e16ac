//! The DynamoDB org store, on the one Hookline table (`pk`/`sk`; the SAM template defines it,
//! `store::aws::create_table` makes it for tests).
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | profile | `ORG#{org}` | `PROFILE` | `record` (S, the JSON [`OrgProfile`]) |
//! | notice sent | `ORG#{org}` | `NOTICE#{key}` | `claimed_at` (N, epoch ms), `expires_at` (N, epoch s: the table's TTL) |
//!
//! `{org}` and `{key}` are escaped (`%` → `%25`, `#` → `%23`) so no value can forge a key. A
//! claim is one conditional PutItem: DynamoDB serialises writes to an item, so of concurrent
//! claims exactly one passes `attribute_not_exists(pk)`. A notice past its `expires_at` that
//! the TTL sweeper has not removed yet counts as gone, as it will be.

use super::{json_corrupt, OrgError, OrgStore, NOTICE_RETENTION};
use crate::outbound::model::OrgProfile;
use crate::ports::store::aws::error_chain;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;

const PROFILE_SK: &str = "PROFILE";
/// Tries of a write that collided with a transaction on the same item.
const ATTEMPTS: u32 = 8;

/// The AWS adapter of [`OrgStore`].
#[derive(Debug, Clone)]
pub struct DynamoOrgStore {
    client: Client,
    table: String,
}

impl DynamoOrgStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

#[async_trait]
impl OrgStore for DynamoOrgStore {
    async fn get_org(&self, org_id: &str) -> Result<Option<OrgProfile>, OrgError> {
        let pk = org_pk(org_id);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(PROFILE_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        let Some(item) = out.item.filter(|item| !item.is_empty()) else {
            return Ok(None);
        };
        let record = match item.get("record") {
            Some(AttributeValue::S(record)) => record,
            _ => {
                return Err(OrgError::Corrupt {
                    key: pk,
                    reason: "no record attribute".into(),
                })
            }
        };
        serde_json::from_str(record)
            .map(Some)
            .map_err(|e| json_corrupt(pk, &e))
    }

    async fn put_org(&self, profile: &OrgProfile) -> Result<(), OrgError> {
        let pk = org_pk(&profile.org_id);
        let record = serde_json::to_string(profile).map_err(|e| json_corrupt(&pk, &e))?;
        let item = HashMap::from([
            ("pk".to_owned(), s(pk)),
            ("sk".to_owned(), s(PROFILE_SK)),
            ("record".to_owned(), s(record)),
        ]);
        self.put(item, None).await.map(|_| ())
    }

    async fn claim_notice(
        &self,
        org_id: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, OrgError> {
        let item = HashMap::from([
            ("pk".to_owned(), s(org_pk(org_id))),
            ("sk".to_owned(), s(format!("NOTICE#{}", esc(key)))),
            ("claimed_at".to_owned(), n(at.timestamp_millis())),
            (
                "expires_at".to_owned(),
                n((at + NOTICE_RETENTION).timestamp()),
            ),
        ]);
        self.put(
            item,
            Some((
                "attribute_not_exists(pk) OR expires_at <= :now",
                n(at.timestamp()),
            )),
        )
        .await
    }
}

impl DynamoOrgStore {
    /// Put `item`, under `condition` (with its `:now`) if any. `Ok(false)` when the condition
    /// did not hold.
    async fn put(
        &self,
        item: HashMap<String, AttributeValue>,
        condition: Option<(&str, AttributeValue)>,
    ) -> Result<bool, OrgError> {
        for attempt in 1..=ATTEMPTS {
            let mut put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()));
            if let Some((expression, now)) = &condition {
                put = put
                    .condition_expression(*expression)
                    .expression_attribute_values(":now", now.clone());
            }
            match put.send().await {
                Ok(_) => return Ok(true),
                Err(SdkError::ServiceError(e)) => match e.into_err() {
                    PutItemError::ConditionalCheckFailedException(_) => return Ok(false),
                    PutItemError::TransactionConflictException(_) if attempt < ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await
                    }
                    other => return Err(unavailable("PutItem", &other)),
                },
                Err(e) => return Err(unavailable("PutItem", &e)),
            }
        }
        Err(OrgError::Unavailable(
            "DynamoDB PutItem: kept colliding with concurrent transactions".into(),
        ))
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A value made safe to place between `#` separators.
fn esc(v: &str) -> String {
    v.replace('%', "%25").replace('#', "%23")
}

fn org_pk(org_id: &str) -> String {
    format!("ORG#{}", esc(org_id))
}

fn unavailable(op: &str, err: &(dyn std::error::Error + 'static)) -> OrgError {
    OrgError::Unavailable(format!("DynamoDB {op}: {}", error_chain(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_be_forged_with_separators() {
        assert_ne!(org_pk("a#b"), org_pk("a%23b"));
        assert_eq!(org_pk("a#b"), "ORG#a%23b");
        assert_ne!(esc("x#PROFILE"), "x#PROFILE");
    }
}
