//! `hookline hooks check [--repair]` as an operator runs it against a data dir, with GitHub's
//! API answered by the local stub: without `--repair` it says what it would do and changes
//! nothing; with it, a hook deleted by hand is back, and a second run finds nothing to do.

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
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

const HOOKLINE: &str = env!("CARGO_BIN_EXE_hookline");
const REPO: &str = "acme/hookline-demo";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `hookline hooks check ARGS` over `dir`, GitHub's API at `api`, nothing from the developer's
/// own environment or env file.
async fn hooks_check(dir: &Path, api: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(HOOKLINE);
    cmd.args(["hooks", "check", "--data-dir"])
        .arg(dir)
        .arg("--env-file")
        .arg(dir.join("no.env"))
        .args(args);
    for name in [
        "GITLAB_URL",
        "HOOK_HEALTH_INTERVAL",
        "HOOK_SILENCE_ALERT",
        "WEBHOOK_BASE_URL",
        "GITHUB_OAUTH_CLIENT_ID",
        "GITLAB_OAUTH_CLIENT_ID",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("GITHUB_API_URL", api);
    tokio::task::spawn_blocking(move || cmd.output().expect("run hookline"))
        .await
        .unwrap()
}

/// A connection of `REPO` in `dir`, made as `serve` would make it, its hook on the stub.
async fn connect(dir: &Path, stub: &HookApiStub) -> String {
    let db = Database::open(dir, Durability::Full).unwrap();
    let store: Arc<dyn ConnectionStore> = Arc::new(EmbeddedConnectionStore::new(db));
    let keys: Arc<dyn KeyService> = Arc::new(LocalKeys::open_or_create(dir).unwrap());
    let tokens = StoredProviderTokens::new(store.clone(), keys.clone());
    tokens
        .put(
            "org-a",
            "user-1",
            RepoProvider::Github,
            &Secret::new("ghp_cli"),
        )
        .await
        .unwrap();
    let repos = Repositories::new(
        store,
        keys,
        Arc::new(tokens),
        Arc::new(stub.github()),
        Arc::new(stub.gitlab()),
        Arc::new(hookline::clock::SystemClock),
        Settings {
            webhook_base_url: "https://hooks.example.com".into(),
            rotation_overlap: Duration::from_secs(3600),
        },
    );
    let req: ConnectRequest =
        serde_json::from_value(serde_json::json!({ "repository_full_name": REPO })).unwrap();
    repos
        .connect("org-a", "user-1", req)
        .await
        .unwrap()
        .id
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_check_reports_without_repair_and_repairs_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let stub = HookApiStub::start().await;
    let id = connect(dir.path(), &stub).await;
    let deleted = stub.hooks(REPO)[0].clone();
    assert!(stub.remove_hook(deleted.id), "deleted by hand on GitHub");

    // A dry run: says what it would do, and neither GitHub nor the data dir changes.
    stub.clear_requests();
    let out = hooks_check(dir.path(), stub.url(), &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("checked 1 active connection(s): 0 healthy, 1 recreated")
            && stdout.contains(&id)
            && stdout.contains("recreated [would be]")
            && stdout.contains("hooks check --repair"),
        "{stdout}"
    );
    assert!(stub.hooks(REPO).is_empty());
    let methods: Vec<String> = stub.requests().into_iter().map(|r| r.method).collect();
    assert!(methods.iter().all(|m| m == "GET"), "{methods:?}");

    // With --repair: the hook is back with a fresh secret.
    let out = hooks_check(dir.path(), stub.url(), &["--repair"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("1 recreated") && stdout.contains("recreated [done]"),
        "{stdout}"
    );
    let back = stub.hooks(REPO);
    assert_eq!(back.len(), 1);
    assert_ne!(
        back[0].secret.as_ref().unwrap().expose(),
        deleted.secret.as_ref().unwrap().expose()
    );
    assert!(!stdout.contains(back[0].secret.as_ref().unwrap().expose()));
    assert!(!stdout.contains("ghp_cli") && !text(&out.stderr).contains("ghp_cli"));

    // Nothing left to do, in JSON for scripts.
    let out = hooks_check(dir.path(), stub.url(), &["--repair", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&report["checked"], &report["healthy"], &report["recreated"]),
        (&1.into(), &1.into(), &0.into()),
        "{report}"
    );
}
