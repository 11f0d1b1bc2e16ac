//! The DynamoDB connection store, on the one Hookline table (`pk`/`sk`, GSI `gsi1` on
//! `gsi1pk`/`gsi1sk`; the SAM template defines it, `store::aws::create_table` makes it for tests).
//!
//! Layout (`{repo}` is the case-folded repository name; `{org}`, `{repo}`, `{run}` and
//! `{branch}` are escaped — `%` → `%25`, `#` → `%23` — so no value can forge a key):
//!
//! | item | `pk` | `sk` | `gsi1pk` | `gsi1sk` |
//! |---|---|---|---|---|
//! | connection | `CONN#{id}` | `CONN` | `ORGCONN#{org}` (the org's list) | `{created_at ms, 15 digits}#{id}` |
//!
//! A connection item also carries `gsi2pk` = `ALLCONN`, `gsi2sk` = `{id}`: every org's
//! connections in the sparse `gsi2`, which the hook-health check queries (no Scan). Items
//! written before that are indexed by the check's first run (marker item `CONNINDEX#v1`).
//!
//! | item | `pk` | `sk` | `gsi1pk` | `gsi1sk` |
//! |---|---|---|---|---|
//! | uniqueness marker | `CONNREPO#{org}#{provider}#{repo}` | `CONNREPO` | `REPO#{provider}#{repo}` (routing) | `{id}` |
//! | GitLab project pointer | `CONN#{id}` | `PROJECT` | `GLPROJECT#{project_id}` (routing) | `{id}` |
//! | incident | `INC#{id}` | `INC` | `ORGINC#{org}` (the org's list) | `{created_at ms}#{id}` |
//! | incident branch pointer | `INC#{id}` | `BRANCH` | `INCBRANCH#{connection}#{branch}` | `{created_at ms}#{id}` |
//! | incident-once marker | `INCRUN#{connection}#{run}#{attempt}` | `INCRUN` | – | – |
//! | workflow run | `RUN#{connection}#{run}#{attempt}` | `RUN` | – | – |
//! | pull request | `PR#{connection}#{number}` | `PR` | – | – |
//!
//! Every record item holds its serialised model in `record` (S, JSON) plus the attributes its
//! conditions and lookups need: `org_id`, `provider`, `repo_key`, `project_id` on a connection;
//! `org_id`, `connection_id`, `repo_key`, `status` on an incident; `updated_at` (S, as in the record) on a connection for the hook-health check's
//! conditional writes, `updated_ms` (and `finished`,
//! 0/1, on a run) for the newer-wins conditional puts. A few attributes override the record:
//! a connection's `total_deliveries`, `failed_deliveries` (N, `ADD`ed by `record_delivery`) and
//! `last_delivery_at` (N, epoch ms), `last_ping_at` (N, epoch ms, `record_ping`'s), and an
//! incident's `pr_status`. Markers and pointers name
//! their record in `connection_id` / `incident_id`.
//!
//! A connection, its marker and its project pointer are written and deleted together in one
//! TransactWriteItems; so are an incident, its once-marker and its branch pointer. Reads of a
//! record are consistent; the gsi1 lookups (list, routing) are eventually consistent, and the
//! records they name are then read consistently.

use super::{
    decode_cursor, encode_cursor, json_corrupt, json_time, merge_jobs, repo_key, sortable_millis,
    ConnectionError, ConnectionStore, MAX_PAGE,
};
use crate::connections::{
    Connection, ConnectionId, Incident, IncidentId, PullRequest, RepoProvider, StoredProviderToken,
    WorkflowRun,
};
use crate::ports::dynamo::{self, esc, n, s, DynamoError, Item, Table};
use crate::ports::store::aws::{Gsi1Query, GSI2};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;

type Reader<'a> = dynamo::Reader<'a, ConnectionError>;

const CONN_SK: &str = "CONN";
const MARKER_SK: &str = "CONNREPO";
const PROJECT_SK: &str = "PROJECT";
const INC_SK: &str = "INC";
const BRANCH_SK: &str = "BRANCH";
const INCRUN_SK: &str = "INCRUN";
const RUN_SK: &str = "RUN";
const PR_SK: &str = "PR";
/// `gsi2pk` of every connection item: the hook-health check's list of them all.
const ALL_CONNECTIONS: &str = "ALLCONN";
/// The marker saying every connection item carries `gsi2pk` (written before they all did).
const INDEXED_PK: &str = "CONNINDEX#v1";
/// Items one gsi1 query page reads.
const QUERY_PAGE: usize = 1000;

/// The AWS adapter of [`ConnectionStore`].
#[derive(Debug, Clone)]
pub struct DynamoConnectionStore {
    client: Client,
    table: String,
}

