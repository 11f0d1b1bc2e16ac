//! Telling an org's owner that something needs a person (a dead-lettered delivery, a disabled
//! endpoint): at most once per notice key, and never at the expense of the work that caused
//! it — every failure is logged and reported as [`Told::Failed`], never returned as an error.

use crate::clock::Clock;
use crate::ports::mail::{Mail, Mailer};
use crate::ports::orgs::OrgStore;
use std::sync::Arc;

/// What became of a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// Mailed to the owner now.
    Sent,
    /// This notice was claimed before (by an earlier or a concurrent call): nothing sent.
    AlreadySent,
    /// The org has no owner email: nothing sent, nothing claimed (an owner set later is told
    /// about the next notice with this key).
    NoOwner,
    /// The org store or the mail service failed; logged. A notice claimed before the mail
    /// failed is not sent again: a missed mail beats a retry storm that holds up the work.
    Failed,
}

pub struct Notifier {
    orgs: Arc<dyn OrgStore>,
    mailer: Arc<dyn Mailer>,
    clock: Arc<dyn Clock>,
}

impl Notifier {
    pub fn new(orgs: Arc<dyn OrgStore>, mailer: Arc<dyn Mailer>, clock: Arc<dyn Clock>) -> Self {
        Self {
            orgs,
            mailer,
            clock,
        }
    }

