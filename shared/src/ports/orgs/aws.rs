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
use crate::ports::dynamo::{esc, n, s, Table};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

const PROFILE_SK: &str = "PROFILE";

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

    fn db(&self) -> Table<'_, OrgError> {
        Table::new(&self.client, &self.table)
    }
}

#[async_trait]
impl OrgStore for DynamoOrgStore {
    async fn get_org(&self, org_id: &str) -> Result<Option<OrgProfile>, OrgError> {
        let pk = org_pk(org_id);
        let Some(item) = self.db().get_item(pk.clone(), PROFILE_SK).await? else {
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
        self.db()
            .put_if("PutItem", item, None, None)
            .await
            .map(|_| ())
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
        self.db()
            .put_if(
                "PutItem",
                item,
                Some("attribute_not_exists(pk) OR expires_at <= :now"),
                Some(HashMap::from([(":now".to_owned(), n(at.timestamp()))])),
            )
            .await
    }
}

fn org_pk(org_id: &str) -> String {
    format!("ORG#{}", esc(org_id))
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
