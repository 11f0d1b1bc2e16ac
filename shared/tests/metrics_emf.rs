//! The metrics a Lambda writes after each invocation: CloudWatch Embedded Metric Format lines,
//! as CloudWatch Logs reads them from the function's output. The sample events go through the
//! functions' own handlers (`handle_http`, `handle_sqs`, over the embedded adapters) with the
//! EMF recorder the functions install, and what `flush_metrics` writes is parsed back: the
//! `_aws` block's namespace, metric names, units and dimensions, and the values.
//!
//! Its own test binary: a process has one metrics recorder, here the EMF one.

use hookline::clock::ManualClock;
use hookline::config::Settings;
use hookline::model::Source;
use hookline::ports::sqlite::Durability;
use hookline::providers::ProviderSecrets;
use hookline::runtime::lambda::{flush_metrics, handle_http, handle_sqs, install_metrics};
use hookline::runtime::local::{embedded_app, LOCAL_QUEUE};
use hookline::runtime::App;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The time every sample event was signed at (events/README.md).
const EVENTS_SIGNED_AT: i64 = 1_767_225_600;

fn dev_secrets() -> ProviderSecrets {
    ProviderSecrets::from_lookup(|name| {
        Some(
            match name {
                "GITHUB_WEBHOOK_SECRET" => "dev-github-secret",
                "STRIPE_WEBHOOK_SECRET" => "whsec_dev_stripe_secret",
                _ => return None,
            }
            .to_string(),
        )
    })
}

fn app(dir: &std::path::Path, clock: Arc<dyn hookline::clock::Clock>) -> App {
    let settings = Settings {
        delivery_ttl: Duration::from_secs(3 * 365 * 24 * 3600),
        ..Settings::default()
    };
    embedded_app(
        dir,
        dev_secrets(),
        settings,
        LOCAL_QUEUE,
        Durability::Normal,
        clock,
    )
    .unwrap()
}

fn event(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn invoke(app: &App, source: Source, name: &str) -> u16 {
    let parsed: lambda_http::request::LambdaRequest = serde_json::from_str(&event(name)).unwrap();
    handle_http(&app.pipeline, source, lambda_http::Request::from(parsed))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The EMF lines written since the last flush, each parsed and checked against the format:
/// one namespace, one dimension set whose every name is a member of the line, and every
/// metric named in `_aws` present as a member.
fn flushed() -> Vec<Value> {
    let mut out = Vec::new();
    flush_metrics(&mut out);
    let text = String::from_utf8(out).unwrap();
    text.lines()
        .map(|line| {
            let doc: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line: {e}: {line}"));
            let aws = &doc["_aws"];
            assert!(aws["Timestamp"].as_u64().is_some(), "{line}");
            let directives = aws["CloudWatchMetrics"].as_array().unwrap();
            assert_eq!(directives.len(), 1, "{line}");
            assert_eq!(directives[0]["Namespace"], "HooklineTest", "{line}");
            let sets = directives[0]["Dimensions"].as_array().unwrap();
            assert_eq!(sets.len(), 1, "one dimension set: {line}");
            for name in sets[0].as_array().unwrap() {
                assert!(doc[name.as_str().unwrap()].is_string(), "{line}");
            }
            for metric in directives[0]["Metrics"].as_array().unwrap() {
                assert!(!doc[metric["Name"].as_str().unwrap()].is_null(), "{line}");
            }
            doc
        })
        .collect()
}

/// The dimension names of a line.
fn dimensions(doc: &Value) -> BTreeSet<String> {
    doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect()
}

/// The line whose dimensions are exactly `dims` (name, value) and that carries `metric`.
fn line<'a>(docs: &'a [Value], metric: &str, dims: &[(&str, &str)]) -> &'a Value {
    let want: BTreeSet<String> = dims.iter().map(|(k, _)| k.to_string()).collect();
    docs.iter()
        .find(|d| {
            dimensions(d) == want && dims.iter().all(|(k, v)| d[*k] == *v) && !d[metric].is_null()
        })
        .unwrap_or_else(|| panic!("no {metric} line for {dims:?} in {docs:#?}"))
}

