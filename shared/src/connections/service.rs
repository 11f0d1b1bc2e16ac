//! Connecting repositories (DESIGN.md §1.2, seeds 001 and 004): creates the connection, a
//! fresh 256-bit webhook secret sealed by the key service, and the hook on GitHub or GitLab;
//! rotates, retries and removes them. A provider failure never loses the connection: it is
//! saved with `webhook_status: failed` and a reason the user can act on.
//!
//! With an [`EventSink`] ([`Repositories::with_events`]) a connect publishes
//! `repository.connected` and a disconnect `repository.disconnected` into the org's outbound
//! stream; the call has already succeeded by then, so a publish failure is only logged.

use super::model::{
    Connection, ConnectionId, RepoProvider, StoredProviderToken, StoredSecret, WebhookStatus,
};
use crate::clock::Clock;
use crate::hooks::{Deleted, HookClient, HookSpec};
use crate::model::Source;
use crate::outbound::model::EventId;
use crate::outbound::sink::EventSink;
use crate::ports::connections::{ConnectionError, ConnectionStore};
use crate::ports::keys::{EncryptionContext, KeyError, KeyService, Sealed};
use crate::secret::Secret;
use crate::telemetry::{self, HookOperation};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

pub mod health;

/// Why a connection call failed; the API maps each to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Invalid(String),
    #[error("the repository is already connected")]
    AlreadyConnected(ConnectionId),
    #[error("no such connection")]
    NotFound,
    #[error("{0}")]
    Provider(String),
    /// The org's plan allows no more repositories: 402.
    #[error(transparent)]
    PlanLimit(#[from] crate::billing::plan::PlanLimit),
    #[error("{0}")]
    Unavailable(String),
}

impl From<ConnectionError> for ConnectError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Duplicate(id) => ConnectError::AlreadyConnected(id),
            ConnectionError::NotFound => ConnectError::NotFound,
            other => ConnectError::Unavailable(other.to_string()),
        }
    }
}

impl From<KeyError> for ConnectError {
    fn from(e: KeyError) -> Self {
        ConnectError::Unavailable(e.to_string())
    }
}

/// What `POST /api/v1/repositories/connect` asks for.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// `owner/repo` (GitHub) or `group/subgroup/project` (GitLab).
    #[schema(
        pattern = "^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$",
        example = "acme/hookline-demo"
    )]
    pub repository_full_name: String,
    #[serde(default)]
    pub provider: Option<RepoProvider>,
    #[serde(default)]
    pub auto_pr_enabled: Option<bool>,
    #[serde(default)]
    pub setup_webhook: Option<bool>,
    /// The provider's event names (`push`, `pull_request`, `*`); the provider's defaults when
    /// left out.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub webhook_events: Option<Vec<String>>,
}

/// What `PATCH …/connections/{id}` may change.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatch {
    pub is_enabled: Option<bool>,
    pub auto_pr_enabled: Option<bool>,
    pub webhook_events: Option<Vec<String>>,
}

/// The outcome of a disconnect (seed 001's response).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Disconnected {
    pub success: bool,
    pub connection_id: ConnectionId,
    pub repository_full_name: String,
    pub webhook_deleted: bool,
    pub message: String,
}

/// Looks up the access token a user registered for a provider (OAuth or a personal token).
#[async_trait::async_trait]
pub trait ProviderTokens: Send + Sync + 'static {
    async fn token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
    ) -> Result<Option<Secret>, ConnectError>;
}

/// Provider access tokens kept sealed in the connection store, one per (org, user, provider).
/// With [`StoredProviderTokens::with_refresh`], an OAuth token that has expired (or is about
/// to) is renewed with its refresh token before it is handed out.
pub struct StoredProviderTokens {
    store: Arc<dyn ConnectionStore>,
    keys: Arc<dyn KeyService>,
    refresh: Option<Refresh>,
}

/// How expiring OAuth tokens are renewed: the providers' token endpoints and the OAuth apps.
struct Refresh {
    client: crate::hooks::oauth::OAuthClient,
    github: Option<crate::hooks::oauth::OAuthApp>,
    gitlab: Option<crate::hooks::oauth::OAuthApp>,
    clock: Arc<dyn Clock>,
}

/// A token this close to its expiry is renewed first: a hook call must not race the expiry.
const REFRESH_MARGIN: chrono::Duration = chrono::Duration::seconds(120);

/// What a user's provider secret is sealed under: whose it is, and which of the two it is
/// (the KMS key policy lets each function use only the purposes it needs).
fn token_context(org_id: &str, user_id: &str, provider: RepoProvider) -> EncryptionContext {
    user_context(org_id, user_id, provider, "provider_token")
}

