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
pub(crate) mod payload_log;
pub mod queue;
pub mod ratelimit;
pub mod secrets;
pub mod sqlite;
pub mod sqlite_page_cache;
pub mod store;

/// One `#[tokio::test]` of a port's conformance suite, for the suites' generator macros
/// (`store_conformance!` and the like), expanded where `c` names the suite's module.
/// `$make` is an async expression yielding `(guard, Arc<dyn Port>)` for a fresh, empty port;
/// the guard (a temp dir, a table) lives for the test. A `borrowed` case takes `&dyn Port`, a
/// `shared` one the `Arc` (it runs tasks of its own against the port).
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_case {
    ($make:expr, $name:ident, borrowed) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_guard, port) = $make.await;
            c::$name(&*port).await;
        }
    };
    ($make:expr, $name:ident, shared) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_guard, port) = $make.await;
            c::$name(port).await;
        }
    };
}
