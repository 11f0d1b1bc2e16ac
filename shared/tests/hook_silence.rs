//! The hook-health check's silence flag under an injected clock: a hook that has delivered
//! nothing for `HOOK_SILENCE_ALERT` while its repository saw pushes (GitHub's `pushed_at`, as
//! the stub answers it) is flagged with `silent_since` and an alert, and asked for a ping; a
//! quiet repository is not; the flag clears once the hook delivers again.

use chrono::{DateTime, Duration as Days, Utc};
use hookline::clock::{Clock, ManualClock};
use hookline::connections::service::health::{Action, HealthSettings};
use hookline::connections::service::{
    ConnectRequest, Repositories, Settings, StoredProviderTokens,
};
use hookline::connections::RepoProvider;
use hookline::hooks::stub::HookApiStub;
use hookline::ports::connections::embedded::EmbeddedConnectionStore;
use hookline::ports::connections::ConnectionStore;
use hookline::ports::keys::embedded::LocalKeys;
use hookline::ports::keys::KeyService;
use hookline::ports::sqlite::{Database, Durability};
use hookline::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_silent_for_the_alert_window_while_the_repository_saw_pushes_is_flagged() {
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
            &Secret::new("ghp_silence"),
        )
        .await
        .unwrap();
    let stub = HookApiStub::start().await;
    let clock = Arc::new(ManualClock::at(t0()));
    let repos = Repositories::new(
        store.clone(),
        keys,
        Arc::new(tokens),
        Arc::new(stub.github()),
        Arc::new(stub.gitlab()),
        clock.clone(),
        Settings {
            webhook_base_url: "https://hooks.example.com".into(),
            rotation_overlap: Duration::from_secs(3600),
        },
    );
    let connect = |repo: &str| {
        let req: ConnectRequest =
            serde_json::from_value(serde_json::json!({ "repository_full_name": repo })).unwrap();
        repos.connect("org-a", "user-1", req)
    };
    let busy = connect("acme/busy").await.unwrap();
    let quiet = connect("acme/quiet").await.unwrap();
    // Pushes to one a day after the hook was made; the other has seen none since.
    stub.set_pushed_at("acme/busy", t0() + Days::days(1));
    stub.set_pushed_at("acme/quiet", t0() - Days::days(30));
    let settings = HealthSettings {
        every: None,
        silence_alert: Duration::from_secs(14 * 24 * 3600),
    };

    // Thirteen days in: silent, but not for long enough.
    clock.advance(Days::days(13));
    let report = repos.check_hooks(true, &settings).await.unwrap();
    assert_eq!(
        (report.checked, report.healthy, report.silent),
        (2, 2, 0),
        "{report:?}"
    );

    // Fifteen days in: the busy one is flagged (a dry run only reports it).
    clock.advance(Days::days(2));
    let dry = repos.check_hooks(false, &settings).await.unwrap();
    assert_eq!((dry.silent, dry.healthy), (1, 1), "{dry:?}");
    let got = repos.get("org-a", &busy.id).await.unwrap();
    assert_eq!(got.health.silent_since, None, "a dry run changes nothing");

    stub.clear_requests();
    let report = repos.check_hooks(true, &settings).await.unwrap();
    assert_eq!(
        (report.silent, report.healthy, report.pinged),
        (1, 1, 1),
        "{report:?}"
    );
    let finding = &report.findings[0];
    assert_eq!(
        (
            finding.action,
            finding.repository_full_name.as_str(),
            finding.applied
        ),
        (Action::Silent, "acme/busy", true)
    );
    let got = repos.get("org-a", &busy.id).await.unwrap();
    assert_eq!(
        got.health.silent_since,
        Some(t0()),
        "silent since the hook was made"
    );
    let alert = got.health.alert.unwrap();
    assert!(
        alert.contains("no delivery from GitHub since 2026-03-02T09:00:00Z")
            && alert.contains("last at 2026-03-03T09:00:00Z"),
        "{alert}"
    );
    assert_eq!(got.health.ping_requested_at, Some(clock.now()));
    assert!(
        stub.requests()
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/pings")),
        "a silent hook is asked for a ping"
    );
    // Still silent an hour later: still flagged, not pinged again.
    clock.advance(Days::hours(1));
    let report = repos.check_hooks(true, &settings).await.unwrap();
    assert_eq!((report.silent, report.pinged), (1, 0), "{report:?}");
    let quiet_now = repos.get("org-a", &quiet.id).await.unwrap();
    assert_eq!(
        quiet_now.health.silent_since, None,
        "a quiet repository is no alarm"
    );

    // The hook delivers again: the flag clears at the next check.
    store
        .record_delivery(&busy.id, clock.now(), false)
        .await
        .unwrap();
    clock.advance(Days::hours(1));
    let report = repos.check_hooks(true, &settings).await.unwrap();
    assert_eq!((report.silent, report.healthy), (0, 2), "{report:?}");
    let got = repos.get("org-a", &busy.id).await.unwrap();
    assert_eq!((got.health.silent_since, got.health.alert), (None, None));
}

