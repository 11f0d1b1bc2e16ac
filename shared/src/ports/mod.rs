//! Ports: what the domain needs from the outside world. Each has exactly two adapters, AWS
//! (`aws.rs`) and embedded (`embedded.rs`), and one conformance suite both must pass.
//! `intake` is the exception: a capability only the embedded adapters have together.

pub mod billing;
pub mod connections;
pub(crate) mod dynamo;
pub mod intake;
pub mod keys;
pub mod mail;
pub mod orgs;
pub mod outbound;
pub mod queue;
pub mod ratelimit;
pub mod secrets;
pub mod sqlite;
pub mod store;
