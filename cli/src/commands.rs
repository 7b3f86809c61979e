//! The command line's shape: every command, its flags and their help (clap).

use crate::output::PayloadFormat;
use crate::prelude::*;
use crate::security;
use crate::send;
use crate::shared::GLOBAL;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Command-line client for the keel broker"
)]
pub(crate) struct Cli {
    /// Broker address (host:port) [default: 127.0.0.1:10911, or the profile's].
    #[arg(long, global = true, help_heading = GLOBAL, env = "KEEL_BROKER")]
    pub(crate) broker: Option<String>,
    /// Take the broker, TLS and login settings a flag does not give from this profile
    /// of the profiles file ($KEEL_CONFIG, else ~/.config/keel/profiles.toml).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "NAME", env = "KEEL_PROFILE")]
    pub(crate) profile: Option<String>,
    #[command(flatten)]
    pub(crate) access: security::Access,
    /// Print data as JSON: one object, or one object per line for sends and records
    /// (field names in docs/OPERATIONS.md, "The keel CLI").
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// Every group the broker knows: its topic, live members and lag.
    List,
    /// One group: its members and each queue's committed offset, end and lag.
    Describe {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
    },
    /// Create a group with its settings, or change them (durably, on the master):
    /// `--ordered` makes its members consume each message group one message at a time,
    /// in the order stored; `--ordered=false` back to concurrent. Running members take
    /// the change at their next heartbeat (they let their queues go and take them again).
    Create {
        /// The consumer group.
        #[arg(short, long)]
        group: String,
        /// Ordered consumption (by message group).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        ordered: Option<bool>,
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
pub(crate) enum Command {
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
    Consume(ConsumeArgs),
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
    Subscribe(SubscribeArgs),
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
    /// Transactions (half messages): list the open ones, commit or roll one back.
    Tx {
        #[command(subcommand)]
        command: crate::tx::TxCommand,
    },
    /// A broker's operator tools: promote a slave (at --broker), and offline checks and
    /// repairs of a stopped broker's data directory (verify, dump, truncate: no --broker).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
pub(crate) enum OffsetsCommand {
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
pub(crate) enum DlqCommand {
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
pub(crate) enum MessageCommand {
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
pub(crate) enum AdminCommand {
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
pub(crate) enum TopicCommand {
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

/// `keel consume`'s options.
#[derive(clap::Args)]
pub(crate) struct ConsumeArgs {
    /// The topic to read.
    #[arg(short, long)]
    pub(crate) topic: String,
    /// The consumer group to read as (and commit for, unless --no-commit).
    #[arg(short, long)]
    pub(crate) group: Option<String>,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    pub(crate) count: Option<u64>,
    /// Stop when nothing new arrived for this many milliseconds (0 = never).
    #[arg(long, default_value_t = 2000)]
    pub(crate) idle_ms: u64,
    /// Print the payload only.
    #[arg(long)]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) format: PayloadFormat,
    /// Look without moving the group: nothing is committed.
    #[arg(long)]
    pub(crate) no_commit: bool,
    /// Start here instead of where the group left off: earliest, latest, a time
    /// (milliseconds since the epoch, or RFC 3339 like 2026-12-01T10:00:00Z). The
    /// group then commits from there (every queue moves) unless --no-commit.
    #[arg(long, value_name = "WHERE")]
    pub(crate) from: Option<String>,
    /// Only this queue (a look: nothing is committed).
    #[arg(long, value_name = "Q")]
    pub(crate) queue: Option<u32>,
    /// With --queue: start at this queue offset.
    #[arg(long, value_name = "N", requires = "queue", conflicts_with = "from")]
    pub(crate) offset: Option<u64>,
}

/// `keel subscribe`'s options.
#[derive(clap::Args)]
pub(crate) struct SubscribeArgs {
    /// The topic to consume.
    #[arg(short, long)]
    pub(crate) topic: String,
    /// The consumer group to join.
    #[arg(short, long)]
    pub(crate) group: String,
    /// Where a new group starts: earliest, latest, or a time (milliseconds since the
    /// epoch, or RFC 3339 like 2026-12-01T10:00:00Z).
    #[arg(long, default_value = "earliest")]
    pub(crate) from: String,
    /// Only these tags, e.g. "TagA || TagB".
    #[arg(long)]
    pub(crate) tag_filter: Option<String>,
    /// Handler threads (messages of different queues are handled in parallel).
    #[arg(long, default_value_t = 4)]
    pub(crate) threads: usize,
    /// This member leaves the group (its queues move) when it has not heartbeated
    /// for this long (ms).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) session_timeout_ms: u64,
    /// A message that failed this many times goes to the group's dead-letter queue.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_reconsume_times: u32,
    /// Handle exactly this many messages, then stop; the group's offsets are not
    /// committed past the last one handled.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Consume in order: each message group one message at a time, in the order
    /// stored. Marks the group ordered first if it is not (`keel group create
    /// --ordered`), which needs group:commit.
    #[arg(long)]
    pub(crate) ordered: bool,
    #[command(flatten)]
    pub(crate) format: PayloadFormat,
}
