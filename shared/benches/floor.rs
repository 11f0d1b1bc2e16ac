//! The floor under the local server's rate on a real-sized delivery: the steps every
//! delivery must take whatever Hookline's design (check its signature, hash it for the
//! record, keep its body on disk, read it back and scan it in the worker), timed alone on
//! this machine. Their sum, plus what the load generator spends per request, bounds the
//! deliveries per second two cores can take.
//!
//! `cargo bench -p hookline-shared --bench floor [-- PAYLOAD [WRK_US_PER_REQUEST]]`: PAYLOAD
//! defaults to octokit's 17 KB `workflow_run`; `infra/load.sh` prints wrk's CPU per request.
//!
//! `cargo bench -p hookline-shared --bench floor -- --outbound [CEILING_PER_S CEILING_US]`: the
//! same for an outbound delivery — the rows no durable record of it can do without (the
//! delivery, created before it is sent, with the indexes the deliveries API lists by, and its
//! attempt), written straight through SQLite in the writer's batches, and its two signatures.
//! The outbound bench prints its ceiling (the plain client's requests/s and CPU per request) to
//! set beside it; the bound is given on the cores the ceiling kept busy and on all of them.

use hookline::model::{sha256_hex, Envelope, Source};
use hookline::providers::github;
use hookline::worker::{activity, Payload};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// Appends per fsync: about what one writer batch holds under load.
const PER_SYNC: usize = 16;
const ROUNDS: usize = 7;

/// This thread's CPU time, user and kernel, in µs.
fn cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0, "clock_gettime");
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

/// The medians over ROUNDS of `n` runs of `step`: (CPU, wall) µs per run. The CPU is this
/// thread's: a sync's wait for the disk is wall time only.
fn time(n: usize, mut step: impl FnMut(usize)) -> (f64, f64) {
    let (mut cpu, mut wall): (Vec<f64>, Vec<f64>) = (0..ROUNDS)
        .map(|r| {
            let (started, cpu) = (Instant::now(), cpu_us());
            for i in 0..n {
                step(r * n + i);
            }
            (
                (cpu_us() - cpu) / n as f64,
                started.elapsed().as_secs_f64() * 1e6 / n as f64,
            )
        })
        .unzip();
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    (cpu[ROUNDS / 2], wall[ROUNDS / 2])
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if std::env::args().any(|a| a == "--outbound") {
        let number = |i: usize| args.get(i).and_then(|a| a.parse::<f64>().ok());
        return outbound::floor(number(0).zip(number(1)));
    }
    let path = args.first().cloned().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/payloads/github-workflow-run-octokit.json"
        )
        .to_owned()
    });
    let wrk_us: Option<f64> = args.get(1).and_then(|a| a.parse().ok());
    // cargo runs a bench in its package's folder: a relative path may name one from the
    // workspace's root, where the command was typed.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let path = match std::path::Path::new(&path).exists() {
        true => path,
        false => format!("{root}/{path}"),
    };
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let n = 2_000;

    let envelope = Envelope::new(
        Source::Github,
        "floor",
        "workflow_run",
        chrono::Utc::now(),
        &body,
    );
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("segment"))
        .unwrap();
    // A fresh file per round, as the payload log starts new segments: its pages are new.
    let segment = (n * body.len()) as u64;

    let steps: Vec<(&str, (f64, f64))> = vec![
        (
            "HMAC-SHA256 of the body (the signature)",
            time(n, |_| {
                black_box(github::signature(b"secret", black_box(&body)));
            }),
        ),
        (
            "SHA-256 of the body (payload_sha256)",
            time(n, |_| {
                black_box(sha256_hex(black_box(&body)));
            }),
        ),
        (
            "appending the body to a file, fdatasync every 16",
            time(n, |i| {
                let at = (i as u64 * body.len() as u64) % segment;
                if at == 0 {
                    log.set_len(0).unwrap();
                }
                log.write_all_at(&body, at).unwrap();
                if i % PER_SYNC == PER_SYNC - 1 {
                    log.sync_data().unwrap();
                }
            }),
        ),
        (
            "reading it back (the worker's message)",
            time(n, |i| {
                let mut buf = vec![0u8; body.len()];
                let at = (i as u64 * body.len() as u64) % segment;
                log.read_exact_at(&mut buf, at).unwrap();
                black_box(buf);
            }),
        ),
        (
            "one pass over the JSON picking the activity's fields",
            time(n, |_| {
                black_box(Payload::parse(body.clone(), activity::fields(&envelope)).unwrap());
            }),
        ),
    ];
    (&log).flush().unwrap();

    println!(
        "floor per delivery, {} B body ({path}); CPU µs (wall µs):",
        body.len()
    );
    for (what, (cpu, wall)) in &steps {
        println!("  {cpu:>6.1} ({wall:>5.1})  {what}");
    }
    let sum: f64 = steps.iter().map(|(_, (cpu, _))| cpu).sum();
    println!("  {sum:>6.1}          together, CPU");
    let total = sum + wrk_us.unwrap_or(0.0);
    match wrk_us {
        Some(w) => println!(
            "with wrk's {w:.1} µs per request: at most {:.0} deliveries/s on 2 cores, \
             before HTTP, SQLite, the queue and the worker's records",
            2e6 / total
        ),
        None => println!(
            "at most {:.0} deliveries/s on 2 cores, before the load generator, HTTP, SQLite, \
             the queue and the worker's records",
            2e6 / total
        ),
    }
}

