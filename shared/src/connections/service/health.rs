//! Hooks that repair themselves (issue 10): the hook-health check reads each active
//! connection's repository and hook from the provider and puts right what people changed by
//! hand. Run on a schedule (the `hook-health` function, `hookline serve`) and by
//! `hookline hooks check [--repair]`.
//!
//! - A hook deleted by hand is created again, and one deactivated by hand is switched back
//!   on, each with a fresh secret (the old one stops verifying at once: it may have been seen).
//! - A hook whose URL, events, content type drifted is patched back.
//! - What cannot be repaired — a revoked token, an archived or vanished repository — leaves
//!   the connection `failed` (or `inactive` when archived) with a reason saying what to do.
//! - A hook silent for `HOOK_SILENCE_ALERT` while the repository saw pushes is flagged.
//!
//! After each repair the provider is asked to ping the hook. Without `repair`, the check
//! reports what it would do and changes nothing, here or at the provider.

use super::{new_webhook_secret, ConnectError, Repositories};
use crate::connections::{Connection, RepoProvider, WebhookStatus};
use crate::hooks::{Hook, HookError, HookSpec, Repository};
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// `HOOK_SILENCE_ALERT`'s default: two weeks.
pub const DEFAULT_SILENCE_ALERT: Duration = Duration::from_secs(14 * 24 * 3600);

/// `HOOK_HEALTH_INTERVAL`'s default (the local server's schedule; the template's on AWS).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// How the check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// `HOOK_HEALTH_INTERVAL` (default `1h`; `0` turns the local schedule off).
    pub every: Option<Duration>,
    /// `HOOK_SILENCE_ALERT` (default `14d`): a hook silent this long while its repository saw
    /// pushes is flagged.
    pub silence_alert: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            every: Some(DEFAULT_INTERVAL),
            silence_alert: DEFAULT_SILENCE_ALERT,
        }
    }
}

impl HealthSettings {
    /// From `HOOK_HEALTH_INTERVAL` and `HOOK_SILENCE_ALERT` as `lookup` gives them (durations
    /// such as `30m`, `1h`, `14d`); an error names the variable.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let read = |name: &str| -> Result<Option<Duration>, String> {
            match crate::config::present(lookup(name)) {
                None => Ok(None),
                Some(text) => humantime::parse_duration(text.trim())
                    .map(Some)
                    .map_err(|e| format!("{name}: {e} (e.g. 30m, 1h, 14d)")),
            }
        };
        let every = match read("HOOK_HEALTH_INTERVAL")? {
            None => Some(DEFAULT_INTERVAL),
            Some(d) => (!d.is_zero()).then_some(d),
        };
        let silence_alert = match read("HOOK_SILENCE_ALERT")? {
            None => DEFAULT_SILENCE_ALERT,
            Some(d) if d.is_zero() => {
                return Err("HOOK_SILENCE_ALERT must be longer than 0 (e.g. 14d)".into())
            }
            Some(d) => d,
        };
        Ok(Self {
            every,
            silence_alert,
        })
    }
}

/// Why a finding was not saved: a user's change (rotate, events, disable, disconnect) made
/// while the check ran wins over what the check read before it.
const CHANGED: &str = "the connection changed while it was being checked: nothing was saved \
                       (the change made meanwhile stands), and the next run checks it again";

/// Connections read from the store a page at a time.
const PAGE: usize = 100;

/// Connections checked at once: each check is a few provider calls, mostly waiting.
const CONCURRENCY: usize = 8;

/// What the check found (and, with `repair`, did) for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The hook is as Hookline made it.
    Healthy,
    /// The hook was deleted: created again with a fresh secret.
    Recreated,
    /// The hook was deactivated: switched back on with a fresh secret.
    Reactivated,
    /// Its URL, events or content type drifted: patched back.
    Patched,
    /// Cannot be repaired by Hookline: `webhook_status: failed` with what the user must do.
    Failed,
    /// The repository is archived: `webhook_status: inactive` with what to do.
    Inactive,
    /// Silent for `HOOK_SILENCE_ALERT` while the repository saw pushes: flagged.
    Silent,
    /// The provider or the store could not answer now: nothing changed, the next run retries.
    Error,
}