impl DynamoConnectionStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn connection_by_id(&self, id: &str) -> Result<Option<Connection>, ConnectionError> {
        self.db()
            .get_item(conn_pk(id), CONN_SK)
            .await?
            .map(|item| parse_connection(&item))
            .transpose()
    }

    /// Query one gsi1 partition, newest (highest `gsi1sk`) first from `start` (exclusive),
    /// until `want` items pass `keep` or it ends, reading `page` items a request.
    async fn query_gsi1(
        &self,
        gsi1pk: &str,
        start: Option<Item>,
        want: usize,
        page: usize,
        mut keep: impl FnMut(&Item) -> Result<bool, ConnectionError>,
    ) -> Result<Vec<Item>, ConnectionError> {
        let query = Gsi1Query {
            client: &self.client,
            table: &self.table,
            gsi1pk,
            start,
            want,
            page,
        };
        query
            .run(
                |item| Ok(keep(item)?.then(|| item.clone())),
                |e| ConnectionError::dynamo("Query", e),
            )
            .await
    }

    /// The connections named (`connection_id`) by the gsi1 items of one partition, read
    /// consistently and kept if `matches`; pointers whose connection is gone are left out.
    async fn resolve_connections(
        &self,
        gsi1pk: &str,
        matches: impl Fn(&Connection) -> bool,
    ) -> Result<Vec<Connection>, ConnectionError> {
        let pointers = self
            .query_gsi1(gsi1pk, None, usize::MAX, QUERY_PAGE, |_| Ok(true))
            .await?;
        let ids = pointers
            .iter()
            .map(|item| Reader::new(item).str("connection_id").map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let found =
            futures::future::try_join_all(ids.iter().map(|id| self.connection_by_id(id))).await?;
        let mut out: Vec<Connection> = found.into_iter().flatten().filter(matches).collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// The project pointer's write for `project_id`: put it, or delete it when there is none.
    fn project_pointer(
        &self,
        id: &ConnectionId,
        project_id: Option<&str>,
    ) -> Result<TransactWriteItem, ConnectionError> {
        match project_id {
            Some(project_id) => self.db().put(
                HashMap::from([
                    ("pk".to_owned(), s(conn_pk(id.as_str()))),
                    ("sk".to_owned(), s(PROJECT_SK)),
                    (
                        "gsi1pk".to_owned(),
                        s(format!("GLPROJECT#{}", esc(project_id))),
                    ),
                    ("gsi1sk".to_owned(), s(id.as_str())),
                    ("connection_id".to_owned(), s(id.as_str())),
                ]),
                None,
            ),
            None => self.db().delete(conn_pk(id.as_str()), PROJECT_SK, None),
        }
    }

    /// `record_delivery`'s conditional update; `Ok(false)` when the condition failed.
    async fn add_delivery(
        &self,
        id: &ConnectionId,
        at_ms: i64,
        failed: bool,
        move_last: bool,
    ) -> Result<bool, ConnectionError> {
        let mut update = self
            .db()
            .update_item(conn_pk(id.as_str()), CONN_SK)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":failed", n(i64::from(failed)));
        let add = "ADD total_deliveries :one, failed_deliveries :failed";
        update = if move_last {
            update
                .update_expression(format!("SET last_delivery_at = :at {add}"))
                .condition_expression(
                    "attribute_exists(pk) AND (attribute_not_exists(last_delivery_at) \
                     OR last_delivery_at < :at)",
                )
                .expression_attribute_values(":at", n(at_ms))
        } else {
            update
                .update_expression(add)
                .condition_expression("attribute_exists(pk)")
        };
        self.send_update("UpdateItem (record delivery)", update)
            .await
    }

    /// A conditional update; `Ok(false)` when its condition did not hold.
    async fn send_update(
        &self,
        op: &str,
        update: UpdateItemFluentBuilder,
    ) -> Result<bool, ConnectionError> {
        Ok(self.db().send_update(op, update).await?.is_some())
    }

    /// Replace the connection's record (its identity must be the stored one), only while its
    /// `updated_at` is `read_at` when given. Items written before the `updated_at` attribute
    /// existed are matched on their record's JSON. True when written.
    async fn replace(
        &self,
        c: &Connection,
        read_at: Option<DateTime<Utc>>,
    ) -> Result<bool, ConnectionError> {
        let record = to_json(c.id.as_str(), c)?;
        let mut condition = "attribute_exists(pk) AND org_id = :org AND provider = :provider \
                             AND repo_key = :repo"
            .to_owned();
        if read_at.is_some() {
            condition.push_str(
                " AND (#updated = :read OR (attribute_not_exists(#updated) \
                 AND contains(#record, :stamp)))",
            );
        }
        let update = self
            .db()
            .update(conn_pk(c.id.as_str()), CONN_SK, |update| {
                let mut update = update
                    .condition_expression(condition)
                    .expression_attribute_values(":org", s(&c.org_id))
                    .expression_attribute_values(":provider", s(c.provider.as_str()))
                    .expression_attribute_values(":repo", s(repo_key(&c.repository_full_name)))
                    .expression_attribute_values(":record", s(record))
                    .expression_attribute_values(":updated", s(json_time(c.updated_at)))
                    .expression_attribute_names("#record", "record")
                    .expression_attribute_names("#updated", "updated_at");
                if let Some(read_at) = read_at {
                    let read = json_time(read_at);
                    update = update
                        .expression_attribute_values(
                            ":stamp",
                            s(format!("\"updated_at\":\"{read}\"")),
                        )
                        .expression_attribute_values(":read", s(read));
                }
                match &c.project_id {
                    Some(project_id) => update
                        .update_expression(
                            "SET #record = :record, #updated = :updated, project_id = :project",
                        )
                        .expression_attribute_values(":project", s(project_id)),
                    None => update.update_expression(
                        "SET #record = :record, #updated = :updated REMOVE project_id",
                    ),
                }
            })?;
        let items = vec![
            update,
            self.project_pointer(&c.id, c.project_id.as_deref())?,
        ];
        self.db()
            .transact("TransactWriteItems (update)", items)
            .await
    }

    /// Put connection items written before they carried `gsi2pk` into the every-connection
    /// index: one Scan, once per table (a marker item records it is done).
    async fn index_legacy_connections(&self) -> Result<(), ConnectionError> {
        if self
            .db()
            .get_item(INDEXED_PK.to_owned(), INDEXED_PK)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :conn AND attribute_not_exists(gsi2pk)")
                .expression_attribute_values(":conn", s(CONN_SK))
                .projection_expression("pk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| ConnectionError::dynamo("Scan (index connections)", &e))?;
            for item in page.items() {
                let pk = Reader::new(item).str("pk")?.to_owned();
                let id = pk.strip_prefix("CONN#").unwrap_or(&pk).to_owned();
                let update = self
                    .db()
                    .update_item(pk, CONN_SK)
                    .update_expression("SET gsi2pk = :all, gsi2sk = :id")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":all", s(ALL_CONNECTIONS))
                    .expression_attribute_values(":id", s(id));
                // A connection deleted meanwhile needs no indexing.
                self.send_update("UpdateItem (index connection)", update)
                    .await?;
            }
            match page.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => break,
            }
        }
        let marker = HashMap::from([
            ("pk".to_owned(), s(INDEXED_PK)),
            ("sk".to_owned(), s(INDEXED_PK)),
        ]);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(marker))
            .send()
            .await
            .map_err(|e| ConnectionError::dynamo("PutItem (connections indexed)", &e))?;
        Ok(())
    }

    fn db(&self) -> Table<'_, ConnectionError> {
        Table::new(&self.client, &self.table)
    }

    async fn incident_by_id(&self, id: &str) -> Result<Option<Incident>, ConnectionError> {
        self.db()
            .get_item(format!("INC#{id}"), INC_SK)
            .await?
            .map(|item| parse_incident(&item))
            .transpose()
    }
}

