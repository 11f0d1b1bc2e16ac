//! A user's change made while the hook-health check runs wins over the check (review finding
//! 1 on issue 10). The check reads the connections, then waits on the provider (the stub holds
//! its first call for the repository); meanwhile the user rotates the secret, changes the
//! events, disables the connection or disconnects it. The check must not write back what it
//! read before: no old secret restored, no events "patched back", no connection switched on
//! again, no hook left behind for a connection that is gone.
//!
//! And a ping asked for after a connect or a retry names a hook the stored record already
//! names (review finding 8): the record is saved before the ping is asked for.

use hookline::clock::SystemClock;
use hookline::connections::service::health::{Action, HealthSettings};
use hookline::connections::service::{
    ConnectRequest, ConnectionPatch, Repositories, Settings, StoredProviderTokens,
};
use hookline::connections::{Connection, RepoProvider};
use hookline::hooks::stub::HookApiStub;
use hookline::ports::connections::embedded::EmbeddedConnectionStore;
use hookline::ports::connections::ConnectionStore;
use hookline::ports::keys::embedded::LocalKeys;
use hookline::ports::keys::KeyService;
use hookline::ports::sqlite::{Database, Durability};
use hookline::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

/// How long the stub holds the check's first call for a repository, and when (within that)
/// the user acts.
const HELD: Duration = Duration::from_millis(1500);
const USER_ACTS_AFTER: Duration = Duration::from_millis(300);

struct Fixture {
    _dir: tempfile::TempDir,
    stub: HookApiStub,
    repos: Arc<Repositories>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Durability::Normal).unwrap();
    let store: Arc<dyn ConnectionStore> = Arc::new(EmbeddedConnectionStore::new(db));
    let keys: Arc<dyn KeyService> = Arc::new(LocalKeys::open_or_create(dir.path()).unwrap());
    let tokens = StoredProviderTokens::new(store.clone(), keys.clone());
    tokens
        .put(
            "org-a",
            "user-1",
            RepoProvider::Github,
            &Secret::new("ghp_races"),
        )
        .await
        .unwrap();
    let stub = HookApiStub::start().await;
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
    );
    Fixture {
        _dir: dir,
        stub,
        repos: Arc::new(repos),
    }
}

async fn connect(f: &Fixture, repo: &str) -> Connection {
    let req: ConnectRequest =
        serde_json::from_value(serde_json::json!({ "repository_full_name": repo })).unwrap();
    f.repos.connect("org-a", "user-1", req).await.unwrap()
}

fn hook_id(c: &Connection) -> u64 {
    c.webhook_id.as_deref().unwrap().parse().unwrap()
}

