//! The `hookline` subcommands.

use anyhow::{bail, Context, Result};
use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::model::Source;
use hookline::ports::queue::Queue;
use hookline::ports::secrets::env::EnvSecrets;
use hookline::ports::secrets::SecretSource;
use hookline::ports::sqlite::{Database, Durability};
use hookline::ports::store::embedded::EmbeddedStore;
use hookline::ports::store::{DeliveryQuery, DeliveryStore};
use hookline::providers::simulate::{self, Simulation};
use hookline::runtime::local::{
    default_embedded_app, server_authenticator, with_api_rate_limit, with_billing, with_licenses,
    with_outbound, with_repositories, ApiRateLimitConfig, BillingConfig, LicensesConfig,
    OutboundConfig, RepositoriesConfig, Server,
};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

pub async fn serve(
    addr: SocketAddr,
    data_dir: &Path,
    env_file: &Path,
    worker_loops: usize,
) -> Result<ExitCode> {
    hookline::runtime::init_tracing();
    let secrets = EnvSecrets::new(Some(env_file.to_path_buf())).load().await?;
    let mut settings = Settings::from_env()?;
    let configured_base = settings.public_base_url.is_some();
    let base = settings
        .public_base_url
        .get_or_insert_with(|| format!("http://{addr}"))
        .clone();
    let app = default_embedded_app(data_dir, secrets.clone(), settings)
        .with_context(|| format!("opening the data dir {}", data_dir.display()))?;
    // Outbound settings come from the environment, then the env file (OUTBOUND_ALLOW_CIDRS
    // there lets a local receiver such as `hookline listen` be an endpoint).
    let vars = crate::env_file::EnvFile::read(env_file);
    let lookup = |name: &str| vars.var(name);
    // One authenticator for every route group: they accept the same tokens, and a route takes
    // the principal the API rate limit verified instead of verifying the token again.
    let auth = Some(server_authenticator(data_dir, &lookup).map_err(anyhow::Error::msg)?);
    // Billing first: the repository, endpoint and event services ask its plans.
    let mut billing = BillingConfig::from_lookup(&lookup).map_err(anyhow::Error::msg)?;
    billing.auth = auth.clone();
    let app =
        with_billing(app, data_dir, billing, Arc::new(SystemClock)).map_err(anyhow::Error::msg)?;
    let tier_source = app
        .plans
        .as_ref()
        .map(|p| p.source().name())
        .unwrap_or("unlimited");
    let mut outbound = OutboundConfig::from_lookup(&lookup).map_err(anyhow::Error::msg)?;
    outbound.auth = auth.clone();
    let app = with_outbound(app, data_dir, outbound, Arc::new(SystemClock))
        .map_err(anyhow::Error::msg)?;
    // After outbound, so incidents, connections and relayed deliveries are published.
    let mut repositories = RepositoriesConfig::from_lookup(&lookup).map_err(anyhow::Error::msg)?;
    repositories.auth = auth.clone();
    let mut app = with_repositories(app, data_dir, &base, repositories, Arc::new(SystemClock))
        .map_err(anyhow::Error::msg)?;
    // The hook-health check on HOOK_HEALTH_INTERVAL (0 turns it off), as the schedule on AWS.
    app.hook_health = Some(
        hookline::connections::service::health::HealthSettings::from_lookup(&lookup)
            .map_err(anyhow::Error::msg)?,
    );
    // The operator's licence route (LICENSE_PRIVATE_KEY from the environment or the env file).
    let mut licenses = LicensesConfig::from_lookup(&lookup).map_err(anyhow::Error::msg)?;
    licenses.auth = auth.clone();
    let signs_licences = licenses.key.is_some();
    let app = with_licenses(app, data_dir, licenses, Arc::new(SystemClock))
        .map_err(anyhow::Error::msg)?;
    // The per-org API limit (HOOKLINE_API_RATE_LIMIT, 600/min unless set; `off` lifts it).
    let mut rate_limit = ApiRateLimitConfig::from_lookup(&lookup).map_err(anyhow::Error::msg)?;
    rate_limit.auth = auth;
    let rate = rate_limit.rate;
    let app = with_api_rate_limit(app, data_dir, rate_limit, Arc::new(SystemClock))
        .map_err(anyhow::Error::msg)?;
    let server = Server::start(app, addr, worker_loops)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;

    println!(
        "Hookline is running on {} (data in {})",
        server.url(),
        data_dir.display()
    );
    println!("  GET  {}/healthz", server.url());
    println!("  GET  {}/metrics  (Prometheus text)", server.url());
    println!(
        "  GET  {}{}  (every route below, as OpenAPI 3.1)",
        server.url(),
        hookline::api::openapi::PATH
    );
    let configured =
        |s: &Option<hookline::secret::Secret>| if s.is_some() { "set" } else { "NOT SET" };
    for (source, name, secret) in [
        (
            Source::Github,
            "GITHUB_WEBHOOK_SECRET",
            &secrets.github_webhook_secret,
        ),
        (
            Source::Gitlab,
            "GITLAB_WEBHOOK_TOKEN",
            &secrets.gitlab_webhook_token,
        ),
        (
            Source::Jira,
            "JIRA_WEBHOOK_SECRET",
            &secrets.jira_webhook_secret,
        ),
        (
            Source::Stripe,
            "STRIPE_WEBHOOK_SECRET",
            &secrets.stripe_webhook_secret,
        ),
        (
            Source::Twilio,
            "TWILIO_AUTH_TOKEN",
            &secrets.twilio_auth_token,
        ),
        (
            Source::Whatsapp,
            "WHATSAPP_APP_SECRET",
            &secrets.whatsapp_app_secret,
        ),
    ] {
        let method = if source == Source::Whatsapp {
            "GET, POST"
        } else {
            "POST"
        };
        println!(
            "  {method:<9} {}{}  ({source}: {name} {})",
            server.url(),
            source.route(),
            configured(secret)
        );
    }
    println!(
        "  API       {url}/api/v1/repositories/connect, …/connections[/ID[/webhook/status|retry|rotate]]\n            {url}/api/v1/provider-tokens/{{github|gitlab}}, {url}/api/v1/oauth/{{github|gitlab}}/authorize\n            {url}/api/v1/incidents[/ID]   (bearer token: `hookline token --data-dir {dir} --org O --user U --scopes \"repos:read repos:write\"`)",
        url = server.url(),
        dir = data_dir.display()
    );
    println!(
        "  Outbound  {url}/api/v1/endpoints[/ID[/secret|/secret/rotate|/test|/recover]], {url}/api/v1/events, {url}/api/v1/deliveries[/ID[/attempts|/retry]], {url}/api/v1/event-types, {url}/api/v1/org\n            (bearer token: `hookline token --data-dir {dir} --org O --user U --scopes \"webhooks:manage admin\"`; receive with `hookline listen --secret whsec_…`; mail lands in `hookline outbox`)",
        url = server.url(),
        dir = data_dir.display()
    );
    println!(
        "  Licences  POST {url}/api/v1/licenses (LICENSE_PRIVATE_KEY {}; bearer token with --scopes licenses:issue)",
        if signs_licences { "set" } else { "NOT SET: answers 503" },
        url = server.url(),
    );
    println!(
        "  Billing   {url}/api/v1/billing/checkout, {url}/api/v1/billing/portal, {url}/api/v1/billing/entitlements/ORG\n            (tiers from: {tier_source}; STRIPE_SECRET_KEY for Stripe, HOOKLINE_LICENSE for a licence, neither: unlimited)",
        url = server.url(),
    );
    println!(
        "  Limits    {} on the API routes above but licences (HOOKLINE_API_RATE_LIMIT); webhook routes: none",
        match rate {
            Some(rate) => format!("{rate} per org"),
            None => "no rate limit".to_owned(),
        }
    );
    println!(
        "Providers post to {base}<route> (WEBHOOK_BASE_URL{}).",
        if configured_base {
            ""
        } else {
            " not set: using this address"
        }
    );
    println!("Try: hookline send github --url {}{} --secret \"$GITHUB_WEBHOOK_SECRET\" --file events/payloads/github-push.json", server.url(), Source::Github.route());
    println!(
        "Then: hookline deliveries --data-dir {}",
        data_dir.display()
    );

    tokio::signal::ctrl_c().await.ok();
    println!("Stopping…");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn require_data(data_dir: &Path) -> Result<()> {
    if !data_dir.join("hookline.db").exists() {
        bail!(
            "no Hookline data in {} — start `hookline serve --data-dir {}` first",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// The data dir for reading: another process may be serving from it, and a reader never
/// waits for the server's write lock.
fn open_store(data_dir: &Path) -> Result<Database> {
    require_data(data_dir)?;
    Ok(Database::open_read_only(data_dir)?)
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `--since`: an RFC 3339 time, or a span back from now (`90m`, `2h`, `7d`).
pub fn parse_since(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    hookline::outbound::settings::parse_duration(raw)
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| chrono::Utc::now() - d)
        .ok_or_else(|| {
            format!(
                "{raw:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a span (2h, 7d)"
            )
        })
}

pub async fn deliveries(data_dir: &Path, json: bool, query: &DeliveryQuery) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let store = EmbeddedStore::new(open_store(data_dir)?);
    let list = store.list(query).await?;
    // Only a full page may have left some out.
    let left_out = if list.len() >= query.limit {
        store.count(query).await?.saturating_sub(list.len() as u64)
    } else {
        0
    };
    if json {
        for d in &list {
            writeln!(out, "{}", serde_json::to_string(d)?)?;
        }
    } else if list.is_empty() {
        writeln!(out, "No deliveries yet.")?;
    } else {
        writeln!(
            out,
            "{:<9} {:<40} {:<26} {:<10} {:<21} {:<21} ERROR",
            "SOURCE", "DELIVERY ID", "EVENT", "STATUS", "RECEIVED", "PROCESSED"
        )?;
        for d in &list {
            writeln!(
                out,
                "{:<9} {:<40} {:<26} {:<10} {:<21} {:<21} {}",
                d.source.as_str(),
                d.delivery_id,
                d.event_type,
                d.status.as_str(),
                time(Some(d.received_at)),
                time(d.processed_at),
                d.error.as_deref().unwrap_or("")
            )?;
        }
    }
    if left_out > 0 {
        // On stderr with --json, so the output stays one object per line.
        let note = format!(
            "… and {left_out} older deliver{} not shown (the newest {} are). See them with \
             --limit {}, or narrow the list with --since (e.g. 2h or 2026-01-31T12:00:00Z), \
             --status (e.g. failed) or --source.",
            if left_out == 1 { "y" } else { "ies" },
            list.len(),
            list.len() as u64 + left_out,
        );
        if json {
            eprintln!("{note}");
        } else {
            writeln!(out, "{note}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The delivery `raw` names: a log id, `source#delivery-id`, or a provider's delivery id
/// (which must name exactly one delivery among the sources).
async fn find_delivery(store: &EmbeddedStore, raw: &str) -> Result<hookline::model::DeliveryKey> {
    use hookline::model::DeliveryKey;
    if let Some(key) = DeliveryKey::from_log_id(raw) {
        return Ok(key);
    }
    let key = DeliveryKey::from_stored(raw);
    if key.source().is_some() && store.get(&key).await?.is_some() {
        return Ok(key);
    }
    let mut found = Vec::new();
    for source in Source::ALL {
        let key = DeliveryKey::new(source, raw);
        if store.get(&key).await?.is_some() {
            found.push(key);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no delivery {raw:?} in the log (`hookline deliveries` lists them)"),
        _ => bail!(
            "{raw:?} names deliveries from several providers; say which: {}",
            found
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub async fn replay(data_dir: &Path, raw: &str) -> Result<ExitCode> {
    require_data(data_dir)?;
    let settings = Settings::from_env()?;
    let db = Database::open(data_dir, Durability::Full)?;
    let store = Arc::new(EmbeddedStore::new(db.clone()));
    let queue = hookline::ports::queue::embedded::EmbeddedQueue::new(
        db,
        hookline::runtime::local::LOCAL_QUEUE,
    );
    let key = find_delivery(&store, raw).await?;
    let log = hookline::delivery_log::DeliveryLog::new(
        store,
        Arc::new(queue),
        Arc::new(SystemClock),
        &settings,
    );
    match log.replay(None, &key).await {
        Ok(before) => {
            println!(
                "Queued {} {} for replay (attempt {}); `hookline serve --data-dir {}` processes it, \
                 and `hookline deliveries` shows the outcome.",
                before.source,
                before.delivery_id,
                before.attempts + 1,
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(hookline::delivery_log::LogError::NotFound) => {
            bail!("no live delivery {raw:?} in the log (its record may have expired)")
        }
        Err(e) => bail!("{e}"),
    }
}

pub async fn activity(data_dir: &Path, json: bool, limit: usize) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let store = EmbeddedStore::new(open_store(data_dir)?);
    let list = store.list_activities(limit).await?;
    for a in &list {
        if json {
            writeln!(out, "{}", serde_json::to_string(a)?)?;
        } else {
            writeln!(
                out,
                "{} {:<9} {:<24} {:<12} {:<30} {:<16} {}",
                time(Some(a.received_at)),
                a.source.as_str(),
                a.event_type,
                a.action.as_deref().unwrap_or("-"),
                a.repository.as_deref().unwrap_or("-"),
                a.actor.as_deref().unwrap_or("-"),
                a.url.as_deref().unwrap_or("")
            )?;
        }
    }
    if list.is_empty() && !json {
        writeln!(out, "No activity yet.")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn dead_letters(data_dir: &Path, redrive: bool) -> Result<ExitCode> {
    // Reading a dead letter hides it for a while, as on SQS: this one writes.
    require_data(data_dir)?;
    let db = Database::open(data_dir, Durability::Full)?;
    let queue = hookline::ports::queue::embedded::EmbeddedQueue::new(
        db,
        hookline::runtime::local::LOCAL_QUEUE,
    );
    if redrive {
        let mut moved = 0;
        loop {
            let n = queue.redrive(100).await?;
            moved += n;
            if n == 0 {
                break;
            }
        }
        println!("Moved {moved} dead letter(s) back to the queue.");
        return Ok(ExitCode::SUCCESS);
    }
    let dead = queue.receive_dead_letters(10).await?;
    if dead.is_empty() {
        println!("The dead-letter queue is empty.");
    }
    for m in &dead {
        let summary = hookline::model::Envelope::from_message(&m.body).ok();
        match summary {
            Some(e) => println!(
                "{} {} {} {}",
                m.message_id, e.source, e.delivery_id, e.event_type
            ),
            None => println!("{} (unreadable message)", m.message_id),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The options `sign` and `send` share.
#[derive(clap::Args)]
pub struct Signing {
    /// The provider secret (GitLab: the secret token, or a whsec_ signing token).
    #[arg(long, env = "HOOKLINE_SIGNING_SECRET", hide_env_values = true)]
    secret: String,
    /// Where the request goes (required for twilio and send).
    #[arg(long)]
    url: Option<String>,
    /// The payload file (the exact bytes are signed and sent).
    #[arg(long)]
    file: PathBuf,
    /// The event type header (GitHub X-GitHub-Event, GitLab X-Gitlab-Event); guessed if absent.
    #[arg(long)]
    event: Option<String>,
}

fn signed(provider: Source, s: &Signing) -> Result<simulate::SignedRequest> {
    let body =
        std::fs::read(&s.file).with_context(|| format!("cannot read {}", s.file.display()))?;
    if body.is_empty() {
        bail!(
            "{} is empty: providers never send an empty body",
            s.file.display()
        );
    }
    Ok(simulate::sign(&Simulation {
        source: provider,
        secret: &s.secret,
        url: s.url.as_deref(),
        body: &body,
        event: s.event.as_deref(),
        now: chrono::Utc::now(),
        delivery_id: None,
    })?)
}

pub fn sign(provider: Source, s: &Signing) -> Result<ExitCode> {
    let req = signed(provider, s)?;
    if provider == Source::Twilio {
        println!("# POST {}", req.url);
    }
    for (name, value) in &req.headers {
        println!("{name}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn send(provider: Source, s: &Signing) -> Result<ExitCode> {
    if s.url.is_none() {
        bail!(
            "--url is required: where should the webhook go? e.g. http://127.0.0.1:8080{}",
            provider.route()
        );
    }
    let req = signed(provider, s)?;
    let client = reqwest::Client::new();
    let mut builder = client.post(&req.url).body(req.body.clone());
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    let res = builder
        .send()
        .await
        .with_context(|| format!("cannot reach {}", req.url))?;
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    println!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    println!("{text}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
