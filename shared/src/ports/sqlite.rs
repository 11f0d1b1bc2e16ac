//! The embedded adapters' engine: one SQLite file in the data dir, in WAL mode so another
//! process (`hookline deliveries`) can read while the server writes. Every call runs on one
//! writer thread that commits a batch of calls at a time (group commit): each caller gets its
//! answer only after its batch is durably committed, and one fsync covers many deliveries.
//! The fsync (`syncer`) and the checkpoints (`checkpointer`) run on threads of their own, so
//! the writer waits for the disk only for the last frames of a checkpoint that lets the WAL
//! start over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::payload_log::{LogWriter, PayloadLog};

/// How many calls one transaction may take before it commits.
const MAX_BATCH: usize = 512;

/// Why the embedded database failed; the adapters map it to their port's error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// No call is answered before the WAL holding its commit is fsynced: survives a power cut.
    Full,
    /// fsync at checkpoints only: survives a crash of the process, not of the machine.
    Normal,
}

type Finish = Box<dyn FnOnce(Result<(), DbError>) + Send>;
/// A call on the writer: runs, and says how to answer its caller and whether the answer
/// waits for the disk. It is given the payload log's writer unless the database is read-only.
type Job = Box<dyn FnOnce(&Connection, Option<&mut LogWriter>) -> (Finish, Wait) + Send>;

/// What the writer thread is asked to do.
enum Work {
    /// Run a call in the current batch.
    Call(Job),
    /// Between two batches, checkpoint the WAL's last frames so the next commit writes it
    /// from its start again (see [`checkpointer`]).
    Restart,
    /// The database's last handle is gone: finish what was sent before and stop, closing the
    /// connection and the payload log's writer (and its lock) before the handle's drop returns.
    Stop,
}

/// When a call's caller hears of its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Once the WAL holding it is on disk (with [`Durability::Full`]).
    Durable,
    /// As soon as it is committed.
    Committed,
}

