//! `hookline outbox`: the mail a local Hookline would have sent (owner notices), read from the
//! data dir's outbox folder; works while `serve` runs, as each message is one whole file.

use anyhow::{bail, Result};
use hookline::ports::mail::embedded::Outbox;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub fn outbox(data_dir: &Path, json: bool) -> Result<ExitCode> {
    if !data_dir.is_dir() {
        bail!(
            "no Hookline data in {} — start `hookline serve --data-dir {}` first",
            data_dir.display(),
            data_dir.display()
        );
    }
    let outbox = Outbox::open(data_dir);
    let sent = outbox.list()?;
    let mut out = std::io::stdout().lock();
    if json {
        for s in &sent {
            let line = serde_json::json!({
                "id": s.id,
                "sent_at": s.sent_at,
                "to": s.mail.to,
                "subject": s.mail.subject,
                "text": s.mail.text,
                "path": s.path,
            });
            writeln!(out, "{line}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if sent.is_empty() {
        writeln!(
            out,
            "No mail yet ({} fills when Hookline tells an org's owner something).",
            outbox.dir().display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{:<21} {:<32} SUBJECT", "SENT", "TO")?;
    for s in &sent {
        writeln!(
            out,
            "{:<21} {:<32} {}",
            s.sent_at.format("%Y-%m-%dT%H:%M:%SZ"),
            s.mail.to,
            s.mail.subject
        )?;
    }
    writeln!(out, "Each message is a file in {}.", outbox.dir().display())?;
    Ok(ExitCode::SUCCESS)
}