/// Run the repairing check with the provider holding `repo`'s first call, and `user` acting
/// meanwhile; the check's finding for `repo`.
async fn check_while<F, Fut>(
    f: &Fixture,
    repo: &str,
    user: F,
) -> hookline::connections::service::health::HealthReport
where
    F: FnOnce(Arc<Repositories>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f.stub.delay_next(repo, HELD);
    let repos = f.repos.clone();
    let check = tokio::spawn(async move {
        repos
            .check_hooks(
                true,
                &HealthSettings {
                    every: None,
                    silence_alert: Duration::from_secs(14 * 24 * 3600),
                },
            )
            .await
            .unwrap()
    });
    tokio::time::sleep(USER_ACTS_AFTER).await;
    user(f.repos.clone()).await;
    let report = check.await.unwrap();
    assert_eq!(report.checked, 1, "{report:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_while_the_check_runs_is_kept() {
    let f = fixture().await;
    let c = connect(&f, "acme/rotated").await;
    let mut rotated = None;
    check_while(&f, "acme/rotated", |repos| {
        let id = c.id.clone();
        let rotated = &mut rotated;
        async move {
            *rotated = Some(repos.rotate("org-a", &id).await.unwrap());
        }
    })
    .await;
    let rotated = rotated.unwrap();
    let got = f.repos.get("org-a", &c.id).await.unwrap();
    assert_eq!(
        got.secret, rotated.secret,
        "the check restored the old secret"
    );
    assert_ne!(got.secret, c.secret);
    // And the hook signs with the stored current secret.
    let on_hook = f.stub.hook(hook_id(&c)).unwrap().secret.unwrap();
    let verifying = f
        .repos
        .verifying_secrets(&got, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(verifying[0].expose(), on_hook.expose());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_changed_while_the_check_runs_are_not_patched_back() {
    let f = fixture().await;
    let c = connect(&f, "acme/events").await;
    let events = vec!["push".to_string(), "release".to_string()];
    let want = events.clone();
    let report = check_while(&f, "acme/events", |repos| {
        let id = c.id.clone();
        async move {
            let patch = ConnectionPatch {
                webhook_events: Some(events),
                ..ConnectionPatch::default()
            };
            repos.update("org-a", &id, patch).await.unwrap();
        }
    })
    .await;
    assert_ne!(report.patched, 1, "{report:?}");
    let got = f.repos.get("org-a", &c.id).await.unwrap();
    assert_eq!(
        got.webhook_events, want,
        "the check restored the old events"
    );
    let mut on_hook = f.stub.hook(hook_id(&c)).unwrap().events;
    on_hook.sort();
    assert_eq!(on_hook, want, "the hook was left with the old events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_disabled_while_the_check_runs_stays_disabled() {
    let f = fixture().await;
    let c = connect(&f, "acme/disabled").await;
    check_while(&f, "acme/disabled", |repos| {
        let id = c.id.clone();
        async move {
            let patch = ConnectionPatch {
                is_enabled: Some(false),
                ..ConnectionPatch::default()
            };
            repos.update("org-a", &id, patch).await.unwrap();
        }
    })
    .await;
    let got = f.repos.get("org-a", &c.id).await.unwrap();
    assert!(
        !got.is_enabled,
        "the check switched the connection on again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_recreated_for_a_connection_disconnected_meanwhile_is_removed() {
    let f = fixture().await;
    let c = connect(&f, "acme/gone").await;
    assert!(f.stub.remove_hook(hook_id(&c)));
    let report = check_while(&f, "acme/gone", |repos| {
        let id = c.id.clone();
        async move {
            repos.disconnect("org-a", &id, true).await.unwrap();
        }
    })
    .await;
    assert_eq!(report.findings[0].action, Action::Error, "{report:?}");
    assert!(
        f.stub.hooks("acme/gone").is_empty(),
        "an orphan hook was left: {:?}",
        f.stub.hooks("acme/gone")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_saves_the_new_hook_before_asking_for_its_ping() {
    let f = fixture().await;
    let c = connect(&f, "acme/retried").await;
    assert!(f.stub.remove_hook(hook_id(&c)));
    // The retry looks for a hook with its URL, creates one, then asks for the ping: the stub
    // holds the ping request while the test reads what is stored.
    f.stub.delay_next("acme/retried", Duration::ZERO);
    f.stub.delay_next("acme/retried", Duration::ZERO);
    f.stub.delay_next("acme/retried", HELD);
    f.stub.clear_requests();
    let repos = f.repos.clone();
    let id = c.id.clone();
    let retry = tokio::spawn(async move { repos.retry("org-a", &id).await.unwrap() });
    let asked = async {
        loop {
            if f.stub.requests().iter().any(|r| r.path.ends_with("/pings")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(HELD, asked)
        .await
        .expect("the retry asked for a ping");
    let new_hook = f.stub.hooks("acme/retried")[0].id.to_string();
    let stored = f.repos.get("org-a", &c.id).await.unwrap();
    assert_eq!(
        stored.webhook_id.as_deref(),
        Some(new_hook.as_str()),
        "the ping was asked for before the new hook id was stored: it would be dropped"
    );
    let done = retry.await.unwrap();
    assert_eq!(done.webhook_id.as_deref(), Some(new_hook.as_str()));
    assert!(done.health.ping_requested_at.is_some());
}
