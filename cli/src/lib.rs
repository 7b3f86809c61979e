//! `keel`: send, consume, manage topics and read broker stats from the command line.
//! The binary is `src/main.rs`; the integration tests run this same entry point.

mod security;
mod send;
mod signals;

use send::EXIT_UNKNOWN;

use clap::{Parser, Subcommand, ValueEnum};
use keel_client::{
    ClientError, ConsumeResult, Consumer, ConsumerOptions, Delivery, PushConsumer,
    PushConsumerOptions, Record, StartFrom,
};
use security::Target;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The heading of the options every command takes, apart from the command's own.
pub(crate) const GLOBAL: &str = "Connection and output (every command)";

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Command-line client for the keel broker"
)]
struct Cli {
    /// Broker address (host:port) [default: 127.0.0.1:10911, or the profile's].
    #[arg(long, global = true, help_heading = GLOBAL, env = "KEEL_BROKER")]
    broker: Option<String>,
    /// Take the broker, TLS and login settings a flag does not give from this profile
    /// of the profiles file ($KEEL_CONFIG, else ~/.config/keel/profiles.toml).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "NAME", env = "KEEL_PROFILE")]
    profile: Option<String>,
    #[command(flatten)]
    access: security::Access,
    /// Print data as JSON: one object, or one object per line for sends and records
    /// (field names in docs/OPERATIONS.md, "The keel CLI").
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// `--json` was given.
static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// Prints one JSON value on a line.
fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// A record as JSON (consume, subscribe, dlq list): the payload as text when it is UTF-8,
/// else as hex in `payload_hex`.
fn record_json(record: &Record) -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> = record
        .properties
        .iter()
        .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
        .collect();
    let mut object = serde_json::json!({
        "topic": record.topic,
        "queue": record.queue_id,
        "offset": record.queue_offset,
        "msg_id": record.message_id(),
        "store_timestamp_ms": record.store_timestamp_ms,
        "stored": format_time(record.store_timestamp_ms),
        "born_timestamp_ms": record.born_timestamp_ms,
        "tags": record.tags,
        "keys": record.keys,
        "properties": properties,
    });
    match std::str::from_utf8(&record.payload) {
        Ok(text) => object["payload"] = serde_json::Value::String(text.to_string()),
        Err(_) => {
            let hex: String = record.payload.iter().map(|b| format!("{b:02x}")).collect();
            object["payload_hex"] = serde_json::Value::String(hex);
        }
    }
    object
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Every group the broker knows: its topic, live members and lag.
    List,
    /// One group: its members and each queue's committed offset, end and lag.
    Describe {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
    },
    /// Delete a group: its committed offsets on every topic (durably) and its members.
    /// Refused while it has live members unless --force (members that go on running
    /// join again and commit again). Its retry and dead-letter topics stay.
    Delete {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
        /// Delete although the group has live members.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Print a shell completion script: `keel completions bash > /etc/bash_completion.d/keel`
    /// (or zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Users of a broker with logins (`[security] auth`): add, passwd, remove, list.
    User {
        #[command(subcommand)]
        command: security::UserCommand,
    },
    /// Service tokens: create (shown once), revoke, list.
    Token {
        #[command(subcommand)]
        command: security::TokenCommand,
    },
    /// Permissions: grant, revoke, list (deny by default; deny overrides allow).
    Acl {
        #[command(subcommand)]
        command: security::AclCommand,
    },
    /// Send messages: each MESSAGE argument, each --file, or each line of standard input
    /// when neither is given (lines are bytes: any encoding goes through untouched),
    /// sent as they are read. Prints one line per answer as it arrives (status, message
    /// id, queue, offset, and which input it was), then a summary on standard error.
    /// Ctrl-C or SIGTERM stops reading and waits (up to --timeout) for the answers in
    /// flight. Exit status: 0 when every message got SEND_OK, 3 when some outcome is
    /// unknown (retry those with the same producer id and sequence), 1 when some were
    /// not stored or stored without SEND_OK, 130/143 when interrupted with every send
    /// answered SEND_OK.
    Send(send::SendArgs),
    /// Show the brokers name servers know: role, epoch, when the name server last heard
    /// from each and for how long it has known it, each broker's intake over its last
    /// minute (asked of the broker), and its queue count of --topic. Warns on standard
    /// error about a stale route (a broker late with its registrations).
    Routes {
        /// Name server addresses, comma separated.
        #[arg(long, default_value = "127.0.0.1:9876", env = "KEEL_NAMESRV")]
        namesrv: String,
        /// Also show each broker's queue count of this topic.
        #[arg(short, long, default_value = "")]
        topic: String,
    },
    /// Show what the controllers decided: each group's master, epoch and SyncStateSet,
    /// each replica's lag, and the controller leader and term.
    Cluster {
        /// Controller addresses, comma separated.
        #[arg(long, default_value = "127.0.0.1:9877")]
        controllers: String,
        /// Instead of showing: make broker ID the master of --group now (an operator's
        /// election; a broker outside the SyncStateSet needs --unclean).
        #[arg(long, value_name = "ID", requires = "group")]
        elect: Option<u32>,
        /// The broker group (broker_name) for --elect.
        #[arg(long)]
        group: Option<String>,
        /// Accept electing a broker outside the SyncStateSet: acknowledged messages it
        /// never received are lost (the answer says how much may be).
        #[arg(long, requires = "elect")]
        unclean: bool,
    },
    /// Consume a topic as GROUP: print each record, then commit the group's offsets.
    /// Starts where the group left off (or at the beginning for a new group). Without
    /// --group: a look at the topic from its start that commits nothing.
    Consume {
        /// The topic to read.
        #[arg(short, long)]
        topic: String,
        /// The consumer group to read as (and commit for, unless --no-commit).
        #[arg(short, long)]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(short = 'n', long)]
        count: Option<u64>,
        /// Stop when nothing new arrived for this many milliseconds (0 = never).
        #[arg(long, default_value_t = 2000)]
        idle_ms: u64,
        /// Print the payload only.
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        format: PayloadFormat,
        /// Look without moving the group: nothing is committed.
        #[arg(long)]
        no_commit: bool,
        /// Start here instead of where the group left off: earliest, latest, a time
        /// (milliseconds since the epoch, or RFC 3339 like 2026-12-01T10:00:00Z). The
        /// group then commits from there (every queue moves) unless --no-commit.
        #[arg(long, value_name = "WHERE")]
        from: Option<String>,
        /// Only this queue (a look: nothing is committed).
        #[arg(long, value_name = "Q")]
        queue: Option<u32>,
        /// With --queue: start at this queue offset.
        #[arg(long, value_name = "N", requires = "queue", conflicts_with = "from")]
        offset: Option<u64>,
    },
    /// Topics: create, list, describe, add queues, delete.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Broker statistics (offsets appended, written, flushed; pending acks; fsyncs; ...)
    /// and every topic's queue offsets.
    Stats,
    /// Join GROUP and consume TOPIC as one member of it (queues are shared with the
    /// group's other members, rebalanced as members come and go; failed messages come
    /// back after a delay). Prints one line per message handled; stops on Ctrl-C or
    /// SIGTERM after finishing and committing what it has.
    Subscribe {
        /// The topic to consume.
        #[arg(short, long)]
        topic: String,
        /// The consumer group to join.
        #[arg(short, long)]
        group: String,
        /// Where a new group starts: earliest, latest, or a time (milliseconds since the
        /// epoch, or RFC 3339 like 2026-12-01T10:00:00Z).
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Only these tags, e.g. "TagA || TagB".
        #[arg(long)]
        tag_filter: Option<String>,
        /// Handler threads (messages of different queues are handled in parallel).
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// This member leaves the group (its queues move) when it has not heartbeated
        /// for this long (ms).
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u64,
        /// A message that failed this many times goes to the group's dead-letter queue.
        #[arg(long, default_value_t = 16)]
        max_reconsume_times: u32,
        /// Handle exactly this many messages, then stop; the group's offsets are not
        /// committed past the last one handled.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        format: PayloadFormat,
    },
    /// Inspect and redrive a group's dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Where a message is: stored, flushed, replicated, consumed, retried, dead-lettered.
    Message {
        #[command(subcommand)]
        command: MessageCommand,
    },
    /// Consumer groups: list them, or describe one (members, committed offsets, lag).
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Show or move a consumer group's committed offsets.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// A broker's operator tools: promote a slave (at --broker), and offline checks and
    /// repairs of a stopped broker's data directory (verify, dump, truncate: no --broker).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// Per queue: the group's committed offset, the queue's first and last offsets, lag.
    Show {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
        /// The topic.
        #[arg(short, long)]
        topic: String,
    },
    /// Move the group's committed offsets (each queue's, or one's with --queue), to a
    /// place or by a shift, clamped to what is stored. This is how a group behind
    /// retention moves on (`--to earliest`), accepting that the expired messages are gone.
    /// Refused while the group has live members (they would commit over it) unless
    /// --force.
    Reset {
        /// The consumer group whose offsets move.
        #[arg(short, long)]
        group: String,
        /// The topic whose queues move.
        #[arg(short, long)]
        topic: String,
        /// earliest (first stored), latest (skip everything stored), an offset, or an
        /// RFC 3339 time like 2026-12-01T10:00:00Z (the first message stored at or after it).
        #[arg(long, required_unless_present = "shift", conflicts_with = "shift")]
        to: Option<String>,
        /// Move each committed offset by N: negative goes back (redelivers N messages a
        /// queue), positive skips. A queue without a commit counts from its first stored.
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        shift: Option<i64>,
        /// Only this queue (default: every queue).
        #[arg(long)]
        queue: Option<u32>,
        /// Print each queue's move (from, to), change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Reset although the group has live members.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// How many messages the group's dead-letter queue holds.
    List {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
    },
    /// Print the dead-lettered messages: id, original topic and id, attempts, reason.
    Show {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
        /// Print at most this many (the oldest first).
        #[arg(short = 'n', long, default_value_t = 100)]
        count: u64,
    },
    /// Deliver dead-lettered messages to the group again (through its retry topic, so
    /// only this group sees them), with their attempt count reset. Each message is
    /// redriven once: the position is remembered per group.
    Redrive {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
        /// Only this message (a DLQ message id, as `dlq show` prints).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum MessageCommand {
    /// By message id (16 hex digits: it names where the message is stored, so no log
    /// is scanned), or the newest message with --key (scans the log).
    Show {
        /// The message id, as `keel send` and `keel consume` print it.
        id: Option<String>,
        /// Find the newest message carrying this key instead.
        #[arg(long)]
        key: Option<String>,
        /// Also print the payload (escaped text: any byte that is not UTF-8 as \xNN;
        /// with --hex as hexadecimal).
        #[arg(long)]
        payload: bool,
        /// With --payload: print it as hexadecimal.
        #[arg(long, requires = "payload")]
        hex: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Promote the slave at --broker to master (after its master died). It stops
    /// following its master, starts a new epoch at its log end, and takes sends. The
    /// old master must come back as a slave of it (see docs/OPERATIONS.md).
    Promote {
        /// async_master: takes a returning slave, acks after the local flush.
        /// sync_master: acks only once a slave has it (SLAVE_NOT_AVAILABLE until one
        /// is attached). master: standalone.
        #[arg(long, default_value = "async_master", value_parser = ["async_master", "sync_master", "master"])]
        role: String,
        /// Promote although the slave is still connected to a live master. That master
        /// keeps taking sends until a name server fences it, and what it stores
        /// meanwhile that this slave never received is cut when it rejoins as a slave.
        #[arg(long)]
        force: bool,
    },
    /// Check every record (CRC32C, size, position) and every index of a data directory,
    /// and say whether keeld would start on it. Changes nothing. Exit status 1 when
    /// keeld would refuse to start.
    Verify {
        /// The data directory of the stopped broker.
        data_dir: PathBuf,
        /// The broker's max_message_bytes (bounds what a plausible record size is).
        #[arg(long, default_value_t = keel_protocol::DEFAULT_MAX_MESSAGE_BYTES)]
        max_message_bytes: u32,
    },
    /// Print the records of the log from a log offset, for debugging.
    Dump {
        /// The data directory of the stopped broker.
        data_dir: PathBuf,
        /// First log offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Records to print.
        #[arg(long, default_value_t = 20)]
        count: u64,
        /// Also print payloads (escaped text: any byte that is not UTF-8 as \xNN).
        #[arg(long)]
        payload: bool,
    },
    /// Discard the log from OFFSET on, deliberately: every message at or after it is
    /// lost. For a log keeld refuses to start on because of corruption: truncate at the
    /// log offset `keel admin verify` names. Records before OFFSET must all be valid.
    Truncate {
        /// The data directory of the stopped broker.
        data_dir: PathBuf,
        /// The log offset to cut at (a record must start there).
        #[arg(long)]
        offset: u64,
        /// Required: says you accept losing every message from OFFSET on.
        #[arg(long)]
        discard_acknowledged_messages: bool,
        /// The broker's max_message_bytes (bounds what a plausible record size is).
        #[arg(long, default_value_t = keel_protocol::DEFAULT_MAX_MESSAGE_BYTES)]
        max_message_bytes: u32,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic with QUEUES queues (no change if it exists).
    Create {
        /// The topic's name ([A-Za-z0-9_.-], at most 127 characters).
        topic: String,
        /// How many queues (consumers of a group share them; order holds per queue).
        #[arg(long, default_value_t = 4)]
        queues: u32,
    },
    /// Add queues to a topic: QUEUES is the new total (queues are never removed: each
    /// holds messages). Producers and name servers see them at once; a group's members
    /// read a new queue from its start.
    Update {
        /// The topic.
        topic: String,
        /// The new number of queues (at least the current one).
        #[arg(long)]
        queues: u32,
    },
    /// Delete a topic with its messages and its groups' committed offsets. Refused
    /// while it is in use (a group with live members, or messages stored in the last
    /// minute) unless --force. The log space is freed as retention deletes the
    /// segments (the log is shared by every topic).
    Delete {
        /// The topic.
        topic: String,
        /// Delete although the topic is in use.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(short, long)]
        yes: bool,
    },
    /// List topics with each queue's min and max offset.
    List {
        /// Also the broker's own topics (%RETRY%..., %DLQ%..., %SCHEDULE%).
        #[arg(long)]
        all: bool,
    },
    /// One topic: each queue's stored range and size, what it took in over the broker's
    /// last minute, and the groups consuming it with their lag.
    Describe {
        /// The topic.
        topic: String,
    },
}

/// How payloads are printed: escaped text by default (valid UTF-8 as is, any other
/// byte as \xNN; never a replacement character).
#[derive(clap::Args, Clone, Copy, Default)]
struct PayloadFormat {
    /// Print each payload byte for byte (then a newline), nothing else.
    #[arg(long, conflicts_with = "hex")]
    raw: bool,
    /// Print payloads as hexadecimal.
    #[arg(long)]
    hex: bool,
}

impl PayloadFormat {
    fn text(self, payload: &[u8]) -> String {
        if self.hex {
            payload.iter().map(|byte| format!("{byte:02x}")).collect()
        } else {
            escape(payload)
        }
    }
}

/// Payload bytes as text: valid UTF-8 as it is except `\` and control characters,
/// every other byte as `\xNN`, so binary payloads print faithfully and unambiguously.
fn escape(payload: &[u8]) -> String {
    let mut out = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for character in chunk.valid().chars() {
            match character {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Milliseconds since the epoch as RFC 3339 in UTC with milliseconds
/// (`2026-12-01T10:00:00.000Z`), the inverse of `parse_time`'s RFC 3339 form.
pub fn format_time(ms: u64) -> String {
    let seconds = ms / 1000;
    let days = (seconds / 86_400) as i64;
    let clock = seconds % 86_400;
    // The civil date of a day count since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        clock / 3600,
        clock / 60 % 60,
        clock % 60,
        ms % 1000
    )
}

/// One record as `consume` and `subscribe` print it: where it is, when it was stored,
/// its tags, keys and properties, then the payload (`lead` comes first: subscribe's
/// topic, consume's nothing; `extra` before the payload: subscribe's reconsume count).
fn record_line(record: &Record, lead: &str, msg_id: &str, extra: &str, payload: &str) -> String {
    let properties: Vec<String> = record
        .properties
        .iter()
        .map(|(key, value)| format!("{}={}", escape(key.as_bytes()), escape(value.as_bytes())))
        .collect();
    format!(
        "{lead}queue={} offset={} id={msg_id} stored={} tags={:?} keys={:?} properties={{{}}} {extra}payload={payload}",
        record.queue_id,
        record.queue_offset,
        format_time(record.store_timestamp_ms),
        record.tags,
        record.keys,
        properties.join(", ")
    )
}

/// Writes a payload byte for byte and a newline (`--raw`).
fn write_raw(payload: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(payload).and_then(|()| out.write_all(b"\n"));
}

/// The ports `--broker` and `--namesrv` mean when none is given.
pub(crate) const BROKER_PORT: u16 = 10911;
pub(crate) const NAMESRV_PORT: u16 = 9876;
pub(crate) const CONTROLLER_PORT: u16 = 9877;

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address, with `port` added
/// when it has none.
pub(crate) fn with_default_port(address: &str, port: u16) -> String {
    let address = address.trim();
    if let Some(rest) = address.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) => format!("{address}:{port}"),
            _ => address.to_string(),
        };
    }
    match address.matches(':').count() {
        0 => format!("{address}:{port}"),
        1 => address.to_string(),
        _ => format!("[{address}]:{port}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Sync,
    Async,
    Oneway,
}

/// The `keel` command: parses the arguments, runs, and returns the exit status.
pub fn main_entry() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`keel consume ... | head`) instead of failing on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // The CLI reports every failure itself, one line on stderr: the library's own
    // warnings (ALARM lines, reconnects) stay out unless RUST_LOG asks for them.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("error,keel_client=off"),
    )
    .init();
    let mut cli = Cli::parse();
    let _ = JSON.set(cli.json);
    if let Some(name) = cli.profile.clone() {
        match security::Profile::load(&name) {
            Ok(profile) => profile.fill(&mut cli.broker, &mut cli.access),
            Err(error) => {
                eprintln!("keel: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let address = cli.broker.as_deref().map_or_else(
        || format!("127.0.0.1:{BROKER_PORT}"),
        |broker| with_default_port(broker, BROKER_PORT),
    );
    let target = match cli.access.options() {
        Ok(options) => security::Target { address, options },
        Err(error) => {
            eprintln!("keel: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::User { command } => security::user(&target, command),
        Command::Token { command } => security::token(&target, command),
        Command::Acl { command } => security::acl(&target, command),
        Command::Send(args) => send::run(&target, &args),
        Command::Consume {
            topic,
            group,
            count,
            idle_ms,
            quiet,
            format,
            no_commit,
            from,
            queue,
            offset,
        } => consume(
            &target,
            &ConsumeShape {
                topic: &topic,
                // Without a group: a look from the start under a name of the CLI's own,
                // committing nothing (so no group is shared by every `keel consume`).
                group: group.as_deref().unwrap_or("keel-cli-look"),
                count,
                idle_ms,
                quiet,
                format,
                commit: !no_commit && group.is_some(),
                from: from.as_deref(),
                queue,
                offset,
            },
        ),
        Command::Topic {
            command: TopicCommand::Create { topic, queues },
        } => create_topic(&target, &topic, queues),
        Command::Topic {
            command: TopicCommand::List { all },
        } => list_topics(&target, all),
        Command::Topic {
            command: TopicCommand::Update { topic, queues },
        } => add_queues(&target, &topic, queues),
        Command::Topic {
            command: TopicCommand::Describe { topic },
        } => describe_topic(&target, &topic),
        Command::Topic {
            command: TopicCommand::Delete { topic, force, yes },
        } => delete_topic(&target, &topic, force, yes),
        Command::Stats => stats(&target),
        Command::Subscribe {
            topic,
            group,
            from,
            tag_filter,
            threads,
            session_timeout_ms,
            max_reconsume_times,
            count,
            format,
        } => subscribe(
            &target,
            &topic,
            &group,
            &from,
            tag_filter,
            threads,
            session_timeout_ms,
            max_reconsume_times,
            count,
            format,
        ),
        Command::Dlq { command } => dlq(&target, command),
        Command::Message {
            command:
                MessageCommand::Show {
                    id,
                    key,
                    payload,
                    hex,
                },
        } => {
            let payload = payload.then_some(PayloadFormat { raw: false, hex });
            message_show(&target, id.as_deref(), key.as_deref(), payload)
        }
        Command::Offsets { command } => offsets(&target, command),
        Command::Group { command } => group(&target, command),
        Command::Admin { command } => admin(&target, command),
        Command::Routes { namesrv, topic } => routes(&target, &namesrv, &topic),
        Command::Cluster {
            controllers,
            elect: Some(broker_id),
            group,
            unclean,
        } => cluster_elect(
            &controllers,
            group.unwrap_or_default(),
            broker_id,
            unclean,
            json(),
            &target.controller_access(),
        ),
        Command::Cluster { controllers, .. } => {
            cluster(&controllers, json(), &target.controller_access())
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keel: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What `keel consume` reads, from where, and whether it commits.
struct ConsumeShape<'a> {
    topic: &'a str,
    group: &'a str,
    count: Option<u64>,
    idle_ms: u64,
    quiet: bool,
    format: PayloadFormat,
    commit: bool,
    from: Option<&'a str>,
    queue: Option<u32>,
    offset: Option<u64>,
}

/// A `--from` time: milliseconds since the epoch, or RFC 3339 in UTC
/// (`2026-12-01T10:00:00Z`, with optional fractions of a second), years 1970 to 9999.
fn parse_time(text: &str) -> Option<u64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok();
    }
    let digits = |part: &str, len: usize| -> Option<i64> {
        (part.len() == len && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-');
    let (year, month, day) = (
        digits(date.next()?, 4)?,
        digits(date.next()?, 2)?,
        digits(date.next()?, 2)?,
    );
    if date.next().is_some() {
        return None;
    }
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.split(':');
    let (hour, minute, second) = (
        digits(clock.next()?, 2)?,
        digits(clock.next()?, 2)?,
        digits(clock.next()?, 2)?,
    );
    if clock.next().is_some() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if year < 1970
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from 1970-01-01 to the date (proleptic Gregorian), the usual civil formula.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let millis: i64 = format!("{:0<3}", &fraction[..fraction.len().min(3)])
        .parse()
        .ok()?;
    let total = ((days * 24 + hour) * 60 + minute) * 60 + second;
    u64::try_from(total * 1000 + millis).ok()
}

fn consume(broker: &Target, shape: &ConsumeShape<'_>) -> Result<ExitCode, ClientError> {
    let (topic, group, count, idle_ms, quiet, format) = (
        shape.topic,
        shape.group,
        shape.count,
        shape.idle_ms,
        shape.quiet,
        shape.format,
    );
    let options = ConsumerOptions {
        long_poll: Duration::from_millis(500),
        connection: broker.options.clone(),
        auto_commit: shape.commit && shape.queue.is_none(),
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(&broker.address, group, topic, options)?;
    if consumer.queue_count() == 0 {
        return Err(ClientError::InvalidArgument(format!(
            "topic {topic:?} has no queues"
        )));
    }
    let queues = consumer.queue_count() as u32;
    if let Some(only) = shape.queue {
        if only >= queues {
            return Err(ClientError::InvalidArgument(format!(
                "topic {topic:?} has queues 0 to {}, not {only}",
                queues - 1
            )));
        }
    }
    if shape.from.is_some() || shape.offset.is_some() {
        let admin = broker.admin()?;
        let info = admin.list_topics(Some(topic))?.into_iter().next();
        let stored = info.map(|info| info.queues).unwrap_or_default();
        for queue_id in 0..queues {
            let range = stored.get(queue_id as usize);
            let start = match (shape.offset, shape.from) {
                (Some(offset), _) if Some(queue_id) == shape.queue => offset,
                (Some(_), _) => continue,
                (None, Some("earliest")) => range.map_or(0, |q| q.min_offset),
                (None, Some("latest")) => range.map_or(0, |q| q.max_offset),
                (None, Some(time)) => {
                    let ms = parse_time(time).ok_or_else(|| {
                        ClientError::InvalidArgument(format!(
                            "--from takes earliest, latest, milliseconds since the epoch or an \
                             RFC 3339 time (2026-12-01T10:00:00Z), not {time:?}"
                        ))
                    })?;
                    admin.offset_for_time(topic, queue_id, ms)?
                }
                (None, None) => continue,
            };
            consumer.seek(queue_id, start)?;
        }
    }
    if let Some(only) = shape.queue {
        // Every other queue is moved to its end and never reaches the handler.
        let admin = broker.admin()?;
        let info = admin.list_topics(Some(topic))?.into_iter().next();
        let stored = info.map(|info| info.queues).unwrap_or_default();
        for queue_id in (0..queues).filter(|queue| *queue != only) {
            let end = stored.get(queue_id as usize).map_or(0, |q| q.max_offset);
            consumer.seek(queue_id, end)?;
        }
    }
    let only = shape.queue;
    let limit = count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut last_progress = Instant::now();
    let print = |record: &Record| -> Result<(), String> {
        if json() {
            print_json(&record_json(record));
            return Ok(());
        }
        if format.raw {
            write_raw(&record.payload);
            return Ok(());
        }
        let payload = format.text(&record.payload);
        if quiet {
            println!("{payload}");
        } else {
            println!(
                "{}",
                record_line(record, "", &record.message_id(), "", &payload)
            );
        }
        Ok(())
    };
    // With --queue the other queues' records are handed over too (and not printed):
    // the limit and the idle time count what was printed.
    let shown = std::cell::Cell::new(0u64);
    let print = |record: &Record| -> Result<(), String> {
        if only.is_some_and(|queue| queue != record.queue_id) || shown.get() >= limit {
            return Ok(());
        }
        shown.set(shown.get() + 1);
        print(record)
    };
    while printed < limit {
        let at_most = match only {
            Some(_) => u64::MAX,
            None => limit - printed,
        };
        let before = shown.get();
        let round = consumer.poll_at_most(at_most, &print).map_err(|error| match error {
            ClientError::OffsetExpired { .. } => ClientError::InvalidArgument(format!(
                "{error}. To skip the expired messages: keel offsets reset --group {group} --topic {topic} --to earliest"
            )),
            other => other,
        })?;
        let _ = round;
        printed = shown.get();
        if printed > before {
            last_progress = Instant::now();
        }
        if idle_ms > 0 && last_progress.elapsed() >= Duration::from_millis(idle_ms) {
            break;
        }
    }
    if shape.commit && shape.queue.is_none() {
        consumer.commit()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn create_topic(broker: &Target, topic: &str, queues: u32) -> Result<ExitCode, ClientError> {
    let created = broker.admin()?.create_topic(topic, queues)?;
    if json() {
        print_json(&serde_json::json!({
            "topic": created.topic, "queues": created.queues, "created": created.created,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if created.created {
        "created"
    } else {
        "already exists with"
    };
    println!("topic {} {verb} {} queue(s)", created.topic, created.queues);
    Ok(ExitCode::SUCCESS)
}

fn add_queues(broker: &Target, topic: &str, queues: u32) -> Result<ExitCode, ClientError> {
    let grown = broker.admin()?.add_queues(topic, queues)?;
    if json() {
        print_json(&serde_json::json!({
            "topic": grown.topic, "queues": grown.queues, "added": grown.created,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    match grown.created {
        true => println!("topic {} now has {} queue(s)", grown.topic, grown.queues),
        false => println!(
            "topic {} already has {} queue(s)",
            grown.topic, grown.queues
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn delete_topic(
    broker: &Target,
    topic: &str,
    force: bool,
    yes: bool,
) -> Result<ExitCode, ClientError> {
    use std::io::IsTerminal;
    let admin = broker.admin()?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("keel: deleting topic {topic} needs --yes when stdin is not a terminal");
            return Ok(ExitCode::from(2));
        }
        let held = admin.list_topics(Some(topic))?;
        let messages: u64 = held
            .iter()
            .flat_map(|info| &info.queues)
            .map(|queue| queue.max_offset.saturating_sub(queue.min_offset))
            .sum();
        eprint!("delete topic {topic} and its {messages} message(s)? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("keel: nothing deleted");
            return Ok(ExitCode::FAILURE);
        }
    }
    let deleted = admin.delete_topic(topic, force)?;
    if json() {
        print_json(&serde_json::json!({
            "topic": deleted.topic, "queues": deleted.queues, "messages": deleted.messages,
            "bytes": deleted.bytes, "durable": deleted.durable,
        }));
    } else {
        println!(
            "deleted topic {}: {} queue(s), {} message(s), {}",
            deleted.topic,
            deleted.queues,
            deleted.messages,
            bytes_words(deleted.bytes)
        );
    }
    if deleted.durable {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "keel: the deletion of {} is in effect but was not confirmed durable in time: it holds \
         once its record is on disk; if the broker stops first, its log decides at the \
         restart (`keel topic list` tells)",
        deleted.topic
    );
    Ok(ExitCode::from(EXIT_UNKNOWN))
}

fn list_topics(broker: &Target, all: bool) -> Result<ExitCode, ClientError> {
    let topics = broker.admin()?.list_topics(None)?;
    let shown = topics
        .into_iter()
        .filter(|t| all || !t.topic.starts_with('%'));
    if json() {
        let topics: Vec<serde_json::Value> = shown.map(|topic| topic_json(&topic)).collect();
        print_json(&serde_json::json!({ "topics": topics }));
        return Ok(ExitCode::SUCCESS);
    }
    for topic in shown {
        let offsets: Vec<String> = topic
            .queues
            .iter()
            .map(|queue| format!("{}..{}", queue.min_offset, queue.max_offset))
            .collect();
        println!(
            "{} queues={} offsets=[{}]",
            topic.topic,
            topic.queues.len(),
            offsets.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_topic(broker: &Target, topic: &str) -> Result<ExitCode, ClientError> {
    let admin = broker.admin()?;
    let Some(stats) = admin.topic_stats(Some(topic))?.into_iter().next() else {
        return Err(ClientError::InvalidArgument(format!("no topic {topic:?}")));
    };
    let groups: Vec<keel_protocol::GroupInfo> = admin
        .list_groups(None)?
        .into_iter()
        .filter(|group| group.topic == topic)
        .collect();
    let stored: u64 = stats
        .queues
        .iter()
        .map(|q| q.max_offset - q.min_offset.min(q.max_offset))
        .sum();
    let bytes: u64 = stats.queues.iter().map(|q| q.bytes).sum();
    let per_second = |count: u64| match stats.window_ms {
        0 => 0.0,
        ms => count as f64 * 1000.0 / f64::from(ms),
    };
    let mut waits = Vec::with_capacity(groups.len());
    for group in &groups {
        let mut oldest = 0.0f64;
        for (queue, committed, end) in &group.queues {
            oldest = oldest.max(lag_seconds(&admin, topic, *queue, *committed, *end)?);
        }
        waits.push(oldest);
    }
    let group_lag = |group: &keel_protocol::GroupInfo| -> u64 {
        group
            .queues
            .iter()
            .map(|(_, c, e)| e.saturating_sub(*c))
            .sum()
    };
    if json() {
        let groups: Vec<serde_json::Value> = groups
            .iter()
            .zip(&waits)
            .map(|(group, wait)| {
                serde_json::json!({
                    "group": group.group, "members": group.members, "lag": group_lag(group),
                    "lag_seconds": wait,
                })
            })
            .collect();
        let queues: Vec<serde_json::Value> = stats
            .queues
            .iter()
            .enumerate()
            .map(|(queue, info)| {
                serde_json::json!({
                    "queue": queue, "min_offset": info.min_offset,
                    "max_offset": info.max_offset, "bytes": info.bytes,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "topic": stats.topic, "internal": stats.topic.starts_with('%'),
            "queues": queues, "messages_stored": stored, "bytes_stored": bytes,
            "window_ms": stats.window_ms, "window_messages": stats.window_messages,
            "window_bytes": stats.window_bytes,
            "messages_per_second": per_second(stats.window_messages),
            "bytes_per_second": per_second(stats.window_bytes),
            "groups": groups,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "topic {}: {} queue(s), {stored} message(s) stored in {}",
        stats.topic,
        stats.queues.len(),
        bytes_words(bytes)
    );
    println!(
        "  in: {:.1} msg/s, {}/s over the last {:.0} s",
        per_second(stats.window_messages),
        bytes_words(per_second(stats.window_bytes) as u64),
        f64::from(stats.window_ms) / 1000.0
    );
    for (queue, range) in stats.queues.iter().enumerate() {
        println!(
            "  queue {queue}: offsets {}..{}, {}",
            range.min_offset,
            range.max_offset,
            bytes_words(range.bytes)
        );
    }
    for (group, wait) in groups.iter().zip(&waits) {
        println!(
            "  group {}: {} live member(s), lag {} message(s), oldest waiting {}",
            group.group,
            group.members,
            group_lag(group),
            duration_words(*wait)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A byte count as people read it: "512 B", "4.0 KiB", "1.5 MiB", "2.0 GiB".
fn bytes_words(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn delete_group(broker: &Target, group: &str, force: bool) -> Result<ExitCode, ClientError> {
    let deleted = broker.admin()?.delete_group(group, force)?;
    if json() {
        print_json(&serde_json::json!({
            "group": deleted.group, "offsets": deleted.offsets, "members": deleted.members,
        }));
    } else {
        println!(
            "deleted group {}: {} committed offset(s), {} live member(s) forgotten",
            deleted.group, deleted.offsets, deleted.members
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn group(broker: &Target, command: GroupCommand) -> Result<ExitCode, ClientError> {
    let (filter, describe) = match &command {
        GroupCommand::List => (None, false),
        GroupCommand::Describe { group } => (Some(group.as_str()), true),
        GroupCommand::Delete { group, force } => return delete_group(broker, group, *force),
    };
    let admin = broker.admin()?;
    let groups = admin.list_groups(filter)?;
    if describe && groups.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "this broker knows no group {:?} (no live member, no committed offset)",
            filter.unwrap_or_default()
        )));
    }
    let lag = |info: &keel_protocol::GroupInfo| -> u64 {
        info.queues
            .iter()
            .map(|(_, committed, end)| end.saturating_sub(*committed))
            .sum()
    };
    // Each queue's lag in seconds: how long its oldest uncommitted message has waited.
    let mut waits: Vec<Vec<f64>> = Vec::with_capacity(groups.len());
    for info in &groups {
        let mut each = Vec::with_capacity(info.queues.len());
        for (queue, committed, end) in &info.queues {
            each.push(lag_seconds(&admin, &info.topic, *queue, *committed, *end)?);
        }
        waits.push(each);
    }
    let oldest = |waits: &[f64]| waits.iter().copied().fold(0.0, f64::max);
    if json() {
        let groups: Vec<serde_json::Value> = groups
            .iter()
            .zip(&waits)
            .map(|(info, waits)| {
                let queues: Vec<serde_json::Value> = info
                    .queues
                    .iter()
                    .zip(waits)
                    .map(|((queue, committed, end), wait)| {
                        serde_json::json!({
                            "queue": queue, "committed": committed, "end": end,
                            "lag": end.saturating_sub(*committed), "lag_seconds": wait,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "group": info.group, "topic": info.topic, "members": info.members,
                    "lag": lag(info), "lag_seconds": oldest(waits), "queues": queues,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "groups": groups }));
        return Ok(ExitCode::SUCCESS);
    }
    if describe {
        for (info, waits) in groups.iter().zip(&waits) {
            println!(
                "group {} on {}: {} live member(s), lag {} message(s), oldest waiting {}",
                info.group,
                info.topic,
                info.members,
                lag(info),
                duration_words(oldest(waits))
            );
            for ((queue, committed, end), wait) in info.queues.iter().zip(waits) {
                println!(
                    "  queue {queue}: committed {committed}, end {end}, lag {} ({})",
                    end.saturating_sub(*committed),
                    duration_words(*wait)
                );
            }
        }
    } else {
        println!(
            "{:<24} {:<24} {:>7} {:>10} {:>10}",
            "group", "topic", "members", "lag", "lag_time"
        );
        for (info, waits) in groups
            .iter()
            .zip(&waits)
            .filter(|(info, _)| !info.group.starts_with('%'))
        {
            println!(
                "{:<24} {:<24} {:>7} {:>10} {:>10}",
                info.group,
                info.topic,
                info.members,
                lag(info),
                duration_words(oldest(waits))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Seconds since the oldest message of a queue a group has not committed was stored
/// (0 when it committed everything).
fn lag_seconds(
    admin: &keel_client::Admin,
    topic: &str,
    queue: u32,
    committed: u64,
    end: u64,
) -> Result<f64, ClientError> {
    if committed >= end {
        return Ok(0.0);
    }
    Ok(match admin.store_time_at(topic, queue, committed)? {
        Some(stored_ms) => keel_protocol::now_ms().saturating_sub(stored_ms) as f64 / 1000.0,
        None => 0.0,
    })
}

/// A wait as people read it: "0s", "4.2s", "3m12s", "2h05m", "3d04h".
fn duration_words(seconds: f64) -> String {
    let whole = seconds as u64;
    match whole {
        0 if seconds <= 0.0 => "0s".to_string(),
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86_400 => format!("{}h{:02}m", whole / 3600, whole / 60 % 60),
        _ => format!("{}d{:02}h", whole / 86_400, whole / 3600 % 24),
    }
}

fn topic_json(topic: &keel_protocol::TopicInfo) -> serde_json::Value {
    let queues: Vec<serde_json::Value> = topic
        .queues
        .iter()
        .enumerate()
        .map(|(queue, info)| {
            serde_json::json!({
                "queue": queue, "min_offset": info.min_offset, "max_offset": info.max_offset,
            })
        })
        .collect();
    serde_json::json!({ "topic": topic.topic, "internal": topic.topic.starts_with('%'), "queues": queues })
}

fn stats(broker: &Target) -> Result<ExitCode, ClientError> {
    let admin = broker.admin()?;
    if json() {
        let stats: serde_json::Map<String, serde_json::Value> = admin
            .stats()?
            .into_iter()
            .map(|(name, value)| (name, serde_json::Value::from(value)))
            .collect();
        let topics: Vec<serde_json::Value> =
            admin.list_topics(None)?.iter().map(topic_json).collect();
        print_json(&serde_json::json!({ "stats": stats, "topics": topics }));
        return Ok(ExitCode::SUCCESS);
    }
    for (name, value) in admin.stats()? {
        println!("{name:<26} {value}");
    }
    // The broker's own topics only when they hold something (retries, dead letters).
    let topics = admin.list_topics(None)?.into_iter().filter(|topic| {
        !topic.topic.starts_with('%') || topic.queues.iter().any(|q| q.max_offset > q.min_offset)
    });
    for topic in topics {
        for (queue_id, queue) in topic.queues.iter().enumerate() {
            println!(
                "topic {} queue {queue_id}: offsets {}..{}",
                topic.topic, queue.min_offset, queue.max_offset
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn offsets(broker: &Target, command: OffsetsCommand) -> Result<ExitCode, ClientError> {
    let admin = broker.admin()?;
    let (group, topic) = match &command {
        OffsetsCommand::Show { group, topic } | OffsetsCommand::Reset { group, topic, .. } => {
            (group.clone(), topic.clone())
        }
    };
    let (group, topic) = (group.as_str(), topic.as_str());
    let info = admin.list_topics(Some(topic))?.into_iter().next();
    let queues = info.map(|info| info.queues).unwrap_or_default();
    match command {
        OffsetsCommand::Show { .. } => {
            let mut rows = Vec::new();
            for (queue_id, queue) in queues.iter().enumerate() {
                let committed = admin.query_offset(group, topic, queue_id as u32)?;
                let lag = queue
                    .max_offset
                    .saturating_sub(committed.unwrap_or(queue.min_offset));
                if json() {
                    rows.push(serde_json::json!({
                        "queue": queue_id, "committed": committed,
                        "min_offset": queue.min_offset, "max_offset": queue.max_offset,
                        "lag": lag,
                        "expired": committed.is_some_and(|offset| offset < queue.min_offset),
                    }));
                    continue;
                }
                let state = match committed {
                    Some(offset) if offset < queue.min_offset => {
                        " (EXPIRED: below the first stored offset)"
                    }
                    _ => "",
                };
                let committed = committed.map_or("none".to_string(), |offset| offset.to_string());
                println!(
                    "queue {queue_id}: committed {committed}, stored {}..{}, lag {lag}{state}",
                    queue.min_offset, queue.max_offset
                );
            }
            if json() {
                print_json(&serde_json::json!({ "group": group, "topic": topic, "queues": rows }));
            }
        }
        OffsetsCommand::Reset {
            to,
            shift,
            queue,
            dry_run,
            force,
            ..
        } => {
            if queues.is_empty() {
                return Err(ClientError::InvalidArgument(format!("no topic {topic:?}")));
            }
            if let Some(only) = queue.filter(|only| *only as usize >= queues.len()) {
                return Err(ClientError::InvalidArgument(format!(
                    "topic {topic:?} has queues 0 to {}, not {only}",
                    queues.len() - 1
                )));
            }
            let members = admin
                .list_groups(Some(group))?
                .iter()
                .filter(|info| info.topic == topic)
                .map(|info| info.members)
                .sum::<u32>();
            if members > 0 && !force && !dry_run {
                return Err(ClientError::InvalidArgument(format!(
                    "group {group} has {members} live member(s) on {topic}: they commit their own \
                     positions over a reset. Stop them first, or pass --force"
                )));
            }
            let time = match to.as_deref() {
                Some("earliest" | "latest") | None => None,
                Some(text) if text.bytes().all(|b| b.is_ascii_digit()) => None,
                Some(text) => Some(parse_time(text).ok_or_else(|| {
                    ClientError::InvalidArgument(format!(
                        "--to takes earliest, latest, an offset or an RFC 3339 time \
                         (2026-12-01T10:00:00Z), not {text:?}"
                    ))
                })?),
            };
            let mut moves = Vec::new();
            for (queue_id, info) in queues.iter().enumerate() {
                if queue.is_some_and(|only| only as usize != queue_id) {
                    continue;
                }
                let queue_id = queue_id as u32;
                let committed = admin.query_offset(group, topic, queue_id)?;
                let wanted = match (to.as_deref(), shift, time) {
                    (_, _, Some(ms)) => i128::from(admin.offset_for_time(topic, queue_id, ms)?),
                    (Some("earliest"), _, _) => i128::from(info.min_offset),
                    (Some("latest"), _, _) => i128::from(info.max_offset),
                    (Some(number), _, _) => {
                        number.parse::<u64>().map(i128::from).map_err(|_| {
                            ClientError::InvalidArgument(format!(
                                "--to {number:?} is not an offset"
                            ))
                        })?
                    }
                    (None, Some(by), _) => {
                        i128::from(committed.unwrap_or(info.min_offset)) + i128::from(by)
                    }
                    (None, None, _) => {
                        return Err(ClientError::InvalidArgument("give --to or --shift".into()))
                    }
                };
                let (low, high) = (info.min_offset, info.max_offset.max(info.min_offset));
                let target = wanted.clamp(i128::from(low), i128::from(high)) as u64;
                moves.push((
                    queue_id,
                    committed,
                    target,
                    wanted != i128::from(target),
                    *info,
                ));
            }
            for (queue_id, _, target, _, _) in &moves {
                if !dry_run {
                    admin.commit_offset(group, topic, *queue_id, *target)?;
                }
            }
            if json() {
                let rows: Vec<serde_json::Value> = moves
                    .iter()
                    .map(|(queue_id, from, to, clamped, info)| {
                        serde_json::json!({
                            "queue": queue_id, "from": from, "to": to, "clamped": clamped,
                            "min_offset": info.min_offset, "max_offset": info.max_offset,
                        })
                    })
                    .collect();
                print_json(&serde_json::json!({
                    "group": group, "topic": topic, "dry_run": dry_run,
                    "live_members": members, "queues": rows,
                }));
                return Ok(ExitCode::SUCCESS);
            }
            let verb = if dry_run { "would move" } else { "moved" };
            for (queue_id, from, to, clamped, info) in &moves {
                let from = from.map_or("none".to_string(), |offset| offset.to_string());
                let clamped = if *clamped {
                    format!(
                        " (clamped to the stored {}..{})",
                        info.min_offset, info.max_offset
                    )
                } else {
                    String::new()
                };
                println!("queue {queue_id}: {verb} {group} from {from} to {to}{clamped}");
            }
            if dry_run {
                eprintln!("keel offsets reset: dry run, nothing changed");
            } else if members > 0 {
                eprintln!(
                    "keel offsets reset: {group} has {members} live member(s); they may commit over this"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn subscribe(
    broker: &Target,
    topic: &str,
    group: &str,
    from: &str,
    tag_filter: Option<String>,
    threads: usize,
    session_timeout_ms: u64,
    max_reconsume_times: u32,
    count: Option<u64>,
    format: PayloadFormat,
) -> Result<ExitCode, ClientError> {
    let start_from = match from {
        "earliest" => StartFrom::Earliest,
        "latest" => StartFrom::Latest,
        other => StartFrom::Timestamp(parse_time(other).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "--from takes earliest, latest, milliseconds since the epoch or an RFC 3339 \
                 time (2026-12-01T10:00:00Z), not {other:?}"
            ))
        })?),
    };
    signals::install();
    let options = PushConsumerOptions {
        threads,
        session_timeout: Duration::from_millis(session_timeout_ms),
        heartbeat_interval: Duration::from_millis((session_timeout_ms / 4).clamp(100, 1000)),
        max_reconsume_times,
        start_from,
        tag_filter,
        long_poll: Duration::from_millis(1000),
        max_messages: count,
        connection: broker.options.clone(),
        ..PushConsumerOptions::default()
    };
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = handled.clone();
    let out = std::sync::Mutex::new(());
    let consumer = PushConsumer::start(
        &broker.address,
        group,
        topic,
        options,
        move |delivery: &Delivery| {
            let record = &delivery.record;
            let _guard = out.lock();
            if json() {
                let mut object = record_json(record);
                object["topic"] = delivery.topic.clone().into();
                object["msg_id"] = delivery.msg_id.clone().into();
                object["reconsume_times"] = delivery.reconsume_times.into();
                print_json(&object);
            } else if format.raw {
                write_raw(&record.payload);
            } else {
                println!(
                    "{}",
                    record_line(
                        record,
                        &format!("topic={} ", delivery.topic),
                        &delivery.msg_id,
                        &format!("reconsume={} ", delivery.reconsume_times),
                        &format.text(&record.payload)
                    )
                );
            }
            let _ = std::io::Write::flush(&mut std::io::stdout());
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ConsumeResult::Success
        },
    )?;
    eprintln!(
        "keel subscribe: member {} of group {group}",
        consumer.member_id()
    );
    let limit = count.unwrap_or(u64::MAX);
    while signals::received().is_none()
        && handled.load(std::sync::atomic::Ordering::Relaxed) < limit
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let errors = consumer.errors();
    consumer.shutdown()?;
    for error in &errors {
        eprintln!("keel subscribe: {error}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn property<'a>(record: &'a Record, name: &str) -> &'a str {
    record
        .properties
        .iter()
        .find(|(key, _)| key == name)
        .map_or("", |(_, value)| value.as_str())
}

fn dlq(broker: &Target, command: DlqCommand) -> Result<ExitCode, ClientError> {
    match command {
        DlqCommand::List { group } => {
            let admin = broker.admin()?;
            let (count, redriven) = admin.dlq_count(&group)?;
            if json() {
                print_json(&serde_json::json!({
                    "group": group, "topic": keel_protocol::dlq_topic(&group),
                    "dead_lettered": count, "redriven": redriven,
                }));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{}: {count} dead-lettered message(s), {redriven} redriven so far",
                keel_protocol::dlq_topic(&group)
            );
        }
        DlqCommand::Show { group, count } => {
            for record in broker.admin()?.dlq_messages(&group, count)? {
                if json() {
                    print_json(&record_json(&record));
                    continue;
                }
                println!(
                    "id={} stored={} origin={}/{} attempts={} reason={:?} payload={}",
                    record.message_id(),
                    format_time(record.store_timestamp_ms),
                    property(&record, "KEEL_ORIGIN_TOPIC"),
                    property(&record, "KEEL_ORIGIN_MSG_ID"),
                    property(&record, "KEEL_RECONSUME_TIMES"),
                    property(&record, "KEEL_REASON"),
                    escape(&record.payload)
                );
            }
        }
        DlqCommand::Redrive { group, id } => {
            let redriven = broker.admin()?.redrive_dlq(&group, id.as_deref())?;
            for (from, to) in &redriven {
                println!("redriven {from} -> {to}");
            }
            println!(
                "{} message(s) redriven to {}",
                redriven.len(),
                keel_protocol::retry_topic(&group)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn message_show(
    broker: &Target,
    id: Option<&str>,
    key: Option<&str>,
    payload: Option<PayloadFormat>,
) -> Result<ExitCode, ClientError> {
    let msg_id = match (id, key) {
        (Some(id), None) => u64::from_str_radix(id, 16).map_err(|_| {
            ClientError::InvalidArgument(format!("{id:?} is not a message id (16 hex digits)"))
        })?,
        (None, Some(_)) => 0,
        _ => {
            return Err(ClientError::InvalidArgument(
                "give a message id or --key, not both".into(),
            ))
        }
    };
    let admin = broker.admin()?;
    let mut info = admin.message_info(msg_id, key)?;
    if let Some(format) = payload {
        info.push(message_payload(&admin, &info, format)?);
    }
    if json() {
        // The facts in order; a name that repeats (one per group) becomes a list.
        let mut object = serde_json::Map::new();
        let mut properties = serde_json::Map::new();
        for (name, value) in info {
            if let Some(key) = name.strip_prefix("property ") {
                properties.insert(key.to_string(), value.into());
                continue;
            }
            match object.get_mut(&name) {
                Some(serde_json::Value::Array(list)) => list.push(value.into()),
                Some(single) => {
                    let first = single.take();
                    *single = serde_json::Value::Array(vec![first, value.into()]);
                }
                None => {
                    object.insert(name, value.into());
                }
            }
        }
        object.insert("properties".into(), serde_json::Value::Object(properties));
        print_json(&serde_json::Value::Object(object));
        return Ok(ExitCode::SUCCESS);
    }
    for (name, value) in info {
        match value.parse::<u64>() {
            Ok(ms) if name.ends_with("_ms") && name != "size" => {
                println!("{name:<24} {value} ({})", format_time(ms))
            }
            _ => println!("{name:<24} {value}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The payload of the message the facts describe, read where they say it is: a fact
/// `payload` (escaped text), or `payload_hex`.
fn message_payload(
    admin: &keel_client::Admin,
    info: &[(String, String)],
    format: PayloadFormat,
) -> Result<(String, String), ClientError> {
    let fact = |name: &str| {
        info.iter()
            .find(|(fact, _)| fact == name)
            .map(|(_, value)| value.as_str())
    };
    let place = (
        fact("topic"),
        fact("queue").and_then(|q| q.parse::<u32>().ok()),
        fact("queue_offset").and_then(|o| o.parse::<u64>().ok()),
    );
    let (Some(topic), Some(queue), Some(offset)) = place else {
        return Err(ClientError::Protocol(
            "the broker did not say where the message is".into(),
        ));
    };
    let record = admin.record_at(topic, queue, offset)?.ok_or_else(|| {
        ClientError::InvalidArgument(
            "the message is not readable yet (not durable) or no longer (retention)".into(),
        )
    })?;
    let name = match format.hex {
        true => "payload_hex",
        false => "payload",
    };
    Ok((name.to_string(), format.text(&record.payload)))
}

fn promote(broker: &Target, role: &str, force: bool) -> Result<ExitCode, ClientError> {
    let role = keel_client::BrokerRole::from_name(role)
        .ok_or_else(|| ClientError::InvalidArgument(format!("unknown role {role:?}")))?;
    let admin = broker.admin()?;
    let (epoch, log_end) = if force {
        admin.force_promote(role)?
    } else {
        admin.promote(role)?
    };
    println!(
        "{} is now {role}: epoch {epoch}, log ends at offset {log_end}",
        broker.address
    );
    Ok(ExitCode::SUCCESS)
}

/// What `keel routes` prints of one broker.
struct RouteRow {
    broker: keel_protocol::BrokerLiveness,
    /// The asked topic's queue count on it (0: it does not have it).
    topic_queues: u32,
    /// Messages a second it took in over its last minute (`None`: it did not answer).
    per_second: Option<f64>,
    stale: bool,
}

fn routes(broker: &Target, namesrv: &str, topic: &str) -> Result<ExitCode, ClientError> {
    let name_servers: Vec<String> = namesrv
        .split(',')
        .map(|s| with_default_port(s, NAMESRV_PORT))
        .collect();
    let tls = broker.options.tls.as_ref();
    let timeout = Duration::from_secs(3);
    let (broker_timeout_ms, brokers) = keel_client::fetch_brokers(&name_servers, timeout, tls)?;
    let queues: std::collections::HashMap<(String, String), u32> = if topic.is_empty() {
        Default::default()
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        keel_client::fetch_routes(&name_servers, &next, topic, timeout, tls)?
            .into_iter()
            .map(|route| ((route.broker_name, route.address), route.topic_queues))
            .collect()
    };
    // Each broker's own view of its intake, asked of all at once (one that does not
    // answer within the connect timeout shows "-").
    let options = keel_client::ConnectionOptions {
        connect_timeout: Duration::from_secs(2),
        ..broker.options.clone()
    };
    let rates: Vec<Option<f64>> = std::thread::scope(|scope| {
        let asks: Vec<_> = brokers
            .iter()
            .map(|known| {
                let options = &options;
                scope.spawn(move || {
                    let admin = keel_client::Admin::connect_with(&known.address, options)
                        .ok()?
                        .with_timeout(Duration::from_secs(2));
                    let topics = admin.topic_stats(None).ok()?;
                    let window_ms = topics.iter().map(|t| t.window_ms).max().unwrap_or(0);
                    let messages: u64 = topics.iter().map(|t| t.window_messages).sum();
                    Some(match window_ms {
                        0 => 0.0,
                        ms => messages as f64 * 1000.0 / f64::from(ms),
                    })
                })
            })
            .collect();
        asks.into_iter()
            .map(|ask| ask.join().ok().flatten())
            .collect()
    });
    let rows: Vec<RouteRow> = brokers
        .into_iter()
        .zip(rates)
        .map(|(known, per_second)| RouteRow {
            topic_queues: queues
                .get(&(known.broker_name.clone(), known.address.clone()))
                .copied()
                .unwrap_or(0),
            per_second,
            stale: known.is_stale(broker_timeout_ms),
            broker: known,
        })
        .collect();
    if json() {
        let routes: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let route = &row.broker;
                serde_json::json!({
                    "broker_name": route.broker_name, "broker_id": route.broker_id,
                    "role": route.role.name(), "epoch": route.epoch,
                    "address": route.address, "ha_address": route.ha_address,
                    "topic_queues": row.topic_queues,
                    "since_heard_ms": route.since_heard_ms, "interval_ms": route.interval_ms,
                    "known_for_ms": route.known_for_ms, "topics": route.topic_count,
                    "routed": route.routed, "stale": row.stale,
                    "messages_per_second": row.per_second,
                })
            })
            .collect();
        print_json(
            &serde_json::json!({ "broker_timeout_ms": broker_timeout_ms, "routes": routes }),
        );
    } else {
        println!(
            "{:<12} {:>3}  {:<13} {:>5}  {:<21} {:>10} {:>9} {:>9} {:>6}",
            "broker_name",
            "id",
            "role",
            "epoch",
            "address",
            "last_heard",
            "known_for",
            "msg/s_in",
            "queues"
        );
        for row in &rows {
            let route = &row.broker;
            let per_second = row
                .per_second
                .map_or("-".to_string(), |rate| format!("{rate:.1}"));
            let note = match (route.routed, row.stale) {
                (false, _) => "  (not routed: a newer master of its name is known)",
                (true, true) => "  STALE",
                (true, false) => "",
            };
            println!(
                "{:<12} {:>3}  {:<13} {:>5}  {:<21} {:>10} {:>9} {:>9} {:>6}{note}",
                route.broker_name,
                route.broker_id,
                route.role.name(),
                route.epoch,
                route.address,
                format!(
                    "{} ago",
                    duration_words(route.since_heard_ms as f64 / 1000.0)
                ),
                duration_words(route.known_for_ms as f64 / 1000.0),
                per_second,
                row.topic_queues
            );
        }
    }
    for row in rows.iter().filter(|row| row.stale) {
        let route = &row.broker;
        let every = match route.interval_ms {
            0 => "it registered once".to_string(),
            ms => format!("it registers every {}", duration_words(ms as f64 / 1000.0)),
        };
        eprintln!(
            "keel routes: WARNING {} {} at {} last heard {} ago ({every}): its route is stale; \
             the name server drops it after {} of silence",
            route.broker_name,
            route.role.name(),
            route.address,
            duration_words(route.since_heard_ms as f64 / 1000.0),
            duration_words(broker_timeout_ms as f64 / 1000.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn controller_list(controllers: &str) -> Vec<String> {
    controllers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| with_default_port(s, CONTROLLER_PORT))
        .collect()
}

fn cluster_elect(
    controllers: &str,
    group: String,
    broker_id: u32,
    unclean: bool,
    json: bool,
    access: &keel_controller::Access,
) -> Result<ExitCode, ClientError> {
    use keel_controller::api::{ElectReply, ElectRequest};
    let request = ElectRequest {
        group,
        broker_id,
        unclean,
    };
    let answer = keel_controller::client::elect(
        &controller_list(controllers),
        &request,
        Duration::from_secs(5),
        access,
    )
    .map_err(|detail| ClientError::Connect {
        address: controllers.to_string(),
        detail,
    })?;
    if json {
        let text = serde_json::to_string_pretty(&answer)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        println!("{text}");
    }
    match answer {
        ElectReply::Elected { epoch, detail } => {
            if !json {
                println!(
                    "elected broker {broker_id} master of {} at epoch {epoch}: {detail}",
                    request.group
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ElectReply::Refused(why) => {
            eprintln!("keel cluster: election refused: {why}");
            Ok(ExitCode::from(1))
        }
        ElectReply::NotLeader { .. } => {
            eprintln!("keel cluster: no controller leader answered");
            Ok(ExitCode::from(1))
        }
    }
}

fn cluster(
    controllers: &str,
    json: bool,
    access: &keel_controller::Access,
) -> Result<ExitCode, ClientError> {
    let addresses = controller_list(controllers);
    let view = keel_controller::client::describe(&addresses, Duration::from_secs(3), access)
        .map_err(|detail| ClientError::Connect {
            address: controllers.to_string(),
            detail,
        })?;
    if json {
        let text = serde_json::to_string_pretty(&view)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let leader = match (view.leader, &view.leader_address) {
        (Some(id), Some(address)) => format!("{id} ({address})"),
        (Some(id), None) => id.to_string(),
        _ => "none".into(),
    };
    println!(
        "controller {} answered: leader {leader}, term {}, voters {}",
        view.node_id,
        view.term,
        view.voters
            .iter()
            .map(|(id, address)| format!("{id}={address}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for group in &view.groups {
        let v = &group.view;
        println!(
            "group {}: master {} epoch {}, SyncStateSet {:?} (epoch {}), {} elections",
            v.group,
            v.master.map_or("none".into(), |id| id.to_string()),
            v.master_epoch,
            v.sss,
            v.sss_epoch,
            group.elections
        );
        let master_down = group
            .replicas
            .iter()
            .any(|r| Some(r.broker_id) == v.master && r.reachable == Some(false));
        if master_down {
            println!(
                "  the master is unreachable: the controller elects another from the \
                 SyncStateSet once it has been silent for the master timeout"
            );
        }
        let master_end = group
            .replicas
            .iter()
            .filter(|r| Some(r.broker_id) == v.master)
            .map(|r| r.log_end)
            .max()
            .unwrap_or(0);
        println!("  id  role         in_sss  epoch  log_end      lag_bytes  heard   address");
        for r in &group.replicas {
            println!(
                "  {:>2}  {:<11}  {:<6}  {:>5}  {:>11}  {:>9}  {:>6}  {}",
                r.broker_id,
                match (r.reachable, Some(r.broker_id) == v.master) {
                    (Some(false), _) => "unreachable",
                    (_, true) => "master",
                    (_, false) => "slave",
                },
                if r.in_sss { "yes" } else { "no" },
                r.epoch,
                r.log_end,
                master_end.saturating_sub(r.log_end),
                r.since_heard_ms
                    .map_or("never".into(), |ms| format!("{ms}ms")),
                r.address
            );
        }
    }
    if view.leader.is_none() {
        eprintln!("keel cluster: the controllers have no leader (a majority is not reachable)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Plausibility bound on a stored record, as keeld computes it.
fn max_record_bytes(max_message_bytes: u32) -> u32 {
    max_message_bytes.saturating_add(keel_protocol::RECORD_OVERHEAD_MAX)
}

fn admin(broker: &Target, command: AdminCommand) -> Result<ExitCode, ClientError> {
    let storage_error =
        |error: keel_storage::StoreError| ClientError::InvalidArgument(error.to_string());
    match command {
        AdminCommand::Promote { role, force } => promote(broker, &role, force),
        AdminCommand::Verify {
            data_dir,
            max_message_bytes,
        } => {
            let report =
                keel_storage::admin::verify(&data_dir, max_record_bytes(max_message_bytes))
                    .map_err(storage_error)?;
            if json() {
                let damage = report.damage.as_ref().map(|damage| {
                    serde_json::json!({
                        "at": damage.at, "resumes_at": damage.resumes_at,
                        "unreadable_bytes": damage.unreadable_bytes(),
                        "records_after": damage.records_after,
                        "record_bytes_after": damage.record_bytes_after,
                        "log_bytes_end": damage.log_bytes_end,
                        "topics_after": damage.topics_after,
                    })
                });
                print_json(&serde_json::json!({
                    "data_dir": data_dir.display().to_string(),
                    "segments": report.segments, "records": report.records,
                    "offset_end": report.offset_end, "checkpoint": report.checkpoint,
                    "clean_shutdown": report.clean_shutdown,
                    "torn_tail_bytes": report.torn_tail_bytes,
                    "torn_tail_reason": report.torn_tail_reason,
                    "topics": report.topics,
                    "stale_index_files": report.stale_index_files,
                    "metadata_errors": report.metadata_errors,
                    "corruption": report.corruption, "damage": damage,
                    "starts": report.starts(),
                }));
                return Ok(if report.starts() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            println!("data directory   {}", data_dir.display());
            println!("segments         {}", report.segments);
            match &report.damage {
                None => {
                    println!("records          {} (all CRC32C-checked)", report.records);
                    println!(
                        "log end offset   {} (where the valid records end)",
                        report.offset_end
                    );
                }
                Some(damage) => {
                    println!(
                        "records          {} intact: {} before the damage, {} after it (all CRC32C-checked)",
                        report.records + damage.records_after,
                        report.records,
                        damage.records_after
                    );
                    println!(
                        "valid prefix     log offsets 0..{} (where the first bad record starts)",
                        damage.at
                    );
                    let resumes = damage
                        .resumes_at
                        .map_or("no intact record follows".to_string(), |offset| {
                            format!("intact records resume at log offset {offset}")
                        });
                    println!(
                        "damaged          {} byte(s) from log offset {} are no intact record; {resumes}",
                        damage.unreadable_bytes(),
                        damage.at
                    );
                    println!(
                        "log bytes end    {} (the last segment's end)",
                        damage.log_bytes_end
                    );
                    println!(
                        "truncating       at {} discards {} intact record(s) ({} bytes) besides the damaged bytes",
                        damage.at, damage.records_after, damage.record_bytes_after
                    );
                }
            }
            let checkpoint = report
                .checkpoint
                .map_or("none".to_string(), |offset| offset.to_string());
            println!(
                "checkpoint       {checkpoint} (last fsynced offset), shutdown {}",
                if report.clean_shutdown {
                    "clean"
                } else {
                    "unclean"
                }
            );
            for (topic, queues) in &report.topics {
                match &report.damage {
                    None => println!("topic {topic}: queue lengths {queues:?}"),
                    Some(damage) => println!(
                        "topic {topic}: queue lengths {queues:?} before the damage, {} intact record(s) after it",
                        damage.topics_after.get(topic).copied().unwrap_or(0)
                    ),
                }
            }
            if let Some(damage) = &report.damage {
                for (topic, count) in &damage.topics_after {
                    if !report.topics.contains_key(topic) {
                        println!("topic {topic}: none before the damage, {count} intact record(s) after it");
                    }
                }
            }
            if let Some(reason) = &report.torn_tail_reason {
                println!(
                    "TORN TAIL        {} bytes would be cut at the next start: {reason}",
                    report.torn_tail_bytes
                );
            }
            for stale in &report.stale_index_files {
                println!("STALE INDEX      {stale} (rebuilt from the log at the next start)");
            }
            for problem in &report.metadata_errors {
                println!("METADATA ERROR   {problem}");
            }
            if let Some(corruption) = &report.corruption {
                println!("CORRUPTION       {corruption}");
            }
            if report.starts() {
                println!("result           OK: keeld will start on this directory");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("result           keeld will REFUSE to start on this directory");
                Ok(ExitCode::FAILURE)
            }
        }
        AdminCommand::Dump {
            data_dir,
            from,
            count,
            payload,
        } => {
            let mut printed = 0u64;
            keel_storage::admin::dump(&data_dir, from, |entry| {
                match entry {
                    keel_storage::admin::DumpEntry::Record(record) => {
                        print!(
                            "offset={} size={} topic={} queue={} queue_offset={} stored_ms={} tags={:?} keys={:?} properties={:?} payload_bytes={} message_crc_ok={}",
                            record.log_offset,
                            record.total_size,
                            record.topic,
                            record.queue_id,
                            record.queue_offset,
                            record.store_timestamp_ms,
                            record.tags,
                            record.keys,
                            record.properties,
                            record.payload.len(),
                            record.message_crc_matches()
                        );
                        if payload {
                            print!(" payload={}", escape(&record.payload));
                        }
                        println!();
                    }
                    keel_storage::admin::DumpEntry::Bad { log_offset, detail } => {
                        println!("offset={log_offset} BAD: {detail}");
                    }
                }
                printed += 1;
                printed < count
            })
            .map_err(storage_error)?;
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Truncate {
            data_dir,
            offset,
            discard_acknowledged_messages,
            max_message_bytes,
        } => {
            if !discard_acknowledged_messages {
                return Err(ClientError::InvalidArgument(
                    "truncating discards every message from OFFSET on; pass --discard-acknowledged-messages to confirm".into(),
                ));
            }
            let discarded = keel_storage::admin::truncate(
                &data_dir,
                offset,
                max_record_bytes(max_message_bytes),
            )
            .map_err(storage_error)?;
            println!("truncated the log at offset {offset}: {discarded} bytes discarded");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_time, with_default_port};

    #[test]
    fn addresses_without_a_port_get_the_default_one() {
        assert_eq!(with_default_port("127.0.0.1", 10911), "127.0.0.1:10911");
        assert_eq!(with_default_port("localhost:1", 10911), "localhost:1");
        assert_eq!(with_default_port("::1", 9876), "[::1]:9876");
        assert_eq!(with_default_port("[::1]", 9876), "[::1]:9876");
        assert_eq!(with_default_port("[::1]:5", 9876), "[::1]:5");
    }

    #[test]
    fn from_times_are_epoch_milliseconds_or_rfc3339_utc() {
        assert_eq!(parse_time("1796119200000"), Some(1_796_119_200_000));
        assert_eq!(parse_time("2026-12-01T10:00:00Z"), Some(1_796_119_200_000));
        assert_eq!(parse_time("1999-02-28T23:59:59.5Z"), Some(920_246_399_500));
        assert_eq!(parse_time("2026-13-01T10:00:00Z"), None);
        assert_eq!(parse_time("2026-12-01 10:00:00"), None);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-12-01T10:00:00.12\u{e9}Z"), None);
        assert_eq!(parse_time("99999-01-01T00:00:00Z"), None);
        assert_eq!(parse_time("2026-12-01T-1:00:00Z"), None);
        assert_eq!(parse_time("+5"), None);
        assert_eq!(parse_time("1960-01-01T00:00:00Z"), None);
    }

    #[test]
    fn times_print_as_rfc3339_and_parse_back() {
        use super::format_time;
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_796_119_200_000), "2026-12-01T10:00:00.000Z");
        assert_eq!(format_time(920_246_399_500), "1999-02-28T23:59:59.500Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for ms in [
            0,
            1,
            86_399_999,
            951_868_799_999,
            4_102_444_800_123,
            1_796_119_200_007,
        ] {
            assert_eq!(parse_time(&format_time(ms)), Some(ms), "{ms}");
        }
    }
}
