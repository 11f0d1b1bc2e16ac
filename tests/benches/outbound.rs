//! Outbound delivery throughput and latency on this machine, with the receiver on the same
//! cores and the ceiling measured beside it in the same run:
//!
//!   cargo bench -p hookline-e2e --bench outbound [-- EVENTS ENDPOINTS IN_FLIGHT PUBLISHERS [DATA]]
//!
//! DATA is a JSON file each event carries as its `data` (e.g.
//! events/payloads/github-workflow-run-octokit.json: what a relayed `github.workflow_run`
//! carries, 17 KB); by default a small invoice. The ceiling's body is the same envelope.
//!
//! 1. ceiling: a plain HTTP client posting pre-signed bodies to the same receiver, as many at
//!    once as Hookline's deliverer sends and 64 at once, and 64 at once again after step 2:
//!    the best of the three;
//! 2. deliveries/s: EVENTS events published (PUBLISHERS at once, default 16) to an org with
//!    ENDPOINTS endpoints, timed from the first publish until the receiver has every delivery (each counted once: the ledger
//!    published × endpoints = received must balance, or the run does not count);
//! 3. publish → delivered latency, p50/p99, measured from when each event was *published*
//!    (scheduled), not when the deliverer got round to it;
//! 4. fan-out: one event to 1,000 endpoints, from publish until all 1,000 have it.
//!
//! Beside each rate it prints the CPU time the process spent per request or delivery (all
//! threads, the receiver's included) and how many cores were busy: this machine's speed
//! drifts by the hour, CPU per delivery much less, and cores left idle point at a wait
//! (the writer thread, the disk) rather than at work.