fn refresh_context(org_id: &str, user_id: &str, provider: RepoProvider) -> EncryptionContext {
    user_context(org_id, user_id, provider, "provider_refresh_token")
}

fn user_context(
    org_id: &str,
    user_id: &str,
    provider: RepoProvider,
    purpose: &str,
) -> EncryptionContext {
    EncryptionContext::new([
        ("org", org_id),
        ("user", user_id),
        ("provider", provider.as_str()),
        ("purpose", purpose),
    ])
}

fn unreadable(what: &str) -> ConnectError {
    ConnectError::Unavailable(format!("a stored {what} is unreadable"))
}

impl StoredProviderTokens {
    pub fn new(store: Arc<dyn ConnectionStore>, keys: Arc<dyn KeyService>) -> Self {
        Self {
            store,
            keys,
            refresh: None,
        }
    }

    /// Renew expiring OAuth tokens through `settings`' token endpoints and apps.
    pub fn with_refresh(
        mut self,
        settings: &crate::api::oauth::OAuthSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        self.refresh = Some(Refresh {
            client: settings.client.clone(),
            github: settings.github.clone(),
            gitlab: settings.gitlab.clone(),
            clock,
        });
        self
    }

    /// Register (replace) a user's access token, one that does not expire (a personal access
    /// token); it is never returned.
    pub async fn put(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        token: &Secret,
    ) -> Result<(), ConnectError> {
        self.put_token(org_id, user_id, provider, token, None, None)
            .await
    }

    /// Register (replace) an OAuth grant: the access token, when it expires, and the refresh
    /// token that renews it.
    pub async fn put_granted(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        granted: &crate::hooks::oauth::AccessToken,
    ) -> Result<(), ConnectError> {
        self.put_token(
            org_id,
            user_id,
            provider,
            &granted.token,
            granted.expires_at,
            granted.refresh_token.as_ref(),
        )
        .await
    }