#[async_trait]
impl ConnectionStore for DynamoConnectionStore {
    async fn create(&self, c: &Connection) -> Result<(), ConnectionError> {
        let marker_pk = marker_pk(&c.org_id, c.provider, &c.repository_full_name);
        let marker = HashMap::from([
            ("pk".to_owned(), s(&marker_pk)),
            ("sk".to_owned(), s(MARKER_SK)),
            (
                "gsi1pk".to_owned(),
                s(repo_gsi1pk(c.provider, &c.repository_full_name)),
            ),
            ("gsi1sk".to_owned(), s(c.id.as_str())),
            ("connection_id".to_owned(), s(c.id.as_str())),
            ("org_id".to_owned(), s(&c.org_id)),
        ]);
        let mut items = vec![
            self.db().put(marker, Some("attribute_not_exists(pk)"))?,
            self.db()
                .put(connection_item(c)?, Some("attribute_not_exists(pk)"))?,
        ];
        if c.project_id.is_some() {
            items.push(self.project_pointer(&c.id, c.project_id.as_deref())?);
        }
        for _ in 0..3 {
            if self
                .db()
                .transact("TransactWriteItems (connect)", items.clone())
                .await?
            {
                return Ok(());
            }
            if let Some(existing) = self.db().get_item(marker_pk.clone(), MARKER_SK).await? {
                let r = Reader::new(&existing);
                let id = r.str("connection_id")?;
                return Err(ConnectionError::Duplicate(
                    ConnectionId::parse(id)
                        .ok_or_else(|| r.corrupt("connection_id is not an id"))?,
                ));
            }
            // The marker was there a moment ago and has gone (disconnected): try again.
        }
        Err(ConnectionError::Unavailable(format!(
            "DynamoDB TransactWriteItems (connect): connection {} kept losing its conditional \
             write",
            c.id
        )))
    }

