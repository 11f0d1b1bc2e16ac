//! Outbound webhooks on the AWS adapters, against moto: endpoints, streams, deliveries and
//! attempts in DynamoDB, the dispatch and deliveries queues on SQS, endpoint secrets sealed by
//! KMS, owner mail through SES. Register → test event → publish → delivered; a receiver that
//! keeps failing → dead-lettered after every attempt; rotation; org isolation.

use hookline_e2e::outbound::{short_settings, OutboundServer, Receiver};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_delivery_runs_on_dynamodb_sqs_kms_and_ses() {
    let (app, moto) =
        OutboundServer::spawn_on_moto(short_settings(2, Duration::from_millis(200))).await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/v1/org",
            Some(&app.manager("org-moto")),
            Some(json!({"owner_email": "owner@moto.example"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A healthy endpoint: the test event, then a published event, both verifiable.
    let good = Receiver::answering(200).await;
    let (ep, secret) = app.endpoint("org-moto", &good.url, &["invoice.paid"]).await;
    let got = good.wait_for(1).await;
    assert_eq!(got[0].json()["type"], "webhook.test");
    let event = app
        .publish("org-moto", "invoice.paid", json!({"invoice": "in_moto"}))
        .await;
    let got = good.wait_for(2).await;
    assert_eq!(got[1].json()["id"], event.as_str());
    assert_eq!(
        got[1].header("x-signature"),
        Some(format!("sha256={}", hmac_hex(&secret, &got[1].body)).as_str())
    );
    assert!(standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got[1].body, &got[1].headers)
        .is_ok());
    let d = app
        .wait_delivery("org-moto", &ep, &event, "delivered")
        .await;
    assert_eq!(d["attempts"], 1);

    // A failing endpoint: one attempt plus two retries, then dead-lettered.
    let bad = Receiver::answering(500).await;
    let (bad_ep, _) = app.endpoint("org-moto", &bad.url, &["lead_won"]).await;
    let lead = app
        .publish("org-moto", "lead_won", json!({"lead": 7}))
        .await;
    let d = app
        .wait_delivery("org-moto", &bad_ep, &lead, "dead_lettered")
        .await;
    assert_eq!(d["attempts"], 3);
    let attempts = app.attempts("org-moto", d["id"].as_str().unwrap()).await;
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a["status_code"] == 500));

    // The owner was told once, through SES (moto keeps what it was sent).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "no mail reached SES");
        // moto's dump can fail while other tests write DynamoDB items at the same moment.
        let Ok(res) = reqwest::get(format!("{}/moto-api/data.json", moto.endpoint)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(data) = res.json::<serde_json::Value>().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let told: Vec<_> = data["ses"]["Message"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                m["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(d["id"].as_str().unwrap()))
            })
            .collect();
        if !told.is_empty() {
            assert_eq!(told.len(), 1, "{told:?}");
            assert_eq!(
                told[0]["destinations"]["ToAddresses"][0],
                "owner@moto.example"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no mail reached SES");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Rotation on KMS: the new secret signs.
    let (status, rotated) = app
        .call(
            Method::POST,
            &format!("/api/v1/endpoints/{ep}/secret/rotate"),
            Some(&app.manager("org-moto")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap();
    app.publish("org-moto", "invoice.paid", json!({})).await;
    let got = good.wait_for(3).await;
    assert!(standardwebhooks::Webhook::new(new)
        .unwrap()
        .verify(&got[2].body, &got[2].headers)
        .is_ok());
    assert!(standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got[2].body, &got[2].headers)
        .is_ok());

    // Another org sees none of it.
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/endpoints/{ep}"),
            Some(&app.manager("org-other")),
            None,
        )
        .await;
    assert_eq!(status, 404);
}
