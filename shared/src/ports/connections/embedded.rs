//! The embedded connection store: the `connections`, `incidents`, `workflow_runs` and
//! `pull_requests` tables of the local SQLite file (schema in `ports::sqlite`). Every call is
//! one closure on the database's single writer thread, inside its transaction, so a check and
//! the write that depends on it are atomic; the UNIQUE indexes back the uniqueness rules up.

use super::{
    corrupt, decode_cursor, encode_cursor, json_corrupt, json_time, merge_jobs, repo_key,
    run_is_newer, ConnectionError, ConnectionStore, MAX_PAGE,
};
use crate::connections::{
    Connection, ConnectionId, Incident, IncidentId, PullRequest, RepoProvider, StoredProviderToken,
    WorkflowRun,
};
use crate::ports::sqlite::{from_millis, millis, Database, DbError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection as Sql, OptionalExtension, Row};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct EmbeddedConnectionStore {
    db: Database,
}

impl EmbeddedConnectionStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl From<DbError> for ConnectionError {
    fn from(e: DbError) -> Self {
        ConnectionError::Unavailable(e.0)
    }
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, ConnectionError> {
    serde_json::to_string(value).map_err(|e| json_corrupt(key, &e))
}

/// The row of one workflow run attempt, read and written inside one writer call (so the
/// read-merge-write of its failed jobs is atomic: the writer runs one call at a time).
struct RunKey {
    connection_id: String,
    run_id: String,
    attempt: u32,
}

impl RunKey {
    fn of(run: &WorkflowRun) -> Self {
        Self {
            connection_id: run.connection_id.as_str().to_owned(),
            run_id: run.run_id.clone(),
            attempt: run.run_attempt,
        }
    }

