//! keeld configuration: a TOML file, every key defaulted, flags override the file.

use keel_storage::{FlushMode, StoreConfig};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flush {
    Sync,
    Async,
}

/// How the broker ends a transaction its producer group never ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unresolved {
    Rollback,
    Commit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Master,
    AsyncMaster,
    SyncMaster,
    Slave,
}

impl Role {
    pub fn broker_role(self) -> keel_protocol::BrokerRole {
        use keel_protocol::BrokerRole;
        match self {
            Role::Master => BrokerRole::Master,
            Role::AsyncMaster => BrokerRole::AsyncMaster,
            Role::SyncMaster => BrokerRole::SyncMaster,
            Role::Slave => BrokerRole::Slave,
        }
    }
}

/// Every key of `keeld.toml`. docs/OPERATIONS.md documents each one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host:port`; a name (`localhost:10911`) is resolved when the file is read.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub role: Role,
    pub flush: Flush,
    pub flush_interval_ms: u64,
    pub sync_flush_timeout_ms: u64,
    pub segment_size_bytes: u64,
    pub max_message_bytes: u32,
    pub max_frame_bytes: u32,
    pub auto_create_topics: bool,
    pub default_queues: u32,
    /// Event loop threads; 0 means one per core.
    pub event_loops: usize,
    pub max_connections: usize,
    /// Stop reading client input while this many appended bytes wait to be written.
    pub append_backlog_max_bytes: u64,
    pub long_poll_max_ms: u64,
    /// Close connections silent for this long with nothing pending (0 = never).
    pub connection_idle_timeout_ms: u64,
    /// Bytes of incomplete frames the broker holds across all connections; past it the
    /// connection holding the most is closed (OVERLOADED).
    pub partial_frames_max_bytes: u64,
    /// Threads that read the log for PULLs and time lookups, off the event loops.
    pub read_threads: usize,
    /// Serve Prometheus text on this address (e.g. "127.0.0.1:10913"); none by default.
    #[serde(deserialize_with = "optional_socket_address")]
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_timeout_ms: u64,
    /// Refuse sends while free space on the data file system is below this.
    pub disk_min_free_bytes: u64,
    /// Delete segments whose newest message is older than this (0 = keep forever).
    pub retention_hours: u64,
    /// Delete the oldest segments while the log is larger than this (0 = no limit).
    pub retention_bytes: u64,
    pub retention_check_interval_ms: u64,
    pub page_cache_window_bytes: u64,
    /// Fault injection for tests: sleep before every fsync of the log. Only in builds
    /// with the `fault-injection` feature (the tests' keeld-under-test); elsewhere the
    /// key is unknown and refused.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fault_fsync_delay_ms: u64,
    /// Fault injection for tests: the n-th fsync of the log fails (0 = never).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fault_fsync_fail_at: u64,
    /// Fault injection for tests: every read of the log's files sleeps this long, once
    /// the broker has started (0 = off).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fault_read_delay_ms: u64,
    /// Brokers with the same name form a group: one master (id 0) and its slaves.
    pub broker_name: String,
    pub broker_id: u32,
    /// HA listener port (same IP as `listen`); 0 means the client port + 1.
    pub ha_port: u16,
    /// Slave only: the master's HA address, `host:port`.
    pub master_address: Option<String>,
    pub slave_timeout_ms: u64,
    pub slave_fallbehind_max_bytes: u64,
    pub ha_heartbeat_ms: u64,
    pub namesrv_addrs: Vec<String>,
    pub register_interval_ms: u64,
    /// Client address registered with name servers (default: the bound listen address).
    pub advertise_address: Option<String>,
    /// Controller addresses (`keeld namesrv --controller-*` or `keeld controller`);
    /// empty: no controller, promotion is by `keel admin promote`.
    pub controller_addrs: Vec<String>,
    pub controller_heartbeat_ms: u64,
    /// With a controller: a master acknowledges sends only this long after a heartbeat
    /// the controller answered naming it master; keep it below the controllers'
    /// master timeout, so a master that may have been replaced has stopped acking.
    pub controller_lease_ms: u64,
    /// With a controller: replicas (the master included) that must have fsynced a
    /// record before a `sync_master` acknowledges it.
    pub min_insync_replicas: usize,
    /// Delay before the n-th redelivery of a message a consumer sent back (the last one
    /// repeats for later attempts).
    pub retry_delays_ms: Vec<u64>,
    /// The latest a message may be delivered, counted from its SEND: a later
    /// `KEEL_DELIVER_AT` is refused (INVALID_ARGUMENT).
    pub max_delay_ms: u64,
    /// A transaction not ended this long after its half message was stored is checked
    /// with its producer group (CHECK_TRANSACTIONS) for the first time.
    pub transaction_check_delay_ms: u64,
    /// Then checked again this often.
    pub transaction_check_interval_ms: u64,
    /// After this many checks without an end, the broker ends it as
    /// `transaction_unresolved` says.
    pub transaction_check_max: u32,
    /// How the broker ends a transaction whose checks ran out.
    pub transaction_unresolved: Unresolved,
    /// TLS, logins and permissions (`[security]`).
    pub security: SecurityConfig,
}