    async fn put_token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        token: &Secret,
        expires_at: Option<DateTime<Utc>>,
        refresh: Option<&Secret>,
    ) -> Result<(), ConnectError> {
        let seal =
            |sealed: Sealed| serde_json::to_string(&sealed).expect("a sealed secret serialises");
        let access = self
            .keys
            .seal(token, &token_context(org_id, user_id, provider))
            .await?;
        let refresh = match refresh {
            Some(r) => Some(seal(
                self.keys
                    .seal(r, &refresh_context(org_id, user_id, provider))
                    .await?,
            )),
            None => None,
        };
        let stored = StoredProviderToken {
            access: StoredSecret {
                sealed: seal(access),
                valid_until: expires_at,
            },
            refresh,
        };
        Ok(self
            .store
            .put_provider_token(org_id, user_id, provider, &stored)
            .await?)
    }

    async fn open_access(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        stored: &StoredProviderToken,
    ) -> Result<Secret, ConnectError> {
        let sealed: Sealed =
            serde_json::from_str(&stored.access.sealed).map_err(|_| unreadable("access token"))?;
        Ok(self
            .keys
            .open(&sealed, &token_context(org_id, user_id, provider))
            .await?)
    }

    /// Trade the stored refresh token for a new grant and store it. GitLab hands out a new
    /// refresh token each time and the old one stops working, so when two calls refresh at
    /// once the loser finds the winner's grant stored and uses that.
    async fn renew(
        &self,
        refresh: &Refresh,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
        stored: &StoredProviderToken,
    ) -> Result<Secret, ConnectError> {
        let hook_provider = match provider {
            RepoProvider::Github => crate::hooks::HookProvider::GitHub,
            RepoProvider::Gitlab => crate::hooks::HookProvider::GitLab,
        };
        let name = hook_provider.display_name();
        let reconnect = |why: String| {
            ConnectError::Provider(format!(
                "the {name} authorization has expired and {why}: connect {name} again at \
                 /api/v1/oauth/{}/authorize",
                provider.as_str()
            ))
        };
        let app = match provider {
            RepoProvider::Github => refresh.github.as_ref(),
            RepoProvider::Gitlab => refresh.gitlab.as_ref(),
        }
        .ok_or_else(|| reconnect("this server has no OAuth app to renew it with".into()))?;
        let sealed: Sealed = serde_json::from_str(stored.refresh.as_deref().unwrap_or_default())
            .map_err(|_| unreadable("refresh token"))?;
        let refresh_token = self
            .keys
            .open(&sealed, &refresh_context(org_id, user_id, provider))
            .await?;
        let now = refresh.clock.now();
        match refresh
            .client
            .refresh(hook_provider, app, &refresh_token, now)
            .await
        {
            Ok(granted) => {
                self.put_granted(org_id, user_id, provider, &granted)
                    .await?;
                tracing::info!(
                    provider = provider.as_str(),
                    org_id,
                    user_id,
                    "renewed an expiring OAuth token"
                );
                Ok(granted.token)
            }
            Err(e) => {
                let current = self
                    .store
                    .get_provider_token(org_id, user_id, provider)
                    .await?;
                match current {
                    Some(current) if current.access != stored.access => {
                        self.open_access(org_id, user_id, provider, &current).await
                    }
                    _ => Err(reconnect(format!("could not be renewed ({e})"))),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl ProviderTokens for StoredProviderTokens {
    async fn token(
        &self,
        org_id: &str,
        user_id: &str,
        provider: RepoProvider,
    ) -> Result<Option<Secret>, ConnectError> {
        let Some(stored) = self
            .store
            .get_provider_token(org_id, user_id, provider)
            .await?
        else {
            return Ok(None);
        };
        if let (Some(refresh), Some(expires), Some(_)) =
            (&self.refresh, stored.access.valid_until, &stored.refresh)
        {
            if refresh.clock.now() + REFRESH_MARGIN >= expires {
                return self
                    .renew(refresh, org_id, user_id, provider, &stored)
                    .await
                    .map(Some);
            }
        }
        self.open_access(org_id, user_id, provider, &stored)
            .await
            .map(Some)
    }
}

pub struct Settings {
    /// `WEBHOOK_BASE_URL`: where providers post; hooks point at it + the provider's route.
    pub webhook_base_url: String,
    /// How long deliveries signed with a rotated-out secret are still accepted.
    pub rotation_overlap: Duration,
}

pub struct Repositories {
    store: Arc<dyn ConnectionStore>,
    keys: Arc<dyn KeyService>,
    tokens: Arc<dyn ProviderTokens>,
    github: Arc<dyn HookClient>,
    gitlab: Arc<dyn HookClient>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    events: Option<Arc<dyn EventSink>>,
    /// The plan's limit on repositories (`None`: nothing is limited).
    plans: Option<Arc<dyn crate::billing::plan::PlanGate>>,
}

/// The encryption context of a connection's webhook secret: a sealed secret copied onto
/// another connection (or org) does not open.
pub fn secret_context(org_id: &str, id: &ConnectionId) -> EncryptionContext {
    EncryptionContext::new([
        ("org", org_id),
        ("connection", id.as_str()),
        ("purpose", "webhook_secret"),
    ])
}

/// A new webhook secret: 32 random bytes, as 64 hex characters.
fn new_webhook_secret() -> Secret {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

/// `owner/repo` (GitHub) or `group/…/project` (GitLab): no empty segments, no spaces, no
/// dot-segments.
fn validate_repository(provider: RepoProvider, name: &str) -> Result<String, ConnectError> {
    let name = name.trim().trim_matches('/');
    let segments: Vec<&str> = name.split('/').collect();
    let ok_segment = |s: &&str| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let shape_ok = match provider {
        RepoProvider::Github => segments.len() == 2,
        RepoProvider::Gitlab => segments.len() >= 2,
    };
    if !shape_ok || !segments.iter().all(ok_segment) {
        let expected = match provider {
            RepoProvider::Github => "owner/repo",
            RepoProvider::Gitlab => "group/project",
        };
        return Err(ConnectError::Invalid(format!(
            "repository_full_name must look like {expected}, got {name:?}"
        )));
    }
    Ok(name.to_string())
}

fn validate_events(events: &[String]) -> Result<(), ConnectError> {
    if events.is_empty() {
        return Err(ConnectError::Invalid(
            "webhook_events must not be empty".into(),
        ));
    }
    if let Some(bad) = events.iter().find(|e| {
        e.is_empty()
            || !e
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '*')
    }) {
        return Err(ConnectError::Invalid(format!(
            "{bad:?} is not an event name"
        )));
    }
    Ok(())
}

impl Repositories {
    pub fn new(
        store: Arc<dyn ConnectionStore>,
        keys: Arc<dyn KeyService>,
        tokens: Arc<dyn ProviderTokens>,
        github: Arc<dyn HookClient>,
        gitlab: Arc<dyn HookClient>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            keys,
            tokens,
            github,
            gitlab,
            clock,
            settings,
            events: None,
            plans: None,
        }
    }

    /// Now, by the service's clock (the status route's "has the ping arrived yet").
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Ask the provider to ping the hook just created or repaired, noting when (and, if the
    /// provider refused, why) on `c`: the status route then shows whether the ping arrived.
    /// A refusal is only noted: the hook itself is in place.
    async fn request_ping(&self, c: &mut Connection, token: &Secret) -> bool {
        let Some(hook_id) = c.webhook_id.clone() else {
            return false;
        };
        // Noted before asking (and to the millisecond, as arrivals are): the ping may arrive
        // before the provider's answer does.
        let asked = self.clock.now();
        let asked = DateTime::from_timestamp_millis(asked.timestamp_millis()).unwrap_or(asked);
        let result = self
            .hooks(c.provider)
            .ping_hook(token, &c.repository_full_name, &hook_id)
            .await;
        c.health.ping_requested_at = Some(asked);
        match result {
            Ok(()) => {
                c.health.ping_error = None;
                true
            }
            Err(e) => {
                tracing::warn!(connection_id = %c.id, provider = c.provider.as_str(), reason = %e.reason(), "the provider refused to ping the hook");
                c.health.ping_error = Some(e.reason());
                false
            }
        }
    }

    /// Save `c` (with the secret the hook now signs with), then ask for the ping: a ping that
    /// arrived before the new secret was stored would not verify. A refused request is saved
    /// too. True when the provider took the request.
    async fn save_then_ping(
        &self,
        c: &mut Connection,
        token: &Secret,
    ) -> Result<bool, ConnectError> {
        let asked = self.clock.now();
        c.health.ping_requested_at =
            Some(DateTime::from_timestamp_millis(asked.timestamp_millis()).unwrap_or(asked));
        c.health.ping_error = None;
        self.store.update(c).await?;
        if self.request_ping(c, token).await {
            return Ok(true);
        }
        self.store.update(c).await?;
        Ok(false)
    }

    /// Refuse a connection past the org's plan limit on repositories (402).
    pub fn with_plan_gate(mut self, plans: Arc<dyn crate::billing::plan::PlanGate>) -> Self {
        self.plans = Some(plans);
        self
    }

    /// Refuse one more repository past the org's plan: counted only when there is a limit.
    async fn check_plan(&self, org_id: &str) -> Result<(), ConnectError> {
        use crate::billing::plan::{check_limit, Limited, Refusal};
        let Some(plans) = &self.plans else {
            return Ok(());
        };
        let limit = match plans.limit(org_id, Limited::Repositories).await {
            Ok(l) => l,
            Err(Refusal::Limit(l)) => return Err(l.into()),
            Err(Refusal::Unavailable(why)) => return Err(ConnectError::Unavailable(why)),
        };
        let Some((max, _)) = limit else {
            return Ok(());
        };
        let have =
            crate::ports::connections::count_connections(self.store.as_ref(), org_id, Some(max))
                .await?;
        Ok(check_limit(have, Limited::Repositories, limit)?)
    }

    /// Also publish `repository.connected` / `repository.disconnected` into the org's stream.
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// Publish one of the connection's events; its id is derived from the connection, so a
    /// repeated publish is a no-op. A failure is logged: the call it reports on succeeded.
    async fn publish(&self, c: &Connection, event_type: &str, data: serde_json::Value) {
        let Some(sink) = &self.events else {
            return;
        };
        let id = EventId::derived(event_type, c.id.as_str());
        if let Err(e) = sink
            .publish_own(&c.org_id, event_type, id, data.into())
            .await
        {
            tracing::error!(connection_id = %c.id, org_id = %c.org_id, event_type, error = %e, "could not publish a connection event");
        }
    }

    fn hooks(&self, provider: RepoProvider) -> &dyn HookClient {
        match provider {
            RepoProvider::Github => self.github.as_ref(),
            RepoProvider::Gitlab => self.gitlab.as_ref(),
        }
    }

    fn webhook_url(&self, provider: RepoProvider) -> String {
        let source = match provider {
            RepoProvider::Github => Source::Github,
            RepoProvider::Gitlab => Source::Gitlab,
        };
        format!(
            "{}{}",
            self.settings.webhook_base_url.trim_end_matches('/'),
            source.route()
        )
    }

    fn default_events(provider: RepoProvider) -> Vec<String> {
        match provider {
            RepoProvider::Github => {
                vec!["workflow_run".into(), "pull_request".into(), "push".into()]
            }
            RepoProvider::Gitlab => vec!["pipeline".into(), "merge_request".into(), "push".into()],
        }
    }

    async fn seal(&self, c: &Connection, secret: &Secret) -> Result<StoredSecret, ConnectError> {
        let sealed = self
            .keys
            .seal(secret, &secret_context(&c.org_id, &c.id))
            .await?;
        Ok(StoredSecret {
            sealed: serde_json::to_string(&sealed).expect("a sealed secret serialises"),
            valid_until: None,
        })
    }

    /// The plaintext of a stored secret (for signing checks and pushing it to the provider).
    pub async fn open(
        &self,
        c: &Connection,
        stored: &StoredSecret,
    ) -> Result<Secret, ConnectError> {
        let sealed: Sealed = serde_json::from_str(&stored.sealed).map_err(|_| {
            ConnectError::Unavailable(format!("connection {} has an unreadable secret", c.id))
        })?;
        Ok(self
            .keys
            .open(&sealed, &secret_context(&c.org_id, &c.id))
            .await?)
    }

    pub async fn connect(
        &self,
        org_id: &str,
        user_id: &str,
        req: ConnectRequest,
    ) -> Result<Connection, ConnectError> {
        let provider = req.provider.unwrap_or(RepoProvider::Github);
        let repository_full_name = validate_repository(provider, &req.repository_full_name)?;
        let events = req
            .webhook_events
            .unwrap_or_else(|| Self::default_events(provider));
        validate_events(&events)?;
        let now = self.clock.now();
        let mut c = Connection {
            id: ConnectionId::generate(),
            org_id: org_id.to_string(),
            user_id: user_id.to_string(),
            provider,
            repository_full_name,
            project_id: None,
            auto_pr_enabled: req.auto_pr_enabled.unwrap_or(false),
            is_enabled: true,
            webhook_id: None,
            webhook_url: self.webhook_url(provider),
            webhook_status: WebhookStatus::Inactive,
            webhook_status_reason: None,
            webhook_events: events,
            webhook_created_at: None,
            webhook_last_delivery_at: None,
            total_deliveries: 0,
            failed_deliveries: 0,
            secret: None,
            previous_secret: None,
            created_at: now,
            updated_at: now,
            health: Default::default(),
        };
        self.check_plan(org_id).await?;
        let secret = new_webhook_secret();
        c.secret = Some(self.seal(&c, &secret).await?);
        // Saved before the provider is called: whatever the provider says, the connection stays.
        self.store.create(&c).await?;
        if req.setup_webhook.unwrap_or(true) {
            self.install_hook_then_ping(&mut c, &secret).await?;
        }
        let data = serde_json::json!({
            "connection_id": c.id,
            "provider": c.provider,
            "repository_full_name": c.repository_full_name,
            "webhook_status": c.webhook_status,
        });
        self.publish(&c, "repository.connected", data).await;
        Ok(c)
    }

    /// [`install_hook`](Self::install_hook), then save `c` and, once the new hook id is
    /// stored, ask for the ping: a ping arriving before would name a hook the stored record
    /// does not, and be dropped.
    async fn install_hook_then_ping(
        &self,
        c: &mut Connection,
        secret: &Secret,
    ) -> Result<(), ConnectError> {
        match self.install_hook(c, secret).await {
            Some(token) => {
                self.save_then_ping(c, &token).await?;
            }
            None => self.store.update(c).await?,
        }
        Ok(())
    }

    /// Create (or adopt) the hook with `secret`, recording the outcome on `c` (not saved):
    /// the token it was made with when it was, for the ping.
    async fn install_hook(&self, c: &mut Connection, secret: &Secret) -> Option<Secret> {
        let now = self.clock.now();
        c.updated_at = now;
        let mut used_token = None;
        let outcome = match self.tokens.token(&c.org_id, &c.user_id, c.provider).await {
            Ok(Some(token)) => {
                let spec = HookSpec::new(
                    c.webhook_url.clone(),
                    secret.clone(),
                    c.webhook_events.clone(),
                );
                let created = self
                    .hooks(c.provider)
                    .create_hook(&token, &c.repository_full_name, &spec)
                    .await
                    .map_err(|e| e.reason());
                used_token = Some(token);
                created
            }
            Ok(None) => Err(format!(
                "no {} access token for this user: authorize with GET /api/v1/oauth/{}/authorize \
                 or register one with PUT /api/v1/provider-tokens/{}",
                c.provider.as_str(),
                c.provider.as_str(),
                c.provider.as_str()
            )),
            Err(e) => Err(e.to_string()),
        };
        telemetry::hook_operation(HookOperation::Create, outcome.is_ok());
        match outcome {
            Ok(hook) => {
                c.webhook_id = Some(hook.id);
                c.webhook_status = WebhookStatus::Active;
                c.webhook_status_reason = None;
                c.webhook_created_at = Some(now);
                used_token
            }
            Err(reason) => {
                tracing::warn!(connection_id = %c.id, provider = c.provider.as_str(), reason = %reason, "could not create the webhook");
                c.webhook_status = WebhookStatus::Failed;
                c.webhook_status_reason = Some(reason);
                None
            }
        }
    }

    pub async fn get(&self, org_id: &str, id: &ConnectionId) -> Result<Connection, ConnectError> {
        self.store
            .get(org_id, id)
            .await?
            .ok_or(ConnectError::NotFound)
    }

    pub async fn list(
        &self,
        org_id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Connection>, Option<String>), ConnectError> {
        Ok(self.store.list(org_id, limit, cursor).await?)
    }

    pub async fn update(
        &self,
        org_id: &str,
        id: &ConnectionId,
        patch: ConnectionPatch,
    ) -> Result<Connection, ConnectError> {
        let mut c = self.get(org_id, id).await?;
        if let Some(enabled) = patch.is_enabled {
            c.is_enabled = enabled;
        }
        if let Some(auto_pr) = patch.auto_pr_enabled {
            c.auto_pr_enabled = auto_pr;
        }
        if let Some(events) = patch.webhook_events {
            validate_events(&events)?;
            if events != c.webhook_events {
                c.webhook_events = events;
                // The provider's hook must send the new list too.
                if let Some(hook_id) = c.webhook_id.clone() {
                    let secret = self.current_secret(&c).await?;
                    self.push_hook(&c, &hook_id, &secret).await?;
                }
            }
        }
        c.updated_at = self.clock.now();
        self.store.update(&c).await?;
        Ok(c)
    }

    async fn current_secret(&self, c: &Connection) -> Result<Secret, ConnectError> {
        let stored = c.secret.as_ref().ok_or_else(|| {
            ConnectError::Unavailable(format!("connection {} has no secret", c.id))
        })?;
        self.open(c, stored).await
    }

    async fn push_hook(
        &self,
        c: &Connection,
        hook_id: &str,
        secret: &Secret,
    ) -> Result<(), ConnectError> {
        let token = self
            .tokens
            .token(&c.org_id, &c.user_id, c.provider)
            .await?
            .ok_or_else(|| {
                ConnectError::Provider(format!(
                    "no {} access token for this user",
                    c.provider.as_str()
                ))
            })?;
        let spec = HookSpec::new(
            c.webhook_url.clone(),
            secret.clone(),
            c.webhook_events.clone(),
        );
        self.hooks(c.provider)
            .update_hook(&token, &c.repository_full_name, hook_id, &spec)
            .await
            .map(drop)
            .map_err(|e| ConnectError::Provider(e.reason()))
    }

    /// Re-create a hook that failed (or was removed by hand).
    pub async fn retry(&self, org_id: &str, id: &ConnectionId) -> Result<Connection, ConnectError> {
        let mut c = self.get(org_id, id).await?;
        let secret = self.current_secret(&c).await?;
        self.install_hook_then_ping(&mut c, &secret).await?;
        Ok(c)
    }

    /// A new secret, pushed to the provider; the previous one keeps verifying deliveries for
    /// the overlap window (deliveries already in flight were signed with it).
    pub async fn rotate(
        &self,
        org_id: &str,
        id: &ConnectionId,
    ) -> Result<Connection, ConnectError> {
        let mut c = self.get(org_id, id).await?;
        let secret = new_webhook_secret();
        if let Some(hook_id) = c.webhook_id.clone() {
            // The provider first: if it refuses, nothing changes here.
            self.push_hook(&c, &hook_id, &secret).await?;
        }
        let now = self.clock.now();
        let overlap =
            chrono::Duration::from_std(self.settings.rotation_overlap).unwrap_or_default();
        c.previous_secret = c.secret.take().map(|mut old| {
            old.valid_until = Some(now + overlap);
            old
        });
        c.secret = Some(self.seal(&c, &secret).await?);
        c.updated_at = now;
        match (
            &c.webhook_id,
            self.tokens.token(&c.org_id, &c.user_id, c.provider).await,
        ) {
            // A ping shows the new secret verifies.
            (Some(_), Ok(Some(token))) => {
                self.save_then_ping(&mut c, &token).await?;
            }
            _ => self.store.update(&c).await?,
        }
        Ok(c)
    }

    /// Disconnect: delete the hook if asked (a hook already gone, or a provider error, still
    /// disconnects), then the connection with its secrets.
    pub async fn disconnect(
        &self,
        org_id: &str,
        id: &ConnectionId,
        delete_webhook: bool,
    ) -> Result<Disconnected, ConnectError> {
        let c = self.get(org_id, id).await?;
        let (webhook_deleted, note) = match (&c.webhook_id, delete_webhook) {
            (Some(hook_id), true) => {
                match self.tokens.token(&c.org_id, &c.user_id, c.provider).await {
                    Ok(Some(token)) => match self
                        .hooks(c.provider)
                        .delete_hook(&token, &c.repository_full_name, hook_id)
                        .await
                    {
                        Ok(Deleted::Deleted) => {
                            telemetry::hook_operation(HookOperation::Delete, true);
                            (true, "and webhook deleted".to_string())
                        }
                        // Gone already: the delete asked for is done.
                        Ok(Deleted::AlreadyGone) => {
                            telemetry::hook_operation(HookOperation::Delete, true);
                            (false, "; the webhook was already gone".to_string())
                        }
                        Err(e) => {
                            telemetry::hook_operation(HookOperation::Delete, false);
                            (
                                false,
                                format!("; the webhook could not be deleted: {}", e.reason()),
                            )
                        }
                    },
                    Ok(None) => {
                        telemetry::hook_operation(HookOperation::Delete, false);
                        (
                            false,
                            format!(
                                "; the webhook was left: no {} access token",
                                c.provider.as_str()
                            ),
                        )
                    }
                    Err(e) => {
                        telemetry::hook_operation(HookOperation::Delete, false);
                        (false, format!("; the webhook was left: {e}"))
                    }
                }
            }
            (Some(_), false) => (false, "; the webhook was left as asked".to_string()),
            (None, _) => (false, "; it had no webhook".to_string()),
        };

        self.store.delete(org_id, id).await?;
        let data = serde_json::json!({
            "connection_id": c.id,
            "provider": c.provider,
            "repository_full_name": c.repository_full_name,
            "webhook_deleted": webhook_deleted,
        });
        self.publish(&c, "repository.disconnected", data).await;
        let sep = if note.starts_with(';') { "" } else { " " };
        Ok(Disconnected {
            success: true,
            connection_id: c.id.clone(),
            repository_full_name: c.repository_full_name.clone(),
            webhook_deleted,
            message: format!(
                "Repository {} successfully disconnected{sep}{note}",
                c.repository_full_name
            ),
        })
    }

    /// Every secret that may have signed a delivery for `c` right now: the current one, and
    /// the previous one inside its overlap window.
    pub async fn verifying_secrets(
        &self,
        c: &Connection,
        now: DateTime<Utc>,
    ) -> Result<Vec<Secret>, ConnectError> {
        let mut out = Vec::new();
        if let Some(current) = &c.secret {
            out.push(self.open(c, current).await?);
        }
        if let Some(previous) = c
            .previous_secret
            .as_ref()
            .filter(|p| p.valid_until.is_some_and(|t| t > now))
        {
            out.push(self.open(c, previous).await?);
        }
        Ok(out)
    }
}

/// Inbound GitHub and GitLab deliveries find their connection by the repository they name
/// (GitHub `repository.full_name`; GitLab `project.id`, else `project.path_with_namespace`).
#[async_trait::async_trait]
impl crate::pipeline::ConnectionSecrets for Repositories {
    async fn candidates(
        &self,
        source: Source,
        repository: &crate::providers::RepositoryRef,
    ) -> Result<Vec<crate::pipeline::Candidate>, String> {
        let found = match source {
            Source::Github => match &repository.full_name {
                Some(name) => {
                    self.store
                        .find_by_repository(RepoProvider::Github, name)
                        .await
                }
                None => Ok(Vec::new()),
            },
            Source::Gitlab => {
                let by_id = match &repository.project_id {
                    Some(id) => self
                        .store
                        .find_by_project_id(id)
                        .await
                        .map_err(|e| e.to_string())?,
                    None => Vec::new(),
                };
                match (by_id.is_empty(), &repository.full_name) {
                    (true, Some(path)) => {
                        self.store
                            .find_by_repository(RepoProvider::Gitlab, path)
                            .await
                    }
                    _ => Ok(by_id),
                }
            }
            _ => Ok(Vec::new()),
        }
        .map_err(|e| e.to_string())?;
        let now = self.clock.now();
        let mut out = Vec::with_capacity(found.len());
        for c in &found {
            let secrets = self
                .verifying_secrets(c, now)
                .await
                .map_err(|e| e.to_string())?;
            out.push(crate::pipeline::Candidate {
                enabled: c.is_enabled,
                secrets,
                owner: crate::model::Owner {
                    org_id: c.org_id.clone(),
                    connection_id: Some(c.id.as_str().to_owned()),
                    repository_full_name: Some(c.repository_full_name.clone()),
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_are_checked_before_anything_is_saved() {
        assert_eq!(
            validate_repository(RepoProvider::Github, "octo/hello").unwrap(),
            "octo/hello"
        );
        assert_eq!(
            validate_repository(RepoProvider::Gitlab, "g/sub/p").unwrap(),
            "g/sub/p"
        );
        for bad in ["octo", "octo/hello/x", "octo/", "../x", "a b/c", "octo/.."] {
            assert!(
                validate_repository(RepoProvider::Github, bad).is_err(),
                "{bad}"
            );
        }
        assert!(validate_repository(RepoProvider::Gitlab, "solo").is_err());
    }

    #[test]
    fn webhook_secrets_are_256_bits_of_hex() {
        let a = new_webhook_secret();
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_webhook_secret());
    }
    mod events {
        use super::super::*;
        use crate::clock::SystemClock;
        use crate::hooks::stub::HookApiStub;
        use crate::outbound::sink::RecordingSink;
        use crate::ports::connections::embedded::EmbeddedConnectionStore;
        use crate::ports::keys::embedded::LocalKeys;
        use crate::ports::sqlite::{Database, Durability};
        use serde_json::json;

        struct Fixture {
            repos: Repositories,
            sink: Arc<RecordingSink>,
            stub: HookApiStub,
            _dir: tempfile::TempDir,
        }

        /// The service on the embedded store and local keys, its hooks on a local stub of
        /// GitHub's API, with a user who registered a GitHub token.
        async fn fixture() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::open(dir.path(), Durability::Normal).unwrap();
            let store: Arc<dyn ConnectionStore> = Arc::new(EmbeddedConnectionStore::new(db));
            let keys: Arc<dyn KeyService> =
                Arc::new(LocalKeys::open_or_create(dir.path()).unwrap());
            let tokens = StoredProviderTokens::new(store.clone(), keys.clone());
            tokens
                .put(
                    "org-a",
                    "user-1",
                    RepoProvider::Github,
                    &Secret::new("ghp_test"),
                )
                .await
                .unwrap();
            let stub = HookApiStub::start().await;
            let sink = Arc::new(RecordingSink::default());
            let repos = Repositories::new(
                store,
                keys,
                Arc::new(tokens),
                Arc::new(stub.github()),
                Arc::new(stub.gitlab()),
                Arc::new(SystemClock),
                Settings {
                    webhook_base_url: "https://hooks.example.com".into(),
                    rotation_overlap: Duration::from_secs(3600),
                },
            )
            .with_events(sink.clone());
            Fixture {
                repos,
                sink,
                stub,
                _dir: dir,
            }
        }

        fn connect_request(repo: &str) -> ConnectRequest {
            serde_json::from_value(json!({"repository_full_name": repo})).unwrap()
        }

        #[tokio::test]
        async fn connecting_and_disconnecting_publish_their_events() {
            let f = fixture().await;
            let c = f
                .repos
                .connect("org-a", "user-1", connect_request("acme/hookline-demo"))
                .await
                .unwrap();
            assert_eq!(c.webhook_status, WebhookStatus::Active);
            assert_eq!(f.stub.hooks("acme/hookline-demo").len(), 1);
            let connected = f.sink.of_type("repository.connected");
            assert_eq!(connected.len(), 1);
            assert_eq!(connected[0].org_id, "org-a");
            assert_eq!(
                connected[0].id,
                EventId::derived("repository.connected", c.id.as_str())
            );
            assert_eq!(
                connected[0].data,
                json!({"connection_id": c.id, "provider": "github",
                       "repository_full_name": "acme/hookline-demo", "webhook_status": "active"})
            );

            f.repos.disconnect("org-a", &c.id, true).await.unwrap();
            let disconnected = f.sink.of_type("repository.disconnected");
            assert_eq!(disconnected.len(), 1);
            assert_eq!(
                disconnected[0].id,
                EventId::derived("repository.disconnected", c.id.as_str())
            );
            assert_eq!(
                disconnected[0].data,
                json!({"connection_id": c.id, "provider": "github",
                       "repository_full_name": "acme/hookline-demo", "webhook_deleted": true})
            );
            assert!(f.stub.hooks("acme/hookline-demo").is_empty());

            // Connected again, it is a new connection with new events.
            let again = f
                .repos
                .connect("org-a", "user-1", connect_request("acme/hookline-demo"))
                .await
                .unwrap();
            let ids: Vec<EventId> = f
                .sink
                .of_type("repository.connected")
                .into_iter()
                .map(|p| p.id)
                .collect();
            assert_eq!(ids.len(), 2);
            assert_ne!(ids[0], ids[1]);
            assert_eq!(
                ids[1],
                EventId::derived("repository.connected", again.id.as_str())
            );
        }

        #[tokio::test]
        async fn a_failed_connect_publishes_nothing_and_a_failed_publish_fails_no_connect() {
            let f = fixture().await;
            let bad = f
                .repos
                .connect("org-a", "user-1", connect_request("not a repo"))
                .await;
            assert!(matches!(bad, Err(ConnectError::Invalid(_))));
            assert!(f.sink.all().is_empty());

            f.sink
                .failing
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let c = f
                .repos
                .connect("org-a", "user-1", connect_request("acme/hookline-demo"))
                .await
                .unwrap();
            assert_eq!(f.repos.get("org-a", &c.id).await.unwrap().id, c.id);
            let gone = f.repos.disconnect("org-a", &c.id, true).await.unwrap();
            assert!(gone.success && gone.webhook_deleted);
            assert!(f.sink.all().is_empty());
        }
    }
}
