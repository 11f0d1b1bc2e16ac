//! Hookline's one library: provider verification, the inbound pipeline, the event worker,
//! the ports with their AWS and embedded adapters, and the glue that runs handlers on Lambda
//! and in the local server.

pub mod api;
pub mod auth;
pub mod billing;
pub mod clock;
pub mod config;
pub mod connections;
pub mod delivery_log;
pub mod hooks;
pub mod http;
pub(crate) mod ids;
pub mod model;
pub mod outbound;
pub mod pipeline;
pub mod ports;
pub mod providers;
pub mod runtime;
pub mod secret;
pub mod telemetry;
pub mod worker;
