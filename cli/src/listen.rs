//! `hookline listen`: a local receiver for Hookline's outbound deliveries, the way `stripe
//! listen` shows a developer Stripe's events. It checks each POST with both schemes (the
//! endpoint's `sha256=` header and Standard Webhooks), prints one line, and may forward it.

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hookline::outbound::signing::{is_endpoint_secret, signature_header_name};
use hookline::providers::github::verify_hub_signature;
use hookline::providers::standard_webhooks as sw;
use hookline::secret::Secret;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ListenArgs {
    /// The port to listen on, on 127.0.0.1.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// The endpoint's signing secret (whsec_…), as the API answered it.
    #[arg(long, env = "HOOKLINE_ENDPOINT_SECRET", hide_env_values = true)]
    secret: String,
    /// Forward each verified delivery, body and headers unchanged, to this URL and answer what
    /// it answers.
    #[arg(long)]
    forward_to: Option<String>,
    /// The header the `sha256=` signature comes in (the endpoint's signature_header).
    #[arg(long, default_value = "X-Signature")]
    header: String,
}

struct Listener {
    secret: Secret,
    /// The `sha256=` header: its name as given (for messages) and parsed (for the lookup).
    header: &'static str,
    header_name: axum::http::HeaderName,
    forward_to: Option<reqwest::Url>,
    client: reqwest::Client,
}

/// Headers that describe one hop and must not be forwarded as they came.
const HOP_BY_HOP: [&str; 9] = [
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

pub async fn listen(args: &ListenArgs) -> Result<ExitCode> {
    let header_name = signature_header_name(&args.header).map_err(anyhow::Error::msg)?;
    let forward_to = args
        .forward_to
        .as_deref()
        .map(|raw| reqwest::Url::parse(raw).with_context(|| format!("--forward-to {raw:?}")))
        .transpose()?;
    let client = reqwest::Client::builder()
        // What the target answered, redirect included, is what the sender sees.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let listener = Arc::new(Listener {
        secret: Secret::new(args.secret.trim()),
        // Leaked once per process: the verifier names the header in its errors.
        header: Box::leak(args.header.trim().to_owned().into_boxed_str()),
        header_name,
        forward_to,
        client,
    });

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let socket = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(listener.clone());

    if !is_endpoint_secret(listener.secret.expose()) {
        eprintln!(
            "warning: the secret is not whsec_<base64> of 24+ bytes: Standard Webhooks \
             signatures will not verify"
        );
    }
    println!(
        "Listening on http://{addr} — verifying {} (sha256=) and Standard Webhooks",
        listener.header
    );
    if let Some(target) = &listener.forward_to {
        println!("Forwarding verified deliveries to {target}");
    }
    println!("Ctrl-C to stop.");

    axum::serve(socket, app)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// What one scheme said about a delivery, as printed.
fn verdict(result: &std::result::Result<(), hookline::providers::VerifyError>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    }
}

/// Text from the request, printable on one terminal line.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(120).collect()
}

async fn receive(
    State(listener): State<Arc<Listener>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST deliveries here\n").into_response();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let sha256 = verify_hub_signature(
        listener.header,
        listener.secret.as_bytes(),
        &body,
        headers
            .get(&listener.header_name)
            .and_then(|v| v.to_str().ok()),
    );
    let standard = sw::verify(
        listener.secret.expose(),
        header(sw::ID_HEADER),
        header(sw::TIMESTAMP_HEADER),
        &body,
        header(sw::SIGNATURE_HEADER),
        chrono::Utc::now(),
        sw::TOLERANCE_SECS,
    );
    let verified = sha256.is_ok() || standard.is_ok();

    let (response, answered) = if !verified {
        let text = format!(
            "signature verification failed: sha256: {}; standard-webhooks: {}\n",
            verdict(&sha256),
            verdict(&standard)
        );
        (
            (StatusCode::UNAUTHORIZED, text).into_response(),
            "401".to_owned(),
        )
    } else if let Some(target) = &listener.forward_to {
        let response = forward(&listener.client, target, &headers, body.clone()).await;
        let answered = format!("{} from {target}", response.status().as_u16());
        (response, answered)
    } else {
        (StatusCode::OK.into_response(), "200".to_owned())
    };

    let event_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(printable))
        .unwrap_or_else(|| "-".to_owned());
    println!(
        "{}  {}  {}  sha256: {}  standard-webhooks: {}  → {answered}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        header(sw::ID_HEADER)
            .map(printable)
            .as_deref()
            .unwrap_or("-"),
        event_type,
        verdict(&sha256),
        verdict(&standard),
    );
    response
}

/// POST the exact body and headers to the target and hand back its answer.
async fn forward(
    client: &reqwest::Client,
    target: &reqwest::Url,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut outgoing = reqwest::header::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            outgoing.append(name.clone(), value.clone());
        }
    }
    let answer = match client
        .post(target.clone())
        .headers(outgoing)
        .body(body)
        .send()
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|c| c.to_string())
                .unwrap_or_else(|| e.to_string());
            return (
                StatusCode::BAD_GATEWAY,
                format!("cannot reach {target}: {cause}\n"),
            )
                .into_response();
        }
    };
    let status = answer.status();
    let content_type = answer.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let text = answer.bytes().await.unwrap_or_default();
    let mut response = (status, text).into_response();
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, content_type);
    }
    response
}
