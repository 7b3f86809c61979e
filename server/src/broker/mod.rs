//! The broker proper: one mio event loop per core (`event_loop`), each owning a shard of
//! the connections (`shard`), the dispatch of each request kind to its handler
//! (`dispatch`, `handlers`), the reader threads that serve PULLs and lookups off the
//! loops (`reader`) the timer that delivers messages at their time (`timer`) and its thread
//! (`schedule`).

pub(crate) mod connection;
pub(crate) mod dispatch;
pub(crate) mod event_loop;
pub(crate) mod handlers;
pub mod permissions;
pub(crate) mod reader;
pub mod schedule;
pub(crate) mod security_jobs;
pub(crate) mod shard;
#[cfg(test)]
mod shard_tests;
pub mod timer;
pub mod transactions;
pub(crate) mod workers;