    /// Mail `subject`/`text` to the owner of `org_id`, unless the notice `notice_key` (e.g.
    /// `dead_lettered#dlv_…`) was sent already. Logs name the org and the key, never the
    /// address or the text.
    pub async fn tell_owner(
        &self,
        org_id: &str,
        notice_key: &str,
        subject: &str,
        text: &str,
    ) -> Told {
        let owner = match self.orgs.get_org(org_id).await {
            Ok(profile) => profile.and_then(|p| p.owner_email),
            Err(e) => {
                tracing::warn!(org_id, notice_key, error = %e, "cannot read the org to tell its owner; the notice is dropped");
                return Told::Failed;
            }
        };
        let Some(to) = owner else {
            tracing::info!(
                org_id,
                notice_key,
                "the org has no owner email; nobody to tell"
            );
            return Told::NoOwner;
        };
        match self
            .orgs
            .claim_notice(org_id, notice_key, self.clock.now())
            .await
        {
            Ok(true) => {}
            Ok(false) => return Told::AlreadySent,
            Err(e) => {
                tracing::warn!(org_id, notice_key, error = %e, "cannot claim the notice; it is dropped rather than risk sending it twice");
                return Told::Failed;
            }
        }
        let mail = Mail {
            to,
            subject: subject.to_owned(),
            text: text.to_owned(),
        };
        match self.mailer.send(&mail).await {
            Ok(message_id) => {
                crate::telemetry::mail(true);
                tracing::info!(org_id, notice_key, message_id, "told the org's owner");
                Told::Sent
            }
            Err(e) => {
                crate::telemetry::mail(false);
                tracing::warn!(org_id, notice_key, error = %e, "mailing the org's owner failed; the notice is dropped");
                Told::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::outbound::model::OrgProfile;
    use crate::ports::mail::embedded::Outbox;
    use crate::ports::mail::MailError;
    use crate::ports::orgs::embedded::EmbeddedOrgStore;
    use crate::ports::orgs::OrgStore;
    use crate::ports::sqlite::{Database, Durability};
    use async_trait::async_trait;

    struct Local {
        dir: tempfile::TempDir,
        orgs: Arc<EmbeddedOrgStore>,
        outbox: Outbox,
        clock: Arc<ManualClock>,
    }

    impl Local {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::open(&dir.path().join("data"), Durability::Normal).unwrap();
            Self {
                orgs: Arc::new(EmbeddedOrgStore::new(db)),
                outbox: Outbox::open(&dir.path().join("data")),
                clock: Arc::new(ManualClock::at_unix(1_800_000_000)),
                dir,
            }
        }

        fn notifier(&self) -> Notifier {
            self.notifier_with(Arc::new(self.outbox.clone()))
        }

        fn notifier_with(&self, mailer: Arc<dyn Mailer>) -> Notifier {
            Notifier::new(self.orgs.clone(), mailer, self.clock.clone())
        }

        async fn set_owner(&self, org: &str, email: Option<&str>) {
            let now = self.clock.now();
            let profile = OrgProfile {
                org_id: org.into(),
                name: Some("Acme".into()),
                owner_email: email.map(str::to_owned),
                created_at: now,
                updated_at: now,
            };
            self.orgs.put_org(&profile).await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_owner_is_mailed_once_per_notice() {
        let local = Local::new();
        local.set_owner("org-a", Some("owner@example.com")).await;
        let n = local.notifier();
        let told = n
            .tell_owner(
                "org-a",
                "dead_lettered#dlv_1",
                "A delivery was dead-lettered",
                "Details…",
            )
            .await;
        assert_eq!(told, Told::Sent);
        let sent = local.outbox.list().unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].mail.to, "owner@example.com");
        assert_eq!(sent[0].mail.subject, "A delivery was dead-lettered");
        assert_eq!(sent[0].mail.text, "Details…");

        local.clock.advance(chrono::Duration::hours(1));
        let again = n
            .tell_owner(
                "org-a",
                "dead_lettered#dlv_1",
                "A delivery was dead-lettered",
                "Details…",
            )
            .await;
        assert_eq!(again, Told::AlreadySent);
        assert_eq!(local.outbox.list().unwrap().len(), 1, "no second mail");

        let other = n.tell_owner("org-a", "dead_lettered#dlv_2", "s", "t").await;
        assert_eq!(other, Told::Sent, "another cause is another notice");
        assert_eq!(local.outbox.list().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_send_one_mail() {
        let local = Local::new();
        local.set_owner("org-a", Some("owner@example.com")).await;
        let n = Arc::new(local.notifier());
        let calls = (0..10).map(|_| {
            let n = n.clone();
            tokio::spawn(async move { n.tell_owner("org-a", "disabled#ep_1", "s", "t").await })
        });
        let told: Vec<Told> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(told.iter().filter(|t| **t == Told::Sent).count(), 1);
        assert_eq!(told.iter().filter(|t| **t == Told::AlreadySent).count(), 9);
        assert_eq!(local.outbox.list().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_org_without_an_owner_is_not_mailed_and_a_later_owner_is() {
        let local = Local::new();
        let n = local.notifier();
        assert_eq!(
            n.tell_owner("org-a", "k", "s", "t").await,
            Told::NoOwner,
            "no profile"
        );
        local.set_owner("org-a", None).await;
        assert_eq!(
            n.tell_owner("org-a", "k", "s", "t").await,
            Told::NoOwner,
            "no email"
        );
        assert!(local.outbox.list().unwrap().is_empty());

        local.set_owner("org-a", Some("owner@example.com")).await;
        assert_eq!(n.tell_owner("org-a", "k", "s", "t").await, Told::Sent);
    }

    /// A mail service that is down: the caller-facing contract is what is under test here.
    struct DownMailer;

    #[async_trait]
    impl Mailer for DownMailer {
        async fn send(&self, _mail: &Mail) -> Result<String, MailError> {
            Err(MailError::Unavailable("connection refused".into()))
        }
    }

    #[tokio::test]
    async fn a_mail_failure_is_reported_as_failed_and_never_panics() {
        let local = Local::new();
        local.set_owner("org-a", Some("owner@example.com")).await;
        let n = local.notifier_with(Arc::new(DownMailer));
        assert_eq!(n.tell_owner("org-a", "k", "s", "t").await, Told::Failed);
        // At most once: the claimed notice is not retried, even once mail works again.
        assert_eq!(
            local.notifier().tell_owner("org-a", "k", "s", "t").await,
            Told::AlreadySent
        );
        assert!(local.outbox.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_rejected_owner_address_is_reported_as_failed() {
        let local = Local::new();
        // Stored before validation existed, or by hand: the outbox refuses it.
        local.set_owner("org-a", Some("not an address")).await;
        assert_eq!(
            local.notifier().tell_owner("org-a", "k", "s", "t").await,
            Told::Failed
        );
        assert!(local.outbox.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_org_store_that_cannot_record_the_notice_is_reported_as_failed() {
        let local = Local::new();
        local.set_owner("org-a", Some("owner@example.com")).await;
        // The same data opened read-only: the owner reads, the claim cannot be written.
        let read_only = Database::open_read_only(&local.dir.path().join("data")).unwrap();
        let n = Notifier::new(
            Arc::new(EmbeddedOrgStore::new(read_only)),
            Arc::new(local.outbox.clone()),
            local.clock.clone(),
        );
        assert_eq!(n.tell_owner("org-a", "k", "s", "t").await, Told::Failed);
        assert!(
            local.outbox.list().unwrap().is_empty(),
            "unclaimed, so unsent"
        );
    }
}
