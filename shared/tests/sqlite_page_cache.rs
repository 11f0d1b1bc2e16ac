//! The page-cache wrapper (`ports::sqlite_page_cache`) in front of SQLite's own cache, in a
//! process of its own so that it is installed before anything opens a connection: the
//! database must read back exactly what was committed through page splits, a rolled-back
//! transaction that grew the file, and a file that grows again after it.

use hookline::ports::sqlite::{Database, Durability};
use hookline::ports::sqlite_page_cache;
use rusqlite::Connection;

fn rows(conn: &Connection, sql: &str) -> Vec<(i64, String)> {
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Row `i`'s index key: scattered, so inserts split index pages all over.
fn key(i: i64) -> String {
    format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A row per id, with its key and `value` as its `v`.
fn insert(conn: &Connection, ids: std::ops::Range<i64>, value: &str) {
    let mut stmt = conn
        .prepare_cached("INSERT INTO t (id, k, v) VALUES (?1, ?2, ?3)")
        .unwrap();
    for i in ids {
        stmt.execute(rusqlite::params![i, key(i), value]).unwrap();
    }
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn what_was_committed_reads_back_through_splits_rollbacks_and_regrowth() {
    let dir = tempfile::tempdir().unwrap();
    // The server's own open installs the wrapper first.
    let _db = Database::open(dir.path(), Durability::Normal).unwrap();
    assert!(
        sqlite_page_cache::installed(),
        "the wrapper is SQLite's page cache in this process"
    );

    let path = dir.path().join("cache-test.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA cache_size=-65536;
         CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL);
         CREATE INDEX t_by_k ON t (k);",
    )
    .unwrap();
    // Random keys split index pages all over: balancing swaps pages through the borrowed
    // page number on many of these commits.
    for batch in 0..50 {
        let tx = conn.unchecked_transaction().unwrap();
        insert(&tx, batch * 200..(batch + 1) * 200, &"x".repeat(200));
        tx.commit().unwrap();
    }
    let pages_before: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();

    // A transaction that grows the file by many pages, then rolls back: the cache must drop
    // every page past the file's end, or the regrowth below would reuse their contents.
    {
        let tx = conn.unchecked_transaction().unwrap();
        insert(&tx, 100_000..110_000, &"gone".repeat(100));
        tx.rollback().unwrap();
    }
    let pages_after: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        pages_after, pages_before,
        "the rollback left the file as it was"
    );

    // Grow it again over the same page numbers, with other rows.
    let tx = conn.unchecked_transaction().unwrap();
    insert(&tx, 200_000..205_000, &"kept".repeat(100));
    tx.commit().unwrap();

    assert_eq!(integrity(&conn), "ok");
    let gone: i64 = conn
        .query_row("SELECT count(*) FROM t WHERE v LIKE 'gone%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        gone, 0,
        "nothing of the rolled-back transaction is read back"
    );
    let total: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 10_000 + 5_000);

    // A second connection (its own cache) reads the same rows, by the index and by the table.
    let other = Connection::open(&path).unwrap();
    assert_eq!(integrity(&other), "ok");
    let by_index = rows(&other, "SELECT id, k FROM t INDEXED BY t_by_k ORDER BY k");
    let mut by_table = rows(&other, "SELECT id, v FROM t NOT INDEXED ORDER BY id");
    assert_eq!(by_index.len(), by_table.len());
    assert!(by_index.iter().all(|(id, k)| *k == key(*id)));

    // The first connection changes every row; the second, whose cache holds the old pages,
    // must drop them (SQLite clears a cache through its truncation) and read the new ones.
    conn.execute("UPDATE t SET v = 'new-' || id", []).unwrap();
    by_table = rows(&other, "SELECT id, v FROM t NOT INDEXED ORDER BY id");
    assert!(
        by_table.iter().all(|(id, v)| *v == format!("new-{id}")),
        "the second connection read a page its cache should have dropped"
    );
    assert_eq!(integrity(&other), "ok");
}
