//! How `keel` reaches a broker (TLS, a login) and the `user`, `token` and `acl`
//! commands. Secrets come from files or the environment, or are typed without echo;
//! they are never taken as flags (other users see a process's arguments) and never
//! printed, except a new token, once.

use crate::shared::GLOBAL;
use clap::Subcommand;
use keel_client::{Admin, ClientError, ClientTls, ConnectionOptions, Credentials};
use keel_security::{
    AclEntry, Action, Effect, ResourceType, Secret, SecurityCommand, SecurityReply,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// TLS and login flags every command shares.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Access {
    /// Connect with TLS, trusting the CA certificates in FILE (PEM).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", env = "KEEL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for brokers that ask for one.
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        value_name = "FILE",
        env = "KEEL_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        value_name = "FILE",
        env = "KEEL_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The name the broker's certificate must carry (default: the host of --broker).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "NAME", env = "KEEL_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Log in as this user; the password comes from KEEL_PASSWORD, --password-file, or
    /// is asked for on the terminal.
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        value_name = "NAME",
        env = "KEEL_USER",
        conflicts_with = "token_file"
    )]
    pub user: Option<String>,
    /// A file whose first line is the password of --user.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", requires = "user")]
    pub password_file: Option<PathBuf>,
    /// Log in with the token in FILE (or set KEEL_TOKEN).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", env = "KEEL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The broker's max_frame_bytes: a request larger than this is refused here, before
    /// it is sent (MESSAGE_TOO_LARGE). Raise it for a broker configured higher
    /// [default: 8388608, the broker's default].
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "BYTES", env = "KEEL_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,
}

impl Access {
    /// The connection options these flags ask for.
    pub fn options(&self) -> Result<ConnectionOptions, ClientError> {
        let invalid = ClientError::InvalidArgument;
        let tls = match &self.tls_ca {
            Some(ca) => {
                let cert_key = match (&self.tls_cert, &self.tls_key) {
                    (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                    _ => None,
                };
                Some(ClientTls::new(ca, cert_key, self.tls_server_name.clone()).map_err(invalid)?)
            }
            None if self.tls_cert.is_some() || self.tls_server_name.is_some() => {
                return Err(invalid(
                    "--tls-cert and --tls-server-name need --tls-ca (the broker's CA)".into(),
                ))
            }
            None => None,
        };
        let credentials = match (&self.user, &self.token_file) {
            (Some(user), _) => Some(Credentials::Password {
                user: user.clone(),
                password: self.password(user)?,
            }),
            (None, Some(file)) => Some(Credentials::Token(
                keel_security::read_secret_file(file).map_err(invalid)?,
            )),
            (None, None) => match std::env::var("KEEL_TOKEN") {
                Ok(token) if !token.trim().is_empty() => {
                    Some(Credentials::Token(token.trim().to_string()))
                }
                _ => None,
            },
        };
        let defaults = ConnectionOptions::default();
        Ok(ConnectionOptions {
            tls,
            credentials,
            max_request_bytes: self.max_frame_bytes.unwrap_or(defaults.max_request_bytes),
            // Replies can be as large as the requests a broker takes.
            max_frame_bytes: defaults
                .max_frame_bytes
                .max(self.max_frame_bytes.unwrap_or(0)),
            ..defaults
        })
    }

    fn password(&self, user: &str) -> Result<String, ClientError> {
        if let Some(file) = &self.password_file {
            return keel_security::read_secret_file(file).map_err(ClientError::InvalidArgument);
        }
        if let Ok(password) = std::env::var("KEEL_PASSWORD") {
            return Ok(password);
        }
        read_secret(&format!("password of {user}: "))
    }
}

/// One `[profiles.NAME]` of the profiles file: like `nats context`, where a broker is
/// and how to reach it. Secrets stay in the files it names.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    broker: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_server_name: Option<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    max_frame_bytes: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfilesFile {
    #[serde(default)]
    profiles: std::collections::BTreeMap<String, Profile>,
}

impl Profile {
    /// The profiles file: `$KEEL_CONFIG`, else `~/.config/keel/profiles.toml`.
    pub fn path() -> Option<PathBuf> {
        std::env::var_os("KEEL_CONFIG")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".config/keel/profiles.toml"))
            })
    }

    pub fn load(name: &str) -> Result<Profile, String> {
        let path = Profile::path().ok_or("no profiles file: set KEEL_CONFIG or HOME")?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("profiles file {}: {e}", path.display()))?;
        let mut file: ProfilesFile =
            toml::from_str(&text).map_err(|e| format!("profiles file {}: {e}", path.display()))?;
        let known: Vec<String> = file.profiles.keys().cloned().collect();
        file.profiles.remove(name).ok_or_else(|| {
            format!(
                "profiles file {} has no profile {name:?} (it has: {})",
                path.display(),
                known.join(", ")
            )
        })
    }

    /// What a flag or the environment did not give, from the profile.
    pub fn fill(self, broker: &mut Option<String>, access: &mut Access) {
        fn or<T>(slot: &mut Option<T>, value: Option<T>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        or(broker, self.broker);
        or(&mut access.tls_ca, self.tls_ca);
        or(&mut access.tls_cert, self.tls_cert);
        or(&mut access.tls_key, self.tls_key);
        or(&mut access.tls_server_name, self.tls_server_name);
        if access.user.is_none() && access.token_file.is_none() {
            access.user = self.user;
            access.token_file = self.token_file;
        }
        or(&mut access.password_file, self.password_file);
        or(&mut access.max_frame_bytes, self.max_frame_bytes);
    }
}