mod outbound {
    use super::{black_box, time};
    use chrono::{DateTime, Utc};
    use hookline::outbound::model::{
        Attempt, AttemptId, AttemptTrigger, Delivery, DeliveryStatus, EndpointId, Event, EventId,
    };
    use hookline::outbound::signing;
    use hookline::ports::sqlite::{Database, Durability};
    use hookline::secret::Secret;
    use rusqlite::{params, Connection};

    /// Deliveries per writer batch: what one claim takes under load.
    const BATCH: usize = 64;
    const ENDPOINTS: usize = 10;
    /// A WAL checkpoint every this many deliveries, as the checkpointer's 200 ms come round
    /// at ~20k deliveries/s.
    const CHECKPOINT_EVERY: usize = 4_096;

    fn event(at: DateTime<Utc>) -> Event {
        Event {
            id: EventId::generate(),
            org_id: "org_floor".into(),
            event_type: "invoice.paid".into(),
            created_at: at,
            data: serde_json::json!({"invoice_id": "inv_1", "amount": 4200}).into(),
            seq: 1,
        }
    }

    fn attempt(d: &Delivery, at: DateTime<Utc>) -> Attempt {
        Attempt {
            id: AttemptId::generate(),
            delivery_id: d.id.clone(),
            org_id: d.org_id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            number: 1,
            at,
            url: "https://receiver.example.com/hooks".into(),
            status_code: Some(200),
            duration_ms: 1,
            response_body: Some("ok".into()),
            error: None,
            succeeded: true,
            trigger: AttemptTrigger::Scheduled,
        }
    }