/// An address as `ip:port` or `name:port` (resolved now, the first address taken).
fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    use std::net::ToSocketAddrs;
    let mut addresses = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not host:port ({e})"))?;
    addresses
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn socket_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    resolve(&text).map_err(serde::de::Error::custom)
}

fn optional_socket_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => resolve(&text).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

/// The known key nearest to `unknown` (at most two edits away), for "did you mean".
fn nearest<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    /// Levenshtein distance, one row at a time: `row[j]` is the distance between the
    /// prefix of `a` read so far and `b[..j]`.
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = i; // row[0] before this character
            let mut left = i + 1; // row[j] of this character's row
            let mut next = vec![left];
            for (cb, above) in b.iter().zip(row.iter().skip(1)) {
                let cell = (diagonal + usize::from(ca != *cb))
                    .min(left + 1)
                    .min(above + 1);
                diagonal = *above;
                left = cell;
                next.push(cell);
            }
            row = next;
        }
        row.last().copied().unwrap_or_default()
    }
    known
        .map(|key| (distance(unknown, key), key))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, key)| key)
}

/// A TOML error, with "did you mean" for an unknown key.
fn explain(error: toml::de::Error) -> String {
    let message = error.to_string();
    let hint = message
        .split("unknown field `")
        .nth(1)
        .and_then(|rest| rest.split_once('`'))
        .and_then(|(unknown, rest)| {
            let expected = rest.split("expected one of ").nth(1)?;
            let known = expected
                .split(',')
                .map(|item| item.trim().trim_matches(['`', ' ', '\n']))
                .filter(|item| !item.is_empty());
            nearest(unknown, known).map(|key| format!("did you mean `{key}`? "))
        });
    match hint {
        Some(hint) => format!("{hint}{message}"),
        None => message,
    }
}

/// The `[security]` block. Everything off by default: a broker on loopback for
/// development. docs/OPERATIONS.md ("Security") documents each key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// "off" (everyone may do everything), "optional" (who does not log in is
    /// `anonymous`) or "required" (nothing but LOGIN and PING before a login).
    pub auth: keel_security::AuthMode,
    /// This broker's certificate chain and key (PEM): with both, the client port and
    /// the HA port speak TLS only.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Clients (slaves included) must present a certificate this CA signed.
    pub tls_client_ca_file: Option<PathBuf>,
    /// The CA this broker trusts when it connects out (to its master, name servers,
    /// controllers): with it, those connections use TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// The name the peers' certificates must carry when this broker connects out
    /// (default: the host of the address).
    pub tls_server_name: Option<String>,
    /// The cluster token (a file holding one line): what slaves, name servers and
    /// controllers are shown, and accept, for the cluster's own requests.
    pub cluster_token_file: Option<PathBuf>,
    /// A connection that has not logged in is closed after this long.
    pub login_timeout_ms: u64,
    /// The largest frame a connection may send before it logs in.
    pub pre_auth_max_frame_bytes: u32,
    /// Connections one IP address may hold at once (0: no limit).
    pub max_connections_per_ip: usize,
    /// `/metrics` answers without a token even when logins are on (its labels name
    /// every topic and group). Default false: it needs a token with `admin:stats`.
    pub metrics_public: bool,
    /// Refuse to start (exit 2) when the certificate in `tls_cert_file` has expired,
    /// instead of only warning.
    pub tls_refuse_expired: bool,
}

impl Default for SecurityConfig {
    fn default() -> SecurityConfig {
        SecurityConfig {
            auth: keel_security::AuthMode::Off,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_ca_file: None,
            tls_server_name: None,
            cluster_token_file: None,
            login_timeout_ms: keel_net::PreLogin::DEFAULT.login_timeout.as_millis() as u64,
            pre_auth_max_frame_bytes: keel_net::PreLogin::DEFAULT.max_frame_bytes,
            max_connections_per_ip: 1000,
            metrics_public: false,
            tls_refuse_expired: false,
        }
    }
}

