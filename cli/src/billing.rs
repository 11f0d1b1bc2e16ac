//! `hookline billing reconcile`: the runbook's repair step run by hand — list subscriptions
//! from Stripe, repair the drift missed webhooks left in the data dir, apply the events kept
//! for customers linked since. Configured like `serve` (environment, then the env file).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::providers::ProviderSecrets;
use hookline::runtime::local::{default_embedded_app, with_billing, BillingConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum BillingCommand {
    /// Repair each org's subscription from Stripe's list (mails no one), then apply Stripe
    /// events kept for customers that are linked now. Needs STRIPE_SECRET_KEY.
    Reconcile(ReconcileArgs),
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// Only this org's Stripe customer (default: every subscription of the account).
    #[arg(long)]
    pub org: Option<String>,
    #[arg(long, default_value = ".hookline")]
    pub data_dir: PathBuf,
    /// STRIPE_* settings not in the environment are read from this file.
    #[arg(long, default_value = ".env")]
    pub env_file: PathBuf,
}

pub async fn billing(command: &BillingCommand) -> Result<ExitCode> {
    match command {
        BillingCommand::Reconcile(args) => reconcile(args).await,
    }
}

async fn reconcile(args: &ReconcileArgs) -> Result<ExitCode> {
    let vars = crate::env_file::EnvFile::read(&args.env_file);
    let lookup = |name: &str| vars.var(name);
    let config = BillingConfig::from_lookup(&lookup).map_err(anyhow::Error::msg)?;
    if config.stripe.is_none() {
        bail!(
            "billing is not configured: STRIPE_SECRET_KEY is set neither in the environment nor \
             in {} (a self-hosted deployment on a licence has no Stripe to reconcile with)",
            args.env_file.display()
        );
    }
    let org = args.org.as_deref().map(str::trim).filter(|o| !o.is_empty());
    // Only the billing side of a local app is used; the provider secrets do not matter here.
    let app = default_embedded_app(
        &args.data_dir,
        ProviderSecrets::default(),
        Settings::default(),
    )
    .with_context(|| format!("opening the data dir {}", args.data_dir.display()))?;
    let app = with_billing(app, &args.data_dir, config, Arc::new(SystemClock))
        .map_err(anyhow::Error::msg)?;
    let Some(billing) = app.billing.as_ref() else {
        bail!(
            "billing could not be set up over {}",
            args.data_dir.display()
        );
    };
    let done = billing
        .reconcile(org)
        .await
        .context("reconciling with Stripe")?;
    println!(
        "reconciled {} with Stripe: {} subscription(s) seen, {} repaired, {} parked event(s) \
         applied, {} unknown customer(s)",
        org.map(|o| format!("org {o}"))
            .unwrap_or_else(|| "every org".into()),
        done.subscriptions_seen,
        done.repaired,
        done.parked_applied,
        done.unknown_customers
    );
    if org.is_some() && done.subscriptions_seen == 0 {
        println!("  (nothing listed: the org has no Stripe customer yet, or no subscription)");
    }
    if done.unknown_customers > 0 {
        println!(
            "  subscriptions of unknown customers are left alone: set metadata.org_id on the \
             Stripe customer, then run this again"
        );
    }
    Ok(ExitCode::SUCCESS)
}