    /// `(updated_at, finished, record)` of the stored run.
    fn stored(&self, conn: &Sql) -> Result<Option<(i64, bool, String)>, DbError> {
        Ok(conn
            .prepare_cached(
                "SELECT updated_at, finished, record FROM workflow_runs \
                 WHERE connection_id = ?1 AND run_id = ?2 AND run_attempt = ?3",
            )?
            .query_row(
                params![self.connection_id, self.run_id, self.attempt],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn write(&self, conn: &Sql, at: (i64, bool), run: &WorkflowRun) -> Result<(), DbError> {
        let record = serde_json::to_string(run).map_err(|e| DbError(e.to_string()))?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO workflow_runs \
             (connection_id, run_id, run_attempt, updated_at, finished, record) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            self.connection_id,
            self.run_id,
            self.attempt,
            at.0,
            at.1,
            record
        ])?;
        Ok(())
    }
}

fn from_json<T: DeserializeOwned>(key: &str, record: &str) -> Result<T, ConnectionError> {
    serde_json::from_str(record).map_err(|e| json_corrupt(key, &e))
}

/// A connection row as read: the record and the counters that override it.
struct ConnectionRow {
    id: String,
    record: String,
    total: i64,
    failed: i64,
    last_delivery_at: Option<i64>,
    last_ping_at: Option<i64>,
}

const CONNECTION_COLUMNS: &str = "id, record, total_deliveries, failed_deliveries, \
     last_delivery_at, (SELECT p.last_ping_at FROM connection_pings p \
     WHERE p.connection_id = connections.id)";

fn read_connection_row(row: &Row<'_>) -> rusqlite::Result<ConnectionRow> {
    Ok(ConnectionRow {
        id: row.get(0)?,
        record: row.get(1)?,
        total: row.get(2)?,
        failed: row.get(3)?,
        last_delivery_at: row.get(4)?,
        last_ping_at: row.get(5)?,
    })
}

impl ConnectionRow {
    fn parse(self) -> Result<Connection, ConnectionError> {
        let mut c: Connection = from_json(&self.id, &self.record)?;
        c.total_deliveries = self.total.max(0) as u64;
        c.failed_deliveries = self.failed.max(0) as u64;
        c.webhook_last_delivery_at = self.last_delivery_at.map(from_millis);
        c.health.last_ping_at = self.last_ping_at.map(from_millis);
        Ok(c)
    }
}

fn parse_all<T>(
    rows: Vec<T>,
    parse: impl Fn(T) -> Result<Connection, ConnectionError>,
) -> Result<Vec<Connection>, ConnectionError> {
    rows.into_iter().map(parse).collect()
}

/// The outcome of a write whose refusal the closure reports without failing the transaction.
enum Written {
    Done,
    Duplicate(String),
}

fn incident_rows(
    conn: &Sql,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(String, String, Option<String>)>, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn parse_incident(
    (id, record, pr_status): (String, String, Option<String>),
) -> Result<Incident, ConnectionError> {
    let mut incident: Incident = from_json(&id, &record)?;
    incident.pr_status = pr_status;
    Ok(incident)
}

impl EmbeddedConnectionStore {
    /// Replace the connection's record (its identity must be the stored one), only while its
    /// stored `updated_at` is `read_at` when given. True when a row was written.
    async fn replace(
        &self,
        connection: &Connection,
        read_at: Option<DateTime<Utc>>,
    ) -> Result<bool, ConnectionError> {
        let c = connection.clone();
        let record = to_json(c.id.as_str(), &c)?;
        let read_at = read_at.map(json_time);
        let written = self
            .db
            .call(move |conn| {
                // Counters, created_at and the identity columns stay as stored.
                let changed = conn
                    .prepare_cached(
                        "UPDATE connections SET project_id = ?5, record = ?6 \
                         WHERE id = ?1 AND org_id = ?2 AND provider = ?3 AND repo_key = ?4 \
                         AND (?7 IS NULL OR json_extract(record, '$.updated_at') = ?7)",
                    )?
                    .execute(params![
                        c.id.as_str(),
                        c.org_id,
                        c.provider.as_str(),
                        repo_key(&c.repository_full_name),
                        c.project_id,
                        record,
                        read_at,
                    ])?;
                Ok(changed == 1)
            })
            .await?;
        Ok(written)
    }
}

#[async_trait]
impl ConnectionStore for EmbeddedConnectionStore {
    async fn create(&self, connection: &Connection) -> Result<(), ConnectionError> {
        let c = connection.clone();
        let record = to_json(c.id.as_str(), &c)?;
        let written = self
            .db
            .call(move |conn| {
                let key = repo_key(&c.repository_full_name);
                let existing: Option<String> = conn
                    .prepare_cached(
                        "SELECT id FROM connections \
                         WHERE org_id = ?1 AND provider = ?2 AND repo_key = ?3",
                    )?
                    .query_row(params![c.org_id, c.provider.as_str(), key], |r| r.get(0))
                    .optional()?;
                if let Some(existing) = existing {
                    return Ok(Written::Duplicate(existing));
                }
                conn.prepare_cached(
                    "INSERT INTO connections (id, org_id, provider, repo_key, project_id, \
                     created_at, total_deliveries, failed_deliveries, last_delivery_at, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    c.id.as_str(),
                    c.org_id,
                    c.provider.as_str(),
                    key,
                    c.project_id,
                    millis(c.created_at),
                    i64::try_from(c.total_deliveries).unwrap_or(i64::MAX),
                    i64::try_from(c.failed_deliveries).unwrap_or(i64::MAX),
                    c.webhook_last_delivery_at.map(millis),
                    record,
                ])?;
                Ok(Written::Done)
            })
            .await?;
        match written {
            Written::Done => Ok(()),
            Written::Duplicate(id) => Err(ConnectionError::Duplicate(
                ConnectionId::parse(&id).ok_or_else(|| corrupt(id, "not a connection id"))?,
            )),
        }
    }

    async fn get(
        &self,
        org_id: &str,
        id: &ConnectionId,
    ) -> Result<Option<Connection>, ConnectionError> {
        let (org_id, id) = (org_id.to_owned(), id.as_str().to_owned());
        let row = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(&format!(
                        "SELECT {CONNECTION_COLUMNS} FROM connections \
                         WHERE id = ?1 AND org_id = ?2"
                    ))?
                    .query_row([id, org_id], read_connection_row)
                    .optional()?)
            })
            .await?;
        row.map(ConnectionRow::parse).transpose()
    }

    async fn list(
        &self,
        org_id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Connection>, Option<String>), ConnectionError> {
        let limit = limit.min(MAX_PAGE);
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        // Keyset pagination on (created_at, id), the order DynamoDB's gsi1sk sorts in.
        let after = match cursor.as_deref().map(decode_cursor) {
            None => None,
            Some(Some(after)) => Some(after),
            Some(None) => return Ok((Vec::new(), None)),
        };
        let org_id = org_id.to_owned();
        let rows = self
            .db
            .call(move |conn| {
                let (before_ms, before_id) = match &after {
                    Some((ms, id)) => (*ms, id.as_str().to_owned()),
                    None => (i64::MAX, String::new()),
                };
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {CONNECTION_COLUMNS} FROM connections WHERE org_id = ?1 \
                     AND (?2 = 0 OR created_at < ?3 OR (created_at = ?3 AND id < ?4)) \
                     ORDER BY created_at DESC, id DESC LIMIT ?5"
                ))?;
                let rows = stmt
                    .query_map(
                        params![
                            org_id,
                            after.is_some(),
                            before_ms,
                            before_id,
                            limit as i64 + 1
                        ],
                        read_connection_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        let more = rows.len() > limit;
        let mut page = parse_all(rows, ConnectionRow::parse)?;
        page.truncate(limit);
        let next = match page.last() {
            Some(last) if more => Some(encode_cursor(last.created_at, &last.id)),
            _ => None,
        };
        Ok((page, next))
    }

    async fn find_by_repository(
        &self,
        provider: RepoProvider,
        repository_full_name: &str,
    ) -> Result<Vec<Connection>, ConnectionError> {
        let key = repo_key(repository_full_name);
        let rows = self.db.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CONNECTION_COLUMNS} FROM connections \
                     WHERE provider = ?1 AND repo_key = ?2 ORDER BY created_at, id"
            ))?;
            let rows = stmt
                .query_map(params![provider.as_str(), key], read_connection_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        parse_all(rows, ConnectionRow::parse)
    }

    async fn find_by_project_id(
        &self,
        project_id: &str,
    ) -> Result<Vec<Connection>, ConnectionError> {
        let project_id = project_id.to_owned();
        let rows = self.db.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CONNECTION_COLUMNS} FROM connections \
                     WHERE project_id = ?1 AND provider = ?2 ORDER BY created_at, id"
            ))?;
            let rows = stmt
                .query_map(
                    params![project_id, RepoProvider::Gitlab.as_str()],
                    read_connection_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        parse_all(rows, ConnectionRow::parse)
    }

    async fn update(&self, connection: &Connection) -> Result<(), ConnectionError> {
        match self.replace(connection, None).await? {
            true => Ok(()),
            false => Err(ConnectionError::NotFound),
        }
    }

    async fn update_if_unchanged(
        &self,
        connection: &Connection,
        read_at: DateTime<Utc>,
    ) -> Result<bool, ConnectionError> {
        if self.replace(connection, Some(read_at)).await? {
            return Ok(true);
        }
        // Not written: gone, or changed since it was read.
        match self.get(&connection.org_id, &connection.id).await? {
            Some(_) => Ok(false),
            None => Err(ConnectionError::NotFound),
        }
    }

    async fn delete(&self, org_id: &str, id: &ConnectionId) -> Result<bool, ConnectionError> {
        let (org_id, id) = (org_id.to_owned(), id.as_str().to_owned());
        // The unique index is the marker: the row goes, and the repository is free again.
        Ok(self
            .db
            .call(move |conn| {
                let deleted = conn
                    .prepare_cached("DELETE FROM connections WHERE id = ?1 AND org_id = ?2")?
                    .execute([&id, &org_id])?;
                if deleted == 1 {
                    conn.prepare_cached("DELETE FROM connection_pings WHERE connection_id = ?1")?
                        .execute([&id])?;
                }
                Ok(deleted == 1)
            })
            .await?)
    }

    async fn record_delivery(
        &self,
        id: &ConnectionId,
        at: DateTime<Utc>,
        failed: bool,
    ) -> Result<(), ConnectionError> {
        let id = id.as_str().to_owned();
        let changed = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "UPDATE connections SET total_deliveries = total_deliveries + 1, \
                         failed_deliveries = failed_deliveries + ?2, \
                         last_delivery_at = MAX(COALESCE(last_delivery_at, ?3), ?3) \
                         WHERE id = ?1",
                    )?
                    .execute(params![id, i64::from(failed), millis(at)])?)
            })
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(ConnectionError::NotFound)
        }
    }

    async fn record_ping(
        &self,
        id: &ConnectionId,
        at: DateTime<Utc>,
    ) -> Result<(), ConnectionError> {
        let id = id.as_str().to_owned();
        let found = self
            .db
            .call(move |conn| {
                let exists = conn
                    .prepare_cached("SELECT 1 FROM connections WHERE id = ?1")?
                    .query_row([&id], |_| Ok(()))
                    .optional()?
                    .is_some();
                if exists {
                    conn.prepare_cached(
                        "INSERT INTO connection_pings (connection_id, last_ping_at) \
                         VALUES (?1, ?2) ON CONFLICT (connection_id) DO UPDATE \
                         SET last_ping_at = MAX(last_ping_at, excluded.last_ping_at)",
                    )?
                    .execute(params![id, millis(at)])?;
                }
                Ok(exists)
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(ConnectionError::NotFound)
        }
    }

    async fn list_all(
        &self,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Connection>, Option<String>), ConnectionError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // The cursor is the last id of the previous page: pages go in id order.
        let after = cursor.unwrap_or_default();
        let rows = self.db.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CONNECTION_COLUMNS} FROM connections WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![after, limit as i64 + 1], read_connection_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        });
        let mut rows = rows?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let page = parse_all(rows, ConnectionRow::parse)?;
        let next = more
            .then(|| page.last().map(|c| c.id.to_string()))
            .flatten();
        Ok((page, next))
    }

    async fn upsert_workflow_run(&self, run: &WorkflowRun) -> Result<bool, ConnectionError> {
        let key = format!("{}#{}#{}", run.connection_id, run.run_id, run.run_attempt);
        let mut run = run.clone();
        let new = (millis(run.updated_at), run.conclusion.is_some());
        self.db
            .call(move |conn| {
                let id = RunKey::of(&run);
                let Some((stored_at, stored_finished, record)) = id.stored(conn)? else {
                    run.failed_jobs = merge_jobs(&[], &run.failed_jobs);
                    id.write(conn, new, &run)?;
                    return Ok(Ok(true));
                };
                let mut stored: WorkflowRun = match from_json(&key, &record) {
                    Ok(stored) => stored,
                    Err(corrupt) => return Ok(Err(corrupt)),
                };
                let jobs = merge_jobs(&stored.failed_jobs, &run.failed_jobs);
                if run_is_newer(new, (stored_at, stored_finished)) {
                    run.failed_jobs = jobs;
                    id.write(conn, new, &run)?;
                    return Ok(Ok(true));
                }
                if jobs != stored.failed_jobs {
                    stored.failed_jobs = jobs;
                    id.write(conn, (stored_at, stored_finished), &stored)?;
                }
                Ok(Ok(false))
            })
            .await?
    }

    async fn add_failed_job(
        &self,
        placeholder: &WorkflowRun,
        job: &str,
    ) -> Result<(), ConnectionError> {
        let p = placeholder;
        let key = format!("{}#{}#{}", p.connection_id, p.run_id, p.run_attempt);
        let (mut placeholder, job) = (placeholder.clone(), vec![job.to_owned()]);
        self.db
            .call(move |conn| {
                let id = RunKey::of(&placeholder);
                let Some((stored_at, stored_finished, record)) = id.stored(conn)? else {
                    placeholder.failed_jobs = merge_jobs(&placeholder.failed_jobs, &job);
                    let at = (
                        millis(placeholder.updated_at),
                        placeholder.conclusion.is_some(),
                    );
                    id.write(conn, at, &placeholder)?;
                    return Ok(Ok(()));
                };
                let mut stored: WorkflowRun = match from_json(&key, &record) {
                    Ok(stored) => stored,
                    Err(corrupt) => return Ok(Err(corrupt)),
                };
                let jobs = merge_jobs(&stored.failed_jobs, &job);
                if jobs != stored.failed_jobs {
                    stored.failed_jobs = jobs;
                    id.write(conn, (stored_at, stored_finished), &stored)?;
                }
                Ok(Ok(()))
            })
            .await?
    }

    async fn get_workflow_run(
        &self,
        connection_id: &ConnectionId,
        run_id: &str,
        run_attempt: u32,
    ) -> Result<Option<WorkflowRun>, ConnectionError> {
        let key = format!("{connection_id}#{run_id}#{run_attempt}");
        let (connection_id, run_id) = (connection_id.as_str().to_owned(), run_id.to_owned());
        let record: Option<String> = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT record FROM workflow_runs \
                         WHERE connection_id = ?1 AND run_id = ?2 AND run_attempt = ?3",
                    )?
                    .query_row(params![connection_id, run_id, run_attempt], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        record.map(|r| from_json(&key, &r)).transpose()
    }

    async fn create_incident_once(&self, incident: &Incident) -> Result<bool, ConnectionError> {
        let i = incident.clone();
        let record = to_json(i.id.as_str(), &i)?;
        Ok(self
            .db
            .call(move |conn| {
                // OR IGNORE: the unique (connection, run, attempt) index decides.
                let inserted = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO incidents (id, org_id, connection_id, run_id, \
                         run_attempt, repo_key, status, branch, created_at, pr_status, record) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )?
                    .execute(params![
                        i.id.as_str(),
                        i.org_id,
                        i.connection_id.as_str(),
                        i.run_id,
                        i.run_attempt,
                        repo_key(&i.repository_full_name),
                        i.status,
                        i.branch,
                        millis(i.created_at),
                        i.pr_status,
                        record,
                    ])?;
                Ok(inserted == 1)
            })
            .await?)
    }

    async fn get_incident(
        &self,
        org_id: &str,
        id: &IncidentId,
    ) -> Result<Option<Incident>, ConnectionError> {
        let (org_id, id) = (org_id.to_owned(), id.as_str().to_owned());
        let rows = self
            .db
            .call(move |conn| {
                incident_rows(
                    conn,
                    "SELECT id, record, pr_status FROM incidents WHERE id = ?1 AND org_id = ?2",
                    [id, org_id],
                )
            })
            .await?;
        rows.into_iter().next().map(parse_incident).transpose()
    }

    async fn list_incidents(
        &self,
        org_id: &str,
        repository: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Incident>, ConnectionError> {
        let org_id = org_id.to_owned();
        let repository = repository.map(repo_key);
        let status = status.map(str::to_owned);
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .db
            .call(move |conn| {
                incident_rows(
                    conn,
                    "SELECT id, record, pr_status FROM incidents WHERE org_id = ?1 \
                     AND (?2 IS NULL OR repo_key = ?2) AND (?3 IS NULL OR status = ?3) \
                     ORDER BY created_at DESC, id DESC LIMIT ?4",
                    params![org_id, repository, status, limit],
                )
            })
            .await?;
        rows.into_iter().map(parse_incident).collect()
    }

    async fn set_incident_pr_status(
        &self,
        org_id: &str,
        id: &IncidentId,
        pr_status: &str,
    ) -> Result<(), ConnectionError> {
        let (org_id, id, pr_status) = (
            org_id.to_owned(),
            id.as_str().to_owned(),
            pr_status.to_owned(),
        );
        let changed = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "UPDATE incidents SET pr_status = ?3 WHERE id = ?1 AND org_id = ?2",
                    )?
                    .execute([id, org_id, pr_status])?)
            })
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(ConnectionError::NotFound)
        }
    }

    async fn resolve_incident(
        &self,
        org_id: &str,
        id: &IncidentId,
        at: DateTime<Utc>,
    ) -> Result<bool, ConnectionError> {
        let (org_id, id) = (org_id.to_owned(), id.as_str().to_owned());
        // Read, check and write in one writer call: nothing runs between them. The status
        // column (the list filter) and the record change together.
        self.db
            .call(move |conn| {
                let row: Option<(String, String, String)> = conn
                    .prepare_cached("SELECT org_id, status, record FROM incidents WHERE id = ?1")?
                    .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((_, status, record)) = row.filter(|(owner, ..)| *owner == org_id) else {
                    return Ok(Err(ConnectionError::NotFound));
                };
                if status != "open" {
                    return Ok(Ok(false));
                }
                let resolved = from_json::<Incident>(&id, &record).and_then(|mut i| {
                    i.status = "resolved".to_owned();
                    i.updated_at = at;
                    to_json(&id, &i)
                });
                let record = match resolved {
                    Ok(record) => record,
                    Err(e) => return Ok(Err(e)),
                };
                conn.prepare_cached(
                    "UPDATE incidents SET status = 'resolved', record = ?2 \
                     WHERE id = ?1 AND status = 'open'",
                )?
                .execute(params![id, record])?;
                Ok(Ok(true))
            })
            .await?
    }

    async fn find_incident_by_branch(
        &self,
        connection_id: &ConnectionId,
        branch: &str,
    ) -> Result<Option<Incident>, ConnectionError> {
        let (connection_id, branch) = (connection_id.as_str().to_owned(), branch.to_owned());
        let rows = self
            .db
            .call(move |conn| {
                incident_rows(
                    conn,
                    "SELECT id, record, pr_status FROM incidents \
                     WHERE connection_id = ?1 AND branch = ?2 \
                     ORDER BY created_at DESC, id DESC LIMIT 1",
                    [connection_id, branch],
                )
            })
            .await?;
        rows.into_iter().next().map(parse_incident).transpose()
    }

    async fn upsert_pull_request(&self, pr: &PullRequest) -> Result<bool, ConnectionError> {
        let key = format!("{}#{}", pr.connection_id, pr.number);
        let record = to_json(&key, pr)?;
        let connection_id = pr.connection_id.as_str().to_owned();
        let number = i64::try_from(pr.number).map_err(|e| corrupt(&key, e))?;
        let updated = millis(pr.updated_at);
        Ok(self
            .db
            .call(move |conn| {
                let changed = conn
                    .prepare_cached(
                        "INSERT INTO pull_requests (connection_id, number, updated_at, record) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (connection_id, number) DO UPDATE \
                         SET updated_at = excluded.updated_at, record = excluded.record \
                         WHERE excluded.updated_at >= pull_requests.updated_at",
                    )?
                    .execute(params![connection_id, number, updated, record])?;
                Ok(changed == 1)
            })
            .await?)
    }

    async fn get_pull_request(
        &self,
        connection_id: &ConnectionId,
        number: u64,
    ) -> Result<Option<PullRequest>, ConnectionError> {
        let key = format!("{connection_id}#{number}");
        let connection_id = connection_id.as_str().to_owned();
        let Ok(number) = i64::try_from(number) else {
            return Ok(None);
        };
        let record: Option<String> = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT record FROM pull_requests WHERE connection_id = ?1 AND number = ?2",
                    )?
                    .query_row(params![connection_id, number], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        record.map(|r| from_json(&key, &r)).transpose()
    }

    async fn put_provider_token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        token: &StoredProviderToken,
    ) -> Result<(), ConnectionError> {
        let key = format!("{org_id}#{user_id}#{}", provider.as_str());
        let record = to_json(&key, token)?;
        let (org_id, user_id) = (org_id.to_owned(), user_id.to_owned());
        Ok(self
            .db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO provider_tokens (org_id, user_id, provider, record) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![org_id, user_id, provider.as_str(), record])?;
                Ok(())
            })
            .await?)
    }

    async fn get_provider_token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
    ) -> Result<Option<StoredProviderToken>, ConnectionError> {
        let key = format!("{org_id}#{user_id}#{}", provider.as_str());
        let (org_id, user_id) = (org_id.to_owned(), user_id.to_owned());
        let record: Option<String> = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT record FROM provider_tokens \
                         WHERE org_id = ?1 AND user_id = ?2 AND provider = ?3",
                    )?
                    .query_row(params![org_id, user_id, provider.as_str()], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        record.map(|r| from_json(&key, &r)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::sqlite::Durability;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn ConnectionStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        (dir, Arc::new(EmbeddedConnectionStore::new(db)))
    }

    crate::connections_conformance!(fresh());

    #[tokio::test]
    async fn connections_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::ports::connections::conformance::connection("org-a", "owner/persisted");
        {
            let store =
                EmbeddedConnectionStore::new(Database::open(dir.path(), Durability::Full).unwrap());
            store.create(&c).await.unwrap();
            store
                .record_delivery(&c.id, Utc::now(), true)
                .await
                .unwrap();
        }
        let reopened =
            EmbeddedConnectionStore::new(Database::open(dir.path(), Durability::Full).unwrap());
        let got = reopened.get("org-a", &c.id).await.unwrap().unwrap();
        assert_eq!(got.secret, c.secret);
        assert_eq!((got.total_deliveries, got.failed_deliveries), (1, 1));
    }
}
