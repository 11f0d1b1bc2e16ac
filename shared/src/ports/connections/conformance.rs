//! The behaviour every [`ConnectionStore`] adapter must have. The embedded store and the
//! DynamoDB store run these through [`connections_conformance!`](crate::connections_conformance),
//! each test on a fresh, empty store.

use super::{valid_cursor, ConnectionError, ConnectionStore};
use crate::connections::{
    Connection, ConnectionId, Incident, IncidentId, PullRequest, RepoProvider, StoredSecret,
    WebhookStatus, WorkflowRun,
};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;
use std::sync::Arc;

/// A fixed millisecond-precise instant per test process, plus `secs`.
pub fn t(secs: i64) -> DateTime<Utc> {
    static BASE: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
            - Duration::hours(1)
    }) + Duration::seconds(secs)
}

/// A GitHub connection of `repo` in `org`, with a sealed secret and a previous one.
pub fn connection(org: &str, repo: &str) -> Connection {
    Connection {
        id: ConnectionId::generate(),
        org_id: org.to_owned(),
        user_id: "user-1".to_owned(),
        provider: RepoProvider::Github,
        repository_full_name: repo.to_owned(),
        project_id: None,
        auto_pr_enabled: true,
        is_enabled: true,
        webhook_id: Some("123456".to_owned()),
        webhook_url: "https://hooks.example.com/api/v1/webhooks/github".to_owned(),
        webhook_status: WebhookStatus::Active,
        webhook_status_reason: None,
        webhook_events: vec![
            "workflow_run".to_owned(),
            "pull_request".to_owned(),
            "push".to_owned(),
        ],
        webhook_created_at: Some(t(0)),
        webhook_last_delivery_at: None,
        total_deliveries: 0,
        failed_deliveries: 0,
        secret: Some(StoredSecret {
            sealed: format!("sealed-{}", uuid::Uuid::new_v4()),
            valid_until: None,
        }),
        previous_secret: Some(StoredSecret {
            sealed: "sealed-previous".to_owned(),
            valid_until: Some(t(3600)),
        }),
        created_at: t(0),
        updated_at: t(0),
        health: Default::default(),
    }
}

fn gitlab(org: &str, repo: &str, project_id: &str) -> Connection {
    Connection {
        provider: RepoProvider::Gitlab,
        project_id: Some(project_id.to_owned()),
        webhook_url: "https://hooks.example.com/api/v1/webhooks/gitlab".to_owned(),
        ..connection(org, repo)
    }
}

pub fn workflow_run(c: &Connection, run_id: &str, attempt: u32, updated: i64) -> WorkflowRun {
    WorkflowRun {
        org_id: c.org_id.clone(),
        connection_id: c.id.clone(),
        repository_full_name: c.repository_full_name.clone(),
        run_id: run_id.to_owned(),
        run_attempt: attempt,
        name: "CI".to_owned(),
        status: "in_progress".to_owned(),
        conclusion: None,
        branch: Some("main".to_owned()),
        sha: Some("a".repeat(40)),
        run_number: Some(7),
        url: Some(format!("https://github.com/x/y/actions/runs/{run_id}")),
        failed_jobs: Vec::new(),
        created_at: Some(t(0)),
        updated_at: t(updated),
    }
}

pub fn incident(c: &Connection, run_id: &str, attempt: u32, created: i64) -> Incident {
    Incident {
        id: IncidentId::generate(),
        org_id: c.org_id.clone(),
        user_id: c.user_id.clone(),
        connection_id: c.id.clone(),
        repository_full_name: c.repository_full_name.clone(),
        provider: c.provider,
        run_id: run_id.to_owned(),
        run_attempt: attempt,
        workflow: "CI".to_owned(),
        branch: Some("main".to_owned()),
        sha: Some("b".repeat(40)),
        url: Some("https://github.com/x/y/actions/runs/1".to_owned()),
        status: "open".to_owned(),
        pr_status: None,
        created_at: t(created),
        updated_at: t(created),
    }
}

pub fn pull_request(c: &Connection, number: u64, title: &str, updated: i64) -> PullRequest {
    PullRequest {
        org_id: c.org_id.clone(),
        connection_id: c.id.clone(),
        repository_full_name: c.repository_full_name.clone(),
        number,
        title: title.to_owned(),
        state: "open".to_owned(),
        author: Some("octocat".to_owned()),
        head_ref: Some("hookline/fix".to_owned()),
        merged: false,
        url: None,
        updated_at: t(updated),
    }
}

fn org() -> String {
    format!("org-{}", uuid::Uuid::new_v4())
}

fn ids(list: &[Connection]) -> Vec<ConnectionId> {
    list.iter().map(|c| c.id.clone()).collect()
}

// ---- connections ---------------------------------------------------------------------------

