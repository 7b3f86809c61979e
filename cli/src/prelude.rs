//! The outside names most commands use (clap, the client library, std), imported once.
//! Only other crates' items: commands import each other's by name.

pub(crate) use clap::{Parser, Subcommand};
pub(crate) use keel_client::{
    ClientError, ConsumeResult, Consumer, ConsumerOptions, Delivery, PushConsumer,
    PushConsumerOptions, Record, StartFrom,
};
pub(crate) use std::path::PathBuf;
pub(crate) use std::process::ExitCode;
pub(crate) use std::time::{Duration, Instant};
