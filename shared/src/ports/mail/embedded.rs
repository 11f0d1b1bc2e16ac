//! The embedded mailer: an outbox folder (`<data_dir>/outbox/`) with one file per message, so a
//! developer running Hookline locally can read what it would have mailed, and `hookline outbox`
//! can list it. Nothing leaves the machine.
//!
//! Each file is a small mail-like text (`Date`, `To`, `Subject`, `Content-Type` headers, a
//! blank line, then the text, UTF-8 throughout) rather than JSON: `cat` shows it as the person
//! would read it, with the text's line breaks intact. Names start with the UTC send time
//! (`20261202T042547.123456Z-<random>.eml`), so sorting by name sorts by time; each file is
//! written beside its final name and renamed into place, so a reader never sees half of one.

use super::{check, Mail, MailError, Mailer};
use crate::clock::{Clock, SystemClock};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The outbox folder's name inside the data dir.
pub const OUTBOX_DIR: &str = "outbox";
const EXTENSION: &str = "eml";

/// One message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The file name without its extension; what [`Mailer::send`] answered.
    pub id: String,
    pub path: PathBuf,
    pub mail: Mail,
    pub sent_at: DateTime<Utc>,
}

/// The embedded adapter of [`Mailer`].
#[derive(Clone)]
pub struct Outbox {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("dir", &self.dir).finish()
    }
}

impl Outbox {
    /// The outbox of `data_dir`. The folder is made by the first message, so opening one to
    /// list it (`hookline outbox`) never creates anything.
    pub fn open(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(OUTBOX_DIR),
            clock: Arc::new(SystemClock),
        }
    }

    /// Stamp messages with `clock`'s time.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every message, oldest first (newest last). An outbox nothing was sent to yet is empty;
    /// a file that does not read as a message is left out with a warning naming it.
    pub fn list(&self) -> Result<Vec<Sent>, MailError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("reading", &self.dir, &e)),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| io_error("reading", &self.dir, &e))?
                .path();
            if path.extension().and_then(|e| e.to_str()) == Some(EXTENSION) {
                paths.push(path);
            }
        }
        paths.sort();
        let mut sent = Vec::with_capacity(paths.len());
        for path in paths {
            match read_message(&path) {
                Ok(s) => sent.push(s),
                Err(reason) => {
                    tracing::warn!(file = %path.display(), reason, "skipping an unreadable outbox file")
                }
            }
        }
        Ok(sent)
    }
}

#[async_trait]
impl Mailer for Outbox {
    async fn send(&self, mail: &Mail) -> Result<String, MailError> {
        check(mail)?;
        let at = self.clock.now();
        let random = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("{}-{}", at.format("%Y%m%dT%H%M%S%.6fZ"), &random[..12]);
        let path = self.dir.join(format!("{id}.{EXTENSION}"));
        let partial = self.dir.join(format!(".{id}.partial"));
        let content = render(mail, at);
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| io_error("creating", &self.dir, &e))?;
        tokio::fs::write(&partial, content)
            .await
            .map_err(|e| io_error("writing", &partial, &e))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| io_error("renaming", &partial, &e))?;
        Ok(id)
    }
}

fn io_error(doing: &str, path: &Path, e: &std::io::Error) -> MailError {
    MailError::Unavailable(format!("{doing} the outbox at {}: {e}", path.display()))
}

fn render(mail: &Mail, at: DateTime<Utc>) -> String {
    format!(
        "Date: {}\nTo: {}\nSubject: {}\nContent-Type: text/plain; charset=utf-8\n\n{}",
        at.to_rfc3339_opts(SecondsFormat::Micros, true),
        mail.to,
        mail.subject,
        mail.text
    )
}

/// A message file read back; the error says what is wrong without quoting the file.
fn read_message(path: &Path) -> Result<Sent, &'static str> {
    let content = std::fs::read_to_string(path).map_err(|_| "not readable as UTF-8 text")?;
    let (head, text) = content
        .split_once("\n\n")
        .ok_or("no blank line after the headers")?;
    let (mut date, mut to, mut subject) = (None, None, None);
    for line in head.lines() {
        let (name, value) = line.split_once(": ").ok_or("a header line without `: `")?;
        match name {
            "Date" => date = Some(value),
            "To" => to = Some(value),
            "Subject" => subject = Some(value),
            _ => {}
        }
    }
    let sent_at = DateTime::parse_from_rfc3339(date.ok_or("no Date header")?)
        .map_err(|_| "a Date header that is not RFC 3339")?
        .with_timezone(&Utc);
    let id = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("a file name that is not UTF-8")?
        .to_owned();
    Ok(Sent {
        id,
        path: path.to_path_buf(),
        mail: Mail {
            to: to.ok_or("no To header")?.to_owned(),
            subject: subject.ok_or("no Subject header")?.to_owned(),
            text: text.to_owned(),
        },
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::ports::mail::conformance::SentMail;

    /// The outbox read back: the message filed under the id `send` answered.
    struct OutboxReader(Outbox);

    #[async_trait]
    impl SentMail for OutboxReader {
        async fn find(&self, id: &str) -> Option<Mail> {
            let sent = self.0.list().expect("the outbox lists");
            sent.into_iter().find(|s| s.id == id).map(|s| s.mail)
        }
    }

    async fn fresh() -> (tempfile::TempDir, Arc<dyn Mailer>, Box<dyn SentMail>) {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path());
        (
            dir,
            Arc::new(outbox.clone()),
            Box::new(OutboxReader(outbox)),
        )
    }

    crate::mail_conformance!(fresh());

    #[tokio::test]
    async fn the_outbox_lists_messages_newest_last_with_their_send_time() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_800_000_000));
        let outbox = Outbox::open(dir.path()).with_clock(clock.clone());
        assert!(outbox.list().unwrap().is_empty(), "nothing sent yet");
        assert!(!outbox.dir().exists(), "listing creates nothing");
        let mut ids = Vec::new();
        for n in 0..3 {
            let mail = Mail {
                to: "owner@example.com".into(),
                subject: format!("notice {n}"),
                text: "line one\n\nline three\n".into(),
            };
            ids.push(outbox.send(&mail).await.unwrap());
            clock.advance(chrono::Duration::seconds(61));
        }
        let listed = outbox.list().unwrap();
        assert_eq!(
            listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
            ids.iter().collect::<Vec<_>>()
        );
        assert_eq!(listed[2].mail.subject, "notice 2");
        assert_eq!(listed[2].mail.text, "line one\n\nline three\n");
        assert_eq!(listed[0].sent_at.timestamp(), 1_800_000_000);
        assert_eq!(listed[2].sent_at.timestamp(), 1_800_000_122);
        let raw = std::fs::read_to_string(&listed[0].path).unwrap();
        assert!(
            raw.starts_with(
                "Date: 2027-01-15T08:00:00.000000Z\nTo: owner@example.com\nSubject: notice 0\n"
            ),
            "a person can read the file: {raw}"
        );
    }

    #[tokio::test]
    async fn stray_files_in_the_outbox_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path());
        let id = outbox
            .send(&Mail {
                to: "owner@example.com".into(),
                subject: "kept".into(),
                text: "t".into(),
            })
            .await
            .unwrap();
        std::fs::write(outbox.dir().join("notes.txt"), "not mail").unwrap();
        std::fs::write(outbox.dir().join("0-broken.eml"), "no headers here").unwrap();
        let listed = outbox.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, id);
    }
}