/// Reads a line from the terminal without echoing it (or from standard input when it
/// is not a terminal).
pub fn read_secret(prompt: &str) -> Result<String, ClientError> {
    use std::io::{BufRead, Write};
    let fd = libc::STDIN_FILENO;
    // SAFETY: isatty, tcgetattr and tcsetattr only read or write the termios struct we
    // own; the saved settings are restored before returning.
    let saved = unsafe {
        if libc::isatty(fd) == 1 {
            let mut settings: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut settings) == 0 {
                let saved = settings;
                settings.c_lflag &= !libc::ECHO;
                libc::tcsetattr(fd, libc::TCSANOW, &settings);
                eprint!("{prompt}");
                let _ = std::io::stderr().flush();
                Some(saved)
            } else {
                None
            }
        } else {
            None
        }
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if let Some(saved) = saved {
        // SAFETY: restores the settings saved above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read.map_err(|e| ClientError::InvalidArgument(format!("cannot read a secret: {e}")))?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "no secret given ({})",
            prompt.trim_end_matches([':', ' '])
        )));
    }
    Ok(secret)
}

/// A broker and how to reach it.
pub struct Target {
    pub address: String,
    pub options: ConnectionOptions,
}

impl Target {
    /// The controllers want TLS like the broker and the cluster token (--token-file).
    pub fn controller_access(&self) -> keel_net::Dial {
        keel_net::Dial {
            tls: self.options.tls.clone(),
            token: match &self.options.credentials {
                Some(Credentials::Token(token)) => Some(Secret(token.clone())),
                _ => None,
            },
        }
    }