impl SecurityConfig {
    /// The client and HA ports' TLS settings, when TLS is on.
    pub fn server_tls(&self) -> Option<keel_security::ServerTls> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(keel_security::ServerTls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: self.tls_client_ca_file.clone(),
            }),
            _ => None,
        }
    }

    fn validate(&self, role: Role) -> Result<(), String> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("[security] tls_cert_file and tls_key_file go together".into());
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(
                "[security] tls_client_ca_file needs tls_cert_file and tls_key_file".into(),
            );
        }
        if self.tls_server_name.is_some() && self.tls_ca_file.is_none() {
            return Err("[security] tls_server_name needs tls_ca_file".into());
        }
        if self.login_timeout_ms == 0 {
            return Err("[security] login_timeout_ms must be at least 1".into());
        }
        if !(64..=1 << 20).contains(&self.pre_auth_max_frame_bytes) {
            return Err(format!(
                "[security] pre_auth_max_frame_bytes = {} is outside 64..=1048576",
                self.pre_auth_max_frame_bytes
            ));
        }
        if self.auth == keel_security::AuthMode::Required
            && role == Role::Slave
            && self.cluster_token_file.is_none()
        {
            return Err(
                "[security] auth = \"required\" on a slave needs cluster_token_file \
                        (its master requires the cluster token of its slaves)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 10911)),
            data_dir: PathBuf::from("./keel-data"),
            role: Role::Master,
            flush: Flush::Sync,
            flush_interval_ms: 500,
            sync_flush_timeout_ms: 5000,
            segment_size_bytes: 1 << 30,
            max_message_bytes: keel_protocol::DEFAULT_MAX_MESSAGE_BYTES,
            max_frame_bytes: keel_protocol::DEFAULT_MAX_FRAME_BYTES,
            auto_create_topics: true,
            default_queues: 4,
            event_loops: 0,
            max_connections: 10_000,
            append_backlog_max_bytes: 256 << 20,
            long_poll_max_ms: 30_000,
            connection_idle_timeout_ms: 300_000,
            partial_frames_max_bytes: 256 << 20,
            read_threads: 4,
            metrics_listen: None,
            shutdown_timeout_ms: 10_000,
            disk_min_free_bytes: 128 << 20,
            retention_hours: 72,
            retention_bytes: 0,
            retention_check_interval_ms: 10_000,
            page_cache_window_bytes: keel_storage::DEFAULT_PAGE_CACHE_WINDOW_BYTES,
            #[cfg(any(test, feature = "fault-injection"))]
            fault_fsync_delay_ms: 0,
            #[cfg(any(test, feature = "fault-injection"))]
            fault_fsync_fail_at: 0,
            #[cfg(any(test, feature = "fault-injection"))]
            fault_read_delay_ms: 0,
            broker_name: "broker-a".into(),
            broker_id: 0,
            ha_port: 0,
            master_address: None,
            slave_timeout_ms: 3000,
            slave_fallbehind_max_bytes: 256 << 20,
            ha_heartbeat_ms: 1000,
            namesrv_addrs: Vec::new(),
            register_interval_ms: 30_000,
            controller_addrs: Vec::new(),
            controller_heartbeat_ms: 500,
            controller_lease_ms: 1500,
            min_insync_replicas: 2,
            advertise_address: None,
            retry_delays_ms: vec![
                10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
                480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
            ],
            max_delay_ms: 7 * 24 * 3_600_000,
            transaction_check_delay_ms: 6_000,
            transaction_check_interval_ms: 30_000,
            transaction_check_max: 15,
            transaction_unresolved: Unresolved::Rollback,
            security: SecurityConfig::default(),
        }
    }
}

