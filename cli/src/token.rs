//! `hookline token`: a bearer token the local server accepts, signed with the dev key kept in
//! the data dir (`<data-dir>/jwt-dev.key`, created on first use).

use anyhow::{Context, Result};
use clap::Args;
use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct TokenArgs {
    /// The org (tenant) the token acts for.
    #[arg(long)]
    pub org: String,
    /// The user the token stands for (its `sub`).
    #[arg(long)]
    pub user: String,
    /// Space- or comma-separated scopes: repos:read, repos:write, webhooks:manage, events:write,
    /// admin, licenses:issue (never implied by admin).
    #[arg(long, value_parser = parse_scopes)]
    pub scopes: BTreeSet<Scope>,
    /// How long the token is valid: 3600s, 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    #[arg(long, default_value = ".hookline")]
    pub data_dir: PathBuf,
}

/// Print the token on stdout (alone, for `TOKEN=$(hookline token …)`), and what it is on
/// stderr.
pub fn token(args: &TokenArgs) -> Result<ExitCode> {
    let (token, issuer) = issue(args)?;
    println!("{token}");
    let until = chrono::Utc::now() + chrono::Duration::seconds(args.ttl.as_secs() as i64);
    eprintln!(
        "token for user {} in org {}, scopes [{}], valid until {} (signed with {})",
        args.user.trim(),
        args.org.trim(),
        Scope::join(&args.scopes),
        until.format("%Y-%m-%d %H:%M:%S UTC"),
        issuer.key_path().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(args: &TokenArgs) -> Result<(String, LocalIssuer)> {
    let org = args.org.trim();
    let user = args.user.trim();
    anyhow::ensure!(!org.is_empty(), "--org must not be empty");
    anyhow::ensure!(!user.is_empty(), "--user must not be empty");
    let issuer = LocalIssuer::open(&args.data_dir)
        .with_context(|| format!("opening the dev signing key in {}", args.data_dir.display()))?;
    let token = issuer.issue(&OrgId::new(org), &UserId::new(user), &args.scopes, args.ttl);
    Ok((token, issuer))
}

fn parse_scopes(list: &str) -> Result<BTreeSet<Scope>, String> {
    Scope::parse_list(list).map_err(|e| e.to_string())
}

/// A duration as `3600s`, `30m`, `1h` or `2d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 3600s, 30m, 1h or 2d"))?;
    let unit_secs = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 3600s, 30m, 1h or 2d"
            ))
        }
    };
    let secs = n
        .checked_mul(unit_secs)
        .filter(|s| (1..=366 * 86_400).contains(s))
        .ok_or_else(|| format!("{text:?} must be between 1s and 366d"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_seconds_minutes_hours_and_days() {
        assert_eq!(parse_ttl("3600s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        for bad in [
            "",
            "h",
            "1w",
            "-1h",
            "0s",
            "1.5h",
            "400d",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unknown_scope_is_a_clear_error() {
        let err = parse_scopes("repos:read repos:delete").unwrap_err();
        assert!(err.contains("repos:delete"), "{err}");
        assert!(err.contains("repos:write"), "{err}");
    }

    #[tokio::test]
    async fn the_token_verifies_against_the_data_dir_key() {
        let dir = tempfile::tempdir().unwrap();
        let args = TokenArgs {
            org: "org-1".into(),
            user: "dev".into(),
            scopes: parse_scopes("repos:read,repos:write").unwrap(),
            ttl: Duration::from_secs(60),
            data_dir: dir.path().to_owned(),
        };
        let (token, _) = issue(&args).unwrap();
        assert!(dir.path().join("jwt-dev.key").exists());
        // A later run (the local server) opens the same key and accepts the token.
        let principal = LocalIssuer::open(dir.path())
            .unwrap()
            .verify(&token)
            .await
            .unwrap();
        assert_eq!(principal.org_id.as_str(), "org-1");
        assert_eq!(principal.user_id.as_str(), "dev");
        assert_eq!(principal.scopes, args.scopes);
    }

    #[test]
    fn an_empty_org_or_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let args = TokenArgs {
            org: " ".into(),
            user: "dev".into(),
            scopes: BTreeSet::new(),
            ttl: Duration::from_secs(60),
            data_dir: dir.path().to_owned(),
        };
        assert!(issue(&args).is_err());
    }
}
