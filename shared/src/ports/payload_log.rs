//! Payload bodies beside the SQLite file: append-only segment files in the data dir's
//! `payloads/`, the `payloads` row keeping where its body is (segment, offset, length).
//!
//! Why not in SQLite: a body written there goes through the page cache into the WAL and again
//! into the database file at the checkpoint, and SQLite's B-tree work grows with it. At 17 KB
//! bodies that was ~40% of the intake's CPU per delivery (165 µs with the body in SQLite, 93 µs
//! with an empty one, alternated runs of `infra/load.sh`). Here a body is written once, at the
//! log's end, and (with `Durability::Full`) synced by the sync thread just before the WAL that
//! names it.
//!
//! A record is `[length u32 LE][CRC-32 of the length and the body u32 LE][body]` (zeros, what
//! a power cut can leave, never read as a record). The checkpointer syncs the WAL on its own
//! too, so after a power cut the WAL can name a record that never reached the disk, and a
//! SIGKILL can stop a record's write halfway. Such a delivery was never answered (answers wait
//! for the segment's sync), so [`PayloadLog::recover`] forgets it whole when the data dir
//! opens: the provider's retry then records it afresh.
//!
//! One process appends: the one holding `payloads/LOCK` (`hookline serve`). Another process
//! that opens the data dir to write (`hookline replay` beside a running server) gets no
//! [`LogWriter`], runs no recovery, and keeps any body it stores in its row.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};

use super::sqlite::DbError;

/// A segment is closed (synced, and the next one started) past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;

/// Where a body is: its record's segment and offset, and the body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

/// The segment files of one data dir, for reading (any thread) and for pruning.
#[derive(Debug)]
pub(crate) struct PayloadLog {
    dir: PathBuf,
    /// Open read handles by segment. Pruning deletes a segment's file under this lock, so a
    /// reader never caches a handle on a deleted file.
    open: Mutex<HashMap<u32, Arc<File>>>,
}

