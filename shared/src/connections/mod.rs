//! Repository connections: the model, and the service that connects, rotates and removes
//! them over the connection store (`ports::connections`), the key service and the hook clients.

pub mod model;

pub use model::*;
pub mod service;