pub async fn a_connection_round_trips_with_its_secrets(store: &dyn ConnectionStore) {
    let org = org();
    let c = connection(&org, "owner/repo");
    store.create(&c).await.unwrap();
    let got = store.get(&org, &c.id).await.unwrap().expect("created");
    assert_eq!(got, c, "every field, secrets as given, round-trips");
    let mut gitlab = gitlab(&org, "group/sub/project", "42");
    gitlab.webhook_status = WebhookStatus::Failed;
    gitlab.webhook_status_reason = Some("403: the token lacks the api scope".to_owned());
    gitlab.secret = None;
    gitlab.previous_secret = None;
    gitlab.webhook_id = None;
    store.create(&gitlab).await.unwrap();
    assert_eq!(store.get(&org, &gitlab.id).await.unwrap(), Some(gitlab));
    assert_eq!(
        store.get(&org, &ConnectionId::generate()).await.unwrap(),
        None
    );
}

pub async fn another_orgs_connection_is_invisible(store: &dyn ConnectionStore) {
    let (mine, theirs) = (org(), org());
    let c = connection(&mine, "owner/repo");
    store.create(&c).await.unwrap();
    assert_eq!(store.get(&theirs, &c.id).await.unwrap(), None);
    let (page, next) = store.list(&theirs, 10, None).await.unwrap();
    assert!(page.is_empty() && next.is_none());
    assert!(!store.delete(&theirs, &c.id).await.unwrap());
    let mut hijack = c.clone();
    hijack.org_id = theirs.clone();
    hijack.is_enabled = false;
    assert!(matches!(
        store.update(&hijack).await,
        Err(ConnectionError::NotFound)
    ));
    let still = store.get(&mine, &c.id).await.unwrap().expect("untouched");
    assert!(still.is_enabled);
}

pub async fn connecting_a_repository_twice_reports_the_existing_id(store: &dyn ConnectionStore) {
    let org = org();
    let first = connection(&org, "owner/repo");
    store.create(&first).await.unwrap();
    for name in ["owner/repo", "Owner/Repo"] {
        match store.create(&connection(&org, name)).await {
            Err(ConnectionError::Duplicate(id)) => assert_eq!(id, first.id),
            other => panic!("connecting {name} again: {other:?}"),
        }
    }
    // Another repository, or the same name on the other provider, is a different connection.
    store
        .create(&connection(&org, "owner/repo-2"))
        .await
        .unwrap();
    store
        .create(&gitlab(&org, "owner/repo", "7"))
        .await
        .unwrap();
    let (all, _) = store.list(&org, 10, None).await.unwrap();
    assert_eq!(all.len(), 3);
}

pub async fn two_orgs_may_connect_the_same_repository(store: &dyn ConnectionStore) {
    let repo = format!("owner/shared-{}", uuid::Uuid::new_v4());
    let a = connection(&org(), &repo);
    let b = connection(&org(), &repo);
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    let mut found = ids(&store
        .find_by_repository(RepoProvider::Github, &repo)
        .await
        .unwrap());
    found.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(found, want);
}

