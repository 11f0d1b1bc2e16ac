//! The floor under the local server's rate on a real-sized delivery: the steps every
//! delivery must take whatever Hookline's design (check its signature, hash it for the
//! record, keep its body on disk, read it back and scan it in the worker), timed alone on
//! this machine. Their sum, plus what the load generator spends per request, bounds the
//! deliveries per second two cores can take.
//!
//! `cargo bench -p hookline-shared --bench floor [-- PAYLOAD [WRK_US_PER_REQUEST]]`: PAYLOAD
//! defaults to octokit's 17 KB `workflow_run`; `infra/load.sh` prints wrk's CPU per request.

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
