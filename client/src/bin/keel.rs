//! `keel`: send, consume, manage topics and read broker stats from the command line.

use clap::{Parser, Subcommand, ValueEnum};
use keel_client::{
    Admin, ClientError, ConsumeResult, Consumer, ConsumerOptions, Delivery, Message, Producer,
    ProducerOptions, PushConsumer, PushConsumerOptions, Record, StartFrom,
};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Command-line client for the keel broker"
)]
struct Cli {
    /// Broker address (host:port).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:10911",
        env = "KEEL_BROKER"
    )]
    broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send messages: each MESSAGE argument, or each line of standard input when none
    /// is given. Prints one line per message: status, message id, queue and offset.
    Send {
        #[arg(long)]
        topic: String,
        /// Tags (used for filtering by consumers).
        #[arg(long, default_value = "")]
        tags: String,
        /// Keys (business identifiers, for lookups).
        #[arg(long, default_value = "")]
        keys: String,
        /// Queue to send to; by default the broker picks round-robin.
        #[arg(long)]
        queue: Option<u32>,
        /// sync: wait for each answer. async: pipeline, print answers as they come.
        /// oneway: fire and forget (no answer, no retry).
        #[arg(long, value_enum, default_value_t = Mode::Sync)]
        mode: Mode,
        /// Send each message this many times.
        #[arg(long, default_value_t = 1)]
        repeat: u64,
        /// With --mode sync: send N messages per request (SEND_BATCH: stored all
        /// together or not at all, one fsync, one answer).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        messages: Vec<String>,
    },
    /// Show the brokers name servers know (and each one's queue count for --topic).
    Routes {
        /// Name server addresses, comma separated.
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long, default_value = "")]
        topic: String,
    },
    /// Consume a topic as GROUP: print each record, then commit the group's offsets.
    /// Starts where the group left off (or at the beginning for a new group).
    Consume {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "keel-cli")]
        group: String,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Stop when nothing new arrived for this many milliseconds (0 = never).
        #[arg(long, default_value_t = 2000)]
        idle_ms: u64,
        /// Print the payload only.
        #[arg(long)]
        quiet: bool,
    },
    /// Create or list topics.
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
        #[arg(long)]
        topic: String,
        #[arg(long)]
        group: String,
        /// Where a new group starts: earliest, latest, or a time in ms since the epoch.
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Only these tags, e.g. "TagA || TagB".
        #[arg(long)]
        tag_filter: Option<String>,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u64,
        #[arg(long, default_value_t = 16)]
        max_reconsume_times: u32,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
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
    /// Show or move a consumer group's committed offsets.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// Offline tools for a data directory of a stopped broker (no --broker needed).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// Per queue: the group's committed offset, the queue's first and last offsets, lag.
    Show {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
    },
    /// Move the group's offsets. This is how a group behind retention moves on
    /// (`--to earliest`), accepting that the expired messages are gone.
    Reset {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest (first stored), latest (skip everything stored), or an offset.
        #[arg(long)]
        to: String,
        /// Only this queue (default: every queue).
        #[arg(long)]
        queue: Option<u32>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// How many messages the group's dead-letter queue holds.
    List {
        #[arg(long)]
        group: String,
    },
    /// Print the dead-lettered messages: id, original topic and id, attempts, reason.
    Show {
        #[arg(long)]
        group: String,
        #[arg(long, default_value_t = 100)]
        count: u64,
    },
    /// Deliver dead-lettered messages to the group again (through its retry topic, so
    /// only this group sees them), with their attempt count reset. Each message is
    /// redriven once: the position is remembered per group.
    Redrive {
        #[arg(long)]
        group: String,
        /// Only this message (a DLQ message id, as `dlq show` prints).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum MessageCommand {
    /// By message id (16 hex digits), or the newest message with --key.
    Show {
        id: Option<String>,
        #[arg(long)]
        key: Option<String>,
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
    },
    /// Check every record (CRC32C, size, position) and every index of a data directory,
    /// and say whether keeld would start on it. Changes nothing. Exit status 1 when
    /// keeld would refuse to start.
    Verify {
        data_dir: PathBuf,
        /// The broker's max_message_bytes (bounds what a plausible record size is).
        #[arg(long, default_value_t = keel_protocol::DEFAULT_MAX_MESSAGE_BYTES)]
        max_message_bytes: u32,
    },
    /// Print the records of the log from a log offset, for debugging.
    Dump {
        data_dir: PathBuf,
        /// First log offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Records to print.
        #[arg(long, default_value_t = 20)]
        count: u64,
        /// Also print payloads (as text, invalid UTF-8 replaced).
        #[arg(long)]
        payload: bool,
    },
    /// Discard the log from OFFSET on, deliberately: every message at or after it is
    /// lost. For a log keeld refuses to start on because of corruption: truncate at the
    /// log offset `keel admin verify` names. Records before OFFSET must all be valid.
    Truncate {
        data_dir: PathBuf,
        #[arg(long)]
        offset: u64,
        /// Required: says you accept losing every message from OFFSET on.
        #[arg(long)]
        discard_acknowledged_messages: bool,
        #[arg(long, default_value_t = keel_protocol::DEFAULT_MAX_MESSAGE_BYTES)]
        max_message_bytes: u32,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic with QUEUES queues (no change if it exists).
    Create {
        topic: String,
        #[arg(long, default_value_t = 4)]
        queues: u32,
    },
    /// List topics with each queue's min and max offset.
    List {
        /// Also the broker's own topics (%RETRY%..., %DLQ%..., %SCHEDULE%).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Sync,
    Async,
    Oneway,
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`keel consume ... | head`) instead of failing on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Send {
            topic,
            tags,
            keys,
            queue,
            mode,
            repeat,
            batch,
            messages,
        } => send(
            &cli.broker,
            &topic,
            &tags,
            &keys,
            queue,
            mode,
            repeat,
            batch,
            messages,
        ),
        Command::Consume {
            topic,
            group,
            count,
            idle_ms,
            quiet,
        } => consume(&cli.broker, &topic, &group, count, idle_ms, quiet),
        Command::Topic {
            command: TopicCommand::Create { topic, queues },
        } => create_topic(&cli.broker, &topic, queues),
        Command::Topic {
            command: TopicCommand::List { all },
        } => list_topics(&cli.broker, all),
        Command::Stats => stats(&cli.broker),
        Command::Subscribe {
            topic,
            group,
            from,
            tag_filter,
            threads,
            session_timeout_ms,
            max_reconsume_times,
            count,
        } => subscribe(
            &cli.broker,
            &topic,
            &group,
            &from,
            tag_filter,
            threads,
            session_timeout_ms,
            max_reconsume_times,
            count,
        ),
        Command::Dlq { command } => dlq(&cli.broker, command),
        Command::Message {
            command: MessageCommand::Show { id, key },
        } => message_show(&cli.broker, id.as_deref(), key.as_deref()),
        Command::Offsets { command } => offsets(&cli.broker, command),
        Command::Admin { command } => admin(&cli.broker, command),
        Command::Routes { namesrv, topic } => routes(&namesrv, &topic),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keel: {error}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn send(
    broker: &str,
    topic: &str,
    tags: &str,
    keys: &str,
    queue: Option<u32>,
    mode: Mode,
    repeat: u64,
    batch: usize,
    messages: Vec<String>,
) -> Result<ExitCode, ClientError> {
    if batch == 0 || batch > usize::from(u16::MAX) || (batch > 1 && mode != Mode::Sync) {
        return Err(ClientError::InvalidArgument(
            "--batch takes 1 to 65535, and more than 1 only with --mode sync".into(),
        ));
    }
    let producer = Producer::connect(broker, ProducerOptions::default())?;
    let messages: Vec<String> = if messages.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .collect()
    } else {
        messages
    };
    let build = |text: &str| {
        let message = Message::new(topic, text.as_bytes().to_vec())
            .with_tags(tags)
            .with_keys(keys);
        match queue {
            Some(queue) => message.with_queue(queue),
            None => message,
        }
    };
    let mut failures = 0u64;
    if batch > 1 {
        let all: Vec<Message> = messages
            .iter()
            .flat_map(|text| (0..repeat).map(|_| build(text)))
            .collect();
        for chunk in all.chunks(batch) {
            match producer.send_batch(chunk.to_vec()) {
                Ok(result) => {
                    for (queue_id, queue_offset, log_offset) in &result.messages {
                        let id = keel_client::message_id(*log_offset);
                        println!(
                            "{} id={id} queue={queue_id} offset={queue_offset}",
                            result.status
                        );
                    }
                }
                Err(error) => {
                    failures += chunk.len() as u64;
                    eprintln!("ERROR (batch of {} not stored) {error}", chunk.len());
                }
            }
        }
        return Ok(if failures == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut handles = Vec::new();
    for text in &messages {
        for _ in 0..repeat {
            match mode {
                Mode::Sync => match producer.send(build(text)) {
                    Ok(result) => print_result(&result),
                    Err(error) => {
                        failures += 1;
                        eprintln!("ERROR {error}");
                    }
                },
                Mode::Async => handles.push(producer.send_async_handle(build(text))),
                Mode::Oneway => {
                    if let Err(error) = producer.send_oneway(build(text)) {
                        failures += 1;
                        eprintln!("ERROR {error}");
                    }
                }
            }
        }
    }
    for handle in handles {
        match handle.wait() {
            Ok(result) => print_result(&result),
            Err(error) => {
                failures += 1;
                eprintln!("ERROR {error}");
            }
        }
    }
    if mode == Mode::Oneway {
        println!(
            "sent {} oneway message(s); no answers are read in oneway mode",
            messages.len() as u64 * repeat - failures
        );
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_result(result: &keel_client::SendResult) {
    println!(
        "{} id={} queue={} offset={}",
        result.status,
        result.message_id(),
        result.queue_id,
        result.queue_offset
    );
}

fn consume(
    broker: &str,
    topic: &str,
    group: &str,
    count: Option<u64>,
    idle_ms: u64,
    quiet: bool,
) -> Result<ExitCode, ClientError> {
    let options = ConsumerOptions {
        long_poll: Duration::from_millis(500),
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(broker, group, topic, options)?;
    if consumer.queue_count() == 0 {
        return Err(ClientError::InvalidArgument(format!(
            "topic {topic:?} has no queues"
        )));
    }
    let limit = count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut last_progress = Instant::now();
    let print = |record: &Record| -> Result<(), String> {
        let payload = String::from_utf8_lossy(&record.payload);
        if quiet {
            println!("{payload}");
        } else {
            println!(
                "queue={} offset={} id={} tags={:?} keys={:?} payload={payload}",
                record.queue_id,
                record.queue_offset,
                record.message_id(),
                record.tags,
                record.keys
            );
        }
        Ok(())
    };
    while printed < limit {
        let round = consumer.poll_at_most(limit - printed, print).map_err(|error| match error {
            ClientError::OffsetExpired { .. } => ClientError::InvalidArgument(format!(
                "{error}. To skip the expired messages: keel offsets reset --group {group} --topic {topic} --to earliest"
            )),
            other => other,
        })?;
        printed += round.handled;
        if round.handled > 0 {
            last_progress = Instant::now();
        }
        if idle_ms > 0 && last_progress.elapsed() >= Duration::from_millis(idle_ms) {
            break;
        }
    }
    consumer.commit()?;
    Ok(ExitCode::SUCCESS)
}

fn create_topic(broker: &str, topic: &str, queues: u32) -> Result<ExitCode, ClientError> {
    let created = Admin::connect(broker)?.create_topic(topic, queues)?;
    let verb = if created.created {
        "created"
    } else {
        "already exists with"
    };
    println!("topic {} {verb} {} queue(s)", created.topic, created.queues);
    Ok(ExitCode::SUCCESS)
}

fn list_topics(broker: &str, all: bool) -> Result<ExitCode, ClientError> {
    let topics = Admin::connect(broker)?.list_topics(None)?;
    for topic in topics
        .into_iter()
        .filter(|t| all || !t.topic.starts_with('%'))
    {
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

fn stats(broker: &str) -> Result<ExitCode, ClientError> {
    let admin = Admin::connect(broker)?;
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

fn offsets(broker: &str, command: OffsetsCommand) -> Result<ExitCode, ClientError> {
    let admin = Admin::connect(broker)?;
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
            for (queue_id, queue) in queues.iter().enumerate() {
                let committed = admin.query_offset(group, topic, queue_id as u32)?;
                let lag = queue
                    .max_offset
                    .saturating_sub(committed.unwrap_or(queue.min_offset));
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
        }
        OffsetsCommand::Reset { to, queue, .. } => {
            for (queue_id, info) in queues.iter().enumerate() {
                if queue.is_some_and(|only| only as usize != queue_id) {
                    continue;
                }
                let offset = match to.as_str() {
                    "earliest" => info.min_offset,
                    "latest" => info.max_offset,
                    number => number.parse().map_err(|_| {
                        ClientError::InvalidArgument(format!(
                            "--to takes earliest, latest or an offset, not {number:?}"
                        ))
                    })?,
                };
                admin.commit_offset(group, topic, queue_id as u32, offset)?;
                println!("queue {queue_id}: offset of {group} set to {offset}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Plausibility bound on a stored record, as keeld computes it.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[allow(clippy::too_many_arguments)]
fn subscribe(
    broker: &str,
    topic: &str,
    group: &str,
    from: &str,
    tag_filter: Option<String>,
    threads: usize,
    session_timeout_ms: u64,
    max_reconsume_times: u32,
    count: Option<u64>,
) -> Result<ExitCode, ClientError> {
    let start_from = match from {
        "earliest" => StartFrom::Earliest,
        "latest" => StartFrom::Latest,
        other => StartFrom::Timestamp(other.parse().map_err(|_| {
            ClientError::InvalidArgument(format!(
                "--from {other:?}: earliest, latest, or a time in ms since the epoch"
            ))
        })?),
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_stop_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_stop_signal as *const () as libc::sighandler_t,
        );
    }
    let options = PushConsumerOptions {
        threads,
        session_timeout: Duration::from_millis(session_timeout_ms),
        heartbeat_interval: Duration::from_millis((session_timeout_ms / 4).clamp(100, 1000)),
        max_reconsume_times,
        start_from,
        tag_filter,
        long_poll: Duration::from_millis(1000),
        ..PushConsumerOptions::default()
    };
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = handled.clone();
    let out = std::sync::Mutex::new(());
    let consumer =
        PushConsumer::start(broker, group, topic, options, move |delivery: &Delivery| {
            let record = &delivery.record;
            let _guard = out.lock();
            println!(
                "topic={} queue={} offset={} id={} reconsume={} payload={}",
                delivery.topic,
                record.queue_id,
                record.queue_offset,
                delivery.msg_id,
                delivery.reconsume_times,
                String::from_utf8_lossy(&record.payload)
            );
            let _ = std::io::Write::flush(&mut std::io::stdout());
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ConsumeResult::Success
        })?;
    eprintln!(
        "keel subscribe: member {} of group {group}",
        consumer.member_id()
    );
    let limit = count.unwrap_or(u64::MAX);
    while !STOP.load(std::sync::atomic::Ordering::SeqCst)
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

fn dlq(broker: &str, command: DlqCommand) -> Result<ExitCode, ClientError> {
    match command {
        DlqCommand::List { group } => {
            let admin = Admin::connect(broker)?;
            let (count, redriven) = admin.dlq_count(&group)?;
            println!(
                "{}: {count} dead-lettered message(s), {redriven} redriven so far",
                keel_protocol::dlq_topic(&group)
            );
        }
        DlqCommand::Show { group, count } => {
            for record in Admin::connect(broker)?.dlq_messages(&group, count)? {
                println!(
                    "id={} origin={}/{} attempts={} reason={:?} payload={}",
                    record.message_id(),
                    property(&record, "KEEL_ORIGIN_TOPIC"),
                    property(&record, "KEEL_ORIGIN_MSG_ID"),
                    property(&record, "KEEL_RECONSUME_TIMES"),
                    property(&record, "KEEL_REASON"),
                    String::from_utf8_lossy(&record.payload)
                );
            }
        }
        DlqCommand::Redrive { group, id } => {
            let redriven = Admin::connect(broker)?.redrive_dlq(&group, id.as_deref())?;
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
    broker: &str,
    id: Option<&str>,
    key: Option<&str>,
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
    for (name, value) in Admin::connect(broker)?.message_info(msg_id, key)? {
        println!("{name:<24} {value}");
    }
    Ok(ExitCode::SUCCESS)
}

fn promote(broker: &str, role: &str) -> Result<ExitCode, ClientError> {
    let role = keel_client::BrokerRole::from_name(role)
        .ok_or_else(|| ClientError::InvalidArgument(format!("unknown role {role:?}")))?;
    let (epoch, log_end) = Admin::connect(broker)?.promote(role)?;
    println!("{broker} is now {role}: epoch {epoch}, log ends at offset {log_end}");
    Ok(ExitCode::SUCCESS)
}

fn routes(namesrv: &str, topic: &str) -> Result<ExitCode, ClientError> {
    let name_servers: Vec<String> = namesrv.split(',').map(|s| s.trim().to_string()).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let routes = keel_client::fetch_routes(&name_servers, &next, topic, Duration::from_secs(3))?;
    println!("broker_name  id  role          epoch  address                ha_address             queues");
    for route in routes {
        println!(
            "{:<12} {:>3}  {:<13} {:>5}  {:<22} {:<22} {}",
            route.broker_name,
            route.broker_id,
            route.role.name(),
            route.epoch,
            route.address,
            route.ha_address,
            route.topic_queues
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn max_record_bytes(max_message_bytes: u32) -> u32 {
    max_message_bytes.saturating_add(256 * 1024)
}

fn admin(broker: &str, command: AdminCommand) -> Result<ExitCode, ClientError> {
    let storage_error =
        |error: keel_storage::StoreError| ClientError::InvalidArgument(error.to_string());
    match command {
        AdminCommand::Promote { role } => promote(broker, &role),
        AdminCommand::Verify {
            data_dir,
            max_message_bytes,
        } => {
            let report =
                keel_storage::admin::verify(&data_dir, max_record_bytes(max_message_bytes))
                    .map_err(storage_error)?;
            println!("data directory   {}", data_dir.display());
            println!("segments         {}", report.segments);
            println!("records          {} (all CRC32C-checked)", report.records);
            println!(
                "log end offset   {} (where the valid records end)",
                report.offset_end
            );
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
                println!("topic {topic}: queue lengths {queues:?}");
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
                            "offset={} size={} topic={} queue={} queue_offset={} stored_ms={} tags={:?} keys={:?} properties={:?} payload_bytes={} payload_crc_ok={}",
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
                            record.payload_crc_matches()
                        );
                        if payload {
                            print!(" payload={:?}", String::from_utf8_lossy(&record.payload));
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