    async fn get(
        &self,
        org_id: &str,
        id: &ConnectionId,
    ) -> Result<Option<Connection>, ConnectionError> {
        Ok(self
            .connection_by_id(id.as_str())
            .await?
            .filter(|c| c.org_id == org_id))
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
        let gsi1pk = format!("ORGCONN#{}", esc(org_id));
        let start = match cursor.as_deref().map(decode_cursor) {
            None => None,
            Some(None) => return Ok((Vec::new(), None)),
            Some(Some((ms, id))) => Some(HashMap::from([
                ("pk".to_owned(), s(conn_pk(id.as_str()))),
                ("sk".to_owned(), s(CONN_SK)),
                ("gsi1pk".to_owned(), s(&gsi1pk)),
                ("gsi1sk".to_owned(), s(format!("{ms:015}#{id}"))),
            ])),
        };
        let items = self
            .query_gsi1(&gsi1pk, start, limit + 1, limit + 1, |_| Ok(true))
            .await?;
        let more = items.len() > limit;
        let mut page = items
            .iter()
            .take(limit)
            .map(parse_connection)
            .collect::<Result<Vec<_>, _>>()?;
        page.retain(|c| c.org_id == org_id);
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
        let want = repo_key(repository_full_name);
        self.resolve_connections(&repo_gsi1pk(provider, repository_full_name), |c| {
            c.provider == provider && repo_key(&c.repository_full_name) == want
        })
        .await
    }

    async fn find_by_project_id(
        &self,
        project_id: &str,
    ) -> Result<Vec<Connection>, ConnectionError> {
        self.resolve_connections(&format!("GLPROJECT#{}", esc(project_id)), |c| {
            c.provider == RepoProvider::Gitlab && c.project_id.as_deref() == Some(project_id)
        })
        .await
    }

    async fn update(&self, c: &Connection) -> Result<(), ConnectionError> {
        match self.replace(c, None).await? {
            true => Ok(()),
            false => Err(ConnectionError::NotFound),
        }
    }

    async fn update_if_unchanged(
        &self,
        c: &Connection,
        read_at: DateTime<Utc>,
    ) -> Result<bool, ConnectionError> {
        if self.replace(c, Some(read_at)).await? {
            return Ok(true);
        }
        // The condition failed: gone, or changed since it was read.
        match self.get(&c.org_id, &c.id).await? {
            Some(_) => Ok(false),
            None => Err(ConnectionError::NotFound),
        }
    }

    async fn delete(&self, org_id: &str, id: &ConnectionId) -> Result<bool, ConnectionError> {
        let Some(c) = self.get(org_id, id).await? else {
            return Ok(false);
        };
        let items = vec![
            self.db().delete(
                conn_pk(id.as_str()),
                CONN_SK,
                Some((
                    "org_id = :org",
                    HashMap::from([(":org".to_owned(), s(org_id))]),
                )),
            )?,
            self.db().delete(
                marker_pk(&c.org_id, c.provider, &c.repository_full_name),
                MARKER_SK,
                None,
            )?,
            self.db().delete(conn_pk(id.as_str()), PROJECT_SK, None)?,
        ];
        // A failed condition: a concurrent delete got there first.
        self.db()
            .transact("TransactWriteItems (disconnect)", items)
            .await
    }