#[test]
fn the_check_reads_its_interval_and_silence_window_from_the_environment() {
    let read = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HealthSettings::from_lookup(&move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let defaults = read(&[]).unwrap();
    assert_eq!(defaults.every, Some(Duration::from_secs(3600)));
    assert_eq!(defaults.silence_alert, Duration::from_secs(14 * 24 * 3600));
    let set = read(&[
        ("HOOK_HEALTH_INTERVAL", "30m"),
        ("HOOK_SILENCE_ALERT", "3d"),
    ])
    .unwrap();
    assert_eq!(set.every, Some(Duration::from_secs(1800)));
    assert_eq!(set.silence_alert, Duration::from_secs(3 * 24 * 3600));
    assert_eq!(read(&[("HOOK_HEALTH_INTERVAL", "0")]).unwrap().every, None);
    let bad = read(&[("HOOK_SILENCE_ALERT", "soon")]).unwrap_err();
    assert!(bad.contains("HOOK_SILENCE_ALERT"), "{bad}");
}

/// GitLab's `last_activity_at` moves with issues, comments and merge requests: only a push
/// (its newest `pushed` event) makes a silent hook suspicious.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_project_busy_with_issues_but_no_pushes_is_not_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Durability::Normal).unwrap();
    let store: Arc<dyn ConnectionStore> = Arc::new(EmbeddedConnectionStore::new(db));
    let keys: Arc<dyn KeyService> = Arc::new(LocalKeys::open_or_create(dir.path()).unwrap());
    let tokens = StoredProviderTokens::new(store.clone(), keys.clone());
    tokens
        .put(
            "org-a",
            "user-1",
            RepoProvider::Gitlab,
            &Secret::new("glpat-silence"),
        )
        .await
        .unwrap();
    let stub = HookApiStub::start().await;
    let clock = Arc::new(ManualClock::at(t0()));
    let repos = Repositories::new(
        store.clone(),
        keys,
        Arc::new(tokens),
        Arc::new(stub.github()),
        Arc::new(stub.gitlab()),
        clock.clone(),
        Settings {
            webhook_base_url: "https://hooks.example.com".into(),
            rotation_overlap: Duration::from_secs(3600),
        },
    );
    let req: ConnectRequest = serde_json::from_value(serde_json::json!({
        "repository_full_name": "group/chatty",
        "provider": "gitlab",
    }))
    .unwrap();
    let c = repos.connect("org-a", "user-1", req).await.unwrap();
    let settings = HealthSettings {
        every: None,
        silence_alert: Duration::from_secs(14 * 24 * 3600),
    };
    // Comments a day after the hook was made; the last push long before it.
    stub.set_pushed_at("group/chatty", t0() - Days::days(30));
    stub.set_activity_at("group/chatty", t0() + Days::days(1));
    clock.advance(Days::days(15));
    let report = repos.check_hooks(true, &settings).await.unwrap();
    assert_eq!((report.healthy, report.silent), (1, 0), "{report:?}");
    assert!(
        stub.requests().iter().any(|r| r.path.ends_with("/events")
            && r.query
                .as_deref()
                .is_some_and(|q| q.contains("action=pushed"))),
        "the pushes are read from the project's push events"
    );
    // A push, and the hook heard nothing: flagged.
    stub.set_pushed_at("group/chatty", t0() + Days::days(2));
    clock.advance(Days::hours(1));
    let report = repos.check_hooks(true, &settings).await.unwrap();
    assert_eq!((report.healthy, report.silent), (0, 1), "{report:?}");
    let got = repos.get("org-a", &c.id).await.unwrap();
    assert_eq!(got.health.silent_since, Some(t0()));
}
