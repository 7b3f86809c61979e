//! `keel`: send, consume, manage topics and read broker stats from the command line.

use clap::{Parser, Subcommand, ValueEnum};
use keel_client::{
    Admin, ClientError, Consumer, ConsumerOptions, Message, Producer, ProducerOptions, Record,
};
use std::io::BufRead;
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
        messages: Vec<String>,
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
    List,
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
            messages,
        } => send(
            &cli.broker,
            &topic,
            &tags,
            &keys,
            queue,
            mode,
            repeat,
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
            command: TopicCommand::List,
        } => list_topics(&cli.broker),
        Command::Stats => stats(&cli.broker),
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
    messages: Vec<String>,
) -> Result<ExitCode, ClientError> {
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
        let round = consumer.poll_at_most(limit - printed, print)?;
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

fn list_topics(broker: &str) -> Result<ExitCode, ClientError> {
    for topic in Admin::connect(broker)?.list_topics(None)? {
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
    for topic in admin.list_topics(None)? {
        for (queue_id, queue) in topic.queues.iter().enumerate() {
            println!(
                "topic {} queue {queue_id}: offsets {}..{}",
                topic.topic, queue.min_offset, queue.max_offset
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