/// A handle on the database file; clone it freely. Its threads stop with its last clone.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Work>,
    /// A [`Work::Restart`] is on its way to the writer: the checkpointer sends one at a time.
    restart_asked: Arc<AtomicBool>,
    sync: SyncShared,
    path: PathBuf,
    /// The payload bodies' segment files beside the database file (`ports::payload_log`).
    log: Arc<PayloadLog>,
    /// Idle read-only connections for [`Database::read`]; WAL lets them read beside the writer.
    readers: std::sync::Mutex<Vec<Connection>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    /// Wait for the writer thread to stop, so that opening the data dir again at once finds
    /// the payload log's lock free (unless this drop runs on the writer thread itself).
    fn drop(&mut self) {
        let _ = self.jobs.send(Work::Stop);
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(writer) = writer {
            if writer.thread().id() != std::thread::current().id() {
                let _ = writer.join();
            }
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The databases this process has open for writing, by file: a second `open` of a data dir
/// shares the first one's writer, as SQLite allows one writer at a time anyway (three writer
/// threads on one file, as the local server's parts once made, queued on its lock).
static OPEN: std::sync::Mutex<Vec<(PathBuf, std::sync::Weak<Inner>)>> =
    std::sync::Mutex::new(Vec::new());

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    signature_verified INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    queued_at INTEGER,
    processed_at INTEGER,
    error TEXT,
    duration_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueue_lease_until INTEGER NOT NULL DEFAULT 0,
    process_lease_until INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries (received_at DESC);
CREATE INDEX IF NOT EXISTS deliveries_by_source ON deliveries (source, received_at DESC);
-- Payloads as received, for the delivery log API and replays, until `expires_at` (ms).
CREATE TABLE IF NOT EXISTS payloads (
    key TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS payloads_by_expiry ON payloads (expires_at);
CREATE TABLE IF NOT EXISTS activities (
    key TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS activities_by_time ON activities (received_at DESC);
-- Messages take increasing row ids: appends, not inserts at random places in an index.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    sent_at INTEGER NOT NULL,
    -- The payload row whose body follows `body` (a head), when the intake stored it once.
    payload_key TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at);
-- Repository connections (ports::connections): the serialised model in `record`, plus the
-- columns the lookups use. The delivery counters live in their columns only.
CREATE TABLE IF NOT EXISTS connections (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    repo_key TEXT NOT NULL,
    project_id TEXT,
    created_at INTEGER NOT NULL,
    total_deliveries INTEGER NOT NULL DEFAULT 0,
    failed_deliveries INTEGER NOT NULL DEFAULT 0,
    last_delivery_at INTEGER,
    record TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS connections_unique_repo
    ON connections (org_id, provider, repo_key);
CREATE INDEX IF NOT EXISTS connections_by_org ON connections (org_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS connections_by_repo ON connections (provider, repo_key);
CREATE INDEX IF NOT EXISTS connections_by_project ON connections (project_id)
    WHERE project_id IS NOT NULL;
-- When a connection's ping last arrived (ports::connections::record_ping): a table of its own
-- so data dirs made before it need no migration; it overrides the record like the counters.
CREATE TABLE IF NOT EXISTS connection_pings (
    connection_id TEXT PRIMARY KEY,
    last_ping_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_attempt INTEGER NOT NULL,
    repo_key TEXT NOT NULL,
    status TEXT NOT NULL,
    branch TEXT,
    created_at INTEGER NOT NULL,
    pr_status TEXT,
    record TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_once ON incidents (connection_id, run_id, run_attempt);
CREATE INDEX IF NOT EXISTS incidents_by_org ON incidents (org_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS incidents_by_branch
    ON incidents (connection_id, branch, created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS workflow_runs (
    connection_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_attempt INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (connection_id, run_id, run_attempt)
);
CREATE TABLE IF NOT EXISTS pull_requests (
    connection_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (connection_id, number)
);
CREATE TABLE IF NOT EXISTS provider_tokens (
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id, provider)
);
-- Outbound webhooks (ports::outbound): each record serialised in `record`, plus the columns
-- the lookups and the conditional writes use.
CREATE TABLE IF NOT EXISTS outbound_endpoints (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbound_endpoints_by_org
    ON outbound_endpoints (org_id, created_at, id);
-- One row per org that has published or been dispatched: its last seq and the cursor.
CREATE TABLE IF NOT EXISTS outbound_streams (
    org_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    cursor INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbound_streams_behind ON outbound_streams (org_id)
    WHERE cursor < last_seq;
CREATE TABLE IF NOT EXISTS outbound_events (
    org_id TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS outbound_events_by_seq ON outbound_events (org_id, seq);
CREATE TABLE IF NOT EXISTS outbound_deliveries (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    lease_until INTEGER,
    created_at INTEGER NOT NULL,
    record TEXT NOT NULL,
    -- When the next attempt is due (ms), while one is (pending or failed; a claim moves it to
    -- the end of the claim's lease): the local deliverer's queue (`DueDeliveries`).
    due_at INTEGER
);
CREATE INDEX IF NOT EXISTS outbound_deliveries_by_org
    ON outbound_deliveries (org_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS outbound_deliveries_by_endpoint
    ON outbound_deliveries (org_id, endpoint_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS outbound_deliveries_by_event
    ON outbound_deliveries (org_id, event_id, created_at DESC, id DESC);
-- Only the failing ones by status (what `recover` and a dashboard look for): every delivery
-- changes status at least once, and an index over them all made every attempt move an entry.
-- Other status and event type filters walk `by_org`, as the DynamoDB adapter's query does.
CREATE INDEX IF NOT EXISTS outbound_deliveries_failing
    ON outbound_deliveries (org_id, status, created_at DESC, id DESC)
    WHERE status = 'failed' OR status = 'dead_lettered';
CREATE TABLE IF NOT EXISTS outbound_attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    org_id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (delivery_id, number)
);
-- Sends taken per endpoint and wall-clock second; rows older than a minute are pruned.
CREATE TABLE IF NOT EXISTS outbound_send_slots (
    endpoint_id TEXT NOT NULL,
    second INTEGER NOT NULL,
    taken INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, second)
);
CREATE INDEX IF NOT EXISTS outbound_send_slots_by_second ON outbound_send_slots (second);
CREATE TABLE IF NOT EXISTS org_profiles (
    org_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS org_notices (
    org_id TEXT NOT NULL,
    notice_key TEXT NOT NULL,
    claimed_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, notice_key)
);
-- Billing (ports::billing). One row per Stripe customer: the primary key gives a customer one
-- org, the unique org_id gives an org one customer.
CREATE TABLE IF NOT EXISTS billing_customers (
    customer_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL UNIQUE
);
-- Versioned records: `version` is the model's Version::as_i64, compared by the conditional
-- upserts; the model itself is in `record`.
CREATE TABLE IF NOT EXISTS billing_subscriptions (
    org_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_invoices (
    org_id TEXT NOT NULL,
    id TEXT NOT NULL,
    created INTEGER NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX IF NOT EXISTS billing_invoices_by_org ON billing_invoices (org_id, created DESC, id DESC);
CREATE TABLE IF NOT EXISTS billing_refunds (
    org_id TEXT NOT NULL,
    id TEXT NOT NULL,
    created INTEGER NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX IF NOT EXISTS billing_refunds_by_org ON billing_refunds (org_id, created DESC, id DESC);
CREATE TABLE IF NOT EXISTS billing_parked_events (
    event_id TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_parked_by_time ON billing_parked_events (received_at, event_id);
CREATE TABLE IF NOT EXISTS billing_usage (
    org_id TEXT NOT NULL,
    period TEXT NOT NULL,
    metric TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (org_id, period, metric)
);
"#;

/// Columns added to tables that earlier versions created (`CREATE TABLE IF NOT EXISTS`
/// leaves an older data dir's table as it was), and the indexes on them: a data dir from
/// before them opens with them added (empty).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("deliveries", "org_id", "TEXT"),
    ("deliveries", "connection_id", "TEXT"),
    ("deliveries", "repository_full_name", "TEXT"),
    ("outbound_deliveries", "due_at", "INTEGER"),
    // The payload row whose body completes the message (`ports::intake`).
    ("messages", "payload_key", "TEXT"),
    // Where a payload's body is in the payload log (`ports::payload_log`); rows from before
    // it keep their body in `body`.
    ("payloads", "body_segment", "INTEGER"),
    ("payloads", "body_at", "INTEGER"),
    ("payloads", "body_len", "INTEGER"),
];
/// The indexes on those columns, and the dropping of indexes an older data dir still has but
/// this version no longer keeps (each cost every write to its table).
const AFTER_ADDED_COLUMNS: &str = "\
    CREATE INDEX IF NOT EXISTS deliveries_by_org \
        ON deliveries (org_id, received_at DESC, key DESC) WHERE org_id IS NOT NULL; \
    CREATE INDEX IF NOT EXISTS outbound_deliveries_due \
        ON outbound_deliveries (due_at) WHERE due_at IS NOT NULL; \
    CREATE INDEX IF NOT EXISTS payloads_by_place \
        ON payloads (body_segment, body_at) WHERE body_segment IS NOT NULL; \
    DROP INDEX IF EXISTS outbound_deliveries_by_status; \
    DROP INDEX IF EXISTS outbound_deliveries_by_type;";

/// Bring an older data dir's schema up to [`SCHEMA`].
fn migrate(conn: &Connection) -> Result<(), DbError> {
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    conn.execute_batch(AFTER_ADDED_COLUMNS)?;
    Ok(())
}

/// A connection that writes. Its commits never wait for the disk themselves
/// (`synchronous=NORMAL`): with [`Durability::Full`] the `syncer` thread makes each batch
/// durable before its callers hear of it. Checkpoints still sync the WAL before copying it and
/// the database file after.
fn connect(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Keep hot pages in memory and read the rest through mmap: without these, the writer
    // thread spends most of its time copying pages in and out of the kernel.
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread (`checkpointer`), which also keeps the WAL short.
    // SQLite's own checkpoint after a commit is only a safety net for a WAL that grew past
    // ~1 GB regardless: at 17 KB deliveries the WAL grows ~100 MB/s, and at its former mark
    // (~80 MB) the writer synced the WAL and the database file in line several times a
    // second, up to 43 ms each, while every delivery waited: it was the intake's p99.
    conn.pragma_update(None, "wal_autocheckpoint", 250_000)?;
    Ok(conn)
}

/// How often the checkpointer copies committed pages from the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// How long the WAL may grow (frames of a page each; ~80 MB) before the checkpointer has it
/// start over.
const WAL_RESTART_FRAMES: i64 = 20_000;

/// The checkpointer stops catching up beside the writer once a round copies this few frames
/// (~4 MB): the writer then copies what came after (a few milliseconds of its time).
const WAL_LEFT_FOR_WRITER: i64 = 1_000;

/// Copy the WAL into the database file beside the writer: a PASSIVE checkpoint on its own
/// connection neither waits for the writer nor blocks it. Stops when the database's last
/// handle is dropped.
///
/// Under steady writes a PASSIVE checkpoint never catches up with the writer, and SQLite
/// writes the WAL from its start again only when a commit begins with every frame copied:
/// left alone, the WAL grew by GBs a minute. So once it is `restart_at` frames long, the
/// checkpointer catches up as far as it can beside the writer, then asks the writer for a
/// checkpoint of the few frames left between two batches ([`Work::Restart`]).
fn checkpointer(mut copier: Copier, alive: std::sync::Weak<Inner>) {
    while alive.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        if copier.failure.get().is_some() {
            // The WAL may hold the only good copy of pages the database file lost: it must
            // not start over, so nothing more is copied (a restart replays it).
            return;
        }
        match copier.round() {
            Ok(false) => {}
            Ok(true) => {
                let Some(inner) = alive.upgrade() else {
                    return;
                };
                if !inner.restart_asked.swap(true, Ordering::AcqRel) {
                    let _ = inner.jobs.send(Work::Restart);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a background checkpoint failed; the next one will catch up");
            }
        }
    }
}

/// The checkpointer's connection and its own handle on the database file.
///
/// SQLite syncs the database file only at the checkpoint that copies the WAL's last frame.
/// Under load that left the pages of many rounds for one sync: at a writer's checkpoint it
/// took 62 ms while every delivery waited, and wherever it ran, a sync of ~80 MB held up the
/// WAL's `fdatasync` that answers deliveries behind it (p99 60–80 ms against 31–35 ms when
/// each round syncs what it copied, 17 KB deliveries on this disk). So each round does.
struct Copier {
    conn: Connection,
    file: std::fs::File,
    path: PathBuf,
    restart_at: i64,
    /// How many frames were copied when the last round ended.
    copied: i64,
    failure: DiskFailure,
}

impl Copier {
    fn new(path: &Path, restart_at: i64, failure: DiskFailure) -> Result<Self, DbError> {
        let conn = connect(path)?;
        let file = std::fs::File::open(path)
            .map_err(|e| DbError(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self {
            conn,
            file,
            path: path.to_owned(),
            restart_at,
            copied: 0,
            failure,
        })
    }

    /// Copy what the WAL holds and sync it; if the WAL is `restart_at` frames long, go on
    /// copying what the writer added meanwhile until a round copies only a few frames, and
    /// say the writer's turn has come.
    fn round(&mut self) -> Result<bool, DbError> {
        let (frames, _) = self.copy()?;
        if frames < self.restart_at {
            return Ok(false);
        }
        for _ in 0..4 {
            let before = self.copied;
            self.copy()?;
            if self.copied - before <= WAL_LEFT_FOR_WRITER {
                break;
            }
        }
        Ok(true)
    }

    /// One PASSIVE checkpoint, then a sync of what it copied (none when it copied nothing:
    /// an idle server's disk is left alone).
    fn copy(&mut self) -> Result<(i64, i64), DbError> {
        let (frames, copied) = checkpoint(&self.conn)?;
        if copied != std::mem::replace(&mut self.copied, copied) {
            self.file.sync_data().map_err(|e| {
                lost(
                    &self.failure,
                    format!("cannot sync {}: {e}", self.path.display()),
                )
            })?;
        }
        Ok((frames, copied))
    }
}

/// A PASSIVE checkpoint: how many frames the WAL holds, and how many of them are copied.
fn checkpoint(conn: &Connection) -> Result<(i64, i64), DbError> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })?)
}

impl Database {
    /// Open (creating if needed) `hookline.db` in `dir`, and start its writer thread. While a
    /// handle on it is alive, opening it again in this process returns that handle (with the
    /// durability it was opened with).
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, DbError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbError(format!("cannot create data dir {}: {e}", dir.display())))?;
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| DbError(format!("cannot open data dir {}: {e}", dir.display())))?;
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, db)| db.strong_count() > 0);
        if let Some(inner) = open
            .iter()
            .find(|(p, _)| *p == dir)
            .and_then(|(_, db)| db.upgrade())
        {
            return Ok(Self { inner });
        }
        let db = Self::open_new(&dir, durability, WAL_RESTART_FRAMES)?;
        open.push((dir, Arc::downgrade(&db.inner)));
        Ok(db)
    }

    fn open_new(dir: &Path, durability: Durability, restart_at: i64) -> Result<Self, DbError> {
        super::sqlite_page_cache::install();
        let path = dir.join("hookline.db");
        let conn = connect(&path)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let (log, log_writer) = PayloadLog::open(dir, &conn)?;
        let sync = SyncShared::default();
        let copier = Copier::new(&path, restart_at, sync.failure.clone())?;
        let synced = match durability {
            Durability::Normal => None,
            Durability::Full => {
                let (tx, rx) = mpsc::channel::<Committed>();
                let wal = dir.join("hookline.db-wal");
                std::thread::Builder::new()
                    .name("hookline-sync".into())
                    .spawn({
                        let sync = sync.clone();
                        move || syncer(&wal, rx, &sync)
                    })
                    .map_err(|e| DbError(format!("cannot start the sync thread: {e}")))?;
                Some(tx)
            }
        };
        let db = Self::start(conn, path, "BEGIN IMMEDIATE", synced, sync, log, log_writer)?;
        let alive = Arc::downgrade(&db.inner);
        std::thread::Builder::new()
            .name("hookline-checkpoint".into())
            .spawn(move || checkpointer(copier, alive))
            .map_err(|e| DbError(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(db)
    }

    /// Open an existing data dir to read only, beside a server that writes to it: WAL lets a
    /// reader in while the writer commits, and a read never waits for the write lock.
    pub fn open_read_only(dir: &Path) -> Result<Self, DbError> {
        super::sqlite_page_cache::install();
        let path = dir.join("hookline.db");
        if !path.exists() {
            return Err(DbError(format!("no Hookline data in {}", dir.display())));
        }
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let log = PayloadLog::reader(dir);
        Self::start(
            conn,
            path,
            "BEGIN DEFERRED",
            None,
            Default::default(),
            log,
            None,
        )
    }

    fn start(
        conn: Connection,
        path: PathBuf,
        begin: &'static str,
        synced: Option<mpsc::Sender<Committed>>,
        sync: SyncShared,
        log: Arc<PayloadLog>,
        log_writer: Option<LogWriter>,
    ) -> Result<Self, DbError> {
        let (jobs, rx) = mpsc::channel::<Work>();
        let restart_asked = Arc::new(AtomicBool::new(false));
        let asked = restart_asked.clone();
        let writer = std::thread::Builder::new()
            .name("hookline-db".into())
            .spawn(move || writer(conn, log_writer, rx, begin, synced, &asked))
            .map_err(|e| DbError(format!("cannot start the database thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                jobs,
                restart_asked,
                sync,
                path,
                log,
                readers: std::sync::Mutex::new(Vec::new()),
                writer: std::sync::Mutex::new(Some(writer)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Holds every sync of the WAL until the guard is dropped: a disk that does not answer.
    #[cfg(test)]
    pub(crate) fn hold_syncs(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.inner
            .sync
            .gate
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The payload bodies' log beside the database file, to read from.
    pub(crate) fn payload_log(&self) -> &Arc<PayloadLog> {
        &self.inner.log
    }

    /// How many times the WAL has been synced so far (with [`Durability::Full`]).
    pub fn wal_syncs(&self) -> u64 {
        self.inner.sync.syncs.load(Ordering::Relaxed)
    }

    /// Run a read-only `op` on a reader connection, beside the writer instead of in its queue:
    /// lookups on the hot path (which connection owns this repository?) never wait behind
    /// writes. It sees everything committed before it started, including commits whose sync
    /// is still under way (a power cut may yet take those back).
    ///
    /// It runs on the calling task, not on a blocking thread: a WAL reader takes no lock the
    /// writer holds, and these are point reads on an index, a few microseconds each. Handing
    /// each to `spawn_blocking` cost more than the read (a thread wake-up per delivery). A
    /// read that may scan many rows goes through [`Database::read_blocking`].
    pub fn read<T, F>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(&Connection) -> Result<T, DbError>,
    {
        let pooled = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    self.inner.path.as_path(),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                conn.busy_timeout(Duration::from_secs(5))?;
                conn
            }
        };
        let result = op(&conn);
        self.inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        result
    }

    /// [`Database::read`] on a blocking thread, for a read that may scan many rows (a page of
    /// the delivery log, a count over an org's deliveries): inline, it would hold up every
    /// task of the runtime thread it ran on.
    pub async fn read_blocking<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read(op))
            .await
            .map_err(|e| DbError(format!("a read stopped: {e}")))?
    }

    /// Run `op` inside the writer's current transaction; its result is handed back once that
    /// transaction has committed (and, with [`Durability::Full`], reached the disk). An `Err`
    /// from `op` rolls back only `op`'s own changes.
    pub async fn call<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.call_with_log(move |conn, _| op(conn)).await
    }

    /// [`Database::call`] for an `op` that may append to the payload log too: what it appends
    /// is synced before its callers hear of the commit. The log's writer is `None` in a
    /// process that does not hold the log (`ports::payload_log`). (An `op` that fails leaves
    /// what it appended as bytes no row names.)
    pub(crate) async fn call_with_log<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Option<&mut LogWriter>) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(
            move |conn, log| savepoint(conn, |conn| op(conn, log)),
            Wait::Durable,
        )
        .await
    }

    /// [`Database::call`] for an `op` that writes with one statement at most (reads before
    /// it are fine), or that undoes its own earlier statements itself when a later one fails:
    /// SQLite undoes a statement that fails, so `op` needs no savepoint of its own. (An `op`
    /// whose undoing fails too leaves its earlier statements in the batch's commit.) A
    /// savepoint copies every page it changes that an earlier call of the batch had changed
    /// too (index leaves, the table's last page): a fifth of the writer's time on the outbound
    /// hot path went to those copies.
    pub async fn call_one<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(move |conn, _| op(conn), Wait::Durable).await
    }

    /// [`Database::call_one`] answered as soon as its batch commits, before the WAL is
    /// synced: for a write whose loss in a power cut only makes work be done again (a lease
    /// on a delivery: lost, the delivery is simply due again), where waiting for the disk
    /// would only hold the caller up.
    pub async fn call_one_unsynced<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(move |conn, _| op(conn), Wait::Committed).await
    }

    /// [`Database::call`] answered as soon as its batch commits, before the WAL is synced,
    /// for the same kind of write as [`Database::call_one_unsynced`].
    pub async fn call_unsynced<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(move |conn, _| savepoint(conn, op), Wait::Committed)
            .await
    }

    async fn submit<T, F>(&self, op: F, wait: Wait) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Option<&mut LogWriter>) -> Result<T, DbError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn, log| {
            let result = op(conn, log);
            let finish: Finish = Box::new(move |committed| {
                let _ = tx.send(committed.and(result));
            });
            (finish, wait)
        });
        self.inner
            .jobs
            .send(Work::Call(job))
            .map_err(|_| DbError("the database thread has stopped".into()))?;
        rx.await
            .map_err(|_| DbError("the database thread has stopped".into()))?
    }
}

/// Run one call in its own savepoint, so its failure leaves the batch's other calls intact.
/// The savepoint statements are prepared once: parsing them anew for every call was a
/// tenth of the writer thread's time.
fn savepoint<T>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    conn.prepare_cached("SAVEPOINT call")?.execute([])?;
    match op(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE call")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO call; RELEASE call");
            Err(e)
        }
    }
}

