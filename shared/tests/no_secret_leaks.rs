//! Secrets never reach a log line or a response: every log line the pipeline and worker write
//! while accepting, refusing and processing deliveries is captured and searched.

use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::model::Source;
use hookline::ports::sqlite::Durability;
use hookline::providers::simulate::{sign, Simulation};
use hookline::providers::ProviderSecrets;
use hookline::runtime::local::{embedded_app, LOCAL_QUEUE};
use hookline::worker::WorkerMessage;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "s3cr3t-that-must-never-leak";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_log_line_or_response_contains_a_secret() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let secrets = ProviderSecrets::from_lookup(|_| Some(SECRET.to_string()));
    let app = embedded_app(
        dir.path(),
        secrets,
        Settings::default(),
        LOCAL_QUEUE,
        Durability::Normal,
        Arc::new(SystemClock),
    )
    .unwrap();

    let mut responses = Vec::new();
    for source in Source::ALL {
        let body: &[u8] = match source {
            Source::Twilio => b"MessageSid=SM1&MessageStatus=sent",
            Source::Jira => br#"{"webhookEvent":"jira:issue_created"}"#,
            Source::Stripe => br#"{"id":"evt_1","type":"invoice.paid"}"#,
            _ => br#"{"object_kind":"push","object":"whatsapp_business_account","zen":"z"}"#,
        };
        let url = format!("https://hooks.example.com{}", source.route());
        for secret in [SECRET, "wrong-secret"] {
            let signed = sign(&Simulation {
                source,
                secret,
                url: Some(&url),
                body,
                event: None,
                now: chrono::Utc::now(),
                delivery_id: None,
            })
            .unwrap();
            let uri = url::Url::parse(&signed.url).unwrap();
            let mut req = http::Request::post(&uri[url::Position::BeforePath..])
                .header("host", "hooks.example.com");
            for (k, v) in &signed.headers {
                req = req.header(k, v);
            }
            let res = app
                .pipeline
                .handle(source, req.body(bytes::Bytes::from(signed.body)).unwrap())
                .await;
            responses.push(String::from_utf8_lossy(res.body()).into_owned());
        }
    }
    let messages = app.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(
        messages.len(),
        6,
        "every correctly signed delivery was queued: {responses:?}"
    );
    let batch: Vec<_> = messages
        .iter()
        .map(|m| WorkerMessage {
            message_id: m.message_id.clone(),
            body: m.body.clone(),
        })
        .collect();
    assert!(app.worker.process_batch(&batch).await.is_empty());

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("refused a delivery that failed verification"),
        "the refusals were logged"
    );
    assert!(logs.contains("delivery processed"), "processing was logged");
    assert!(!logs.contains(SECRET), "a secret reached the logs");
    for r in &responses {
        assert!(!r.contains(SECRET), "a secret reached a response: {r}");
    }
    // The data files (database, its write-ahead log, the payload log's segments) hold payloads
    // and hashes, never the provider secrets.
    let segments = std::fs::read_dir(dir.path().join("payloads")).unwrap();
    for file in std::fs::read_dir(dir.path()).unwrap().chain(segments) {
        let path = file.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{}",
            path.display()
        );
    }
}