fn segment_name(segment: u32) -> String {
    format!("{segment:010}.seg")
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> DbError {
    DbError(format!("cannot {what} {}: {e}", path.display()))
}

impl PayloadLog {
    fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(segment_name(segment))
    }

    /// The segments present, in order.
    fn segments(&self) -> Result<Vec<u32>, DbError> {
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(io_error("list", &self.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let name = entry.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse().ok())
            {
                found.push(n);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// The log of `data_dir`, to read from (as `hookline deliveries` does beside a server).
    pub(crate) fn reader(data_dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            dir: data_dir.join("payloads"),
            open: Mutex::default(),
        })
    }

    /// Open the log of `data_dir`, and its writer if no other process holds it: then, first,
    /// [`PayloadLog::recover`] it against the `payloads` rows `conn` holds.
    pub(crate) fn open(
        data_dir: &Path,
        conn: &Connection,
    ) -> Result<(Arc<Self>, Option<LogWriter>), DbError> {
        let log = Self::reader(data_dir);
        std::fs::create_dir_all(&log.dir).map_err(|e| io_error("create", &log.dir, e))?;
        let lock_path = log.dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    "another process (hookline serve?) appends to this data dir's payload log; \
                     bodies stored from here stay in the database"
                );
                return Ok((log, None));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path, e)),
        }
        let (segment, end) = log.recover(conn)?;
        let file = log.create_or_open(segment)?;
        let writer = LogWriter {
            log: log.clone(),
            _lock: lock,
            segment,
            file: Arc::new(file),
            end,
            segment_bytes: SEGMENT_BYTES,
            dirty: false,
            buf: Vec::new(),
        };
        Ok((log, Some(writer)))
    }

    fn create_or_open(&self, segment: u32) -> Result<File, DbError> {
        let path = self.path(segment);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        // A new segment's name must survive a power cut as well as its bytes.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", &self.dir, e))?;
        Ok(file)
    }

    /// Find where the last segment's intact records end, forget every delivery whose body lay
    /// past that point (its record, message and payload row), then cut off what follows. The
    /// segment and offset the writer goes on from: a fresh segment when anything was cut or
    /// forgotten, so no offset a forgotten row named is ever written again.
    fn recover(&self, conn: &Connection) -> Result<(u32, u64), DbError> {
        let Some(&last) = self.segments()?.last() else {
            return Ok((1, 0));
        };
        let path = self.path(last);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        let size = file
            .metadata()
            .map_err(|e| io_error("read", &path, e))?
            .len();
        let end = intact_end(&file, size).map_err(|e| io_error("read", &path, e))?;
        let lost: Vec<String> = conn
            .prepare(
                "SELECT key FROM payloads WHERE body_segment > ?1 \
                 OR (body_segment = ?1 AND body_at >= ?2)",
            )?
            .query_map(params![last, end as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if !lost.is_empty() {
            tracing::warn!(
                deliveries = lost.len(),
                "forgetting deliveries whose payload never reached the disk (never answered: \
                 their providers retry them)"
            );
            // Synced before anything is cut: a row that came back after another power cut
            // would name bytes that are gone.
            conn.pragma_update(None, "synchronous", "FULL")?;
            let tx = conn.unchecked_transaction()?;
            for key in &lost {
                tx.execute("DELETE FROM messages WHERE payload_key = ?1", [key])?;
                tx.execute("DELETE FROM deliveries WHERE key = ?1", [key])?;
                tx.execute("DELETE FROM payloads WHERE key = ?1", [key])?;
            }
            tx.commit()?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        if end < size {
            tracing::warn!(
                segment = %path.display(),
                kept = end,
                cut = size - end,
                "the payload log ends in a record that never reached the disk; cutting it off"
            );
            file.set_len(end)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error("truncate", &path, e))?;
        }
        if end < size || !lost.is_empty() {
            return Ok((last + 1, 0));
        }
        Ok((last, end))
    }

    fn handle(&self, segment: u32) -> Result<Arc<File>, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = open.get(&segment) {
            return Ok(file.clone());
        }
        let path = self.path(segment);
        let file = Arc::new(File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        open.insert(segment, file.clone());
        Ok(file)
    }

    /// Read the body at `place` onto the end of `out`, checking its record; on an error `out`
    /// is left as it was.
    pub(crate) fn read_into(&self, place: Place, out: &mut Vec<u8>) -> Result<(), String> {
        let file = self.handle(place.segment)?;
        let start = out.len();
        let len = place.len as usize;
        out.resize(start + HEADER + len, 0);
        let read = file.read_exact_at(&mut out[start..], place.offset);
        if read.is_err() || intact_record(&out[start..]) != Some(len) {
            out.truncate(start);
            return Err(format!(
                "the record at {}:{} is damaged or missing",
                segment_name(place.segment),
                place.offset
            ));
        }
        out.copy_within(start + HEADER.., start);
        out.truncate(start + len);
        Ok(())
    }

    pub(crate) fn read(&self, place: Place) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.read_into(place, &mut out)?;
        Ok(out)
    }

    /// Delete the segments before `below`: the oldest segment a payload row still names, or
    /// the writer's own. Call only once the rows that named them are deleted and committed.
    pub(crate) fn prune(&self, below: u32) -> Result<usize, DbError> {
        let mut deleted = 0;
        for segment in self.segments()?.into_iter().filter(|s| *s < below) {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.remove(&segment);
            let path = self.path(segment);
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                // Another prune got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &path, e)),
            }
        }
        Ok(deleted)
    }
}

/// Where the intact records of a segment `size` bytes long end. Only running out of bytes
/// ends them; a failed read is an error (cutting there would forget good records).
fn intact_end(file: &File, size: u64) -> std::io::Result<u64> {
    let mut end = 0u64;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        if end + HEADER as u64 > size {
            return Ok(end);
        }
        file.read_exact_at(&mut header, end)?;
        let (len, crc) = parse_header(header);
        if end + (HEADER + len) as u64 > size {
            return Ok(end);
        }
        body.resize(len, 0);
        file.read_exact_at(&mut body, end + HEADER as u64)?;
        if checksum(&body) != crc {
            return Ok(end);
        }
        end += (HEADER + len) as u64;
    }
}

/// A record header's body length and checksum.
fn parse_header(header: [u8; HEADER]) -> (usize, u32) {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    (
        u32::from_le_bytes([l0, l1, l2, l3]) as usize,
        u32::from_le_bytes([c0, c1, c2, c3]),
    )
}

/// The length of the record at the start of `bytes` if it is whole and its checksum holds.
fn intact_record(bytes: &[u8]) -> Option<usize> {
    let (len, crc) = parse_header(bytes.get(..HEADER)?.try_into().ok()?);
    let body = bytes.get(HEADER..HEADER + len)?;
    (checksum(body) == crc).then_some(len)
}

fn checksum(body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&(body.len() as u32).to_le_bytes());
    crc.update(body);
    crc.finalize()
}

/// The writer thread's end of the log: appends, and says which file the next sync must cover.
#[derive(Debug)]
pub(crate) struct LogWriter {
    log: Arc<PayloadLog>,
    /// `payloads/LOCK`, locked while this writer lives.
    _lock: File,
    segment: u32,
    file: Arc<File>,
    end: u64,
    segment_bytes: u64,
    /// Appended to since the sync thread was last handed the file.
    dirty: bool,
    buf: Vec<u8>,
}