/// One connection the check did not find healthy.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub connection_id: String,
    pub org_id: String,
    pub provider: RepoProvider,
    pub repository_full_name: String,
    pub action: Action,
    /// What was found, and what was done (or would be, without `repair`).
    pub detail: String,
    /// Whether the change was made (false in a dry run, or when making it failed).
    pub applied: bool,
}

/// The check's summary: counts per outcome, and every connection not found healthy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthReport {
    /// Whether repairs were made, or only reported.
    pub repair: bool,
    /// Active connections read from the provider.
    pub checked: u64,
    pub healthy: u64,
    pub recreated: u64,
    pub reactivated: u64,
    pub patched: u64,
    pub failed: u64,
    pub inactive: u64,
    pub silent: u64,
    pub errors: u64,
    /// Pings asked for (after each repair, and of each silent hook).
    pub pinged: u64,
    pub findings: Vec<Finding>,
}

impl HealthReport {
    /// Repairs made (or, in a dry run, that would be made).
    pub fn repairs(&self) -> u64 {
        self.recreated + self.reactivated + self.patched
    }

    fn count(&mut self, action: Action) {
        let n = match action {
            Action::Healthy => &mut self.healthy,
            Action::Recreated => &mut self.recreated,
            Action::Reactivated => &mut self.reactivated,
            Action::Patched => &mut self.patched,
            Action::Failed => &mut self.failed,
            Action::Inactive => &mut self.inactive,
            Action::Silent => &mut self.silent,
            Action::Error => &mut self.errors,
        };
        *n += 1;
    }
}

/// How the hook differs from what Hookline made.
#[derive(Debug, Default)]
struct Drift(Vec<String>);

/// The events a hook should send, as the provider reports them (GitLab: its `*_events` flags).
fn expected_events(c: &Connection) -> BTreeSet<String> {
    let events = if c.webhook_events.is_empty() {
        Repositories::default_events(c.provider)
    } else {
        c.webhook_events.clone()
    };
    match c.provider {
        RepoProvider::Github => events.into_iter().collect(),
        RepoProvider::Gitlab => events
            .iter()
            .filter_map(|e| crate::hooks::gitlab::event_flag(e).map(str::to_string))
            .collect(),
    }
}