#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Room a record needs beyond its payload, for the checks between the two limits.
use keel_protocol::{QUEUES_MAX, RECORD_OVERHEAD_MAX};

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        Config::parse(&text)
            .map_err(|ConfigError(message)| ConfigError(format!("{}: {message}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError(explain(e)))?;
        Ok(config)
    }

    /// Every key with its value, as a TOML file (`keeld --config F --print-config`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self)
            .map_err(|e| ConfigError(format!("cannot print the configuration: {e}")))
    }

    /// Checks the relations between keys; every problem is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if let Err(message) = self.security.validate(self.role) {
            return fail(message);
        }
        match (self.role, &self.master_address, self.broker_id) {
            (Role::Slave, None, _) => {
                return fail(
                    "role = \"slave\" needs master_address (the master's HA address)".into(),
                )
            }
            (Role::Slave, _, 0) => {
                return fail("role = \"slave\" needs broker_id 1 or more (0 is the master)".into())
            }
            (Role::Slave, Some(address), _) if !address.contains(':') => {
                return fail(format!("master_address = {address:?} must be host:port"))
            }
            (Role::Slave, _, _) => {}
            (_, Some(_), _) => {
                return fail(format!(
                    "master_address is only for role = \"slave\" (role is {:?})",
                    self.role.broker_role().name()
                ))
            }
            (_, None, id) if id != 0 => return fail(format!("a master has broker_id 0, not {id}")),
            _ => {}
        }
        if let Err(detail) = keel_protocol::validate_topic(&self.broker_name) {
            return fail(format!("broker_name {:?}: {detail}", self.broker_name));
        }
        if self.slave_timeout_ms == 0 || self.ha_heartbeat_ms == 0 || self.register_interval_ms == 0
        {
            return fail(
                "slave_timeout_ms, ha_heartbeat_ms and register_interval_ms must be at least 1"
                    .into(),
            );
        }
        if self.controller_heartbeat_ms == 0 {
            return fail("controller_heartbeat_ms must be at least 1".into());
        }
        if self.controller_lease_ms <= self.controller_heartbeat_ms {
            return fail(format!(
                "controller_lease_ms = {} must be above controller_heartbeat_ms = {} (each \
                 heartbeat renews the lease)",
                self.controller_lease_ms, self.controller_heartbeat_ms
            ));
        }
        if !self.controller_addrs.is_empty() {
            if self.min_insync_replicas < 2 {
                return fail(format!(
                    "min_insync_replicas = {} with controllers: at least 2 (a record only on \
                     the master is lost when another replica is elected)",
                    self.min_insync_replicas
                ));
            }
            if !matches!(self.role, Role::SyncMaster | Role::Slave) {
                return fail(format!(
                    "role = {:?} with controllers: use \"sync_master\" or \"slave\" (an \
                     elected master must not acknowledge what its SyncStateSet lacks)",
                    self.role.broker_role().name()
                ));
            }
        }
        if let Some(bad) = self.controller_addrs.iter().find(|a| !a.contains(':')) {
            return fail(format!("controller_addrs entry {bad:?} must be host:port"));
        }
        let levels = keel_protocol::SCHEDULE_QUEUES as usize;
        if self.retry_delays_ms.is_empty() || self.retry_delays_ms.len() > levels {
            return fail(format!(
                "retry_delays_ms needs 1 to {levels} delays, not {}",
                self.retry_delays_ms.len()
            ));
        }
        let longest = keel_protocol::names::timer_hold_ms(keel_protocol::names::TIMER_LEVELS - 1)
            .saturating_mul(2);
        if !(1_000..=longest).contains(&self.max_delay_ms) {
            return fail(format!(
                "max_delay_ms = {} must be 1000 to {longest} (the timer's reach)",
                self.max_delay_ms
            ));
        }
        if !(100..=3_600_000).contains(&self.transaction_check_delay_ms)
            || !(100..=3_600_000).contains(&self.transaction_check_interval_ms)
        {
            return fail(format!(
                "transaction_check_delay_ms = {} and transaction_check_interval_ms = {} must \
                 each be 100 to 3600000",
                self.transaction_check_delay_ms, self.transaction_check_interval_ms
            ));
        }
        if !(1..=1_000).contains(&self.transaction_check_max) {
            return fail(format!(
                "transaction_check_max = {} must be 1 to 1000",
                self.transaction_check_max
            ));
        }
        // Retention must keep a half message until the broker ends it.
        let open_longest = self.transaction_check_delay_ms.saturating_add(
            self.transaction_check_interval_ms
                .saturating_mul(u64::from(self.transaction_check_max)),
        );
        if self.retention_hours > 0
            && self.retention_hours.saturating_mul(3_600_000) < open_longest.saturating_mul(2)
        {
            return fail(format!(
                "retention_hours = {} keeps half messages for less than twice the longest a \
                 transaction stays open ({open_longest} ms: transaction_check_delay_ms + \
                 transaction_check_interval_ms x transaction_check_max)",
                self.retention_hours
            ));
        }
        if self.segment_size_bytes < 4096 {
            return fail(format!(
                "segment_size_bytes = {} is below the minimum 4096",
                self.segment_size_bytes
            ));
        }
        if self.max_message_bytes == 0 {
            return fail("max_message_bytes must be at least 1".into());
        }
        let needed = self.max_message_bytes.saturating_add(RECORD_OVERHEAD_MAX);
        if self.max_frame_bytes < needed {
            return fail(format!(
                "max_frame_bytes = {} must be at least max_message_bytes + {RECORD_OVERHEAD_MAX} = {needed}",
                self.max_frame_bytes
            ));
        }
        if self.default_queues == 0 || self.default_queues > QUEUES_MAX {
            return fail(format!(
                "default_queues = {} is outside 1..={QUEUES_MAX}",
                self.default_queues
            ));
        }
        if self.flush_interval_ms == 0 {
            return fail("flush_interval_ms must be at least 1".into());
        }
        if self.sync_flush_timeout_ms == 0 {
            return fail("sync_flush_timeout_ms must be at least 1".into());
        }
        if self.max_connections == 0 {
            return fail("max_connections must be at least 1".into());
        }
        if self.read_threads == 0 {
            return fail("read_threads must be at least 1".into());
        }
        if self.partial_frames_max_bytes < u64::from(self.max_frame_bytes) {
            return fail(format!(
                "partial_frames_max_bytes = {} must be at least max_frame_bytes = {}",
                self.partial_frames_max_bytes, self.max_frame_bytes
            ));
        }
        // A connection waiting for an answer is never idle, but a timeout shorter than
        // the longest wait the broker itself may impose is a configuration mistake.
        let idle = self.connection_idle_timeout_ms;
        let waits = [
            ("long_poll_max_ms", self.long_poll_max_ms),
            ("sync_flush_timeout_ms", self.sync_flush_timeout_ms),
            ("slave_timeout_ms", self.slave_timeout_ms),
        ];
        if let Some((key, wait)) = waits.iter().find(|(_, wait)| idle != 0 && idle < *wait) {
            return fail(format!(
                "connection_idle_timeout_ms = {idle} is below {key} = {wait}: a client \
                 waiting that long for an answer would look idle"
            ));
        }
        Ok(())
    }

    pub fn event_loop_count(&self) -> usize {
        match self.event_loops {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            count => count,
        }
    }

    #[allow(clippy::needless_update)]
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            segment_size_bytes: self.segment_size_bytes,
            flush: match self.flush {
                Flush::Sync => FlushMode::Sync,
                Flush::Async => FlushMode::Async,
            },
            flush_interval_ms: self.flush_interval_ms,
            default_queues: self.default_queues,
            max_record_bytes: self.max_message_bytes.saturating_add(RECORD_OVERHEAD_MAX),
            disk_min_free_bytes: self.disk_min_free_bytes,
            retention_ms: self.retention_hours.saturating_mul(3_600_000),
            retention_bytes: self.retention_bytes,
            retention_check_interval_ms: self.retention_check_interval_ms,
            page_cache_window_bytes: self.page_cache_window_bytes,
            #[cfg(any(test, feature = "fault-injection"))]
            fault_fsync_delay_ms: self.fault_fsync_delay_ms,
            #[cfg(any(test, feature = "fault-injection"))]
            fault_fsync_fail_at: self.fault_fsync_fail_at,
            // The storage crate may have its fault keys (its feature on for another
            // crate of this build) while this one does not: they stay off.
            ..StoreConfig::new(&self.data_dir)
        }
    }
}