impl LogWriter {
    /// The segment being written: pruning never deletes it.
    pub(crate) fn segment(&self) -> u32 {
        self.segment
    }

    /// Append `body`; where it is. Written at once (a read in the same batch may need it), at
    /// the log's end as this writer knows it: the bytes of a write that failed halfway are
    /// overwritten by the next record, or cut off as a torn tail at the next open.
    pub(crate) fn append(&mut self, body: &[u8]) -> Result<Place, DbError> {
        let len = u32::try_from(body.len())
            .map_err(|_| DbError(format!("a payload of {} bytes is too large", body.len())))?;
        if self.end > 0 && self.end + (HEADER + body.len()) as u64 > self.segment_bytes {
            self.roll()?;
        }
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&checksum(body).to_le_bytes());
        self.buf.extend_from_slice(body);
        let place = Place {
            segment: self.segment,
            offset: self.end,
            len,
        };
        self.file
            .write_all_at(&self.buf, self.end)
            .map_err(|e| io_error("append to", &self.log.path(self.segment), e))?;
        self.end += self.buf.len() as u64;
        self.dirty = true;
        Ok(place)
    }

    /// Close the current segment (synced, so only the last segment can ever end torn) and
    /// start the next.
    fn roll(&mut self) -> Result<(), DbError> {
        let path = self.log.path(self.segment);
        self.file
            .sync_data()
            .map_err(|e| io_error("sync", &path, e))?;
        let next = self.segment + 1;
        self.file = Arc::new(self.log.create_or_open(next)?);
        self.segment = next;
        self.end = 0;
        self.dirty = false;
        Ok(())
    }

    /// The file the next sync must cover, if anything was appended since the last call.
    pub(crate) fn take_unsynced(&mut self) -> Option<Arc<File>> {
        std::mem::take(&mut self.dirty).then(|| self.file.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables recovery touches, as `ports::sqlite` creates them.
    fn tables() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE payloads (key TEXT PRIMARY KEY, body BLOB NOT NULL, \
                 body_segment INTEGER, body_at INTEGER, body_len INTEGER); \
             CREATE TABLE messages (id INTEGER PRIMARY KEY, payload_key TEXT); \
             CREATE TABLE deliveries (key TEXT PRIMARY KEY);",
        )
        .unwrap();
        conn
    }

    fn writing(dir: &Path, conn: &Connection) -> (Arc<PayloadLog>, LogWriter) {
        let (log, writer) = PayloadLog::open(dir, conn).unwrap();
        (log, writer.expect("no other writer"))
    }

    fn keep(conn: &Connection, log: &mut LogWriter, key: &str, body: &[u8]) -> Place {
        let place = log.append(body).unwrap();
        conn.execute(
            "INSERT INTO payloads VALUES (?1, x'', ?2, ?3, ?4)",
            params![key, place.segment, place.offset as i64, place.len],
        )
        .unwrap();
        conn.execute("INSERT INTO messages (payload_key) VALUES (?1)", [key])
            .unwrap();
        conn.execute("INSERT INTO deliveries VALUES (?1)", [key])
            .unwrap();
        place
    }

    fn keys(conn: &Connection, table: &str, column: &str) -> Vec<String> {
        conn.prepare(&format!("SELECT {column} FROM {table} ORDER BY {column}"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn bodies_read_back_across_segments_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let conn = tables();
        let (log, mut writer) = writing(dir.path(), &conn);
        writer.segment_bytes = 100;
        let bodies: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 30 + i as usize]).collect();
        let places: Vec<Place> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| keep(&conn, &mut writer, &format!("k{i}"), b))
            .collect();
        assert!(places.last().unwrap().segment >= 3, "{places:?}");
        for (place, body) in places.iter().zip(&bodies) {
            assert_eq!(&log.read(*place).unwrap(), body);
        }
        drop((log, writer));
        let (log, mut writer) = writing(dir.path(), &conn);
        assert_eq!(
            keys(&conn, "deliveries", "key").len(),
            6,
            "nothing forgotten"
        );
        let later = writer.append(b"later").unwrap();
        assert_eq!(later.segment, places.last().unwrap().segment);
        for (place, body) in places.iter().zip(&bodies) {
            assert_eq!(&log.read(*place).unwrap(), body);
        }
        assert_eq!(log.read(later).unwrap(), b"later");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_deliveries_it_held_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let conn = tables();
        let (log, mut writer) = writing(dir.path(), &conn);
        keep(&conn, &mut writer, "whole", b"{\"kept\":1}");
        let torn = keep(&conn, &mut writer, "torn", b"{\"lost\":2}");
        keep(&conn, &mut writer, "after", b"{\"lost\":3}");
        drop((log, writer));
        // A power cut that left the second record's last bytes (and all of the third) unwritten.
        let path = dir.path().join("payloads").join(segment_name(torn.segment));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(torn.offset + HEADER as u64 + 3).unwrap();
        drop(file);

        let (log, mut writer) = writing(dir.path(), &conn);
        assert_eq!(keys(&conn, "deliveries", "key"), ["whole"]);
        assert_eq!(keys(&conn, "payloads", "key"), ["whole"]);
        assert_eq!(keys(&conn, "messages", "payload_key"), ["whole"]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), torn.offset);
        // The log goes on in a fresh segment (no offset a forgotten row named is written
        // again), and reads back after another reopen.
        let next = keep(&conn, &mut writer, "next", b"{\"next\":4}");
        assert_eq!((next.segment, next.offset), (torn.segment + 1, 0));
        drop((log, writer));
        let (log, _writer) = writing(dir.path(), &conn);
        assert_eq!(keys(&conn, "deliveries", "key"), ["next", "whole"]);
        assert_eq!(log.read(next).unwrap(), b"{\"next\":4}");
    }

    #[test]
    fn records_a_power_cut_left_as_zeros_are_cut_off_too() {
        let dir = tempfile::tempdir().unwrap();
        let conn = tables();
        let (log, mut writer) = writing(dir.path(), &conn);
        keep(&conn, &mut writer, "whole", b"{}");
        let zeroed = keep(&conn, &mut writer, "zeroed", b"{\"z\":1}");
        drop((log, writer));
        let path = dir
            .path()
            .join("payloads")
            .join(segment_name(zeroed.segment));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0; HEADER + 7], zeroed.offset).unwrap();
        file.set_len(zeroed.offset + 4096).unwrap();
        drop(file);
        let _reopened = writing(dir.path(), &conn);
        assert_eq!(keys(&conn, "deliveries", "key"), ["whole"]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), zeroed.offset);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = tables();
        let (log, mut writer) = writing(dir.path(), &conn);
        let place = writer.append(b"{\"a\":1}").unwrap();
        let path = dir
            .path()
            .join("payloads")
            .join(segment_name(place.segment));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", place.offset + HEADER as u64 + 2)
            .unwrap();
        let err = log.read(place).unwrap_err();
        assert!(err.contains("damaged or missing"), "{err}");
        let mut out = b"head".to_vec();
        assert!(log.read_into(place, &mut out).is_err());
        assert_eq!(out, b"head", "what was there before is left as it was");
    }

    #[test]
    fn pruning_deletes_the_segments_no_row_names_but_never_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let conn = tables();
        let (log, mut writer) = writing(dir.path(), &conn);
        writer.segment_bytes = 50;
        let places: Vec<Place> = (0..4)
            .map(|_| writer.append(&[b'x'; 40]).unwrap())
            .collect();
        let segments = |log: &PayloadLog| log.segments().unwrap();
        assert_eq!(segments(&log), [1, 2, 3, 4]);
        assert_eq!(log.prune(3).unwrap(), 2);
        assert_eq!(segments(&log), [3, 4]);
        assert!(log.read(places[0]).is_err());
        assert_eq!(log.read(places[2]).unwrap(), [b'x'; 40]);
        assert_eq!(
            log.prune(writer.segment()).unwrap(),
            1,
            "all but the current"
        );
        assert_eq!(log.prune(writer.segment()).unwrap(), 0);
        assert_eq!(segments(&log), [4]);
        assert_eq!(log.read(places[3]).unwrap(), [b'x'; 40]);
    }

    #[test]
    fn a_second_opener_gets_no_writer_and_leaves_the_log_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conn = tables();
        let (log, mut writer) = writing(dir.path(), &conn);
        let first = keep(&conn, &mut writer, "first", b"{}");
        // The server's next record, half written when another process opens the data dir.
        let path = dir
            .path()
            .join("payloads")
            .join(segment_name(first.segment));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[7; 5], writer.end).unwrap();
        let other = tables();
        let (_, none) = PayloadLog::open(dir.path(), &other).unwrap();
        assert!(none.is_none());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            first.offset + HEADER as u64 + 2 + 5,
            "nothing cut"
        );
        assert_eq!(keys(&conn, "deliveries", "key"), ["first"]);
        let second = keep(&conn, &mut writer, "second", b"{\"b\":2}");
        assert_eq!(log.read(second).unwrap(), b"{\"b\":2}");
        drop(writer);
        let (_, again) = PayloadLog::open(dir.path(), &other).unwrap();
        assert!(again.is_some(), "the lock goes with the writer");
    }
}
