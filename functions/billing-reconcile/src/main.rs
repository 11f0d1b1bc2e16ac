//! Billing reconciliation (EventBridge schedule): lists subscriptions from Stripe, repairs the
//! drift a missed webhook left, applies events kept for since-linked customers, and re-checks
//! the installed licence. Mails no one; a failure fails the invocation.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_billing_reconcile().await
}
