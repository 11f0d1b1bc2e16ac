//! The whole in-process inbound pipeline — verify → record → enqueue — on the embedded
//! adapters, for signed GitHub deliveries with distinct ids. Batches run concurrently, as
//! they do under load, so group commit can share one fsync between them.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::model::Source;
use hookline::ports::sqlite::Durability;
use hookline::providers::{github, ProviderSecrets};
use hookline::runtime::local::{embedded_app, LOCAL_QUEUE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SECRET: &str = "bench-secret";

fn payload() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/payloads/github-push.json"
    );
    std::fs::read(path).expect("events/payloads/github-push.json")
}

fn request(body: &Bytes, signature: &str, id: u64) -> hookline::http::Request {
    http::Request::post(Source::Github.route())
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", format!("bench-{id}"))
        .header("x-hub-signature-256", signature)
        .body(body.clone())
        .unwrap()
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(payload());
    let signature = github::signature(SECRET.as_bytes(), &body);
    let secrets =
        ProviderSecrets::from_lookup(|n| (n == "GITHUB_WEBHOOK_SECRET").then(|| SECRET.into()));
    let next = AtomicU64::new(0);

    let mut group = c.benchmark_group("pipeline/github-push");
    for (durability, name) in [
        (Durability::Full, "fsync-every-commit"),
        (Durability::Normal, "fsync-at-checkpoint"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let app = embedded_app(
            dir.path(),
            secrets.clone(),
            Settings::default(),
            LOCAL_QUEUE,
            durability,
            Arc::new(SystemClock),
        )
        .unwrap();
        for concurrency in [1u64, 64] {
            group.throughput(Throughput::Elements(concurrency));
            group.bench_with_input(
                BenchmarkId::new(name, concurrency),
                &concurrency,
                |b, &n| {
                    b.iter(|| {
                        rt.block_on(async {
                            let tasks: Vec<_> = (0..n)
                                .map(|_| {
                                    let id = next.fetch_add(1, Ordering::Relaxed);
                                    let pipeline = app.pipeline.clone();
                                    let req = request(&body, &signature, id);
                                    tokio::spawn(async move {
                                        pipeline.handle(Source::Github, req).await
                                    })
                                })
                                .collect();
                            for t in tasks {
                                let res = t.await.unwrap();
                                assert_eq!(res.status(), 202);
                            }
                        })
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