/// The unit `_aws` gives `metric` in `doc`.
fn unit(doc: &Value, metric: &str) -> String {
    doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == metric)
        .and_then(|m| m["Unit"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_functions_metrics_are_embedded_in_its_log_lines_with_only_their_labels_as_dimensions() {
    let env = |name: &str| (name == "HOOKLINE_METRICS_NAMESPACE").then(|| "HooklineTest".into());
    assert!(install_metrics(&env));
    let dir = tempfile::tempdir().unwrap();
    let app = app(
        dir.path(),
        Arc::new(ManualClock::at_unix(EVENTS_SIGNED_AT + 5)),
    );
    // Two invocations of github-webhook: the delivery, then GitHub's redelivery of it.
    assert_eq!(invoke(&app, Source::Github, "github-push.json").await, 202);
    assert_eq!(invoke(&app, Source::Github, "github-push.json").await, 200);
    // stripe-webhook against the real clock: the sample's timestamp is long stale.
    let real = tempfile::tempdir().unwrap();
    let stale = self::app(real.path(), Arc::new(hookline::clock::SystemClock));
    assert_eq!(
        invoke(&stale, Source::Stripe, "stripe-invoice-paid.json").await,
        401
    );

    let docs = flushed();
    let accepted = line(
        &docs,
        "hookline_inbound_deliveries_total",
        &[("source", "github"), ("outcome", "accepted")],
    );
    assert_eq!(accepted["hookline_inbound_deliveries_total"], 1);
    assert_eq!(unit(accepted, "hookline_inbound_deliveries_total"), "Count");
    let duplicate = line(
        &docs,
        "hookline_inbound_deliveries_total",
        &[("source", "github"), ("outcome", "duplicate")],
    );
    assert_eq!(duplicate["hookline_inbound_deliveries_total"], 1);
    let refused = line(
        &docs,
        "hookline_inbound_deliveries_total",
        &[("source", "stripe"), ("outcome", "invalid_signature")],
    );
    assert_eq!(refused["hookline_inbound_deliveries_total"], 1);
    // The alarm's metric has no dimension at all.
    let failures = line(&docs, "hookline_signature_failures_total", &[]);
    assert_eq!(failures["hookline_signature_failures_total"], 1);
    // Each answer's time, as the values CloudWatch takes percentiles of.
    let ingest = line(&docs, "hookline_ingest_seconds", &[("source", "github")]);
    let times = ingest["hookline_ingest_seconds"].as_array().unwrap();
    assert_eq!(times.len(), 2, "{ingest}");
    assert!(times.iter().all(|t| t.as_f64().unwrap() >= 0.0), "{ingest}");
    assert_eq!(unit(ingest, "hookline_ingest_seconds"), "Seconds");
    // Never a function name, an org or a delivery id: only the contract's labels.
    let labels: BTreeSet<&str> = ["source", "outcome", "operation", "action", "type_family"]
        .into_iter()
        .collect();
    for doc in &docs {
        for d in dimensions(doc) {
            assert!(labels.contains(d.as_str()), "dimension {d} in {doc}");
        }
    }

    // The event-worker's invocation: the SQS sample is that push's queue message.
    let sqs: aws_lambda_events::event::sqs::SqsEvent =
        serde_json::from_str(&event("sqs-delivery.json")).unwrap();
    assert!(handle_sqs(&app.worker, sqs)
        .await
        .batch_item_failures
        .is_empty());
    let docs = flushed();
    let processed = line(&docs, "hookline_processing_seconds", &[]);
    let times = processed["hookline_processing_seconds"].as_array().unwrap();
    assert_eq!(times.len(), 1, "{processed}");
    assert!(times[0].as_f64().unwrap() >= 0.0, "{processed}");
    assert!(
        docs.iter()
            .all(|d| d["hookline_inbound_deliveries_total"].is_null()),
        "a flush writes only what was recorded since the last: {docs:#?}"
    );

    // An invocation that recorded nothing writes no metric line.
    assert!(flushed().is_empty());
}
