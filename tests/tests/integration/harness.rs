//! Starts and stops real keeld processes on 127.0.0.1 with a port picked by the kernel.

use keel_client::{Admin, Record};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const KEELD: &str = env!("CARGO_BIN_EXE_keeld-under-test");

/// A keeld process and its data directory. Killed (SIGKILL) when dropped.
pub struct BrokerProcess {
    child: Option<Child>,
    pub address: String,
    pub dir: PathBuf,
    config: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl BrokerProcess {
    /// Starts a broker in a new temporary directory with `extra` TOML config lines.
    /// Segments are small (64 KiB) so that rolling is exercised.
    pub fn start(extra: &str) -> BrokerProcess {
        let mut broker = BrokerProcess::create(extra);
        broker.spawn();
        broker
    }

    /// `start` without starting it: the config and directory only.
    pub fn create(extra: &str) -> BrokerProcess {
        let temp = tempfile::tempdir().expect("temporary directory");
        let dir = temp.path().to_path_buf();
        let config = dir.join("keeld.toml");
        let sets_listen = extra
            .lines()
            .any(|line| line.trim_start().starts_with("listen"));
        let mut text = if sets_listen {
            format!("{extra}\n")
        } else {
            format!("listen = \"127.0.0.1:0\"\n{extra}\n")
        };
        if !extra.contains("segment_size_bytes") {
            text.push_str(
                "segment_size_bytes = 65536
",
            );
        }
        if !extra.contains("data_dir") {
            text.push_str(&format!("data_dir = \"{}\"\n", dir.join("data").display()));
        }
        std::fs::write(&config, text).expect("write config");
        BrokerProcess {
            child: None,
            address: String::new(),
            dir,
            config,
            _temp: Some(temp),
        }
    }

    /// `keeld --config ... add-admin --user NAME` on this broker's data (stopped).
    pub fn add_admin(&self, user: &str, password: &str) -> std::process::Output {
        Command::new(KEELD)
            .arg("--config")
            .arg(&self.config)
            .args(["add-admin", "--user", user])
            .env("KEEL_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .expect("run keeld add-admin")
    }

    /// keeld on this broker's config, logging (RUST_LOG=info) to `keeld.log`.
    fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keeld.log"))
            .expect("open log");
        let mut command = Command::new(KEELD);
        command
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("KEEL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stderr(log);
        command
    }

    /// Starts the process on the existing config and data, waiting for its ready line.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn keeld");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = line.strip_prefix("keeld listening on ") {
                        break address.trim().to_string();
                    }
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    panic!(
                        "keeld did not become ready (exit: {status:?}); log:\n{}",
                        self.log()
                    );
                }
            }
        };
        self.address = address;
        self.child = Some(child);
    }

    /// Starts the process expecting it to refuse to start; returns its exit status.
    pub fn spawn_expect_failure(&mut self) -> std::process::ExitStatus {
        assert!(self.child.is_none(), "already running");
        let mut child = self
            .command()
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn keeld");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "keeld started on data it should have refused; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Replaces the config (keeping the data directory) for the next `spawn`.
    pub fn reconfigure(&mut self, extra: &str) {
        let text = format!(
            "{extra}\nsegment_size_bytes = 65536\ndata_dir = \"{}\"\n",
            self.dir.join("data").display()
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A stat, or `None` when the broker does not report it (or cannot be reached).
    pub fn try_stat(&self, name: &str) -> Option<u64> {
        let stats = Admin::connect(&self.address).ok()?.stats().ok()?;
        stats
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The first CommitLog segment file.
    pub fn first_segment(&self) -> PathBuf {
        self.dir
            .join("data")
            .join("commitlog")
            .join(format!("{:020}", 0))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keeld.log")).unwrap_or_default()
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status once it stopped (within the deadline).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keeld did not stop on SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn admin(&self) -> Admin {
        Admin::connect(&self.address).expect("admin connection")
    }

    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.admin().stats().expect("stats");
        stats
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .expect("stat exists")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends `signal` (e.g. `libc::SIGTERM`, `libc::SIGSTOP`) to a process of ours.
/// A check that needs a tool this machine lacks (Chromium, promtool): skipped with a
/// line saying so on a developer's machine, a failure where the tools are required
/// (`KEEL_REQUIRE_TOOLS=1`, which `.ci/run` sets after installing them).
pub fn tool_missing(what: &str) {
    if std::env::var("KEEL_REQUIRE_TOOLS").is_ok_and(|value| value == "1") {
        panic!("{what}, and KEEL_REQUIRE_TOOLS=1 says this check must run");
    }
    eprintln!("{what}: the check was skipped (KEEL_REQUIRE_TOOLS=1 makes this a failure)");
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory effects; pid is a child this test started.
    let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal}) failed");
}

/// Reads every record of `topic` from the start with a fresh group, until each queue's
/// position reaches its durable end. Checks CRCs on the way (the consumer does).
/// Reads everything in `topic` with a consumer group of its own. Every call uses a new
/// group: offsets committed by a drain of a master are copied to its slaves, so a drain of
/// the slave under the same group would start where the master's drain had got to when
/// the last META frame left (one test lost a whole queue to that).
pub fn drain(address: &str, topic: &str) -> Vec<Record> {
    static DRAINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = DRAINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let group = format!("drain-{}-{call}", std::process::id());
    drain_as(address, topic, &group)
}

pub fn drain_as(address: &str, topic: &str, group: &str) -> Vec<Record> {
    keel_bench::ledger::read_all(address, topic, group, Duration::from_secs(60))
        .unwrap_or_else(|error| panic!("drain: {error}"))
}

/// Waits for `condition` with a deadline, instead of sleeping a fixed time.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A port on 127.0.0.1 that was free a moment ago (for brokers whose address must
/// survive a restart, and HA ports).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports on 127.0.0.1 that were free a moment ago. Each listener is held
/// until all are picked: ports picked one after another and released at once can come
/// back twice (a test whose slave was given its master's HA port failed on it).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|index| {
        listeners[index]
            .local_addr()
            .expect("a bound address")
            .port()
    })
}