    async fn record_delivery(
        &self,
        id: &ConnectionId,
        at: DateTime<Utc>,
        failed: bool,
    ) -> Result<(), ConnectionError> {
        let at_ms = at.timestamp_millis();
        // Counters and the newer last delivery in one update; when the stored last delivery is
        // newer (or the item is gone), the counters alone.
        if self.add_delivery(id, at_ms, failed, true).await?
            || self.add_delivery(id, at_ms, failed, false).await?
        {
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
        let at_ms = at.timestamp_millis();
        let update = self
            .db()
            .update_item(conn_pk(id.as_str()), CONN_SK)
            .update_expression("SET last_ping_at = :at")
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(last_ping_at) \
                 OR last_ping_at < :at)",
            )
            .expression_attribute_values(":at", n(at_ms));
        if self.send_update("UpdateItem (record ping)", update).await? {
            return Ok(());
        }
        // The condition failed: a later ping is stored already, or the connection is gone.
        match self.connection_by_id(id.as_str()).await? {
            Some(_) => Ok(()),
            None => Err(ConnectionError::NotFound),
        }
    }

    async fn list_all(
        &self,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Connection>, Option<String>), ConnectionError> {
        // A Query of the sparse `gsi2` partition only connection items carry (it projects
        // everything): the table's other items — payload parts above all — are never read.
        // The cursor is the last evaluated item's pk (`CONN#{id}`), as opaque text.
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let limit = limit.clamp(1, MAX_PAGE);
        let start = match cursor {
            None => {
                self.index_legacy_connections().await?;
                None
            }
            Some(c) => {
                let pk = engine
                    .decode(c.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                match pk.as_deref().and_then(|pk| pk.strip_prefix("CONN#")) {
                    Some(id) => Some(HashMap::from([
                        ("pk".to_owned(), s(conn_pk(id))),
                        ("sk".to_owned(), s(CONN_SK)),
                        ("gsi2pk".to_owned(), s(ALL_CONNECTIONS)),
                        ("gsi2sk".to_owned(), s(id)),
                    ])),
                    None => return Ok((Vec::new(), None)),
                }
            }
        };
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI2)
            .key_condition_expression("gsi2pk = :all")
            .expression_attribute_values(":all", s(ALL_CONNECTIONS))
            .limit(limit as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| ConnectionError::dynamo("Query (every connection)", &e))?;
        let out = page
            .items()
            .iter()
            .map(parse_connection)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match page.last_evaluated_key() {
            Some(key) => Some(engine.encode(Reader::new(key).str("pk")?)),
            None => None,
        };
        Ok((out, next))
    }

    async fn upsert_workflow_run(&self, run: &WorkflowRun) -> Result<bool, ConnectionError> {
        let pk = run_pk(&run.connection_id, &run.run_id, run.run_attempt);
        let finished = run.conclusion.is_some();
        let updated_ms = run.updated_at.timestamp_millis();
        // The same order as `run_is_newer`: a later event, or a finished one at the same time.
        let condition = if finished {
            "attribute_not_exists(pk) OR updated_ms <= :u"
        } else {
            "attribute_not_exists(pk) OR updated_ms < :u OR (updated_ms = :u AND finished = :no)"
        };
        let mut update = self
            .db()
            .update_item(pk.clone(), RUN_SK)
            .condition_expression(condition)
            .expression_attribute_names("#r", "record")
            .expression_attribute_values(":u", n(updated_ms))
            .expression_attribute_values(":f", n(i64::from(finished)))
            .expression_attribute_values(":r", s(to_json(&pk, run)?));
        if !finished {
            update = update.expression_attribute_values(":no", n(0));
        }
        // Failed jobs are a string set beside the record: ADD is a union, atomic on the item.
        let set = "SET updated_ms = :u, finished = :f, #r = :r";
        let jobs = merge_jobs(&[], &run.failed_jobs);
        update = if jobs.is_empty() {
            update.update_expression(set)
        } else {
            update
                .update_expression(format!("{set} ADD failed_jobs :jobs"))
                .expression_attribute_values(":jobs", AttributeValue::Ss(jobs.clone()))
        };
        if self
            .send_update("UpdateItem (workflow run)", update)
            .await?
        {
            return Ok(true);
        }
        // An older event: its state is not written, but the jobs it saw failing still count.
        if !jobs.is_empty() {
            let add = self
                .db()
                .update_item(pk, RUN_SK)
                .update_expression("ADD failed_jobs :jobs")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":jobs", AttributeValue::Ss(jobs));
            self.send_update("UpdateItem (failed jobs)", add).await?;
        }
        Ok(false)
    }

    async fn add_failed_job(
        &self,
        placeholder: &WorkflowRun,
        job: &str,
    ) -> Result<(), ConnectionError> {
        let p = placeholder;
        let pk = run_pk(&p.connection_id, &p.run_id, p.run_attempt);
        let update = self
            .db()
            .update_item(pk.clone(), RUN_SK)
            .update_expression(
                "SET #r = if_not_exists(#r, :r), updated_ms = if_not_exists(updated_ms, :u), \
                 finished = if_not_exists(finished, :f) ADD failed_jobs :jobs",
            )
            .expression_attribute_names("#r", "record")
            .expression_attribute_values(":r", s(to_json(&pk, p)?))
            .expression_attribute_values(":u", n(p.updated_at.timestamp_millis()))
            .expression_attribute_values(":f", n(i64::from(p.conclusion.is_some())))
            .expression_attribute_values(":jobs", AttributeValue::Ss(vec![job.to_owned()]));
        self.send_update("UpdateItem (failed job)", update).await?;
        Ok(())
    }

    async fn get_workflow_run(
        &self,
        connection_id: &ConnectionId,
        run_id: &str,
        run_attempt: u32,
    ) -> Result<Option<WorkflowRun>, ConnectionError> {
        let Some(item) = self
            .db()
            .get_item(run_pk(connection_id, run_id, run_attempt), RUN_SK)
            .await?
        else {
            return Ok(None);
        };
        let mut run: WorkflowRun = parse_record(&item)?;
        let added = match item.get("failed_jobs") {
            Some(AttributeValue::Ss(jobs)) => jobs.as_slice(),
            _ => &[],
        };
        run.failed_jobs = merge_jobs(&run.failed_jobs, added);
        Ok(Some(run))
    }

    async fn create_incident_once(&self, i: &Incident) -> Result<bool, ConnectionError> {
        let once_pk = format!(
            "INCRUN#{}#{}#{}",
            i.connection_id,
            esc(&i.run_id),
            i.run_attempt
        );
        let once = HashMap::from([
            ("pk".to_owned(), s(&once_pk)),
            ("sk".to_owned(), s(INCRUN_SK)),
            ("incident_id".to_owned(), s(i.id.as_str())),
        ]);
        let pk = format!("INC#{}", i.id);
        let gsi1sk = format!("{}#{}", sortable_millis(i.created_at), i.id);
        let mut record = HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("sk".to_owned(), s(INC_SK)),
            ("gsi1pk".to_owned(), s(format!("ORGINC#{}", esc(&i.org_id)))),
            ("gsi1sk".to_owned(), s(&gsi1sk)),
            ("org_id".to_owned(), s(&i.org_id)),
            ("connection_id".to_owned(), s(i.connection_id.as_str())),
            ("repo_key".to_owned(), s(repo_key(&i.repository_full_name))),
            ("status".to_owned(), s(&i.status)),
            ("record".to_owned(), s(to_json(&pk, i)?)),
        ]);
        if let Some(pr_status) = &i.pr_status {
            record.insert("pr_status".to_owned(), s(pr_status));
        }
        let mut items = vec![
            self.db().put(once, Some("attribute_not_exists(pk)"))?,
            self.db().put(record, Some("attribute_not_exists(pk)"))?,
        ];
        if let Some(branch) = &i.branch {
            items.push(self.db().put(
                HashMap::from([
                    ("pk".to_owned(), s(&pk)),
                    ("sk".to_owned(), s(BRANCH_SK)),
                    (
                        "gsi1pk".to_owned(),
                        s(branch_gsi1pk(&i.connection_id, branch)),
                    ),
                    ("gsi1sk".to_owned(), s(&gsi1sk)),
                    ("incident_id".to_owned(), s(i.id.as_str())),
                ]),
                None,
            )?);
        }
        for _ in 0..3 {
            if self
                .db()
                .transact("TransactWriteItems (incident)", items.clone())
                .await?
            {
                return Ok(true);
            }
            if self
                .db()
                .get_item(once_pk.clone(), INCRUN_SK)
                .await?
                .is_some()
            {
                return Ok(false);
            }
        }
        Err(ConnectionError::Unavailable(format!(
            "DynamoDB TransactWriteItems (incident): {pk} kept losing its conditional write"
        )))
    }

    async fn get_incident(
        &self,
        org_id: &str,
        id: &IncidentId,
    ) -> Result<Option<Incident>, ConnectionError> {
        Ok(self
            .incident_by_id(id.as_str())
            .await?
            .filter(|i| i.org_id == org_id))
    }

    async fn list_incidents(
        &self,
        org_id: &str,
        repository: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Incident>, ConnectionError> {
        let repository = repository.map(repo_key);
        // Unfiltered, a page of `limit` is enough; filtered, read ahead.
        let page = if repository.is_none() && status.is_none() {
            limit
        } else {
            QUERY_PAGE
        };
        let gsi1pk = format!("ORGINC#{}", esc(org_id));
        let items = self
            .query_gsi1(&gsi1pk, None, limit, page, |item| {
                let r = Reader::new(item);
                Ok(r.str("org_id")? == org_id
                    && repository
                        .as_deref()
                        .map_or(Ok(true), |want| r.str("repo_key").map(|got| got == want))?
                    && status.map_or(Ok(true), |want| r.str("status").map(|got| got == want))?)
            })
            .await?;
        items.iter().map(parse_incident).collect()
    }

    async fn set_incident_pr_status(
        &self,
        org_id: &str,
        id: &IncidentId,
        pr_status: &str,
    ) -> Result<(), ConnectionError> {
        let update = self
            .db()
            .update_item(format!("INC#{id}"), INC_SK)
            .update_expression("SET pr_status = :pr")
            .condition_expression("attribute_exists(pk) AND org_id = :org")
            .expression_attribute_values(":pr", s(pr_status))
            .expression_attribute_values(":org", s(org_id));
        if self
            .send_update("UpdateItem (incident PR status)", update)
            .await?
        {
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
        let pk = format!("INC#{id}");
        let Some(item) = self.db().get_item(pk.clone(), INC_SK).await? else {
            return Err(ConnectionError::NotFound);
        };
        let r = Reader::new(&item);
        if r.str("org_id")? != org_id {
            return Err(ConnectionError::NotFound);
        }
        if r.str("status")? != "open" {
            return Ok(false);
        }
        // Only the status and `updated_at` of a stored incident's record ever change (its PR
        // status lives beside it), so the record is rewritten from this read and the write is
        // conditioned on the status alone: of concurrent resolves, exactly one passes.
        let mut incident: Incident = r.record()?;
        incident.status = "resolved".to_owned();
        incident.updated_at = at;
        let update = self
            .db()
            .update_item(pk.clone(), INC_SK)
            .update_expression("SET #status = :resolved, #record = :record")
            .condition_expression("org_id = :org AND #status = :open")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#record", "record")
            .expression_attribute_values(":resolved", s("resolved"))
            .expression_attribute_values(":open", s("open"))
            .expression_attribute_values(":org", s(org_id))
            .expression_attribute_values(":record", s(to_json(&pk, &incident)?));
        self.send_update("UpdateItem (resolve incident)", update)
            .await
    }

    async fn find_incident_by_branch(
        &self,
        connection_id: &ConnectionId,
        branch: &str,
    ) -> Result<Option<Incident>, ConnectionError> {
        let gsi1pk = branch_gsi1pk(connection_id, branch);
        let pointers = self.query_gsi1(&gsi1pk, None, 10, 10, |_| Ok(true)).await?;
        for pointer in &pointers {
            let id = Reader::new(pointer).str("incident_id")?;
            if let Some(incident) = self.incident_by_id(id).await? {
                return Ok(Some(incident));
            }
        }
        Ok(None)
    }

    async fn upsert_pull_request(&self, pr: &PullRequest) -> Result<bool, ConnectionError> {
        let pk = format!("PR#{}#{}", pr.connection_id, pr.number);
        let updated_ms = pr.updated_at.timestamp_millis();
        let item = HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("sk".to_owned(), s(PR_SK)),
            ("updated_ms".to_owned(), n(updated_ms)),
            ("record".to_owned(), s(to_json(&pk, pr)?)),
        ]);
        self.db()
            .put_if(
                "PutItem (pull request)",
                item,
                Some("attribute_not_exists(pk) OR updated_ms <= :u"),
                Some(HashMap::from([(":u".to_owned(), n(updated_ms))])),
            )
            .await
    }

    async fn get_pull_request(
        &self,
        connection_id: &ConnectionId,
        number: u64,
    ) -> Result<Option<PullRequest>, ConnectionError> {
        self.db()
            .get_item(format!("PR#{connection_id}#{number}"), PR_SK)
            .await?
            .map(|item| parse_record(&item))
            .transpose()
    }

    async fn put_provider_token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        token: &StoredProviderToken,
    ) -> Result<(), ConnectionError> {
        let pk = token_pk(org_id, user_id, provider);
        let item = HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("sk".to_owned(), s(TOKEN_SK)),
            ("record".to_owned(), s(to_json(&pk, token)?)),
        ]);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| ConnectionError::dynamo("PutItem (provider token)", &e))?;
        Ok(())
    }

    async fn get_provider_token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
    ) -> Result<Option<StoredProviderToken>, ConnectionError> {
        self.db()
            .get_item(token_pk(org_id, user_id, provider), TOKEN_SK)
            .await?
            .map(|item| parse_record(&item))
            .transpose()
    }
}