// The local server's allocator (cli/src/main.rs): measured with glibc's, a fifth of this
// bench's CPU went to malloc and its free-list upkeep, a cost `hookline serve` does not pay.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use hookline::outbound::publish::PublishRequest;
use hookline_e2e::outbound::{short_settings, OutboundServer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A receiver that answers 200 at once and notes when each event id arrived.
struct Sink {
    url: String,
    seen: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

async fn sink() -> Sink {
    use axum::routing::post;
    let seen: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, c) = (seen.clone(), count.clone());
    let app = axum::Router::new().route(
        "/{*path}",
        post(move |headers: http::HeaderMap| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                let at = Instant::now();
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    s.lock().unwrap().entry(id.to_owned()).or_default().push(at);
                }
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Sink { url, seen, count }
}

/// `count` endpoints of `org` at `{base}/{i}` subscribed to `event_type`, with no test event
/// in the way of what is measured: created disabled, then enabled.
async fn enabled_endpoints(
    outbound: &hookline::outbound::Outbound,
    org: &str,
    base: &str,
    count: usize,
    event_type: &str,
) {
    for i in 0..count {
        let (e, _) = outbound
            .endpoints
            .create(
                org,
                hookline::outbound::endpoints::CreateEndpoint {
                    url: format!("{base}/{i}"),
                    event_types: vec![event_type.into()],
                    description: None,
                    signature_header: None,
                    enabled: Some(false),
                    rate_limit_per_second: None,
                },
            )
            .await
            .unwrap();
        outbound
            .endpoints
            .update(
                org,
                &e.id,
                hookline::outbound::endpoints::EndpointPatch {
                    enabled: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
}

/// CPU time this process has used so far, all threads, user and system (`/proc/self/stat`):
/// CPU per delivery moves far less with the machine's hour than deliveries per second do.
fn process_cpu() -> Duration {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// User and system time in a `/proc/…/stat` line, in the kernel's fixed 100 ticks per second.
fn stat_cpu(stat: &str) -> Duration {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let ticks: u64 = after
        .split_whitespace()
        .skip(11) // utime and stime are fields 14 and 15 of the line
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// CPU time so far of this process's threads by name (`/proc/self/task/*/comm`): the SQLite
/// writer (`hookline-db`), its fsync and checkpoint threads, and the runtime's workers. Which
/// thread a cost sits on says what to look at next without a profiler.
fn cpu_by_thread() -> std::collections::BTreeMap<String, Duration> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        *by_name.entry(name.trim().to_owned()).or_default() += stat_cpu(&stat);
    }
    by_name
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The plain client's requests/s, and the CPU each request cost the process (client and
/// receiver together).
async fn ceiling(
    url: &str,
    body: &bytes::Bytes,
    total: usize,
    concurrency: usize,
) -> (f64, Duration) {
    use futures::StreamExt;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let started = Instant::now();
    let cpu_before = process_cpu();
    futures::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            let body = body.clone();
            let url = format!("{url}/ceiling/{i}");
            async move {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", "ceiling")
                    .header("x-signature", "sha256=00")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let cpu = process_cpu().saturating_sub(cpu_before);
    (
        total as f64 / started.elapsed().as_secs_f64(),
        cpu / total as u32,
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let events: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let endpoints: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let in_flight: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(hookline::runtime::local::OUTBOUND_CONCURRENCY);
    let publishers: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(16);
    let data: Option<serde_json::Value> = args.get(4).map(|path| {
        let raw = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
    });
    let ceiling_body = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "id": "evt_ceiling",
            "type": "invoice.paid",
            "created_at": "2026-01-01T00:00:00.000Z",
            "data": data.clone().unwrap_or(serde_json::json!({"invoice": "in_1", "amount": 4200})),
        }))
        .unwrap(),
    );
    println!("envelope: {} bytes", ceiling_body.len());
    let app = OutboundServer::spawn_tuned(
        short_settings(5, Duration::from_secs(60)),
        hookline_e2e::outbound::local_development(),
        in_flight,
        // As `hookline serve` runs: each commit the deliverer waits on reaches the disk.
        hookline::ports::sqlite::Durability::Full,
    )
    .await;
    println!("deliverer: at most {in_flight} attempts in flight");
    let outbound = app.outbound();
    let receiver = sink().await;

    enabled_endpoints(
        outbound,
        "bench",
        &format!("{}/ep", receiver.url),
        endpoints,
        "invoice.paid",
    )
    .await;

    let total = events * endpoints;
    // The ceiling at the deliverer's number at once and at 64, the better of the two: sending
    // more at once can lower the plain client's rate, and the ratio must not gain by that.
    let mut ceiling_rate: f64 = 0.0;
    for at_once in [in_flight, 64] {
        let (rate, cpu) = ceiling(&receiver.url, &ceiling_body, total.min(20_000), at_once).await;
        println!(
            "ceiling: plain client, {at_once} at once: {rate:.0} requests/s, {} µs CPU per request",
            cpu.as_micros()
        );
        ceiling_rate = ceiling_rate.max(rate);
    }
    receiver.count.store(0, std::sync::atomic::Ordering::SeqCst);
    receiver.seen.lock().unwrap().clear();

    // Publishers post concurrently, as an org's services would: one after another, each
    // publish waits for its commit to reach the disk, and the run measured that wait instead
    // of the deliverer.
    let started = Instant::now();
    let cpu_before = process_cpu();
    let threads_before = cpu_by_thread();
    let published: Vec<(String, Instant)> = {
        use futures::StreamExt;
        futures::stream::iter(0..events)
            .map(|n| {
                let data = match &data {
                    Some(data) => data.clone(),
                    None => serde_json::json!({"invoice": format!("in_{n}"), "amount": 4200}),
                };
                async move {
                    let at = Instant::now();
                    let appended = outbound
                        .publisher
                        .publish(
                            "bench",
                            PublishRequest {
                                event_type: "invoice.paid".into(),
                                data,
                                id: None,
                            },
                        )
                        .await
                        .unwrap();
                    (appended.event().id.to_string(), at)
                }
            })
            .buffer_unordered(publishers)
            .collect()
            .await
    };
    let published_at: HashMap<String, Instant> = published.into_iter().collect();
    println!(
        "published {events} events ({publishers} publishers at once) in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while receiver.count.load(std::sync::atomic::Ordering::SeqCst) < total {
        assert!(Instant::now() < deadline, "not every delivery arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let threads: Vec<String> = cpu_by_thread()
        .into_iter()
        .map(|(name, after)| {
            let spent =
                after.saturating_sub(threads_before.get(&name).copied().unwrap_or_default());
            format!("{name} {:.0} µs", spent.as_secs_f64() * 1e6 / total as f64)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = receiver.seen.lock().unwrap().clone();
    let received: usize = seen.values().map(Vec::len).sum();
    assert_eq!(
        received, total,
        "ledger: published × endpoints must equal received (no loss, no duplicate)"
    );
    let mut latencies: Vec<Duration> = seen
        .iter()
        .flat_map(|(id, ats)| {
            let published = published_at[id];
            ats.iter().map(move |at| *at - published)
        })
        .collect();
    latencies.sort();
    let rate = total as f64 / elapsed.as_secs_f64();
    // The ceiling again, after: this machine's speed drifts within minutes, so a ceiling
    // taken only before could make the ratio look better or worse than it is. The ratio
    // uses the best of the three.
    let (after, after_cpu) = ceiling(&receiver.url, &ceiling_body, total.min(20_000), 64).await;
    println!(
        "ceiling after: plain client, 64 at once: {after:.0} requests/s, {} µs CPU per request",
        after_cpu.as_micros()
    );
    ceiling_rate = ceiling_rate.max(after);
    println!(
        "hookline: {events} events × {endpoints} endpoints = {total} deliveries in {:.2} s: {rate:.0} deliveries/s ({:.2}× the ceiling, {ceiling_rate:.0}/s)",
        elapsed.as_secs_f64(),
        rate / ceiling_rate
    );
    println!(
        "CPU per delivery: {:.0} µs (the whole process: publishing, dispatch, the deliverer, the writer thread and the receiver), {:.2} cores busy",
        cpu.as_secs_f64() * 1e6 / total as f64,
        cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    // Threads that started during the run count whole; the runtime's are there from the start.
    println!("CPU per delivery by thread: {}", threads.join(", "));
    println!(
        "publish → delivered: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3
    );

    // Fan-out: one event, 1,000 endpoints of another org.
    enabled_endpoints(
        outbound,
        "fanout",
        &format!("{}/fan", receiver.url),
        1000,
        "meeting.booked",
    )
    .await;
    receiver.count.store(0, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    outbound
        .publisher
        .publish(
            "fanout",
            PublishRequest {
                event_type: "meeting.booked".into(),
                data: serde_json::json!({"at": "10:00"}),
                id: None,
            },
        )
        .await
        .unwrap();
    while receiver.count.load(std::sync::atomic::Ordering::SeqCst) < 1000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "fan-out stalled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "fan-out: one event to 1,000 endpoints, published → all delivered in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
}