/// A `keeld namesrv` process. Killed when dropped.
pub struct NameServerProcess {
    child: Child,
    pub address: String,
}

impl NameServerProcess {
    pub fn start(broker_timeout_ms: u64) -> NameServerProcess {
        let mut child = Command::new(KEELD)
            .args(["namesrv", "--listen", "127.0.0.1:0", "--broker-timeout-ms"])
            .arg(broker_timeout_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keeld namesrv");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("keeld namesrv listening on ") {
                        break address.trim().to_string();
                    }
                }
                _ => panic!("keeld namesrv did not start"),
            }
        };
        NameServerProcess { child, address }
    }
}

impl NameServerProcess {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NameServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a TCP proxy on 127.0.0.1 in front of `upstream`; returns its address. Client
/// bytes go upstream as they are; `downstream(server, client)` moves the bytes back
/// (each connection on its own thread). When the upstream is unreachable it keeps trying
/// for a few seconds before giving up on a client, so a client's retry waits out a
/// broker restart. `open` collects both sockets of every connection (to cut them).
fn run_proxy(
    upstream: &str,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    downstream: impl Fn(std::net::TcpStream, std::net::TcpStream) + Clone + Send + 'static,
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let address = listener.local_addr().expect("address").to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let deadline = Instant::now() + Duration::from_secs(5);
            let server = loop {
                match std::net::TcpStream::connect(&upstream) {
                    Ok(server) => break Some(server),
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => break None,
                }
            };
            let Some(server) = server else { continue };
            {
                let mut open = open.lock().unwrap();
                open.push(client.try_clone().expect("clone"));
                open.push(server.try_clone().expect("clone"));
            }
            let (mut client_in, mut server_out) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
                let _ = server_out.shutdown(std::net::Shutdown::Both);
            });
            let downstream = downstream.clone();
            std::thread::spawn(move || {
                let closing = client.try_clone().expect("clone");
                downstream(server, client);
                let _ = closing.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    address
}

/// A TCP proxy in front of a broker that can drop replies (whole frames) on their way
/// back, as a network that loses a response after the request was carried out.
pub struct DroppingProxy {
    pub address: String,
    /// Drop the next reply frame.
    pub drop_next: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Drop every n-th reply frame (0: none).
    pub drop_every: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Reply frames dropped so far.
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl DroppingProxy {
    pub fn start(upstream: &str) -> DroppingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let drop_next = Arc::new(AtomicBool::new(false));
        let drop_every = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let (next, every, count) = (drop_next.clone(), drop_every.clone(), dropped.clone());
        let address = run_proxy(upstream, Arc::default(), move |mut server, mut client| {
            loop {
                let mut prefix = [0u8; 4];
                if server.read_exact(&mut prefix).is_err() {
                    return;
                }
                let mut frame = vec![0u8; u32::from_le_bytes(prefix) as usize];
                if server.read_exact(&mut frame).is_err() {
                    return;
                }
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                let every = every.load(Ordering::SeqCst);
                if next.swap(false, Ordering::SeqCst) || (every > 0 && n.is_multiple_of(every)) {
                    count.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if client
                    .write_all(&prefix)
                    .and_then(|()| client.write_all(&frame))
                    .is_err()
                {
                    return;
                }
            }
        });
        DroppingProxy {
            address,
            drop_next,
            drop_every,
            dropped,
        }
    }
}

/// A byte-level TCP proxy that can cut every connection through it, or flip one bit in
/// the bytes flowing back from the upstream side (as a bad NIC or middlebox would).
pub struct FaultProxy {
    pub address: String,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// Bytes (upstream -> client) still to pass before one is flipped; negative: off.
    flip_after: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicI64, Ordering};
        use std::sync::{Arc, Mutex};
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let flip_after = Arc::new(AtomicI64::new(-1));
        let flip = flip_after.clone();
        let address = run_proxy(upstream, open.clone(), move |mut server, mut client| {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = match server.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                let left = flip.load(Ordering::SeqCst);
                if left >= 0 {
                    if (left as usize) < read {
                        buffer[left as usize] ^= 0x10;
                        flip.store(-1, Ordering::SeqCst);
                    } else {
                        flip.fetch_sub(read as i64, Ordering::SeqCst);
                    }
                }
                if client.write_all(&buffer[..read]).is_err() {
                    return;
                }
            }
        });
        FaultProxy {
            address,
            open,
            flip_after,
        }
    }
    /// Closes every connection open through the proxy (new ones are accepted).
    pub fn cut_all(&self) {
        for socket in self.open.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Flips a bit of the byte `after` bytes into what the upstream sends next.
    pub fn flip_a_bit_after(&self, after: i64) {
        self.flip_after
            .store(after, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn flipped(&self) -> bool {
        self.flip_after.load(std::sync::atomic::Ordering::SeqCst) < 0
    }
}