/// A user's sealed provider access token: `PTOKEN#{org}#{user}#{provider}` / `PTOKEN`.
const TOKEN_SK: &str = "PTOKEN";

fn token_pk(org_id: &str, user_id: &str, provider: RepoProvider) -> String {
    format!(
        "PTOKEN#{}#{}#{}",
        esc(org_id),
        esc(user_id),
        provider.as_str()
    )
}

// ---- keys and items ------------------------------------------------------------------------

fn conn_pk(id: &str) -> String {
    format!("CONN#{id}")
}

fn marker_pk(org_id: &str, provider: RepoProvider, repository_full_name: &str) -> String {
    format!(
        "CONNREPO#{}#{}#{}",
        esc(org_id),
        provider.as_str(),
        esc(&repo_key(repository_full_name))
    )
}

fn repo_gsi1pk(provider: RepoProvider, repository_full_name: &str) -> String {
    format!(
        "REPO#{}#{}",
        provider.as_str(),
        esc(&repo_key(repository_full_name))
    )
}

fn run_pk(connection_id: &ConnectionId, run_id: &str, attempt: u32) -> String {
    format!("RUN#{connection_id}#{}#{attempt}", esc(run_id))
}

fn branch_gsi1pk(connection_id: &ConnectionId, branch: &str) -> String {
    format!("INCBRANCH#{connection_id}#{}", esc(branch))
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, ConnectionError> {
    serde_json::to_string(value).map_err(|e| json_corrupt(key, &e))
}

fn connection_item(c: &Connection) -> Result<Item, ConnectionError> {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(conn_pk(c.id.as_str()))),
        ("sk".to_owned(), s(CONN_SK)),
        (
            "gsi1pk".to_owned(),
            s(format!("ORGCONN#{}", esc(&c.org_id))),
        ),
        (
            "gsi1sk".to_owned(),
            s(format!("{}#{}", sortable_millis(c.created_at), c.id)),
        ),
        ("org_id".to_owned(), s(&c.org_id)),
        ("provider".to_owned(), s(c.provider.as_str())),
        ("repo_key".to_owned(), s(repo_key(&c.repository_full_name))),
        (
            "total_deliveries".to_owned(),
            n(i64::try_from(c.total_deliveries).unwrap_or(i64::MAX)),
        ),
        (
            "failed_deliveries".to_owned(),
            n(i64::try_from(c.failed_deliveries).unwrap_or(i64::MAX)),
        ),
        ("record".to_owned(), s(to_json(c.id.as_str(), c)?)),
        ("updated_at".to_owned(), s(json_time(c.updated_at))),
        ("gsi2pk".to_owned(), s(ALL_CONNECTIONS)),
        ("gsi2sk".to_owned(), s(c.id.as_str())),
    ]);
    if let Some(project_id) = &c.project_id {
        item.insert("project_id".to_owned(), s(project_id));
    }
    if let Some(at) = c.webhook_last_delivery_at {
        item.insert("last_delivery_at".to_owned(), n(at.timestamp_millis()));
    }
    Ok(item)
}

