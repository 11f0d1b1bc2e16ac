//! Hook health (EventBridge schedule): reads each active connection's hook from GitHub or
//! GitLab, recreates a deleted one, patches drift back, marks what cannot be repaired with a
//! reason, flags silent hooks, and asks for a ping after each repair.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_hook_health().await
}
