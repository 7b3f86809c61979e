//! Integration tests: real keeld processes on 127.0.0.1, driven through keel-client.

mod bad_input;
mod bench;
mod cli;
mod cli_send;
mod cluster;
mod console;
mod controller;
mod corruption;
mod crash;
mod failover_clients;
mod group_delete;
mod groups;
mod hardening;
mod harness;
mod idempotence;
mod ordered;
mod python_client;
mod resources;
mod retention;
mod security;
mod send_consume;
mod shutdown;
mod stalled_disk;
mod storage_faults;
mod timer;
mod transactions;
