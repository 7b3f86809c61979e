//! keeld, the keel broker: one mio event loop per core over keel's binary protocol, in
//! front of the storage crate's CommitLog.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod args;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod context;
pub mod error;
pub mod http;
pub mod namesrv;

use broker::event_loop::{EventLoop, Handoff, LoopParts, WAKER};
use clap::Parser;
use config::{Config, Flush};
use context::Broker;
use error::BrokerError;
use keel_storage::Store;
use mio::{Poll, Waker};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use args::{Args, Command, ControllerArgs, NodeSecurityArgs};

/// `keeld add-admin`: an operator with every permission, written to the data
/// directory's security file (the broker must be stopped: it holds the file's state in
/// memory and would not see the change).
fn add_admin(args: &Args, user: &str) -> std::process::ExitCode {
    let config = match config_from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("keeld add-admin: configuration error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let password = match std::env::var("KEEL_PASSWORD") {
        Ok(password) => password,
        Err(_) => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("keeld add-admin: cannot read the password from standard input");
                return std::process::ExitCode::from(2);
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if let Err(error) = std::fs::create_dir_all(&config.data_dir) {
        eprintln!("keeld add-admin: {}: {error}", config.data_dir.display());
        return std::process::ExitCode::FAILURE;
    }
    let _lock = match keel_storage::admin::lock_if_used(&config.data_dir) {
        Ok(lock) => lock,
        Err(error) => {
            eprintln!("keeld add-admin: {error} (stop the broker first)");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = keel_security::Authority::open(
        config.security.auth,
        Some(config.data_dir.join(keel_security::SECURITY_FILE)),
        None,
    )
    .and_then(|authority| {
        let secret = keel_security::Secret(password);
        let exists = authority
            .apply(keel_security::SecurityCommand::UserList)?
            .users
            .iter()
            .any(|name| name == user);
        let command = match exists {
            true => keel_security::SecurityCommand::UserPasswd {
                name: user.to_string(),
                password: secret,
            },
            false => keel_security::SecurityCommand::UserAdd {
                name: user.to_string(),
                password: secret,
            },
        };
        authority.apply(command)?;
        authority.grant_everything(user)
    });
    match outcome {
        Ok(reply) => {
            println!(
                "{user} may do everything on the broker in {} (security version {})",
                config.data_dir.display(),
                reply.version
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("keeld add-admin: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Starts the controller `args` ask for, if any.
fn start_controller(
    args: &ControllerArgs,
    security: &NodeSecurityArgs,
) -> Result<Option<keel_controller::Controller>, String> {
    let Some(mut config) = args.config()? else {
        return Ok(None);
    };
    config.security = keel_controller::ControllerSecurity {
        tls: security.server_tls().map(|tls| tls.config()).transpose()?,
        peers: keel_net::Dial {
            tls: security
                .tls_ca
                .as_deref()
                .map(|ca| {
                    let cert_key = match (&security.tls_cert, &security.tls_key) {
                        (Some(cert), Some(key)) if security.tls_client_ca.is_some() => {
                            Some((cert.as_path(), key.as_path()))
                        }
                        _ => None,
                    };
                    keel_security::ClientTls::new(ca, cert_key, security.tls_server_name.clone())
                })
                .transpose()?,
            token: security.token()?.map(keel_security::Secret),
        },
    };
    let dir = config.dir.display().to_string();
    keel_controller::Controller::start(config)
        .map(Some)
        .map_err(|e| format!("controller (state in {dir}): {e}"))
}

/// Entry point of the `keeld` binary; returns the process exit code.
pub fn main_entry() -> std::process::ExitCode {
    let args = Args::parse();
    let plain_default = args.config.is_none()
        && args.data_dir.is_none()
        && args.listen.is_none()
        && args.flush.is_none();
    if args.print_config && plain_default && args.command.is_none() {
        print!("{}", config::DEFAULT_CONFIG_TOML);
        return std::process::ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Some(Command::AddAdmin { user }) = &args.command {
        return add_admin(&args, user);
    }
    if let Some(Command::Controller {
        controller,
        security,
    }) = &args.command
    {
        return match start_controller(controller, security) {
            Ok(Some(running)) => {
                println!("keeld controller listening on {}", running.local_addr);
                let _ = std::io::stdout().flush();
                wait_for_termination();
                running.stop();
                std::process::ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("keeld controller: needs --controller-id and --controller-peers");
                std::process::ExitCode::from(2)
            }
            Err(error) => {
                eprintln!("keeld controller: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Namesrv {
        listen,
        broker_timeout_ms,
        controller,
        security,
    }) = args.command
    {
        let node_security = match security.node_security() {
            Ok(node_security) => node_security,
            Err(error) => {
                eprintln!("keeld namesrv: {error}");
                return std::process::ExitCode::from(2);
            }
        };
        let _controller = match start_controller(&controller, &security) {
            Ok(running) => running,
            Err(error) => {
                eprintln!("keeld namesrv: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let timeout = std::time::Duration::from_millis(broker_timeout_ms);
        return match namesrv::run(listen, timeout, node_security) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("keeld namesrv: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match config_from_args(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("keeld: configuration error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check_config {
        return check_config(&args, &config);
    }
    if args.print_config {
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("keeld: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            eprintln!("keeld: {error}");
            std::process::ExitCode::from(error.exit_status())
        }
    }
}

/// Tells systemd (`Type=notify`) how keeld is doing, when it runs under it
/// (`NOTIFY_SOCKET` set): READY once it listens, STOPPING at a signal. A datagram to
/// the socket systemd named, a path or an abstract name (`@...`); failures only logged.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    use std::os::unix::ffi::OsStrExt;
    let name = socket.as_bytes();
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|datagram| {
        let address = match name.strip_prefix(b"@") {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(&socket))?,
        };
        datagram.send_to_addr(state.as_bytes(), &address)
    });
    if let Err(error) = sent {
        log::warn!(
            "cannot notify systemd ({}): {error}",
            socket.to_string_lossy()
        );
    }
}

/// `keeld --check-config`: the file parses, every key is in range, and the
/// certificates, keys and token files it names are usable. Nothing is started.
fn check_config(args: &Args, config: &Config) -> std::process::ExitCode {
    let source = args
        .config
        .as_ref()
        .map_or("the embedded default".to_string(), |path| {
            path.display().to_string()
        });
    match context::security::Security::check(config) {
        Ok(warnings) => {
            for warning in &warnings {
                eprintln!("keeld: WARNING: {warning}");
            }
            match warnings.is_empty() {
                true => println!("keeld: configuration OK ({source})"),
                false => println!("keeld: configuration OK, with warnings ({source})"),
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("keeld: configuration error in {source}: {error}");
            std::process::ExitCode::from(error::exit::CONFIG)
        }
    }
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_termination() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(error) = signal_hook::flag::register(signal, stop.clone()) {
            log::error!("cannot handle signal {signal}: {error}");
        }
    }
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn config_from_args(args: &Args) -> Result<Config, config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    match args.flush.as_deref() {
        Some("sync") => config.flush = Flush::Sync,
        Some("async") => config.flush = Flush::Async,
        _ => {}
    }
    config
        .validate()
        .map_err(|config::ConfigError(message)| match &args.config {
            Some(path) => config::ConfigError(format!("{}: {message}", path.display())),
            None => config::ConfigError(message),
        })?;
    Ok(config)
}

/// Runs the broker until SIGTERM or SIGINT, then stops cleanly: no new sends, pending
/// ones flushed and answered, files closed.
pub fn run(config: Config) -> Result<(), BrokerError> {
    // The port first: a conflict is reported at once, before recovery (which can take
    // minutes on a big log) and before anything is created. Connections are accepted
    // only once the broker is ready.
    let listen_error = |source| BrokerError::Listen {
        address: config.listen,
        source,
    };
    let socket = bind(config.listen).map_err(listen_error)?;
    let security = context::security::Security::from_config(&config)?;
    let (store, arm_read_delay) = open_store(&config)?;
    log_recovery(&store);
    socket.listen(1024).map_err(listen_error)?;
    let listener = mio::net::TcpListener::from_std(socket.into());
    let address = listener.local_addr().map_err(listen_error)?;
    let mut role = cluster::effective_role(&config);
    let mut replication_config = config.clone();
    if !config.controller_addrs.is_empty() {
        // The controller decides who is master: a broker it does not name starts as
        // the named master's slave, whatever its config or promotion record says.
        // A master about to start reports the epoch it will begin, so that the
        // controller numbers any later election above it.
        let epoch = store.current_epoch() + u64::from(role.is_master());
        let report = cluster::controller_link::Report {
            config: &config,
            store: &store,
            address,
            ha_address: cluster::ha_address(&config, address).to_string(),
            is_master: role.is_master(),
            claims_master: role.is_master(),
            epoch,
            in_sync: Vec::new(),
            sss_epoch: 0,
        }
        .heartbeat();
        match cluster::controller_link::master_at_startup(&config, &report, &security.dial()) {
            Ok(Some(master)) => {
                if role.is_master() {
                    log::warn!(
                        "the controller names another master of {} (HA {master}): starting \
                         as its slave",
                        config.broker_name
                    );
                }
                role = keel_protocol::BrokerRole::Slave;
                replication_config.role = config::Role::Slave;
                replication_config.master_address = Some(master);
            }
            Ok(None) => {}
            Err(detail) if role.is_master() => return Err(BrokerError::Superseded(detail)),
            Err(detail) => log::warn!("{detail}; following the configured master"),
        }
    }
    let ha = cluster::start_replication(
        &replication_config,
        &store,
        role,
        cluster::ha_address(&config, address),
        &security,
    )?;
    if role.is_master() {
        store
            .create_topic(
                keel_protocol::SCHEDULE_TOPIC,
                keel_protocol::SCHEDULE_QUEUES,
            )
            .map_err(BrokerError::store(format!(
                "cannot create {}",
                keel_protocol::SCHEDULE_TOPIC
            )))?;
    }
    let broker = Arc::new(Broker::new(
        config.clone(),
        store.clone(),
        role,
        ha,
        security,
    ));
    if !config.controller_addrs.is_empty() {
        broker.require_lease();
    }
    broker.set_listen_address(address);
    broker::schedule::start(broker.clone());
    broker::transactions::start(broker.clone());
    broker.start_rates();
    let pools = broker::workers::Pools::start(config.read_threads)
        .map_err(BrokerError::setup("cannot start the reader threads"))?;

    let count = config.event_loop_count();
    let mut loops = Vec::with_capacity(count);
    let mut handoffs = Vec::with_capacity(count);
    let mut wakers = Vec::with_capacity(count);
    let mut polls = Vec::with_capacity(count);
    for _ in 0..count {
        let poll = Poll::new().map_err(BrokerError::setup("cannot create a poller"))?;
        let waker = Waker::new(poll.registry(), WAKER)
            .map_err(BrokerError::setup("cannot create a waker"))?;
        wakers.push(Arc::new(waker));
        polls.push(poll);
    }
    let read_only = {
        let broker = broker.clone();
        Arc::new(move || {
            (!broker.role().is_master()).then(|| {
                "users, tokens and permissions change on the master; this broker is a slave \
                 and takes them from it"
                    .to_string()
            })
        })
    };
    let links =
        broker::security_jobs::start(broker.security.authority.clone(), wakers.clone(), read_only)
            .map_err(BrokerError::setup("cannot start the security thread"))?;
    for (index, ((poll, waker), security)) in
        polls.into_iter().zip(wakers.clone()).zip(links).enumerate()
    {
        let (sender, receiver) = std::sync::mpsc::channel();
        handoffs.push(Handoff {
            sender,
            waker: waker.clone(),
        });
        let waiting = Arc::new(std::sync::atomic::AtomicBool::new(true));
        loops.push(EventLoop::new(LoopParts {
            index,
            poll,
            waker: waker.clone(),
            broker: broker.clone(),
            incoming: receiver,
            waiting: waiting.clone(),
            pools: pools.clone(),
            loops: count,
            security,
        }));
        // Storage progress wakes a loop only when it has something waiting for it.
        store.add_listener(Arc::new(move || {
            // The offsets were published before this call; pairs with the loop's fence.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if waiting.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = waker.wake();
            }
        }));
    }
    let Some(first) = loops.first_mut() else {
        let detail = std::io::Error::other("no event loop to accept connections");
        return Err(BrokerError::setup("cannot start the event loops")(detail));
    };
    first
        .set_listener(listener, handoffs)
        .map_err(listen_error)?;
    install_signal_handler(broker.clone(), wakers.clone())?;
    if let Some(address) = config.metrics_listen {
        let bound = http::serve::start(broker.clone(), address).map_err(BrokerError::setup(
            format!("cannot serve metrics on {address}"),
        ))?;
        log::info!("Prometheus metrics on http://{bound}/metrics");
        log::info!("console on http://{bound}/");
    }

    let mut threads = Vec::with_capacity(count);
    for event_loop in loops {
        let name = format!("keel-loop-{}", threads.len());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || event_loop.run());
        threads.push(thread.map_err(BrokerError::setup("cannot start an event loop"))?);
    }
    log::info!(
        "keeld listening on {address} (data {}, flush {:?}, role {role}, {count} event loops)",
        config.data_dir.display(),
        config.flush
    );
    let advertised = config
        .advertise_address
        .clone()
        .unwrap_or_else(|| address.to_string());
    cluster::start_registration(broker.clone(), advertised);
    cluster::controller_link::start(broker.clone(), role.is_master());
    if let Some(arm) = arm_read_delay {
        log::warn!("fault injection: every read of the log now sleeps (fault_read_delay_ms)");
        arm.store(true, std::sync::atomic::Ordering::Release);
    }
    // The ready line: tests and scripts wait for it, and read the port from it.
    println!("keeld listening on {address}");
    notify_systemd(&format!("READY=1\nSTATUS=listening on {address}"));
    let _ = std::io::stdout().flush();

    for thread in threads {
        if thread.join().is_err() {
            log::error!("an event loop panicked");
        }
    }
    pools.stop(Duration::from_secs(1));
    match broker.ha() {
        context::Ha::Master(master) => master.stop(),
        context::Ha::Slave(slave) => slave.stop(),
        context::Ha::None => {}
    }
    store.shutdown();
    let stats = store.stats();
    if stats.poisoned {
        return Err(BrokerError::StorageFailed {
            offset_flushed: stats.offset_flushed,
            records_flushed: stats.records_flushed,
            unflushed_bytes: stats.offset_appended.saturating_sub(stats.offset_flushed),
        });
    }
    log::info!(
        "keeld stopped cleanly: log ends at offset {}, all of it fsynced ({} message record(s))",
        stats.offset_flushed,
        stats.records_flushed
    );
    Ok(())
}

/// Opens the store on the real disk, or on one whose reads stall (`fault_read_delay_ms`,
/// armed once the broker runs: the switch is returned).
fn open_store(
    config: &Config,
) -> Result<(Arc<Store>, Option<Arc<std::sync::atomic::AtomicBool>>), BrokerError> {
    let disk: Arc<dyn keel_storage::disk::Disk> = Arc::new(keel_storage::disk::RealDisk);
    #[cfg(any(test, feature = "fault-injection"))]
    let (disk, arm) = match config.fault_read_delay_ms {
        0 => (disk, None),
        delay => {
            let delayed = keel_storage::disk::DelayedReads::new(
                disk,
                std::time::Duration::from_millis(delay),
            );
            let arm = delayed.arm_switch();
            (
                Arc::new(delayed) as Arc<dyn keel_storage::disk::Disk>,
                Some(arm),
            )
        }
    };
    #[cfg(not(any(test, feature = "fault-injection")))]
    let arm = None;
    let store = Store::open_with_disk(config.store_config(), disk).map_err(|source| {
        BrokerError::OpenStore {
            data_dir: config.data_dir.clone(),
            source,
        }
    })?;
    Ok((store, arm))
}

fn log_recovery(store: &Store) {
    let report = store.recovery_report();
    let shutdown = if report.clean_shutdown {
        "clean"
    } else {
        "unclean (or first start)"
    };
    // Messages, as the stop line counts them; the log may also hold records that are
    // not messages (topic deletions).
    let messages = store.stats().records_flushed;
    let others = match report.records.saturating_sub(messages) {
        0 => String::new(),
        other => format!(" and {other} topic deletion record(s)"),
    };
    log::info!(
        "recovered {messages} message record(s){others} in {} segment(s), log ends at offset \
         {}; previous shutdown {shutdown}",
        report.segments,
        report.offset_end
    );
    if report.truncated_bytes > 0 {
        log::warn!(
            "truncated a torn tail of {} bytes ({} later segments removed): {}",
            report.truncated_bytes,
            report.removed_segments,
            report.truncation_reason.as_deref().unwrap_or("")
        );
    }
}

/// A bound socket, not yet listening (so nothing connects before the broker is ready).
fn bind(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // SO_REUSEADDR lets a restarted broker bind while old connections sit in TIME_WAIT.
    // Not SO_REUSEPORT: a second broker on the same port must fail, not share it.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// SIGTERM or SIGINT starts a clean shutdown; a second one exits at once.
fn install_signal_handler(broker: Arc<Broker>, wakers: Vec<Arc<Waker>>) -> Result<(), BrokerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(BrokerError::setup("cannot install signal handlers"))?;
    std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received > 1 {
                    log::warn!("second signal {signal}: exiting without waiting");
                    std::process::exit(130);
                }
                log::info!("signal {signal}: stopping (no new sends; pending ones are flushed and answered)");
                notify_systemd("STOPPING=1");
                broker.begin_shutdown();
                for waker in &wakers {
                    let _ = waker.wake();
                }
            }
        })
        .map_err(BrokerError::setup("cannot start the signal thread"))?;
    Ok(())
}
