//! The HTTP side of keeld (`metrics_listen`): the Prometheus `/metrics` endpoint and the
//! browser console with its JSON API.

pub(crate) mod console;
pub mod metrics;
pub(crate) mod serve;
