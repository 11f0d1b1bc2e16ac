//! Billing: what an org pays for and may use — its subscription state, the tier table of
//! features and limits, the entitlements derived from them, and the offline Ed25519 licences
//! self-hosted deployments run on instead of Stripe.

pub mod licence;
pub mod model;
pub mod plan;
pub mod service;
pub mod stripe;
pub mod stripe_events;
pub mod tiers;
