//! Ports: what the domain needs from the outside world. Each has exactly two adapters, AWS
//! (`aws.rs`) and embedded (`embedded.rs`), and one conformance suite both must pass.

pub mod connections;
pub mod keys;
pub mod queue;
pub mod secrets;
pub mod sqlite;
pub mod store;
