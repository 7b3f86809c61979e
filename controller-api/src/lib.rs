//! What it takes to talk to keel's controllers without running one: the JSON request and
//! reply types ([`api`]), the frame kinds ([`wire`]) and a blocking client ([`client`]).
//! Brokers, the `keel` CLI and keel-bench link this crate; only the controller itself
//! (`keel-controller`) links openraft and tokio.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod api;
pub mod client;
pub mod wire;

pub use keel_net::Dial;