/// The embedded default configuration, as a commented TOML file (`keeld --print-config`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../keeld.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_file_matches_the_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG_TOML).unwrap();
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
        parsed.validate().unwrap();
    }

    #[test]
    fn the_cluster_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let config = Config::load(&path).unwrap();
                config
                    .validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
        }
        assert_eq!(checked, 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::parse("flsuh = \"sync\"")
            .unwrap_err()
            .0
            .contains("flsuh"));
        assert!(Config::parse("flush = \"sometimes\"").is_err());
        let config = Config::parse("max_frame_bytes = 1000").unwrap();
        assert!(config.validate().unwrap_err().0.contains("max_frame_bytes"));
        let config = Config::parse("role = \"slave\"").unwrap();
        assert!(config.validate().unwrap_err().0.contains("master_address"));
        let config = Config::parse("role = \"sync_master\"\nbroker_id = 2").unwrap();
        assert!(config.validate().unwrap_err().0.contains("broker_id"));
        let slave = "role = \"slave\"\nbroker_id = 1\nmaster_address = \"127.0.0.1:10912\"";
        Config::parse(slave).unwrap().validate().unwrap();
        assert!(Config::parse("[security]\nauht = \"required\"")
            .unwrap_err()
            .0
            .contains("auht"));
        assert!(Config::parse("[security]\nauth = \"sometimes\"").is_err());
        let half = Config::parse("[security]\ntls_cert_file = \"c.pem\"").unwrap();
        assert!(half.validate().unwrap_err().0.contains("tls_key_file"));
        let tokenless = format!("{slave}\n[security]\nauth = \"required\"");
        let tokenless = Config::parse(&tokenless).unwrap();
        assert!(tokenless
            .validate()
            .unwrap_err()
            .0
            .contains("cluster_token_file"));
    }
}
