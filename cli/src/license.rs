//! `hookline license keygen | issue | verify`: the operator's offline licence tools. Nothing
//! here talks to a server: a key pair is made, a licence signed and a licence checked on this
//! machine alone.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use hookline::billing::licence::{
    Licence, LicenceClaims, LicenceKey, LicenceRequest, LicenceVerifier, DEFAULT_ISSUER,
};
use hookline::billing::tiers::{Tier, TierTable};
use std::io::Read;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum LicenseCommand {
    /// Print a new key pair: LICENSE_PRIVATE_KEY=… (keep it secret: it mints licences) and
    /// LICENSE_PUBLIC_KEY=… (give it to self-hosted customers).
    Keygen,
    /// Sign a licence with LICENSE_PRIVATE_KEY and print it.
    Issue(IssueArgs),
    /// Check a licence with the public key alone; print its claims as JSON (exit 0) or why it
    /// is refused (exit 1).
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct IssueArgs {
    /// The org the licence is for (its `sub`).
    #[arg(long)]
    pub org: String,
    /// free, team or enterprise; the licence carries that tier's features and limits
    /// (HOOKLINE_TIERS overrides the defaults).
    #[arg(long, default_value = "team")]
    pub tier: Tier,
    #[arg(long, default_value_t = 10)]
    pub seats: u32,
    /// When it expires (RFC 3339, e.g. 2027-01-31T00:00:00Z).
    #[arg(long, conflicts_with = "days")]
    pub expires_at: Option<DateTime<Utc>>,
    /// How many days from now it lasts (default 365).
    #[arg(long)]
    pub days: Option<u32>,
    /// The signing key (base64 seed or PKCS#8 DER); by default LICENSE_PRIVATE_KEY.
    #[arg(long, env = "LICENSE_PRIVATE_KEY", hide_env_values = true)]
    pub private_key: Option<String>,
    /// The licence's `iss`.
    #[arg(long, env = "LICENSE_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The operator's public key (base64 of the raw 32 bytes or of an SPKI DER).
    #[arg(long, env = "LICENSE_PUBLIC_KEY")]
    pub public_key: String,
    /// The `iss` to accept.
    #[arg(long, env = "LICENSE_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,
    /// The licence; read from stdin when absent.
    pub token: Option<String>,
}

pub fn license(command: &LicenseCommand) -> Result<ExitCode> {
    match command {
        LicenseCommand::Keygen => {
            print!("{}", keygen(&LicenceKey::generate()));
            Ok(ExitCode::SUCCESS)
        }
        LicenseCommand::Issue(args) => {
            let licence = issue(args, Utc::now())?;
            println!("{}", licence.licence);
            let c = &licence.claims;
            eprintln!(
                "licence {} for org {}: {} tier, {} seats, valid until {}",
                c.jti,
                c.sub,
                c.tier,
                c.seats,
                c.expires_at().format("%Y-%m-%d %H:%M:%S UTC")
            );
            Ok(ExitCode::SUCCESS)
        }
        LicenseCommand::Verify(args) => {
            let token = match &args.token {
                Some(token) => token.clone(),
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading the licence from stdin")?;
                    text
                }
            };
            match verify(args, &token, Utc::now())? {
                Ok(claims) => {
                    println!("{}", serde_json::to_string_pretty(&claims)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(reason) => {
                    eprintln!("licence refused: {reason}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// The two lines `keygen` prints, ready for a `.env` file.
pub fn keygen(key: &LicenceKey) -> String {
    format!(
        "LICENSE_PRIVATE_KEY={}\nLICENSE_PUBLIC_KEY={}\n",
        key.to_base64().as_str(),
        key.public_key_base64()
    )
}

/// Sign the licence `args` describe, issued `now`.
pub fn issue(args: &IssueArgs, now: DateTime<Utc>) -> Result<Licence> {
    let text = args.private_key.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "no signing key: set LICENSE_PRIVATE_KEY or pass --private-key \
             (`hookline license keygen` makes one)"
        )
    })?;
    let key = LicenceKey::from_base64(text)
        .map_err(|e| anyhow::anyhow!("LICENSE_PRIVATE_KEY / --private-key: {e}"))?
        .with_issuer(args.issuer.trim());
    let expires_at = match (args.expires_at, args.days) {
        (Some(at), _) => at,
        (None, days) => now + chrono::Duration::days(i64::from(days.unwrap_or(365))),
    };
    let tiers = TierTable::from_env()?;
    let request = LicenceRequest {
        org_id: args.org.clone(),
        tier: args.tier,
        seats: args.seats,
        expires_at,
    };
    key.issue(&request, tiers.plan(args.tier), now)
        .map_err(|e| anyhow::anyhow!("cannot issue the licence: {e}"))
}

/// The licence's claims, or why it is refused; an error only when the public key is unusable.
pub fn verify(
    args: &VerifyArgs,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Result<LicenceClaims, String>> {
    let verifier = LicenceVerifier::from_base64(&args.public_key)
        .map_err(|e| anyhow::anyhow!("LICENSE_PUBLIC_KEY / --public-key: {e}"))?
        .with_issuer(args.issuer.trim());
    Ok(verifier.verify(token, now).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue_args(private_key: String) -> IssueArgs {
        IssueArgs {
            org: "org-globex".into(),
            tier: Tier::Enterprise,
            seats: 30,
            expires_at: None,
            days: Some(30),
            private_key: Some(private_key),
            issuer: DEFAULT_ISSUER.into(),
        }
    }

    fn keys(lines: &str) -> (String, String) {
        let mut private = None;
        let mut public = None;
        for line in lines.lines() {
            match line.split_once('=') {
                Some(("LICENSE_PRIVATE_KEY", v)) => private = Some(v.to_owned()),
                Some(("LICENSE_PUBLIC_KEY", v)) => public = Some(v.to_owned()),
                _ => panic!("unexpected keygen line {line:?}"),
            }
        }
        (private.unwrap(), public.unwrap())
    }

    #[test]
    fn keygen_then_issue_then_verify_round_trips() {
        let (private, public) = keys(&keygen(&LicenceKey::generate()));
        let now = Utc::now();
        let licence = issue(&issue_args(private), now).unwrap();
        let claims = verify(
            &VerifyArgs {
                public_key: public,
                issuer: DEFAULT_ISSUER.into(),
                token: None,
            },
            &format!("{}\n", licence.licence),
            now,
        )
        .unwrap()
        .unwrap();
        assert_eq!(claims, licence.claims);
        assert_eq!(claims.tier, Tier::Enterprise);
        assert_eq!(claims.exp, (now + chrono::Duration::days(30)).timestamp());
    }

    #[test]
    fn an_expiry_in_the_past_or_a_bad_key_is_refused_with_the_reason() {
        let mut args = issue_args(LicenceKey::generate().to_base64().to_string());
        args.expires_at = Some(Utc::now() - chrono::Duration::days(1));
        let err = issue(&args, Utc::now()).unwrap_err().to_string();
        assert!(err.contains("expires_at must be in the future"), "{err}");
        let err = issue(&issue_args("bm90IGEga2V5".into()), Utc::now())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("LICENSE_PRIVATE_KEY"), "{err}");
        assert!(!err.contains("bm90IGEga2V5"), "{err}");
    }
}
