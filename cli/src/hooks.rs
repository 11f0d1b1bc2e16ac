//! `hookline hooks check [--repair]`: the hook-health check run by hand against a data dir —
//! read each active connection's hook from GitHub or GitLab and say what is wrong; with
//! `--repair`, put it right as the schedule would (recreate, reactivate, patch back, mark what
//! cannot be repaired, flag silence, ask for pings). Configured like `serve` (environment,
//! then the env file: `GITHUB_API_URL`, `GITLAB_URL`, OAuth apps, `HOOK_SILENCE_ALERT`).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::connections::service::health::{HealthReport, HealthSettings};
use hookline::providers::ProviderSecrets;
use hookline::runtime::local::{default_embedded_app, with_repositories, RepositoriesConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum HooksCommand {
    /// Read every active connection's hook from its provider and report what drifted, was
    /// deleted, or cannot be reached; changes nothing unless --repair is given.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// Make the repairs (recreate, reactivate, patch back, mark failed, flag silence).
    #[arg(long)]
    pub repair: bool,
    #[arg(long, default_value = ".hookline")]
    pub data_dir: PathBuf,
    /// Settings not in the environment are read from this file.
    #[arg(long, default_value = ".env")]
    pub env_file: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn hooks(command: &HooksCommand) -> Result<ExitCode> {
    match command {
        HooksCommand::Check(args) => check(args).await,
    }
}

async fn check(args: &CheckArgs) -> Result<ExitCode> {
    let vars = crate::env_file::EnvFile::read(&args.env_file);
    let lookup = |name: &str| vars.var(name);
    let settings = HealthSettings::from_lookup(&lookup).map_err(anyhow::Error::msg)?;
    // Only the repository side of a local app is used; the provider secrets do not matter.
    let app = default_embedded_app(
        &args.data_dir,
        ProviderSecrets::default(),
        Settings::default(),
    )
    .with_context(|| format!("opening the data dir {}", args.data_dir.display()))?;
    let config = RepositoriesConfig {
        github_api_url: lookup("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into()),
        gitlab_url: lookup("GITLAB_URL").unwrap_or_else(|| "https://gitlab.com".into()),
        auth: None,
        rotation_overlap: Duration::from_secs(3600),
        oauth: Some(hookline::api::oauth::OAuthSettings::from_lookup(lookup)),
    };
    // A recreated hook gets the URL its connection was made with, not this one.
    let base = lookup("WEBHOOK_BASE_URL").unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let app = with_repositories(app, &args.data_dir, &base, config, Arc::new(SystemClock))
        .map_err(anyhow::Error::msg)?;
    let repos = app
        .hooks
        .clone()
        .context("the repository service is not set up")?;
    let report = repos
        .check_hooks(args.repair, &settings)
        .await
        .context("reading the connections")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &HealthReport) {
    println!(
        "checked {} active connection(s): {} healthy, {} recreated, {} reactivated, {} patched, \
         {} failed, {} inactive, {} silent, {} not checked now (provider unavailable); {} ping(s) \
         asked for",
        r.checked,
        r.healthy,
        r.recreated,
        r.reactivated,
        r.patched,
        r.failed,
        r.inactive,
        r.silent,
        r.errors,
        r.pinged
    );
    for f in &r.findings {
        let action = serde_json::to_value(f.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let done = match (r.repair, f.applied) {
            (false, _) => "would be",
            (true, true) => "done",
            (true, false) => "not done",
        };
        println!(
            "  {} {} ({}): {action} [{done}] — {}",
            f.connection_id,
            f.repository_full_name,
            f.provider.as_str(),
            f.detail
        );
    }
    if !r.repair && !r.findings.is_empty() {
        println!("nothing was changed: run `hookline hooks check --repair` to make these changes");
    }
}