    /// One batch: its deliveries created in one commit (durable: the dispatcher's cursor moves
    /// past them only then), then each attempt's row and the delivery's new state in a second
    /// commit (not waited on to reach the disk, as the local store records attempts).
    fn batch(conn: &mut Connection, wal: &std::fs::File, endpoints: &[EndpointId], i: usize) {
        let at = DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64).unwrap();
        let events: Vec<Event> = (0..BATCH / ENDPOINTS + 1).map(|_| event(at)).collect();
        let mut ds: Vec<Delivery> = (0..BATCH)
            .map(|k| Delivery::pending(&endpoints[k % ENDPOINTS], &events[k / ENDPOINTS], at))
            .collect();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO outbound_deliveries (id, org_id, endpoint_id, \
                     event_id, event_type, status, attempts, lease_until, due_at, created_at, \
                     record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9, ?10)",
                )
                .unwrap();
            for d in &ds {
                let ms = d.created_at.timestamp_millis();
                insert
                    .execute(params![
                        d.id.as_str(),
                        d.org_id,
                        d.endpoint_id.as_str(),
                        d.event_id.as_str(),
                        d.event_type,
                        d.status.as_str(),
                        d.attempts,
                        ms,
                        ms,
                        serde_json::to_string(d).unwrap()
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        wal.sync_data().unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO outbound_attempts (delivery_id, number, org_id, record) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .unwrap();
            let mut update = tx
                .prepare_cached(
                    "UPDATE outbound_deliveries SET status = ?2, attempts = ?3, \
                     record = ?4, due_at = NULL WHERE id = ?1",
                )
                .unwrap();
            for d in &mut ds {
                let a = attempt(d, at);
                insert
                    .execute(params![
                        d.id.as_str(),
                        a.number,
                        d.org_id,
                        serde_json::to_string(&a).unwrap()
                    ])
                    .unwrap();
                d.status = DeliveryStatus::Delivered;
                d.attempts = 1;
                d.last_attempt_at = Some(at);
                d.last_status_code = Some(200);
                d.next_attempt_at = None;
                update
                    .execute(params![
                        d.id.as_str(),
                        d.status.as_str(),
                        d.attempts,
                        serde_json::to_string(&*d).unwrap()
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        if (i * BATCH) % CHECKPOINT_EVERY < BATCH {
            conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                .unwrap();
        }
    }

    /// `ceiling`: the plain client's requests/s and CPU µs per request, from the outbound bench.
    pub fn floor(ceiling: Option<(f64, f64)>) {
        let dir = tempfile::tempdir().unwrap();
        // Hookline's own schema and SQLite settings: open the data dir once, then write to
        // its file directly, with none of the writer thread's hand-offs.
        drop(Database::open(dir.path(), Durability::Normal).unwrap());
        let path = dir.path().join("hookline.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.pragma_update(None, "cache_size", -65536).unwrap();
        conn.pragma_update(None, "mmap_size", 1i64 << 30).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        let wal = std::fs::File::open(dir.path().join("hookline.db-wal")).unwrap();
        let endpoints: Vec<EndpointId> = (0..ENDPOINTS).map(|_| EndpointId::generate()).collect();
        let (rows, rows_wall) = time(100, |i| batch(&mut conn, &wal, &endpoints, i));
        let (rows, rows_wall) = (rows / BATCH as f64, rows_wall / BATCH as f64);

        let envelope = br#"{"id":"evt_0123456789abcdefghijkl","type":"invoice.paid","created_at":"2026-12-04T23:00:00Z","data":{"invoice_id":"inv_1","amount":4200}}"#;
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let (sign, sign_wall) = time(20_000, |_| {
            black_box(signing::sign(
                black_box(envelope),
                "evt_0123456789abcdefghijkl",
                1_700_000_000,
                &[&secret],
                "X-Signature",
            ));
        });

        println!(
            "floor per outbound delivery ({} B envelope); CPU µs (wall µs):",
            envelope.len()
        );
        println!(
            "  {rows:>6.1} ({rows_wall:>5.1})  its rows: created (5 index entries, fsynced), \
             an attempt, its new state; {BATCH} per commit"
        );
        println!("  {sign:>6.1} ({sign_wall:>5.1})  signing it both ways (sha256= and Standard Webhooks)");
        let own = rows + sign;
        println!("  {own:>6.1}          together, CPU");
        if let Some((rate, c)) = ceiling {
            // The ceiling keeps only some of the cores busy (its client and receiver wait on
            // each other); Hookline could keep more busy. So two bounds: on the cores the
            // ceiling used, and on every core of the machine busy with nothing else.
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
            let ceiling_cores = rate * c / 1e6;
            let most = cores * 1e6 / (c + own);
            println!(
                "with the plain client's exchange ({c:.1} µs per request, {rate:.0}/s on \
                 {ceiling_cores:.2} cores): at least {:.1} µs per delivery, before publishing, \
                 dispatching, claiming and the deliverer's own work; so at most {:.2}× the \
                 ceiling on the cores it used, and {most:.0} deliveries/s, {:.2}× the ceiling, \
                 with all {cores:.0} cores busy",
                c + own,
                c / (c + own),
                most / rate
            );
        }
    }
}