fn writer(
    conn: Connection,
    mut log: Option<LogWriter>,
    work: mpsc::Receiver<Work>,
    begin: &str,
    synced: Option<mpsc::Sender<Committed>>,
    restart_asked: &AtomicBool,
) {
    while let Ok(first) = work.recv() {
        let first = match first {
            Work::Call(job) => job,
            Work::Restart => {
                restart(&conn, restart_asked);
                continue;
            }
            Work::Stop => return,
        };
        let mut restart_after = false;
        let mut stop_after = false;
        let mut finishes: Vec<Finish> = Vec::new();
        let mut unsynced: Vec<Finish> = Vec::new();
        let began = conn.execute_batch(begin).map_err(DbError::from);
        if let Err(e) = began {
            // Cannot even start a transaction: fail this call, keep serving.
            let (finish, _) = first(&conn, log.as_mut());
            finish(Err(e));
            continue;
        }
        let mut run = |job: Job| match job(&conn, log.as_mut()) {
            (finish, Wait::Durable) => finishes.push(finish),
            (finish, Wait::Committed) => unsynced.push(finish),
        };
        run(first);
        let mut taken = 1;
        while taken < MAX_BATCH {
            match work.try_recv() {
                Ok(Work::Call(job)) => {
                    run(job);
                    taken += 1;
                }
                Ok(Work::Restart) => {
                    restart_after = true;
                    break;
                }
                Ok(Work::Stop) => {
                    stop_after = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let committed = conn.execute_batch("COMMIT").map_err(DbError::from);
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        finish_all(unsynced, committed.clone());
        match (&synced, committed) {
            // Answered once the WAL is on disk, while this thread goes on with the next batch.
            // A batch nobody waits on (leases, claims that found nothing) asks for no sync: the
            // next durable batch's sync covers its pages too.
            (Some(syncer), Ok(())) if !finishes.is_empty() => {
                let batch = Committed {
                    finishes,
                    log: log.as_mut().and_then(LogWriter::take_unsynced),
                };
                if let Err(mpsc::SendError(unsent)) = syncer.send(batch) {
                    let stopped = DbError("the database sync thread has stopped".into());
                    finish_all(unsent.finishes, Err(stopped));
                }
            }
            (_, committed) => finish_all(finishes, committed),
        }
        if restart_after {
            restart(&conn, restart_asked);
        }
        if stop_after {
            return;
        }
    }
}

/// The writer's part of starting the WAL over: with no transaction open, copy the frames the
/// checkpointer left; the next commit then finds every frame copied and writes the WAL from
/// its start. (A reader still on an old snapshot can keep a frame uncopied; the checkpointer
/// asks again later.)
fn restart(conn: &Connection, restart_asked: &AtomicBool) {
    if let Err(e) = checkpoint(conn) {
        tracing::warn!(error = %e, "the writer's checkpoint failed; the WAL starts over later");
    }
    restart_asked.store(false, Ordering::Release);
}

/// The callers of a batch whose transaction committed, waiting for the WAL to reach the disk,
/// and the payload log's segment if the batch appended to it (synced first).
struct Committed {
    finishes: Vec<Finish>,
    log: Option<Arc<std::fs::File>>,
}

fn finish_all(finishes: Vec<Finish>, result: Result<(), DbError>) {
    for finish in finishes {
        finish(result.clone());
    }
}

/// Make committed batches durable before their callers hear of them: one fsync of the WAL
/// covers every batch committed before it began. The writer meanwhile goes on with the next
/// batch, so the disk's latency and the next batch's work overlap; with
/// `synchronous=FULL` the writer sat out every fsync itself and the cores idled.
fn syncer(wal: &Path, batches: mpsc::Receiver<Committed>, sync: &SyncShared) {
    let SyncShared {
        syncs,
        gate,
        failure,
    } = sync;
    let mut file = None;
    while let Ok(first) = batches.recv() {
        let _disk = gate.read().unwrap_or_else(|p| p.into_inner());
        let mut ready = vec![first];
        ready.extend(batches.try_iter());
        // The payload log's segment before the WAL that names its records. (Only mostly in
        // that order: the checkpointer syncs the WAL too, so `ports::payload_log` recovers
        // from a WAL that reached the disk first. Syncing both at once measured no faster.)
        // The batches of one round share a segment but for the rare one where it rolled over
        // (the writer synced the old one then).
        let mut segments: Vec<&Arc<std::fs::File>> = Vec::new();
        for segment in ready.iter().filter_map(|b| b.log.as_ref()) {
            if !segments.iter().any(|s| Arc::ptr_eq(s, segment)) {
                segments.push(segment);
            }
        }
        let synced = match failure.get() {
            Some(failed) => Err(failed.clone()),
            None => segments
                .iter()
                .try_for_each(|s| {
                    s.sync_data()
                        .map_err(|e| lost(failure, format!("cannot sync the payload log ({e})")))
                })
                .and_then(|()| sync_wal(wal, &mut file, failure)),
        };
        syncs.fetch_add(1, Ordering::Relaxed);
        for batch in ready {
            finish_all(batch.finishes, synced.clone());
        }
    }
}

fn sync_wal(
    wal: &Path,
    file: &mut Option<std::fs::File>,
    failure: &DiskFailure,
) -> Result<(), DbError> {
    let what = |e: std::io::Error| format!("cannot sync {}: {e}", wal.display());
    if file.is_none() {
        // SQLite created the WAL with the schema; its directory entry is synced once, so
        // the file itself survives a power cut.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(wal)
            .map_err(|e| match e.kind() {
                // Gone: SQLite writes to a file no sync of this path reaches any more.
                std::io::ErrorKind::NotFound => lost(failure, what(e)),
                // Out of file handles, say: this round fails, the next tries again.
                _ => DbError(what(e)),
            })?;
        if let Some(dir) = wal.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| lost(failure, what(e)))?;
        }
        *file = Some(opened);
    }
    file.as_ref()
        .expect("opened above")
        .sync_data()
        .map_err(|e| lost(failure, what(e)))
}

/// Set once a sync of the payload log, the WAL or the database file failed.
type DiskFailure = Arc<std::sync::OnceLock<DbError>>;

/// What the sync thread shares with the database's handles and its checkpointer.
#[derive(Clone, Default)]
struct SyncShared {
    /// How many times the sync thread has synced the WAL.
    syncs: Arc<AtomicU64>,
    /// Read by the sync thread around each sync; a test holds it to stand for a disk that
    /// does not answer.
    gate: Arc<std::sync::RwLock<()>>,
    /// Set once a sync failed (see [`lost`]): nothing is called durable after.
    failure: DiskFailure,
}

/// A sync failed: Linux may drop the pages it could not write and call them clean, so a
/// later sync that succeeds proves nothing about them. No commit is called durable from here
/// on, and the checkpointer stops, so the WAL keeps what the database file may have lost.
fn lost(failure: &DiskFailure, what: String) -> DbError {
    let failed = DbError(format!(
        "{what}; nothing more is acknowledged until Hookline restarts"
    ));
    if failure.set(failed.clone()).is_ok() {
        tracing::error!(error = %failed.0, "a sync of the data dir failed");
    }
    failure.get().cloned().unwrap_or(failed)
}

/// Epoch milliseconds, the embedded engine's one time format.
pub fn millis(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn insert_activity(db: &Database, key: &str) -> Result<(), DbError> {
        let key = key.to_owned();
        db.call(move |conn| {
            conn.execute(
                "INSERT INTO activities (key, received_at, record) VALUES (?1, 0, '{}')",
                [key],
            )?;
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_durable_commit_is_answered_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        insert_activity(&db, "kept").await.unwrap();
        drop(db);
        let reopened = Database::open(dir.path(), Durability::Full).unwrap();
        let count: i64 = reopened
            .call(|conn| Ok(conn.query_row("SELECT count(*) FROM activities", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn a_data_dir_from_before_the_added_columns_opens_with_them_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        // The messages table as versions before `payload_key` created it, with a message on it.
        let old = Connection::open(dir.path().join("hookline.db")).unwrap();
        old.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, \
             body TEXT NOT NULL, visible_at INTEGER NOT NULL, \
             receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, sent_at INTEGER NOT NULL); \
             INSERT INTO messages (queue, body, visible_at, sent_at) VALUES ('q', 'old', 0, 0);",
        )
        .unwrap();
        drop(old);
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let (body, key): (String, Option<String>) = db
            .call(|conn| {
                Ok(
                    conn.query_row("SELECT body, payload_key FROM messages", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!((body.as_str(), key), ("old", None));
    }

    #[tokio::test]
    async fn a_commit_that_cannot_be_synced_is_reported_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        // The WAL the syncer must fsync is gone: the commit happened, but nobody may be told
        // it is durable.
        std::fs::remove_file(dir.path().join("hookline.db-wal")).unwrap();
        let err = insert_activity(&db, "unsynced").await.unwrap_err();
        assert!(err.0.contains("cannot sync"), "{err}");
        // A WAL file there again would sync, but says nothing of the frames the failed sync
        // covered: no later commit is called durable either.
        std::fs::File::create(dir.path().join("hookline.db-wal")).unwrap();
        let again = insert_activity(&db, "later").await.unwrap_err();
        assert!(again.0.contains("until Hookline restarts"), "{again}");
    }

    #[tokio::test]
    async fn a_database_file_that_cannot_be_synced_fails_every_later_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        insert_activity(&db, "before").await.unwrap();
        // A checkpointer whose handle on the database file cannot be synced (a pipe's:
        // fdatasync answers EINVAL), sharing this database's record of a failed sync.
        let mut copier =
            Copier::new(&db.inner.path, i64::MAX, db.inner.sync.failure.clone()).unwrap();
        let (pipe, _other_end) = std::io::pipe().unwrap();
        copier.file = std::fs::File::from(std::os::fd::OwnedFd::from(pipe));
        copier.copied = -1;
        let err = copier.copy().unwrap_err();
        assert!(err.0.contains("until Hookline restarts"), "{err}");
        // The pages that sync did not write may be called clean: a later sync proves nothing,
        // so no commit is acknowledged as durable again, and the WAL is not started over.
        let later = insert_activity(&db, "after").await.unwrap_err();
        assert!(later.0.contains("until Hookline restarts"), "{later}");
    }

    #[tokio::test]
    async fn one_data_dir_has_one_writer_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let first = Database::open(dir.path(), Durability::Full).unwrap();
        let again = Database::open(&dir.path().join("."), Durability::Normal).unwrap();
        assert!(Arc::ptr_eq(&first.inner, &again.inner));
        let other_dir = tempfile::tempdir().unwrap();
        let other = Database::open(other_dir.path(), Durability::Full).unwrap();
        assert!(!Arc::ptr_eq(&first.inner, &other.inner));
        // Once every handle is gone, the next open starts afresh (and sees what was written).
        insert_activity(&first, "before").await.unwrap();
        let old = Arc::downgrade(&first.inner);
        drop((first, again));
        assert_eq!(old.strong_count(), 0);
        let reopened = Database::open(dir.path(), Durability::Full).unwrap();
        insert_activity(&reopened, "after").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_steady_writes_the_wal_starts_over_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        // Starts over past 256 frames (1 MB), so two seconds of writes cross it many times.
        let db = Database::open_new(dir.path(), Durability::Full, 256).unwrap();
        let record = "x".repeat(16 * 1024);
        // Writing for a time rather than a count keeps the bound below meaningful on a fast
        // machine: the WAL may grow by what a round of checkpoints (200 ms) lets through.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        let calls = (0..32).map(|caller| {
            let (db, record) = (db.clone(), record.clone());
            tokio::spawn(async move {
                // Each caller queues its next write as soon as the last is answered: the
                // writer is never idle, as under load.
                let mut rows = 0;
                while rows < 20 || std::time::Instant::now() < until {
                    let (key, record) = (format!("{caller}-{rows}"), record.clone());
                    db.call(move |conn| {
                        conn.execute(
                            "INSERT INTO activities (key, received_at, record) VALUES (?1, 0, ?2)",
                            (key, record),
                        )?;
                        Ok(())
                    })
                    .await
                    .unwrap();
                    rows += 1;
                }
                rows
            })
        });
        let mut written_rows = 0;
        for caller in futures::future::join_all(calls).await {
            written_rows += caller.unwrap();
        }
        let wal = dir.path().join("hookline.db-wal");
        let written = (written_rows * record.len()) as u64;
        let header = std::fs::read(&wal).unwrap();
        // The WAL header's checkpoint sequence number counts the times it started over.
        let restarts = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let wal_len = std::fs::metadata(&wal).unwrap().len();
        assert!(restarts >= 2, "the WAL started over {restarts} times");
        assert!(
            wal_len < written / 3,
            "the WAL grew to {wal_len} bytes for {written} bytes of rows"
        );
        drop(db);
        let reopened = Database::open(dir.path(), Durability::Full).unwrap();
        let (rows, integrity): (i64, String) = reopened
            .call(|conn| {
                let rows = conn.query_row("SELECT count(*) FROM activities", [], |r| r.get(0))?;
                let integrity = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
                Ok((rows, integrity))
            })
            .await
            .unwrap();
        assert_eq!((rows, integrity.as_str()), (written_rows as i64, "ok"));
    }

    #[tokio::test]
    async fn a_batch_nobody_waits_on_is_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        insert_activity(&db, "durable").await.unwrap();
        let before = db.wal_syncs();
        assert!(before >= 1, "a durable call was answered without a sync");
        for i in 0..20 {
            db.call_one_unsynced(move |conn| {
                conn.execute(
                    "UPDATE activities SET received_at = ?1 WHERE key = 'durable'",
                    [i],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        }
        // A sync the writer asked for would have been handed over before these answers; give
        // the sync thread time to have run it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(db.wal_syncs(), before);
        // The next durable call's sync covers them.
        insert_activity(&db, "after").await.unwrap();
        assert_eq!(db.wal_syncs(), before + 1);
    }

    #[tokio::test]
    async fn many_concurrent_calls_are_all_answered() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Full).unwrap();
        let calls = (0..300).map(|i| {
            let db = db.clone();
            async move { insert_activity(&db, &format!("k{i}")).await }
        });
        for result in futures::future::join_all(calls).await {
            result.unwrap();
        }
    }
}
