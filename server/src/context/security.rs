//! A broker's security set-up: the authority (users, tokens, ACLs), the TLS of its ports
//! and how it reaches other nodes. Who may do what per request is `broker::permissions`;
//! logins are checked on `broker::security_jobs`' thread.

use crate::config::Config;
use crate::error::BrokerError;
use keel_security::{Authority, ClientTls, SECURITY_FILE};
use std::sync::Arc;

/// A broker's security set-up.
pub struct Security {
    pub authority: Arc<Authority>,
    /// The client port's and HA port's TLS, when on.
    pub tls: Option<Arc<keel_security::rustls::ServerConfig>>,
    /// TLS for the connections this broker makes (to its master, name servers).
    pub outbound_tls: Option<ClientTls>,
    /// The cluster token this broker shows its master and the name servers.
    pub cluster_token: Option<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .field("outbound_tls", &self.outbound_tls)
            .finish()
    }
}

impl Security {
    /// Loads what `from_config` would (certificates, keys, the token file) without
    /// touching the data directory.
    /// Returns the warnings a start would log (an expired certificate).
    pub fn check(config: &Config) -> Result<Vec<String>, BrokerError> {
        let settings = &config.security;
        let fail = |detail: String| BrokerError::Security(detail);
        let mut warnings = Vec::new();
        if let Some(tls) = settings.server_tls() {
            tls.config().map_err(fail)?;
            warnings.extend(Security::certificate_warning(config)?);
        }
        if let Some(ca) = &settings.tls_ca_file {
            ClientTls::new(ca, None, settings.tls_server_name.clone()).map_err(fail)?;
        }
        if let Some(path) = &settings.cluster_token_file {
            keel_security::read_secret_file(path).map_err(fail)?;
        }
        Ok(warnings)
    }

    /// A warning when the server certificate has expired; an error instead with
    /// `tls_refuse_expired`.
    fn certificate_warning(config: &Config) -> Result<Option<String>, BrokerError> {
        let Some(tls) = config.security.server_tls() else {
            return Ok(None);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
            });
        let expired = tls.expired_at(now).map_err(BrokerError::Security)?;
        match expired {
            Some(problem) if config.security.tls_refuse_expired => Err(BrokerError::Security(
                format!("{problem} (tls_refuse_expired = true)"),
            )),
            other => Ok(other),
        }
    }

    /// How this broker reaches name servers and the controllers.
    pub fn dial(&self) -> keel_net::Dial {
        keel_net::Dial {
            tls: self.outbound_tls.clone(),
            token: self.cluster_token.clone().map(keel_security::Secret),
        }
    }

    /// The HA link's share: TLS both ways, the token shown to a master, the rules.
    pub fn ha(&self) -> keel_replication::HaSecurity {
        keel_replication::HaSecurity {
            authority: self.authority.clone(),
            server_tls: self.tls.clone(),
            client_tls: self.outbound_tls.clone(),
            token: self.cluster_token.clone().map(keel_security::Secret),
        }
    }

    /// Loads certificates, keys, the cluster token and the users, tokens and
    /// permissions in the data directory; any of them unusable stops the start.
    pub fn from_config(config: &Config) -> Result<Security, BrokerError> {
        let settings = &config.security;
        let fail = |detail: String| BrokerError::Security(detail);
        let tls = match settings.server_tls() {
            Some(tls) => Some(tls.config().map_err(fail)?),
            None => None,
        };
        if let Some(warning) = Security::certificate_warning(config)? {
            log::error!("WARNING: {warning}");
            eprintln!("keeld: WARNING: {warning}");
        }
        let outbound_tls = match &settings.tls_ca_file {
            Some(ca) => {
                let cert_key = match (&settings.tls_cert_file, &settings.tls_key_file) {
                    (Some(cert), Some(key)) if settings.tls_client_ca_file.is_some() => {
                        Some((cert.as_path(), key.as_path()))
                    }
                    _ => None,
                };
                Some(ClientTls::new(ca, cert_key, settings.tls_server_name.clone()).map_err(fail)?)
            }
            None => None,
        };
        let cluster_token = match &settings.cluster_token_file {
            Some(path) => Some(keel_security::read_secret_file(path).map_err(fail)?),
            None => None,
        };
        if cluster_token.is_some() && outbound_tls.is_none() {
            let remote = config
                .master_address
                .iter()
                .chain(&config.namesrv_addrs)
                .chain(&config.controller_addrs)
                .find(|address| !keel_net::channel::is_loopback_address(address));
            if let Some(address) = remote {
                log::warn!(
                    "the cluster token goes to {address} in plaintext (no tls_ca_file): anyone \
                     on the path can read it, and peers refuse it from another host"
                );
            }
        }
        let authority = Authority::open(
            settings.auth,
            Some(config.data_dir.join(SECURITY_FILE)),
            cluster_token.as_deref(),
        )
        .map_err(|error| fail(error.to_string()))?;
        Ok(Security {
            authority: Arc::new(authority),
            tls,
            outbound_tls,
            cluster_token,
        })
    }
}
