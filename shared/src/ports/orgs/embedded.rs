//! The embedded org store: the `org_profiles` and `org_notices` tables of the local SQLite
//! file (schema in `ports::sqlite`). A notice claim is one upsert on the writer thread whose
//! primary key makes it atomic: the writer runs one call at a time, and the key admits one row.

use super::{json_corrupt, OrgError, OrgStore, NOTICE_RETENTION};
use crate::outbound::model::OrgProfile;
use crate::ports::sqlite::{millis, Database, DbError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

#[derive(Debug, Clone)]
pub struct EmbeddedOrgStore {
    db: Database,
}

impl EmbeddedOrgStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl From<DbError> for OrgError {
    fn from(e: DbError) -> Self {
        OrgError::Unavailable(e.0)
    }
}

#[async_trait]
impl OrgStore for EmbeddedOrgStore {
    async fn get_org(&self, org_id: &str) -> Result<Option<OrgProfile>, OrgError> {
        let record: Option<String> = self.db.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT record FROM org_profiles WHERE org_id = ?1")?
                .query_row(params![org_id], |r| r.get(0))
                .optional()?)
        })?;
        record
            .map(|r| {
                serde_json::from_str(&r).map_err(|e| json_corrupt(format!("org {org_id}"), &e))
            })
            .transpose()
    }

    async fn put_org(&self, profile: &OrgProfile) -> Result<(), OrgError> {
        let record = serde_json::to_string(profile)
            .map_err(|e| json_corrupt(format!("org {}", profile.org_id), &e))?;
        let org_id = profile.org_id.clone();
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO org_profiles (org_id, record) VALUES (?1, ?2) \
                     ON CONFLICT (org_id) DO UPDATE SET record = excluded.record",
                )?
                .execute(params![org_id, record])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn claim_notice(
        &self,
        org_id: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, OrgError> {
        let (org_id, key) = (org_id.to_owned(), key.to_owned());
        let (at, expires) = (millis(at), millis(at + NOTICE_RETENTION));
        let claimed = self
            .db
            .call(move |conn| {
                // A remembered notice past its retention is as good as gone (DynamoDB's TTL
                // deletes it), so it may be claimed again.
                let changed = conn
                    .prepare_cached(
                        "INSERT INTO org_notices (org_id, notice_key, claimed_at, expires_at) \
                         VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (org_id, notice_key) DO UPDATE \
                         SET claimed_at = excluded.claimed_at, expires_at = excluded.expires_at \
                         WHERE org_notices.expires_at <= excluded.claimed_at",
                    )?
                    .execute(params![org_id, key, at, expires])?;
                Ok(changed == 1)
            })
            .await?;
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::sqlite::Durability;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn OrgStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        (dir, Arc::new(EmbeddedOrgStore::new(db)))
    }

    crate::orgs_conformance!(fresh());

    #[tokio::test]
    async fn profiles_and_claimed_notices_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let profile = crate::ports::orgs::conformance::profile("org-a", Some("owner@example.com"));
        let at = crate::ports::orgs::conformance::t(0);
        {
            let store =
                EmbeddedOrgStore::new(Database::open(dir.path(), Durability::Full).unwrap());
            store.put_org(&profile).await.unwrap();
            assert!(store.claim_notice("org-a", "n1", at).await.unwrap());
        }
        let reopened = EmbeddedOrgStore::new(Database::open(dir.path(), Durability::Full).unwrap());
        assert_eq!(reopened.get_org("org-a").await.unwrap(), Some(profile));
        assert!(!reopened.claim_notice("org-a", "n1", at).await.unwrap());
    }
}
