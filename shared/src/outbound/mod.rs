//! Outbound webhooks (DESIGN.md §1.3, seeds 002 and 003): endpoints an org registers, events
//! it publishes into its ordered stream, the dispatcher that turns each event into one
//! delivery per subscribed endpoint, and the deliverer that signs and sends them with retries.

pub mod model;
pub mod sink;
