//! The SES mailer and the DynamoDB org store against moto: the mail and org conformance suites
//! over the real SES v2 and DynamoDB wire protocols. Sent mail is read back from moto's own
//! record of it (`/moto-api/data.json`), each org test runs on a fresh table.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test mail_and_orgs_on_moto`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test that needs moto fails, none skips.

use async_trait::async_trait;
use hookline::ports::mail::aws::SesMailer;
use hookline::ports::mail::conformance::SentMail;
use hookline::ports::mail::{Mail, MailError, Mailer};
use hookline::ports::orgs::aws::DynamoOrgStore;
use hookline::ports::orgs::OrgStore;
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::ports::store::aws::create_table;
use std::sync::Arc;

/// The sender's domain, verified in moto as a deployment verifies it in SES.
const SENDER_DOMAIN: &str = "mail.hookline.test";

async fn ses_client() -> aws_sdk_sesv2::Client {
    let config = sdk_config_for(Some(&moto_endpoint())).await;
    aws_sdk_sesv2::Client::new(&config)
}

/// What moto recorded of the messages sent through it, found by message id.
struct MotoSentMail {
    endpoint: String,
}

#[async_trait]
impl SentMail for MotoSentMail {
    async fn find(&self, id: &str) -> Option<Mail> {
        let data = moto_data(&self.endpoint).await;
        let messages = data["ses"]["Message"].as_array()?;
        let m = messages.iter().find(|m| m["id"] == id)?;
        let to = m["destinations"]["ToAddresses"].as_array()?;
        assert_eq!(to.len(), 1, "one recipient per message");
        assert_eq!(
            m["source"],
            format!("notices@{SENDER_DOMAIN}"),
            "sent from HOOKLINE_MAIL_FROM"
        );
        Some(Mail {
            to: to[0].as_str()?.to_owned(),
            subject: m["subject"].as_str()?.to_owned(),
            text: m["body"].as_str()?.to_owned(),
        })
    }
}

async fn fresh_mailer() -> ((), Arc<dyn Mailer>, Box<dyn SentMail>) {
    let client = ses_client().await;
    client
        .create_email_identity()
        .email_identity(SENDER_DOMAIN)
        .send()
        .await
        .expect("verify the sender's domain in moto");
    let mailer = SesMailer::new(client, format!("notices@{SENDER_DOMAIN}"));
    (
        (),
        Arc::new(mailer),
        Box::new(MotoSentMail {
            endpoint: moto_endpoint(),
        }),
    )
}

hookline::mail_conformance!(fresh_mailer());

#[tokio::test]
async fn ses_refuses_an_unverified_sender_as_rejected() {
    let mailer = SesMailer::new(ses_client().await, "someone@unverified.example".to_owned());
    let m = Mail {
        to: "owner@example.com".into(),
        subject: "s".into(),
        text: "t".into(),
    };
    match mailer.send(&m).await {
        Err(MailError::Rejected(reason)) => {
            assert!(!reason.contains("owner@example.com"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_ses_is_unavailable() {
    let config = sdk_config_for(Some("http://127.0.0.1:9")).await;
    let mailer = SesMailer::new(
        aws_sdk_sesv2::Client::new(&config),
        format!("notices@{SENDER_DOMAIN}"),
    );
    let m = Mail {
        to: "owner@example.com".into(),
        subject: "s".into(),
        text: "t".into(),
    };
    assert!(matches!(
        mailer.send(&m).await,
        Err(MailError::Unavailable(_))
    ));
}

async fn fresh_orgs() -> ((), Arc<dyn OrgStore>) {
    let config = sdk_config_for(Some(&moto_endpoint())).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = format!("hookline-orgs-{}", uuid::Uuid::new_v4());
    create_table(&client, &table)
        .await
        .expect("create the test table in moto");
    ((), Arc::new(DynamoOrgStore::new(client, table)))
}

hookline::orgs_conformance!(fresh_orgs());

/// moto's record of everything it holds. Its dump can fail while another test writes
/// DynamoDB items at the same moment (moto answers 500 with a TypeError): ask again.
pub async fn moto_data(endpoint: &str) -> serde_json::Value {
    let mut last = String::new();
    for _ in 0..50 {
        let res = reqwest::get(format!("{endpoint}/moto-api/data.json"))
            .await
            .expect("moto answers");
        if res.status().is_success() {
            if let Ok(data) = res.json().await {
                return data;
            }
        } else {
            last = format!("HTTP {}", res.status());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("moto's /moto-api/data.json never answered JSON ({last})");
}
