//! keel's controller: a Raft quorum (openraft 0.9) deciding, per broker group, the
//! master, the master epoch and the SyncStateSet (SSS). Runs inside `keeld namesrv`
//! (each name server a voter) or alone (`keeld controller`), on a current-thread Tokio
//! runtime of its own thread; the brokers' event loops never see it.
//!
//! Brokers heartbeat to the leader (`client::heartbeat`); the leader keeps who it
//! heard from in memory, turns a master's report of its in-sync slaves into SSS
//! changes, and, when a master falls silent for `master_timeout`, elects a new one
//! from the SSS. Every decision is a Raft command applied by `state::Groups::apply`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub use config::{ControllerConfig, ControllerSecurity, TypeConfig};
pub use keel_controller_api::{api, client};
mod config;
mod leader;
mod network;
mod node;
mod server;
#[cfg(test)]
mod single_voter_tests;
pub mod state;
mod store;
pub mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A running controller; dropping it does not stop it (`stop` does).
pub struct Controller {
    pub local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    /// Binds the controller port, opens the Raft state in `dir` (refusing a damaged
    /// log) and starts serving on a thread of its own.
    pub fn start(config: ControllerConfig) -> io::Result<Controller> {
        let Some(own) = config.peers.get(&config.node_id) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "controller node id {} is not among the peers {:?}",
                    config.node_id, config.peers
                ),
            ));
        };
        let listener = std::net::TcpListener::bind(own).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on controller port {own}: {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let log_store = store::LogStore::open(&config.dir)?;
        let machine = store::StateMachine::open(&config.dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keel-controller".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        log::error!("controller: cannot start its runtime: {error}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    if let Err(error) =
                        server::run(config, listener, log_store, machine, stopping).await
                    {
                        log::error!("controller stopped: {error}");
                    }
                });
            })?;
        Ok(Controller {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