pub async fn only_one_of_many_concurrent_connects_wins(store: Arc<dyn ConnectionStore>) {
    let org = org();
    let attempts: Vec<Connection> = (0..8).map(|_| connection(&org, "owner/race")).collect();
    let results = futures::future::join_all(attempts.iter().map(|c| {
        let store = store.clone();
        let c = c.clone();
        tokio::spawn(async move { store.create(&c).await })
    }))
    .await;
    let mut winners = Vec::new();
    let mut duplicates = Vec::new();
    for (c, result) in attempts.iter().zip(results) {
        match result.unwrap() {
            Ok(()) => winners.push(c.id.clone()),
            Err(ConnectionError::Duplicate(id)) => duplicates.push(id),
            Err(e) => panic!("a concurrent connect failed: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one connect wins");
    assert!(duplicates.iter().all(|id| *id == winners[0]));
    let (all, _) = store.list(&org, 100, None).await.unwrap();
    assert_eq!(ids(&all), winners);
}

pub async fn the_list_pages_through_every_connection_once_newest_first(
    store: &dyn ConnectionStore,
) {
    let (org, other) = (org(), org());
    let mut created = Vec::new();
    for i in 0..7 {
        let mut c = connection(&org, &format!("owner/repo-{i}"));
        // Two share a created_at: the id breaks the tie, and no page loses either.
        c.created_at = t(if i == 4 { 3 } else { i });
        store.create(&c).await.unwrap();
        created.push(c);
    }
    store
        .create(&connection(&other, "owner/repo-0"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let (page, next) = store.list(&org, 3, cursor).await.unwrap();
        assert!(page.len() <= 3);
        seen.extend(page);
        pages += 1;
        assert!(pages <= 4, "the pages end");
        match next {
            Some(next) => {
                assert!(valid_cursor(&next));
                cursor = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3, "7 connections in pages of 3");
    assert_eq!(seen.len(), 7);
    let unique: HashSet<_> = ids(&seen).into_iter().collect();
    assert_eq!(unique.len(), 7, "each connection exactly once");
    assert!(seen.iter().all(|c| c.org_id == org));
    for pair in seen.windows(2) {
        assert!(
            (pair[0].created_at, &pair[0].id) > (pair[1].created_at, &pair[1].id),
            "newest first"
        );
    }
    let (first, _) = store.list(&org, 1, None).await.unwrap();
    assert_eq!(first[0].repository_full_name, "owner/repo-6");
    let (none, next) = store.list(&org, 0, None).await.unwrap();
    assert!(none.is_empty() && next.is_none());
    let (junk, next) = store
        .list(&org, 3, Some("not-a-cursor".to_owned()))
        .await
        .unwrap();
    assert!(junk.is_empty() && next.is_none());
}

pub async fn repositories_are_found_by_exact_name_and_project_id(store: &dyn ConnectionStore) {
    let suffix = uuid::Uuid::new_v4();
    let repo = format!("owner/app-{suffix}");
    let c = connection(&org(), &repo);
    store.create(&c).await.unwrap();
    store
        .create(&connection(&org(), &format!("{repo}-2")))
        .await
        .unwrap();
    let found = store
        .find_by_repository(RepoProvider::Github, &repo)
        .await
        .unwrap();
    assert_eq!(found, vec![c.clone()]);
    let upper = repo.to_uppercase();
    assert_eq!(
        ids(&store
            .find_by_repository(RepoProvider::Github, &upper)
            .await
            .unwrap()),
        vec![c.id.clone()]
    );
    for missing in [&repo[..repo.len() - 1], "owner/app"] {
        assert!(store
            .find_by_repository(RepoProvider::Github, missing)
            .await
            .unwrap()
            .is_empty());
    }
    assert!(store
        .find_by_repository(RepoProvider::Gitlab, &repo)
        .await
        .unwrap()
        .is_empty());

    let project = format!("{}", 100_000 + (suffix.as_u128() % 1_000_000));
    let gl = gitlab(&org(), &format!("group/app-{suffix}"), &project);
    store.create(&gl).await.unwrap();
    assert_eq!(
        store.find_by_project_id(&project).await.unwrap(),
        vec![gl.clone()]
    );
    assert!(store
        .find_by_project_id(&format!("{project}0"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&store
            .find_by_repository(RepoProvider::Gitlab, &gl.repository_full_name)
            .await
            .unwrap()),
        vec![gl.id.clone()]
    );
}

pub async fn an_update_replaces_the_record_but_not_its_counters(store: &dyn ConnectionStore) {
    let org = org();
    let mut c = gitlab(&org, "group/project", "555");
    c.project_id = None;
    store.create(&c).await.unwrap();
    store.record_delivery(&c.id, t(10), true).await.unwrap();

    let mut changed = c.clone();
    changed.is_enabled = false;
    changed.auto_pr_enabled = false;
    changed.webhook_events = vec!["push".to_owned()];
    changed.webhook_status = WebhookStatus::Failed;
    changed.webhook_status_reason = Some("hook gone".to_owned());
    changed.previous_secret = None;
    changed.project_id = Some(format!("proj-{}", uuid::Uuid::new_v4().simple()));
    changed.updated_at = t(20);
    // Stale counters from a read before the delivery: the stored ones stay.
    changed.total_deliveries = 0;
    changed.webhook_last_delivery_at = None;
    store.update(&changed).await.unwrap();

    let got = store.get(&org, &c.id).await.unwrap().unwrap();
    let mut want = changed.clone();
    want.total_deliveries = 1;
    want.failed_deliveries = 1;
    want.webhook_last_delivery_at = Some(t(10));
    assert_eq!(got, want);
    let project = changed.project_id.clone().unwrap();
    assert_eq!(
        ids(&store.find_by_project_id(&project).await.unwrap()),
        vec![c.id.clone()]
    );

    // The project id can change again, and the old one stops finding it.
    let mut again = changed.clone();
    again.project_id = None;
    store.update(&again).await.unwrap();
    assert!(store.find_by_project_id(&project).await.unwrap().is_empty());

    // The uniqueness marker is kept.
    assert!(matches!(
        store.create(&gitlab(&org, "group/project", "1")).await,
        Err(ConnectionError::Duplicate(id)) if id == c.id
    ));
    // Nothing to update: a missing id, or a different repository (the identity is fixed).
    let mut missing = changed.clone();
    missing.id = ConnectionId::generate();
    assert!(matches!(
        store.update(&missing).await,
        Err(ConnectionError::NotFound)
    ));
    let mut renamed = changed.clone();
    renamed.repository_full_name = "group/other".to_owned();
    assert!(matches!(
        store.update(&renamed).await,
        Err(ConnectionError::NotFound)
    ));
    // A change of case only is the same repository.
    let mut recased = changed.clone();
    recased.repository_full_name = "Group/Project".to_owned();
    store.update(&recased).await.unwrap();
}

pub async fn a_delete_frees_the_repository(store: &dyn ConnectionStore) {
    let org = org();
    let repo = format!("owner/gone-{}", uuid::Uuid::new_v4());
    let c = connection(&org, &repo);
    store.create(&c).await.unwrap();
    assert!(store.delete(&org, &c.id).await.unwrap());
    assert_eq!(store.get(&org, &c.id).await.unwrap(), None);
    assert!(!store.delete(&org, &c.id).await.unwrap(), "already gone");
    assert!(store
        .find_by_repository(RepoProvider::Github, &repo)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.record_delivery(&c.id, t(1), false).await,
        Err(ConnectionError::NotFound)
    ));
    assert!(matches!(
        store.update(&c).await,
        Err(ConnectionError::NotFound)
    ));
    // The marker went with it: the repository can be connected again.
    let again = connection(&org, &repo);
    store.create(&again).await.unwrap();
    let (all, _) = store.list(&org, 10, None).await.unwrap();
    assert_eq!(ids(&all), vec![again.id.clone()]);
    assert!(store
        .delete(&org, &ConnectionId::generate())
        .await
        .unwrap()
        .eq(&false));
}

pub async fn deliveries_are_counted_and_the_latest_kept(store: &dyn ConnectionStore) {
    let org = org();
    let c = connection(&org, "owner/counted");
    store.create(&c).await.unwrap();
    store.record_delivery(&c.id, t(10), false).await.unwrap();
    store.record_delivery(&c.id, t(30), true).await.unwrap();
    // A delivery recorded late does not move the last delivery back.
    store.record_delivery(&c.id, t(20), false).await.unwrap();
    let got = store.get(&org, &c.id).await.unwrap().unwrap();
    assert_eq!((got.total_deliveries, got.failed_deliveries), (3, 1));
    assert_eq!(got.webhook_last_delivery_at, Some(t(30)));
    assert!(matches!(
        store
            .record_delivery(&ConnectionId::generate(), t(1), false)
            .await,
        Err(ConnectionError::NotFound)
    ));
}

pub async fn concurrent_deliveries_are_all_counted(store: Arc<dyn ConnectionStore>) {
    let org = org();
    let c = connection(&org, "owner/busy");
    store.create(&c).await.unwrap();
    let tasks = (0..20).map(|i| {
        let store = store.clone();
        let id = c.id.clone();
        tokio::spawn(async move { store.record_delivery(&id, t(i), i % 4 == 0).await })
    });
    for done in futures::future::join_all(tasks).await {
        done.unwrap().unwrap();
    }
    let got = store.get(&org, &c.id).await.unwrap().unwrap();
    assert_eq!(got.total_deliveries, 20);
    assert_eq!(got.failed_deliveries, 5);
    assert_eq!(got.webhook_last_delivery_at, Some(t(19)));
}

pub async fn pings_are_kept_latest_first_and_survive_an_update(store: &dyn ConnectionStore) {
    let org = org();
    let c = connection(&org, "owner/pinged");
    store.create(&c).await.unwrap();
    assert_eq!(
        store
            .get(&org, &c.id)
            .await
            .unwrap()
            .unwrap()
            .health
            .last_ping_at,
        None
    );
    store.record_ping(&c.id, t(20)).await.unwrap();
    // A ping recorded late does not move the last one back.
    store.record_ping(&c.id, t(10)).await.unwrap();
    let got = store.get(&org, &c.id).await.unwrap().unwrap();
    assert_eq!(got.health.last_ping_at, Some(t(20)));
    // An update made from an older read keeps the stored ping, like the counters.
    let mut stale = c.clone();
    stale.health.ping_requested_at = Some(t(15));
    store.update(&stale).await.unwrap();
    let got = store.get(&org, &c.id).await.unwrap().unwrap();
    assert_eq!(got.health.last_ping_at, Some(t(20)));
    assert_eq!(got.health.ping_requested_at, Some(t(15)));
    let listed = store
        .find_by_repository(RepoProvider::Github, "owner/pinged")
        .await
        .unwrap();
    assert_eq!(listed[0].health.last_ping_at, Some(t(20)));
    assert!(matches!(
        store.record_ping(&ConnectionId::generate(), t(1)).await,
        Err(ConnectionError::NotFound)
    ));
    store.delete(&org, &c.id).await.unwrap();
    assert!(matches!(
        store.record_ping(&c.id, t(30)).await,
        Err(ConnectionError::NotFound)
    ));
}

pub async fn an_update_from_a_stale_read_loses_to_a_change_made_since(store: &dyn ConnectionStore) {
    let org = org();
    let c = connection(&org, "owner/raced");
    store.create(&c).await.unwrap();
    let read = store.get(&org, &c.id).await.unwrap().unwrap();
    // Written from the read it was made from: it goes through.
    let mut checked = read.clone();
    checked.health.checked_at = Some(t(30));
    assert!(store
        .update_if_unchanged(&checked, read.updated_at)
        .await
        .unwrap());
    // A user's change meanwhile (disable, a new updated_at)…
    let mut user = store.get(&org, &c.id).await.unwrap().unwrap();
    user.is_enabled = false;
    user.updated_at = read.updated_at + chrono::Duration::microseconds(1);
    store.update(&user).await.unwrap();
    // …wins over a write made from the older read.
    let mut stale = read.clone();
    stale.is_enabled = true;
    stale.health.checked_at = Some(t(40));
    assert!(!store
        .update_if_unchanged(&stale, read.updated_at)
        .await
        .unwrap());
    let got = store.get(&org, &c.id).await.unwrap().unwrap();
    assert!(!got.is_enabled);
    assert_eq!(got.health.checked_at, Some(t(30)));
    // Made from the fresh read, it goes through again.
    let mut fresh = got.clone();
    fresh.health.checked_at = Some(t(50));
    assert!(store
        .update_if_unchanged(&fresh, got.updated_at)
        .await
        .unwrap());
    assert_eq!(
        store
            .get(&org, &c.id)
            .await
            .unwrap()
            .unwrap()
            .health
            .checked_at,
        Some(t(50))
    );
    store.delete(&org, &c.id).await.unwrap();
    assert!(matches!(
        store.update_if_unchanged(&fresh, got.updated_at).await,
        Err(ConnectionError::NotFound)
    ));
}

pub async fn every_orgs_connections_are_listed_once_across_pages(store: &dyn ConnectionStore) {
    let mut want = std::collections::BTreeSet::new();
    for (o, n) in [("a", 3), ("b", 2), ("c", 1)] {
        let org = format!("{}-{o}", org());
        for i in 0..n {
            let c = connection(&org, &format!("owner/all-{o}-{i}"));
            store.create(&c).await.unwrap();
            want.insert(c.id.to_string());
        }
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..20 {
        let (page, next) = store.list_all(2, cursor).await.unwrap();
        seen.extend(page.into_iter().map(|c| c.id.to_string()));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let unique: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "listed twice: {seen:?}");
    assert_eq!(unique, want);
}

// ---- workflow runs -------------------------------------------------------------------------

pub async fn failed_jobs_only_grow_whatever_order_events_come_in(store: &dyn ConnectionStore) {
    let c = connection(&org(), "owner/jobs");
    let jobs = |run: Option<WorkflowRun>| run.expect("stored").failed_jobs;
    // The job first: a placeholder run holds it.
    let mut placeholder = workflow_run(&c, "77", 1, 0);
    placeholder.name = "placeholder".to_owned();
    store.add_failed_job(&placeholder, "lint").await.unwrap();
    let got = store
        .get_workflow_run(&c.id, "77", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.name.as_str(), got.failed_jobs.clone()),
        ("placeholder", vec!["lint".to_owned()])
    );
    // The run's event replaces the placeholder and keeps the job, adding its own.
    let mut run = workflow_run(&c, "77", 1, 30);
    run.failed_jobs = vec!["build".to_owned()];
    assert!(store.upsert_workflow_run(&run).await.unwrap());
    let got = store
        .get_workflow_run(&c.id, "77", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.name, "CI");
    assert_eq!(got.failed_jobs, ["build", "lint"]);
    // A later job never touches the run's state; the same job twice is kept once.
    store.add_failed_job(&placeholder, "test").await.unwrap();
    store.add_failed_job(&placeholder, "lint").await.unwrap();
    let got = store
        .get_workflow_run(&c.id, "77", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.name.as_str(), got.updated_at), ("CI", t(30)));
    assert_eq!(got.failed_jobs, ["build", "lint", "test"]);
    // An older event is not written, but the jobs it saw failing are kept; a newer one that
    // names none drops none.
    let mut late = workflow_run(&c, "77", 1, 10);
    late.failed_jobs = vec!["audit".to_owned()];
    assert!(!store.upsert_workflow_run(&late).await.unwrap());
    let mut newer = workflow_run(&c, "77", 1, 40);
    newer.conclusion = Some("failure".to_owned());
    assert!(store.upsert_workflow_run(&newer).await.unwrap());
    let got = store.get_workflow_run(&c.id, "77", 1).await.unwrap();
    assert_eq!(got.as_ref().map(|r| r.updated_at), Some(t(40)));
    assert_eq!(jobs(got), ["audit", "build", "lint", "test"]);
}

pub async fn concurrent_job_and_run_events_keep_every_failed_job(store: Arc<dyn ConnectionStore>) {
    let c = connection(&org(), "owner/racing");
    let placeholder = workflow_run(&c, "88", 1, 0);
    // A burst of job events and run events for one run, all at once (the worker handles a
    // batch's messages concurrently, and Lambda many batches side by side).
    let tasks = (0..12).map(|i| {
        let store = store.clone();
        let placeholder = placeholder.clone();
        let mut run = workflow_run(&c, "88", 1, 10 + i);
        run.failed_jobs = vec![format!("run-job-{i:02}")];
        tokio::spawn(async move {
            if i % 2 == 0 {
                store
                    .add_failed_job(&placeholder, &format!("job-{i:02}"))
                    .await?;
            } else {
                store.upsert_workflow_run(&run).await?;
            }
            Ok::<_, ConnectionError>(())
        })
    });
    for done in futures::future::join_all(tasks).await {
        done.unwrap().unwrap();
    }
    let got = store
        .get_workflow_run(&c.id, "88", 1)
        .await
        .unwrap()
        .unwrap();
    let want: Vec<String> = (0..12)
        .map(|i| match i % 2 {
            0 => format!("job-{i:02}"),
            _ => format!("run-job-{i:02}"),
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(got.failed_jobs, want);
    assert_eq!(got.updated_at, t(21), "the newest run event's state wins");
}

pub async fn an_older_workflow_run_event_does_not_overwrite_a_newer(store: &dyn ConnectionStore) {
    let c = connection(&org(), "owner/ci");
    let mut done = workflow_run(&c, "9001", 1, 20);
    done.status = "completed".to_owned();
    done.conclusion = Some("failure".to_owned());
    done.failed_jobs = vec!["build".to_owned()];
    assert!(store.upsert_workflow_run(&done).await.unwrap());
    // The in-progress event, delivered late: older, so dropped.
    let late = workflow_run(&c, "9001", 1, 10);
    assert!(!store.upsert_workflow_run(&late).await.unwrap());
    // At the same updated_at, an unfinished state does not replace a finished one.
    let same_time = workflow_run(&c, "9001", 1, 20);
    assert!(!store.upsert_workflow_run(&same_time).await.unwrap());
    assert_eq!(
        store.get_workflow_run(&c.id, "9001", 1).await.unwrap(),
        Some(done.clone())
    );
    // Redelivery of the same event is harmless; a newer one replaces it.
    assert!(store.upsert_workflow_run(&done).await.unwrap());
    let mut newer = done.clone();
    newer.failed_jobs.push("test".to_owned());
    newer.updated_at = t(25);
    assert!(store.upsert_workflow_run(&newer).await.unwrap());
    assert_eq!(
        store.get_workflow_run(&c.id, "9001", 1).await.unwrap(),
        Some(newer)
    );
    // Each attempt, each run and each connection is its own record.
    let retry = workflow_run(&c, "9001", 2, 5);
    assert!(store.upsert_workflow_run(&retry).await.unwrap());
    assert_eq!(
        store.get_workflow_run(&c.id, "9001", 2).await.unwrap(),
        Some(retry)
    );
    assert_eq!(
        store.get_workflow_run(&c.id, "9002", 1).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .get_workflow_run(&ConnectionId::generate(), "9001", 1)
            .await
            .unwrap(),
        None
    );
}

// ---- incidents -----------------------------------------------------------------------------

pub async fn an_incident_is_created_once_per_run_attempt(store: &dyn ConnectionStore) {
    let c = connection(&org(), "owner/inc");
    let first = incident(&c, "77", 1, 0);
    assert!(store.create_incident_once(&first).await.unwrap());
    let again = incident(&c, "77", 1, 5);
    assert!(!store.create_incident_once(&again).await.unwrap());
    assert_eq!(
        store.get_incident(&c.org_id, &again.id).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_incident(&c.org_id, &first.id).await.unwrap(),
        Some(first.clone())
    );
    let retry = incident(&c, "77", 2, 10);
    assert!(store.create_incident_once(&retry).await.unwrap());
    let other = connection(&org(), "owner/inc");
    assert!(store
        .create_incident_once(&incident(&other, "77", 1, 0))
        .await
        .unwrap());
    let listed = store
        .list_incidents(&c.org_id, None, None, 10)
        .await
        .unwrap();
    assert_eq!(listed, vec![retry, first]);
}

pub async fn only_one_of_many_concurrent_incident_creates_wins(store: Arc<dyn ConnectionStore>) {
    let c = connection(&org(), "owner/race");
    let tasks = (0..8).map(|i| {
        let store = store.clone();
        let inc = incident(&c, "31337", 1, i);
        tokio::spawn(async move { store.create_incident_once(&inc).await })
    });
    let created = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .filter(|created| *created)
        .count();
    assert_eq!(created, 1);
    let listed = store
        .list_incidents(&c.org_id, None, None, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

pub async fn incidents_are_org_scoped_filtered_and_newest_first(store: &dyn ConnectionStore) {
    let (org, other) = (org(), org());
    let app = connection(&org, "owner/app");
    let lib = connection(&org, "owner/lib");
    let theirs = connection(&other, "owner/app");
    let mut made = Vec::new();
    for (i, c) in [&app, &lib, &app, &lib, &app].into_iter().enumerate() {
        let mut inc = incident(c, &format!("run-{i}"), 1, i as i64);
        if i == 2 {
            inc.status = "resolved".to_owned();
        }
        assert!(store.create_incident_once(&inc).await.unwrap());
        made.push(inc);
    }
    let foreign = incident(&theirs, "run-x", 1, 100);
    assert!(store.create_incident_once(&foreign).await.unwrap());

    let all = store.list_incidents(&org, None, None, 50).await.unwrap();
    let want: Vec<_> = made.iter().rev().cloned().collect();
    assert_eq!(all, want, "the org's incidents only, newest first");
    let limited = store.list_incidents(&org, None, None, 2).await.unwrap();
    assert_eq!(limited, want[..2].to_vec());
    let app_only = store
        .list_incidents(&org, Some("Owner/App"), None, 50)
        .await
        .unwrap();
    assert_eq!(
        app_only.iter().map(|i| &i.run_id).collect::<Vec<_>>(),
        ["run-4", "run-2", "run-0"]
    );
    let open_app = store
        .list_incidents(&org, Some("owner/app"), Some("open"), 50)
        .await
        .unwrap();
    assert_eq!(
        open_app.iter().map(|i| &i.run_id).collect::<Vec<_>>(),
        ["run-4", "run-0"]
    );
    let resolved = store
        .list_incidents(&org, None, Some("resolved"), 1)
        .await
        .unwrap();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].run_id, "run-2");
    assert!(store
        .list_incidents(&org, Some("owner/ap"), None, 50)
        .await
        .unwrap()
        .is_empty());

    // Another org's incident: invisible, and cannot be changed.
    assert_eq!(store.get_incident(&org, &foreign.id).await.unwrap(), None);
    assert_eq!(store.get_incident(&other, &made[0].id).await.unwrap(), None);
    assert!(matches!(
        store
            .set_incident_pr_status(&org, &foreign.id, "merged")
            .await,
        Err(ConnectionError::NotFound)
    ));
    assert!(matches!(
        store
            .set_incident_pr_status(&org, &IncidentId::generate(), "open")
            .await,
        Err(ConnectionError::NotFound)
    ));
    let untouched = store
        .get_incident(&other, &foreign.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untouched.pr_status, None);

    store
        .set_incident_pr_status(&org, &made[0].id, "open")
        .await
        .unwrap();
    store
        .set_incident_pr_status(&org, &made[0].id, "merged")
        .await
        .unwrap();
    let got = store
        .get_incident(&org, &made[0].id)
        .await
        .unwrap()
        .unwrap();
    let mut want = made[0].clone();
    want.pr_status = Some("merged".to_owned());
    assert_eq!(got, want);
    let listed = store.list_incidents(&org, None, None, 50).await.unwrap();
    assert_eq!(
        listed.last(),
        Some(&want),
        "the list shows the PR status too"
    );
}

pub async fn an_open_incident_is_resolved_once(store: &dyn ConnectionStore) {
    let c = connection(&org(), "owner/resolve");
    let open = incident(&c, "88", 1, 0);
    assert!(store.create_incident_once(&open).await.unwrap());
    store
        .set_incident_pr_status(&c.org_id, &open.id, "merged")
        .await
        .unwrap();

    // Another org cannot resolve it, and an unknown id is not found.
    let other = org();
    assert!(matches!(
        store.resolve_incident(&other, &open.id, t(5)).await,
        Err(ConnectionError::NotFound)
    ));
    assert!(matches!(
        store
            .resolve_incident(&c.org_id, &IncidentId::generate(), t(5))
            .await,
        Err(ConnectionError::NotFound)
    ));
    assert_eq!(
        store
            .get_incident(&c.org_id, &open.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "open"
    );

    assert!(store
        .resolve_incident(&c.org_id, &open.id, t(10))
        .await
        .unwrap());
    let mut want = open.clone();
    want.status = "resolved".to_owned();
    want.updated_at = t(10);
    want.pr_status = Some("merged".to_owned());
    assert_eq!(
        store.get_incident(&c.org_id, &open.id).await.unwrap(),
        Some(want.clone())
    );
    // The status filter sees the change too.
    assert!(store
        .list_incidents(&c.org_id, None, Some("open"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_incidents(&c.org_id, Some("owner/resolve"), Some("resolved"), 10)
            .await
            .unwrap(),
        vec![want.clone()]
    );

    // Resolving it again changes nothing.
    assert!(!store
        .resolve_incident(&c.org_id, &open.id, t(20))
        .await
        .unwrap());
    assert_eq!(
        store.get_incident(&c.org_id, &open.id).await.unwrap(),
        Some(want)
    );
}

pub async fn only_one_of_many_concurrent_resolves_wins(store: Arc<dyn ConnectionStore>) {
    let c = connection(&org(), "owner/resolve-race");
    let open = incident(&c, "99", 1, 0);
    assert!(store.create_incident_once(&open).await.unwrap());
    let tasks = (0..8).map(|i| {
        let (store, org, id) = (store.clone(), c.org_id.clone(), open.id.clone());
        tokio::spawn(async move { store.resolve_incident(&org, &id, t(10 + i)).await })
    });
    let resolved = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .filter(|changed| *changed)
        .count();
    assert_eq!(resolved, 1);
    let got = store
        .get_incident(&c.org_id, &open.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, "resolved");
}

pub async fn the_newest_incident_on_a_branch_is_found(store: &dyn ConnectionStore) {
    let c = connection(&org(), "owner/branches");
    let mut older = incident(&c, "1", 1, 0);
    older.branch = Some("feature/x#1".to_owned());
    let mut newer = incident(&c, "2", 1, 10);
    newer.branch = Some("feature/x#1".to_owned());
    let mut main = incident(&c, "3", 1, 20);
    main.branch = Some("main".to_owned());
    let mut none = incident(&c, "4", 1, 30);
    none.branch = None;
    for inc in [&older, &newer, &main, &none] {
        assert!(store.create_incident_once(inc).await.unwrap());
    }
    store
        .set_incident_pr_status(&c.org_id, &newer.id, "open")
        .await
        .unwrap();
    let found = store
        .find_incident_by_branch(&c.id, "feature/x#1")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.id, newer.id);
    assert_eq!(found.pr_status.as_deref(), Some("open"));
    assert_eq!(
        store
            .find_incident_by_branch(&c.id, "main")
            .await
            .unwrap()
            .map(|i| i.id),
        Some(main.id)
    );
    assert_eq!(
        store
            .find_incident_by_branch(&c.id, "feature")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_incident_by_branch(&ConnectionId::generate(), "main")
            .await
            .unwrap(),
        None
    );
}

// ---- pull requests -------------------------------------------------------------------------

pub async fn the_newest_pull_request_state_wins(store: &dyn ConnectionStore) {
    let c = connection(&org(), "owner/prs");
    let opened = pull_request(&c, 12, "Fix the build", 10);
    assert!(store.upsert_pull_request(&opened).await.unwrap());
    let mut merged = opened.clone();
    merged.state = "closed".to_owned();
    merged.merged = true;
    merged.updated_at = t(20);
    assert!(store.upsert_pull_request(&merged).await.unwrap());
    let mut stale = opened.clone();
    stale.title = "stale".to_owned();
    stale.updated_at = t(15);
    assert!(!store.upsert_pull_request(&stale).await.unwrap());
    assert_eq!(
        store.get_pull_request(&c.id, 12).await.unwrap(),
        Some(merged)
    );
    let other = pull_request(&c, 13, "Another", 1);
    assert!(store.upsert_pull_request(&other).await.unwrap());
    assert_eq!(
        store.get_pull_request(&c.id, 13).await.unwrap(),
        Some(other)
    );
    assert_eq!(store.get_pull_request(&c.id, 14).await.unwrap(), None);
    assert_eq!(
        store
            .get_pull_request(&ConnectionId::generate(), 12)
            .await
            .unwrap(),
        None
    );
}

pub async fn provider_tokens_are_kept_per_org_user_and_provider(store: &dyn ConnectionStore) {
    use crate::connections::{StoredProviderToken, StoredSecret};
    let sealed = |v: &str| StoredProviderToken {
        access: StoredSecret {
            sealed: v.to_owned(),
            valid_until: None,
        },
        refresh: None,
    };
    // An OAuth grant: when it expires, and its refresh token.
    let granted = StoredProviderToken {
        access: StoredSecret {
            sealed: "gitlab".to_owned(),
            valid_until: Some(t(7200)),
        },
        refresh: Some("gitlab-refresh".to_owned()),
    };
    let (org, other_org) = (
        format!("org-{}", uuid::Uuid::new_v4()),
        format!("org-{}", uuid::Uuid::new_v4()),
    );
    assert_eq!(
        store
            .get_provider_token(&org, "u1", RepoProvider::Github)
            .await
            .unwrap(),
        None
    );
    store
        .put_provider_token(&org, "u1", RepoProvider::Github, &sealed("first"))
        .await
        .unwrap();
    store
        .put_provider_token(&org, "u1", RepoProvider::Github, &sealed("second"))
        .await
        .unwrap();
    store
        .put_provider_token(&org, "u1", RepoProvider::Gitlab, &granted)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_provider_token(&org, "u1", RepoProvider::Github)
            .await
            .unwrap(),
        Some(sealed("second"))
    );
    assert_eq!(
        store
            .get_provider_token(&org, "u1", RepoProvider::Gitlab)
            .await
            .unwrap(),
        Some(granted)
    );
    assert_eq!(
        store
            .get_provider_token(&org, "u2", RepoProvider::Github)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_provider_token(&other_org, "u1", RepoProvider::Github)
            .await
            .unwrap(),
        None
    );
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression
/// yielding `(guard, Arc<dyn ConnectionStore>)` for a fresh, empty store; the guard lives for
/// the test (a temp dir, a table).
#[macro_export]
macro_rules! connections_conformance {
    ($make:expr) => {
        mod connections_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::connections::conformance as c;

            macro_rules! case {
                ($name:ident, $takes:ident) => {
                    $crate::conformance_case!($make, $name, $takes);
                };
            }

            case!(a_connection_round_trips_with_its_secrets, borrowed);
            case!(another_orgs_connection_is_invisible, borrowed);
            case!(
                connecting_a_repository_twice_reports_the_existing_id,
                borrowed
            );
            case!(two_orgs_may_connect_the_same_repository, borrowed);
            case!(only_one_of_many_concurrent_connects_wins, shared);
            case!(
                the_list_pages_through_every_connection_once_newest_first,
                borrowed
            );
            case!(
                repositories_are_found_by_exact_name_and_project_id,
                borrowed
            );
            case!(an_update_replaces_the_record_but_not_its_counters, borrowed);
            case!(a_delete_frees_the_repository, borrowed);
            case!(deliveries_are_counted_and_the_latest_kept, borrowed);
            case!(concurrent_deliveries_are_all_counted, shared);
            case!(pings_are_kept_latest_first_and_survive_an_update, borrowed);
            case!(
                an_update_from_a_stale_read_loses_to_a_change_made_since,
                borrowed
            );
            case!(
                every_orgs_connections_are_listed_once_across_pages,
                borrowed
            );
            case!(
                an_older_workflow_run_event_does_not_overwrite_a_newer,
                borrowed
            );
            case!(
                failed_jobs_only_grow_whatever_order_events_come_in,
                borrowed
            );
            case!(concurrent_job_and_run_events_keep_every_failed_job, shared);
            case!(an_incident_is_created_once_per_run_attempt, borrowed);
            case!(only_one_of_many_concurrent_incident_creates_wins, shared);
            case!(incidents_are_org_scoped_filtered_and_newest_first, borrowed);
            case!(an_open_incident_is_resolved_once, borrowed);
            case!(only_one_of_many_concurrent_resolves_wins, shared);
            case!(the_newest_incident_on_a_branch_is_found, borrowed);
            case!(the_newest_pull_request_state_wins, borrowed);
            case!(provider_tokens_are_kept_per_org_user_and_provider, borrowed);
        }
    };
}
