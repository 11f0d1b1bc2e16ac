//! `hookline`: run Hookline locally, read its delivery log, and sign or send webhooks the way
//! each provider does.

mod billing;
mod commands;
mod env_file;
mod hooks;
mod license;
mod listen;
mod outbox;
mod token;

// The local server allocates per request on several threads; glibc malloc spent a tenth of
// its CPU in locks and free-list upkeep under load, mimalloc a fraction of that (README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hookline",
    version,
    about = "Hookline: verified, deduped, queued webhooks — locally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every webhook route and the worker on the embedded adapters.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[arg(long, default_value = ".hookline")]
        data_dir: PathBuf,
        /// Secrets not in the environment are read from this file.
        #[arg(long, default_value = ".env")]
        env_file: PathBuf,
        /// Queue pollers of the in-process worker; 0 only accepts deliveries (they wait on
        /// the queue, as on AWS when the worker function is throttled).
        #[arg(long, default_value_t = 2)]
        worker_loops: usize,
    },
    /// List the delivery log (works while `serve` runs on the same data dir).
    Deliveries {
        #[arg(long, default_value = ".hookline")]
        data_dir: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only this provider's deliveries.
        #[arg(long)]
        source: Option<hookline::model::Source>,
        /// Only deliveries in this state: received, queued, processed, failed, skipped.
        #[arg(long)]
        status: Option<hookline::model::DeliveryStatus>,
        /// Only deliveries received since then: an RFC 3339 time, or a span back from now
        /// (`2h`, `7d`).
        #[arg(long, value_parser = commands::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// How many rows to show, newest first; the rest are counted.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Run a stored delivery through the worker again, as a new attempt of the same delivery
    /// (`hookline serve` on the data dir picks it up).
    Replay {
        /// The delivery: its log id (`whd_…`), `source#delivery-id`, or the provider's id.
        delivery_id: String,
        #[arg(long, default_value = ".hookline")]
        data_dir: PathBuf,
    },
    /// List the normalised activity the worker recorded.
    Activity {
        #[arg(long, default_value = ".hookline")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List the mail a local Hookline sent (owner notices), oldest first.
    Outbox {
        #[arg(long, default_value = ".hookline")]
        data_dir: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show the dead-letter queue, or move its messages back to the queue.
    DeadLetters {
        #[arg(long, default_value = ".hookline")]
        data_dir: PathBuf,
        /// Move dead letters back to the queue for another try.
        #[arg(long)]
        redrive: bool,
    },
    /// Print the headers a provider would send with PAYLOAD.
    Sign {
        provider: hookline::model::Source,
        #[command(flatten)]
        signing: commands::Signing,
    },
    /// POST PAYLOAD to URL, signed as the provider would sign it.
    Send {
        provider: hookline::model::Source,
        #[command(flatten)]
        signing: commands::Signing,
    },
    /// Receive Hookline's outbound deliveries locally: verify both signatures, print each one,
    /// optionally forward it.
    Listen(listen::ListenArgs),
    /// Print a bearer token the local server accepts (signed with the data dir's dev key).
    Token(token::TokenArgs),
    /// Offline licences for self-hosted deployments: make a key pair, sign a licence, check one.
    #[command(subcommand)]
    License(license::LicenseCommand),
    /// Billing upkeep: reconcile the data dir's subscriptions with Stripe.
    #[command(subcommand)]
    Billing(billing::BillingCommand),
    /// Repository hooks: check each connected repository's hook on GitHub/GitLab, and repair.
    #[command(subcommand)]
    Hooks(hooks::HooksCommand),
    /// Print the OpenAPI 3.1 document of every route, generated from the handlers
    /// (`hookline openapi > openapi.json` refreshes the repository's copy).
    Openapi,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            addr,
            data_dir,
            env_file,
            worker_loops,
        } => commands::serve(addr, &data_dir, &env_file, worker_loops).await,
        Command::Deliveries {
            data_dir,
            json,
            source,
            status,
            since,
            limit,
        } => {
            let query = hookline::ports::store::DeliveryQuery {
                source,
                status,
                since,
                limit,
            };
            commands::deliveries(&data_dir, json, &query).await
        }
        Command::Replay {
            delivery_id,
            data_dir,
        } => commands::replay(&data_dir, &delivery_id).await,
        Command::Activity {
            data_dir,
            json,
            limit,
        } => commands::activity(&data_dir, json, limit).await,
        Command::Outbox { data_dir, json } => outbox::outbox(&data_dir, json),
        Command::DeadLetters { data_dir, redrive } => {
            commands::dead_letters(&data_dir, redrive).await
        }
        Command::Sign { provider, signing } => commands::sign(provider, &signing),
        Command::Send { provider, signing } => commands::send(provider, &signing).await,
        Command::Listen(args) => listen::listen(&args).await,
        Command::Token(args) => token::token(&args),
        Command::License(command) => license::license(&command),
        Command::Billing(command) => billing::billing(&command).await,
        Command::Hooks(command) => hooks::hooks(&command).await,
        Command::Openapi => {
            use std::io::Write;
            std::io::stdout()
                .write_all(hookline::api::openapi::to_json().as_bytes())
                .map(|()| std::process::ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => code,
        // `hookline deliveries | head` closing the pipe early is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
