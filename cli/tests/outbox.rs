//! `hookline outbox` as a user runs it: the mail a local Hookline wrote to a data dir's outbox,
//! listed oldest first, as a table or one JSON object per line.

use hookline::ports::mail::embedded::Outbox;
use hookline::ports::mail::{Mail, Mailer};
use std::path::Path;
use std::process::{Command, Output};

const HOOKLINE: &str = env!("CARGO_BIN_EXE_hookline");

fn run(args: &[&str]) -> Output {
    Command::new(HOOKLINE)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run hookline {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Mail two notices through the embedded mailer, as the local server's notifier does.
fn send_two(data_dir: &Path) -> Vec<String> {
    let outbox = Outbox::open(data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for (to, subject) in [
        ("owner@acme.example", "Delivery dlv_1 was dead-lettered"),
        ("zoë@acme.example", "Endpoint ep_2 was disabled — Grüße"),
    ] {
        let mail = Mail {
            to: to.into(),
            subject: subject.into(),
            text: "What happened, and what to do.\n".into(),
        };
        ids.push(runtime.block_on(outbox.send(&mail)).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    ids
}

#[test]
fn outbox_lists_the_mail_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    send_two(&data);

    let out = run(&["outbox", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("SENT") && lines[0].contains("SUBJECT"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("owner@acme.example")
            && lines[1].ends_with("Delivery dlv_1 was dead-lettered"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("zoë@acme.example")
            && lines[2].ends_with("Endpoint ep_2 was disabled — Grüße"),
        "{stdout}"
    );
}

#[test]
fn outbox_json_prints_one_message_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ids = send_two(&data);

    let out = run(&["outbox", "--data-dir", data.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let messages: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["id"], ids[0].as_str());
    assert_eq!(messages[1]["id"], ids[1].as_str());
    assert_eq!(messages[1]["to"], "zoë@acme.example");
    assert_eq!(messages[0]["text"], "What happened, and what to do.\n");
    let path = messages[0]["path"].as_str().unwrap();
    assert!(std::fs::read_to_string(path)
        .unwrap()
        .contains("Subject: Delivery dlv_1 was dead-lettered\n"));
    assert!(messages[0]["sent_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn an_empty_outbox_says_so_and_a_missing_data_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["outbox", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with("No mail yet"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !dir.path().join("outbox").exists(),
        "listing creates nothing"
    );

    let missing = dir.path().join("nothing-here");
    let out = run(&["outbox", "--data-dir", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nothing-here") && stderr.contains("hookline serve"),
        "{stderr}"
    );
}