fn parse_record<T: DeserializeOwned>(item: &Item) -> Result<T, ConnectionError> {
    Reader::new(item).record()
}

fn parse_connection(item: &Item) -> Result<Connection, ConnectionError> {
    let r = Reader::new(item);
    let mut c: Connection = r.record()?;
    let count = |name: &str| -> Result<u64, ConnectionError> {
        u64::try_from(r.opt_i64(name)?.unwrap_or(0))
            .map_err(|_| r.corrupt(format!("attribute {name} is negative")))
    };
    c.total_deliveries = count("total_deliveries")?;
    c.failed_deliveries = count("failed_deliveries")?;
    c.webhook_last_delivery_at = r.opt_millis("last_delivery_at")?;
    c.health.last_ping_at = r.opt_millis("last_ping_at")?;
    Ok(c)
}

fn parse_incident(item: &Item) -> Result<Incident, ConnectionError> {
    let r = Reader::new(item);
    let mut i: Incident = r.record()?;
    i.pr_status = r.opt_str("pr_status")?.map(str::to_owned);
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::connections::conformance::connection;

    #[test]
    fn keys_cannot_be_forged_with_separators() {
        assert_ne!(
            marker_pk("a#github#x", RepoProvider::Github, "y"),
            marker_pk("a", RepoProvider::Github, "x#github#y")
        );
        assert_eq!(
            marker_pk("org", RepoProvider::Gitlab, "Group/Sub/Proj"),
            "CONNREPO#org#gitlab#group/sub/proj"
        );
        assert_eq!(esc("50%#1"), "50%25%231");
    }

    #[test]
    fn a_connection_item_round_trips_with_counters_from_their_attributes() {
        let mut c = connection("org-a", "Owner/Repo");
        c.total_deliveries = 5;
        c.failed_deliveries = 2;
        c.webhook_last_delivery_at = DateTime::from_timestamp_millis(1_700_000_000_000);
        let mut item = connection_item(&c).unwrap();
        assert_eq!(item["repo_key"], s("owner/repo"));
        assert_eq!(item["gsi1pk"], s("ORGCONN#org-a"));
        assert_eq!(parse_connection(&item).unwrap(), c);
        item.insert("total_deliveries".into(), n(6));
        assert_eq!(parse_connection(&item).unwrap().total_deliveries, 6);
    }

    #[test]
    fn a_corrupt_item_names_its_key_but_not_its_contents() {
        let c = connection("org-a", "owner/repo");
        let mut item = connection_item(&c).unwrap();
        let sealed = c.secret.unwrap().sealed;
        item.insert("record".into(), s(format!("{{\"sealed\": \"{sealed}\"")));
        let err = parse_connection(&item).unwrap_err().to_string();
        assert!(err.contains(&format!("CONN#{}", c.id)), "{err}");
        assert!(!err.contains(&sealed), "{err}");
    }
}
