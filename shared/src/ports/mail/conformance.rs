//! The behaviour every [`Mailer`] adapter must have. The outbox and SES (on moto) run these
//! through [`mail_conformance!`](crate::mail_conformance), each test with a way to read back
//! what the adapter sent ([`SentMail`]): the outbox's files, moto's record of SES messages.

use super::{Mail, MailError, Mailer};
use async_trait::async_trait;
use std::sync::Arc;

/// Where a test reads back what a mailer sent.
#[async_trait]
pub trait SentMail: Send + Sync {
    /// The message the mailer sent under `id` (what `send` answered), as the service holds it.
    async fn find(&self, id: &str) -> Option<Mail>;
}

fn mail(subject: &str, text: &str) -> Mail {
    Mail {
        to: "owner@example.com".to_owned(),
        subject: subject.to_owned(),
        text: text.to_owned(),
    }
}

async fn read_back(sent: &dyn SentMail, id: &str) -> Mail {
    sent.find(id)
        .await
        .unwrap_or_else(|| panic!("the message {id} was sent but cannot be read back"))
}

pub async fn a_sent_message_arrives_as_it_was_written(mailer: &dyn Mailer, sent: &dyn SentMail) {
    let m = mail(
        "Delivery dlv_1 was dead-lettered",
        "Hookline gave up on a delivery after 6 attempts.\n\nEndpoint: https://example.com/hook\n",
    );
    let id = mailer.send(&m).await.expect("the message is sent");
    assert!(!id.is_empty(), "the service names the message");
    assert_eq!(read_back(sent, &id).await, m);
}

pub async fn non_ascii_subjects_and_texts_arrive_intact(mailer: &dyn Mailer, sent: &dyn SentMail) {
    let m = Mail {
        to: "zoë.owner@example.com".to_owned(),
        subject: "Zahlung fehlgeschlagen — Ünïcödé ✓ 日本語".to_owned(),
        text: "Grüße aus Köln 🚀\nSecond line — with an em dash.\n  indented\ttabbed\n".to_owned(),
    };
    let id = mailer.send(&m).await.expect("the message is sent");
    assert_eq!(read_back(sent, &id).await, m);
}

pub async fn a_malformed_recipient_is_rejected(mailer: &dyn Mailer, _sent: &dyn SentMail) {
    for to in ["not-an-address", "two@at@example.com", "", "owner@"] {
        let m = Mail {
            to: to.to_owned(),
            ..mail("s", "t")
        };
        match mailer.send(&m).await {
            Err(MailError::Rejected(reason)) => assert!(
                to.is_empty() || !reason.contains(to),
                "the refusal does not quote the address: {reason}"
            ),
            other => panic!("{to:?} should be rejected, got {other:?}"),
        }
    }
}

pub async fn a_subject_with_a_line_break_is_rejected(mailer: &dyn Mailer, _sent: &dyn SentMail) {
    let m = mail("first line\r\nBcc: someone@example.com", "t");
    assert!(matches!(mailer.send(&m).await, Err(MailError::Rejected(_))));
}

pub async fn concurrent_messages_each_arrive_once_under_their_own_id(
    mailer: Arc<dyn Mailer>,
    sent: &dyn SentMail,
) {
    let sends = (0..8).map(|n| {
        let mailer = mailer.clone();
        async move {
            let m = mail(&format!("notice {n}"), &format!("text {n}"));
            (mailer.send(&m).await.expect("the message is sent"), m)
        }
    });
    let done = futures::future::join_all(sends).await;
    let ids: std::collections::HashSet<&String> = done.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 8, "every message has its own id");
    for (id, m) in &done {
        assert_eq!(&read_back(sent, id).await, m);
    }
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression
/// yielding `(guard, Arc<dyn Mailer>, Box<dyn SentMail>)`; the guard lives for the test.
#[macro_export]
macro_rules! mail_conformance {
    ($make:expr) => {
        mod mail_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::mail::conformance as c;

            macro_rules! case {
                ($name:ident, borrowed) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (_guard, mailer, sent) = $make.await;
                        c::$name(&*mailer, &*sent).await;
                    }
                };
                ($name:ident, shared) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (_guard, mailer, sent) = $make.await;
                        c::$name(mailer, &*sent).await;
                    }
                };
            }

            case!(a_sent_message_arrives_as_it_was_written, borrowed);
            case!(non_ascii_subjects_and_texts_arrive_intact, borrowed);
            case!(a_malformed_recipient_is_rejected, borrowed);
            case!(a_subject_with_a_line_break_is_rejected, borrowed);
            case!(
                concurrent_messages_each_arrive_once_under_their_own_id,
                shared
            );
        }
    };
}
