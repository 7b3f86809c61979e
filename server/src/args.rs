//! keeld's command line: the broker's flags, the `namesrv`, `controller` and
//! `add-admin` commands, and the voters' and name servers' own flags.

use super::*;

/// keeld: the keel message broker.
///
/// With no arguments it runs on the embedded default configuration: data in
/// ./keel-data, clients on 127.0.0.1:10911, sync flush. Flags override the config file.
#[derive(Debug, Parser)]
#[command(name = "keeld", version, about, long_about = None)]
pub struct Args {
    /// TOML configuration file (see `keeld --print-config` for every key and default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:10911; port 0 picks a free port (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// "sync": ack after fsync (group commit). "async": ack after write, fsync periodically.
    #[arg(long, value_name = "MODE", value_parser = ["sync", "async"])]
    pub flush: Option<String>,
    /// Print the configuration and exit: with --config (or other flags) the effective
    /// one, every key with its value; alone, the embedded default with its comments.
    #[arg(long)]
    pub print_config: bool,
    /// Check the configuration (and the certificates, keys and token files it names)
    /// and exit: 0 when keeld would start on it, 2 when not.
    #[arg(long)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run a name server instead of a broker: brokers register with it, clients ask it
    /// where a topic's queues are.
    Namesrv {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9876")]
        listen: SocketAddr,
        /// Drop a broker that has not registered for this long.
        #[arg(long, value_name = "MS", default_value_t = 120_000)]
        broker_timeout_ms: u64,
        /// Also be a controller voter (with --controller-id and --controller-peers).
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        security: NodeSecurityArgs,
    },
    /// Run a controller voter alone, without a name server.
    Controller {
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        security: NodeSecurityArgs,
    },
    /// Create or reset an operator on this host's data directory, with every
    /// permission (the first user of a broker with `auth = "required"`). Run it while
    /// the broker is stopped; the password comes from KEEL_PASSWORD or standard input.
    AddAdmin {
        /// The user to create (or whose password to reset).
        #[arg(long, value_name = "NAME")]
        user: String,
    },
}

/// TLS and the cluster token of a name server or controller.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeSecurityArgs {
    /// PEM certificate chain; with --tls-key, this node's ports speak TLS only.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Clients must present a certificate this CA signed.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// The CA trusted when connecting to other voters (their controller ports speak TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The name the other voters' certificates carry (default: the host of the address).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// The cluster token (a file with one line): with it, REGISTER_BROKER and every
    /// controller request need it.
    #[arg(long, value_name = "FILE")]
    pub cluster_token_file: Option<PathBuf>,
}

impl NodeSecurityArgs {
    pub(crate) fn server_tls(&self) -> Option<keel_security::ServerTls> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(keel_security::ServerTls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// The cluster token, read from its file.
    pub(crate) fn token(&self) -> Result<Option<String>, String> {
        self.cluster_token_file
            .as_deref()
            .map(keel_security::read_secret_file)
            .transpose()
    }

    pub(crate) fn node_security(&self) -> Result<namesrv::NodeSecurity, String> {
        let tls = self.server_tls().map(|tls| tls.config()).transpose()?;
        let token = self.token()?;
        let authority = keel_security::Authority::open(
            keel_security::AuthMode::Optional,
            None,
            token.as_deref(),
        )?;
        Ok(namesrv::NodeSecurity {
            tls,
            authority: Arc::new(authority),
        })
    }
}

/// A controller voter: Raft (openraft) over the controller port of each peer.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// This voter's id, one of the ids in --controller-peers.
    #[arg(long, value_name = "ID")]
    pub controller_id: Option<u64>,
    /// Every voter as ID=HOST:PORT, comma-separated, this one included, e.g.
    /// 1=127.0.0.1:9877,2=127.0.0.1:9887,3=127.0.0.1:9897.
    #[arg(long, value_name = "PEERS")]
    pub controller_peers: Option<String>,
    /// Where the Raft log, vote and snapshot are kept.
    #[arg(long, value_name = "DIR", default_value = "./keel-controller")]
    pub controller_dir: PathBuf,
    /// A master whose heartbeats stop this long is replaced from its SyncStateSet.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub controller_master_timeout_ms: u64,
    /// Raft heartbeats between voters; a leader silent 3-6 of them is replaced.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub controller_raft_heartbeat_ms: u64,
}

impl ControllerArgs {
    /// `None` when no controller was asked for.
    pub(crate) fn config(&self) -> Result<Option<keel_controller::ControllerConfig>, String> {
        let (id, peers) = match (self.controller_id, &self.controller_peers) {
            (None, None) => return Ok(None),
            (Some(id), Some(peers)) => (id, peers),
            _ => return Err("--controller-id and --controller-peers go together".into()),
        };
        let mut parsed = std::collections::BTreeMap::new();
        for item in peers
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (peer, address) = item
                .split_once('=')
                .ok_or_else(|| format!("controller peer {item:?} is not ID=HOST:PORT"))?;
            let peer: u64 = peer
                .trim()
                .parse()
                .map_err(|_| format!("controller peer id {peer:?} is not a number"))?;
            if !address.contains(':') {
                return Err(format!(
                    "controller peer {item:?}: the address needs a port"
                ));
            }
            if parsed.insert(peer, address.trim().to_string()).is_some() {
                return Err(format!("controller peer id {peer} appears twice"));
            }
        }
        if !parsed.contains_key(&id) {
            return Err(format!(
                "--controller-id {id} is not among --controller-peers {peers:?}"
            ));
        }
        if self.controller_master_timeout_ms == 0 || self.controller_raft_heartbeat_ms == 0 {
            return Err("controller timeouts must be at least 1 ms".into());
        }
        // A leader speaks for the controller only with a quorum ack within a quarter of
        // the master timeout: Raft heartbeats must come well inside that.
        if self.controller_raft_heartbeat_ms.saturating_mul(8) > self.controller_master_timeout_ms {
            return Err(format!(
                "--controller-raft-heartbeat-ms {} must be at most an eighth of \
                 --controller-master-timeout-ms {}",
                self.controller_raft_heartbeat_ms, self.controller_master_timeout_ms
            ));
        }
        Ok(Some(keel_controller::ControllerConfig {
            node_id: id,
            peers: parsed,
            dir: self.controller_dir.clone(),
            master_timeout: Duration::from_millis(self.controller_master_timeout_ms),
            raft_heartbeat: Duration::from_millis(self.controller_raft_heartbeat_ms),
            security: keel_controller::ControllerSecurity::default(),
        }))
    }
}