    pub fn admin(&self) -> Result<Admin, ClientError> {
        Admin::connect_with(&self.address, &self.options)
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (the password: KEEL_NEW_PASSWORD, --new-password-file, or asked).
    Add {
        /// The user's name.
        name: String,
        /// Read the new password from FILE (its first line) instead of asking.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Change a user's password.
    Passwd {
        /// The user's name.
        name: String,
        /// Read the new password from FILE (its first line) instead of asking.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a user (its permissions stay until revoked).
    Remove { name: String },
    /// List the users.
    List,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token for NAME (an application, a service); it is printed once, and
    /// only its hash is kept. With --out FILE it is written there (mode 0600) instead.
    Create {
        /// Who the token is for (its principal's name).
        name: String,
        /// Write the token to FILE (created with mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Revoke a token by its id (connections that logged in with it are closed at
    /// their next request).
    Revoke { id: String },
    /// List tokens (ids and names, never the secrets).
    List,
}

/// One permission entry, from flags.
#[derive(clap::Args, Clone)]
pub struct AclArgs {
    /// A user or token name; `*` is every logged-in principal, `anonymous` the
    /// connections that did not log in.
    #[arg(long)]
    principal: String,
    /// RESOURCE:PATTERN: topic:NAME, group:NAME (a pattern may end in `*`), cluster:*
    /// or admin:*.
    #[arg(long)]
    resource: String,
    /// Comma-separated: topic publish,subscribe,describe; group consume,commit;
    /// cluster replicate,promote,register,controller; admin
    /// create_topic,delete_topic,lookup,stats,describe,security; or * for all of them.
    #[arg(long)]
    actions: String,
    /// A deny entry (it overrides any allow).
    #[arg(long)]
    deny: bool,
}

impl AclArgs {
    fn entry(&self) -> Result<AclEntry, ClientError> {
        let invalid = ClientError::InvalidArgument;
        let (kind, pattern) = self.resource.split_once(':').ok_or_else(|| {
            invalid(format!(
                "--resource {:?} is not RESOURCE:PATTERN",
                self.resource
            ))
        })?;
        let resource = ResourceType::parse(kind).ok_or_else(|| {
            invalid(format!(
                "unknown resource {kind:?} (topic, group, cluster or admin)"
            ))
        })?;
        let actions = self
            .actions
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| Action::parse(a).ok_or_else(|| invalid(format!("unknown action {a:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let entry = AclEntry {
            principal: self.principal.clone(),
            effect: if self.deny {
                Effect::Deny
            } else {
                Effect::Allow
            },
            resource,
            pattern: pattern.to_string(),
            actions,
        };
        entry.validate().map_err(invalid)?;
        Ok(entry)
    }
}

#[derive(Subcommand)]
pub enum AclCommand {
    /// Allow (or with --deny, forbid) actions on resources to a principal.
    Grant(AclArgs),
    /// Remove an entry (give exactly what was granted).
    Revoke(AclArgs),
    /// List every entry.
    List,
}

fn new_password(file: &Option<PathBuf>, name: &str) -> Result<Secret, ClientError> {
    if let Some(file) = file {
        return keel_security::read_secret_file(file)
            .map(Secret)
            .map_err(ClientError::InvalidArgument);
    }
    if let Ok(password) = std::env::var("KEEL_NEW_PASSWORD") {
        return Ok(Secret(password));
    }
    let first = read_secret(&format!("new password of {name}: "))?;
    if unsafe_is_tty() {
        let again = read_secret("again: ")?;
        if again != first {
            return Err(ClientError::InvalidArgument("the passwords differ".into()));
        }
    }
    Ok(Secret(first))
}

fn unsafe_is_tty() -> bool {
    // SAFETY: isatty reads nothing but the descriptor's state.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

fn run(target: &Target, command: &SecurityCommand) -> Result<SecurityReply, ClientError> {
    target.admin()?.security(command)
}

fn print_json(reply: &SecurityReply) {
    println!(
        "{}",
        serde_json::to_string_pretty(reply).unwrap_or_default()
    );
}

pub fn user(target: &Target, command: UserCommand) -> Result<ExitCode, ClientError> {
    let (command, json) = match command {
        UserCommand::Add {
            name,
            new_password_file,
        } => {
            let password = new_password(&new_password_file, &name)?;
            (
                SecurityCommand::UserAdd { name, password },
                crate::output::json(),
            )
        }
        UserCommand::Passwd {
            name,
            new_password_file,
        } => {
            let password = new_password(&new_password_file, &name)?;
            (
                SecurityCommand::UserPasswd { name, password },
                crate::output::json(),
            )
        }
        UserCommand::Remove { name } => {
            (SecurityCommand::UserRemove { name }, crate::output::json())
        }
        UserCommand::List => (SecurityCommand::UserList, crate::output::json()),
    };
    let reply = run(target, &command)?;
    if json {
        print_json(&reply);
    } else if command == SecurityCommand::UserList {
        for user in &reply.users {
            println!("{user}");
        }
    } else {
        println!("{}", reply.done);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn token(target: &Target, command: TokenCommand) -> Result<ExitCode, ClientError> {
    match command {
        TokenCommand::Create { name, out } => {
            let json = crate::output::json();
            let reply = run(target, &SecurityCommand::TokenCreate { name })?;
            let secret = reply.token.clone().map(|t| t.0).unwrap_or_default();
            if let Some(path) = out {
                write_private(&path, &secret)?;
                let mut shown = reply.clone();
                shown.token = None;
                match json {
                    true => print_json(&shown),
                    false => println!("{}; the token is in {}", reply.done, path.display()),
                }
            } else if json {
                print_json(&reply);
            } else {
                eprintln!("{} (shown once: keep it now)", reply.done);
                println!("{secret}");
            }
        }
        TokenCommand::Revoke { id } => {
            let reply = run(target, &SecurityCommand::TokenRevoke { id })?;
            match crate::output::json() {
                true => print_json(&reply),
                false => println!("{}", reply.done),
            }
        }
        TokenCommand::List => {
            let json = crate::output::json();
            let reply = run(target, &SecurityCommand::TokenList)?;
            if json {
                print_json(&reply);
            } else {
                println!("id                name");
                for token in &reply.tokens {
                    println!("{:<17} {}", token.id, token.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &std::path::Path, secret: &str) -> Result<(), ClientError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{secret}\n").as_bytes()))
        .map_err(|e| ClientError::InvalidArgument(format!("{}: {e}", path.display())))
}

pub fn acl(target: &Target, command: AclCommand) -> Result<ExitCode, ClientError> {
    let (command, json) = match command {
        AclCommand::Grant(args) => (
            SecurityCommand::AclGrant {
                entry: args.entry()?,
            },
            crate::output::json(),
        ),
        AclCommand::Revoke(args) => (
            SecurityCommand::AclRevoke {
                entry: args.entry()?,
            },
            crate::output::json(),
        ),
        AclCommand::List => (SecurityCommand::AclList, crate::output::json()),
    };
    let reply = run(target, &command)?;
    if json {
        print_json(&reply);
    } else if command == SecurityCommand::AclList {
        for entry in &reply.acls {
            println!("{entry}");
        }
    } else {
        println!("{}", reply.done);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `keel acl grant --help` names every action of every resource type (the ACL
    /// table in keel-security is the source).
    #[test]
    fn acl_help_names_every_action_of_every_resource() {
        let mut command = crate::commands::Cli::command();
        let acl = command.find_subcommand_mut("acl").expect("acl");
        let grant = acl.find_subcommand_mut("grant").expect("grant");
        let help = grant.render_long_help().to_string();
        for resource in keel_security::ResourceType::ALL {
            for action in resource.actions() {
                let named = format!("{} ", resource.name());
                assert!(
                    help.contains(&named),
                    "help lacks resource {}",
                    resource.name()
                );
                assert!(
                    help.contains(action.name()),
                    "`keel acl grant --help` lacks {}:{}",
                    resource.name(),
                    action.name()
                );
            }
        }
    }
}