fn drift(c: &Connection, hook: &Hook) -> Drift {
    let mut d = Drift::default();
    if !crate::hooks::same_url(&hook.url, &c.webhook_url) {
        d.0.push(format!(
            "its URL is {} instead of {}",
            hook.url, c.webhook_url
        ));
    }
    let want = expected_events(c);
    let have: BTreeSet<String> = hook.events.iter().cloned().collect();
    if want != have {
        d.0.push(format!(
            "its events are [{}] instead of [{}]",
            have.into_iter().collect::<Vec<_>>().join(", "),
            want.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if c.provider == RepoProvider::Github && hook.content_type.as_deref() != Some("json") {
        d.0.push(format!(
            "its content type is {} instead of json",
            hook.content_type.as_deref().unwrap_or("unset")
        ));
    }
    d
}

/// Whether a push to the repository should have reached the hook.
fn hears_pushes(c: &Connection) -> bool {
    let push = match c.provider {
        RepoProvider::Github => "push",
        RepoProvider::Gitlab => "push_events",
    };
    expected_events(c).contains(push)
}

/// What the provider said about a call, sorted by what the check does about it.
enum Refusal {
    /// The user must act: the connection fails with this reason.
    Unrepairable(String),
    /// Maybe later: nothing changes.
    Transient(String),
}

/// Why a repair could not be made: the provider refused, or the keys or store failed here.
enum RepairError {
    Provider(HookError),
    Here(ConnectError),
}

impl Repositories {
    fn refusal(&self, c: &Connection, e: &HookError) -> Refusal {
        let name = match c.provider {
            RepoProvider::Github => "GitHub",
            RepoProvider::Gitlab => "GitLab",
        };
        let retry = format!(
            "then POST /api/v1/repositories/connections/{}/webhook/retry",
            c.id
        );
        match e {
            _ if e.retryable() => Refusal::Transient(e.reason()),
            HookError::Unauthorized { .. } => Refusal::Unrepairable(format!(
                "{name} no longer accepts the access token of the user who connected this \
                 repository (revoked or expired), so Hookline cannot check or repair its \
                 webhook: reconnect {name} with GET /api/v1/oauth/{p}/authorize or register a \
                 token with PUT /api/v1/provider-tokens/{p}, {retry}",
                p = c.provider.as_str()
            )),
            _ if e.is_gone() => Refusal::Unrepairable(format!(
                "the repository {} is gone from {name} (deleted, renamed or transferred), or the \
                 connected account can no longer see it: disconnect this connection, or give \
                 the account admin access again and {retry}",
                c.repository_full_name
            )),
            _ => Refusal::Unrepairable(format!("{}; {retry}", e.reason())),
        }
    }

    /// Check every org's active connections; with `repair`, put right what can be, mark what
    /// cannot, flag silent hooks, and ask for pings. A store failure stops the run (the
    /// schedule retries it); a provider failure only skips that connection.
    pub async fn check_hooks(
        &self,
        repair: bool,
        settings: &HealthSettings,
    ) -> Result<HealthReport, ConnectError> {
        let mut report = HealthReport {
            repair,
            ..HealthReport::default()
        };
        let mut cursor = None;
        loop {
            let (page, next) = self.store.list_all(PAGE, cursor).await?;
            let active = page.into_iter().filter(|c| {
                c.is_enabled && c.webhook_status == WebhookStatus::Active && c.webhook_id.is_some()
            });
            let checks = futures::stream::iter(
                active.map(|c| self.check_one(c, repair, settings.silence_alert)),
            )
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            for (action, pinged, finding) in checks {
                report.checked += 1;
                report.pinged += pinged;
                report.count(action);
                report.findings.extend(finding);
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        tracing::info!(
            repair,
            checked = report.checked,
            healthy = report.healthy,
            recreated = report.recreated,
            reactivated = report.reactivated,
            patched = report.patched,
            failed = report.failed,
            inactive = report.inactive,
            silent = report.silent,
            errors = report.errors,
            pinged = report.pinged,
            "hook health check"
        );
        Ok(report)
    }

    /// Check one connection: what was found, the pings asked for, and the finding to report.
    async fn check_one(
        &self,
        mut c: Connection,
        repair: bool,
        silence_alert: Duration,
    ) -> (Action, u64, Option<Finding>) {
        let mut pinged = 0;
        let (action, detail, applied) = self
            .examine(&mut c, repair, silence_alert, &mut pinged)
            .await;
        if action == Action::Healthy {
            return (action, pinged, None);
        }
        if matches!(
            action,
            Action::Recreated | Action::Reactivated | Action::Patched
        ) {
            tracing::info!(connection_id = %c.id, org_id = %c.org_id, repository = %c.repository_full_name, action = ?action, applied, detail = %detail, "hook health: repair");
        } else {
            tracing::warn!(connection_id = %c.id, org_id = %c.org_id, repository = %c.repository_full_name, action = ?action, applied, detail = %detail, "hook health: needs attention");
        }
        let finding = Finding {
            connection_id: c.id.to_string(),
            org_id: c.org_id.clone(),
            provider: c.provider,
            repository_full_name: c.repository_full_name.clone(),
            action,
            detail,
            applied,
        };
        (action, pinged, Some(finding))
    }

    /// What is wrong with `c` and, with `repair`, the change made and saved.
    async fn examine(
        &self,
        c: &mut Connection,
        repair: bool,
        silence_alert: Duration,
        pinged: &mut u64,
    ) -> (Action, String, bool) {
        // Every write below is conditional on this: a user's change made meanwhile wins.
        let read_at = c.updated_at;
        let token = match self.tokens.token(&c.org_id, &c.user_id, c.provider).await {
            Ok(Some(token)) => token,
            Ok(None) => {
                let reason = format!(
                    "no {p} access token for the user who connected this repository, so Hookline \
                     cannot check or repair its webhook: authorize with GET \
                     /api/v1/oauth/{p}/authorize or register one with PUT \
                     /api/v1/provider-tokens/{p}, then POST \
                     /api/v1/repositories/connections/{id}/webhook/retry",
                    p = c.provider.as_str(),
                    id = c.id
                );
                return self
                    .mark(c, WebhookStatus::Failed, reason, repair, read_at)
                    .await;
            }
            // An OAuth token that could not be renewed: the reason says to connect again.
            Err(ConnectError::Provider(reason)) => {
                return self
                    .mark(c, WebhookStatus::Failed, reason, repair, read_at)
                    .await;
            }
            Err(e) => return (Action::Error, e.to_string(), false),
        };
        let hooks = self.hooks(c.provider);
        let repo = match hooks.repository(&token, &c.repository_full_name).await {
            Ok(r) => r,
            Err(e) => return self.refused(c, &e, repair, read_at).await,
        };
        if repo.archived {
            let reason = format!(
                "the repository {} is archived, so it sends no events and its webhook cannot be \
                 changed: unarchive it, then POST \
                 /api/v1/repositories/connections/{}/webhook/retry",
                c.repository_full_name, c.id
            );
            return self
                .mark(c, WebhookStatus::Inactive, reason, repair, read_at)
                .await;
        }
        let hook_id = c.webhook_id.clone().unwrap_or_default();
        let hook = match hooks
            .get_hook(&token, &c.repository_full_name, &hook_id)
            .await
        {
            Ok(hook) => Some(hook),
            // The repository is there (read above): the hook itself was deleted.
            Err(e) if e.is_gone() => None,
            Err(e) => return self.refused(c, &e, repair, read_at).await,
        };
        let (action, detail) = match &hook {
            None => (
                Action::Recreated,
                format!("hook {hook_id} was deleted: a new one is created with a fresh secret"),
            ),
            Some(h) if !h.active => (
                Action::Reactivated,
                format!(
                    "hook {hook_id} was deactivated: it is switched back on with a fresh secret"
                ),
            ),
            Some(h) => {
                let d = drift(c, h);
                if d.0.is_empty() {
                    return self
                        .listen_for_silence(c, &repo, &token, repair, silence_alert, pinged)
                        .await;
                }
                (
                    Action::Patched,
                    format!("hook {hook_id} drifted ({}): patched back", d.0.join("; ")),
                )
            }
        };
        if !repair {
            return (action, detail, false);
        }
        let done = match self.repair(c, action, &token).await {
            Ok(()) => {
                c.health.silent_since = None;
                c.health.alert = None;
                c.health.checked_at = Some(self.clock.now());
                match self.save_checked_then_ping(c, &token, read_at).await {
                    Ok(Some(asked)) => {
                        *pinged += u64::from(asked);
                        (action, detail, true)
                    }
                    Ok(None) => {
                        self.undo(c, action, &token).await;
                        (Action::Error, format!("{detail}, but {CHANGED}"), false)
                    }
                    Err(ConnectError::NotFound) => {
                        self.undo(c, action, &token).await;
                        (
                            Action::Error,
                            format!("{detail}, but the connection was disconnected meanwhile"),
                            false,
                        )
                    }
                    Err(e) => (
                        Action::Error,
                        format!("{detail}, but saving failed: {e}"),
                        false,
                    ),
                }
            }
            Err(RepairError::Here(e)) => (Action::Error, format!("{detail}, but {e}"), false),
            Err(RepairError::Provider(e)) => match self.refusal(c, &e) {
                Refusal::Transient(why) => (Action::Error, format!("{detail}, but {why}"), false),
                Refusal::Unrepairable(reason) => {
                    self.mark(c, WebhookStatus::Failed, reason, repair, read_at)
                        .await
                }
            },
        };
        // Repaired only when the change was made and saved.
        crate::telemetry::hook_operation(
            crate::telemetry::HookOperation::Repair,
            done.0 == action && done.2,
        );
        done
    }

    /// A repair made at the provider whose record could not be saved (the connection changed
    /// or went meanwhile): put the hook back as the stored record has it — delete a hook
    /// created for nothing, push the stored secret and events to one patched or switched on
    /// — so the user's change stands at the provider too. Best effort: the next run checks
    /// again.
    async fn undo(&self, ours: &Connection, action: Action, token: &Secret) {
        let hooks = self.hooks(ours.provider);
        let Some(our_hook) = ours.webhook_id.clone() else {
            return;
        };
        let stored = self.store.get(&ours.org_id, &ours.id).await;
        let result = match (action, stored) {
            // A hook recreated for a connection that no longer names it.
            (Action::Recreated, Ok(stored))
                if stored.as_ref().and_then(|s| s.webhook_id.as_deref())
                    != Some(our_hook.as_str()) =>
            {
                hooks
                    .delete_hook(token, &ours.repository_full_name, &our_hook)
                    .await
                    .map(drop)
                    .map_err(|e| e.reason())
            }
            (Action::Reactivated | Action::Patched, Ok(Some(stored)))
                if stored.webhook_id.as_deref() == Some(our_hook.as_str()) =>
            {
                match self.current_secret(&stored).await {
                    Ok(secret) => {
                        let spec = HookSpec::new(
                            stored.webhook_url.clone(),
                            secret,
                            stored.webhook_events.clone(),
                        );
                        hooks
                            .update_hook(token, &stored.repository_full_name, &our_hook, &spec)
                            .await
                            .map(drop)
                            .map_err(|e| e.reason())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            (_, Err(e)) => Err(e.to_string()),
            _ => Ok(()),
        };
        if let Err(reason) = result {
            tracing::warn!(connection_id = %ours.id, hook_id = %our_hook, reason = %reason, "hook health: could not put the hook back after the connection changed");
        }
    }

    /// [`save_then_ping`](Repositories::save_then_ping), each write conditional on the record
    /// being as it was read at `read_at`: `None` (nothing saved, no ping) when it changed.
    async fn save_checked_then_ping(
        &self,
        c: &mut Connection,
        token: &Secret,
        read_at: DateTime<Utc>,
    ) -> Result<Option<bool>, ConnectError> {
        let asked = self.clock.now();
        c.health.ping_requested_at =
            Some(DateTime::from_timestamp_millis(asked.timestamp_millis()).unwrap_or(asked));
        c.health.ping_error = None;
        if !self.store.update_if_unchanged(c, read_at).await? {
            return Ok(None);
        }
        if self.request_ping(c, token).await {
            return Ok(Some(true));
        }
        // The refusal noted, unless the user changed the connection since.
        self.store.update_if_unchanged(c, c.updated_at).await?;
        Ok(Some(false))
    }

    /// Make the repair `action` names at the provider and on `c` (not saved yet).
    async fn repair(
        &self,
        c: &mut Connection,
        action: Action,
        token: &Secret,
    ) -> Result<(), RepairError> {
        let hooks = self.hooks(c.provider);
        let fresh = matches!(action, Action::Recreated | Action::Reactivated);
        let secret = if fresh {
            new_webhook_secret()
        } else {
            self.current_secret(c).await.map_err(RepairError::Here)?
        };
        let spec = HookSpec::new(
            c.webhook_url.clone(),
            secret.clone(),
            c.webhook_events.clone(),
        );
        let hook_id = c.webhook_id.clone().unwrap_or_default();
        let hook = match action {
            Action::Recreated => {
                hooks
                    .create_hook(token, &c.repository_full_name, &spec)
                    .await
            }
            _ => {
                hooks
                    .update_hook(token, &c.repository_full_name, &hook_id, &spec)
                    .await
            }
        }
        .map_err(RepairError::Provider)?;
        let now = self.clock.now();
        if fresh {
            // The old secret stops verifying at once: whoever touched the hook may have seen it.
            c.secret = Some(self.seal(c, &secret).await.map_err(RepairError::Here)?);
            c.previous_secret = None;
        }
        if action == Action::Recreated {
            c.webhook_id = Some(hook.id);
            c.webhook_created_at = Some(now);
        }
        c.webhook_status = WebhookStatus::Active;
        c.webhook_status_reason = None;
        c.updated_at = now;
        Ok(())
    }

    /// A provider refusal while reading: fail the connection, or leave it for the next run.
    async fn refused(
        &self,
        c: &mut Connection,
        e: &HookError,
        repair: bool,
        read_at: DateTime<Utc>,
    ) -> (Action, String, bool) {
        match self.refusal(c, e) {
            Refusal::Transient(why) => (Action::Error, why, false),
            Refusal::Unrepairable(reason) => {
                self.mark(c, WebhookStatus::Failed, reason, repair, read_at)
                    .await
            }
        }
    }

    /// Set (with `repair`) a status Hookline cannot fix by itself, with its reason.
    async fn mark(
        &self,
        c: &mut Connection,
        status: WebhookStatus,
        reason: String,
        repair: bool,
        read_at: DateTime<Utc>,
    ) -> (Action, String, bool) {
        let action = match status {
            WebhookStatus::Inactive => Action::Inactive,
            _ => Action::Failed,
        };
        if !repair {
            return (action, reason, false);
        }
        c.webhook_status = status;
        c.webhook_status_reason = Some(reason.clone());
        c.updated_at = self.clock.now();
        match self.save(c, read_at).await {
            Ok(true) => (action, reason, true),
            Ok(false) => (Action::Error, format!("{reason}, but {CHANGED}"), false),
            Err(e) => (
                Action::Error,
                format!("{reason} (saving failed: {e})"),
                false,
            ),
        }
    }

    /// A hook as Hookline made it: flag it if it has been silent for `HOOK_SILENCE_ALERT`
    /// while the repository saw pushes (and, with `repair`, ask for a ping to tell a broken
    /// delivery path from a quiet one); clear a flag that no longer holds.
    async fn listen_for_silence(
        &self,
        c: &mut Connection,
        repo: &Repository,
        token: &Secret,
        repair: bool,
        silence_alert: Duration,
        pinged: &mut u64,
    ) -> (Action, String, bool) {
        // Not changed since it was read: its writes below are conditional on this.
        let read_at = c.updated_at;
        let now = self.clock.now();
        let heard = last_heard(c);
        let silence = chrono::Duration::from_std(silence_alert).unwrap_or(chrono::Duration::MAX);
        let silent = match (heard, repo.last_activity_at) {
            (Some(heard), Some(pushed)) => {
                hears_pushes(c) && pushed > heard && now - heard >= silence
            }
            _ => false,
        };
        let was_silent = c.health.silent_since.is_some();
        if !silent {
            if repair {
                c.health.silent_since = None;
                c.health.alert = None;
                // Written only when it changes, or to note the check once in a while.
                let stale = c
                    .health
                    .checked_at
                    .is_none_or(|t| now - t >= chrono::Duration::hours(1));
                if was_silent || stale {
                    match self.save(c, read_at).await {
                        Ok(true) => {}
                        Ok(false) => return (Action::Error, CHANGED.to_string(), false),
                        Err(e) => {
                            return (
                                Action::Error,
                                format!("saving the check failed: {e}"),
                                false,
                            )
                        }
                    }
                }
            }
            return (Action::Healthy, String::new(), repair);
        }
        let heard = heard.unwrap_or(now);
        let name = match c.provider {
            RepoProvider::Github => "GitHub",
            RepoProvider::Gitlab => "GitLab",
        };
        let alert = format!(
            "no delivery from {name} since {} although the repository saw pushes (last at {}): \
             check the hook's recent deliveries in the repository's webhook settings on {name}; \
             Hookline asked {name} to ping it, and last_ping_at shows whether the ping arrived",
            heard.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            repo.last_activity_at
                .unwrap_or(now)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        if !repair {
            return (Action::Silent, alert, false);
        }
        c.health.silent_since = Some(heard);
        c.health.alert = Some(alert.clone());
        c.health.checked_at = Some(now);
        // One ping when the silence is first noticed, not one every run after.
        let saved = if was_silent {
            self.store
                .update_if_unchanged(c, read_at)
                .await
                .map(|written| written.then_some(false))
                .map_err(ConnectError::from)
        } else {
            self.save_checked_then_ping(c, token, read_at).await
        };
        match saved {
            Ok(Some(asked)) => {
                *pinged += u64::from(asked);
                (Action::Silent, alert, true)
            }
            Ok(None) => (Action::Error, format!("{alert}, but {CHANGED}"), false),
            Err(e) => (
                Action::Error,
                format!("{alert} (saving failed: {e})"),
                false,
            ),
        }
    }

    /// Save what the check found, unless the connection changed since it was read at
    /// `read_at`: false then, and the user's change stands.
    async fn save(&self, c: &mut Connection, read_at: DateTime<Utc>) -> Result<bool, ConnectError> {
        c.health.checked_at = Some(self.clock.now());
        Ok(self.store.update_if_unchanged(c, read_at).await?)
    }
}

/// When a check last heard from the hook: its last delivery, ping or creation.
pub fn last_heard(c: &Connection) -> Option<DateTime<Utc>> {
    [
        c.webhook_last_delivery_at,
        c.health.last_ping_at,
        c.webhook_created_at,
    ]
    .into_iter()
    .flatten()
    .max()
}
