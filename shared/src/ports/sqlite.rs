//! The embedded adapters' engine: one SQLite file in the data dir, in WAL mode so another
//! process (`hookline deliveries`) can read while the server writes. Every call runs on one
//! writer thread that commits a batch of calls at a time (group commit): each caller gets its
//! answer only after its batch is durably committed, and one fsync covers many deliveries.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

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
    /// fsync on every commit: survives a power cut.
    Full,
    /// fsync at checkpoints only: survives a crash of the process, not of the machine.
    Normal,
}

type Finish = Box<dyn FnOnce(Result<(), DbError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Finish + Send>;

/// A handle on the database file; clone it freely.
#[derive(Clone)]
pub struct Database {
    jobs: mpsc::Sender<Job>,
    path: Arc<PathBuf>,
    /// Idle read-only connections for [`Database::read`]; WAL lets them read beside the writer.
    readers: Arc<std::sync::Mutex<Vec<Connection>>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .finish()
    }
}

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
    sent_at INTEGER NOT NULL
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
"#;

fn connect(path: &Path, durability: Durability) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Keep hot pages in memory and read the rest through mmap: without these, the writer
    // thread spends most of its time copying pages in and out of the kernel.
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread (`checkpointer`); the writer checkpoints itself
    // only if the WAL grows this long (~80 MB) regardless.
    conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
    Ok(conn)
}

/// How often the checkpointer copies committed pages from the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Copy the WAL into the database file beside the writer. A checkpoint run by the writer
/// after a commit held up every delivery waiting for the next commit; a PASSIVE one on its
/// own connection neither waits for the writer nor blocks it. Stops when the database's
/// last handle is dropped.
fn checkpointer(conn: Connection, alive: std::sync::Weak<PathBuf>) {
    while alive.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "a background checkpoint failed; the writer's own will catch up");
        }
    }
}

impl Database {
    /// Open (creating if needed) `hookline.db` in `dir`, and start its writer thread.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, DbError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbError(format!("cannot create data dir {}: {e}", dir.display())))?;
        let path = dir.join("hookline.db");
        let conn = connect(&path, durability)?;
        conn.execute_batch(SCHEMA)?;
        let checkpoints = connect(&path, durability)?;
        let db = Self::start(conn, path, "BEGIN IMMEDIATE")?;
        let alive = Arc::downgrade(&db.path);
        std::thread::Builder::new()
            .name("hookline-checkpoint".into())
            .spawn(move || checkpointer(checkpoints, alive))
            .map_err(|e| DbError(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(db)
    }

    /// Open an existing data dir to read only, beside a server that writes to it: WAL lets a
    /// reader in while the writer commits, and a read never waits for the write lock.
    pub fn open_read_only(dir: &Path) -> Result<Self, DbError> {
        let path = dir.join("hookline.db");
        if !path.exists() {
            return Err(DbError(format!("no Hookline data in {}", dir.display())));
        }
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Self::start(conn, path, "BEGIN DEFERRED")
    }

    fn start(conn: Connection, path: PathBuf, begin: &'static str) -> Result<Self, DbError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hookline-db".into())
            .spawn(move || writer(conn, rx, begin))
            .map_err(|e| DbError(format!("cannot start the database thread: {e}")))?;
        Ok(Self {
            jobs,
            path: Arc::new(path),
            readers: Arc::new(std::sync::Mutex::new(Vec::new())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run a read-only `op` on a reader connection, beside the writer instead of in its queue:
    /// lookups on the hot path (which connection owns this repository?) never wait behind
    /// writes. It sees everything committed before it started.
    ///
    /// It runs on the calling task, not on a blocking thread: a WAL reader takes no lock the
    /// writer holds, and these are point reads on an index, a few microseconds each. Handing
    /// each to `spawn_blocking` cost more than the read (a thread wake-up per delivery).
    pub fn read<T, F>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(&Connection) -> Result<T, DbError>,
    {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    self.path.as_path(),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                conn.busy_timeout(Duration::from_secs(5))?;
                conn
            }
        };
        let result = op(&conn);
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        result
    }

    /// Run `op` inside the writer's current transaction; its result is handed back once that
    /// transaction has committed. An `Err` from `op` rolls back only `op`'s own changes.
    pub async fn call<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = savepoint(conn, op);
            Box::new(move |committed| {
                let _ = tx.send(committed.and(result));
            })
        });
        self.jobs
            .send(job)
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

fn writer(conn: Connection, jobs: mpsc::Receiver<Job>, begin: &str) {
    while let Ok(first) = jobs.recv() {
        let mut finishes: Vec<Finish> = Vec::new();
        let began = conn.execute_batch(begin).map_err(DbError::from);
        if let Err(e) = began {
            // Cannot even start a transaction: fail this call, keep serving.
            let finish = first(&conn);
            finish(Err(e));
            continue;
        }
        finishes.push(first(&conn));
        while finishes.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => finishes.push(job(&conn)),
                Err(_) => break,
            }
        }
        let committed = conn.execute_batch("COMMIT").map_err(DbError::from);
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for finish in finishes {
            finish(committed.clone());
        }
    }
}

/// Epoch milliseconds, the embedded engine's one time format.
pub fn millis(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
