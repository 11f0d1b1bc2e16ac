//! WhatsApp Cloud API webhooks: GET /api/v1/webhooks/whatsapp answers the verification
//! handshake; POST is verified, deduped and queued for the worker.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_inbound(hookline::model::Source::Whatsapp).await
}
